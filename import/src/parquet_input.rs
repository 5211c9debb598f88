//! A Parquet input: meterflow's own readings (a `serve` tree, an export), read from the row
//! where an earlier run stopped, each row checked as live data is; a row that fails becomes a
//! dead letter with the row as JSON.

use std::fs::File;

use meterflow_proto::{ReadingBatchBuilder, ReadingColumns, TextRow};
use meterflow_storage::dead_letter::rows_as_json_lines;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::csv::{validate_reading, BadRow};
use crate::discover::Input;
use crate::importer::Importer;
use crate::progress::FileProgress;
use crate::{ImportError, CHUNK_ROWS};

impl Importer {
    /// Imports a Parquet file of readings from row `start` on.
    pub(crate) fn import_parquet(
        &mut self,
        input: &Input,
        key: &str,
        start: FileProgress,
    ) -> Result<(), ImportError> {
        let file = File::open(&input.path).map_err(|error| ImportError::Input {
            path: input.path.clone(),
            error,
        })?;
        let not_parquet = |error| ImportError::Parquet {
            path: input.path.clone(),
            error,
        };
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(not_parquet)?;
        let total = u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
        let reader = builder
            .with_batch_size(8192)
            .with_offset(usize::try_from(start.rows_done).unwrap_or(usize::MAX))
            .build()
            .map_err(not_parquet)?;
        let now_ms = meterflow_proto::now_ms();
        let mut out = ReadingBatchBuilder::with_capacity(CHUNK_ROWS as usize);
        let mut at = start;
        let mut chunk_start = at.rows_done;
        let mut read = at.rows_done;
        for batch in reader {
            let batch = batch.map_err(|error| ImportError::ParquetBatch {
                path: input.path.clone(),
                error,
            })?;
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
                    Ok(()) => out.append_text(&TextRow {
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
                if read - chunk_start >= CHUNK_ROWS {
                    at.rows_done = read;
                    at.done = read >= total;
                    self.chunk_done(&mut out, key, &at, chunk_start)?;
                    let bytes = (u128::from(input.size) * u128::from(read)
                        / u128::from(total.max(1))) as u64;
                    self.display.advance(input, bytes, self.summary.rows);
                    chunk_start = read;
                }
            }
        }
        if !at.done {
            at.rows_done = read;
            at.done = true;
            self.chunk_done(&mut out, key, &at, chunk_start)?;
            self.display.advance(input, input.size, self.summary.rows);
        }
        Ok(())
    }
}
