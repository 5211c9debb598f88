//! The Parquet sink, meterflow's embedded default.
//!
//! Layout: `{data_dir}/readings/date=YYYY-MM-DD/part-{run}-{seq}.parquet`, by the reading's UTC
//! date (hive-style, so DuckDB, pandas, Spark and ClickHouse read the folder as a table with a
//! `date` column). Files are zstd-compressed with bounded row groups. A file is written as a
//! hidden `.part-….parquet.tmp` and renamed to its final name only when complete (after
//! fsync), so readers never see a partial file. Each date being written has one open file,
//! which is rolled (closed, renamed) when it holds `file_max_rows` rows or has been open
//! `file_max_age_s` seconds, and on shutdown. Status reports are written the same way under
//! `{data_dir}/status/` ([`ParquetSink::open_status`], by the UTC date of their own time).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow_array::{BooleanArray, RecordBatch};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};

use crate::StorageError;

const DAY_MS: i64 = 86_400_000;

/// The false-positive rate of the meter-id bloom filter of each row group.
const METER_BLOOM_FPP: f64 = 0.01;

/// The readings' folder and the column that dates a row.
const READINGS: (&str, &str) = ("readings", "ts");
/// The status reports' folder and the column that dates a row.
const STATUS: (&str, &str) = ("status", "ts");
/// Events: by the UTC date of their `ts`.
const EVENTS: (&str, &str) = ("events", "ts");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParquetConfig {
    /// Rows per row group at most: bounds the memory of an open file and the reader's unit of work.
    pub row_group_rows: usize,
    /// Roll a file when it holds this many rows.
    pub file_max_rows: usize,
    /// Roll a file when it has been open this long: the delay before rows become visible.
    pub file_max_age_s: u64,
    /// zstd level, 1 (fast) to 22 (small).
    pub zstd_level: i32,
    /// Dates with an open file at most (a backfill touches many): past it, the file open the
    /// longest is completed.
    pub max_open_files: usize,
}

impl ParquetConfig {
    /// Checks what the types alone do not; the error names the key.
    pub fn validate(&self) -> Result<(), StorageError> {
        StorageError::positive("parquet.row_group_rows", self.row_group_rows as u64)?;
        StorageError::positive("parquet.file_max_rows", self.file_max_rows as u64)?;
        StorageError::positive("parquet.max_open_files", self.max_open_files as u64)?;
        if !(1..=22).contains(&self.zstd_level) {
            return Err(StorageError::config(
                "parquet.zstd_level",
                "must be 1 to 22",
            ));
        }
        Ok(())
    }
}

impl Default for ParquetConfig {
    fn default() -> Self {
        ParquetConfig {
            row_group_rows: 128 * 1024,
            file_max_rows: 4 * 1024 * 1024,
            file_max_age_s: 60,
            zstd_level: 1,
            max_open_files: 32,
        }
    }
}

/// A file of one date being written.
struct OpenFile {
    writer: ArrowWriter<File>,
    tmp_path: PathBuf,
    final_path: PathBuf,
    rows: usize,
    opened_at: Instant,
    /// The oldest WAL record with rows in this file.
    oldest_lsn: Option<u64>,
}

pub struct ParquetSink {
    root: PathBuf,
    /// The column whose UTC date picks a row's folder: `ts` (readings and status reports).
    time_column: &'static str,
    /// The `sink` label its rows are counted under in `meterflow_rows_written_total`:
    /// `parquet` (readings) or `parquet_status`.
    rows_label: &'static str,
    config: ParquetConfig,
    properties: WriterProperties,
    run_id: String,
    next_seq: u64,
    open: BTreeMap<i64, OpenFile>,
}

impl ParquetSink {
    /// Opens the sink under `{data_dir}/readings`. Leftover `.tmp` files of a run that crashed
    /// are incomplete (no footer) and are removed; their rows are not in any readable file.
    ///
    /// `node` (the node's id, or empty for a single node) goes first in the file names, and
    /// only that node's leftovers are removed: many nodes can share one archive.
    pub fn open(data_dir: &Path, config: ParquetConfig, node: &str) -> Result<Self, StorageError> {
        let started = chrono::Utc::now().format("%Y%m%dT%H%M%S%3fZ").to_string();
        let run_id = if node.is_empty() {
            started
        } else {
            format!("{node}-{started}")
        };
        Self::open_as(data_dir, READINGS, config, run_id, Some(node))
    }

