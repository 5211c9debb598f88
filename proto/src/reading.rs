//! The canonical reading: one row per measured value, the same columns in Arrow, Parquet and
//! ClickHouse (DESIGN.md, "The canonical reading"), and the builder that appends rows to it.

use std::sync::{Arc, OnceLock};

use arrow_array::builder::{
    ArrayBuilder, Float64Builder, StringBuilder, TimestampMillisecondBuilder, UInt16Builder,
};
use arrow_array::{
    ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt16Array,
};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::{Format, Source};

/// Column names, in schema order.
pub const COLUMNS: [&str; 9] = [
    "meter_id",
    "channel",
    "ts",
    "value",
    "unit",
    "quality",
    "received_at",
    "source",
    "format",
];

/// The Arrow schema of a batch of readings. Every column is non-null.
pub fn reading_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
            Arc::new(Schema::new(vec![
                Field::new("meter_id", DataType::Utf8, false),
                Field::new("channel", DataType::Utf8, false),
                Field::new("ts", ts.clone(), false),
                Field::new("value", DataType::Float64, false),
                Field::new("unit", DataType::Utf8, false),
                Field::new("quality", DataType::UInt16, false),
                Field::new("received_at", ts, false),
                Field::new("source", DataType::Utf8, false),
                Field::new("format", DataType::Utf8, false),
            ]))
        })
        .clone()
}

/// Typed access to the columns of a batch of [`reading_schema`], found by name and checked
/// once, so that no sink reads a column by a bare index or panics on a batch of another shape.
#[derive(Debug, Clone, Copy)]
pub struct ReadingColumns<'a> {
    pub meter_id: &'a StringArray,
    pub channel: &'a StringArray,
    pub ts: &'a TimestampMillisecondArray,
    pub value: &'a Float64Array,
    pub unit: &'a StringArray,
    pub quality: &'a UInt16Array,
    pub received_at: &'a TimestampMillisecondArray,
    pub source: &'a StringArray,
    pub format: &'a StringArray,
}

impl<'a> ReadingColumns<'a> {
    /// The columns of `batch`; an error names a column that is missing or of another type.
    pub fn of(batch: &'a RecordBatch) -> Result<ReadingColumns<'a>, ArrowError> {
        fn column<'b, T: 'static>(batch: &'b RecordBatch, name: &str) -> Result<&'b T, ArrowError> {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<T>())
                .ok_or_else(|| {
                    ArrowError::SchemaError(format!(
                        "a batch of readings needs column {name} of the canonical type"
                    ))
                })
        }
        Ok(ReadingColumns {
            meter_id: column(batch, "meter_id")?,
            channel: column(batch, "channel")?,
            ts: column(batch, "ts")?,
            value: column(batch, "value")?,
            unit: column(batch, "unit")?,
            quality: column(batch, "quality")?,
            received_at: column(batch, "received_at")?,
            source: column(batch, "source")?,
            format: column(batch, "format")?,
        })
    }

    /// Rows in the batch.
    pub fn len(&self) -> usize {
        arrow_array::Array::len(self.meter_id)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What every row of one message shares.
#[derive(Debug, Clone, Copy)]
pub struct RowMeta<'a> {
    pub meter_id: &'a str,
    /// When meterflow accepted the message, Unix milliseconds UTC.
    pub received_at_ms: i64,
    pub source: Source,
    pub format: Format,
}

/// Appends readings column by column; `finish` turns them into a [`RecordBatch`] of
/// [`reading_schema`] and leaves the builder empty for reuse.
/// One reading with every column as a value, for [`ReadingBatchBuilder::append_text`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextRow<'a> {
    pub meter_id: &'a str,
    pub channel: &'a str,
    pub ts_ms: i64,
    pub value: f64,
    pub unit: &'a str,
    pub quality: u16,
    pub received_at_ms: i64,
    pub source: &'a str,
    pub format: &'a str,
}

pub struct ReadingBatchBuilder {
    meter_id: StringBuilder,
    channel: StringBuilder,
    ts: TimestampMillisecondBuilder,
    value: Float64Builder,
    unit: StringBuilder,
    quality: UInt16Builder,
    received_at: TimestampMillisecondBuilder,
    source: StringBuilder,
    format: StringBuilder,
    approx_bytes: usize,
}

/// Fixed-width bytes of one row: ts, value, received_at (8 each) and quality (2),
/// plus the 4-byte offsets of the five string columns.
const FIXED_ROW_BYTES: usize = 8 + 8 + 8 + 2 + 5 * 4;

impl Default for ReadingBatchBuilder {
    fn default() -> Self {
        Self::with_capacity(1024)
    }
}

impl ReadingBatchBuilder {
    pub fn with_capacity(rows: usize) -> Self {
        ReadingBatchBuilder {
            meter_id: StringBuilder::with_capacity(rows, rows * 16),
            channel: StringBuilder::with_capacity(rows, rows * 10),
            ts: TimestampMillisecondBuilder::with_capacity(rows).with_timezone("UTC"),
            value: Float64Builder::with_capacity(rows),
            unit: StringBuilder::with_capacity(rows, rows * 3),
            quality: UInt16Builder::with_capacity(rows),
            received_at: TimestampMillisecondBuilder::with_capacity(rows).with_timezone("UTC"),
            source: StringBuilder::with_capacity(rows, rows * 4),
            format: StringBuilder::with_capacity(rows, rows * 4),
            approx_bytes: 0,
        }
    }

