//! The write-ahead log: every message meterflow accepts is appended here, raw, before it is
//! decoded, so that nothing acknowledged is lost when the process dies or a sink is down.
//!
//! Layout: `{data_dir}/wal/{first_lsn:020}.wal` segments of about `segment_bytes` each. A record
//! is `[u32 body length][u32 CRC-32 of body][body]`, little-endian; the body is
//! `u64 lsn, i64 received_at_ms, u8 source, u16 topic length, topic, u16 content-type length,
//! content-type, payload`. LSNs (log sequence numbers) start at 1 and have no gaps. A message
//! the edge refused (a publish outside the device's identity, kept as a dead letter) has bit 7
//! of the source byte set and, after the content type, `u16 reason length, reason`; records
//! without the bit read as before, so older WALs replay unchanged.
//!
//! Writes are buffered; [`Wal::commit`] is the group commit: it makes every record appended so
//! far readable and, by the fsync policy, durable. [`Wal::remove_through`] deletes the segments
//! whose every record every sink has confirmed. On open, a torn or corrupt tail of the last
//! segment (a crash in the middle of a write) is cut off and reported; [`WalReader`] replays
//! the records after a given LSN.
//!
//! Here: the log itself (open and recovery, append, group commit, roll, removal, the disk
//! budget) and its config. Its parts: `record` the record format, `segment` the segment files
//! (naming, the check at open, cutting a torn tail, setting a damaged segment aside, fsyncs),
//! `checkpoint` what the sinks have confirmed, `reader` the replay.

mod checkpoint;
mod reader;
mod record;
mod segment;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use checkpoint::{read_checkpoint, write_checkpoint, Checkpoint};
pub use reader::WalReader;
pub use record::{NewRecord, WalRecord};
#[doc(hidden)]
pub use segment::fuzz_segment;

use record::encode;
use segment::{
    cut_torn_tail, list_segments, scan_segment, segment_path, set_aside, sync_dir, sync_file,
    Segment,
};

use crate::StorageError;

/// When appended records are fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// At every group commit: a record acknowledged after commit survives power loss.
    Always,
    /// At most every `fsync_interval_ms`: survives a process crash (the OS has the data),
    /// may lose that interval on power loss.
    Interval,
    /// Never (the OS decides): survives a process crash only.
    Never,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WalConfig {
    /// A new segment is started when the current one reaches this size.
    pub segment_bytes: u64,
    pub fsync: FsyncPolicy,
    /// With `fsync = "interval"`: the longest time between two fsyncs.
    pub fsync_interval_ms: u64,
    /// Disk budget: the WAL holds at most this many bytes of messages that some sink has not
    /// confirmed. Past it, new messages are not written to the WAL (counted in
    /// `meterflow_wal_overflow_total` and logged as errors) until sinks catch up.
    pub max_bytes: u64,
}

impl WalConfig {
    /// Checks what the types alone do not; the error names the key.
    pub fn validate(&self) -> Result<(), StorageError> {
        StorageError::positive("wal.segment_bytes", self.segment_bytes)?;
        if self.max_bytes < self.segment_bytes.saturating_mul(2) {
            return Err(StorageError::config(
                "wal.max_bytes",
                "must be at least two wal.segment_bytes",
            ));
        }
        if self.fsync == FsyncPolicy::Interval {
            StorageError::positive("wal.fsync_interval_ms", self.fsync_interval_ms)?;
        }
        Ok(())
    }
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            segment_bytes: 64 * 1024 * 1024,
            fsync: FsyncPolicy::Interval,
            fsync_interval_ms: 200,
            max_bytes: 10 * 1024 * 1024 * 1024,
        }
    }
}

/// What [`Wal::open`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalRecovery {
    pub segments: usize,
    /// The LSN of the last intact record (0 when the WAL is empty).
    pub last_lsn: u64,
    /// Bytes of a torn or corrupt tail of the last segment that were cut off.
    pub truncated_bytes: u64,
    /// Earlier segments with a bad record: each was kept whole under a second name (a hard
    /// link, `….wal.corrupt`, for inspection) and its records before the damage put back
    /// under its own name.
    pub set_aside: Vec<PathBuf>,
}

pub struct Wal {
    dir: PathBuf,
    config: WalConfig,
    segments: BTreeMap<u64, Segment>,
    active: BufWriter<File>,
    active_first: u64,
    next_lsn: u64,
    /// Records appended since the last commit.
    uncommitted: bool,
    unsynced: bool,
    last_sync: Instant,
    scratch: Vec<u8>,
    /// Where the last successful commit left the active segment: its length and the next LSN.
    /// A failed write is undone back to here.
    good: GoodState,
    /// A write failed and is not undone yet: nothing is appended and no commit succeeds
    /// before the next commit has undone it.
    failed: Option<String>,
    /// The last attempt to begin the next segment failed (tried again at every commit).
    roll_failing: bool,
}

