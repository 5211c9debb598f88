//! End to end over MQTT: the real `meterflow serve`, real clients (`mosquitto_pub`,
//! `meterflow simulate`), SIGTERM, then every row read back from the Parquet files.

use std::process::Command;

use crate::harness::{mosquitto_pub, read_readings, utc_date, Row, Server, BIN};
use meterflow_proto::{pb, Format};
use meterflow_simulate::{Plan, Shape};
use meterflow_storage::dead_letter;
use prost::Message;

fn row(
    meter: &str,
    channel: &str,
    ts_ms: i64,
    value: f64,
    unit: &str,
    format: &str,
) -> (String, String, i64, f64, String, String) {
    (
        meter.into(),
        channel.into(),
        ts_ms,
        value,
        unit.into(),
        format.into(),
    )
}

fn after_typo() -> &'static [u8] {
    br#"{"readings": [{"channel": "c", "ts": 1709337600000, "value": 3, "unit": "A"}]}"#
}

fn key(r: &Row) -> (String, String, i64, f64, String, String) {
    (
        r.meter_id.clone(),
        r.channel.clone(),
        r.ts_ms,
        r.value,
        r.unit.clone(),
        r.format.clone(),
    )
}

#[test]
fn payloads_from_mosquitto_pub_arrive_exactly_and_bad_ones_become_dead_letters() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };

    // JSON: two readings (one RFC 3339 time) and a series of four quarter-hours.
    let json = br#"{"meter_id": "E-json", "seq": 1,
        "readings": [{"channel": "1-0:1.8.1", "ts": "2024-03-01T12:00:00Z", "value": 1234.567, "unit": "kWh"},
                     {"channel": "1-0:1.8.2", "ts": 1709294400000, "value": 89.5, "unit": "kWh", "quality": 1}],
        "series": [{"channel": "1-0:1.29.0", "start": 1709251200000, "interval_s": 900, "unit": "kWh",
                    "values": [0.25, 0.5, 0.125, 0]}]}"#;
    mosquitto_pub(
        server.mqtt_port,
        "meters/E-json/json",
        &file("r.json", json),
        &[],
    );

    // Protobuf, with a status inside the report.
    let report = pb::MeterReport {
        meter_id: "G-pb".into(),
        seq: 42,
        readings: vec![pb::Reading {
            channel: "0-1:24.2.1".into(),
            ts_ms: 1_709_337_600_000,
            value: 4321.125,
            unit: "m3".into(),
            quality: 0,
        }],
        status: Some(pb::DeviceStatus {
            battery_pct: Some(64),
            rsrp_dbm: Some(-101),
            ..Default::default()
        }),
        ..Default::default()
    };
    mosquitto_pub(
        server.mqtt_port,
        "meters/G-pb/pb",
        &file("r.pb", &report.encode_to_vec()),
        &[],
    );

    // SenML: base name, base time, base unit, relative time.
    let senml = br#"[{"bn":"urn:dev:ow:10e2073a01080063:","bt":1.7093376e+09,"bu":"kWh","n":"1-0:1.8.0","v":17.5},
                     {"n":"1-0:1.8.0","t":900,"v":17.75}]"#;
    mosquitto_pub(
        server.mqtt_port,
        "meters/S-senml/senml",
        &file("r.senml", senml),
        &[],
    );

    // MQTT 5: a content-type wins over the topic suffix (JSON sent to .../pb).
    let v5 = br#"{"readings": [{"channel": "1-0:1.7.0", "ts": 1709337600000, "value": 0.75, "unit": "kW"}]}"#;
    mosquitto_pub(
        server.mqtt_v5_port,
        "meters/V5-ct/pb",
        &file("v5.json", v5),
        &[
            "-V",
            "mqttv5",
            "-D",
            "publish",
            "content-type",
            "application/json",
        ],
    );

    // A bare status, then payloads that must become dead letters while the pipeline goes on.
    let status = br#"{"battery_pct": 87, "rssi_dbm": -71, "firmware": "4.2.17"}"#;
    mosquitto_pub(
        server.mqtt_port,
        "meters/E-json/status",
        &file("s.json", status),
        &[],
    );
    let garbage = [0x0a, 0xff, 0xff, 0x00, 0x13];
    mosquitto_pub(
        server.mqtt_port,
        "meters/BAD-1/pb",
        &file("bad.pb", &garbage),
        &[],
    );
    mosquitto_pub(
        server.mqtt_port,
        "meters/BAD-2/xml",
        &file("bad.xml", b"<r/>"),
        &[],
    );
    let partly = br#"{"readings": [{"channel": "a", "ts": 1709337600000, "value": 1, "unit": "V"},
                                   {"channel": "b", "ts": "not a time", "value": 2}]}"#;
    mosquitto_pub(
        server.mqtt_port,
        "meters/PART-1/json",
        &file("partly.json", partly),
        &[],
    );
    // A topic outside meters/...: acknowledged by the broker, so it must not vanish.
    mosquitto_pub(
        server.mqtt_port,
        "meter/TYPO-1/json",
        &file("typo.json", after_typo()),
        &[],
    );
    // ...and after them, a good one.
    let after =
        br#"{"readings": [{"channel": "c", "ts": 1709337600000, "value": 3, "unit": "A"}]}"#;
    mosquitto_pub(
        server.mqtt_port,
        "meters/AFTER-1/json",
        &file("after.json", after),
        &[],
    );

    // The HTTP surface while it runs: counters that match what was published, health, and
    // the device API. The pipeline runs behind the PUBACKs, so wait until it has all ten.
    let counter = |metrics: &str, name: &str| -> Option<u64> {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    let metrics = crate::harness::wait_for("the pipeline to decode all 10 messages", || {
        let (_, metrics) = server.http_get("/metrics");
        let decoded: u64 = ["json", "pb", "senml"]
            .iter()
            .filter_map(|f| {
                counter(
                    &metrics,
                    &format!("meterflow_decoded_total{{format=\"{f}\"}}"),
                )
            })
            .sum();
        let dead: u64 = ["malformed", "bad_topic"]
            .iter()
            .filter_map(|r| {
                counter(
                    &metrics,
                    &format!("meterflow_dead_letters_total{{reason=\"{r}\"}}"),
                )
            })
            .sum();
        let status = counter(&metrics, "meterflow_status_updates_total").unwrap_or(0);
        (decoded + dead + status == 10).then_some(metrics)
    });
    assert_eq!(
        counter(&metrics, "meterflow_received_total{source=\"mqtt\"}"),
        Some(10)
    );
    assert_eq!(
        counter(
            &metrics,
            "meterflow_dead_letters_total{reason=\"malformed\"}"
        ),
        Some(1)
    );
    assert_eq!(
        counter(
            &metrics,
            "meterflow_dead_letters_total{reason=\"bad_topic\"}"
        ),
        Some(2)
    );
    assert_eq!(
        counter(&metrics, "meterflow_dead_letters_total{reason=\"partial\"}"),
        Some(1)
    );
    assert_eq!(
        counter(&metrics, "meterflow_decoded_total{format=\"json\"}"),
        Some(4)
    );
    assert_eq!(server.http_get("/health"), (200, "ok\n".to_string()));
    let (status, body) = server.http_get("/api/devices/E-json");
    assert_eq!(status, 200, "{body}");
    let e: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["status"]["battery_pct"], 87);
    assert_eq!(server.http_get("/api/devices/NOPE").0, 404);

    let (exit, data_dir, log, _keep) = server.stop();
    assert!(exit.success(), "exit {exit:?}\n{log}");

    let rows = read_readings(&data_dir);
    let mut got: Vec<_> = rows.iter().map(key).collect();
    got.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mut want = vec![
        row(
            "E-json",
            "1-0:1.8.1",
            1_709_294_400_000,
            1234.567,
            "kWh",
            "json",
        ),
        row(
            "E-json",
            "1-0:1.8.2",
            1_709_294_400_000,
            89.5,
            "kWh",
            "json",
        ),
        row(
            "E-json",
            "1-0:1.29.0",
            1_709_251_200_000,
            0.25,
            "kWh",
            "json",
        ),
        row(
            "E-json",
            "1-0:1.29.0",
            1_709_252_100_000,
            0.5,
            "kWh",
            "json",
        ),
        row(
            "E-json",
            "1-0:1.29.0",
            1_709_253_000_000,
            0.125,
            "kWh",
            "json",
        ),
        row(
            "E-json",
            "1-0:1.29.0",
            1_709_253_900_000,
            0.0,
            "kWh",
            "json",
        ),
        row(
            "G-pb",
            "0-1:24.2.1",
            1_709_337_600_000,
            4321.125,
            "m3",
            "pb",
        ),
        row(
            "S-senml",
            "1-0:1.8.0",
            1_709_337_600_000,
            17.5,
            "kWh",
            "senml",
        ),
        row(
            "S-senml",
            "1-0:1.8.0",
            1_709_338_500_000,
            17.75,
            "kWh",
            "senml",
        ),
        row("V5-ct", "1-0:1.7.0", 1_709_337_600_000, 0.75, "kW", "json"),
        row("PART-1", "a", 1_709_337_600_000, 1.0, "V", "json"),
        row("AFTER-1", "c", 1_709_337_600_000, 3.0, "A", "json"),
    ];
    want.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert_eq!(got, want);
    for r in &rows {
        assert_eq!(r.source, "mqtt");
        assert_eq!(
            r.date,
            utc_date(r.ts_ms),
            "row in the folder of its UTC date"
        );
        let expected_quality = u16::from(r.channel == "1-0:1.8.2");
        assert_eq!(r.quality, expected_quality, "{r:?}");
    }

    // Dead letters: raw bytes, topic and reason of everything that did not (fully) decode.
    let letters = dead_letter::read_all(&data_dir.join("dead_letters")).unwrap();
    let find = |topic: &str| {
        letters
            .iter()
            .find(|l| l.topic == topic)
            .unwrap_or_else(|| panic!("no dead letter for {topic}: {letters:#?}"))
    };
    assert_eq!(letters.len(), 4, "{letters:#?}");
    assert_eq!(find("meter/TYPO-1/json").kind, "bad_topic");
    let bad = find("meters/BAD-1/pb");
    assert_eq!(bad.payload, garbage);
    assert_eq!(bad.kind, "malformed");
    assert_eq!(bad.meter_id.as_deref(), Some("BAD-1"));
    let xml = find("meters/BAD-2/xml");
    assert_eq!(xml.kind, "bad_topic");
    assert_eq!(xml.payload, b"<r/>");
    let part = find("meters/PART-1/json");
    assert_eq!(part.kind, "partial");
    assert!(
        part.reason.contains("record 1") && part.reason.contains("not a time"),
        "{}",
        part.reason
    );

    // Device state: the bare status and the status inside the pb report, saved at shutdown.
    let devices: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data_dir.join("state/devices.json")).unwrap())
            .unwrap();
    let device = |id: &str| {
        devices
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["meter_id"] == id)
            .unwrap_or_else(|| panic!("no device {id}"))
            .clone()
    };
    let e = device("E-json");
    assert_eq!(e["status"]["battery_pct"], 87);
    assert_eq!(e["status"]["rssi_dbm"], -71);
    assert_eq!(e["status"]["firmware"], "4.2.17");
    assert_eq!(e["messages"], 2);
    assert_eq!(e["last_values"]["1-0:1.8.1"]["value"], 1234.567);
    let g = device("G-pb");
    assert_eq!(g["status"]["battery_pct"], 64);
    assert_eq!(g["status"]["rsrp_dbm"], -101);
    assert_eq!(g["last_seq"], 42);
    assert_eq!(device("BAD-1")["decode_errors"], 1);
}

