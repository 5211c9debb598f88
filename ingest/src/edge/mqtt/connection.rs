//! The socket side of one MQTT connection: a thin loop around [`Session`]. It reads packets
//! while the session may take more, writes what the session answers, hands publishes to the
//! WAL writer (waiting, without reading further, while the in-flight byte budget or the
//! writer's channel is full), and closes on the session's word, a kick (takeover, revoke,
//! shutdown) or the keep-alive.
//!
//! Memory: a connection's task is sized for its longest-lived phase, the session loop, which
//! is kept small (the test `an_idle_connection_task_stays_small` holds it to a budget). The
//! TLS handshake and the CONNECT, and the rare waits (a full byte budget or channel, a client
//! that does not read its answers), run in boxed futures that exist only while they run.
//! Bytes are read into a per-thread scratch buffer and only a partial packet is kept, so an
//! idle connection holds no buffer.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use meterflow_proto::Source;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::auth::{self, Denial};
use super::codec::{self, FrameError, Version};
use super::registry::{Kick, Registered};
use super::session::{
    refusal, Close, CloseReason, ConnectRefusal, ConnectRequest, Session, Step, Submit,
};
use super::slots::{LoggedIn, NotLoggedIn, PendingSlot};
use super::{Budget, Edge, ListenerInfo};
use crate::edge::{policy, RawMessage};
use crate::edge::{Durability, Submission};

/// Bytes read from a socket at once.
const READ_CHUNK: usize = 16 * 1024;
/// A CONNECT larger than this is refused before authentication (meters' CONNECTs are a few
/// hundred bytes; this bounds what an unauthenticated client can make the server hold).
const MAX_CONNECT: usize = 8 * 1024;
/// The last DISCONNECT and close get at most this long.
const CLOSE_WRITE: Duration = Duration::from_secs(2);

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
}

/// Takes a plain connection with the pending slot the accept loop gave it.
pub(super) async fn run_plain(
    stream: TcpStream,
    pending: Box<PendingSlot>,
    listener: ListenerInfo,
) {
    let owner = pending.edge().clone();
    let edge = &*owner;
    // Both phases boxed: the task itself stays a few words, and the CONNECT phase's memory
    // is given back before the session's is taken.
    let deadline = Instant::now() + edge.connect_timeout();
    let opened = Box::pin(open(stream, pending, None, edge, listener, deadline)).await;
    let session = match session_of(opened, edge) {
        Ok(session) => session,
        Err(reason) => return closed(reason),
    };
    closed(Some(session.await));
}

/// Takes a TLS connection with the pending slot the accept loop gave it.
pub(super) async fn run_tls(
    stream: TcpStream,
    mut pending: Box<PendingSlot>,
    listener: ListenerInfo,
) {
    let owner = pending.edge().clone();
    let edge = &*owner;
    // One deadline for the TLS handshake and the CONNECT together.
    let deadline = Instant::now() + edge.connect_timeout();
    let opened = Box::pin(async {
        let Some(tls) = edge.tls.as_ref() else {
            return Err(None);
        };
        let acceptor = tls.acceptor();
        let handshake = tokio::select! {
            h = tokio::time::timeout_at(deadline, acceptor.accept(stream)) => h,
            () = stopping(edge) => return Err(Some(CloseReason::ShuttingDown)),
            // Its place was taken for a newcomer (counted by `evicted`).
            () = pending.evicted() => return Err(None),
        };
        let stream = match handshake {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(peer = %pending.peer(), error = %e, "MQTT TLS handshake failed");
                metrics::counter!("meterflow_mqtt_closed_total", "reason" => "tls_handshake")
                    .increment(1);
                return Err(None);
            }
            Err(_) => {
                metrics::counter!("meterflow_mqtt_closed_total", "reason" => "connect_timeout")
                    .increment(1);
                return Err(None);
            }
        };
        let cn = super::tls::client_cn(stream.get_ref().1);
        open(stream, pending, cn, edge, listener, deadline).await
    })
    .await;
    let session = match session_of(opened, edge) {
        Ok(session) => session,
        Err(reason) => return closed(reason),
    };
    closed(Some(session.await));
}

/// The session loop of an opened connection, boxed (see the module's note on memory), or
/// why the connection ended before it. A plain function: nothing of the CONNECT phase stays
/// alive in the task while the session runs.
fn session_of<'e, S: AsyncRead + AsyncWrite + Unpin + 'e>(
    opened: Result<Open<'e, S>, Option<CloseReason>>,
    edge: &'e Edge,
) -> Result<Pin<Box<impl Future<Output = CloseReason> + 'e>>, Option<CloseReason>> {
    opened.map(|open| Box::pin(run(open, edge)))
}

