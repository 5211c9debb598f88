//! The MQTT edge's bounds, each hit for real over sockets: connections, the CONNECT timeout
//! (slowloris), the keep-alive, packet size, the read-buffer budget, and the WAL at its disk
//! budget (nothing that is not stored is acknowledged). Each is counted in a metric, and the
//! connections gauge is exact.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{read_readings, Server};

fn metric(server: &Server, name: &str) -> f64 {
    let (_, body) = server.http_get("/metrics");
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn closed(server: &Server, reason: &str) -> f64 {
    metric(
        server,
        &format!("meterflow_mqtt_closed_total{{reason=\"{reason}\"}}"),
    )
}

fn remaining_length(mut len: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
}

/// An MQTT 3.1.1 CONNECT.
fn connect_packet(client_id: &str, keep_alive: u16) -> Vec<u8> {
    let mut body = vec![0, 4];
    body.extend_from_slice(b"MQTT");
    body.extend_from_slice(&[4, 0x02]);
    body.extend_from_slice(&keep_alive.to_be_bytes());
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut p = vec![0x10];
    remaining_length(body.len(), &mut p);
    p.extend_from_slice(&body);
    p
}

/// An MQTT 3.1.1 QoS 1 PUBLISH.
fn publish_packet(pkid: u16, topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(topic.as_bytes());
    body.extend_from_slice(&pkid.to_be_bytes());
    body.extend_from_slice(payload);
    let mut p = vec![0x32];
    remaining_length(body.len(), &mut p);
    p.extend_from_slice(&body);
    p
}

/// Connects and completes CONNECT/CONNACK.
fn session(port: u16, client_id: &str, keep_alive: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(&connect_packet(client_id, keep_alive)).unwrap();
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0]);
    s
}

/// Whether the server closed `s`: reads until EOF (or an error), without a time limit of
/// its own beyond the socket's.
fn is_closed(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return true,
            Ok(_) => {}
        }
    }
}

/// A JSON report of one reading, padded with whitespace to about `pad` more bytes.
fn json_payload(value: usize, pad: usize) -> Vec<u8> {
    format!(
        r#"{{"readings":[{{"channel":"c","ts":"2024-03-01T12:00:00Z","value":{value},"unit":"kWh"}}]{}}}"#,
        " ".repeat(pad)
    )
    .into_bytes()
}

