//! One MQTT connection's protocol state, without I/O: packets in; packets to send, messages
//! for the WAL and a close decision out ([`Step`]). The socket loop in
//! [`super::connection`] is a thin shell around it, so every answer is unit-tested here.
//!
//! Delivery: a QoS 1 or 2 publish is handed to the WAL writer with a request to be told when
//! it is durable; its PUBACK (or PUBREC) is made only from that answer ([`Session::on_durable`]),
//! in the order the publishes came. QoS 0 goes to the WAL with no answer. A QoS 2 packet id
//! is stored once until its PUBREL, however often the client sends it again.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use rumqttd::protocol::{
    ConnAck, ConnAckProperties, Connect, ConnectReturnCode, Disconnect, DisconnectReasonCode,
    Login, Packet, PingResp, PubAck, PubAckReason, PubComp, PubCompReason, PubRec, PubRecReason,
    QoS, SubAck, SubscribeReasonCode, UnsubAck, UnsubAckReason,
};

use super::auth::Denial;
use super::codec::{Inbound, Version};
use crate::edge::Identity;
use crate::edge::{self, Durability};

/// The per-connection limits a session enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Publishes waiting for their answer at most; the connection is not read further until
    /// one is answered. Sent to MQTT 5 clients as Receive Maximum.
    pub receive_maximum: u16,
    /// Largest packet taken, bytes (MQTT 5: Maximum Packet Size).
    pub max_packet: usize,
    /// Longest keep-alive granted, seconds; a client asking for none or more gets this one
    /// (MQTT 5: Server Keep Alive; MQTT 3.1.1 clients are not told).
    pub max_keep_alive_s: u16,
}

/// Client ids longer than this are refused (MQTT 3.1.1 promises 23; meter ids are up to 64).
pub const MAX_CLIENT_ID: usize = 128;

/// Why a connection ends; the label of `meterflow_mqtt_closed_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent DISCONNECT or closed the socket.
    ClientDisconnect,
    ProtocolError,
    PacketTooLarge,
    /// No packet for 1.5 × the keep-alive.
    KeepAlive,
    /// MQTT 3.1.1: a publish outside the client's identity (§3.3.5: close the connection).
    Denied,
    /// MQTT 3.1.1: the WAL is at its disk budget (the publish is not acknowledged).
    WalFull,
    /// The WAL could not store a publish: closed unanswered, so the client sends it again.
    WalError,
    /// More QoS 2 publishes waiting for PUBREL than the receive maximum.
    ReceiveMaximumExceeded,
    TopicAliasInvalid,
    /// The same identity connected again with this client id.
    TakenOver,
    /// The credential was revoked or changed.
    Revoked,
    /// The identity opened more than `mqtt.max_sessions_per_identity` sessions: its oldest
    /// was closed.
    Evicted,
    ShuttingDown,
    /// Still draining when `pipeline.shutdown_max_ms` ran out.
    ShutdownTimeout,
    /// The client did not read its acknowledgements within `mqtt.write_timeout_ms`.
    WriteTimeout,
    /// Partial packets across all connections reached `mqtt.max_read_buffer_bytes`.
    ReadBufferBudget,
    /// A packet did not arrive whole within `mqtt.packet_timeout_ms`.
    PacketTimeout,
    /// A socket error.
    Io,
}

