//! The server's answers, driven datagram by datagram with a stand-in for the WAL writer that
//! acknowledges (or refuses) each submission; the network, libcoap's client and the real WAL
//! are tested in `tests/it/serve_coap.rs`.

use flume::{Receiver, Sender};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType};
use meterflow_proto::Source;

use super::block1::Block;
use super::message::uint_bytes;
use super::server::{Completion, Server};
use super::*;
use crate::credentials::SharedCredentials;
use crate::edge::{Durability, Submission};

struct Harness {
    server: Server,
    submissions: Receiver<Submission>,
    done: tokio::sync::mpsc::Receiver<Completion>,
    _keep: Option<Sender<Submission>>,
    /// Who the requests of [`Harness::now`] and [`Harness::stored`] come from.
    caller: Caller,
}

fn harness(config: CoapConfig, wal_capacity: usize) -> Harness {
    let (wal_tx, submissions) = flume::bounded(wal_capacity);
    let (done_tx, done) = tokio::sync::mpsc::channel(64);
    Harness {
        server: Server::new(
            &config,
            Arc::new(SharedCredentials::in_memory(Default::default())),
            wal_tx,
            done_tx,
        ),
        submissions,
        done,
        _keep: None,
        caller: Caller::Anonymous,
    }
}

/// A harness whose credential store holds meter `m1` and gateway `gw` (for `g-*`), and whose
/// requests come from `m1`'s DTLS session 1.
fn device_harness() -> Harness {
    use crate::credentials::{Credential, CredentialStore, Glob, Secret};
    let mut store = CredentialStore::default();
    for (id, globs) in [("m1", vec![]), ("gw", vec![Glob::new("g-*").unwrap()])] {
        store
            .add(
                id,
                Credential {
                    secret: Secret::new("secret-0123456789").unwrap(),
                    publish_for: globs,
                    dlms: None,
                },
            )
            .unwrap();
    }
    let (wal_tx, submissions) = flume::bounded(16);
    let (done_tx, done) = tokio::sync::mpsc::channel(64);
    Harness {
        server: Server::new(
            &CoapConfig::default(),
            Arc::new(SharedCredentials::in_memory(store)),
            wal_tx,
            done_tx,
        ),
        submissions,
        done,
        _keep: None,
        caller: device("m1", 1),
    }
}

fn device(identity: &str, session: u64) -> Caller {
    Caller::Device {
        identity: Arc::from(identity),
        session,
    }
}

fn peer(port: u16) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 1], port))
}

fn request(
    kind: MessageType,
    method: RequestType,
    mid: u16,
    path: &str,
    cf: Option<u16>,
    payload: &[u8],
) -> Packet {
    let mut p = Packet::new();
    p.header.set_version(1);
    p.header.set_type(kind);
    p.header.code = MessageClass::Request(method);
    p.header.message_id = mid;
    p.set_token(vec![0xAB, (mid & 0xff) as u8]);
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
    }
    for q in query.split('&').filter(|s| !s.is_empty()) {
        p.add_option(CoapOption::UriQuery, q.as_bytes().to_vec());
    }
    if let Some(cf) = cf {
        p.add_option(CoapOption::ContentFormat, uint_bytes(u64::from(cf)));
    }
    p.payload = payload.to_vec();
    p
}

fn post(mid: u16, path: &str, cf: Option<u16>, payload: &[u8]) -> Packet {
    request(
        MessageType::Confirmable,
        RequestType::Post,
        mid,
        path,
        cf,
        payload,
    )
}

fn parse(bytes: &[u8]) -> Packet {
    Packet::from_bytes(bytes).expect("our answers parse")
}

fn code(p: &Packet) -> String {
    p.header.get_code()
}

impl Harness {
    /// Sends a request that must be answered at once.
    fn now(&mut self, p: &Packet, from: SocketAddr) -> Packet {
        let bytes = p.to_bytes().unwrap();
        let answer = self
            .server
            .datagram(&bytes, from, &self.caller, Instant::now())
            .expect("an answer at once");
        parse(&answer)
    }

