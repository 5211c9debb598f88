//! The session, packet by packet: bytes as a client sends them go through the codec into the
//! session; what comes out (packets, WAL submissions, close decisions) is checked exactly.

use std::net::SocketAddr;

use bytes::{BufMut, BytesMut};
use rumqttd::protocol::{
    Connect, ConnectProperties, ConnectReturnCode, Disconnect, DisconnectReasonCode, Login, Packet,
    PubAck, PubAckReason, PubComp, PubCompReason, PubRec, PubRecReason, SubAck,
    SubscribeReasonCode,
};

use super::codec::{self, Version};
use super::session::{
    refusal, Close, CloseReason, ConnectRefusal, ConnectRequest, Limits, Session, Step,
};
use crate::credentials::Glob;
use crate::edge::Durability;
use crate::edge::Identity;

const LIMITS: Limits = Limits {
    receive_maximum: 3,
    max_packet: 4096,
    max_keep_alive_s: 600,
};

fn peer() -> SocketAddr {
    "10.1.2.3:40000".parse().unwrap()
}

fn connect(version: Version, client_id: &str, keep_alive: u16, clean: bool) -> Packet {
    let properties = (version == Version::V5).then(|| ConnectProperties {
        session_expiry_interval: Some(3600),
        receive_maximum: None,
        max_packet_size: None,
        topic_alias_max: None,
        request_response_info: None,
        request_problem_info: None,
        user_properties: Vec::new(),
        authentication_method: None,
        authentication_data: None,
    });
    Packet::Connect(
        Connect {
            keep_alive,
            client_id: client_id.into(),
            clean_session: clean,
        },
        properties,
        None,
        None,
        Some(Login {
            username: "E1".into(),
            password: "x".into(),
        }),
    )
}

fn session(version: Version, identity: Identity) -> Session {
    let request = ConnectRequest::parse(version, connect(version, "c1", 30, true), 7).unwrap();
    Session::accept(request, identity, peer(), LIMITS).0
}

fn meter(id: &str) -> Identity {
    Identity::Device {
        id: id.into(),
        publish_for: Vec::new(),
    }
}

/// A PUBLISH as a client writes it; `content_type` and `alias` are MQTT 5 properties.
fn publish_bytes(
    version: Version,
    qos: u8,
    pkid: u16,
    topic: &str,
    payload: &[u8],
    content_type: Option<&str>,
    alias: Option<u16>,
) -> BytesMut {
    let mut body = BytesMut::new();
    body.put_u16(topic.len() as u16);
    body.put_slice(topic.as_bytes());
    if qos > 0 {
        body.put_u16(pkid);
    }
    if version == Version::V5 {
        let mut props = BytesMut::new();
        if let Some(ct) = content_type {
            props.put_u8(0x03);
            props.put_u16(ct.len() as u16);
            props.put_slice(ct.as_bytes());
        }
        if let Some(a) = alias {
            props.put_u8(0x23);
            props.put_u16(a);
        }
        body.put_u8(props.len() as u8);
        body.put_slice(&props);
    }
    body.put_slice(payload);
    let mut out = BytesMut::new();
    out.put_u8(0x30 | (qos << 1));
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.put_u8(b);
        if len == 0 {
            break;
        }
    }
    out.put_slice(&body);
    out
}

fn feed(s: &mut Session, mut bytes: BytesMut) -> Step {
    let inbound = codec::read(s.version, &mut bytes, LIMITS.max_packet)
        .unwrap()
        .unwrap();
    assert!(bytes.is_empty());
    s.on_packet(inbound)
}

fn publish(s: &mut Session, qos: u8, pkid: u16, topic: &str) -> Step {
    let bytes = publish_bytes(s.version, qos, pkid, topic, b"{}", None, None);
    feed(s, bytes)
}

fn raw(bytes: &[u8]) -> BytesMut {
    BytesMut::from(bytes)
}

fn puback(pkid: u16, reason: PubAckReason) -> Packet {
    Packet::PubAck(PubAck { pkid, reason }, None)
}

fn pubrec(pkid: u16, reason: PubRecReason) -> Packet {
    Packet::PubRec(PubRec { pkid, reason }, None)
}