impl CloseReason {
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::ClientDisconnect => "client",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::PacketTooLarge => "packet_too_large",
            CloseReason::KeepAlive => "keep_alive",
            CloseReason::Denied => "denied",
            CloseReason::WalFull => "wal_full",
            CloseReason::WalError => "wal_error",
            CloseReason::ReceiveMaximumExceeded => "receive_maximum",
            CloseReason::TopicAliasInvalid => "topic_alias",
            CloseReason::TakenOver => "taken_over",
            CloseReason::Revoked => "revoked",
            CloseReason::Evicted => "sessions_per_identity",
            CloseReason::ShuttingDown => "shutdown",
            CloseReason::ShutdownTimeout => "shutdown_timeout",
            CloseReason::WriteTimeout => "write_timeout",
            CloseReason::ReadBufferBudget => "read_buffer_budget",
            CloseReason::PacketTimeout => "packet_timeout",
            CloseReason::Io => "io",
        }
    }

    /// The DISCONNECT an MQTT 5 client gets, if any.
    fn v5_code(self) -> Option<DisconnectReasonCode> {
        use DisconnectReasonCode as D;
        Some(match self {
            CloseReason::ClientDisconnect | CloseReason::Io => return None,
            CloseReason::ProtocolError => D::ProtocolError,
            CloseReason::PacketTooLarge => D::PacketTooLarge,
            CloseReason::KeepAlive => D::KeepAliveTimeout,
            CloseReason::Denied => D::NotAuthorized,
            CloseReason::WalFull => D::QuotaExceeded,
            CloseReason::WalError => D::UnspecifiedError,
            CloseReason::ReceiveMaximumExceeded => D::ReceiveMaximumExceeded,
            CloseReason::TopicAliasInvalid => D::TopicAliasInvalid,
            CloseReason::TakenOver | CloseReason::Evicted => D::SessionTakenOver,
            CloseReason::Revoked => D::AdministrativeAction,
            CloseReason::ShuttingDown | CloseReason::ShutdownTimeout => D::ServerShuttingDown,
            CloseReason::WriteTimeout
            | CloseReason::ReadBufferBudget
            | CloseReason::PacketTimeout => D::QuotaExceeded,
        })
    }

    /// The numbering of [`Kick`](super::registry::Kick)'s atomic.
    pub fn to_u8(self) -> u8 {
        self as u8
    }

    pub fn from_u8(n: u8) -> CloseReason {
        const ALL: [CloseReason; 18] = [
            CloseReason::ClientDisconnect,
            CloseReason::ProtocolError,
            CloseReason::PacketTooLarge,
            CloseReason::KeepAlive,
            CloseReason::Denied,
            CloseReason::WalFull,
            CloseReason::WalError,
            CloseReason::ReceiveMaximumExceeded,
            CloseReason::TopicAliasInvalid,
            CloseReason::TakenOver,
            CloseReason::Revoked,
            CloseReason::Evicted,
            CloseReason::ShuttingDown,
            CloseReason::ShutdownTimeout,
            CloseReason::WriteTimeout,
            CloseReason::ReadBufferBudget,
            CloseReason::PacketTimeout,
            CloseReason::Io,
        ];
        ALL.get(n as usize)
            .copied()
            .unwrap_or(CloseReason::ProtocolError)
    }
}

/// When the connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// Right after the step's packets are written.
    Now(CloseReason),
    /// Once every publish already read has its answer (nothing more is read).
    Drained(CloseReason),
}

/// A message for the WAL.
#[derive(Debug, Clone, PartialEq)]
pub struct Submit {
    pub topic: String,
    pub payload: Bytes,
    pub content_type: Option<String>,
    /// Set when the publish was refused (kept as an `unauthorized` dead letter), or when an
    /// identified device's topic routes nowhere (its `bad_topic` dead letter names the
    /// sender): see [`edge::EdgeNoteKind`].
    pub edge_note: Option<Box<edge::EdgeNote>>,
    /// The identity, when it published for another meter it may speak for (a gateway's
    /// message for one of its meters): the gateway is heard too.
    pub via: Option<Box<str>>,
    /// Whether the session waits for the WAL's answer ([`Session::on_durable`]).
    pub wait: bool,
}

/// What the session wants done after an event.
#[derive(Debug, Default, PartialEq)]
pub struct Step {
    pub packets: Vec<Packet>,
    pub submit: Option<Submit>,
    pub close: Option<Close>,
    /// `meterflow_mqtt_denied_total{reason}` to count.
    pub denied: Option<&'static str>,
}

impl Step {
    fn packet(packet: Packet) -> Step {
        Step {
            packets: vec![packet],
            ..Step::default()
        }
    }

    fn close(close: Close) -> Step {
        Step {
            close: Some(close),
            ..Step::default()
        }
    }
}

/// A publish waiting for the WAL.
#[derive(Debug, Clone, Copy)]
struct Awaiting {
    pkid: u16,
    qos: u8,
    /// Refused (MQTT 5): answered 0x87 once its dead letter is stored.
    refused: bool,
}

