//! `meterflow import`: history a utility already has (meterflow's own Parquet tree, CSV
//! exports of a legacy head-end) loaded through the same sinks and checks as live data.
//!
//! - [`csv`]: the CSV mapping (`--map` or a TOML file), local times in an IANA zone, scale and
//!   unit conversion; one row at a time, each a reading or a bad row with its line and reason.
//! - this crate's other files: finding the files (`discover.rs`), the chunks, the sink (the
//!   ClickHouse writer of `serve`, or Parquet under the data folder) and dead letters
//!   (`importer.rs`), reading Parquet (`parquet_input.rs`), the progress record that makes an
//!   interrupted import resumable (`progress.rs`), the progress bar (`display.rs`), and
//!   [`ImportError`] (`error.rs`);
//! - here: what an import is asked ([`ImportOptions`], [`ImportTarget`]) and does
//!   ([`ImportSummary`]), and [`run`], the loop over the files.
//!
//! Rows become `source = 'import'`; CSV rows have `format = 'csv'`, Parquet rows keep theirs.
//! A row that fails the live checks (meter id, channel and unit length, a finite value, time
//! from 2000-01-01 to now + 1 day) is a dead letter (`kind = bad_row`, the file as topic,
//! `line N: reason`, the raw row), in the data folder and, with ClickHouse, in `dead_letters`.
//!
//! Resuming: each file is read in chunks of input rows (`CHUNK_ROWS` into Parquet,
//! `CLICKHOUSE_CHUNK_ROWS` into ClickHouse). Once a chunk is in the
//! sink (ClickHouse confirmed it; its Parquet files are complete), the file's position is
//! saved in `{data_dir}/import/progress.json`, keyed by the target and the file's path, size
//! and modification time. A rerun skips finished files and starts the others at their saved
//! position. What an interrupted run wrote past it is written again identically: ClickHouse's
//! ReplacingMergeTree keeps one copy (the CSV rows' `received_at` is saved with the file, so
//! both copies are the same row), and Parquet files are named by file and chunk, so the
//! second copy replaces the first.

pub mod csv;
mod discover;
mod display;
mod error;
mod importer;
mod parquet_columns;
mod parquet_input;
mod progress;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use meterflow_storage::clickhouse::{ClickHouseConfig, ClickHouseWriter};
use meterflow_storage::{
    DeadLetterStore, ParquetConfig, ParquetSink, ShutdownSignal, SinkSet, StorageError,
};
use serde::Serialize;

use self::csv::CsvOptions;
use self::discover::{discover, Kind};
use self::display::Display;
pub use self::error::{with_causes, ImportError};
use self::importer::{file_prefix, fnv1a, FileTally, Importer};
use self::progress::{FileProgress, ProgressRecord};

/// Input rows per chunk into Parquet: the unit of progress and of one file set.
pub const CHUNK_ROWS: u64 = 100_000;

/// Input rows per chunk into ClickHouse: the unit of progress and one insert. Two inserts of
/// this size run side by side (one per core of a small server) while the next chunks are read;
/// larger inserts leave one core idle at the end, smaller ones make more parts to merge.
pub const CLICKHOUSE_CHUNK_ROWS: u64 = 500_000;

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

/// Where an import writes: the parts of meterflow's config it uses (the command builds it
/// from the config file, the environment and the flags). Its `Debug` shows no credentials.
#[derive(Clone)]
pub struct ImportTarget {
    /// The data folder: the Parquet tree (without ClickHouse), the dead letters, and the
    /// progress record.
    pub data_dir: PathBuf,
    /// This node's id (`node.id`), which names the dead-letter files.
    pub node_id: String,
    /// How Parquet files are written (without ClickHouse).
    pub parquet: ParquetConfig,
    /// With a `url`, rows go to this ClickHouse; without, into Parquet under `data_dir`.
    pub clickhouse: ClickHouseConfig,
}

impl std::fmt::Debug for ImportTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportTarget")
            .field("target", &target_name(self))
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
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