#[derive(Debug, Clone, Copy)]
struct GoodState {
    bytes: u64,
    next_lsn: u64,
}

impl Wal {
    /// Opens (or creates) the WAL under `{data_dir}/wal`, checking every record.
    pub fn open(data_dir: &Path, config: WalConfig) -> Result<(Wal, WalRecovery), StorageError> {
        metrics::gauge!("meterflow_wal_max_bytes").set(config.max_bytes as f64);
        let dir = data_dir.join("wal");
        fs::create_dir_all(&dir).map_err(|e| StorageError::io("creating", &dir, e))?;
        let firsts = list_segments(&dir)?;
        let mut recovery = WalRecovery::default();
        let mut segments = BTreeMap::new();
        // Empty segments hold nothing: one left by a roll that failed part-way would hide
        // the segment before it from a reader, and take its place as "the last". A fresh one
        // is made below.
        let mut firsts = firsts;
        for first in firsts.clone() {
            let path = segment_path(&dir, first);
            let size = fs::metadata(&path)
                .map_err(|e| StorageError::io("reading the size of", &path, e))?;
            if size.len() == 0 {
                fs::remove_file(&path).map_err(|e| StorageError::io("removing", &path, e))?;
                firsts.retain(|f| *f != first);
            }
        }
        let mut last_written = None;
        for (i, first) in firsts.iter().enumerate() {
            let path = segment_path(&dir, *first);
            let is_last = i + 1 == firsts.len();
            let scan = scan_segment(&path, *first)?;
            if scan.intact_bytes > 0 {
                last_written = Some(path.clone());
            }
            if scan.bad_bytes > 0 {
                if is_last {
                    // A crash in the middle of a write: only the last segment can have one
                    // (a segment is fsynced before the next one begins).
                    cut_torn_tail(&path, scan.intact_bytes)?;
                    recovery.truncated_bytes += scan.bad_bytes;
                } else {
                    let kept = set_aside(&path, scan.intact_bytes)?;
                    tracing::error!(
                        path = %path.display(),
                        offset = scan.intact_bytes,
                        last_intact_lsn = scan.last_lsn,
                        next_segment_starts_at = firsts[i + 1],
                        "corrupt record in a WAL segment before the last one: the segment is kept whole as .wal.corrupt, its records before the damage are replayed, the ones after it are missing"
                    );
                    metrics::counter!("meterflow_wal_corrupt_segments_total").increment(1);
                    recovery.set_aside.push(kept);
                }
            }
            recovery.last_lsn = recovery.last_lsn.max(scan.last_lsn);
            segments.insert(
                *first,
                Segment {
                    path,
                    bytes: scan.intact_bytes,
                    last_lsn: scan.last_lsn,
                },
            );
        }
        if let Some(path) = &last_written {
            // After a process crash the tail of the last written segment may be in the page
            // cache only: make it durable before a new segment begins, so that only the last
            // segment can ever be torn.
            sync_file(path)?;
        }
        recovery.segments = segments.len();
        let next_lsn = recovery.last_lsn + 1;
        // Always write into a fresh segment: the old ones stay immutable.
        let active_first = next_lsn;
        let path = segment_path(&dir, active_first);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| StorageError::io("creating", &path, e))?;
        let existing = file.metadata().map(|m| m.len()).unwrap_or(0);
        segments.insert(
            active_first,
            Segment {
                path,
                bytes: existing,
                last_lsn: active_first - 1,
            },
        );
        sync_dir(&dir)?;
        Ok((
            Wal {
                dir,
                config,
                segments,
                active: BufWriter::with_capacity(1 << 20, file),
                active_first,
                next_lsn,
                uncommitted: false,
                unsynced: false,
                last_sync: Instant::now(),
                scratch: Vec::with_capacity(4096),
                good: GoodState {
                    bytes: existing,
                    next_lsn,
                },
                failed: None,
                roll_failing: false,
            },
            recovery,
        ))
    }

    /// Bytes on disk (every segment).
    pub fn bytes(&self) -> u64 {
        self.segments.values().map(|s| s.bytes).sum()
    }

    /// Whether appending `record` stays within the disk budget.
    pub fn has_room(&self, record: &NewRecord<'_>) -> bool {
        self.bytes() + record.encoded_len() as u64 <= self.config.max_bytes
    }

    /// Makes the next LSN at least `lsn + 1`. After a power loss the checkpoint (fsynced) can
    /// be ahead of a WAL whose unsynced tail was lost: new messages must not reuse those LSNs,
    /// or they would be taken for confirmed ones.
    pub fn start_after(&mut self, lsn: u64) -> Result<(), StorageError> {
        if lsn < self.next_lsn {
            return Ok(());
        }
        self.next_lsn = lsn + 1;
        self.roll()
    }

    /// Whether the last attempt to begin the next segment failed: the log still takes
    /// messages, but its active segment grows and cannot be deleted (for `/ready`).
    pub fn roll_failing(&self) -> bool {
        self.roll_failing
    }

    /// The LSN the next append gets.
    pub fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    /// Appends a message (buffered until [`Wal::commit`]); returns its LSN. After a failed
    /// write it refuses until a commit has undone that write: a group fails whole.
    pub fn append(&mut self, record: &NewRecord<'_>) -> Result<u64, StorageError> {
        if let Some(reason) = &self.failed {
            return Err(StorageError::io(
                "appending to",
                self.active_path(),
                std::io::Error::other(format!("an earlier write of this group failed: {reason}")),
            ));
        }
        let lsn = self.next_lsn;
        self.scratch.clear();
        encode(&mut self.scratch, lsn, record);
        if let Err(e) = self.active.write_all(&self.scratch) {
            // The buffer spilled to the file and the write failed: part of it may be there.
            let path = self.active_path().to_path_buf();
            self.note_failure(&e);
            return Err(StorageError::io("appending to", path, e));
        }
        let written = self.scratch.len() as u64;
        if let Some(seg) = self.segments.get_mut(&self.active_first) {
            seg.bytes += written;
            seg.last_lsn = lsn;
        }
        self.next_lsn += 1;
        self.uncommitted = true;
        metrics::counter!("meterflow_wal_appended_bytes_total").increment(written);
        Ok(lsn)
    }

    /// Group commit: makes every appended record readable and durable by the fsync policy, or
    /// whatever the policy when `durable` (a sender waits to be told: an MQTT PUBACK, a CoAP
    /// answer); starts a new segment when the current one is full.
    ///
    /// On an error none of the records appended since the last commit is in the log, nor will
    /// be: the failed write is undone (the buffer dropped, the segment cut back to the last
    /// commit, a new segment begun) before anything else is appended, and their LSNs are
    /// given again. So a sender told "failed" never finds its message stored later.
    pub fn commit(&mut self, durable: bool) -> Result<(), StorageError> {
        if let Some(reason) = self.failed.clone() {
            // The group fails whole; undo the write so the next group starts clean.
            let path = self.active_path().to_path_buf();
            self.undo_failed()?;
            return Err(StorageError::io(
                "committing to",
                path,
                std::io::Error::other(format!("a write of this group failed: {reason}")),
            ));
        }
        let due = durable
            || match self.config.fsync {
                FsyncPolicy::Always => true,
                FsyncPolicy::Interval => {
                    self.last_sync.elapsed() >= Duration::from_millis(self.config.fsync_interval_ms)
                }
                FsyncPolicy::Never => false,
            };
        let result = self.active.flush().and_then(|()| {
            if (self.unsynced || self.uncommitted) && due {
                self.active.get_ref().sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = result {
            let path = self.active_path().to_path_buf();
            self.note_failure(&e);
            // Undo now, while nothing else is in the way; if that fails, the next append
            // tries again.
            let _ = self.undo_failed();
            return Err(StorageError::io("committing to", path, e));
        }
        if due {
            self.unsynced = false;
            self.last_sync = Instant::now();
        } else if self.uncommitted {
            self.unsynced = true;
        }
        self.uncommitted = false;
        // Flushed (and fsynced where due): the group is in the log.
        self.good = GoodState {
            bytes: self.segments[&self.active_first].bytes,
            next_lsn: self.next_lsn,
        };
        if self.segments[&self.active_first].bytes >= self.config.segment_bytes {
            // The group stays committed whatever the roll does; a roll that fails changes
            // nothing and is tried again at the next commit.
            match self.roll() {
                Ok(()) => self.roll_failing = false,
                Err(e) => {
                    metrics::counter!("meterflow_wal_write_failures_total").increment(1);
                    if !self.roll_failing {
                        tracing::warn!(error = %e, "starting the next WAL segment failed; tried again at every commit");
                    }
                    self.roll_failing = true;
                }
            }
        }
        metrics::gauge!("meterflow_wal_bytes").set(self.bytes() as f64);
        Ok(())
    }

    /// Flushes and fsyncs what was committed (shutdown).
    pub fn sync(&mut self) -> Result<(), StorageError> {
        self.commit(true)
    }

    fn active_path(&self) -> &Path {
        &self.segments[&self.active_first].path
    }

    fn note_failure(&mut self, e: &std::io::Error) {
        metrics::counter!("meterflow_wal_write_failures_total").increment(1);
        if self.failed.is_none() {
            self.failed = Some(e.to_string());
        }
    }

    /// Undoes a failed write: drops what the buffer still holds (a `BufWriter` would write it
    /// at the next flush), cuts the segment back to its last commit (a partial write may have
    /// landed), fsyncs that, gives the uncommitted LSNs back and begins a new segment (a
    /// file-size limit would fail the old one again). Until this succeeds the WAL refuses.
    fn undo_failed(&mut self) -> Result<(), StorageError> {
        if self.failed.is_none() {
            return Ok(());
        }
        let path = self.active_path().to_path_buf();
        let stopped = |e: std::io::Error| StorageError::WalStopped {
            path: path.clone(),
            reason: e.to_string(),
        };
        let file = self.active.get_ref().try_clone().map_err(stopped)?;
        let buffered = std::mem::replace(&mut self.active, BufWriter::with_capacity(1 << 20, file));
        // `into_parts` hands the buffer back instead of writing it, as dropping would.
        let (old_handle, _discarded) = buffered.into_parts();
        drop(old_handle);
        self.active
            .get_ref()
            .set_len(self.good.bytes)
            .and_then(|()| self.active.get_ref().sync_data())
            .map_err(stopped)?;
        if let Some(seg) = self.segments.get_mut(&self.active_first) {
            seg.bytes = self.good.bytes;
            seg.last_lsn = self.good.next_lsn - 1;
        }
        self.next_lsn = self.good.next_lsn;
        self.uncommitted = false;
        if self.good.bytes > 0 {
            self.roll()?;
        }
        self.failed = None;
        tracing::warn!(path = %path.display(), next_lsn = self.next_lsn, "failed WAL write undone: the segment is cut back to its last commit");
        Ok(())
    }

    /// Ends the active segment (everything in it committed) and begins the next one. Changes
    /// nothing until every step that can fail has succeeded.
    fn roll(&mut self) -> Result<(), StorageError> {
        let old = self.active_path().to_path_buf();
        self.active
            .flush()
            .and_then(|()| self.active.get_ref().sync_data())
            .map_err(|e| StorageError::io("syncing", &old, e))?;
        self.unsynced = false;
        self.last_sync = Instant::now();
        let first = self.next_lsn;
        let path = segment_path(&self.dir, first);
        let existed = path.exists();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| StorageError::io("creating", &path, e))?;
        let ready = file
            .metadata()
            .map_err(|e| StorageError::io("reading the size of", &path, e))
            .and_then(|m| sync_dir(&self.dir).map(|()| m.len()));
        let bytes = match ready {
            Ok(bytes) => bytes,
            Err(e) => {
                // A segment file the log does not use would mislead a reader looking for the
                // segment that holds an LSN: take it away again.
                if !existed {
                    let _ = fs::remove_file(&path);
                }
                return Err(e);
            }
        };
        self.active = BufWriter::with_capacity(1 << 20, file);
        self.segments.insert(
            first,
            Segment {
                path,
                bytes,
                last_lsn: first - 1,
            },
        );
        self.active_first = first;
        self.good = GoodState {
            bytes,
            next_lsn: first,
        };
        Ok(())
    }

    /// Deletes the segments (other than the one being written) whose records all have an
    /// LSN of at most `lsn`: every sink has confirmed them. Returns how many.
    pub fn remove_through(&mut self, lsn: u64) -> Result<usize, StorageError> {
        let done: Vec<u64> = self
            .segments
            .iter()
            .filter(|(first, s)| **first != self.active_first && s.last_lsn <= lsn)
            .map(|(first, _)| *first)
            .collect();
        for first in &done {
            if let Some(seg) = self.segments.remove(first) {
                fs::remove_file(&seg.path)
                    .map_err(|e| StorageError::io("removing", &seg.path, e))?;
            }
        }
        metrics::gauge!("meterflow_wal_bytes").set(self.bytes() as f64);
        Ok(done.len())
    }

    /// A reader of the records with an LSN above `after`, as committed so far.
    pub fn reader(&self, after: u64) -> WalReader {
        WalReader::from_paths(
            self.segments
                .values()
                .filter(|s| s.last_lsn > after)
                .map(|s| s.path.clone())
                .collect(),
            after,
        )
    }
}
