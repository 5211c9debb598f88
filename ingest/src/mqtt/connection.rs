//! The socket side of one MQTT connection: a thin loop around [`Session`]. It reads packets
//! while the session may take more, writes what the session answers, hands publishes to the
//! WAL writer (waiting, without reading further, while the in-flight byte budget or the
//! writer's channel is full), and closes on the session's word, a kick (takeover, revoke,
//! shutdown) or the keep-alive.
//!
//! Idle connections hold no buffers: bytes are read into a per-thread scratch buffer and only
//! what a partial packet needs is kept, so an idle plain connection costs its task, its
//! session and the kernel's socket.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
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
use super::registry::Kick;
use super::session::{refusal, Close, CloseReason, ConnectRequest, Refusal, Session, Step, Submit};
use super::{Edge, ListenerInfo, RUNNING};
use crate::message::{now_ms, RawMessage};
use crate::wal_writer::{Durability, Submission};

/// Bytes read from a socket at once.
const READ_CHUNK: usize = 16 * 1024;
/// A CONNECT larger than this is refused before authentication.
const MAX_CONNECT: usize = 64 * 1024;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
}

/// Counts the connection in `meterflow_mqtt_connections` for exactly as long as it lives.
struct Counted(Arc<Edge>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.connections.decrement(1.0);
    }
}

/// Takes a connection the accept loop counted already.
pub(super) async fn run_plain(
    stream: TcpStream,
    peer: SocketAddr,
    edge: Arc<Edge>,
    listener: ListenerInfo,
) {
    let _counted = Counted(edge.clone());
    let reason = serve(stream, peer, None, &edge, listener).await;
    closed(reason);
}

pub(super) async fn run_tls(
    stream: TcpStream,
    peer: SocketAddr,
    edge: Arc<Edge>,
    listener: ListenerInfo,
) {
    let _counted = Counted(edge.clone());
    let Some(tls) = edge.tls.as_ref() else {
        return;
    };
    let acceptor = tls.acceptor();
    let handshake = tokio::time::timeout(edge.connect_timeout(), acceptor.accept(stream)).await;
    let stream = match handshake {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "MQTT TLS handshake failed");
            metrics::counter!("meterflow_mqtt_closed_total", "reason" => "tls_handshake")
                .increment(1);
            return;
        }
        Err(_) => {
            metrics::counter!("meterflow_mqtt_closed_total", "reason" => "connect_timeout")
                .increment(1);
            return;
        }
    };
    let cn = super::tls::client_cn(stream.get_ref().1);
    let reason = serve(stream, peer, cn, &edge, listener).await;
    closed(reason);
}

fn closed(reason: Option<CloseReason>) {
    if let Some(reason) = reason {
        metrics::counter!("meterflow_mqtt_closed_total", "reason" => reason.label()).increment(1);
    }
}

/// The read buffer of a connection, with its share of `mqtt.max_read_buffer_bytes`.
struct ReadBuffer<'e> {
    buf: BytesMut,
    charged: usize,
    edge: &'e Edge,
}

impl ReadBuffer<'_> {
    /// Frees the buffer when no partial packet is in it, and charges a partial one to the
    /// budget of every connection; false when the budget is exhausted.
    fn settle(&mut self) -> bool {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
        let now = self.buf.len();
        if now == self.charged {
            return true;
        }
        let total = if now > self.charged {
            self.edge
                .read_buffered
                .fetch_add(now - self.charged, Ordering::AcqRel)
                + now
                - self.charged
        } else {
            self.edge
                .read_buffered
                .fetch_sub(self.charged - now, Ordering::AcqRel)
                - (self.charged - now)
        };
        self.charged = now;
        self.edge.metrics.read_buffer.set(total as f64);
        total <= self.edge.config.max_read_buffer_bytes || now == 0
    }
}

