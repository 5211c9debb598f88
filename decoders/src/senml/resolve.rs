//! The SenML data model between the parsers and the resolver: one [`RawRecord`] per record as
//! it stands in the pack (base fields and all, strings borrowed from the payload), and the
//! [`Resolver`] that applies RFC 8428 section 4.6 to it.
//!
//! Owns:
//! - the field table shared by the JSON and CBOR parsers ([`Label`], [`RawRecord::set`]): the
//!   type each field must have; a field of the wrong type, a duplicated field or a second value
//!   field marks the record as bad ([`FieldProblem`]) without stopping the parse;
//! - resolution: `bn` is prepended to `n`, `bt` added to `t`, `bu` is the default of `u`, `bv`
//!   added to `v`, `bs` added to `s`; base fields hold until the next base field of the same
//!   kind; `bver` above 10 is unsupported (the whole pack is refused);
//! - time (section 4.5.3): a resolved time below 2**28 is relative to `now_ms` (so a record
//!   without `t` and `bt` is "now"); such records are marked `time_from_receiver`;
//! - what makes a record unusable (it is rejected, the rest of the pack is kept): no name after
//!   resolution, a wrong-typed value field, two value fields, a value or time that is not a
//!   finite number, a time outside the years 1 to 9999, `vd` that is not base64;
//! - what makes the pack unusable ([`Refusal::Pack`]): `bver` > 10 or not a positive integer, a
//!   base field of the wrong type or not finite (every later record would resolve wrongly).
//!
//! Records with neither a value nor a sum (base-only records such as RFC 8428 section 5.1.7's
//! first record, LwM2M Read-Composite name lists) resolve to nothing: they are not measurements.
//! The name's character set (section 4.5.1) is not enforced: LwM2M paths start with `/`.

use std::borrow::Cow;

use crate::{DecodeError, Format, Position};

/// RFC 8428 section 4.5.3: resolved times below this are relative to the current time.
pub(crate) const RELATIVE_TIME_LIMIT: f64 = 268_435_456.0; // 2**28

/// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z in Unix seconds: the time range we accept.
const MIN_TIME_S: f64 = -62_135_596_800.0;
const MAX_TIME_S: f64 = 253_402_300_799.0;

/// The highest SenML version this resolver understands (RFC 8428: 10).
const SUPPORTED_VERSION: f64 = 10.0;

/// A SenML field the resolver understands. JSON names it by its RFC 8428 name, CBOR by its
/// integer label (section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Label {
    BaseName,
    BaseTime,
    BaseUnit,
    BaseValue,
    BaseSum,
    BaseVersion,
    Name,
    Unit,
    Value,
    StringValue,
    BoolValue,
    DataValue,
    Sum,
    Time,
    UpdateTime,
}

impl Label {
    /// The JSON field name.
    pub(crate) fn from_json(key: &str) -> Option<Label> {
        Some(match key {
            "bn" => Label::BaseName,
            "bt" => Label::BaseTime,
            "bu" => Label::BaseUnit,
            "bv" => Label::BaseValue,
            "bs" => Label::BaseSum,
            "bver" => Label::BaseVersion,
            "n" => Label::Name,
            "u" => Label::Unit,
            "v" => Label::Value,
            "vs" => Label::StringValue,
            "vb" => Label::BoolValue,
            "vd" => Label::DataValue,
            "s" => Label::Sum,
            "t" => Label::Time,
            "ut" => Label::UpdateTime,
            _ => return None,
        })
    }

