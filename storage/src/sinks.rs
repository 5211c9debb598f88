//! The one seam between whatever produces rows (the pipeline of `serve`, `meterflow import`)
//! and the sinks: a [`SinkSet`] of the Parquet sink, the ClickHouse writer and the dead-letter
//! store. A producer
//!
//! - sends each batch with the WAL positions it covers ([`SinkBatch`]), and beside it the
//!   status and dead-letter rows ([`SinkSet::status`], [`SinkSet::dead_letter`]); status
//!   reports go to ClickHouse's `device_status` and, when local, to the status files
//!   (`{data_dir}/status/date=…/`, [`SinkSet::with_status_files`]) with the same file rules
//!   as the readings';
//! - asks what each sink still holds ([`SinkSet::take_stock`]: a list of [`Hold`]s, from which
//!   [`confirmed_through`] says how far everything is in), which also keeps the batches
//!   ClickHouse refused for their data as dead letters;
//! - makes the dead letters durable before it saves a position ([`SinkSet::make_durable`]),
//!   and closes the set at the end.
//!
//! Which sink writes what, how Parquet names its files, and what a refused batch becomes are
//! this module's business; a producer knows positions and rows only.

use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;

use crate::clickhouse::{ClickHouseWriter, DeadLetterRow, SideRows, StatusRow};
use crate::dead_letter::rows_as_json_lines;
use crate::{DeadLetter, DeadLetterStore, ParquetSink, StorageError};

/// Status and dead-letter rows held for ClickHouse at most before they should go on their own
/// ([`SinkSet::side_rows_due`]).
const SIDE_ROWS_MAX: usize = 4096;
/// ...and the dead letters' payload bytes at most.
const SIDE_BYTES_MAX: usize = 16 << 20;

/// One batch of readings for the sinks, and where it stands in the WAL.
#[derive(Debug, Clone, Copy)]
pub struct SinkBatch<'a> {
    pub rows: &'a RecordBatch,
    /// The oldest WAL record with rows in it; `None` when no row came from the WAL.
    pub oldest: Option<u64>,
    /// Every record through this one is in this batch or an earlier one (with the side rows
    /// waiting now).
    pub through: u64,
    /// Whether the local sinks (Parquet) take it too: not when a restart replays records they
    /// had confirmed, for ClickHouse alone.
    pub local: bool,
    /// Complete Parquet files of its own under this name, instead of the open files: an
    /// import's chunk, named the same in every run so that a rerun replaces it.
    pub file_name: Option<&'a str>,
}

/// Data a holder (the open Parquet files, the side rows, the ClickHouse writer's jobs, the
/// pipeline's batcher) has not yet put where it goes: the oldest WAL record (or producer
/// position) it still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub oldest: u64,
    /// Whether it is bound for a local sink (Parquet, the dead-letter files).
    pub local: bool,
}

/// What [`SinkSet::take_stock`] found.
#[derive(Debug, Default)]
pub struct Stock {
    /// What each sink still holds.
    pub holds: Vec<Hold>,
    /// Batches ClickHouse refused since the last stock, now dead letters.
    pub refused: usize,
}

/// The last position every holder has confirmed, when everything through `handled` was handed
/// to them: the one before the oldest held, or `handled` when nothing is held. A hold of 0
/// holds everything back.
pub fn confirmed_through<'a>(handled: u64, holds: impl IntoIterator<Item = &'a Hold>) -> u64 {
    holds
        .into_iter()
        .map(|h| h.oldest)
        .min()
        .map_or(handled, |oldest| oldest.saturating_sub(1))
        .min(handled)
}

