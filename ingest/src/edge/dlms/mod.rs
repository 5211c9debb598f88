//! The DLMS/COSEM wrapper listener (IEC 62056-4-7): meters with a modem push their
//! DataNotifications to it over TCP or UDP, on one port (`dlms.listen`; 4059 is usual), each
//! in a wrapper frame (an 8-byte header: version 1, source and destination wPort, the APDU's
//! length; then the APDU). Off by default.
//!
//! - A meter is identified by the system title of its ciphered push (general-glo-ciphering,
//!   maybe in general-block-transfer), looked up in the credential store
//!   ([`crate::credentials::CredentialStore::meter_of_system_title`]). Over this listener the
//!   push is its own identity, so it is judged here, before anything is stored
//!   ([`frame::judge`]): the meter must have keys, the push must claim the protection they
//!   call for (read from its security header before anything is deciphered) and open with
//!   them (its tag checked). Only then does the whole frame go to the WAL writer as
//!   `meters/{meter_id}/dlms` (source `dlms`); the pipeline opens it again and refuses a
//!   replayed invocation counter, as for a push over MQTT.
//! - Anything else is refused at the edge and **not stored**, not even as a dead letter (a
//!   sender without an identity gets no storage, so nobody can fill the WAL or the disk): a
//!   system title that is no meter's, a meter's without keys, a failed tag, less protection
//!   than the keys call for, general-ded-ciphering (`DC`). Each is counted in
//!   `meterflow_dlms_refused_total{reason}` ([`frame::Refused`]; those the pipeline makes
//!   too also in `meterflow_dlms_rejected_total{reason}`), logged at most once a second, and
//!   the TCP connection is reset.
//! - A push without a system title (in clear) carries no identity: it is taken only under the
//!   anonymous rule of the other edges ([`policy::anonymous_allowed`] with
//!   `dlms.allow_plaintext`, over TCP only since a UDP source can be forged: or on a loopback
//!   listener while the store is empty), for the meter `dlms.plaintext_meter_prefix` + the
//!   sender's address, unless that id is a meter of the store; else refused, not stored.
//! - TCP: one task per connection reads a frame, hands it to the writer and waits until it is
//!   durable before it reads the next (back-pressure: a meter cannot send faster than the WAL
//!   takes it). On `WalFull` / `Failed`, or when it ends inside a frame, the connection is
//!   reset; the meter sends again later. UDP: one task reads datagrams (one frame each) and
//!   hands them on without waiting (there is no answer to wait with); a full channel or byte
//!   budget drops the datagram (`busy`).
//! - Limits: `dlms.max_connections` (identified), `dlms.max_pending_connections` and
//!   `dlms.max_pending_per_address` (before the first push is taken, the oldest evicted for a
//!   newcomer: [`slots`]),
//!   `dlms.max_apdu_bytes`, `dlms.max_inflight_bytes` (bytes of frames from their header
//!   until the writer is done with them), `dlms.frame_timeout_s` (a frame whole within it of
//!   its first byte, the first frame of the accept), `dlms.idle_timeout_s` (between frames).
//! - Shutdown: the listeners stop; a connection waiting for the WAL's answer gets it, then
//!   every connection closes (reset if inside a frame); the edge's sender goes with the last
//!   task.
//!
//! The files: `config` (`[dlms]`), `frame` (the decisions, without I/O), `slots` (the
//! connection budget), `tcp` and `udp` (the sockets).

mod config;
pub mod frame;
mod slots;
mod tcp;
mod udp;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use meterflow_proto::Source;
use meterflow_storage::ShutdownSignal;
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

use crate::credentials::SharedCredentials;
use crate::dlms_replay::{ReplayGuard, Reserved};
use crate::edge::slots::Slots;
use crate::edge::{policy, Budget, RawMessage, Submission};
use crate::error::IngestError;
use frame::{Refused, Transport, Verdict};

pub use config::{check_keys, check_plaintext_rule, DlmsConfig};

/// Datagrams that may wait for the WAL writer besides one frame per TCP connection: the
/// edge's channel holds `dlms.max_connections` + this.
pub const UDP_QUEUE: usize = 1024;

/// The listener's sockets, bound at start-up (a port in use stops it, naming it).
pub struct Bound {
    tcp: TcpListener,
    udp: UdpSocket,
    addr: SocketAddr,
}

