//! meterflow's own MQTT server: a server for meters, not a general broker. It speaks MQTT
//! 3.1.1 and 5 on every listener (the CONNECT says which), on tokio, with rumqttd's protocol
//! codec for the wire format.
//!
//! - [`codec`]: framing on rumqttd's codec, and the checks it lacks;
//! - [`session`]: one connection's protocol state, without I/O (packets in; packets, WAL
//!   submissions and a close decision out);
//! - [`connection`]: the socket loop around a session;
//! - [`auth`]: authentication (credential store, client certificates) and the MQTT rules on
//!   top of the edge policy (`crate::edge::policy`: who may publish for which meter, where
//!   anonymous devices are served): topics, client ids, subscriptions;
//! - [`registry`]: live sessions by client id (takeover, revoke, shutdown);
//! - [`tls`]: rustls, client certificates, reload;
//! - [`slots`]: the connection budgets: connections that have not logged in (in all, and per
//!   address, the fullest address making room for a newcomer) and those that have
//!   (`mqtt.max_connections`);
//! - `config`: the settings (`[mqtt]`) and the start-up check of the anonymous rule.
//!
//! This module owns the listeners, the shared state of the edge ([`Edge`]), the background
//! task that applies credential and certificate changes, and shutdown.
//!
//! A PUBACK (PUBREC for QoS 2) is sent only once the WAL writer says the message is committed
//! and fsynced; a connection with `mqtt.max_inflight` publishes unanswered is not read further.
//! Nothing is routed to subscribers: the only subscription granted is a client's own
//! `meters/{id}/cmd/#`, reserved for downlink, and nothing is published on it yet.

pub mod auth;
pub mod codec;
mod config;
mod connection;
pub mod registry;
pub mod session;
mod slots;
pub mod tls;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meterflow_storage::ShutdownSignal;
use tokio::sync::Semaphore;

use crate::credentials::SharedCredentials;
use crate::edge::{policy, Budget, Submission};
use crate::error::IngestError;
use registry::Registry;
use session::{CloseReason, Limits};
use slots::{PendingSlot, Slots};
use tls::{TlsFiles, TlsServer};

pub use config::{check_anonymous_rule, MqttConfig};

/// How a listener was bound.
#[derive(Debug, Clone, Copy)]
struct ListenerInfo {
    tls: bool,
    /// Bound to a loopback address: anonymous devices may connect while the store is empty.
    loopback: bool,
}

/// Metric handles used on every packet (looked up once).
struct EdgeMetrics {
    read_buffer: metrics::Gauge,
    inflight_bytes: metrics::Gauge,
    received: metrics::Counter,
    connects: metrics::Counter,
    backpressure: metrics::Counter,
    ack_seconds: metrics::Histogram,
}

/// What every connection shares.
struct Edge {
    config: MqttConfig,
    credentials: Arc<SharedCredentials>,
    registry: Registry,
    wal: flume::Sender<Submission>,
    budget: Arc<Semaphore>,
    read_buffered: AtomicUsize,
    /// The part of `read_buffered` of connections before their CONNACK.
    read_buffered_pre_auth: AtomicUsize,
    /// Connections that completed CONNECT.
    sessions: AtomicU64,
    /// Open connections, exact: pending from accept, logged in from authentication, given
    /// back when the task ends.
    slots: Slots,
    next_conn: AtomicU64,
    /// The process's shutdown: accepting stops, sessions answer what they read (each gets a
    /// kick), and at its deadline whatever is still open is closed.
    shutdown: ShutdownSignal,
    tls: Option<TlsServer>,
    metrics: EdgeMetrics,
}

impl Edge {
    fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.config.connect_timeout_ms)
    }
}

/// What the MQTT edge did, for the shutdown summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct MqttSummary {
    /// Connections that completed CONNECT.
    pub sessions: u64,
    /// Connections still open when the drain time ran out.
    pub cut_off: usize,
}

/// The running MQTT edge.
pub struct MqttServer {
    edge: Arc<Edge>,
    /// Ends once the edge has stopped at shutdown (see [`stop_at_shutdown`]).
    stopped: tokio::task::JoinHandle<MqttSummary>,
}

