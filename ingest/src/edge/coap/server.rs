//! The sans-IO CoAP server: datagrams in, answers out. It recognizes retransmissions
//! (the exchange cache), answers the requests that need no storage at once, hands the rest
//! to the WAL writer and answers them once durable ([`Server::complete`]), and keeps its
//! tables bounded ([`Server::housekeeping`]). The resources are in [`super::resources`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};

use super::block1::Assembler;
use super::exchanges::{Exchange, ExchangeCache, ExchangeKey, KeyMaker};
use super::message::{encode, request_type, reset, reset_for_malformed, uint_bytes, with_code};
use super::{lwm2m, CoapConfig};
use crate::credentials::SharedCredentials;
use crate::edge::{Durability, RawMessage, Submission};

/// What the server did, for the shutdown summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct CoapSummary {
    pub requests: u64,
    pub duplicates: u64,
}

/// How often expired LwM2M registrations are looked for.
const REGISTRY_SWEEP: Duration = Duration::from_secs(10);

/// Who sent a request.
#[derive(Debug, Clone)]
pub enum Caller {
    /// Plain CoAP where anonymous devices are served: may post for any meter.
    Anonymous,
    /// Plain CoAP where they are not: every request gets 4.01.
    Unauthenticated,
    /// A DTLS session: its PSK identity (a meter id) and its number.
    Device { identity: Arc<str>, session: u64 },
}

impl Caller {
    pub(super) fn identity(&self) -> Option<&str> {
        match self {
            Caller::Device { identity, .. } => Some(identity),
            _ => None,
        }
    }

    pub(super) fn session(&self) -> Option<u64> {
        match self {
            Caller::Device { session, .. } => Some(*session),
            _ => None,
        }
    }
}

/// An answer that waited for the WAL.
pub(super) struct Completion {
    key: ExchangeKey,
    pub(super) peer: SocketAddr,
    /// The DTLS session the request came in (its answer goes to that session only).
    pub(super) session: Option<u64>,
    reply: Packet,
    /// The code to answer once durable (2.04, or 4.00 for a payload that did not decode).
    code: ResponseType,
    diagnostic: Option<String>,
    outcome: Durability,
    received: Instant,
}

/// What a request leads to.
pub(super) enum Handling {
    /// Answer now.
    Reply(Packet),
    /// Store the message, then answer with `code`.
    Ingest {
        message: RawMessage,
        reply: Packet,
        code: ResponseType,
        diagnostic: Option<String>,
    },
}

pub(super) struct Server {
    pub(super) wal: flume::Sender<Submission>,
    done: tokio::sync::mpsc::Sender<Completion>,
    pub(super) credentials: Arc<SharedCredentials>,
    pub(super) exchanges: ExchangeCache,
    keys: KeyMaker,
    pub(super) blocks: Assembler,
    pub(super) registry: lwm2m::Registry,
    pub(super) max_payload_bytes: usize,
    max_inflight: usize,
    busy_max_age_s: u32,
    pub(super) inflight: usize,
    registry_swept: Instant,
    pub(super) stopping: bool,
    /// Message IDs of NON answers (they need their own).
    next_mid: u16,
    pub(super) summary: CoapSummary,
}

impl Server {
    pub(super) fn new(
        config: &CoapConfig,
        credentials: Arc<SharedCredentials>,
        wal: flume::Sender<Submission>,
        done: tokio::sync::mpsc::Sender<Completion>,
    ) -> Self {
        Server {
            wal,
            done,
            credentials,
            exchanges: ExchangeCache::new(config.exchange_cache_bytes()),
            keys: KeyMaker::default(),
            blocks: Assembler::new(
                config.max_payload_bytes,
                config.block_transfers,
                Duration::from_secs(config.block_timeout_s),
            ),
            registry: lwm2m::Registry::new(config.lwm2m_max_registrations),
            max_payload_bytes: config.max_payload_bytes,
            max_inflight: config.max_inflight,
            busy_max_age_s: config.busy_max_age_s,
            inflight: 0,
            registry_swept: Instant::now(),
            stopping: false,
            next_mid: std::process::id() as u16,
            summary: CoapSummary::default(),
        }
    }

