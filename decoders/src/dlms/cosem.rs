//! What a DataNotification's body means: COSEM objects (OBIS code, value, scaler and unit) as
//! readings, the clock, firmware and alarm objects as device status.
//!
//! A **self-describing** body names its objects: an OBIS octet-string (6 bytes) followed by its
//! value and, optionally, a `{scaler, unit}` structure, at any depth (Kaifa, Sagemcom, L+G,
//! Iskra, Aidon, Kamstrup push this way). Elements are paired by position: the element after
//! an OBIS code is its value whatever it looks like (Iskra sends a 6-byte value that looks like
//! an OBIS code). A **values-only** body (an IDIS push whose capture objects are configured in
//! the meter) needs a [`Profile`] that names its objects in order.
//!
//! A value becomes `raw × 10^scaler`, computed so that a decimal reading stays the closest
//! double to it (`4408736 × 10^-3` is exactly the double of `4408.736`). The unit is the symbol
//! of the DLMS unit table; without a `{scaler, unit}` it is empty (and the scaler 0).

use std::borrow::Cow;

use chrono_tz::Tz;
use meterflow_proto::quality;

use super::axdr::Data;
use super::Context;
use crate::events::{self, Event, EventKind, DLMS_ALARM_BITS};
use crate::{DeviceStatus, Reading, Rejected};

/// An OBIS code's six bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Obis(pub [u8; 6]);

impl Obis {
    pub fn from_bytes(bytes: &[u8]) -> Option<Obis> {
        bytes.try_into().ok().map(Obis)
    }

    /// `A-B:C.D.E`, and `.F` when F is not 255 (the channel names of DESIGN.md).
    pub fn channel(&self) -> String {
        let [a, b, c, d, e, f] = self.0;
        if f == 255 {
            format!("{a}-{b}:{c}.{d}.{e}")
        } else {
            format!("{a}-{b}:{c}.{d}.{e}.{f}")
        }
    }

    /// Parses `A-B:C.D.E.F` (or `A-B:C.D.E`, F = 255), each group 0 to 255.
    pub fn parse(text: &str) -> Option<Obis> {
        let (a, rest) = text.split_once('-')?;
        let (b, rest) = rest.split_once(':')?;
        let groups: Vec<&str> = rest.split('.').collect();
        if !(3..=4).contains(&groups.len()) {
            return None;
        }
        let byte = |g: &str| -> Option<u8> {
            (!g.is_empty() && g.bytes().all(|c| c.is_ascii_digit()))
                .then(|| g.parse().ok())
                .flatten()
        };
        let f = groups.get(3).map_or(Some(255), |g| byte(g))?;
        Some(Obis([
            byte(a)?,
            byte(b)?,
            byte(groups[0])?,
            byte(groups[1])?,
            byte(groups[2])?,
            f,
        ]))
    }

    /// The clock, 0-0:1.0.0.
    fn is_clock(&self) -> bool {
        matches!(self.0, [0, _, 1, 0, 0, _])
    }

    /// An active firmware identifier, x-x:0.2.0.
    fn is_firmware(&self) -> bool {
        matches!(self.0, [_, _, 0, 2, 0, _])
    }

    /// An alarm register, 0-0:97.98.0 to 9 (10 to 19 are alarm filters, 20 to 29 alarm
    /// descriptors: not alarms).
    fn is_alarm(&self) -> bool {
        matches!(self.0, [0, _, 97, 98, 0..=9, _])
    }

    /// The meter's serial number: the device identifiers 0-x:96.1.0 to 9 (which one a maker
    /// uses varies: 96.1.0 for IDIS, 96.1.1 for DSMR), or the COSEM logical device name
    /// 0-0:42.0.0. Lower is preferred: see [`Meaning::object`].
    fn serial_rank(&self) -> Option<u8> {
        // B = 0: the meter itself (0-1:96.1.0 is the id of an M-Bus gas meter behind it).
        match self.0 {
            [0, 0, 96, 1, e @ 0..=9, _] => Some(e),
            [0, 0, 42, 0, 0, _] => Some(10),
            _ => None,
        }
    }

    /// A push setup, 0-x:25.9.0: its logical name heads an IDIS push, it is no reading.
    fn is_push_setup(&self) -> bool {
        matches!(self.0, [0, _, 25, 9, 0, _])
    }
}

/// The symbol of a DLMS unit (IEC 62056-6-2, the unit enumeration); `None` for 255 (a count,
/// no unit) and the codes that have none.
pub fn unit_symbol(code: u8) -> Option<&'static str> {
    Some(match code {
        1 => "a",
        2 => "mo",
        3 => "wk",
        4 => "d",
        5 => "h",
        6 => "min",
        7 => "s",
        8 => "°",
        9 => "°C",
        10 => "currency",
        11 => "m",
        12 => "m/s",
        13 | 14 => "m3",
        15 | 16 => "m3/h",
        17 | 18 => "m3/d",
        19 => "l",
        20 => "kg",
        21 => "N",
        22 => "Nm",
        23 => "Pa",
        24 => "bar",
        25 => "J",
        26 => "J/h",
        27 => "W",
        28 => "VA",
        29 => "var",
        30 => "Wh",
        31 => "VAh",
        32 => "varh",
        33 => "A",
        34 => "C",
        35 => "V",
        36 => "V/m",
        37 => "F",
        38 => "Ω",
        39 => "Ωm2/m",
        40 => "Wb",
        41 => "T",
        42 => "A/m",
        43 => "H",
        44 => "Hz",
        45 => "1/(Wh)",
        46 => "1/(varh)",
        47 => "1/(VAh)",
        48 => "V2h",
        49 => "A2h",
        50 => "kg/s",
        51 => "S",
        52 => "K",
        53 => "1/(V2h)",
        54 => "1/(A2h)",
        55 => "1/m3",
        56 => "%",
        57 => "Ah",
        60 => "Wh/m3",
        61 => "J/m3",
        62 => "Mol %",
        63 => "g/m3",
        64 => "Pa s",
        65 => "J/kg",
        66 => "g/cm2",
        67 => "atm",
        70 => "dBm",
        71 => "dBµV",
        72 => "dB",
        _ => return None,
    })
}

