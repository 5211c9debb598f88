//! Segment files: their names and listing, the check of every record of a segment at open,
//! cutting a torn tail off the last one, setting a damaged earlier one aside, and the fsyncs
//! of files and folders that make each step durable.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use super::record::{read_record, ReadFailure};
use crate::StorageError;

/// One segment file, as the log keeps track of it.
#[derive(Debug, Clone)]
pub(super) struct Segment {
    pub(super) path: PathBuf,
    pub(super) bytes: u64,
    /// LSN of its last record; `first - 1` while it is empty.
    pub(super) last_lsn: u64,
}

/// The first LSNs of the segments in `dir`, in order.
pub(super) fn list_segments(dir: &Path) -> Result<Vec<u64>, StorageError> {
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

pub(super) fn segment_path(dir: &Path, first_lsn: u64) -> PathBuf {
    dir.join(format!("{first_lsn:020}.wal"))
}

/// What a check of every record of a segment found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Scan {
    /// Bytes of whole, intact records from the start.
    pub(super) intact_bytes: u64,
    /// The LSN of the last intact record (`first - 1` when there is none).
    pub(super) last_lsn: u64,
    /// Bytes after them that are torn or corrupt.
    pub(super) bad_bytes: u64,
}

/// Checks every record of a segment. An I/O error is an error (naming the segment and the
/// offset), never a torn tail: a disk that fails to read says nothing about the bytes.
pub(super) fn scan_segment(path: &Path, first: u64) -> Result<Scan, StorageError> {
    let file = File::open(path).map_err(|e| StorageError::io("opening", path, e))?;
    let total = file
        .metadata()
        .map_err(|e| StorageError::io("reading the size of", path, e))?
        .len();
    #[cfg(test)]
    if let Some(fail_at) = super::tests::read_fault_at(path) {
        let faulty = super::tests::FailingReader::new(file, fail_at);
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
pub(super) fn cut_torn_tail(path: &Path, intact_bytes: u64) -> Result<(), StorageError> {
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
pub(super) fn set_aside(path: &Path, intact_bytes: u64) -> Result<PathBuf, StorageError> {
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

pub(super) fn sync_file(path: &Path) -> Result<(), StorageError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| StorageError::io("syncing", path, e))
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io("syncing", dir, e))
}

/// The fuzz target's way in (`fuzz/fuzz_targets/wal_segment.rs`): checks `bytes` as a
/// segment the way [`Wal::open`](super::Wal::open) does, then reads its records the way
/// [`WalReader`](super::WalReader) does, and asserts that both agree. Not an API.
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