/// Binds the TCP listener and the UDP socket of `dlms.listen`, the same port for both (with
/// port 0, the port the TCP listener got), the UDP socket with `udp_buffer_bytes` of buffer.
pub fn bind(addr: SocketAddr, udp_buffer_bytes: usize) -> Result<Bound, IngestError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let error = |addr| {
        move |source| IngestError::Bind {
            what: "DLMS",
            addr,
            source,
        }
    };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(error(addr))?;
    socket.set_reuse_address(true).map_err(error(addr))?;
    socket.set_nonblocking(true).map_err(error(addr))?;
    socket.bind(&addr.into()).map_err(error(addr))?;
    socket.listen(4096).map_err(error(addr))?;
    let tcp = TcpListener::from_std(socket.into()).map_err(error(addr))?;
    let addr = tcp.local_addr().map_err(error(addr))?;
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(error(addr))?;
    crate::edge::size_udp_buffers(&socket, udp_buffer_bytes, "DLMS", "dlms.udp_buffer_bytes");
    socket.set_nonblocking(true).map_err(error(addr))?;
    socket.bind(&addr.into()).map_err(error(addr))?;
    let udp = UdpSocket::from_std(socket.into()).map_err(error(addr))?;
    Ok(Bound { tcp, udp, addr })
}

impl Bound {
    /// Where it listens (TCP and UDP).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// What every connection and the datagram task share.
struct Edge {
    config: DlmsConfig,
    /// The listener is on a loopback address (plaintext pushes while the store is empty).
    loopback: bool,
    credentials: Arc<SharedCredentials>,
    wal: flume::Sender<Submission>,
    slots: Arc<Slots>,
    /// `dlms.max_inflight_bytes`: a permit a byte, from a frame's header (TCP) or its
    /// datagram until the WAL writer is done with it.
    budget: Arc<tokio::sync::Semaphore>,
    /// `meterflow_dlms_inflight_bytes`.
    inflight_bytes: metrics::Gauge,
    frames: AtomicU64,
    received: metrics::Counter,
    /// When a refusal was last logged (Unix ms).
    last_refusal_log_ms: std::sync::atomic::AtomicI64,
    /// The highest invocation counter per system title and key of the authenticated pushes
    /// (from the checkpoint's counters at start, then every one the pipeline accepted, over
    /// any way in, and every one this listener reserved on its way to the WAL): a push not
    /// above it is a captured one sent again, refused here without storage. Only pushes
    /// with a tag count: an "encrypted only" push's counter is anyone's to claim. Shared
    /// with the pipeline.
    counters: SharedCounters,
    /// Tests that send one push many times turn the memory of counters off.
    #[cfg(test)]
    remember_counters: std::sync::atomic::AtomicBool,
}

/// The listener's copy of the DLMS counters, which the pipeline feeds too.
pub type SharedCounters = Arc<std::sync::Mutex<ReplayGuard>>;

impl Edge {
    fn counters(&self) -> std::sync::MutexGuard<'_, ReplayGuard> {
        self.counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Gives back the counter of a push that was not stored after all (the WAL full, the
    /// channel full, no place for its connection): its resend is taken.
    fn not_stored(&self, reserved: Option<Reserved>) {
        if let Some(r) = reserved {
            self.counters().release(r);
        }
    }

    /// A frame of `bytes`' share of `dlms.max_inflight_bytes` if there is room now.
    fn try_lease(&self, bytes: usize) -> Option<Budget> {
        let permit = self
            .budget
            .clone()
            .try_acquire_many_owned(u32::try_from(bytes).ok()?)
            .ok()?;
        Some(Budget::new(permit, &self.inflight_bytes))
    }

    /// The same, waiting for room (`None` only if the budget were closed, which it never is).
    async fn lease(&self, bytes: usize) -> Option<Budget> {
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(u32::try_from(bytes).ok()?)
            .await
            .ok()?;
        Some(Budget::new(permit, &self.inflight_bytes))
    }

    /// The message a whole frame from `peer` becomes, for its meter; or why it is refused
    /// (counted and logged, at most one line a second: a peer without an identity is given
    /// no storage, not even a dead letter, so that nobody can fill the WAL or the disk).
    fn message(
        &self,
        frame: Vec<u8>,
        peer: SocketAddr,
        transport: Transport,
    ) -> Result<(RawMessage, Option<Reserved>), Refused> {
        self.frames.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("meterflow_dlms_frames_total", "transport" => transport.label())
            .increment(1);
        self.received.increment(1);
        let store = self.credentials.current();
        // dlms.allow_plaintext takes pushes in clear over TCP only: a UDP source address can
        // be forged, and it would name the meter.
        let plaintext_ok = policy::anonymous_allowed(
            self.config.allow_plaintext && transport == Transport::Tcp,
            self.loopback,
            store.is_empty(),
        );
        let verdict = frame::judge(
            &frame,
            peer.ip(),
            &store,
            plaintext_ok,
            &self.config.plaintext_meter_prefix,
        );
        // An authenticated push not above the counter stored for its title and key: sent
        // again. Else its counter is reserved (a copy at the same time is the replay).
        let mut reserved = None;
        let verdict = match verdict {
            Verdict::Take {
                meter_id,
                counted: Some(c),
            } => {
                #[cfg(test)]
                let remember = self.remember_counters.load(Ordering::Relaxed);
                #[cfg(not(test))]
                let remember = true;
                let reservation = if remember {
                    self.counters()
                        .reserve(c.system_title, c.key, c.counter)
                        .map(Some)
                } else {
                    Ok(None)
                };
                match reservation {
                    Err(crate::dlms_replay::Replay { last }) => Verdict::Refuse {
                        why: Refused::Replay,
                        reason: format!(
                            "meter {meter_id}: invocation counter {}, not above the last stored {last}",
                            c.counter
                        ),
                    },
                    Ok(r) => {
                        reserved = r;
                        Verdict::Take {
                            meter_id,
                            counted: Some(c),
                        }
                    }
                }
            }
            other => other,
        };
        match verdict {
            Verdict::Take { meter_id, .. } => Ok((
                RawMessage::new(
                    Source::Dlms,
                    format!("meters/{meter_id}/dlms"),
                    Bytes::from(frame),
                ),
                reserved,
            )),
            Verdict::Refuse { why, reason } => {
                why.count();
                let now = meterflow_proto::now_ms();
                let last = self.last_refusal_log_ms.load(Ordering::Relaxed);
                if now - last >= 1000
                    && self
                        .last_refusal_log_ms
                        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    tracing::warn!(%peer, transport = transport.label(), reason = why.label(), detail = %reason, "DLMS push refused (not stored; at most one such line a second)");
                }
                Err(why)
            }
        }
    }
}

/// What the listener did, for the shutdown summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct DlmsSummary {
    /// Whole frames read, over TCP and UDP.
    pub frames: u64,
}

