//! SenML-JSON parser (RFC 8428 section 5) on serde_json, plus the legacy OMA LwM2M 1.0 JSON
//! (`{"bn", "bt", "e": [...]}`, `application/vnd.oma.lwm2m+json`) that LwM2M clients may still send.
//!
//! Owns the bytes-to-[`RawRecord`] step for JSON. The pack is streamed: each record is handed to
//! the sink as soon as it is parsed, no intermediate `Vec` of records, no `serde_json::Value`.
//! Strings borrow from the payload unless they contain escapes.
//!
//! Decisions:
//! - the pack must be a JSON array, with nothing but whitespace after it; syntax errors are
//!   `Malformed` at serde_json's line and column;
//! - an element that is not an object, or a known field of the wrong type, makes that record
//!   bad (rejected by the resolver), not the pack;
//! - a field whose name ends in `_` is must-understand (RFC 8428 section 4.4): none is
//!   understood, so the pack is `Unsupported`; other unknown fields are ignored;
//! - `vd` is base64 text; both alphabets, padding optional (checked by the resolver).

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{
    self, DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, SeqAccess, Visitor,
};
use serde::Deserialize;

use super::resolve::{FieldValue, Label, RawRecord, RawValue};
use super::Sink;
use crate::{DecodeError, Format, Position};

/// Why the parse stopped, where the stop came from inside a serde visitor.
enum Fatal {
    /// The sink refused the pack (already positioned).
    Decode(DecodeError),
    /// A must-understand field: positioned at the serde error's line/column afterwards.
    Unsupported(String),
}

fn serde_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

fn json_error(format: Format, e: &serde_json::Error, fatal: Option<Fatal>) -> DecodeError {
    // serde_json reports column 0 for an error before the first character of a line.
    let position = Position::LineColumn(e.line(), e.column().max(1));
    match fatal {
        Some(Fatal::Decode(err)) => err,
        Some(Fatal::Unsupported(reason)) => DecodeError::Unsupported {
            format,
            position,
            reason,
        },
        None => DecodeError::malformed(format, position, serde_message(e)),
    }
}

/// Parses a SenML-JSON pack, handing each record to `sink` in order.
pub(crate) fn parse<'a, S: Sink<'a>>(
    payload: &'a [u8],
    format: Format,
    sink: &mut S,
) -> Result<(), DecodeError> {
    let mut de = serde_json::Deserializer::from_slice(payload);
    let mut fatal = None;
    let result = de.deserialize_seq(PackVisitor {
        sink,
        fatal: &mut fatal,
    });
    if let Err(e) = result {
        return Err(json_error(format, &e, fatal));
    }
    de.end().map_err(|e| json_error(format, &e, None))
}

struct PackVisitor<'s, S> {
    sink: &'s mut S,
    fatal: &'s mut Option<Fatal>,
}

impl<'de, S: Sink<'de>> Visitor<'de> for PackVisitor<'_, S> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a SenML pack (a JSON array of records)")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        while let Some(record) = seq.next_element_seed(RecordSeed {
            fatal: &mut *self.fatal,
        })? {
            if let Err(e) = self.sink.record(index, record) {
                *self.fatal = Some(Fatal::Decode(e));
                return Err(de::Error::custom("pack refused"));
            }
            index += 1;
        }
        Ok(())
    }
}

struct RecordSeed<'s> {
    fatal: &'s mut Option<Fatal>,
}

impl<'de> DeserializeSeed<'de> for RecordSeed<'_> {
    type Value = RawRecord<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<RawRecord<'de>, D::Error> {
        d.deserialize_any(RecordVisitor { fatal: self.fatal })
    }
}

struct RecordVisitor<'s> {
    fatal: &'s mut Option<Fatal>,
}

const NOT_AN_OBJECT: &str = "record is not a JSON object";

impl<'de> Visitor<'de> for RecordVisitor<'_> {
    type Value = RawRecord<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a SenML record (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawRecord<'de>, A::Error> {
        let mut record = RawRecord::default();
        while let Some(key) = map.next_key::<Text<'de>>()? {
            match Label::from_json(&key.0) {
                Some(label) => {
                    let value = map.next_value::<Field<'de>>()?;
                    record.set(label, value.0);
                }
                None if key.0.ends_with('_') => {
                    let reason = format!("must-understand field `{}` is not supported", key.0);
                    *self.fatal = Some(Fatal::Unsupported(reason));
                    return Err(de::Error::custom("must-understand field"));
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(record)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawRecord<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(RawRecord::not_a_record(NOT_AN_OBJECT))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<RawRecord<'de>, E> {
        Ok(RawRecord::not_a_record(NOT_AN_OBJECT))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<RawRecord<'de>, E> {
        Ok(RawRecord::not_a_record(NOT_AN_OBJECT))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<RawRecord<'de>, E> {
        Ok(RawRecord::not_a_record(NOT_AN_OBJECT))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<RawRecord<'de>, E> {
        Ok(RawRecord::not_a_record(NOT_AN_OBJECT))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<RawRecord<'de>, E> {
        Ok(RawRecord::not_a_record(NOT_AN_OBJECT))
    }

    fn visit_unit<E: de::Error>(self) -> Result<RawRecord<'de>, E> {
        Ok(RawRecord::not_a_record(NOT_AN_OBJECT))
    }
}

