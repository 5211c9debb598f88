//! The writer's job queue: jobs wait in memory (`clickhouse.queue_batches` of them) and,
//! beyond that, in the spool: files under `{data_dir}/clickhouse-spool/`, one per job, the
//! batch as Arrow IPC (LZ4) with its status and dead-letter rows beside it
//! (`clickhouse.spool_max_bytes` in all).
//!
//! The spool is what keeps the rest of `serve` going while ClickHouse is away: Parquet, the
//! dead-letter files and the device state go on, and when ClickHouse returns the backlog goes
//! to it as batches already decoded and built, merged into large inserts, instead of being
//! decoded again from the WAL. It is not what makes a job durable, the WAL is: a spooled job
//! is held (not confirmed) like a job in memory, so its records stay in the WAL, and the
//! spool is cleared at start-up, where the WAL's replay sends them again.
//!
//! Order is kept by construction: a job goes to memory only while the spool is empty, and
//! the writer takes memory first. When memory and spool are both full, the sender waits
//! (`meterflow_clickhouse_queue_full_waits_total`).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::encode::SideRows;
use arrow_array::RecordBatch;

/// A batch for the writer, and the WAL LSN through which the pipeline had handled every
/// record when it made the batch.
pub(super) struct Job {
    pub data: JobData,
    pub rows: usize,
    pub through_lsn: u64,
}

/// Where a job's rows are.
pub(super) enum JobData {
    Memory {
        batch: RecordBatch,
        side: SideRows,
    },
    /// A spool file of `bytes`; read (and removed) by the insert that carries it.
    Spooled {
        path: PathBuf,
        bytes: u64,
    },
}

impl Job {
    pub fn in_memory(batch: RecordBatch, side: SideRows, through_lsn: u64) -> Job {
        Job {
            rows: batch.num_rows(),
            data: JobData::Memory { batch, side },
            through_lsn,
        }
    }
}

/// Where the spool is and how large it may grow.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
}

impl SpoolConfig {
    /// The spool of `serve`: `{data_dir}/clickhouse-spool/`, of up to `max_bytes`.
    pub fn under(data_dir: &Path, max_bytes: u64) -> SpoolConfig {
        SpoolConfig {
            dir: data_dir.join("clickhouse-spool"),
            max_bytes,
        }
    }

    /// Removes the spool an earlier run left under `data_dir`, when this run has none (its
    /// records are in the WAL: replayed, or dropped with ClickHouse turned off, so its files
    /// are only disk).
    pub fn remove_leftover(data_dir: &Path) {
        let dir = Self::under(data_dir, 0).dir;
        if !dir.exists() {
            return;
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {
                tracing::info!(dir = %dir.display(), "removed the ClickHouse spool of an earlier run")
            }
            Err(e) => {
                tracing::warn!(error = %e, dir = %dir.display(), "cannot remove the ClickHouse spool of an earlier run")
            }
        }
    }
}

/// What a send did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sent {
    Queued,
    /// The queue is closed (the writer is gone or closing).
    Closed,
    /// Memory and spool are full: try again later.
    Full,
}

struct State {
    memory: VecDeque<Job>,
    /// Jobs in spool files, after every job in `memory` (which may hold one spooled job
    /// put back at its front).
    spooled: VecDeque<Job>,
    /// Bytes and count of the spool files not yet taken (in `spooled`, or put back).
    spool_bytes: u64,
    spool_files: usize,
    next_file: u64,
    /// A spool write failed: none is tried before this.
    spool_retry_at: Option<Instant>,
    closed: bool,
}

/// The queue between the pipeline (one sender) and the writer.
pub(super) struct JobQueue {
    state: Mutex<State>,
    /// Wakes the writer when a job arrives or the queue closes.
    arrived: tokio::sync::Notify,
    memory_max: usize,
    spool: Option<SpoolConfig>,
}