    /// Handles one datagram; returns what to send back at once, if anything.
    pub(super) fn datagram(
        &mut self,
        bytes: &[u8],
        peer: SocketAddr,
        caller: &Caller,
        now: Instant,
    ) -> Option<Vec<u8>> {
        // RFC 7252 §3: a message of another version is silently ignored.
        if bytes.first().is_some_and(|b| b >> 6 != 1) {
            metrics::counter!("meterflow_coap_malformed_total").increment(1);
            return None;
        }
        let packet = match Packet::from_bytes(bytes) {
            Ok(p) => p,
            Err(_) => {
                metrics::counter!("meterflow_coap_malformed_total").increment(1);
                return reset_for_malformed(bytes);
            }
        };
        let confirmable = packet.header.get_type() == MessageType::Confirmable;
        match packet.header.code {
            MessageClass::Request(_) => {}
            // A CoAP ping, or anything else a server does not take: RST a CON, ignore the rest.
            _ => return confirmable.then(|| reset(packet.header.message_id)),
        }
        if !confirmable && packet.header.get_type() != MessageType::NonConfirmable {
            return None; // a request in an ACK or RST is malformed: ignore
        }
        if let Caller::Unauthenticated = caller {
            metrics::counter!("meterflow_coap_denied_total", "reason" => "unauthenticated")
                .increment(1);
            if crate::edge::note::log_allowed() {
                tracing::warn!(
                    %peer,
                    reason = "unauthenticated",
                    "CoAP request refused (4.01): plain CoAP serves devices only on loopback while the credential store is empty; devices use coap.dtls_listen"
                );
            }
            // No diagnostic: the answer is no larger than the (spoofable) request.
            let reply = self.reply_to(&packet);
            return Some(encode(&with_code(reply, ResponseType::Unauthorized, None)));
        }
        let message_id = packet.header.message_id;
        let key = match caller {
            Caller::Device { identity, .. } => self.keys.identity(identity, message_id, bytes),
            _ => self.keys.peer(peer, message_id, bytes),
        };
        match self.exchanges.get(&key, now) {
            Some(Exchange::Answered(answer)) => {
                self.summary.duplicates += 1;
                metrics::counter!("meterflow_coap_duplicates_total").increment(1);
                return Some(answer);
            }
            Some(Exchange::InFlight) => {
                self.summary.duplicates += 1;
                metrics::counter!("meterflow_coap_duplicates_total").increment(1);
                return None; // the answer follows when the WAL has it
            }
            None => {}
        }
        self.summary.requests += 1;
        let reply = self.reply_to(&packet);
        let outcome = if self.stopping {
            Handling::Reply(self.busy(reply, "meterflow is shutting down"))
        } else {
            self.request(&packet, peer, caller, reply, now)
        };
        match outcome {
            Handling::Reply(reply) => {
                let bytes = encode(&reply);
                // A safe request (GET) is simply answered again; the rest is remembered where
                // there is room (a repeated 4.xx or registration is harmless where there is not).
                let busy =
                    reply.header.code == MessageClass::Response(ResponseType::ServiceUnavailable);
                if request_type(&packet) != RequestType::Get && !busy {
                    let _ = self
                        .exchanges
                        .insert(key, Exchange::Answered(bytes.clone()), now);
                }
                Some(bytes)
            }
            Handling::Ingest {
                message,
                reply,
                code,
                diagnostic,
            } => self.submit(
                key,
                peer,
                caller.session(),
                message,
                reply,
                code,
                diagnostic,
                now,
            ),
        }
    }

