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

use meterflow_proto::quality;

use super::axdr::Data;
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
    let year = u16::from_be_bytes([b[0], b[1]]);
    let (month, day, hour, minute, second) = (b[2], b[3], b[5], b[6], b[7]);
    if year == 0xFFFF || [month, day, hour, minute, second].contains(&0xFF) {
        return None;
    }
    let hundredths = if b[8] == 0xFF { 0 } else { b[8] };
    let deviation = i16::from_be_bytes([b[9], b[10]]);
    let status = b[11];
    let local = chrono::NaiveDate::from_ymd_opt(i32::from(year), u32::from(month), u32::from(day))?
        .and_hms_milli_opt(
            u32::from(hour),
            u32::from(minute),
            u32::from(second),
            u32::from(hundredths) * 10,
        )?;
    let local_ms = local.and_utc().timestamp_millis();
    // 0x8000: not specified. Else UTC = local + deviation (minutes): 0xFF88 (-120) is UTC+2.
    let unknown_offset = deviation == i16::MIN;
    let utc_ms = if unknown_offset {
        local_ms
    } else {
        local_ms + i64::from(deviation) * 60_000
    };
    // Status bits: 0x01 invalid, 0x02 doubtful, 0x08 clock status invalid.
    let doubtful = status != 0xFF && status & 0x0B != 0;
    Some((utc_ms, unknown_offset || doubtful))
}

/// A values-only body's objects, in order, with scaler and unit each.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub name: String,
    pub objects: Vec<ProfileObject>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProfileObject {
    pub obis: Obis,
    pub scaler: i8,
    pub unit: Option<&'static str>,
}

/// The readings and status of a body.
#[derive(Debug, Default)]
pub struct Meaning {
    pub readings: Vec<Reading<'static>>,
    pub status: DeviceStatus,
    pub rejected: Vec<Rejected>,
    /// The clock object's time (Unix ms, doubtful).
    pub clock: Option<(i64, bool)>,
    /// Objects named (OBIS codes found).
    pub objects: usize,
}

/// One object: its code, its value, and its `{scaler, unit}` if it came with one.
struct Object<'b, 'a> {
    obis: Obis,
    value: &'b Data<'a>,
    scaler: i8,
    unit: Option<&'static str>,
}

/// Reads a self-describing body; with `profile`, a values-only one. Times are filled later
/// ([`Meaning::stamp`]).
pub fn meaning(body: &Data<'_>, profile: Option<&Profile>) -> Meaning {
    let mut m = Meaning::default();
    let mut objects = Vec::new();
    collect(body, &mut objects);
    if objects.is_empty() {
        if let Some(profile) = profile {
            let mut leaves = Vec::new();
            values(body, &mut leaves);
            for (p, value) in profile.objects.iter().zip(leaves) {
                objects.push(Object {
                    obis: p.obis,
                    value,
                    scaler: p.scaler,
                    unit: p.unit,
                });
            }
        }
    }
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
            v => v.as_integer().map(|i| scaled_integer(i, o.scaler)),
        };
        if o.obis.is_clock() {
            let dt = match o.value {
                Data::DateTime(b) => Some(*b),
                Data::OctetString(b) => <&[u8; 12]>::try_from(*b).ok(),
                _ => None,
            };
            if let Some(t) = dt.and_then(date_time) {
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
        if o.obis.is_alarm() {
            if let Some(flags) = o.value.as_integer().and_then(|v| u32::try_from(v).ok()) {
                self.status.error_flags = Some(self.status.error_flags.unwrap_or(0) | flags);
            }
            return;
        }
        // Alarm filters and descriptors (0-0:97.98.10 to 29) are settings, not readings.
        if matches!(o.obis.0, [0, _, 97, 98, _, _]) {
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
        let mut m = meaning(&body, None);
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

    #[test]
    fn a_values_only_body_through_a_profile() {
        let body = Data::Structure(vec![
            Data::DoubleLongUnsigned(4_408_736),
            Data::LongUnsigned(2307),
            Data::OctetString(b"SERIAL"),
        ]);
        assert_eq!(
            meaning(&body, None).objects,
            0,
            "no OBIS codes: nothing without a profile"
        );
        let profile = Profile {
            name: "test".into(),
            objects: vec![
                ProfileObject {
                    obis: Obis([1, 0, 1, 8, 0, 255]),
                    scaler: -3,
                    unit: unit_symbol(30),
                },
                ProfileObject {
                    obis: Obis([1, 0, 32, 7, 0, 255]),
                    scaler: -1,
                    unit: unit_symbol(35),
                },
            ],
        };
        let mut m = meaning(&body, Some(&profile));
        m.stamp(None, 5);
        let got: Vec<(String, f64, String, u16)> = m
            .readings
            .iter()
            .map(|r| {
                (
                    r.channel.to_string(),
                    r.value,
                    r.unit.to_string(),
                    r.quality,
                )
            })
            .collect();
        let flag = quality::TIME_FROM_RECEIVER;
        assert_eq!(
            got,
            [
                ("1-0:1.8.0".to_string(), 4408.736, "Wh".to_string(), flag),
                ("1-0:32.7.0".to_string(), 230.7, "V".to_string(), flag),
            ]
        );
    }
}