/// A CONNECT that parsed and passed the protocol checks, before authentication. Its `Debug`
/// leaves the password out.
pub struct ConnectRequest {
    pub version: Version,
    pub client_id: String,
    /// The server chose the client id (the client sent none).
    pub assigned_id: bool,
    pub login: Option<Login>,
    keep_alive_s: u16,
    session_expiry: Option<u32>,
}

impl std::fmt::Debug for ConnectRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectRequest")
            .field("version", &self.version)
            .field("client_id", &self.client_id)
            .field("username", &self.login.as_ref().map(|l| l.username.len()))
            .field("keep_alive_s", &self.keep_alive_s)
            .finish_non_exhaustive()
    }
}

impl ConnectRequest {
    /// Checks a CONNECT; the error says why it is refused ([`refusal`] makes its CONNACK).
    pub fn parse(
        version: Version,
        packet: Packet,
        conn_id: u64,
    ) -> Result<ConnectRequest, ConnectRefusal> {
        let Packet::Connect(connect, properties, _will, _will_props, login) = packet else {
            return Err(ConnectRefusal::Protocol);
        };
        let Connect {
            keep_alive,
            client_id,
            clean_session,
        } = connect;
        let properties = properties.as_ref();
        if properties.is_some_and(|p| p.authentication_method.is_some()) {
            return Err(ConnectRefusal::AuthMethod);
        }
        if client_id.len() > MAX_CLIENT_ID
            || (client_id.is_empty() && version == Version::V4 && !clean_session)
        {
            return Err(ConnectRefusal::ClientId);
        }
        let assigned_id = client_id.is_empty();
        let client_id = if assigned_id {
            format!("meterflow-{conn_id}")
        } else {
            client_id
        };
        Ok(ConnectRequest {
            version,
            client_id,
            assigned_id,
            login,
            keep_alive_s: keep_alive,
            session_expiry: properties.and_then(|p| p.session_expiry_interval),
        })
    }
}

/// Why a CONNECT is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectRefusal {
    Protocol,
    UnsupportedVersion,
    ClientId,
    AuthMethod,
    Denied(Denial),
    /// The client id is another device's meter id.
    NotAuthorized,
    /// The server is stopping.
    Unavailable,
    /// `mqtt.max_connections` connections are logged in.
    Busy,
}

impl ConnectRefusal {
    /// The `reason` label of `meterflow_mqtt_denied_total`.
    pub fn label(self) -> &'static str {
        match self {
            ConnectRefusal::Protocol => "protocol_error",
            ConnectRefusal::UnsupportedVersion => "protocol_version",
            ConnectRefusal::ClientId => "bad_client_id",
            ConnectRefusal::AuthMethod => "auth_method",
            ConnectRefusal::Denied(d) => d.label(),
            ConnectRefusal::NotAuthorized => "client_id",
            ConnectRefusal::Unavailable => "shutting_down",
            ConnectRefusal::Busy => "max_connections",
        }
    }
}

/// The CONNACK that refuses a connection.
pub fn refusal(version: Version, why: ConnectRefusal) -> Packet {
    use ConnectReturnCode as C;
    let code = match (version, why) {
        (Version::V4, ConnectRefusal::Protocol | ConnectRefusal::UnsupportedVersion) => {
            C::RefusedProtocolVersion
        }
        (Version::V4, ConnectRefusal::ClientId) => C::ClientIdentifierNotValid,
        (Version::V4, ConnectRefusal::AuthMethod) => C::NotAuthorized,
        // 3.1.1: "not authorized" for every identity refusal (as Mosquitto answers), so the
        // code does not tell a wrong secret from an unknown name.
        (Version::V4, ConnectRefusal::Denied(_) | ConnectRefusal::NotAuthorized) => {
            C::NotAuthorized
        }
        (Version::V4, ConnectRefusal::Unavailable | ConnectRefusal::Busy) => C::ServiceUnavailable,
        (Version::V5, ConnectRefusal::Protocol) => C::ProtocolError,
        (Version::V5, ConnectRefusal::UnsupportedVersion) => C::UnsupportedProtocolVersion,
        (Version::V5, ConnectRefusal::ClientId) => C::ClientIdentifierNotValid,
        (Version::V5, ConnectRefusal::AuthMethod) => C::BadAuthenticationMethod,
        (Version::V5, ConnectRefusal::Denied(Denial::NoCredentials | Denial::BadCertificate)) => {
            C::NotAuthorized
        }
        (Version::V5, ConnectRefusal::Denied(Denial::BadCredentials)) => C::BadUserNamePassword,
        (Version::V5, ConnectRefusal::NotAuthorized) => C::NotAuthorized,
        (Version::V5, ConnectRefusal::Unavailable) => C::ServerUnavailable,
        (Version::V5, ConnectRefusal::Busy) => C::ServerBusy,
    };
    Packet::ConnAck(
        ConnAck {
            session_present: false,
            code,
        },
        None,
    )
}

