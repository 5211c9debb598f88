//! The writer thread: takes jobs (a batch of readings, the status and dead-letter rows beside
//! it, the WAL position through which they cover everything) in order, inserts each table of
//! a job as its own retry unit (so a retry never repeats an insert that succeeded), retries
//! what a retry can fix with capped exponential backoff and jitter, and hands back a batch
//! the server refused for its data, so its rows become dead letters and the queue goes on.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::RecordBatch;

use super::encode::{encode_dead_letter_rowbinary, encode_rowbinary, encode_status_rowbinary};
use super::schema::{apply_schema, table_layout, TableLayout, TimeColumns};
use super::{ClickHouseConfig, ClickHouseError, SideRows};
use crate::StorageError;

/// Inserts one batch (what the writer thread does for each, without its retries).
pub async fn insert_batch(
    config: &ClickHouseConfig,
    times: TimeColumns,
    batch: &RecordBatch,
) -> Result<(), ClickHouseError> {
    insert_rowbinary(
        &config.client(),
        readings_insert(&config.database),
        encode_readings(batch, times)?,
        Part::Readings.action(),
    )
    .await
}

fn readings_insert(db: &str) -> String {
    format!(
        "INSERT INTO {db}.readings (meter_id, channel, ts, value, unit, quality, received_at, source, format) FORMAT RowBinary"
    )
}

/// The readings of a batch as RowBinary; a batch not of the canonical schema is the data's
/// fault (not retried).
fn encode_readings(batch: &RecordBatch, times: TimeColumns) -> Result<Vec<u8>, ClickHouseError> {
    encode_rowbinary(batch, times).map_err(|e| ClickHouseError {
        action: "encoding readings",
        source: clickhouse::error::Error::Custom(e.to_string()),
    })
}

/// One INSERT of RowBinary rows. A stalled server must not hold the writer (and so
/// shutdown) forever: the send and the whole insert have timeouts.
async fn insert_rowbinary(
    client: &clickhouse::Client,
    sql: String,
    body: Vec<u8>,
    action: &'static str,
) -> Result<(), ClickHouseError> {
    let mut insert = client.insert_formatted_with(sql).with_timeouts(
        Some(Duration::from_secs(30)),
        Some(Duration::from_secs(120)),
    );
    let err = |source| ClickHouseError { action, source };
    insert.send(body.into()).await.map_err(err)?;
    insert.end().await.map_err(err)
}

/// A batch for the writer, and the WAL LSN through which the pipeline had handled every
/// record when it made the batch.
struct Job {
    batch: RecordBatch,
    side: SideRows,
    through_lsn: u64,
}

/// A batch ClickHouse refused for its data, handed back to be kept as dead letters.
pub struct RejectedBatch {
    pub batch: RecordBatch,
    pub reason: String,
}

/// The writer thread: inserts batches in order, retrying what a retry can fix.
pub struct ClickHouseWriter {
    jobs: Option<SyncSender<Job>>,
    /// Set at shutdown (shared with the rest of serve): stop waiting and retrying.
    closing: Arc<std::sync::atomic::AtomicBool>,
    /// The writer thread is gone: nothing more will be confirmed.
    dead: std::sync::atomic::AtomicBool,
    rejected: Receiver<RejectedBatch>,
    confirmed: Arc<AtomicU64>,
    pending: Arc<AtomicUsize>,
    /// Unix ms since when inserts fail and are retried; 0 while they succeed.
    failing_since_ms: Arc<AtomicI64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ClickHouseWriter {
    /// Starts the writer; it applies the schema (retrying while the server is away) before
    /// the first insert, so start-up does not wait for ClickHouse.
    /// `closing` is the process's shutdown flag.
    pub fn start(
        config: ClickHouseConfig,
        closing: Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<ClickHouseWriter, StorageError> {
        let (jobs_tx, jobs_rx) = std::sync::mpsc::sync_channel::<Job>(config.queue_batches.max(1));
        let (rejected_tx, rejected_rx) = std::sync::mpsc::channel();
        let confirmed = Arc::new(AtomicU64::new(0));
        let pending = Arc::new(AtomicUsize::new(0));
        let failing_since_ms = Arc::new(AtomicI64::new(0));
        let (c, p, stop, f) = (
            confirmed.clone(),
            pending.clone(),
            closing.clone(),
            failing_since_ms.clone(),
        );
        let thread = std::thread::Builder::new()
            .name("clickhouse-sink".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the ClickHouse writer's runtime");
                        return;
                    }
                };
                runtime.block_on(run_writer(config, jobs_rx, rejected_tx, c, p, stop, f));
            })
            .map_err(|e| {
                StorageError::io("spawning the ClickHouse writer", "clickhouse-sink", e)
            })?;
        Ok(ClickHouseWriter {
            jobs: Some(jobs_tx),
            closing,
            dead: std::sync::atomic::AtomicBool::new(false),
            rejected: rejected_rx,
            confirmed,
            pending,
            failing_since_ms,
            thread: Some(thread),
        })
    }

    /// Shared with `/ready`: Unix ms since when inserts fail and are retried, 0 while they
    /// succeed.
    pub fn failing_since(&self) -> Arc<AtomicI64> {
        self.failing_since_ms.clone()
    }

    /// Queues a batch; waits while the queue is full (ClickHouse slow or away), unless
    /// shutdown begins: then the batch is left to the WAL (not confirmed).
    pub fn send(&self, batch: RecordBatch, side: SideRows, through_lsn: u64) {
        self.pending.fetch_add(1, Ordering::AcqRel);
        let Some(jobs) = self.jobs.as_ref() else {
            return;
        };
        let mut job = Job {
            batch,
            side,
            through_lsn,
        };
        loop {
            match jobs.try_send(job) {
                Ok(()) => return,
                Err(std::sync::mpsc::TrySendError::Full(back)) => {
                    if self.closing.load(Ordering::Acquire) {
                        tracing::warn!("shutting down while ClickHouse cannot take more; the batch stays in the WAL");
                        return;
                    }
                    job = back;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                    self.dead.store(true, Ordering::Release);
                    tracing::error!("the ClickHouse writer is gone; the batch stays in the WAL");
                    return;
                }
            }
        }
    }

    /// The oldest WAL record the writer still holds (a job not yet inserted); `None` when it
    /// holds nothing. Jobs cover consecutive LSN ranges in order, so that is the one after
    /// the last finished job's range.
    pub fn oldest_held(&self) -> Option<u64> {
        let waiting = self.pending.load(Ordering::Acquire) > 0 || self.dead.load(Ordering::Acquire);
        waiting.then(|| self.confirmed.load(Ordering::Acquire) + 1)
    }

    /// Batches ClickHouse refused for their data since the last call.
    pub fn take_rejected(&self) -> Vec<RejectedBatch> {
        self.rejected.try_iter().collect()
    }

    /// Inserts what is queued and stops the thread. A batch whose insert fails while closing
    /// is not retried: it stays unconfirmed, in the WAL, for the next start.
    pub fn close(&mut self) {
        self.closing.store(true, Ordering::Release);
        self.jobs = None;
        self.dead.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ClickHouseWriter {
    fn drop(&mut self) {
        self.close();
    }
}

/// The tables one job inserts into, in this order; each is its own retry unit, so a retry
/// never repeats an insert that succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Statuses,
    DeadLetters,
    Readings,
}

