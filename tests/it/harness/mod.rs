//! Runs the real `meterflow` binary for the integration tests: free ports, a temporary data
//! folder, SIGTERM at the end; and reads back what it wrote. Split by concern; every test module
//! takes what it needs through the re-exports below.

mod clickhouse;
mod fixtures;
mod fleet;
mod http;
mod mqtt;
mod query;
mod readings;
mod server;
/// A small tmpfs that really fills up (shared with the storage crate's own test).
#[path = "../../../storage/tests/support/small_disk.rs"]
pub mod small_disk;
mod tls_terminator;

use std::time::{Duration, Instant};

pub use clickhouse::{
    apply_schema, ClickHouse, LossyProxy, SilentClickHouse, LOGIN_PASSWORD, LOGIN_USER,
};
pub use fixtures::{dlms_fixture, leshan_device_object, tirol, tirol_rows};
pub use fleet::{
    assert_fleet_arrived, fleet_acked, fleet_summary, pb_fleet, plan_rows, simulate_command,
    simulate_json, spawn_fleet,
};
pub use http::http;
pub use mqtt::{mosquitto_pub, mosquitto_pub_acked};
pub use query::{import_canonical_csv, query_csv};
pub use readings::{read_readings, utc_date, Row};
pub use server::{config_file, credentials, free_port, free_udp_port, Server, BIN};
pub use tls_terminator::TlsTerminator;

/// Waits until the `meterflow serve` that `child` runs (or that it started) answers `/ready`
/// with 200 on `http_port`; panics with its log (`log`) if it exits first.
pub fn wait_ready(
    what: &str,
    child: &mut std::process::Child,
    http_port: u16,
    log: &std::path::Path,
) {
    wait_for(&format!("{what} to be ready"), || {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "{what} exited {status}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::net::TcpStream::connect(("127.0.0.1", http_port)).ok()?;
        matches!(http(http_port, "GET", "/ready", &[], None), (200, _)).then_some(())
    })
}

/// Polls `check` until it gives a value. The deadline only keeps a broken run from hanging
/// CI; no test depends on how fast things happen.
pub fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
