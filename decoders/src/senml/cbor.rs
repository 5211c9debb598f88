//! SenML-CBOR parser (RFC 8428 section 6) on minicbor's low-level [`Decoder`].
//!
//! Owns the bytes-to-[`RawRecord`] step for CBOR. Records are streamed to the sink; strings and
//! byte strings borrow from the payload. Nothing is allocated from a length read off the wire,
//! and every declared length is checked against the bytes that remain before it is used.
//!
//! Decisions:
//! - the pack is one definite-length array with nothing after it. Indefinite lengths (arrays,
//!   maps, strings) are `Malformed`: section 6 requires a definite-length array for
//!   non-streaming SenML, and the LwM2M vectors (wakaama) require refusing indefinite arrays
//!   and maps; so do truncation, trailing bytes and a second concatenated pack;
//! - labels are the integers of section 6 (bn -2, bt -3, bu -4, bv -5, bs -16, bver -1, n 0,
//!   u 1, v 2, vs 3, vb 4, s 5, t 6, ut 7, vd 8). Other integer labels and text labels are
//!   ignored (their value skipped), except a text label ending in `_` (must-understand), which
//!   makes the pack `Unsupported`;
//! - numbers may be any CBOR integer, half/single/double float, tag 1 (epoch time) around a
//!   number, or tag 4 (decimal fraction `[exponent, mantissa]`, as Leshan encodes LwM2M Send
//!   times). A value of the wrong type (or another tag) makes the record bad, not the pack;
//! - nesting inside ignored values is bounded ([`MAX_DEPTH`]); errors carry the byte offset.

use std::borrow::Cow;

use minicbor::data::Type;
use minicbor::Decoder;

use super::resolve::{FieldValue, Label, RawRecord};
use super::Sink;
use crate::{DecodeError, Format, Position};

/// How deep a skipped value (inside an ignored field) may nest.
const MAX_DEPTH: usize = 16;

/// The largest decimal exponent worth computing; beyond it every f64 is 0 or infinite.
const MAX_DECIMAL_EXPONENT: i128 = 400;

struct Parser<'a> {
    d: Decoder<'a>,
    format: Format,
}

/// Parses a SenML-CBOR pack, handing each record to `sink` in order.
pub(crate) fn parse<'a, S: Sink<'a>>(
    payload: &'a [u8],
    format: Format,
    sink: &mut S,
) -> Result<(), DecodeError> {
    let mut p = Parser {
        d: Decoder::new(payload),
        format,
    };
    let count = match p.datatype()? {
        Type::Array => p.definite_len(|d| d.array())?,
        Type::ArrayIndef => {
            return Err(p.error(
                0,
                "indefinite-length array: a SenML-CBOR pack must have a definite length",
            ))
        }
        other => {
            return Err(p.error(
                0,
                format!("a SenML pack must be a CBOR array, found {other}"),
            ))
        }
    };
    sink.size_hint(count);
    for index in 0..count {
        let at = p.d.position();
        let record = match p.datatype()? {
            Type::Map => {
                let fields = p.definite_len(|d| d.map())?;
                p.record(fields)?
            }
            Type::MapIndef => {
                return Err(p.error(
                    at,
                    "indefinite-length map: SenML-CBOR records must have a definite length",
                ))
            }
            _ => {
                p.skip(0)?;
                RawRecord::not_a_record("record is not a CBOR map")
            }
        };
        sink.record(index, record)?;
    }
    let end = p.d.position();
    if end != payload.len() {
        return Err(p.error(
            end,
            format!("{} bytes after the end of the pack", payload.len() - end),
        ));
    }
    Ok(())
}

impl<'a> Parser<'a> {
    fn error(&self, at: usize, reason: impl Into<String>) -> DecodeError {
        DecodeError::malformed(self.format, Position::Offset(at), reason)
    }

    fn cbor_error(&self, at: usize, e: minicbor::decode::Error) -> DecodeError {
        let at = e.position().unwrap_or(at);
        if e.is_end_of_input() {
            self.error(at, "truncated: the pack ends inside a CBOR item")
        } else {
            self.error(at, format!("invalid CBOR: {e}"))
        }
    }

    fn datatype(&self) -> Result<Type, DecodeError> {
        let at = self.d.position();
        self.d.datatype().map_err(|e| self.cbor_error(at, e))
    }

    fn remaining(&self) -> usize {
        self.d.input().len().saturating_sub(self.d.position())
    }

