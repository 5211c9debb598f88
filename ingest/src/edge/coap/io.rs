//! The listener: the UDP socket, plain or DTLS ([`Security`]), and the one task that owns the
//! [`Server`]: it feeds it datagrams, sends its answers (those that waited for the WAL come
//! back on a channel), runs its housekeeping, and stops it at shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meterflow_storage::ShutdownSignal;
use tokio::net::UdpSocket;

use super::server::{Caller, CoapSummary, Completion, Server};
use super::{dtls, CoapConfig};
use crate::credentials::SharedCredentials;
use crate::edge::{policy, Submission};
use crate::error::IngestError;

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
    crate::edge::size_udp_buffers(&socket, buffer_bytes, "CoAP", "coap.socket_buffer_bytes");
    socket.set_nonblocking(true).map_err(bind_error)?;
    socket.bind(&addr.into()).map_err(bind_error)?;
    UdpSocket::from_std(socket.into()).map_err(bind_error)
}

/// How often the tables are swept and the anonymous rule is looked at again.
const TICK: Duration = Duration::from_millis(200);

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
