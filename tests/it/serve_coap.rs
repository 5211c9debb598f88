//! CoAP and LwM2M end to end against the real binary: libcoap's `coap-client-notls` (a client
//! nobody here wrote) posts reports, a Block1 upload and LwM2M registration and Send; a raw UDP
//! socket retransmits a CON. The rows are read back from Parquet after SIGTERM.

use std::net::UdpSocket;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::{read_readings, Row, Server};
use meterflow_proto::Format;
use meterflow_simulate::{Plan, Shape};
use meterflow_storage::dead_letter;

/// Runs `coap-client-notls -v 6` and returns what it printed (stdout and stderr), where the
/// answer's code and options show.
pub(crate) fn coap_client(args: &[&str]) -> String {
    let out = Command::new("coap-client-notls")
        .args(["-v", "6", "-B", "30"])
        .args(args)
        .output()
        .expect("coap-client-notls runs (the test command installs libcoap3-bin)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "coap-client-notls {args:?}:\n{text}");
    text
}

/// The code of the last answer coap-client printed (`v:1 t:ACK c:2.04 i:...`).
pub(crate) fn answer_code(output: &str) -> String {
    output
        .lines()
        .rev()
        .filter_map(|l| l.split(" c:").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .find(|c| c.len() == 4 && c.as_bytes()[1] == b'.' && !c.starts_with('0'))
        .unwrap_or_else(|| panic!("no answer in:\n{output}"))
        .to_string()
}

fn uri(server: &Server, path: &str) -> String {
    format!("coap://127.0.0.1:{}{path}", server.coap_port)
}

fn rows_of<'a>(rows: &'a [Row], meter: &str) -> Vec<&'a Row> {
    let mut v: Vec<&Row> = rows.iter().filter(|r| r.meter_id == meter).collect();
    v.sort_by(|a, b| (a.ts_ms, &a.channel).cmp(&(b.ts_ms, &b.channel)));
    v
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn libcoap_posts_json_senml_protobuf_and_a_block1_upload_and_every_row_arrives() {
    let server = Server::start();
    let files = tempfile::tempdir().unwrap();
    let dir = files.path();

    // JSON (Content-Format 50), CON.
    let json = br#"{"readings":[{"channel":"1-0:1.8.0","ts":"2024-03-01T00:15:00Z","value":1234.5,"unit":"kWh"},
        {"channel":"1-0:2.8.0","ts":1709252100000,"value":7.25,"unit":"kWh","quality":1}],
        "status":{"battery_pct":91,"rssi_dbm":-83}}"#;
    let out = coap_client(&[
        "-m",
        "post",
        "-t",
        "50",
        "-f",
        &write(dir, "r.json", json),
        &uri(&server, "/r/coap-json"),
    ]);
    assert_eq!(answer_code(&out), "2.04", "{out}");

    // SenML-JSON (110), NON.
    let senml = br#"[{"bn":"urn:dev:mac:0024befffe804ff1:","bt":1709251200,"bu":"kWh","n":"1-0:1.8.0","v":100.5},{"n":"1-0:1.8.0","t":900,"v":100.75}]"#;
    coap_client(&[
        "-N",
        "-m",
        "post",
        "-t",
        "110",
        "-f",
        &write(dir, "s.json", senml),
        &uri(&server, "/r/coap-senml"),
    ]);

    // protobuf (65000).
    let pb = {
        use prost::Message;
        meterflow_proto::pb::MeterReport {
            meter_id: "coap-pb".into(),
            seq: 1,
            readings: vec![meterflow_proto::pb::Reading {
                channel: "1-0:1.8.1".into(),
                ts_ms: 1_709_254_800_000,
                value: 42.0,
                unit: "kWh".into(),
                quality: 0,
            }],
            ..Default::default()
        }
        .encode_to_vec()
    };
    let out = coap_client(&[
        "-m",
        "post",
        "-t",
        "65000",
        "-f",
        &write(dir, "r.pb", &pb),
        &uri(&server, "/r/coap-pb"),
    ]);
    assert_eq!(answer_code(&out), "2.04", "{out}");

    // A Block1 upload in 64-byte blocks: 96 quarter-hours of SenML, about 3 KiB.
    let mut records = vec![format!(
        r#"{{"bn":"","bt":1709251200,"bu":"kWh","n":"1-0:1.29.0","v":0.0}}"#
    )];
    for i in 1..96 {
        records.push(format!(
            r#"{{"n":"1-0:1.29.0","t":{},"v":{}.25}}"#,
            i * 900,
            i
        ));
    }
    let big = format!("[{}]", records.join(","));
    assert!(big.len() > 2048);
    let out = coap_client(&[
        "-b",
        "64",
        "-m",
        "post",
        "-t",
        "110",
        "-f",
        &write(dir, "big.json", big.as_bytes()),
        &uri(&server, "/r/coap-block"),
    ]);
    assert!(out.contains("Block1"), "the upload went in blocks:\n{out}");
    assert_eq!(answer_code(&out), "2.04", "{out}");

    // The 4.xx answers, each with its diagnostic.
    let out = coap_client(&[
        "-m",
        "post",
        "-t",
        "0",
        "-e",
        "hello",
        &uri(&server, "/r/coap-json"),
    ]);
    assert_eq!(answer_code(&out), "4.15", "{out}");
    assert!(out.contains("Content-Format must be"), "{out}");
    let out = coap_client(&[
        "-m",
        "post",
        "-t",
        "50",
        "-e",
        "{}",
        &uri(&server, "/readings/x"),
    ]);
    assert_eq!(answer_code(&out), "4.04", "{out}");
    let out = coap_client(&[
        "-m",
        "post",
        "-t",
        "50",
        "-e",
        "{\"readings\":[",
        &uri(&server, "/r/coap-bad"),
    ]);
    assert_eq!(answer_code(&out), "4.00", "{out}");
    assert!(out.contains("json: malformed"), "{out}");
    let out = coap_client(&["-m", "get", &uri(&server, "/r/coap-json")]);
    assert_eq!(answer_code(&out), "4.05", "{out}");

    let (_, metrics) = server.http_get("/metrics");
    for line in [
        "meterflow_received_total{source=\"coap\"} 5",
        "meterflow_coap_answers_total{code=\"4.15\"} 1",
        "meterflow_coap_answers_total{code=\"4.00\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }
    let (_, device) = server.http_get("/api/devices/coap-json");
    assert!(
        device.contains("\"battery_pct\":91") && device.contains("\"last_source\":\"coap\""),
        "{device}"
    );

    let (status, data_dir, log, _tmp) = server.stop();
    assert!(status.success(), "{log}");
    let rows = read_readings(&data_dir);
    let got = |meter: &str| -> Vec<(String, i64, f64, String, u16, String, String)> {
        rows_of(&rows, meter)
            .into_iter()
            .map(|r| {
                (
                    r.channel.clone(),
                    r.ts_ms,
                    r.value,
                    r.unit.clone(),
                    r.quality,
                    r.source.clone(),
                    r.format.clone(),
                )
            })
            .collect()
    };
    let row = |c: &str, ts: i64, v: f64, u: &str, q: u16, f: &str| {
        (
            c.to_string(),
            ts,
            v,
            u.to_string(),
            q,
            "coap".to_string(),
            f.to_string(),
        )
    };
    assert_eq!(
        got("coap-json"),
        vec![
            row("1-0:1.8.0", 1_709_252_100_000, 1234.5, "kWh", 0, "json"),
            row("1-0:2.8.0", 1_709_252_100_000, 7.25, "kWh", 1, "json"),
        ]
    );
    assert_eq!(
        got("coap-senml"),
        vec![
            row("1-0:1.8.0", 1_709_251_200_000, 100.5, "kWh", 0, "senml"),
            row("1-0:1.8.0", 1_709_252_100_000, 100.75, "kWh", 0, "senml"),
        ]
    );
    assert_eq!(
        got("coap-pb"),
        vec![row("1-0:1.8.1", 1_709_254_800_000, 42.0, "kWh", 0, "pb")]
    );
    let block = got("coap-block");
    assert_eq!(block.len(), 96, "every value of the Block1 upload, once");
    for (i, r) in block.iter().enumerate() {
        let value = if i == 0 { 0.0 } else { i as f64 + 0.25 };
        assert_eq!(
            r,
            &row(
                "1-0:1.29.0",
                1_709_251_200_000 + i as i64 * 900_000,
                value,
                "kWh",
                0,
                "senml"
            )
        );
    }
    // The payload that did not decode is a dead letter with its raw bytes; the refused
    // requests (4.15, 4.04, 4.05) never reached the WAL.
    let letters = dead_letter::read_all(&data_dir.join("dead_letters")).unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].source, "coap");
    assert_eq!(letters[0].meter_id.as_deref(), Some("coap-bad"));
    assert_eq!(letters[0].payload, b"{\"readings\":[");
    assert!(rows.iter().all(|r| r.meter_id != "coap-bad"));
}

