//! The checkpoint: the LSNs through which every sink, and every local sink, has confirmed the
//! records, kept in `{data_dir}/wal/checkpoint` and replaced atomically.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use super::segment::sync_dir;
use crate::StorageError;

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
