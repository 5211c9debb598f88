//! `meterflow import`: history a utility already has (meterflow's own Parquet tree, CSV
//! exports of a legacy head-end) loaded through the same sinks and checks as live data.
//!
//! - [`csv`]: the CSV mapping (`--map` or a TOML file), local times in an IANA zone, scale and
//!   unit conversion; one row at a time, each a reading or a bad row with its line and reason.
//! - this module: finding the files, reading Parquet, the chunks, the sink (the ClickHouse
//!   writer of `serve`, or Parquet under the data folder), dead letters, the progress record
//!   that makes an interrupted import resumable, and the progress bar.
//!
//! Rows become `source = 'import'`; CSV rows have `format = 'csv'`, Parquet rows keep theirs.
//! A row that fails the live checks (meter id, channel and unit length, a finite value, time
//! from 2000-01-01 to now + 1 day) is a dead letter (`kind = bad_row`, the file as topic,
//! `line N: reason`, the raw row), in the data folder and, with ClickHouse, in `dead_letters`.
//!
//! Resuming: each file is read in chunks of `CHUNK_ROWS` input rows. Once a chunk is in the
//! sink (ClickHouse confirmed it; its Parquet files are complete), the file's position is
//! saved in `{data_dir}/import/progress.json`, keyed by the target and the file's path, size
//! and modification time. A rerun skips finished files and starts the others at their saved
//! position. What an interrupted run wrote past it is written again identically: ClickHouse's
//! ReplacingMergeTree keeps one copy (the CSV rows' `received_at` is saved with the file, so
//! both copies are the same row), and Parquet files are named by file and chunk, so the
//! second copy replaces the first.

pub mod csv;

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use meterflow_ingest::Config;
use meterflow_proto::{ReadingBatchBuilder, ReadingColumns, TextRow};
use meterflow_storage::clickhouse::ClickHouseWriter;
use meterflow_storage::dead_letter::rows_as_json_lines;
use meterflow_storage::sinks::confirmed_through;
use meterflow_storage::{
    DeadLetter, DeadLetterStore, ParquetSink, ShutdownSignal, SinkBatch, SinkSet,
};
use serde::{Deserialize, Serialize};

use self::csv::{CsvOptions, CsvReader};

/// Input rows per chunk: the unit of progress (and of one Parquet file set, or one job for
/// the ClickHouse writer, which merges waiting jobs into larger inserts).
pub const CHUNK_ROWS: u64 = 100_000;

/// What `meterflow import` was asked to do.
pub struct ImportOptions {
    /// Files and folders (searched for `*.parquet` and `*.csv`).
    pub paths: Vec<PathBuf>,
    /// How CSV files map to readings; `None`: a CSV file is an error.
    pub csv: Option<CsvOptions>,
    /// Forget the recorded progress and import every file from its start.
    pub restart: bool,
    /// Draw a progress bar (standard error is a terminal); else log lines.
    pub bar: bool,
}

/// What an import did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ImportSummary {
    /// Where the rows went.
    pub target: String,
    /// Files read to their end in this run.
    pub files: u64,
    /// Files an earlier run had finished (skipped).
    pub files_already_done: u64,
    /// Files that could not be read (named in the log); the others went on.
    pub files_failed: u64,
    /// Rows written in this run.
    pub rows: u64,
    /// Bad rows kept as dead letters in this run.
    pub dead_letters: u64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Csv,
    Parquet,
}

/// One file to import.
struct Input {
    path: PathBuf,
    kind: Kind,
    size: u64,
    modified_ns: u128,
}