impl JobQueue {
    /// A queue of `memory_max` jobs in memory and, with `spool`, the spool behind them. The
    /// spool's folder is created and emptied: what it held from an earlier run is still in
    /// the WAL, unconfirmed, and the replay sends it again.
    pub fn new(memory_max: usize, spool: Option<SpoolConfig>) -> std::io::Result<JobQueue> {
        if let Some(spool) = &spool {
            let cleared = clear_spool(&spool.dir)?;
            if cleared > 0 {
                tracing::info!(dir = %spool.dir.display(), files = cleared, "cleared the ClickHouse spool of an earlier run; the WAL replays its records");
            }
        }
        Ok(JobQueue {
            state: Mutex::new(State {
                memory: VecDeque::new(),
                spooled: VecDeque::new(),
                spool_bytes: 0,
                spool_files: 0,
                next_file: 0,
                spool_retry_at: None,
                closed: false,
            }),
            arrived: tokio::sync::Notify::new(),
            memory_max: memory_max.max(1),
            spool,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind: go on with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a job, in memory or in the spool; hands it back when both are full. Only one
    /// thread sends (the order of jobs is the order of calls).
    pub fn try_send(
        &self,
        batch: RecordBatch,
        side: SideRows,
        through_lsn: u64,
    ) -> (Sent, Option<(RecordBatch, SideRows)>) {
        let file = {
            let mut state = self.lock();
            if state.closed {
                return (Sent::Closed, None);
            }
            if state.spooled.is_empty() && state.memory.len() < self.memory_max {
                state
                    .memory
                    .push_back(Job::in_memory(batch, side, through_lsn));
                self.gauges(&state);
                drop(state);
                self.arrived.notify_one();
                return (Sent::Queued, None);
            }
            let Some(spool) = &self.spool else {
                return (Sent::Full, Some((batch, side)));
            };
            let retry_later = state.spool_retry_at.is_some_and(|at| Instant::now() < at);
            if state.spool_bytes >= spool.max_bytes || retry_later {
                return (Sent::Full, Some((batch, side)));
            }
            state.next_file += 1;
            spool.dir.join(format!("{:016}.arrow", state.next_file))
        };
        // Written outside the lock: the writer goes on taking jobs meanwhile.
        match write_spool_file(&file, &batch, &side) {
            Ok(bytes) => {
                let mut state = self.lock();
                if state.closed {
                    // Abandoned or closed while the file was written: nobody takes it now.
                    drop(state);
                    let _ = std::fs::remove_file(&file);
                    return (Sent::Closed, None);
                }
                state.spool_bytes += bytes;
                state.spool_files += 1;
                state.spooled.push_back(Job {
                    rows: batch.num_rows(),
                    data: JobData::Spooled { path: file, bytes },
                    through_lsn,
                });
                metrics::counter!("meterflow_clickhouse_spooled_jobs_total").increment(1);
                self.gauges(&state);
                drop(state);
                self.arrived.notify_one();
                (Sent::Queued, None)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&file);
                tracing::warn!(error = %e, file = %file.display(), "cannot write to the ClickHouse spool; the pipeline waits for the writer");
                metrics::counter!("meterflow_clickhouse_spool_errors_total", "op" => "write")
                    .increment(1);
                self.lock().spool_retry_at = Some(Instant::now() + Duration::from_secs(1));
                (Sent::Full, Some((batch, side)))
            }
        }
    }

    fn gauges(&self, state: &State) {
        metrics::gauge!("meterflow_clickhouse_queue_jobs").set(state.memory.len() as f64);
        metrics::gauge!("meterflow_clickhouse_spool_bytes").set(state.spool_bytes as f64);
        metrics::gauge!("meterflow_clickhouse_spool_jobs").set(state.spool_files as f64);
    }

    /// Takes `job` out of the counts of what waits.
    fn took(&self, state: &mut State, job: &Job) {
        if let JobData::Spooled { bytes, .. } = &job.data {
            state.spool_bytes = state.spool_bytes.saturating_sub(*bytes);
            state.spool_files = state.spool_files.saturating_sub(1);
        }
        self.gauges(state);
    }

    /// The next job: from memory, else from the spool (not once closed: spooled jobs are
    /// left to the WAL at shutdown). `None` once closed and memory is empty.
    fn take_now(&self, fits: impl Fn(usize) -> bool) -> Result<Option<Job>, ()> {
        let mut state = self.lock();
        let from_memory = !state.memory.is_empty();
        // Spooled jobs are not taken once closed: they stay in the WAL at shutdown.
        let next = if from_memory {
            state.memory.front()
        } else if state.closed {
            None
        } else {
            state.spooled.front()
        };
        if let Some(rows) = next.map(|job| job.rows) {
            if !fits(rows) {
                return Ok(None);
            }
            let job = if from_memory {
                state.memory.pop_front()
            } else {
                state.spooled.pop_front()
            };
            if let Some(job) = &job {
                self.took(&mut state, job);
            }
            return Ok(job);
        }
        if state.closed {
            Err(())
        } else {
            Ok(None)
        }
    }

    /// Waits for the next job; `None` once the queue is closed and holds nothing in memory.
    pub async fn take(&self) -> Option<Job> {
        loop {
            // Registered before looking, so a job that arrives in between still wakes us.
            let arrived = self.arrived.notified();
            match self.take_now(|_| true) {
                Ok(Some(job)) => return Some(job),
                Ok(None) => arrived.await,
                Err(()) => return None,
            }
        }
    }

    /// The next job if one waits and `fits` its row count (merging what waits).
    pub fn take_waiting(&self, fits: impl Fn(usize) -> bool) -> Option<Job> {
        self.take_now(fits).ok().flatten()
    }

    /// No more jobs: the writer inserts what waits in memory and stops.
    pub fn close(&self) {
        self.lock().closed = true;
        self.arrived.notify_one();
    }

    /// Puts a job taken too early back at the front (it stays the next one taken).
    pub fn put_back(&self, job: Job) {
        let mut state = self.lock();
        if let JobData::Spooled { bytes, .. } = &job.data {
            state.spool_bytes += bytes;
            state.spool_files += 1;
        }
        // At the front of memory even when it came from the spool: a job sent meanwhile may
        // be in memory already (the spool had emptied), and it comes after this one.
        state.memory.push_front(job);
        self.gauges(&state);
        drop(state);
        self.arrived.notify_one();
    }

    /// Drops every job still waiting (the writer stopped): they stay in the WAL.
    pub fn abandon(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.memory.clear();
        // The files stay until the next start clears them.
        state.spooled.clear();
        state.spool_bytes = 0;
        state.spool_files = 0;
        self.gauges(&state);
    }
}

/// The status and dead-letter rows of a spooled job, in the file's metadata.
const SIDE_ROWS_KEY: &str = "meterflow.side_rows";

fn spool_io(action: &str, path: &Path, e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("{action} {}: {e}", path.display()))
}

/// Writes one job's file; returns its size.
fn write_spool_file(path: &Path, batch: &RecordBatch, side: &SideRows) -> std::io::Result<u64> {
    use arrow_ipc::writer::{FileWriter, IpcWriteOptions};
    let options = IpcWriteOptions::default()
        .try_with_compression(Some(arrow_ipc::CompressionType::LZ4_FRAME))
        .map_err(|e| spool_io("configuring", path, e))?;
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut writer = FileWriter::try_new_with_options(file, &batch.schema(), options)
        .map_err(|e| spool_io("writing", path, e))?;
    if !side.is_empty() {
        let json = serde_json::to_string(side).map_err(|e| spool_io("encoding", path, e))?;
        writer.write_metadata(SIDE_ROWS_KEY, json);
    }
    writer
        .write(batch)
        .map_err(|e| spool_io("writing", path, e))?;
    writer.finish().map_err(|e| spool_io("writing", path, e))?;
    let file = writer
        .into_inner()
        .map_err(|e| spool_io("writing", path, e))?;
    let file = file.into_inner().map_err(|e| e.into_error())?;
    Ok(file.metadata()?.len())
}

/// Reads one job's file back (the batch, and its side rows) and removes it.
pub(super) fn read_spool_file(path: &Path) -> std::io::Result<(RecordBatch, SideRows)> {
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    let reader = arrow_ipc::reader::FileReader::try_new(file, None)
        .map_err(|e| spool_io("reading", path, e))?;
    let side = match reader.custom_metadata().get(SIDE_ROWS_KEY) {
        Some(json) => serde_json::from_str(json).map_err(|e| spool_io("decoding", path, e))?,
        None => SideRows::default(),
    };
    let schema = reader.schema();
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| spool_io("reading", path, e))?;
    let batch = arrow_select::concat::concat_batches(&schema, &batches)
        .map_err(|e| spool_io("reading", path, e))?;
    if let Err(e) = std::fs::remove_file(path) {
        // Read back whole: the next start clears what is left.
        tracing::warn!(error = %e, file = %path.display(), "cannot remove a spool file read back");
    }
    Ok((batch, side))
}

