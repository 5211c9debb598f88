//! A Parquet input, read from the row where an earlier run stopped, each row checked as live
//! data is; a row that fails becomes a dead letter with the row as JSON. meterflow's own
//! readings (a `serve` tree, an export) are read as they are; any other file (pandas,
//! pyarrow, polars, DuckDB, Spark) through [`crate::parquet_columns`]: each field from the
//! column `--map` names, or the column of its own name, of whatever type it can be.

use std::fs::File;

use meterflow_proto::{ReadingColumns, TextRow};
use meterflow_storage::dead_letter::rows_as_json_lines;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::csv::time::{Instants, Stamp};
use crate::csv::units::conversion;
use crate::csv::{validate_reading, BadRow, CsvOptions};
use crate::discover::Input;
use crate::importer::Importer;
use crate::parquet_columns::{all_columns, BatchValues, Plan, Values};
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
            let mut plan = Plan::new(builder.schema(), options, &input.path)?;
            // Spark's INT96 times are UTC instants; Arrow reads them as zone-less.
            if let crate::parquet_columns::From::Column(i) = plan.ts {
                let name = builder.schema().field(i).name().clone();
                plan.ts_int96 =
                    builder.parquet_schema().columns().iter().any(|c| {
                        c.name() == name && c.physical_type() == parquet::basic::Type::INT96
                    });
            }
            Some(plan)
        };
        let reader = builder
            .with_batch_size(8192)
            .with_offset(usize::try_from(start.rows_done).unwrap_or(usize::MAX))
            .build()
            .map_err(not_parquet)?;
        let now_ms = meterflow_proto::now_ms();
        // Naive times in the plan's zone, by the CSV reader's rules (the repeated autumn hour
        // per meter and channel in file order).
        let mut instants = Instants::new(plan.as_ref().and_then(|p| p.tz));
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
                let values = BatchValues::of(plan, &batch);
                let mut columns = None;
                for i in 0..batch.num_rows() {
                    read += 1;
                    match planned_row(plan, &values, &mut instants, i, now_ms) {
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
                                raw: foreign_row_json(
                                    columns.get_or_insert_with(|| all_columns(&batch)),
                                    i,
                                ),
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

    /// Marks a chunk once one is due ([`Importer::chunk_due`]), and moves the progress
    /// display by the share of the file's rows read.
    fn chunk_if_full(
        &mut self,
        input: &Input,
        key: &str,
        at: &mut FileProgress,
        read: u64,
        total: u64,
        chunk_start: &mut u64,
    ) -> Result<(), ImportError> {
        if !self.chunk_due(read, *chunk_start) {
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

/// Row `i` of a batch by `plan` (its `values`), checked as live data is; the error is the
/// row's reason.
fn planned_row(
    plan: &Plan,
    values: &BatchValues<'_>,
    instants: &mut Instants,
    i: usize,
    now_ms: i64,
) -> Result<PlannedRow, String> {
    let text = |v: &Values<'_>, what: &str| -> Result<String, String> {
        v.text(i)
            .map(|t| t.into_owned())
            .ok_or_else(|| format!("no {what}"))
    };
    let meter_id = text(&values.meter_id, "meter_id")?;
    let channel = text(&values.channel, "channel")?;
    let mut unit = text(&values.unit, "unit")?;
    let stamp = values
        .ts
        .stamp(i, plan.ts_format.as_deref())?
        .ok_or("no ts")?;
    let stamp = match stamp {
        Stamp::Local(naive) if plan.ts_int96 => Stamp::Utc(naive.and_utc().timestamp_millis()),
        stamp => stamp,
    };
    let ts_ms = instants
        .of(stamp, &meter_id, &channel)
        .map_err(|e| e.to_string())?;
    let mut value = values.value.number(i)?.ok_or("no value")? * plan.scale;
    if let Some(to) = &plan.to_unit {
        value = conversion(&unit, to)
            .map_err(|e| e.to_string())?
            .apply(value);
        unit.clone_from(to);
    }
    let quality = values.quality.quality(i)?;
    // The time it was received: an instant as written (a naive one as UTC).
    let received_at_ms = match values.received_at.stamp(i, None)? {
        Some(Stamp::Utc(ms)) => ms,
        Some(Stamp::Local(naive)) => naive.and_utc().timestamp_millis(),
        None => ts_ms,
    };
    let format = values
        .format
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

/// Row `i` of a foreign batch (its `columns`) as one JSON line (column name: value as
/// text), for its dead letter.
fn foreign_row_json(columns: &[(String, Values<'_>)], i: usize) -> Vec<u8> {
    let mut row = serde_json::Map::new();
    for (name, values) in columns {
        let shown = match values.text(i) {
            Some(t) => serde_json::Value::String(t.into_owned()),
            None => match values.number(i) {
                Ok(Some(v)) => serde_json::json!(v),
                _ => match values.stamp(i, None) {
                    Ok(Some(Stamp::Utc(ms))) => serde_json::json!(ms),
                    Ok(Some(Stamp::Local(naive))) => serde_json::json!(naive.to_string()),
                    _ => serde_json::Value::Null,
                },
            },
        };
        row.insert(name.clone(), shown);
    }
    let mut out = serde_json::Value::Object(row).to_string().into_bytes();
    out.push(b'\n');
    out
}