/// The DLMS unit whose symbol is `symbol` (as [`unit_symbol`] writes it), as that symbol.
pub fn unit_of_symbol(symbol: &str) -> Option<&'static str> {
    (1..=u8::MAX).filter_map(unit_symbol).find(|s| *s == symbol)
}

/// Powers of ten that are exact doubles.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// `raw × 10^scaler`: for an integer raw and a negative scaler the division by an exact power
/// of ten, so the result is the double closest to the decimal.
pub fn scaled(raw: f64, scaler: i8) -> f64 {
    let k = usize::from(scaler.unsigned_abs());
    let p = POW10
        .get(k)
        .copied()
        .unwrap_or_else(|| 10f64.powi(i32::from(scaler.unsigned_abs())));
    if scaler < 0 {
        raw / p
    } else {
        raw * p
    }
}

/// `raw × 10^scaler` for an integer raw, as the double closest to that decimal: up to 2^53 a
/// raw is an exact double and one operation by an exact power of ten rounds once; beyond it
/// (64-bit registers) the decimal `{raw}e{scaler}` is parsed, which rounds once too.
pub fn scaled_integer(raw: i128, scaler: i8) -> f64 {
    const EXACT: u128 = 1 << 53;
    if raw.unsigned_abs() <= EXACT || scaler == 0 {
        if raw.unsigned_abs() <= EXACT {
            return scaled(raw as f64, scaler);
        }
        return raw as f64; // one rounding: the conversion itself
    }
    format!("{raw}e{scaler}").parse().unwrap_or(f64::NAN)
}

/// A COSEM date-time (12 bytes) as Unix ms, and whether its offset to UTC was unknown (then
/// the time is taken as UTC) or the meter flags its clock as not valid. `None` when a field
/// needed is not specified or out of range.
pub fn date_time(b: &[u8; 12]) -> Option<(i64, bool)> {
    date_time_in(b, None, None)
}

/// [`date_time`], with the zone the meter keeps its clock in for a date-time whose deviation
/// is not specified (0x8000, as Kamstrup, Aidon and many HAN ports send): the local time is
/// read there. Without a zone such a time is taken as UTC, flagged.
///
/// In the hour a clock change repeats, a set daylight-saving bit (0x80) says it is the first
/// of the two; a clear one says little (many meters never set it), so then the time of
/// receipt (`received_at_ms`) decides: received before the second, it is the first (a push is
/// not received before it is made; 10 minutes are allowed for a meter clock that runs
/// ahead); else it is the second, flagged.
pub fn date_time_in(
    b: &[u8; 12],
    zone: Option<Tz>,
    received_at_ms: Option<i64>,
) -> Option<(i64, bool)> {
    let year = u16::from_be_bytes([b[0], b[1]]);
    let (month, day, hour, minute, second) = (b[2], b[3], b[5], b[6], b[7]);
    if year == 0xFFFF || [month, day, hour, minute, second].contains(&0xFF) {
        return None;
    }
    let hundredths = match b[8] {
        0xFF => 0,
        h @ 0..=99 => h,
        _ => return None,
    };
    let deviation = i16::from_be_bytes([b[9], b[10]]);
    let status = b[11];
    let local = chrono::NaiveDate::from_ymd_opt(i32::from(year), u32::from(month), u32::from(day))?
        .and_hms_milli_opt(
            u32::from(hour),
            u32::from(minute),
            u32::from(second),
            u32::from(hundredths) * 10,
        )?;
    // Status bits: 0x01 invalid, 0x02 doubtful, 0x08 clock status invalid; 0x80 daylight
    // saving active. 0xFF: no status.
    let doubtful = status != 0xFF && status & 0x0B != 0;
    // 0x8000: not specified. Else UTC = local + deviation (minutes): 0xFF88 (-120) is UTC+2.
    // A deviation beyond any zone's (UTC-12 to UTC+14) is as good as none, and a sign the
    // clock fields are not to be trusted.
    if deviation != i16::MIN && (-840..=720).contains(&deviation) {
        let utc_ms = local.and_utc().timestamp_millis() + i64::from(deviation) * 60_000;
        return Some((utc_ms, doubtful));
    }
    let doubtful = doubtful || deviation != i16::MIN;
    let Some(zone) = zone else {
        return Some((local.and_utc().timestamp_millis(), true));
    };
    use chrono::offset::LocalResult;
    use chrono::TimeZone;
    let (utc_ms, sure) = match zone.from_local_datetime(&local) {
        LocalResult::Single(t) => (t.timestamp_millis(), true),
        // The repeated hour: the first is in daylight saving time, the second not.
        LocalResult::Ambiguous(first, second) => {
            let (first, second) = (first.timestamp_millis(), second.timestamp_millis());
            const CLOCK_AHEAD_MS: i64 = 10 * 60_000;
            let dst = status != 0xFF && status & 0x80 != 0;
            if dst || received_at_ms.is_some_and(|r| r + CLOCK_AHEAD_MS < second) {
                (first, true)
            } else {
                (second, false)
            }
        }
        // The skipped hour: no such local time, a clock that has not changed yet. Read with
        // the offset before the change: an hour later on the new time is the same instant.
        LocalResult::None => {
            let later = zone
                .from_local_datetime(&(local + chrono::Duration::hours(1)))
                .earliest()?;
            (later.timestamp_millis(), false)
        }
    };
    Some((utc_ms, doubtful || !sure))
}