#[test]
fn a_puback_comes_only_from_the_wal_and_in_order() {
    for version in [Version::V4, Version::V5] {
        let mut s = session(version, meter("E1"));
        for pkid in [10, 11, 12] {
            let step = publish(&mut s, 1, pkid, "meters/E1/json");
            assert!(step.packets.is_empty(), "nothing before the WAL answers");
            let submit = step.submit.unwrap();
            assert!(submit.wait && submit.edge_note.is_none());
            assert_eq!(submit.topic, "meters/E1/json");
        }
        assert_eq!(s.awaiting(), 3);
        assert!(!s.can_read(), "at the receive maximum: not read further");
        for pkid in [10, 11, 12] {
            let step = s.on_durable(&Durability::Durable(1));
            assert_eq!(step.packets, vec![puback(pkid, PubAckReason::Success)]);
        }
        assert!(s.can_read());
        // QoS 0: to the WAL, no answer, nothing waits.
        let step = publish(&mut s, 0, 0, "meters/E1/pb");
        assert!(!step.submit.unwrap().wait);
        assert_eq!(s.awaiting(), 0);
    }
}

#[test]
fn qos2_is_stored_once_per_packet_id_until_pubrel() {
    let mut s = session(Version::V5, meter("E1"));
    assert!(publish(&mut s, 2, 5, "meters/E1/json").submit.is_some());
    // Sent again before the WAL answered: not stored again, not answered yet.
    assert_eq!(publish(&mut s, 2, 5, "meters/E1/json"), Step::default());
    let step = s.on_durable(&Durability::Durable(9));
    assert_eq!(step.packets, vec![pubrec(5, PubRecReason::Success)]);
    // Sent again after PUBREC: answered again, still not stored.
    let again = publish(&mut s, 2, 5, "meters/E1/json");
    assert!(again.submit.is_none());
    assert_eq!(again.packets, vec![pubrec(5, PubRecReason::Success)]);
    // PUBREL releases the id: PUBCOMP, and the id may carry a new message.
    let step = feed(&mut s, raw(&[0x62, 2, 0, 5]));
    assert_eq!(
        step.packets,
        vec![Packet::PubComp(
            PubComp {
                pkid: 5,
                reason: PubCompReason::Success
            },
            None
        )]
    );
    assert!(publish(&mut s, 2, 5, "meters/E1/json").submit.is_some());
    // A PUBREL for an unknown id: MQTT 5 says so.
    let step = feed(&mut s, raw(&[0x62, 2, 0, 77]));
    assert_eq!(
        step.packets,
        vec![Packet::PubComp(
            PubComp {
                pkid: 77,
                reason: PubCompReason::PacketIdentifierNotFound
            },
            None
        )]
    );
}

#[test]
fn a_publish_for_another_meter_is_a_dead_letter_and_refused_as_each_version_says() {
    // MQTT 5: PUBACK 0x87 once the dead letter is stored.
    let mut s = session(Version::V5, meter("E1"));
    let step = publish(&mut s, 1, 3, "meters/E2/json");
    assert_eq!(step.denied, Some("publish"));
    assert_eq!(step.close, None);
    let submit = step.submit.unwrap();
    assert!(submit.wait);
    let refusal = submit.edge_note.clone().unwrap();
    assert_eq!(refusal.identity.as_deref(), Some("E1"));
    assert_eq!(refusal.peer, "10.1.2.3:40000");
    assert!(refusal
        .describe()
        .contains("may not publish to \"meters/E2/json\""));
    assert_eq!(
        s.on_durable(&Durability::Durable(4)).packets,
        vec![puback(3, PubAckReason::NotAuthorized)]
    );
    // QoS 2 likewise with PUBREC 0x87: sent again before that answer, not kept twice; the id
    // is forgotten with the answer.
    assert!(publish(&mut s, 2, 4, "other/topic").submit.is_some());
    assert_eq!(publish(&mut s, 2, 4, "other/topic"), Step::default());
    assert_eq!(
        s.on_durable(&Durability::Durable(5)).packets,
        vec![pubrec(4, PubRecReason::NotAuthorized)]
    );
    assert!(publish(&mut s, 2, 4, "meters/E1/json").submit.is_some());
    // MQTT 3.1.1: the connection is closed once what was read is answered (§3.3.5).
    let mut s = session(Version::V4, meter("E1"));
    let step = publish(&mut s, 1, 3, "meters/E2/json");
    assert!(step.submit.unwrap().edge_note.is_some());
    assert_eq!(step.close, Some(Close::Drained(CloseReason::Denied)));
    assert_eq!(s.awaiting(), 0, "nothing to answer");
}