/// Creates the spool's folder and removes what is in it; returns how many files it removed.
fn clear_spool(dir: &Path) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// A status row's float as its bits in a spool file's JSON (JSON has no NaN or infinity,
/// and the row must reach ClickHouse as it would from memory).
pub(super) mod f32_bits {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<f32>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => s.serialize_some(&v.to_bits()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f32>, D::Error> {
        Ok(Option::<u32>::deserialize(d)?.map(f32::from_bits))
    }
}

/// Base64 for the dead letters' raw payloads in a spool file's JSON.
pub(super) mod payload_base64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clickhouse::{DeadLetterRow, StatusRow};

    fn batch(meter: &str, rows: usize) -> RecordBatch {
        let mut b = meterflow_proto::ReadingBatchBuilder::default();
        let meta = meterflow_proto::RowMeta {
            meter_id: meter,
            received_at_ms: 1_700_000_000_123,
            source: meterflow_proto::Source::Coap,
            format: meterflow_proto::Format::Senml,
        };
        for i in 0..rows {
            b.append(
                &meta,
                "1-0:1.8.0",
                i as i64 * 900_000,
                i as f64 / 3.0,
                "kWh",
                0,
            );
        }
        b.finish()
    }

    fn side(lsn: u64) -> SideRows {
        let mut side = SideRows::default();
        side.note_lsn(lsn);
        side.statuses.push(StatusRow {
            meter_id: "m-1".into(),
            at_ms: 1_700_000_000_000,
            battery_pct: Some(87),
            snr_db: Some(f32::NAN),
            rsrp_dbm: Some(-101),
            firmware: Some("1.2.3".into()),
            source: "mqtt".into(),
            lsn,
            ..Default::default()
        });
        side.dead_letters.push(DeadLetterRow {
            received_at_ms: 1_700_000_000_001,
            topic: "meters/m-1/pb".into(),
            kind: "decode_error".into(),
            reason: "truncated at byte 3".into(),
            payload: vec![0, 0xff, 0x80, b'"', b'\\'],
            lsn: lsn + 1,
            ..Default::default()
        });
        side
    }

