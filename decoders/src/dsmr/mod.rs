//! DSMR P1 telegrams (DSMR 2.2 to 5.0, Belgian e-MUCS, Luxembourg Smarty, and the meters that
//! speak the same text: EasyMeter Q3D, Kamstrup, Sagemcom, heat meters).
//!
//! This module owns everything between the bytes of one telegram and its [`Reading`]s: framing,
//! the CRC check, the OBIS lexer, which objects become readings, and meter time to UTC. It does
//! not own which meter a telegram belongs to: the topic names the meter, so
//! [`Decoded::meter_id`] is always `None` (the equipment id `0-0:96.1.1` is only reported, in
//! [`Telegram::equipment_id`]).
//!
//! Two layers: a zero-copy lexer over bytes (`lexer`) yields each object as slices of the
//! payload; the builder here turns objects into readings whose channel and unit borrow from the
//! payload. [`parse`] returns the whole [`Telegram`] (header, objects, readings, CRC result),
//! [`decode_at`] is what the pipeline calls: [`parse`] without keeping the objects, plus the
//! strict checks. Nothing here panics or allocates per line (only the readings `Vec`, and a
//! `String` per rejected line); input need not be UTF-8 (text is handled as bytes).
//!
//! # Framing
//! - The telegram starts at the first `/` of the payload; bytes before it (gateway junk, the tail
//!   of an earlier telegram) are skipped. No `/` at all is [`DecodeError::Malformed`].
//! - The header is the rest of the `/` line ([`Telegram::header`]; not validated: `/KAM5`,
//!   `/NWA-WARMTELINK` and `/identification` all occur).
//! - Lines end in CRLF or in a bare LF (gateways strip the CR). Blank lines are skipped.
//! - The telegram ends at a line that starts with `!`, optionally followed by the CRC. Everything
//!   after the CRC (EasyMeter's 0xFF filler and counter lines, gateway junk) is ignored.
//! - No `!` (a cut-off telegram, e.g. a DSMR 2.2 read that stopped early): [`parse`] accepts it
//!   ([`Telegram::end`] is `None`); every line is still checked on its own, so a line cut in the
//!   middle of its value is rejected, not misread. [`decode_at`] accepts it only when the telegram
//!   declares no protocol version and has readings: a DSMR 4+ telegram (`1-3:0.2.8`, or e-MUCS
//!   `0-0:96.1.4`) always ends with `!` and a CRC, so without `!` it is
//!   [`DecodeError::Malformed`], as is a payload without `!` that yields no reading at all.
//!
//! # CRC
//! CRC-16/ARC (poly 0xA001 reflected, init 0, no xor) over every byte from `/` through `!`,
//! compared with the 1 to 4 hex digits after `!` (upper or lower case; unpadded CRCs such as
//! `!B9F` occur). When the bytes as received do not match and the telegram has bare-LF lines, it is
//! checked again as if every bare LF were CRLF (what the meter sent before a gateway stripped the
//! CRs); [`CrcCheck::computed`] is then that value. No CRC after `!` (DSMR 2.2/3.0, EasyMeter) is
//! fine. [`parse`] reports a mismatch in [`Telegram::crc`]; [`decode_at`] refuses it with
//! [`DecodeError::CrcMismatch`]. Anything else after `!` than hex digits and a line end (such as
//! `!12345`) is [`DecodeError::Malformed`].
//!
//! # Objects
//! `A-B:C.D.E(value)...`: each OBIS group 1 to 3 digits; an `F` group written `*F` or `.F` is
//! dropped from the channel when it is 255 (the default, as EasyMeter's `1-0:1.8.0*255` and some
//! spec examples' `1-0:31.7.0.255`), kept as written otherwise. No blank between id and `(`. A
//! line that starts with `(` continues the previous object (the DSMR 2.2/3.0 gas value), and a
//! group left open at a line end continues on the next line unless that line starts an object or
//! ends the telegram (long text messages broken by the meter).
//!
//! # What becomes a reading
//! The channel is the OBIS code as written (F=255 dropped), with its `0-1:`/`1-0:` medium and
//! channel prefix; the value is the decimal number (`[+-]digits[.digits]`, read exactly as
//! `str::parse::<f64>` would; decimal, never hex, unlike dsmr5's octet quirk for `0.2.8` and
//! `96.14.0`); the unit is the meter's (`*kWh`, `*m3`, `*GJ`, `*Wh`, `*varh`, ...) with case
//! variants of the known units folded to one spelling (`kwh` -> `kWh`, `kVArh` -> `kvarh`,
//! `M3` -> `m3`; unknown units kept as written; no scaling, so `Wh` stays `Wh`), `""` when the
//! value has none (counters, power factor, tariff indicator).
//! - One group holding a number: a reading at the telegram time. This includes counters
//!   (`96.7.21`, `32.32.0`), the tariff indicator `96.14.0`, switch and valve positions
//!   (`96.3.10`, `24.4.0`), thresholds (`17.0.0`, `31.4.0`).
//! - Two groups `(timestamp)(number)`: a reading at that timestamp: M-Bus values `0-n:24.2.1`
//!   (gas, water, heat), e-MUCS `0-n:24.2.3`, the month's peak demand `1-0:1.6.0`.
//! - DSMR 2.2/3.0 gas `0-n:24.3.0(ts)(status)(period)(count)(obis)(unit)` + `(value)`: a reading
//!   at its capture time with the unit of the sixth group; the channel stays `0-n:24.3.0`.
//! - Buffers (`C` = 98 or 99) in the profile layout `(entries)(obis)...(obis)` then per entry a
//!   capture time and one value per listed object are expanded: each numeric value becomes a
//!   reading of the listed object at the entry's time, or at the time found in an earlier
//!   column of the same entry (so the e-MUCS 13-month peak history `0-0:98.1.0` becomes
//!   `1-0:1.6.0` readings at the time each peak occurred: the same rows the monthly `1-0:1.6.0`
//!   object already gave, which the store dedupes). Buffers in other layouts (the Hungarian
//!   `0-0:98.1.0` billing snapshot, whose values are not labelled) are skipped, not rejected.
//! - The power-failure log `1-0:99.97.0` gives no readings but events: a `power_failure` at
//!   each entry's start (its end time minus its duration) and a `power_restored` at its end
//!   ([`Telegram::events`]; the placeholder entry of a meter with nothing logged gives none).
//! - Never readings, whatever their value looks like: identifiers and versions (`C` = 0:
//!   `0.0.0`, `0.2.8`, ...; `96.1.x`, `42.0.0`), the clock `0-0:1.0.0`, messages `96.13.x`, status
//!   words `96.5.x`/`96.10.x` (hex bit fields), the M-Bus device type `24.1.0`. Empty values `()`
//!   and objects of any other shape (e.g. two plain numbers) give no reading either; [`parse`]
//!   still lists them in [`Telegram::objects`].
//!
//! # Time
//! Electricity readings take the telegram clock `0-0:1.0.0(YYMMDDhhmmssX)`; values with their
//! own capture time take that. Meter times are Dutch/Belgian/Luxembourg wall-clock time: CET/CEST
//! under the EU rule (summer time from the last Sunday of March 01:00 UTC to the last Sunday of
//! October 01:00 UTC), computed here without a tz database, so `170102192002W` is
//! 2017-01-02T18:20:02Z and `200512135409S` 2020-05-12T11:54:09Z. The `X` flag (`S` summer,
//! `W` winter; absent in DSMR 2.2/3.0 gas times) decides where the wall clock alone cannot: the
//! autumn hour that occurs twice and the skipped spring hour (unflagged: winter time). A flag
//! that contradicts the date (the e-MUCS spec example's `200305122139S` in March) does not shift
//! the time, as in ndokter's dsmr_parser. Years 00-69 are 20YY, 70-99 19YY. A time that is no
//! calendar date (`632525252525S`, `000000000000W`) or lies before 2001 (an unset clock counting
//! from 2000-01-01; `700101010000W` is Unix 0) is no usable time:
//! - for the telegram clock, and for a telegram without one (DSMR 2.2, EasyMeter), the readings
//!   get the receive time (`received_at_ms` of [`decode_at`]; [`NO_TIME`] from [`parse`]) and the
//!   flag [`quality::TIME_FROM_RECEIVER`], plus [`quality::CLOCK_INVALID`] when the meter sent a
//!   clock that is not usable (a year-2000 stamp would also collide with the next power cycle's);
//! - for a value with its own capture time, there is no reading: an M-Bus channel without a
//!   capture is a placeholder (`(632525252525S)(00000.000)`, `(700101010000W)(00000000)`), not
//!   a measurement of 0.
//!
//! # Partly bad telegrams
//! A line that is not a well-formed object (no OBIS id, `1-0:99:97.0`, a blank before `(`,
//! characters after the value, a value not closed), a value that must be a number or a time but is
//! not, and a repeated object (the later one) are listed in [`Decoded::rejected`] with their
//! 1-based payload line; the other lines still give their readings. A telegram with rejections
//! and no reading is [`DecodeError::NothingUsable`]; one with neither is an empty [`Decoded`].

