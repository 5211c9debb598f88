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

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use meterflow_proto::Source;
use serde::{Deserialize, Serialize};

use crate::StorageError;

const HEADER: usize = 8;
/// A body is never larger than this; a length beyond it marks a corrupt record.
const MAX_BODY: usize = 64 * 1024 * 1024;

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

/// One message as accepted from the network.
#[derive(Debug, Clone, PartialEq)]
pub struct WalRecord {
    pub lsn: u64,
    pub received_at_ms: i64,
    pub source: Source,
    pub topic: String,
    pub content_type: Option<String>,
    /// Why the edge refused it (identity and peer address in the text): the pipeline keeps it
    /// as an `unauthorized` dead letter and nothing else.
    pub refused: Option<String>,
    pub payload: Vec<u8>,
}

/// A message to append, borrowed from the edge that took it.
#[derive(Debug, Clone, Copy)]
pub struct NewRecord<'a> {
    pub received_at_ms: i64,
    pub source: Source,
    pub topic: &'a str,
    pub content_type: Option<&'a str>,
    pub refused: Option<&'a str>,
    pub payload: &'a [u8],
}

impl NewRecord<'_> {
    /// Bytes the record takes in a segment (header and body).
    pub fn encoded_len(&self) -> usize {
        let clamp = |n: usize| n.min(u16::MAX as usize);
        HEADER
            + 8
            + 8
            + 1
            + 2
            + clamp(self.topic.len())
            + 2
            + clamp(self.content_type.map_or(0, str::len))
            + self.refused.map_or(0, |r| 2 + clamp(r.len()))
            + self.payload.len()
    }
}

/// Bit 7 of the source byte: the record carries an edge refusal.
const REFUSED_BIT: u8 = 0x80;

fn source_code(s: Source) -> u8 {
    match s {
        Source::Mqtt => 0,
        Source::Coap => 1,
        Source::Bridge => 2,
    }
}

fn source_from(code: u8) -> Option<Source> {
    match code {
        0 => Some(Source::Mqtt),
        1 => Some(Source::Coap),
        2 => Some(Source::Bridge),
        _ => None,
    }
}