    /// The CBOR integer label (RFC 8428 section 6, table 4).
    pub(crate) fn from_cbor(label: i128) -> Option<Label> {
        Some(match label {
            -2 => Label::BaseName,
            -3 => Label::BaseTime,
            -4 => Label::BaseUnit,
            -5 => Label::BaseValue,
            -16 => Label::BaseSum,
            -1 => Label::BaseVersion,
            0 => Label::Name,
            1 => Label::Unit,
            2 => Label::Value,
            3 => Label::StringValue,
            4 => Label::BoolValue,
            8 => Label::DataValue,
            5 => Label::Sum,
            6 => Label::Time,
            7 => Label::UpdateTime,
            _ => return None,
        })
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Label::BaseName => "bn",
            Label::BaseTime => "bt",
            Label::BaseUnit => "bu",
            Label::BaseValue => "bv",
            Label::BaseSum => "bs",
            Label::BaseVersion => "bver",
            Label::Name => "n",
            Label::Unit => "u",
            Label::Value => "v",
            Label::StringValue => "vs",
            Label::BoolValue => "vb",
            Label::DataValue => "vd",
            Label::Sum => "s",
            Label::Time => "t",
            Label::UpdateTime => "ut",
        }
    }

    fn is_base(self) -> bool {
        matches!(
            self,
            Label::BaseName
                | Label::BaseTime
                | Label::BaseUnit
                | Label::BaseValue
                | Label::BaseSum
                | Label::BaseVersion
        )
    }
}

/// A field's value as a parser found it, before the field table checks its type.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum FieldValue<'a> {
    Num(f64),
    Str(Cow<'a, str>),
    Bool(bool),
    Bytes(&'a [u8]),
    /// Anything else (null, array, map, unsupported tag): always the wrong type.
    Other,
}

/// Opaque data as it stands in the pack: CBOR bytes, or JSON base64 text (decoded on demand).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RawData<'a> {
    Bytes(&'a [u8]),
    Base64(Cow<'a, str>),
}

/// The value of a record (at most one of `v`, `vs`, `vb`, `vd`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RawValue<'a> {
    Float(f64),
    String(Cow<'a, str>),
    Bool(bool),
    Data(RawData<'a>),
}

/// Why the parser marked a record as bad.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct FieldProblem {
    /// The field, where one field is at fault.
    pub label: Option<Label>,
    pub reason: &'static str,
}

/// One record as it stands in the pack.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct RawRecord<'a> {
    pub bn: Option<Cow<'a, str>>,
    pub bt: Option<f64>,
    pub bu: Option<Cow<'a, str>>,
    pub bv: Option<f64>,
    pub bs: Option<f64>,
    pub bver: Option<f64>,
    pub n: Option<Cow<'a, str>>,
    pub u: Option<Cow<'a, str>>,
    pub value: Option<RawValue<'a>>,
    pub s: Option<f64>,
    pub t: Option<f64>,
    pub ut: Option<f64>,
    /// The first problem found while parsing the record; the record is rejected.
    pub problem: Option<FieldProblem>,
}

impl<'a> RawRecord<'a> {
    /// A record that is not a map/object at all.
    pub(crate) fn not_a_record(reason: &'static str) -> Self {
        RawRecord {
            problem: Some(FieldProblem {
                label: None,
                reason,
            }),
            ..RawRecord::default()
        }
    }

    /// Marks the record as bad without naming a field.
    pub(crate) fn mark_bad(&mut self, reason: &'static str) {
        if self.problem.is_none() {
            self.problem = Some(FieldProblem {
                label: None,
                reason,
            });
        }
    }

    fn mark(&mut self, label: Label, reason: &'static str) {
        if self.problem.is_none() {
            self.problem = Some(FieldProblem {
                label: Some(label),
                reason,
            });
        }
    }

    /// Stores a field after checking its type; marks the record as bad where it does not fit.
    pub(crate) fn set(&mut self, label: Label, value: FieldValue<'a>) {
        fn num(
            rec: &mut RawRecord<'_>,
            label: Label,
            slot: for<'r, 'x> fn(&'r mut RawRecord<'x>) -> &'r mut Option<f64>,
            value: FieldValue<'_>,
        ) {
            match value {
                FieldValue::Num(x) => {
                    let s = slot(rec);
                    if s.is_some() {
                        rec.mark(label, "duplicate field");
                    } else {
                        *s = Some(x);
                    }
                }
                _ => rec.mark(label, "field must be a number"),
            }
        }
        fn text<'a>(
            rec: &mut RawRecord<'a>,
            label: Label,
            slot: for<'r> fn(&'r mut RawRecord<'a>) -> &'r mut Option<Cow<'a, str>>,
            value: FieldValue<'a>,
        ) {
            match value {
                FieldValue::Str(x) => {
                    let s = slot(rec);
                    if s.is_some() {
                        rec.mark(label, "duplicate field");
                    } else {
                        *s = Some(x);
                    }
                }
                _ => rec.mark(label, "field must be a string"),
            }
        }
        let new_value = match label {
            Label::BaseName => return text(self, label, |r| &mut r.bn, value),
            Label::BaseUnit => return text(self, label, |r| &mut r.bu, value),
            Label::Name => return text(self, label, |r| &mut r.n, value),
            Label::Unit => return text(self, label, |r| &mut r.u, value),
            Label::BaseTime => return num(self, label, |r| &mut r.bt, value),
            Label::BaseValue => return num(self, label, |r| &mut r.bv, value),
            Label::BaseSum => return num(self, label, |r| &mut r.bs, value),
            Label::BaseVersion => return num(self, label, |r| &mut r.bver, value),
            Label::Sum => return num(self, label, |r| &mut r.s, value),
            Label::Time => return num(self, label, |r| &mut r.t, value),
            Label::UpdateTime => return num(self, label, |r| &mut r.ut, value),
            Label::Value => match value {
                FieldValue::Num(x) => RawValue::Float(x),
                _ => return self.mark(label, "field must be a number"),
            },
            Label::StringValue => match value {
                FieldValue::Str(x) => RawValue::String(x),
                _ => return self.mark(label, "field must be a string"),
            },
            Label::BoolValue => match value {
                FieldValue::Bool(x) => RawValue::Bool(x),
                _ => return self.mark(label, "field must be a boolean"),
            },
            Label::DataValue => match value {
                FieldValue::Bytes(x) => RawValue::Data(RawData::Bytes(x)),
                FieldValue::Str(x) => RawValue::Data(RawData::Base64(x)),
                _ => return self.mark(label, "field must be a byte string or base64 text"),
            },
        };
        if self.value.is_some() {
            self.mark(label, "more than one value field (v, vs, vb, vd)");
        } else {
            self.value = Some(new_value);
        }
    }
}