/// A values-only body's objects, in order, with scaler and unit each: a push profile
/// (`[[dlms.profile]]`), what the meter's push setup captures.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub name: String,
    pub objects: Vec<ProfileObject>,
}

/// One captured object: `class/OBIS/attribute`, and the scaler and unit its value is read
/// with (a values-only push carries neither).
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileObject {
    pub class_id: u16,
    pub obis: Obis,
    pub attribute: i8,
    pub scaler: i8,
    pub unit: Option<&'static str>,
}

impl ProfileObject {
    /// Parses `class/A-B:C.D.E.F/attribute` (`3/1-0:1.8.0.255/2`), read with scaler 0 and no
    /// unit; the error says what is wrong.
    pub fn parse(spec: &str) -> Result<ProfileObject, String> {
        let parts: Vec<&str> = spec.trim().split('/').collect();
        let [class, obis, attribute] = parts.as_slice() else {
            return Err(format!(
                "{spec:?} is not class/OBIS/attribute (for example \"3/1-0:1.8.0.255/2\")"
            ));
        };
        let class_id = class
            .parse::<u16>()
            .map_err(|_| format!("{spec:?}: class {class:?} is not a number 0 to 65535"))?;
        let obis = Obis::parse(obis)
            .ok_or_else(|| format!("{spec:?}: {obis:?} is not an OBIS code A-B:C.D.E.F"))?;
        let attribute = attribute
            .parse::<i8>()
            .ok()
            .filter(|a| *a >= 1)
            .ok_or_else(|| format!("{spec:?}: attribute {attribute:?} is not 1 to 127"))?;
        Ok(ProfileObject {
            class_id,
            obis,
            attribute,
            scaler: 0,
            unit: None,
        })
    }

    /// Whether its value is one to read: attribute 2 (the value of Data, Register, Extended
    /// register, Demand register and the time of a Clock). The logical name (1) a push setup
    /// names itself with, scaler-units and capture times are not readings.
    fn is_value(&self) -> bool {
        self.attribute == 2
    }

    /// What this object's value must be and `value` is not, if so: a logical name (the
    /// first attribute) is an OBIS octet-string, a clock's time a date-time, a register's
    /// value (of a Register, Extended register or Demand register) a number. A Data
    /// object's value may be anything.
    fn misfit(&self, value: &Data<'_>) -> Option<&'static str> {
        let number = matches!(value, Data::Float32(_) | Data::Float64(_) | Data::Bcd(_))
            || value.as_integer().is_some();
        match (self.class_id, self.attribute) {
            (_, 1) => (!matches!(value, Data::OctetString(b) if b.len() == 6))
                .then_some("an OBIS octet-string"),
            (8, 2) => (!matches!(value, Data::DateTime(_))
                && !matches!(value, Data::OctetString(b) if b.len() == 12))
            .then_some("a date-time"),
            // A register without a value now (null-data) is no reading, and no misfit.
            (3..=5, 2) => (!number && !matches!(value, Data::Null)).then_some("a number"),
            _ => None,
        }
    }
}

impl Profile {
    /// The body's objects through this profile: its top-level elements (one structure of
    /// them, however deeply wrapped), else its leaves, paired with the profile's objects by
    /// position, each value of its object's kind. Else why not.
    fn objects<'b, 'a>(&self, body: &'b Data<'a>) -> Result<Vec<Object<'b, 'a>>, String> {
        let elements = top_elements(body);
        let values = if elements.len() == self.objects.len() {
            elements
        } else {
            let mut leaves = Vec::new();
            values(body, &mut leaves);
            if leaves.len() != self.objects.len() {
                let (top, leaves) = Profile::counts(body);
                return Err(format!(
                    "push profile {:?} names {} objects; the body has {top} elements ({leaves} values)",
                    self.name,
                    self.objects.len()
                ));
            }
            leaves
        };
        for (i, (p, value)) in self.objects.iter().zip(&values).enumerate() {
            if let Some(wanted) = p.misfit(value) {
                return Err(format!(
                    "push profile {:?}: object {} ({}/{}/{}) needs {wanted}, the body has {} there",
                    self.name,
                    i + 1,
                    p.class_id,
                    p.obis.channel(),
                    p.attribute,
                    value.type_name()
                ));
            }
        }
        Ok(self
            .objects
            .iter()
            .zip(values)
            .filter(|(p, _)| p.is_value())
            .map(|(p, value)| Object {
                obis: p.obis,
                value,
                scaler: p.scaler,
                unit: p.unit,
            })
            .collect())
    }