mod crc;
/// CRC-16/ARC as DSMR telegrams carry it (over `/` through `!`), for those who write telegrams.
pub use crc::crc16_arc;
mod lexer;
mod time;
mod value;

use std::borrow::Cow;

use meterflow_proto::quality;

use crate::events::{Event, EventKind};
use crate::{DecodeError, Decoded, Format, Position, Reading, Rejected};
use lexer::{Item, Lexer};
use time::{parse_stamp, Stamp, CLOCK_SET_FROM_MS};

/// `ts_ms` of readings that [`parse`] found no usable meter time for (with
/// [`quality::TIME_FROM_RECEIVER`] set); [`decode_at`] replaces it with the receive time.
pub const NO_TIME: i64 = i64::MIN;

/// The result of the CRC check of a telegram that has a CRC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrcCheck {
    /// The CRC written after `!`.
    pub stated: u16,
    /// The CRC of the bytes from `/` through `!` (see the module doc for bare-LF telegrams).
    pub computed: u16,
}

impl CrcCheck {
    pub fn is_valid(&self) -> bool {
        self.stated == self.computed
    }
}

/// An OBIS id as written in a telegram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Obis<'a> {
    /// `A-B:C.D.E`, with `*F`/`.F` as written unless F is 255: the reading's channel.
    pub code: &'a str,
    pub a: u16,
    pub b: u16,
    pub c: u16,
    pub d: u16,
    pub e: u16,
    /// The F group where one was written.
    pub f: Option<u16>,
}