#[test]
fn an_identified_devices_topic_that_routes_nowhere_is_acknowledged_with_its_sender() {
    use crate::edge::EdgeNoteKind;
    for version in [Version::V4, Version::V5] {
        let mut s = session(version, meter("E1"));
        for topic in ["meters/E1/../E2/json", "meters/E1/json/v2", "meters/E1/xml"] {
            let step = publish(&mut s, 1, 5, topic);
            assert_eq!((step.denied, step.close), (None, None), "{topic}");
            let submit = step.submit.unwrap();
            assert!(submit.wait, "{topic}: acknowledged once stored");
            let sender = submit.edge_note.unwrap();
            assert_eq!(sender.kind, EdgeNoteKind::BadTopic);
            assert_eq!(
                sender.sender(),
                "(identity E1, client id c1, peer 10.1.2.3:40000)"
            );
            assert_eq!(
                s.on_durable(&Durability::Durable(9)).packets,
                vec![puback(5, PubAckReason::Success)]
            );
        }
        // A topic that routes carries nothing; anonymous devices have no sender to name.
        assert!(publish(&mut s, 1, 6, "meters/E1/status")
            .submit
            .unwrap()
            .edge_note
            .is_none());
        let mut s = session(version, Identity::Anonymous);
        assert!(publish(&mut s, 1, 7, "meters/E1/../E2/json")
            .submit
            .unwrap()
            .edge_note
            .is_none());
    }
}

#[test]
fn gateways_publish_for_their_globs_and_anonymous_clients_anywhere() {
    let gw = Identity::Device {
        id: "GW".into(),
        publish_for: vec![Glob::new("E*").unwrap()],
    };
    let mut s = session(Version::V5, gw);
    // For one of its meters: taken, with a note that the gateway sent it (it is heard too).
    let taken = publish(&mut s, 0, 0, "meters/E77/pb").submit.unwrap();
    assert!(taken.edge_note.is_none());
    assert_eq!(taken.via.as_deref(), Some("GW"));
    let refused = publish(&mut s, 0, 0, "meters/X1/pb")
        .submit
        .unwrap()
        .edge_note;
    assert_eq!(
        refused.map(|n| n.kind),
        Some(crate::edge::EdgeNoteKind::Unauthorized)
    );
    let mut s = session(Version::V4, Identity::Anonymous);
    assert!(publish(&mut s, 1, 1, "not/meters")
        .submit
        .unwrap()
        .edge_note
        .is_none());
}

#[test]
fn a_full_wal_or_a_failed_write_is_never_acknowledged() {
    let mut s = session(Version::V5, meter("E1"));
    publish(&mut s, 1, 1, "meters/E1/json");
    publish(&mut s, 2, 2, "meters/E1/json");
    assert_eq!(
        s.on_durable(&Durability::WalFull).packets,
        vec![puback(1, PubAckReason::QuotaExceeded)]
    );
    assert_eq!(
        s.on_durable(&Durability::WalFull).packets,
        vec![pubrec(2, PubRecReason::QuotaExceeded)]
    );
    let mut s = session(Version::V4, meter("E1"));
    publish(&mut s, 1, 1, "meters/E1/json");
    assert_eq!(
        s.on_durable(&Durability::WalFull),
        Step {
            close: Some(Close::Now(CloseReason::WalFull)),
            ..Step::default()
        }
    );
    for version in [Version::V4, Version::V5] {
        let mut s = session(version, meter("E1"));
        publish(&mut s, 1, 1, "meters/E1/json");
        let step = s.on_durable(&Durability::Failed);
        assert!(step.packets.is_empty());
        assert_eq!(step.close, Some(Close::Now(CloseReason::WalError)));
    }
}

#[test]
fn subscriptions_only_to_the_clients_own_command_topic() {
    // SUBSCRIBE pkid 9: "#" QoS 1, "meters/E1/cmd/#" QoS 1, "meters/E2/cmd/#" QoS 0.
    let filters: [(&str, u8); 3] = [("#", 1), ("meters/E1/cmd/#", 1), ("meters/E2/cmd/#", 0)];
    for version in [Version::V4, Version::V5] {
        let mut body = BytesMut::new();
        body.put_u16(9);
        if version == Version::V5 {
            body.put_u8(0);
        }
        for (f, qos) in filters {
            body.put_u16(f.len() as u16);
            body.put_slice(f.as_bytes());
            body.put_u8(qos);
        }
        let mut bytes = BytesMut::new();
        bytes.put_u8(0x82);
        bytes.put_u8(body.len() as u8);
        bytes.put_slice(&body);
        let mut s = session(version, meter("E1"));
        let step = feed(&mut s, bytes);
        let refused = match version {
            Version::V4 => SubscribeReasonCode::Failure,
            Version::V5 => SubscribeReasonCode::NotAuthorized,
        };
        assert_eq!(
            step.packets,
            vec![Packet::SubAck(
                SubAck {
                    pkid: 9,
                    return_codes: vec![
                        refused,
                        SubscribeReasonCode::Success(rumqttd::protocol::QoS::AtLeastOnce),
                        refused
                    ]
                },
                None
            )]
        );
        assert_eq!(step.denied, Some("subscribe"));
        // The wire bytes: 0x80 for 3.1.1, 0x87 for MQTT 5.
        let mut out = BytesMut::new();
        codec::write(version, step.packets[0].clone(), &mut out).unwrap();
        let code = if version == Version::V4 { 0x80 } else { 0x87 };
        assert_eq!(out[out.len() - 3], code, "{out:?}");
    }
}

