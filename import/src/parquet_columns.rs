//! The columns of a Parquet file that is not meterflow's own (written by pandas, pyarrow,
//! polars, DuckDB or Spark with their defaults) read as readings: each canonical field from
//! the column `--map` names (by name, by 1-based position, or a constant), else the column
//! of its own name; strings plain, large, as views or dictionary-encoded; times as
//! timestamps of any unit with or without a zone, dates, Unix seconds or milliseconds, or
//! RFC 3339 text; values of any integer, float or decimal type, or text. A column of a type
//! that cannot be the field it is mapped to is refused naming the column, the type found and
//! what is expected.

use std::borrow::Cow;

use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, TimeUnit};

use crate::csv::time::Stamp;
use crate::csv::{CsvOptions, Field};
use crate::ImportError;

/// Where one canonical field comes from in a batch.
#[derive(Debug, Clone)]
pub(crate) enum From {
    Column(usize),
    Constant(String),
    /// Not in the file (only for optional fields).
    Absent,
}

/// The plan of one file: each field's column, checked against the file's schema.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub meter_id: From,
    pub channel: From,
    pub ts: From,
    pub value: From,
    pub unit: From,
    pub quality: From,
    pub received_at: From,
    pub format: From,
    pub scale: f64,
    /// The zone of naive times (zone-less timestamps, dates, text without an offset):
    /// `--tz`; UTC without it.
    pub tz: Option<chrono_tz::Tz>,
    /// The time column is INT96 (as Spark writes it): UTC instants, though Arrow reads them
    /// without a zone.
    pub ts_int96: bool,
    /// The layout of text times (`ts_format` of `--map`).
    pub ts_format: Option<String>,
    /// Each row's unit converted to this (`--to-unit`).
    pub to_unit: Option<String>,
}

/// What a field must be.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    Text,
    Time,
    Number,
    Integer,
}

impl Want {
    fn expected(self) -> &'static str {
        match self {
            Want::Text => "text (a string, dictionary-encoded or not, or an integer)",
            Want::Time => "a timestamp (any unit, with or without a zone), a date, Unix seconds or milliseconds, or RFC 3339 text",
            Want::Number => "a number (integer, float or decimal up to 38 digits) or text holding one",
            Want::Integer => "an integer (or floats holding whole numbers)",
        }
    }

    fn accepts(self, t: &DataType) -> bool {
        let text = matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
            || matches!(t, DataType::Dictionary(_, v) if matches!(**v, DataType::Utf8 | DataType::LargeUtf8));
        match self {
            Want::Text => text || t.is_integer(),
            Want::Time => {
                text || matches!(
                    t,
                    DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64
                ) || matches!(
                    t,
                    DataType::Int64 | DataType::Int32 | DataType::UInt32 | DataType::UInt64
                )
            }
            Want::Number => {
                text || t.is_integer() || t.is_floating() || matches!(t, DataType::Decimal128(_, _))
            }
            // pandas writes an integer column with a missing value as floats.
            Want::Integer => t.is_integer() || t.is_floating(),
        }
    }
}

