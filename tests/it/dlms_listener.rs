//! The DLMS/COSEM wrapper listener of the real `meterflow serve --dlms-listen 127.0.0.1:PORT`,
//! driven over std::net sockets: the Tirol worked example's ciphered APDU (system title
//! 4B464D1010000023, the meter E1 of the credential store with its key) in a wrapper frame
//! gives exactly its 8 readings in Parquet, over TCP and over UDP; the same bytes again are a
//! replay (the pipeline's `replay` dead letter); a frame whose system title is no meter's is
//! refused at the edge (counted, not stored: no identity, no storage; the TCP connection
//! reset); a push in clear is refused,
//! or stored for `ip-127-0-0-1` with `dlms.allow_plaintext`; a frame over
//! `dlms.max_apdu_bytes` and a connection past `dlms.max_pending_per_address` are closed and
//! counted.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, UdpSocket};
use std::path::Path;
use std::time::Duration;

use crate::harness::{free_port, read_readings, wait_for, Server};
use crate::harness::{tirol, tirol_rows};
use meterflow_storage::dead_letter;

/// `apdu` in an IEC 62056-4-7 wrapper frame: version 1, source wPort 1, destination wPort
/// 102, the length.
fn wrapped(apdu: &[u8]) -> Vec<u8> {
    let mut frame = vec![0, 1, 0, 1, 0, 102];
    frame.extend_from_slice(&u16::try_from(apdu.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(apdu);
    frame
}

/// The ciphered push, and the same with the last byte of its system title changed (no
/// meter's: 4B464D10100000DC).
fn pushes() -> (Vec<u8>, Vec<u8>) {
    let push = wrapped(&tirol("apdu_ciphered.hex"));
    let mut unknown = push.clone();
    unknown[8 + 9] ^= 0xFF;
    (push, unknown)
}

const KEY: &str = "101112131415161718191A1B1C1D1E1F";

/// A data folder whose credential store holds E1, the Tirol meter.
fn fleet() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("fleet.csv");
    std::fs::write(
        &csv,
        format!("meter_id,secret,dlms_system_title,dlms_ek\nE1,e1-secret-0123456789,4B464D1010000023,{KEY}\n"),
    )
    .unwrap();
    crate::harness::credentials(tmp.path(), &["import", csv.to_str().unwrap()]);
    tmp
}

/// Sends `frames` on one TCP connection, closes the sending side and waits for meterflow's
/// orderly close: every frame is then in the WAL.
fn send_tcp(port: u16, frames: &[&[u8]]) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    for frame in frames {
        stream.write_all(frame).unwrap();
    }
    stream.shutdown(Shutdown::Write).unwrap();
    assert_eq!(stream.read(&mut [0u8; 16]).unwrap(), 0, "an orderly close");
}

fn refused(server: &Server, reason: &str) -> f64 {
    server.metric(&format!(
        "meterflow_dlms_refused_total{{reason=\"{reason}\"}}"
    ))
}

/// Every reading stored, sorted, with its source and format checked.
fn stored(data_dir: &Path) -> Vec<(String, String, f64, String, i64)> {
    let mut rows: Vec<_> = read_readings(data_dir)
        .into_iter()
        .map(|r| {
            assert_eq!((r.source.as_str(), r.format.as_str()), ("dlms", "dlms"));
            (r.meter_id, r.channel, r.value, r.unit, r.ts_ms)
        })
        .collect();
    rows.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    rows
}

/// (meter id, kind) of every dead letter, sorted; and the letters.
fn dead_letters(data_dir: &Path) -> (Vec<(String, String)>, Vec<dead_letter::DeadLetter>) {
    let letters = dead_letter::read_all(&data_dir.join("dead_letters")).unwrap();
    let mut kinds: Vec<(String, String)> = letters
        .iter()
        .map(|l| (l.meter_id.clone().unwrap_or_default(), l.kind.clone()))
        .collect();
    kinds.sort();
    (kinds, letters)
}

