//! The importer: chunks of rows into the sinks, bad rows into dead letters, and what the
//! sinks confirm into the progress record. A CSV file is read here; a Parquet file in
//! `parquet_input.rs`.

use std::collections::VecDeque;
use std::fs::File;
use std::io::BufReader;
use std::time::{Duration, Instant};

use meterflow_proto::{ReadingBatchBuilder, ReadingColumns, TextRow};
use meterflow_storage::sinks::confirmed_through;
use meterflow_storage::{DeadLetter, SinkBatch, SinkSet};

use crate::csv::{BadRow, CsvOptions, CsvReader};
use crate::discover::Input;
use crate::display::Display;
use crate::progress::{FileProgress, ProgressRecord};
use crate::{ImportError, ImportSummary};

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
    /// Input rows per chunk ([`crate::CHUNK_ROWS`] or [`crate::CLICKHOUSE_CHUNK_ROWS`]).
    pub(crate) chunk_rows: u64,
    /// Every mark sends a chunk of its own (Parquet: files named by file and chunk); else
    /// rows gather across files until a chunk is full.
    chunk_per_mark: bool,
    /// The rows read and not yet sent; the files' readers append to it.
    pub(crate) rows: ReadingBatchBuilder,
    /// `rows.len()` at the last mark.
    rows_marked: usize,
    /// The number of the last chunk sent: a chunk's position for the sinks, so that what
    /// they confirm says which chunks are in.
    chunks_sent: u64,
    /// Chunks sent and not yet confirmed, with their marks.
    waiting: VecDeque<(u64, Mark)>,
    pub(crate) progress: ProgressRecord,
    pub(crate) display: Display,
    pub(crate) summary: ImportSummary,
    last_save: Instant,
    /// The file being imported: its rows taken and refused in this run, and the refusals by
    /// reason (how many, the first line).
    pub(crate) file: FileTally,
}

/// What became of one file's rows in this run.
#[derive(Debug, Default)]
pub(crate) struct FileTally {
    /// Rows of it taken by earlier runs (a resumed file).
    pub(crate) taken_before: u64,
    pub(crate) taken: u64,
    pub(crate) refused: u64,
    /// Reason (without its line) -> (rows, first line).
    pub(crate) reasons: std::collections::BTreeMap<String, (u64, u64)>,
}

impl FileTally {
    /// Whether not one row of the file could be taken (and some were refused), in this run
    /// or an earlier one that was cut short.
    pub(crate) fn all_refused(&self) -> bool {
        self.taken_before + self.taken == 0 && self.refused > 0
    }

    /// The refusals by reason, most first: `12 rows: value is not a number (first at line
    /// 3); ...`.
    pub(crate) fn describe(&self) -> String {
        let mut reasons: Vec<(&String, &(u64, u64))> = self.reasons.iter().collect();
        reasons.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(b.0)));
        let mut parts: Vec<String> = reasons
            .iter()
            .take(5)
            .map(|(reason, (n, line))| format!("{n} rows: {reason} (first at line {line})"))
            .collect();
        if reasons.len() > 5 {
            parts.push(format!("and {} other reasons", reasons.len() - 5));
        }
        parts.join("; ")
    }
}

