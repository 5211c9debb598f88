//! The way back: what the sinks have confirmed, so the WAL may drop it and a restart replays
//! from after it.
//!
//! Every holder of data that is not yet in its sink reports the oldest WAL record (LSN) it
//! still holds, as a [`Hold`]: the batcher, and through the sink seam the open Parquet files,
//! the status and dead-letter rows waiting for ClickHouse, and the ClickHouse writer's
//! unfinished jobs. The dead-letter files hold nothing once [`Progress::save`] has made them
//! durable. [`confirmed`] takes the minimum per set of sinks (the local ones; all of them) and
//! [`Progress`] owns the checkpoint file (`wal/checkpoint`) and the [`LsnMarks`] that tell the
//! WAL writer how far it may delete.
//!
//! The way forward is the pipeline; this module decides nothing about rows, only positions.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meterflow_storage::sinks::confirmed_through;
use meterflow_storage::wal::{self, Checkpoint};
use meterflow_storage::Hold;

use crate::error::IngestError;

/// Where the WAL stands, shared by the WAL writer (it commits; it deletes what is confirmed),
/// the pipeline (it reads what is committed) and `/ready`.
#[derive(Debug, Default)]
pub struct LsnMarks {
    /// The last LSN committed to the WAL: readable by the pipeline.
    pub committed: AtomicU64,
    /// The last LSN every sink has confirmed: the WAL may drop it.
    pub confirmed: AtomicU64,
    /// Bytes in WAL segments (for `/ready`).
    pub wal_bytes: AtomicU64,
    /// When a WAL write last failed, Unix ms (0: never), for `/ready`.
    pub wal_error_at_ms: AtomicI64,
}

/// What the sinks have confirmed, given the last LSN the pipeline has handled and what each
/// holder still holds (rows of a message the WAL could not take, LSN 0, are never held: they
/// have no place to replay from): the local sinks through the one before the oldest local
/// hold, all of them through the one before the oldest hold. Never goes back behind `saved`.
pub fn confirmed(handled_through: u64, holds: &[Hold], saved: Checkpoint) -> Checkpoint {
    let local = confirmed_through(handled_through, holds.iter().filter(|h| h.local));
    let all = confirmed_through(handled_through, holds);
    Checkpoint {
        all: all.max(saved.all),
        local: local.max(saved.local),
    }
}

/// How often the checkpoint is saved at most when no file completes.
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// The one owner of the checkpoint file and of the sink lag.
pub struct Progress {
    data_dir: PathBuf,
    marks: Arc<LsnMarks>,
    saved: Checkpoint,
    saved_at: Instant,
    /// Failed saves in a row (logged at powers of two).
    save_failures: u64,
    /// (LSN, receive time) of handled records, one per second of traffic at most: the age of
    /// the oldest one not yet confirmed by every sink is the sink lag.
    receive_times: VecDeque<(u64, i64)>,
}

impl Progress {
    /// Starts from the checkpoint read at start-up.
    pub fn new(data_dir: PathBuf, marks: Arc<LsnMarks>, checkpoint: Checkpoint) -> Progress {
        marks.confirmed.store(checkpoint.all, Ordering::Release);
        Progress {
            data_dir,
            marks,
            saved: checkpoint,
            saved_at: Instant::now(),
            save_failures: 0,
            receive_times: VecDeque::new(),
        }
    }

    /// The checkpoint on disk.
    pub fn saved(&self) -> Checkpoint {
        self.saved
    }

    /// The marks shared with the WAL writer.
    pub fn marks(&self) -> &LsnMarks {
        &self.marks
    }

    /// Notes when a handled record was received (for the sink lag).
    pub fn note_received(&mut self, lsn: u64, received_at_ms: i64) {
        if lsn > 0
            && self
                .receive_times
                .back()
                .is_none_or(|(_, at)| received_at_ms - at >= 1000)
        {
            self.receive_times.push_back((lsn, received_at_ms));
        }
    }

    /// What the sinks have confirmed now (see [`confirmed`]).
    pub fn confirmed(&self, handled_through: u64, holds: &[Hold]) -> Checkpoint {
        confirmed(handled_through, holds, self.saved)
    }

    /// Saves `confirmed` when it moved and `now_due` (a file completed, shutdown) or a second
    /// passed; first `make_durable` (the dead-letter files, part of what it confirms). Then the
    /// WAL writer may drop what every sink confirmed. A checkpoint that cannot be written (a
    /// full disk) is tried again later: the WAL keeps the records meanwhile, nothing is lost.
    pub fn save(
        &mut self,
        confirmed: Checkpoint,
        now_due: bool,
        handled_through: u64,
        make_durable: impl FnOnce() -> Result<(), IngestError>,
    ) -> Result<(), IngestError> {
        self.report_lag(confirmed.all, handled_through);
        if confirmed == self.saved || (!now_due && self.saved_at.elapsed() < SAVE_EVERY) {
            return Ok(());
        }
        make_durable()?;
        if let Err(e) = wal::write_checkpoint(&self.data_dir, confirmed) {
            self.save_failures += 1;
            metrics::counter!("meterflow_checkpoint_write_failures_total").increment(1);
            if self.save_failures.is_power_of_two() {
                tracing::error!(error = %e, failures = self.save_failures, "cannot save the WAL checkpoint; the WAL keeps the records until it can");
            }
            // Try again in a second, not at every message.
            self.saved_at = Instant::now();
            return Ok(());
        }
        self.save_failures = 0;
        self.saved = confirmed;
        self.saved_at = Instant::now();
        self.marks.confirmed.store(confirmed.all, Ordering::Release);
        Ok(())
    }

