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

    // Connections: four are logged in and held; the fifth's CONNECT is refused (CONNACK 3,
    // server unavailable) and it is closed; the gauge is exact. (max_connections counts
    // logged-in connections: a socket that has not sent CONNECT is pending, and counted in
    // the pending budget, which silent_sockets_... and the_pending_budget_... test.)
    let held: Vec<TcpStream> = (0..4)
        .map(|i| session(port, &format!("held-{i}"), 60))
        .collect();
    assert_eq!(server.metric("meterflow_mqtt_connections"), 4.0);
    let mut fifth = TcpStream::connect(("127.0.0.1", port)).unwrap();
    fifth.write_all(&connect_packet("fifth", 60)).unwrap();
    let mut connack = [0u8; 4];
    fifth.read_exact(&mut connack).unwrap();
    assert_eq!(connack, [0x20, 2, 0, 3]);
    assert!(is_closed(&mut fifth));
    assert_eq!(server.metric("meterflow_mqtt_connections"), 4.0);
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

/// An MQTT 3.1.1 CONNECT with a username and password.
fn login_packet(client_id: &str, user: &str, password: &str) -> Vec<u8> {
    let mut body = vec![0, 4];
    body.extend_from_slice(b"MQTT");
    body.extend_from_slice(&[4, 0xC2]);
    body.extend_from_slice(&60u16.to_be_bytes());
    for field in [client_id, user, password] {
        body.extend_from_slice(&(field.len() as u16).to_be_bytes());
        body.extend_from_slice(field.as_bytes());
    }
    let mut p = vec![0x10];
    remaining_length(body.len(), &mut p);
    p.extend_from_slice(&body);
    p
}

/// A TCP connection to the MQTT port from `from` (loopback takes every 127/8 address), which
/// sends nothing.
fn connect_from(from: &str, port: u16) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: std::net::SocketAddr = format!("{from}:0").parse().unwrap();
    socket.bind(&local.into()).unwrap();
    let server: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    socket.connect(&server.into()).unwrap();
    socket.into()
}

/// Logs in from `from` as `user`: the CONNACK's return code (None: closed without one).
fn login_from(from: &str, port: u16, user: &str, password: &str) -> (TcpStream, Option<u8>) {
    let mut s = connect_from(from, port);
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let _ = s.write_all(&login_packet(&format!("{user}-{from}"), user, password));
    let mut connack = [0u8; 4];
    match s.read_exact(&mut connack) {
        Ok(()) => {
            assert_eq!(connack[..3], [0x20, 2, 0], "a CONNACK");
            (s, Some(connack[3]))
        }
        Err(_) => (s, None),
    }
}

/// Stops `server` (it must exit cleanly) and gives the readings it stored, (meter, value),
/// by meter.
fn stored_after_stop(server: Server) -> Vec<(String, f64)> {
    let (exit, data_dir, log, _keep) = server.stop();
    assert!(exit.success(), "{log}");
    let mut stored: Vec<(String, f64)> = read_readings(&data_dir)
        .into_iter()
        .map(|r| (r.meter_id, r.value))
        .collect();
    stored.sort_by(|a, b| a.0.cmp(&b.0));
    stored
}

const SECRET: &str = "e1-secret-0123456789";

/// A data folder whose credential store holds E1 and E2 (the loopback listener then needs a
/// login: anonymous devices are served only while the store is empty).
fn data_with_credentials() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("fleet.csv");
    std::fs::write(&csv, format!("meter_id,secret\nE1,{SECRET}\nE2,{SECRET}\n")).unwrap();
    crate::harness::credentials(tmp.path(), &["import", csv.to_str().unwrap()]);
    tmp
}

/// Connections the server took or turned away at accept, logged in or not (the sum is the
/// same whichever budget they count in).
fn accepted(server: &Server) -> f64 {
    server.metric("meterflow_mqtt_connections")
        + server.metric("meterflow_mqtt_pending_connections")
        + closed(server, "max_connections")
        + closed(server, "max_pending")
        + closed(server, "pending_per_address")
}