/// The protocol state of one connection after its CONNECT was accepted.
#[derive(Debug)]
pub struct Session {
    pub version: Version,
    pub client_id: Box<str>,
    pub identity: Identity,
    peer: SocketAddr,
    limits: Limits,
    /// The keep-alive the client must keep, seconds (never 0).
    keep_alive_s: u16,
    awaiting: VecDeque<Awaiting>,
    /// QoS 2 packet ids received and not yet released: (id, PUBREC sent).
    qos2: Vec<(u16, bool)>,
    cmd_subscribed: bool,
}

impl Session {
    /// A session for an accepted CONNECT, and its CONNACK.
    pub fn accept(
        request: ConnectRequest,
        identity: Identity,
        peer: SocketAddr,
        limits: Limits,
    ) -> (Session, Packet) {
        let asked = request.keep_alive_s;
        let keep_alive_s = if asked == 0 || asked > limits.max_keep_alive_s {
            limits.max_keep_alive_s.max(1)
        } else {
            asked
        };
        let properties = (request.version == Version::V5).then(|| ConnAckProperties {
            // No session state outlives the connection.
            session_expiry_interval: request.session_expiry.filter(|s| *s > 0).map(|_| 0),
            receive_max: Some(limits.receive_maximum),
            max_packet_size: Some(limits.max_packet.min(u32::MAX as usize) as u32),
            assigned_client_identifier: request.assigned_id.then(|| request.client_id.clone()),
            subscription_identifiers_available: Some(0),
            shared_subscription_available: Some(0),
            server_keep_alive: (keep_alive_s != asked).then_some(keep_alive_s),
            ..ConnAckProperties::default()
        });
        let connack = Packet::ConnAck(
            ConnAck {
                session_present: false,
                code: ConnectReturnCode::Success,
            },
            properties,
        );
        let session = Session {
            version: request.version,
            client_id: request.client_id.into(),
            identity,
            peer,
            limits,
            keep_alive_s,
            awaiting: VecDeque::new(),
            qos2: Vec::new(),
            cmd_subscribed: false,
        };
        (session, connack)
    }

    /// The connection is closed when no packet came for this long (1.5 × the keep-alive).
    pub fn keep_alive_deadline(&self) -> Duration {
        Duration::from_millis(u64::from(self.keep_alive_s) * 1500)
    }

    /// Publishes waiting for the WAL's answer.
    pub fn awaiting(&self) -> usize {
        self.awaiting.len()
    }

    /// Whether the next packet may be read: fewer than the receive maximum wait.
    pub fn can_read(&self) -> bool {
        self.awaiting.len() < usize::from(self.limits.receive_maximum)
    }

    /// The DISCONNECT packet an MQTT 5 client gets when the server closes for `reason`.
    pub fn disconnect(&self, reason: CloseReason) -> Option<Packet> {
        if self.version != Version::V5 {
            return None;
        }
        reason
            .v5_code()
            .map(|code| Packet::Disconnect(Disconnect { reason_code: code }, None))
    }

