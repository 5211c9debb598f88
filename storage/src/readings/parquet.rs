//! The read model on the Parquet tree: `{data_dir}/readings/date=YYYY-MM-DD/*.parquet`, the
//! embedded default sink's layout (`crate::parquet`), with the crates already in the tree.
//!
//! How little it reads:
//! - only complete files: `*.parquet` not starting with `.` or `_` (the sink writes
//!   `.part-….parquet.tmp` and renames it when complete; `_`-files are other tools' markers);
//! - first the date folders of the window, and in them only the row groups whose `ts`
//!   statistics meet the window (and, for one meter, whose `meter_id` statistics hold it);
//! - then, for the series that still need the reading before the window, the row groups of
//!   the window's first day that lie before it, then whole folders backwards, one day at a
//!   time, only until every such series has found one (or the folders end, or the request's
//!   `before_since` is passed); and back to `silent_since` at least when series silent
//!   through the window are asked for; the same forwards for the reading after;
//! - only the columns meter_id, channel, ts, value, received_at and (in the window) unit;
//! - in the walks outwards, when at most [`BLOOM_MAX_METERS`] meters still look for their
//!   reading (typically meters installed in the period, which have none before it: they
//!   would make the walk read the whole history), only the row groups whose meter-id bloom
//!   filter (written by the sink) may hold one of them; a row group without a filter (files of
//!   other writers or of earlier versions) is read.
//!
//! A reading belongs to the folder of its UTC date (the sink's rule, which the backwards walk
//! relies on): a row in another date's folder is not read (counted, and warned once per
//! file). A file that cannot be read (cut short, corrupt, not Parquet) or that is not a file
//! of readings (a column missing, of another type, or null) stops the read with an error
//! naming it: an invoice must not leave readings out silently.
//!
//! Memory: the readings of the window, 24 bytes each (ts, value, received_at) plus the
//! series' keys; every series is sorted and delivered in (meter, channel) order once the
//! files are read, and dropped as it is delivered.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use ::parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use ::parquet::arrow::ProjectionMask;
use ::parquet::bloom_filter::Sbbf;
use ::parquet::file::metadata::RowGroupMetaData;
use ::parquet::file::statistics::Statistics;
use arrow_array::{Array, Float64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow_schema::{DataType, TimeUnit};

use super::{value_order, ReadRequest, Series};
use crate::StorageError;

const DAY_MS: i64 = 86_400_000;

/// Rows per decoded batch.
const BATCH_ROWS: usize = 64 * 1024;

/// The walks outwards skip row groups by their meter-id bloom filters while at most this many
/// meters still look for a reading. A filter answers "maybe" for an absent meter about 0.35 %
/// of the time (the sink's filters, folded to what they hold), so a row group is skipped with
/// odds 0.9965^N: 80 % for 64 meters, 3 % for 1000. Beyond this many the check costs more
/// than it saves, and the walk is bounded by `billing.max_silence` instead.
pub(crate) const BLOOM_MAX_METERS: usize = 64;

/// Reads the series of `req` from the Parquet tree under `data_dir` and hands each to
/// `each`, in (meter_id, channel) byte order; stops at the first error, `each`'s included.
/// A `data_dir` without a `readings` folder is an error (a wrong `--data-dir` must not bill
/// nothing).
pub fn read<E: From<StorageError>>(
    data_dir: &Path,
    req: &ReadRequest,
    each: impl FnMut(Series) -> Result<(), E>,
) -> Result<(), E> {
    read_counted(data_dir, req, each).map(|_| ())
}

/// What a read looked at: how little it read, for the tests and the debug log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Scanned {
    /// The date folders read from, as Unix days, in the order read.
    pub days: Vec<i64>,
    pub files: usize,
    pub row_groups_read: usize,
    pub row_groups_skipped: usize,
    /// Rows in a folder of another date than their own: not read.
    pub stray_rows: usize,
}