impl Part {
    const ALL: [Part; 3] = [Part::Statuses, Part::DeadLetters, Part::Readings];

    fn table(self) -> &'static str {
        match self {
            Part::Statuses => "device_status",
            Part::DeadLetters => "dead_letters",
            Part::Readings => "readings",
        }
    }

    fn action(self) -> &'static str {
        match self {
            Part::Statuses => "inserting device status",
            Part::DeadLetters => "inserting dead letters",
            Part::Readings => "inserting readings",
        }
    }

    fn is_empty(self, job: &Job) -> bool {
        match self {
            Part::Statuses => job.side.statuses.is_empty(),
            Part::DeadLetters => job.side.dead_letters.is_empty(),
            Part::Readings => job.batch.num_rows() == 0,
        }
    }

    /// This part of `job` as an INSERT statement and its RowBinary body, for the tables as
    /// the server has them (the `lsn` column only where the table has it).
    fn encode(
        self,
        db: &str,
        job: &Job,
        layout: TableLayout,
    ) -> Result<(String, Vec<u8>), ClickHouseError> {
        let lsn = |with: bool| if with { ", lsn" } else { "" };
        Ok(match self {
            Part::Statuses => (
                format!(
                    "INSERT INTO {db}.device_status (meter_id, at, battery_pct, rssi_dbm, rsrp_dbm, snr_db, firmware, error_flags, source{}) FORMAT RowBinary",
                    lsn(layout.status_lsn)
                ),
                encode_status_rowbinary(&job.side.statuses, layout.status_times, layout.status_lsn),
            ),
            Part::DeadLetters => (
                format!(
                    "INSERT INTO {db}.dead_letters (received_at, source, topic, meter_id, format, kind, reason, payload{}) FORMAT RowBinary",
                    lsn(layout.dead_letter_lsn)
                ),
                encode_dead_letter_rowbinary(
                    &job.side.dead_letters,
                    layout.dead_letter_times,
                    layout.dead_letter_lsn,
                ),
            ),
            Part::Readings => (readings_insert(db), encode_readings(&job.batch, layout.times)?),
        })
    }
}

/// What became of one part of a job.
enum Outcome {
    Inserted,
    /// The server refused the data (a retry sends the same bytes).
    Refused(ClickHouseError),
    /// Shutdown while the server was away: the job stays in the WAL.
    Abandoned,
}

/// The writer's state between jobs.
struct WriterState {
    config: ClickHouseConfig,
    client: clickhouse::Client,
    /// Read once the schema is applied; forgotten after a failure (a table may be gone).
    layout: Option<TableLayout>,
    closing: Arc<std::sync::atomic::AtomicBool>,
    failing_since_ms: Arc<AtomicI64>,
}

