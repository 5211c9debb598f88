//! What `deploy/` ships works: the Grafana dashboard's ClickHouse queries run on a real
//! ClickHouse against the real schema and give the right figures for known data, its
//! Prometheus queries name metrics meterflow exports, and the systemd unit starts the binary
//! with flags it has.

use std::process::Command;

use crate::harness::{config_file, ClickHouse, BIN};
use serde_json::Value;

const DASHBOARD: &str = include_str!("../../deploy/grafana/meterflow.json");
const UNIT: &str = include_str!("../../deploy/meterflow.service");
const ARCHITECTURE: &str = include_str!("../../docs/ARCHITECTURE.md");

fn targets() -> Vec<(String, Value)> {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or("").to_string();
            p["targets"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |t| (title.clone(), t))
        })
        .collect()
}

#[test]
fn the_dashboards_clickhouse_queries_run_and_count_right() {
    let ch = ClickHouse::shared();
    let db = ClickHouse::fresh_database("mf_grafana");
    let (_cfg, config) = config_file(&format!(
        "[clickhouse]\nurl = \"{}\"\ndatabase = \"{db}\"\n",
        ch.url
    ));
    crate::harness::apply_schema(&config);
    // Yesterday, meter G1: import register 100 -> 102.5 kWh, gas 10 -> 10.75 m3; a reverse
    // run on G2; an error flag on G3; nothing heard from G4 for three hours.
    let day = "toStartOfDay(now()) - 86400";
    let row = |meter: &str, channel: &str, hours: u32, value: f64, received: &str| {
        format!("('{meter}', '{channel}', toDateTime({day} + {hours} * 3600), {value}, 'kWh', 0, {received}, 'mqtt', 'json')")
    };
    let rows = [
        row("G1", "1-0:1.8.1", 1, 100.0, "now()"),
        row("G1", "1-0:1.8.1", 20, 102.5, "now()"),
        row("G1", "0-1:24.2.1", 1, 10.0, "now()"),
        row("G1", "0-1:24.2.1", 20, 10.75, "now()"),
        row("G2", "1-0:1.8.1", 1, 500.0, "now()"),
        row("G2", "1-0:1.8.1", 20, 400.0, "now()"),
        row("G4", "1-0:1.8.1", 1, 7.0, "now() - 3 * 3600"),
    ];
    ch.query(&format!(
        "INSERT INTO {db}.readings (meter_id, channel, ts, value, unit, quality, received_at, source, format) VALUES {}",
        rows.join(", ")
    ));
    ch.query(&format!(
        "INSERT INTO {db}.dead_letters (received_at, source, topic, meter_id, format, kind, reason, payload) VALUES \
         (now(), 'coap', 'meters/G5/json', 'G5', 'json', 'malformed', 'json: malformed at line 1', '{{'), \
         (now(), 'coap', 'meters/G5/json', 'G5', 'json', 'malformed', 'json: malformed at line 2', '{{x')"
    ));
    ch.query(&format!(
        "INSERT INTO {db}.device_status (meter_id, at, battery_pct, rssi_dbm, rsrp_dbm, snr_db, firmware, error_flags, source) VALUES \
         ('G3', now(), 40, -95, NULL, NULL, '1.0', 4, 'mqtt')"
    ));
    let run = |title: &str| -> String {
        let (_, target) = targets()
            .into_iter()
            .find(|(t, _)| t == title)
            .unwrap_or_else(|| panic!("no panel {title:?}"));
        let sql = target["rawSql"]
            .as_str()
            .unwrap()
            .replace("meterflow.", &format!("{db}."))
            .replace("$__fromTime", "toDateTime(toUInt32(now()) - 7 * 86400)")
            .replace("$__toTime", "now()");
        ch.query(&sql)
    };
    let every_sql: Vec<String> = targets()
        .into_iter()
        .filter(|(_, t)| t["rawSql"].is_string())
        .map(|(t, _)| t)
        .collect();
    assert_eq!(every_sql.len(), 7, "{every_sql:?}");
    for title in &every_sql {
        run(title); // runs without error
    }
    let import = run("Import consumption per day, kWh (registers 1.8.x, all meters)");
    assert!(import.trim().ends_with("\t2.5"), "{import}");
    let gas = run("Gas per day, m3 (24.2.x)");
    assert!(gas.trim().ends_with("\t0.75"), "{gas}");
    let reverse = run("Anomalies: registers that ran backwards (per day)");
    assert!(reverse.starts_with("G2\t1-0:1.8.1"), "{reverse}");
    assert_eq!(reverse.lines().count(), 1, "{reverse}");
    let flags = run("Anomalies: error flags reported");
    assert!(
        flags.starts_with("G3\t") && flags.contains("\t4\t"),
        "{flags}"
    );
    let stale = run("Stale meters: not heard for 2 h (newest first)");
    assert!(stale.starts_with("G4\t"), "{stale}");
    assert_eq!(stale.lines().count(), 1, "{stale}");
    let letters = run("Payloads that did not decode, by meter and kind");
    assert!(letters.starts_with("G5\tmalformed\t2\t"), "{letters}");
    let signal = run("Weakest signal (newest report per meter)");
    assert!(signal.starts_with("G3\t-95"), "{signal}");
}

#[test]
fn the_dashboards_prometheus_queries_name_exported_metrics() {
    let mut named = 0;
    for (title, target) in targets() {
        let Some(expr) = target["expr"].as_str() else {
            continue;
        };
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if let Some(metric) = word.strip_prefix("meterflow_") {
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| metric.strip_suffix(s))
                    .unwrap_or(metric);
                assert!(
                    ARCHITECTURE.contains(&format!("`meterflow_{family}`")),
                    "{title}: meterflow_{family} is not in the metrics table of docs/ARCHITECTURE.md"
                );
                named += 1;
            }
        }
    }
    assert!(named >= 14, "{named}");
}

#[test]
fn the_systemd_unit_runs_the_binary_with_flags_it_has() {
    let exec = UNIT
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/meterflow"));
    assert_eq!(words.next(), Some("serve"));
    let help = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in words.filter(|w| w.starts_with("--")) {
        assert!(
            help.contains(flag),
            "{flag} is not a flag of meterflow serve"
        );
    }
    // And the environment it reads is the one serve takes.
    assert!(help.contains("METERFLOW_HTTP_TOKEN"));
    // Nothing it writes is open to other users (issue 20, finding 6).
    assert!(
        UNIT.lines().any(|l| l == "UMask=0027"),
        "the unit sets UMask=0027"
    );
    // systemd's own check, with the unit's binary path pointed at the built one.
    if let Ok(out) = Command::new("systemd-analyze").arg("--version").output() {
        if out.status.success() {
            let dir = tempfile::tempdir().unwrap();
            let unit = dir.path().join("meterflow.service");
            std::fs::write(&unit, UNIT.replace("/usr/local/bin/meterflow", BIN)).unwrap();
            let verify = Command::new("systemd-analyze")
                .arg("verify")
                .arg(&unit)
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&verify.stderr);
            // Outside a booted systemd, verify may complain about the environment; never
            // about the unit's own keys.
            assert!(
                !said.contains("Unknown key") && !said.contains("Failed to parse"),
                "{said}"
            );
        }
    }
}