impl<'a> Obis<'a> {
    /// Parses a whole OBIS id such as `1-0:1.8.1`, `0-1:24.2.1*255` or `1-0:31.7.0.255`.
    pub fn parse(text: &'a [u8]) -> Option<Obis<'a>> {
        match Obis::lex(text, 0) {
            Some((obis, end)) if end == text.len() => Some(obis),
            _ => None,
        }
    }

    /// Lexes an OBIS id at `at`; returns it and the offset after it.
    fn lex(p: &'a [u8], at: usize) -> Option<(Obis<'a>, usize)> {
        let mut i = at;
        let a = obis_group(p, &mut i)?;
        expect(p, &mut i, b'-')?;
        let b = obis_group(p, &mut i)?;
        expect(p, &mut i, b':')?;
        let c = obis_group(p, &mut i)?;
        expect(p, &mut i, b'.')?;
        let d = obis_group(p, &mut i)?;
        expect(p, &mut i, b'.')?;
        let e = obis_group(p, &mut i)?;
        let code_end = i;
        let mut f = None;
        if let Some(b'*' | b'.') = p.get(i) {
            let mut j = i + 1;
            f = Some(obis_group(p, &mut j)?);
            i = j;
        }
        let written = if f == Some(255) { code_end } else { i };
        let code = std::str::from_utf8(p.get(at..written)?).ok()?;
        Some((
            Obis {
                code,
                a,
                b,
                c,
                d,
                e,
                f,
            },
            i,
        ))
    }

    /// Identity of the object for duplicate detection (F=255 and no F are the same object).
    fn key(&self) -> u64 {
        let f = match self.f {
            None | Some(255) => 1023,
            Some(f) => u64::from(f),
        };
        [self.a, self.b, self.c, self.d, self.e]
            .iter()
            .fold(f, |k, &g| (k << 10) | u64::from(g))
    }
}

fn obis_group(p: &[u8], i: &mut usize) -> Option<u16> {
    let mut value = 0u16;
    let mut n = 0;
    while let Some(&c) = p.get(*i) {
        if !c.is_ascii_digit() || n == 3 {
            break;
        }
        value = value * 10 + u16::from(c - b'0');
        n += 1;
        *i += 1;
    }
    (n > 0).then_some(value)
}

fn expect(p: &[u8], i: &mut usize, c: u8) -> Option<()> {
    (p.get(*i) == Some(&c)).then(|| *i += 1)
}

/// One COSEM object of a telegram: an OBIS id and its value groups, borrowed from the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Object<'a> {
    /// 1-based line of the payload the object starts on.
    pub line: usize,
    pub obis: Obis<'a>,
    /// The value as written: from the first `(` to the last `)`, continuation lines included.
    pub raw: &'a [u8],
    /// Whether `raw` is a plain sequence of `(...)` groups (no nested or stray parentheses).
    pub regular: bool,
}