/// Encodes one record (header and body) into `out`.
fn encode(out: &mut Vec<u8>, lsn: u64, record: &NewRecord<'_>) {
    fn short(text: &str) -> &[u8] {
        &text.as_bytes()[..text.len().min(u16::MAX as usize)]
    }
    let topic = short(record.topic);
    let ct = short(record.content_type.unwrap_or(""));
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&record.received_at_ms.to_le_bytes());
    let refused_bit = if record.refused.is_some() {
        REFUSED_BIT
    } else {
        0
    };
    out.push(source_code(record.source) | refused_bit);
    out.extend_from_slice(&(topic.len() as u16).to_le_bytes());
    out.extend_from_slice(topic);
    out.extend_from_slice(&(ct.len() as u16).to_le_bytes());
    out.extend_from_slice(ct);
    if let Some(reason) = record.refused {
        let reason = short(reason);
        out.extend_from_slice(&(reason.len() as u16).to_le_bytes());
        out.extend_from_slice(reason);
    }
    out.extend_from_slice(record.payload);
    let body_len = (out.len() - start - HEADER) as u32;
    let crc = crc32fast::hash(&out[start + HEADER..]);
    out[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes a body whose CRC was checked; `None` if its fields do not fit.
fn decode_body(body: &[u8]) -> Option<WalRecord> {
    let mut at = 0usize;
    let mut take = |n: usize| {
        let s = body.get(at..at.checked_add(n)?)?;
        at += n;
        Some(s)
    };
    let lsn = u64::from_le_bytes(take(8)?.try_into().ok()?);
    let received_at_ms = i64::from_le_bytes(take(8)?.try_into().ok()?);
    let source_byte = take(1)?[0];
    let source = source_from(source_byte & !REFUSED_BIT)?;
    let topic_len = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
    let topic = String::from_utf8_lossy(take(topic_len)?).into_owned();
    let ct_len = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
    let ct = take(ct_len)?;
    let content_type = (!ct.is_empty()).then(|| String::from_utf8_lossy(ct).into_owned());
    let refused = if source_byte & REFUSED_BIT != 0 {
        let len = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
        Some(String::from_utf8_lossy(take(len)?).into_owned())
    } else {
        None
    };
    let payload = body.get(at..)?.to_vec();
    Some(WalRecord {
        lsn,
        received_at_ms,
        source,
        topic,
        content_type,
        refused,
        payload,
    })
}

/// Why a record could not be read.
#[derive(Debug)]
enum ReadFailure {
    /// Short, over-long, failing its CRC, or with fields that do not fit: torn or corrupt.
    Torn,
    /// The file could not be read: says nothing about the bytes, so nothing may be cut.
    Io(std::io::Error),
}

/// Reads the next record of a segment; `Ok(None)` at a clean end.
fn read_record(r: &mut impl Read) -> Result<Option<(WalRecord, u64)>, ReadFailure> {
    let mut header = [0u8; HEADER];
    match read_full(r, &mut header).map_err(ReadFailure::Io)? {
        0 => return Ok(None),
        HEADER => {}
        _ => return Err(ReadFailure::Torn),
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len > MAX_BODY {
        return Err(ReadFailure::Torn);
    }
    let mut body = vec![0u8; len];
    if read_full(r, &mut body).map_err(ReadFailure::Io)? != len {
        return Err(ReadFailure::Torn);
    }
    if crc32fast::hash(&body) != crc {
        return Err(ReadFailure::Torn);
    }
    match decode_body(&body) {
        Some(record) => Ok(Some((record, (HEADER + len) as u64))),
        None => Err(ReadFailure::Torn),
    }
}

/// Like `read_exact`, but says how much it read before the end.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[derive(Debug, Clone)]
struct Segment {
    path: PathBuf,
    bytes: u64,
    /// LSN of its last record; `first - 1` while it is empty.
    last_lsn: u64,
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

/// The first LSNs of the segments in `dir`, in order.
fn list_segments(dir: &Path) -> Result<Vec<u64>, StorageError> {
    let mut firsts: Vec<u64> = fs::read_dir(dir)
        .map_err(|e| StorageError::io("listing", dir, e))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".wal")?.parse().ok()
        })
        .collect();
    firsts.sort_unstable();
    Ok(firsts)
}

fn segment_path(dir: &Path, first_lsn: u64) -> PathBuf {
    dir.join(format!("{first_lsn:020}.wal"))
}

impl Wal {
    /// Opens (or creates) the WAL under `{data_dir}/wal`, checking every record.
    pub fn open(data_dir: &Path, config: WalConfig) -> Result<(Wal, WalRecovery), StorageError> {
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
        WalReader {
            paths: self
                .segments
                .values()
                .filter(|s| s.last_lsn > after)
                .map(|s| s.path.clone())
                .collect(),
            after,
            current: None,
            offset: 0,
        }
    }
}

impl WalReader {
    /// A reader of the committed records above `after` in the WAL of `data_dir`, for a
    /// thread that does not own the [`Wal`] (the pipeline, reading what its queue skipped).
    pub fn open(data_dir: &Path, after: u64) -> Result<WalReader, StorageError> {
        let dir = data_dir.join("wal");
        let firsts = list_segments(&dir)?;
        // Start at the segment holding `after + 1`: the last one that begins at or before it
        // and is not empty (an empty one holds nothing, and one left by a failed roll must
        // not hide the segment that does hold it). Starting earlier only reads more.
        let keep_from = firsts
            .iter()
            .rposition(|first| {
                *first <= after.saturating_add(1)
                    && fs::metadata(segment_path(&dir, *first)).is_ok_and(|m| m.len() > 0)
            })
            .unwrap_or(0);
        Ok(WalReader {
            paths: firsts[keep_from..]
                .iter()
                .map(|first| segment_path(&dir, *first))
                .collect(),
            after,
            current: None,
            offset: 0,
        })
    }
}