/// [`read`], saying what it looked at.
pub(crate) fn read_counted<E: From<StorageError>>(
    data_dir: &Path,
    req: &ReadRequest,
    mut each: impl FnMut(Series) -> Result<(), E>,
) -> Result<Scanned, E> {
    req.validate()?;
    let root = data_dir.join("readings");
    let tree = list_tree(&root)?;
    let (lo, hi) = req.window();
    let (first_day, last_day) = (lo.div_euclid(DAY_MS), hi.div_euclid(DAY_MS));
    let mut scan = Scan {
        req,
        acc: Acc::default(),
        scanned: Scanned::default(),
    };

    // 1. The window's folders; row groups wholly before or after the window wait.
    let mut before_groups = Vec::new();
    let mut after_groups = Vec::new();
    for (&day, files) in tree.range(first_day..=last_day) {
        scan.scanned.days.push(day);
        for path in files {
            let file = DataFile::open(path, day)?;
            let mut now = Vec::new();
            for (g, meta) in file.row_groups() {
                if !file.may_hold_meter(meta, req) {
                    scan.scanned.row_groups_skipped += 1;
                    continue;
                }
                match file.ts_range(meta) {
                    Some((_, max)) if max < lo => before_groups.push((file.path.clone(), day, g)),
                    Some((min, _)) if min > hi => after_groups.push((file.path.clone(), day, g)),
                    _ => now.push(g),
                }
            }
            scan.file(&file, now, Pass::Window)?;
        }
    }

    // 2. The reading before the window, for the series without one in [lo, from): the
    //    first day's row groups before the window, then whole folders backwards (to
    //    `before_since` at most, and to `silent_since` at least).
    let floor_day = req.before_floor().div_euclid(DAY_MS);
    let silent_day = req.silent_since_ms.map(|s| s.div_euclid(DAY_MS));
    scan.neighbours(
        Pass::Before,
        before_groups,
        tree.range(floor_day.min(first_day)..first_day).rev(),
        silent_day,
        |s| req.needs_before(s.min_ts),
        |s| s.before.is_some(),
    )?;
    // 3. The reading after the window, for the series without one in [to, hi]: the last
    //    day's row groups after the window, then whole folders forwards.
    scan.neighbours(
        Pass::After,
        after_groups,
        tree.range(last_day.saturating_add(1)..),
        None,
        |s| req.needs_after(s.max_ts),
        |s| s.after.is_some(),
    )?;

    let Scan { acc, scanned, .. } = scan;
    tracing::debug!(?scanned, series = acc.series.len(), "read the Parquet tree");
    acc.deliver(req, &mut each)?;
    Ok(scanned)
}

/// The complete files of the date folders under `root` that a period `[from, to)` (Unix
/// ms; `None`: all) reaches, oldest day first; none when there is no `root`.
pub(crate) fn period_files(
    root: &Path,
    period: Option<(i64, i64)>,
) -> Result<Vec<PathBuf>, StorageError> {
    if !root.is_dir() {
        return Ok(Vec::new());
    }
    let (first, last) = match period {
        Some((from, to)) => (from.div_euclid(DAY_MS), to.div_euclid(DAY_MS)),
        None => (i64::MIN, i64::MAX),
    };
    Ok(list_tree(root)?
        .range(first..=last)
        .flat_map(|(_, files)| files.iter().cloned())
        .collect())
}

/// The complete files of each date folder, by Unix day.
pub(crate) fn list_tree(root: &Path) -> Result<BTreeMap<i64, Vec<PathBuf>>, StorageError> {
    let mut tree: BTreeMap<i64, Vec<PathBuf>> = BTreeMap::new();
    let entries = fs::read_dir(root).map_err(|e| StorageError::io("listing", root, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io("listing", root, e))?;
        let name = entry.file_name();
        let Some(day) = name.to_str().and_then(folder_day) else {
            continue;
        };
        let dir = entry.path();
        if !dir.is_dir() {
            continue;
        }
        let files = fs::read_dir(&dir).map_err(|e| StorageError::io("listing", &dir, e))?;
        let mut complete = Vec::new();
        for f in files {
            let f = f.map_err(|e| StorageError::io("listing", &dir, e))?;
            let name = f.file_name();
            let name = name.to_string_lossy();
            if is_complete_file(&name) {
                complete.push(f.path());
            }
        }
        complete.sort();
        tree.entry(day).or_default().extend(complete);
    }
    Ok(tree)
}

/// `date=YYYY-MM-DD` as a Unix day.
fn folder_day(name: &str) -> Option<i64> {
    let date = name.strip_prefix("date=")?;
    let b = date.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |s: &str| {
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let date = chrono::NaiveDate::from_ymd_opt(
        num(date.get(..4)?)?,
        u32::try_from(num(date.get(5..7)?)?).ok()?,
        u32::try_from(num(date.get(8..)?)?).ok()?,
    )?;
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
    Some(date.signed_duration_since(epoch).num_days())
}

/// A file a writer has completed: `*.parquet`, not hidden (`.part-….parquet.tmp` is being
/// written; `_SUCCESS`-style names are other tools' markers).
fn is_complete_file(name: &str) -> bool {
    name.ends_with(".parquet") && !name.starts_with('.') && !name.starts_with('_')
}

/// Runs the decoder on one file (or one of its row groups): the parquet crate panics on some
/// corrupt files (a negative column length, a division by zero, found by flipping single
/// bytes of a file the sink wrote), and such a file must be an error naming it, not the end
/// of the process. The panic's message still reaches the log through the panic hook.
pub(crate) fn guarded<T>(
    path: &Path,
    row_group: Option<usize>,
    decode: impl FnOnce() -> Result<T, StorageError>,
) -> Result<T, StorageError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)).unwrap_or_else(|panic| {
        let text = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("no message");
        Err(StorageError::ParquetRead {
            path: path.to_path_buf(),
            row_group,
            source: ::parquet::errors::ParquetError::General(format!(
                "the decoder gave up on it ({text})"
            )),
        })
    })
}

