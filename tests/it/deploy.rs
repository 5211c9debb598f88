//! What `deploy/` ships works: the Grafana dashboard's ClickHouse queries run on a real
//! ClickHouse against the real schema and give the right figures for known data, its
//! Prometheus queries name metrics meterflow exports, the alerting rules pass Prometheus's
//! own checker and unit tests and name exported metrics, and the systemd unit starts the
//! binary with flags it has.

use std::process::Command;

use crate::harness::{config_file, ClickHouse, BIN};
use serde_json::Value;

const DASHBOARD: &str = include_str!("../../deploy/grafana/meterflow.json");
const UNIT: &str = include_str!("../../deploy/meterflow.service");
const ARCHITECTURE: &str = include_str!("../../docs/ARCHITECTURE.md");
const ALERTS: &str = include_str!("../../deploy/prometheus/alerts.yml");

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
    // Yesterday, meter G1: import register 100 -> 102.5 kWh, gas 10 -> 10.75 m3 (and a
    // reading just now); a reverse run on G2, a reset on G6 (1000 -> 5); an error flag on G3,
    // and one on G8 in a report whose own time is ten days back (received now); G7's gas
    // volume standing still for four days; no reading from G4 for three hours, nor from G9,
    // received just now but read three hours ago.
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
        row("G6", "1-0:1.8.1", 1, 1000.0, "now()"),
        row("G6", "1-0:1.8.1", 20, 5.0, "now()"),
    ];
    let now_row = |meter: &str, seconds_ago: u32, received: &str| {
        format!("('{meter}', '1-0:1.7.0', toDateTime(toUInt32(now()) - {seconds_ago}), 1, 'kW', 0, {received}, 'mqtt', 'json')")
    };
    let mut rows = rows.to_vec();
    rows.push(now_row("G1", 0, "now()"));
    rows.push(now_row("G4", 3 * 3600, "now() - 3 * 3600"));
    rows.push(now_row("G9", 3 * 3600, "now()"));
    // What per-day panels got wrong: G10 reset at 05:00 and then rose by more than 1 % of the
    // old value the same day (a reset, not a reverse run); G11 is read once a day and fell
    // between two days; G12 has been silent for 40 days (longer than the stale panel reads).
    rows.push(row("G10", "1-0:1.8.0", 1, 1000.0, "now()"));
    rows.push(row("G10", "1-0:1.8.0", 5, 2.0, "now()"));
    rows.push(row("G10", "1-0:1.8.0", 20, 50.0, "now()"));
    rows.push(format!("('G11', '1-0:1.8.0', toDateTime({day} - 86400 + 3600), 300, 'kWh', 0, now(), 'mqtt', 'json')"));
    rows.push(row("G11", "1-0:1.8.0", 1, 250.0, "now()"));
    rows.push(format!(
        "('G12', '1-0:1.8.0', toDateTime({day} - 39 * 86400), 7, 'kWh', 0, now(), 'mqtt', 'json')"
    ));
    // What the consumption and anomaly panels got wrong, `days` back at `hour`: G14 reports
    // its total register (1.8.0, counted; its tariff register 1.8.1 is not) and gas, each with
    // a step across midnight into yesterday; G17's tariff registers fell from readings eight
    // days back (before the range) to six days back: 1.8.1 a little (a reverse run), 1.8.2
    // to below 1 %, a reset that counts its new value (2 kWh). G18's export register was
    // stored twice yesterday at 01:00, 300 and, received later, 200 (the copy that counts):
    // its 250 at 20:00 is no fall. G7's gas volume moves again after the range's end.
    let back = |meter: &str, channel: &str, days: u32, hour: u32, value: f64| {
        format!("('{meter}', '{channel}', toDateTime(toStartOfDay(now()) - {days} * 86400 + {hour} * 3600), {value}, 'kWh', 0, now(), 'mqtt', 'json')")
    };
    rows.push(back("G14", "1-0:1.8.0", 2, 22, 10.0));
    rows.push(back("G14", "1-0:1.8.0", 1, 2, 11.0));
    rows.push(back("G14", "1-0:1.8.0", 1, 20, 12.0));
    rows.push(back("G14", "1-0:1.8.1", 1, 2, 500.0));
    rows.push(back("G14", "1-0:1.8.1", 1, 20, 600.0));
    rows.push(back("G14", "0-1:24.2.1", 2, 22, 5.0));
    rows.push(back("G14", "0-1:24.2.1", 1, 2, 5.5));
    rows.push(back("G14", "0-1:24.2.1", 1, 20, 6.0));
    rows.push(back("G17", "1-0:1.8.1", 8, 1, 800.0));
    rows.push(back("G17", "1-0:1.8.1", 6, 1, 700.0));
    rows.push(back("G17", "1-0:1.8.2", 8, 1, 800.0));
    rows.push(back("G17", "1-0:1.8.2", 6, 1, 2.0));
    rows.push(row("G18", "1-0:2.8.1", 1, 300.0, "now() - 3600"));
    rows.push(row("G18", "1-0:2.8.1", 1, 200.0, "now()"));
    rows.push(row("G18", "1-0:2.8.1", 20, 250.0, "now()"));
    rows.push(format!(
        "('G7', '0-1:24.2.1', toDateTime({day} + 4 * 86400 + 3600), 43, 'm3', 0, now(), 'mqtt', 'json')"
    ));
    for days_back in 1..=5 {
        rows.push(format!("('G7', '0-1:24.2.1', toDateTime(toStartOfDay(now()) - {days_back} * 86400 + 3600), 42.5, 'm3', 0, now(), 'mqtt', 'json')"));
    }
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
    ch.query(&format!(
        "INSERT INTO {db}.device_status (meter_id, at, error_flags, source, ts) VALUES \
         ('G8', now(), 2, 'mqtt', now() - 10 * 86400), \
         ('G13', now(), 8, 'mqtt', now() + 86400)"
    ));
    // VEE: run 1 judged yesterday for every meter (V1 a gap, V2 a spike); run 2, later,
    // judged V1 again (a high_low, its gap taken back); run 3 never finished (no row).
    ch.query(&format!(
        "INSERT INTO {db}.vee_runs (run_id, period_from, period_to, timezone, meter, trigger, parameters, meters, exceptions, mended, version_written) VALUES \
         (1, toDateTime({day}), toDateTime({day} + 86400), 'UTC', '', 'schedule', '{{}}', 3, 2, 4, 1), \
         (2, toDateTime({day}), toDateTime({day} + 86400), 'UTC', 'V1', 'command', '{{}}', 1, 1, 0, 0)"
    ));
    ch.query(&format!(
        "INSERT INTO {db}.vee_exceptions (run_id, day, meter_id, channel, rule, from_ts, to_ts, detail, estimated, mended, method) VALUES \
         (1, toDate(toDateTime({day})), 'V1', '1-0:1.8.0', 'gap', toDateTime({day} + 36000), toDateTime({day} + 39600), '4 reads missing', 1, 4, 'linear'), \
         (1, toDate(toDateTime({day})), 'V2', '1-0:1.8.0', 'spike', toDateTime({day} + 39600), toDateTime({day} + 39600), 'a spike', 1, 1, 'substitute'), \
         (2, toDate(toDateTime({day})), 'V1', '1-0:1.8.0', 'high_low', toDateTime({day}), toDateTime({day} + 86400), 'a high day', 0, 0, ''), \
         (3, toDate(toDateTime({day})), 'V3', '1-0:1.8.0', 'gap', toDateTime({day} + 36000), toDateTime({day} + 39600), 'cut short', 0, 0, '')"
    ));
    // Revenue protection: the registry's newest import (2) puts head H1 and customers C1, C2
    // on feeder F1; the older import (1) had C9 there too (not counted). Yesterday H1 used
    // 100 kWh, C1 40 and C2 30 (a loss of 30), C9 15. S1 had a magnet 1 day back (reported
    // twice) after using 4 kWh a day: 120 kWh from 20 to 8 days back, 4 in the range.
    ch.query(&format!(
        "INSERT INTO {db}.meters (imported_at, meter_id, kind, model, expected_interval_s, district, feeder, transformer, role, import_only, tariff, valid_from, valid_to, line) VALUES \
         (1, 'C9', 'electricity', '', NULL, 'D', 'F1', '', 'customer', 0, '', NULL, NULL, 2), \
         (2, 'H1', 'electricity', '', 900, 'D', 'F1', '', 'feeder_head', 0, '', NULL, NULL, 2), \
         (2, 'C1', 'electricity', '', 900, 'D', 'F1', '', 'customer', 1, '', NULL, NULL, 3), \
         (2, 'C2', 'electricity', '', 900, 'D', 'F1', '', 'customer', 1, '', NULL, NULL, 4), \
         (1, '', '', '', NULL, '', '', '', '', 0, '', NULL, NULL, 1), \
         (2, '', '', '', NULL, '', '', '', '', 0, '', NULL, NULL, 3)"
    ));
    let mut revenue = Vec::new();
    for (meter, before, after) in [
        ("H1", 1000.0, 1100.0),
        ("C1", 500.0, 540.0),
        ("C2", 200.0, 230.0),
        ("C9", 10.0, 25.0),
    ] {
        revenue.push(back(meter, "1-0:1.8.0", 2, 22, before));
        revenue.push(back(meter, "1-0:1.8.0", 1, 20, after));
    }
    for (days, value) in [(20, 100.0), (8, 220.0), (6, 221.0), (1, 225.0)] {
        revenue.push(back("S1", "1-0:1.8.0", days, 1, value));
    }
    ch.query(&format!(
        "INSERT INTO {db}.readings (meter_id, channel, ts, value, unit, quality, received_at, source, format) VALUES {}",
        revenue.join(", ")
    ));
    ch.query(&format!(
        "INSERT INTO {db}.events (meter_id, ts, kind, severity, source, code, detail, raw) VALUES \
         ('S1', toDateTime(toStartOfDay(now()) - 86400 + 3600), 'magnetic_tamper', 'critical', 'mqtt', 'bit 4', '', ''), \
         ('S1', toDateTime(toStartOfDay(now()) - 86400 + 3600), 'magnetic_tamper', 'critical', 'mqtt', 'bit 4', '', ''), \
         ('E2', toDateTime(toStartOfDay(now()) - 2 * 86400 + 3600), 'forged_publish', 'critical', 'mqtt', 'E1', '', ''), \
         ('P1', toDateTime(toStartOfDay(now()) - 2 * 86400 + 7200), 'power_failure', 'warning', 'mqtt', '1-0:99.97.0 240', '', '')"
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
            // The range ends a minute from now (rows written "now" are inside it).
            .replace("$__toTime", "toDateTime(toUInt32(now()) + 60)");
        ch.query(&sql)
    };
    let every_sql: Vec<String> = targets()
        .into_iter()
        .filter(|(_, t)| t["rawSql"].is_string())
        .map(|(t, _)| t)
        .collect();
    assert_eq!(every_sql.len(), 13, "{every_sql:?}");
    for title in &every_sql {
        run(title); // runs without error
    }
    // The value of each day with readings, oldest first.
    let per_day = |text: &str| -> Vec<String> {
        text.lines()
            .map(|l| l.split('\t').nth(1).unwrap_or("").to_string())
            .collect()
    };
    let import = run(
        "Import consumption per UTC day, kWh (all meters: 1.8.0, else the sum of 1.8.1, 1.8.2, ...)",
    );
    assert_eq!(
        per_day(&import),
        ["3", "0", "248.5"],
        "six days back G17's reset from before the range and S1's 1; two days back the first \
         readings of G11, G14 and the feeder's meters; yesterday G1 2.5, G6 5 and G10 50 \
         (resets), G14 2 (1.8.0 across midnight, not 1.8.1), G2 and G11 0 (reverse runs), H1 \
         100, C1 40, C2 30, C9 15 and S1 4: {import}"
    );
    let gas = run("Gas per UTC day, m3 (24.2.x)");
    assert_eq!(
        per_day(&gas),
        ["0", "0", "0", "0", "1.75"],
        "G7 still; yesterday G1 0.75 and G14 1 (across midnight): {gas}"
    );
    let first_two = |text: &str| -> Vec<String> {
        text.lines()
            .map(|l| l.split('\t').take(2).collect::<Vec<_>>().join(" "))
            .collect()
    };
    let reverse = run(
        "Anomalies: reverse runs (a fall between consecutive readings, not to below 1 %: that is a reset)",
    );
    assert_eq!(
        first_two(&reverse),
        ["G2 1-0:1.8.1", "G11 1-0:1.8.0", "G17 1-0:1.8.1"],
        "G11's fall between days, G17's from before the range; not G10's reset: {reverse}"
    );
    let resets = run("Anomalies: register resets (a fall to below 1 % of the reading before)");
    assert_eq!(
        first_two(&resets),
        ["G6 1-0:1.8.1", "G10 1-0:1.8.0", "G17 1-0:1.8.2"],
        "G10's reset though the day ends above 1 %, G17's from before the range: {resets}"
    );
    let still = run(
        "Anomalies: consumption registers standing still for 3 days or more (1.8.x, 24.2.x, 24.3.0)",
    );
    assert!(
        still.starts_with("G7\t0-1:24.2.1\t"),
        "G7 still in the range, moving after its end: {still}"
    );
    assert_eq!(still.lines().count(), 1, "{still}");
    let flags = run("Anomalies: error flags reported (by the report's own time)");
    assert!(
        flags.starts_with("G3\t") && flags.contains("\t4\t"),
        "{flags}"
    );
    assert_eq!(
        flags.lines().count(),
        1,
        "G8's report is older than the range, G13's after its end: {flags}"
    );
    let stale = run(
        "Stale meters: no reading for 2 h to 30 days before the range's end or now, by the readings' own time (newest first)",
    );
    let stale: Vec<&str> = stale
        .lines()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    for meter in ["G4", "G9", "G2", "G17"] {
        assert!(stale.contains(&meter), "{meter}: {stale:?}");
    }
    assert!(!stale.contains(&"G1"), "{stale:?}");
    assert!(
        !stale.contains(&"G12"),
        "silent for 40 days, beyond the panel's 30: {stale:?}"
    );
    let letters = run("Payloads that did not decode, by meter and kind");
    assert!(letters.starts_with("G5\tmalformed\t2\t"), "{letters}");
    let signal = run("Weakest signal (newest report per meter)");
    assert!(signal.starts_with("G3\t-95"), "{signal}");
    let losses = run(
        "Losses per feeder and UTC day, kWh (head meter minus its customers' import; the registry's newest import)",
    );
    let losses: Vec<Vec<&str>> = losses.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(
        losses.iter().map(|r| (r[1], r[2])).collect::<Vec<_>>(),
        [("F1", "0"), ("F1", "30")],
        "two days back the first readings, yesterday 100 - 40 - 30 (C9 only in the older import): {losses:?}"
    );
    let events = run("Events per day and kind (tamper, alarms, power failures, forged publishes)");
    let events: Vec<Vec<&str>> = events.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(
        events.iter().map(|r| (r[1], r[2])).collect::<Vec<_>>(),
        [
            ("forged_publish", "1"),
            ("power_failure", "1"),
            ("magnetic_tamper", "1")
        ],
        "the magnet reported twice is one event: {events:?}"
    );
    let suspects = run(
        "Suspect meters: tamper or data-path events in the range, and their use per day against the 30 days before (meterflow query suspects ranks all signals)",
    );
    let suspects: Vec<Vec<&str>> = suspects.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(
        suspects.iter().map(|r| (r[0], r[1], r[2], r[4])).collect::<Vec<_>>(),
        [("S1", "1", "magnetic_tamper", "0.14"), ("E2", "1", "forged_publish", "\\N")],
        "S1: 4 kWh over the 7 days of the range against 120 over the 30 before; E2 has no readings: {suspects:?}"
    );
    let vee = run(
        "VEE exceptions per day and rule (local days of the runs, as the latest run that judged each meter and day left them)",
    );
    let vee: Vec<Vec<&str>> = vee.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(
        vee.iter().map(|r| (r[1], r[2])).collect::<Vec<_>>(),
        [("high_low", "1"), ("spike", "1")],
        "V1's gap taken back by run 2, V3's of a run cut short: {vee:?}"
    );
}