    /// Opens the sink of status reports under `{data_dir}/status` (the columns of
    /// [`crate::status::status_schema`], by the UTC date of `ts`), with the same file rules as
    /// the readings' and the same leftovers removed.
    pub fn open_status(
        data_dir: &Path,
        config: ParquetConfig,
        node: &str,
    ) -> Result<Self, StorageError> {
        Self::open_beside(data_dir, STATUS, config, node)
    }

    /// Opens the sink of events under `{data_dir}/events` (the columns of
    /// [`crate::events::events_schema`], by the UTC date of `ts`), as [`ParquetSink::open_status`].
    pub fn open_events(
        data_dir: &Path,
        config: ParquetConfig,
        node: &str,
    ) -> Result<Self, StorageError> {
        Self::open_beside(data_dir, EVENTS, config, node)
    }

    /// A sink of rows beside the readings (status reports, events) in `folder`: files named
    /// by the node and the time it started, a node's leftovers removed.
    fn open_beside(
        data_dir: &Path,
        folder: (&str, &'static str),
        config: ParquetConfig,
        node: &str,
    ) -> Result<Self, StorageError> {
        let started = chrono::Utc::now().format("%Y%m%dT%H%M%S%3fZ").to_string();
        let run_id = if node.is_empty() {
            started
        } else {
            format!("{node}-{started}")
        };
        Self::open_as(data_dir, folder, config, run_id, Some(node))
    }

    /// Opens the sink for `meterflow import`: files are named `part-{run_id}-{seq}`, where the
    /// importer makes `run_id` from the input file and chunk (so a rerun after an interruption
    /// writes the same names over what the first run completed, not a second copy), and the
    /// leftovers of other writers (a `serve` running on the same folder) are left alone.
    pub fn open_named(
        data_dir: &Path,
        config: ParquetConfig,
        run_id: &str,
    ) -> Result<Self, StorageError> {
        Self::open_as(data_dir, READINGS, config, run_id.to_string(), None)
    }

    fn open_as(
        data_dir: &Path,
        (folder, time_column): (&str, &'static str),
        config: ParquetConfig,
        run_id: String,
        clean_up_for: Option<&str>,
    ) -> Result<Self, StorageError> {
        let root = data_dir.join(folder);
        fs::create_dir_all(&root).map_err(|e| StorageError::io("creating", &root, e))?;
        let removed = match clean_up_for {
            Some(node) => remove_leftovers(&root, node)?,
            None => 0,
        };
        if removed > 0 {
            tracing::warn!(
                files = removed,
                dir = %root.display(),
                "removed incomplete Parquet files left by an earlier run"
            );
        }
        let level =
            ZstdLevel::try_new(config.zstd_level).map_err(|source| StorageError::Parquet {
                path: root.clone(),
                source,
            })?;
        // A bloom filter of the meter ids of each row group: a read that looks for a few
        // meters' readings before a period (a meter installed in it has none) skips the row
        // groups without them instead of decoding the whole history. Sized for a row group
        // of distinct ids and folded to what it holds when the group is complete (about
        // 12 KB for 10 000 meters at 1 % false positives).
        let meter_id = ColumnPath::from("meter_id");
        let properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(level))
            .set_max_row_group_row_count(Some(config.row_group_rows.max(1)))
            .set_column_bloom_filter_enabled(meter_id.clone(), true)
            .set_column_bloom_filter_fpp(meter_id.clone(), METER_BLOOM_FPP)
            .set_column_bloom_filter_max_ndv(meter_id, config.row_group_rows.max(1) as u64)
            .build();
        let rows_label = if folder == STATUS.0 {
            "parquet_status"
        } else {
            "parquet"
        };
        Ok(ParquetSink {
            root,
            time_column,
            rows_label,
            config,
            properties,
            run_id,
            next_seq: 0,
            open: BTreeMap::new(),
        })
    }

    /// Appends a batch of the canonical schema, split by the UTC date of each reading;
    /// `oldest_lsn` is the oldest WAL record with rows in it (`None`: no row came from the
    /// WAL, so the batch holds no record back). Returns the files that were
    /// completed because they reached `file_max_rows`.
    pub fn write(
        &mut self,
        batch: &RecordBatch,
        oldest_lsn: Option<u64>,
        now: Instant,
    ) -> Result<Vec<PathBuf>, StorageError> {
        let mut completed = Vec::new();
        for (day, part) in split_by_day(batch, self.time_column)? {
            let file = match self.open.entry(day) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    let name = FileName {
                        root: &self.root,
                        day,
                        run_id: &self.run_id,
                        seq,
                    };
                    e.insert(open_file(
                        name,
                        &batch.schema(),
                        &self.properties,
                        now,
                        oldest_lsn,
                    )?)
                }
            };
            file.oldest_lsn = match (file.oldest_lsn, oldest_lsn) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            file.writer
                .write(&part)
                .map_err(|source| StorageError::Parquet {
                    path: file.tmp_path.clone(),
                    source,
                })?;
            file.rows += part.num_rows();
            if file.rows >= self.config.file_max_rows {
                if let Some(file) = self.open.remove(&day) {
                    completed.push(commit(file, self.rows_label)?);
                }
            }
            while self.open.len() > self.config.max_open_files.max(1) {
                let oldest = self
                    .open
                    .iter()
                    .min_by_key(|(_, f)| f.opened_at)
                    .map(|(day, _)| *day);
                match oldest.and_then(|d| self.open.remove(&d)) {
                    Some(file) => completed.push(commit(file, self.rows_label)?),
                    None => break,
                }
            }
        }
        Ok(completed)
    }

    /// Writes `batch` as complete files of their own, `part-{name}-{seq}.parquet` (one per
    /// date), apart from the open files: an import's chunk, named the same in every run, so
    /// that a rerun after an interruption writes over what the first run completed instead of
    /// adding a second copy. Returns the files.
    pub fn write_named(
        &self,
        batch: &RecordBatch,
        name: &str,
    ) -> Result<Vec<PathBuf>, StorageError> {
        let mut files = ParquetSink {
            root: self.root.clone(),
            time_column: self.time_column,
            rows_label: self.rows_label,
            config: self.config.clone(),
            properties: self.properties.clone(),
            run_id: name.to_string(),
            next_seq: 0,
            open: BTreeMap::new(),
        };
        let mut completed = files.write(batch, None, Instant::now())?;
        completed.extend(files.close()?);
        Ok(completed)
    }

    /// Removes the complete files whose names start with `part-{prefix}` (written by
    /// [`ParquetSink::write_named`]); how many.
    pub fn remove_named(&self, prefix: &str) -> Result<usize, StorageError> {
        let prefix = format!("part-{prefix}");
        let Ok(days) = fs::read_dir(&self.root) else {
            return Ok(0);
        };
        let mut removed = 0;
        for day in days.flatten() {
            let Ok(files) = fs::read_dir(day.path()) else {
                continue;
            };
            for file in files.flatten() {
                if file.file_name().to_string_lossy().starts_with(&prefix) {
                    let path = file.path();
                    fs::remove_file(&path).map_err(|e| StorageError::io("removing", &path, e))?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Completes the files that have been open for `file_max_age_s`.
    pub fn roll_due(&mut self, now: Instant) -> Result<Vec<PathBuf>, StorageError> {
        let max_age = Duration::from_secs(self.config.file_max_age_s);
        let due: Vec<i64> = self
            .open
            .iter()
            .filter(|(_, f)| now.saturating_duration_since(f.opened_at) >= max_age)
            .map(|(day, _)| *day)
            .collect();
        let mut completed = Vec::with_capacity(due.len());
        for day in due {
            if let Some(file) = self.open.remove(&day) {
                completed.push(commit(file, self.rows_label)?);
            }
        }
        Ok(completed)
    }

    /// How long until [`ParquetSink::roll_due`] has work; `None` with no open file.
    pub fn next_roll_in(&self, now: Instant) -> Option<Duration> {
        let max_age = Duration::from_secs(self.config.file_max_age_s);
        self.open
            .values()
            .map(|f| max_age.saturating_sub(now.saturating_duration_since(f.opened_at)))
            .min()
    }

    /// Completes every open file (shutdown).
    pub fn close(&mut self) -> Result<Vec<PathBuf>, StorageError> {
        let open = std::mem::take(&mut self.open);
        let label = self.rows_label;
        open.into_values().map(|file| commit(file, label)).collect()
    }

    /// The oldest WAL record whose rows are in a file not complete yet: every record before
    /// it that reached this sink is in a complete file.
    pub fn oldest_pending_lsn(&self) -> Option<u64> {
        self.open.values().filter_map(|f| f.oldest_lsn).min()
    }

    /// Rows written to files that are not complete yet.
    pub fn pending_rows(&self) -> usize {
        self.open.values().map(|f| f.rows).sum()
    }
}

fn day_dir(root: &Path, day: i64) -> PathBuf {
    let date = chrono::DateTime::from_timestamp_millis(day * DAY_MS)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| format!("day{day}"));
    root.join(format!("date={date}"))
}

/// Where a new file goes: `{root}/date=…/part-{run_id}-{seq}.parquet`.
struct FileName<'a> {
    root: &'a Path,
    day: i64,
    run_id: &'a str,
    seq: u64,
}

fn open_file(
    FileName {
        root,
        day,
        run_id,
        seq,
    }: FileName<'_>,
    schema: &arrow_schema::SchemaRef,
    properties: &WriterProperties,
    now: Instant,
    oldest_lsn: Option<u64>,
) -> Result<OpenFile, StorageError> {
    let dir = day_dir(root, day);
    fs::create_dir_all(&dir).map_err(|e| StorageError::io("creating", &dir, e))?;
    let name = format!("part-{run_id}-{seq:06}.parquet");
    let tmp_path = dir.join(format!(".{name}.tmp"));
    let final_path = dir.join(name);
    let file = File::create(&tmp_path).map_err(|e| StorageError::io("creating", &tmp_path, e))?;
    let writer =
        ArrowWriter::try_new(file, schema.clone(), Some(properties.clone())).map_err(|source| {
            StorageError::Parquet {
                path: tmp_path.clone(),
                source,
            }
        })?;
    Ok(OpenFile {
        writer,
        tmp_path,
        final_path,
        rows: 0,
        opened_at: now,
        oldest_lsn,
    })
}

/// Writes the footer, fsyncs, renames to the final name and fsyncs the folder; counts its
/// rows under `rows_label`.
fn commit(file: OpenFile, rows_label: &'static str) -> Result<PathBuf, StorageError> {
    let OpenFile {
        writer,
        tmp_path,
        final_path,
        rows,
        ..
    } = file;
    let inner = writer
        .into_inner()
        .map_err(|source| StorageError::Parquet {
            path: tmp_path.clone(),
            source,
        })?;
    inner
        .sync_all()
        .map_err(|e| StorageError::io("syncing", &tmp_path, e))?;
    drop(inner);
    fs::rename(&tmp_path, &final_path).map_err(|e| StorageError::io("renaming", &tmp_path, e))?;
    if let Some(dir) = final_path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StorageError::io("syncing", dir, e))?;
    }
    metrics::counter!("meterflow_rows_written_total", "sink" => rows_label).increment(rows as u64);
    metrics::counter!("meterflow_parquet_files_total").increment(1);
    tracing::debug!(path = %final_path.display(), rows, "parquet file complete");
    Ok(final_path)
}

