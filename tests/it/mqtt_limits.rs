//! The MQTT edge's bounds, each hit for real over sockets: connections, the CONNECT timeout
//! (slowloris), the keep-alive, packet size, the read-buffer budget, and the WAL at its disk
//! budget (nothing that is not stored is acknowledged). Each is counted in a metric, and the
//! connections gauge is exact.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::harness::{read_readings, Server};

fn closed(server: &Server, reason: &str) -> f64 {
    server.metric(&format!(
        "meterflow_mqtt_closed_total{{reason=\"{reason}\"}}"
    ))
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
    publish_qos(1, false, pkid, topic, payload)
}

/// An MQTT 3.1.1 PUBLISH of QoS 1 or 2, with the DUP flag or not.
fn publish_qos(qos: u8, dup: bool, pkid: u16, topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(topic.as_bytes());
    body.extend_from_slice(&pkid.to_be_bytes());
    body.extend_from_slice(payload);
    let mut p = vec![0x30 | (qos << 1) | (u8::from(dup) << 3)];
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

/// Whether the server closes `s`: reads until EOF or a reset (true), or until a minute has
/// passed without either (false; a guard against a hang, not a timing check).
fn is_closed(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
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
    let (_dir, config) = crate::harness::config_file(
        "[mqtt]\nmax_connections = 4\nconnect_timeout_ms = 700\nmax_payload_bytes = 2048\n\
         max_read_buffer_bytes = 3000\nmax_inflight_bytes = 65536\n",
    );
    let server = Server::start_with(&["--config", &config]);
    let port = server.mqtt_port;

    // Slowloris: a connection that never sends CONNECT is closed at the connect timeout.
    let mut silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert!(is_closed(&mut silent));
    crate::harness::wait_for("connect_timeout counted", || {
        (closed(&server, "connect_timeout") == 1.0).then_some(())
    });

    // Keep-alive 1 s, then silence: closed after 1.5 s of it.
    let mut quiet = session(port, "ka", 1);
    assert!(is_closed(&mut quiet));
    crate::harness::wait_for("keep_alive counted", || {
        (closed(&server, "keep_alive") == 1.0).then_some(())
    });

    // Connections: four are held, the fifth is closed at once; the gauge is exact.
    let held: Vec<TcpStream> = (0..4)
        .map(|i| session(port, &format!("held-{i}"), 60))
        .collect();
    assert_eq!(server.metric("meterflow_mqtt_connections"), 4.0);
    let mut fifth = TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert!(is_closed(&mut fifth));
    crate::harness::wait_for("max_connections counted", || {
        (closed(&server, "max_connections") == 1.0).then_some(())
    });
    drop(held);
    crate::harness::wait_for("the gauge back to 0", || {
        (server.metric("meterflow_mqtt_connections") == 0.0).then_some(())
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
    crate::harness::wait_for("packet_too_large counted", || {
        (closed(&server, "packet_too_large") == 1.0).then_some(())
    });

    // Partial packets: two slow senders of 1.9 KB publishes; the second passes the 3000-byte
    // budget and is closed, the first completes its publish and gets its PUBACK.
    let packet = publish_packet(7, "meters/SLOW/json", &json_payload(7, 1800));
    let mut first = session(port, "slow-1", 60);
    let mut second = session(port, "slow-2", 60);
    first.write_all(&packet[..1500]).unwrap();
    crate::harness::wait_for("the first partial packet buffered", || {
        (server.metric("meterflow_mqtt_read_buffer_bytes") >= 1500.0).then_some(())
    });
    second.write_all(&packet[..1600]).unwrap();
    assert!(is_closed(&mut second));
    crate::harness::wait_for("read_buffer_budget counted", || {
        (closed(&server, "read_buffer_budget") == 1.0).then_some(())
    });
    first.write_all(&packet[1500..]).unwrap();
    let mut puback = [0u8; 4];
    first.read_exact(&mut puback).unwrap();
    assert_eq!(puback, [0x40, 2, 0, 7]);
    drop(first);

    // QoS 2: sent three times (twice with DUP) around its PUBREC, stored once; PUBREL
    // releases the id.
    let mut q2 = session(port, "qos2", 60);
    let report = json_payload(2, 0);
    q2.write_all(&publish_qos(2, false, 9, "meters/QOS2/json", &report))
        .unwrap();
    q2.write_all(&publish_qos(2, true, 9, "meters/QOS2/json", &report))
        .unwrap();
    let mut pubrec = [0u8; 4];
    q2.read_exact(&mut pubrec).unwrap();
    assert_eq!(pubrec, [0x50, 2, 0, 9]);
    q2.write_all(&publish_qos(2, true, 9, "meters/QOS2/json", &report))
        .unwrap();
    q2.write_all(&[0x62, 2, 0, 9]).unwrap();
    // Each copy is answered with a PUBREC (or not, if it came before the first was durable),
    // then the PUBREL with its PUBCOMP.
    loop {
        let mut answer = [0u8; 4];
        q2.read_exact(&mut answer).unwrap();
        match answer {
            [0x50, 2, 0, 9] => continue,
            [0x70, 2, 0, 9] => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    drop(q2);

    let (exit, data_dir, log, _keep) = server.stop();
    assert!(exit.success(), "{log}");
    let mut meters: Vec<String> = read_readings(&data_dir)
        .into_iter()
        .map(|r| r.meter_id)
        .collect();
    meters.sort();
    assert_eq!(
        meters,
        vec!["QOS2", "SLOW"],
        "the QoS 2 report once, nothing of the others"
    );
}

#[test]
fn a_trickled_packet_is_closed_by_the_keep_alive_or_the_packet_timeout() {
    // Keep-alive 1 s, packet timeout 60 s: a client that sends a byte every 100 ms but never
    // a whole packet is closed by the keep-alive, which counts whole packets only.
    let (_dir, config) = crate::harness::config_file("[mqtt]\npacket_timeout_ms = 60000\n");
    let server = Server::start_with(&["--config", &config]);
    let slow = publish_packet(8, "meters/TRICKLE/json", &json_payload(8, 100));
    let trickle = |s: &mut TcpStream| {
        for byte in &slow[..slow.len() - 1] {
            if s.write_all(&[*byte]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let mut ka = session(server.mqtt_port, "ka-trickle", 1);
    trickle(&mut ka);
    assert!(is_closed(&mut ka));
    crate::harness::wait_for("keep_alive counted", || {
        (closed(&server, "keep_alive") == 1.0).then_some(())
    });
    assert_eq!(closed(&server, "packet_timeout"), 0.0);
    drop(server);

    // Keep-alive 60 s, packet timeout 1.5 s: the packet timeout closes it.
    let (_dir, config) = crate::harness::config_file("[mqtt]\npacket_timeout_ms = 1500\n");
    let server = Server::start_with(&["--config", &config]);
    let mut pt = session(server.mqtt_port, "pt-trickle", 60);
    trickle(&mut pt);
    assert!(is_closed(&mut pt));
    crate::harness::wait_for("packet_timeout counted", || {
        (closed(&server, "packet_timeout") == 1.0).then_some(())
    });
    assert_eq!(closed(&server, "keep_alive"), 0.0);
    let (exit, data_dir, log, _keep) = server.stop();
    assert!(exit.success(), "{log}");
    assert!(read_readings(&data_dir).is_empty());
}

#[test]
fn at_the_wal_budget_nothing_is_acknowledged_that_is_not_stored() {
    // A WAL of 16 KiB whose segments are never confirmed (files stay open): it fills up.
    let (_dir, config) = crate::harness::config_file(
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
    crate::harness::wait_for("wal_full counted", || {
        (closed(&server, "wal_full") == 1.0).then_some(())
    });
    assert!(server.metric("meterflow_wal_overflow_total") >= 1.0);

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

#[test]
fn sigterm_answers_what_was_read_and_stores_every_acknowledged_report() {
    let server = Server::start();
    let mut s = session(server.mqtt_port, "drain", 60);
    // 200 publishes in one write, then SIGTERM while they are being taken.
    let mut burst = Vec::new();
    for pkid in 1..=200u16 {
        burst.extend(publish_packet(
            pkid,
            "meters/DRAIN/json",
            &json_payload(pkid as usize, 0),
        ));
    }
    s.write_all(&burst).unwrap();
    // The server is taking them (the first is answered) when SIGTERM comes.
    let mut ack = [0u8; 4];
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.read_exact(&mut ack).unwrap();
    assert_eq!(ack, [0x40, 2, 0, 1]);
    let reader = std::thread::spawn(move || {
        let mut acked = vec![1];
        let mut ack = [0u8; 4];
        while s.read_exact(&mut ack).is_ok() {
            assert_eq!(&ack[..2], &[0x40, 2]);
            acked.push(u16::from_be_bytes([ack[2], ack[3]]) as usize);
        }
        acked
    });
    let (exit, data_dir, log, _keep) = server.stop();
    assert!(exit.success(), "{log}");
    let acked = reader.join().unwrap();
    assert!(
        !acked.is_empty(),
        "what was read before the stop is answered"
    );
    assert_eq!(acked, (1..=acked.len()).collect::<Vec<_>>(), "in order");
    let mut stored: Vec<usize> = read_readings(&data_dir)
        .into_iter()
        .map(|r| r.value as usize)
        .collect();
    stored.sort_unstable();
    for a in &acked {
        assert!(
            stored.binary_search(a).is_ok(),
            "acknowledged report {a} not stored"
        );
    }
}