    /// Sends a request that goes to the WAL; the stand-in answers `outcome`; returns the
    /// submission's topic and the answer.
    async fn stored(
        &mut self,
        p: &Packet,
        from: SocketAddr,
        outcome: Durability,
    ) -> (String, Packet) {
        let bytes = p.to_bytes().unwrap();
        assert!(
            self.server
                .datagram(&bytes, from, &self.caller, Instant::now())
                .is_none(),
            "the answer waits for the WAL"
        );
        let submission = self
            .submissions
            .try_recv()
            .expect("submitted to the WAL writer");
        assert_eq!(submission.message.source, Source::Coap);
        let topic = submission.message.topic.clone();
        submission
            .notify
            .expect("CoAP waits")
            .send(outcome)
            .unwrap();
        let done = self.done.recv().await.expect("completion");
        let answer = self.server.complete(done, Instant::now());
        (topic, parse(&answer))
    }
}

const JSON: &[u8] =
    br#"{"readings":[{"channel":"1-0:1.8.0","ts":1709252100000,"value":12.5,"unit":"kWh"}]}"#;

#[tokio::test]
async fn a_con_report_is_acknowledged_once_durable_and_a_retransmission_is_answered_again() {
    let mut h = harness(CoapConfig::default(), 16);
    let req = post(0x1234, "/r/meter-1", Some(50), JSON);
    let (topic, answer) = h.stored(&req, peer(1), Durability::Durable(1)).await;
    assert_eq!(topic, "meters/meter-1/json");
    assert_eq!(answer.header.get_type(), MessageType::Acknowledgement);
    assert_eq!(answer.header.message_id, 0x1234);
    assert_eq!(answer.get_token(), req.get_token());
    assert_eq!(code(&answer), "2.04");
    // The ACK was lost; the client sends the same CON again.
    let again = h.now(&req, peer(1));
    assert_eq!(again, answer);
    assert!(h.submissions.try_recv().is_err(), "not ingested twice");
    assert_eq!(h.server.summary.duplicates, 1);
    // The same message ID from another peer is another exchange.
    let (_, other) = h.stored(&req, peer(2), Durability::Durable(2)).await;
    assert_eq!(code(&other), "2.04");
}

#[tokio::test]
async fn a_retransmission_while_waiting_for_the_wal_is_not_ingested() {
    let mut h = harness(CoapConfig::default(), 16);
    let req = post(7, "/r/m", Some(50), JSON);
    let bytes = req.to_bytes().unwrap();
    assert!(h
        .server
        .datagram(&bytes, peer(1), &Caller::Anonymous, Instant::now())
        .is_none());
    assert!(h
        .server
        .datagram(&bytes, peer(1), &Caller::Anonymous, Instant::now())
        .is_none());
    let first = h.submissions.try_recv().unwrap();
    assert!(h.submissions.try_recv().is_err());
    first.notify.unwrap().send(Durability::Durable(1)).unwrap();
    let done = h.done.recv().await.unwrap();
    assert_eq!(
        code(&parse(&h.server.complete(done, Instant::now()))),
        "2.04"
    );
}

#[tokio::test]
async fn a_non_request_gets_a_non_answer_with_its_own_message_id() {
    let mut h = harness(CoapConfig::default(), 16);
    let req = request(
        MessageType::NonConfirmable,
        RequestType::Post,
        99,
        "/r/m",
        Some(50),
        JSON,
    );
    let (_, answer) = h.stored(&req, peer(1), Durability::Durable(1)).await;
    assert_eq!(answer.header.get_type(), MessageType::NonConfirmable);
    assert_ne!(answer.header.message_id, 99);
    assert_eq!(answer.get_token(), req.get_token());
    assert_eq!(code(&answer), "2.04");
}