    /// Sends a batch of `rows` rows of meter `m` without side rows.
    fn send(queue: &JobQueue, rows: usize, lsn: u64) -> Sent {
        queue.try_send(batch("m", rows), SideRows::default(), lsn).0
    }

    fn spool(dir: &Path, max_bytes: u64) -> Option<SpoolConfig> {
        Some(SpoolConfig {
            dir: dir.to_path_buf(),
            max_bytes,
        })
    }

    fn files(dir: &Path) -> usize {
        std::fs::read_dir(dir).unwrap().count()
    }

    fn take(queue: &JobQueue) -> (RecordBatch, SideRows, u64, bool) {
        let job = queue.take_waiting(|_| true).expect("a job waits");
        let spooled = matches!(job.data, JobData::Spooled { .. });
        let (batch, side) = match job.data {
            JobData::Memory { batch, side } => (batch, side),
            JobData::Spooled { path, .. } => read_spool_file(&path).unwrap(),
        };
        (batch, side, job.through_lsn, spooled)
    }

    #[test]
    fn a_spooled_job_reads_back_exactly_and_its_file_goes() {
        let dir = tempfile::tempdir().unwrap();
        let queue = JobQueue::new(1, spool(dir.path(), u64::MAX)).unwrap();
        let (a, b) = (batch("m-1", 3), batch("m-2", 1000));
        assert_eq!(
            queue.try_send(a.clone(), SideRows::default(), 1).0,
            Sent::Queued
        );
        assert_eq!(queue.try_send(b.clone(), side(7), 9).0, Sent::Queued);
        assert_eq!(files(dir.path()), 1, "the second job went to the spool");
        let (got, got_side, through, spooled) = take(&queue);
        assert_eq!(
            (got, got_side.is_empty(), through, spooled),
            (a, true, 1, false)
        );
        let (got, got_side, through, spooled) = take(&queue);
        assert_eq!((&got, through, spooled), (&b, 9, true));
        let want = side(7);
        // NaN is not equal to itself: compare the status rows with their floats as bits.
        let bits = |rows: &[StatusRow]| -> Vec<String> {
            rows.iter()
                .map(|r| {
                    format!(
                        "{:?} {:?}",
                        r.snr_db.map(f32::to_bits),
                        StatusRow {
                            snr_db: None,
                            ..r.clone()
                        }
                    )
                })
                .collect()
        };
        assert_eq!(bits(&got_side.statuses), bits(&want.statuses));
        assert!(got_side.statuses[0].snr_db.is_some_and(f32::is_nan));
        assert_eq!(got_side.dead_letters, want.dead_letters);
        assert_eq!(got_side.oldest_lsn(), Some(7));
        assert_eq!(files(dir.path()), 0, "read back, the file is removed");
    }