/// The sinks of one producer.
pub struct SinkSet {
    /// The embedded sink; `None` for an import into ClickHouse.
    parquet: Option<ParquetSink>,
    /// The status reports' files (`serve`); `None` for a producer without status reports.
    status_files: Option<ParquetSink>,
    /// The events' files (`serve`); `None` for a producer without events.
    event_files: Option<ParquetSink>,
    /// The production sink, when `clickhouse.url` is set.
    clickhouse: Option<ClickHouseWriter>,
    dead_letters: DeadLetterStore,
    /// Status and dead-letter rows waiting to go to ClickHouse with the next batch.
    side: SideRows,
    /// The `source` of the dead letters made of refused batches (`clickhouse`, `import`).
    refused_source: &'static str,
}

impl SinkSet {
    /// The set of the sinks given. `refused_source` names the producer in the dead letters of
    /// batches ClickHouse refuses.
    pub fn new(
        parquet: Option<ParquetSink>,
        clickhouse: Option<ClickHouseWriter>,
        dead_letters: DeadLetterStore,
        refused_source: &'static str,
    ) -> SinkSet {
        SinkSet {
            parquet,
            status_files: None,
            event_files: None,
            clickhouse,
            dead_letters,
            side: SideRows::default(),
            refused_source,
        }
    }

    /// The set that also writes status reports to `files`
    /// ([`ParquetSink::open_status`]).
    pub fn with_status_files(mut self, files: ParquetSink) -> SinkSet {
        self.status_files = Some(files);
        self
    }

    /// The set that also writes events to `files` ([`ParquetSink::open_events`]).
    pub fn with_event_files(mut self, files: ParquetSink) -> SinkSet {
        self.event_files = Some(files);
        self
    }

    /// Whether ClickHouse is a sink.
    pub fn has_clickhouse(&self) -> bool {
        self.clickhouse.is_some()
    }

    /// Whether a status report has anywhere to go (ClickHouse, or the status files).
    pub fn takes_status(&self) -> bool {
        self.clickhouse.is_some() || self.status_files.is_some()
    }

    /// Shared with `/ready`: Unix ms since when ClickHouse inserts fail (0 while they
    /// succeed); `None` without ClickHouse.
    pub fn clickhouse_failing_since(&self) -> Option<Arc<AtomicI64>> {
        self.clickhouse
            .as_ref()
            .map(ClickHouseWriter::failing_since)
    }

    /// Sends a batch, with the side rows waiting, to ClickHouse, and (when `local`) to
    /// Parquet. Waits only while ClickHouse is away and its queue and spool are full. Returns
    /// the Parquet files it completed.
    pub fn send(&mut self, batch: SinkBatch<'_>, now: Instant) -> Result<usize, StorageError> {
        if let Some(clickhouse) = &mut self.clickhouse {
            let side = std::mem::take(&mut self.side);
            clickhouse.send(batch.rows.clone(), side, batch.through)?;
        }
        let Some(parquet) = self.parquet.as_mut().filter(|_| batch.local) else {
            return Ok(0);
        };
        let started = Instant::now();
        let completed = match batch.file_name {
            Some(name) => parquet.write_named(batch.rows, name)?,
            None => parquet.write(batch.rows, batch.oldest, now)?,
        };
        metrics::histogram!("meterflow_batch_write_seconds", "sink" => "parquet")
            .record(started.elapsed().as_secs_f64());
        Ok(completed.len())
    }

    /// Keeps a status report: for ClickHouse's `device_status` (with the next batch), and
    /// when `local` in the open status file of its date (held, as a reading in an open file
    /// is, until the file completes). `lsn` is its WAL record (0: none).
    pub fn status(&mut self, row: StatusRow, lsn: u64, local: bool) -> Result<(), StorageError> {
        if let Some(files) = self.status_files.as_mut().filter(|_| local) {
            let batch = crate::status::status_batch(std::slice::from_ref(&row))?;
            files.write(&batch, (lsn > 0).then_some(lsn), Instant::now())?;
        }
        if self.clickhouse.is_some() {
            self.side.note_lsn(lsn);
            self.side.statuses.push(row);
        }
        Ok(())
    }

