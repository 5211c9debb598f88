//! `meterflow query anomalies` and `query devices` end to end, on a real ClickHouse (18.16)
//! and on the Parquet tree alike: the same readings imported into both (`meterflow import`),
//! status reports sent once through `meterflow serve` (a real MQTT publish) that writes them
//! to both, and both answers required byte for byte the same and equal to figures written
//! here: a reset, a reverse run (against a duplicate of another value), a gas register
//! standing still for four days, a quarter-hour series with a gap and a spike, error flags in
//! a report whose own time is inside the period but that arrived long after it, a stale meter,
//! a reset across the period's start, an empty firmware; times in Asia/Bishkek (UTC+6).

use std::process::Command;

use crate::harness::{
    config_file, import_canonical_csv, mosquitto_pub, query_csv, wait_for, ClickHouse, Server, BIN,
};

const H: i64 = 3_600_000;
const D: i64 = 24 * H;
const Q: i64 = 900_000;
/// 2024-03-01T00:00:00+06:00, the period's start in Asia/Bishkek.
const FROM: i64 = 1_709_229_600_000;

fn local(ms: i64) -> String {
    let zone = chrono::FixedOffset::east_opt(6 * 3600).unwrap();
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .with_timezone(&zone)
        .to_rfc3339()
}

/// `(meter, channel, ts, value, unit)`, written as the CSV `meterflow import` maps.
fn readings() -> Vec<(&'static str, &'static str, i64, f64, &'static str)> {
    let mut rows = vec![
        // A reset (99995 -> 4), one reading delivered twice.
        ("RST", "1-0:1.8.0", FROM + H, 99_990.0, "kWh"),
        ("RST", "1-0:1.8.0", FROM + 2 * H, 99_995.0, "kWh"),
        ("RST", "1-0:1.8.0", FROM + 2 * H, 99_995.0, "kWh"),
        ("RST", "1-0:1.8.0", FROM + 3 * H, 4.0, "kWh"),
        ("RST", "1-0:1.8.0", FROM + 4 * H, 6.0, "kWh"),
        ("RST", "1-0:1.8.0", FROM + 4 * D + 20 * H, 8.0, "kWh"),
        // A reverse run (1001 -> 999); two copies of 2 h, equally new: the greater counts.
        ("REV", "1-0:1.8.0", FROM + H, 1000.0, "kWh"),
        ("REV", "1-0:1.8.0", FROM + 2 * H, 1000.9, "kWh"),
        ("REV", "1-0:1.8.0", FROM + 2 * H, 1001.0, "kWh"),
        ("REV", "1-0:1.8.0", FROM + 3 * H, 999.0, "kWh"),
        ("REV", "1-0:1.8.0", FROM + 4 * H, 1000.5, "kWh"),
        ("REV", "1-0:1.8.0", FROM + 4 * D + 20 * H, 1002.0, "kWh"),
        // Not heard since 02:00 on the first day.
        ("OLD", "1-0:1.8.0", FROM + H, 10.0, "kWh"),
        ("OLD", "1-0:1.8.0", FROM + 2 * H, 11.0, "kWh"),
        // A reset across the period's start: the reading before it is 5000.
        ("XST", "1-0:1.8.0", FROM - H, 5000.0, "kWh"),
        ("XST", "1-0:1.8.0", FROM + H, 3.0, "kWh"),
        ("XST", "1-0:1.8.0", FROM + 4 * D + 20 * H, 6.0, "kWh"),
        // FLG's own reading; its report (over MQTT) adds one.
        ("FLG", "1-0:1.8.0", FROM + 4 * D + 12 * H, 10.0, "kWh"),
    ];
    // A gas volume standing still for four days.
    for day in 0..5 {
        rows.push(("GAS", "0-1:24.2.1", FROM + day * D + H, 4321.5, "m3"));
    }
    // Quarter hours from the fifth day: 5 and 6 missing, 10 a spike.
    for slot in 0..16 {
        if slot == 5 || slot == 6 {
            continue;
        }
        let value = if slot == 10 { 3.0 } else { 0.25 };
        rows.push(("QH", "1-0:1.29.0", FROM + 4 * D + slot * Q, value, "kWh"));
    }
    rows
}

