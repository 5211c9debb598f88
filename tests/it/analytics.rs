//! `meterflow query` against the real ClickHouse with known data: consumption computed by
//! hand, each anomaly kind detected, nothing flagged on clean data, duplicates counted once.

use std::process::Command;

use crate::harness::{config_file, ClickHouse, BIN};

const DAY: i64 = 86_400;
/// 2024-03-01T00:00:00Z
const T0: i64 = 1_709_251_200;

fn row(meter: &str, channel: &str, ts: i64, value: f64, unit: &str, received: &str) -> String {
    format!("('{meter}', '{channel}', toDateTime({ts}), {value}, '{unit}', 0, {received}, 'mqtt', 'json')")
}

fn query(config: &str, args: &[&str]) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let out = Command::new(BIN)
        .arg("query")
        .args(["--config", config, "--format", "json"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<_>>(&out.stdout).unwrap()
}

/// A cell as text: a JSON number as printed, null as "".
fn cell(
    rows: &[serde_json::Map<String, serde_json::Value>],
    meter: &str,
    channel: &str,
    column: &str,
) -> String {
    match &rows
        .iter()
        .find(|r| r["meter_id"] == meter && r["channel"] == channel)
        .unwrap_or_else(|| panic!("no row for {meter} {channel} in {rows:?}"))[column]
    {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        serde_json::Value::Number(n) => n.to_string(),
        other => panic!("{column}: {other}"),
    }
}

#[test]
fn billing_anomalies_and_devices_on_known_data() {
    let ch = ClickHouse::shared();
    let db = ClickHouse::fresh_database("mf_query");
    let (_cfg, config) = config_file(&format!(
        "[clickhouse]\nurl = \"{}\"\ndatabase = \"{db}\"\n",
        ch.url
    ));
    crate::harness::apply_schema(&config);

    let now = "now()";
    let old = "toDateTime(toUInt32(now()) - 2 * 86400)";
    let h = 3600;
    let mut rows = vec![
        // A: clean. T1 100 -> 102, T2 50 -> 51, export 10 -> 10.5, gas 300 -> 300.125 m3.
        row("A", "1-0:1.8.1", T0, 100.0, "kWh", now),
        row("A", "1-0:1.8.1", T0 + 6 * h, 100.5, "kWh", now),
        row("A", "1-0:1.8.1", T0 + 6 * h, 100.5, "kWh", now), // delivered twice
        row("A", "1-0:1.8.1", T0 + 12 * h, 101.25, "kWh", now),
        row("A", "1-0:1.8.1", T0 + 18 * h, 102.0, "kWh", now),
        row("A", "1-0:1.8.2", T0, 50.0, "kWh", now),
        row("A", "1-0:1.8.2", T0 + 12 * h, 50.25, "kWh", now),
        row("A", "1-0:1.8.2", T0 + 18 * h, 51.0, "kWh", now),
        row("A", "1-0:2.8.1", T0, 10.0, "kWh", now),
        row("A", "1-0:2.8.1", T0 + 18 * h, 10.5, "kWh", now),
        row("A", "0-1:24.2.1", T0, 300.0, "m3", now),
        row("A", "0-1:24.2.1", T0 + 18 * h, 300.125, "m3", now),
        // Outside the period: ignored.
        row("A", "1-0:1.8.1", T0 + 10 * DAY, 900.0, "kWh", now),
        // B: a reverse run on T1 (1001 -> 999), a reset on T2 (99999 -> 5).
        row("B", "1-0:1.8.1", T0, 1000.0, "kWh", now),
        row("B", "1-0:1.8.1", T0 + h, 1001.0, "kWh", now),
        row("B", "1-0:1.8.1", T0 + 2 * h, 999.0, "kWh", now),
        row("B", "1-0:1.8.1", T0 + 3 * h, 1000.5, "kWh", now),
        row("B", "1-0:1.8.2", T0, 99999.0, "kWh", now),
        row("B", "1-0:1.8.2", T0 + h, 5.0, "kWh", now),
        row("B", "1-0:1.8.2", T0 + 2 * h, 7.0, "kWh", now),
        // C: an import register standing still for four days.
        row("C", "1-0:1.8.1", T0, 500.0, "kWh", now),
        row("C", "1-0:1.8.1", T0 + 2 * DAY, 500.0, "kWh", now),
        row("C", "1-0:1.8.1", T0 + 4 * DAY, 500.0, "kWh", now),
        // E: last heard two days ago.
        row("E", "1-0:1.8.1", T0, 1.0, "kWh", old),
        // F: received by a node whose clock runs two minutes ahead of the server's: just
        // heard, not missing from the list.
        row(
            "F",
            "1-0:1.8.1",
            T0,
            2.0,
            "kWh",
            "toDateTime(toUInt32(now()) + 120)",
        ),
    ];
    // D: a quarter-hour series of 0.1 kWh with one 2.0 spike and two intervals missing.
    for i in 0..14 {
        if i == 6 || i == 7 {
            continue;
        }
        let v = if i == 10 { 2.0 } else { 0.1 };
        rows.push(row("D", "1-0:1.29.0", T0 + i * 900, v, "kWh", now));
    }
    ch.query(&format!(
        "INSERT INTO {db}.readings VALUES {}",
        rows.join(", ")
    ));
    // Status reports: A healthy (battery reported first, firmware later), B with error flags.
    ch.query(&format!(
        "INSERT INTO {db}.device_status (meter_id, at, battery_pct, rssi_dbm, rsrp_dbm, snr_db, \
         firmware, error_flags, source, lsn) VALUES \
         ('A', toDateTime({}), 87, -71, NULL, NULL, '4.2.17', 0, 'mqtt', 1), \
         ('A', toDateTime({}), NULL, -75, NULL, NULL, '4.2.18', NULL, 'mqtt', 2), \
         ('B', toDateTime({}), 40, NULL, NULL, NULL, NULL, 5, 'mqtt', 3)",
        T0,
        T0 + 3600,
        T0 + 7200
    ));

    let period = ["--from", "2024-03-01", "--to", "2024-03-06"];
    let billing = query(&config, &[&["billing"][..], &period[..]].concat());
    assert_eq!(cell(&billing, "A", "1-0:1.8.1", "consumption"), "2");
    assert_eq!(
        cell(&billing, "A", "1-0:1.8.1", "register"),
        "import tariff 1"
    );
    assert_eq!(
        cell(&billing, "A", "1-0:1.8.1", "readings"),
        "4",
        "the duplicate counts once"
    );
    assert_eq!(cell(&billing, "A", "1-0:1.8.2", "consumption"), "1");
    // JSON: numbers as numbers, nothing as null, meter ids and channels as text.
    let a = billing
        .iter()
        .find(|r| r["meter_id"] == "A" && r["channel"] == "1-0:1.8.1")
        .unwrap();
    assert_eq!(a["consumption"], 2);
    assert_eq!(a["readings"], 4);
    assert!(a["channel"].is_string() && a["start_read"].is_string());
    assert_eq!(cell(&billing, "A", "1-0:2.8.1", "consumption"), "0.5");
    assert_eq!(
        cell(&billing, "A", "1-0:2.8.1", "register"),
        "export tariff 1"
    );
    assert_eq!(cell(&billing, "A", "0-1:24.2.1", "consumption"), "0.125");
    assert_eq!(cell(&billing, "A", "0-1:24.2.1", "unit"), "m3");
    assert_eq!(
        cell(&billing, "B", "1-0:1.8.1", "consumption"),
        "2.5",
        "1 + (reverse run: 0) + 1.5"
    );
    assert_eq!(
        cell(&billing, "B", "1-0:1.8.2", "consumption"),
        "7",
        "counts on from zero after the reset"
    );
    assert_eq!(cell(&billing, "B", "1-0:1.8.2", "resets"), "1");
    assert_eq!(cell(&billing, "C", "1-0:1.8.1", "consumption"), "0");
    assert!(
        billing.iter().all(|r| r["meter_id"] != "D"),
        "interval series are not registers"
    );
    let one = query(
        &config,
        &[&["billing", "--meter", "A"][..], &period[..]].concat(),
    );
    assert_eq!(one.len(), 4);

    // Stale: no reading, by its own time, for 5 days before the period's end (E and F read
    // last at T0; F was received just now, which does not count).
    let anomalies = query(
        &config,
        &[&["anomalies", "--stale-after", "5d"][..], &period[..]].concat(),
    );
    let kinds: Vec<(String, String, String)> = anomalies
        .iter()
        .map(|r| {
            (
                r["meter_id"].as_str().unwrap().into(),
                // No channel (a meter's anomaly) is null.
                r["channel"].as_str().map_or_else(
                    || {
                        assert!(r["channel"].is_null(), "{r:?}");
                        String::new()
                    },
                    str::to_string,
                ),
                r["kind"].as_str().unwrap().into(),
            )
        })
        .collect();
    let want = [
        ("B", "", "error_flags"),
        ("B", "1-0:1.8.1", "reverse_run"),
        ("B", "1-0:1.8.2", "register_reset"),
        ("C", "1-0:1.8.1", "zero_consumption"),
        ("D", "1-0:1.29.0", "missing_intervals"),
        ("D", "1-0:1.29.0", "spike"),
        ("E", "", "stale"),
        ("F", "", "stale"),
    ];
    let want: Vec<(String, String, String)> = want
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(kinds, want, "{anomalies:#?}");
    let missing = anomalies
        .iter()
        .find(|r| r["kind"] == "missing_intervals")
        .unwrap();
    assert!(
        missing["detail"]
            .as_str()
            .unwrap()
            .starts_with("2 quarter-hour"),
        "{missing:?}"
    );
    assert!(
        !kinds.iter().any(|k| k.0 == "A"),
        "nothing flagged on clean data"
    );

    let all = query(&config, &["devices"]);
    let listed: Vec<&str> = all
        .iter()
        .map(|d| d["meter_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["A", "B", "C", "D", "E", "F"], "every meter, F too");
    let f = all.iter().find(|d| d["meter_id"] == "F").unwrap();
    assert_eq!(f["seconds_since"], 0, "a clock ahead reads as just heard");
    let devices = query(&config, &["devices", "--meter", "A"]);
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0]["readings"], 12, "A's rows after dedupe");
    // Every channel's newest value, in channel order, each time with its zone.
    let last_values = devices[0]["last_values"].as_str().unwrap();
    let channels: Vec<&str> = last_values
        .split("; ")
        .map(|v| v.split('=').next().unwrap())
        .collect();
    assert_eq!(
        channels,
        ["0-1:24.2.1", "1-0:1.8.1", "1-0:1.8.2", "1-0:2.8.1"],
        "{last_values}"
    );
    assert!(
        last_values.contains("1-0:1.8.1=900 kWh @ 2024-03-11T00:00:00+00:00"),
        "{last_values}"
    );
    assert!(devices[0]["last_seen"]
        .as_str()
        .unwrap()
        .ends_with("+00:00"));
    assert_eq!(
        devices[0]["battery_pct"], 87,
        "the newest report that carried a battery level"
    );
    assert_eq!(devices[0]["rssi_dbm"], -75);
    assert_eq!(devices[0]["firmware"], "4.2.18");
    let stale = query(&config, &["devices", "--stale-after", "1d"]);
    assert_eq!(stale.len(), 1);
    assert_eq!(stale[0]["meter_id"], "E");
    ch.query(&format!("DROP DATABASE {db}"));
}

/// The flags a new user types first work on either side of the subcommand, and a subcommand
/// lists only the flags it uses.
#[test]
fn shared_flags_work_before_or_after_the_subcommand_and_listeners_belong_to_serve() {
    let ch = ClickHouse::shared();
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, text) = run(&["schema", "--apply", "--clickhouse-url", &ch.url]);
    assert!(ok, "{text}");
    for args in [
        vec![
            "query",
            "devices",
            "--format",
            "json",
            "--clickhouse-url",
            &ch.url,
        ],
        vec![
            "--clickhouse-url",
            &ch.url,
            "query",
            "devices",
            "--format",
            "json",
        ],
    ] {
        let (ok, text) = run(&args);
        assert!(ok, "{args:?}: {text}");
        assert!(text.trim_start().starts_with('['), "{args:?}: {text}");
    }
    // A serve config with a public HTTP listener and its token elsewhere (the environment of
    // the systemd unit) is fine for query: listeners are serve's business.
    let (_dir, public) = config_file(&format!(
        "[http]\nlisten = \"0.0.0.0:8080\"\n[clickhouse]\nurl = \"{}\"\n",
        ch.url
    ));
    let (ok, text) = run(&["query", "devices", "--config", &public]);
    assert!(ok, "{text}");
    for subcommand in ["query", "schema", "credentials"] {
        let (ok, help) = run(&[subcommand, "--help"]);
        assert!(ok);
        assert!(
            help.contains("--config") && help.contains("--data-dir"),
            "{subcommand}: {help}"
        );
        for listener in [
            "--mqtt-listen",
            "--coap-listen",
            "--http-listen",
            "--http-token",
        ] {
            assert!(
                !help.contains(listener),
                "{subcommand} lists {listener}:\n{help}"
            );
        }
    }
    let (_, serve_help) = run(&["serve", "--help"]);
    assert!(serve_help.contains("--mqtt-listen") && serve_help.contains("--clickhouse-url"));
}