/// One file, its footer read and its columns checked.
struct DataFile {
    path: PathBuf,
    /// The Unix day of its folder.
    day: i64,
    /// Its footer, decoded once for every row group read.
    reader: ArrowReaderMetadata,
    /// Leaf (= root: the schema is flat) index of each needed column.
    columns: Columns,
    /// The open file, for its bloom filters.
    handle: File,
}

#[derive(Debug, Clone, Copy)]
struct Columns {
    meter_id: usize,
    channel: usize,
    ts: usize,
    value: usize,
    unit: usize,
    received_at: usize,
}

impl DataFile {
    fn open(path: &Path, day: i64) -> Result<DataFile, StorageError> {
        let file = File::open(path).map_err(|e| StorageError::io("opening", path, e))?;
        let reader = guarded(path, None, || {
            ArrowReaderMetadata::load(&file, ArrowReaderOptions::default()).map_err(|source| {
                StorageError::ParquetRead {
                    path: path.to_path_buf(),
                    row_group: None,
                    source,
                }
            })
        })?;
        let schema = reader.schema().clone();
        let foreign = |reason: String| StorageError::ForeignParquet {
            path: path.to_path_buf(),
            reason,
        };
        let find = |name: &str, ok: &dyn Fn(&DataType) -> bool, wanted: &str| {
            let (i, field) = schema
                .column_with_name(name)
                .ok_or_else(|| foreign(format!("no column {name}")))?;
            if !ok(field.data_type()) {
                return Err(foreign(format!(
                    "column {name} is {}, not {wanted}",
                    field.data_type()
                )));
            }
            // A flat schema: the leaf of a top-level column has its index (checked).
            let leaf = reader
                .parquet_schema()
                .columns()
                .iter()
                .position(|c| c.path().parts() == [name]);
            if leaf != Some(i) {
                return Err(foreign(format!("column {name} is nested")));
            }
            Ok(i)
        };
        let utf8 = |t: &DataType| *t == DataType::Utf8;
        let millis = |t: &DataType| matches!(t, DataType::Timestamp(TimeUnit::Millisecond, _));
        let float = |t: &DataType| *t == DataType::Float64;
        let columns = Columns {
            meter_id: find("meter_id", &utf8, "Utf8")?,
            channel: find("channel", &utf8, "Utf8")?,
            ts: find("ts", &millis, "Timestamp(ms)")?,
            value: find("value", &float, "Float64")?,
            unit: find("unit", &utf8, "Utf8")?,
            received_at: find("received_at", &millis, "Timestamp(ms)")?,
        };
        Ok(DataFile {
            path: path.to_path_buf(),
            day,
            reader,
            columns,
            handle: file,
        })
    }

    fn row_groups(&self) -> impl Iterator<Item = (usize, &RowGroupMetaData)> {
        self.reader.metadata().row_groups().iter().enumerate()
    }

    /// `[min, max]` of `ts` in a row group, when its statistics say.
    fn ts_range(&self, meta: &RowGroupMetaData) -> Option<(i64, i64)> {
        match meta.columns().get(self.columns.ts)?.statistics()? {
            Statistics::Int64(s) => Some((*s.min_opt()?, *s.max_opt()?)),
            _ => None,
        }
    }

    /// Whether row group `g` may hold rows of one of `meters`, by its meter-id bloom filter:
    /// always when it has none or the filter cannot be read (the rows are then read, and a
    /// damaged file is reported by that read).
    fn may_hold_any(&self, meta: &RowGroupMetaData, meters: &[String]) -> bool {
        let Some(column) = meta.columns().get(self.columns.meter_id) else {
            return true;
        };
        if column.bloom_filter_offset().is_none() {
            return true;
        }
        let filter = guarded(&self.path, None, || {
            Sbbf::read_from_column_chunk(column, &self.handle).map_err(|source| {
                StorageError::ParquetRead {
                    path: self.path.clone(),
                    row_group: None,
                    source,
                }
            })
        });
        match filter {
            Ok(Some(filter)) => meters.iter().any(|m| filter.check(m.as_str())),
            Ok(None) | Err(_) => true,
        }
    }

    /// Whether a row group may hold rows of the request's meter (always, for all meters), by
    /// its statistics (truncated ones are still bounds) and its bloom filter.
    fn may_hold_meter(&self, meta: &RowGroupMetaData, req: &ReadRequest) -> bool {
        let Some(meter) = &req.meter else {
            return true;
        };
        if !self.may_hold_any(meta, std::slice::from_ref(meter)) {
            return false;
        }
        let Some(Statistics::ByteArray(s)) = meta
            .columns()
            .get(self.columns.meter_id)
            .and_then(|c| c.statistics())
        else {
            return true;
        };
        let m = meter.as_bytes();
        s.min_opt().is_none_or(|min| min.data() <= m)
            && s.max_opt().is_none_or(|max| m <= max.data())
    }
}