    /// Keeps events of WAL record `lsn` (0: none): for ClickHouse's `events` (with the next
    /// batch), and when `local` in the open events file of their date.
    pub fn events(
        &mut self,
        rows: Vec<crate::events::EventRow>,
        lsn: u64,
        local: bool,
    ) -> Result<(), StorageError> {
        if rows.is_empty() {
            return Ok(());
        }
        if let Some(files) = self.event_files.as_mut().filter(|_| local) {
            let batch = crate::events::events_batch(&rows)?;
            files.write(&batch, (lsn > 0).then_some(lsn), Instant::now())?;
        }
        if self.clickhouse.is_some() {
            self.side.note_lsn(lsn);
            self.side.events.extend(rows);
        }
        Ok(())
    }

    /// Keeps a dead letter: in the dead-letter files when `local`, and in ClickHouse's
    /// `dead_letters` under `key` (what makes its insert idempotent). `lsn` is its WAL record
    /// (0: none).
    pub fn dead_letter(
        &mut self,
        letter: &DeadLetter,
        lsn: u64,
        key: u64,
        local: bool,
    ) -> Result<(), StorageError> {
        if local {
            self.dead_letters.write(letter)?;
        }
        if self.clickhouse.is_some() {
            self.side.note_lsn(lsn);
            self.side.dead_letters.push(DeadLetterRow {
                received_at_ms: letter.received_at_ms,
                source: letter.source.clone(),
                topic: letter.topic.clone(),
                meter_id: letter.meter_id.clone().unwrap_or_default(),
                format: letter.format.clone().unwrap_or_default(),
                kind: letter.kind.clone(),
                reason: letter.reason.clone(),
                payload: letter.payload.clone(),
                lsn: key,
            });
        }
        Ok(())
    }

    /// Whether side rows wait for ClickHouse.
    pub fn has_side_rows(&self) -> bool {
        !self.side.is_empty()
    }

    /// Whether so many side rows wait (a burst of dead letters carries payloads) that they
    /// should go on their own now.
    pub fn side_rows_due(&self) -> bool {
        let (rows, bytes) = self.side.size();
        rows >= SIDE_ROWS_MAX || bytes >= SIDE_BYTES_MAX
    }

    /// Sends the side rows to ClickHouse on their own (no readings to carry them); they cover
    /// the records through `through`.
    pub fn send_side_rows(&mut self, through: u64) -> Result<(), StorageError> {
        if let Some(clickhouse) = &mut self.clickhouse {
            if !self.side.is_empty() {
                let empty = RecordBatch::new_empty(meterflow_proto::reading_schema());
                let side = std::mem::take(&mut self.side);
                clickhouse.send(empty, side, through)?;
            }
        }
        Ok(())
    }

    /// Completes the Parquet files open for `parquet.file_max_age_s`; how many.
    pub fn roll_due(&mut self, now: Instant) -> Result<usize, StorageError> {
        let mut completed = 0;
        for files in [
            &mut self.parquet,
            &mut self.status_files,
            &mut self.event_files,
        ]
        .into_iter()
        .flatten()
        {
            completed += files.roll_due(now)?.len();
        }
        Ok(completed)
    }

    /// How long until [`SinkSet::roll_due`] has work; `None` with no open file.
    pub fn next_roll_in(&self, now: Instant) -> Option<Duration> {
        [&self.parquet, &self.status_files, &self.event_files]
            .into_iter()
            .flatten()
            .filter_map(|files| files.next_roll_in(now))
            .min()
    }

