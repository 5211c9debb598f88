//! `meterflow import` with the real binary and the real ClickHouse: a Parquet tree written by
//! `serve`, a legacy CSV (local times across a DST switch, Wh, a bad row), reruns that add
//! nothing, a `kill -9` in the middle and a resume that leaves the table exact, and the
//! Parquet target.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::harness::{config_file, read_readings, wait_for, ClickHouse, Server, BIN};
use meterflow_proto::Format;
use meterflow_simulate::{Plan, Shape};

/// `meterflow import` with a config file and extra arguments; the JSON summary.
fn import(config: &str, data_dir: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(BIN)
        .args(["import", "--json", "--config", config, "--data-dir"])
        .arg(data_dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "import {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn clickhouse_config(ch: &ClickHouse, db: &str) -> (tempfile::TempDir, String) {
    config_file(&format!(
        "[clickhouse]\nurl = \"{}\"\ndatabase = \"{db}\"\n",
        ch.url
    ))
}

#[test]
fn a_parquet_tree_written_by_serve_is_imported_exactly_once() {
    let ch = ClickHouse::shared();
    let db = ClickHouse::fresh_database("import_pq");
    // serve writes the tree (Parquet only), as a ClickHouse rebuild would find it.
    let server = Server::start();
    let plans = [
        Plan {
            meters: 20,
            messages: 6,
            format: Format::Pb,
            shape: Shape::Readings,
            start_ms: 1_719_792_000_000,
            interval_s: 900,
            prefix: "imp-pb-".into(),
        },
        Plan {
            meters: 5,
            messages: 3,
            format: Format::Dsmr,
            shape: Shape::Readings,
            start_ms: 1_719_792_000_000,
            interval_s: 900,
            prefix: "imp-ds-".into(),
        },
    ];
    for plan in &plans {
        let out = crate::harness::simulate_command(server.mqtt_port, plan, 0)
            .stderr(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    let (_, data_dir, _, _tmp) = server.stop();
    let mut parquet = read_readings(&data_dir);
    assert!(parquet.len() > 500, "{} rows", parquet.len());
    parquet.sort_by(|a, b| {
        (&a.meter_id, &a.channel, a.ts_ms).cmp(&(&b.meter_id, &b.channel, b.ts_ms))
    });

    let (_cfg, config) = clickhouse_config(&ch, &db);
    let state = tempfile::tempdir().unwrap();
    let tree = data_dir.join("readings");
    let first = import(&config, state.path(), &[tree.to_str().unwrap()]);
    assert_eq!(first["rows"], parquet.len() as u64, "{first}");
    assert_eq!(first["dead_letters"], 0);
    let text = ch.query(&format!(
        "SELECT meter_id, channel, toUnixTimestamp(ts), value, unit, quality, \
         toUnixTimestamp(received_at), source, format FROM {db}.readings FINAL \
         ORDER BY meter_id, channel, ts FORMAT TabSeparated"
    ));
    let got: Vec<Vec<String>> = text
        .lines()
        .map(|l| l.split('\t').map(String::from).collect())
        .collect();
    assert_eq!(got.len(), parquet.len());
    for (row, want) in got.iter().zip(&parquet) {
        assert_eq!(row[0], want.meter_id);
        assert_eq!(row[1], want.channel);
        assert_eq!(row[2].parse::<i64>().unwrap(), want.ts_ms.div_euclid(1000));
        assert_eq!(
            row[3].parse::<f64>().unwrap().to_bits(),
            want.value.to_bits()
        );
        assert_eq!(row[4], want.unit);
        assert_eq!(row[5].parse::<u16>().unwrap(), want.quality);
        assert_eq!(
            row[6].parse::<i64>().unwrap(),
            want.received_at_ms.div_euclid(1000)
        );
        assert_eq!(row[7], "import", "source tells backfill from live data");
        assert_eq!(row[8], want.format);
    }
    // A second run finds every file done and adds nothing; --restart imports again, and the
    // table still holds each reading once.
    let again = import(&config, state.path(), &[tree.to_str().unwrap()]);
    assert_eq!(again["rows"], 0, "{again}");
    assert_eq!(again["files_already_done"], first["files"]);
    assert_eq!(
        ch.query(&format!("SELECT count() FROM {db}.readings"))
            .trim(),
        parquet.len().to_string(),
        "not even before merges"
    );
    let restarted = import(
        &config,
        state.path(),
        &["--restart", tree.to_str().unwrap()],
    );
    assert_eq!(restarted["rows"], parquet.len() as u64);
    assert_eq!(
        ch.query(&format!("SELECT count() FROM {db}.readings FINAL"))
            .trim(),
        parquet.len().to_string()
    );
    ch.query(&format!("DROP DATABASE {db}"));
}

/// A head-end export: `;` separated, decimal commas, local Amsterdam time across the autumn
/// switch of 2024-10-27 (02:00-02:45 twice), Wh, and one row with a broken stamp (line 6).
const LEGACY_CSV: &str = "\
EAN;Tijdstip;Stand (Wh)
871687400000000001;27-10-2024 01:45;1000000
871687400000000001;27-10-2024 02:00;1000250,5
871687400000000001;27-10-2024 02:15;1000500
871687400000000001;27-10-2024 02:00;1000750
871687400000000001;27-10-2024 2x:15;1001000
871687400000000001;27-10-2024 02:15;1001250
871687400000000001;27-10-2024 03:00;1001500
";

const LEGACY_MAP: &str =
    "meter_id=EAN,channel=\"1-0:1.8.0\",ts=Tijdstip,value=Stand (Wh),unit=\"Wh\",ts_format=\"%d-%m-%Y %H:%M\"";

/// The arguments that read [`LEGACY_CSV`] in `file`.
fn legacy_args(file: &Path) -> [&str; 7] {
    [
        "--map",
        LEGACY_MAP,
        "--tz",
        "Europe/Amsterdam",
        "--to-unit",
        "kWh",
        file.to_str().unwrap(),
    ]
}

/// (UTC seconds, kWh) the export means.
const LEGACY_ROWS: [(i64, f64); 6] = [
    (1_729_986_300, 1000.0),    // 01:45 CEST = 23:45Z
    (1_729_987_200, 1000.2505), // 02:00 CEST = 00:00Z
    (1_729_988_100, 1000.5),    // 02:15 CEST
    (1_729_990_800, 1000.75),   // 02:00 CET = 01:00Z (the hour again)
    (1_729_991_700, 1001.25),   // 02:15 CET
    (1_729_994_400, 1001.5),    // 03:00 CET = 02:00Z
];

#[test]
fn a_legacy_csv_with_local_times_and_wh_goes_in_exactly_with_its_bad_row_kept() {
    let ch = ClickHouse::shared();
    let db = ClickHouse::fresh_database("import_csv");
    let (_cfg, config) = clickhouse_config(&ch, &db);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("export-2024-10.csv");
    std::fs::write(&file, LEGACY_CSV).unwrap();
    let state = dir.path().join("state");
    let args = legacy_args(&file);
    let summary = import(&config, &state, &args);
    assert_eq!(summary["rows"], 6, "{summary}");
    assert_eq!(summary["dead_letters"], 1);
    let text = ch.query(&format!(
        "SELECT toUnixTimestamp(ts), value, unit, source, format FROM {db}.readings FINAL \
         WHERE meter_id = '871687400000000001' AND channel = '1-0:1.8.0' ORDER BY ts \
         FORMAT TabSeparated"
    ));
    let got: Vec<(i64, f64)> = text
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(&f[2..], ["kWh", "import", "csv"]);
            (f[0].parse().unwrap(), f[1].parse().unwrap())
        })
        .collect();
    assert_eq!(got, LEGACY_ROWS);
    // The bad row: in ClickHouse and in the data folder, with the file, line and raw bytes.
    let letter = ch.query(&format!(
        "SELECT topic, kind, reason, payload, source FROM {db}.dead_letters FORMAT TabSeparated"
    ));
    let f: Vec<&str> = letter.trim_end().split('\t').collect();
    assert_eq!(f[0], file.canonicalize().unwrap().to_str().unwrap());
    assert_eq!(f[1], "bad_row");
    assert!(f[2].starts_with("line 6: "), "{}", f[2]);
    assert_eq!(f[3], "871687400000000001;27-10-2024 2x:15;1001000");
    assert_eq!(f[4], "import");
    let files = meterflow_storage::dead_letter::read_all(&state.join("dead_letters")).unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(
        files[0].payload,
        b"871687400000000001;27-10-2024 2x:15;1001000"
    );

    // Again: nothing added, not even a second dead letter.
    let again = import(&config, &state, &args);
    assert_eq!(
        (again["rows"].as_u64(), again["files_already_done"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(
        ch.query(&format!("SELECT count() FROM {db}.readings"))
            .trim(),
        "6"
    );
    assert_eq!(
        meterflow_storage::dead_letter::read_all(&state.join("dead_letters"))
            .unwrap()
            .len(),
        1
    );
    ch.query(&format!("DROP DATABASE {db}"));
}

#[test]
fn an_import_killed_midway_resumes_and_leaves_the_table_exact() {
    let ch = ClickHouse::shared();
    let db = ClickHouse::fresh_database("import_kill");
    // The first run goes through a link of 8 MB/s, uncompressed (about 60 MB of Native), so
    // it is surely killed in the middle, after its first chunk is saved.
    let (slow, unthrottle) = slow_proxy(ch.url.trim_start_matches("http://"), 8e6);
    let (_slow_cfg, slow_config) = config_file(&format!(
        "[clickhouse]\nurl = \"http://127.0.0.1:{slow}\"\ndatabase = \"{db}\"\ncompression = \"none\"\n"
    ));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.csv");
    // 1 000 meters x 1 200 quarter-hours: 1 200 000 rows, 3 chunks
    // (meterflow_import::CLICKHOUSE_CHUNK_ROWS).
    const METERS: u64 = 1_000;
    const STEPS: u64 = 1_200;
    let mut text = String::from("meter,ts,value\n");
    for k in 0..STEPS {
        for m in 0..METERS {
            let ts = 1_704_067_200 + k * 900;
            text.push_str(&format!("big-{m:04},{ts},{}\n", m * 10_000 + k));
        }
    }
    std::fs::write(&file, text).unwrap();
    let state = dir.path().join("state");
    let map = r#"meter_id=meter,channel="1-0:1.8.0",ts=ts,value=value,unit="kWh""#;
    let mut child = Command::new(BIN)
        .args(["import", "--json", "--config", &slow_config, "--data-dir"])
        .arg(&state)
        .args(["--map", map, file.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once some of the file is confirmed and saved, not all of it.
    let progress = state.join("import/progress.json");
    let done_at_kill = wait_for("the import to save progress", || {
        let text = std::fs::read_to_string(&progress).ok()?;
        let record: serde_json::Value = serde_json::from_str(&text).ok()?;
        let file = record["files"].as_object()?.values().next()?.clone();
        (file["rows_done"].as_u64()? > 0).then_some(file)
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        done_at_kill["done"], false,
        "the import was killed before it finished: {done_at_kill}"
    );
    // The same server (the progress is per target), now at full speed.
    unthrottle.store(true, std::sync::atomic::Ordering::Release);
    let resumed = import(
        &slow_config,
        &state,
        &["--map", map, file.to_str().unwrap()],
    );
    let total = METERS * STEPS;
    let rows_after = resumed["rows"].as_u64().unwrap();
    assert!(
        rows_after < total && rows_after + done_at_kill["rows_done"].as_u64().unwrap() >= total,
        "the second run resumed where the first was confirmed: {resumed}"
    );
    // Exact: every reading once, with its value.
    let check = ch.query(&format!(
        "SELECT count(), uniqExact(meter_id), sum(value), min(toUnixTimestamp(ts)), \
         max(toUnixTimestamp(ts)) FROM {db}.readings FINAL FORMAT TabSeparated"
    ));
    let want_sum: u64 = (0..METERS)
        .flat_map(|m| (0..STEPS).map(move |k| m * 10_000 + k))
        .sum();
    assert_eq!(
        check.trim(),
        format!(
            "{total}\t{METERS}\t{want_sum}\t1704067200\t{}",
            1_704_067_200 + (STEPS - 1) * 900
        )
    );
    ch.query(&format!("DROP DATABASE {db}"));
}

/// A TCP proxy that passes at most `bytes_per_s` each way (a slow link) until the returned
/// flag is set; returns its port and the flag.
fn slow_proxy(
    upstream: &str,
    bytes_per_s: f64,
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    let fast = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let unthrottled = fast.clone();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let upstream = upstream.trim_end_matches('/').to_string();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                continue;
            };
            for (mut from, mut to) in [
                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                (server, client),
            ] {
                let fast = fast.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 16 * 1024];
                    let started = std::time::Instant::now();
                    let mut passed = 0f64;
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        passed += n as f64;
                        let due = std::time::Duration::from_secs_f64(passed / bytes_per_s);
                        if let Some(wait) = due.checked_sub(started.elapsed()) {
                            if !fast.load(Ordering::Acquire) {
                                std::thread::sleep(wait);
                            }
                        }
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    (port, unthrottled)
}

#[test]
fn without_clickhouse_a_csv_goes_into_the_parquet_tree_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("export.csv");
    std::fs::write(&file, LEGACY_CSV).unwrap();
    let data = dir.path().join("data");
    let (_cfg, config) = config_file("");
    let args = legacy_args(&file);
    let summary = import(&config, &data, &args);
    assert_eq!(summary["rows"], 6, "{summary}");
    assert!(summary["target"].as_str().unwrap().starts_with("parquet "));
    let check = |data: &Path| {
        let mut rows = read_readings(data);
        rows.sort_by_key(|r| r.ts_ms);
        let got: Vec<(i64, f64)> = rows.iter().map(|r| (r.ts_ms / 1000, r.value)).collect();
        assert_eq!(got, LEGACY_ROWS);
        assert!(rows.iter().all(|r| r.source == "import" && r.unit == "kWh"));
    };
    check(&data);
    // A rerun adds nothing; --restart writes the same files again, not a second copy.
    assert_eq!(import(&config, &data, &args)["rows"], 0);
    let mut restart = vec!["--restart"];
    restart.extend(args);
    assert_eq!(import(&config, &data, &restart)["rows"], 6);
    check(&data);
}

/// Issue 25, item 2: an import where not one row of a file could be taken fails (exit status
/// 1, the reasons by kind with their first line) and does not mark the file done, so a rerun
/// reads it again; a file with some bad rows is imported and says how many were refused and
/// why.
#[test]
fn a_file_whose_every_row_is_refused_fails_and_is_not_marked_done() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_cfg, config) = config_file("");
    let map = "meter_id=meter,channel=channel,ts=ts,value=value,unit=unit";
    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "meter,channel,ts,value,unit\n\
         E1,1-0:1.8.0,2025-06-01T00:00:00Z,abc,kWh\n\
         E1,1-0:1.8.0,2025-06-01T00:15:00Z,abd,kWh\n\
         E1,1-0:1.8.0,yesterday,5,kWh\n",
    )
    .unwrap();
    let run = |file: &Path| {
        Command::new(BIN)
            .args(["import", "--json", "--config", &config, "--data-dir"])
            .arg(&data)
            .args(["--map", map])
            .arg(file)
            .output()
            .unwrap()
    };
    for attempt in 0..2 {
        let out = run(&bad);
        let said = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(1), "attempt {attempt}: {said}");
        assert!(
            said.contains("no row could be taken (3 rows refused"),
            "{said}"
        );
        assert!(said.contains("first at line 2"), "{said}");
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(summary["files_failed"], 1, "{summary}");
        assert_eq!(summary["files_already_done"], 0, "not done: read again");
        assert_eq!(summary["rows"], 0);
    }
    let partly = dir.path().join("partly.csv");
    std::fs::write(
        &partly,
        "meter,channel,ts,value,unit\n\
         E2,1-0:1.8.0,2025-06-01T00:00:00Z,1,kWh\n\
         E2,1-0:1.8.0,2025-06-01T00:15:00Z,oops,kWh\n",
    )
    .unwrap();
    let out = run(&partly);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("some rows refused (kept as dead letters)")
            && said.contains("refused=1 taken=1"),
        "{said}"
    );
    assert!(said.contains("first at line 3"), "{said}");
    assert_eq!(read_readings(&data).len(), 1);
}