/// A record after section 4.6: names, times, units and values resolved. The name stays in
/// two parts so that callers choose between the record's own name and the full name without
/// concatenating.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Resolved<'a> {
    pub base_name: Cow<'a, str>,
    pub name: Cow<'a, str>,
    /// Absolute Unix seconds.
    pub time_s: f64,
    /// Neither `t` nor `bt` was present: the time is the receiver's.
    pub time_from_receiver: bool,
    pub unit: Option<Cow<'a, str>>,
    pub value: Option<RawValue<'a>>,
    pub sum: Option<f64>,
    pub update_time: Option<f64>,
}

impl Resolved<'_> {
    /// Unix milliseconds, rounded to the nearest (the time is range-checked, so this fits).
    pub(crate) fn ts_ms(&self) -> i64 {
        seconds_to_ms(self.time_s)
    }
}

pub(crate) fn seconds_to_ms(time_s: f64) -> i64 {
    // In range by construction (MIN_TIME_S..=MAX_TIME_S); `as` saturates anyway.
    (time_s * 1000.0).round() as i64
}

/// Why a record did not resolve.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// This record is unusable; the rest of the pack is fine.
    Record(String),
    /// The pack as a whole is unusable.
    Pack(DecodeError),
}

/// The resolution state of one pack: the base fields seen so far.
pub(crate) struct Resolver<'a> {
    format: Format,
    now_s: f64,
    bn: Cow<'a, str>,
    bt: Option<f64>,
    bu: Option<Cow<'a, str>>,
    bv: f64,
    bs: f64,
}