impl MqttServer {
    /// Binds every listener (a port in use stops start-up, naming it), then serves until
    /// `shutdown` begins.
    pub async fn start(
        config: MqttConfig,
        credentials: Arc<SharedCredentials>,
        wal: flume::Sender<Submission>,
        shutdown: ShutdownSignal,
    ) -> Result<MqttServer, IngestError> {
        let tls = match (&config.tls_listen, &config.tls_cert, &config.tls_key) {
            (Some(_), Some(cert), Some(key)) => Some(TlsServer::load(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: config.tls_client_ca.clone(),
            })?),
            _ => None,
        };
        let mut listeners = Vec::new();
        for (key, addr, is_tls) in config.listeners() {
            listeners.push((bind(key, addr)?, is_tls, addr));
        }
        let edge = Arc::new(Edge {
            budget: Arc::new(Semaphore::new(config.max_inflight_bytes)),
            slots: Slots::new(
                config.max_pending_connections,
                config.max_pending_per_address,
                config.max_connections,
                std::time::Duration::from_millis(config.connect_timeout_ms),
                slots::METRICS,
            ),
            config,
            credentials,
            registry: Registry::default(),
            wal,
            read_buffered: AtomicUsize::new(0),
            read_buffered_pre_auth: AtomicUsize::new(0),
            sessions: AtomicU64::new(0),
            next_conn: AtomicU64::new(1),
            shutdown,
            tls,
            metrics: EdgeMetrics {
                read_buffer: metrics::gauge!("meterflow_mqtt_read_buffer_bytes"),
                inflight_bytes: metrics::gauge!("meterflow_mqtt_inflight_bytes"),
                received: metrics::counter!("meterflow_received_total", "source" => "mqtt"),
                connects: metrics::counter!("meterflow_mqtt_connects_total"),
                backpressure: metrics::counter!("meterflow_mqtt_backpressure_total"),
                ack_seconds: metrics::histogram!("meterflow_mqtt_ack_seconds"),
            },
        });
        // Kept for dashboards made for the former embedded broker; nothing drops messages now.
        metrics::counter!("meterflow_router_drops_total").absolute(0);
        let accept_tasks = listeners
            .into_iter()
            .map(|(listener, tls, addr)| {
                let info = ListenerInfo {
                    tls,
                    loopback: addr.ip().is_loopback(),
                };
                tokio::spawn(accept_loop(listener, info, edge.clone()))
            })
            .collect();
        let watcher = tokio::spawn(watch_changes(edge.clone()));
        tracing::info!(
            listen = %edge.config.listen,
            listen_v5 = %crate::config::listener_shown(&edge.config.listen_v5),
            tls_listen = %crate::config::listener_shown(&edge.config.tls_listen),
            credentials = edge.credentials.current().len(),
            "MQTT server started"
        );
        let stopped = tokio::spawn(stop_at_shutdown(edge.clone(), accept_tasks, watcher));
        Ok(MqttServer { edge, stopped })
    }

    /// Waits until the edge has stopped at shutdown, every connection closed.
    pub async fn stopped(self) -> MqttSummary {
        let mut summary = self.stopped.await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "the MQTT edge's shutdown failed");
            MqttSummary::default()
        });
        summary.sessions = self.edge.sessions.load(Ordering::Relaxed);
        summary
    }
}