#[test]
fn silent_sockets_from_one_address_do_not_lock_out_a_login() {
    // The attack of issue 20: sockets that never send CONNECT, from one address, more of them
    // than max_connections. They may be held (until connect_timeout_ms, a minute here), but a
    // correct login from another address gets in while they are.
    let (_dir, config) =
        crate::harness::config_file("[mqtt]\nmax_connections = 30\nconnect_timeout_ms = 60000\n");
    let server = Server::start_in(data_with_credentials(), &["--config", &config]);
    let port = server.mqtt_port;
    crate::harness::wait_for("the readiness probes gone", || {
        (accepted(&server) == 0.0).then_some(())
    });
    let silent: Vec<TcpStream> = (0..40).map(|_| connect_from("127.0.0.2", port)).collect();
    crate::harness::wait_for("the 40 silent sockets taken", || {
        (accepted(&server) == 40.0).then_some(())
    });

    let (mut device, code) = login_from("127.0.0.1", port, "E1", SECRET);
    assert_eq!(code, Some(0), "E1 logs in while 40 silent sockets are held");
    device
        .write_all(&publish_packet(1, "meters/E1/json", &json_payload(42, 0)))
        .unwrap();
    let mut puback = [0u8; 4];
    device.read_exact(&mut puback).unwrap();
    assert_eq!(puback, [0x40, 2, 0, 1]);
    // They are still held: pending, not logged in, and not in max_connections.
    assert_eq!(server.metric("meterflow_mqtt_pending_connections"), 40.0);
    assert_eq!(server.metric("meterflow_mqtt_connections"), 1.0);
    drop(device);
    drop(silent);

    let stored = stored_after_stop(server);
    assert_eq!(stored, vec![("E1".to_string(), 42.0)]);
}

