//! `meterflow import`: history a utility already has (meterflow's own Parquet tree, CSV
//! exports of a legacy head-end) loaded through the same sinks and validation as live data.
//!
//! - [`csv`]: the CSV mapping (`--map` or a TOML file), local times in an IANA zone, scale and
//!   unit conversion; one row at a time, each a reading or a bad row with its line and reason.

pub mod csv;