    /// Handles one packet from the client.
    pub fn on_packet(&mut self, inbound: Inbound) -> Step {
        match inbound.packet {
            Packet::Publish(publish, properties) => {
                let content_type = properties.as_ref().and_then(|p| p.content_type.clone());
                if properties.as_ref().is_some_and(|p| p.topic_alias.is_some()) {
                    return Step::close(Close::Now(CloseReason::TopicAliasInvalid));
                }
                self.on_publish(
                    inbound.qos,
                    inbound.pkid,
                    publish.topic,
                    publish.payload,
                    content_type,
                )
            }
            Packet::PubRel(rel, _) => {
                let known = self.qos2.iter().position(|(id, _)| *id == rel.pkid);
                if let Some(i) = known {
                    self.qos2.swap_remove(i);
                }
                let reason = if known.is_some() || self.version == Version::V4 {
                    PubCompReason::Success
                } else {
                    PubCompReason::PacketIdentifierNotFound
                };
                Step::packet(Packet::PubComp(
                    PubComp {
                        pkid: rel.pkid,
                        reason,
                    },
                    None,
                ))
            }
            Packet::Subscribe(subscribe, _) => {
                let mut refused = false;
                let return_codes = subscribe
                    .filters
                    .iter()
                    .map(|f| {
                        if self.identity.may_subscribe(&f.path) {
                            self.cmd_subscribed = true;
                            SubscribeReasonCode::Success(if f.qos == QoS::AtMostOnce {
                                QoS::AtMostOnce
                            } else {
                                QoS::AtLeastOnce
                            })
                        } else {
                            refused = true;
                            match self.version {
                                Version::V4 => SubscribeReasonCode::Failure,
                                Version::V5 => SubscribeReasonCode::NotAuthorized,
                            }
                        }
                    })
                    .collect();
                Step {
                    packets: vec![Packet::SubAck(
                        SubAck {
                            pkid: subscribe.pkid,
                            return_codes,
                        },
                        None,
                    )],
                    denied: refused.then_some("subscribe"),
                    ..Step::default()
                }
            }
            Packet::Unsubscribe(unsubscribe, _) => {
                let reasons = unsubscribe
                    .filters
                    .iter()
                    .map(|f| {
                        if self.cmd_subscribed && self.identity.may_subscribe(f) {
                            self.cmd_subscribed = false;
                            UnsubAckReason::Success
                        } else {
                            UnsubAckReason::NoSubscriptionExisted
                        }
                    })
                    .collect();
                Step::packet(Packet::UnsubAck(
                    UnsubAck {
                        pkid: unsubscribe.pkid,
                        reasons,
                    },
                    None,
                ))
            }
            Packet::PingReq(_) => Step::packet(Packet::PingResp(PingResp)),
            Packet::Disconnect(..) => Step::close(Close::Now(CloseReason::ClientDisconnect)),
            // A second CONNECT, or anything a client does not send.
            _ => Step::close(Close::Now(CloseReason::ProtocolError)),
        }
    }