    /// How many values a body has, for the error when they are not the profile's.
    fn counts(body: &Data<'_>) -> (usize, usize) {
        let top = top_elements(body).len();
        let mut leaves = Vec::new();
        values(body, &mut leaves);
        (top, leaves.len())
    }
}

/// A body's elements: those of its structure (or array), however deeply that is wrapped in
/// structures of one element; a body that is one value is that value.
fn top_elements<'b, 'a>(body: &'b Data<'a>) -> Vec<&'b Data<'a>> {
    let mut top = body;
    while let Data::Structure(items) | Data::Array(items) = top {
        match items.as_slice() {
            [only @ (Data::Structure(_) | Data::Array(_))] => top = only,
            _ => return items.iter().collect(),
        }
    }
    vec![top]
}

/// The readings and status of a body.
#[derive(Debug, Default)]
pub struct Meaning {
    pub readings: Vec<Reading<'static>>,
    pub status: DeviceStatus,
    pub rejected: Vec<Rejected>,
    /// The clock object's time (Unix ms, doubtful).
    pub clock: Option<(i64, bool)>,
    /// Objects named (OBIS codes found, or the profile's values read).
    pub objects: usize,
    /// The zone of date-times without a deviation.
    zone: Option<Tz>,
    /// When the push was received (which of a repeated hour its clock means).
    received_at_ms: Option<i64>,
    /// The rank of the identifier `status.serial` was taken from ([`Obis::serial_rank`]).
    serial_rank: Option<u8>,
    /// Why the profile given was not used (its object count is not the body's).
    pub profile_mismatch: Option<String>,
    /// The alarm registers read: register number (0-0:97.98.E) and value.
    alarms: Vec<(u8, u32)>,
    /// Their events, once [`Meaning::stamp`] gave the body its time.
    pub events: Vec<Event>,
}

/// One object: its code, its value, and its `{scaler, unit}` if it came with one.
struct Object<'b, 'a> {
    obis: Obis,
    value: &'b Data<'a>,
    scaler: i8,
    unit: Option<&'static str>,
}

/// Reads a body: through the context's profile when the body fits it (as many values as it
/// names objects, each of its object's kind), else as a self-describing body (unless the
/// profile was named for the meter: then nothing). `Meaning::profile_mismatch` says when a
/// profile was given but did not fit. Times are filled later ([`Meaning::stamp`]).
pub fn meaning(body: &Data<'_>, context: &Context<'_>, received_at_ms: Option<i64>) -> Meaning {
    let mut m = Meaning {
        zone: context.zone,
        received_at_ms,
        ..Meaning::default()
    };
    let through_profile = context.profile.map(|p| p.objects(body));
    let objects = match through_profile {
        Some(Ok(objects)) => objects,
        // A profile its meter's credential names must fit: what does not is a dead letter
        // that says why, not a guess. One chosen by manufacturer may meet the maker's
        // self-describing pushes too: those are read as such.
        Some(Err(mismatch)) if context.profile_named => {
            m.profile_mismatch = Some(mismatch);
            return m;
        }
        through => {
            if let Some(Err(mismatch)) = through {
                m.profile_mismatch = Some(mismatch);
            }
            let mut objects = Vec::new();
            collect(body, &mut objects);
            objects
        }
    };
    m.objects = objects.len();
    for (i, o) in objects.iter().enumerate() {
        m.object(i, o);
    }
    m
}

/// The OBIS code of a capture-object definition `{class-id, logical name, attribute index,
/// data index, ...}`, as a push that carries its own capture list sends it (Energomera).
fn capture_object<'a>(data: &Data<'a>) -> Option<Obis> {
    match data {
        Data::Structure(m) => match m.as_slice() {
            [Data::LongUnsigned(_), Data::OctetString(code), Data::Integer(_), Data::LongUnsigned(_), ..] => {
                Obis::from_bytes(code)
            }
            _ => None,
        },
        _ => None,
    }
}

/// Every (OBIS, value[, {scaler, unit}]) run in `data`, at any depth, in order.
fn collect<'b, 'a>(data: &'b Data<'a>, out: &mut Vec<Object<'b, 'a>>) {
    let (Data::Structure(items) | Data::Array(items)) = data else {
        return;
    };
    // A push that carries its own capture list: its first element is the list, and object k
    // of the list is element k of the push (the list itself being the first).
    if let Some(Data::Array(list)) = items.first() {
        let codes: Option<Vec<Obis>> = list.iter().map(capture_object).collect();
        if let Some(codes) = codes.filter(|c| !c.is_empty() && c.len() == items.len()) {
            for (obis, value) in codes.into_iter().zip(items).skip(1) {
                out.push(Object {
                    obis,
                    value,
                    scaler: 0,
                    unit: None,
                });
            }
            return;
        }
    }
    let mut i = 0;
    while i < items.len() {
        if let (Data::OctetString(code), Some(value)) = (&items[i], items.get(i + 1)) {
            if let Some(obis) = Obis::from_bytes(code) {
                let scaler_unit = match items.get(i + 2) {
                    Some(Data::Structure(su)) => match su.as_slice() {
                        [s, Data::Enum(u)] => s
                            .as_integer()
                            .and_then(|s| i8::try_from(s).ok())
                            .map(|s| (s, unit_symbol(*u))),
                        _ => None,
                    },
                    _ => None,
                };
                let (scaler, unit) = scaler_unit.unwrap_or((0, None));
                out.push(Object {
                    obis,
                    value,
                    scaler,
                    unit,
                });
                i += if scaler_unit.is_some() { 3 } else { 2 };
                continue;
            }
        }
        collect(&items[i], out);
        i += 1;
    }
}

/// The leaves of a values-only body, in order.
fn values<'b, 'a>(data: &'b Data<'a>, out: &mut Vec<&'b Data<'a>>) {
    match data {
        Data::Structure(items) | Data::Array(items) => {
            for item in items {
                values(item, out);
            }
        }
        leaf => out.push(leaf),
    }
}