    /// What each sink still holds, then the batches ClickHouse refused for their data kept as
    /// dead letters (one per batch, its rows as JSON lines), in that order: the writer hands a
    /// refused batch back before it confirms it, so every batch the holds count as in has its
    /// dead letter written here. Make them durable ([`SinkSet::make_durable`]) before saving a
    /// position the holds confirm.
    pub fn take_stock(&mut self) -> Result<Stock, StorageError> {
        let mut holds = Vec::with_capacity(4);
        let mut hold = |oldest: Option<u64>, local| {
            if let Some(oldest) = oldest {
                holds.push(Hold { oldest, local });
            }
        };
        // The open Parquet files; the side rows and the ClickHouse writer's jobs.
        hold(
            self.parquet
                .as_ref()
                .and_then(ParquetSink::oldest_pending_lsn),
            true,
        );
        for files in [&self.status_files, &self.event_files] {
            hold(
                files.as_ref().and_then(ParquetSink::oldest_pending_lsn),
                true,
            );
        }
        hold(self.side.oldest_lsn(), false);
        hold(
            self.clickhouse
                .as_ref()
                .and_then(ClickHouseWriter::oldest_held),
            false,
        );
        let refused = self.keep_refused()?;
        Ok(Stock { holds, refused })
    }

    /// Keeps the batches ClickHouse refused for their data as dead letters; how many.
    fn keep_refused(&mut self) -> Result<usize, StorageError> {
        let Some(clickhouse) = &self.clickhouse else {
            return Ok(0);
        };
        let refused = clickhouse.take_rejected();
        let count = refused.len();
        for refused in refused {
            let letter = DeadLetter {
                received_at_ms: meterflow_proto::now_ms(),
                source: self.refused_source.into(),
                topic: String::new(),
                meter_id: None,
                format: None,
                kind: "clickhouse_rejected".into(),
                reason: refused.reason,
                payload: rows_as_json_lines(&refused.batch),
            };
            metrics::counter!("meterflow_dead_letters_total", "reason" => "clickhouse_rejected")
                .increment(1);
            self.dead_letters.write(&letter)?;
        }
        Ok(count)
    }

    /// Makes the dead letters written so far durable (fsync).
    pub fn make_durable(&mut self) -> Result<(), StorageError> {
        self.dead_letters.close()
    }

    /// Removes the complete Parquet files named by [`SinkBatch::file_name`]s that start with
    /// `prefix` (an import of a file started again: its earlier rows must not stay twice).
    pub fn forget_files(&self, prefix: &str) -> Result<usize, StorageError> {
        match &self.parquet {
            Some(parquet) => parquet.remove_named(prefix),
            None => Ok(0),
        }
    }

    /// Batches sent to ClickHouse and not yet confirmed.
    pub fn pending(&self) -> usize {
        self.clickhouse
            .as_ref()
            .map_or(0, ClickHouseWriter::pending)
    }

    /// Whether the sinks can still take batches (the ClickHouse writer's thread runs).
    pub fn is_alive(&self) -> bool {
        self.clickhouse
            .as_ref()
            .is_none_or(ClickHouseWriter::is_running)
    }

    /// Sends the side rows still waiting (they cover the records through `through`),
    /// completes every Parquet file and lets ClickHouse take what it can (what it cannot stays
    /// unconfirmed: in the WAL, for the next start). Returns the Parquet files it completed.
    /// Take stock and save the position after it.
    pub fn close(&mut self, through: u64) -> Result<usize, StorageError> {
        self.send_side_rows(through)?;
        let completed = match &mut self.parquet {
            Some(parquet) => parquet.close()?.len(),
            None => 0,
        };
        for files in [&mut self.status_files, &mut self.event_files]
            .into_iter()
            .flatten()
        {
            files.close()?;
        }
        if let Some(clickhouse) = &mut self.clickhouse {
            clickhouse.close();
        }
        Ok(completed)
    }