#[test]
fn the_pending_budget_and_the_per_address_cap_close_and_count_what_passes_them() {
    // 48 connections may be pending (not logged in yet), 32 of them from one address; the
    // deadline is a minute, so nothing here ends by it.
    let (_dir, config) = crate::harness::config_file(
        "[mqtt]\nmax_pending_connections = 48\nmax_pending_per_address = 32\n\
         connect_timeout_ms = 60000\n",
    );
    let server = Server::start_in(data_with_credentials(), &["--config", &config]);
    let port = server.mqtt_port;
    let pending = || server.metric("meterflow_mqtt_pending_connections");
    let logged_in = || server.metric("meterflow_mqtt_connections");
    let exactly = |what: &str, want_pending: f64, want_logged_in: f64| {
        crate::harness::wait_for(what, || {
            (pending() == want_pending && logged_in() == want_logged_in).then_some(())
        });
    };
    let evicted = || closed(&server, "pending_evicted");
    exactly("the readiness probes gone", 0.0, 0.0);

    // One address: 32 held, the 8 after them closed at accept (in the order they came), and
    // so is a login from it.
    let mut from_2: Vec<TcpStream> = (0..40).map(|_| connect_from("127.0.0.2", port)).collect();
    for s in &mut from_2[32..] {
        assert!(is_closed(s), "past the per-address cap");
    }
    from_2.truncate(32);
    let (_, code) = login_from("127.0.0.2", port, "E2", SECRET);
    assert_eq!(code, None, "closed at accept, before its CONNECT is read");
    crate::harness::wait_for("pending_per_address counted", || {
        (closed(&server, "pending_per_address") == 9.0).then_some(())
    });
    exactly("32 pending from 127.0.0.2", 32.0, 0.0);

    // A second address fills the budget with 16, then takes a place of the first's for each
    // newcomer, the oldest first, while the first holds at least two more; at 24 each, the
    // next from either is closed at accept.
    let mut from_3: Vec<TcpStream> = (0..16).map(|_| connect_from("127.0.0.3", port)).collect();
    exactly("48 pending", 48.0, 0.0);
    for n in 1..=8 {
        from_3.push(connect_from("127.0.0.3", port));
        crate::harness::wait_for("a place taken for the newcomer", || {
            (evicted() == f64::from(n)).then_some(())
        });
    }
    for mut s in from_2.drain(..8) {
        assert!(is_closed(&mut s), "127.0.0.2's oldest 8 closed");
    }
    assert!(from_2.iter().chain(&from_3).all(is_open), "only those");
    for from in ["127.0.0.3", "127.0.0.2"] {
        let mut s = connect_from(from, port);
        assert!(is_closed(&mut s), "each holds its share: closed at accept");
    }
    crate::harness::wait_for("max_pending counted", || {
        (closed(&server, "max_pending") == 2.0).then_some(())
    });
    exactly("24 and 24 pending", 48.0, 0.0);
    assert_eq!(evicted(), 8.0);

    // A login from a third address gets in, for the oldest place of the first (both hold
    // 24; the first's oldest is older). Logged in, it leaves the pending budget for
    // max_connections.
    let (mut e1, code) = login_from("127.0.0.1", port, "E1", SECRET);
    assert_eq!(code, Some(0));
    assert!(is_closed(&mut from_2.remove(0)));
    assert_eq!(evicted(), 9.0);
    exactly("E1 logged in", 47.0, 1.0);

    // That left a place, and 127.0.0.2 below its cap: its login takes the place (nothing
    // evicted) and logs in. Sessions are not capped per address.
    let (mut e2, code) = login_from("127.0.0.2", port, "E2", SECRET);
    assert_eq!(code, Some(0));
    exactly("E2 logged in from 127.0.0.2", 47.0, 2.0);
    assert_eq!(evicted(), 9.0);
    assert!(from_2.iter().chain(&from_3).all(is_open));

    // Both sessions publish; then everything goes, and both gauges come back to 0.
    for (s, meter, value) in [(&mut e1, "E1", 1), (&mut e2, "E2", 2)] {
        s.write_all(&publish_packet(
            1,
            &format!("meters/{meter}/json"),
            &json_payload(value, 0),
        ))
        .unwrap();
        let mut puback = [0u8; 4];
        s.read_exact(&mut puback).unwrap();
        assert_eq!(puback, [0x40, 2, 0, 1]);
    }
    drop((e1, e2, from_2, from_3));
    exactly("everything closed", 0.0, 0.0);
    assert_eq!(closed(&server, "connect_timeout"), 0.0);
    assert_eq!(closed(&server, "max_connections"), 0.0);

    let stored = stored_after_stop(server);
    assert_eq!(stored, vec![("E1".into(), 1.0), ("E2".into(), 2.0)]);
}

/// Whether `s` is still open, without waiting: nothing to read and no end (the server closes
/// a silent socket only at accept, by eviction, or at its deadline, a minute in these tests).
fn is_open(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 1];
    let open = matches!(
        (&*s).read(&mut buf),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
    );
    s.set_nonblocking(false).unwrap();
    open
}