impl<'a> Resolver<'a> {
    pub(crate) fn new(format: Format, now_ms: i64) -> Self {
        Resolver {
            format,
            now_s: now_ms as f64 / 1000.0,
            bn: Cow::Borrowed(""),
            bt: None,
            bu: None,
            bv: 0.0,
            bs: 0.0,
        }
    }

    fn pack_error(&self, index: usize, reason: String) -> Refusal {
        Refusal::Pack(DecodeError::malformed(
            self.format,
            Position::Record(index),
            reason,
        ))
    }

    /// Resolves record `index`; `Ok(None)` for a record that carries no value and no sum.
    pub(crate) fn resolve(
        &mut self,
        index: usize,
        raw: RawRecord<'a>,
    ) -> Result<Option<Resolved<'a>>, Refusal> {
        if let Some(problem) = raw.problem {
            let reason = match problem.label {
                Some(label) => format!("field `{}`: {}", label.as_str(), problem.reason),
                None => problem.reason.to_string(),
            };
            return Err(match problem.label {
                Some(label) if label.is_base() => self.pack_error(index, reason),
                _ => Refusal::Record(reason),
            });
        }

        // Base fields first: they apply to this record and all later ones.
        if let Some(version) = raw.bver {
            if !(version.fract() == 0.0 && version >= 1.0) {
                return Err(
                    self.pack_error(index, format!("bver {version} is not a positive integer"))
                );
            }
            if version > SUPPORTED_VERSION {
                return Err(Refusal::Pack(DecodeError::Unsupported {
                    format: self.format,
                    position: Position::Record(index),
                    reason: format!("SenML version {version} (bver) is newer than 10"),
                }));
            }
        }
        for (label, x) in [
            (Label::BaseTime, raw.bt),
            (Label::BaseValue, raw.bv),
            (Label::BaseSum, raw.bs),
        ] {
            if matches!(x, Some(x) if !x.is_finite()) {
                return Err(self.pack_error(
                    index,
                    format!("field `{}` is not a finite number", label.as_str()),
                ));
            }
        }
        if let Some(bn) = raw.bn {
            self.bn = bn;
        }
        if let Some(bt) = raw.bt {
            self.bt = Some(bt);
        }
        if let Some(bu) = raw.bu {
            self.bu = Some(bu);
        }
        if let Some(bv) = raw.bv {
            self.bv = bv;
        }
        if let Some(bs) = raw.bs {
            self.bs = bs;
        }

        if raw.value.is_none() && raw.s.is_none() {
            return Ok(None);
        }

        let name = raw.n.unwrap_or(Cow::Borrowed(""));
        if self.bn.is_empty() && name.is_empty() {
            return Err(Refusal::Record(
                "record has no name (neither bn nor n)".to_string(),
            ));
        }

        let value = match raw.value {
            Some(RawValue::Float(v)) => {
                let v = v + self.bv;
                if !v.is_finite() {
                    return Err(Refusal::Record("value is not a finite number".to_string()));
                }
                Some(RawValue::Float(v))
            }
            Some(RawValue::Data(RawData::Base64(text))) => {
                if let Err(reason) = base64_len(&text) {
                    return Err(Refusal::Record(format!("field `vd`: {reason}")));
                }
                Some(RawValue::Data(RawData::Base64(text)))
            }
            other => other,
        };
        let sum = match raw.s {
            Some(s) => {
                let s = s + self.bs;
                if !s.is_finite() {
                    return Err(Refusal::Record("sum is not a finite number".to_string()));
                }
                Some(s)
            }
            None => None,
        };

        let time_from_receiver = raw.t.is_none() && self.bt.is_none();
        let mut time_s = self.bt.unwrap_or(0.0) + raw.t.unwrap_or(0.0);
        if time_s < RELATIVE_TIME_LIMIT {
            time_s += self.now_s;
        }
        if !(MIN_TIME_S..=MAX_TIME_S).contains(&time_s) {
            // Also catches NaN and infinities.
            return Err(Refusal::Record(format!(
                "time {time_s} s is not a finite time between the years 1 and 9999"
            )));
        }

