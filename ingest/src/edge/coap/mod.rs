//! The CoAP endpoint (RFC 7252 over UDP; coap-lite parses and builds the messages): the way in
//! for NB-IoT and LTE-M meters, with the same WAL and delivery promise as MQTT.
//!
//! - `POST /r/{meter_id}` takes a report in the format its Content-Format names
//!   ([`Format::from_coap_content_format`]); `POST /rd`, `POST /rd/{id}`, `DELETE /rd/{id}` and
//!   `POST /dp` are LwM2M 1.1 registration and Send ([`lwm2m`]); `GET /.well-known/core` lists
//!   the resources.
//! - A report is decoded once here to choose the answer, then submitted to the WAL writer with
//!   its raw bytes; the answer (piggybacked on the ACK of a CON) goes out only when the writer
//!   says the message is durable: 2.04, or 4.00 with a diagnostic payload when it did not
//!   decode (the pipeline makes it a dead letter). A full WAL writer queue, a WAL at its
//!   budget, or too many requests waiting for it: 5.03 with Max-Age, so devices back off.
//! - Every answer is kept per peer and message ID for EXCHANGE_LIFETIME ([`exchanges`]): a
//!   retransmission gets the same answer and is never ingested twice.
//! - Block1 bodies are reassembled with bounds ([`block1`]).
//!
//! One task owns all state; answers that wait for the WAL come back to it on a channel. Every
//! table is bounded (exchanges, block transfers, registrations, requests in flight), so a flood
//! of datagrams from many addresses cannot grow the process without limit.

pub mod block1;
pub mod dtls;
pub mod exchanges;
pub mod lwm2m;

use meterflow_storage::ShutdownSignal;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use meterflow_decoders::{decode, DecodeContext};
use meterflow_proto::{is_valid_meter_id, Format, Source};
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;

use crate::edge::{policy, RawMessage, Refusal};
use crate::edge::{Durability, Submission};
use crate::IngestError;
use block1::{Assembler, Block, BlockRefusal, Next};
use exchanges::{Exchange, ExchangeCache, ExchangeKey, KeyMaker};
use meterflow_proto::now_ms;

use crate::credentials::SharedCredentials;

/// The CoAP server's settings (`[coap]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoapConfig {
    /// UDP listener for plain CoAP and LwM2M. Leave out to turn it off. Plain CoAP carries no
    /// identity: it serves anonymous devices only (see `allow_anonymous`).
    pub listen: Option<SocketAddr>,
    /// UDP listener for CoAP over DTLS 1.2 with pre-shared keys (coaps; 5684 is the usual
    /// port): PSK identity = meter id, key = the secret's bytes from the credential store.
    pub dtls_listen: Option<SocketAddr>,
    /// Serve devices without credentials on the plain listener, for any meter, even when the
    /// credential store has entries (warned at start-up). Without it, plain CoAP is served only
    /// while the store is empty and only on a loopback listener; otherwise it answers 4.01.
    pub allow_anonymous: bool,
    /// Largest request body, bytes, also when it arrives in Block1 blocks (4.13 past it).
    pub max_payload_bytes: usize,
    /// Requests waiting for the WAL at most; past that the answer is 5.03.
    pub max_inflight: usize,
    /// Memory for duplicate detection, bytes, per listener: every answer is kept per peer and
    /// message ID for 247 s (EXCHANGE_LIFETIME), about 55 to 70 bytes each. Sustained rate it holds:
    /// about bytes / 70 / 160 requests per second (the default: 48k/s); past it, 5.03.
    pub exchange_cache_bytes: usize,
    /// Replaced by `exchange_cache_bytes`; still read (as that many times 64 bytes), with a
    /// warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exchange_cache_entries: Option<usize>,
    /// Block1 bodies being assembled at once at most (each at most `max_payload_bytes`).
    pub block_transfers: usize,
    /// A Block1 transfer nobody continues for this long is dropped.
    pub block_timeout_s: u64,
    /// Max-Age of a 5.03 answer: how long a device should wait before trying again.
    pub busy_max_age_s: u32,
    /// The UDP socket's receive buffer (SO_RCVBUF), bytes: datagrams arriving while the
    /// server is busy wait here; when it is full the kernel drops them and devices must
    /// retransmit (seconds later). Linux caps it at `net.core.rmem_max`.
    pub socket_buffer_bytes: usize,
    /// LwM2M registrations kept at most.
    pub lwm2m_max_registrations: usize,
    /// DTLS sessions at most, handshakes included (past it a new ClientHello is dropped).
    pub dtls_max_sessions: usize,
    /// DTLS sessions from one IP address at most (meters behind one carrier NAT share it).
    pub dtls_max_sessions_per_address: usize,
    /// A DTLS handshake not done within this many seconds is dropped.
    pub dtls_handshake_timeout_s: u64,
    /// A DTLS session nothing arrived on for this many seconds is closed; the device
    /// handshakes again for its next report.
    pub dtls_idle_timeout_s: u64,
}