/// Text of an octet-string or string, printable, without NUL padding.
fn text(bytes: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(bytes)
        .ok()?
        .trim_end_matches('\0')
        .trim();
    (!s.is_empty() && s.chars().all(|c| !c.is_control())).then(|| s.to_string())
}

impl Meaning {
    fn object(&mut self, index: usize, o: &Object<'_, '_>) {
        let channel = o.obis.channel();
        // The value, scaled: an integer exactly (see [`scaled_integer`]).
        let number = match o.value {
            Data::Float32(v) => Some(scaled(f64::from(*v), o.scaler)),
            Data::Float64(v) => Some(scaled(*v, o.scaler)),
            Data::Bcd(b) => Some(scaled(f64::from((b >> 4) * 10 + (b & 0x0F)), o.scaler)),
            // A state (a disconnector's output, 0-0:96.3.10): 1 or 0.
            Data::Boolean(b) => Some(f64::from(u8::from(*b))),
            v => v.as_integer().map(|i| scaled_integer(i, o.scaler)),
        };
        if o.obis.is_clock() {
            let dt = match o.value {
                Data::DateTime(b) => Some(*b),
                Data::OctetString(b) => <&[u8; 12]>::try_from(*b).ok(),
                _ => None,
            };
            if let Some(t) = dt.and_then(|b| date_time_in(b, self.zone, self.received_at_ms)) {
                self.clock = Some(t);
            }
            return;
        }
        if o.obis.is_firmware() {
            if let Data::OctetString(b) | Data::VisibleString(b) | Data::Utf8String(b) = o.value {
                if let Some(t) = text(b) {
                    self.status.firmware = Some(t);
                }
            }
            return;
        }
        if let Some(rank) = o.obis.serial_rank() {
            if let Data::OctetString(b) | Data::VisibleString(b) | Data::Utf8String(b) = o.value {
                if let Some(t) = text(b) {
                    if self.serial_rank.is_none_or(|r| rank < r) {
                        self.serial_rank = Some(rank);
                        self.status.serial = Some(t);
                    }
                    return;
                }
            }
        }
        if o.obis.is_alarm() {
            if let Some(flags) = o.value.as_integer().and_then(|v| u32::try_from(v).ok()) {
                self.status.error_flags = Some(self.status.error_flags.unwrap_or(0) | flags);
                self.alarms.push((o.obis.0[4], flags));
            }
            return;
        }
        // Alarm filters and descriptors (0-0:97.98.10 to 29) are settings, not readings; so
        // is a push setup.
        if matches!(o.obis.0, [0, _, 97, 98, _, _]) || o.obis.is_push_setup() {
            return;
        }
        match number {
            Some(value) if value.is_finite() => self.readings.push(Reading {
                channel: Cow::Owned(channel),
                ts_ms: 0,
                value,
                unit: Cow::Borrowed(o.unit.unwrap_or("")),
                quality: 0,
            }),
            Some(_) => self.rejected.push(Rejected {
                position: crate::Position::Record(index),
                reason: format!("{channel}: a value that is not a number"),
            }),
            // Text (serial numbers, names), dates, structures: not readings.
            None => {}
        }
    }

    /// Gives every reading its time: the notification's date-time, else the clock object's,
    /// else `received_at_ms` (flagged as the receiver's).
    pub fn stamp(&mut self, notification: Option<(i64, bool)>, received_at_ms: i64) {
        let (ts, q) = match notification.or(self.clock) {
            Some((ts, doubtful)) => (ts, if doubtful { quality::CLOCK_INVALID } else { 0 }),
            None => (received_at_ms, quality::TIME_FROM_RECEIVER),
        };
        for r in &mut self.readings {
            r.ts_ms = ts;
            r.quality |= q;
        }
        for (register, flags) in std::mem::take(&mut self.alarms) {
            self.events.extend(alarm_events(register, flags, ts));
        }
    }
}

/// The events of alarm register `register` (0-0:97.98.`register`) holding `flags`: register
/// 0 (alarm register 1) by [`DLMS_ALARM_BITS`]; register 1 (alarm register 2) by DSMR's
/// voltage sag (bits 0-2) and swell (bits 3-5) per phase; register 2 bit 0, last gasp, a
/// power failure. Bits of other registers are `device_fault`s that name register and bit.
fn alarm_events(register: u8, flags: u32, ts_ms: i64) -> Vec<Event> {
    let prefix = format!("0-0:97.98.{register}");
    match register {
        0 => events::flag_events(DLMS_ALARM_BITS, &prefix, flags, ts_ms),
        1 => events::flag_events(ALARM_REGISTER_2, &prefix, flags, ts_ms),
        2 => events::flag_events(ALARM_REGISTER_3, &prefix, flags, ts_ms),
        _ => events::flag_events(&[], &prefix, flags, ts_ms),
    }
}

/// DSMR alarm register 2: voltage sag L1-L3, swell L1-L3.
const ALARM_REGISTER_2: events::BitTable = &[
    (0, EventKind::VoltageSag),
    (1, EventKind::VoltageSag),
    (2, EventKind::VoltageSag),
    (3, EventKind::VoltageSwell),
    (4, EventKind::VoltageSwell),
    (5, EventKind::VoltageSwell),
];

/// DSMR alarm register 3: last gasp (and its test).
const ALARM_REGISTER_3: events::BitTable = &[(0, EventKind::PowerFailure)];

#[cfg(test)]
mod alarm_tests {
    use super::*;

