//! The writer thread. It takes jobs (a batch of readings, the status and dead-letter rows
//! beside it, the WAL position through which they cover everything) in order and:
//!
//! - merges the jobs waiting in the queue into one insert of up to `max_insert_rows` rows (a
//!   backlog becomes a few large parts instead of many small ones; each batch its own Native
//!   block in the one request, which the server squashes);
//! - keeps up to `max_inflight_inserts` inserts in flight, each encoded on a blocking thread
//!   while the earlier ones stream, and confirms only the contiguous prefix of finished ones,
//!   so the WAL's "confirmed" never passes a job that is not in ClickHouse; while inserts
//!   fail, one is in flight and the jobs behind it wait (merged into large inserts once the
//!   server is back; the server is probed during the backoff, and one that was unreachable
//!   and answers again is tried at once);
//! - inserts each table of a job as its own retry unit (a retry never repeats an insert that
//!   succeeded), retrying what a retry can fix with capped exponential backoff and jitter;
//! - hands back a batch the server refused for its data (alone: a merged insert that is
//!   refused is tried batch by batch), so its rows become dead letters and the queue goes on.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::encode::{
    encode_dead_letter_rowbinary, encode_events_rowbinary, encode_rowbinary,
    encode_status_rowbinary,
};
use super::queue::{read_spool_file, Job, JobData, JobQueue, Sent, SpoolConfig};
use super::schema::{apply_schema, table_layout, TableLayout};
use super::{ClickHouseConfig, ClickHouseError, InsertCompression, InsertFormat, SideRows};
use crate::{ShutdownSignal, StorageError};
use arrow_array::RecordBatch;
use bytes::Bytes;

/// What one insert carries: one or more jobs that waited together, in order.
struct Unit {
    data: Vec<JobData>,
    through_lsn: u64,
    /// Jobs merged into this unit (each counted in `pending`).
    jobs: usize,
}

/// A batch ClickHouse refused for its data, handed back to be kept as dead letters.
pub struct RejectedBatch {
    pub batch: RecordBatch,
    pub reason: String,
}