impl CoapConfig {
    /// Checks what the types alone do not; the error names the key.
    pub fn validate(&self) -> Result<(), IngestError> {
        for (key, value) in [
            ("coap.max_payload_bytes", self.max_payload_bytes),
            ("coap.max_inflight", self.max_inflight),
            ("coap.block_transfers", self.block_transfers),
            ("coap.socket_buffer_bytes", self.socket_buffer_bytes),
            ("coap.lwm2m_max_registrations", self.lwm2m_max_registrations),
            ("coap.dtls_max_sessions", self.dtls_max_sessions),
            (
                "coap.dtls_max_sessions_per_address",
                self.dtls_max_sessions_per_address,
            ),
        ] {
            crate::error::positive(key, value as u64)?;
        }
        if let Some(entries) = self.exchange_cache_entries {
            crate::error::positive("coap.exchange_cache_entries", entries as u64)?;
        }
        if self.exchange_cache_bytes < MIN_EXCHANGE_CACHE_BYTES {
            return Err(IngestError::config(
                "coap.exchange_cache_bytes",
                format!("must be at least {MIN_EXCHANGE_CACHE_BYTES} (1 MiB)"),
            ));
        }
        if let (Some(plain), Some(dtls)) = (self.listen, self.dtls_listen) {
            if plain == dtls {
                return Err(IngestError::config(
                    "coap.dtls_listen",
                    format!("{dtls} is coap.listen too: give DTLS its own port (5684 is usual)"),
                ));
            }
        }
        crate::error::positive("coap.block_timeout_s", self.block_timeout_s)?;
        crate::error::positive(
            "coap.dtls_handshake_timeout_s",
            self.dtls_handshake_timeout_s,
        )?;
        crate::error::positive("coap.dtls_idle_timeout_s", self.dtls_idle_timeout_s)
    }

    /// The duplicate-detection bound in effect (the old entry count, where given, converted).
    pub fn exchange_cache_bytes(&self) -> usize {
        match self.exchange_cache_entries {
            Some(entries) => entries.saturating_mul(64).max(MIN_EXCHANGE_CACHE_BYTES),
            None => self.exchange_cache_bytes,
        }
    }

    fn dtls_limits(&self) -> dtls::Limits {
        dtls::Limits {
            max_sessions: self.dtls_max_sessions,
            max_per_address: self.dtls_max_sessions_per_address,
            handshake_timeout: Duration::from_secs(self.dtls_handshake_timeout_s),
            idle_timeout: Duration::from_secs(self.dtls_idle_timeout_s),
        }
    }
}

/// The smallest `coap.exchange_cache_bytes` taken.
const MIN_EXCHANGE_CACHE_BYTES: usize = 1 << 20;

impl Default for CoapConfig {
    fn default() -> Self {
        CoapConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 5683))),
            dtls_listen: None,
            allow_anonymous: false,
            max_payload_bytes: 64 * 1024,
            max_inflight: 4096,
            exchange_cache_bytes: 512 << 20,
            exchange_cache_entries: None,
            block_transfers: 1024,
            block_timeout_s: 120,
            busy_max_age_s: 10,
            socket_buffer_bytes: 4 * 1024 * 1024,
            lwm2m_max_registrations: 200_000,
            dtls_max_sessions: 100_000,
            dtls_max_sessions_per_address: 1024,
            dtls_handshake_timeout_s: 30,
            dtls_idle_timeout_s: 600,
        }
    }
}

/// Start-up check, as for MQTT: plain CoAP carries no identity, so a plain listener reachable
/// from the network serves nobody unless anonymous devices are allowed. With an empty store
/// that is a mistake to stop on; with credentials it answers 4.01 (warned).
pub fn check_anonymous_rule(
    config: &CoapConfig,
    store_empty: bool,
    store_path: &std::path::Path,
) -> Result<(), IngestError> {
    if config.allow_anonymous {
        if config.listen.is_some() {
            tracing::warn!("coap.allow_anonymous = true: devices without credentials may post for any meter on the plain CoAP listener");
        }
        return Ok(());
    }
    let Some(addr) = config.listen else {
        return Ok(());
    };
    if addr.ip().is_loopback() {
        return Ok(());
    }
    if store_empty {
        return Err(IngestError::config(
            "coap.listen",
            format!(
                "{addr} is reachable from the network but plain CoAP carries no identity and the credential store ({}) is empty. \
                 Add device credentials (`meterflow credentials import FILE.csv`) and serve devices on coap.dtls_listen (coaps, PSK), \
                 or listen on 127.0.0.1. (coap.allow_anonymous = true would let anyone post for any meter.)",
                store_path.display()
            ),
        ));
    }
    tracing::warn!(%addr, "coap.listen: plain CoAP answers 4.01 to every device while the credential store has entries; devices use coap.dtls_listen");
    Ok(())
}