impl WriterState {
    /// The tables' layout, applying the schema first when it is not known (at the start, and
    /// after a failure: a table may have been dropped).
    async fn layout(&mut self) -> Result<TableLayout, ClickHouseError> {
        Ok(match self.layout {
            Some(layout) => layout,
            None => {
                let version = apply_schema(&self.config).await?;
                let layout = table_layout(&self.config).await?;
                tracing::info!(
                    ?version,
                    modern = version.is_modern(),
                    ?layout,
                    "ClickHouse schema applied"
                );
                self.layout = Some(layout);
                layout
            }
        })
    }

    async fn insert_once(
        &mut self,
        part: Part,
        job: &Job,
        layout: TableLayout,
    ) -> Result<(), ClickHouseError> {
        let (sql, body) = part.encode(&self.config.database, job, layout)?;
        let started = std::time::Instant::now();
        insert_rowbinary(&self.client, sql, body, part.action()).await?;
        metrics::histogram!("meterflow_batch_write_seconds", "sink" => "clickhouse", "table" => part.table())
            .record(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Inserts one part, retrying with backoff what a retry can fix.
    async fn insert(&mut self, part: Part, job: &Job) -> Outcome {
        let mut delay = Duration::from_millis(self.config.retry_initial_ms.max(1));
        let mut attempt = 0u32;
        // Whether the layout was read for this part (else it may be stale).
        let mut layout_fresh = false;
        loop {
            attempt += 1;
            layout_fresh |= self.layout.is_none();
            let error = match self.layout().await {
                // Applying or reading the schema is retried whatever failed: it is not the
                // rows' fault.
                Err(e) => e,
                Ok(layout) => match self.insert_once(part, job, layout).await {
                    Ok(()) => {
                        self.failing_since_ms.store(0, Ordering::Release);
                        return Outcome::Inserted;
                    }
                    // The tables may have changed under a layout read earlier (a migration):
                    // read it again once before blaming the rows.
                    Err(e) if !e.is_retryable() && !layout_fresh => {
                        self.layout = None;
                        layout_fresh = true;
                        e
                    }
                    Err(e) if !e.is_retryable() => return Outcome::Refused(e),
                    Err(e) => e,
                },
            };
            if self.closing.load(Ordering::Acquire) {
                tracing::warn!(error = %error, table = part.table(), "ClickHouse unavailable at shutdown; the batch stays in the WAL for the next start");
                return Outcome::Abandoned;
            }
            metrics::counter!("meterflow_clickhouse_retries_total").increment(1);
            let now_ms = meterflow_proto::now_ms().max(1);
            let _ = self.failing_since_ms.compare_exchange(
                0,
                now_ms,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            if attempt == 1 || attempt.is_power_of_two() {
                tracing::warn!(error = %error, table = part.table(), attempt, retry_in_ms = delay.as_millis() as u64, "ClickHouse insert failed; retrying");
            }
            // The schema may be what is missing (a dropped table): apply it again.
            self.layout = None;
            let jitter =
                Duration::from_millis(u64::from(attempt.wrapping_mul(2_654_435_761) % 100));
            let until = tokio::time::Instant::now() + delay + jitter;
            while tokio::time::Instant::now() < until && !self.closing.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            delay = (delay * 2).min(Duration::from_millis(self.config.retry_max_ms.max(1)));
        }
    }
}

async fn run_writer(
    config: ClickHouseConfig,
    jobs: Receiver<Job>,
    rejected: std::sync::mpsc::Sender<RejectedBatch>,
    confirmed: Arc<AtomicU64>,
    pending: Arc<AtomicUsize>,
    closing: Arc<std::sync::atomic::AtomicBool>,
    failing_since_ms: Arc<AtomicI64>,
) {
    let mut state = WriterState {
        client: config.client(),
        config,
        layout: None,
        closing,
        failing_since_ms,
    };
    // The std receiver blocks; the runtime has nothing else to do meanwhile.
    while let Ok(job) = jobs.recv() {
        for part in Part::ALL {
            if part.is_empty(&job) {
                continue;
            }
            match state.insert(part, &job).await {
                Outcome::Inserted => {
                    if part == Part::Readings {
                        metrics::counter!("meterflow_rows_written_total", "sink" => "clickhouse")
                            .increment(job.batch.num_rows() as u64);
                    }
                }
                Outcome::Refused(e) => {
                    metrics::counter!("meterflow_clickhouse_rejected_batches_total", "table" => part.table())
                        .increment(1);
                    if part == Part::Readings {
                        tracing::error!(error = %e, rows = job.batch.num_rows(), "ClickHouse refused the batch's data; its rows go to the dead letters");
                        let _ = rejected.send(RejectedBatch {
                            batch: job.batch.clone(),
                            reason: e.to_string(),
                        });
                    } else {
                        // The dead-letter files and the device state keep these.
                        tracing::error!(error = %e, table = part.table(), "ClickHouse refused these rows; they are not in ClickHouse");
                    }
                }
                Outcome::Abandoned => {
                    // Not confirmed, and `pending` stays up: the checkpoint stops before it.
                    while jobs.recv().is_ok() {}
                    return;
                }
            }
        }
        confirmed.fetch_max(job.through_lsn, Ordering::AcqRel);
        pending.fetch_sub(1, Ordering::AcqRel);
    }
}
