//! MQTT to ClickHouse with the real server: every row and value arrives, a report delivered
//! twice is counted once, and an outage of ClickHouse loses nothing.

use std::collections::BTreeSet;

use crate::harness::{
    config_file, fleet_acked, mosquitto_pub, pb_fleet, spawn_fleet, wait_for, ClickHouse, Server,
};
use meterflow_proto::Format;
use meterflow_simulate::{Plan, Shape};

/// (meter_id, channel, ts in seconds, value, unit) of every row after dedupe.
fn rows(ch: &ClickHouse, db: &str) -> Vec<(String, String, i64, f64, String)> {
    ch.query(&format!(
        "SELECT meter_id, channel, toUnixTimestamp(ts), value, unit FROM {db}.readings FINAL \
         ORDER BY meter_id, channel, ts FORMAT TabSeparated"
    ))
    .lines()
    .map(|l| {
        let f: Vec<&str> = l.split('\t').collect();
        (
            f[0].into(),
            f[1].into(),
            f[2].parse().unwrap(),
            f[3].parse().unwrap(),
            f[4].into(),
        )
    })
    .collect()
}

fn expected(plans: &[Plan]) -> BTreeSet<(String, String, i64, u64, String)> {
    plans
        .iter()
        .flat_map(|p| {
            (0..p.meters).flat_map(move |m| {
                (0..p.messages).flat_map(move |k| {
                    p.expected_rows(m, k).into_iter().map(move |r| {
                        (
                            p.meter_id(m),
                            r.channel.to_string(),
                            r.ts_ms / 1000,
                            r.value.to_bits(),
                            r.unit.to_string(),
                        )
                    })
                })
            })
        })
        .collect()
}

#[test]
fn every_reading_published_over_mqtt_is_in_clickhouse_once() {
    let ch = ClickHouse::shared();
    let db = ClickHouse::fresh_database("mf_sink");
    let (_cfg, config) = config_file(&format!(
        "[clickhouse]\nurl = \"{}\"\ndatabase = \"{db}\"\n",
        ch.url
    ));
    let server = Server::start_with(&["--config", &config]);

    // A report delivered twice (a retransmission) is stored once after dedupe.
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("dup.json");
    std::fs::write(
        &json,
        br#"{"readings": [
        {"channel": "1-0:1.8.1", "ts": "2024-03-01T12:00:00Z", "value": 1234.567, "unit": "kWh"},
        {"channel": "1-0:1.8.2", "ts": "2024-03-01T12:00:00Z", "value": 89.5, "unit": "kWh"}]}"#,
    )
    .unwrap();
    mosquitto_pub(server.mqtt_port, "meters/DUP-1/json", &json, &[]);
    mosquitto_pub(server.mqtt_port, "meters/DUP-1/json", &json, &[]);
    let status = dir.path().join("status.json");
    std::fs::write(
        &status,
        br#"{"battery_pct": 87, "rssi_dbm": -71, "firmware": "4.2.17", "error_flags": 4}"#,
    )
    .unwrap();
    mosquitto_pub(server.mqtt_port, "meters/DUP-1/status", &status, &[]);
    // A payload that does not decode: a dead letter in the files and in ClickHouse, raw bytes
    // (not valid UTF-8) and all.
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, b"{\"readings\": [\xff\xfe").unwrap();
    mosquitto_pub(server.mqtt_port, "meters/DL-1/json", &broken, &[]);

    let plans = [
        Plan {
            meters: 30,
            messages: 4,
            format: Format::Pb,
            shape: Shape::Readings,
            start_ms: 1_719_792_000_000,
            interval_s: 900,
            prefix: "chpb-".into(),
        },
        Plan {
            meters: 5,
            messages: 2,
            format: Format::Json,
            shape: Shape::Series,
            start_ms: 1_719_792_000_000,
            interval_s: 900,
            prefix: "chjs-".into(),
        },
        Plan {
            meters: 10,
            messages: 3,
            format: Format::Dsmr,
            shape: Shape::Readings,
            start_ms: 1_719_792_000_000,
            interval_s: 900,
            prefix: "chds-".into(),
        },
    ];
    for plan in &plans {
        assert_eq!(
            fleet_acked(spawn_fleet(server.mqtt_port, plan, 0)),
            (plan.meters * plan.messages) as u64
        );
    }
    let (exit, _data, log, _keep) = server.stop();
    assert!(exit.success(), "{log}");

    let got = rows(&ch, &db);
    let dup: Vec<_> = got.iter().filter(|r| r.0 == "DUP-1").collect();
    assert_eq!(dup.len(), 2, "the report sent twice counts once: {dup:?}");
    assert_eq!(
        (dup[0].1.as_str(), dup[0].2, dup[0].3),
        ("1-0:1.8.1", 1_709_294_400, 1234.567)
    );
    assert_eq!(
        (dup[1].1.as_str(), dup[1].3, dup[1].4.as_str()),
        ("1-0:1.8.2", 89.5, "kWh")
    );
    let got_sim: BTreeSet<_> = got
        .iter()
        .filter(|r| r.0 != "DUP-1")
        .map(|r| (r.0.clone(), r.1.clone(), r.2, r.3.to_bits(), r.4.clone()))
        .collect();
    assert_eq!(got_sim.len(), got.len() - 2, "no row twice after dedupe");
    assert_same(&got_sim, &expected(&plans));
    // The rollups saw the same rows (min and max: a redelivery adds samples, not values).
    let hourly = ch.query(&format!(
        "SELECT minMerge(min_value), maxMerge(max_value), countMerge(samples) >= 4 FROM {db}.readings_hourly \
         WHERE meter_id = 'chpb-000000' AND channel = '1-0:1.8.1'"
    ));
    assert_eq!(hourly.trim(), "0\t0.75\t1");
    let letters = ch.query(&format!(
        "SELECT source, topic, meter_id, format, kind, hex(payload), reason LIKE 'json: malformed%' FROM {db}.dead_letters"
    ));
    assert_eq!(
        letters.trim(),
        "mqtt\tmeters/DL-1/json\tDL-1\tjson\tmalformed\t7B2272656164696E6773223A205BFFFE\t1",
        "exactly the one dead letter, with its raw bytes"
    );
    let status = ch.query(&format!(
        // The report was delivered twice: its status row is there twice, identical (the
        // queries take each field's newest value, so that is harmless).
        "SELECT DISTINCT battery_pct, rssi_dbm, firmware, error_flags, source FROM {db}.device_status WHERE meter_id = 'DUP-1'"
    ));
    assert_eq!(status.trim(), "87\t-71\t4.2.17\t4\tmqtt");
    ch.query(&format!("DROP DATABASE {db}"));
}