/// What a check of every record of a segment found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Scan {
    /// Bytes of whole, intact records from the start.
    intact_bytes: u64,
    /// The LSN of the last intact record (`first - 1` when there is none).
    last_lsn: u64,
    /// Bytes after them that are torn or corrupt.
    bad_bytes: u64,
}

/// Checks every record of a segment. An I/O error is an error (naming the segment and the
/// offset), never a torn tail: a disk that fails to read says nothing about the bytes.
fn scan_segment(path: &Path, first: u64) -> Result<Scan, StorageError> {
    let file = File::open(path).map_err(|e| StorageError::io("opening", path, e))?;
    let total = file
        .metadata()
        .map_err(|e| StorageError::io("reading the size of", path, e))?
        .len();
    #[cfg(test)]
    if let Some(fail_at) = tests::read_fault_at(path) {
        let faulty = tests::FailingReader::new(file, fail_at);
        return scan_records(BufReader::new(faulty), path, first, total);
    }
    scan_records(BufReader::with_capacity(1 << 20, file), path, first, total)
}

fn scan_records(
    mut r: impl Read,
    path: &Path,
    first: u64,
    total: u64,
) -> Result<Scan, StorageError> {
    let mut offset = 0u64;
    let mut last_lsn = first.saturating_sub(1);
    loop {
        match read_record(&mut r) {
            Ok(Some((record, len))) => {
                offset += len;
                last_lsn = record.lsn;
            }
            Ok(None) => break,
            Err(ReadFailure::Torn) => {
                tracing::warn!(path = %path.display(), offset, "torn or corrupt WAL record");
                break;
            }
            Err(ReadFailure::Io(source)) => {
                return Err(StorageError::WalRead {
                    path: path.to_path_buf(),
                    offset,
                    source,
                })
            }
        }
    }
    Ok(Scan {
        intact_bytes: offset,
        last_lsn,
        bad_bytes: total.saturating_sub(offset),
    })
}

/// Cuts a torn tail (a crash in the middle of a write) off the last segment.
fn cut_torn_tail(path: &Path, intact_bytes: u64) -> Result<(), StorageError> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| StorageError::io("opening", path, e))?;
    f.set_len(intact_bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| StorageError::io("truncating", path, e))
}

/// Sets a damaged segment aside whole (`….wal.corrupt`) and puts its intact records back
/// under its name, so they replay and nothing the damage did not touch is lost. Crash-safe:
/// the segment's name holds the whole original or the intact prefix at every moment (the
/// copy is made aside, the original gets a second name by a hard link, and the prefix
/// replaces it by an atomic rename); a crash part-way is redone at the next open.
fn set_aside(path: &Path, intact_bytes: u64) -> Result<PathBuf, StorageError> {
    let tmp = path.with_extension("wal.tmp");
    // A `.wal.corrupt` already there is either the link a crash part-way left (the same file:
    // made again) or an earlier set-aside of a segment damaged again (kept: another name).
    let mut corrupt = path.with_extension("wal.corrupt");
    if let (Ok(old), Ok(now)) = (fs::metadata(&corrupt), fs::metadata(path)) {
        use std::os::unix::fs::MetadataExt;
        if (old.dev(), old.ino()) == (now.dev(), now.ino()) {
            fs::remove_file(&corrupt).map_err(|e| StorageError::io("removing", &corrupt, e))?;
        } else {
            let mut n = 1;
            while corrupt.exists() {
                n += 1;
                corrupt = path.with_extension(format!("wal.corrupt-{n}"));
            }
        }
    }
    let copy = || -> std::io::Result<()> {
        let mut from = File::open(path)?.take(intact_bytes);
        let mut to = File::create(&tmp)?;
        std::io::copy(&mut from, &mut to)?;
        to.sync_all()?;
        fs::hard_link(path, &corrupt)?;
        fs::rename(&tmp, path)
    };
    copy().map_err(|e| StorageError::io("setting aside", path, e))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    Ok(corrupt)
}

fn sync_file(path: &Path) -> Result<(), StorageError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| StorageError::io("syncing", path, e))
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io("syncing", dir, e))
}