/// A CON as a meter's modem would send it: `POST /r/{meter}` with Content-Format 50.
fn con_post(message_id: u16, meter: &str, payload: &[u8]) -> Vec<u8> {
    let [hi, lo] = message_id.to_be_bytes();
    let mut d = vec![0x42, 0x02, hi, lo, 0xbe, 0xef]; // CON, POST, 2-byte token
    d.extend([0xb1, b'r']); // Uri-Path (11) "r"
    d.push(meter.len() as u8); // Uri-Path again (delta 0)
    d.extend(meter.as_bytes());
    d.extend([0x11, 50]); // Content-Format (12): 50
    d.push(0xff);
    d.extend(payload);
    d
}

#[test]
fn a_retransmitted_con_is_answered_again_and_stored_once() {
    let server = Server::start();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    socket.connect(("127.0.0.1", server.coap_port)).unwrap();
    let payload =
        br#"{"readings":[{"channel":"1-0:1.8.0","ts":1709252100000,"value":5.5,"unit":"kWh"}]}"#;
    let request = con_post(0x0101, "coap-dup", payload);
    let mut answers = Vec::new();
    for _ in 0..3 {
        // As if each ACK were lost: the same message ID again.
        socket.send(&request).unwrap();
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).unwrap();
        answers.push(buf[..n].to_vec());
    }
    // ACK (type 2), 2.04 (0x44), the request's message ID and token.
    assert_eq!(&answers[0][..6], &[0x62, 0x44, 0x01, 0x01, 0xbe, 0xef]);
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    // A new message ID with the same content is a new message (at least once).
    socket.send(&con_post(0x0102, "coap-dup", payload)).unwrap();
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).unwrap();
    assert_eq!(&buf[..4], &[0x62, 0x44, 0x01, 0x02]);
    assert!(n >= 6);
    let (_, metrics) = server.http_get("/metrics");
    assert!(
        metrics.contains("meterflow_coap_duplicates_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("meterflow_received_total{source=\"coap\"} 2"),
        "{metrics}"
    );
    let (status, data_dir, log, _tmp) = server.stop();
    assert!(status.success(), "{log}");
    let rows = read_readings(&data_dir);
    let stored: Vec<_> = rows.iter().filter(|r| r.meter_id == "coap-dup").collect();
    assert_eq!(
        stored.len(),
        2,
        "the retransmissions were not ingested: {stored:?}"
    );
}