    /// Reads a definite array or map header; its item count must fit in the bytes that remain
    /// (every item takes at least one byte; a map entry two).
    fn definite_len(
        &mut self,
        read: fn(&mut Decoder<'a>) -> Result<Option<u64>, minicbor::decode::Error>,
    ) -> Result<usize, DecodeError> {
        let at = self.d.position();
        let len = read(&mut self.d).map_err(|e| self.cbor_error(at, e))?;
        let Some(len) = len else {
            return Err(self.error(at, "indefinite length"));
        };
        match usize::try_from(len) {
            Ok(n) if n <= self.remaining() => Ok(n),
            _ => Err(self.error(
                at,
                format!(
                    "declared length {len} exceeds the {} bytes left",
                    self.remaining()
                ),
            )),
        }
    }

    /// Reads the entries of a record map.
    fn record(&mut self, fields: usize) -> Result<RawRecord<'a>, DecodeError> {
        if fields > self.remaining() / 2 {
            let at = self.d.position();
            return Err(self.error(at, "map declares more entries than bytes left"));
        }
        let mut record = RawRecord::default();
        for _ in 0..fields {
            let at = self.d.position();
            match self.datatype()? {
                ty if is_int(ty) => {
                    let label = self.d.int().map_err(|e| self.cbor_error(at, e))?;
                    match Label::from_cbor(i128::from(label)) {
                        Some(label) => {
                            let value = self.value()?;
                            record.set(label, value);
                        }
                        None => self.skip(0)?,
                    }
                }
                Type::String => {
                    let key = self.d.str().map_err(|e| self.cbor_error(at, e))?;
                    if key.ends_with('_') {
                        return Err(DecodeError::Unsupported {
                            format: self.format,
                            position: Position::Offset(at),
                            reason: format!("must-understand field `{key}` is not supported"),
                        });
                    }
                    self.skip(0)?;
                }
                _ => {
                    self.skip(0)?;
                    self.skip(0)?;
                    record.mark_bad("map key is neither an integer nor a text string");
                }
            }
        }
        Ok(record)
    }