#[test]
fn a_full_pending_budget_makes_room_for_a_login_from_another_address() {
    // The attack of the review of issue 20: the whole pending budget held by silent sockets
    // from four addresses (127.0.0.2 to .5, each at its cap), reopened as fast as they end.
    // Scaled down: a budget of 32, 8 per address, and a deadline of a minute, so nothing
    // here ends by it.
    let (_dir, config) = crate::harness::config_file(
        "[mqtt]\nmax_pending_connections = 32\nmax_pending_per_address = 8\n\
         connect_timeout_ms = 60000\n",
    );
    let server = Server::start_in(data_with_credentials(), &["--config", &config]);
    let port = server.mqtt_port;
    let pending = || server.metric("meterflow_mqtt_pending_connections");
    let logged_in = || server.metric("meterflow_mqtt_connections");
    let exactly = |what: &str, want_pending: f64, want_logged_in: f64| {
        crate::harness::wait_for(what, || {
            (pending() == want_pending && logged_in() == want_logged_in).then_some(())
        });
    };
    let evicted = || closed(&server, "pending_evicted");
    let refused = || closed(&server, "max_pending") + closed(&server, "pending_per_address");
    exactly("the readiness probes gone", 0.0, 0.0);

    // Silent sockets from four addresses fill the budget, in this order (the server takes
    // them in the order they came: the first is the oldest).
    let mut silent: Vec<(&str, TcpStream)> = Vec::new();
    for from in ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"] {
        for _ in 0..8 {
            silent.push((from, connect_from(from, port)));
        }
    }
    exactly("the budget full of silent sockets", 32.0, 0.0);

    // A correct login from 127.0.0.1 gets in: the oldest pending connection of an address
    // that holds the most (all hold 8; 127.0.0.2's first is the oldest) is closed for it.
    let (mut e1, code) = login_from("127.0.0.1", port, "E1", SECRET);
    assert_eq!(code, Some(0), "E1 logs in while the budget is full");
    let (from, mut oldest) = silent.remove(0);
    assert_eq!(from, "127.0.0.2");
    assert!(is_closed(&mut oldest), "the oldest silent socket is closed");
    assert_eq!(evicted(), 1.0);
    assert!(silent.iter().all(|(_, s)| is_open(s)), "only the oldest");
    exactly("31 silent sockets pending, E1 logged in", 31.0, 1.0);

    // The attacker reopens at once: the budget is full again. A meter from 127.0.0.1 that is
    // slow to log in (its CONNECT not sent yet) takes the next place, and 127.0.0.2's oldest
    // is closed for it.
    silent.push(("127.0.0.2", connect_from("127.0.0.2", port)));
    exactly("the budget full again", 32.0, 1.0);
    let mut slow = connect_from("127.0.0.1", port);
    let (from, mut oldest) = silent.remove(0);
    assert_eq!(from, "127.0.0.2");
    assert!(is_closed(&mut oldest));
    assert_eq!(evicted(), 2.0);
    exactly("the slow meter pending", 32.0, 1.0);

    // The flood goes on while the slow meter takes its time: six rounds of a socket from
    // each of the four addresses and from four fresh ones, each taken by the server before
    // the next comes. A connection is closed for a newcomer only when its address holds at
    // least two more than the newcomer's: the attacker's sockets make room for each other
    // until every address holds its share, and the slow meter's one is never taken.
    let mut flood = Vec::new();
    for _ in 0..6 {
        for from in [
            "127.0.0.2",
            "127.0.0.3",
            "127.0.0.4",
            "127.0.0.5",
            "127.0.0.6",
            "127.0.0.7",
            "127.0.0.8",
            "127.0.0.9",
        ] {
            let before = evicted() + refused();
            flood.push((from, connect_from(from, port)));
            crate::harness::wait_for("the newcomer taken or refused", || {
                (evicted() + refused() == before + 1.0).then_some(())
            });
        }
    }
    silent.extend(flood);
    // 15 taken (each for the oldest socket of an address holding the most), 33 refused at
    // accept (their own address held as many, or nearly, as the fullest).
    assert_eq!(evicted(), 17.0);
    assert_eq!(refused(), 33.0);
    // The sockets the server closed are exactly those it counted: what is still open on
    // this side is what the gauge says is pending (the slow meter's included).
    crate::harness::wait_for("the closed sockets closed", || {
        (silent.iter().filter(|(_, s)| !is_open(s)).count() == 15 + 33).then_some(())
    });
    silent.retain(|(_, s)| is_open(s));
    assert!(is_open(&slow));
    assert_eq!(silent.len() + 1, 32);
    exactly("the budget full, its gauge exact", 32.0, 1.0);
    // Every attacker address holds its share of what the two meters leave: 4 (one, 3).
    let mut per_address = std::collections::BTreeMap::new();
    for (from, _) in &silent {
        *per_address.entry(*from).or_insert(0) += 1;
    }
    assert!(
        per_address.values().all(|&n| n == 3 || n == 4),
        "{per_address:?}"
    );
    assert_eq!(per_address.len(), 8, "{per_address:?}");

    // The slow meter logs in; both meters publish.
    slow.write_all(&login_packet("slow-E2", "E2", SECRET))
        .unwrap();
    let mut connack = [0u8; 4];
    slow.read_exact(&mut connack).unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0], "the slow meter logs in");
    exactly("E2 logged in", 31.0, 2.0);
    for (s, meter, value) in [(&mut e1, "E1", 1), (&mut slow, "E2", 2)] {
        s.write_all(&publish_packet(
            1,
            &format!("meters/{meter}/json"),
            &json_payload(value, 0),
        ))
        .unwrap();
        let mut puback = [0u8; 4];
        s.read_exact(&mut puback).unwrap();
        assert_eq!(puback, [0x40, 2, 0, 1]);
    }
    drop((e1, slow, silent));
    exactly("everything closed", 0.0, 0.0);
    assert_eq!(closed(&server, "connect_timeout"), 0.0);

    let stored = stored_after_stop(server);
    assert_eq!(stored, vec![("E1".into(), 1.0), ("E2".into(), 2.0)]);
}

