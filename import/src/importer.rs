//! The importer: chunks of rows into the sinks, bad rows into dead letters, and what the
//! sinks confirm into the progress record. A CSV file is read here; a Parquet file in
//! `parquet_input.rs`.

use std::collections::VecDeque;
use std::fs::File;
use std::io::BufReader;
use std::time::{Duration, Instant};

use meterflow_proto::{ReadingBatchBuilder, TextRow};
use meterflow_storage::sinks::confirmed_through;
use meterflow_storage::{DeadLetter, SinkBatch, SinkSet};

use crate::csv::{BadRow, CsvOptions, CsvReader};
use crate::discover::Input;
use crate::display::Display;
use crate::progress::{FileProgress, ProgressRecord};
use crate::{ImportError, ImportSummary, CHUNK_ROWS};

/// A stable 64-bit FNV-1a hash (names Parquet files and keys dead letters the same in every
/// run and build).
pub(crate) fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The start of the Parquet file names of an input file's chunks (`import-{hash}-`; a chunk
/// adds its number).
pub(crate) fn file_prefix(key: &str) -> String {
    format!("import-{:016x}-", fnv1a(key))
}

/// A chunk's position once it is in the sink.
#[derive(Debug, Clone)]
struct Mark {
    key: String,
    progress: FileProgress,
}

/// The importer's state across files.
pub(crate) struct Importer {
    /// ClickHouse (the writer `serve` uses: Native inserts, merged and pipelined), or Parquet
    /// under the data folder; and the dead-letter files.
    pub(crate) sinks: SinkSet,
    /// The number of the last chunk sent: a chunk's position for the sinks, so that what
    /// they confirm says which chunks are in.
    chunks_sent: u64,
    /// Chunks sent and not yet confirmed, with their marks.
    waiting: VecDeque<(u64, Mark)>,
    pub(crate) progress: ProgressRecord,
    pub(crate) display: Display,
    pub(crate) summary: ImportSummary,
    last_save: Instant,
}

impl Importer {
    /// Closes the sinks (bad rows still waiting go with it, covered by the last chunk).
    pub(crate) fn close(&mut self) -> Result<(), ImportError> {
        self.sinks.close(self.chunks_sent)?;
        Ok(())
    }

    /// An importer writing through `sinks`, resuming from `progress`; its summary names
    /// `target`.
    pub(crate) fn new(
        sinks: SinkSet,
        progress: ProgressRecord,
        display: Display,
        target: String,
    ) -> Importer {
        Importer {
            sinks,
            chunks_sent: 0,
            waiting: VecDeque::new(),
            progress,
            display,
            summary: ImportSummary {
                target,
                ..Default::default()
            },
            last_save: Instant::now(),
        }
    }

    /// Takes what the sink has confirmed into the progress record (saved at most once a
    /// second, and at the end), and keeps refused batches as dead letters.
    pub(crate) fn settle(&mut self, force: bool) -> Result<(), ImportError> {
        // The stock keeps the batches ClickHouse refused as dead letters, so every chunk it
        // confirms has its refusals written before the position is saved.
        let stock = self.sinks.take_stock()?;
        self.summary.dead_letters += stock.refused as u64;
        let through = confirmed_through(self.chunks_sent, &stock.holds);
        while self
            .waiting
            .front()
            .is_some_and(|(chunk, _)| *chunk <= through)
        {
            if let Some((_, mark)) = self.waiting.pop_front() {
                self.progress.set(&mark.key, mark.progress);
            }
        }
        if force || self.last_save.elapsed() >= Duration::from_secs(1) {
            // Dead letters first: a position is saved only once the bad rows before it are kept.
            self.sinks.make_durable()?;
            self.progress.save()?;
            self.last_save = Instant::now();
        }
        Ok(())
    }