#[tokio::test]
async fn a_payload_that_does_not_decode_is_stored_for_the_dead_letters_and_answered_4_00() {
    let mut h = harness(CoapConfig::default(), 16);
    let (topic, answer) = h
        .stored(
            &post(1, "/r/m", Some(50), b"{not json"),
            peer(1),
            Durability::Durable(1),
        )
        .await;
    assert_eq!(topic, "meters/m/json");
    assert_eq!(code(&answer), "4.00");
    let diagnostic = String::from_utf8(answer.payload).unwrap();
    assert!(
        diagnostic.contains("json: malformed at line 1"),
        "{diagnostic}"
    );
    // Partly bad: stored, 2.04, and the diagnostic says what was left out.
    let partly = br#"{"readings":[{"channel":"a","ts":1709252100000,"value":1},{"channel":"b"}]}"#;
    let (_, answer) = h
        .stored(
            &post(2, "/r/m", Some(50), partly),
            peer(1),
            Durability::Durable(2),
        )
        .await;
    assert_eq!(code(&answer), "2.04");
    assert!(String::from_utf8(answer.payload)
        .unwrap()
        .contains("1 part(s) rejected"));
}

#[test]
fn wrong_requests_get_the_4_xx_that_says_why() {
    let mut h = harness(CoapConfig::default(), 16);
    let cases: Vec<(Packet, &str)> = vec![
        (post(1, "/r/m", None, JSON), "4.15"),
        (post(2, "/r/m", Some(0), JSON), "4.15"),
        (post(3, "/r/m", Some(11543), JSON), "4.15"),
        (post(4, "/r/bad%20id", Some(50), JSON), "4.04"),
        (post(5, "/r/a/b", Some(50), JSON), "4.04"),
        (post(6, "/nowhere", Some(50), JSON), "4.04"),
        (
            request(
                MessageType::Confirmable,
                RequestType::Get,
                7,
                "/r/m",
                None,
                b"",
            ),
            "4.05",
        ),
        (
            request(
                MessageType::Confirmable,
                RequestType::Put,
                8,
                "/r/m",
                Some(50),
                JSON,
            ),
            "4.05",
        ),
        (post(9, "/dp", Some(112), b"\x80"), "4.03"),
        (post(10, "/rd", Some(40), b""), "4.00"),
        (post(11, "/rd?ep=has space", Some(40), b""), "4.00"),
        (post(12, "/rd/unknown", None, b""), "4.04"),
        (
            request(
                MessageType::Confirmable,
                RequestType::Delete,
                13,
                "/rd/unknown",
                None,
                b"",
            ),
            "4.04",
        ),
    ];
    for (req, want) in cases {
        let answer = h.now(&req, peer(1));
        assert_eq!(
            code(&answer),
            want,
            "{:?}",
            req.get_option(CoapOption::UriPath)
        );
        assert!(
            !answer.payload.is_empty(),
            "4.xx answers carry a diagnostic"
        );
    }
    // An unknown critical option (If-Match, 1) is 4.02, so is a repeated Block1; a proxy
    // request is 5.05.
    let mut req = post(20, "/r/m", Some(50), JSON);
    req.add_option(CoapOption::IfMatch, vec![1]);
    assert_eq!(code(&h.now(&req, peer(1))), "4.02");
    let mut req = post(21, "/r/m", Some(50), JSON);
    req.add_option(CoapOption::Block1, vec![0x02]);
    req.add_option(CoapOption::Block1, vec![0x12]);
    assert_eq!(code(&h.now(&req, peer(1))), "4.02");
    let mut req = post(22, "/r/m", Some(50), JSON);
    req.add_option(CoapOption::ProxyUri, b"coap://elsewhere/r/m".to_vec());
    assert_eq!(code(&h.now(&req, peer(1))), "5.05");
    // Another CoAP version: silence.
    let mut bytes = post(23, "/r/m", Some(50), JSON).to_bytes().unwrap();
    bytes[0] = (bytes[0] & 0x3f) | 0x80;
    assert_eq!(
        h.server
            .datagram(&bytes, peer(1), &Caller::Anonymous, Instant::now()),
        None
    );
    // Too large in one datagram: 4.13 with Size1.
    let config = CoapConfig {
        max_payload_bytes: 100,
        ..CoapConfig::default()
    };
    let mut h = harness(config, 16);
    let answer = h.now(&post(1, "/r/m", Some(50), &[b' '; 101]), peer(1));
    assert_eq!(code(&answer), "4.13");
    assert_eq!(
        answer.get_first_option(CoapOption::Size1),
        Some(&vec![100u8])
    );
    assert!(
        h.submissions.try_recv().is_err(),
        "nothing refused is stored"
    );
}