/// A TCP relay that delays every byte by `one_way` in each direction, as a link with long
/// round trips does (NB-IoT in extended coverage: 2 to 10 s): `127.0.0.1:PORT` in front of
/// `upstream`. It connects upstream as soon as a client connects, so the server's clock
/// starts when the client's does.
struct SlowLink {
    port: u16,
}

impl SlowLink {
    fn start(upstream: u16, one_way: Duration) -> SlowLink {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    Self::delay(from, to, one_way);
                }
            }
        });
        SlowLink { port }
    }

    /// Carries `from`'s bytes to `to`, each chunk `one_way` after it was read.
    fn delay(mut from: TcpStream, mut to: TcpStream, one_way: Duration) {
        let (tx, rx) = std::sync::mpsc::channel::<(std::time::Instant, Vec<u8>)>();
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            while let Ok(n @ 1..) = from.read(&mut buf) {
                if tx
                    .send((std::time::Instant::now() + one_way, buf[..n].to_vec()))
                    .is_err()
                {
                    return;
                }
            }
        });
        std::thread::spawn(move || {
            for (due, chunk) in rx {
                std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
                if to.write_all(&chunk).is_err() {
                    return;
                }
            }
            // The other side ended: so does this one's writing.
            let _ = to.shutdown(std::net::Shutdown::Write);
        });
    }
}

/// A CA (`$1/ca.pem`) and a server certificate for IP 127.0.0.1 signed by it
/// (`$1/server.crt`, `$1/server.key`), made with openssl.
const SERVER_CERTIFICATE: &str = r#"
set -e
d=$1
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -keyout "$d/ca.key" -out "$d/ca.pem" -subj "/CN=meterflow test CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$d/server.key" \
  -out "$d/server.csr" -subj "/CN=127.0.0.1" 2>/dev/null
printf 'basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\n' >"$d/server.ext"
openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
  -out "$d/server.crt" -days 30 -extfile "$d/server.ext" 2>/dev/null
"#;

/// A meter on TLS 1.2 (Python's ssl): connects to 127.0.0.1:ARGV[1] trusting the CA at
/// ARGV[2], sends the bytes in ARGV[3] (hex: a CONNECT and a PUBLISH) after the handshake,
/// and prints the version and the two 4-byte answers in hex.
const TLS_1_2_METER: &str = r#"
import socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.maximum_version = ssl.TLSVersion.TLSv1_2
ctx.load_verify_locations(sys.argv[2])
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=60) as raw:
    with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        version = s.version()
        s.sendall(bytes.fromhex(sys.argv[3]))
        got = b""
        while len(got) < 8:
            chunk = s.recv(8 - len(got))
            if not chunk:
                break
            got += chunk
        print(version, got[:4].hex(), got[4:].hex())
"#;

