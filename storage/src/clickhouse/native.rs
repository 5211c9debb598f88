//! ClickHouse's Native format built straight from the canonical Arrow batch: one block per
//! batch, each column written whole in the type the server's table has (read from
//! `system.columns`), so the server copies columns instead of parsing rows.
//!
//! A block over HTTP (no protocol revision, so no block info): `VarUInt` columns, `VarUInt`
//! rows, then per column its name, its type name and its data:
//! - `String`: per value a LEB128 length and the bytes;
//! - `LowCardinality(String)`: the key-serialization version (UInt64 1, shared dictionaries
//!   with additional keys), the index type with `HasAdditionalKeys` (UInt64), the number of
//!   keys and the keys as a String column (the default `""` first, as ClickHouse's own
//!   clients write it), the number of rows and one index per row (UInt8/16/32 by key count);
//! - `Float64`, `UInt16`: the little-endian values;
//! - `DateTime`: UInt32 seconds; `DateTime64(p)`: Int64 in units of 10^-p s.
//!
//! A table whose columns have other types is written as RowBinary instead ([`super::encode`]).

use std::collections::HashMap;

use arrow_array::{Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow_schema::ArrowError;
use meterflow_proto::ReadingColumns;

use super::encode::{put_bytes, put_varuint};

/// How the server stores one column of `readings`, as far as the encoder needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NativeType {
    String,
    LowCardinalityString,
    Float64,
    UInt16,
    /// UInt32 seconds.
    DateTime,
    /// Int64 in units of 10^-precision seconds.
    DateTime64(u32),
}

impl NativeType {
    /// The encoder's type for a server type name (`LowCardinality(String)`,
    /// `DateTime64(3, 'UTC')`, ...); `None` for one it cannot write.
    pub fn parse(server_type: &str) -> Option<NativeType> {
        let t = server_type.trim();
        Some(match t {
            "String" => NativeType::String,
            "LowCardinality(String)" => NativeType::LowCardinalityString,
            "Float64" => NativeType::Float64,
            "UInt16" => NativeType::UInt16,
            _ if t == "DateTime" || (t.starts_with("DateTime(") && t.ends_with(')')) => {
                NativeType::DateTime
            }
            _ if t.starts_with("DateTime64(") && t.ends_with(')') => {
                let args = &t["DateTime64(".len()..t.len() - 1];
                let precision: u32 = args.split(',').next()?.trim().parse().ok()?;
                if precision > 9 {
                    return None;
                }
                NativeType::DateTime64(precision)
            }
            _ => return None,
        })
    }

    fn is_time(self) -> bool {
        matches!(self, NativeType::DateTime | NativeType::DateTime64(_))
    }
}

/// The canonical columns in the order of [`ReadingColumns`], with the kind each must be.
const COLUMNS: [(&str, Kind); 9] = [
    ("meter_id", Kind::Text),
    ("channel", Kind::Text),
    ("ts", Kind::Time),
    ("value", Kind::Float),
    ("unit", Kind::Text),
    ("quality", Kind::Small),
    ("received_at", Kind::Time),
    ("source", Kind::Text),
    ("format", Kind::Text),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Time,
    Float,
    Small,
}

impl Kind {
    fn accepts(self, t: NativeType) -> bool {
        match self {
            Kind::Text => matches!(t, NativeType::String | NativeType::LowCardinalityString),
            Kind::Time => t.is_time(),
            Kind::Float => t == NativeType::Float64,
            Kind::Small => t == NativeType::UInt16,
        }
    }
}

/// Why `readings` cannot be written as Native blocks: the writer then inserts RowBinary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NativeMismatch {
    /// The table lacks a canonical column.
    #[error("readings has no column {0}")]
    MissingColumn(&'static str),
    /// A canonical column has a server type the encoder cannot write for it.
    #[error("readings.{column} is {server_type}")]
    UnwritableType {
        column: &'static str,
        server_type: String,
    },
}

/// How to write `readings` as Native blocks: each canonical column's server type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadingsNative {
    /// Per canonical column: the server's type name (written in the block as it is) and how
    /// to encode it.
    columns: Vec<(String, NativeType)>,
}