impl Drop for ReadBuffer<'_> {
    fn drop(&mut self) {
        if self.charged > 0 {
            self.edge
                .read_buffered
                .fetch_sub(self.charged, Ordering::AcqRel);
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

/// Writes `out` (and frees it) within the write timeout.
async fn flush<S: AsyncWrite + Unpin>(
    stream: &mut S,
    out: &mut BytesMut,
    edge: &Edge,
) -> Result<(), CloseReason> {
    if out.is_empty() {
        return Ok(());
    }
    let write = async {
        stream.write_all(out).await?;
        stream.flush().await
    };
    let result =
        tokio::time::timeout(Duration::from_millis(edge.config.write_timeout_ms), write).await;
    *out = BytesMut::new();
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(CloseReason::Io),
        Err(_) => Err(CloseReason::WriteTimeout),
    }
}

/// Reads the CONNECT within the connect timeout: its version and packet, or the reason the
/// connection ends (after answering a refusal where the protocol has one).
async fn read_connect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    rb: &mut ReadBuffer<'_>,
) -> Result<(Version, codec::Inbound), Option<CloseReason>> {
    let version = loop {
        match codec::connect_version(&rb.buf) {
            Ok(Some(v)) => break v,
            Ok(None) => {}
            Err(level) => {
                if level.is_some() {
                    // Another protocol level (3.1 is 3): the MQTT 3.1.1 refusal.
                    let mut out = BytesMut::new();
                    let _ = codec::write(
                        Version::V4,
                        refusal(Version::V4, Refusal::UnsupportedVersion),
                        &mut out,
                    );
                    let _ = stream.write_all(&out).await;
                }
                metrics::counter!("meterflow_mqtt_denied_total", "reason" => "protocol_version")
                    .increment(1);
                return Err(Some(CloseReason::ProtocolError));
            }
        }
        match read_some(stream, &mut rb.buf).await {
            Ok(0) | Err(_) => return Err(None),
            Ok(_) => {}
        }
        if !rb.settle() {
            return Err(Some(CloseReason::ReadBufferBudget));
        }
    };
    loop {
        match codec::read(version, &mut rb.buf, MAX_CONNECT) {
            Ok(Some(inbound)) => return Ok((version, inbound)),
            Ok(None) => {}
            Err(FrameError::TooLarge(_)) => return Err(Some(CloseReason::PacketTooLarge)),
            Err(_) => return Err(Some(CloseReason::ProtocolError)),
        }
        match read_some(stream, &mut rb.buf).await {
            Ok(0) | Err(_) => return Err(None),
            Ok(_) => {}
        }
        if !rb.settle() {
            return Err(Some(CloseReason::ReadBufferBudget));
        }
    }
}

/// Takes the connection from CONNECT to its end; the reason it ended (None: before CONNECT).
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    cert: Option<Result<String, String>>,
    edge: &Arc<Edge>,
    listener: ListenerInfo,
) -> Option<CloseReason> {
    let conn_id = edge.next_conn.fetch_add(1, Ordering::Relaxed);
    let mut rb = ReadBuffer {
        buf: BytesMut::new(),
        charged: 0,
        edge,
    };
    let connect =
        tokio::time::timeout(edge.connect_timeout(), read_connect(&mut stream, &mut rb)).await;
    let (version, inbound) = match connect {
        Ok(Ok(c)) => c,
        Ok(Err(reason)) => return reason,
        Err(_) => {
            metrics::counter!("meterflow_mqtt_closed_total", "reason" => "connect_timeout")
                .increment(1);
            return None;
        }
    };
    let mut out = BytesMut::new();
    let refuse = |why: Refusal, out: &mut BytesMut| {
        metrics::counter!("meterflow_mqtt_denied_total", "reason" => why.label()).increment(1);
        let _ = codec::write(version, refusal(version, why), out);
    };
    let request = match ConnectRequest::parse(version, inbound.packet, conn_id) {
        Ok(r) => r,
        Err(why) => {
            refuse(why, &mut out);
            let _ = flush(&mut stream, &mut out, edge).await;
            return Some(CloseReason::ProtocolError);
        }
    };
    if edge.state() != RUNNING {
        refuse(Refusal::Unavailable, &mut out);
        let _ = flush(&mut stream, &mut out, edge).await;
        return Some(CloseReason::ShuttingDown);
    }
    let store = edge.credentials.current();
    let anonymous_ok = edge.config.allow_anonymous || (store.is_empty() && listener.loopback);
    let (user, password) = match &request.login {
        Some(l) => (Some(l.username.as_str()), Some(l.password.as_bytes())),
        None => (None, None),
    };
    let cn = match &cert {
        Some(Ok(cn)) => Some(cn.as_str()),
        Some(Err(e)) => {
            tracing::debug!(%peer, error = %e, "MQTT client certificate refused");
            refuse(Refusal::Denied(Denial::BadCertificate), &mut out);
            let _ = flush(&mut stream, &mut out, edge).await;
            return Some(CloseReason::Denied);
        }
        None => None,
    };
    let principal = match auth::authenticate(&store, anonymous_ok, user, password, cn) {
        Ok(p) => p,
        Err(denial) => {
            tracing::debug!(%peer, client_id = %request.client_id, username = ?user, reason = denial.label(), "MQTT connection refused");
            refuse(Refusal::Denied(denial), &mut out);
            let _ = flush(&mut stream, &mut out, edge).await;
            return Some(CloseReason::Denied);
        }
    };
    drop(store);
    let kick = Arc::new(Kick::default());
    let registered =
        edge.registry
            .register(&request.client_id, principal.id(), conn_id, kick.clone());
    if registered == super::registry::Registered::Refused {
        tracing::info!(%peer, client_id = %request.client_id, identity = principal.label(), "MQTT session takeover refused: another identity holds this client id");
        refuse(Refusal::NotAuthorized, &mut out);
        let _ = flush(&mut stream, &mut out, edge).await;
        return Some(CloseReason::Denied);
    }
    let (session, connack) = Session::accept(request, principal, peer, edge.limits());
    let _registered = Registered {
        edge,
        client_id: session.client_id.clone(),
        conn_id,
    };
    let _ = codec::write(version, connack, &mut out);
    if let Err(reason) = flush(&mut stream, &mut out, edge).await {
        return Some(reason);
    }
    edge.metrics.connects.increment(1);
    Some(run(stream, session, rb, kick, edge).await)
}