#[tokio::test]
async fn overload_is_5_03_with_max_age() {
    // The WAL writer's queue is full.
    let mut h = harness(CoapConfig::default(), 1);
    let first = post(1, "/r/m", Some(50), JSON).to_bytes().unwrap();
    assert!(h
        .server
        .datagram(&first, peer(1), &Caller::Anonymous, Instant::now())
        .is_none());
    let answer = h.now(&post(2, "/r/m", Some(50), JSON), peer(1));
    assert_eq!(code(&answer), "5.03");
    assert_eq!(
        answer.get_first_option(CoapOption::MaxAge),
        Some(&vec![10u8])
    );
    // The WAL at its disk budget.
    let mut h = harness(CoapConfig::default(), 16);
    let (_, answer) = h
        .stored(
            &post(3, "/r/m", Some(50), JSON),
            peer(1),
            Durability::WalFull,
        )
        .await;
    assert_eq!(code(&answer), "5.03");
    assert!(answer.get_first_option(CoapOption::MaxAge).is_some());
    // Too many requests waiting.
    let config = CoapConfig {
        max_inflight: 1,
        ..CoapConfig::default()
    };
    let mut h = harness(config, 16);
    assert!(h
        .server
        .datagram(&first, peer(1), &Caller::Anonymous, Instant::now())
        .is_none());
    assert_eq!(
        code(&h.now(&post(4, "/r/m", Some(50), JSON), peer(1))),
        "5.03"
    );
}

#[tokio::test]
async fn a_block1_upload_is_reassembled_and_stored_once() {
    let mut h = harness(CoapConfig::default(), 16);
    let body: Vec<u8> = format!(
        "[{{\"bn\":\"urn:dev:m:\",\"bt\":1709252100,\"n\":\"e\",\"u\":\"kWh\",\"v\":1.5}}{}]",
        ",{\"n\":\"p\",\"u\":\"W\",\"v\":230}".repeat(10)
    )
    .into_bytes();
    let chunks: Vec<&[u8]> = body.chunks(64).collect();
    let last = chunks.len() - 1;
    let mut answer = None;
    for (i, chunk) in chunks.iter().enumerate() {
        let mut req = post(100 + i as u16, "/r/m", Some(110), chunk);
        let block = Block {
            num: i as u32,
            more: i < last,
            szx: 2,
        };
        req.add_option(CoapOption::Block1, block.to_bytes());
        if i < last {
            let a = h.now(&req, peer(1));
            assert_eq!(code(&a), "2.31");
            assert_eq!(
                a.get_first_option(CoapOption::Block1),
                Some(&block.to_bytes())
            );
        } else {
            answer = Some(h.stored(&req, peer(1), Durability::Durable(1)).await);
        }
    }
    let (topic, answer) = answer.unwrap();
    assert_eq!(topic, "meters/m/senml");
    assert_eq!(code(&answer), "2.04");
    let final_block = Block {
        num: last as u32,
        more: false,
        szx: 2,
    };
    assert_eq!(
        answer.get_first_option(CoapOption::Block1),
        Some(&final_block.to_bytes())
    );
    assert!(h.server.blocks.is_empty());
}

