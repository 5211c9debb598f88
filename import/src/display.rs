//! What an import shows while it runs: a progress bar on a terminal (bytes of input, rows/s,
//! ETA, dead letters), or else a log line every few seconds; and the closing log line.

use std::time::{Duration, Instant};

use crate::discover::Input;
use crate::ImportSummary;

/// The progress bar on a terminal (bytes of input, rows/s, ETA, dead letters), or a log line
/// every few seconds.
pub(crate) struct Display {
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
    pub(crate) fn new(bar: bool, total_bytes: u64, files: usize) -> Display {
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

    pub(crate) fn start_file(&mut self, input: &Input) {
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

    pub(crate) fn skip(&mut self, input: &Input) {
        self.file_index += 1;
        self.bytes_before += input.size;
        if let Some(bar) = &self.bar {
            bar.set_position(self.bytes_before);
        }
        tracing::info!(file = %input.path.display(), "already imported; skipped");
    }

    pub(crate) fn dead_letter(&mut self) {
        self.dead_letters += 1;
    }

    /// `bytes` of `input` are read, `rows` written in all.
    pub(crate) fn advance(&mut self, input: &Input, bytes: u64, rows: u64) {
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

    pub(crate) fn println(&self, line: &str) {
        if let Some(bar) = &self.bar {
            bar.println(line);
        }
    }

    pub(crate) fn finish(&self, summary: &ImportSummary) {
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