/// A JSON string, borrowed from the payload when it has no escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(s.to_string())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V(PhantomData))
    }
}

/// Any JSON value, typed loosely; nested arrays and objects are skipped.
struct Field<'a>(FieldValue<'a>);

impl<'de> Deserialize<'de> for Field<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Field<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Field<'de>, E> {
                Ok(Field(FieldValue::Bool(b)))
            }
            fn visit_i64<E: de::Error>(self, x: i64) -> Result<Field<'de>, E> {
                Ok(Field(FieldValue::Num(x as f64)))
            }
            fn visit_u64<E: de::Error>(self, x: u64) -> Result<Field<'de>, E> {
                Ok(Field(FieldValue::Num(x as f64)))
            }
            fn visit_f64<E: de::Error>(self, x: f64) -> Result<Field<'de>, E> {
                Ok(Field(FieldValue::Num(x)))
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Field<'de>, E> {
                Ok(Field(FieldValue::Str(Cow::Borrowed(s))))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Field<'de>, E> {
                Ok(Field(FieldValue::Str(Cow::Owned(s.to_string()))))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Field<'de>, E> {
                Ok(Field(FieldValue::Str(Cow::Owned(s))))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Field<'de>, E> {
                Ok(Field(FieldValue::Other))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Field<'de>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Field(FieldValue::Other))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Field<'de>, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Field(FieldValue::Other))
            }
        }
        d.deserialize_any(V)
    }
}

/// The LwM2M 1.0 JSON pack (OMA-TS-LightweightM2M-V1_0 section 6.4.4).
#[derive(Deserialize)]
struct OmaPack<'a> {
    #[serde(borrow, default)]
    bn: Option<Text<'a>>,
    #[serde(default)]
    bt: Option<f64>,
    #[serde(borrow)]
    e: Vec<OmaEntry<'a>>,
}

/// One entry of `e`: `v` number, `sv` string, `bv` boolean (not a base value here), `ov`
/// object link (kept as a string value), `t` time relative to `bt`.
#[derive(Deserialize)]
struct OmaEntry<'a> {
    #[serde(borrow, default)]
    n: Option<Text<'a>>,
    #[serde(default)]
    v: Option<f64>,
    #[serde(borrow, default)]
    sv: Option<Text<'a>>,
    #[serde(default)]
    bv: Option<bool>,
    #[serde(borrow, default)]
    ov: Option<Text<'a>>,
    #[serde(default)]
    t: Option<f64>,
}

/// Parses a legacy OMA LwM2M JSON object into SenML records: `bn`/`bt` become the base fields
/// of the first record, so the same resolver applies (including the 2**28 relative-time rule).
pub(crate) fn parse_oma<'a, S: Sink<'a>>(
    payload: &'a [u8],
    format: Format,
    sink: &mut S,
) -> Result<(), DecodeError> {
    let pack: OmaPack<'a> =
        serde_json::from_slice(payload).map_err(|e| json_error(format, &e, None))?;
    let mut bn = pack.bn.map(|t| t.0);
    let mut bt = pack.bt;
    if pack.e.is_empty() && (bn.is_some() || bt.is_some()) {
        // Nothing to report; still pass the base fields through for validation.
        let record = RawRecord {
            bn: bn.take(),
            bt: bt.take(),
            ..RawRecord::default()
        };
        return sink.record(0, record);
    }
    for (index, entry) in pack.e.into_iter().enumerate() {
        let mut record = RawRecord {
            bn: bn.take(),
            bt: bt.take(),
            n: entry.n.map(|t| t.0),
            t: entry.t,
            ..RawRecord::default()
        };
        let values = [
            entry.v.map(RawValue::Float),
            entry.sv.map(|t| RawValue::String(t.0)),
            entry.bv.map(RawValue::Bool),
            entry.ov.map(|t| RawValue::String(t.0)),
        ];
        for value in values.into_iter().flatten() {
            match value {
                RawValue::Float(x) => record.set(Label::Value, FieldValue::Num(x)),
                RawValue::String(s) => record.set(Label::StringValue, FieldValue::Str(s)),
                RawValue::Bool(b) => record.set(Label::BoolValue, FieldValue::Bool(b)),
                RawValue::Data(_) => {}
            }
        }
        sink.record(index, record)?;
    }
    Ok(())
}