/// The writer thread: inserts batches, confirming them in order, retrying what a retry can fix.
pub struct ClickHouseWriter {
    queue: Arc<JobQueue>,
    /// Set at shutdown: stop waiting and retrying.
    closing: Arc<Closing>,
    /// The writer thread is gone: nothing more will be confirmed.
    dead: AtomicBool,
    /// The writer stopped outside shutdown (a unit abandoned while not closing): a sink
    /// failure, reported by `send` and `stopped`.
    stopped: Arc<AtomicBool>,
    rejected: std::sync::mpsc::Receiver<RejectedBatch>,
    confirmed: Arc<AtomicU64>,
    pending: Arc<AtomicUsize>,
    /// Unix ms since when inserts fail and are retried; 0 while they succeed.
    failing_since_ms: Arc<AtomicI64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ClickHouseWriter {
    /// Starts the writer; it applies the schema (retrying while the server is away) before
    /// the first insert, so start-up does not wait for ClickHouse. With `spool`, jobs beyond
    /// the queue in memory wait in files there (cleared now: the WAL replays what an earlier
    /// run left in it). Once `shutdown` begins, a send does not wait for room and a failed
    /// insert is not retried (what it held stays in the WAL).
    pub fn start(
        config: ClickHouseConfig,
        spool: Option<SpoolConfig>,
        shutdown: ShutdownSignal,
    ) -> Result<ClickHouseWriter, StorageError> {
        let closing = Arc::new(Closing {
            closed: AtomicBool::new(false),
            shutdown,
        });
        let spool_dir = spool.as_ref().map(|s| s.dir.clone()).unwrap_or_default();
        let queue = Arc::new(
            JobQueue::new(config.queue_batches, spool)
                .map_err(|e| StorageError::io("preparing the ClickHouse spool", spool_dir, e))?,
        );
        let (rejected_tx, rejected_rx) = std::sync::mpsc::channel();
        let confirmed = Arc::new(AtomicU64::new(0));
        let pending = Arc::new(AtomicUsize::new(0));
        let failing_since_ms = Arc::new(AtomicI64::new(0));
        let stopped = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            stopped: stopped.clone(),
            client: config.insert_client()?,
            probe: config.connect()?,
            layout: tokio::sync::Mutex::new(None),
            closing: closing.clone(),
            failing_since_ms: failing_since_ms.clone(),
            rejected: rejected_tx,
            config: Arc::new(config),
        });
        let order = Confirmations {
            confirmed: confirmed.clone(),
            pending: pending.clone(),
        };
        let writer_queue = queue.clone();
        let thread = std::thread::Builder::new()
            .name("clickhouse-sink".into())
            .spawn(move || {
                // However the thread ends (its runtime cannot start, a panic, the end of
                // `run_writer`), what still waits stays in the WAL and a sender sees the
                // writer gone instead of filling a queue nobody takes from.
                let _abandon = AbandonOnExit(writer_queue.clone());
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
                runtime.block_on(run_writer(shared, &writer_queue, order));
            })
            .map_err(|e| {
                StorageError::io("spawning the ClickHouse writer", "clickhouse-sink", e)
            })?;
        Ok(ClickHouseWriter {
            queue,
            closing,
            dead: AtomicBool::new(false),
            stopped,
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

    /// Queues a batch (in memory, or in the spool behind it); waits while both are full
    /// (ClickHouse slow or away for long), unless shutdown begins: then the batch is left to
    /// the WAL (not confirmed). `through_lsn` must not go back from one call to the next.
    ///
    /// An error when the writer stopped outside shutdown (a spool file it could not read
    /// back, a runtime it could not start): a sink failure, as a Parquet write error is. The
    /// batch and everything after it stay in the WAL; a restart replays them.
    pub fn send(
        &mut self,
        batch: RecordBatch,
        side: SideRows,
        through_lsn: u64,
    ) -> Result<(), StorageError> {
        self.pending.fetch_add(1, Ordering::AcqRel);
        if self.stopped() {
            self.dead.store(true, Ordering::Release);
            return Err(StorageError::ClickHouseWriterStopped);
        }
        let mut job = (batch, side);
        let mut waited = false;
        loop {
            match self.queue.try_send(job.0, job.1, through_lsn) {
                (Sent::Queued, _) => return Ok(()),
                (Sent::Closed, _) => {
                    self.dead.store(true, Ordering::Release);
                    if self.closing.is_set() && !self.stopped() {
                        return Ok(());
                    }
                    return Err(StorageError::ClickHouseWriterStopped);
                }
                (Sent::Full, back) => {
                    if self.closing.is_set() {
                        tracing::warn!("shutting down while ClickHouse cannot take more; the batch stays in the WAL");
                        return Ok(());
                    }
                    let Some(back) = back else { return Ok(()) };
                    job = back;
                    if !waited {
                        waited = true;
                        metrics::counter!("meterflow_clickhouse_queue_full_waits_total")
                            .increment(1);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }

    /// The oldest WAL record the writer still holds (a job not yet inserted); `None` when it
    /// holds nothing. Jobs cover consecutive LSN ranges in order, so that is the one after
    /// the last confirmed job's range.
    pub fn oldest_held(&self) -> Option<u64> {
        let waiting = self.pending.load(Ordering::Acquire) > 0 || self.dead.load(Ordering::Acquire);
        waiting.then(|| self.confirmed.load(Ordering::Acquire) + 1)
    }

    /// Whether the writer stopped outside shutdown (see [`StorageError::ClickHouseWriterStopped`]).
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// The `through_lsn` of the last job confirmed (it and every job before it are in
    /// ClickHouse, or handed back as refused).
    pub fn confirmed_through(&self) -> u64 {
        self.confirmed.load(Ordering::Acquire)
    }

    /// Whether the writer's thread still runs (it ends at `close`, when its runtime cannot
    /// start, or after it abandoned a unit: see [`ClickHouseWriter::stopped`]).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Jobs sent and not yet confirmed.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Batches ClickHouse refused for their data since the last call.
    pub fn take_rejected(&self) -> Vec<RejectedBatch> {
        self.rejected.try_iter().collect()
    }

    /// Inserts what is queued and stops the thread. A batch whose insert fails while closing
    /// is not retried: it stays unconfirmed, in the WAL, for the next start.
    pub fn close(&mut self) {
        self.closing.closed.store(true, Ordering::Release);
        self.queue.close();
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

/// Whether the writer is closing: [`ClickHouseWriter::close`] was called, or the process's
/// shutdown began.
struct Closing {
    closed: AtomicBool,
    shutdown: ShutdownSignal,
}

impl Closing {
    fn is_set(&self) -> bool {
        self.closed.load(Ordering::Acquire) || self.shutdown.is_stopping()
    }
}

/// Abandons the queue when the writer thread ends, however it ends.
struct AbandonOnExit(Arc<JobQueue>);

impl Drop for AbandonOnExit {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

/// What the writer tells the pipeline: through which LSN ClickHouse has everything, and how
/// many jobs it still holds.
struct Confirmations {
    confirmed: Arc<AtomicU64>,
    pending: Arc<AtomicUsize>,
}

impl Confirmations {
    /// Takes the outcome of the oldest unit in flight; returns whether the writer has
    /// abandoned a unit. A finished unit is confirmed only while none before it was
    /// abandoned: an abandoned unit (shutdown while ClickHouse is away, a failed task) is
    /// neither confirmed nor uncounted, so `oldest_held` stays at it and the checkpoint does
    /// not pass it, whatever finishes after it.
    fn settle(&self, outcome: UnitOutcome, through_lsn: u64, jobs: usize, abandoned: bool) -> bool {
        match outcome {
            UnitOutcome::Done if !abandoned => {
                self.confirmed.fetch_max(through_lsn, Ordering::AcqRel);
                self.pending.fetch_sub(jobs, Ordering::AcqRel);
                false
            }
            _ => true,
        }
    }
}

/// What became of a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UnitOutcome {
    /// Every part inserted, or refused and handed back.
    Done,
    /// Shutdown while the server was away: the unit stays in the WAL.
    Abandoned,
}

/// Takes jobs, merges what waits, keeps up to `max_inflight_inserts` units running, and
/// confirms the finished prefix in order. A unit that finishes frees its place at once, even
/// behind an older one still running (a small insert must not wait for a large one before
/// the next starts); its confirmation waits for the older ones.
async fn run_writer(shared: Arc<Shared>, queue: &JobQueue, order: Confirmations) {
    let max_inflight = shared.config.max_inflight_inserts.max(1);
    let max_rows = shared.config.max_insert_rows.max(1);
    let inflight_gauge = metrics::gauge!("meterflow_clickhouse_inflight_inserts");
    // The units in start order: (through LSN, jobs, outcome once finished).
    let mut started: VecDeque<(u64, usize, Option<UnitOutcome>)> = VecDeque::new();
    // The number of the front of `started`; a running task's id gives its number.
    let mut front_number: u64 = 0;
    let mut running: tokio::task::JoinSet<UnitOutcome> = tokio::task::JoinSet::new();
    let mut number_of: std::collections::HashMap<tokio::task::Id, u64> =
        std::collections::HashMap::new();
    let mut open = true;
    let mut abandoned = false;
    loop {
        // While inserts fail, one is enough to find out when the server is back; the jobs
        // behind it wait in the queue and go in merged into large inserts then.
        let failing = shared.failing_since_ms.load(Ordering::Acquire) != 0;
        let limit = if failing { 1 } else { max_inflight };
        // Units that finished behind an older one still running wait to be confirmed; at
        // most a few times the limit, so that a crash re-inserts little (the rollups count
        // re-inserted rows again).
        let room = open && !abandoned && running.len() < limit && started.len() < limit * 4;
        if !room && running.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            Some(joined) = running.join_next_with_id() => {
                let (id, outcome) = match joined {
                    Ok((id, outcome)) => (id, outcome),
                    Err(e) => {
                        tracing::error!(error = %e, "a ClickHouse insert task failed; what it held stays in the WAL");
                        (e.id(), UnitOutcome::Abandoned)
                    }
                };
                inflight_gauge.set(running.len() as f64);
                let Some(number) = number_of.remove(&id) else { continue };
                if let Some(slot) = started.get_mut((number - front_number) as usize) {
                    slot.2 = Some(outcome);
                }
                // Confirm the finished prefix, in order.
                while let Some(&(through_lsn, count, Some(outcome))) = started.front() {
                    started.pop_front();
                    front_number += 1;
                    abandoned = order.settle(outcome, through_lsn, count, abandoned);
                }
                if abandoned && !shared.closing.is_set() && !shared.stopped.swap(true, Ordering::AcqRel) {
                    // Not shutdown: the writer cannot go on in order. What waits stays in
                    // the WAL, and the sender hears of it now rather than filling the queue.
                    queue.abandon();
                }
            }
            job = queue.take(), if room => {
                let Some(job) = job else {
                    open = false;
                    continue;
                };
                if shared.failing_since_ms.load(Ordering::Acquire) != 0 && !running.is_empty() {
                    // Inserts began to fail while we waited: this one waits too.
                    queue.put_back(job);
                    continue;
                }
                let unit = merge_waiting(job, queue, max_rows);
                if unit.jobs > 1 {
                    metrics::counter!("meterflow_clickhouse_merged_jobs_total").increment(unit.jobs as u64 - 1);
                }
                let (through_lsn, count) = (unit.through_lsn, unit.jobs);
                let task = running.spawn(insert_unit(shared.clone(), unit));
                number_of.insert(task.id(), front_number + started.len() as u64);
                started.push_back((through_lsn, count, None));
                inflight_gauge.set(running.len() as f64);
            }
        }
    }
}

/// One unit of `first` and the jobs already waiting behind it, up to `max_rows` rows (a job
/// that would pass the limit starts the next unit).
fn merge_waiting(first: Job, queue: &JobQueue, max_rows: usize) -> Unit {
    let mut rows = first.rows;
    let mut unit = Unit {
        data: vec![first.data],
        through_lsn: first.through_lsn,
        jobs: 1,
    };
    while rows < max_rows {
        let Some(job) = queue.take_waiting(|job_rows| rows + job_rows <= max_rows) else {
            break;
        };
        rows += job.rows;
        unit.data.push(job.data);
        unit.through_lsn = unit.through_lsn.max(job.through_lsn);
        unit.jobs += 1;
    }
    unit
}

/// The batches and side rows of a unit's jobs, the spooled ones read from their files.
fn load_unit(data: Vec<JobData>) -> std::io::Result<(Vec<RecordBatch>, SideRows)> {
    let mut batches = Vec::with_capacity(data.len());
    let mut side = SideRows::default();
    for job in data {
        let (batch, job_side) = match job {
            JobData::Memory { batch, side } => (batch, side),
            JobData::Spooled { path, .. } => read_spool_file(&path)?,
        };
        if batch.num_rows() > 0 {
            batches.push(batch);
        }
        side.append(job_side);
    }
    Ok((batches, side))
}

/// The tables one unit inserts into, in this order; each is its own retry unit, so a retry
/// never repeats an insert that succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Statuses,
    DeadLetters,
    Events,
    Readings,
}

impl Part {
    const ALL: [Part; 4] = [
        Part::Statuses,
        Part::DeadLetters,
        Part::Events,
        Part::Readings,
    ];

    fn table(self) -> &'static str {
        match self {
            Part::Statuses => "device_status",
            Part::DeadLetters => "dead_letters",
            Part::Events => "events",
            Part::Readings => "readings",
        }
    }

    fn action(self) -> &'static str {
        match self {
            Part::Statuses => "inserting device status",
            Part::DeadLetters => "inserting dead letters",
            Part::Events => "inserting events",
            Part::Readings => "inserting readings",
        }
    }

    fn is_empty(self, side: &SideRows, batches: &[RecordBatch]) -> bool {
        match self {
            Part::Statuses => side.statuses.is_empty(),
            Part::DeadLetters => side.dead_letters.is_empty(),
            Part::Events => side.events.is_empty(),
            Part::Readings => batches.iter().all(|b| b.num_rows() == 0),
        }
    }
}

/// An INSERT statement and its body (before compression).
struct Request {
    sql: String,
    body: Vec<u8>,
}

/// This part of a unit as an INSERT of the tables as the server has them: readings as one
/// Native block per batch (RowBinary where the encoder does not know a column's type), the
/// side tables as RowBinary with the `lsn` column only where the table has it.
fn encode_part(
    config: &ClickHouseConfig,
    part: Part,
    side: &SideRows,
    batches: &[RecordBatch],
    layout: &TableLayout,
    rowbinary: bool,
) -> Result<Request, ClickHouseError> {
    let db = &config.database;
    let lsn = |with: bool| if with { ", lsn" } else { "" };
    Ok(match part {
        Part::Statuses => Request {
            sql: format!(
                "INSERT INTO {db}.device_status (meter_id, at, battery_pct, rssi_dbm, rsrp_dbm, snr_db, firmware, error_flags, source{}{}) FORMAT RowBinary",
                lsn(layout.status_lsn),
                if layout.status_ts { ", ts" } else { "" }
            ),
            body: encode_status_rowbinary(
                &side.statuses,
                layout.status_times,
                layout.status_lsn,
                layout.status_ts,
            ),
        },
        Part::DeadLetters => Request {
            sql: format!(
                "INSERT INTO {db}.dead_letters (received_at, source, topic, meter_id, format, kind, reason, payload{}) FORMAT RowBinary",
                lsn(layout.dead_letter_lsn)
            ),
            body: encode_dead_letter_rowbinary(
                &side.dead_letters,
                layout.dead_letter_times,
                layout.dead_letter_lsn,
            ),
        },
        Part::Events => Request {
            sql: format!(
                "INSERT INTO {db}.events (meter_id, ts, kind, severity, source, code, detail, raw) FORMAT RowBinary"
            ),
            body: encode_events_rowbinary(&side.events, layout.event_times),
        },
        Part::Readings => {
            let columns = super::ReadingsNative::column_list();
            let encoding_error = |e: arrow_schema::ArrowError| ClickHouseError {
                action: "encoding readings",
                source: clickhouse::error::Error::Custom(e.to_string()),
            };
            let native = match (config.insert_format, &layout.readings_native) {
                (InsertFormat::Native, Some(native)) if !rowbinary => Some(native),
                _ => None,
            };
            let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
            let mut body = Vec::with_capacity(rows * 56);
            match native {
                Some(native) => {
                    for batch in batches {
                        native.encode_block(batch, &mut body).map_err(encoding_error)?;
                    }
                    Request {
                        sql: format!("INSERT INTO {db}.readings ({columns}) FORMAT Native"),
                        body,
                    }
                }
                None => {
                    for batch in batches {
                        body.extend(encode_rowbinary(batch, layout.times).map_err(encoding_error)?);
                    }
                    Request {
                        sql: format!("INSERT INTO {db}.readings ({columns}) FORMAT RowBinary"),
                        body,
                    }
                }
            }
        }
    })
}

/// The INSERT statements and bodies (before compression) the writer sends for `side` and
/// `batches` to tables laid out as `layout`, in its order (status rows, dead letters,
/// readings; empty parts left out); `rowbinary` is the fallback for readings the server
/// refused in Native. For tests that feed them to a server of their own.
#[doc(hidden)]
pub fn insert_requests(
    config: &ClickHouseConfig,
    layout: &TableLayout,
    side: &SideRows,
    batches: &[RecordBatch],
    rowbinary: bool,
) -> Result<Vec<(String, Vec<u8>)>, ClickHouseError> {
    Part::ALL
        .into_iter()
        .filter(|part| !part.is_empty(side, batches))
        .map(|part| {
            encode_part(config, part, side, batches, layout, rowbinary).map(|r| (r.sql, r.body))
        })
        .collect()
}

/// What became of one part of a unit.
enum PartOutcome {
    Inserted,
    /// The server refused the data (a retry sends the same bytes).
    Refused(ClickHouseError),
    /// Shutdown while the server was away: the unit stays in the WAL.
    Abandoned,
}

/// What the insert tasks share.
struct Shared {
    /// Shared with each insert's encoding thread.
    config: Arc<ClickHouseConfig>,
    /// The client for inserts (compressed as configured).
    client: clickhouse::Client,
    /// The client for the probe during a backoff (uncompressed: a read).
    probe: clickhouse::Client,
    /// Read once the schema is applied; forgotten after a failure (a table may be gone).
    layout: tokio::sync::Mutex<Option<Arc<TableLayout>>>,
    closing: Arc<Closing>,
    /// Set when a unit is abandoned outside shutdown.
    stopped: Arc<AtomicBool>,
    failing_since_ms: Arc<AtomicI64>,
    rejected: std::sync::mpsc::Sender<RejectedBatch>,
}

/// A unit's rows, read back.
struct LoadedUnit {
    batches: Vec<RecordBatch>,
    /// Shared with the encoding thread of each attempt.
    side: Arc<SideRows>,
}

/// Inserts every part of a unit; a refused batch is handed back before the unit counts as
/// done (the pipeline keeps its rows as dead letters before the checkpoint passes them).
async fn insert_unit(shared: Arc<Shared>, unit: Unit) -> UnitOutcome {
    let (jobs, started) = (unit.jobs, std::time::Instant::now());
    let outcome = insert_loaded_unit(shared, unit).await;
    tracing::debug!(
        jobs,
        ms = started.elapsed().as_millis() as u64,
        ?outcome,
        "ClickHouse unit done"
    );
    outcome
}

async fn insert_loaded_unit(shared: Arc<Shared>, unit: Unit) -> UnitOutcome {
    let loaded = tokio::task::spawn_blocking(move || load_unit(unit.data)).await;
    let loaded = loaded
        .map_err(|e| e.to_string())
        .and_then(|read| read.map_err(|e| e.to_string()));
    let (batches, side) = match loaded {
        Ok(loaded) => loaded,
        Err(error) => {
            // Its records are still in the WAL: a restart replays them.
            tracing::error!(error, "cannot read a job back from the ClickHouse spool; the writer stops, and its records stay in the WAL until meterflow restarts");
            metrics::counter!("meterflow_clickhouse_spool_errors_total", "op" => "read")
                .increment(1);
            return UnitOutcome::Abandoned;
        }
    };
    let unit = LoadedUnit {
        batches,
        side: Arc::new(side),
    };
    for part in Part::ALL {
        if part.is_empty(&unit.side, &unit.batches) {
            continue;
        }
        match shared.insert(part, &unit.side, &unit.batches).await {
            PartOutcome::Inserted => shared.count_written(part, &unit.batches),
            PartOutcome::Abandoned => return UnitOutcome::Abandoned,
            PartOutcome::Refused(e) if part == Part::Readings && unit.batches.len() > 1 => {
                // One of the merged batches is at fault: find which, batch by batch.
                tracing::warn!(error = %e, batches = unit.batches.len(), "ClickHouse refused a merged insert; inserting its batches one by one");
                for batch in &unit.batches {
                    let one = std::slice::from_ref(batch);
                    match shared.insert(part, &unit.side, one).await {
                        PartOutcome::Inserted => shared.count_written(part, one),
                        PartOutcome::Refused(e) => shared.refused(part, Some(batch), &e),
                        PartOutcome::Abandoned => return UnitOutcome::Abandoned,
                    }
                }
            }
            PartOutcome::Refused(e) if part != Part::Readings && unit.side.size().0 > 1 => {
                // Side rows of several jobs: only the row at fault stays out.
                tracing::warn!(error = %e, table = part.table(), "ClickHouse refused side rows; inserting them one by one");
                for one in unit.side.split_rows(part.table()) {
                    let one = Arc::new(one);
                    match shared.insert(part, &one, &[]).await {
                        PartOutcome::Inserted => {}
                        PartOutcome::Refused(e) => shared.refused(part, None, &e),
                        PartOutcome::Abandoned => return UnitOutcome::Abandoned,
                    }
                }
            }
            PartOutcome::Refused(e) => shared.refused(part, unit.batches.first(), &e),
        }
    }
    UnitOutcome::Done
}

impl Shared {
    fn count_written(&self, part: Part, batches: &[RecordBatch]) {
        if part == Part::Readings {
            let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
            metrics::counter!("meterflow_rows_written_total", "sink" => "clickhouse")
                .increment(rows as u64);
        }
    }

    fn refused(&self, part: Part, batch: Option<&RecordBatch>, e: &ClickHouseError) {
        metrics::counter!("meterflow_clickhouse_rejected_batches_total", "table" => part.table())
            .increment(1);
        match (part, batch) {
            (Part::Readings, Some(batch)) => {
                tracing::error!(error = %e, rows = batch.num_rows(), "ClickHouse refused the batch's data; its rows go to the dead letters");
                let _ = self.rejected.send(RejectedBatch {
                    batch: batch.clone(),
                    reason: e.to_string(),
                });
            }
            // The dead-letter files and the device state keep these.
            _ => {
                tracing::error!(error = %e, table = part.table(), "ClickHouse refused these rows; they are not in ClickHouse")
            }
        }
    }

    /// The tables' layout, applying the schema first when it is not known (at the start, and
    /// after a failure: a table may have been dropped).
    async fn layout(&self) -> Result<Arc<TableLayout>, ClickHouseError> {
        let mut known = self.layout.lock().await;
        if let Some(layout) = known.as_ref() {
            return Ok(layout.clone());
        }
        // A server that takes the connection and never answers must not hold the writer: the
        // schema and the layout get the time an insert's send gets, then it is an outage.
        let read = async {
            let version = apply_schema(&self.config, true).await?;
            Ok::<_, ClickHouseError>((version, table_layout(&self.config).await?))
        };
        // ON CLUSTER DDL waits for every replica up to the server's
        // distributed_ddl_task_timeout (180 s by default): give it that and a little more.
        let timeout = if self.config.cluster.is_empty() {
            SCHEMA_TIMEOUT
        } else {
            CLUSTER_SCHEMA_TIMEOUT
        };
        let (version, layout) =
            tokio::time::timeout(timeout, read)
                .await
                .map_err(|_| ClickHouseError {
                    action: "applying the schema",
                    source: clickhouse::error::Error::TimedOut,
                })??;
        let layout = Arc::new(layout);
        tracing::info!(
            %version,
            modern = version.is_modern(),
            native = layout.readings_native.is_some(),
            "ClickHouse schema applied"
        );
        *known = Some(layout.clone());
        Ok(layout)
    }

    /// What `SELECT 1` says of the server (within a second).
    async fn probe(&self) -> Probe {
        let query = self.probe.query("SELECT 1").fetch_one::<u8>();
        match tokio::time::timeout(Duration::from_secs(1), query).await {
            Ok(Ok(_)) => Probe::Answers,
            // Refused, reset, not resolved: the server is not there.
            Ok(Err(clickhouse::error::Error::Network(_))) => Probe::Unreachable,
            // Slow or answering with an error: there, but struggling.
            _ => Probe::Struggling,
        }
    }

    /// Runs `step` unless the shutdown's deadline, and [`SHUTDOWN_GRACE`] for a last insert,
    /// pass first: a server that takes the connection and never answers cannot hold the stop
    /// (outside `serve` there is no shutdown, and a step runs to its own timeouts).
    async fn before_cut_off<T>(&self, step: impl std::future::Future<Output = T>) -> Option<T> {
        let mut shutdown = self.closing.shutdown.clone();
        let cut_off = async move {
            let deadline = shutdown.stopping().await;
            tokio::time::sleep_until(deadline + SHUTDOWN_GRACE).await;
        };
        tokio::select! {
            out = step => Some(out),
            () = cut_off => None,
        }
    }

    /// A part given up at the shutdown's cut-off: it stays in the WAL for the next start.
    fn cut_off(&self, part: Part) -> PartOutcome {
        tracing::warn!(table = part.table(), "ClickHouse did not answer by the shutdown's deadline; the batch stays in the WAL for the next start");
        PartOutcome::Abandoned
    }

    async fn forget_layout(&self) {
        *self.layout.lock().await = None;
    }

    /// Encodes (and compresses) on a blocking thread, so the inserts in flight keep
    /// streaming, then sends.
    async fn insert_once(
        &self,
        part: Part,
        side: &Arc<SideRows>,
        batches: &[RecordBatch],
        layout: Arc<TableLayout>,
        rowbinary: bool,
    ) -> Result<(), ClickHouseError> {
        let started = std::time::Instant::now();
        let (config, side, batches) = (self.config.clone(), side.clone(), batches.to_vec());
        let encoded = tokio::task::spawn_blocking(move || {
            let request = encode_part(&config, part, &side, &batches, &layout, rowbinary)?;
            let raw = request.body.len();
            let body = compress(request.body, config.compression, part)?;
            Ok::<_, ClickHouseError>((request.sql, body, raw))
        })
        .await
        .map_err(|e| ClickHouseError {
            action: part.action(),
            source: clickhouse::error::Error::Custom(format!("encoding task failed: {e}")),
        })??;
        let (sql, body, raw) = encoded;
        let mut insert = self.client.insert_formatted_with(sql).with_timeouts(
            Some(Duration::from_secs(30)),
            Some(Duration::from_secs(120)),
        );
        let err = |source| ClickHouseError {
            action: part.action(),
            source,
        };
        match body {
            Body::Plain(bytes) => insert.send(bytes).await.map_err(err)?,
            Body::Compressed(frames) => {
                for frame in frames {
                    insert.send_compressed(frame).await.map_err(err)?;
                }
            }
        }
        insert.end().await.map_err(err)?;
        metrics::histogram!("meterflow_batch_write_seconds", "sink" => "clickhouse", "table" => part.table())
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("meterflow_clickhouse_inserts_total", "table" => part.table())
            .increment(1);
        metrics::counter!("meterflow_clickhouse_insert_bytes_total", "table" => part.table())
            .increment(raw as u64);
        Ok(())
    }

    /// Inserts one part, retrying with backoff what a retry can fix.
    async fn insert(
        &self,
        part: Part,
        side: &Arc<SideRows>,
        batches: &[RecordBatch],
    ) -> PartOutcome {
        let mut delay = Duration::from_millis(self.config.retry_initial_ms.max(1));
        let mut attempt = 0u32;
        // A probe during a backoff found the server not answering (an outage).
        let mut server_was_down = false;
        // Whether the layout was read for this part (else it may be stale).
        let mut layout_fresh = false;
        // Readings refused in Native go once more as RowBinary before the rows are blamed
        // (an encoder that disagrees with a server version must not dead-letter everything).
        let mut rowbinary = false;
        loop {
            attempt += 1;
            layout_fresh |= self.layout.lock().await.is_none();
            let Some(layout) = self.before_cut_off(self.layout()).await else {
                return self.cut_off(part);
            };
            let error = match layout {
                // Applying or reading the schema is retried whatever failed: it is not the
                // rows' fault.
                Err(e) => e,
                Ok(layout) => {
                    let native = part == Part::Readings
                        && self.config.insert_format == InsertFormat::Native
                        && layout.readings_native.is_some();
                    let attempt = self.insert_once(part, side, batches, layout, rowbinary);
                    let Some(inserted) = self.before_cut_off(attempt).await else {
                        return self.cut_off(part);
                    };
                    match inserted {
                        Ok(()) => {
                            self.failing_since_ms.store(0, Ordering::Release);
                            return PartOutcome::Inserted;
                        }
                        // The tables may have changed under a layout read earlier (a
                        // migration): read it again once before blaming the rows.
                        Err(e) if !e.is_retryable() && !layout_fresh => {
                            self.forget_layout().await;
                            layout_fresh = true;
                            e
                        }
                        Err(e) if !e.is_retryable() && native && !rowbinary => {
                            tracing::warn!(error = %e, "ClickHouse refused readings in Native; trying RowBinary");
                            metrics::counter!("meterflow_clickhouse_native_fallbacks_total")
                                .increment(1);
                            rowbinary = true;
                            continue;
                        }
                        Err(e) if !e.is_retryable() => return PartOutcome::Refused(e),
                        Err(e) => e,
                    }
                }
            };
            if self.closing.is_set() {
                tracing::warn!(error = %error, table = part.table(), "ClickHouse unavailable at shutdown; the batch stays in the WAL for the next start");
                return PartOutcome::Abandoned;
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
            self.forget_layout().await;
            let jitter =
                Duration::from_millis(u64::from(attempt.wrapping_mul(2_654_435_761) % 100));
            let until = tokio::time::Instant::now() + delay + jitter;
            // During the backoff the server is probed. One seen down and then answering again
            // is tried at once, with the backoff started afresh (a server back from an outage
            // may still fail a few inserts while it starts), not when a backoff grown during
            // a long outage ends. One that answers all along while its inserts fail (a reset
            // mid-request, too many parts) waits out the whole backoff.
            let mut probe_at = tokio::time::Instant::now() + PROBE_INTERVAL;
            let mut back = false;
            while tokio::time::Instant::now() < until && !self.closing.is_set() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if tokio::time::Instant::now() >= probe_at {
                    match self.probe().await {
                        Probe::Answers if server_was_down => {
                            back = true;
                            break;
                        }
                        Probe::Unreachable => server_was_down = true,
                        Probe::Answers | Probe::Struggling => {}
                    }
                    probe_at = tokio::time::Instant::now() + PROBE_INTERVAL;
                }
            }
            if back {
                tracing::info!(
                    table = part.table(),
                    "ClickHouse answers again; retrying now"
                );
                server_was_down = false;
                delay = Duration::from_millis(self.config.retry_initial_ms.max(1));
                continue;
            }
            delay = (delay * 2).min(Duration::from_millis(self.config.retry_max_ms.max(1)));
        }
    }
}

/// What a probe during a backoff found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    Answers,
    /// Not there at all (refused, reset): an outage, not a struggle.
    Unreachable,
    /// Slow, or answering with an error: the backoff stands.
    Struggling,
}

/// How often the server is probed during a retry's backoff.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// How long applying the schema and reading the tables' layout may take (an insert's send
/// gets as long).
const SCHEMA_TIMEOUT: Duration = Duration::from_secs(30);
/// ...on a cluster, where the DDL waits for the replicas (ClickHouse's
/// `distributed_ddl_task_timeout` is 180 s).
const CLUSTER_SCHEMA_TIMEOUT: Duration = Duration::from_secs(200);
/// How long past the shutdown's deadline a last insert may still take before it is given up
/// (a healthy server takes milliseconds; the WAL keeps what is given up).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// An insert body, compressed in ClickHouse's block framing (frames of
/// [`COMPRESSED_FRAME`] bytes, as its own clients send them) or not.
enum Body {
    Plain(Bytes),
    Compressed(Vec<clickhouse::insert_formatted::CompressedData>),
}

/// Uncompressed bytes per compressed frame (ClickHouse's clients use 1 MiB).
const COMPRESSED_FRAME: usize = 1 << 20;

fn compress(
    body: Vec<u8>,
    compression: InsertCompression,
    part: Part,
) -> Result<Body, ClickHouseError> {
    if compression == InsertCompression::None {
        return Ok(Body::Plain(Bytes::from(body)));
    }
    body.chunks(COMPRESSED_FRAME)
        .map(|frame| {
            clickhouse::insert_formatted::CompressedData::new(frame, compression.for_client())
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Body::Compressed)
        .map_err(|source| ClickHouseError {
            action: part.action(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_after_an_abandoned_unit_is_confirmed() {
        let order = Confirmations {
            confirmed: Arc::new(AtomicU64::new(0)),
            pending: Arc::new(AtomicUsize::new(4)),
        };
        // Units finish in order of submission: 1..=10 done, 11..=20 abandoned at shutdown,
        // 21..=30 done after it (it had been in flight beside it).
        let mut abandoned = order.settle(UnitOutcome::Done, 10, 1, false);
        assert!(!abandoned);
        assert_eq!(order.confirmed.load(Ordering::Acquire), 10);
        abandoned = order.settle(UnitOutcome::Abandoned, 20, 2, abandoned);
        abandoned = order.settle(UnitOutcome::Done, 30, 1, abandoned);
        assert!(abandoned);
        assert_eq!(order.confirmed.load(Ordering::Acquire), 10);
        assert_eq!(
            order.pending.load(Ordering::Acquire),
            3,
            "the checkpoint stays before the abandoned unit"
        );
    }

    fn batch(rows: usize) -> RecordBatch {
        let mut b = meterflow_proto::ReadingBatchBuilder::default();
        let meta = meterflow_proto::RowMeta {
            meter_id: "m",
            received_at_ms: 0,
            source: meterflow_proto::Source::Mqtt,
            format: meterflow_proto::Format::Pb,
        };
        for i in 0..rows {
            b.append(&meta, "c", i as i64, 0.0, "", 0);
        }
        b.finish()
    }

    #[test]
    fn queued_jobs_merge_up_to_the_row_limit() {
        let queue = JobQueue::new(8, None).unwrap();
        for (rows, lsn) in [(10, 1), (40, 2), (0, 3), (50, 4), (30, 5)] {
            let (sent, _) = queue.try_send(batch(rows), SideRows::default(), lsn);
            assert_eq!(sent, Sent::Queued);
        }
        let first = queue.take_waiting(|_| true).unwrap();
        let unit = merge_waiting(first, &queue, 95);
        // 10 + 40 + 0 rows; the next 50 would pass 95 (an empty side-rows job merges freely).
        assert_eq!((unit.jobs, unit.through_lsn, unit.data.len()), (3, 3, 3));
        let (batches, _) = load_unit(unit.data).unwrap();
        assert_eq!(batches.len(), 2, "the empty batch is left out");
        let held = queue
            .take_waiting(|_| true)
            .expect("the job past the limit starts the next unit");
        assert_eq!(held.through_lsn, 4);
    }
}