/// Files under `paths`: named files as they are (an unknown extension is an error), folders
/// searched recursively for `*.parquet` and `*.csv` (hidden files, such as the Parquet sink's
/// incomplete `.tmp` files, are skipped). Sorted, without duplicates.
fn discover(paths: &[PathBuf]) -> anyhow::Result<Vec<Input>> {
    fn kind_of(path: &Path) -> Option<Kind> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Some(Kind::Csv),
            "parquet" => Some(Kind::Parquet),
            _ => None,
        }
    }
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, Kind)>) -> anyhow::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("reading folder {}", dir.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("reading folder {}", dir.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            if path.is_dir() {
                walk(&path, out)?;
            } else if let Some(kind) = kind_of(&path) {
                out.push((path, kind));
            }
        }
        Ok(())
    }
    let mut found = Vec::new();
    for path in paths {
        if path.is_dir() {
            walk(path, &mut found)?;
        } else if !path.exists() {
            bail!("{}: no such file or folder", path.display());
        } else {
            match kind_of(path) {
                Some(kind) => found.push((path.clone(), kind)),
                None => bail!(
                    "{}: not a .parquet or .csv file (give a folder to search it)",
                    path.display()
                ),
            }
        }
    }
    let mut inputs = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (path, kind) in found {
        let path = path
            .canonicalize()
            .with_context(|| format!("resolving {}", path.display()))?;
        if !seen.insert(path.clone()) {
            continue;
        }
        let meta = std::fs::metadata(&path).with_context(|| format!("{}", path.display()))?;
        let modified_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        inputs.push(Input {
            path,
            kind,
            size: meta.len(),
            modified_ns,
        });
    }
    Ok(inputs)
}

/// How far one file got, as saved in the progress record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileProgress {
    size: u64,
    modified_ns: u128,
    /// Input rows (data rows of a CSV, bad ones included; rows of a Parquet file) in the sink.
    rows_done: u64,
    done: bool,
    /// A hash of the CSV settings the file was read with (0 for Parquet): other settings
    /// read it anew.
    settings: u64,
}

/// `{data_dir}/import/progress.json`: per target and file, how far the import got.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProgressRecord {
    files: BTreeMap<String, FileProgress>,
    #[serde(skip)]
    path: PathBuf,
    #[serde(skip)]
    dirty: bool,
}

impl ProgressRecord {
    fn open(data_dir: &Path) -> anyhow::Result<ProgressRecord> {
        let path = data_dir.join("import").join("progress.json");
        let mut record = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a progress record", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ProgressRecord::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        record.path = path;
        Ok(record)
    }

    /// Saves the record when it changed: a temporary file, fsync, rename (a crash leaves the
    /// old record or the new one).
    fn save(&mut self) -> anyhow::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = self.path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(self)?;
        {
            use std::io::Write;
            let mut file =
                File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
            file.write_all(&text)?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("writing {}", self.path.display()))?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        self.dirty = false;
        Ok(())
    }

    fn set(&mut self, key: &str, progress: FileProgress) {
        self.files.insert(key.to_string(), progress);
        self.dirty = true;
    }
}

/// A stable 64-bit FNV-1a hash (names Parquet files and keys dead letters the same in every
/// run and build).
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The start of the Parquet file names of an input file's chunks (`import-{hash}-`; a chunk
/// adds its number).
fn file_prefix(key: &str) -> String {
    format!("import-{:016x}-", fnv1a(key))
}

/// A chunk's position once it is in the sink.
#[derive(Debug, Clone)]
struct Mark {
    key: String,
    progress: FileProgress,
}

/// The importer's state across files.
struct Importer {
    /// ClickHouse (the writer `serve` uses: Native inserts, merged and pipelined), or Parquet
    /// under the data folder; and the dead-letter files.
    sinks: SinkSet,
    /// The number of the last chunk sent: a chunk's position for the sinks, so that what
    /// they confirm says which chunks are in.
    chunks_sent: u64,
    /// Chunks sent and not yet confirmed, with their marks.
    waiting: VecDeque<(u64, Mark)>,
    progress: ProgressRecord,
    display: Display,
    summary: ImportSummary,
    last_save: Instant,
}

impl Importer {
    /// Takes what the sink has confirmed into the progress record (saved at most once a
    /// second, and at the end), and keeps refused batches as dead letters.
    fn settle(&mut self, force: bool) -> anyhow::Result<()> {
        // The stock keeps the batches ClickHouse refused as dead letters, so every chunk it
        // confirms has its refusals written before the position is saved.
        let stock = self.sinks.take_stock()?;
        self.summary.dead_letters += stock.refused as u64;
        let through = confirmed_through(self.chunks_sent, &stock.holds);
        while self
            .waiting
            .front()
            .is_some_and(|(chunk, _)| *chunk <= through)
        {
            if let Some((_, mark)) = self.waiting.pop_front() {
                self.progress.set(&mark.key, mark.progress);
            }
        }
        if force || self.last_save.elapsed() >= Duration::from_secs(1) {
            // Dead letters first: a position is saved only once the bad rows before it are kept.
            self.sinks.make_durable()?;
            self.progress.save()?;
            self.last_save = Instant::now();
        }
        Ok(())
    }