/// The running listener.
pub struct DlmsServer {
    edge: Arc<Edge>,
    tasks: Vec<JoinHandle<()>>,
    /// Closed once every connection's task has ended (each holds a sender).
    connections_done: tokio::sync::mpsc::Receiver<()>,
}

impl DlmsServer {
    /// Serves the bound sockets until `shutdown` begins.
    /// `counters`: the DLMS counters as of the checkpoint ([`ReplayGuard::load`]), which the
    /// pipeline feeds with what it accepts.
    pub fn start(
        bound: Bound,
        config: DlmsConfig,
        credentials: Arc<SharedCredentials>,
        counters: SharedCounters,
        wal: flume::Sender<Submission>,
        shutdown: ShutdownSignal,
    ) -> DlmsServer {
        let Bound { tcp, udp, addr } = bound;
        let edge = Arc::new(Edge {
            slots: Arc::new(Slots::new(
                config.max_pending_connections,
                config.max_pending_per_address,
                config.max_connections,
                frame_timeout(&config),
                slots::METRICS,
            )),
            budget: Arc::new(tokio::sync::Semaphore::new(config.max_inflight_bytes)),
            inflight_bytes: {
                let gauge = metrics::gauge!("meterflow_dlms_inflight_bytes");
                gauge.set(0.0);
                gauge
            },
            loopback: addr.ip().is_loopback(),
            config,
            credentials,
            wal,
            frames: AtomicU64::new(0),
            received: metrics::counter!("meterflow_received_total", "source" => "dlms"),
            last_refusal_log_ms: std::sync::atomic::AtomicI64::new(0),
            counters,
            #[cfg(test)]
            remember_counters: std::sync::atomic::AtomicBool::new(true),
        });
        let (alive, connections_done) = tokio::sync::mpsc::channel(1);
        tracing::info!(
            %addr,
            allow_plaintext = edge.config.allow_plaintext,
            "DLMS wrapper listener started (TCP and UDP)"
        );
        let tasks = vec![
            tokio::spawn(tcp::accept_loop(tcp, edge.clone(), shutdown.clone(), alive)),
            tokio::spawn(udp::serve(udp, edge.clone(), shutdown)),
        ];
        DlmsServer {
            edge,
            tasks,
            connections_done,
        }
    }

    /// Waits, once the shutdown has begun, until the listeners have stopped and every
    /// connection has had the WAL's answer for the frame it read and closed.
    pub async fn stopped(mut self) -> DlmsSummary {
        for task in self.tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "a DLMS listener task failed");
            }
        }
        // None once every connection task has dropped its sender.
        let _ = self.connections_done.recv().await;
        DlmsSummary {
            frames: self.edge.frames.load(Ordering::Relaxed),
        }
    }
}

/// How long a TCP connection may go between frames.
fn idle_timeout(config: &DlmsConfig) -> Duration {
    Duration::from_secs(config.idle_timeout_s)
}

/// How long a TCP frame may take, from its first byte (the first frame: from the accept).
fn frame_timeout(config: &DlmsConfig) -> Duration {
    Duration::from_secs(config.frame_timeout_s)
}