impl ReadingsNative {
    /// From `(column, type)` pairs of `system.columns`; an error says which canonical column
    /// is missing or of a type the encoder cannot write (the writer then uses RowBinary).
    pub fn from_server_columns<'a>(
        columns: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<ReadingsNative, NativeMismatch> {
        let server: HashMap<&str, &str> = columns.into_iter().collect();
        let mut out = Vec::with_capacity(COLUMNS.len());
        for (name, kind) in COLUMNS {
            let Some(type_name) = server.get(name) else {
                return Err(NativeMismatch::MissingColumn(name));
            };
            match NativeType::parse(type_name) {
                Some(t) if kind.accepts(t) => out.push((type_name.trim().to_string(), t)),
                _ => {
                    return Err(NativeMismatch::UnwritableType {
                        column: name,
                        server_type: type_name.to_string(),
                    })
                }
            }
        }
        Ok(ReadingsNative { columns: out })
    }

    /// Appends one Native block holding every row of `batch` (nothing for an empty batch: an
    /// empty block ends a Native stream); an error when the batch is not of the canonical
    /// schema.
    pub fn encode_block(&self, batch: &RecordBatch, out: &mut Vec<u8>) -> Result<(), ArrowError> {
        let c = ReadingColumns::of(batch)?;
        let rows = c.len();
        if rows == 0 {
            return Ok(());
        }
        out.reserve(rows * 48);
        put_varuint(out, self.columns.len() as u64);
        put_varuint(out, rows as u64);
        for (i, (type_name, t)) in self.columns.iter().enumerate() {
            put_bytes(out, COLUMNS[i].0.as_bytes());
            put_bytes(out, type_name.as_bytes());
            match i {
                0 => put_text(out, c.meter_id, *t),
                1 => put_text(out, c.channel, *t),
                2 => put_times(out, c.ts, *t),
                3 => {
                    for v in c.value.values().iter() {
                        out.extend_from_slice(&v.to_le_bytes());
                    }
                }
                4 => put_text(out, c.unit, *t),
                5 => {
                    for v in c.quality.values().iter() {
                        out.extend_from_slice(&v.to_le_bytes());
                    }
                }
                6 => put_times(out, c.received_at, *t),
                7 => put_text(out, c.source, *t),
                _ => put_text(out, c.format, *t),
            }
        }
        Ok(())
    }

    /// The column list of the INSERT statement, in block order.
    pub fn column_list() -> String {
        COLUMNS.iter().map(|c| c.0).collect::<Vec<_>>().join(", ")
    }
}

fn put_text(out: &mut Vec<u8>, column: &StringArray, t: NativeType) {
    if t == NativeType::LowCardinalityString {
        return put_low_cardinality(out, column);
    }
    let offsets = column.value_offsets();
    let data = column.value_data();
    for pair in offsets.windows(2) {
        let (start, end) = (pair[0] as usize, pair[1] as usize);
        put_bytes(out, &data[start..end]);
    }
}

/// Version of the LowCardinality key serialization: shared dictionaries with additional keys.
const LC_SHARED_WITH_ADDITIONAL_KEYS: u64 = 1;
/// Index-type flag: the keys follow in this block (no global dictionary).
const LC_HAS_ADDITIONAL_KEYS: u64 = 1 << 9;

/// A `LowCardinality(String)` column: its dictionary (the default `""` first) and one index
/// per row. The few distinct values of a batch (units, sources, OBIS codes) are found by a
/// short linear scan, a map only once there are many.
fn put_low_cardinality(out: &mut Vec<u8>, column: &StringArray) {
    const SCAN: usize = 16;
    let offsets = column.value_offsets();
    let data = column.value_data();
    let mut keys: Vec<&[u8]> = vec![b""];
    let mut map: HashMap<&[u8], u32> = HashMap::new();
    let mut indexes: Vec<u32> = Vec::with_capacity(column.len());
    let mut last: Option<(&[u8], u32)> = None;
    for pair in offsets.windows(2) {
        let value = &data[pair[0] as usize..pair[1] as usize];
        let index = match last {
            Some((v, i)) if v == value => i,
            _ => {
                let found = if keys.len() <= SCAN {
                    keys.iter().position(|k| *k == value).map(|i| i as u32)
                } else {
                    map.get(value).copied()
                };
                let i = found.unwrap_or_else(|| {
                    let i = keys.len() as u32;
                    keys.push(value);
                    if keys.len() == SCAN + 1 {
                        map.extend(keys.iter().enumerate().map(|(i, k)| (*k, i as u32)));
                    } else if keys.len() > SCAN + 1 {
                        map.insert(value, i);
                    }
                    i
                });
                last = Some((value, i));
                i
            }
        };
        indexes.push(index);
    }
    let (index_type, width) = match keys.len() {
        n if n <= 1 << 8 => (0u64, 1),
        n if n <= 1 << 16 => (1, 2),
        _ => (2, 4),
    };
    out.extend_from_slice(&LC_SHARED_WITH_ADDITIONAL_KEYS.to_le_bytes());
    out.extend_from_slice(&(index_type | LC_HAS_ADDITIONAL_KEYS).to_le_bytes());
    out.extend_from_slice(&(keys.len() as u64).to_le_bytes());
    for key in &keys {
        put_bytes(out, key);
    }
    out.extend_from_slice(&(indexes.len() as u64).to_le_bytes());
    for index in indexes {
        out.extend_from_slice(&index.to_le_bytes()[..width]);
    }
}