/// When the shutdown begins: stops accepting, lets every connection answer what it read once
/// durable (until the shutdown's deadline), closes them, and ends, the edge's WAL sender with
/// the last connection.
async fn stop_at_shutdown(
    edge: Arc<Edge>,
    accept_tasks: Vec<tokio::task::JoinHandle<()>>,
    watcher: tokio::task::JoinHandle<()>,
) -> MqttSummary {
    let deadline = edge.shutdown.clone().stopping().await;
    // Sessions answer what they read, then close; connections before CONNECT close at
    // once (they watch the shutdown).
    edge.registry
        .kick_where(|_| true, CloseReason::ShuttingDown);
    for task in accept_tasks {
        let _ = task.await;
    }
    let mut summary = MqttSummary::default();
    while edge.slots.open() > 0 {
        if tokio::time::Instant::now() >= deadline {
            summary.cut_off = edge.slots.open();
            tracing::warn!(
                connections = summary.cut_off,
                "MQTT connections still draining at pipeline.shutdown_max_ms; closing them"
            );
            edge.registry.force_all(CloseReason::ShutdownTimeout);
            let hard = tokio::time::Instant::now() + Duration::from_secs(5);
            while edge.slots.open() > 0 && tokio::time::Instant::now() < hard {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    watcher.abort();
    let _ = watcher.await;
    summary
}

/// A listening socket with a deep accept queue: a reconnect storm of a whole fleet arrives at
/// once.
fn bind(key: &'static str, addr: SocketAddr) -> Result<tokio::net::TcpListener, IngestError> {
    let bind_error = |source| IngestError::Bind {
        what: key,
        addr,
        source,
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(bind_error)?;
    socket.set_reuse_address(true).map_err(bind_error)?;
    socket.set_nonblocking(true).map_err(bind_error)?;
    socket.bind(&addr.into()).map_err(bind_error)?;
    socket.listen(65_535).map_err(bind_error)?;
    tokio::net::TcpListener::from_std(socket.into()).map_err(bind_error)
}

async fn accept_loop(listener: tokio::net::TcpListener, info: ListenerInfo, edge: Arc<Edge>) {
    let mut shutdown = edge.shutdown.clone();
    let mut errors: u64 = 0;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.stopping() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                // Until it logs in, a connection holds a pending slot: of a budget of its
                // own, and of its address's share of it (with the budget full, maybe one
                // taken from the address that holds the most).
                // (Boxed: a connection's task is held to a memory budget.)
                let pending = match PendingSlot::take(&edge, peer) {
                    Ok(pending) => Box::new(pending),
                    Err(full) => {
                        metrics::counter!("meterflow_mqtt_closed_total", "reason" => full.label())
                            .increment(1);
                        continue; // dropping the stream closes it
                    }
                };
                let _ = stream.set_nodelay(true);
                if info.tls {
                    tokio::spawn(connection::run_tls(stream, pending, info));
                } else {
                    tokio::spawn(connection::run_plain(stream, pending, info));
                }
            }
            Err(e) => {
                // Out of file descriptors or memory: say so now and then, and do not spin.
                errors += 1;
                metrics::counter!("meterflow_mqtt_accept_errors_total").increment(1);
                if errors.is_power_of_two() {
                    tracing::warn!(error = %e, errors, "accepting MQTT connections");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Applies credential changes (closing the sessions of revoked or changed credentials) and
/// certificate changes, looking every second.
async fn watch_changes(edge: Arc<Edge>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let credentials = edge.credentials.clone();
        let reloaded = tokio::task::spawn_blocking(move || credentials.reload_if_changed()).await;
        if let Ok(Some((old, new))) = reloaded {
            let mut withdrawn: HashSet<&str> = old.withdrawn_in(&new).into_iter().collect();
            // Revoked ids that were never in the store (client certificates) go too.
            for (id, _, active) in new.list() {
                if !active {
                    withdrawn.insert(id);
                }
            }
            let mut closed = edge
                .registry
                .kick_identities(&withdrawn, CloseReason::Revoked);
            if old.is_empty()
                && !policy::anonymous_allowed(edge.config.allow_anonymous, true, new.is_empty())
            {
                // Identity is now required everywhere, loopback too: anonymous sessions end.
                closed += edge
                    .registry
                    .kick_where(|identity| identity.is_none(), CloseReason::Revoked);
            }
            tracing::info!(
                credentials = new.len(),
                sessions_closed = closed,
                "credential store changed; applied"
            );
        }
        if let Some(tls) = &edge.tls {
            tls.reload_if_changed();
        }
    }
}

/// The fuzz target's way in (`fuzz/fuzz_targets/mqtt_connection.rs`): one connection's bytes
/// in, bytes out, through the codec and the session as the socket loop drives them, with the
/// WAL's answers (durable, full, failed) chosen by the first byte. Not an API.
#[doc(hidden)]
pub fn fuzz_connection(data: &[u8]) {
    use bytes::BytesMut;
    use session::{ConnectRequest, Session};

    let Some((&choice, stream)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        receive_maximum: 4,
        max_packet: 16 * 1024,
        max_keep_alive_s: 600,
    };
    let mut input = BytesMut::from(stream);
    let mut output = BytesMut::new();
    let Ok(Some(version)) = codec::connect_version(&input) else {
        return;
    };
    let first = match codec::read(version, &mut input, limits.max_packet) {
        Ok(Some(inbound)) => inbound,
        _ => return,
    };
    let request = match ConnectRequest::parse(version, first.packet, 1) {
        Ok(request) => request,
        Err(why) => {
            let _ = codec::write(version, session::refusal(version, why), &mut output);
            return;
        }
    };
    let identity = match choice & 3 {
        0 => crate::edge::Identity::Anonymous,
        1 => crate::edge::Identity::Device {
            id: "E1".into(),
            publish_for: Vec::new(),
        },
        _ => crate::edge::Identity::Device {
            id: "gw-1".into(),
            publish_for: ["E*", "G-??"]
                .iter()
                .filter_map(|g| crate::credentials::Glob::new(g).ok())
                .collect(),
        },
    };
    let peer = SocketAddr::from(([10, 0, 0, 1], 40000));
    let (mut session, connack) = Session::accept(request, identity, peer, limits);
    let _ = codec::write(version, connack, &mut output);
    let mut answered: u64 = 0;
    let mut answer = |session: &mut Session, output: &mut BytesMut| {
        answered += 1;
        let outcome = match (u64::from(choice >> 2) + answered) % 4 {
            0 => crate::edge::Durability::WalFull,
            1 => crate::edge::Durability::Failed,
            _ => crate::edge::Durability::Durable(answered),
        };
        let step = session.on_durable(&outcome);
        for packet in step.packets {
            let _ = codec::write(version, packet, output);
        }
        step.close
    };
    loop {
        // The socket loop does not read while the receive maximum waits.
        while !session.can_read() {
            if answer(&mut session, &mut output).is_some() {
                return;
            }
        }
        let inbound = match codec::read(version, &mut input, limits.max_packet) {
            Ok(Some(inbound)) => inbound,
            _ => break,
        };
        let step = session.on_packet(inbound);
        for packet in step.packets {
            let _ = codec::write(version, packet, &mut output);
        }
        if matches!(step.close, Some(session::Close::Now(_))) {
            return;
        }
    }
    while session.awaiting() > 0 {
        if matches!(
            answer(&mut session, &mut output),
            Some(session::Close::Now(_))
        ) {
            return;
        }
    }
}
