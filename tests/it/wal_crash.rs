//! The write-ahead log under a crash: `kill -9` meterflow while a fleet publishes, start it
//! again on the same data folder, let the fleet finish, stop it, and count what is in Parquet.

use std::process::{Command, Stdio};

use crate::harness::{read_readings, Server, BIN};
use meterflow_proto::Format;
use meterflow_simulate::{Plan, Shape};

#[test]
fn readings_acknowledged_before_a_kill_9_are_in_parquet_after_the_restart() {
    let meters = 100;
    let messages = 60;
    let pause_ms = 20;
    let plan = Plan {
        meters,
        messages,
        format: Format::Pb,
        shape: Shape::Readings,
        start_ms: 1_719_792_000_000,
        interval_s: 900,
        prefix: "crash-".into(),
    };
    // Files stay open for an hour: without the WAL, everything would be lost at the kill. The
    // fsync policy is left at its default: a PUBACK waits for the fsync whatever it says.
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("meterflow.toml");
    std::fs::write(&config, "[parquet]\nfile_max_age_s = 3600\n").unwrap();
    let config_arg = config.to_str().unwrap();
    let mut server = Server::start_with(&["--config", config_arg]);
    let mqtt_port = server.mqtt_port;

    // The fleet: each meter publishes every 20 ms, and rides out the restart by reconnecting
    // and resending what was not acknowledged, as meters do.
    let fleet = Command::new(BIN)
        .args([
            "simulate",
            "--json",
            "--mqtt",
            &format!("127.0.0.1:{mqtt_port}"),
        ])
        .args([
            "--meters",
            &meters.to_string(),
            "--messages",
            &messages.to_string(),
        ])
        .args(["--pause-ms", &pause_ms.to_string(), "--prefix", "crash-"])
        .args(["--start", "2024-07-01T00:00:00Z", "--inflight", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it in the middle of the run: once a third of the reports have arrived.
    crate::harness::wait_for("a third of the reports", || {
        let (_, metrics) = server.http_get("/metrics");
        let received: u64 = metrics
            .lines()
            .find(|l| l.starts_with("meterflow_received_total"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())?;
        (received >= (meters * messages / 3) as u64).then_some(())
    });
    server.kill_9();
    let log_before = server.log_text();
    // The same ports and data folder, as a supervisor would restart it.
    let server = server.restart();
    let out = fleet.wait_with_output().unwrap();
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["meters_failed"], 0, "{summary}");
    assert_eq!(
        summary["messages_acked"],
        (meters * messages) as u64,
        "{summary}"
    );
    let (exit, data_dir, log, _keep) = server.stop();
    assert!(exit.success(), "{log}");
    assert!(
        log.contains("replaying the WAL records"),
        "the restart replays what was not in a complete file:\n{log}"
    );

    let rows = read_readings(&data_dir);
    let mut distinct: Vec<(String, String, i64)> = rows
        .iter()
        .map(|r| (r.meter_id.clone(), r.channel.clone(), r.ts_ms))
        .collect();
    distinct.sort();
    distinct.dedup();
    // Every report was acknowledged (the fleet says so), and a PUBACK goes out only once
    // the report is in the WAL and fsynced: every row is there, with no tolerance.
    let expected = meters * messages * plan.rows_per_message();
    println!(
        "crash test: {} rows expected, {} distinct rows stored ({} rows in files, {} reconnects)",
        expected,
        distinct.len(),
        rows.len(),
        summary["reconnects"]
    );
    assert_eq!(
        distinct.len(),
        expected,
        "acknowledged readings lost\n{log_before}"
    );
    for r in &rows {
        let m: usize = r.meter_id["crash-".len()..].parse().unwrap();
        let k = ((r.ts_ms - plan.start_ms) / 900_000) as usize;
        let want = plan.expected_rows(m, k);
        assert!(
            want.iter()
                .any(|w| w.channel == r.channel && w.value == r.value && w.ts_ms == r.ts_ms),
            "unexpected row {r:?}"
        );
    }
}
