//! Small Parquet files written whole and read back whole: VEE's versions, runs and
//! exceptions, the meter registry. A file appears under its name only complete (written as a
//! hidden `.tmp`, synced, renamed, the folder synced); readers skip hidden files.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use arrow_array::{Array, RecordBatch};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;

use crate::StorageError;

/// The complete Parquet files in `dir` (not the hidden ones being written), in name order.
pub(crate) fn parquet_files(dir: &Path) -> Result<Vec<PathBuf>, StorageError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StorageError::io("listing", dir, e)),
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .filter(|f| {
            let name = f.file_name().to_string_lossy().into_owned();
            !name.starts_with('.') && name.ends_with(".parquet")
        })
        .map(|f| f.path())
        .collect();
    files.sort();
    Ok(files)
}

/// Writes `batch` as `dir/name`, whole before it is visible, and syncs the folder.
pub(crate) fn write_whole(
    dir: &Path,
    name: &str,
    batch: &RecordBatch,
) -> Result<PathBuf, StorageError> {
    fs::create_dir_all(dir).map_err(|e| StorageError::io("creating", dir, e))?;
    let final_path = dir.join(name);
    let tmp_path = dir.join(format!(".{name}.tmp"));
    let parquet_error = |source| StorageError::Parquet {
        path: tmp_path.clone(),
        source,
    };
    let file = File::create(&tmp_path).map_err(|e| StorageError::io("creating", &tmp_path, e))?;
    let mut writer = ArrowWriter::try_new(file, batch.schema(), None).map_err(parquet_error)?;
    writer.write(batch).map_err(parquet_error)?;
    let inner = writer.into_inner().map_err(parquet_error)?;
    inner
        .sync_all()
        .map_err(|e| StorageError::io("syncing", &tmp_path, e))?;
    drop(inner);
    fs::rename(&tmp_path, &final_path).map_err(|e| StorageError::io("renaming", &tmp_path, e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io("syncing", dir, e))?;
    Ok(final_path)
}

/// Every batch of the Parquet file at `path`.
pub(crate) fn read_batches(path: &Path) -> Result<Vec<RecordBatch>, StorageError> {
    let parquet_error = |source| StorageError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(|e| StorageError::io("opening", path, e))?;
    ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(parquet_error)?
        .build()
        .map_err(parquet_error)?
        .map(|batch| batch.map_err(|e| StorageError::io("reading", path, std::io::Error::other(e))))
        .collect()
}

/// A column of `batch` as the type VEE wrote it, or an error that names the file and column.
pub(crate) fn column<'b, T: 'static>(
    batch: &'b RecordBatch,
    name: &str,
    path: &Path,
) -> Result<&'b T, StorageError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| {
            StorageError::io(
                "reading",
                path,
                std::io::Error::other(format!("no column {name} of the type meterflow writes")),
            )
        })
}