    #[test]
    fn alarm_registers_become_events_of_their_meaning() {
        // Register 1: bit 13 fraud attempt, bit 1 replace battery.
        let events = alarm_events(0, 1 << 13 | 1 << 1, 5);
        let got: Vec<_> = events.iter().map(|e| (e.kind, e.code.as_str())).collect();
        assert_eq!(
            got,
            [
                (EventKind::LowBattery, "0-0:97.98.0 bit 1"),
                (EventKind::FraudAttempt, "0-0:97.98.0 bit 13"),
            ]
        );
        assert_eq!(alarm_events(1, 1 << 4, 5)[0].kind, EventKind::VoltageSwell);
        assert_eq!(alarm_events(2, 1, 5)[0].kind, EventKind::PowerFailure);
        let other = alarm_events(7, 1 << 3, 5);
        assert_eq!(other[0].kind, EventKind::DeviceFault);
        assert_eq!(other[0].code, "0-0:97.98.7 bit 3");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn obis_channels_units_and_scalers() {
        assert_eq!(Obis([1, 0, 1, 8, 0, 255]).channel(), "1-0:1.8.0");
        assert_eq!(Obis([1, 0, 99, 1, 0, 2]).channel(), "1-0:99.1.0.2");
        assert_eq!(unit_symbol(30), Some("Wh"));
        assert_eq!(unit_symbol(13), Some("m3"));
        assert_eq!(unit_symbol(255), None);
        assert_eq!(scaled(4_408_736.0, -3), 4408.736);
        assert_eq!(scaled(2337.0, -1), 233.7);
        assert_eq!(scaled(12.0, 3), 12_000.0);
        // Beyond 2^53: the decimal's closest double, not a double rounding.
        assert_eq!(
            scaled_integer(7_490_934_182_599_440_749, -3),
            7_490_934_182_599_441.0
        );
        assert_eq!(
            scaled_integer(14_657_270_382_044_841_429, 3),
            "14657270382044841429e3".parse::<f64>().unwrap()
        );
        assert_eq!(scaled_integer(4_408_736, -3), 4408.736);
    }

    #[test]
    fn date_times_with_their_offset() {
        // 2021-07-19 15:46:35 local, deviation -120 (UTC+2): 13:46:35 UTC.
        let b = [0x07, 0xE5, 7, 19, 1, 15, 46, 35, 0, 0xFF, 0x88, 0x80];
        let (ms, doubtful) = date_time(&b).unwrap();
        assert_eq!(
            chrono::DateTime::from_timestamp_millis(ms)
                .unwrap()
                .to_rfc3339(),
            "2021-07-19T13:46:35+00:00"
        );
        assert!(!doubtful);
        // Deviation not specified: taken as UTC, flagged.
        let b = [0x07, 0xE5, 7, 19, 1, 15, 46, 35, 0xFF, 0x80, 0x00, 0x00];
        let (ms2, doubtful) = date_time(&b).unwrap();
        assert_eq!(ms2, ms + 120 * 60_000);
        assert!(doubtful);
        assert!(date_time(&[0xFF, 0xFF, 7, 19, 1, 15, 46, 35, 0, 0, 0, 0]).is_none());
        assert!(date_time(&[0x07, 0xE5, 13, 19, 1, 15, 46, 35, 0, 0, 0, 0]).is_none());
    }

    #[test]
    fn a_self_describing_body() {
        let obis = |b: &'static [u8; 6]| Data::OctetString(b);
        let body = Data::Structure(vec![
            obis(&[0, 0, 1, 0, 0, 255]),
            Data::OctetString(&[0x07, 0xE5, 7, 19, 1, 15, 46, 35, 0, 0xFF, 0x88, 0x80]),
            Data::Structure(vec![
                obis(&[1, 0, 1, 8, 0, 255]),
                Data::DoubleLongUnsigned(9108),
                Data::Structure(vec![Data::Integer(0), Data::Enum(30)]),
            ]),
            Data::Structure(vec![
                obis(&[1, 0, 32, 7, 0, 255]),
                Data::LongUnsigned(2345),
                Data::Structure(vec![Data::Integer(-1), Data::Enum(35)]),
            ]),
            Data::Structure(vec![
                obis(&[0, 0, 96, 1, 0, 255]),
                Data::OctetString(b"1KFM0100000035"),
            ]),
            Data::Structure(vec![
                obis(&[1, 0, 0, 2, 0, 255]),
                Data::VisibleString(b"V1.2\0\0"),
            ]),
            Data::Structure(vec![
                obis(&[0, 0, 97, 98, 0, 255]),
                Data::DoubleLongUnsigned(5),
            ]),
        ]);
        let mut m = meaning(&body, &Context::default(), None);
        m.stamp(None, 1);
        let got: Vec<(String, f64, String)> = m
            .readings
            .iter()
            .map(|r| (r.channel.to_string(), r.value, r.unit.to_string()))
            .collect();
        assert_eq!(
            got,
            [
                ("1-0:1.8.0".to_string(), 9108.0, "Wh".to_string()),
                ("1-0:32.7.0".to_string(), 234.5, "V".to_string()),
            ]
        );
        assert_eq!(m.readings[0].ts_ms, 1_626_702_395_000);
        assert_eq!(m.status.firmware.as_deref(), Some("V1.2"));
        assert_eq!(m.status.error_flags, Some(5));
    }

    fn profile(name: &str, objects: &[(&str, i8, Option<&str>)]) -> Profile {
        Profile {
            name: name.into(),
            objects: objects
                .iter()
                .map(|(spec, scaler, unit)| ProfileObject {
                    scaler: *scaler,
                    unit: unit.map(|u| unit_of_symbol(u).unwrap()),
                    ..ProfileObject::parse(spec).unwrap()
                })
                .collect(),
        }
    }

    fn named(p: &Profile, zone: Option<Tz>) -> Context<'_> {
        Context {
            profile: Some(p),
            profile_named: true,
            zone,
        }
    }