    /// An error when the ClickHouse writer stopped on its own (a sink failure), even when
    /// nothing was sent since.
    pub fn check_stopped(&self) -> Result<(), StorageError> {
        if self
            .clickhouse
            .as_ref()
            .is_some_and(ClickHouseWriter::stopped)
        {
            return Err(StorageError::ClickHouseWriterStopped);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ParquetConfig, ParquetSink};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    /// `rows` readings of meter `m1` on 2024-03-02.
    fn readings(rows: usize) -> RecordBatch {
        let ts: Vec<i64> = (0..rows as i64).map(|i| 1_709_337_600_000 + i).collect();
        crate::parquet::tests::batch(&ts)
    }

    /// A set of Parquet and the dead-letter files under `dir`, without ClickHouse.
    fn local_sinks(dir: &std::path::Path) -> SinkSet {
        let parquet = ParquetSink::open(dir, ParquetConfig::default(), "").unwrap();
        let dead_letters = DeadLetterStore::open(dir, "").unwrap();
        SinkSet::new(Some(parquet), None, dead_letters, "clickhouse")
    }

    /// The complete Parquet files under `dir` (names) and the rows in them.
    fn parquet_files(dir: &std::path::Path) -> (Vec<String>, usize) {
        let (mut names, mut rows) = (Vec::new(), 0);
        for day in std::fs::read_dir(dir.join("readings")).unwrap().flatten() {
            for file in std::fs::read_dir(day.path()).unwrap().flatten() {
                let name = file.file_name().to_string_lossy().to_string();
                if name.ends_with(".parquet") && !name.starts_with('.') {
                    let open = std::fs::File::open(file.path()).unwrap();
                    let reader = ParquetRecordBatchReaderBuilder::try_new(open).unwrap();
                    rows += reader
                        .build()
                        .unwrap()
                        .map(|b| b.unwrap().num_rows())
                        .sum::<usize>();
                    names.push(name);
                }
            }
        }
        names.sort();
        (names, rows)
    }

    fn batch(rows: &RecordBatch, oldest: u64, through: u64, local: bool) -> SinkBatch<'_> {
        SinkBatch {
            rows,
            oldest: Some(oldest),
            through,
            local,
            file_name: None,
        }
    }

    #[test]
    fn a_batch_reaches_parquet_only_when_local_and_is_held_until_its_file_completes() {
        let dir = tempfile::tempdir().unwrap();
        let mut sinks = local_sinks(dir.path());
        let now = Instant::now();
        let (two, three) = (readings(2), readings(3));
        assert_eq!(sinks.send(batch(&two, 5, 6, true), now).unwrap(), 0);
        let stock = sinks.take_stock().unwrap();
        assert_eq!(
            stock.holds,
            vec![hold(5, true)],
            "the open file holds record 5"
        );
        assert_eq!(stock.refused, 0);
        assert_eq!(confirmed_through(6, &stock.holds), 4);
        // A replay Parquet already has: not written again, nothing more held.
        assert_eq!(sinks.send(batch(&three, 7, 9, false), now).unwrap(), 0);
        assert_eq!(sinks.take_stock().unwrap().holds, vec![hold(5, true)]);
        assert_eq!(sinks.close(9).unwrap(), 1, "the open file completes");
        assert!(sinks.take_stock().unwrap().holds.is_empty());
        let (files, rows) = parquet_files(dir.path());
        assert_eq!((files.len(), rows), (1, 2), "{files:?}");
    }