impl Plan {
    /// The plan of a file of `schema`, by `options`' mapping when given (else each field by
    /// its own name). `path` names the file in errors.
    pub(crate) fn new(
        schema: &arrow_schema::Schema,
        options: Option<&CsvOptions>,
        path: &std::path::Path,
    ) -> Result<Plan, ImportError> {
        let find = |name: &str| schema.index_of(name).ok();
        let resolve = |target: &'static str,
                       field: Option<&Field>,
                       want: Want,
                       required: bool|
         -> Result<From, ImportError> {
            let index = match field {
                Some(Field::Constant(text)) => return Ok(From::Constant(text.clone())),
                Some(Field::Column(name)) => find(name).ok_or_else(|| ImportError::ParquetColumn {
                    path: path.to_path_buf(),
                    column: name.clone(),
                    reason: format!(
                        "--map {target}: no column {name:?} (the file has {})",
                        names(schema)
                    ),
                })?,
                Some(Field::Position(n)) => {
                    if *n == 0 || *n > schema.fields().len() {
                        return Err(ImportError::ParquetColumn {
                            path: path.to_path_buf(),
                            column: format!("#{n}"),
                            reason: format!(
                                "--map {target}: the file has {} columns",
                                schema.fields().len()
                            ),
                        });
                    }
                    n - 1
                }
                None => match find(target) {
                    Some(i) => i,
                    None if required => {
                        return Err(ImportError::ParquetColumn {
                            path: path.to_path_buf(),
                            column: target.to_string(),
                            reason: format!(
                                "no column {target} (the file has {}): name it with --map {target}=COLUMN",
                                names(schema)
                            ),
                        })
                    }
                    None => return Ok(From::Absent),
                },
            };
            let f = schema.field(index);
            if !want.accepts(f.data_type()) {
                return Err(ImportError::ParquetColumn {
                    path: path.to_path_buf(),
                    column: f.name().clone(),
                    reason: format!(
                        "{target} is {} in this file; expected {}",
                        f.data_type(),
                        want.expected()
                    ),
                });
            }
            Ok(From::Column(index))
        };
        let mapping = options.map(|o| &o.mapping);
        // The settings as the CSV reader checks them: a bad one stops the file at once, not
        // row by row.
        if let Some(o) = options {
            crate::csv::units::check_scale(o.scale)?;
            if let Some(to) = &o.to_unit {
                crate::csv::units::check_unit(to)?;
            }
        }
        Ok(Plan {
            meter_id: resolve("meter_id", mapping.map(|m| &m.meter_id), Want::Text, true)?,
            channel: resolve("channel", mapping.map(|m| &m.channel), Want::Text, true)?,
            ts: resolve("ts", mapping.map(|m| &m.ts), Want::Time, true)?,
            value: resolve("value", mapping.map(|m| &m.value), Want::Number, true)?,
            unit: resolve("unit", mapping.map(|m| &m.unit), Want::Text, true)?,
            quality: resolve(
                "quality",
                mapping.and_then(|m| m.quality.as_ref()),
                Want::Integer,
                false,
            )?,
            received_at: resolve("received_at", None, Want::Time, false)?,
            format: resolve("format", None, Want::Text, false)?,
            scale: options.map_or(1.0, |o| o.scale),
            tz: options.and_then(|o| o.tz),
            ts_int96: false,
            ts_format: options.and_then(|o| o.mapping.ts_format.clone()),
            to_unit: options.and_then(|o| o.to_unit.clone()),
        })
    }
}