    /// Sets the sink lag (age of the oldest record not confirmed by every sink) and the count
    /// of unconfirmed WAL records.
    fn report_lag(&mut self, confirmed: u64, handled_through: u64) {
        while self
            .receive_times
            .front()
            .is_some_and(|(lsn, _)| *lsn <= confirmed)
        {
            self.receive_times.pop_front();
        }
        let lag_ms = match self.receive_times.front() {
            Some((_, at)) if handled_through > confirmed => {
                meterflow_proto::now_ms().saturating_sub(*at).max(0)
            }
            _ => 0,
        };
        metrics::gauge!("meterflow_sink_lag_seconds").set(lag_ms as f64 / 1000.0);
        let committed = self.marks.committed.load(Ordering::Acquire);
        metrics::gauge!("meterflow_wal_unconfirmed_records")
            .set(committed.saturating_sub(confirmed) as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(all: u64, local: u64) -> Checkpoint {
        Checkpoint { all, local }
    }

    /// A hold of `holder` (local: the batcher's rows bound for Parquet too, or Parquet).
    fn hold(holder: &'static str, oldest: u64) -> Hold {
        let local = matches!(holder, "batcher" | "parquet");
        Hold { oldest, local }
    }

    #[test]
    fn each_holder_holds_the_checkpoint_before_its_oldest_record() {
        // (case, handled through, holds, saved, expected)
        let cases: Vec<(&str, u64, Vec<Hold>, Checkpoint, Checkpoint)> = vec![
            ("nothing held", 9, vec![], cp(0, 0), cp(9, 9)),
            (
                "rows in the batcher",
                9,
                vec![hold("batcher", 6)],
                cp(0, 0),
                cp(5, 5),
            ),
            (
                "an open Parquet file",
                9,
                vec![hold("parquet", 3), hold("batcher", 6)],
                cp(0, 0),
                cp(2, 2),
            ),
            (
                // Defect 1 of issue 10: a status at 5 waits for ClickHouse, rows from 6 are
                // in the batcher; the checkpoint may not pass the status.
                "a status row waiting for ClickHouse",
                6,
                vec![hold("side_rows", 5), hold("batcher", 6)],
                cp(0, 0),
                cp(4, 5),
            ),
            (
                "a dead-letter row alone",
                7,
                vec![hold("side_rows", 7)],
                cp(0, 0),
                cp(6, 7),
            ),
            (
                "an unfinished ClickHouse job",
                9,
                vec![hold("clickhouse", 4)],
                cp(0, 0),
                cp(3, 9),
            ),
            (
                "a replay for ClickHouse alone does not hold Parquet's mark",
                12,
                vec![Hold {
                    local: false,
                    ..hold("batcher", 8)
                }],
                cp(7, 15),
                cp(7, 15),
            ),
            (
                "the saved checkpoint never goes back",
                9,
                vec![hold("batcher", 3)],
                cp(5, 6),
                cp(5, 6),
            ),
            (
                "a holder that says 0 holds everything back",
                9,
                vec![hold("side_rows", 0)],
                cp(3, 4),
                cp(3, 9),
            ),
            (
                "never past what was handled",
                9,
                vec![hold("clickhouse", 20)],
                cp(0, 0),
                cp(9, 9),
            ),
            (
                "the oldest of all holders wins",
                30,
                vec![
                    hold("batcher", 25),
                    hold("parquet", 21),
                    hold("side_rows", 11),
                    hold("clickhouse", 17),
                ],
                cp(0, 0),
                cp(10, 20),
            ),
        ];
        for (case, handled, holds, saved, expected) in cases {
            assert_eq!(confirmed(handled, &holds, saved), expected, "{case}");
        }
    }

    #[test]
    fn the_checkpoint_is_saved_when_due_and_a_failed_save_is_tried_again() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("wal")).unwrap();
        let marks = Arc::new(LsnMarks::default());
        let mut progress = Progress::new(dir.path().into(), marks.clone(), cp(2, 2));
        assert_eq!(marks.confirmed.load(Ordering::Acquire), 2);
        let mut durable_calls = 0;
        // Moved, but not due: not saved yet.
        progress
            .save(cp(4, 5), false, 5, || {
                durable_calls += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!(progress.saved(), cp(2, 2));
        assert_eq!(durable_calls, 0);
        progress
            .save(cp(4, 5), true, 5, || {
                durable_calls += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!(durable_calls, 1, "the dead letters are made durable first");
        assert_eq!(progress.saved(), cp(4, 5));
        assert_eq!(wal::read_checkpoint(dir.path()).unwrap(), cp(4, 5));
        assert_eq!(marks.confirmed.load(Ordering::Acquire), 4);
        // A checkpoint that cannot be written (its folder is gone) is not fatal and not
        // taken as saved: the WAL keeps its segments.
        std::fs::remove_dir_all(dir.path().join("wal")).unwrap();
        progress.save(cp(8, 8), true, 8, || Ok(())).unwrap();
        assert_eq!(progress.saved(), cp(4, 5));
        assert_eq!(marks.confirmed.load(Ordering::Acquire), 4);
        std::fs::create_dir_all(dir.path().join("wal")).unwrap();
        progress.save(cp(8, 8), true, 8, || Ok(())).unwrap();
        assert_eq!(progress.saved(), cp(8, 8));
        // A failure to make the dead letters durable is the pipeline's error.
        let failed = progress.save(cp(9, 9), true, 9, || {
            Err(IngestError::Io {
                action: "syncing",
                path: "dead_letters".into(),
                source: std::io::Error::other("disk gone"),
            })
        });
        assert!(failed.is_err());
        assert_eq!(progress.saved(), cp(8, 8));
    }
}
