//! The listener's decisions without I/O, its connection budget, and the listener itself on
//! loopback sockets against a channel standing in for the WAL writer (which answers as the
//! test says).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use meterflow_proto::Source;
use meterflow_storage::Shutdown;

use super::frame::{self, Refused, Verdict};
use super::slots::Place;
use super::{bind, DlmsConfig, DlmsServer};
use crate::credentials::{Credential, CredentialStore, DlmsIdentity, Secret, SharedCredentials};
use crate::edge::slots::Slots;
use crate::edge::{Durability, Submission};

/// The Tirol worked example's ciphered APDU (general-glo-ciphering, system title
/// 4B464D1010000023; decoders/tests/fixtures/dlms, see SOURCES.md there).
fn tirol_apdu() -> Vec<u8> {
    let text = include_str!(
        "../../../../decoders/tests/fixtures/dlms/fneur_smart_meter_tirol/apdu_ciphered.hex"
    );
    let digits: String = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .flat_map(str::chars)
        .filter(char::is_ascii_hexdigit)
        .collect();
    (0..digits.len() / 2)
        .map(|i| u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// `apdu` in a wrapper frame (version 1, wPorts 1 and 102).
fn wrapped(apdu: &[u8]) -> Vec<u8> {
    let mut frame = vec![0, 1, 0, 1, 0, 102];
    frame.extend_from_slice(&u16::try_from(apdu.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(apdu);
    frame
}

/// A store with meter E1, the Tirol meter.
fn store() -> CredentialStore {
    let mut store = CredentialStore::default();
    store
        .add(
            "E1",
            Credential {
                secret: Secret::new("e1-secret-0123456789").unwrap(),
                publish_for: Vec::new(),
                dlms: DlmsIdentity::parse(
                    "4B464D1010000023",
                    "101112131415161718191A1B1C1D1E1F",
                    "",
                    "",
                )
                .unwrap(),
            },
        )
        .unwrap();
    store
}

const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

#[test]
fn a_push_is_for_the_meter_of_its_system_title_and_one_in_clear_only_under_the_rule() {
    let store = store();
    let push = wrapped(&tirol_apdu());
    // Encrypted only (0x21): its counter is not remembered at the listener (anyone could
    // claim it); the pipeline still refuses its replays.
    assert_eq!(
        frame::judge(&push, LOCAL, &store, false, "ip-"),
        Verdict::Take {
            meter_id: "E1".into(),
            counted: None,
        }
    );
    // One byte of the system title changed: no meter's.
    let mut unknown = push.clone();
    unknown[8 + 9] ^= 0xFF;
    match frame::judge(&unknown, LOCAL, &store, true, "ip-") {
        Verdict::Refuse { why, reason } => {
            assert_eq!(why, Refused::UnknownSystemTitle);
            assert!(reason.contains("4B464D10100000DC"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // In clear (a DataNotification), or no APDU that far: no identity.
    let plain = wrapped(&[0x0F, 0, 0, 0, 1, 0, 0x09, 0]);
    for frame in [plain, wrapped(&[0xDB, 8, 1])] {
        assert_eq!(
            frame::judge(&frame, "192.0.2.7".parse().unwrap(), &store, true, "ip-"),
            Verdict::Take {
                meter_id: "ip-192-0-2-7".into(),
                counted: None,
            }
        );
        assert!(matches!(
            frame::judge(&frame, LOCAL, &store, false, "ip-"),
            Verdict::Refuse {
                why: Refused::Plaintext,
                ..
            }
        ));
    }
    // Review: the meter's system title on a push in clear (security control 0x00) is no
    // proof: its meter has a key and its pushes must be encrypted.
    let mut forged = vec![0xDB, 8, 0x4B, 0x46, 0x4D, 0x10, 0x10, 0x00, 0x00, 0x23];
    let inner = [0x0F, 0, 0, 0, 1, 0, 0x09, 0];
    forged.push(u8::try_from(5 + inner.len()).unwrap());
    forged.extend_from_slice(&[0x00, 0xFF, 0xFF, 0xFF, 0xFF]);
    forged.extend_from_slice(&inner);
    match frame::judge(&wrapped(&forged), LOCAL, &store, true, "ip-") {
        Verdict::Refuse { why, reason } => {
            assert_eq!(why, Refused::Unprotected);
            assert!(reason.contains("0x20"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // A meter with a system title but no key: nothing tells its pushes from forgeries.
    let mut keyless = CredentialStore::default();
    keyless
        .add(
            "E9",
            Credential {
                secret: Secret::new("e9-secret-0123456789").unwrap(),
                publish_for: Vec::new(),
                dlms: DlmsIdentity::parse("4B464D1010000023", "", "", "").unwrap(),
            },
        )
        .unwrap();
    assert!(matches!(
        frame::judge(&push, LOCAL, &keyless, true, "ip-"),
        Verdict::Refuse {
            why: Refused::NoKey,
            ..
        }
    ));
    // The plaintext meter ids: IPv6 with `-`, a mapped IPv4 address as the IPv4 one.
    for (ip, want) in [
        ("2001:db8::7", "dlms-2001-db8--7"),
        ("::ffff:10.0.0.1", "dlms-10-0-0-1"),
        ("127.0.0.1", "dlms-127-0-0-1"),
    ] {
        assert_eq!(frame::plaintext_meter("dlms-", ip.parse().unwrap()), want);
    }
}

#[test]
fn a_frame_is_read_only_whole_and_within_the_limit() {
    let header = |bytes: &[u8]| *bytes.first_chunk::<8>().unwrap();
    assert_eq!(frame::apdu_len(&header(&wrapped(&[1; 300])), 300), Ok(300));
    assert_eq!(
        frame::apdu_len(&header(&wrapped(&[1; 301])), 300),
        Err(Refused::FrameTooLarge)
    );
    let mut version_2 = wrapped(&[1; 3]);
    version_2[1] = 2;
    assert_eq!(
        frame::apdu_len(&header(&version_2), 300),
        Err(Refused::BadFrame)
    );
    // A datagram is one whole frame.
    let frame = wrapped(&[1; 10]);
    assert_eq!(frame::datagram(&frame, 300), Ok(()));
    assert_eq!(frame::datagram(&frame, 9), Err(Refused::FrameTooLarge));
    for bad in [
        &frame[..frame.len() - 1],
        &[frame.clone(), vec![0]].concat()[..],
        &frame[..7],
        &version_2[..],
    ] {
        assert_eq!(frame::datagram(bad, 300), Err(Refused::BadFrame));
    }
}

#[test]
fn the_connection_budgets_count_pending_per_address_and_identified_in_all() {
    let slots = Arc::new(Slots::new(
        3,
        2,
        1,
        Duration::from_secs(3600),
        super::slots::METRICS,
    ));
    let a: IpAddr = "10.0.0.1".parse().unwrap();
    // The same /64.
    let (b1, b2): (IpAddr, IpAddr) = (
        "2001:db8::1".parse().unwrap(),
        "2001:db8::2".parse().unwrap(),
    );
    let mut first = Place::take(&slots, a).unwrap();
    let mut second = Place::take(&slots, a).unwrap();
    assert_eq!(
        Place::take(&slots, a).err(),
        Some(Refused::PendingPerAddress)
    );
    let _third = Place::take(&slots, b1).unwrap();
    // Full, and no address holds two more than b's, none pending for half the deadline.
    assert_eq!(Place::take(&slots, b2).err(), Some(Refused::MaxPending));
    assert_eq!(slots.open(), 3);
    // Identified: out of the pending budget (and its address's cap), into the other.
    first.identify().unwrap();
    assert_eq!(second.identify(), Err(Refused::MaxConnections));
    let _fourth = Place::take(&slots, a).unwrap();
    assert_eq!(slots.open(), 4);
    drop(first);
    assert_eq!(slots.open(), 3);
    second.identify().unwrap();
}

/// A listener on 127.0.0.1 (a port the system chooses) with meter E1, whose WAL writer is the
/// returned receiver.
fn listener(
    config: DlmsConfig,
    store: CredentialStore,
) -> (
    DlmsServer,
    SocketAddr,
    flume::Receiver<Submission>,
    Shutdown,
) {
    let bound = bind("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
    let addr = bound.local_addr();
    let (wal, submissions) = flume::bounded(16);
    let shutdown = Shutdown::new();
    let server = DlmsServer::start(
        bound,
        config,
        Arc::new(SharedCredentials::in_memory(store)),
        Arc::new(std::sync::Mutex::new(
            crate::dlms_replay::ReplayGuard::default(),
        )),
        wal,
        shutdown.signal(),
    );
    (server, addr, submissions, shutdown)
}

/// The listener of [`listener`] that takes one push again and again (its memory of stored
/// counters off): for the tests of framing and limits, which send the Tirol push many times.
fn forgetful(
    config: DlmsConfig,
    store: CredentialStore,
) -> (
    DlmsServer,
    SocketAddr,
    flume::Receiver<Submission>,
    Shutdown,
) {
    let (server, addr, submissions, shutdown) = listener(config, store);
    server
        .edge
        .remember_counters
        .store(false, std::sync::atomic::Ordering::Relaxed);
    (server, addr, submissions, shutdown)
}

/// A blocking client socket (on a thread of its own where it reads).
fn connect(addr: SocketAddr) -> std::net::TcpStream {
    let stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_frames_go_one_at_a_time_each_durable_before_the_next_is_read() {
    crate::runtime::metrics_handle();
    let (server, addr, submissions, shutdown) = forgetful(DlmsConfig::default(), store());
    let push = wrapped(&tirol_apdu());
    let mut unknown = push.clone();
    unknown[8 + 9] ^= 0xFF;
    // Three frames at once: the known meter's, an unknown system title's, the known again.
    let mut client = connect(addr);
    client
        .write_all(&[push.clone(), unknown.clone(), push.clone()].concat())
        .unwrap();
    let _ = &unknown;

    let first = submissions.recv_async().await.unwrap();
    assert_eq!(first.message.topic, "meters/E1/dlms");
    assert_eq!(first.message.source, Source::Dlms);
    assert_eq!(&first.message.payload[..], &push[..]);
    assert!(first.message.edge_note.is_none());
    // Not answered yet: the next frame is not read (the connection's task waits for the
    // answer before it reads again).
    nothing_for_a_while(&submissions).await;
    first.notify.unwrap().send(Durability::Durable(1)).unwrap();

    // The unknown system title: refused at the edge, not stored (a peer without an identity
    // gets no storage), and the connection reset: the third frame is never read.
    let read = tokio::task::spawn_blocking(move || client.read(&mut [0u8; 16]))
        .await
        .unwrap();
    assert_eq!(
        read.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    nothing_for_a_while(&submissions).await;

    // The WAL at its budget: the connection is reset (the meter sends again later), and
    // nothing more of it is read.
    let mut client = connect(addr);
    client.write_all(&push).unwrap();
    let third = submissions.recv_async().await.unwrap();
    client.write_all(&push).unwrap();
    nothing_for_a_while(&submissions).await;
    third.notify.unwrap().send(Durability::WalFull).unwrap();
    let read = tokio::task::spawn_blocking(move || client.read(&mut [0u8; 16]))
        .await
        .unwrap();
    assert_eq!(
        read.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    nothing_for_a_while(&submissions).await;

    // Review 22, T2: the case the README's script relies on, where nothing unread is left
    // for the kernel to reset over: one frame, the sending side closed, the WAL full. The
    // meter must see a reset, not the orderly close that means "stored".
    let mut client = connect(addr);
    client.write_all(&push).unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let fourth = submissions.recv_async().await.unwrap();
    let reset = tokio::task::spawn_blocking(move || client.read(&mut [0u8; 16]));
    fourth.notify.unwrap().send(Durability::WalFull).unwrap();
    assert_eq!(
        reset.await.unwrap().map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset)
    );

    // A meter that closes its side after a frame sees meterflow's orderly close once the
    // frame is durable.
    let mut client = connect(addr);
    client.write_all(&push).unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let frame = submissions.recv_async().await.unwrap();
    let closed = tokio::task::spawn_blocking(move || client.read(&mut [0u8; 16]));
    frame.notify.unwrap().send(Durability::Durable(4)).unwrap();
    assert_eq!(closed.await.unwrap().unwrap(), 0);

    // A frame written a byte at a time (its header over eight writes) is read whole.
    let mut client = connect(addr);
    client.set_nodelay(true).unwrap();
    let bytes = push.clone();
    let writer = tokio::task::spawn_blocking(move || {
        for byte in &bytes {
            client.write_all(std::slice::from_ref(byte)).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        client
    });
    let frame = submissions.recv_async().await.unwrap();
    assert_eq!(&frame.message.payload[..], &push[..]);
    frame.notify.unwrap().send(Durability::Durable(5)).unwrap();
    let mut client = writer.await.unwrap();

    // Review 22, L1: the shutdown inside a frame (its header read, its share of the byte
    // budget taken) resets the connection: the part read is not stored.
    let budget = server.edge.budget.available_permits();
    client.write_all(&push[..100]).unwrap();
    until("the frame begun", || {
        server.edge.budget.available_permits() < budget
    })
    .await;
    shutdown.begin(Duration::from_secs(5));
    let read = tokio::task::spawn_blocking(move || client.read(&mut [0u8; 16]))
        .await
        .unwrap();
    assert_eq!(
        read.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    assert_eq!(server.stopped().await.frames, 6);
    assert!(submissions.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_close_what_passes_them_and_the_shutdown_ends_every_connection() {
    crate::runtime::metrics_handle();
    let config = DlmsConfig {
        max_connections: 1,
        max_apdu_bytes: 400,
        ..DlmsConfig::default()
    };
    let (server, addr, submissions, shutdown) = forgetful(config, store());
    // A frame over max_apdu_bytes: the connection is reset, nothing submitted.
    let mut big = connect(addr);
    big.write_all(&wrapped(&[0x0F; 401])).unwrap();
    let read = tokio::task::spawn_blocking(move || big.read(&mut [0u8; 16]))
        .await
        .unwrap();
    assert_eq!(
        read.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    assert!(submissions.is_empty());
    // A stream that ends inside a frame: reset, counted `truncated`, nothing submitted.
    let truncated = metric("meterflow_dlms_refused_total{reason=\"truncated\"}");
    let mut cut = connect(addr);
    cut.write_all(&wrapped(&tirol_apdu())[..100]).unwrap();
    cut.shutdown(std::net::Shutdown::Write).unwrap();
    let read = tokio::task::spawn_blocking(move || cut.read(&mut [0u8; 16]))
        .await
        .unwrap();
    assert_eq!(
        read.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    until("the truncated frame counted", || {
        metric("meterflow_dlms_refused_total{reason=\"truncated\"}") == truncated + 1.0
    })
    .await;
    // A frame in clear is refused (the store is not empty): not stored, the connection
    // reset, its place given back.
    let mut clear = connect(addr);
    clear.write_all(&wrapped(&[0x0F, 0, 0, 0, 1, 0])).unwrap();
    let read = tokio::task::spawn_blocking(move || clear.read(&mut [0u8; 16]))
        .await
        .unwrap();
    assert_eq!(
        read.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    // The budget's one place: a meter's push, stored, and the connection kept open.
    let mut held = connect(addr);
    held.write_all(&wrapped(&tirol_apdu())).unwrap();
    let s = submissions.recv_async().await.unwrap();
    assert_eq!(s.message.topic, "meters/E1/dlms");
    s.notify.unwrap().send(Durability::Durable(1)).unwrap();
    // A second meter's push finds max_connections (1) taken: reset, not stored, counted
    // (review 22, T3: the count is what tells it from a read that merely ended).
    let capped = metric("meterflow_dlms_refused_total{reason=\"max_connections\"}");
    let mut refused = connect(addr);
    let read = tokio::task::spawn_blocking(move || {
        refused.write_all(&wrapped(&tirol_apdu())).unwrap();
        refused.read(&mut [0u8; 16])
    })
    .await
    .unwrap();
    assert_eq!(
        read.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    assert!(submissions.is_empty());
    until("the refusal counted", || {
        metric("meterflow_dlms_refused_total{reason=\"max_connections\"}") == capped + 1.0
    })
    .await;
    // The shutdown ends the one that is held with a reset (review 22, round 3, H3: a frame
    // could be on its way; an orderly close is only for a meter that ended its stream).
    shutdown.begin(Duration::from_secs(5));
    let read = tokio::task::spawn_blocking(move || held.read(&mut [0u8; 16]))
        .await
        .unwrap();
    assert_eq!(
        read.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    // The clear one, the held meter's, and the push refused for max_connections.
    assert_eq!(server.stopped().await.frames, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datagram_is_one_frame_handed_on_without_waiting() {
    crate::runtime::metrics_handle();
    let plaintext = metric("meterflow_dlms_refused_total{reason=\"plaintext\"}");
    let config = DlmsConfig {
        allow_plaintext: true,
        ..DlmsConfig::default()
    };
    let (server, addr, submissions, shutdown) = forgetful(config, store());
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let push = wrapped(&tirol_apdu());
    // Not a frame (a byte short), then the push, then one in clear.
    client.send_to(&push[..push.len() - 1], addr).unwrap();
    client.send_to(&push, addr).unwrap();
    client
        .send_to(&wrapped(&[0x0F, 0, 0, 0, 1, 0]), addr)
        .unwrap();
    let first = submissions.recv_async().await.unwrap();
    assert_eq!(first.message.topic, "meters/E1/dlms");
    assert_eq!(&first.message.payload[..], &push[..]);
    assert!(first.notify.is_none());
    // Review 22, L4: dlms.allow_plaintext is for TCP only (a UDP source can be forged, and
    // it would name the meter): the datagram in clear is refused, not stored.
    // Review 22 round 3, T2: waited for on this listener's own count of frames (the counter
    // of refusals is shared with other tests), then the refusal checked.
    until("the datagram in clear read", || {
        server
            .edge
            .frames
            .load(std::sync::atomic::Ordering::Relaxed)
            == 2
    })
    .await;
    until("the datagram in clear refused", || {
        metric("meterflow_dlms_refused_total{reason=\"plaintext\"}") > plaintext
    })
    .await;
    shutdown.begin(Duration::from_secs(5));
    assert_eq!(server.stopped().await.frames, 2);
    assert!(submissions.is_empty());
}

/// A metric as `/metrics` shows it now (0 if absent): `name{labels}`. The recorder is the
/// process's, shared by every test: what a test checks of a counter is its own increase of a
/// label only it counts.
fn metric(series: &str) -> f64 {
    crate::runtime::metrics_handle()
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Waits (60 s at most) until `f` holds.
async fn until(what: &str, f: impl Fn() -> bool) {
    for _ in 0..600 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within 60 s");
}

/// Nothing is submitted for a while (the wait must run out: a submission would end it).
async fn nothing_for_a_while(submissions: &flume::Receiver<Submission>) {
    let got = tokio::time::timeout(Duration::from_millis(300), submissions.recv_async()).await;
    assert!(
        got.is_err(),
        "submitted: {:?}",
        got.map(|s| s.map(|s| s.message.topic))
    );
}

/// Review 22, M1: the frames in flight hold `dlms.max_inflight_bytes`, from a TCP frame's
/// header (or a datagram) until the writer is done with them: a TCP frame that finds no room
/// waits, not read on; a datagram is dropped (`busy`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_in_flight_are_held_to_the_byte_budget() {
    crate::runtime::metrics_handle();
    let push = wrapped(&tirol_apdu());
    let config = DlmsConfig {
        max_apdu_bytes: 300,
        // One push (286 bytes) fits, two do not.
        max_inflight_bytes: 508,
        ..DlmsConfig::default()
    };
    let (server, addr, submissions, shutdown) = forgetful(config, store());
    let mut a = connect(addr);
    a.write_all(&push).unwrap();
    let mut first = submissions.recv_async().await.unwrap();
    assert_eq!(first.message.topic, "meters/E1/dlms");
    // A second connection's frame waits for the first's share.
    let mut b = connect(addr);
    b.write_all(&push).unwrap();
    nothing_for_a_while(&submissions).await;
    // A datagram does not wait: dropped and counted.
    let busy = metric("meterflow_dlms_refused_total{reason=\"busy\"}");
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.send_to(&push, addr).unwrap();
    until("the datagram counted busy", || {
        metric("meterflow_dlms_refused_total{reason=\"busy\"}") > busy
    })
    .await;
    // The writer done with the first frame: its share goes to the second.
    drop(first.budget.take());
    let second = submissions.recv_async().await.unwrap();
    assert_eq!(&second.message.payload[..], &push[..]);
    first.notify.unwrap().send(Durability::Durable(1)).unwrap();
    second.notify.unwrap().send(Durability::Durable(2)).unwrap();
    shutdown.begin(Duration::from_secs(5));
    assert_eq!(server.stopped().await.frames, 3);
    assert!(submissions.is_empty(), "the datagram is not submitted");
    drop((a, b));
}

/// Review 22, M2: a connection's first frame must be whole within `dlms.frame_timeout_s` of
/// the accept, a later one within it of its first byte; between frames only the idle timeout
/// counts. A connection cut inside a frame is reset, one that sent nothing closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_must_be_whole_within_the_frame_timeout_and_idle_connections_close() {
    crate::runtime::metrics_handle();
    let timed_out = || metric("meterflow_dlms_refused_total{reason=\"frame_timeout\"}");
    let idle = || metric("meterflow_dlms_idle_closed_total");
    let (before, idle_before) = (timed_out(), idle());
    let config = DlmsConfig {
        frame_timeout_s: 1,
        idle_timeout_s: 3,
        ..DlmsConfig::default()
    };
    let (server, addr, submissions, shutdown) = forgetful(config, store());
    let push = wrapped(&tirol_apdu());
    let read = |mut stream: std::net::TcpStream| {
        tokio::task::spawn_blocking(move || stream.read(&mut [0u8; 16]).map_err(|e| e.kind()))
    };
    // Nothing sent: reset (an orderly close only when the meter ended its stream), counted.
    let silent = read(connect(addr));
    // A header and part of the body, then nothing: reset, counted.
    let mut slow = connect(addr);
    slow.write_all(&push[..100]).unwrap();
    let slow = read(slow);
    assert_eq!(
        silent.await.unwrap(),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    assert_eq!(
        slow.await.unwrap(),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    until("both counted", || timed_out() == before + 2.0).await;

    // A whole first frame: from then on the idle timeout decides, not the frame timeout.
    let mut meter = connect(addr);
    meter.write_all(&push).unwrap();
    let s = submissions.recv_async().await.unwrap();
    s.notify.unwrap().send(Durability::Durable(1)).unwrap();
    // A later frame begun and not finished: reset once the frame timeout from its first
    // byte has passed (well before the idle timeout).
    meter.write_all(&push[..10]).unwrap();
    assert_eq!(
        read(meter).await.unwrap(),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    until("counted", || timed_out() == before + 3.0).await;
    // A frame, then nothing: the idle timeout ends it, with a reset (the meter did not end
    // its stream: a frame could be on its way).
    let mut quiet = connect(addr);
    quiet.write_all(&push).unwrap();
    let s = submissions.recv_async().await.unwrap();
    s.notify.unwrap().send(Durability::Durable(2)).unwrap();
    assert_eq!(
        read(quiet).await.unwrap(),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    until("the idle close counted", || idle() == idle_before + 1.0).await;
    assert_eq!(
        timed_out(),
        before + 3.0,
        "the idle one is no frame timeout"
    );
    shutdown.begin(Duration::from_secs(5));
    assert_eq!(server.stopped().await.frames, 2);
}

/// Review 22, T4 and round 3, H2: over real sockets, connections that have not identified
/// themselves are capped per address, and with the pending budget full the oldest of the
/// address holding the most is reset for a newcomer from another: silent connections cannot
/// keep a meter out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_capped_and_evicted_for_a_newcomer() {
    crate::runtime::metrics_handle();
    let refused = |r: &str| metric(&format!("meterflow_dlms_refused_total{{reason=\"{r}\"}}"));
    let (capped, evicted) = (refused("pending_per_address"), refused("pending_evicted"));
    let config = DlmsConfig {
        max_pending_connections: 2,
        max_pending_per_address: 2,
        ..DlmsConfig::default()
    };
    let (server, addr, submissions, shutdown) = forgetful(config, store());
    let silent: Vec<std::net::TcpStream> = (0..2).map(|_| connect(addr)).collect();
    until("two pending", || server.edge.slots.open() == 2).await;
    // A third from the same address: past its cap, closed at accept.
    let mut third = connect(addr);
    let read = tokio::task::spawn_blocking(move || third.read(&mut [0u8; 16]))
        .await
        .unwrap();
    // A reset, never the orderly close that means "stored" (review 22 round 4, H3).
    assert_eq!(
        read.map_err(|e| e.kind()).map(|_| ()),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    until("the cap counted", || {
        refused("pending_per_address") == capped + 1.0
    })
    .await;
    // A meter from another address: the oldest silent one is reset for it, and its push is
    // taken.
    let meter = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    meter
        .bind(&"127.0.0.2:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    meter.connect(&addr.into()).unwrap();
    let mut meter: std::net::TcpStream = meter.into();
    meter.write_all(&wrapped(&tirol_apdu())).unwrap();
    let s = submissions.recv_async().await.unwrap();
    assert_eq!(s.message.topic, "meters/E1/dlms");
    s.notify.unwrap().send(Durability::Durable(1)).unwrap();
    until("the eviction counted", || {
        refused("pending_evicted") == evicted + 1.0
    })
    .await;
    let mut oldest = silent.into_iter().next().unwrap();
    let read = tokio::task::spawn_blocking(move || oldest.read(&mut [0u8; 16]))
        .await
        .unwrap();
    assert_eq!(
        read.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    shutdown.begin(Duration::from_secs(5));
    assert_eq!(server.stopped().await.frames, 1);
    drop(meter);
}

/// Where the security control byte of a general-glo-ciphering APDU is.
fn security_control_at(apdu: &[u8]) -> usize {
    match apdu[10] {
        n if n < 0x80 => 11,
        n => 11 + usize::from(n & 0x7F),
    }
}

/// Review 22, M4 and L6 at the edge: a meter with an authentication key must send
/// authenticated pushes, judged on the header before anything is deciphered (a downgraded
/// push is `unprotected`, not a deciphering that fails on what follows); a forged tag is
/// `auth_failed`; DC is refused before any crypto; a plaintext id that is a provisioned
/// meter's is refused (L4).
#[test]
fn pushes_are_judged_on_their_claimed_protection_first() {
    let mut with_ak = CredentialStore::default();
    with_ak
        .add(
            "E1",
            Credential {
                secret: Secret::new("e1-secret-0123456789").unwrap(),
                publish_for: Vec::new(),
                dlms: DlmsIdentity::parse(
                    "4B464D1010000023",
                    "101112131415161718191A1B1C1D1E1F",
                    "000102030405060708090A0B0C0D0E0F",
                    "",
                )
                .unwrap(),
            },
        )
        .unwrap();
    let apdu = tirol_apdu();
    let sc = security_control_at(&apdu);
    assert_eq!(apdu[sc], 0x21, "the Tirol push is encrypted only");
    // Encrypted only, with bytes after it as a stripped push would have (its tag): refused on
    // its claim, with nothing of it deciphered.
    let mut downgraded = apdu.clone();
    downgraded.extend_from_slice(&[0xA5; 12]);
    let len = u16::from_be_bytes([downgraded[11], downgraded[12]]) + 12;
    assert_eq!(downgraded[10], 0x82);
    downgraded[11..13].copy_from_slice(&len.to_be_bytes());
    match frame::judge(&wrapped(&downgraded), LOCAL, &with_ak, false, "ip-") {
        Verdict::Refuse { why, reason } => {
            assert_eq!(why, Refused::Unprotected, "{reason}");
            assert!(
                reason.contains("0x10") && reason.contains("0x21"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Claiming a tag it does not have: the tag is checked, auth_failed.
    let mut forged = apdu.clone();
    forged[sc] = 0x31;
    assert!(matches!(
        frame::judge(&wrapped(&forged), LOCAL, &with_ak, false, "ip-"),
        Verdict::Refuse {
            why: Refused::AuthFailed,
            ..
        }
    ));
    // General-ded-ciphering: refused as such, whoever's the title.
    let mut ded = apdu.clone();
    ded[0] = 0xDC;
    assert!(matches!(
        frame::judge(&wrapped(&ded), LOCAL, &store(), false, "ip-"),
        Verdict::Refuse {
            why: Refused::DedCiphering,
            ..
        }
    ));
    // A push in clear whose plaintext id is a meter of the store: refused.
    let mut provisioned = store();
    provisioned
        .add(
            "ip-192-0-2-7",
            Credential {
                secret: Secret::new("ip-secret-0123456789").unwrap(),
                publish_for: Vec::new(),
                dlms: None,
            },
        )
        .unwrap();
    let plain = wrapped(&[0x0F, 0, 0, 0, 1, 0, 0x09, 0]);
    let peer: IpAddr = "192.0.2.7".parse().unwrap();
    assert!(matches!(
        frame::judge(&plain, peer, &provisioned, true, "ip-"),
        Verdict::Refuse {
            why: Refused::Plaintext,
            ..
        }
    ));
    // Revoked (review 22 round 3, L1): refused too.
    assert!(provisioned.revoke("ip-192-0-2-7"));
    assert!(matches!(
        frame::judge(&plain, peer, &provisioned, true, "ip-"),
        Verdict::Refuse {
            why: Refused::Plaintext,
            ..
        }
    ));
    assert_eq!(
        frame::judge(&plain, peer, &store(), true, "ip-"),
        Verdict::Take {
            meter_id: "ip-192-0-2-7".into(),
            counted: None,
        }
    );
}

/// Meter E7: authenticated and encrypted pushes (its keys), system title "AUT" 10 00 00 07.
const E7_TITLE: [u8; 8] = *b"AUT\x10\x00\x00\x00\x07";

fn e7_keys() -> meterflow_decoders::dlms::Keys {
    meterflow_decoders::dlms::Keys {
        ek: [0x31; 16],
        ak: Some([0x32; 16]),
    }
}

/// E7's push with invocation counter `counter`: a DataNotification of 1-0:1.8.0 = 1234 Wh,
/// general-glo-ciphering 0x30, in a wrapper frame.
fn e7_push(counter: u32) -> Vec<u8> {
    let note = [
        0x0F, 0, 0, 0, 1, 0x00, 2, 3, 9, 6, 1, 0, 1, 8, 0, 255, 6, 0, 0, 4, 0xD2, 2, 2, 15, 0, 22,
        30,
    ];
    wrapped(&meterflow_decoders::dlms::apdu::seal_for_tests(
        E7_TITLE,
        &e7_keys(),
        counter,
        &note,
    ))
}

fn store_with_e7() -> CredentialStore {
    let mut store = store();
    store
        .add(
            "E7",
            Credential {
                secret: Secret::new("e7-secret-0123456789").unwrap(),
                publish_for: Vec::new(),
                dlms: DlmsIdentity::parse(
                    "4155541000000007",
                    "31313131313131313131313131313131",
                    "32323232323232323232323232323232",
                    "",
                )
                .unwrap(),
            },
        )
        .unwrap();
    store
}

/// Review 22 rounds 3 and 4: a captured authenticated push sent again gets no storage. Its
/// counter is reserved when it is judged (a copy at the same time is the replay), given back
/// when the WAL does not take it (the resend is taken); the same bytes again after it is
/// stored are skipped over TCP (the connection read on, and ending in order: what the meter
/// asks for is done) and refused over UDP, counted as `replay`, with no storage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_sent_again_after_it_was_stored_is_refused_at_the_listener() {
    crate::runtime::metrics_handle();
    let (server, addr, submissions, shutdown) = listener(DlmsConfig::default(), store_with_e7());
    let push = e7_push(500);
    // The WAL full: reset, and the counter given back.
    let mut client = connect(addr);
    client.write_all(&push).unwrap();
    let s = submissions.recv_async().await.unwrap();
    assert_eq!(s.message.topic, "meters/E7/dlms");
    // A copy at the same time, on another connection: a replay, skipped, not submitted.
    let replays = metric("meterflow_dlms_refused_total{reason=\"replay\"}");
    let mut copy = connect(addr);
    copy.write_all(&push).unwrap();
    until("the copy counted", || {
        metric("meterflow_dlms_refused_total{reason=\"replay\"}") > replays
    })
    .await;
    s.notify.unwrap().send(Durability::WalFull).unwrap();
    let read = tokio::task::spawn_blocking(move || client.read(&mut [0u8; 16]))
        .await
        .unwrap();
    assert!(read.is_err(), "{read:?}");
    drop(copy);
    // Sent again: taken (the reservation was given back), and durable this time.
    let mut client = connect(addr);
    client.write_all(&push).unwrap();
    let s = submissions.recv_async().await.unwrap();
    s.notify.unwrap().send(Durability::Durable(1)).unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let read = tokio::task::spawn_blocking(move || client.read(&mut [0u8; 16]))
        .await
        .unwrap();
    assert_eq!(read.unwrap(), 0, "stored: an orderly close");
    // The same bytes again over TCP: skipped, and the meter that ends its stream gets the
    // orderly close (the push is stored); over UDP: dropped. Nothing submitted.
    let before = metric("meterflow_dlms_refused_total{reason=\"replay\"}");
    let mut again = connect(addr);
    let read = tokio::task::spawn_blocking(move || {
        again.write_all(&push).unwrap();
        again.shutdown(std::net::Shutdown::Write).unwrap();
        again.read(&mut [0u8; 16])
    })
    .await
    .unwrap();
    assert_eq!(read.unwrap(), 0);
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.send_to(&e7_push(500), addr).unwrap();
    until("both replays counted", || {
        metric("meterflow_dlms_refused_total{reason=\"replay\"}") >= before + 2.0
    })
    .await;
    // A later push is taken.
    udp.send_to(&e7_push(501), addr).unwrap();
    let s = submissions.recv_async().await.unwrap();
    assert_eq!(s.message.topic, "meters/E7/dlms");
    nothing_for_a_while(&submissions).await;
    shutdown.begin(Duration::from_secs(5));
    server.stopped().await;
}

/// Review 22 round 4, H1: an "encrypted only" push's counter is not remembered at the
/// listener, so forged datagrams with a high counter cannot lock its meter out.
#[test]
fn only_authenticated_counters_are_remembered() {
    let store = store_with_e7();
    let tirol = wrapped(&tirol_apdu());
    assert!(matches!(
        frame::judge(&tirol, LOCAL, &store, false, "ip-"),
        Verdict::Take { counted: None, .. }
    ));
    match frame::judge(&e7_push(7), LOCAL, &store, false, "ip-") {
        Verdict::Take {
            meter_id,
            counted: Some(c),
        } => {
            assert_eq!(meter_id, "E7");
            assert_eq!((c.system_title, c.counter), (E7_TITLE, 7));
            assert_eq!(c.key, e7_keys().check_value());
        }
        other => panic!("{other:?}"),
    }
}