/// The parts of a batch by UTC day of `column` (a `Timestamp(ms)`), in day order; one part
/// when all share a day.
fn split_by_day(
    batch: &RecordBatch,
    column: &str,
) -> Result<Vec<(i64, RecordBatch)>, StorageError> {
    let ts = batch
        .column_by_name(column)
        .and_then(|c| {
            c.as_any()
                .downcast_ref::<arrow_array::TimestampMillisecondArray>()
        })
        .ok_or_else(|| {
            arrow_schema::ArrowError::SchemaError(format!(
                "a batch for Parquet needs column {column} of type Timestamp(ms)"
            ))
        })?;
    let days: Vec<i64> = ts.values().iter().map(|t| t.div_euclid(DAY_MS)).collect();
    let Some(&first) = days.first() else {
        return Ok(Vec::new());
    };
    if days.iter().all(|d| *d == first) {
        return Ok(vec![(first, batch.clone())]);
    }
    let mut distinct = days.clone();
    distinct.sort_unstable();
    distinct.dedup();
    distinct
        .into_iter()
        .map(|day| {
            let mask: BooleanArray = days.iter().map(|d| Some(*d == day)).collect();
            Ok((
                day,
                arrow_select::filter::filter_record_batch(batch, &mask)?,
            ))
        })
        .collect()
}