    /// Sends the chunk of `key`'s input rows from `chunk_start` to `at.rows_done`; its Parquet
    /// files are named by file and chunk, the same in every run.
    fn chunk_done(
        &mut self,
        builder: &mut ReadingBatchBuilder,
        key: &str,
        at: &FileProgress,
        chunk_start: u64,
    ) -> anyhow::Result<()> {
        let name = format!("{}{:08}", file_prefix(key), chunk_start / CHUNK_ROWS);
        let batch = builder.finish();
        self.summary.rows += batch.num_rows() as u64;
        self.chunks_sent += 1;
        let chunk = self.chunks_sent;
        // With its bad rows (they went to the sinks as they were read).
        self.sinks.send(
            SinkBatch {
                rows: &batch,
                oldest: Some(chunk),
                through: chunk,
                local: true,
                file_name: Some(&name),
            },
            Instant::now(),
        )?;
        self.waiting.push_back((
            chunk,
            Mark {
                key: key.to_string(),
                progress: at.clone(),
            },
        ));
        self.settle(false)
    }

    /// Keeps a bad row: a dead-letter file entry, and a `dead_letters` row in ClickHouse.
    fn bad_row(&mut self, input: &Input, format: &str, bad: csv::BadRow) -> anyhow::Result<()> {
        let csv::BadRow { line, raw, reason } = bad;
        let topic = input.path.display().to_string();
        // The file's modification time: the same in a rerun, so its rows collapse.
        let received_at_ms = i64::try_from(input.modified_ns / 1_000_000).unwrap_or(0);
        self.summary.dead_letters += 1;
        self.display.dead_letter();
        // ClickHouse's key for the row: the file and line, the same in a rerun.
        let key = (1 << 62) | ((fnv1a(&topic) ^ line) & ((1 << 62) - 1));
        let letter = DeadLetter {
            received_at_ms,
            source: "import".into(),
            topic,
            meter_id: None,
            format: Some(format.into()),
            kind: "bad_row".into(),
            reason,
            payload: raw,
        };
        self.sinks.dead_letter(&letter, 0, key, true)?;
        Ok(())
    }

    fn import_csv(
        &mut self,
        input: &Input,
        key: &str,
        start: FileProgress,
        options: &CsvOptions,
    ) -> anyhow::Result<()> {
        let file = File::open(&input.path)?;
        let mut reader = CsvReader::new(BufReader::new(file), options, start.rows_done)?;
        let mut builder = ReadingBatchBuilder::with_capacity(CHUNK_ROWS as usize);
        let mut at = start;
        let mut chunk_start = at.rows_done;
        loop {
            let next = reader.next_row()?;
            let end = next.is_none();
            match next {
                Some(Ok(row)) => builder.append_text(&TextRow {
                    meter_id: &row.meter_id,
                    channel: &row.channel,
                    ts_ms: row.ts_ms,
                    value: row.value,
                    unit: &row.unit,
                    quality: row.quality,
                    // The reading's own time: the same in every run (so a rerun writes the same
                    // row), and older than any live delivery of that reading, which so wins
                    // in ReplacingMergeTree(received_at) over imported history.
                    received_at_ms: row.ts_ms,
                    source: "import",
                    format: "csv",
                }),
                Some(Err(mut bad)) => {
                    bad.reason = format!("line {}: {}", bad.line, bad.reason);
                    self.bad_row(input, "csv", bad)?
                }
                None => {}
            }
            let read = reader.rows_read();
            if end || read - chunk_start >= CHUNK_ROWS {
                at.rows_done = read;
                at.done = end;
                self.chunk_done(&mut builder, key, &at, chunk_start)?;
                self.display
                    .advance(input, reader.bytes_read(), self.summary.rows);
                chunk_start = read;
            }
            if end {
                return Ok(());
            }
        }
    }