#[test]
fn every_bound_closes_what_passes_it_and_counts_it() {
    let (_dir, config) = common::config_file(
        "[mqtt]\nmax_connections = 4\nconnect_timeout_ms = 700\nmax_payload_bytes = 2048\n\
         max_read_buffer_bytes = 3000\nmax_inflight_bytes = 65536\n",
    );
    let server = Server::start_with(&["--config", &config]);
    let port = server.mqtt_port;

    // Slowloris: a connection that never sends CONNECT is closed at the connect timeout.
    let mut silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert!(is_closed(&mut silent));
    common::wait_for("connect_timeout counted", || {
        (closed(&server, "connect_timeout") == 1.0).then_some(())
    });

    // Keep-alive 1 s, then silence: closed after 1.5 s of it.
    let mut quiet = session(port, "ka", 1);
    assert!(is_closed(&mut quiet));
    common::wait_for("keep_alive counted", || {
        (closed(&server, "keep_alive") == 1.0).then_some(())
    });

    // Connections: four are held, the fifth is closed at once; the gauge is exact.
    let held: Vec<TcpStream> = (0..4)
        .map(|i| session(port, &format!("held-{i}"), 60))
        .collect();
    assert_eq!(metric(&server, "meterflow_mqtt_connections"), 4.0);
    let mut fifth = TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert!(is_closed(&mut fifth));
    assert_eq!(closed(&server, "max_connections"), 1.0);
    drop(held);
    common::wait_for("the gauge back to 0", || {
        (metric(&server, "meterflow_mqtt_connections") == 0.0).then_some(())
    });

    // A packet above max_payload_bytes closes the connection, and nothing of it is stored.
    let mut big = session(port, "big", 60);
    big.write_all(&publish_packet(
        1,
        "meters/BIG/json",
        &json_payload(1, 3000),
    ))
    .unwrap();
    assert!(is_closed(&mut big));
    assert_eq!(closed(&server, "packet_too_large"), 1.0);

    // Partial packets: two slow senders of 1.9 KB publishes; the second passes the 3000-byte
    // budget and is closed, the first completes its publish and gets its PUBACK.
    let packet = publish_packet(7, "meters/SLOW/json", &json_payload(7, 1800));
    let mut first = session(port, "slow-1", 60);
    let mut second = session(port, "slow-2", 60);
    first.write_all(&packet[..1500]).unwrap();
    common::wait_for("the first partial packet buffered", || {
        (metric(&server, "meterflow_mqtt_read_buffer_bytes") >= 1500.0).then_some(())
    });
    second.write_all(&packet[..1600]).unwrap();
    assert!(is_closed(&mut second));
    assert_eq!(closed(&server, "read_buffer_budget"), 1.0);
    first.write_all(&packet[1500..]).unwrap();
    let mut puback = [0u8; 4];
    first.read_exact(&mut puback).unwrap();
    assert_eq!(puback, [0x40, 2, 0, 7]);
    drop(first);

    let (exit, data_dir, log, _keep) = server.stop();
    assert!(exit.success(), "{log}");
    let meters: Vec<String> = read_readings(&data_dir)
        .into_iter()
        .map(|r| r.meter_id)
        .collect();
    assert_eq!(meters, vec!["SLOW"]);
}

#[test]
fn at_the_wal_budget_nothing_is_acknowledged_that_is_not_stored() {
    // A WAL of 16 KiB whose segments are never confirmed (files stay open): it fills up.
    let (_dir, config) = common::config_file(
        "[wal]\nsegment_bytes = 8192\nmax_bytes = 16384\n[parquet]\nfile_max_age_s = 3600\n",
    );
    let server = Server::start_with(&["--config", &config]);
    // MQTT 3.1.1: PUBACKs until the budget, then the connection is closed unanswered.
    let mut s = session(server.mqtt_port, "filler", 60);
    let mut acked = Vec::new();
    for pkid in 1..=200u16 {
        let packet = publish_packet(pkid, "meters/FULL/json", &json_payload(pkid as usize, 400));
        if s.write_all(&packet).is_err() {
            break;
        }
        let mut ack = [0u8; 4];
        match s.read_exact(&mut ack) {
            Ok(()) => {
                assert_eq!(ack, [0x40, 2, (pkid >> 8) as u8, pkid as u8]);
                acked.push(pkid as usize);
            }
            Err(_) => break,
        }
    }
    assert!(
        !acked.is_empty() && acked.len() < 200,
        "{} acknowledged",
        acked.len()
    );
    common::wait_for("wal_full counted", || {
        (closed(&server, "wal_full") == 1.0).then_some(())
    });
    assert!(metric(&server, "meterflow_wal_overflow_total") >= 1.0);

    // MQTT 5 (mosquitto_pub), a report as large as the one refused: PUBACK 0x97, quota
    // exceeded.
    let report = String::from_utf8(json_payload(9999, 400)).unwrap();
    let out = std::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &server.mqtt_v5_port.to_string()])
        .args([
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            "meters/FULL5/json",
            "-m",
            &report,
        ])
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("Quota exceeded"), "{said}");

    let (exit, data_dir, log, _keep) = server.stop();
    assert!(exit.success(), "{log}");
    // Exactly what was acknowledged is stored, and nothing else.
    let mut values: Vec<usize> = read_readings(&data_dir)
        .into_iter()
        .map(|r| {
            assert_eq!(r.meter_id, "FULL");
            r.value as usize
        })
        .collect();
    values.sort_unstable();
    assert_eq!(values, acked);
}