/// Completes when the shutdown begins: a connection that has not completed its handshake or
/// CONNECT is then closed at once.
async fn stopping(edge: &Edge) {
    edge.shutdown.clone().stopping().await;
}

/// Completes when the shutdown's deadline has passed: waits that could outlast it give up.
async fn aborted(edge: &Edge) {
    let deadline = edge.shutdown.clone().stopping().await;
    tokio::time::sleep_until(deadline).await;
}

fn closed(reason: Option<CloseReason>) {
    if let Some(reason) = reason {
        metrics::counter!("meterflow_mqtt_closed_total", "reason" => reason.label()).increment(1);
    }
}

/// The read buffer of a connection, with its share of `mqtt.max_read_buffer_bytes` (before
/// its CONNACK, of the quarter of it that unauthenticated connections may use).
struct ReadBuffer<'e> {
    buf: BytesMut,
    charged: usize,
    pre_auth: bool,
    edge: &'e Edge,
}

impl<'e> ReadBuffer<'e> {
    fn new(edge: &'e Edge) -> Self {
        ReadBuffer {
            buf: BytesMut::new(),
            charged: 0,
            pre_auth: true,
            edge,
        }
    }

    /// Frees the buffer when no partial packet is in it, and charges a partial one to the
    /// budget; false when the budget is exhausted.
    fn settle(&mut self) -> bool {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
        let now = self.buf.len();
        if now == self.charged {
            return true;
        }
        let (total, pre_auth) = if now > self.charged {
            self.charge(now - self.charged)
        } else {
            self.discharge(self.charged - now)
        };
        self.charged = now;
        let limit = self.edge.config.max_read_buffer_bytes;
        now == 0 || (total <= limit && (!self.pre_auth || pre_auth <= limit / 4))
    }

    /// Adds `n` bytes; the totals after.
    fn charge(&self, n: usize) -> (usize, usize) {
        self.edge.metrics.read_buffer.increment(n as f64);
        let pre_auth = if self.pre_auth {
            self.edge
                .read_buffered_pre_auth
                .fetch_add(n, Ordering::AcqRel)
                + n
        } else {
            0
        };
        (
            self.edge.read_buffered.fetch_add(n, Ordering::AcqRel) + n,
            pre_auth,
        )
    }

    /// Takes `n` bytes off; the totals after.
    fn discharge(&self, n: usize) -> (usize, usize) {
        self.edge.metrics.read_buffer.decrement(n as f64);
        let pre_auth = if self.pre_auth {
            self.edge
                .read_buffered_pre_auth
                .fetch_sub(n, Ordering::AcqRel)
                - n
        } else {
            0
        };
        (
            self.edge.read_buffered.fetch_sub(n, Ordering::AcqRel) - n,
            pre_auth,
        )
    }

    /// The connection authenticated: its bytes count in the whole budget from now on.
    fn authenticated(&mut self) {
        if self.pre_auth && self.charged > 0 {
            self.edge
                .read_buffered_pre_auth
                .fetch_sub(self.charged, Ordering::AcqRel);
        }
        self.pre_auth = false;
    }
}

impl Drop for ReadBuffer<'_> {
    fn drop(&mut self) {
        if self.charged > 0 {
            self.discharge(self.charged);
        }
    }
}