    /// Appends one reading.
    pub fn append(
        &mut self,
        meta: &RowMeta<'_>,
        channel: &str,
        ts_ms: i64,
        value: f64,
        unit: &str,
        quality: u16,
    ) {
        self.meter_id.append_value(meta.meter_id);
        self.channel.append_value(channel);
        self.ts.append_value(ts_ms);
        self.value.append_value(value);
        self.unit.append_value(unit);
        self.quality.append_value(quality);
        self.received_at.append_value(meta.received_at_ms);
        let source = meta.source.as_str();
        let format = meta.format.as_str();
        self.source.append_value(source);
        self.format.append_value(format);
        self.approx_bytes += FIXED_ROW_BYTES
            + meta.meter_id.len()
            + channel.len()
            + unit.len()
            + source.len()
            + format.len();
    }

    /// Appends one reading whose source and format are text (history loaded by `meterflow
    /// import`: source `import`, the format of the file it came from).
    pub fn append_text(&mut self, row: &TextRow<'_>) {
        self.meter_id.append_value(row.meter_id);
        self.channel.append_value(row.channel);
        self.ts.append_value(row.ts_ms);
        self.value.append_value(row.value);
        self.unit.append_value(row.unit);
        self.quality.append_value(row.quality);
        self.received_at.append_value(row.received_at_ms);
        self.source.append_value(row.source);
        self.format.append_value(row.format);
        self.approx_bytes += FIXED_ROW_BYTES
            + row.meter_id.len()
            + row.channel.len()
            + row.unit.len()
            + row.source.len()
            + row.format.len();
    }

    /// Rows appended since the last `finish`.
    pub fn len(&self) -> usize {
        self.value.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Approximate in-memory size of the rows appended since the last `finish`.
    pub fn approx_bytes(&self) -> usize {
        self.approx_bytes
    }

    /// Takes the rows appended so far as a batch; the builder is empty afterwards.
    // The one exception to the workspace's no-expect rule: every append writes all nine
    // builders, so their lengths and types always match the schema. A failure here is a bug
    // in this file that no input can cause, and no caller could handle it better.
    #[allow(clippy::expect_used)]
    pub fn finish(&mut self) -> RecordBatch {
        self.approx_bytes = 0;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.meter_id.finish()),
            Arc::new(self.channel.finish()),
            Arc::new(self.ts.finish()),
            Arc::new(self.value.finish()),
            Arc::new(self.unit.finish()),
            Arc::new(self.quality.finish()),
            Arc::new(self.received_at.finish()),
            Arc::new(self.source.finish()),
            Arc::new(self.format.finish()),
        ];
        RecordBatch::try_new(reading_schema(), columns)
            .expect("builder columns match reading_schema by construction")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, TimestampMillisecondType, UInt16Type};

    #[test]
    fn builder_produces_the_canonical_schema_and_values() {
        let mut b = ReadingBatchBuilder::with_capacity(2);
        let meta = RowMeta {
            meter_id: "m1",
            received_at_ms: 1_700_000_000_500,
            source: Source::Mqtt,
            format: Format::Json,
        };
        b.append(&meta, "1-0:1.8.1", 1_700_000_000_000, 12.5, "kWh", 0);
        b.append(&meta, "1-0:1.8.2", 1_700_000_000_000, 3.25, "kWh", 1);
        assert_eq!(b.len(), 2);
        assert!(b.approx_bytes() > 0);
        let batch = b.finish();
        assert!(b.is_empty());
        assert_eq!(b.approx_bytes(), 0);
        assert_eq!(batch.schema(), reading_schema());
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.column(1).as_string::<i32>().value(1), "1-0:1.8.2");
        assert_eq!(
            batch
                .column(2)
                .as_primitive::<TimestampMillisecondType>()
                .value(0),
            1_700_000_000_000
        );
        assert_eq!(batch.column(3).as_primitive::<Float64Type>().value(0), 12.5);
        assert_eq!(batch.column(5).as_primitive::<UInt16Type>().value(1), 1);
        assert_eq!(batch.column(7).as_string::<i32>().value(0), "mqtt");
        assert_eq!(batch.column(8).as_string::<i32>().value(0), "json");
    }
}