    fn rows(m: &Meaning) -> Vec<(String, f64, String, u16)> {
        m.readings
            .iter()
            .map(|r| {
                (
                    r.channel.to_string(),
                    r.value,
                    r.unit.to_string(),
                    r.quality,
                )
            })
            .collect()
    }

    #[test]
    fn a_values_only_body_through_a_profile() {
        let body = Data::Structure(vec![
            Data::DoubleLongUnsigned(4_408_736),
            Data::LongUnsigned(2307),
            Data::OctetString(b"SERIAL"),
        ]);
        assert_eq!(
            meaning(&body, &Context::default(), None).objects,
            0,
            "no OBIS codes: nothing without a profile"
        );
        let p = profile(
            "test",
            &[
                ("3/1-0:1.8.0.255/2", -3, Some("Wh")),
                ("3/1-0:32.7.0.255/2", -1, Some("V")),
                ("1/0-0:96.1.0.255/2", 0, None),
            ],
        );
        let mut m = meaning(&body, &named(&p, None), None);
        m.stamp(None, 5);
        let flag = quality::TIME_FROM_RECEIVER;
        assert_eq!(
            rows(&m),
            [
                ("1-0:1.8.0".to_string(), 4408.736, "Wh".to_string(), flag),
                ("1-0:32.7.0".to_string(), 230.7, "V".to_string(), flag),
            ]
        );
        assert_eq!(m.status.serial.as_deref(), Some("SERIAL"));
        assert_eq!(m.profile_mismatch, None);
    }

    #[test]
    fn an_idis_push_names_its_push_setup_first_and_that_is_no_reading() {
        // IDIS: the first captured object is the push setup's logical name (class 40,
        // attribute 1), then the clock's time, then the registers; here wrapped once more.
        let setup = [0u8, 0, 25, 9, 0, 255];
        let body = Data::Structure(vec![Data::Structure(vec![
            Data::OctetString(&setup),
            Data::OctetString(&[0x07, 0xE8, 3, 31, 7, 2, 30, 0, 0, 0x80, 0x00, 0x80]),
            Data::DoubleLongUnsigned(123_456),
            Data::DoubleLongUnsigned(7),
        ])]);
        let p = profile(
            "idis",
            &[
                ("40/0-0:25.9.0.255/1", 0, None),
                ("8/0-0:1.0.0.255/2", 0, None),
                ("3/1-0:1.8.0.255/2", 0, Some("Wh")),
                ("3/1-0:2.8.0.255/2", 0, Some("Wh")),
            ],
        );
        // 2024-03-31 02:30 local without a deviation: in Vienna's skipped hour, read with
        // the offset before the change (UTC+1): 01:30 UTC, flagged.
        let vienna: Tz = "Europe/Vienna".parse().unwrap();
        let mut m = meaning(&body, &named(&p, Some(vienna)), None);
        m.stamp(None, 5);
        let at = 1_711_848_600_000; // 2024-03-31T01:30:00Z
        assert_eq!(m.clock, Some((at, true)));
        let flag = quality::CLOCK_INVALID;
        assert_eq!(
            rows(&m),
            [
                ("1-0:1.8.0".to_string(), 123_456.0, "Wh".to_string(), flag),
                ("1-0:2.8.0".to_string(), 7.0, "Wh".to_string(), flag),
            ]
        );
        // A profile of another length is not used, and says why.
        let short = profile("short", &[("3/1-0:1.8.0.255/2", 0, None)]);
        let m = meaning(&body, &named(&short, None), None);
        assert!(m.readings.is_empty());
        assert_eq!(
            m.profile_mismatch.as_deref(),
            Some("push profile \"short\" names 1 objects; the body has 4 elements (4 values)")
        );
    }

    #[test]
    fn a_profile_fits_only_a_body_of_its_kinds_and_a_named_one_is_not_guessed_around() {
        // A self-describing push of 3 elements (OBIS, value, scaler-unit)...
        let code = [1u8, 0, 1, 8, 0, 255];
        let body = Data::Structure(vec![
            Data::OctetString(&code),
            Data::DoubleLongUnsigned(9108),
            Data::Structure(vec![Data::Integer(0), Data::Enum(30)]),
        ]);
        // ...meets a profile of 3 registers (its maker's): the counts match, the kinds do
        // not (an OBIS code where a number must be): read as self-describing.
        let p = profile(
            "kfm",
            &[
                ("3/1-0:1.7.0.255/2", 0, Some("W")),
                ("3/1-0:2.7.0.255/2", 0, Some("W")),
                ("3/1-0:3.7.0.255/2", 0, Some("var")),
            ],
        );
        let by_maker = Context {
            profile: Some(&p),
            profile_named: false,
            zone: None,
        };
        let mut m = meaning(&body, &by_maker, None);
        m.stamp(None, 5);
        assert_eq!(
            rows(&m),
            [(
                "1-0:1.8.0".to_string(),
                9108.0,
                "Wh".to_string(),
                quality::TIME_FROM_RECEIVER
            )]
        );
        assert_eq!(
            m.profile_mismatch.as_deref(),
            Some("push profile \"kfm\": object 1 (3/1-0:1.7.0/2) needs a number, the body has octet-string there")
        );
        // A register without a value (null-data) fits: it is no reading, the others are.
        let with_null = Data::Structure(vec![Data::Null, Data::LongUnsigned(5), Data::Long(-2)]);
        let mut m = meaning(&with_null, &named(&p, None), None);
        m.stamp(None, 5);
        assert_eq!(m.profile_mismatch, None);
        assert_eq!(
            rows(&m)
                .into_iter()
                .map(|(c, v, ..)| (c, v))
                .collect::<Vec<_>>(),
            [
                ("1-0:2.7.0".to_string(), 5.0),
                ("1-0:3.7.0".to_string(), -2.0)
            ]
        );
        // Named for the meter: nothing is guessed; the mismatch is the answer.
        let m = meaning(&body, &named(&p, None), None);
        assert!(m.readings.is_empty() && m.objects == 0);
        assert!(m.profile_mismatch.is_some());
        // An IDIS push that does not fit a named profile: its push setup's name is not
        // stored as a reading of 0-0:25.9.0 (it is no reading even when guessed).
        let setup = [0u8, 0, 25, 9, 0, 255];
        let idis = Data::Structure(vec![Data::OctetString(&setup), Data::DoubleLongUnsigned(7)]);
        let m = meaning(&idis, &Context::default(), None);
        assert!(m.readings.is_empty());
    }