/// Reads what the socket has into `buf` through the thread's scratch buffer.
async fn read_some<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut BytesMut) -> io::Result<usize> {
    poll_fn(|cx| {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut rb = ReadBuf::new(&mut scratch[..]);
            match Pin::new(&mut *stream).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    buf.extend_from_slice(rb.filled());
                    Poll::Ready(Ok(rb.filled().len()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
    })
    .await
}

/// Writes as much of `out` as the socket takes now, without waiting: `Ok(true)` when all of
/// it went (and was flushed).
fn write_now<S: AsyncWrite + Unpin>(
    stream: &mut S,
    out: &mut BytesMut,
    cx: &mut std::task::Context<'_>,
) -> io::Result<bool> {
    use bytes::Buf;
    while !out.is_empty() {
        match Pin::new(&mut *stream).poll_write(cx, out) {
            Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(n)) => out.advance(n),
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => return Ok(false),
        }
    }
    match Pin::new(&mut *stream).poll_flush(cx) {
        Poll::Ready(Ok(())) => Ok(true),
        Poll::Ready(Err(e)) => Err(e),
        Poll::Pending => Ok(false),
    }
}

/// Writes `out` (and frees it) within the write timeout. The usual case, a socket with room,
/// takes one non-blocking write; only a client that does not read its answers makes it wait
/// (in a boxed future, so that a connection's task stays small), and not past a shutdown's
/// drain time.
async fn flush<S: AsyncWrite + Unpin>(
    stream: &mut S,
    out: &mut BytesMut,
    edge: &Edge,
) -> Result<(), CloseReason> {
    flush_within(
        stream,
        out,
        edge,
        Duration::from_millis(edge.config.write_timeout_ms),
    )
    .await
}

async fn flush_within<S: AsyncWrite + Unpin>(
    stream: &mut S,
    out: &mut BytesMut,
    edge: &Edge,
    timeout: Duration,
) -> Result<(), CloseReason> {
    if out.is_empty() {
        return Ok(());
    }
    let now = poll_fn(|cx| Poll::Ready(write_now(stream, out, cx))).await;
    let result = match now {
        Ok(true) => Ok(()),
        Err(_) => Err(CloseReason::Io),
        Ok(false) => {
            Box::pin(async {
                tokio::select! {
                    rest = tokio::time::timeout(timeout, async {
                        stream.write_all(out).await?;
                        stream.flush().await
                    }) => match rest {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(_)) => Err(CloseReason::Io),
                        Err(_) => Err(CloseReason::WriteTimeout),
                    },
                    () = aborted(edge) => Err(CloseReason::ShutdownTimeout),
                }
            })
            .await
        }
    };
    *out = BytesMut::new();
    result
}

/// Reads the CONNECT: its version and packet, or the reason the connection ends (after
/// answering a refusal where the protocol has one). Only what stays in the buffer after a
/// look for a whole CONNECT is charged to the read budget.
async fn read_connect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    rb: &mut ReadBuffer<'_>,
) -> Result<(Version, codec::Inbound), Option<CloseReason>> {
    let mut version = None;
    loop {
        if version.is_none() {
            match codec::connect_version(&rb.buf) {
                Ok(v) => version = v,
                Err(level) => {
                    if level.is_some() {
                        // Another protocol level (3.1 is 3): the MQTT 3.1.1 refusal.
                        let mut out = BytesMut::new();
                        let _ = codec::write(
                            Version::V4,
                            refusal(Version::V4, ConnectRefusal::UnsupportedVersion),
                            &mut out,
                        );
                        let _ = stream.write_all(&out).await;
                    }
                    metrics::counter!("meterflow_mqtt_denied_total", "reason" => "protocol_version")
                        .increment(1);
                    return Err(Some(CloseReason::ProtocolError));
                }
            }
        }
        if let Some(version) = version {
            match codec::read(version, &mut rb.buf, MAX_CONNECT) {
                Ok(Some(inbound)) => return Ok((version, inbound)),
                Ok(None) => {}
                Err(FrameError::TooLarge(_)) => return Err(Some(CloseReason::PacketTooLarge)),
                Err(_) => return Err(Some(CloseReason::ProtocolError)),
            }
        }
        if !rb.settle() {
            return Err(Some(CloseReason::ReadBufferBudget));
        }
        match read_some(stream, &mut rb.buf).await {
            Ok(0) | Err(_) => return Err(None),
            Ok(_) => {}
        }
    }
}

/// A connection past its CONNACK.
struct Open<'e, S> {
    stream: S,
    session: Session,
    rb: ReadBuffer<'e>,
    kick: Arc<Kick>,
    _registered: Unregister<'e>,
    /// Its place in `mqtt.max_connections`, given back when the session ends.
    _logged_in: LoggedIn<'e>,
}

/// Removes the session from the registry when the connection ends.
struct Unregister<'e> {
    edge: &'e Edge,
    identity: Option<Box<str>>,
    client_id: Box<str>,
    conn_id: u64,
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        self.edge
            .registry
            .unregister(self.identity.as_deref(), &self.client_id, self.conn_id);
    }
}