impl<'a> Object<'a> {
    /// The value groups, without their parentheses (only meaningful when `regular`).
    pub fn groups(&self) -> Groups<'a> {
        Groups { rest: self.raw }
    }

    /// Everything between the outer parentheses: the value of a one-group object, or the text of
    /// an irregular one (`1-0:0.2.0((ER11))` gives `(ER11)`).
    pub fn text(&self) -> &'a [u8] {
        self.raw
            .get(1..self.raw.len().saturating_sub(1))
            .unwrap_or_default()
    }
}

/// The value groups of an [`Object`].
#[derive(Debug, Clone)]
pub struct Groups<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Groups<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let start = self
            .rest
            .iter()
            .position(|&b| !matches!(b, b'\r' | b'\n' | b' ' | b'\t'))?;
        let rest = self.rest.get(start..)?;
        let inner = match rest.split_first() {
            Some((b'(', inner)) => inner,
            _ => {
                self.rest = &[];
                return None;
            }
        };
        let Some(close) = inner.iter().position(|&b| b == b')') else {
            self.rest = &[];
            return None;
        };
        self.rest = inner.get(close + 1..).unwrap_or_default();
        inner.get(..close)
    }
}

/// A parsed telegram: what [`parse`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Telegram<'a> {
    /// Offset of the `/` that starts the telegram.
    pub start: usize,
    /// Offset of the `!` that ends it; `None` when the input stopped before one.
    pub end: Option<usize>,
    /// The identification line after `/`, without its line end (`ISk5\2MT382-1000`).
    pub header: &'a [u8],
    /// The CRC check, where a CRC follows `!`.
    pub crc: Option<CrcCheck>,
    /// The P1 version `x-x:0.2.8` (`50`), or the e-MUCS version `0-0:96.1.4` (`50217`).
    pub version: Option<&'a [u8]>,
    /// The equipment id `0-0:96.1.1` as written (usually hex-encoded ASCII).
    pub equipment_id: Option<&'a [u8]>,
    /// The telegram clock `0-0:1.0.0` as written.
    pub clock: Option<&'a [u8]>,
    /// The telegram clock in Unix ms UTC, where it is a calendar date (even an unset one in 2000).
    pub timestamp_ms: Option<i64>,
    /// Every well-formed object, in order (rejected lines are not here).
    pub objects: Vec<Object<'a>>,
    /// The readings, as [`decode_at`] returns them but with [`NO_TIME`] for "no meter time".
    pub readings: Vec<Reading<'a>>,
    /// Lines that did not decode.
    pub rejected: Vec<Rejected>,
    /// The long power failures of the log `1-0:99.97.0`: a `power_failure` at each one's
    /// start and a `power_restored` at its end.
    pub events: Vec<Event>,
}

impl<'a> Telegram<'a> {
    /// Whether the telegram ended with `!`.
    pub fn is_complete(&self) -> bool {
        self.end.is_some()
    }

    /// The three-letter manufacturer code at the start of the header (`ISk`, `KFM`).
    pub fn manufacturer(&self) -> &'a [u8] {
        self.header.get(..3).unwrap_or(self.header)
    }

    /// The header after the manufacturer code and the baud-rate character (`\2MT382-1000`).
    pub fn identification(&self) -> &'a [u8] {
        self.header.get(4..).unwrap_or_default()
    }
}

/// The instant a DSMR timestamp (`YYMMDDhhmmss` with an optional `S`/`W` flag) stands for, in
/// Unix ms UTC, by the rules of the module doc; `None` when it is not one or not a calendar
/// date. Instants before 2001 are returned as they are (the decoder treats them as an unset clock).
pub fn parse_timestamp(text: &[u8]) -> Option<i64> {
    match parse_stamp(text) {
        Stamp::At(ms) => Some(ms),
        Stamp::Syntax | Stamp::NotADate => None,
    }
}

