//! `meterflow simulate --format dlms` against the real `meterflow serve`: a fleet whose
//! credential rows carry DLMS system titles and keys (security control 0x30 for meters with an
//! authentication key, 0x20 for those with only an encryption key) pushes to the wrapper
//! listener over TCP and UDP, publishes over MQTT and posts over CoAP with DTLS (Content-Format
//! 65002); every row of [`Plan::expected_rows`] is in Parquet exactly once, with no dead
//! letter. Over TCP a second run (the invocation counters from the clock, above the first
//! run's explicit ones) is stored too, not refused as a replay.

use std::path::{Path, PathBuf};

use meterflow_proto::Format;
use meterflow_simulate::{Plan, Shape};

use crate::harness::{free_port, read_readings, simulate_command, simulate_json, wait_for, Server};

fn plan(prefix: &str, meters: usize, messages: usize, start_ms: i64) -> Plan {
    Plan {
        meters,
        messages,
        format: Format::Dlms,
        shape: Shape::Readings,
        start_ms,
        interval_s: 3600,
        prefix: prefix.into(),
    }
}

/// 2024-03-31T01:00:00Z, the switch to summer time, minus two hours: the reports' date-times
/// are in CET and then CEST.
const AROUND_THE_SWITCH: i64 = 1_711_846_800_000 - 2 * 3_600_000;

/// A data folder whose credential store holds the fleet of `plan`, and the same CSV for
/// `simulate --credentials`: meter m has system title `MFL` + m, its own encryption key, and
/// an authentication key when m is even.
fn fleet(plan: &Plan) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("fleet.csv");
    let mut text = String::from("meter_id,secret,dlms_system_title,dlms_ek,dlms_ak\n");
    for m in 0..plan.meters {
        let ak = if m % 2 == 0 {
            format!("{:032X}", 0xA0A0_0000_u64 + m as u64 * 104_729)
        } else {
            String::new()
        };
        text.push_str(&format!(
            "{},secret-of-{m}-0123456789,4D464C{:010X},{:032X},{ak}\n",
            plan.meter_id(m),
            m,
            0x5EC2_E700_u64 + m as u64 * 7919,
        ));
    }
    std::fs::write(&csv, text).unwrap();
    crate::harness::credentials(tmp.path(), &["import", csv.to_str().unwrap()]);
    (tmp, csv)
}

type Row = (String, String, i64, f64, String);

/// Every row the plans send, sorted.
fn expected(plans: &[&Plan]) -> Vec<Row> {
    let mut rows: Vec<Row> = plans
        .iter()
        .flat_map(|p| {
            (0..p.meters).flat_map(move |m| {
                (0..p.messages).flat_map(move |k| {
                    p.expected_rows(m, k).into_iter().map(move |r| {
                        (
                            p.meter_id(m),
                            r.channel.to_string(),
                            r.ts_ms,
                            r.value,
                            r.unit.to_string(),
                        )
                    })
                })
            })
        })
        .collect();
    rows.sort_by(|a, b| (&a.0, &a.1, a.2).cmp(&(&b.0, &b.1, b.2)));
    rows
}

/// Every row stored, sorted, each checked for its source, format and quality (0: the push's
/// own date-time, its deviation known); and no dead letter.
fn stored(data_dir: &Path, source: &str) -> Vec<Row> {
    let rows = rows_stored(data_dir, source);
    let letters = meterflow_storage::dead_letter::read_all(&data_dir.join("dead_letters")).unwrap();
    assert!(letters.is_empty(), "{letters:?}");
    rows
}

/// [`stored`], whatever the dead letters.
fn rows_stored(data_dir: &Path, source: &str) -> Vec<Row> {
    let mut rows: Vec<Row> = read_readings(data_dir)
        .into_iter()
        .map(|r| {
            assert_eq!(
                (r.source.as_str(), r.format.as_str(), r.quality),
                (source, "dlms", 0),
                "{r:?}"
            );
            (r.meter_id, r.channel, r.ts_ms, r.value, r.unit)
        })
        .collect();
    rows.sort_by(|a, b| (&a.0, &a.1, a.2).cmp(&(&b.0, &b.1, b.2)));
    rows
}