#[test]
fn a_ciphered_push_over_tcp_is_stored_exactly_and_a_replay_and_an_unknown_system_title_are_refused()
{
    let (push, unknown) = pushes();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let server = Server::start_in(fleet(), &["--dlms-listen", &listen]);
    send_tcp(port, &[&push]);
    wait_for("the push decoded", || {
        (server.metric("meterflow_decoded_total{format=\"dlms\"}") >= 1.0).then_some(())
    });
    // The same bytes again: E1 has an encryption key alone, so its push's counter is no
    // proof (anyone could claim it) and the listener does not remember it: the pipeline
    // refuses it as a replay (a dead letter of its meter). Then a frame whose system title
    // is no meter's: refused at the edge, not stored (no identity, no storage), reset.
    send_tcp(port, &[&push]);
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream.write_all(&unknown).unwrap();
    assert_eq!(
        stream.read(&mut [0u8; 16]).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    wait_for("both refusals counted", || {
        (server.metric("meterflow_dlms_rejected_total{reason=\"replay\"}") == 1.0
            && refused(&server, "unknown_system_title") == 1.0)
            .then_some(())
    });
    // Review 22, L3: an unknown title over the listener is counted where it is over MQTT.
    assert_eq!(
        server.metric("meterflow_dlms_rejected_total{reason=\"unknown_system_title\"}"),
        1.0
    );
    assert_eq!(
        server.metric("meterflow_dlms_frames_total{transport=\"tcp\"}"),
        3.0
    );
    let (status, data_dir, log, _keep) = server.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains(KEY), "the key is in the log");
    // Review 22, M4: E1 has an encryption key alone: warned at start-up, once.
    assert_eq!(
        log.matches("have no authentication key").count(),
        1,
        "{log}"
    );

    // Exactly the push's readings, once.
    assert_eq!(stored(&data_dir), tirol_rows("E1"));
    let (kinds, letters) = dead_letters(&data_dir);
    assert_eq!(kinds, [("E1".to_string(), "replay".to_string())]);
    let replay = letters.iter().find(|l| l.kind == "replay").unwrap();
    assert!(
        replay
            .reason
            .contains("invocation counter 2710426, not above the last accepted 2710426"),
        "{}",
        replay.reason
    );
    assert_eq!(
        replay.payload, push,
        "the dead letter keeps the whole frame"
    );
}

#[test]
fn a_ciphered_push_over_udp_is_stored_exactly_and_unknown_and_plaintext_ones_are_refused() {
    let (push, unknown) = pushes();
    let plain = wrapped(&tirol("apdu_plain.hex"));
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let server = Server::start_in(fleet(), &["--dlms-listen", &listen]);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.send_to(&push, ("127.0.0.1", port)).unwrap();
    wait_for("the push decoded", || {
        (server.metric("meterflow_decoded_total{format=\"dlms\"}") >= 1.0).then_some(())
    });
    // No meter's system title; and in clear, where the store has meters: both refused.
    socket.send_to(&unknown, ("127.0.0.1", port)).unwrap();
    socket.send_to(&plain, ("127.0.0.1", port)).unwrap();
    wait_for("the refusals counted", || {
        (refused(&server, "unknown_system_title") == 1.0 && refused(&server, "plaintext") == 1.0)
            .then_some(())
    });
    assert_eq!(
        server.metric("meterflow_dlms_frames_total{transport=\"udp\"}"),
        3.0
    );
    let (status, data_dir, log, _keep) = server.stop();
    assert!(status.success(), "{log}");
    assert_eq!(stored(&data_dir), tirol_rows("E1"));
    let (kinds, _) = dead_letters(&data_dir);
    assert!(
        kinds.is_empty(),
        "refused without an identity: not stored, {kinds:?}"
    );
}