#[tokio::test]
async fn lwm2m_register_send_update_deregister() {
    let mut h = harness(CoapConfig::default(), 16);
    let device = peer(5683);
    let reg = h.now(
        &post(
            1,
            "/rd?ep=urn:imei:3520990017&lt=300&lwm2m=1.1&b=U",
            Some(40),
            b"</3/0>,</4/0>",
        ),
        device,
    );
    assert_eq!(code(&reg), "2.01");
    let location: Vec<String> = reg
        .get_option(CoapOption::LocationPath)
        .unwrap()
        .iter()
        .map(|v| String::from_utf8(v.clone()).unwrap())
        .collect();
    assert_eq!(location[0], "rd");
    let id = location[1].clone();
    // The registration is the device's heartbeat: an empty status for its meter.
    let heartbeat = h.submissions.try_recv().expect("a heartbeat");
    assert_eq!(heartbeat.message.topic, "meters/imei-3520990017/status");
    assert_eq!(&heartbeat.message.payload[..], b"{}");
    assert!(heartbeat.notify.is_none(), "nobody waits for it");
    // Send, SenML-CBOR: [{0: "/3/0/9", 2: 87}] (battery).
    let send = [
        0x81, 0xa2, 0x00, 0x66, b'/', b'3', b'/', b'0', b'/', b'9', 0x02, 0x18, 87,
    ];
    let (topic, answer) = h
        .stored(
            &post(2, "/dp", Some(112), &send),
            device,
            Durability::Durable(1),
        )
        .await;
    assert_eq!(topic, "meters/imei-3520990017/lwm2m");
    assert_eq!(code(&answer), "2.04");
    // From another address it is not known.
    assert_eq!(
        code(&h.now(&post(3, "/dp", Some(112), &send), peer(9))),
        "4.03"
    );
    // Update from a new address (NAT rebinding): Send from there works.
    assert_eq!(
        code(&h.now(&post(4, &format!("/rd/{id}?lt=600"), None, b""), peer(9))),
        "2.04"
    );
    let heartbeat = h
        .submissions
        .try_recv()
        .expect("an update is a heartbeat too");
    assert_eq!(heartbeat.message.topic, "meters/imei-3520990017/status");
    let (_, answer) = h
        .stored(
            &post(5, "/dp", Some(110), br#"[{"n":"/3/0/9","v":86}]"#),
            peer(9),
            Durability::Durable(2),
        )
        .await;
    assert_eq!(code(&answer), "2.04");
    // De-register.
    let delete = request(
        MessageType::Confirmable,
        RequestType::Delete,
        6,
        &format!("/rd/{id}"),
        None,
        b"",
    );
    assert_eq!(code(&h.now(&delete, peer(9))), "2.02");
    assert_eq!(
        code(&h.now(&post(7, "/dp", Some(112), &send), peer(9))),
        "4.03"
    );
    assert_eq!(
        code(&h.now(&post(8, &format!("/rd/{id}"), None, b""), peer(9))),
        "4.04"
    );
}

#[test]
fn well_known_core_lists_the_resources() {
    let mut h = harness(CoapConfig::default(), 16);
    let a = h.now(
        &request(
            MessageType::Confirmable,
            RequestType::Get,
            1,
            "/.well-known/core",
            None,
            b"",
        ),
        peer(1),
    );
    assert_eq!(code(&a), "2.05");
    assert!(String::from_utf8(a.payload)
        .unwrap()
        .contains("</rd>;rt=\"core.rd\""));
}

#[test]
fn pings_and_malformed_confirmables_are_reset_and_noise_is_ignored() {
    let mut h = harness(CoapConfig::default(), 16);
    // An empty CON (a CoAP ping).
    let ping = [0x40, 0x00, 0x12, 0x34];
    assert_eq!(
        h.server
            .datagram(&ping, peer(1), &Caller::Anonymous, Instant::now()),
        Some(vec![0x70, 0, 0x12, 0x34])
    );
    // A CON with a token length of 9 (malformed).
    let bad = [0x49, 0x02, 0x00, 0x05, 1, 2];
    assert_eq!(
        h.server
            .datagram(&bad, peer(1), &Caller::Anonymous, Instant::now()),
        Some(vec![0x70, 0, 0, 5])
    );
    // A NON that does not parse, a stray ACK, short junk: silence.
    assert_eq!(
        h.server.datagram(
            &[0x59, 0x02, 0, 5],
            peer(1),
            &Caller::Anonymous,
            Instant::now()
        ),
        None
    );
    assert_eq!(
        h.server.datagram(
            &[0x60, 0x44, 0, 5],
            peer(1),
            &Caller::Anonymous,
            Instant::now()
        ),
        None
    );
    assert_eq!(
        h.server
            .datagram(&[0x40], peer(1), &Caller::Anonymous, Instant::now()),
        None
    );
}

/// A flood of random datagrams from many addresses: nothing panics and every table stays
/// within its bound.
#[tokio::test]
async fn a_flood_of_random_datagrams_stays_bounded() {
    let config = CoapConfig {
        exchange_cache_bytes: 1 << 20,
        block_transfers: 50,
        lwm2m_max_registrations: 100,
        ..CoapConfig::default()
    };
    let mut h = harness(config, 1 << 16);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let now = Instant::now();
    for i in 0..200_000u32 {
        let from = SocketAddr::from((
            [10, (i >> 16) as u8, (i >> 8) as u8, i as u8],
            (next() % 65535) as u16 + 1,
        ));
        let datagram: Vec<u8> = match i % 4 {
            // Pure noise.
            0 => (0..(next() % 64)).map(|_| next() as u8).collect(),
            // Valid requests to random places, some of them blocks, some registrations.
            _ => {
                let mid = next() as u16;
                let mut p = match next() % 4 {
                    0 => post(
                        mid,
                        &format!("/rd?ep=dev{}", next() % 100_000),
                        Some(40),
                        b"",
                    ),
                    1 => post(mid, "/r/m", Some(50), &[b'x'; 16]),
                    2 => post(mid, &format!("/x/{}", next()), None, b""),
                    _ => post(mid, "/dp", Some(112), b"\x80"),
                };
                if next() % 2 == 0 {
                    let block = Block {
                        num: 0,
                        more: true,
                        szx: 0,
                    };
                    p.payload = vec![0; 16];
                    p.add_option(CoapOption::Block1, block.to_bytes());
                }
                p.to_bytes().unwrap()
            }
        };
        let _ = h.server.datagram(&datagram, from, &Caller::Anonymous, now);
        while let Ok(s) = h.submissions.try_recv() {
            drop(s); // the stand-in loses them: their answers never come
        }
    }
    assert!(
        h.server.exchanges.bytes() <= 1 << 20,
        "{}",
        h.server.exchanges.bytes()
    );
    assert!(h.server.blocks.len() <= 50);
    assert!(h.server.registry.len() <= 100);
    assert!(h.server.inflight <= CoapConfig::default().max_inflight);
}

#[tokio::test]
async fn without_identity_where_one_is_required_every_request_gets_4_01() {
    let mut h = harness(CoapConfig::default(), 16);
    h.caller = Caller::Unauthenticated;
    let answer = h.now(&post(1, "/r/m1", Some(50), JSON), peer(1));
    assert_eq!(code(&answer), "4.01");
    assert!(h.submissions.try_recv().is_err(), "nothing stored");
    assert!(h.server.exchanges.is_empty(), "nothing remembered");
}

#[tokio::test]
async fn a_device_posts_for_itself_and_a_gateway_for_its_globs_only() {
    let mut h = device_harness();
    let (topic, answer) = h
        .stored(
            &post(1, "/r/m1", Some(50), JSON),
            peer(1),
            Durability::Durable(1),
        )
        .await;
    assert_eq!(
        (topic.as_str(), code(&answer).as_str()),
        ("meters/m1/json", "2.04")
    );
    // Another meter: 4.03 once the refusal is durable, kept as an unauthorized dead letter.
    let bytes = post(2, "/r/m2", Some(50), JSON).to_bytes().unwrap();
    assert!(h
        .server
        .datagram(&bytes, peer(1), &h.caller, Instant::now())
        .is_none());
    let submission = h.submissions.try_recv().unwrap();
    let refusal = submission.message.edge_note.clone().unwrap();
    assert_eq!(refusal.identity.as_deref(), Some("m1"));
    assert_eq!(refusal.peer, peer(1).to_string());
    assert_eq!(submission.message.topic, "/r/m2");
    assert_eq!(&submission.message.payload[..], JSON);
    submission
        .notify
        .unwrap()
        .send(Durability::Durable(2))
        .unwrap();
    let done = h.done.recv().await.unwrap();
    assert_eq!(
        code(&parse(&h.server.complete(done, Instant::now()))),
        "4.03"
    );
    // The gateway: g-7 yes, m1 no.
    h.caller = device("gw", 2);
    let (topic, answer) = h
        .stored(
            &post(3, "/r/g-7", Some(50), JSON),
            peer(2),
            Durability::Durable(3),
        )
        .await;
    assert_eq!(
        (topic.as_str(), code(&answer).as_str()),
        ("meters/g-7/json", "2.04")
    );
    let (topic, answer) = h
        .stored(
            &post(4, "/r/m1", Some(50), JSON),
            peer(2),
            Durability::Durable(4),
        )
        .await;
    assert_eq!((topic.as_str(), code(&answer).as_str()), ("/r/m1", "4.03"));
}

#[tokio::test]
async fn a_device_s_request_repeated_from_a_new_address_is_known_by_its_identity() {
    let mut h = device_harness();
    let request = post(7, "/r/m1", Some(50), JSON);
    let (_, first) = h.stored(&request, peer(1), Durability::Durable(1)).await;
    assert_eq!(code(&first), "2.04");
    // The same message ID from a new port (a NAT rebinding, a new session): the same answer,
    // nothing stored again.
    h.caller = device("m1", 2);
    let again = h.now(&request, peer(9));
    assert_eq!(again.header.message_id, 7);
    assert_eq!(code(&again), "2.04");
    assert!(h.submissions.try_recv().is_err(), "stored once");
    // Another identity with the same message ID is another exchange.
    h.caller = device("gw", 3);
    let bytes = post(7, "/r/g-1", Some(50), JSON).to_bytes().unwrap();
    assert!(h
        .server
        .datagram(&bytes, peer(9), &h.caller, Instant::now())
        .is_none());
    assert!(h.submissions.try_recv().is_ok());
}

#[tokio::test]
async fn a_refused_request_is_not_remembered_so_its_retransmission_is_a_new_attempt() {
    let mut h = harness(CoapConfig::default(), 16);
    let request = post(9, "/r/m1", Some(50), JSON);
    let (_, answer) = h.stored(&request, peer(1), Durability::WalFull).await;
    assert_eq!(code(&answer), "5.03");
    assert!(h.server.exchanges.is_empty());
    let (_, answer) = h.stored(&request, peer(1), Durability::Durable(1)).await;
    assert_eq!(code(&answer), "2.04");
}

#[tokio::test]
async fn lwm2m_over_dtls_registers_its_own_endpoint_and_sends_in_its_session_only() {
    let mut h = device_harness();
    let (topic, answer) = h
        .stored(
            &post(1, "/rd?ep=m2&lt=300", Some(40), b"</3/0>"),
            peer(1),
            Durability::Durable(9),
        )
        .await;
    assert_eq!(
        (topic.as_str(), code(&answer).as_str()),
        ("/rd", "4.03"),
        "another endpoint"
    );
    let answer = h.now(&post(2, "/rd?ep=m1&lt=300", Some(40), b"</3/0>"), peer(1));
    assert_eq!(code(&answer), "2.01");
    let _ = h.submissions.try_recv(); // the heartbeat
    let senml = b"\x81\xa2\x00\x66/3/0/9\x02\x18\x64";
    let (topic, answer) = h
        .stored(
            &post(3, "/dp", Some(112), senml),
            peer(1),
            Durability::Durable(1),
        )
        .await;
    assert_eq!(
        (topic.as_str(), code(&answer).as_str()),
        ("meters/m1/lwm2m", "2.04")
    );
    // The same address in a new session: refused until it updates its registration.
    h.caller = device("m1", 2);
    let (topic, answer) = h
        .stored(
            &post(4, "/dp", Some(112), senml),
            peer(1),
            Durability::Durable(2),
        )
        .await;
    assert_eq!((topic.as_str(), code(&answer).as_str()), ("/dp", "4.03"));
}