/// The file holding the LSN through which every sink has confirmed the records.
fn checkpoint_path(data_dir: &Path) -> PathBuf {
    data_dir.join("wal").join("checkpoint")
}

/// What the sinks have confirmed, by WAL position.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// Through this LSN every record is in every sink: the WAL may drop it, and a restart
    /// replays from the next one.
    pub all: u64,
    /// Through this LSN every record is in the local sinks (Parquet, dead-letter files): a
    /// replay feeds the records up to it to ClickHouse only. At least `all`.
    pub local: u64,
}

/// Reads the checkpoint (0 when there is none yet). `ALL LOCAL`, or a single LSN as written
/// by earlier versions (then both are that).
pub fn read_checkpoint(data_dir: &Path) -> Result<Checkpoint, StorageError> {
    let path = checkpoint_path(data_dir);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Checkpoint::default()),
        Err(e) => return Err(StorageError::io("reading", &path, e)),
    };
    let bad = || {
        StorageError::io(
            "parsing",
            &path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, "not a checkpoint"),
        )
    };
    let mut numbers = text.split_whitespace().map(str::parse::<u64>);
    let all = numbers.next().ok_or_else(bad)?.map_err(|_| bad())?;
    let local = match numbers.next() {
        Some(n) => n.map_err(|_| bad())?,
        None => all,
    };
    Ok(Checkpoint {
        all,
        local: local.max(all),
    })
}

/// Saves the checkpoint (write, fsync, rename, fsync of the folder).
pub fn write_checkpoint(data_dir: &Path, checkpoint: Checkpoint) -> Result<(), StorageError> {
    let path = checkpoint_path(data_dir);
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, format!("{} {}\n", checkpoint.all, checkpoint.local))
        .and_then(|()| File::open(&tmp)?.sync_all())
        .and_then(|()| fs::rename(&tmp, &path))
        .map_err(|e| StorageError::io("writing", &path, e))?;
    // The rename is durable only once the folder is.
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Iterates over committed records in LSN order.
pub struct WalReader {
    paths: std::collections::VecDeque<PathBuf>,
    after: u64,
    current: Option<(PathBuf, BufReader<File>)>,
    offset: u64,
}

impl Iterator for WalReader {
    type Item = Result<WalRecord, StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.current.is_none() {
                let path = self.paths.pop_front()?;
                let file = match File::open(&path) {
                    Ok(f) => f,
                    // Removed since the reader was made: its records were all confirmed.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Some(Err(StorageError::io("opening", &path, e))),
                };
                self.current = Some((path, BufReader::with_capacity(1 << 20, file)));
                self.offset = 0;
            }
            let (path, r) = self.current.as_mut()?;
            match read_record(r) {
                Ok(Some((record, len))) => {
                    self.offset += len;
                    if record.lsn > self.after {
                        return Some(Ok(record));
                    }
                }
                // The end of what was committed (or a torn tail, cut at the next open).
                Ok(None) | Err(ReadFailure::Torn) => self.current = None,
                // Not the end: the caller must not go on as if the records were not there.
                Err(ReadFailure::Io(source)) => {
                    let error = StorageError::WalRead {
                        path: path.clone(),
                        offset: self.offset,
                        source,
                    };
                    self.current = None;
                    self.paths.clear();
                    return Some(Err(error));
                }
            }
        }
    }
}

