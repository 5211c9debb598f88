//! The CBOR form of the meter report (CoAP Content-Format 60, topic suffix `cbor`): the JSON
//! report's structure (see [`crate::json`]) encoded in CBOR (RFC 8949), for links where every
//! byte costs. Map keys are text; `ts` and `start` are Unix milliseconds, an RFC 3339 text
//! (tag 0 or plain), or tag 1 epoch seconds (integer or float).
//!
//! ciborium parses the CBOR into its data model; [`to_json`] maps it onto the JSON data model
//! (tags resolved, byte strings and non-text keys refused), and the JSON report's rules apply
//! from there, so both forms accept and reject exactly the same reports.

use std::borrow::Cow;

use ciborium::value::Value;

use crate::{DecodeError, Decoded, Format, Position, Reading, Series};

/// Deepest nesting accepted (a report nests four levels).
const MAX_DEPTH: usize = 8;

/// Decodes a CBOR report.
pub fn decode(payload: &[u8]) -> Result<Decoded<'static>, DecodeError> {
    let value: Value = ciborium::de::from_reader_with_recursion_limit(payload, MAX_DEPTH * 2)
        .map_err(|e| malformed(Position::Whole, e.to_string()))?;
    let json = to_json(value, 0)?;
    let text = serde_json::to_vec(&json).map_err(|e| malformed(Position::Whole, e.to_string()))?;
    match crate::json::decode(&text) {
        Ok(decoded) => Ok(into_owned(decoded)),
        Err(e) => Err(relabel(e)),
    }
}

fn malformed(position: Position, reason: impl Into<String>) -> DecodeError {
    DecodeError::malformed(Format::Cbor, position, reason)
}

/// The same error, named for CBOR; JSON line/column positions mean nothing here.
fn relabel(e: DecodeError) -> DecodeError {
    match e {
        DecodeError::Malformed { reason, .. } => malformed(Position::Whole, reason),
        DecodeError::Unsupported { reason, .. } => DecodeError::Unsupported {
            format: Format::Cbor,
            position: Position::Whole,
            reason,
        },
        DecodeError::Empty { .. } => DecodeError::Empty {
            format: Format::Cbor,
        },
        DecodeError::NothingUsable {
            rejected, first, ..
        } => DecodeError::NothingUsable {
            format: Format::Cbor,
            rejected,
            first,
        },
        other => other,
    }
}

