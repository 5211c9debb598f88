//! Where readings go once decoded.
//!
//! - [`batcher`]: collects rows into one Arrow batch and says when to flush (rows, bytes, age).
//! - [`parquet`]: the embedded default sink, hive-style date folders of zstd Parquet files
//!   that appear under their final name only when complete.
//! - [`analytics`]: the device-state and recent-readings queries on the ClickHouse tables
//!   (`sql/`) that `serve` uses, and the query text helpers.
//! - [`questions`]: `query anomalies` and `query devices` in Rust over the read model, the
//!   same answers from the Parquet tree and from ClickHouse.
//! - [`clickhouse`]: the production sink: schema, RowBinary inserts, a writer with retries.
//! - [`readings`]: the read model billing runs on: the series of a period with the readings
//!   around it, from the Parquet tree or from ClickHouse, the same answers from both.
//! - [`registry`]: the meter registry (kind, interval, grid place, role, validity), read from
//!   the utility's CSV.
//! - [`status`]: device status reports in the Parquet tree (`status/date=…/`), and read
//!   back from it or from ClickHouse's `device_status`, the same rows from both.
//! - [`dead_letter`]: payloads that did not decode, kept on disk with raw bytes and reason.
//! - [`data_dir`]: the data folder's permissions: nothing in it open to other users.
//! - [`sinks`]: the seam every producer of rows (the pipeline, `import`) reaches the sinks
//!   through: send batches and side rows, learn what each sink still holds, close.
//! - [`Shutdown`]: the one signal that stops the process, with its deadline.
//! - [`wal`]: the write-ahead log of raw messages between the network edge and the decoder,
//!   with the checkpoint of what every sink has confirmed.
//!
//! storage depends on `proto` only: it knows the canonical schema, never the decoders or
//! the network edge.

pub mod analytics;
pub mod batcher;
pub mod clickhouse;
pub mod data_dir;
pub mod dead_letter;
mod error;
pub mod events;
pub mod parquet;
pub mod questions;
pub mod readings;
pub mod registry;
mod shutdown;
pub mod sinks;
pub mod status;
pub mod vee;
pub mod wal;
mod whole_file;

pub use batcher::{BatchConfig, Batcher};
pub use dead_letter::{DeadLetter, DeadLetterStore};
pub use error::StorageError;
pub use parquet::{ParquetConfig, ParquetSink};
pub use shutdown::{Shutdown, ShutdownSignal};
pub use sinks::{Hold, SinkBatch, SinkSet, Stock};
pub use wal::{FsyncPolicy, NewRecord, Wal, WalConfig, WalReader, WalRecord};

/// A secret as `Debug` shows it: `""` when unset (so that its absence can be seen), else
/// `<redacted>`. The config structs holding passwords and tokens use it in their `Debug`.
pub fn redacted(secret: &str) -> &'static str {
    if secret.is_empty() {
        ""
    } else {
        "<redacted>"
    }
}

/// A URL as `Debug` and `meterflow config` show it: a password before the host
/// (`scheme://USER:PASSWORD@host`) or in a `password` query parameter (ClickHouse's
/// `?user=&password=`) becomes `<redacted>`; text that is not a URL, which may still hold a
/// password somewhere, is not shown at all.
pub fn url_without_password(text: &str) -> String {
    let Ok(mut url) = url::Url::parse(text) else {
        return if text.is_empty() {
            String::new()
        } else {
            "(not a URL, not shown)".into()
        };
    };
    let mut changed = false;
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
        changed = true;
    }
    if url
        .query_pairs()
        .any(|(k, v)| k.eq_ignore_ascii_case("password") && !v.is_empty())
    {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                if k.eq_ignore_ascii_case("password") && !v.is_empty() {
                    (k.into_owned(), "***".to_string())
                } else {
                    (k.into_owned(), v.into_owned())
                }
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
        changed = true;
    }
    if changed {
        url.to_string()
    } else {
        text.to_string()
    }
}
