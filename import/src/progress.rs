//! The progress record that makes an import resumable: `{data_dir}/import/progress.json`,
//! per target and file, how many input rows are in the sink and whether the file is done.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ImportError;

/// How far one file got, as saved in the progress record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileProgress {
    pub(crate) size: u64,
    pub(crate) modified_ns: u128,
    /// Input rows (data rows of a CSV, bad ones included; rows of a Parquet file) in the sink.
    pub(crate) rows_done: u64,
    pub(crate) done: bool,
    /// A hash of the settings the file was read with (`--map`, `--tz`, `--scale`,
    /// `--to-unit`, ...; 0 for meterflow's own Parquet read as it is): other settings read it
    /// anew.
    pub(crate) settings: u64,
    /// Rows taken from it so far, over the runs (a file none of whose rows was taken is not
    /// done, even when resumed); absent in records of earlier versions.
    #[serde(default)]
    pub(crate) taken: u64,
}

/// `{data_dir}/import/progress.json`: per target and file, how far the import got.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProgressRecord {
    pub(crate) files: BTreeMap<String, FileProgress>,
    #[serde(skip)]
    path: PathBuf,
    #[serde(skip)]
    dirty: bool,
}

impl ProgressRecord {
    /// The record in `data_dir`, or an empty one where there is none yet.
    pub(crate) fn open(data_dir: &Path) -> Result<ProgressRecord, ImportError> {
        let path = data_dir.join("import").join("progress.json");
        let mut record = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| ImportError::ProgressRecord {
                    path: path.clone(),
                    source,
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ProgressRecord::default(),
            Err(e) => return Err(ImportError::io("reading", &path, e)),
        };
        record.path = path;
        Ok(record)
    }

    /// Saves the record when it changed: a temporary file, fsync, rename (a crash leaves the
    /// old record or the new one).
    pub(crate) fn save(&mut self) -> Result<(), ImportError> {
        if !self.dirty {
            return Ok(());
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| ImportError::io("creating", dir, e))?;
        let tmp = self.path.with_extension("json.tmp");
        let writing = |e| ImportError::io("writing", &tmp, e);
        let text = serde_json::to_vec_pretty(self).map_err(|e| writing(e.into()))?;
        {
            use std::io::Write;
            let mut file = File::create(&tmp).map_err(writing)?;
            file.write_all(&text).map_err(writing)?;
            file.sync_all().map_err(writing)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(|e| ImportError::io("writing", &self.path, e))?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        self.dirty = false;
        Ok(())
    }

    pub(crate) fn set(&mut self, key: &str, progress: FileProgress) {
        self.files.insert(key.to_string(), progress);
        self.dirty = true;
    }
}