/// Reads the CONNECT (within the connect timeout), authenticates, moves the connection from
/// the pending budget to `mqtt.max_connections`, registers the session and sends the
/// CONNACK; or refuses, and says why the connection ends (`None`: nothing to count).
async fn open<'e, S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    mut pending: Box<PendingSlot>,
    cert: Option<Result<String, String>>,
    edge: &'e Edge,
    listener: ListenerInfo,
    deadline: Instant,
) -> Result<Open<'e, S>, Option<CloseReason>> {
    let peer = pending.peer();
    let conn_id = edge.next_conn.fetch_add(1, Ordering::Relaxed);
    let mut rb = ReadBuffer::new(edge);
    let connect = tokio::select! {
        c = tokio::time::timeout_at(deadline, read_connect(&mut stream, &mut rb)) => c,
        () = stopping(edge) => return Err(Some(CloseReason::ShuttingDown)),
        // Its place was taken for a newcomer (counted by `evicted`).
        () = pending.evicted() => return Err(None),
    };
    let (version, inbound) = match connect {
        Ok(c) => c?,
        Err(_) => {
            metrics::counter!("meterflow_mqtt_closed_total", "reason" => "connect_timeout")
                .increment(1);
            return Err(None);
        }
    };
    let mut out = BytesMut::new();
    let refuse = |why: ConnectRefusal, out: &mut BytesMut| {
        metrics::counter!("meterflow_mqtt_denied_total", "reason" => why.label()).increment(1);
        let _ = codec::write(version, refusal(version, why), out);
    };
    let request = match ConnectRequest::parse(version, inbound.packet, conn_id) {
        Ok(r) => r,
        Err(why) => {
            refuse(why, &mut out);
            let _ = flush(&mut stream, &mut out, edge).await;
            return Err(Some(CloseReason::ProtocolError));
        }
    };
    let (user, password) = match &request.login {
        Some(l) => (Some(l.username.as_str()), Some(l.password.as_bytes())),
        None => (None, None),
    };
    let cn = match &cert {
        Some(Ok(cn)) => Some(cn.as_str()),
        Some(Err(e)) => {
            if crate::edge::note::log_allowed() {
                tracing::warn!(%peer, error = %e, "MQTT client certificate refused");
            }
            refuse(ConnectRefusal::Denied(Denial::BadCertificate), &mut out);
            let _ = flush(&mut stream, &mut out, edge).await;
            return Err(Some(CloseReason::Denied));
        }
        None => None,
    };
    let authenticate = |store: &crate::credentials::CredentialStore| {
        let anonymous_ok = policy::anonymous_allowed(
            edge.config.allow_anonymous,
            listener.loopback,
            store.is_empty(),
        );
        let identity = auth::authenticate(store, anonymous_ok, user, password, cn)
            .map_err(ConnectRefusal::Denied)?;
        if !identity.may_use_client_id(&request.client_id, store) {
            return Err(ConnectRefusal::NotAuthorized);
        }
        Ok(identity)
    };
    let (store, generation) = edge.credentials.current_with_generation();
    let identity = match authenticate(&store) {
        Ok(p) => p,
        Err(why) => {
            // The username is named only when the credential store knows it as a meter: a
            // device that swaps the fields would otherwise leak its secret.
            if crate::edge::note::log_allowed() {
                let meter = match user {
                    None => "(none given)",
                    Some(u) if store.get(u).is_some() => u,
                    Some(_) => "(unknown, not shown)",
                };
                tracing::warn!(meter_id = meter, %peer, client_id = %request.client_id, reason = why.label(), "MQTT login refused");
            }
            refuse(why, &mut out);
            let _ = flush(&mut stream, &mut out, edge).await;
            return Err(Some(CloseReason::Denied));
        }
    };
    drop(store);
    // Logged in: out of the pending budget, into max_connections; before the registry, so a
    // connection refused here never takes a session over.
    let logged_in = match pending.log_in(edge) {
        Ok(logged_in) => logged_in,
        Err((NotLoggedIn::Full, _pending)) => {
            tracing::debug!(%peer, identity = identity.label(), "MQTT connection refused: mqtt.max_connections");
            refuse(ConnectRefusal::Busy, &mut out);
            let _ = flush(&mut stream, &mut out, edge).await;
            metrics::counter!("meterflow_mqtt_closed_total", "reason" => "max_connections")
                .increment(1);
            return Err(None);
        }
        Err((NotLoggedIn::Evicted, _)) => {
            // Its pending place was taken for a newcomer while it authenticated (counted as
            // pending_evicted), and mqtt.max_connections has no room either (one with room
            // would have been logged in): refused as busy.
            tracing::debug!(%peer, identity = identity.label(), "MQTT connection refused: its pending place was taken and mqtt.max_connections is full");
            refuse(ConnectRefusal::Busy, &mut out);
            let _ = flush(&mut stream, &mut out, edge).await;
            return Err(None);
        }
    };
    let kick = Arc::new(Kick::default());
    let registered = edge.registry.register(
        identity.id(),
        &request.client_id,
        conn_id,
        kick.clone(),
        edge.config.max_sessions_per_identity,
    );
    if registered == Registered::EvictedOldest {
        tracing::info!(%peer, identity = identity.label(), "the identity's oldest MQTT session was closed: it holds mqtt.max_sessions_per_identity sessions");
    }
    let registered = Unregister {
        edge,
        identity: identity.id().map(Box::from),
        client_id: request.client_id.as_str().into(),
        conn_id,
    };
    // Registered first, then checked: a shutdown's kick of every session, or a credential
    // change's kick of the withdrawn ones, cannot miss this one. A change since the
    // authentication above is checked against the new store.
    if edge.shutdown.is_stopping() {
        refuse(ConnectRefusal::Unavailable, &mut out);
        let _ = flush(&mut stream, &mut out, edge).await;
        return Err(Some(CloseReason::ShuttingDown));
    }
    let mut identity = identity;
    if edge.credentials.generation() != generation {
        // Authenticated against an older store: the new one decides, globs included.
        match authenticate(&edge.credentials.current()) {
            Ok(now) if now.id() == identity.id() => identity = now,
            other => {
                refuse(
                    other.err().unwrap_or(ConnectRefusal::NotAuthorized),
                    &mut out,
                );
                let _ = flush(&mut stream, &mut out, edge).await;
                return Err(Some(CloseReason::Revoked));
            }
        }
    }
    rb.authenticated();
    let (session, connack) = Session::accept(request, identity, peer, edge.config.limits());
    let _ = codec::write(version, connack, &mut out);
    flush(&mut stream, &mut out, edge).await?;
    edge.metrics.connects.increment(1);
    edge.sessions.fetch_add(1, Ordering::Relaxed);
    Ok(Open {
        stream,
        session,
        rb,
        kick,
        _registered: registered,
        _logged_in: logged_in,
    })
}