/// Which rows a pass takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// The window's folders: rows in the window for every series (new ones too), and rows
    /// outside it as candidates for the readings before and after.
    Window,
    /// Rows before the window, of series already known.
    Before,
    /// Rows after the window, of series already known.
    After,
}

impl Pass {
    /// Whether the pass reads the unit: the window's, and the one before the window (a
    /// silent series' unit is its reading's; a reading before the window in another unit
    /// than the window's is one of the series' `other_units`).
    fn reads_unit(self) -> bool {
        match self {
            Pass::Window | Pass::Before => true,
            Pass::After => false,
        }
    }
}

struct Scan<'a> {
    req: &'a ReadRequest,
    acc: Acc,
    scanned: Scanned,
}

impl Scan<'_> {
    /// A neighbour pass: for the series that `need` one, the row groups set aside by the
    /// window's pass, then whole `folders` in the order given (outwards) until every such
    /// series has `found` it or the folders end; backwards, to the folder of `silent_day` at
    /// least (series silent through the window are looked for there).
    fn neighbours<'f>(
        &mut self,
        pass: Pass,
        groups: Vec<(PathBuf, i64, usize)>,
        folders: impl Iterator<Item = (&'f i64, &'f Vec<PathBuf>)>,
        silent_day: Option<i64>,
        need: impl Fn(&SeriesAcc) -> bool,
        found: impl Fn(&SeriesAcc) -> bool,
    ) -> Result<(), StorageError> {
        let mut pending = self.acc.pending(need);
        if pending.is_empty() && silent_day.is_none() {
            return Ok(());
        }
        for (path, day, g) in groups {
            let file = DataFile::open(&path, day)?;
            self.file(&file, vec![g], pass)?;
        }
        self.acc.settle(&mut pending, &found);
        for (&day, files) in folders {
            let looks_for_silent = silent_day.is_some_and(|s| day >= s);
            if pending.is_empty() && !looks_for_silent {
                break;
            }
            // Few meters still looking, and no silent series to find here: only the row
            // groups their bloom filters may hold.
            let meters = (!looks_for_silent)
                .then(|| self.acc.meters_of(&pending, BLOOM_MAX_METERS))
                .flatten();
            self.folder(day, files, pass, meters.as_deref())?;
            self.acc.settle(&mut pending, &found);
        }
        Ok(())
    }

    /// Every row group of a folder that may hold the request's meter (and, given `meters`,
    /// one of them by its bloom filter).
    fn folder(
        &mut self,
        day: i64,
        files: &[PathBuf],
        pass: Pass,
        meters: Option<&[String]>,
    ) -> Result<(), StorageError> {
        self.scanned.days.push(day);
        for path in files {
            let file = DataFile::open(path, day)?;
            let mut groups = Vec::new();
            for (g, meta) in file.row_groups() {
                let wanted = file.may_hold_meter(meta, self.req)
                    && meters.is_none_or(|meters| file.may_hold_any(meta, meters));
                if wanted {
                    groups.push(g);
                } else {
                    self.scanned.row_groups_skipped += 1;
                }
            }
            self.file(&file, groups, pass)?;
        }
        Ok(())
    }

    /// Reads `groups` of `file` into the accumulator.
    fn file(
        &mut self,
        file: &DataFile,
        groups: Vec<usize>,
        pass: Pass,
    ) -> Result<(), StorageError> {
        self.scanned.files += 1;
        if groups.is_empty() {
            return Ok(());
        }
        let error = |row_group: Option<usize>| {
            let path = file.path.clone();
            move |source| StorageError::ParquetRead {
                path,
                row_group,
                source,
            }
        };
        let c = file.columns;
        let mut wanted = vec![c.meter_id, c.channel, c.ts, c.value, c.received_at];
        if pass.reads_unit() {
            wanted.push(c.unit);
        }
        let mask = ProjectionMask::roots(file.reader.parquet_schema(), wanted);
        let stray_before = self.scanned.stray_rows;
        for g in groups {
            self.scanned.row_groups_read += 1;
            // One row group at a time, so that an error names it.
            let handle =
                File::open(&file.path).map_err(|e| StorageError::io("opening", &file.path, e))?;
            guarded(&file.path, Some(g), || {
                let reader =
                    ParquetRecordBatchReaderBuilder::new_with_metadata(handle, file.reader.clone())
                        .with_projection(mask.clone())
                        .with_row_groups(vec![g])
                        .with_batch_size(BATCH_ROWS)
                        .build()
                        .map_err(error(Some(g)))?;
                for batch in reader {
                    let batch = batch.map_err(|e| StorageError::ParquetRead {
                        path: file.path.clone(),
                        row_group: Some(g),
                        source: e.into(),
                    })?;
                    let rows = Rows::of(&batch, pass.reads_unit(), &file.path)?;
                    self.rows(&rows, file.day, pass);
                }
                Ok(())
            })?;
        }
        let stray = self.scanned.stray_rows - stray_before;
        if stray > 0 {
            tracing::warn!(
                path = %file.path.display(),
                rows = stray,
                "rows outside the UTC date of their folder are not read"
            );
        }
        Ok(())
    }

    fn rows(&mut self, rows: &Rows<'_>, day: i64, pass: Pass) {
        let (lo, hi) = self.req.window();
        let floor = self.req.before_floor();
        let day_start = day.saturating_mul(DAY_MS);
        let day_end = day_start.saturating_add(DAY_MS - 1);
        let channels = self.req.channels;
        // The last (meter, channel) looked up, and its series: rows of one message are
        // together, so most rows skip the hash.
        let mut last: Option<(usize, usize)> = None; // (row, series) of the last lookup
        let mut channel_ok: Option<(usize, bool)> = None;
        for i in 0..rows.len() {
            let ts = rows.ts.value(i);
            if ts < day_start || ts > day_end {
                self.scanned.stray_rows += 1;
                continue;
            }
            let place = if ts < lo {
                Pass::Before
            } else if ts > hi {
                Pass::After
            } else {
                Pass::Window
            };
            if pass != Pass::Window && place != pass {
                continue;
            }
            if place == Pass::Before && ts < floor {
                continue;
            }
            let value = rows.value.value(i);
            if !value.is_finite() {
                continue;
            }
            let meter = rows.meter_id.value(i);
            let channel = rows.channel.value(i);
            let same_key = last.is_some_and(|(j, _)| {
                rows.meter_id.value(j) == meter && rows.channel.value(j) == channel
            });
            let series = if same_key {
                last.map(|(_, s)| s)
            } else {
                let ok = match channel_ok {
                    Some((j, ok)) if rows.channel.value(j) == channel => ok,
                    _ => {
                        let ok = channels.matches(channel);
                        channel_ok = Some((i, ok));
                        ok
                    }
                };
                if !ok || !self.req.wants_meter(meter) {
                    continue;
                }
                // The window's pass keeps every series (rows before the window may be a
                // silent series' reading); the before pass adds the silent ones it finds.
                let found = if pass == Pass::Window
                    || (pass == Pass::Before && self.req.delivers_silent(ts))
                {
                    Some(self.acc.find_or_insert(meter, channel))
                } else {
                    self.acc.find(meter, channel)
                };
                if let Some(s) = found {
                    last = Some((i, s));
                }
                found
            };
            let Some(s) = series else { continue };
            let copy = Copy {
                ts,
                received_at: rows.received_at.value(i),
                value,
            };
            let entry = &mut self.acc.series[s];
            match place {
                Pass::Window => {
                    let unit = rows.unit.map_or("", |u| u.value(i));
                    entry.add(copy, unit);
                }
                Pass::Before => {
                    // The greatest copy before the window, with its unit (a silent series'
                    // unit; for the others, checked against the window's).
                    let unit = rows.unit.map_or("", |u| u.value(i));
                    keep_newest(&mut entry.before, copy, unit);
                }
                Pass::After => {
                    if entry.after.is_none_or(|a| copy.first_after(&a)) {
                        entry.after = Some(copy);
                    }
                }
            }
        }
    }
}

