//! A Parquet input, read from the row where an earlier run stopped, each row checked as live
//! data is; a row that fails becomes a dead letter with the row as JSON. meterflow's own
//! readings (a `serve` tree, an export) are read as they are; any other file (pandas,
//! pyarrow, polars, DuckDB, Spark) through [`crate::parquet_columns`]: each field from the
//! column `--map` names, or the column of its own name, of whatever type it can be.

use std::fs::File;

use meterflow_proto::{ReadingColumns, TextRow};
use meterflow_storage::dead_letter::rows_as_json_lines;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::csv::{validate_reading, BadRow, CsvOptions};
use crate::discover::Input;
use crate::importer::Importer;
use crate::parquet_columns::{Plan, Values};
use crate::progress::FileProgress;
use crate::ImportError;

impl Importer {
    /// Imports a Parquet file of readings from row `start` on.
    pub(crate) fn import_parquet(
        &mut self,
        input: &Input,
        key: &str,
        start: FileProgress,
        options: Option<&CsvOptions>,
    ) -> Result<(), ImportError> {
        let file = File::open(&input.path).map_err(|error| ImportError::Input {
            path: input.path.clone(),
            error,
        })?;
        let not_parquet = |error: parquet::errors::ParquetError| {
            codec_error(&input.path, &error.to_string()).unwrap_or(ImportError::Parquet {
                path: input.path.clone(),
                error,
            })
        };
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(not_parquet)?;
        let total = u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
        // meterflow's own files as they are; any other through a plan of its columns.
        let own = options.is_none()
            && ReadingColumns::of(&arrow_array::RecordBatch::new_empty(
                builder.schema().clone(),
            ))
            .is_ok();
        let plan = if own {
            None
        } else {
            Some(Plan::new(builder.schema(), options, &input.path)?)
        };
        let reader = builder
            .with_batch_size(8192)
            .with_offset(usize::try_from(start.rows_done).unwrap_or(usize::MAX))
            .build()
            .map_err(not_parquet)?;
        let now_ms = meterflow_proto::now_ms();
        let mut at = start;
        let mut chunk_start = at.rows_done;
        let mut read = at.rows_done;
        for batch in reader {
            let batch = batch.map_err(|error| {
                codec_error(&input.path, &error.to_string()).unwrap_or(ImportError::ParquetBatch {
                    path: input.path.clone(),
                    error,
                })
            })?;
            if let Some(plan) = &plan {
                for i in 0..batch.num_rows() {
                    read += 1;
                    match planned_row(plan, &batch, i, now_ms) {
                        Ok(row) => self.rows.append_text(&TextRow {
                            meter_id: &row.meter_id,
                            channel: &row.channel,
                            ts_ms: row.ts_ms,
                            value: row.value,
                            unit: &row.unit,
                            quality: row.quality,
                            received_at_ms: row.received_at_ms,
                            source: "import",
                            format: &row.format,
                        }),
                        Err(reason) => {
                            let bad = BadRow {
                                line: read,
                                raw: foreign_row_json(&batch, i),
                                reason: format!("row {read}: {reason}"),
                            };
                            self.bad_row(input, "parquet", bad)?;
                        }
                    }
                    self.chunk_if_full(input, key, &mut at, read, total, &mut chunk_start)?;
                }
                continue;
            }
            let c = ReadingColumns::of(&batch).map_err(|source| ImportError::NotReadings {
                path: input.path.clone(),
                source,
            })?;
            for i in 0..c.len() {
                read += 1;
                let (meter_id, channel, unit) =
                    (c.meter_id.value(i), c.channel.value(i), c.unit.value(i));
                let (value, ts_ms) = (c.value.value(i), c.ts.value(i));
                match validate_reading(meter_id, channel, unit, value, ts_ms, now_ms) {
                    Ok(()) => self.rows.append_text(&TextRow {
                        meter_id,
                        channel,
                        ts_ms,
                        value,
                        unit,
                        quality: c.quality.value(i),
                        received_at_ms: c.received_at.value(i),
                        source: "import",
                        format: c.format.value(i),
                    }),
                    Err(reason) => {
                        let one = batch.slice(i, 1);
                        let raw = rows_as_json_lines(&one);
                        let bad = BadRow {
                            line: read,
                            raw,
                            reason: format!("row {read}: {reason}"),
                        };
                        self.bad_row(input, "parquet", bad)?;
                    }
                }
                self.chunk_if_full(input, key, &mut at, read, total, &mut chunk_start)?;
            }
        }
        if !at.done {
            at.rows_done = read;
            at.done = true;
            self.chunk_done(key, &at, chunk_start)?;
            self.display.advance(input, input.size, self.summary.rows);
        }
        Ok(())
    }