    fn on_publish(
        &mut self,
        qos: u8,
        pkid: u16,
        topic: Bytes,
        payload: Bytes,
        content_type: Option<String>,
    ) -> Step {
        let Ok(topic) = String::from_utf8(topic.to_vec()) else {
            return Step::close(Close::Now(CloseReason::ProtocolError));
        };
        if topic.is_empty() || topic.contains(['+', '#']) {
            return Step::close(Close::Now(CloseReason::ProtocolError));
        }
        if qos == 2 {
            if let Some((_, answered)) = self.qos2.iter().find(|(id, _)| *id == pkid) {
                // Sent again before its PUBREL: stored once; answered again if it was.
                return match answered {
                    true => Step::packet(pubrec(pkid, PubRecReason::Success)),
                    false => Step::default(),
                };
            }
            if self.qos2.len() >= usize::from(self.limits.receive_maximum) {
                return Step::close(Close::Now(CloseReason::ReceiveMaximumExceeded));
            }
        }
        if self.identity.may_publish_to(&topic) {
            if qos > 0 {
                self.awaiting.push_back(Awaiting {
                    pkid,
                    qos,
                    refused: false,
                });
                if qos == 2 {
                    self.qos2.push((pkid, false));
                }
            }
            // Under its own meters/{id}/ but not meters/{meter_id}/{format} (a level more or
            // less, `..`, an unknown format): taken and acknowledged like any message the
            // pipeline cannot route (a `bad_topic` dead letter), with its sender, so that the
            // dead letter says who sent it. Anonymous devices have no one to name.
            let route = crate::pipeline::parse_topic(&topic);
            // A gateway's message for one of its meters: the gateway is heard too.
            let via = match (&self.identity, &route) {
                (Identity::Device { id, .. }, Ok(route)) if route.meter_id() != &**id => {
                    Some(id.clone())
                }
                _ => None,
            };
            let sender = match (&self.identity, route) {
                (Identity::Device { .. }, Err(reason)) => Some(Box::new(edge::EdgeNote {
                    kind: edge::EdgeNoteKind::BadTopic,
                    identity: self.identity.id().map(str::to_string),
                    client_id: Some(self.client_id.to_string()),
                    peer: self.peer.to_string(),
                    // It quotes the sender's topic: cut, so that it stays whole in the WAL.
                    reason: cut(&reason, 300).to_string(),
                })),
                _ => None,
            };
            return Step {
                submit: Some(Submit {
                    topic,
                    payload,
                    content_type,
                    edge_note: sender,
                    via,
                    wait: qos > 0,
                }),
                ..Step::default()
            };
        }
        // Not this identity's to publish: a dead letter with who and from where; MQTT 5 is
        // told 0x87 once the dead letter is stored, MQTT 3.1.1 is closed (§3.3.5).
        let refusal = edge::EdgeNote {
            kind: edge::EdgeNoteKind::Unauthorized,
            identity: self.identity.id().map(str::to_string),
            client_id: Some(self.client_id.to_string()),
            peer: self.peer.to_string(),
            // The topic is the sender's: cut, so that the refusal stays whole in the WAL.
            reason: format!("may not publish to {:?}", cut(&topic, 256)),
        };
        let answered = self.version == Version::V5 && qos > 0;
        if answered {
            self.awaiting.push_back(Awaiting {
                pkid,
                qos,
                refused: true,
            });
            if qos == 2 {
                // Sent again before its PUBREC: not kept twice (forgotten at the PUBREC).
                self.qos2.push((pkid, false));
            }
        }
        Step {
            submit: Some(Submit {
                topic,
                payload,
                content_type,
                edge_note: Some(Box::new(refusal)),
                via: None,
                wait: answered,
            }),
            close: (self.version == Version::V4).then_some(Close::Drained(CloseReason::Denied)),
            denied: Some("publish"),
            ..Step::default()
        }
    }

    /// The WAL's answer for the oldest publish waiting for one.
    pub fn on_durable(&mut self, outcome: &Durability) -> Step {
        let Some(front) = self.awaiting.pop_front() else {
            return Step::default();
        };
        let ok = match outcome {
            Durability::Durable(_) => true,
            Durability::WalFull if self.version == Version::V5 => false,
            Durability::WalFull => return Step::close(Close::Now(CloseReason::WalFull)),
            Durability::Failed => return Step::close(Close::Now(CloseReason::WalError)),
        };
        let packet = match (front.qos, front.refused, ok) {
            (1, false, true) => puback(front.pkid, PubAckReason::Success),
            (1, true, _) => puback(front.pkid, PubAckReason::NotAuthorized),
            (1, false, false) => puback(front.pkid, PubAckReason::QuotaExceeded),
            (_, false, true) => {
                if let Some(entry) = self.qos2.iter_mut().find(|(id, _)| *id == front.pkid) {
                    entry.1 = true;
                }
                pubrec(front.pkid, PubRecReason::Success)
            }
            (_, refused, _) => {
                // A PUBREC with an error ends the QoS 2 flow: forget the id.
                self.qos2.retain(|(id, _)| *id != front.pkid);
                let reason = if refused {
                    PubRecReason::NotAuthorized
                } else {
                    PubRecReason::QuotaExceeded
                };
                pubrec(front.pkid, reason)
            }
        };
        Step::packet(packet)
    }
}

/// At most `max` bytes of `text`, on a character boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn puback(pkid: u16, reason: PubAckReason) -> Packet {
    Packet::PubAck(PubAck { pkid, reason }, None)
}

fn pubrec(pkid: u16, reason: PubRecReason) -> Packet {
    Packet::PubRec(PubRec { pkid, reason }, None)
}