/// A publish whose answer the session waits for, with when it was read (for the ack latency).
struct Pending {
    told: oneshot::Receiver<Durability>,
    read_at: Instant,
}

/// What the session loop keeps besides the socket: everything the synchronous steps change.
struct Loop<'e> {
    session: Session,
    rb: ReadBuffer<'e>,
    pending: VecDeque<Pending>,
    out: BytesMut,
    /// Closing once every publish read is answered (nothing more is read).
    draining: Option<CloseReason>,
    /// Closing as soon as `out` is written.
    closing: Option<CloseReason>,
    /// Not read at the last look (at the receive maximum).
    paused: bool,
    /// When the last whole packet came: the keep-alive counts from it (a partial packet is
    /// no control packet).
    last_packet: Instant,
    /// Since when a partial packet waits for its rest (`mqtt.packet_timeout_ms`).
    partial_since: Option<Instant>,
}

/// What woke the session loop.
enum Event {
    Kicked(CloseReason),
    Answer(Durability),
    Read(io::Result<usize>),
    KeepAlive,
}

impl Loop<'_> {
    /// Handles the packets already read, while the session takes more; stops early at a
    /// hand-off that must wait for room (returned).
    fn take_packets(&mut self, edge: &Edge) -> Option<(Later, bool)> {
        let version = self.session.version;
        let mut whole = false;
        // Whether the buffer ends in a packet not yet whole (not packets left unread).
        let mut incomplete = false;
        let later = loop {
            if self.draining.is_some() || self.closing.is_some() || !self.session.can_read() {
                break None;
            }
            match codec::read(version, &mut self.rb.buf, edge.config.max_payload_bytes) {
                Ok(Some(inbound)) => {
                    whole = true;
                    let step = self.session.on_packet(inbound);
                    let (close, later) =
                        apply(step, &mut self.out, &mut self.pending, version, edge);
                    self.close(close);
                    if later.is_some() {
                        break later;
                    }
                }
                Ok(None) => {
                    incomplete = !self.rb.buf.is_empty();
                    break None;
                }
                Err(FrameError::TooLarge(_)) => self.closing = Some(CloseReason::PacketTooLarge),
                Err(_) => self.closing = Some(CloseReason::ProtocolError),
            }
        };
        if whole {
            self.last_packet = Instant::now();
        }
        self.partial_since = match (incomplete, self.partial_since) {
            (false, _) => None,
            // A new partial packet after whole ones, or the first one: its clock starts now.
            (true, since) if whole || since.is_none() => Some(self.last_packet.max(Instant::now())),
            (true, since) => since,
        };
        if later.is_none() && !self.rb.settle() {
            self.closing = self.closing.or(Some(CloseReason::ReadBufferBudget));
        }
        later
    }

    /// When the connection is next due to be looked at for the keep-alive or a partial
    /// packet, or the reason to close it now.
    fn due(
        &mut self,
        keep_alive: Duration,
        packet_timeout: Duration,
    ) -> Result<Instant, CloseReason> {
        let now = Instant::now();
        if !self.pending.is_empty() || self.paused {
            // Not reading (at the receive maximum, or waiting for the WAL): the client's
            // packets wait unread, so its silence, or a packet's slowness, tells nothing.
            self.last_packet = now;
            self.partial_since = self.partial_since.map(|_| now);
        }
        let partial_due = self.partial_since.map(|since| since + packet_timeout);
        if partial_due.is_some_and(|due| now >= due) {
            return Err(CloseReason::PacketTimeout);
        }
        let keep_alive_due = self.last_packet + keep_alive;
        if now >= keep_alive_due && self.draining.is_none() {
            return Err(CloseReason::KeepAlive);
        }
        let next = partial_due.map_or(keep_alive_due, |p| p.min(keep_alive_due));
        Ok(next.max(now + Duration::from_millis(100)))
    }

    fn close(&mut self, close: Option<Close>) {
        match close {
            Some(Close::Now(r)) => self.closing = self.closing.or(Some(r)),
            Some(Close::Drained(r)) => self.draining = self.draining.or(Some(r)),
            None => {}
        }
    }

    /// The WAL's answer for the oldest waiting publish, and whatever other answers are
    /// already there, into `out`.
    fn take_answers(&mut self, first: Durability, edge: &Edge) {
        let mut next = Some(first);
        while let Some(outcome) = next.take() {
            if let Some(p) = self.pending.pop_front() {
                edge.metrics
                    .ack_seconds
                    .record(p.read_at.elapsed().as_secs_f64());
            }
            let version = self.session.version;
            // An answer from the WAL never carries a message of its own.
            let step = self.session.on_durable(&outcome);
            let (close, _) = apply(step, &mut self.out, &mut self.pending, version, edge);
            self.close(close);
            if self.closing.is_some() {
                return;
            }
            next = match self.pending.front_mut().map(|p| p.told.try_recv()) {
                Some(Ok(d)) => Some(d),
                Some(Err(oneshot::error::TryRecvError::Closed)) => Some(Durability::Failed),
                Some(Err(oneshot::error::TryRecvError::Empty)) | None => None,
            };
        }
    }
}

