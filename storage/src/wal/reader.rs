//! Replay: [`WalReader`] hands out the committed records above an LSN, segment after segment,
//! in LSN order.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::BufReader;
use std::path::{Path, PathBuf};

use super::record::{read_record, ReadFailure, WalRecord};
use super::segment::{list_segments, segment_path};
use crate::StorageError;

/// Iterates over committed records in LSN order.
pub struct WalReader {
    paths: VecDeque<PathBuf>,
    after: u64,
    current: Option<(PathBuf, BufReader<File>)>,
    offset: u64,
}

impl WalReader {
    /// A reader of the committed records above `after` in the WAL of `data_dir`, for a
    /// thread that does not own the [`Wal`](super::Wal) (the pipeline, reading what its
    /// queue skipped).
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
        Ok(WalReader::from_paths(
            firsts[keep_from..]
                .iter()
                .map(|first| segment_path(&dir, *first))
                .collect(),
            after,
        ))
    }

    /// A reader of the records above `after` in the segments at `paths`, in order.
    pub(super) fn from_paths(paths: VecDeque<PathBuf>, after: u64) -> WalReader {
        WalReader {
            paths,
            after,
            current: None,
            offset: 0,
        }
    }
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