/// Every `meterflow_*` metric an expression names is in the metrics table (histogram series
/// by their family); returns how many it named.
fn check_metrics_named(what: &str, expr: &str) -> usize {
    let mut named = 0;
    for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if let Some(metric) = word.strip_prefix("meterflow_") {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| metric.strip_suffix(s))
                .unwrap_or(metric);
            assert!(
                ARCHITECTURE.contains(&format!("`meterflow_{family}`")),
                "{what}: meterflow_{family} is not in the metrics table of docs/ARCHITECTURE.md"
            );
            named += 1;
        }
    }
    named
}

/// `deploy/prometheus/alerts.yml` passes `promtool check rules` and the unit tests of
/// `alerts_test.yml` (Debian's prometheus package, which the test command installs), and
/// each rule's expression names metrics meterflow exports.
#[test]
fn the_alerting_rules_check_and_fire_as_tested() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus");
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("promtool runs (the test command installs Debian's prometheus package)");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut rules = 0;
    for line in ALERTS.lines() {
        if let Some(expr) = line.trim().strip_prefix("expr:") {
            rules += 1;
            assert!(check_metrics_named("alerts.yml", expr) > 0, "{expr}");
        }
    }
    assert!(rules >= 10, "{rules}");
}

#[test]
fn the_dashboards_prometheus_queries_name_exported_metrics() {
    let mut named = 0;
    for (title, target) in targets() {
        let Some(expr) = target["expr"].as_str() else {
            continue;
        };
        named += check_metrics_named(&title, expr);
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