/// The connection after CONNACK, until it closes; the reason it closed. Its awaits hold only
/// small futures (see the module's note on memory); the work is in [`Loop`]'s methods.
async fn run<S: AsyncRead + AsyncWrite + Unpin>(open: Open<'_, S>, edge: &Edge) -> CloseReason {
    let Open {
        mut stream,
        session,
        rb,
        kick,
        _registered,
        _logged_in,
    } = open;
    let keep_alive = session.keep_alive_deadline();
    let mut lp = Loop {
        session,
        rb,
        pending: VecDeque::new(),
        out: BytesMut::new(),
        draining: None,
        closing: None,
        paused: false,
        last_packet: Instant::now(),
        partial_since: None,
    };
    let packet_timeout = Duration::from_millis(edge.config.packet_timeout_ms);
    let timer = tokio::time::sleep(keep_alive);
    tokio::pin!(timer);
    let mut kicked_for = None;
    let reason = loop {
        if let Some((later, wait)) = lp.take_packets(edge) {
            match hand_off_later(later, edge).await {
                Ok(told) if wait => lp.pending.push_back(Pending {
                    told,
                    read_at: Instant::now(),
                }),
                Ok(_) => {}
                Err(reason) => lp.closing = lp.closing.or(Some(reason)),
            }
            continue;
        }
        if let Some(since) = lp.partial_since {
            // A partial packet's deadline may come before the keep-alive's.
            let due = since + packet_timeout;
            if due < timer.deadline() {
                timer.as_mut().reset(due);
            }
        }
        if let Err(reason) = flush(&mut stream, &mut lp.out, edge).await {
            break reason;
        }
        if let Some(reason) = lp.closing {
            break reason;
        }
        if let Some(reason) = lp.draining {
            if lp.pending.is_empty() {
                break reason;
            }
        }
        let readable = lp.draining.is_none() && lp.session.can_read();
        if !readable && lp.draining.is_none() && !lp.paused {
            // At the receive maximum: not read further until the WAL answers.
            edge.metrics.backpressure.increment(1);
        }
        lp.paused = !readable;
        let event = tokio::select! {
            biased;
            reason = kick.kicked(kicked_for) => Event::Kicked(reason),
            told = poll_fn(|cx| Pin::new(&mut lp.pending[0].told).poll(cx)), if !lp.pending.is_empty() => {
                Event::Answer(told.unwrap_or(Durability::Failed))
            }
            read = read_some(&mut stream, &mut lp.rb.buf), if readable => Event::Read(read),
            () = &mut timer => Event::KeepAlive,
        };
        match event {
            Event::Kicked(reason) => {
                kicked_for = Some(reason);
                match reason {
                    // Answer what was read, then close.
                    CloseReason::ShuttingDown => lp.draining = Some(reason),
                    _ => break reason,
                }
            }
            Event::Answer(outcome) => lp.take_answers(outcome, edge),
            Event::Read(Ok(0)) => break CloseReason::ClientDisconnect,
            Event::Read(Ok(_)) => {}
            Event::Read(Err(_)) => break CloseReason::Io,
            Event::KeepAlive => match lp.due(keep_alive, packet_timeout) {
                Ok(next) => timer.as_mut().reset(next),
                Err(reason) => break reason,
            },
        }
    };
    if let Some(packet) = lp.session.disconnect(reason) {
        let _ = codec::write(lp.session.version, packet, &mut lp.out);
    }
    let _ = flush_within(&mut stream, &mut lp.out, edge, CLOSE_WRITE).await;
    if reason != CloseReason::ClientDisconnect {
        // A TLS close_notify, or a FIN before the close.
        let _ = Box::pin(tokio::time::timeout(
            Duration::from_secs(1),
            stream.shutdown(),
        ))
        .await;
    }
    reason
}