#[test]
fn a_ciphered_fleet_over_the_wrapper_listener_tcp_arrives_exactly_and_a_rerun_is_no_replay() {
    let first = plan("dl-", 20, 5, AROUND_THE_SWITCH);
    let (tmp, csv) = fleet(&first);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let server = Server::start_in(tmp, &["--dlms-listen", &listen]);
    let summary = simulate_json(
        simulate_command(server.mqtt_port, &first, 0)
            .args(["--dlms", &listen, "--dlms-invocation-counter", "1000"])
            .arg("--credentials")
            .arg(&csv),
    );
    assert_eq!(summary["protocol"], "dlms-tcp", "{summary}");
    assert_eq!(summary["messages_sent"], 100, "{summary}");
    assert_eq!(summary["messages_acked"], 100, "{summary}");
    assert_eq!(summary["meters_failed"], 0, "{summary}");
    assert_eq!(summary["dlms_ciphered_meters"], 20, "{summary}");
    assert_eq!(
        summary["dlms_invocation_counters"],
        serde_json::json!([1000, 1004])
    );
    // Acknowledged means read, so durable: every frame is counted by now.
    assert_eq!(
        server.metric("meterflow_dlms_frames_total{transport=\"tcp\"}"),
        100.0
    );

    // The same meters again, five hours later in meter time, with the counters simulate
    // derives from the clock (far above 1004): stored, not refused as replays.
    let second = plan("dl-", 20, 3, AROUND_THE_SWITCH + 5 * 3_600_000);
    let summary = simulate_json(
        simulate_command(server.mqtt_port, &second, 0)
            .args(["--dlms", &listen, "--concurrency", "7"])
            .arg("--credentials")
            .arg(&csv),
    );
    assert_eq!(summary["messages_acked"], 60, "{summary}");
    let (first_counter, last_counter) = (
        summary["dlms_invocation_counters"][0].as_u64().unwrap(),
        summary["dlms_invocation_counters"][1].as_u64().unwrap(),
    );
    assert!(
        first_counter > 1004 && last_counter == first_counter + 2,
        "{summary}"
    );
    assert!(
        server_refused_nothing(&server.log_text()),
        "the listener refused a push"
    );

    // The first run again, byte for byte (its counters from 1000): the authenticated pushes
    // (even meters, 0x30) are skipped at the listener, not stored again, and their meters see
    // the orderly close (their pushes are stored); the "encrypted only" ones (odd meters,
    // 0x20) reach the pipeline, which refuses them as replays (dead letters).
    let summary = simulate_json(
        simulate_command(server.mqtt_port, &first, 0)
            .args(["--dlms", &listen, "--dlms-invocation-counter", "1000"])
            .arg("--credentials")
            .arg(&csv),
    );
    assert_eq!(summary["messages_acked"], 100, "{summary}");
    crate::harness::wait_for("the replays refused", || {
        let at_listener = server.metric("meterflow_dlms_refused_total{reason=\"replay\"}");
        let in_pipeline = server.metric("meterflow_dlms_rejected_total{reason=\"replay\"}");
        // Counted in rejected_total by both: 50 at the listener, 50 in the pipeline.
        (at_listener == 50.0 && in_pipeline == 100.0).then_some(())
    });
    let (status, data_dir, log, _keep) = server.stop();
    assert!(status.success(), "{log}");
    assert_eq!(rows_stored(&data_dir, "dlms"), expected(&[&first, &second]));
    let letters = meterflow_storage::dead_letter::read_all(&data_dir.join("dead_letters")).unwrap();
    assert_eq!(letters.len(), 50);
    assert!(letters.iter().all(|l| l.kind == "replay"));
}

/// The log of a server that refused no DLMS push.
fn server_refused_nothing(log: &str) -> bool {
    !log.contains("DLMS push refused")
}

#[test]
fn a_ciphered_fleet_over_the_wrapper_listener_udp_arrives_exactly() {
    let plan = plan("du-", 5, 2, AROUND_THE_SWITCH);
    let (tmp, csv) = fleet(&plan);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let server = Server::start_in(tmp, &["--dlms-listen", &listen]);
    let summary = simulate_json(
        simulate_command(server.mqtt_port, &plan, 0)
            .args(["--dlms", &listen, "--dlms-transport", "udp"])
            .arg("--credentials")
            .arg(&csv),
    );
    assert_eq!(summary["protocol"], "dlms-udp", "{summary}");
    assert_eq!(summary["messages_sent"], 10, "{summary}");
    assert_eq!(summary["messages_acked"], 0, "{summary}");
    assert!(
        summary["acked_means"]
            .as_str()
            .unwrap()
            .contains("counted as sent only"),
        "{summary}"
    );
    // Nothing is answered over UDP: wait until the server has decoded all ten.
    wait_for("the ten pushes decoded", || {
        (server.metric("meterflow_decoded_total{format=\"dlms\"}") >= 10.0).then_some(())
    });
    let (status, data_dir, log, _keep) = server.stop();
    assert!(status.success(), "{log}");
    assert_eq!(stored(&data_dir, "dlms"), expected(&[&plan]));
}

#[test]
fn a_ciphered_fleet_over_mqtt_arrives_exactly() {
    let plan = plan("dm-", 10, 3, AROUND_THE_SWITCH);
    let (tmp, csv) = fleet(&plan);
    let server = Server::start_in(tmp, &[]);
    let summary = simulate_json(
        simulate_command(server.mqtt_port, &plan, 0)
            .arg("--credentials")
            .arg(&csv),
    );
    assert_eq!(summary["protocol"], "mqtt", "{summary}");
    assert_eq!(summary["messages_acked"], 30, "{summary}");
    assert_eq!(summary["reconnects"], 0, "{summary}");
    assert_eq!(summary["dlms_ciphered_meters"], 10, "{summary}");
    let (status, data_dir, log, _keep) = server.stop();
    assert!(status.success(), "{log}");
    assert_eq!(stored(&data_dir, "mqtt"), expected(&[&plan]));
}

#[test]
fn a_ciphered_fleet_over_coap_with_dtls_arrives_exactly() {
    let plan = plan("dc-", 6, 3, AROUND_THE_SWITCH);
    let (tmp, csv) = fleet(&plan);
    let port = crate::harness::free_udp_port();
    let listen = format!("127.0.0.1:{port}");
    let server = Server::start_in(tmp, &["--coaps-listen", &listen]);
    // Each meter its DTLS session (its secret as the key), its pushes with Content-Format
    // 65002, ciphered with its DLMS keys inside.
    let summary = simulate_json(
        simulate_command(server.mqtt_port, &plan, 0)
            .args(["--coap", &listen, "--dtls"])
            .arg("--credentials")
            .arg(&csv),
    );
    assert_eq!(summary["protocol"], "coap", "{summary}");
    assert_eq!(summary["messages_acked"], 18, "{summary}");
    assert_eq!(summary["dlms_ciphered_meters"], 6, "{summary}");
    let (status, data_dir, log, _keep) = server.stop();
    assert!(status.success(), "{log}");
    assert_eq!(stored(&data_dir, "coap"), expected(&[&plan]));
}