    #[test]
    fn named_files_are_complete_at_once_and_forgotten_by_their_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let mut sinks = local_sinks(dir.path());
        let now = Instant::now();
        let (chunk, live) = (readings(4), readings(1));
        let named = SinkBatch {
            file_name: Some("import-00ab-00000000"),
            ..batch(&chunk, 1, 1, true)
        };
        assert_eq!(sinks.send(named, now).unwrap(), 1);
        assert!(
            sinks.take_stock().unwrap().holds.is_empty(),
            "a named file is complete: it holds nothing"
        );
        sinks.send(batch(&live, 9, 9, true), now).unwrap();
        sinks.close(9).unwrap();
        let (files, rows) = parquet_files(dir.path());
        assert_eq!(rows, 5);
        assert!(
            files
                .iter()
                .any(|f| f.starts_with("part-import-00ab-00000000-")),
            "{files:?}"
        );
        assert_eq!(sinks.forget_files("import-00ab-").unwrap(), 1);
        let (files, rows) = parquet_files(dir.path());
        assert_eq!(
            (files.len(), rows),
            (1, 1),
            "the other file stays: {files:?}"
        );
    }

    #[test]
    fn dead_letters_are_written_here_only_when_local_and_side_rows_only_for_clickhouse() {
        let dir = tempfile::tempdir().unwrap();
        let mut sinks = local_sinks(dir.path());
        let letter = |kind: &str| DeadLetter {
            received_at_ms: 1_709_337_600_000,
            source: "mqtt".into(),
            topic: "meters/m1/json".into(),
            meter_id: Some("m1".into()),
            format: Some("json".into()),
            kind: kind.into(),
            reason: "does not parse".into(),
            payload: b"{".to_vec(),
        };
        sinks.dead_letter(&letter("local"), 3, 3, true).unwrap();
        sinks.dead_letter(&letter("replayed"), 4, 4, false).unwrap();
        sinks
            .status(
                StatusRow {
                    meter_id: "m1".into(),
                    at_ms: 1,
                    ts_ms: 1,
                    battery_pct: Some(80),
                    rssi_dbm: None,
                    rsrp_dbm: None,
                    snr_db: None,
                    firmware: None,
                    error_flags: None,
                    source: "mqtt".into(),
                    lsn: 5,
                },
                5,
                true,
            )
            .unwrap();
        assert!(
            !sinks.has_side_rows(),
            "without ClickHouse nothing waits for it"
        );
        assert!(sinks.take_stock().unwrap().holds.is_empty());
        sinks.make_durable().unwrap();
        let kept = crate::dead_letter::read_all(&dir.path().join("dead_letters")).unwrap();
        let kinds: Vec<&str> = kept.iter().map(|l| l.kind.as_str()).collect();
        assert_eq!(kinds, ["local"]);
        sinks.check_stopped().unwrap();
    }

    fn hold(oldest: u64, local: bool) -> Hold {
        Hold { oldest, local }
    }

    #[test]
    fn confirmed_is_before_the_oldest_hold_and_never_past_what_was_handled() {
        // (case, handled, holds, confirmed)
        let cases = [
            ("nothing held", 9, vec![], 9),
            ("one holder", 9, vec![hold(6, true)], 5),
            (
                "the oldest of several",
                30,
                vec![hold(21, true), hold(17, false)],
                16,
            ),
            ("a hold of 0 holds everything", 9, vec![hold(0, false)], 0),
            ("never past handled", 9, vec![hold(20, false)], 9),
        ];
        for (case, handled, holds, want) in cases {
            assert_eq!(confirmed_through(handled, &holds), want, "{case}");
        }
    }

    #[test]
    fn status_reports_go_to_their_files_when_local_and_are_held_until_complete() {
        let dir = tempfile::tempdir().unwrap();
        let files = ParquetSink::open_status(dir.path(), ParquetConfig::default(), "").unwrap();
        let mut sinks = local_sinks(dir.path()).with_status_files(files);
        assert!(sinks.takes_status());
        let report = |lsn: u64| StatusRow {
            meter_id: "m1".into(),
            at_ms: 1_709_337_600_000 + 3_600_000,
            ts_ms: 1_709_337_600_000,
            error_flags: Some(4),
            source: "mqtt".into(),
            lsn,
            ..StatusRow::default()
        };
        sinks.status(report(5), 5, true).unwrap();
        sinks.status(report(6), 6, false).unwrap();
        assert_eq!(sinks.take_stock().unwrap().holds, vec![hold(5, true)]);
        assert!(!sinks.has_side_rows(), "nothing waits for a ClickHouse");
        assert!(crate::status::read_parquet(dir.path(), &Default::default())
            .unwrap()
            .is_empty());
        sinks.close(6).unwrap();
        assert!(sinks.take_stock().unwrap().holds.is_empty());
        let stored = crate::status::read_parquet(dir.path(), &Default::default()).unwrap();
        assert_eq!(stored, vec![report(5)], "the replayed one is not local");
        assert!(dir.path().join("status/date=2024-03-02").is_dir());
    }
}