/// A refusal's reason without the row or line it names (`row 12: x` and `line 3, column
/// value: x` give `x`, so that rows refused for one reason count together).
fn reason_kind(reason: &str) -> String {
    let mut text = reason;
    for prefix in ["row ", "line "] {
        if let Some(rest) = text.strip_prefix(prefix) {
            if let Some((_, after)) = rest.split_once(": ") {
                text = after;
            }
        }
    }
    // The values quoted in it differ row by row: `value "abc" is not a number` and
    // `value "abd" ...` are one reason (a quoted column name stays: it says where).
    let mut kind = String::with_capacity(text.len());
    // Inside quotes: whether what is quoted is kept.
    let mut quoted: Option<bool> = None;
    for c in text.chars() {
        match (c, quoted) {
            ('"', None) => {
                let keep = kind.ends_with("column ");
                kind.push_str(if keep { "\"" } else { "\"…" });
                quoted = Some(keep);
            }
            ('"', Some(_)) => {
                kind.push('"');
                quoted = None;
            }
            (c, Some(true)) | (c, None) => kind.push(c),
            (_, Some(false)) => {}
        }
    }
    if kind.chars().count() > 160 {
        kind = kind.chars().take(160).collect::<String>() + "…";
    }
    kind
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
        chunk_rows: u64,
        chunk_per_mark: bool,
        progress: ProgressRecord,
        display: Display,
        target: String,
    ) -> Importer {
        Importer {
            sinks,
            chunk_rows,
            chunk_per_mark,
            rows: ReadingBatchBuilder::with_capacity(chunk_rows as usize),
            rows_marked: 0,
            chunks_sent: 0,
            waiting: VecDeque::new(),
            progress,
            display,
            summary: ImportSummary {
                target,
                ..Default::default()
            },
            last_save: Instant::now(),
            file: FileTally::default(),
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

    /// Marks `key`'s input rows from `chunk_start` to `at.rows_done` as read: its rows (those
    /// appended to `self.rows` since the last mark) go out with the next chunk sent, and the
    /// mark is saved once the sink confirms that chunk. Into Parquet each mark sends a chunk
    /// (its files are named by file and chunk, the same in every run); into ClickHouse the
    /// rows of several files gather until a chunk is full, so that a tree of many small files
    /// still goes in as large inserts.
    pub(crate) fn chunk_done(
        &mut self,
        key: &str,
        at: &FileProgress,
        chunk_start: u64,
    ) -> Result<(), ImportError> {
        let taken = (self.rows.len() - self.rows_marked) as u64;
        self.rows_marked = self.rows.len();
        self.summary.rows += taken;
        self.file.taken += taken;
        // A file none of whose rows could be taken is not done: a rerun reads it again
        // (once it is mended, or the import's settings are).
        let mut at = at.clone();
        at.taken = self.file.taken_before + self.file.taken;
        if at.done && self.file.all_refused() {
            at.done = false;
            at.rows_done = 0;
        }
        self.waiting.push_back((
            self.chunks_sent + 1,
            Mark {
                key: key.to_string(),
                progress: at,
            },
        ));
        if self.chunk_per_mark {
            let name = format!("{}{:08}", file_prefix(key), chunk_start / self.chunk_rows);
            self.send_rows(Some(&name))?;
        } else if self.rows.len() as u64 >= self.chunk_rows {
            self.send_rows(None)?;
        }
        self.settle(false)
    }

    /// Forgets the rows appended since the last mark (a file that failed midway: a rerun
    /// reads them again from its last mark), keeping those of earlier marks.
    pub(crate) fn drop_unmarked_rows(&mut self) {
        if self.rows.len() == self.rows_marked {
            return;
        }
        let gathered = self.rows.finish();
        let keep = gathered.slice(0, self.rows_marked);
        let Ok(c) = ReadingColumns::of(&keep) else {
            // Not possible (the builder's own batch); nothing kept, nothing counted.
            self.rows_marked = 0;
            return;
        };
        {
            for i in 0..c.len() {
                self.rows.append_text(&TextRow {
                    meter_id: c.meter_id.value(i),
                    channel: c.channel.value(i),
                    ts_ms: c.ts.value(i),
                    value: c.value.value(i),
                    unit: c.unit.value(i),
                    quality: c.quality.value(i),
                    received_at_ms: c.received_at.value(i),
                    source: c.source.value(i),
                    format: c.format.value(i),
                });
            }
        }
    }

    /// Whether a mark is due: `chunk_rows` of this file read since its last mark, or (rows
    /// gathering across files) `chunk_rows` gathered in all.
    pub(crate) fn chunk_due(&self, read: u64, chunk_start: u64) -> bool {
        read - chunk_start >= self.chunk_rows
            || (!self.chunk_per_mark && self.rows.len() as u64 >= self.chunk_rows)
    }

    /// Sends what waits since the last chunk, so that every mark is covered (at the end).
    pub(crate) fn flush(&mut self) -> Result<(), ImportError> {
        let unsent = self
            .waiting
            .back()
            .is_some_and(|(chunk, _)| *chunk > self.chunks_sent);
        if unsent || !self.rows.is_empty() {
            self.send_rows(None)?;
        }
        self.settle(false)
    }

    /// Sends the rows gathered as the next chunk (with the bad rows read meanwhile: they went
    /// to the sinks as they were read, and this chunk's confirmation covers them).
    fn send_rows(&mut self, file_name: Option<&str>) -> Result<(), ImportError> {
        let batch = self.rows.finish();
        self.rows_marked = 0;
        let chunk = self.chunks_sent + 1;
        let sent = self.sinks.send(
            SinkBatch {
                rows: &batch,
                oldest: Some(chunk),
                through: chunk,
                local: true,
                file_name,
            },
            Instant::now(),
        );
        match sent {
            Ok(_) => {
                self.chunks_sent = chunk;
                Ok(())
            }
            Err(e) => {
                // Not in the sink: the marks it would have covered are never saved, so a
                // rerun reads those rows again.
                self.waiting.retain(|(c, _)| *c != chunk);
                Err(e.into())
            }
        }
    }

    /// Keeps a bad row: a dead-letter file entry, and a `dead_letters` row in ClickHouse.
    pub(crate) fn bad_row(
        &mut self,
        input: &Input,
        format: &str,
        bad: BadRow,
    ) -> Result<(), ImportError> {
        let BadRow { line, raw, reason } = bad;
        self.file.refused += 1;
        let tally = self
            .file
            .reasons
            .entry(reason_kind(&reason))
            .or_insert((0, line));
        tally.0 += 1;
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
        let mut at = start;
        let mut chunk_start = at.rows_done;
        loop {
            let next = reader.next_row()?;
            let end = next.is_none();
            match next {
                Some(Ok(row)) => self.rows.append_text(&TextRow {
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
            if end || self.chunk_due(read, chunk_start) {
                at.rows_done = read;
                at.done = end;
                self.chunk_done(key, &at, chunk_start)?;
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
mod tally_tests {
    use super::*;

    #[test]
    fn refusals_count_together_by_reason_without_their_line() {
        assert_eq!(
            reason_kind("row 12: value \"x\" is not a number (column \"value\")"),
            "value \"…\" is not a number (column \"value\")"
        );
        assert_eq!(reason_kind("line 3: no ts"), "no ts");
        let mut tally = FileTally::default();
        for (reason, line) in [("no ts", 3), ("no ts", 9), ("bad unit", 4)] {
            tally.refused += 1;
            tally.reasons.entry(reason.into()).or_insert((0, line)).0 += 1;
        }
        assert!(tally.all_refused());
        assert_eq!(
            tally.describe(),
            "2 rows: no ts (first at line 3); 1 rows: bad unit (first at line 4)"
        );
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