#[test]
fn a_clickhouse_outage_loses_nothing_and_needs_no_operator() {
    let ch = ClickHouse::private();
    let db = ClickHouse::fresh_database("mf_outage");
    let (_cfg, config) = config_file(&format!(
        // A small queue, so that during the outage messages go on into the WAL alone and the
        // pipeline reads them back from there.
        "[clickhouse]\nurl = \"{}\"\ndatabase = \"{db}\"\nretry_initial_ms = 50\nretry_max_ms = 500\n[batch]\nmax_age_ms = 100\n[pipeline]\nqueue_capacity = 16\n",
        ch.url
    ));
    let server = Server::start_with(&["--config", &config]);
    let plan = Plan {
        meters: 50,
        messages: 100,
        format: Format::Pb,
        shape: Shape::Readings,
        start_ms: 1_719_792_000_000,
        interval_s: 900,
        prefix: "out-".into(),
    };
    let want = expected(std::slice::from_ref(&plan));

    // The fleet publishes for about two seconds; ClickHouse dies in the middle of it.
    let fleet = spawn_fleet(server.mqtt_port, &plan, 25);
    let total = want.len();
    wait_for("some, not all, rows in ClickHouse", || {
        let n: usize = ch
            .query(&format!(
                "SELECT count() FROM system.tables WHERE database = '{db}' AND name = 'readings'"
            ))
            .trim()
            .parse()
            .ok()?;
        if n == 0 {
            return None;
        }
        let rows: usize = ch
            .query(&format!("SELECT count() FROM {db}.readings"))
            .trim()
            .parse()
            .ok()?;
        assert!(
            rows < total,
            "the fleet finished before the outage began: make it longer"
        );
        (rows > 0).then_some(())
    });
    ch.kill();
    assert_eq!(
        fleet_acked(fleet),
        (plan.meters * plan.messages) as u64,
        "the broker acknowledged all while ClickHouse was down"
    );
    ch.start();
    let got = wait_for("every reading in ClickHouse after the outage", || {
        let got = rows(&ch, &db);
        (got.len() >= want.len()).then_some(got)
    });
    let (exit, _data, log, _keep) = server.stop();
    assert!(exit.success(), "{log}");
    assert!(
        log.contains("ClickHouse insert failed; retrying"),
        "the outage was seen: {}",
        log.lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .take(10)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let got: Vec<_> = got
        .into_iter()
        .map(|r| (r.0, r.1, r.2, r.3.to_bits(), r.4))
        .collect();
    let got: BTreeSet<_> = got.into_iter().collect();
    assert_same(&got, &want);
    let from_wal: u64 = log
        .split("from_wal=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("the shutdown summary names from_wal");
    assert!(
        from_wal > 0,
        "during the outage the queue overflowed and the pipeline read the WAL"
    );
}

/// Compares two sets of rows and shows only the first differences.
fn assert_same(
    got: &BTreeSet<(String, String, i64, u64, String)>,
    want: &BTreeSet<(String, String, i64, u64, String)>,
) {
    let show = |rows: Vec<&(String, String, i64, u64, String)>| {
        rows.iter()
            .take(5)
            .map(|r| format!("{} {} {} {} {}", r.0, r.1, r.2, f64::from_bits(r.3), r.4))
            .collect::<Vec<_>>()
    };
    let missing: Vec<_> = want.difference(got).collect();
    let extra: Vec<_> = got.difference(want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} rows missing, e.g. {:?}; {} unexpected, e.g. {:?}",
        missing.len(),
        show(missing.clone()),
        extra.len(),
        show(extra.clone())
    );
}

/// Issue 5: the device state comes back from ClickHouse when the state file is gone (a new
/// disk, a machine replaced): last seen, the newest values and the status fields.
#[test]
fn device_state_is_rebuilt_from_clickhouse_without_the_state_file() {
    let ch = ClickHouse::shared();
    let db = ClickHouse::fresh_database("mf_devices");
    let (_cfg, config) = config_file(&format!(
        "[clickhouse]\nurl = \"{}\"\ndatabase = \"{db}\"\n[batch]\nmax_age_ms = 100\n",
        ch.url
    ));
    crate::harness::apply_schema(&config);
    let server = Server::start_with(&["--config", &config]);
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    std::fs::write(
        &report,
        r#"{"readings":[{"channel":"1-0:1.8.0","ts":"2024-03-01T12:00:00Z","value":321.5,"unit":"kWh"},
                        {"channel":"1-0:1.8.0","ts":"2024-03-01T11:00:00Z","value":320.0,"unit":"kWh"}],
            "status":{"battery_pct":64,"rssi_dbm":-88,"firmware":"3.1.4"}}"#,
    )
    .unwrap();
    mosquitto_pub(server.mqtt_port, "meters/REBUILD-1/json", &report, &[]);
    let status = dir.path().join("s.json");
    std::fs::write(&status, r#"{"error_flags": 2}"#).unwrap();
    mosquitto_pub(server.mqtt_port, "meters/REBUILD-1/status", &status, &[]);
    wait_for("both status reports in ClickHouse", || {
        let n = ch.query(&format!(
            "SELECT count() FROM {db}.device_status WHERE meter_id = 'REBUILD-1'"
        ));
        (n.trim() == "2").then_some(())
    });
    let (exit, data_dir, log, tmp) = server.stop();
    assert!(exit.success(), "{log}");
    // The state file is lost; the data folder is otherwise kept.
    std::fs::remove_file(data_dir.join("state/devices.json")).unwrap();
    let server = Server::start_in(tmp, &["--config", &config]);
    let device: serde_json::Value = wait_for("REBUILD-1 rebuilt from ClickHouse", || {
        let (status, body) = server.http_get("/api/devices/REBUILD-1");
        (status == 200).then(|| serde_json::from_str(&body).unwrap())
    });
    assert_eq!(
        device["last_values"]["1-0:1.8.0"]["value"], 321.5,
        "{device}"
    );
    assert_eq!(device["last_values"]["1-0:1.8.0"]["unit"], "kWh");
    assert_eq!(device["status"]["battery_pct"], 64);
    assert_eq!(device["status"]["rssi_dbm"], -88);
    assert_eq!(device["status"]["firmware"], "3.1.4");
    assert_eq!(device["status"]["error_flags"], 2);
    assert_eq!(device["rows"], 2);
    assert!(device["last_seen_ms"].as_i64().unwrap() > 1_700_000_000_000);
    let (status, ready) = server.http_get("/ready");
    assert_eq!(status, 200, "{ready}");
    assert!(ready.contains("reachable (ClickHouse"), "{ready}");
    let (exit, _, log, _tmp) = server.stop();
    assert!(exit.success(), "{log}");
}