    fn import_parquet(
        &mut self,
        input: &Input,
        key: &str,
        start: FileProgress,
    ) -> anyhow::Result<()> {
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let file = File::open(&input.path)?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
        let total = u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
        let reader = builder
            .with_batch_size(8192)
            .with_offset(usize::try_from(start.rows_done).unwrap_or(usize::MAX))
            .build()?;
        let now_ms = meterflow_proto::now_ms();
        let mut out = ReadingBatchBuilder::with_capacity(CHUNK_ROWS as usize);
        let mut at = start;
        let mut chunk_start = at.rows_done;
        let mut read = at.rows_done;
        for batch in reader {
            let batch = batch?;
            let c = ReadingColumns::of(&batch).context("not a Parquet file of readings")?;
            for i in 0..c.len() {
                read += 1;
                let (meter_id, channel, unit) =
                    (c.meter_id.value(i), c.channel.value(i), c.unit.value(i));
                let (value, ts_ms) = (c.value.value(i), c.ts.value(i));
                match csv::validate_reading(meter_id, channel, unit, value, ts_ms, now_ms) {
                    Ok(()) => out.append_text(&TextRow {
                        meter_id,
                        channel,
                        ts_ms,
                        value,
                        unit,
                        quality: c.quality.value(i),
                        received_at_ms: c.received_at.value(i),
                        source: "import",
                        format: c.format.value(i),
                    }),
                    Err(reason) => {
                        let one = batch.slice(i, 1);
                        let raw = rows_as_json_lines(&one);
                        let bad = csv::BadRow {
                            line: read,
                            raw,
                            reason: format!("row {read}: {reason}"),
                        };
                        self.bad_row(input, "parquet", bad)?;
                    }
                }
                if read - chunk_start >= CHUNK_ROWS {
                    at.rows_done = read;
                    at.done = read >= total;
                    self.chunk_done(&mut out, key, &at, chunk_start)?;
                    let bytes = (u128::from(input.size) * u128::from(read)
                        / u128::from(total.max(1))) as u64;
                    self.display.advance(input, bytes, self.summary.rows);
                    chunk_start = read;
                }
            }
        }
        if !at.done {
            at.rows_done = read;
            at.done = true;
            self.chunk_done(&mut out, key, &at, chunk_start)?;
            self.display.advance(input, input.size, self.summary.rows);
        }
        Ok(())
    }
}

/// The target as the progress record names it: the ClickHouse server and database (without
/// credentials), or the Parquet folder.
fn target_name(config: &Config) -> String {
    if config.clickhouse.enabled() {
        let url = &config.clickhouse.url;
        let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
        // The authority ends at the first `/`, `?` or `#`; credentials end at its last `@`.
        let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
        let host = authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host);
        format!(
            "clickhouse {scheme}://{host}/{}",
            config.clickhouse.database
        )
    } else {
        let dir = config
            .data_dir
            .canonicalize()
            .unwrap_or_else(|_| config.data_dir.clone());
        format!("parquet {}", dir.display())
    }
}