/// Whether `name` is a `.tmp` file of node `node`: `.part-{node}-{start}-{seq}.parquet.tmp`
/// with the start time and sequence number exactly where they belong, so node `mf` does not
/// take node `mf-8`'s files for its own. An empty `node` (a single node's folder) owns every
/// `.part-*.tmp`.
fn is_leftover_of(name: &str, node: &str) -> bool {
    let Some(rest) = name.strip_prefix(".part-") else {
        return false;
    };
    if !rest.ends_with(".tmp") {
        return false;
    }
    if node.is_empty() {
        return true;
    }
    let Some(rest) = rest.strip_prefix(node).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    // {YYYYMMDDTHHMMSSmmmZ}-{seq:06}.parquet.tmp
    let b = rest.as_bytes();
    rest.len() == 19 + 1 + 6 + ".parquet.tmp".len()
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..18].iter().all(u8::is_ascii_digit)
        && b[18] == b'Z'
        && b[19] == b'-'
        && b[20..26].iter().all(u8::is_ascii_digit)
        && rest.ends_with(".parquet.tmp")
}

/// Removes the `.tmp` files a crashed run of this node left (of every node when `node` is
/// empty: a single node's folder).
fn remove_leftovers(root: &Path, node: &str) -> Result<usize, StorageError> {
    let mut removed = 0;
    let entries = fs::read_dir(root).map_err(|e| StorageError::io("listing", root, e))?;
    for dir in entries.flatten() {
        let Ok(files) = fs::read_dir(dir.path()) else {
            continue;
        };
        for f in files.flatten() {
            let name = f.file_name();
            let name = name.to_string_lossy();
            if is_leftover_of(&name, node) {
                fs::remove_file(f.path()).map_err(|e| StorageError::io("removing", f.path(), e))?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use meterflow_proto::{Format, ReadingBatchBuilder, RowMeta, Source};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    /// Readings of meter `m1`, one per time in `ts` (Unix ms), value its index (also for the
    /// sink seam's tests).
    pub(crate) fn batch(ts: &[i64]) -> RecordBatch {
        let mut b = ReadingBatchBuilder::default();
        let meta = RowMeta {
            meter_id: "m1",
            received_at_ms: 5,
            source: Source::Mqtt,
            format: Format::Json,
        };
        for (i, t) in ts.iter().enumerate() {
            b.append(&meta, "1-0:1.8.0", *t, i as f64, "kWh", 0);
        }
        b.finish()
    }

    fn read_all(path: &Path) -> (usize, usize) {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap()).unwrap();
        let groups = reader.metadata().num_row_groups();
        let rows = reader.build().unwrap().map(|b| b.unwrap().num_rows()).sum();
        (rows, groups)
    }

    #[test]
    fn rows_without_a_wal_position_do_not_free_the_file_they_join() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = ParquetSink::open(dir.path(), ParquetConfig::default(), "").unwrap();
        let now = Instant::now();
        let b = batch(&[1_709_337_600_000]);
        // A batch of messages the WAL could not take first, then one of WAL record 7.
        assert!(sink.write(&b, None, now).unwrap().is_empty());
        assert_eq!(sink.oldest_pending_lsn(), None);
        assert!(sink.write(&b, Some(7), now).unwrap().is_empty());
        assert!(sink.write(&b, None, now).unwrap().is_empty());
        assert_eq!(
            sink.oldest_pending_lsn(),
            Some(7),
            "record 7 is held until complete"
        );
    }

    #[test]
    fn rows_land_in_their_utc_date_folder_only_when_complete() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = ParquetSink::open(dir.path(), ParquetConfig::default(), "").unwrap();
        let now = Instant::now();
        // 2024-03-01T23:59:59.999Z and 2024-03-02T00:00:00Z
        let b = batch(&[1_709_337_599_999, 1_709_337_600_000, 1_709_337_600_001]);
        assert!(sink.write(&b, Some(5), now).unwrap().is_empty());
        assert!(sink
            .write(&batch(&[1_709_337_600_002]), Some(9), now)
            .unwrap()
            .is_empty());
        assert_eq!(sink.oldest_pending_lsn(), Some(5));
        assert_eq!(sink.pending_rows(), 4);
        let day1 = dir.path().join("readings/date=2024-03-01");
        let visible = |d: &Path| {
            fs::read_dir(d)
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
                .count()
        };
        assert_eq!(visible(&day1), 0, "no file visible before it is complete");
        assert_eq!(sink.next_roll_in(now), Some(Duration::from_secs(60)));
        assert!(sink.roll_due(now).unwrap().is_empty());
        let files = sink.roll_due(now + Duration::from_secs(60)).unwrap();
        assert_eq!(files.len(), 2);
        assert!(files[0].starts_with(&day1));
        assert!(files[1].starts_with(dir.path().join("readings/date=2024-03-02")));
        assert_eq!(read_all(&files[0]).0, 1);
        assert_eq!(read_all(&files[1]).0, 3);
        assert_eq!(sink.pending_rows(), 0);
        assert_eq!(sink.oldest_pending_lsn(), None);
    }

    #[test]
    fn files_roll_at_max_rows_with_bounded_row_groups() {
        let dir = tempfile::tempdir().unwrap();
        let config = ParquetConfig {
            row_group_rows: 4,
            file_max_rows: 10,
            ..Default::default()
        };
        let mut sink = ParquetSink::open(dir.path(), config, "").unwrap();
        let now = Instant::now();
        let ts: Vec<i64> = (0..6).map(|i| 1_709_337_600_000 + i).collect();
        assert!(sink.write(&batch(&ts), Some(1), now).unwrap().is_empty());
        let done = sink.write(&batch(&ts), Some(2), now).unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(read_all(&done[0]), (12, 3));
        assert!(sink.close().unwrap().is_empty());
    }

    #[test]
    fn past_max_open_files_the_oldest_file_is_completed() {
        let dir = tempfile::tempdir().unwrap();
        let config = ParquetConfig {
            max_open_files: 2,
            ..Default::default()
        };
        let mut sink = ParquetSink::open(dir.path(), config, "").unwrap();
        let t0 = Instant::now();
        let day = |d: i64| 1_709_337_600_000 + d * DAY_MS;
        assert!(sink
            .write(&batch(&[day(0)]), Some(1), t0)
            .unwrap()
            .is_empty());
        assert!(sink
            .write(&batch(&[day(1)]), Some(2), t0 + Duration::from_millis(1))
            .unwrap()
            .is_empty());
        let done = sink
            .write(&batch(&[day(2)]), Some(3), t0 + Duration::from_millis(2))
            .unwrap();
        assert_eq!(done.len(), 1);
        assert!(done[0].starts_with(dir.path().join("readings/date=2024-03-02")));
        assert_eq!(sink.oldest_pending_lsn(), Some(2));
    }

    #[test]
    fn leftovers_of_a_crashed_run_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let day = dir.path().join("readings/date=2024-03-01");
        fs::create_dir_all(&day).unwrap();
        fs::write(day.join(".part-x-000000.parquet.tmp"), b"PAR1").unwrap();
        fs::write(day.join("part-x-000001.parquet"), b"keep").unwrap();
        ParquetSink::open(dir.path(), ParquetConfig::default(), "").unwrap();
        let names: Vec<_> = fs::read_dir(&day)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["part-x-000001.parquet".to_string()]);
    }

    #[test]
    fn a_node_removes_its_own_leftovers_only_and_names_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let day = dir.path().join("readings/date=2024-03-01");
        fs::create_dir_all(&day).unwrap();
        // Other nodes of a shared archive are writing these (`n1-8` starts like `n1-`).
        for other in ["n2", "n1-8"] {
            fs::write(
                day.join(format!(
                    ".part-{other}-20240301T000000000Z-000000.parquet.tmp"
                )),
                b"PAR1",
            )
            .unwrap();
        }
        fs::write(
            day.join(".part-n1-20240301T000000000Z-000000.parquet.tmp"),
            b"PAR1",
        )
        .unwrap();
        let mut sink = ParquetSink::open(dir.path(), ParquetConfig::default(), "n1").unwrap();
        let mut names: Vec<_> = fs::read_dir(&day)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec![
                ".part-n1-8-20240301T000000000Z-000000.parquet.tmp".to_string(),
                ".part-n2-20240301T000000000Z-000000.parquet.tmp".to_string()
            ]
        );
        sink.write(&batch(&[1_709_251_200_000]), Some(1), Instant::now())
            .unwrap();
        let done = sink.close().unwrap();
        let name = done[0].file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("part-n1-"), "{name}");
    }
}
