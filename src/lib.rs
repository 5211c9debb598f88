//! The `meterflow` command: the subcommands that are not the server itself.
//!
//! - [`decode_cmd`]: prints what a payload decodes to, or the error with its position.
//! - [`query_cmd`]: the output of `meterflow query` (table, CSV, JSON) and its time arguments.
//!
//! `serve` is [`meterflow_ingest::serve`]; `main.rs` parses the command line.

pub mod decode_cmd;
pub mod query_cmd;