/// A restart while ClickHouse is away: the backlog is replayed into ClickHouse when it comes
/// back, and not written to Parquet a second time (the checkpoint records what Parquet has
/// apart from what ClickHouse has).
#[test]
fn a_restart_during_a_clickhouse_outage_writes_no_parquet_row_twice() {
    let ch = ClickHouse::private();
    let db = ClickHouse::fresh_database("mf_replay");
    let (_cfg, config) = config_file(&format!(
        "[clickhouse]\nurl = \"{}\"\ndatabase = \"{db}\"\nretry_initial_ms = 50\nretry_max_ms = 200\n[batch]\nmax_age_ms = 100\n",
        ch.url
    ));
    crate::harness::apply_schema(&config);
    ch.kill();
    let server = Server::start_with(&["--config", &config]);
    let plan = Plan {
        meters: 10,
        messages: 3,
        format: Format::Json,
        shape: Shape::Readings,
        start_ms: 1_717_200_000_000,
        interval_s: 900,
        prefix: "replay-".into(),
    };
    let want = expected(std::slice::from_ref(&plan));
    assert_eq!(fleet_acked(spawn_fleet(server.mqtt_port, &plan, 0)), 30);
    wait_for("the pipeline to take all 30 reports", || {
        let (_, metrics) = server.http_get("/metrics");
        metrics
            .contains("meterflow_messages_total{source=\"mqtt\",format=\"json\"} 30")
            .then_some(())
    });
    // A clean stop while ClickHouse is still away: Parquet completes its files, the
    // ClickHouse batches stay in the WAL.
    let (exit, data_dir, log, tmp) = server.stop();
    assert!(exit.success(), "{log}");
    let checkpoint = std::fs::read_to_string(data_dir.join("wal/checkpoint")).unwrap();
    let numbers: Vec<u64> = checkpoint
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert!(
        numbers[0] < numbers[1],
        "ClickHouse behind Parquet: {checkpoint}"
    );
    assert_eq!(crate::harness::read_readings(&data_dir).len(), want.len());

    ch.start();
    let again = Server::start_in(tmp, &["--config", &config]);
    let got = wait_for("the backlog in ClickHouse", || {
        let got = rows(&ch, &db);
        (got.len() >= want.len()).then_some(got)
    });
    assert_eq!(got.len(), want.len());
    let (exit, data_dir, log, _tmp) = again.stop();
    assert!(exit.success(), "{log}");
    // Every reading once in Parquet: the replay went to ClickHouse only.
    let parquet = crate::harness::read_readings(&data_dir);
    let distinct: BTreeSet<_> = parquet
        .iter()
        .map(|r| (r.meter_id.clone(), r.channel.clone(), r.ts_ms))
        .collect();
    assert_eq!(parquet.len(), want.len(), "no Parquet row twice");
    assert_eq!(distinct.len(), want.len());
}