fn simulate(server: &Server, plan: &Plan) -> serde_json::Value {
    crate::harness::simulate_json(&mut crate::harness::simulate_command(
        server.mqtt_port,
        plan,
        0,
    ))
}

#[test]
fn a_simulated_fleet_arrives_complete_in_every_format() {
    let server = Server::start();
    // The first day of summer time 2024 and the UTC midnight around it: DSMR's `S`/`W`
    // timestamps and the date folders are both exercised.
    let plans = [
        Plan {
            meters: 40,
            messages: 5,
            format: Format::Pb,
            shape: Shape::Readings,
            start_ms: 1_711_843_200_000,
            interval_s: 900,
            prefix: "pb-".into(),
        },
        Plan {
            meters: 10,
            messages: 2,
            format: Format::Pb,
            shape: Shape::Series,
            start_ms: 1_711_843_200_000,
            interval_s: 900,
            prefix: "pbs-".into(),
        },
        Plan {
            meters: 10,
            messages: 3,
            format: Format::Json,
            shape: Shape::Series,
            start_ms: 1_711_756_800_000,
            interval_s: 900,
            prefix: "js-".into(),
        },
        Plan {
            meters: 10,
            messages: 6,
            format: Format::Senml,
            shape: Shape::Readings,
            start_ms: 1_711_846_800_000 - 2 * 3_600_000,
            interval_s: 3600,
            prefix: "sm-".into(),
        },
        Plan {
            meters: 10,
            messages: 6,
            format: Format::Dsmr,
            shape: Shape::Readings,
            start_ms: 1_711_846_800_000 - 3 * 3_600_000,
            interval_s: 3600,
            prefix: "ds-".into(),
        },
    ];
    let mut expected_rows = 0;
    let mut reconnects = 0;
    for plan in &plans {
        let summary = simulate(&server, plan);
        reconnects += summary["reconnects"].as_u64().unwrap();
        let messages = (plan.meters * plan.messages) as u64;
        // A meter that lost its connection resends what was not acknowledged (rumqttd 0.20
        // drops a connection now and then under churn): sent can exceed the plan, acked cannot.
        let sent = summary["messages_sent"].as_u64().unwrap();
        let resent = sent.checked_sub(messages).expect("every report sent");
        assert!(
            resent == 0 || summary["reconnects"].as_u64().unwrap() > 0,
            "{summary}"
        );
        assert_eq!(summary["messages_acked"], messages);
        expected_rows += messages as usize * plan.rows_per_message();
    }
    let (exit, data_dir, log, _keep) = server.stop();
    assert!(exit.success(), "exit {exit:?}\n{log}");
    // MQTT QoS 1 is at least once: a meter whose connection dropped resends what was not
    // acknowledged, so a report may be stored twice (simulate counts the reconnects).
    crate::harness::assert_fleet_arrived(&data_dir, &plans, expected_rows, reconnects == 0);
}