    /// Hands a message to the WAL writer and arranges for the answer when it is durable.
    #[allow(clippy::too_many_arguments)]
    fn submit(
        &mut self,
        key: ExchangeKey,
        peer: SocketAddr,
        session: Option<u64>,
        message: RawMessage,
        reply: Packet,
        code: ResponseType,
        diagnostic: Option<String>,
        now: Instant,
    ) -> Option<Vec<u8>> {
        // Taken or refused, the exchange is remembered from here on, so that a retransmission
        // gets this answer; if there is no room to remember it, it is not taken.
        if self.inflight >= self.max_inflight {
            metrics::counter!("meterflow_coap_busy_total", "why" => "inflight").increment(1);
            return self.refuse(key, reply, "too many requests waiting to be stored");
        }
        if !self.exchanges.insert(key, Exchange::InFlight, now) {
            metrics::counter!("meterflow_coap_busy_total", "why" => "exchanges").increment(1);
            // Not remembered: answered, but nothing stored.
            return Some(encode(&self.busy(reply, "too many exchanges to remember")));
        }
        let (notify, told) = tokio::sync::oneshot::channel();
        match self.wal.try_send(Submission {
            message,
            notify: Some(notify),
            budget: None,
        }) {
            Ok(()) => {}
            Err(flume::TrySendError::Full(_)) => {
                metrics::counter!("meterflow_coap_busy_total", "why" => "wal_queue").increment(1);
                return self.refuse(key, reply, "the write-ahead log is busy");
            }
            Err(flume::TrySendError::Disconnected(_)) => {
                return self.refuse(key, reply, "meterflow is shutting down");
            }
        }
        metrics::counter!("meterflow_received_total", "source" => "coap").increment(1);
        self.inflight += 1;
        metrics::gauge!("meterflow_coap_inflight").set(self.inflight as f64);
        let done = self.done.clone();
        tokio::spawn(async move {
            let outcome = told.await.unwrap_or(Durability::Failed);
            let _ = done
                .send(Completion {
                    key,
                    peer,
                    session,
                    reply,
                    code,
                    diagnostic,
                    outcome,
                    received: now,
                })
                .await;
        });
        None
    }

    /// Answers 5.03. Nothing was stored, so the exchange is forgotten: a retransmission is
    /// a new attempt, and a 5.03 costs no memory in a flood.
    fn refuse(&mut self, key: ExchangeKey, reply: Packet, why: &str) -> Option<Vec<u8>> {
        self.exchanges.remove(&key);
        Some(encode(&self.busy(reply, why)))
    }

    /// The answer to a request that waited for the WAL.
    pub(super) fn complete(&mut self, done: Completion, now: Instant) -> Vec<u8> {
        self.inflight -= 1;
        metrics::gauge!("meterflow_coap_inflight").set(self.inflight as f64);
        metrics::histogram!("meterflow_coap_ack_seconds")
            .record(now.duration_since(done.received).as_secs_f64());
        let reply = match done.outcome {
            Durability::Durable(_) => with_code(done.reply, done.code, done.diagnostic.as_deref()),
            Durability::WalFull => {
                metrics::counter!("meterflow_coap_busy_total", "why" => "wal_full").increment(1);
                self.exchanges.remove(&done.key);
                return encode(&self.busy(done.reply, "the write-ahead log is at its disk budget"));
            }
            Durability::Failed => {
                self.exchanges.remove(&done.key);
                return encode(&self.busy(done.reply, "the message could not be stored"));
            }
        };
        let bytes = encode(&reply);
        self.exchanges.answer(&done.key, &bytes);
        bytes
    }

    pub(super) fn housekeeping(&mut self, now: Instant) {
        self.exchanges.expire(now);
        self.blocks.expire(now);
        // A full scan: not on every tick.
        if now.duration_since(self.registry_swept) >= REGISTRY_SWEEP {
            self.registry.expire(now);
            self.registry_swept = now;
        }
        metrics::gauge!("meterflow_coap_exchanges").set(self.exchanges.len() as f64);
        metrics::gauge!("meterflow_coap_exchange_bytes").set(self.exchanges.bytes() as f64);
        metrics::gauge!("meterflow_coap_block_transfers").set(self.blocks.len() as f64);
        metrics::gauge!("meterflow_coap_block_bytes").set(self.blocks.buffered_bytes() as f64);
        metrics::gauge!("meterflow_lwm2m_registrations").set(self.registry.len() as f64);
    }