/// The spool's files under a server's data folder.
fn spool_files(data_dir: &std::path::Path) -> usize {
    std::fs::read_dir(data_dir.join("clickhouse-spool"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The checkpoint's two numbers (`ALL LOCAL`) in a data folder.
fn checkpoint(data_dir: &std::path::Path) -> (u64, u64) {
    let text = std::fs::read_to_string(data_dir.join("wal/checkpoint")).unwrap();
    let n: Vec<u64> = text
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    (n[0], n[1])
}

/// One phase of the spool test: a fresh database, `serve` with `settings` in its
/// `[clickhouse]` section (batches of `batch_rows`, Parquet files closed after a second), and
/// ClickHouse killed while a fleet of 20 meters sends 1000 reports, all acknowledged.
struct Outage {
    db: String,
    /// Keeps the config file.
    _config_dir: tempfile::TempDir,
    config: String,
    server: Server,
    want: BTreeSet<(String, String, i64, u64, String)>,
}

fn serve_through_an_outage(
    ch: &ClickHouse,
    prefix: &str,
    settings: &str,
    batch_rows: usize,
) -> Outage {
    let db = ClickHouse::fresh_database(&format!("mf_{prefix}"));
    let (config_dir, config) = config_file(&format!(
        "[clickhouse]\nurl = \"{}\"\ndatabase = \"{db}\"\nqueue_batches = 1\n{settings}\n\
         [batch]\nmax_rows = {batch_rows}\nmax_age_ms = 100\n[parquet]\nfile_max_age_s = 1\n",
        ch.url
    ));
    crate::harness::apply_schema(&config);
    ch.kill();
    let server = Server::start_with(&["--config", &config]);
    let plan = pb_fleet(&format!("{prefix}-"), 20, 50);
    assert_eq!(
        fleet_acked(spawn_fleet(server.mqtt_port, &plan, 0)),
        1000,
        "the WAL takes what waits"
    );
    Outage {
        want: expected(std::slice::from_ref(&plan)),
        db,
        _config_dir: config_dir,
        config,
        server,
    }
}

/// ClickHouse away for long: Parquet goes on (the batches for ClickHouse wait in the spool,
/// status and dead-letter rows with them), and when ClickHouse returns every row is there
/// once, the spool is empty and the checkpoint has caught up. A spool too small for the
/// outage makes the pipeline wait, counted; a kill -9 then loses nothing (the spool is
/// cleared at start-up and the WAL replays).
#[test]
fn during_a_long_clickhouse_outage_parquet_goes_on_and_the_spool_catches_up() {
    let ch = ClickHouse::private();
    let parquet_rows =
        |server: &Server| server.metric("meterflow_rows_written_total{sink=\"parquet\"}") as usize;
    let readings = |db: &str| -> BTreeSet<_> {
        rows(&ch, db)
            .into_iter()
            .map(|r| (r.0, r.1, r.2, r.3.to_bits(), r.4))
            .collect()
    };

    // 1. A spool with room for the whole outage. The backoff grows during it (up to a
    //    minute); the retry after it comes from the probe that sees ClickHouse answer again.
    let Outage {
        db, server, want, ..
    } = serve_through_an_outage(
        &ch,
        "spool",
        "retry_initial_ms = 200\nretry_max_ms = 60000",
        200,
    );
    // Behind the fleet's batches, so they wait in the spool too.
    assert!(crate::harness::mosquitto_pub_acked(
        server.mqtt_port,
        "meters/spool-s/status",
        r#"{"battery_pct": 41, "snr_db": -2.5}"#
    ));
    assert!(crate::harness::mosquitto_pub_acked(
        server.mqtt_port,
        "meters/spool-d/json",
        "{not json"
    ));
    wait_for("every row in Parquet while ClickHouse is away", || {
        (parquet_rows(&server) == want.len()).then_some(())
    });
    assert!(server.metric("meterflow_clickhouse_spool_jobs") > 0.0);
    assert!(server.metric("meterflow_clickhouse_spool_bytes") > 0.0);
    assert_eq!(
        server.metric("meterflow_clickhouse_queue_full_waits_total"),
        0.0
    );
    assert!(spool_files(&server.data_dir) > 0);
    wait_for("an insert retried", || {
        (server.metric("meterflow_clickhouse_retries_total") > 0.0).then_some(())
    });
    ch.start();
    wait_for("the backlog in ClickHouse", || {
        (readings(&db).len() >= want.len()).then_some(())
    });
    assert_same(&readings(&db), &want);
    wait_for("the side rows in ClickHouse", || {
        let status = ch.query(&format!(
            "SELECT battery_pct, snr_db FROM {db}.device_status FINAL WHERE meter_id = 'spool-s'"
        ));
        let dead = ch.query(&format!(
            "SELECT kind, payload FROM {db}.dead_letters FINAL WHERE meter_id = 'spool-d'"
        ));
        (!status.trim().is_empty() && !dead.trim().is_empty()).then_some((status, dead))
    });
    let status = ch.query(&format!(
        "SELECT battery_pct, snr_db FROM {db}.device_status FINAL WHERE meter_id = 'spool-s'"
    ));
    assert_eq!(status.trim(), "41\t-2.5");
    let dead = ch.query(&format!(
        "SELECT count(), any(payload) FROM {db}.dead_letters FINAL WHERE meter_id = 'spool-d'"
    ));
    assert_eq!(dead.trim(), "1\t{not json");
    wait_for("the spool drained", || {
        (server.metric("meterflow_clickhouse_spool_jobs") == 0.0).then_some(())
    });
    let (exit, data_dir, log, _tmp) = server.stop();
    assert!(exit.success(), "{log}");
    assert!(
        log.contains("ClickHouse answers again; retrying now"),
        "{log}"
    );
    assert_eq!(spool_files(&data_dir), 0);
    let (all, local) = checkpoint(&data_dir);
    assert_eq!(all, local, "ClickHouse confirmed every spooled batch");
    assert_eq!(all, 1002, "every record confirmed");
    assert_eq!(crate::harness::read_readings(&data_dir).len(), want.len());

    // 2. A spool of one batch: the pipeline waits (Parquet with it), and nothing is lost,
    //    through a kill -9 with the spool full.
    let Outage {
        db,
        config,
        server,
        want,
        _config_dir: _keep_config,
    } = serve_through_an_outage(
        &ch,
        "full",
        "retry_initial_ms = 50\nretry_max_ms = 200\nspool_max_bytes = 1",
        100,
    );
    wait_for("the pipeline waiting for a full spool", || {
        (server.metric("meterflow_clickhouse_queue_full_waits_total") > 0.0).then_some(())
    });
    // One insert in flight (inserts fail), one batch in memory, one spooled, one in the
    // pipeline's hands: far fewer rows than the fleet sent.
    assert!(
        parquet_rows(&server) < want.len() / 2,
        "{}",
        parquet_rows(&server)
    );
    assert_eq!(server.metric("meterflow_clickhouse_spool_jobs"), 1.0);
    assert_eq!(spool_files(&server.data_dir), 1);
    let tmp = server.crash();
    let server = Server::start_in(tmp, &["--config", &config]);
    ch.start();
    wait_for("every reading in ClickHouse after the outage", || {
        (readings(&db).len() >= want.len()).then_some(())
    });
    assert_same(&readings(&db), &want);
    let (exit, data_dir, log, _tmp) = server.stop();
    assert!(exit.success(), "{log}");
    assert!(
        log.contains("cleared the ClickHouse spool of an earlier run"),
        "{log}"
    );
    let parquet = crate::harness::read_readings(&data_dir);
    let distinct: BTreeSet<_> = parquet
        .iter()
        .map(|r| (r.meter_id.clone(), r.channel.clone(), r.ts_ms))
        .collect();
    assert_eq!(parquet.len(), want.len(), "no Parquet row twice");
    assert_eq!(distinct.len(), want.len());

    // 3. A spool file that cannot be read back: the writer stops, serve exits non-zero (a
    //    sink failure), and the restart replays the WAL to ClickHouse.
    let Outage {
        db,
        config,
        server,
        want,
        _config_dir: _keep_config,
    } = serve_through_an_outage(&ch, "bad", "retry_initial_ms = 50\nretry_max_ms = 200", 200);
    wait_for("every row in Parquet while ClickHouse is away", || {
        (parquet_rows(&server) == want.len()).then_some(())
    });
    let spool_dir = server.data_dir.join("clickhouse-spool");
    let mut files: Vec<_> = std::fs::read_dir(&spool_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    std::fs::write(&files[0], b"not an Arrow file").unwrap();
    ch.start();
    wait_for("the writer to stop", || {
        server
            .log_text()
            .contains("cannot read a job back from the ClickHouse spool")
            .then_some(())
    });
    // The next batch meets the stopped writer.
    assert!(crate::harness::mosquitto_pub_acked(
        server.mqtt_port,
        "meters/bad-late/json",
        r#"{"readings":[{"channel":"1-0:1.8.0","ts":1719792000000,"value":1.0,"unit":"kWh"}]}"#
    ));
    let (exit, _data_dir, log, tmp) = server.stop();
    assert!(
        !exit.success(),
        "a stopped ClickHouse writer fails serve: {log}"
    );
    assert!(log.contains("the ClickHouse writer stopped"), "{log}");
    let server = Server::start_in(tmp, &["--config", &config]);
    wait_for("every reading in ClickHouse after the restart", || {
        (readings(&db).len() > want.len()).then_some(())
    });
    let mut want = want;
    want.insert((
        "bad-late".into(),
        "1-0:1.8.0".into(),
        1_719_792_000,
        1.0f64.to_bits(),
        "kWh".into(),
    ));
    assert_same(&readings(&db), &want);
    let (exit, _data_dir, log, _tmp) = server.stop();
    assert!(exit.success(), "{log}");
}

/// A ClickHouse that takes the connection and never answers (hung, or a firewall that
/// accepts and drops) cannot hold the stop: the writer gives up its insert at the shutdown's
/// deadline and grace, `serve` exits cleanly, and the reading waits in the WAL. The next
/// start, on a ClickHouse that answers, inserts it. Before, `serve` waited on the silent
/// server with no end.
#[test]
fn a_clickhouse_that_never_answers_cannot_hold_the_stop_and_loses_nothing() {
    let mut silent = crate::harness::SilentClickHouse::start();
    let (_cfg, config) = config_file(&format!(
        "[clickhouse]\nurl = \"{}\"\n[pipeline]\nshutdown_max_ms = 1000\n",
        silent.url
    ));
    let server = Server::start_with(&["--config", &config]);
    let dir = tempfile::tempdir().unwrap();
    let payload = dir.path().join("payload");
    std::fs::write(
        &payload,
        r#"{"readings":[{"channel":"1-0:1.8.0","ts":1709294400000,"value":4.25,"unit":"kWh"}]}"#,
    )
    .unwrap();
    mosquitto_pub(server.mqtt_port, "meters/SILENT-1/json", &payload, &[]);
    server.sigterm();
    let (exit, _, log, tmp) = server.exited();
    assert!(exit.success(), "{log}");
    assert!(
        log.contains("did not answer by the shutdown's deadline"),
        "{log}"
    );
    silent.let_go();

    // The same data folder against a ClickHouse that answers: the WAL replays the reading.
    let ch = ClickHouse::shared();
    let db = ClickHouse::fresh_database("silent");
    let (_cfg2, config2) = config_file(&format!(
        "[clickhouse]\nurl = \"{}\"\ndatabase = \"{db}\"\n",
        ch.url
    ));
    let server = Server::start_in(tmp, &["--config", &config2]);
    let arrived = wait_for("the replayed reading in ClickHouse", || {
        let made = ch.query(&format!(
            "SELECT count() FROM system.tables WHERE database = '{db}' AND name = 'readings'"
        ));
        if made.trim() != "1" {
            return None;
        }
        let rows = rows(&ch, &db);
        (!rows.is_empty()).then_some(rows)
    });
    assert_eq!(
        arrived,
        vec![(
            "SILENT-1".into(),
            "1-0:1.8.0".into(),
            1_709_294_400,
            4.25,
            "kWh".into()
        )]
    );
    let (exit, _, log, _) = server.stop();
    assert!(exit.success(), "{log}");
}

/// `serve` with a ClickHouse that does not answer starts (the WAL keeps what arrives), and
/// says which server it cannot reach, in its log and in `/ready`, never with the password.
#[test]
fn an_unreachable_clickhouse_is_named_without_its_password() {
    let port = crate::harness::free_port();
    let url = format!("http://pilot:not-for-logs-1234@127.0.0.1:{port}");
    let server = Server::start_with(&["--clickhouse-url", &url]);
    let (code, body) = server.http_get("/ready");
    assert_eq!(code, 503, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    let detail = ready["checks"]["clickhouse"]["detail"].as_str().unwrap();
    assert!(
        detail.starts_with(&format!("http://127.0.0.1:{port} unreachable: ")),
        "{detail}"
    );
    let log = crate::harness::wait_for("the unreachable ClickHouse in the log", || {
        let log = server.log_text();
        log.contains("ClickHouse is not reachable").then_some(log)
    });
    assert!(
        log.contains(&format!("server=http://127.0.0.1:{port}")),
        "{log}"
    );
    assert!(
        !log.contains("not-for-logs") && !body.contains("not-for-logs"),
        "{log}\n{body}"
    );
}