#[test]
fn limits_close_and_count_and_plaintext_is_taken_for_the_senders_address_when_allowed() {
    let (_dir, config) = crate::harness::config_file(
        "[dlms]\nmax_pending_connections = 1\nmax_pending_per_address = 1\nmax_apdu_bytes = 1024\nallow_plaintext = true\n",
    );
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let server = Server::start_in(fleet(), &["--config", &config, "--dlms-listen", &listen]);
    assert!(
        server.log_text().contains("dlms.allow_plaintext = true"),
        "warned at start-up"
    );
    let connect = || {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        stream
    };
    // A frame stating 1025 bytes: the connection is closed before they are read.
    let mut big = connect();
    big.write_all(&wrapped(&[0x0F; 1025])[..8]).unwrap();
    let read = big.read(&mut [0u8; 16]);
    // A reset, never the orderly close that means "stored" (review 22 round 4, H3).
    assert_eq!(
        read.map_err(|e| e.kind()).map(|_| ()),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    wait_for("the frame counted", || {
        (refused(&server, "frame_too_large") == 1.0).then_some(())
    });

    // The one pending place taken (a connection that has sent nothing); the next from the
    // same address is closed at accept, and counted.
    wait_for("the place given back", || {
        (server.metric("meterflow_dlms_pending_connections") == 0.0).then_some(())
    });
    let mut held = connect();
    wait_for("the place taken", || {
        (server.metric("meterflow_dlms_pending_connections") == 1.0).then_some(())
    });
    let mut second = connect();
    let read = second.read(&mut [0u8; 16]);
    // A reset, never the orderly close that means "stored" (review 22 round 4, H3).
    assert_eq!(
        read.map_err(|e| e.kind()).map(|_| ()),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    wait_for("the refusal counted", || {
        (refused(&server, "pending_per_address") == 1.0).then_some(())
    });

    // The held connection still works: a push in clear, stored for the sender's address.
    held.write_all(&wrapped(&tirol("apdu_plain.hex"))).unwrap();
    held.shutdown(Shutdown::Write).unwrap();
    assert_eq!(held.read(&mut [0u8; 16]).unwrap(), 0);
    // Its push taken, it was identified: out of the pending budget.
    assert_eq!(server.metric("meterflow_dlms_pending_connections"), 0.0);
    wait_for("the push decoded", || {
        (server.metric("meterflow_decoded_total{format=\"dlms\"}") >= 1.0).then_some(())
    });
    let (status, data_dir, log, _keep) = server.stop();
    assert!(status.success(), "{log}");
    assert_eq!(stored(&data_dir), tirol_rows("ip-127-0-0-1"));
    let (kinds, _) = dead_letters(&data_dir);
    assert!(kinds.is_empty(), "{kinds:?}");
}

/// Review 22, M4: a meter with an authentication key, over the listener: a push claiming a
/// tag it does not have (the Tirol push marked 0x31) is refused at the edge as `auth_failed`,
/// the genuine push (encrypted only, 0x21) as `unprotected`; each counted in both the
/// listener's and the pipeline's refusals, the connections reset, nothing stored. The
/// start-up warning about meters without an authentication key is not given (every keyed
/// meter has one).
#[test]
fn a_meter_with_an_authentication_key_gets_only_authenticated_pushes_over_the_listener() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("fleet.csv");
    std::fs::write(
        &csv,
        format!("meter_id,secret,dlms_system_title,dlms_ek,dlms_ak\nE1,e1-secret-0123456789,4B464D1010000023,{KEY},000102030405060708090A0B0C0D0E0F\n"),
    )
    .unwrap();
    crate::harness::credentials(tmp.path(), &["import", csv.to_str().unwrap()]);
    let (push, _) = pushes();
    // The security control byte: after the header, DB 08, the title and a 3-byte length.
    assert_eq!((push[8 + 10], push[8 + 13]), (0x82, 0x21));
    let mut forged = push.clone();
    forged[8 + 13] = 0x31;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let server = Server::start_in(tmp, &["--dlms-listen", &listen]);
    for frame in [&forged, &push] {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        stream.write_all(frame).unwrap();
        assert_eq!(
            stream.read(&mut [0u8; 16]).map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionReset)
        );
    }
    wait_for("both refusals counted", || {
        let rejected =
            |r: &str| server.metric(&format!("meterflow_dlms_rejected_total{{reason=\"{r}\"}}"));
        (refused(&server, "auth_failed") == 1.0
            && refused(&server, "unprotected") == 1.0
            && rejected("auth_failed") == 1.0
            && rejected("unprotected") == 1.0)
            .then_some(())
    });
    let (status, data_dir, log, _keep) = server.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains("have no authentication key"), "{log}");
    assert!(read_readings(&data_dir).is_empty(), "nothing stored");
    let (kinds, _) = dead_letters(&data_dir);
    assert!(
        kinds.is_empty(),
        "refused at the edge: no dead letter, {kinds:?}"
    );
}