/// Parses a telegram, keeping everything: the pipeline calls [`decode_at`]. Errors only when
/// the payload is empty, has no `/`, or has something other than a CRC after `!`; a CRC
/// mismatch, a missing `!` and bad lines are reported in the [`Telegram`].
pub fn parse(payload: &[u8]) -> Result<Telegram<'_>, DecodeError> {
    run(payload, NO_TIME, true).map(|(telegram, _)| telegram)
}

/// Decodes a telegram as the pipeline does, with the receive time for readings without a
/// usable meter time.
pub fn decode_at(payload: &[u8], received_at_ms: i64) -> Result<Decoded<'_>, DecodeError> {
    let (t, last_line) = run(payload, received_at_ms, false)?;
    if let Some(crc) = t.crc.filter(|c| !c.is_valid()) {
        return Err(DecodeError::CrcMismatch {
            stated: crc.stated,
            computed: crc.computed,
        });
    }
    if t.end.is_none() && (t.version.is_some() || t.readings.is_empty()) {
        let reason = if t.version.is_some() {
            "telegram declares DSMR 4+ but ends without '!' and CRC (cut off)"
        } else {
            "no '!' ending the telegram and no reading in it"
        };
        return Err(DecodeError::malformed(
            Format::Dsmr,
            Position::Line(last_line),
            reason,
        ));
    }
    if t.readings.is_empty() {
        if let Some(first) = t.rejected.first() {
            return Err(DecodeError::NothingUsable {
                format: Format::Dsmr,
                rejected: t.rejected.len(),
                first: format!("{}: {}", first.position, first.reason),
            });
        }
    }
    Ok(Decoded {
        meter_id: None,
        seq: None,
        readings: t.readings,
        rejected: t.rejected,
        events: t.events,
        ..Decoded::default()
    })
}

/// [`decode_at`] with receive time 0 (Unix epoch) for readings without a meter time; the
/// pipeline calls [`decode_at`] with its receive time.
pub fn decode(payload: &[u8]) -> Result<Decoded<'_>, DecodeError> {
    decode_at(payload, 0)
}

/// Lexes and builds; returns the telegram and the last line number the lexer reached.
fn run(
    payload: &[u8],
    fallback_ts: i64,
    keep_objects: bool,
) -> Result<(Telegram<'_>, usize), DecodeError> {
    if payload.is_empty() {
        return Err(DecodeError::Empty {
            format: Format::Dsmr,
        });
    }
    let frame = lexer::frame(payload).ok_or_else(|| {
        DecodeError::malformed(
            Format::Dsmr,
            Position::Line(1),
            "no '/' starting a telegram",
        )
    })?;
    let mut builder = Builder::new(payload.len());
    let mut objects = Vec::new();
    let mut lx = Lexer::new(payload, frame.body, frame.line);
    for item in lx.by_ref() {
        match item {
            Item::Object(o) => {
                builder.object(&o);
                if keep_objects {
                    objects.push(o);
                }
            }
            Item::Bad { line, what, text } => builder.reject(line, what, text),
        }
    }
    let crc = match lx.end {
        None => None,
        Some((bang, line)) => match lexer::crc_field(payload, bang) {
            Ok(None) => None,
            Ok(Some(stated)) => Some(check_crc(
                payload.get(frame.start..=bang).unwrap_or_default(),
                stated,
            )),
            Err(field) => {
                return Err(DecodeError::malformed(
                    Format::Dsmr,
                    Position::Line(line),
                    format!(
                        "expected 1 to 4 hex digits of CRC after '!', found {:?}",
                        snippet(field)
                    ),
                ))
            }
        },
    };
    let telegram = builder.finish(fallback_ts, |b| Telegram {
        start: frame.start,
        end: lx.end.map(|(bang, _)| bang),
        header: frame.header,
        crc,
        version: b.version,
        equipment_id: b.equipment_id,
        clock: b.clock_raw,
        timestamp_ms: b.timestamp_ms,
        objects,
        readings: Vec::new(),
        rejected: Vec::new(),
        events: Vec::new(),
    });
    Ok((telegram, lx.line()))
}

fn check_crc(region: &[u8], stated: u16) -> CrcCheck {
    let mut computed = crc::crc16_arc(region);
    if computed != stated && has_bare_lf(region) {
        computed = crc::crc16_arc_crlf(region);
    }
    CrcCheck { stated, computed }
}

fn has_bare_lf(b: &[u8]) -> bool {
    let mut prev = 0u8;
    b.iter().any(|&c| {
        let bare = c == b'\n' && prev != b'\r';
        prev = c;
        bare
    })
}