fn names(schema: &arrow_schema::Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("{} ({})", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every field of the plan in one batch, made once per batch (a dictionary's keys are
/// normalised once, not per row).
pub(crate) struct BatchValues<'a> {
    pub meter_id: Values<'a>,
    pub channel: Values<'a>,
    pub ts: Values<'a>,
    pub value: Values<'a>,
    pub unit: Values<'a>,
    pub quality: Values<'a>,
    pub received_at: Values<'a>,
    pub format: Values<'a>,
}

impl<'a> BatchValues<'a> {
    pub(crate) fn of(plan: &'a Plan, batch: &'a RecordBatch) -> BatchValues<'a> {
        BatchValues {
            meter_id: Values::of(&plan.meter_id, batch),
            channel: Values::of(&plan.channel, batch),
            ts: Values::of(&plan.ts, batch),
            value: Values::of(&plan.value, batch),
            unit: Values::of(&plan.unit, batch),
            quality: Values::of(&plan.quality, batch),
            received_at: Values::of(&plan.received_at, batch),
            format: Values::of(&plan.format, batch),
        }
    }
}

/// Every column of a batch, for a refused row's dead letter (made once per batch, when the
/// first row is refused).
pub(crate) fn all_columns(batch: &RecordBatch) -> Vec<(String, Values<'_>)> {
    batch
        .schema()
        .fields()
        .iter()
        .enumerate()
        .map(|(index, field)| (field.name().clone(), Values::column(batch, index)))
        .collect()
}

/// One field of one batch, read row by row.
pub(crate) enum Values<'a> {
    Constant(&'a str),
    Absent,
    Array(&'a ArrayRef, Option<Vec<usize>>),
}

impl<'a> Values<'a> {
    pub(crate) fn of(from: &'a From, batch: &'a RecordBatch) -> Values<'a> {
        match from {
            From::Constant(text) => Values::Constant(text),
            From::Absent => Values::Absent,
            From::Column(i) => Values::column(batch, *i),
        }
    }

    fn column(batch: &'a RecordBatch, index: usize) -> Values<'a> {
        let array = batch.column(index);
        // A dictionary's keys as indices into its values, once per batch.
        let keys = array.as_any_dictionary_opt().map(|d| d.normalized_keys());
        Values::Array(array, keys)
    }

    /// Row `i` as text; `None` when null or absent.
    pub(crate) fn text(&self, i: usize) -> Option<Cow<'a, str>> {
        match self {
            Values::Constant(text) => Some(Cow::Borrowed(text)),
            Values::Absent => None,
            Values::Array(array, keys) => {
                if array.is_null(i) {
                    return None;
                }
                match (array.data_type(), keys) {
                    (DataType::Dictionary(_, _), Some(keys)) => {
                        let values = array.as_any_dictionary().values();
                        text_at(values, keys[i])
                    }
                    _ => text_at(array, i),
                }
            }
        }
    }

    /// Row `i` as a time stamp: an instant (a timestamp with a zone, Unix seconds or ms, text
    /// with an offset) or a wall-clock time (a timestamp without a zone, a date, text without
    /// an offset) that the plan's zone makes an instant; `Err` with what is wrong with it.
    pub(crate) fn stamp(&self, i: usize, ts_format: Option<&str>) -> Result<Option<Stamp>, String> {
        let from_text = |text: &str| {
            crate::csv::time::parse_time(text, ts_format)
                .map(Some)
                .map_err(|e| e.to_string())
        };
        let Values::Array(array, _) = self else {
            return match self.text(i) {
                Some(text) => from_text(&text),
                None => Ok(None),
            };
        };
        if array.is_null(i) {
            return Ok(None);
        }
        let (ms, zoned) = match array.data_type() {
            DataType::Timestamp(unit, zone) => {
                let ms = match unit {
                    TimeUnit::Second => array
                        .as_primitive::<TimestampSecondType>()
                        .value(i)
                        .checked_mul(1000),
                    TimeUnit::Millisecond => {
                        Some(array.as_primitive::<TimestampMillisecondType>().value(i))
                    }
                    TimeUnit::Microsecond => Some(
                        array
                            .as_primitive::<TimestampMicrosecondType>()
                            .value(i)
                            .div_euclid(1000),
                    ),
                    TimeUnit::Nanosecond => Some(
                        array
                            .as_primitive::<TimestampNanosecondType>()
                            .value(i)
                            .div_euclid(1_000_000),
                    ),
                };
                (ms, zone.is_some())
            }
            DataType::Date32 => (
                i64::from(array.as_primitive::<Date32Type>().value(i)).checked_mul(86_400_000),
                false,
            ),
            DataType::Date64 => (Some(array.as_primitive::<Date64Type>().value(i)), false),
            DataType::Int64 => (
                Some(epoch_ms(array.as_primitive::<Int64Type>().value(i))),
                true,
            ),
            DataType::Int32 => (
                Some(epoch_ms(i64::from(
                    array.as_primitive::<Int32Type>().value(i),
                ))),
                true,
            ),
            DataType::UInt32 => (
                Some(epoch_ms(i64::from(
                    array.as_primitive::<UInt32Type>().value(i),
                ))),
                true,
            ),
            DataType::UInt64 => (
                i64::try_from(array.as_primitive::<UInt64Type>().value(i))
                    .ok()
                    .map(epoch_ms),
                true,
            ),
            _ => {
                return match self.text(i) {
                    Some(text) => from_text(&text),
                    None => Ok(None),
                }
            }
        };
        let ms = ms.ok_or_else(|| "a time out of range".to_string())?;
        if zoned {
            return Ok(Some(Stamp::Utc(ms)));
        }
        chrono::DateTime::from_timestamp_millis(ms)
            .map(|t| Some(Stamp::Local(t.naive_utc())))
            .ok_or_else(|| "a time out of range".to_string())
    }

    /// Row `i` as a number; `Err` with what is wrong with it.
    pub(crate) fn number(&self, i: usize) -> Result<Option<f64>, String> {
        let Values::Array(array, _) = self else {
            return match self.text(i) {
                Some(text) => parse_number(&text).map(Some),
                None => Ok(None),
            };
        };
        if array.is_null(i) {
            return Ok(None);
        }
        macro_rules! prim {
            ($t:ty) => {
                array.as_primitive::<$t>().value(i) as f64
            };
        }
        let v = match array.data_type() {
            DataType::Float64 => prim!(Float64Type),
            DataType::Float32 => f64::from(array.as_primitive::<Float32Type>().value(i)),
            DataType::Float16 => f64::from(array.as_primitive::<Float16Type>().value(i)),
            DataType::Int8 => prim!(Int8Type),
            DataType::Int16 => prim!(Int16Type),
            DataType::Int32 => prim!(Int32Type),
            DataType::Int64 => prim!(Int64Type),
            DataType::UInt8 => prim!(UInt8Type),
            DataType::UInt16 => prim!(UInt16Type),
            DataType::UInt32 => prim!(UInt32Type),
            DataType::UInt64 => prim!(UInt64Type),
            DataType::Decimal128(_, scale) => {
                let raw = array.as_primitive::<Decimal128Type>().value(i);
                // The decimal's closest double: its text through the float parser.
                parse_number(&decimal_text(raw, *scale))?
            }
            _ => {
                return match self.text(i) {
                    Some(text) => parse_number(&text).map(Some),
                    None => Ok(None),
                }
            }
        };
        Ok(Some(v))
    }

    /// Row `i` as a quality (bit flags); 0 when absent or null.
    pub(crate) fn quality(&self, i: usize) -> Result<u16, String> {
        match self.number(i)? {
            None => Ok(0),
            Some(q) if q >= 0.0 && q <= f64::from(u16::MAX) && q.fract() == 0.0 => Ok(q as u16),
            Some(q) => Err(format!("quality {q} is not 0 to 65535")),
        }
    }
}

/// Text of row `i` of a string or integer array.
fn text_at(array: &ArrayRef, i: usize) -> Option<Cow<'_, str>> {
    if array.is_null(i) {
        return None;
    }
    Some(match array.data_type() {
        DataType::Utf8 => Cow::Borrowed(array.as_string::<i32>().value(i)),
        DataType::LargeUtf8 => Cow::Borrowed(array.as_string::<i64>().value(i)),
        DataType::Utf8View => Cow::Borrowed(array.as_string_view().value(i)),
        DataType::Int8 => Cow::Owned(array.as_primitive::<Int8Type>().value(i).to_string()),
        DataType::Int16 => Cow::Owned(array.as_primitive::<Int16Type>().value(i).to_string()),
        DataType::Int32 => Cow::Owned(array.as_primitive::<Int32Type>().value(i).to_string()),
        DataType::Int64 => Cow::Owned(array.as_primitive::<Int64Type>().value(i).to_string()),
        DataType::UInt8 => Cow::Owned(array.as_primitive::<UInt8Type>().value(i).to_string()),
        DataType::UInt16 => Cow::Owned(array.as_primitive::<UInt16Type>().value(i).to_string()),
        DataType::UInt32 => Cow::Owned(array.as_primitive::<UInt32Type>().value(i).to_string()),
        DataType::UInt64 => Cow::Owned(array.as_primitive::<UInt64Type>().value(i).to_string()),
        _ => return None,
    })
}

/// Unix seconds or milliseconds, by magnitude (as the CSV reader takes them): below 10^11
/// (year 5138 in seconds, 1973 in ms) seconds.
fn epoch_ms(n: i64) -> i64 {
    if n.abs() < 100_000_000_000 {
        n.saturating_mul(1000)
    } else {
        n
    }
}

fn parse_number(text: &str) -> Result<f64, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| format!("value {text:?} is not a finite number"))
}

/// A Decimal128 as text (`12345` with scale 2: `123.45`).
fn decimal_text(raw: i128, scale: i8) -> String {
    if scale <= 0 {
        return format!("{raw}e{}", -i32::from(scale));
    }
    let negative = raw < 0;
    let digits = raw.unsigned_abs().to_string();
    let scale = scale as usize;
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{}{int}.{frac}", if negative { "-" } else { "" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_and_epochs_read_as_written() {
        assert_eq!(decimal_text(12345, 2), "123.45");
        assert_eq!(decimal_text(-5, 3), "-0.005");
        assert_eq!(decimal_text(7, -2), "7e2");
        assert_eq!(epoch_ms(1_700_000_000), 1_700_000_000_000);
        assert_eq!(epoch_ms(1_700_000_000_123), 1_700_000_000_123);
    }
}
