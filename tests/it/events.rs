//! Events end to end, with real clients against the real `meterflow serve` writing Parquet
//! and ClickHouse 18.16: a forged publish becomes a `forged_publish` event of the meter it
//! claimed to be, a DSMR telegram's power-failure log becomes `power_failure` and
//! `power_restored` events (once, however often the telegram repeats it), status bits
//! become events in words (and a bit that clears, or a new firmware, an event of its own); `meterflow query events` gives the same rows from both sources.

use std::process::{Command, Output};

use crate::harness::{config_file, query_csv, ClickHouse, Server};

const E1: &str = "e1-secret-0123456789";
const E2: &str = "e2-secret-0123456789";
const P1: &str = "p1-secret-0123456789";

const KAIFA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/decoders/tests/fixtures/dsmr/wassasin_dsmr5/kaifa.txt"
);

fn publish(port: u16, topic: &str, user: &str, secret: &str, payload: &[&str]) -> Output {
    Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-u", user, "-P", secret, "-t", topic])
        .args(payload)
        .output()
        .expect("mosquitto_pub runs (the test command installs mosquitto-clients)")
}

#[test]
fn forged_publishes_power_failures_and_status_bits_are_events_on_both_sources() {
    let ch = ClickHouse::shared();
    let db = ClickHouse::fresh_database("mf_events");
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("fleet.csv");
    std::fs::write(
        &csv,
        format!("meter_id,secret,publish_for\nE1,{E1},\nE2,{E2},\nP1,{P1},\n"),
    )
    .unwrap();
    crate::harness::credentials(tmp.path(), &["import", csv.to_str().unwrap()]);
    let (_cfg, config) = config_file(&format!(
        "[clickhouse]\nurl = \"{}\"\ndatabase = \"{db}\"\n[batch]\nmax_age_ms = 100\n",
        ch.url
    ));
    // The tables first: the test looks at `events` before the first insert would make them.
    crate::harness::apply_schema(&config);
    let server = Server::start_in(tmp, &["--config", &config]);
    let port = server.mqtt_port;

    // E1 publishes for E2: refused, and an event of E2 that names E1.
    let reading = r#"{"readings":[{"channel":"1-0:1.8.0","ts":"2024-03-01T12:00:00Z","value":1,"unit":"kWh"}]}"#;
    let forged = publish(port, "meters/E2/json", "E1", E1, &["-m", reading]);
    assert!(!forged.status.success(), "3.1.1 closes the connection");
    // E1's own report with cover open (bit 2) and a magnetic field (bit 4).
    let flagged = r#"{"readings":[{"channel":"1-0:1.8.0","ts":"2024-03-01T12:15:00Z","value":2,"unit":"kWh"}],"status":{"error_flags":20,"firmware":"4.1"}}"#;
    let ok = publish(port, "meters/E1/json", "E1", E1, &["-m", flagged]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // Its next report: the cover closed again, the field still there, another firmware.
    let next = r#"{"readings":[{"channel":"1-0:1.8.0","ts":"2024-03-01T12:30:00Z","value":3,"unit":"kWh"}],"status":{"error_flags":16,"firmware":"4.2"}}"#;
    let ok = publish(port, "meters/E1/json", "E1", E1, &["-m", next]);
    assert!(ok.status.success());
    // A bare status report of E2: low battery (bit 1).
    let ok = publish(
        port,
        "meters/E2/status",
        "E2",
        E2,
        &["-m", r#"{"error_flags":2}"#],
    );
    assert!(ok.status.success());
    // The same DSMR telegram twice: its log's three failures, once.
    for _ in 0..2 {
        let ok = publish(port, "meters/P1/dsmr", "P1", P1, &["-f", KAIFA]);
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
    }
    crate::harness::wait_for("the events in ClickHouse", || {
        let n: usize = ch
            .query(&format!("SELECT count() FROM {db}.events"))
            .trim()
            .parse()
            .ok()?;
        (n >= 12).then_some(())
    });
    assert_eq!(
        server.metric("meterflow_events_total{kind=\"forged_publish\"}"),
        1.0
    );
    let (status, data_dir, _log, _tmp) = server.stop();
    assert!(status.success());
    // The repeated log was not written again (rows as stored, before any merge).
    assert_eq!(
        ch.query(&format!("SELECT count() FROM {db}.events")).trim(),
        "12"
    );

    let args = [
        "events",
        "--from",
        "2010-01-01",
        "--to",
        "2030-01-01",
        "--tz",
        "UTC",
    ];
    let from_clickhouse = query_csv(&config, &args);
    let (_cfg2, parquet_config) = config_file(&format!("data_dir = {:?}\n", data_dir));
    let from_files = query_csv(&parquet_config, &args);
    assert_eq!(
        from_clickhouse, from_files,
        "both sources give the same events"
    );

    let rows: Vec<Vec<&str>> = from_files
        .lines()
        .skip(1)
        .map(|l| l.splitn(7, ',').collect())
        .collect();
    let brief: Vec<(&str, &str, &str)> = rows.iter().map(|r| (r[1], r[2], r[5])).collect();
    assert_eq!(
        brief[..10],
        [
            ("P1", "power_failure", "1-0:99.97.0 2667"),
            ("P1", "power_restored", "1-0:99.97.0 2667"),
            ("P1", "power_failure", "1-0:99.97.0 817"),
            ("P1", "power_restored", "1-0:99.97.0 817"),
            ("P1", "power_failure", "1-0:99.97.0 4982"),
            ("P1", "power_restored", "1-0:99.97.0 4982"),
            ("E1", "cover_open", "bit 2"),
            ("E1", "magnetic_tamper", "bit 4"),
            // The field still there at 12:30 is the same condition: not again.
            ("E1", "cover_closed", "bit 2"),
            ("E1", "firmware_changed", "4.2"),
        ],
        "{from_files}"
    );
    // The refusal and the low battery were received now: after the meters' own times.
    let recent: Vec<(&str, &str, &str)> = brief[10..].to_vec();
    assert!(
        recent.contains(&("E2", "forged_publish", "E1")),
        "{from_files}"
    );
    assert!(
        recent.contains(&("E2", "low_battery", "bit 1")),
        "{from_files}"
    );
    assert_eq!(recent.len(), 2, "{from_files}");
    // The report's events carry its own time; the forged one says who and how.
    assert!(rows[6][0].starts_with("2024-03-01"), "{from_files}");
    let forged = rows.iter().find(|r| r[2] == "forged_publish").unwrap();
    assert_eq!(forged[3], "critical");
    assert!(forged[6].contains("identity E1"), "{}", forged[6]);

    // --kind and --meter narrow it.
    let only = query_csv(
        &parquet_config,
        &[
            "events",
            "--from",
            "2010-01-01",
            "--to",
            "2030-01-01",
            "--meter",
            "P1",
            "--kind",
            "power_failure",
        ],
    );
    assert_eq!(only.lines().count(), 1 + 3, "{only}");
    let bad = Command::new(crate::harness::BIN)
        .args([
            "query",
            "--config",
            &parquet_config,
            "events",
            "--from",
            "2024-01-01",
        ])
        .args(["--to", "2024-02-01", "--kind", "teleport"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("forged_publish"),
        "the error lists the kinds"
    );
}