/// The columns of a decoded batch.
struct Rows<'a> {
    meter_id: &'a StringArray,
    channel: &'a StringArray,
    ts: &'a TimestampMillisecondArray,
    value: &'a Float64Array,
    received_at: &'a TimestampMillisecondArray,
    /// When the pass reads it ([`Pass::reads_unit`]).
    unit: Option<&'a StringArray>,
}

impl<'a> Rows<'a> {
    fn of(batch: &'a RecordBatch, unit: bool, path: &Path) -> Result<Rows<'a>, StorageError> {
        fn column<'b, T: 'static>(
            batch: &'b RecordBatch,
            name: &str,
            path: &Path,
        ) -> Result<&'b T, StorageError> {
            let foreign = |reason: String| StorageError::ForeignParquet {
                path: path.to_path_buf(),
                reason,
            };
            let array = batch
                .column_by_name(name)
                .ok_or_else(|| foreign(format!("no column {name}")))?;
            if array.null_count() > 0 {
                return Err(foreign(format!("column {name} has nulls")));
            }
            array
                .as_any()
                .downcast_ref::<T>()
                .ok_or_else(|| foreign(format!("column {name} is {}", array.data_type())))
        }
        Ok(Rows {
            meter_id: column(batch, "meter_id", path)?,
            channel: column(batch, "channel", path)?,
            ts: column(batch, "ts", path)?,
            value: column(batch, "value", path)?,
            received_at: column(batch, "received_at", path)?,
            unit: match unit {
                true => Some(column(batch, "unit", path)?),
                false => None,
            },
        })
    }