    /// Sends the chunk of `key`'s input rows from `chunk_start` to `at.rows_done`; its Parquet
    /// files are named by file and chunk, the same in every run.
    pub(crate) fn chunk_done(
        &mut self,
        builder: &mut ReadingBatchBuilder,
        key: &str,
        at: &FileProgress,
        chunk_start: u64,
    ) -> Result<(), ImportError> {
        let name = format!("{}{:08}", file_prefix(key), chunk_start / CHUNK_ROWS);
        let batch = builder.finish();
        self.summary.rows += batch.num_rows() as u64;
        self.chunks_sent += 1;
        let chunk = self.chunks_sent;
        // With its bad rows (they went to the sinks as they were read).
        self.sinks.send(
            SinkBatch {
                rows: &batch,
                oldest: Some(chunk),
                through: chunk,
                local: true,
                file_name: Some(&name),
            },
            Instant::now(),
        )?;
        self.waiting.push_back((
            chunk,
            Mark {
                key: key.to_string(),
                progress: at.clone(),
            },
        ));
        self.settle(false)
    }

    /// Keeps a bad row: a dead-letter file entry, and a `dead_letters` row in ClickHouse.
    pub(crate) fn bad_row(
        &mut self,
        input: &Input,
        format: &str,
        bad: BadRow,
    ) -> Result<(), ImportError> {
        let BadRow { line, raw, reason } = bad;
        let topic = input.path.display().to_string();
        // The file's modification time: the same in a rerun, so its rows collapse.
        let received_at_ms = i64::try_from(input.modified_ns / 1_000_000).unwrap_or(0);
        self.summary.dead_letters += 1;
        self.display.dead_letter();
        // ClickHouse's key for the row: the file and line, the same in a rerun.
        let key = (1 << 62) | ((fnv1a(&topic) ^ line) & ((1 << 62) - 1));
        let letter = DeadLetter {
            received_at_ms,
            source: "import".into(),
            topic,
            meter_id: None,
            format: Some(format.into()),
            kind: "bad_row".into(),
            reason,
            payload: raw,
        };
        self.sinks.dead_letter(&letter, 0, key, true)?;
        Ok(())
    }

    /// Imports a CSV file from `start` on.
    pub(crate) fn import_csv(
        &mut self,
        input: &Input,
        key: &str,
        start: FileProgress,
        options: &CsvOptions,
    ) -> Result<(), ImportError> {
        let file = File::open(&input.path).map_err(|error| ImportError::Input {
            path: input.path.clone(),
            error,
        })?;
        let mut reader = CsvReader::new(BufReader::new(file), options, start.rows_done)?;
        let mut builder = ReadingBatchBuilder::with_capacity(CHUNK_ROWS as usize);
        let mut at = start;
        let mut chunk_start = at.rows_done;
        loop {
            let next = reader.next_row()?;
            let end = next.is_none();
            match next {
                Some(Ok(row)) => builder.append_text(&TextRow {
                    meter_id: &row.meter_id,
                    channel: &row.channel,
                    ts_ms: row.ts_ms,
                    value: row.value,
                    unit: &row.unit,
                    quality: row.quality,
                    // The reading's own time: the same in every run (so a rerun writes the same
                    // row), and older than any live delivery of that reading, which so wins
                    // in ReplacingMergeTree(received_at) over imported history.
                    received_at_ms: row.ts_ms,
                    source: "import",
                    format: "csv",
                }),
                Some(Err(mut bad)) => {
                    bad.reason = format!("line {}: {}", bad.line, bad.reason);
                    self.bad_row(input, "csv", bad)?
                }
                None => {}
            }
            let read = reader.rows_read();
            if end || read - chunk_start >= CHUNK_ROWS {
                at.rows_done = read;
                at.done = end;
                self.chunk_done(&mut builder, key, &at, chunk_start)?;
                self.display
                    .advance(input, reader.bytes_read(), self.summary.rows);
                chunk_start = read;
            }
            if end {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_stable() {
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