    /// Reads a field value, typed loosely; values of no SenML type are skipped as `Other`.
    fn value(&mut self) -> Result<FieldValue<'a>, DecodeError> {
        let at = self.d.position();
        Ok(match self.datatype()? {
            Type::String => FieldValue::Str(Cow::Borrowed(
                self.d.str().map_err(|e| self.cbor_error(at, e))?,
            )),
            Type::Bytes => FieldValue::Bytes(self.d.bytes().map_err(|e| self.cbor_error(at, e))?),
            Type::Bool => FieldValue::Bool(self.d.bool().map_err(|e| self.cbor_error(at, e))?),
            Type::Tag => {
                let tag = self.d.tag().map_err(|e| self.cbor_error(at, e))?;
                match tag.as_u64() {
                    1 => self.number()?.map_or(FieldValue::Other, FieldValue::Num),
                    4 => self
                        .decimal_fraction()?
                        .map_or(FieldValue::Other, FieldValue::Num),
                    _ => {
                        self.skip(1)?;
                        FieldValue::Other
                    }
                }
            }
            _ => self.number()?.map_or(FieldValue::Other, FieldValue::Num),
        })
    }

    /// Reads a plain number (integer or float); any other item is skipped and gives `None`.
    fn number(&mut self) -> Result<Option<f64>, DecodeError> {
        let at = self.d.position();
        let map = |p: &Self, e| p.cbor_error(at, e);
        Ok(Some(match self.datatype()? {
            ty if is_int(ty) => {
                let int = self.d.int().map_err(|e| map(self, e))?;
                i128::from(int) as f64
            }
            Type::F16 => {
                let bits =
                    self.d.input().get(at + 1..at + 3).ok_or_else(|| {
                        self.error(at, "truncated: the pack ends inside a CBOR item")
                    })?;
                let bits = u16::from_be_bytes([bits[0], bits[1]]);
                self.d.set_position(at + 3);
                f16_to_f64(bits)
            }
            Type::F32 => f64::from(self.d.f32().map_err(|e| map(self, e))?),
            Type::F64 => self.d.f64().map_err(|e| map(self, e))?,
            _ => {
                self.skip(1)?;
                return Ok(None);
            }
        }))
    }

    /// Tag 4 content: `[exponent, mantissa]`, both plain integers (bignum mantissas are not
    /// supported and give `None`). Value = mantissa * 10**exponent.
    fn decimal_fraction(&mut self) -> Result<Option<f64>, DecodeError> {
        if self.datatype()? != Type::Array {
            self.skip(1)?;
            return Ok(None);
        }
        let len = self.definite_len(|d| d.array())?;
        if len != 2 {
            for _ in 0..len {
                self.skip(1)?;
            }
            return Ok(None);
        }
        let mut parts = [0i128; 2];
        let mut ok = true;
        for part in &mut parts {
            let pos = self.d.position();
            if is_int(self.datatype()?) {
                *part = i128::from(self.d.int().map_err(|e| self.cbor_error(pos, e))?);
            } else {
                self.skip(1)?;
                ok = false;
            }
        }
        if !ok {
            return Ok(None);
        }
        let [exponent, mantissa] = parts;
        let e = exponent.clamp(-MAX_DECIMAL_EXPONENT, MAX_DECIMAL_EXPONENT) as i32;
        let m = mantissa as f64;
        // Division by an exact power of ten keeps e.g. [-3, 1276020076001] == 1276020076.001.
        Ok(Some(if e >= 0 {
            m * 10f64.powi(e)
        } else {
            m / 10f64.powi(-e)
        }))
    }

    /// Skips one complete item, refusing indefinite lengths and nesting beyond [`MAX_DEPTH`].
    fn skip(&mut self, depth: usize) -> Result<(), DecodeError> {
        let at = self.d.position();
        if depth > MAX_DEPTH {
            return Err(self.error(at, format!("CBOR nested deeper than {MAX_DEPTH} levels")));
        }
        let ty = self.datatype()?;
        let r = match ty {
            Type::Array => {
                let n = self.definite_len(|d| d.array())?;
                for _ in 0..n {
                    self.skip(depth + 1)?;
                }
                return Ok(());
            }
            Type::Map => {
                let n = self.definite_len(|d| d.map())?;
                for _ in 0..n {
                    self.skip(depth + 1)?;
                    self.skip(depth + 1)?;
                }
                return Ok(());
            }
            Type::Tag => {
                self.d.tag().map_err(|e| self.cbor_error(at, e))?;
                return self.skip(depth + 1);
            }
            Type::ArrayIndef | Type::MapIndef | Type::BytesIndef | Type::StringIndef => {
                return Err(self.error(
                    at,
                    "indefinite-length item: SenML-CBOR requires definite lengths",
                ));
            }
            Type::Break | Type::Unknown(_) => {
                return Err(self.error(at, format!("invalid CBOR item ({ty})")));
            }
            Type::String => self.d.str().map(drop),
            Type::Bytes => self.d.bytes().map(drop),
            Type::Bool => self.d.bool().map(drop),
            Type::Null => self.d.null(),
            Type::Undefined => self.d.undefined(),
            Type::Simple => self.d.simple().map(drop),
            Type::F16 | Type::F32 | Type::F64 => return self.number().map(drop),
            _ => self.d.int().map(drop),
        };
        r.map_err(|e| self.cbor_error(at, e))
    }
}

fn is_int(ty: Type) -> bool {
    matches!(
        ty,
        Type::U8
            | Type::U16
            | Type::U32
            | Type::U64
            | Type::I8
            | Type::I16
            | Type::I32
            | Type::I64
            | Type::Int
    )
}

/// IEEE 754 binary16 to f64 (minicbor decodes half floats only with its `half` feature).
fn f16_to_f64(bits: u16) -> f64 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exponent = i32::from((bits >> 10) & 0x1f);
    let fraction = f64::from(bits & 0x03ff);
    let magnitude = match exponent {
        0 => fraction * 2f64.powi(-24),
        31 if fraction == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        e => (1.0 + fraction / 1024.0) * 2f64.powi(e - 15),
    };
    sign * magnitude
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_floats() {
        assert_eq!(f16_to_f64(0x5cb0), 300.0);
        assert_eq!(f16_to_f64(0x3e00), 1.5);
        assert_eq!(f16_to_f64(0xc000), -2.0);
        assert_eq!(f16_to_f64(0x0001), 2f64.powi(-24));
        assert_eq!(f16_to_f64(0x7bff), 65504.0);
        assert!(f16_to_f64(0x7c00).is_infinite());
        assert!(f16_to_f64(0x7e00).is_nan());
    }
}