#[test]
fn a_bad_config_value_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[parquet]\nzstd_level = 99\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("parquet.zstd_level"), "{err}");

    std::fs::write(&config, "[batch]\nmax_rowz = 1\n").unwrap();
    let out = Command::new(BIN)
        .args(["config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_rowz"));

    let out = Command::new(BIN)
        .args(["serve", "--http-listen", "nowhere"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--http-listen"));
}

#[test]
fn decode_prints_rows_or_the_error_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.json");
    std::fs::write(&good, br#"{"readings": [{"channel": "1-0:1.8.1", "ts": 1709337600000, "value": 12.5, "unit": "kWh"}]}"#).unwrap();
    let out = Command::new(BIN)
        .args(["decode", "--format", "json"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("1-0:1.8.1") && text.contains("12.5") && text.contains("1 row(s)"),
        "{text}"
    );

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, b"{\n  \"readings\": [,]\n}").unwrap();
    let out = Command::new(BIN)
        .args(["decode", "--format", "json"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("line 2 column 16"), "{text}");
}

/// With `node.id`, the node's Parquet and dead-letter files carry its name (many nodes can
/// share one archive), and a start removes only its own leftovers.
#[test]
fn a_node_names_its_files_and_leaves_other_nodes_leftovers_alone() {
    let (_cfg, config) = crate::harness::config_file("[node]\nid = \"mf-7\"\n");
    let server = Server::start_with(&["--config", &config]);
    let day = server.data_dir.join("readings/date=2024-07-01");
    std::fs::create_dir_all(&day).unwrap();
    // Another node's file in the making, in the shared archive.
    let other = day.join(".part-mf-8-20240701T000000000Z-000000.parquet.tmp");
    std::fs::write(&other, b"PAR1").unwrap();
    assert!(crate::harness::mosquitto_pub_acked(
        server.mqtt_port,
        "meters/node-a/json",
        r#"{"readings":[{"channel":"1-0:1.8.0","ts":1719792000000,"value":1.5,"unit":"kWh"}]}"#
    ));
    assert!(crate::harness::mosquitto_pub_acked(
        server.mqtt_port,
        "meters/node-a/json",
        "{not json"
    ));
    // A crash and a new start: this node's leftovers go, the other node's stay.
    let server = Server::start_in(server.crash(), &["--config", &config]);
    let (exit, data_dir, log, _tmp) = server.stop();
    assert!(exit.success(), "{log}");
    assert!(
        other.exists(),
        "another node's leftover is not this node's to remove"
    );
    let parquet: Vec<String> = std::fs::read_dir(&day)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".parquet"))
        .collect();
    assert!(
        !parquet.is_empty() && parquet.iter().all(|n| n.starts_with("part-mf-7-")),
        "{parquet:?}"
    );
    let letters: Vec<String> = std::fs::read_dir(data_dir.join("dead_letters"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(letters[0].ends_with(".mf-7.jsonl"), "{letters:?}");
    assert!(log.contains("node=mf-7"), "{log}");
}

/// Issue 20, finding 6: consumption data is personal data. Everything `serve` writes under
/// the data folder (WAL, checkpoint, Parquet, dead letters with raw payloads and peers, the
/// device state) is out of other users' reach: no permission bit for "other" on any file or
/// folder, and a data folder an older version left open (0755) is closed at start. Before the
/// fix the files were 0644 in 0755 folders.
#[test]
fn nothing_under_the_data_folder_is_open_to_other_users() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    // An older version's data folder, open to everyone, with a file in it.
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(data.join("notes.txt"), b"left by an older version").unwrap();
    std::fs::set_permissions(
        data.join("notes.txt"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let server = Server::start_in(tmp, &[]);
    assert!(crate::harness::mosquitto_pub_acked(
        server.mqtt_port,
        "meters/private-1/json",
        r#"{"readings":[{"channel":"1-0:1.8.0","ts":1719792000000,"value":1.5,"unit":"kWh"}],"status":{"battery_pct":80}}"#
    ));
    assert!(crate::harness::mosquitto_pub_acked(
        server.mqtt_port,
        "meters/private-1/json",
        "{not json"
    ));
    let (exit, data_dir, log, _tmp) = server.stop();
    assert!(exit.success(), "{log}");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode(&data_dir) & 0o007,
        0,
        "the data folder: {:o}",
        mode(&data_dir)
    );
    let mut seen = Vec::new();
    let mut folders = vec![data_dir.clone()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                folders.push(path.clone());
            }
            let name = path.strip_prefix(&data_dir).unwrap().display().to_string();
            // The data folder closes the older file off; its own mode is the operator's.
            if name != "notes.txt" {
                assert_eq!(mode(&path) & 0o007, 0, "{name}: {:o}", mode(&path));
            }
            seen.push(name);
        }
    }
    for kind in ["wal", "readings", "dead_letters", "state"] {
        assert!(
            seen.iter().any(|n| n.starts_with(kind)),
            "{kind} was written: {seen:?}"
        );
    }
}