/// What the server did, for the shutdown summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct CoapSummary {
    pub requests: u64,
    pub duplicates: u64,
}

/// Binds the UDP socket (before the server starts, so a port in use stops start-up), with
/// the receive buffer asked for.
pub fn bind(addr: SocketAddr, buffer_bytes: usize) -> Result<UdpSocket, IngestError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind_error = |source| IngestError::Bind {
        what: "CoAP",
        addr,
        source,
    };
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(bind_error)?;
    for (what, result) in [
        ("receive", socket.set_recv_buffer_size(buffer_bytes)),
        ("send", socket.set_send_buffer_size(buffer_bytes)),
    ] {
        if let Err(e) = result {
            tracing::warn!(error = %e, buffer_bytes, "CoAP: cannot set the UDP {what} buffer");
        }
    }
    // Linux reports twice what it grants (the other half is its bookkeeping).
    let granted = socket.recv_buffer_size().unwrap_or(0) / 2;
    if granted < buffer_bytes {
        tracing::warn!(
            asked = buffer_bytes,
            granted,
            "CoAP: the UDP receive buffer is smaller than coap.socket_buffer_bytes; raise net.core.rmem_max"
        );
    }
    socket.set_nonblocking(true).map_err(bind_error)?;
    socket.bind(&addr.into()).map_err(bind_error)?;
    UdpSocket::from_std(socket.into()).map_err(bind_error)
}

/// How often the tables are swept and the stop flag is looked at.
const TICK: Duration = Duration::from_millis(200);
/// How often expired LwM2M registrations are looked for.
const REGISTRY_SWEEP: Duration = Duration::from_secs(10);
/// Longest diagnostic payload, bytes (answers must fit a datagram).
const MAX_DIAGNOSTIC: usize = 400;
/// Content-Format of link-format (RFC 6690), for `/.well-known/core`.
const LINK_FORMAT: u16 = 40;

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
    fn identity(&self) -> Option<&str> {
        match self {
            Caller::Device { identity, .. } => Some(identity),
            _ => None,
        }
    }

    fn session(&self) -> Option<u64> {
        match self {
            Caller::Device { session, .. } => Some(*session),
            _ => None,
        }
    }
}

/// What a listener speaks.
pub enum Security {
    /// Plain CoAP; `loopback` when the listener is on a loopback address.
    Plain { loopback: bool },
    /// CoAP over DTLS with pre-shared keys.
    Dtls(Box<dtls::Sessions>),
}

impl Security {
    /// DTLS sessions for the listener `socket` is bound to.
    pub fn dtls(
        socket: &UdpSocket,
        config: &CoapConfig,
        credentials: Arc<SharedCredentials>,
    ) -> Result<Security, IngestError> {
        let local = socket
            .local_addr()
            .map_err(|e| IngestError::Runtime(format!("coaps: {e}")))?;
        Ok(Security::Dtls(Box::new(dtls::Sessions::new(
            local,
            config.dtls_limits(),
            credentials,
        )?)))
    }
}

/// Runs one listener until the shutdown begins and every request in flight has been
/// answered (new requests meanwhile get 5.03).
pub async fn serve(
    socket: UdpSocket,
    mut security: Security,
    config: CoapConfig,
    credentials: Arc<SharedCredentials>,
    wal: flume::Sender<Submission>,
    mut shutdown: ShutdownSignal,
) -> CoapSummary {
    let socket = Arc::new(socket);
    let (done_tx, mut done_rx) =
        tokio::sync::mpsc::channel::<Completion>(config.max_inflight.max(1));
    let mut server = Server::new(&config, credentials.clone(), wal, done_tx);
    let mut buf = vec![0u8; 65_536];
    let mut tick = tokio::time::interval(TICK);
    // Whether plain requests are served anonymously: looked at once per tick, not per
    // datagram (the store is re-read at most once a second).
    let loopback = matches!(security, Security::Plain { loopback: true });
    let anonymous_ok = || {
        policy::anonymous_allowed(
            config.allow_anonymous,
            loopback,
            credentials.current().is_empty(),
        )
    };
    let mut plain_caller = if anonymous_ok() {
        Caller::Anonymous
    } else {
        Caller::Unauthenticated
    };
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok((len, peer)) => {
                    let now = Instant::now();
                    match &mut security {
                        Security::Plain { .. } => {
                            if let Some(reply) = server.datagram(&buf[..len], peer, &plain_caller, now) {
                                send(&socket, &reply, peer).await;
                            }
                        }
                        Security::Dtls(sessions) => {
                            if let Some(received) = sessions.receive(&buf[..len], peer, now) {
                                let session = received.session;
                                let caller = Caller::Device { identity: received.identity, session };
                                for message in received.messages {
                                    if let Some(reply) = server.datagram(&message, peer, &caller, now) {
                                        sessions.send(peer, session, &reply, now);
                                    }
                                }
                            }
                            flush(&socket, sessions).await;
                        }
                    }
                }
                // An ICMP error for an earlier answer (the peer went away) surfaces here.
                Err(e) => tracing::debug!(error = %e, "CoAP receive"),
            },
            Some(done) = done_rx.recv() => {
                let (peer, session) = (done.peer, done.session);
                let now = Instant::now();
                let reply = server.complete(done, now);
                match &mut security {
                    Security::Plain { .. } => send(&socket, &reply, peer).await,
                    Security::Dtls(sessions) => {
                        // A session gone meanwhile: the device asks again in a new one and
                        // gets this answer from the exchange cache (keyed by identity).
                        if let Some(session) = session {
                            sessions.send(peer, session, &reply, now);
                        }
                        flush(&socket, sessions).await;
                    }
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                server.housekeeping(now);
                plain_caller = if anonymous_ok() { Caller::Anonymous } else { Caller::Unauthenticated };
                if let Security::Dtls(sessions) = &mut security {
                    sessions.housekeeping(now);
                    flush(&socket, sessions).await;
                }
            }
            _ = shutdown.stopping(), if !server.stopping => {
                tracing::info!(in_flight = server.inflight, "CoAP: refusing new requests with 5.03, answering those in flight");
                server.stopping = true;
            }
        }
        if server.stopping && server.inflight == 0 {
            break;
        }
    }
    server.summary
}