/// Removes the session from the registry when the connection ends.
struct Registered<'e> {
    edge: &'e Edge,
    client_id: Box<str>,
    conn_id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.edge.registry.unregister(&self.client_id, self.conn_id);
    }
}

/// A publish whose answer the session waits for, with when it was read (for the ack latency).
struct Pending {
    told: oneshot::Receiver<Durability>,
    read_at: Instant,
}

/// The connection after CONNACK, until it closes; the reason it closed.
async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    mut session: Session,
    mut rb: ReadBuffer<'_>,
    kick: Arc<Kick>,
    edge: &Arc<Edge>,
) -> CloseReason {
    let version = session.version;
    let max_packet = edge.config.max_payload_bytes;
    let keep_alive = session.keep_alive_deadline();
    let mut last_read = Instant::now();
    let keep_alive_timer = tokio::time::sleep(keep_alive);
    tokio::pin!(keep_alive_timer);
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut out = BytesMut::new();
    let mut draining: Option<CloseReason> = None;
    let mut state = edge.state.subscribe();
    let mut paused = false;
    let close_now = loop {
        // Packets already read, while the session takes more.
        let mut now_reason = None;
        while draining.is_none() && now_reason.is_none() && session.can_read() {
            match codec::read(version, &mut rb.buf, max_packet) {
                Ok(Some(inbound)) => {
                    let step = session.on_packet(inbound);
                    match apply(step, &mut out, &mut pending, version, edge).await {
                        Some(Close::Now(r)) => now_reason = Some(r),
                        Some(Close::Drained(r)) => draining = Some(r),
                        None => {}
                    }
                }
                Ok(None) => break,
                Err(FrameError::TooLarge(_)) => now_reason = Some(CloseReason::PacketTooLarge),
                Err(_) => now_reason = Some(CloseReason::ProtocolError),
            }
        }
        if !rb.settle() {
            now_reason = now_reason.or(Some(CloseReason::ReadBufferBudget));
        }
        if let Err(reason) = flush(&mut stream, &mut out, edge).await {
            break reason;
        }
        if let Some(reason) = now_reason {
            break reason;
        }
        if let Some(reason) = draining {
            if pending.is_empty() {
                break reason;
            }
        }
        let readable = draining.is_none() && session.can_read();
        if !readable && draining.is_none() && !paused {
            // At the receive maximum: not read further until the WAL answers.
            edge.metrics.backpressure.increment(1);
        }
        paused = !readable;
        tokio::select! {
            biased;
            reason = kick.kicked() => match reason {
                CloseReason::ShuttingDown => draining = Some(reason),
                _ => break reason,
            },
            changed = state.changed(), if draining.is_none() => {
                let s = *state.borrow_and_update();
                if changed.is_err() || s != RUNNING {
                    draining = Some(CloseReason::ShuttingDown);
                }
            }
            told = poll_fn(|cx| Pin::new(&mut pending[0].told).poll(cx)), if !pending.is_empty() => {
                let first = pending.pop_front().map(|p| p.read_at);
                let mut outcomes = vec![(told.unwrap_or(Durability::Failed), first)];
                // Whatever else is already answered goes out in the same write.
                while let Some(p) = pending.front_mut() {
                    match p.told.try_recv() {
                        Ok(d) => {
                            let at = p.read_at;
                            pending.pop_front();
                            outcomes.push((d, Some(at)));
                        }
                        Err(oneshot::error::TryRecvError::Empty) => break,
                        Err(oneshot::error::TryRecvError::Closed) => {
                            pending.pop_front();
                            outcomes.push((Durability::Failed, None));
                        }
                    }
                }
                let mut stop = None;
                for (outcome, read_at) in outcomes {
                    if let Some(at) = read_at {
                        edge.metrics.ack_seconds.record(at.elapsed().as_secs_f64());
                    }
                    match apply(session.on_durable(&outcome), &mut out, &mut pending, version, edge).await {
                        Some(Close::Now(r)) => { stop = Some(r); break; }
                        Some(Close::Drained(r)) => draining = Some(r),
                        None => {}
                    }
                }
                if let Some(r) = stop {
                    let _ = flush(&mut stream, &mut out, edge).await;
                    break r;
                }
            }
            read = read_some(&mut stream, &mut rb.buf), if readable => match read {
                Ok(0) => break CloseReason::ClientDisconnect,
                Ok(_) => last_read = Instant::now(),
                Err(_) => break CloseReason::Io,
            },
            () = &mut keep_alive_timer => {
                let due = last_read + keep_alive;
                if Instant::now() >= due && draining.is_none() {
                    break CloseReason::KeepAlive;
                }
                keep_alive_timer.as_mut().reset(due.max(Instant::now() + Duration::from_secs(1)));
            }
        }
        if *state.borrow() == super::ABORT {
            break CloseReason::ShuttingDown;
        }
    };
    if let Some(packet) = session.disconnect(close_now) {
        let _ = codec::write(version, packet, &mut out);
        let _ = flush(&mut stream, &mut out, edge).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
    close_now
}

/// Carries out a step: its packets into `out`, its message to the WAL writer (waiting for
/// room), its counters. Returns its close decision.
async fn apply(
    step: Step,
    out: &mut BytesMut,
    pending: &mut VecDeque<Pending>,
    version: Version,
    edge: &Edge,
) -> Option<Close> {
    for packet in step.packets {
        if let Err(e) = codec::write(version, packet, out) {
            tracing::warn!(error = %e, "encoding an MQTT packet");
            return Some(Close::Now(CloseReason::ProtocolError));
        }
    }
    if let Some(label) = step.denied {
        metrics::counter!("meterflow_mqtt_denied_total", "reason" => label).increment(1);
    }
    if let Some(submit) = step.submit {
        let wait = submit.wait;
        match submit_to_wal(submit, edge).await {
            Some(told) if wait => pending.push_back(Pending {
                told,
                read_at: Instant::now(),
            }),
            Some(_) => {}
            None => return Some(Close::Now(CloseReason::WalError)),
        }
    }
    step.close
}

/// Hands a message to the WAL writer once the in-flight byte budget and the writer's channel
/// have room; the receiver of its durability. `None` when the writer is gone.
async fn submit_to_wal(submit: Submit, edge: &Edge) -> Option<oneshot::Receiver<Durability>> {
    let bytes = submit.payload.len() + submit.topic.len() + 64;
    let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
    let permit = match edge.budget.clone().try_acquire_many_owned(bytes) {
        Ok(p) => p,
        Err(_) => {
            edge.metrics.backpressure.increment(1);
            edge.budget.clone().acquire_many_owned(bytes).await.ok()?
        }
    };
    let (tx, rx) = oneshot::channel();
    let message = RawMessage {
        lsn: 0,
        topic: submit.topic,
        payload: submit.payload,
        source: Source::Mqtt,
        received_at_ms: now_ms(),
        content_type: submit.content_type,
        refused: submit.refused,
    };
    edge.metrics.received.increment(1);
    let submission = Submission {
        message,
        notify: submit.wait.then_some(tx),
        budget: Some(super::Budget::new(permit, &edge.metrics.inflight_bytes)),
    };
    match edge.wal.try_send(submission) {
        Ok(()) => {}
        Err(flume::TrySendError::Full(submission)) => {
            edge.metrics.backpressure.increment(1);
            edge.wal.send_async(submission).await.ok()?;
        }
        Err(flume::TrySendError::Disconnected(_)) => return None,
    }
    Some(rx)
}
