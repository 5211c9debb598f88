//! The integration tests of the `meterflow` binary, as one test binary (one link instead of one
//! per file): each module drives the real `meterflow` command and real clients and servers, and
//! asserts what arrived. [`harness`] holds what they share.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly

mod harness;

mod analytics;
mod balance;
mod billing;
mod bridge;
mod browser;
mod clickhouse_access;
mod clickhouse_current;
mod clickhouse_native;
mod clickhouse_sink;
mod cluster;
mod confirmation_path;
mod deploy;
mod dlms;
mod dlms_listener;
mod events;
mod fuzz_regressions;
mod http_api;
mod http_limits;
mod import;
mod import_foreign;
mod mqtt_identity;
mod mqtt_limits;
mod mqtt_paho;
mod package;
mod questions;
mod read_model;
mod readme;
mod registry;
mod serve_coap;
mod serve_coaps;
mod serve_mqtt;
mod simulate_dlms;
mod suspects;
mod vee;
mod vee_fleet;
mod wal_crash;