/// Drops the test's database at the end, failed or not.
struct Dropped(String);

impl Drop for Dropped {
    fn drop(&mut self) {
        ClickHouse::shared().query(&format!("DROP DATABASE IF EXISTS {}", self.0));
    }
}

/// The same question of both; they must answer the same, byte for byte.
fn both(clickhouse: &str, parquet: &str, args: &[&str]) -> String {
    let on_clickhouse = query_csv(clickhouse, args);
    let on_parquet = query_csv(parquet, args);
    assert_eq!(
        on_clickhouse, on_parquet,
        "ClickHouse and Parquet differ for {args:?}"
    );
    on_parquet
}

#[test]
fn anomalies_and_devices_are_the_same_on_clickhouse_and_on_parquet() {
    let ch = ClickHouse::shared();
    let db = ClickHouse::fresh_database("mf_questions");
    let _drop = Dropped(db.clone());
    let (_ch_dir, clickhouse) = config_file(&format!(
        "[clickhouse]\nurl = \"{}\"\ndatabase = \"{db}\"\n",
        ch.url
    ));
    crate::harness::apply_schema(&clickhouse);

    // The status reports through serve, which writes them (and FLG's reading) to ClickHouse
    // and to the Parquet tree of its data folder.
    let started_s = meterflow_proto::now_ms() / 1000;
    let server = Server::start_with(&["--config", &clickhouse]);
    let payloads = tempfile::tempdir().unwrap();
    let report = payloads.path().join("report.json");
    std::fs::write(
        &report,
        format!(
            r#"{{"meter_id": "FLG", "seq": 1, "readings": [{{"channel": "1-0:1.8.0", "ts": {}, "value": 10.5, "unit": "kWh"}}], "status": {{"error_flags": 6, "battery_pct": 55, "rssi_dbm": -80, "firmware": "1.2.3"}}}}"#,
            FROM + 5 * D - 10 * 60_000
        ),
    )
    .unwrap();
    mosquitto_pub(server.mqtt_port, "meters/FLG/json", &report, &[]);
    // A bare status report has no time of its own: received now, after the period.
    let bare = payloads.path().join("status.json");
    // An empty firmware is no firmware, from both sources: FLG's stays 1.2.3.
    std::fs::write(&bare, r#"{"error_flags": 1, "firmware": ""}"#).unwrap();
    mosquitto_pub(server.mqtt_port, "meters/FLG/status", &bare, &[]);
    wait_for("both status reports in ClickHouse", || {
        let n = ch.query(&format!(
            "SELECT count() FROM {db}.device_status WHERE meter_id = 'FLG'"
        ));
        (n.trim() == "2").then_some(())
    });
    let (exit, data_dir, log, _tmp) = server.stop();
    assert!(exit.success(), "{log}");
    assert!(
        std::fs::read_dir(data_dir.join("status"))
            .unwrap()
            .next()
            .is_some(),
        "status files under {}",
        data_dir.display()
    );

    // The readings, imported into both.
    let csv = payloads.path().join("readings.csv");
    let mut text = String::from("meter_id,channel,ts,value,unit\n");
    for (meter, channel, ts, value, unit) in readings() {
        text.push_str(&format!("{meter},{channel},{ts},{value:?},{unit}\n"));
    }
    std::fs::write(&csv, text).unwrap();
    let (_pq_dir, parquet) = config_file(&format!("data_dir = \"{}\"\n", data_dir.display()));
    import_canonical_csv(&clickhouse, &csv);
    import_canonical_csv(&parquet, &csv);

    let period = [
        "--from",
        "2024-03-01",
        "--to",
        "2024-03-06",
        "--tz",
        "Asia/Bishkek",
    ];
    let anomalies = both(
        &clickhouse,
        &parquet,
        &[&["anomalies"][..], &period[..]].concat(),
    );
    let want = [
        "meter_id,channel,kind,at,detail".to_string(),
        format!(
            "FLG,,error_flags,{},error flags 6",
            local(FROM + 5 * D - 10 * 60_000)
        ),
        format!(
            "GAS,0-1:24.2.1,zero_consumption,{t0},no change from {t0} to {t4} (4321.5 m3)",
            t0 = local(FROM + H),
            t4 = local(FROM + 4 * D + H)
        ),
        format!(
            "OLD,,stale,{},no reading for 424800 s before {}",
            local(FROM + 2 * H),
            local(FROM + 5 * D)
        ),
        format!(
            "QH,1-0:1.29.0,missing_intervals,{t},2 quarter-hour value(s) missing after {t}",
            t = local(FROM + 4 * D + 4 * Q)
        ),
        format!(
            "QH,1-0:1.29.0,spike,{},step 3 kWh against a median of 0.25",
            local(FROM + 4 * D + 10 * Q)
        ),
        format!(
            "REV,1-0:1.8.0,reverse_run,{},fell from 1001 to 999 kWh",
            local(FROM + 3 * H)
        ),
        format!(
            "RST,1-0:1.8.0,register_reset,{},fell from 99995 to 4 kWh",
            local(FROM + 3 * H)
        ),
        format!(
            "XST,1-0:1.8.0,register_reset,{},fell from 5000 to 3 kWh",
            local(FROM + H)
        ),
    ];
    assert_eq!(anomalies, want.join("\n") + "\n");
    assert!(want[1].contains("2024-03-05T23:50:00+06:00"), "{}", want[1]);

    // One meter; and a period that ends before FLG's report: no error flags then.
    let flg = both(
        &clickhouse,
        &parquet,
        &[&["anomalies", "--meter", "FLG"][..], &period[..]].concat(),
    );
    assert_eq!(flg, format!("{}\n{}\n", want[0], want[1]));
    let earlier = both(
        &clickhouse,
        &parquet,
        &[
            "anomalies",
            "--meter",
            "FLG",
            "--from",
            "2024-03-01",
            "--to",
            "2024-03-05T23:50",
            "--tz",
            "Asia/Bishkek",
        ],
    );
    assert_eq!(earlier, format!("{}\n", want[0]));

    // devices, seen from a year after the test's own clock (--now, after every receive
    // time whatever the date): every meter, each with its figures.
    let now_ms = (meterflow_proto::now_ms() / 1000 + 365 * 86_400) * 1000;
    let now = local(now_ms);
    let now = now.as_str();
    let devices = both(
        &clickhouse,
        &parquet,
        &["devices", "--tz", "Asia/Bishkek", "--now", now],
    );
    let lines: Vec<&str> = devices.lines().collect();
    assert_eq!(
        lines[0],
        "meter_id,last_seen,seconds_since,readings,battery_pct,rssi_dbm,rsrp_dbm,firmware,error_flags,last_values"
    );
    // Imported readings were received at their own time.
    let row = |meter: &str, last: i64, readings: u64, values: &str| {
        format!(
            "{meter},{},{},{readings},,,,,,{values}",
            local(last),
            (now_ms - last) / 1000
        )
    };
    let flg: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(flg[0], "FLG");
    let seen = chrono::DateTime::parse_from_rfc3339(flg[1]).unwrap();
    assert!(
        seen.timestamp() >= started_s,
        "received by serve: {}",
        flg[1]
    );
    assert_eq!(flg[2], ((now_ms / 1000) - seen.timestamp()).to_string());
    assert_eq!(
        flg[3..].join(","),
        format!(
            "2,55,-80,,1.2.3,1,1-0:1.8.0=10.5 kWh @ {}",
            local(FROM + 5 * D - 10 * 60_000)
        ),
        "each status field from the newest report that carried it (by arrival)"
    );
    assert_eq!(
        lines[2..],
        [
            row(
                "GAS",
                FROM + 4 * D + H,
                5,
                &format!("0-1:24.2.1=4321.5 m3 @ {}", local(FROM + 4 * D + H))
            ),
            row(
                "OLD",
                FROM + 2 * H,
                2,
                &format!("1-0:1.8.0=11 kWh @ {}", local(FROM + 2 * H))
            ),
            row(
                "QH",
                FROM + 4 * D + 15 * Q,
                14,
                &format!("1-0:1.29.0=0.25 kWh @ {}", local(FROM + 4 * D + 15 * Q))
            ),
            row(
                "REV",
                FROM + 4 * D + 20 * H,
                5,
                &format!("1-0:1.8.0=1002 kWh @ {}", local(FROM + 4 * D + 20 * H))
            ),
            row(
                "RST",
                FROM + 4 * D + 20 * H,
                5,
                &format!("1-0:1.8.0=8 kWh @ {}", local(FROM + 4 * D + 20 * H))
            ),
            row(
                "XST",
                FROM + 4 * D + 20 * H,
                3,
                &format!("1-0:1.8.0=6 kWh @ {}", local(FROM + 4 * D + 20 * H))
            ),
        ]
    );
    // Seen from the period's end, silent for two days or more: OLD alone (FLG was received
    // after that "now": just heard).
    let stale = both(
        &clickhouse,
        &parquet,
        &[
            "devices",
            "--stale-after",
            "2d",
            "--tz",
            "Asia/Bishkek",
            "--now",
            "2024-03-06",
        ],
    );
    let stale: Vec<&str> = stale.lines().skip(1).collect();
    assert_eq!(stale.len(), 1, "{stale:?}");
    assert!(stale[0].starts_with("OLD,"), "{stale:?}");
}

/// A `device_status` of an earlier version (no `ts`): `query anomalies` takes `at` for the
/// report's own time, with a warning, and `meterflow schema --apply` adds the column
/// (`DEFAULT at`, of `at`'s type), after which the writer fills it.
#[test]
fn an_earlier_device_status_gets_its_ts_column_and_works_without_it() {
    let ch = ClickHouse::shared();
    let db = ClickHouse::fresh_database("mf_status_ts");
    let _drop = Dropped(db.clone());
    let (_dir, config) = config_file(&format!(
        "[clickhouse]\nurl = \"{}\"\ndatabase = \"{db}\"\n",
        ch.url
    ));
    crate::harness::apply_schema(&config);
    ch.query(&format!("ALTER TABLE {db}.device_status DROP COLUMN ts"));
    ch.query(&format!(
        "INSERT INTO {db}.device_status (meter_id, at, error_flags, source, lsn) VALUES \
         ('OLDTABLE', toDateTime({}), 3, 'mqtt', 1)",
        (FROM + H) / 1000
    ));
    ch.query(&format!(
        "INSERT INTO {db}.readings (meter_id, channel, ts, value, unit, quality, received_at, source, format) \
         VALUES ('OLDTABLE', '1-0:1.8.0', toDateTime({}), 1, 'kWh', 0, now(), 'mqtt', 'json')",
        (FROM + 5 * D - H) / 1000
    ));
    let args = [
        "query",
        "--format",
        "csv",
        "--config",
        &config,
        "anomalies",
        "--from",
        "2024-03-01",
        "--to",
        "2024-03-06",
        "--tz",
        "Asia/Bishkek",
    ];
    let want = format!(
        "meter_id,channel,kind,at,detail\nOLDTABLE,,error_flags,{},error flags 3\n",
        local(FROM + H)
    );
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), want);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("device_status has no ts column"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    crate::harness::apply_schema(&config);
    assert_eq!(
        ch.query(&format!(
            "SELECT type, default_expression FROM system.columns \
             WHERE database = '{db}' AND table = 'device_status' AND name = 'ts'"
        ))
        .trim(),
        "DateTime\tat"
    );
    // Adding it again (what every `ON CLUSTER` apply does, and two appliers at once): the
    // server's "already exists" counts as done.
    let ch_config = meterflow_storage::clickhouse::ClickHouseConfig {
        url: ch.url.clone(),
        database: db.clone(),
        ..Default::default()
    };
    let again = format!("ALTER TABLE {db}.device_status ADD COLUMN ts DateTime DEFAULT at");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert!(!runtime
        .block_on(meterflow_storage::clickhouse::schema::add_column_on(
            &ch_config, &again
        ))
        .unwrap());
    let bad = format!("ALTER TABLE {db}.device_status ADD COLUMN x NoSuchType");
    assert!(runtime
        .block_on(meterflow_storage::clickhouse::schema::add_column_on(
            &ch_config, &bad
        ))
        .is_err());
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        want,
        "ts is at for the old row"
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("no ts column"));
}