    fn len(&self) -> usize {
        self.ts.len()
    }
}

/// One copy of a reading, as the choice between copies needs it.
#[derive(Debug, Clone, Copy)]
struct Copy {
    ts: i64,
    received_at: i64,
    value: f64,
}

impl Copy {
    /// By time, then (for copies of one reading) the one that counts is the greater.
    fn order(&self, other: &Copy) -> Ordering {
        self.ts
            .cmp(&other.ts)
            .then(self.received_at.cmp(&other.received_at))
            .then(value_order(self.value, other.value))
    }

    /// Whether this is a better "first reading after" than `other`: earlier, or at the
    /// same time the copy that counts.
    fn first_after(&self, other: &Copy) -> bool {
        match self.ts.cmp(&other.ts) {
            Ordering::Less => true,
            Ordering::Greater => false,
            Ordering::Equal => self.order(other) == Ordering::Greater,
        }
    }
}

/// One series being gathered.
#[derive(Debug)]
struct SeriesAcc {
    meter_id: String,
    channel: String,
    /// Copies in the window, unsorted.
    points: Vec<Copy>,
    min_ts: i64,
    max_ts: i64,
    /// The copy that counts at the newest time in the window, and its unit.
    newest: Option<(Copy, String)>,
    /// Every unit of the window's copies, as first seen.
    units: Vec<String>,
    /// The copy that counts of the last reading before the window, and its unit.
    before: Option<(Copy, String)>,
    after: Option<Copy>,
}

/// Keeps `copy` (with its unit) in `newest` if it is the one that counts at the newest time:
/// a later reading, or of one reading the copy that wins ([`Copy::order`]; between equal
/// copies the greater unit).
fn keep_newest(newest: &mut Option<(Copy, String)>, copy: Copy, unit: &str) {
    let newer = match newest {
        None => true,
        Some((n, u)) => match copy.order(n) {
            Ordering::Greater => true,
            Ordering::Less => false,
            Ordering::Equal => unit > u.as_str(),
        },
    };
    if !newer {
        return;
    }
    match newest {
        Some((n, u)) => {
            *n = copy;
            if u != unit {
                u.clear();
                u.push_str(unit);
            }
        }
        None => *newest = Some((copy, unit.to_string())),
    }
}

impl SeriesAcc {
    fn add(&mut self, copy: Copy, unit: &str) {
        if !self.units.iter().any(|u| u == unit) {
            self.units.push(unit.to_string());
        }
        self.min_ts = self.min_ts.min(copy.ts);
        self.max_ts = self.max_ts.max(copy.ts);
        self.points.push(copy);
        keep_newest(&mut self.newest, copy, unit);
    }

    /// The series as delivered: the window's readings, one per time, and the neighbours
    /// the request gives it.
    fn finish(self, req: &ReadRequest) -> Option<Series> {
        let SeriesAcc {
            meter_id,
            channel,
            mut points,
            min_ts,
            max_ts,
            newest,
            before,
            after,
            units,
        } = self;
        if points.is_empty() {
            // Silent through the window: its last reading before it, when recent enough.
            let (b, unit) = before.filter(|(b, _)| req.delivers_silent(b.ts))?;
            return Some(Series {
                meter_id,
                channel,
                unit,
                points: vec![(b.ts, b.value)],
                other_units: Vec::new(),
                received_at: vec![b.received_at],
                conflicts: Vec::new(),
            });
        }
        let (_, unit) = newest?;
        let mut units = units;
        points.sort_unstable_by(Copy::order);
        let mut out: Vec<(i64, f64)> = Vec::with_capacity(points.len() + 2);
        let mut received: Vec<i64> = Vec::with_capacity(points.len() + 2);
        let mut conflicts: Vec<(i64, Vec<f64>)> = Vec::new();
        if let Some((b, b_unit)) =
            before.filter(|(b, _)| req.needs_before(min_ts) && req.may_be_before(b.ts))
        {
            out.push((b.ts, b.value));
            received.push(b.received_at);
            if !units.contains(&b_unit) {
                units.push(b_unit);
            }
        }
        // The distinct values of the copies of the time being read.
        let mut copies: Vec<f64> = Vec::new();
        let mut close = |ts: i64, copies: &mut Vec<f64>| {
            if copies.len() > 1 {
                copies.sort_unstable_by(|a, b| value_order(*a, *b));
                conflicts.push((ts, std::mem::take(copies)));
            }
            copies.clear();
        };
        let window_from = out.len();
        for p in points {
            // Sorted: the last copy of each time is the one that counts.
            let in_window = out.len() > window_from;
            match out.last_mut() {
                Some(last) if last.0 == p.ts && in_window => {
                    last.1 = p.value;
                    if let Some(r) = received.last_mut() {
                        *r = p.received_at;
                    }
                }
                _ => {
                    if let Some(&(ts, _)) = out.last().filter(|_| out.len() > window_from) {
                        close(ts, &mut copies);
                    }
                    out.push((p.ts, p.value));
                    received.push(p.received_at);
                }
            }
            if !copies
                .iter()
                .any(|v| value_order(*v, p.value) == Ordering::Equal)
            {
                copies.push(p.value);
            }
        }
        if let Some(&(ts, _)) = out.last().filter(|_| out.len() > window_from) {
            close(ts, &mut copies);
        }
        if let Some(a) = after.filter(|_| req.needs_after(max_ts)) {
            out.push((a.ts, a.value));
            received.push(a.received_at);
        }
        let mut other_units: Vec<String> = units.into_iter().filter(|u| *u != unit).collect();
        other_units.sort_unstable();
        Some(Series {
            meter_id,
            channel,
            unit,
            points: out,
            other_units,
            received_at: received,
            conflicts,
        })
    }
}