/// The meter clock of the telegram, as far as the readings are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clock {
    /// No `0-0:1.0.0` (yet).
    Absent,
    Valid(i64),
    /// A clock object that is no usable time.
    Unusable,
}

/// Remembers which objects were seen, to reject repeats: a 256-bit filter in front of a small
/// table, so the common case (no repeat) costs a hash and a bit test.
struct Seen {
    filter: [u64; 4],
    keys: [u64; 128],
    len: usize,
}

impl Seen {
    fn new() -> Self {
        Seen {
            filter: [0; 4],
            keys: [0; 128],
            len: 0,
        }
    }

    /// Records `key`; true when it was seen before (telegrams of more than 128 objects are
    /// checked for their first 128).
    fn repeat(&mut self, key: u64) -> bool {
        let h = key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56;
        let bit = 1u64 << (h & 63);
        let Some(word) = self.filter.get_mut((h >> 6) as usize) else {
            return false;
        };
        let known = self.keys.get(..self.len).unwrap_or_default();
        if *word & bit != 0 && known.contains(&key) {
            return true;
        }
        *word |= bit;
        if let Some(slot) = self.keys.get_mut(self.len) {
            *slot = key;
            self.len += 1;
        }
        false
    }
}

/// A reading whose time is the telegram clock, known only once every object is read.
const PENDING: i64 = i64::MIN;

struct Builder<'a> {
    readings: Vec<Reading<'a>>,
    rejected: Vec<Rejected>,
    events: Vec<Event>,
    clock: Clock,
    clock_raw: Option<&'a [u8]>,
    timestamp_ms: Option<i64>,
    version: Option<&'a [u8]>,
    equipment_id: Option<&'a [u8]>,
    seen: Seen,
}

impl<'a> Builder<'a> {
    fn new(payload_len: usize) -> Self {
        Builder {
            // About one reading per 32 bytes of telegram: one allocation, rarely a second.
            readings: Vec::with_capacity(payload_len / 32 + 4),
            rejected: Vec::new(),
            events: Vec::new(),
            clock: Clock::Absent,
            clock_raw: None,
            timestamp_ms: None,
            version: None,
            equipment_id: None,
            seen: Seen::new(),
        }
    }

    fn reject(&mut self, line: usize, what: &str, text: &[u8]) {
        self.rejected.push(Rejected {
            position: Position::Line(line),
            reason: format!("{what}: {}", snippet(text)),
        });
    }

    fn push(&mut self, channel: &'a str, ts_ms: i64, value: f64, unit: Cow<'a, str>) {
        self.readings.push(Reading {
            channel: Cow::Borrowed(channel),
            ts_ms,
            value,
            unit,
            quality: 0,
        });
    }

    fn object(&mut self, o: &Object<'a>) {
        let ob = o.obis;
        if self.seen.repeat(ob.key()) {
            return self.reject(o.line, "repeated object", o.obis.code.as_bytes());
        }
        match (ob.a, ob.b, ob.c, ob.d, ob.e) {
            (0, _, 1, 0, 0) => return self.clock(o),
            (_, _, 0, 2, 8) | (0, 0, 96, 1, 4) => {
                self.version.get_or_insert(o.text());
                return;
            }
            (0, 0, 96, 1, 1) => {
                self.equipment_id.get_or_insert(o.text());
                return;
            }
            _ => {}
        }
        if is_descriptive(&ob) {
            return;
        }
        if ob.c == 98 || ob.c == 99 {
            if (ob.c, ob.d) == (99, 97) {
                self.power_failures(o);
            } else {
                self.profile(o);
            }
            return;
        }
        if !o.regular {
            return self.reject(o.line, "malformed value", o.raw);
        }
        let mut groups = o.groups();
        match (groups.next(), groups.next(), groups.next()) {
            (Some(value), None, _) => self.single(o, value),
            (Some(stamp), Some(value), None) => self.timed(o, stamp, value),
            (Some(_), Some(_), Some(_)) if (ob.c, ob.d, ob.e) == (24, 3, 0) => self.dsmr3_gas(o),
            _ => {}
        }
    }