/// Carries out a step without waiting: its packets into `out`, its message to the WAL writer,
/// its counters. Returns its close decision, and a hand-off that must wait for room (rare).
fn apply(
    step: Step,
    out: &mut BytesMut,
    pending: &mut VecDeque<Pending>,
    version: Version,
    edge: &Edge,
) -> (Option<Close>, Option<(Later, bool)>) {
    let Step {
        packets,
        submit,
        close,
        denied,
    } = step;
    for packet in packets {
        if let Err(e) = codec::write(version, packet, out) {
            tracing::warn!(error = %e, "encoding an MQTT packet");
            return (Some(Close::Now(CloseReason::ProtocolError)), None);
        }
    }
    if let Some(label) = denied {
        metrics::counter!("meterflow_mqtt_denied_total", "reason" => label).increment(1);
        // The refusal's note says who, from where, and what (the topic, cut).
        let note = submit.as_ref().and_then(|s| s.edge_note.as_deref());
        if let (Some(note), true) = (note, crate::edge::note::log_allowed()) {
            tracing::warn!(
                identity = note.identity.as_deref().unwrap_or("anonymous"),
                peer = %note.peer,
                reason = %note.reason,
                "MQTT publish refused"
            );
        }
    }
    if let Some(submit) = submit {
        let wait = submit.wait;
        match submit_now(submit, edge) {
            Submitted::Sent(told) if wait => pending.push_back(Pending {
                told,
                read_at: Instant::now(),
            }),
            Submitted::Sent(_) => {}
            Submitted::Later(later) => return (close, Some((later, wait))),
        }
    }
    (close, None)
}

/// Waits for room for a hand-off [`apply`] could not make at once (a boxed future, so that a
/// connection's task stays small), but not past a shutdown's drain time.
fn hand_off_later(
    later: Later,
    edge: &Edge,
) -> Pin<Box<dyn Future<Output = Result<oneshot::Receiver<Durability>, CloseReason>> + Send + '_>> {
    Box::pin(async move {
        tokio::select! {
            told = later.wait(edge) => told.ok_or(CloseReason::WalError),
            () = aborted(edge) => Err(CloseReason::ShutdownTimeout),
        }
    })
}