    #[test]
    fn jobs_come_out_in_order_across_memory_and_spool() {
        let dir = tempfile::tempdir().unwrap();
        let queue = JobQueue::new(2, spool(dir.path(), u64::MAX)).unwrap();
        for lsn in 1..=5 {
            assert_eq!(send(&queue, 1, lsn), Sent::Queued);
        }
        // 1, 2 in memory; 3..5 spooled. While the spool holds jobs, new ones go behind
        // them, even when memory has room again.
        assert_eq!(take(&queue).2, 1);
        for lsn in 6..=7 {
            assert_eq!(send(&queue, 1, lsn), Sent::Queued);
        }
        let order: Vec<(u64, bool)> = (0..4).map(|_| take(&queue)).map(|t| (t.2, t.3)).collect();
        assert_eq!(order, [(2, false), (3, true), (4, true), (5, true)]);
        // A spooled job taken too early and put back is still counted, and comes first.
        let early = queue.take_waiting(|_| true).unwrap();
        assert!(matches!(early.data, JobData::Spooled { .. }));
        assert_eq!(queue.lock().spool_files, 1);
        queue.put_back(early);
        assert_eq!(queue.lock().spool_files, 2);
        assert_eq!((take(&queue).2, take(&queue).2), (6, 7));
        // The spool is empty: memory again.
        assert_eq!(send(&queue, 1, 8), Sent::Queued);
        assert_eq!((take(&queue).2, files(dir.path())), (8, 0));
        let state = queue.lock();
        assert_eq!((state.spool_files, state.spool_bytes), (0, 0));
    }

    #[test]
    fn a_corrupt_spool_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let queue = JobQueue::new(1, spool(dir.path(), u64::MAX)).unwrap();
        send(&queue, 1, 1);
        send(&queue, 5, 2);
        take(&queue);
        let job = queue.take_waiting(|_| true).unwrap();
        let JobData::Spooled { path, .. } = job.data else {
            panic!("the second job is spooled")
        };
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes.truncate(middle);
        std::fs::write(&path, bytes).unwrap();
        assert!(read_spool_file(&path).is_err());
    }

    #[test]
    fn a_full_spool_hands_the_job_back() {
        let dir = tempfile::tempdir().unwrap();
        // Room for one spool file of any size.
        let queue = JobQueue::new(1, spool(dir.path(), 1)).unwrap();
        assert_eq!(send(&queue, 10, 1), Sent::Queued);
        assert_eq!(send(&queue, 10, 2), Sent::Queued);
        let (sent, back) = queue.try_send(batch("m", 10), side(3), 3);
        assert_eq!(sent, Sent::Full);
        let (back, back_side) = back.expect("the job comes back to wait");
        assert_eq!((back.num_rows(), back_side.size().0), (10, 2));
        // Taking the spooled job frees its bytes.
        take(&queue);
        take(&queue);
        assert_eq!(queue.try_send(back, back_side, 3).0, Sent::Queued);
        // Without a spool, memory alone.
        let queue = JobQueue::new(1, None).unwrap();
        assert_eq!(send(&queue, 1, 1), Sent::Queued);
        assert_eq!(send(&queue, 1, 2), Sent::Full);
    }

    #[test]
    fn an_earlier_runs_spool_is_cleared_and_closing_leaves_spooled_jobs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("0000000000000001.arrow"),
            b"left by a crash",
        )
        .unwrap();
        let queue = JobQueue::new(1, spool(dir.path(), u64::MAX)).unwrap();
        assert_eq!(files(dir.path()), 0);
        for lsn in 1..=3 {
            send(&queue, 1, lsn);
        }
        queue.close();
        // What is in memory is still inserted at shutdown; spooled jobs stay in the WAL.
        assert_eq!(take(&queue).2, 1);
        assert!(queue.take_waiting(|_| true).is_none());
        assert_eq!(send(&queue, 1, 4), Sent::Closed);
    }
}