async fn send(socket: &UdpSocket, bytes: &[u8], peer: SocketAddr) {
    if let Err(e) = socket.send_to(bytes, peer).await {
        tracing::debug!(error = %e, %peer, "CoAP send");
    }
}

/// Sends what the DTLS sessions have queued.
async fn flush(socket: &UdpSocket, sessions: &mut dtls::Sessions) {
    let out: Vec<(SocketAddr, bytes::BytesMut)> = sessions.transmits().collect();
    for (peer, datagram) in out {
        send(socket, &datagram, peer).await;
    }
}

/// An answer that waited for the WAL.
struct Completion {
    key: ExchangeKey,
    peer: SocketAddr,
    /// The DTLS session the request came in (its answer goes to that session only).
    session: Option<u64>,
    reply: Packet,
    /// The code to answer once durable (2.04, or 4.00 for a payload that did not decode).
    code: ResponseType,
    diagnostic: Option<String>,
    outcome: Durability,
    received: Instant,
}

/// What a request leads to.
enum Handling {
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

struct Server {
    wal: flume::Sender<Submission>,
    done: tokio::sync::mpsc::Sender<Completion>,
    credentials: Arc<SharedCredentials>,
    exchanges: ExchangeCache,
    keys: KeyMaker,
    blocks: Assembler,
    registry: lwm2m::Registry,
    max_payload_bytes: usize,
    max_inflight: usize,
    busy_max_age_s: u32,
    inflight: usize,
    registry_swept: Instant,
    stopping: bool,
    /// Message IDs of NON answers (they need their own).
    next_mid: u16,
    summary: CoapSummary,
}

impl Server {
    fn new(
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
    fn datagram(
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
            // No diagnostic: the answer is no larger than the (spoofable) request.
            let reply = self.reply_to(&packet);
            return Some(encode(&with_code(reply, ResponseType::Unauthorized, None)));
        }
        let key = match caller {
            Caller::Device { identity, .. } => {
                self.keys.identity(identity, packet.header.message_id)
            }
            _ => self.keys.peer(peer, packet.header.message_id),
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
    fn complete(&mut self, done: Completion, now: Instant) -> Vec<u8> {
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

    fn housekeeping(&mut self, now: Instant) {
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

    fn busy(&self, mut reply: Packet, why: &str) -> Packet {
        reply.add_option(
            CoapOption::MaxAge,
            uint_bytes(u64::from(self.busy_max_age_s)),
        );
        with_code(reply, ResponseType::ServiceUnavailable, Some(why))
    }

    fn request(
        &mut self,
        packet: &Packet,
        peer: SocketAddr,
        caller: &Caller,
        mut reply: Packet,
        now: Instant,
    ) -> Handling {
        let fail = |reply: Packet, code: ResponseType, why: &str| {
            Handling::Reply(with_code(reply, code, Some(why)))
        };
        if packet.get_option(CoapOption::ProxyUri).is_some()
            || packet.get_option(CoapOption::ProxyScheme).is_some()
        {
            return fail(
                reply,
                ResponseType::ProxyingNotSupported,
                "this is not a proxy",
            );
        }
        if let Some(problem) = unsupported_critical_option(packet) {
            return fail(reply, ResponseType::BadOption, &problem);
        }
        let (Some(path), Some(queries)) = (
            strings(packet, CoapOption::UriPath),
            strings(packet, CoapOption::UriQuery),
        ) else {
            return fail(
                reply,
                ResponseType::BadRequest,
                "Uri-Path and Uri-Query must be UTF-8",
            );
        };
        let RequestType::Post = request_type(packet) else {
            return self.other_method(packet, &path, peer, caller, reply);
        };
        let mut body: Cow<'_, [u8]> = Cow::Borrowed(&packet.payload);
        let mut first_block_format = None;
        if let Some(option) = packet.get_first_option(CoapOption::Block1) {
            let Some(block) = Block::parse(option) else {
                return fail(
                    reply,
                    ResponseType::BadOption,
                    "Block1 is longer than 3 bytes",
                );
            };
            let uri = format!("{}?{}", path.join("/"), queries.join("&"));
            let size1 = packet.get_first_option(CoapOption::Size1).map(|v| uint(v));
            let format = packet
                .get_first_option(CoapOption::ContentFormat)
                .map(|v| uint(v));
            match self
                .blocks
                .block(peer, &uri, block, &packet.payload, size1, format, now)
            {
                Next::Continue(block) => {
                    reply.add_option(CoapOption::Block1, block.to_bytes());
                    return Handling::Reply(with_code(reply, ResponseType::Continue, None));
                }
                Next::Complete(whole, block, format) => {
                    reply.add_option(CoapOption::Block1, block.to_bytes());
                    body = Cow::Owned(whole);
                    // A client may state the Content-Format with the first block only.
                    first_block_format = format;
                }
                Next::Refuse(BlockRefusal::TooLarge { limit }) => {
                    return self.too_large(reply, limit)
                }
                Next::Refuse(BlockRefusal::Incomplete(why)) => {
                    return fail(reply, ResponseType::RequestEntityIncomplete, why)
                }
                Next::Refuse(BlockRefusal::BadBlock(why)) => {
                    return fail(reply, ResponseType::BadRequest, why)
                }
                Next::Refuse(BlockRefusal::Busy) => {
                    metrics::counter!("meterflow_coap_busy_total", "why" => "block_transfers")
                        .increment(1);
                    return Handling::Reply(self.busy(reply, "too many block transfers under way"));
                }
            }
        } else if body.len() > self.max_payload_bytes {
            return self.too_large(reply, self.max_payload_bytes);
        }
        let content_format = packet
            .get_first_option(CoapOption::ContentFormat)
            .map(|v| uint(v))
            .or(first_block_format);
        match path.as_slice() {
            ["r", meter_id] => self.report(
                meter_id,
                content_format,
                body.into_owned(),
                peer,
                caller,
                reply,
            ),
            ["rd"] => self.register(&queries, body.into_owned(), peer, caller, reply, now),
            ["rd", id] => {
                let params = match lwm2m::Params::parse(&queries) {
                    Ok(p) => p,
                    Err(why) => return fail(reply, ResponseType::BadRequest, &why),
                };
                if let Some(refusal) = self.not_owner(id, caller, peer, &body, &reply) {
                    return refusal;
                }
                let objects = (!body.is_empty()).then(|| String::from_utf8_lossy(&body));
                if self.registry.update(
                    id,
                    &params,
                    objects.as_deref(),
                    peer,
                    caller.session(),
                    now,
                ) {
                    if let Some(meter_id) = self.registry.get(id).map(|r| r.meter_id.clone()) {
                        self.heard_from(&meter_id);
                    }
                    Handling::Reply(with_code(reply, ResponseType::Changed, None))
                } else {
                    fail(
                        reply,
                        ResponseType::NotFound,
                        "no such registration: register again",
                    )
                }
            }
            ["dp"] => {
                self.send_operation(content_format, body.into_owned(), peer, caller, reply, now)
            }
            [".well-known", "core"] => fail(reply, ResponseType::MethodNotAllowed, "use GET"),
            _ => fail(reply, ResponseType::NotFound, WHAT_IS_HERE),
        }
    }

    /// GET and DELETE (and anything else that is not POST).
    fn other_method(
        &mut self,
        packet: &Packet,
        path: &[&str],
        peer: SocketAddr,
        caller: &Caller,
        reply: Packet,
    ) -> Handling {
        match (request_type(packet), path) {
            (RequestType::Get, [".well-known", "core"]) => well_known_core(packet, reply),
            (RequestType::Delete, ["rd", id]) => {
                if let Some(refusal) = self.not_owner(id, caller, peer, b"", &reply) {
                    return refusal;
                }
                if self.registry.remove(id) {
                    Handling::Reply(with_code(reply, ResponseType::Deleted, None))
                } else {
                    Handling::Reply(with_code(
                        reply,
                        ResponseType::NotFound,
                        Some("no such registration"),
                    ))
                }
            }
            (_, ["r", _] | ["rd", ..] | ["dp"] | [".well-known", "core"]) => {
                Handling::Reply(with_code(
                    reply,
                    ResponseType::MethodNotAllowed,
                    Some("method not allowed on this resource"),
                ))
            }
            _ => Handling::Reply(with_code(reply, ResponseType::NotFound, Some(WHAT_IS_HERE))),
        }
    }

    fn too_large(&self, mut reply: Packet, limit: usize) -> Handling {
        reply.add_option(CoapOption::Size1, uint_bytes(limit as u64));
        Handling::Reply(with_code(
            reply,
            ResponseType::RequestEntityTooLarge,
            Some(&format!("the body may be at most {limit} bytes")),
        ))
    }

    /// `POST /r/{meter_id}`.
    fn report(
        &self,
        meter_id: &str,
        content_format: Option<u64>,
        body: Vec<u8>,
        peer: SocketAddr,
        caller: &Caller,
        reply: Packet,
    ) -> Handling {
        if !is_valid_meter_id(meter_id) {
            return Handling::Reply(with_code(
                reply,
                ResponseType::NotFound,
                Some("meter_id must be 1 to 64 characters of [A-Za-z0-9._-]"),
            ));
        }
        if let Some(identity) = caller.identity() {
            let allowed = self
                .credentials
                .current()
                .get(identity)
                .is_some_and(|c| policy::may_publish_for(identity, &c.publish_for, meter_id));
            if !allowed {
                return self.forbidden(
                    caller,
                    peer,
                    format!("/r/{meter_id}"),
                    format!("may not post for meter {meter_id:?}"),
                    body,
                    reply,
                );
            }
        }
        let format = match content_format {
            None => None,
            Some(cf) => u16::try_from(cf)
                .ok()
                .and_then(Format::from_coap_content_format),
        };
        let Some(format) = format.filter(|f| *f != Format::Lwm2m) else {
            return Handling::Reply(with_code(
                reply,
                ResponseType::UnsupportedContentFormat,
                Some(REPORT_FORMATS),
            ));
        };
        self.ingest(meter_id, format, body, reply)
    }

    /// `POST /dp`: an LwM2M Send from a registered endpoint.
    fn send_operation(
        &self,
        content_format: Option<u64>,
        body: Vec<u8>,
        peer: SocketAddr,
        caller: &Caller,
        reply: Packet,
        now: Instant,
    ) -> Handling {
        let Some(registration) = self.registry.at(peer, now) else {
            if caller.identity().is_some() {
                return self.forbidden(
                    caller,
                    peer,
                    "/dp".into(),
                    "Send without a registration in this session".into(),
                    body,
                    reply,
                );
            }
            return Handling::Reply(with_code(
                reply,
                ResponseType::Forbidden,
                Some("not registered from this address: register (POST /rd?ep=...) first"),
            ));
        };
        if registration.session != caller.session() {
            // Over DTLS a Send belongs to the session that registered (or last updated).
            return self.forbidden(
                caller,
                peer,
                "/dp".into(),
                "Send outside the session that registered: register or update first".into(),
                body,
                reply,
            );
        }
        let lwm2m = content_format
            .and_then(|cf| u16::try_from(cf).ok())
            .and_then(Format::from_coap_content_format)
            .is_some_and(|f| matches!(f, Format::Senml | Format::SenmlCbor | Format::Lwm2m));
        if !lwm2m {
            return Handling::Reply(with_code(
                reply,
                ResponseType::UnsupportedContentFormat,
                Some("Send takes SenML-CBOR (112), SenML-JSON (110) or OMA LwM2M JSON (11543)"),
            ));
        }
        let meter_id = registration.meter_id.clone();
        self.ingest(&meter_id, Format::Lwm2m, body, reply)
    }

    /// Decodes to choose the answer, and hands the raw message on for storage either way.
    fn ingest(&self, meter_id: &str, format: Format, body: Vec<u8>, reply: Packet) -> Handling {
        let received_at_ms = now_ms();
        let ctx = DecodeContext {
            meter_id,
            received_at_ms,
        };
        let (code, diagnostic) = match decode(format, &body, &ctx) {
            Ok(decoded) if decoded.rejected.is_empty() => (ResponseType::Changed, None),
            Ok(decoded) => (
                ResponseType::Changed,
                Some(format!(
                    "{} part(s) rejected, first: {}: {}",
                    decoded.rejected.len(),
                    decoded.rejected[0].position,
                    decoded.rejected[0].reason
                )),
            ),
            Err(e) => (ResponseType::BadRequest, Some(e.to_string())),
        };
        Handling::Ingest {
            message: RawMessage {
                received_at_ms,
                ..RawMessage::new(
                    Source::Coap,
                    format!("meters/{meter_id}/{format}"),
                    Bytes::from(body),
                )
            },
            reply,
            code,
            diagnostic,
        }
    }

    /// 4.03 for a request outside the caller's identity, answered once its `unauthorized`
    /// dead letter (with identity, address and the body) is durable.
    fn forbidden(
        &self,
        caller: &Caller,
        peer: SocketAddr,
        resource: String,
        reason: String,
        body: Vec<u8>,
        reply: Packet,
    ) -> Handling {
        metrics::counter!("meterflow_coap_denied_total", "reason" => "forbidden").increment(1);
        let identity = caller.identity().map(str::to_string);
        tracing::info!(identity = identity.as_deref().unwrap_or("anonymous"), %peer, %reason, "CoAP: request refused");
        let refusal = Refusal {
            identity,
            client_id: None,
            peer: peer.to_string(),
            reason,
        };
        Handling::Ingest {
            message: RawMessage {
                refused: Some(Box::new(refusal)),
                ..RawMessage::new(Source::Coap, resource, Bytes::from(body))
            },
            reply,
            code: ResponseType::Forbidden,
            diagnostic: Some("not this identity's to send".into()),
        }
    }

    /// Over DTLS, a registration is updated or removed only by its own identity.
    fn not_owner(
        &self,
        id: &str,
        caller: &Caller,
        peer: SocketAddr,
        body: &[u8],
        reply: &Packet,
    ) -> Option<Handling> {
        let identity = caller.identity()?;
        let owner = self.registry.get(id)?;
        (owner.meter_id != identity).then(|| {
            self.forbidden(
                caller,
                peer,
                format!("/rd/{id}"),
                format!("may not change registration {id:?} of {:?}", owner.endpoint),
                body.to_vec(),
                reply.clone(),
            )
        })
    }

    /// A registration or update is the device's heartbeat: an empty status for its meter goes
    /// through the WAL like any message, so the device state (and ClickHouse `device_status`)
    /// shows it alive between Sends. Best effort: when the writer is busy it is skipped.
    fn heard_from(&self, meter_id: &str) {
        let message = RawMessage::new(
            Source::Coap,
            format!("meters/{meter_id}/status"),
            Bytes::from_static(b"{}"),
        );
        if self.wal.try_send(Submission::unanswered(message)).is_ok() {
            metrics::counter!("meterflow_received_total", "source" => "coap").increment(1);
        }
    }

    /// `POST /rd?ep=...`.
    fn register(
        &mut self,
        queries: &[&str],
        body: Vec<u8>,
        peer: SocketAddr,
        caller: &Caller,
        mut reply: Packet,
        now: Instant,
    ) -> Handling {
        let params = match lwm2m::Params::parse(queries) {
            Ok(p) => p,
            Err(why) => {
                return Handling::Reply(with_code(reply, ResponseType::BadRequest, Some(&why)))
            }
        };
        if let Some(identity) = caller.identity() {
            let endpoint = params.endpoint.unwrap_or_default();
            if lwm2m::meter_id_of(endpoint).as_deref() != Some(identity) {
                return self.forbidden(
                    caller,
                    peer,
                    "/rd".into(),
                    format!("may not register endpoint {endpoint:?}"),
                    body,
                    reply,
                );
            }
        }
        let objects = String::from_utf8_lossy(&body);
        match self
            .registry
            .register(&params, &objects, peer, caller.session(), now)
        {
            Ok(id) => {
                if let Some(r) = self.registry.get(&id) {
                    tracing::info!(endpoint = %r.endpoint, meter_id = %r.meter_id, lifetime_s = r.lifetime_s, %peer, "LwM2M registration");
                    let meter_id = r.meter_id.clone();
                    self.heard_from(&meter_id);
                }
                reply.add_option(CoapOption::LocationPath, b"rd".to_vec());
                reply.add_option(CoapOption::LocationPath, id.into_bytes());
                Handling::Reply(with_code(reply, ResponseType::Created, None))
            }
            Err(lwm2m::RegisterError::Bad(why)) => {
                Handling::Reply(with_code(reply, ResponseType::BadRequest, Some(&why)))
            }
            Err(lwm2m::RegisterError::Full) => {
                Handling::Reply(self.busy(reply, "the registration table is full"))
            }
        }
    }
}

const WHAT_IS_HERE: &str =
    "no such resource: POST /r/{meter_id}, LwM2M /rd and /dp, GET /.well-known/core";

const REPORT_FORMATS: &str = "Content-Format must be 50 (json), 60 (cbor), 110 (senml+json), 112 (senml+cbor), 65000 (meterflow protobuf) or 65001 (dsmr)";

const WELL_KNOWN_CORE: &str =
    "</r>;rt=\"meterflow.report\";ct=\"50 60 110 112 65000 65001\",</rd>;rt=\"core.rd\";ct=40,</dp>;ct=\"110 112\"";

/// `GET /.well-known/core` (RFC 6690), in Block2 blocks when the client asks for small ones.
fn well_known_core(request: &Packet, mut reply: Packet) -> Handling {
    let accept = request
        .get_first_option(CoapOption::Accept)
        .map(|v| uint(v));
    if accept.is_some_and(|a| a != u64::from(LINK_FORMAT)) {
        return Handling::Reply(with_code(
            reply,
            ResponseType::NotAcceptable,
            Some("/.well-known/core is application/link-format (40) only"),
        ));
    }
    reply.add_option(
        CoapOption::ContentFormat,
        uint_bytes(u64::from(LINK_FORMAT)),
    );
    let body = WELL_KNOWN_CORE.as_bytes();
    let block2 = request
        .get_first_option(CoapOption::Block2)
        .and_then(|v| Block::parse(v))
        .filter(|b| b.szx < 7);
    match block2 {
        Some(b) if b.size() < body.len() => {
            let start = (b.num as usize).saturating_mul(b.size());
            if start >= body.len() {
                return Handling::Reply(with_code(
                    reply,
                    ResponseType::BadOption,
                    Some("Block2 past the end"),
                ));
            }
            let end = (start + b.size()).min(body.len());
            let block = Block {
                num: b.num,
                more: end < body.len(),
                szx: b.szx,
            };
            reply.add_option(CoapOption::Block2, block.to_bytes());
            reply.payload = body[start..end].to_vec();
        }
        _ => reply.payload = body.to_vec(),
    }
    Handling::Reply(with_code(reply, ResponseType::Content, None))
}

fn request_type(packet: &Packet) -> RequestType {
    match packet.header.code {
        MessageClass::Request(r) => r,
        _ => RequestType::UnKnown,
    }
}

/// Sets the code and a diagnostic payload (RFC 7252 §5.5.2), cut to fit a datagram.
fn with_code(mut reply: Packet, code: ResponseType, diagnostic: Option<&str>) -> Packet {
    reply.header.code = MessageClass::Response(code);
    if let Some(text) = diagnostic {
        let mut end = text.len().min(MAX_DIAGNOSTIC);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        reply.payload = text.as_bytes()[..end].to_vec();
    }
    metrics::counter!("meterflow_coap_answers_total", "code" => reply.header.get_code())
        .increment(1);
    reply
}

fn encode(reply: &Packet) -> Vec<u8> {
    // Our answers are small (diagnostics are cut): this does not fail.
    reply.to_bytes_unlimited().unwrap_or_default()
}

/// An RST for a CON we cannot parse (RFC 7252 §4.2), when its header can be read at all.
fn reset_for_malformed(bytes: &[u8]) -> Option<Vec<u8>> {
    let [first, _, hi, lo, ..] = *bytes else {
        return None;
    };
    let version = first >> 6;
    let confirmable = (first >> 4) & 0x3 == 0;
    (version == 1 && confirmable).then(|| reset(u16::from_be_bytes([hi, lo])))
}

fn reset(message_id: u16) -> Vec<u8> {
    let [hi, lo] = message_id.to_be_bytes();
    vec![0x70, 0x00, hi, lo]
}

/// The values of a repeatable string option, or None when one is not UTF-8.
fn strings(packet: &Packet, option: CoapOption) -> Option<Vec<&str>> {
    packet
        .get_option(option)
        .map_or(Some(Vec::new()), |values| {
            values
                .iter()
                .map(|v| std::str::from_utf8(v).ok())
                .filter(|s| s != &Some(""))
                .collect()
        })
}

/// An option's unsigned integer value (RFC 7252 §3.2: big-endian, leading zeros dropped).
fn uint(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .take(8)
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

fn uint_bytes(v: u64) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    bytes[skip..].to_vec()
}

/// Critical options (odd numbers) this server understands; any other is 4.02 (RFC 7252 §5.4.1).
/// Uri-Host (3) and Uri-Port (7) are accepted as is; Accept (17) and Block2 (23) matter for
/// `GET /.well-known/core` only, as every other answer carries no content.
const UNDERSTOOD_CRITICAL: [u16; 7] = [3, 7, 11, 15, 17, 23, 27];
/// Of those, the ones that may not repeat (RFC 7252 §5.4.5: a repeated one is an
/// unrecognized one).
const NOT_REPEATABLE: [u16; 5] = [3, 7, 17, 23, 27];

/// Why the request's options cannot be taken, if they cannot.
fn unsupported_critical_option(packet: &Packet) -> Option<String> {
    packet.options().find_map(|(number, values)| {
        let number = *number;
        if number % 2 == 1 && !UNDERSTOOD_CRITICAL.contains(&number) {
            Some(format!("critical option {number} is not supported"))
        } else if values.len() > 1 && NOT_REPEATABLE.contains(&number) {
            Some(format!("option {number} must not repeat"))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests;

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