    /// The answer's frame: piggybacked ACK for a CON, a NON (with its own ID) for a NON.
    fn reply_to(&mut self, request: &Packet) -> Packet {
        let mut reply = Packet::new();
        reply.header.set_version(1);
        if request.header.get_type() == MessageType::Confirmable {
            reply.header.set_type(MessageType::Acknowledgement);
            reply.header.message_id = request.header.message_id;
        } else {
            reply.header.set_type(MessageType::NonConfirmable);
            self.next_mid = self.next_mid.wrapping_add(1);
            reply.header.message_id = self.next_mid;
        }
        reply.set_token(request.get_token().to_vec());
        reply
    }

    pub(super) fn busy(&self, mut reply: Packet, why: &str) -> Packet {
        reply.add_option(
            CoapOption::MaxAge,
            uint_bytes(u64::from(self.busy_max_age_s)),
        );
        with_code(reply, ResponseType::ServiceUnavailable, Some(why))
    }

    pub(super) fn too_large(&self, mut reply: Packet, limit: usize) -> Handling {
        reply.add_option(CoapOption::Size1, uint_bytes(limit as u64));
        Handling::Reply(with_code(
            reply,
            ResponseType::RequestEntityTooLarge,
            Some(&format!("the body may be at most {limit} bytes")),
        ))
    }
}

/// The fuzz target's way in (`fuzz/fuzz_targets/coap_datagram.rs`): datagrams from a few
/// peers, each `[u16 little-endian length][bytes]`, through [`Server::datagram`] as the
/// socket loop feeds it, with the WAL writer's answers (durable, full, failed) in between and
/// the housekeeping run. Not an API.
#[doc(hidden)]
pub fn fuzz_datagrams(data: &[u8]) {
    thread_local! {
        static RUNTIME: Option<tokio::runtime::Runtime> =
            tokio::runtime::Builder::new_current_thread().build().ok();
    }
    RUNTIME.with(|runtime| {
        if let Some(runtime) = runtime {
            runtime.block_on(fuzz_datagrams_on_runtime(data));
        }
    });
}

async fn fuzz_datagrams_on_runtime(data: &[u8]) {
    {
        let config = CoapConfig {
            exchange_cache_bytes: 1 << 20,
            block_transfers: 8,
            lwm2m_max_registrations: 8,
            max_inflight: 16,
            ..CoapConfig::default()
        };
        let (wal, wal_rx) = crate::edge::channel(8);
        let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<Completion>(16);
        let credentials = Arc::new(SharedCredentials::in_memory(Default::default()));
        let mut server = Server::new(&config, credentials, wal, done_tx);
        let start = Instant::now();
        let mut rest = data;
        let mut i: u64 = 0;
        while let [a, b, tail @ ..] = rest {
            let len = usize::from(u16::from_le_bytes([*a, *b])).min(tail.len());
            let (datagram, tail) = tail.split_at(len);
            rest = tail;
            i += 1;
            let peer = SocketAddr::from(([10, 0, 0, (i % 3) as u8 + 1], 5683));
            let now = start + Duration::from_secs(i * 7);
            let _ = server.datagram(datagram, peer, &Caller::Anonymous, now);
            // The WAL writer: every third submission fails one way or another.
            while let Ok(submission) = wal_rx.try_recv() {
                if let Some(notify) = submission.notify {
                    let outcome = match i % 3 {
                        0 => Durability::Durable(i),
                        1 => Durability::WalFull,
                        _ => Durability::Failed,
                    };
                    let _ = notify.send(outcome);
                }
            }
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
            while let Ok(done) = done_rx.try_recv() {
                let _ = server.complete(done, now);
            }
            server.housekeeping(now);
        }
    }
}