#[test]
fn a_meter_with_long_round_trips_logs_in_over_tls_1_2_with_the_default_deadline() {
    // Review of issue 20, M1: TLS 1.2 and the CONNECT take two and a half round trips after
    // the accept (ClientHello in, the server's flight out, the client's Finished in, the
    // server's out, the CONNECT in). Over a link of 1.5 s each way (a 3 s round trip, NB-IoT
    // in extended coverage), the CONNECT arrives 7.5 s after the accept: past a 5 s default
    // (the meter would never log in), within the 10 s one. No connect_timeout_ms is set.
    let pki = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("bash")
        .args(["-c", SERVER_CERTIFICATE, "make-certificate"])
        .arg(pki.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tls_port = crate::harness::free_port();
    let (_dir, config) = crate::harness::config_file(&format!(
        "[mqtt]\ntls_listen = \"127.0.0.1:{tls_port}\"\ntls_cert = \"{0}/server.crt\"\n\
         tls_key = \"{0}/server.key\"\n",
        pki.path().display()
    ));
    let server = Server::start_in(data_with_credentials(), &["--config", &config]);
    let link = SlowLink::start(tls_port, Duration::from_millis(1500));
    // Python's ssl (OpenSSL) as the meter, held to TLS 1.2: it finishes the handshake before
    // it sends the CONNECT (mosquitto_pub would take TLS 1.3, a round trip less). It prints
    // the CONNACK and the PUBACK it got, in hex.
    let mut packets = login_packet("slow-E1", "E1", SECRET);
    packets.extend(publish_packet(1, "meters/E1/json", &json_payload(75, 0)));
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let out = std::process::Command::new("python3")
        .args(["-c", TLS_1_2_METER, &link.port.to_string()])
        .arg(pki.path().join("ca.pem"))
        .arg(hex(&packets))
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        said.trim(),
        "TLSv1.2 20020000 40020001",
        "the CONNACK (accepted) and the PUBACK"
    );
    assert_eq!(closed(&server, "connect_timeout"), 0.0);
    assert_eq!(server.metric("meterflow_mqtt_connects_total"), 1.0);

    let stored = stored_after_stop(server);
    assert_eq!(stored, vec![("E1".to_string(), 75.0)]);
}

/// Issue 20 review round 2, finding 5: a budget full of silent sockets from as many
/// addresses, one each (a flood from the /64s of one IPv6 /52, here 127.0.0.2 to .9), kept
/// every newcomer out until the sockets' deadline: no address held two more than the
/// newcomer's. Now the oldest makes room once it has been pending for half of
/// `mqtt.connect_timeout_ms`.
#[test]
fn a_budget_full_of_lone_sockets_from_many_addresses_lets_a_login_in_after_half_the_deadline() {
    let (_dir, config) = crate::harness::config_file(
        "[mqtt]\nmax_pending_connections = 8\nmax_pending_per_address = 8\n\
         connect_timeout_ms = 10000\n",
    );
    let server = Server::start_in(data_with_credentials(), &["--config", &config]);
    let port = server.mqtt_port;
    crate::harness::wait_for("the readiness probes gone", || {
        (accepted(&server) == 0.0).then_some(())
    });
    let mut flood: Vec<TcpStream> = (2..=9)
        .map(|i| connect_from(&format!("127.0.0.{i}"), port))
        .collect();
    crate::harness::wait_for("the budget full", || {
        (server.metric("meterflow_mqtt_pending_connections") == 8.0).then_some(())
    });
    // Young sockets: a login from a tenth address is closed at accept.
    let (_refused, code) = login_from("127.0.0.10", port, "E1", SECRET);
    assert_eq!(code, None);
    crate::harness::wait_for("max_pending counted", || {
        (closed(&server, "max_pending") == 1.0).then_some(())
    });
    assert!(flood.iter().all(is_open));
    // Half the deadline on, the oldest socket makes room for it, and it logs in.
    std::thread::sleep(Duration::from_millis(5_500));
    let (_e1, code) = login_from("127.0.0.10", port, "E1", SECRET);
    assert_eq!(code, Some(0), "E1 logs in past a flood of lone sockets");
    assert!(is_closed(&mut flood[0]), "the oldest socket closed for it");
    assert_eq!(closed(&server, "pending_evicted"), 1.0);
    assert!(flood[1..].iter().all(is_open), "only the oldest");
    assert_eq!(server.metric("meterflow_mqtt_connections"), 1.0);
    assert_eq!(server.metric("meterflow_mqtt_pending_connections"), 7.0);
}
