//! The network edge and the runtime of `meterflow serve`.
//!
//! - [`runtime`]: starts every part from a validated config and stops them in one written
//!   order ([`serve`]).
//! - [`config`]: the configuration and its validation.
//! - [`credentials`]: the device credential store shared by every edge.
//! - [`edge`]: the ways in (MQTT server, CoAP endpoint, bridges) and the contract they keep
//!   with the WAL writer: submissions, durability, refusals, the identity policy.
//! - [`wal_writer`]: the one owner of the WAL: group commit, durability for the edges, and the
//!   hand-off to the pipeline queue.
//! - [`pipeline`]: routing by topic, decoding, batching, and the sinks through their seam.
//! - [`progress`]: the way back: what the sinks confirmed, the checkpoint.
//! - [`devices`]: the last-heard state of every meter.
//! - [`http`]: health, metrics and the device API.
//!
//! ```text
//! MQTT server, CoAP server, bridges (tokio; each waits for durability)
//!   -> WAL writer thread (append, group commit)
//!   -> bounded queue -> pipeline thread (reading the WAL for whatever the queue did not carry)
//!   -> SinkSet: Parquet, ClickHouse, dead letters
//! ```

pub mod config;
pub mod credentials;
pub mod devices;
pub mod dlms_profiles;
pub mod dlms_replay;
pub mod edge;
mod error;
pub mod fleet;
pub mod http;
mod meter_memory;
pub mod pipeline;
pub mod progress;
pub mod runtime;
pub mod wal_writer;

pub use config::{Config, ValidConfig};
pub use edge::bridge::BridgeConfig;
pub use error::IngestError;
pub use pipeline::PipelineSummary;
pub use runtime::{metrics_handle, serve, ServeSummary};