    #[test]
    fn the_serial_is_the_meters_own() {
        let (gas, ldn) = ([0u8, 1, 96, 1, 0, 255], [0u8, 0, 42, 0, 0, 255]);
        let body = Data::Structure(vec![
            Data::OctetString(&gas),
            Data::OctetString(b"GAS-METER-1"),
            Data::OctetString(&ldn),
            Data::OctetString(b"LDN-1"),
        ]);
        let m = meaning(&body, &Context::default(), None);
        assert_eq!(m.status.serial.as_deref(), Some("LDN-1"));
    }

    #[test]
    fn date_times_without_a_deviation_in_the_meters_zone() {
        let vienna: Tz = "Europe/Vienna".parse().unwrap();
        let at = |b: [u8; 12]| date_time_in(&b, Some(vienna), None).unwrap();
        // Summer: 2024-07-01 12:00 local = 10:00 UTC, sure.
        assert_eq!(
            at([0x07, 0xE8, 7, 1, 1, 12, 0, 0, 0, 0x80, 0, 0x80]),
            (1_719_828_000_000, false)
        );
        // 2024-10-27 02:30 happens twice. A set DST bit: the first. A clear one (many meters
        // never set it) or none: the second, flagged, unless it was received before the
        // second could be (then the first, sure).
        let first = 1_729_989_000_000; // 00:30 UTC
        let second = first + 3_600_000;
        let fold = |status: u8| [0x07, 0xE8, 10, 27, 7, 2, 30, 0, 0, 0x80, 0, status];
        assert_eq!(at(fold(0x80)), (first, false));
        assert_eq!(at(fold(0x00)), (second, true));
        assert_eq!(at(fold(0xFF)), (second, true));
        let received = |at_ms: i64| date_time_in(&fold(0x00), Some(vienna), Some(at_ms)).unwrap();
        assert_eq!(received(first + 60_000), (first, false));
        assert_eq!(received(second + 60_000), (second, true));
        // A deviation given wins over the zone; one beyond any zone's is none.
        assert_eq!(
            at([0x07, 0xE8, 7, 1, 1, 12, 0, 0, 0, 0xFF, 0x88, 0x80]),
            (1_719_828_000_000, false)
        );
        assert_eq!(
            at([0x07, 0xE8, 7, 1, 1, 12, 0, 0, 0, 0x10, 0x00, 0x80]),
            (1_719_828_000_000, true),
            "deviation 4096 min: read in the zone, flagged"
        );
        // Without a zone: as UTC, flagged. Hundredths beyond 99: not a time.
        assert_eq!(
            date_time(&[0x07, 0xE8, 7, 1, 1, 12, 0, 0, 0, 0x80, 0, 0x80]),
            Some((1_719_835_200_000, true))
        );
        assert_eq!(
            date_time(&[0x07, 0xE8, 7, 1, 1, 12, 0, 0, 100, 0, 0, 0]),
            None
        );
    }

    #[test]
    fn profile_objects_and_obis_codes_parse_or_say_why_not() {
        let o = ProfileObject::parse("3/1-0:1.8.0.255/2").unwrap();
        assert_eq!(
            (o.class_id, o.obis, o.attribute),
            (3, Obis([1, 0, 1, 8, 0, 255]), 2)
        );
        assert_eq!(Obis::parse("1-0:1.8.0"), Some(Obis([1, 0, 1, 8, 0, 255])));
        assert_eq!(Obis::parse("1-0:1.8.0.7"), Some(Obis([1, 0, 1, 8, 0, 7])));
        for bad in [
            "1-0:1.8",
            "1-0:1.8.0.256",
            "1:0-1.8.0",
            "1-0:1.8.+1",
            "a-0:1.8.0",
        ] {
            assert_eq!(Obis::parse(bad), None, "{bad}");
        }
        for (bad, says) in [
            ("1-0:1.8.0.255", "class/OBIS/attribute"),
            ("x/1-0:1.8.0.255/2", "class \"x\""),
            ("3/1-0:1.8/2", "not an OBIS code"),
            ("3/1-0:1.8.0.255/0", "attribute \"0\""),
        ] {
            let e = ProfileObject::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert_eq!(unit_of_symbol("m3"), Some("m3"));
        assert_eq!(unit_of_symbol("kWh"), None);
    }
}