#[test]
fn connect_checks_and_the_connack() {
    // MQTT 5: an empty client id is assigned one; keep-alive 0 gets the server's.
    let request =
        ConnectRequest::parse(Version::V5, connect(Version::V5, "", 0, true), 42).unwrap();
    assert_eq!(request.client_id, "meterflow-42");
    let (s, connack) = Session::accept(request, meter("E1"), peer(), LIMITS);
    let Packet::ConnAck(ack, Some(props)) = connack else {
        panic!("{connack:?}")
    };
    assert_eq!(ack.code, ConnectReturnCode::Success);
    assert!(!ack.session_present);
    assert_eq!(
        props.assigned_client_identifier.as_deref(),
        Some("meterflow-42")
    );
    assert_eq!(props.server_keep_alive, Some(600));
    assert_eq!(props.receive_max, Some(3));
    assert_eq!(props.max_packet_size, Some(4096));
    assert_eq!(
        props.session_expiry_interval,
        Some(0),
        "no session outlives the connection"
    );
    assert_eq!(
        s.keep_alive_deadline().as_secs(),
        900,
        "1.5 x the keep-alive"
    );
    // MQTT 3.1.1: an empty id needs a clean session.
    let refused =
        ConnectRequest::parse(Version::V4, connect(Version::V4, "", 30, false), 1).unwrap_err();
    assert_eq!(refused, ConnectRefusal::ClientId);
    // Enhanced authentication is not offered.
    let mut with_auth = connect(Version::V5, "c", 30, true);
    if let Packet::Connect(_, Some(p), ..) = &mut with_auth {
        p.authentication_method = Some("SCRAM".into());
    }
    let refused = ConnectRequest::parse(Version::V5, with_auth, 1).unwrap_err();
    let mut out = BytesMut::new();
    codec::write(Version::V5, refusal(Version::V5, refused), &mut out).unwrap();
    assert_eq!(&out[..4], &[0x20, 3, 0, 0x8C]);
    // Bad credentials on the wire: 3.1.1 code 5 (not authorized), MQTT 5 0x86.
    for (version, code) in [(Version::V4, 5u8), (Version::V5, 0x86)] {
        let mut out = BytesMut::new();
        let p = refusal(
            version,
            ConnectRefusal::Denied(super::auth::Denial::BadCredentials),
        );
        codec::write(version, p, &mut out).unwrap();
        assert_eq!(out[3], code);
    }
    let mut out = BytesMut::new();
    codec::write(
        Version::V4,
        refusal(
            Version::V4,
            ConnectRefusal::Denied(super::auth::Denial::NoCredentials),
        ),
        &mut out,
    )
    .unwrap();
    assert_eq!(out[3], 5);
    // MQTT 5: no credentials 0x87, another device's client id 0x87.
    for (why, code) in [
        (
            ConnectRefusal::Denied(super::auth::Denial::NoCredentials),
            0x87u8,
        ),
        (ConnectRefusal::NotAuthorized, 0x87),
    ] {
        let mut out = BytesMut::new();
        codec::write(Version::V5, refusal(Version::V5, why), &mut out).unwrap();
        assert_eq!(out[3], code, "{why:?}");
    }
}