fn put_times(out: &mut Vec<u8>, column: &TimestampMillisecondArray, t: NativeType) {
    let values = column.values();
    match t {
        NativeType::DateTime => {
            for ms in values.iter() {
                let secs = u32::try_from(ms.div_euclid(1000)).unwrap_or(0);
                out.extend_from_slice(&secs.to_le_bytes());
            }
        }
        NativeType::DateTime64(3) => {
            for ms in values.iter() {
                out.extend_from_slice(&ms.to_le_bytes());
            }
        }
        NativeType::DateTime64(p) if p > 3 => {
            let factor = 10i64.pow(p - 3);
            for ms in values.iter() {
                out.extend_from_slice(&ms.saturating_mul(factor).to_le_bytes());
            }
        }
        NativeType::DateTime64(p) => {
            let divisor = 10i64.pow(3 - p);
            for ms in values.iter() {
                out.extend_from_slice(&ms.div_euclid(divisor).to_le_bytes());
            }
        }
        // Only time types reach here (checked when the layout was read).
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meterflow_proto::{Format, ReadingBatchBuilder, RowMeta, Source};

    impl ReadingsNative {
        /// The layout of the tables meterflow makes: `modern` for servers from 20.5 on.
        fn of_schema(modern: bool) -> ReadingsNative {
            let (lc, time) = if modern {
                ("LowCardinality(String)", "DateTime64(3, 'UTC')")
            } else {
                ("String", "DateTime")
            };
            let types = ["String", lc, time, "Float64", lc, "UInt16", time, lc, lc];
            let pairs: Vec<(&str, &str)> = COLUMNS.iter().map(|c| c.0).zip(types).collect();
            ReadingsNative::from_server_columns(pairs).unwrap()
        }
    }

    fn batch() -> RecordBatch {
        let mut b = ReadingBatchBuilder::default();
        let meta = RowMeta {
            meter_id: "m1",
            received_at_ms: 1_709_337_600_999,
            source: Source::Mqtt,
            format: Format::Pb,
        };
        b.append(&meta, "1-0:1.8.0", 1_709_337_600_500, 1.5, "kWh", 3);
        b.append(&meta, "1-0:2.8.0", -1_500, 2.0, "kWh", 0);
        b.finish()
    }

    #[test]
    fn server_types_parse() {
        assert_eq!(
            NativeType::parse("DateTime64(3, 'UTC')"),
            Some(NativeType::DateTime64(3))
        );
        assert_eq!(
            NativeType::parse("DateTime('Europe/Amsterdam')"),
            Some(NativeType::DateTime)
        );
        assert_eq!(
            NativeType::parse("LowCardinality(String)"),
            Some(NativeType::LowCardinalityString)
        );
        assert_eq!(NativeType::parse("Nullable(String)"), None);
        assert_eq!(NativeType::parse("DateTime64(12)"), None);
        let wrong = [("meter_id", "String"), ("channel", "UInt16")];
        let err = ReadingsNative::from_server_columns(wrong).unwrap_err();
        assert_eq!(
            err,
            NativeMismatch::UnwritableType {
                column: "channel",
                server_type: "UInt16".into()
            }
        );
        assert!(err.to_string().contains("channel is UInt16"), "{err}");
        assert_eq!(ReadingsNative::of_schema(true).columns.len(), 9);
        assert_eq!(ReadingsNative::of_schema(false).columns.len(), 9);
    }

    #[test]
    fn a_block_of_an_old_server_is_plain_columns() {
        let mut out = Vec::new();
        ReadingsNative::of_schema(false)
            .encode_block(&batch(), &mut out)
            .unwrap();
        let mut want = vec![9, 2];
        let column = |want: &mut Vec<u8>, name: &str, t: &str, data: &[u8]| {
            put_bytes(want, name.as_bytes());
            put_bytes(want, t.as_bytes());
            want.extend_from_slice(data);
        };
        column(&mut want, "meter_id", "String", b"\x02m1\x02m1");
        column(
            &mut want,
            "channel",
            "String",
            b"\x091-0:1.8.0\x091-0:2.8.0",
        );
        let mut ts = 1_709_337_600u32.to_le_bytes().to_vec();
        ts.extend_from_slice(&0u32.to_le_bytes()); // before 1970: the type's floor
        column(&mut want, "ts", "DateTime", &ts);
        let mut values = 1.5f64.to_le_bytes().to_vec();
        values.extend_from_slice(&2.0f64.to_le_bytes());
        column(&mut want, "value", "Float64", &values);
        column(&mut want, "unit", "String", b"\x03kWh\x03kWh");
        column(&mut want, "quality", "UInt16", &[3, 0, 0, 0]);
        let mut received = 1_709_337_600u32.to_le_bytes().to_vec();
        received.extend_from_slice(&1_709_337_600u32.to_le_bytes());
        column(&mut want, "received_at", "DateTime", &received);
        column(&mut want, "source", "String", b"\x04mqtt\x04mqtt");
        column(&mut want, "format", "String", b"\x02pb\x02pb");
        assert_eq!(out, want);
    }

    #[test]
    fn low_cardinality_and_datetime64_columns() {
        let mut out = Vec::new();
        ReadingsNative::of_schema(true)
            .encode_block(&batch(), &mut out)
            .unwrap();
        // channel: version 1, UInt8 indexes with additional keys, 3 keys ("" first), 2 rows.
        let mut channel = Vec::new();
        put_bytes(&mut channel, b"channel");
        put_bytes(&mut channel, b"LowCardinality(String)");
        channel.extend_from_slice(&1u64.to_le_bytes());
        channel.extend_from_slice(&(1u64 << 9).to_le_bytes());
        channel.extend_from_slice(&3u64.to_le_bytes());
        channel.extend_from_slice(b"\x00\x091-0:1.8.0\x091-0:2.8.0");
        channel.extend_from_slice(&2u64.to_le_bytes());
        channel.extend_from_slice(&[1, 2]);
        let at = out
            .windows(channel.len())
            .position(|w| w == channel.as_slice());
        assert!(
            at.is_some(),
            "channel column as ClickHouse's clients write it"
        );
        let mut ts = Vec::new();
        put_bytes(&mut ts, b"ts");
        put_bytes(&mut ts, b"DateTime64(3, 'UTC')");
        ts.extend_from_slice(&1_709_337_600_500i64.to_le_bytes());
        ts.extend_from_slice(&(-1_500i64).to_le_bytes());
        assert!(out.windows(ts.len()).any(|w| w == ts.as_slice()));
    }

    #[test]
    fn many_distinct_values_use_wider_indexes() {
        let mut b = ReadingBatchBuilder::default();
        let ids: Vec<String> = (0..300).map(|i| format!("m{i}")).collect();
        for id in &ids {
            let meta = RowMeta {
                meter_id: id,
                received_at_ms: 0,
                source: Source::Mqtt,
                format: Format::Pb,
            };
            b.append(&meta, id, 0, 0.0, "", 0);
        }
        let batch = b.finish();
        let mut out = Vec::new();
        put_low_cardinality(&mut out, ReadingColumns::of(&batch).unwrap().channel);
        // 301 keys (with ""): UInt16 indexes.
        assert_eq!(out[8..16], (1u64 | 1 << 9).to_le_bytes());
        assert_eq!(out[16..24], 301u64.to_le_bytes());
        let tail = &out[out.len() - 600..];
        assert_eq!(&tail[..2], &1u16.to_le_bytes());
        assert_eq!(&tail[598..], &300u16.to_le_bytes());
        // A value seen again maps to its first index (the map, past the linear scan).
        let twice = StringArray::from(vec!["a", "b", "a"]);
        let mut out = Vec::new();
        put_low_cardinality(&mut out, &twice);
        assert_eq!(&out[out.len() - 3..], &[1, 2, 1]);
    }

    #[test]
    fn sub_and_super_millisecond_precisions() {
        let ts = TimestampMillisecondArray::from(vec![1_500i64, -1]);
        let mut out = Vec::new();
        put_times(&mut out, &ts, NativeType::DateTime64(6));
        assert_eq!(out[..8], 1_500_000i64.to_le_bytes());
        assert_eq!(out[8..], (-1_000i64).to_le_bytes());
        let mut out = Vec::new();
        put_times(&mut out, &ts, NativeType::DateTime64(0));
        assert_eq!(out[..8], 1i64.to_le_bytes());
        assert_eq!(out[8..], (-1i64).to_le_bytes());
    }
}