/// The fuzz target's way in (`fuzz/fuzz_targets/wal_segment.rs`): checks `bytes` as a
/// segment the way [`Wal::open`] does, then reads its records the way [`WalReader`] does, and
/// asserts that both agree. Not an API.
#[doc(hidden)]
pub fn fuzz_segment(bytes: &[u8]) {
    let path = Path::new("fuzz.wal");
    let Ok(scan) = scan_records(bytes, path, 1, bytes.len() as u64) else {
        return;
    };
    assert_eq!(scan.intact_bytes + scan.bad_bytes, bytes.len() as u64);
    let mut r = bytes;
    let mut read = 0u64;
    let mut last = 0;
    while let Ok(Some((record, len))) = read_record(&mut r) {
        read += len;
        last = record.lsn;
    }
    assert_eq!(read, scan.intact_bytes, "the reader and the check agree");
    if read > 0 {
        assert_eq!(last, scan.last_lsn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(segment_bytes: u64) -> WalConfig {
        WalConfig {
            segment_bytes,
            fsync: FsyncPolicy::Always,
            ..Default::default()
        }
    }

    fn append_n(wal: &mut Wal, n: usize) -> Vec<u64> {
        let lsns = (0..n)
            .map(|i| {
                wal.append(&NewRecord {
                    received_at_ms: 1_700_000_000_000 + i as i64,
                    source: Source::Mqtt,
                    topic: &format!("meters/m{i}/json"),
                    content_type: (i % 2 == 0).then_some("application/json"),
                    refused: (i == 5).then_some("identity A may not publish for m5"),
                    payload: format!("payload {i}").as_bytes(),
                })
                .unwrap()
            })
            .collect();
        wal.commit(false).unwrap();
        lsns
    }

    thread_local! {
        /// A read fault to inject: reads of this segment fail with EIO from this offset on.
        static READ_FAULT: std::cell::RefCell<Option<(PathBuf, u64)>> = const { std::cell::RefCell::new(None) };
    }

    pub(super) fn read_fault_at(path: &Path) -> Option<u64> {
        READ_FAULT.with(|f| {
            f.borrow()
                .as_ref()
                .filter(|(p, _)| p == path)
                .map(|(_, at)| *at)
        })
    }

    /// A file whose reads fail with EIO from `fail_at` on, as a failing disk's do.
    pub(super) struct FailingReader {
        file: File,
        at: u64,
        fail_at: u64,
    }

    impl FailingReader {
        pub(super) fn new(file: File, fail_at: u64) -> Self {
            FailingReader {
                file,
                at: 0,
                fail_at,
            }
        }
    }

    impl Read for FailingReader {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.at >= self.fail_at {
                return Err(std::io::Error::from_raw_os_error(5)); // EIO
            }
            let room = (self.fail_at - self.at).min(buf.len() as u64) as usize;
            let n = self.file.read(&mut buf[..room])?;
            self.at += n as u64;
            Ok(n)
        }
    }

    fn segment_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(dir.join("wal"))
            .unwrap()
            .flatten()
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        files.sort();
        files
    }

    #[test]
    fn a_read_error_at_open_stops_it_and_cuts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), cfg(200)).unwrap();
        for _ in 0..10 {
            append_n(&mut wal, 1); // a commit each: segments roll at 200 bytes
        }
        let first_segment = wal.segments.values().next().unwrap().path.clone();
        let last_segment = wal.segments.values().last().unwrap().path.clone();
        drop(wal);
        let before = segment_files(dir.path());
        for (segment, offset) in [(&first_segment, 40), (&last_segment, 0)] {
            READ_FAULT.with(|f| *f.borrow_mut() = Some((segment.clone(), offset)));
            let error = Wal::open(dir.path(), cfg(200))
                .err()
                .expect("a read error fails the open");
            READ_FAULT.with(|f| *f.borrow_mut() = None);
            let text = error.to_string();
            assert!(text.contains(&segment.display().to_string()), "{text}");
            assert!(matches!(error, StorageError::WalRead { .. }), "{text}");
            assert!(error.is_retryable());
            assert_eq!(
                segment_files(dir.path()),
                before,
                "nothing cut, nothing made"
            );
        }
        // The disk is well again: every record is there.
        let (wal, rec) = Wal::open(dir.path(), cfg(200)).unwrap();
        assert_eq!(rec.truncated_bytes, 0);
        assert_eq!(wal.reader(0).count(), 10);
    }

    #[test]
    fn a_read_error_while_replaying_is_an_error_not_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), cfg(200)).unwrap();
        for _ in 0..10 {
            append_n(&mut wal, 1); // a commit each: segments roll at 200 bytes
        }
        // A segment that is a folder: open works, every read fails (EISDIR), for real.
        let second = wal.segments.values().nth(1).unwrap().path.clone();
        fs::rename(&second, second.with_extension("moved")).unwrap();
        fs::create_dir(&second).unwrap();
        let read: Vec<Result<WalRecord, StorageError>> = wal.reader(0).collect();
        let error = read
            .iter()
            .find_map(|r| r.as_ref().err())
            .expect("an error");
        assert!(
            error.to_string().contains(&second.display().to_string()),
            "{error}"
        );
        assert!(
            read.last().unwrap().is_err(),
            "no record after the unreadable segment is handed out as if it came next"
        );
    }

    #[test]
    fn a_corrupt_record_before_the_last_segment_sets_the_segment_aside_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), cfg(200)).unwrap();
        for _ in 0..10 {
            append_n(&mut wal, 1); // a commit each: segments roll at 200 bytes
        }
        let segments: Vec<(u64, Segment)> =
            wal.segments.iter().map(|(f, s)| (*f, s.clone())).collect();
        assert!(segments.len() >= 3, "{segments:?}");
        drop(wal);
        // Damage the second record of the first segment.
        let (first, seg) = &segments[0];
        let mut bytes = fs::read(&seg.path).unwrap();
        let original = bytes.clone();
        let first_len = 8 + u32::from_le_bytes(bytes[0..4].try_into().unwrap()) as usize;
        bytes[first_len + 20] ^= 0xff;
        fs::write(&seg.path, &bytes).unwrap();
        let lost: Vec<u64> = (first + 1..=seg.last_lsn).collect();

        let (wal, rec) = Wal::open(dir.path(), cfg(200)).unwrap();
        assert_eq!(rec.truncated_bytes, 0, "only the last segment is ever cut");
        assert_eq!(rec.set_aside, vec![seg.path.with_extension("wal.corrupt")]);
        assert_eq!(
            fs::read(seg.path.with_extension("wal.corrupt")).unwrap(),
            bytes,
            "the damaged segment is kept whole"
        );
        assert_eq!(fs::read(&seg.path).unwrap(), original[..first_len].to_vec());
        let lsns: Vec<u64> = wal.reader(0).map(|r| r.unwrap().lsn).collect();
        let expected: Vec<u64> = (1..=10).filter(|l| !lost.contains(l)).collect();
        assert_eq!(
            lsns, expected,
            "every record the damage did not touch replays"
        );
        assert_eq!(rec.last_lsn, 10);
    }

    #[test]
    fn records_round_trip_in_order_across_segments_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, rec) = Wal::open(dir.path(), cfg(200)).unwrap();
        assert_eq!(rec, WalRecovery::default());
        assert_eq!(append_n(&mut wal, 10), (1..=10).collect::<Vec<_>>());
        let all: Vec<WalRecord> = wal.reader(0).map(Result::unwrap).collect();
        assert_eq!(all.len(), 10);
        assert_eq!(all[3].topic, "meters/m3/json");
        assert_eq!(all[3].payload, b"payload 3");
        assert_eq!(all[4].content_type.as_deref(), Some("application/json"));
        assert_eq!(all[3].content_type, None);
        assert_eq!(all[3].refused, None);
        assert_eq!(
            all[5].refused.as_deref(),
            Some("identity A may not publish for m5")
        );
        assert_eq!(all[5].payload, b"payload 5");
        assert_eq!(all[5].source, Source::Mqtt);
        assert_eq!(
            wal.reader(7).map(|r| r.unwrap().lsn).collect::<Vec<_>>(),
            vec![8, 9, 10]
        );
        let from_dir: Vec<u64> = WalReader::open(dir.path(), 7)
            .unwrap()
            .map(|r| r.unwrap().lsn)
            .collect();
        assert_eq!(from_dir, vec![8, 9, 10]);
        drop(wal);

        let (mut wal, rec) = Wal::open(dir.path(), cfg(200)).unwrap();
        assert_eq!(rec.last_lsn, 10);
        assert_eq!(rec.truncated_bytes, 0);
        assert_eq!(append_n(&mut wal, 2), vec![11, 12]);
        let lsns: Vec<u64> = wal.reader(0).map(|r| r.unwrap().lsn).collect();
        assert_eq!(lsns, (1..=12).collect::<Vec<_>>());
    }

    #[test]
    fn the_checkpoint_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        Wal::open(dir.path(), cfg(1 << 20)).unwrap();
        assert_eq!(read_checkpoint(dir.path()).unwrap(), Checkpoint::default());
        let c = Checkpoint { all: 42, local: 50 };
        write_checkpoint(dir.path(), c).unwrap();
        assert_eq!(read_checkpoint(dir.path()).unwrap(), c);
        // The one-number file of earlier versions.
        std::fs::write(dir.path().join("wal/checkpoint"), "17\n").unwrap();
        assert_eq!(
            read_checkpoint(dir.path()).unwrap(),
            Checkpoint { all: 17, local: 17 }
        );
        std::fs::write(dir.path().join("wal/checkpoint"), "x").unwrap();
        assert!(read_checkpoint(dir.path()).is_err());
    }

    #[test]
    fn lsns_continue_after_a_checkpoint_ahead_of_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), cfg(1 << 20)).unwrap();
        append_n(&mut wal, 2);
        wal.start_after(10).unwrap();
        assert_eq!(append_n(&mut wal, 1), vec![11]);
        wal.start_after(5).unwrap();
        assert_eq!(wal.next_lsn(), 12);
        drop(wal);
        let (wal, rec) = Wal::open(dir.path(), cfg(1 << 20)).unwrap();
        assert_eq!(rec.last_lsn, 11);
        let lsns: Vec<u64> = wal.reader(0).map(|r| r.unwrap().lsn).collect();
        assert_eq!(lsns, vec![1, 2, 11]);
    }

    #[test]
    fn a_torn_tail_is_cut_and_the_intact_records_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), cfg(1 << 20)).unwrap();
        append_n(&mut wal, 3);
        let path = wal.segments.values().last().unwrap().path.clone();
        drop(wal);
        // A crash in the middle of the fourth record: half a header and body.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[40, 0, 0, 0, 1, 2, 3, 4, 9, 9]).unwrap();
        drop(f);
        let (wal, rec) = Wal::open(dir.path(), cfg(1 << 20)).unwrap();
        assert_eq!(rec.last_lsn, 3);
        assert_eq!(rec.truncated_bytes, 10);
        assert_eq!(wal.reader(0).count(), 3);
        assert_eq!(wal.next_lsn(), 4);
    }

    #[test]
    fn a_flipped_bit_is_caught_by_the_crc() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), cfg(1 << 20)).unwrap();
        append_n(&mut wal, 2);
        let path = wal.segments.values().last().unwrap().path.clone();
        drop(wal);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, bytes).unwrap();
        let (wal, rec) = Wal::open(dir.path(), cfg(1 << 20)).unwrap();
        assert_eq!(rec.last_lsn, 1);
        assert_eq!(wal.reader(0).count(), 1);
    }

    #[test]
    fn a_roll_that_fails_keeps_the_group_and_is_tried_again() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), cfg(100)).unwrap();
        // The next segment's name is taken by a folder: creating it fails (EISDIR), for real.
        let blocker = dir.path().join(format!("wal/{:020}.wal", 4));
        fs::create_dir(&blocker).unwrap();
        let lsns = append_n(&mut wal, 3); // one commit; the segment passes 100 bytes
        assert_eq!(
            lsns,
            vec![1, 2, 3],
            "the group is committed although the roll failed"
        );
        assert!(wal.roll_failing());
        assert_eq!(wal.reader(0).count(), 3);
        fs::remove_dir(&blocker).unwrap();
        assert_eq!(append_n(&mut wal, 1), vec![4]);
        assert!(
            !wal.roll_failing(),
            "the roll is tried again at the next commit"
        );
        drop(wal);
        let (wal, rec) = Wal::open(dir.path(), cfg(100)).unwrap();
        assert_eq!(rec.last_lsn, 4);
        assert_eq!(wal.reader(0).count(), 4);
    }

    #[test]
    fn an_empty_segment_left_by_a_failed_roll_hides_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), cfg(1 << 20)).unwrap();
        append_n(&mut wal, 3);
        // A roll that created segment 2 and then failed: the log went on in segment 1.
        fs::File::create(dir.path().join("wal").join(format!("{:020}.wal", 2))).unwrap();
        append_n(&mut wal, 3);
        let from_dir = |after| -> Vec<u64> {
            WalReader::open(dir.path(), after)
                .unwrap()
                .map(|r| r.unwrap().lsn)
                .collect()
        };
        assert_eq!(
            from_dir(2),
            vec![3, 4, 5, 6],
            "the reader is not led to the empty file"
        );
        drop(wal);
        let (wal, rec) = Wal::open(dir.path(), cfg(1 << 20)).unwrap();
        assert_eq!(rec.last_lsn, 6);
        assert!(
            !dir.path().join(format!("wal/{:020}.wal", 2)).exists(),
            "the stray is gone"
        );
        assert_eq!(wal.reader(0).count(), 6);
    }

    #[test]
    fn a_set_aside_interrupted_by_a_crash_is_done_again_and_an_earlier_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), cfg(200)).unwrap();
        for _ in 0..6 {
            append_n(&mut wal, 1);
        }
        let first = wal.segments.values().next().unwrap().path.clone();
        drop(wal);
        let mut bytes = fs::read(&first).unwrap();
        let first_len = 8 + u32::from_le_bytes(bytes[0..4].try_into().unwrap()) as usize;
        bytes[first_len + 20] ^= 0xff;
        fs::write(&first, &bytes).unwrap();
        // A crash after the link, before the rename: the link and a stale copy are there.
        fs::hard_link(&first, first.with_extension("wal.corrupt")).unwrap();
        fs::write(first.with_extension("wal.tmp"), b"stale").unwrap();
        let (_, rec) = Wal::open(dir.path(), cfg(200)).unwrap();
        assert_eq!(rec.set_aside, vec![first.with_extension("wal.corrupt")]);
        assert_eq!(
            fs::read(first.with_extension("wal.corrupt")).unwrap(),
            bytes
        );
        assert_eq!(fs::read(&first).unwrap(), bytes[..first_len].to_vec());
        // Damaged again later: the first copy is kept, the new one gets another name.
        let mut again = fs::read(&first).unwrap();
        again[20] ^= 0xff;
        fs::write(&first, &again).unwrap();
        let (_, rec) = Wal::open(dir.path(), cfg(200)).unwrap();
        assert_eq!(rec.set_aside, vec![first.with_extension("wal.corrupt-2")]);
        assert_eq!(
            fs::read(first.with_extension("wal.corrupt")).unwrap(),
            bytes
        );
    }

    #[test]
    fn confirmed_segments_are_removed_and_the_budget_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = cfg(100);
        config.max_bytes = 400;
        let (mut wal, _) = Wal::open(dir.path(), config).unwrap();
        for _ in 0..6 {
            append_n(&mut wal, 1); // one commit each: a segment rolls at 100 bytes
        }
        let before = wal.segments.len();
        assert!(before >= 3, "{before} segments");
        let record = |payload: &'static [u8]| NewRecord {
            received_at_ms: 0,
            source: Source::Mqtt,
            topic: "meters/a/json",
            content_type: None,
            refused: None,
            payload,
        };
        assert!(!wal.has_room(&record(&[0; 200])));
        assert_eq!(wal.remove_through(0).unwrap(), 0);
        let removed = wal.remove_through(4).unwrap();
        assert!(removed >= 1);
        let lsns: Vec<u64> = wal.reader(0).map(|r| r.unwrap().lsn).collect();
        assert!(lsns.contains(&5) && lsns.contains(&6), "{lsns:?}");
        assert!(
            lsns.iter().all(|l| *l >= 3),
            "segments with unconfirmed records stay: {lsns:?}"
        );
        assert!(wal.has_room(&record(&[0; 10])));
        // The content type counts too (it can be 64 KiB).
        let long_type = "x".repeat(400);
        assert!(!wal.has_room(&NewRecord {
            content_type: Some(&long_type),
            ..record(&[0; 10])
        }));
    }
}