#[test]
fn content_type_alias_ping_and_disconnect() {
    let mut s = session(Version::V5, meter("E1"));
    let bytes = publish_bytes(
        Version::V5,
        1,
        1,
        "meters/E1/x",
        b"{}",
        Some("application/json"),
        None,
    );
    let submit = feed(&mut s, bytes).submit.unwrap();
    assert_eq!(submit.content_type.as_deref(), Some("application/json"));
    let bytes = publish_bytes(Version::V5, 0, 0, "meters/E1/json", b"{}", None, Some(1));
    assert_eq!(
        feed(&mut s, bytes).close,
        Some(Close::Now(CloseReason::TopicAliasInvalid))
    );
    assert_eq!(
        feed(&mut s, raw(&[0xC0, 0])).packets,
        vec![Packet::PingResp(rumqttd::protocol::PingResp)]
    );
    assert_eq!(
        feed(&mut s, raw(&[0xE0, 0])).close,
        Some(Close::Now(CloseReason::ClientDisconnect))
    );
    // A wildcard in a topic name is a protocol error.
    assert_eq!(
        publish(&mut s, 0, 0, "meters/+/json").close,
        Some(Close::Now(CloseReason::ProtocolError))
    );
    // The server's DISCONNECT for MQTT 5 clients, none for 3.1.1.
    assert_eq!(
        s.disconnect(CloseReason::ShuttingDown),
        Some(Packet::Disconnect(
            Disconnect {
                reason_code: DisconnectReasonCode::ServerShuttingDown
            },
            None
        ))
    );
    assert_eq!(
        session(Version::V4, meter("E1")).disconnect(CloseReason::KeepAlive),
        None
    );
}

#[test]
fn too_many_qos2_ids_waiting_for_pubrel_close_the_connection() {
    let mut s = session(Version::V5, meter("E1"));
    for pkid in 1..=3 {
        publish(&mut s, 2, pkid, "meters/E1/json");
        s.on_durable(&Durability::Durable(u64::from(pkid)));
    }
    assert!(s.can_read(), "answered: the receive maximum has room");
    assert_eq!(
        publish(&mut s, 2, 4, "meters/E1/json").close,
        Some(Close::Now(CloseReason::ReceiveMaximumExceeded))
    );
}

#[test]
fn an_idle_connection_task_stays_small() {
    // A task is allocated for its whole life at the size of its largest state, so the phases
    // of a connection are boxed and the session loop kept lean: the MQTT edge promises at
    // most 4 KB per idle connection (the kernel's socket aside). Its futures are held to a
    // budget here; the task header, the session's heap parts, the registry entry and the
    // socket's registration come on top (benches/RESULTS.md has the RSS measured).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let credentials =
            std::sync::Arc::new(crate::credentials::SharedCredentials::load(dir.path()).unwrap());
        let (tx, _rx) = crate::edge::channel(4);
        let config = super::MqttConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            listen_v5: None,
            ..Default::default()
        };
        let server = super::MqttServer::start(
            config,
            credentials,
            tx,
            meterflow_storage::ShutdownSignal::never(),
        )
        .await
        .unwrap();
        let plain = super::connection::sizes::plain_connection_task(
            server.edge.clone(),
            tokio::net::TcpStream::connect(addr).await.unwrap(),
        );
        let tls = super::connection::sizes::tls_connection_task(
            server.edge.clone(),
            tokio::net::TcpStream::connect(addr).await.unwrap(),
        );
        let session_loop = super::connection::sizes::run_future(
            &server.edge,
            tokio::net::TcpStream::connect(addr).await.unwrap(),
            session(Version::V4, meter("E1")),
        );
        eprintln!("futures: plain task {plain} bytes, TLS task {tls} bytes, session loop {session_loop} bytes");
        assert!(plain <= 160, "plain task: {plain} bytes");
        assert!(tls <= 160, "TLS task: {tls} bytes");
        assert!(session_loop <= 1408, "session loop: {session_loop} bytes");
    });
}

#[test]
fn a_listener_off_loopback_needs_a_way_to_authenticate() {
    let path = std::path::Path::new("data/credentials/credentials.csv");
    let mut config = super::MqttConfig::default();
    super::check_anonymous_rule(&config, true, path).unwrap();
    config.listen = "0.0.0.0:1883".parse().unwrap();
    let e = super::check_anonymous_rule(&config, true, path)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("mqtt.listen") && e.contains("meterflow credentials"),
        "{e}"
    );
    super::check_anonymous_rule(&config, false, path).unwrap();
    // Certificates identify devices on the TLS listener: a certificate-only fleet starts.
    let mut certs = super::MqttConfig {
        tls_listen: Some("0.0.0.0:8883".parse().unwrap()),
        tls_cert: Some("c.pem".into()),
        tls_key: Some("k.pem".into()),
        ..Default::default()
    };
    assert!(super::check_anonymous_rule(&certs, true, path).is_err());
    certs.tls_client_ca = Some("ca.pem".into());
    super::check_anonymous_rule(&certs, true, path).unwrap();
    config.allow_anonymous = true;
    super::check_anonymous_rule(&config, true, path).unwrap();
}
