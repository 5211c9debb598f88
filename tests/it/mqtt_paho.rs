//! MQTT 5 with an independent client: Eclipse paho-mqtt (Python, installed by the test
//! command) runs `tests/it/mqtt5_paho.py` against the real server; this test checks what paho
//! saw (reason codes, CONNACK properties, the DISCONNECT at shutdown) and what was stored.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::harness::{read_readings, Server, BIN};
use meterflow_storage::dead_letter;

const SECRET: &str = "paho-secret-0123456789";

#[test]
fn paho_sees_the_reason_codes_properties_and_back_pressure_of_mqtt_5() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["credentials", "--data-dir"])
        .arg(tmp.path().join("data"))
        .args(["add", "P1", "--secret", SECRET])
        .output()
        .unwrap();
    assert!(out.status.success());
    let (_dir, config) =
        crate::harness::config_file("[mqtt]\nmax_inflight = 5\nmax_payload_bytes = 4096\n");
    let server = Server::start_in(tmp, &["--config", &config]);

    let mut paho = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/it/mqtt5_paho.py"
        ))
        .args([&server.mqtt_port.to_string(), "P1", SECRET, "P2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs (the test command installs paho-mqtt)");
    let mut lines = BufReader::new(paho.stdout.take().unwrap()).lines();
    let ready = lines.next().and_then(Result::ok).unwrap_or_default();
    if ready != "READY" {
        let mut err = String::new();
        std::io::Read::read_to_string(&mut paho.stderr.take().unwrap(), &mut err).unwrap();
        panic!("paho: {ready}\n{err}");
    }
    let backpressure = server.metric("meterflow_mqtt_backpressure_total");
    // SIGTERM while paho is connected: it is told 0x8B, server shutting down.
    let (exit, data_dir, log, _keep) = server.stop();
    assert!(exit.success(), "{log}");
    let report = lines.next().and_then(Result::ok).unwrap_or_default();
    assert!(paho.wait().unwrap().success());
    let seen: serde_json::Value = serde_json::from_str(&report).unwrap();

    assert_eq!(seen["bad_secret"], 0x86, "{seen}");
    assert_eq!(seen["no_credentials"], 0x87, "{seen}");
    assert_eq!(seen["connack"], 0, "{seen}");
    assert_eq!(seen["receive_maximum"], 5, "{seen}");
    assert_eq!(seen["maximum_packet_size"], 4096, "{seen}");
    // Not announced as unavailable: the one filter granted, meters/{id}/cmd/#, has one.
    assert!(seen["wildcard_subscriptions"].is_null(), "{seen}");
    assert_eq!(seen["content_type_ack"], 0, "{seen}");
    assert_eq!(seen["qos2_ack"], 0, "{seen}");
    assert_eq!(seen["forged_ack"], 0x87, "{seen}");
    assert_eq!(
        seen["burst_acked"], 200,
        "all answered, none dropped: {seen}"
    );
    assert_eq!(seen["suback_all"], serde_json::json!([0x87]), "{seen}");
    assert_eq!(seen["suback_own"], serde_json::json!([1]), "{seen}");
    assert_eq!(seen["disconnect"], 0x8B, "{seen}");
    // 200 publishes against a receive maximum of 5: the connection was not read further at
    // least once.
    assert!(backpressure >= 1.0, "backpressure {backpressure}");

    // Stored: the content-typed report as json, the QoS 2 one once, the burst; not the forgery.
    let rows = read_readings(&data_dir);
    let mut values: Vec<i64> = rows.iter().map(|r| r.value as i64).collect();
    values.sort_unstable();
    let mut want: Vec<i64> = vec![1, 2];
    want.extend(100..300);
    assert_eq!(values, want);
    let typed = rows.iter().find(|r| r.value == 1.0).unwrap();
    assert_eq!(typed.format, "json");
    let letters = dead_letter::read_all(&data_dir.join("dead_letters")).unwrap();
    assert_eq!(letters.len(), 1, "{letters:#?}");
    assert_eq!(letters[0].kind, "unauthorized");
    assert_eq!(letters[0].topic, "meters/P2/json");
    assert_eq!(letters[0].meter_id.as_deref(), Some("P1"));
}