/// How a hand-off to the WAL writer went without waiting.
enum Submitted {
    /// In the writer's channel; the receiver of its durability.
    Sent(oneshot::Receiver<Durability>),
    /// The byte budget or the channel is full: wait for room.
    Later(Later),
}

/// A hand-off that waits for the byte budget or for room in the writer's channel.
enum Later {
    Budget(Submit, u32),
    Room(Submission, oneshot::Receiver<Durability>),
}

/// A publish's bytes in `mqtt.max_inflight_bytes` (payload, topic, and the record's overhead).
fn budget_bytes(submit: &Submit) -> u32 {
    u32::try_from(submit.payload.len() + submit.topic.len() + 64).unwrap_or(u32::MAX)
}

fn submission(
    submit: Submit,
    budget: Budget,
    edge: &Edge,
) -> (Submission, oneshot::Receiver<Durability>) {
    let (tx, rx) = oneshot::channel();
    edge.metrics.received.increment(1);
    let message = RawMessage {
        content_type: submit.content_type,
        edge_note: submit.edge_note,
        via: submit.via,
        ..RawMessage::new(Source::Mqtt, submit.topic, submit.payload)
    };
    let submission = Submission {
        message,
        notify: submit.wait.then_some(tx),
        budget: Some(Box::new(budget)),
    };
    (submission, rx)
}

/// Hands a message to the WAL writer if the byte budget and the channel have room now.
fn submit_now(submit: Submit, edge: &Edge) -> Submitted {
    let bytes = budget_bytes(&submit);
    let Ok(permit) = edge.budget.clone().try_acquire_many_owned(bytes) else {
        edge.metrics.backpressure.increment(1);
        return Submitted::Later(Later::Budget(submit, bytes));
    };
    let budget = Budget::new(permit, &edge.metrics.inflight_bytes);
    let (submission, rx) = submission(submit, budget, edge);
    match edge.wal.try_send(submission) {
        Ok(()) => Submitted::Sent(rx),
        Err(flume::TrySendError::Full(submission)) => {
            edge.metrics.backpressure.increment(1);
            Submitted::Later(Later::Room(submission, rx))
        }
        // The writer is gone: the receiver reads as failed.
        Err(flume::TrySendError::Disconnected(_)) => Submitted::Sent(rx),
    }
}

impl Later {
    /// Waits for room; the receiver of the message's durability, `None` when the writer is
    /// gone.
    async fn wait(self, edge: &Edge) -> Option<oneshot::Receiver<Durability>> {
        let (submission, rx) = match self {
            Later::Budget(submit, bytes) => {
                let permit = edge.budget.clone().acquire_many_owned(bytes).await.ok()?;
                let budget = Budget::new(permit, &edge.metrics.inflight_bytes);
                submission(submit, budget, edge)
            }
            Later::Room(submission, rx) => (submission, rx),
        };
        edge.wal.send_async(submission).await.ok()?;
        Some(rx)
    }
}

#[cfg(test)]
pub(super) mod sizes {
    //! The task of an idle connection is held to a memory budget.
    use super::*;

    /// Bytes of the session loop's future (boxed: the memory of an established connection).
    pub fn run_future(edge: &Edge, stream: TcpStream, session: Session) -> usize {
        let open = Open {
            stream,
            session,
            rb: ReadBuffer::new(edge),
            kick: Arc::new(Kick::default()),
            _registered: Unregister {
                edge,
                identity: None,
                client_id: "x".into(),
                conn_id: 0,
            },
            _logged_in: LoggedIn::take(edge).expect("room"),
        };
        let f = run(open, edge);
        std::mem::size_of_val(&f)
    }

    /// Bytes of the future a plain connection's task runs.
    pub fn plain_connection_task(edge: Arc<Edge>, stream: TcpStream) -> usize {
        let peer = stream.peer_addr().expect("a peer");
        let info = ListenerInfo {
            tls: false,
            loopback: true,
        };
        let pending = Box::new(PendingSlot::take(&edge, peer).expect("a pending slot"));
        std::mem::size_of_val(&run_plain(stream, pending, info))
    }

    /// Bytes of the future a TLS connection's task runs.
    pub fn tls_connection_task(edge: Arc<Edge>, stream: TcpStream) -> usize {
        let peer = stream.peer_addr().expect("a peer");
        let info = ListenerInfo {
            tls: true,
            loopback: true,
        };
        let pending = Box::new(PendingSlot::take(&edge, peer).expect("a pending slot"));
        std::mem::size_of_val(&run_tls(stream, pending, info))
    }
}