/// Every series seen, by meter and channel.
#[derive(Default)]
struct Acc {
    index: HashMap<String, HashMap<String, usize>>,
    series: Vec<SeriesAcc>,
}

impl Acc {
    fn find(&self, meter: &str, channel: &str) -> Option<usize> {
        self.index.get(meter)?.get(channel).copied()
    }

    fn find_or_insert(&mut self, meter: &str, channel: &str) -> usize {
        if let Some(s) = self.find(meter, channel) {
            return s;
        }
        let s = self.series.len();
        self.series.push(SeriesAcc {
            meter_id: meter.to_string(),
            channel: channel.to_string(),
            points: Vec::new(),
            min_ts: i64::MAX,
            max_ts: i64::MIN,
            newest: None,
            before: None,
            after: None,
            units: Vec::new(),
        });
        self.index
            .entry(meter.to_string())
            .or_default()
            .insert(channel.to_string(), s);
        s
    }

    /// The series with readings in the window that `need` a neighbour.
    fn pending(&self, need: impl Fn(&SeriesAcc) -> bool) -> Vec<usize> {
        (0..self.series.len())
            .filter(|&s| !self.series[s].points.is_empty() && need(&self.series[s]))
            .collect()
    }

    /// The meters of the `pending` series, when there are at most `max` of them.
    fn meters_of(&self, pending: &[usize], max: usize) -> Option<Vec<String>> {
        let mut meters: Vec<&str> = pending
            .iter()
            .map(|&s| self.series[s].meter_id.as_str())
            .collect();
        meters.sort_unstable();
        meters.dedup();
        (meters.len() <= max).then(|| meters.into_iter().map(str::to_string).collect())
    }

    /// Drops from `pending` the series that have `found` theirs.
    fn settle(&self, pending: &mut Vec<usize>, found: impl Fn(&SeriesAcc) -> bool) {
        pending.retain(|&s| !found(&self.series[s]));
    }

    /// Hands every series with readings in the window (and every silent one asked for) to
    /// `each`, in (meter, channel) order.
    fn deliver<E: From<StorageError>>(
        self,
        req: &ReadRequest,
        each: &mut impl FnMut(Series) -> Result<(), E>,
    ) -> Result<(), E> {
        drop(self.index);
        let mut series: Vec<SeriesAcc> = self
            .series
            .into_iter()
            .filter(|s| {
                !s.points.is_empty()
                    || s.before
                        .as_ref()
                        .is_some_and(|(b, _)| req.delivers_silent(b.ts))
            })
            .collect();
        series.sort_unstable_by(|a, b| {
            (a.meter_id.as_bytes(), a.channel.as_bytes())
                .cmp(&(b.meter_id.as_bytes(), b.channel.as_bytes()))
        });
        for s in series {
            if let Some(s) = s.finish(req) {
                each(s)?;
            }
        }
        Ok(())
    }
}