/// The target as the progress record names it: the ClickHouse server and database (without
/// credentials), or the Parquet folder.
fn target_name(config: &ImportTarget) -> String {
    if config.clickhouse.enabled() {
        format!(
            "clickhouse {}/{}",
            config.clickhouse.server_for_logs(),
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
pub fn run(config: &ImportTarget, options: &ImportOptions) -> Result<ImportSummary, ImportError> {
    let started = Instant::now();
    let inputs = discover(&options.paths)?;
    if inputs.is_empty() {
        return Err(ImportError::NoInputs);
    }
    if options.csv.is_none() {
        if let Some(csv) = inputs.iter().find(|i| i.kind == Kind::Csv) {
            return Err(ImportError::NoMapping {
                path: csv.path.clone(),
            });
        }
    }
    meterflow_storage::data_dir::prepare(&config.data_dir)?;
    let target = target_name(config);
    let inputs = if config.clickhouse.enabled() {
        // A wrong address or password stops here, with the server's answer, instead of
        // being retried as an outage.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ImportError::Runtime)?;
        let version = runtime
            .block_on(meterflow_storage::clickhouse::server_version(
                &config.clickhouse,
            ))
            .map_err(|source| ImportError::Unreachable {
                target: target.clone(),
                source,
            })?;
        tracing::info!(%version, "ClickHouse answers");
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
            return Err(ImportError::OnlyOwnOutput);
        }
        keep
    };
    let (parquet, clickhouse) = if config.clickhouse.enabled() {
        // No spool: an import has nothing else to go on with while ClickHouse waits. Each
        // chunk is one insert, two run at once, and two more wait read (the memory of about
        // five chunks).
        let clickhouse = ClickHouseConfig {
            max_insert_rows: CLICKHOUSE_CHUNK_ROWS as usize,
            max_inflight_inserts: 2,
            queue_batches: 2,
            ..config.clickhouse.clone()
        };
        let writer = ClickHouseWriter::start(clickhouse, None, ShutdownSignal::never())?;
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
        DeadLetterStore::open(&config.data_dir, &config.node_id)?,
        "import",
    );
    let total_bytes = inputs.iter().map(|i| i.size).sum();
    let (chunk_rows, chunk_per_mark) = if config.clickhouse.enabled() {
        (CLICKHOUSE_CHUNK_ROWS, false)
    } else {
        (CHUNK_ROWS, true)
    };
    let mut importer = Importer::new(
        sinks,
        chunk_rows,
        chunk_per_mark,
        ProgressRecord::open(&config.data_dir)?,
        Display::new(options.bar, total_bytes, inputs.len()),
        target.clone(),
    );
    tracing::info!(target = %target, files = inputs.len(), bytes = total_bytes, "importing");
    for input in &inputs {
        let key = format!("{target}\t{}", input.path.display());
        // Any settings change what a file's rows become, CSV or Parquet.
        let settings = match &options.csv {
            Some(csv) => fnv1a(&format!("{csv:?}")),
            None => 0,
        };
        let fresh = FileProgress {
            size: input.size,
            modified_ns: input.modified_ns,
            rows_done: 0,
            done: false,
            settings,
            taken: 0,
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
                tracing::warn!(file = %input.path.display(), "imported earlier with other settings (--map, --tz, --scale, --to-unit, ...); importing it again from its start (rows of the earlier settings are not removed)");
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
        importer.file = FileTally {
            taken_before: start.taken,
            ..Default::default()
        };
        let result = match (input.kind, &options.csv) {
            (Kind::Csv, Some(csv)) => importer.import_csv(input, &key, start, csv),
            (Kind::Parquet, csv) => importer.import_parquet(input, &key, start, csv.as_ref()),
            (Kind::Csv, None) => Ok(()),
        };
        let tally = std::mem::take(&mut importer.file);
        let result = match result {
            // Not one row taken: the file failed (it is not marked done), its rows are dead
            // letters.
            Ok(()) if tally.all_refused() => Err(ImportError::AllRowsRefused {
                path: input.path.clone(),
                rows: tally.refused,
                reasons: tally.describe(),
            }),
            Ok(()) => {
                if tally.refused > 0 {
                    let text = format!(
                        "{}: {} of {} rows refused (kept as dead letters): {}",
                        input.path.display(),
                        tally.refused,
                        tally.refused + tally.taken,
                        tally.describe()
                    );
                    importer.display.println(&text);
                    tracing::warn!(file = %input.path.display(), refused = tally.refused, taken = tally.taken, reasons = %tally.describe(), "some rows refused (kept as dead letters)");
                }
                Ok(())
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => importer.summary.files += 1,
            Err(e @ ImportError::Storage(StorageError::ClickHouseWriterStopped)) => {
                // No file can go on without the writer.
                return Err(e);
            }
            Err(e) => {
                importer.summary.files_failed += 1;
                // Its rows read since its last mark are not its progress: they go.
                importer.drop_unmarked_rows();
                let error = with_causes(&e);
                importer
                    .display
                    .println(&format!("{}: {error}", input.path.display()));
                tracing::error!(file = %input.path.display(), error = %error, "file not imported (the others go on)");
            }
        }
    }
    // The rows of the last files, and then wait for ClickHouse to take everything (it
    // retries while the server is away).
    importer.flush()?;
    while importer.sinks.pending() > 0 {
        if !importer.sinks.is_alive() {
            return Err(ImportError::WriterStopped);
        }
        importer.settle(false)?;
        std::thread::sleep(Duration::from_millis(20));
    }
    importer.settle(true)?;
    importer.close()?;
    importer.settle(true)?;
    importer.summary.seconds = started.elapsed().as_secs_f64();
    importer.display.finish(&importer.summary);
    Ok(importer.summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_names_carry_no_credentials() {
        let mut config = ImportTarget {
            data_dir: PathBuf::from("./data"),
            node_id: "node-1".into(),
            parquet: ParquetConfig::default(),
            clickhouse: ClickHouseConfig::default(),
        };
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
}