    fn clock(&mut self, o: &Object<'a>) {
        let text = o.text();
        self.clock_raw = Some(text);
        self.clock = Clock::Unusable;
        match parse_stamp(text) {
            Stamp::At(ms) => {
                self.timestamp_ms = Some(ms);
                if ms >= CLOCK_SET_FROM_MS {
                    self.clock = Clock::Valid(ms);
                }
            }
            Stamp::NotADate => {}
            Stamp::Syntax => self.reject(o.line, "not a timestamp", o.raw),
        }
    }

    /// `(number[*unit])`: a reading at the telegram time.
    fn single(&mut self, o: &Object<'a>, value: &'a [u8]) {
        if value.is_empty() {
            return;
        }
        match number(value) {
            Some((v, unit)) => self.push(o.obis.code, PENDING, v, unit),
            // A time-valued object (none is standard besides the clock): no reading.
            None if parse_stamp(value) != Stamp::Syntax => {}
            None => self.reject(o.line, "not a number", o.raw),
        }
    }

    /// `(timestamp)(number[*unit])`: a reading at its own time. Two groups of another kind
    /// (e.g. Luxembourg's `1-1:31.4.0(100*A)(-063*A)`) are not a reading.
    fn timed(&mut self, o: &Object<'a>, stamp: &[u8], value: &'a [u8]) {
        let ts = match parse_stamp(stamp) {
            Stamp::Syntax => return,
            Stamp::NotADate => return,
            Stamp::At(ms) if ms < CLOCK_SET_FROM_MS => return,
            Stamp::At(ms) => ms,
        };
        if value.is_empty() {
            return;
        }
        match number(value) {
            Some((v, unit)) => self.push(o.obis.code, ts, v, unit),
            None => self.reject(o.line, "not a number", o.raw),
        }
    }