#[test]
fn an_lwm2m_client_registers_sends_updates_and_deregisters() {
    let server = Server::start();
    let files = tempfile::tempdir().unwrap();
    // Every request from one local port, as one device.
    let port = crate::harness::free_udp_port().to_string();
    let endpoint = "urn:imei:490154203237518";
    let out = coap_client(&[
        "-p",
        &port,
        "-m",
        "post",
        "-t",
        "40",
        "-e",
        "</1/0>,</3/0>,</4/0>",
        &uri(&server, &format!("/rd?ep={endpoint}&lt=300&lwm2m=1.1&b=U")),
    ]);
    assert_eq!(answer_code(&out), "2.01", "{out}");
    let location: Vec<&str> = out
        .split("Location-Path:")
        .skip(1)
        .map(|s| s.split([',', ' ', ']']).next().unwrap())
        .collect();
    assert_eq!(location.len(), 2, "{out}");
    assert_eq!(location[0], "rd");
    let id = location[1].to_string();

    // Send (LwM2M 1.1) with SenML-CBOR: the Device object.
    let pack = write(
        files.path(),
        "device.cbor",
        &crate::harness::leshan_device_object(),
    );
    let out = coap_client(&[
        "-p",
        &port,
        "-m",
        "post",
        "-t",
        "112",
        "-f",
        &pack,
        &uri(&server, "/dp"),
    ]);
    assert_eq!(answer_code(&out), "2.04", "{out}");
    // Update, then Send again; from another port the endpoint is unknown.
    let out = coap_client(&[
        "-p",
        &port,
        "-m",
        "post",
        &uri(&server, &format!("/rd/{id}?lt=600")),
    ]);
    assert_eq!(answer_code(&out), "2.04", "{out}");
    let other = crate::harness::free_udp_port().to_string();
    let out = coap_client(&[
        "-p",
        &other,
        "-m",
        "post",
        "-t",
        "112",
        "-f",
        &pack,
        &uri(&server, "/dp"),
    ]);
    assert_eq!(answer_code(&out), "4.03", "{out}");

    let meter = "imei-490154203237518";
    // The heartbeat is answered without waiting for the pipeline: wait until it is seen.
    let device = crate::harness::wait_for("the update's heartbeat seen", || {
        let (_, device) = server.http_get(&format!("/api/devices/{meter}"));
        device
            .contains("\"last_format\":\"status\"")
            .then_some(device)
    });
    assert!(
        device.contains("\"battery_pct\":100"),
        "battery /3/0/9 is in the status: {device}"
    );
    // The update after the Send was a heartbeat: the device was last heard by it.
    assert!(
        device.contains("\"last_source\":\"coap\"")
            && device.contains("\"last_format\":\"status\""),
        "{device}"
    );
    assert!(
        device.contains("\"/3/0/9\""),
        "the Send's readings are the last values: {device}"
    );

    // De-register: the id is gone, and a Send from the device is refused.
    let out = coap_client(&[
        "-p",
        &port,
        "-m",
        "delete",
        &uri(&server, &format!("/rd/{id}")),
    ]);
    assert_eq!(answer_code(&out), "2.02", "{out}");
    let out = coap_client(&[
        "-p",
        &port,
        "-m",
        "post",
        "-t",
        "112",
        "-f",
        &pack,
        &uri(&server, "/dp"),
    ]);
    assert_eq!(answer_code(&out), "4.03", "{out}");
    let out = coap_client(&[
        "-p",
        &port,
        "-m",
        "post",
        &uri(&server, &format!("/rd/{id}")),
    ]);
    assert_eq!(answer_code(&out), "4.04", "{out}");

    let (status, data_dir, log, _tmp) = server.stop();
    assert!(status.success(), "{log}");
    let rows = read_readings(&data_dir);
    let mine = rows_of(&rows, meter);
    let value = |channel: &str| -> Vec<f64> {
        mine.iter()
            .filter(|r| r.channel == channel)
            .map(|r| r.value)
            .collect()
    };
    // One Send was accepted: each numeric resource once, under its full path.
    assert_eq!(value("/3/0/9"), vec![100.0]);
    assert_eq!(value("/3/0/7/0"), vec![3800.0]);
    assert_eq!(value("/3/0/7/1"), vec![5000.0]);
    assert_eq!(value("/3/0/10"), vec![15.0]);
    assert!(mine
        .iter()
        .all(|r| r.source == "coap" && r.format == "lwm2m"));
}