    /// Marks a chunk once `read` rows of the file are `chunk_rows` past `chunk_start`, and
    /// moves the progress display by the share of the file's rows read.
    fn chunk_if_full(
        &mut self,
        input: &Input,
        key: &str,
        at: &mut FileProgress,
        read: u64,
        total: u64,
        chunk_start: &mut u64,
    ) -> Result<(), ImportError> {
        if read - *chunk_start < self.chunk_rows {
            return Ok(());
        }
        at.rows_done = read;
        at.done = read >= total;
        self.chunk_done(key, at, *chunk_start)?;
        let bytes = (u128::from(input.size) * u128::from(read) / u128::from(total.max(1))) as u64;
        self.display.advance(input, bytes, self.summary.rows);
        *chunk_start = read;
        Ok(())
    }
}

/// The error of a file compressed with a codec this build does not read (the Parquet
/// crate's "Disabled feature at compile time: brotli"), naming the codec.
fn codec_error(path: &std::path::Path, text: &str) -> Option<ImportError> {
    let (_, codec) = text.split_once("Disabled feature at compile time: ")?;
    Some(ImportError::ParquetCodec {
        path: path.to_path_buf(),
        codec: codec.trim().to_string(),
    })
}

/// One row of a foreign file, as the plan reads it.
struct PlannedRow {
    meter_id: String,
    channel: String,
    ts_ms: i64,
    value: f64,
    unit: String,
    quality: u16,
    received_at_ms: i64,
    format: String,
}

/// Row `i` of `batch` by `plan`, checked as live data is; the error is the row's reason.
fn planned_row(
    plan: &Plan,
    batch: &arrow_array::RecordBatch,
    i: usize,
    now_ms: i64,
) -> Result<PlannedRow, String> {
    let text = |from, what: &str| -> Result<String, String> {
        Values::of(from, batch)
            .text(i)
            .map(|t| t.into_owned())
            .ok_or_else(|| format!("no {what}"))
    };
    let meter_id = text(&plan.meter_id, "meter_id")?;
    let channel = text(&plan.channel, "channel")?;
    let unit = text(&plan.unit, "unit")?;
    let ts_ms = Values::of(&plan.ts, batch).time_ms(i)?.ok_or("no ts")?;
    let value = Values::of(&plan.value, batch)
        .number(i)?
        .ok_or("no value")?
        * plan.scale;
    let quality = Values::of(&plan.quality, batch).quality(i)?;
    let received_at_ms = Values::of(&plan.received_at, batch)
        .time_ms(i)?
        .unwrap_or(ts_ms);
    let format = Values::of(&plan.format, batch)
        .text(i)
        .map_or_else(|| "parquet".to_string(), |t| t.into_owned());
    validate_reading(&meter_id, &channel, &unit, value, ts_ms, now_ms)
        .map_err(|e| e.to_string())?;
    Ok(PlannedRow {
        meter_id,
        channel,
        ts_ms,
        value,
        unit,
        quality,
        received_at_ms,
        format,
    })
}

/// Row `i` of a foreign batch as one JSON line (column name: value as text), for its dead
/// letter.
fn foreign_row_json(batch: &arrow_array::RecordBatch, i: usize) -> Vec<u8> {
    let mut row = serde_json::Map::new();
    for (index, field) in batch.schema().fields().iter().enumerate() {
        let from = crate::parquet_columns::From::Column(index);
        let values = Values::of(&from, batch);
        let shown = match values.text(i) {
            Some(t) => serde_json::Value::String(t.into_owned()),
            None => match values.number(i) {
                Ok(Some(v)) => serde_json::json!(v),
                _ => match values.time_ms(i) {
                    Ok(Some(ms)) => serde_json::json!(ms),
                    _ => serde_json::Value::Null,
                },
            },
        };
        row.insert(field.name().clone(), shown);
    }
    let mut out = serde_json::Value::Object(row).to_string().into_bytes();
    out.push(b'\n');
    out
}