        Ok(Some(Resolved {
            base_name: self.bn.clone(),
            name,
            time_s,
            time_from_receiver,
            unit: raw.u.or_else(|| self.bu.clone()),
            value,
            sum,
            update_time: raw.ut,
        }))
    }
}

/// The value of one base64 digit; accepts both the standard and the URL-safe alphabet
/// (RFC 8428 asks for base64url without padding; LwM2M implementations such as wakaama send
/// standard base64 with padding).
fn base64_digit(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' | b'-' => Some(62),
        b'/' | b'_' => Some(63),
        _ => None,
    }
}

/// Checks base64 text (padding optional) and returns the decoded length.
pub(crate) fn base64_len(text: &str) -> Result<usize, &'static str> {
    let bytes = text.as_bytes();
    let unpadded = text.trim_end_matches('=');
    let padding = bytes.len() - unpadded.len();
    if padding > 2 || (padding > 0 && bytes.len() & 3 != 0) {
        return Err("bad base64 padding");
    }
    if unpadded.len() % 4 == 1 {
        return Err("bad base64 length");
    }
    if !unpadded.bytes().all(|c| base64_digit(c).is_some()) {
        return Err("not base64");
    }
    Ok(unpadded.len() / 4 * 3 + (unpadded.len() % 4).saturating_sub(1))
}

/// Decodes base64 text checked by [`base64_len`] (invalid digits are skipped, never panics).
pub(crate) fn base64_decode(text: &str) -> Vec<u8> {
    let unpadded = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(unpadded.len() / 4 * 3 + 2);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for d in unpadded.bytes().filter_map(base64_digit) {
        acc = (acc << 6) | u32::from(d);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_accepts_both_alphabets_and_optional_padding() {
        assert_eq!(base64_len("aGkgCg"), Ok(4));
        assert_eq!(base64_decode("aGkgCg"), b"hi \n");
        assert_eq!(base64_len("AQIDBAU="), Ok(5));
        assert_eq!(base64_decode("AQIDBAU="), [1, 2, 3, 4, 5]);
        assert_eq!(base64_decode("MA=="), b"0");
        assert_eq!(base64_decode("-_8"), [0xfb, 0xff]);
        assert_eq!(base64_decode("+/8="), [0xfb, 0xff]);
        assert_eq!(base64_len(""), Ok(0));
        assert!(base64_len("A").is_err());
        assert!(base64_len("AB=").is_err());
        assert!(base64_len("A===").is_err());
        assert!(base64_len("ab cd").is_err());
    }

    #[test]
    fn base_fields_carry_over_and_times_below_2_pow_28_are_relative() {
        let mut r = Resolver::new(Format::Senml, 1_000_000_000_000);
        let first = RawRecord {
            bn: Some("dev:".into()),
            bt: Some(-10.0),
            bu: Some("W".into()),
            bv: Some(100.0),
            n: Some("p".into()),
            value: Some(RawValue::Float(1.5)),
            ..RawRecord::default()
        };
        let got = r.resolve(0, first).unwrap().unwrap();
        assert_eq!((got.base_name.as_ref(), got.name.as_ref()), ("dev:", "p"));
        assert_eq!(got.time_s, 1_000_000_000.0 - 10.0);
        assert_eq!(got.unit.as_deref(), Some("W"));
        assert_eq!(got.value, Some(RawValue::Float(101.5)));
        assert!(!got.time_from_receiver);
        let second = RawRecord {
            n: Some("q".into()),
            t: Some(1.0),
            s: Some(2.0),
            ..RawRecord::default()
        };
        let got = r.resolve(1, second).unwrap().unwrap();
        assert_eq!(got.time_s, 1_000_000_000.0 - 9.0);
        assert_eq!((got.value, got.sum), (None, Some(2.0)));
    }
}