fn to_json(value: Value, depth: usize) -> Result<serde_json::Value, DecodeError> {
    if depth > MAX_DEPTH {
        return Err(malformed(Position::Whole, "nested too deep for a report"));
    }
    Ok(match value {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => serde_json::Value::Bool(b),
        Value::Integer(i) => {
            let i = i128::from(i);
            if let Ok(v) = i64::try_from(i) {
                v.into()
            } else if let Ok(v) = u64::try_from(i) {
                v.into()
            } else {
                return Err(malformed(
                    Position::Whole,
                    format!("integer {i} is out of range"),
                ));
            }
        }
        Value::Float(f) => serde_json::Number::from_f64(f)
            .map(serde_json::Value::Number)
            .ok_or_else(|| malformed(Position::Whole, format!("{f} is not a finite number")))?,
        Value::Text(t) => serde_json::Value::String(t),
        Value::Bytes(_) => {
            return Err(malformed(
                Position::Whole,
                "byte strings have no place in a report",
            ))
        }
        Value::Array(items) => serde_json::Value::Array(
            items
                .into_iter()
                .map(|v| to_json(v, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Value::Map(entries) => {
            let mut map = serde_json::Map::with_capacity(entries.len());
            for (k, v) in entries {
                let Value::Text(key) = k else {
                    return Err(malformed(Position::Whole, "map keys must be text"));
                };
                map.insert(key, to_json(v, depth + 1)?);
            }
            serde_json::Value::Object(map)
        }
        Value::Tag(0, inner) => match *inner {
            Value::Text(t) => serde_json::Value::String(t),
            _ => return Err(malformed(Position::Whole, "tag 0 must hold a text time")),
        },
        Value::Tag(1, inner) => {
            let ms = match *inner {
                Value::Integer(i) => i128::from(i)
                    .checked_mul(1000)
                    .and_then(|v| i64::try_from(v).ok()),
                Value::Float(f) if f.is_finite() && f.abs() < 1e15 => {
                    Some((f * 1000.0).round() as i64)
                }
                _ => None,
            };
            ms.map(serde_json::Value::from).ok_or_else(|| {
                malformed(Position::Whole, "tag 1 must hold epoch seconds in range")
            })?
        }
        Value::Tag(tag, _) => {
            return Err(DecodeError::Unsupported {
                format: Format::Cbor,
                position: Position::Whole,
                reason: format!("CBOR tag {tag}"),
            })
        }
        _ => return Err(malformed(Position::Whole, "an unknown CBOR value")),
    })
}

fn owned(s: Cow<'_, str>) -> Cow<'static, str> {
    Cow::Owned(s.into_owned())
}

fn into_owned(d: Decoded<'_>) -> Decoded<'static> {
    Decoded {
        meter_id: d.meter_id.map(owned),
        seq: d.seq,
        readings: d
            .readings
            .into_iter()
            .map(|r| Reading {
                channel: owned(r.channel),
                ts_ms: r.ts_ms,
                value: r.value,
                unit: owned(r.unit),
                quality: r.quality,
            })
            .collect(),
        series: d
            .series
            .into_iter()
            .map(|s| Series {
                channel: owned(s.channel),
                start_ts_ms: s.start_ts_ms,
                interval_ms: s.interval_ms,
                unit: owned(s.unit),
                values: s.values,
                quality: s.quality,
            })
            .collect(),
        status: d.status,
        rejected: d.rejected,
        events: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ciborium::value::Value as V;

    fn text(s: &str) -> V {
        V::Text(s.into())
    }

    fn encode(v: &V) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::ser::into_writer(v, &mut out).unwrap();
        out
    }

    fn report(ts: V) -> V {
        V::Map(vec![
            (text("meter_id"), text("E1")),
            (text("seq"), V::Integer(7.into())),
            (
                text("readings"),
                V::Array(vec![
                    V::Map(vec![
                        (text("channel"), text("1-0:1.8.0")),
                        (text("ts"), ts),
                        (text("value"), V::Float(1234.5)),
                        (text("unit"), text("kWh")),
                    ]),
                    V::Map(vec![(text("channel"), text("bad"))]),
                ]),
            ),
            (
                text("status"),
                V::Map(vec![(text("battery_pct"), V::Integer(87.into()))]),
            ),
        ])
    }

    #[test]
    fn a_report_decodes_with_every_time_form() {
        let ms = 1_709_252_100_000i64;
        for ts in [
            V::Integer(ms.into()),
            V::Tag(0, Box::new(text("2024-03-01T00:15:00Z"))),
            text("2024-03-01T00:15:00Z"),
            V::Tag(1, Box::new(V::Integer((ms / 1000).into()))),
            V::Tag(1, Box::new(V::Float(ms as f64 / 1000.0))),
        ] {
            let d = decode(&encode(&report(ts.clone()))).unwrap();
            assert_eq!(d.meter_id.as_deref(), Some("E1"));
            assert_eq!(d.seq, Some(7));
            assert_eq!(d.readings.len(), 1, "{ts:?}");
            assert_eq!(d.readings[0].ts_ms, ms, "{ts:?}");
            assert_eq!(d.readings[0].value, 1234.5);
            assert_eq!(d.readings[0].unit, "kWh");
            assert_eq!(d.status.as_ref().and_then(|s| s.battery_pct), Some(87));
            assert_eq!(
                d.rejected.len(),
                1,
                "the reading without ts is rejected alone"
            );
        }
    }

    #[test]
    fn what_is_not_a_report_is_refused() {
        for bad in [
            V::Array(vec![]),
            V::Map(vec![(V::Integer(1.into()), text("x"))]),
            V::Map(vec![(text("meter_id"), V::Bytes(vec![1]))]),
            V::Map(vec![(text("unknown"), V::Integer(1.into()))]),
            report(V::Tag(37, Box::new(text("uuid")))),
        ] {
            assert!(decode(&encode(&bad)).is_err(), "{bad:?}");
        }
        assert!(decode(&[0xff, 0x00]).is_err());
        assert!(decode(&[0xa1]).is_err(), "truncated");
        // Deep nesting is cut off, not recursed into.
        let mut deep = vec![0x81u8; 10_000];
        deep.push(0x00);
        assert!(decode(&deep).is_err());
    }
}