/// Runs an import: every file under `options.paths` into ClickHouse (when `clickhouse.url` is
/// set) or Parquet under the data folder.
pub fn run(config: &Config, options: &ImportOptions) -> anyhow::Result<ImportSummary> {
    let started = Instant::now();
    let inputs = discover(&options.paths)?;
    if inputs.is_empty() {
        bail!("no .parquet or .csv files under the paths given");
    }
    if options.csv.is_none() {
        if let Some(csv) = inputs.iter().find(|i| i.kind == Kind::Csv) {
            bail!(
                "{} is a CSV file: say how its columns map with --map or --mapping",
                csv.path.display()
            );
        }
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let target = target_name(config);
    let inputs = if config.clickhouse.enabled() {
        // A wrong address or password stops here, with the server's answer, instead of
        // being retried as an outage.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let version = runtime
            .block_on(meterflow_storage::clickhouse::server_version(
                &config.clickhouse,
            ))
            .with_context(|| format!("{target}: cannot reach ClickHouse"))?;
        tracing::info!(?version, "ClickHouse answers");
        inputs
    } else {
        // The target's own tree is not an input (it would import its own output again).
        let own = config
            .data_dir
            .join("readings")
            .canonicalize()
            .unwrap_or_else(|_| config.data_dir.join("readings"));
        let (skip, keep): (Vec<_>, Vec<_>) =
            inputs.into_iter().partition(|i| i.path.starts_with(&own));
        if !skip.is_empty() {
            tracing::warn!(files = skip.len(), dir = %own.display(), "skipping the files of the data folder being imported into");
        }
        if keep.is_empty() {
            bail!("every file given is in the Parquet tree being imported into");
        }
        keep
    };
    let (parquet, clickhouse) = if config.clickhouse.enabled() {
        // No spool: an import has nothing else to go on with while ClickHouse waits.
        let writer =
            ClickHouseWriter::start(config.clickhouse.clone(), None, ShutdownSignal::never())?;
        (None, Some(writer))
    } else {
        // Every chunk in files of its own (named by its file and number), and nothing else:
        // the leftovers of a `serve` on the same folder are its own business.
        let parquet = ParquetSink::open_named(&config.data_dir, config.parquet.clone(), "import")?;
        (Some(parquet), None)
    };
    let sinks = SinkSet::new(
        parquet,
        clickhouse,
        DeadLetterStore::open(&config.data_dir, &config.node.id)?,
        "import",
    );
    let total_bytes = inputs.iter().map(|i| i.size).sum();
    let mut importer = Importer {
        sinks,
        chunks_sent: 0,
        waiting: VecDeque::new(),
        progress: ProgressRecord::open(&config.data_dir)?,
        display: Display::new(options.bar, total_bytes, inputs.len()),
        summary: ImportSummary {
            target: target.clone(),
            ..Default::default()
        },
        last_save: Instant::now(),
    };
    tracing::info!(target = %target, files = inputs.len(), bytes = total_bytes, "importing");
    for input in &inputs {
        let key = format!("{target}\t{}", input.path.display());
        let settings = match (input.kind, &options.csv) {
            (Kind::Csv, Some(csv)) => fnv1a(&format!("{csv:?}")),
            _ => 0,
        };
        let fresh = FileProgress {
            size: input.size,
            modified_ns: input.modified_ns,
            rows_done: 0,
            done: false,
            settings,
        };
        let start = match importer.progress.files.get(&key) {
            _ if options.restart => fresh,
            None => fresh,
            Some(p)
                if p.size == input.size
                    && p.modified_ns == input.modified_ns
                    && p.settings == settings =>
            {
                p.clone()
            }
            Some(p) if p.settings != settings => {
                tracing::warn!(file = %input.path.display(), "imported earlier with other CSV settings; importing it again from its start (rows of the earlier settings are not removed)");
                fresh
            }
            Some(_) => {
                tracing::warn!(file = %input.path.display(), "the file changed since an earlier import; importing it from its start");
                fresh
            }
        };
        if start.rows_done == 0 {
            // What an earlier, different pass wrote under this file's names goes first.
            importer.sinks.forget_files(&file_prefix(&key))?;
        }
        if start.done {
            importer.summary.files_already_done += 1;
            importer.display.skip(input);
            continue;
        }
        if start.rows_done > 0 {
            tracing::info!(file = %input.path.display(), rows_done = start.rows_done, "resuming");
        }
        importer.display.start_file(input);
        let result = match (input.kind, &options.csv) {
            (Kind::Csv, Some(csv)) => importer.import_csv(input, &key, start, csv),
            (Kind::Parquet, _) => importer.import_parquet(input, &key, start),
            (Kind::Csv, None) => Ok(()),
        };
        match result {
            Ok(()) => importer.summary.files += 1,
            Err(e)
                if matches!(
                    e.downcast_ref::<meterflow_storage::StorageError>(),
                    Some(meterflow_storage::StorageError::ClickHouseWriterStopped)
                ) =>
            {
                // No file can go on without the writer.
                return Err(e);
            }
            Err(e) => {
                importer.summary.files_failed += 1;
                importer
                    .display
                    .println(&format!("{}: {e:#}", input.path.display()));
                tracing::error!(file = %input.path.display(), error = %format!("{e:#}"), "file not imported (the others go on)");
            }
        }
    }
    // Wait for ClickHouse to take everything (it retries while the server is away).
    while importer.sinks.pending() > 0 {
        if !importer.sinks.is_alive() {
            bail!("the ClickHouse writer stopped; what it did not confirm is imported again by the next run");
        }
        importer.settle(false)?;
        std::thread::sleep(Duration::from_millis(20));
    }
    importer.settle(true)?;
    importer.sinks.close()?;
    importer.settle(true)?;
    importer.summary.seconds = started.elapsed().as_secs_f64();
    importer.display.finish(&importer.summary);
    Ok(importer.summary)
}

/// The progress bar on a terminal (bytes of input, rows/s, ETA, dead letters), or a log line
/// every few seconds.
struct Display {
    bar: Option<indicatif::ProgressBar>,
    /// Bytes of the files finished or skipped.
    bytes_before: u64,
    total_bytes: u64,
    started: Instant,
    last_log: Instant,
    dead_letters: u64,
    files: usize,
    file_index: usize,
}

impl Display {
    fn new(bar: bool, total_bytes: u64, files: usize) -> Display {
        let bar = bar.then(|| {
            let bar = indicatif::ProgressBar::new(total_bytes);
            let style = indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            bar
        });
        Display {
            bar,
            bytes_before: 0,
            total_bytes,
            started: Instant::now(),
            last_log: Instant::now(),
            dead_letters: 0,
            files,
            file_index: 0,
        }
    }

    fn start_file(&mut self, input: &Input) {
        self.file_index += 1;
        let what = format!(
            "file {}/{}: {}",
            self.file_index,
            self.files,
            input.path.display()
        );
        match &self.bar {
            Some(bar) => bar.set_message(what),
            None => tracing::info!("{what}"),
        }
    }

    fn skip(&mut self, input: &Input) {
        self.file_index += 1;
        self.bytes_before += input.size;
        if let Some(bar) = &self.bar {
            bar.set_position(self.bytes_before);
        }
        tracing::info!(file = %input.path.display(), "already imported; skipped");
    }

    fn dead_letter(&mut self) {
        self.dead_letters += 1;
    }

    /// `bytes` of `input` are read, `rows` written in all.
    fn advance(&mut self, input: &Input, bytes: u64, rows: u64) {
        let position = self.bytes_before + bytes.min(input.size);
        if bytes >= input.size {
            self.bytes_before += input.size;
        }
        let rate = rows as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        match &self.bar {
            Some(bar) => {
                bar.set_position(position);
                bar.set_message(format!(
                    "{rows} rows, {rate:.0} rows/s, {} dead letters",
                    self.dead_letters
                ));
            }
            None if self.last_log.elapsed() >= Duration::from_secs(5) => {
                self.last_log = Instant::now();
                tracing::info!(
                    rows,
                    rows_per_s = rate as u64,
                    dead_letters = self.dead_letters,
                    percent = (100 * position / self.total_bytes.max(1)),
                    "importing"
                );
            }
            None => {}
        }
    }

    fn println(&self, line: &str) {
        if let Some(bar) = &self.bar {
            bar.println(line);
        }
    }

    fn finish(&self, summary: &ImportSummary) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        tracing::info!(
            rows = summary.rows,
            files = summary.files,
            files_already_done = summary.files_already_done,
            files_failed = summary.files_failed,
            dead_letters = summary.dead_letters,
            seconds = summary.seconds,
            "import finished"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_names_carry_no_credentials() {
        let mut config = Config::default();
        config.clickhouse.url = "http://ingest:s3cret@ch.example:8123/?x=1".into();
        assert_eq!(
            target_name(&config),
            "clickhouse http://ch.example:8123/meterflow"
        );
        config.clickhouse.url = "http://ch.example:8123/?user=u&password=ab@Cd9".into();
        assert_eq!(
            target_name(&config),
            "clickhouse http://ch.example:8123/meterflow"
        );
    }

    #[test]
    fn hashes_are_stable() {
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn discovery_finds_parquet_and_csv_and_skips_hidden_files() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("readings/date=2024-01-01");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join("part-1.parquet"), b"x").unwrap();
        std::fs::write(sub.join(".part-2.parquet.tmp"), b"x").unwrap();
        std::fs::write(dir.path().join("export.CSV"), b"a").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"a").unwrap();
        let found = discover(&[dir.path().to_path_buf()]).unwrap();
        let names: Vec<_> = found
            .iter()
            .map(|i| i.path.file_name().unwrap().to_string_lossy().to_string())
            .collect();
        assert_eq!(names, ["export.CSV", "part-1.parquet"]);
        let err = discover(&[dir.path().join("notes.txt")]).err().unwrap();
        assert!(err.to_string().contains("not a .parquet or .csv"), "{err}");
    }
}