/// The summary of every channel (all channels, all meters or one) of the readings with `ts`
/// before `req.before_ms` (all when `None`), read from every date folder up to that day,
/// in (meter_id, channel) byte order: what [`super::summary`] gives.
pub(crate) fn summaries(
    data_dir: &Path,
    req: &super::summary::SummaryRequest,
) -> Result<Vec<super::summary::ChannelSummary>, StorageError> {
    req.validate()?;
    let root = data_dir.join("readings");
    let tree = list_tree(&root)?;
    let before = req.before_ms.unwrap_or(i64::MAX);
    let last_day = before.saturating_sub(1).div_euclid(DAY_MS);
    let since = req.since_ms.unwrap_or(i64::MIN);
    let first_day = since.div_euclid(DAY_MS);
    // The meter filter as the read model's request has it.
    let filter = ReadRequest {
        from_ms: 0,
        to_ms: 0,
        margin_ms: 0,
        meter: req.meter.clone(),
        channels: super::Channels::CumulativeRegisters,
        neighbours: super::Neighbours::None,
        before_since_ms: None,
        silent_since_ms: None,
    };
    let mut index: HashMap<(String, String), usize> = HashMap::new();
    let mut acc: Vec<ChannelAcc> = Vec::new();
    let mut stray = 0usize;
    // The (channel, ts) of one date folder, when counting: a reading's copies are all in the
    // folder of its date (rows outside it are not read), so one folder's set counts them.
    let mut day_times: std::collections::HashSet<(usize, i64)> = Default::default();
    for (&day, files) in tree.range(first_day..=last_day.max(first_day)) {
        for &(s, _) in &day_times {
            acc[s].readings += 1;
        }
        day_times.clear();
        let day_start = day.saturating_mul(DAY_MS);
        let day_end = day_start.saturating_add(DAY_MS - 1);
        for path in files {
            let file = DataFile::open(path, day)?;
            let groups: Vec<usize> = file
                .row_groups()
                .filter(|(_, meta)| {
                    file.may_hold_meter(meta, &filter)
                        && file
                            .ts_range(meta)
                            .is_none_or(|(min, max)| min < before && max >= since)
                })
                .map(|(g, _)| g)
                .collect();
            if groups.is_empty() {
                continue;
            }
            let c = file.columns;
            let mask = ProjectionMask::roots(
                file.reader.parquet_schema(),
                vec![c.meter_id, c.channel, c.ts, c.value, c.unit, c.received_at],
            );
            for g in groups {
                let handle = File::open(&file.path)
                    .map_err(|e| StorageError::io("opening", &file.path, e))?;
                guarded(&file.path, Some(g), || {
                    let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(
                        handle,
                        file.reader.clone(),
                    )
                    .with_projection(mask.clone())
                    .with_row_groups(vec![g])
                    .with_batch_size(BATCH_ROWS)
                    .build()
                    .map_err(|source| StorageError::ParquetRead {
                        path: file.path.clone(),
                        row_group: Some(g),
                        source,
                    })?;
                    for batch in reader {
                        let batch = batch.map_err(|e| StorageError::ParquetRead {
                            path: file.path.clone(),
                            row_group: Some(g),
                            source: e.into(),
                        })?;
                        let rows = Rows::of(&batch, true, &file.path)?;
                        for i in 0..rows.len() {
                            let ts = rows.ts.value(i);
                            if ts < day_start || ts > day_end {
                                stray += 1;
                                continue;
                            }
                            let meter = rows.meter_id.value(i);
                            if ts >= before || ts < since || !filter.wants_meter(meter) {
                                continue;
                            }
                            if !rows.value.value(i).is_finite() {
                                continue;
                            }
                            let channel = rows.channel.value(i);
                            let key = (meter.to_string(), channel.to_string());
                            let s = match index.get(&key) {
                                Some(&s) => s,
                                None => {
                                    acc.push(ChannelAcc {
                                        readings: 0,
                                        last_received: i64::MIN,
                                        newest: None,
                                    });
                                    index.insert(key, acc.len() - 1);
                                    acc.len() - 1
                                }
                            };
                            let copy = Copy {
                                ts,
                                received_at: rows.received_at.value(i),
                                value: rows.value.value(i),
                            };
                            let unit = rows.unit.map_or("", |u| u.value(i));
                            acc[s].add(copy, unit);
                            if req.count {
                                day_times.insert((s, ts));
                            }
                        }
                    }
                    Ok(())
                })?;
            }
        }
    }
    for &(s, _) in &day_times {
        acc[s].readings += 1;
    }
    drop(day_times);
    if stray > 0 {
        tracing::warn!(
            rows = stray,
            "rows outside the UTC date of their folder are not read"
        );
    }
    let mut out: Vec<super::summary::ChannelSummary> = index
        .into_iter()
        .filter_map(|((meter_id, channel), s)| {
            let (newest, unit) = acc[s].newest.take()?;
            Some(super::summary::ChannelSummary {
                meter_id,
                channel,
                unit,
                readings: acc[s].readings,
                last_ts_ms: newest.ts,
                last_value: newest.value,
                last_received_ms: acc[s].last_received,
            })
        })
        .collect();
    out.sort_unstable_by(|a, b| {
        (a.meter_id.as_bytes(), a.channel.as_bytes())
            .cmp(&(b.meter_id.as_bytes(), b.channel.as_bytes()))
    });
    Ok(out)
}

/// One channel's summary being gathered.
struct ChannelAcc {
    /// Readings counted in the date folders before the current one.
    readings: u64,
    last_received: i64,
    /// The copy that counts at the newest time, and its unit.
    newest: Option<(Copy, String)>,
}

impl ChannelAcc {
    fn add(&mut self, copy: Copy, unit: &str) {
        self.last_received = self.last_received.max(copy.received_at);
        keep_newest(&mut self.newest, copy, unit);
    }
}

#[cfg(test)]
mod tests;