/// `simulate --coap`: a fleet in every format, series in Block1 blocks of 64 bytes, every
/// expected row stored exactly once (CoAP duplicates are detected, so no reconnect excuse).
#[test]
fn a_simulated_coap_fleet_arrives_complete_and_exactly_once() {
    let server = Server::start();
    let plan = |format, shape, meters, messages, prefix: &str| Plan {
        meters,
        messages,
        format,
        shape,
        start_ms: 1_711_843_200_000,
        interval_s: 900,
        prefix: prefix.into(),
    };
    let plans = [
        (plan(Format::Pb, Shape::Readings, 40, 5, "cpb-"), 1024),
        (plan(Format::Json, Shape::Readings, 10, 3, "cjs-"), 1024),
        (plan(Format::Senml, Shape::Readings, 10, 3, "csm-"), 1024),
        (plan(Format::Dsmr, Shape::Readings, 10, 3, "cds-"), 1024),
        (plan(Format::Json, Shape::Series, 10, 2, "cjss-"), 64),
    ];
    let mut expected_rows = 0;
    for (plan, block_size) in &plans {
        let summary = crate::harness::simulate_json(
            crate::harness::simulate_command(server.mqtt_port, plan, 0)
                .args(["--coap", &format!("127.0.0.1:{}", server.coap_port)])
                .args(["--block-size", &block_size.to_string()]),
        );
        assert_eq!(summary["protocol"], "coap");
        let messages = (plan.meters * plan.messages) as u64;
        assert_eq!(summary["messages_acked"], messages, "{summary}");
        assert!(summary["ack_ms_p99"].as_f64().unwrap() > 0.0);
        expected_rows += messages as usize * plan.rows_per_message();
    }
    let (_, metrics) = server.http_get("/metrics");
    let continues: u64 = metrics
        .lines()
        .find(|l| l.starts_with("meterflow_coap_answers_total{code=\"2.31\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert!(
        continues >= 20 * 5,
        "the series went in blocks: {continues} x 2.31"
    );
    let (exit, data_dir, log, _keep) = server.stop();
    assert!(exit.success(), "{log}");
    let plans: Vec<Plan> = plans.into_iter().map(|(p, _)| p).collect();
    crate::harness::assert_fleet_arrived(&data_dir, &plans, expected_rows, true);
    let rows = read_readings(&data_dir);
    assert!(rows.iter().all(|r| r.source == "coap"));
}