    /// `0-n:24.3.0(ts)(status)(period)(count)(obis)(unit)` + `(value)` of DSMR 2.2/3.0.
    fn dsmr3_gas(&mut self, o: &Object<'a>) {
        let mut g: [&'a [u8]; 7] = [&[]; 7];
        let mut count = 0;
        for group in o.groups() {
            if let Some(slot) = g.get_mut(count) {
                *slot = group;
            }
            count += 1;
        }
        let [stamp, _, _, _, _, unit, value] = g;
        if count != 7 {
            return self.reject(o.line, "unexpected layout of a DSMR 3 gas value", o.raw);
        }
        let ts = match parse_stamp(stamp) {
            Stamp::Syntax => return self.reject(o.line, "not a timestamp", o.raw),
            Stamp::NotADate => return,
            Stamp::At(ms) if ms < CLOCK_SET_FROM_MS => return,
            Stamp::At(ms) => ms,
        };
        if value.is_empty() {
            return;
        }
        match number(value) {
            Some((v, own_unit)) => {
                let unit = if own_unit.is_empty() {
                    value::normalise_unit(unit)
                } else {
                    own_unit
                };
                self.push(o.obis.code, ts, v, unit);
            }
            None => self.reject(o.line, "not a number", o.raw),
        }
    }

    /// A buffer in the profile layout: `(n)(obis_1)...(obis_k)` then n entries of a capture
    /// time and k values. Other layouts are skipped.
    fn profile(&mut self, o: &Object<'a>) {
        if !o.regular {
            return;
        }
        let mut groups = o.groups();
        let Some(n) = groups.next().and_then(count) else {
            return;
        };
        let mut ids: [Option<Obis<'a>>; 8] = [None; 8];
        let mut k = 0;
        let mut rest = groups.clone();
        while let Some(id) = rest.next().and_then(Obis::parse) {
            let Some(slot) = ids.get_mut(k) else {
                return;
            };
            *slot = Some(id);
            k += 1;
            groups = rest.clone();
        }
        if k == 0 || Some(groups.clone().count()) != n.checked_mul(k + 1) {
            return;
        }
        for _ in 0..n {
            let mut ts = match groups.next().map(parse_stamp) {
                Some(Stamp::At(ms)) if ms >= CLOCK_SET_FROM_MS => Some(ms),
                _ => None,
            };
            for id in ids.iter().take(k) {
                let Some(value) = groups.next() else {
                    return;
                };
                let (Some(at), Some(id)) = (ts, id) else {
                    continue;
                };
                match parse_stamp(value) {
                    Stamp::At(ms) if ms >= CLOCK_SET_FROM_MS => {
                        ts = Some(ms);
                        continue;
                    }
                    Stamp::At(_) | Stamp::NotADate => {
                        ts = None;
                        continue;
                    }
                    Stamp::Syntax => {}
                }
                if value.is_empty() || is_descriptive(id) {
                    continue;
                }
                if let Some((v, unit)) = number(value) {
                    self.push(id.code, at, v, unit);
                }
            }
        }
    }

    /// The long power-failure log `(n)(0-0:96.7.19)` then per entry the end of a failure and
    /// its duration in seconds: two events each. An entry without a usable time (the
    /// placeholder `(000101000001W)(2147483647*s)` meters send when nothing is logged) gives
    /// none; a log of another layout is skipped, as other buffers are.
    fn power_failures(&mut self, o: &Object<'a>) {
        if !o.regular {
            return;
        }
        let mut groups = o.groups();
        let Some(n) = groups.next().and_then(count) else {
            return;
        };
        if groups.next().and_then(Obis::parse).is_none() || groups.clone().count() != 2 * n {
            return;
        }
        for _ in 0..n {
            let (Some(stamp), Some(duration)) = (groups.next(), groups.next()) else {
                return;
            };
            let Stamp::At(end_ms) = parse_stamp(stamp) else {
                continue;
            };
            let seconds = match number(duration) {
                Some((s, unit)) if (unit.is_empty() || unit == "s") && s >= 0.0 => s,
                _ => continue,
            };
            if end_ms < CLOCK_SET_FROM_MS || seconds >= f64::from(i32::MAX) {
                continue;
            }
            let code = format!("{} {}", o.obis.code, seconds as u64);
            let start_ms = end_ms - (seconds * 1000.0) as i64;
            self.events.push(Event {
                kind: EventKind::PowerFailure,
                ts_ms: start_ms,
                code: code.clone(),
                detail: format!("long power failure of {} s", seconds as u64),
                ongoing: false,
            });
            self.events.push(Event {
                kind: EventKind::PowerRestored,
                ts_ms: end_ms,
                code,
                detail: format!("after a long power failure of {} s", seconds as u64),
                ongoing: false,
            });
        }
    }

    /// Fills in the telegram time and hands the readings and rejections to the telegram.
    fn finish(
        mut self,
        fallback_ts: i64,
        make: impl FnOnce(&Self) -> Telegram<'a>,
    ) -> Telegram<'a> {
        let (ts, flags) = match self.clock {
            Clock::Valid(ms) => (ms, 0),
            Clock::Unusable => (
                fallback_ts,
                quality::TIME_FROM_RECEIVER | quality::CLOCK_INVALID,
            ),
            Clock::Absent => (fallback_ts, quality::TIME_FROM_RECEIVER),
        };
        for r in self.readings.iter_mut().filter(|r| r.ts_ms == PENDING) {
            r.ts_ms = ts;
            r.quality |= flags;
        }
        let mut telegram = make(&self);
        telegram.readings = self.readings;
        telegram.rejected = self.rejected;
        telegram.events = self.events;
        telegram
    }
}

/// Objects that describe the meter rather than measure: identifiers, versions and
/// configuration (`C` = 0), the logical device name `42.0.0`, equipment ids `96.1.x`, status
/// words `96.5.x`/`96.10.x`, messages `96.13.x`, the M-Bus device type `24.1.0`.
fn is_descriptive(o: &Obis<'_>) -> bool {
    matches!(
        (o.c, o.d),
        (0, _) | (42, 0) | (96, 1) | (96, 5) | (96, 10) | (96, 13) | (24, 1)
    )
}

/// `number[*unit]`.
fn number(group: &[u8]) -> Option<(f64, Cow<'_, str>)> {
    let (digits, unit) = match group.iter().position(|&b| b == b'*') {
        Some(star) => (group.get(..star)?, group.get(star + 1..)?),
        None => (group, &[][..]),
    };
    Some((value::parse_decimal(digits)?, value::normalise_unit(unit)))
}

/// A small decimal count (the entries of a buffer).
fn count(group: &[u8]) -> Option<usize> {
    if group.is_empty() || group.len() > 4 || !group.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        group
            .iter()
            .fold(0usize, |n, &d| n * 10 + usize::from(d - b'0')),
    )
}

/// Up to 60 bytes of payload text for a rejection reason.
fn snippet(text: &[u8]) -> String {
    const MAX: usize = 60;
    let cut = text.get(..MAX).unwrap_or(text);
    let mut s = String::from_utf8_lossy(cut).into_owned();
    if cut.len() < text.len() {
        s.push('…');
    }
    s
}
