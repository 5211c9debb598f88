//! The HTTP listener: hyper's HTTP/1 connection under an accept loop of our own, so that what
//! a client can hold is bounded (`axum::serve` has none of these bounds):
//! - at most `http.max_connections` open connections: one more is closed at accept;
//! - a request head must arrive whole within `http.header_read_timeout_ms` (from the accept for
//!   the first request, from its first byte for a later one);
//! - a connection with nothing read or written for `http.idle_timeout_ms` while no request is
//!   being answered is closed (between requests, or a client that stopped reading its answer);
//! - a head over `http.max_header_bytes` is answered 431 by hyper and the connection closed,
//!   and hyper buffers no more than that (or its 8 KiB minimum) while reading one.
//!
//! hyper's own `header_read_timeout` is not used: it also runs while a kept-alive connection
//! waits for its next request, so "idle" and "slow head" could not have their own limits. The
//! timing here is [`Activity`]: the socket's reads and writes and the requests being answered,
//! watched by each connection's task.
//!
//! Gauge `meterflow_http_connections` (exact: counted at accept, uncounted when closed);
//! `meterflow_http_closed_total{reason}`; `meterflow_http_accept_errors_total`.
//!
//! At the stop (the last step of the runtime's shutdown, so `/ready` answers "stopping"
//! until then): the listener closes, connections between requests or still reading a head
//! close, a request being answered is answered (its connection then closes).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::HttpConfig;

/// hyper's smallest read buffer (its `max_buf_size` panics below it).
const MIN_BUF_BYTES: usize = 8192;

/// Why a connection was closed: the `reason` of `meterflow_http_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    /// The client closed it, or asked for it to be closed (`Connection: close`).
    Client,
    /// Refused at accept: `http.max_connections` were open.
    MaxConnections,
    /// A request head did not arrive whole within `http.header_read_timeout_ms`.
    HeaderTimeout,
    /// Nothing read or written for `http.idle_timeout_ms` while no request was being answered.
    IdleTimeout,
    /// A head over `http.max_header_bytes`: answered 431.
    HeaderTooLarge,
    /// Not HTTP/1 (hyper answered 400 where it could).
    BadRequest,
    /// Closed by the stop.
    Shutdown,
    /// A socket error (reset by the peer...).
    Io,
}

impl Closed {
    fn label(self) -> &'static str {
        match self {
            Closed::Client => "client",
            Closed::MaxConnections => "max_connections",
            Closed::HeaderTimeout => "header_timeout",
            Closed::IdleTimeout => "idle_timeout",
            Closed::HeaderTooLarge => "header_too_large",
            Closed::BadRequest => "bad_request",
            Closed::Shutdown => "shutdown",
            Closed::Io => "io",
        }
    }

    fn count(self) {
        metrics::counter!("meterflow_http_closed_total", "reason" => self.label()).increment(1);
    }

    /// Why hyper's connection ended by itself.
    fn of(result: &Result<(), hyper::Error>, stopping: bool) -> Closed {
        match result {
            Ok(()) if stopping => Closed::Shutdown,
            Ok(()) => Closed::Client,
            Err(e) if e.is_parse_too_large() => Closed::HeaderTooLarge,
            Err(e) if e.is_parse() => Closed::BadRequest,
            Err(e) if e.is_incomplete_message() => Closed::Client,
            Err(_) => Closed::Io,
        }
    }
}

/// The bounds of every connection, from `[http]`.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_connections: usize,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    max_header_bytes: usize,
}

impl From<&HttpConfig> for Limits {
    fn from(config: &HttpConfig) -> Limits {
        Limits {
            max_connections: config.max_connections,
            header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(config.idle_timeout_ms),
            max_header_bytes: config.max_header_bytes,
        }
    }
}

/// Serves `app` on `listener` within the bounds of `config` until `stop` completes (or its
/// sender is dropped); then stops accepting and waits for the open connections to end.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    config: &HttpConfig,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let limits = Limits::from(config);
    let open = Arc::new(AtomicUsize::new(0));
    metrics::gauge!("meterflow_http_connections").set(0.0);
    let (stopping, stopping_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut errors: u64 = 0;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut stop => break,
            // Finished connections are reaped as they end.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        match accepted {
            Ok((stream, _peer)) => {
                let Some(counted) = OpenConnection::count(&open, limits.max_connections) else {
                    Closed::MaxConnections.count();
                    continue; // dropping the stream closes it
                };
                connections.spawn(connection(
                    stream,
                    app.clone(),
                    limits,
                    stopping_rx.clone(),
                    counted,
                ));
            }
            Err(e) => {
                // Out of file descriptors or memory: say so now and then, and do not spin.
                errors += 1;
                metrics::counter!("meterflow_http_accept_errors_total").increment(1);
                if errors.is_power_of_two() {
                    tracing::warn!(error = %e, errors, "accepting HTTP connections");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    drop(listener);
    let _ = stopping.send(true);
    while connections.join_next().await.is_some() {}
}

/// One open connection in `meterflow_http_connections`, uncounted when dropped.
struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    /// Counts one more open connection, unless `max` are open.
    fn count(open: &Arc<AtomicUsize>, max: usize) -> Option<OpenConnection> {
        if open.fetch_add(1, Ordering::AcqRel) >= max {
            open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        metrics::gauge!("meterflow_http_connections").increment(1.0);
        Some(OpenConnection(open.clone()))
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("meterflow_http_connections").decrement(1.0);
    }
}

/// One connection: hyper's HTTP/1 state machine, closed when [`Activity`] says a limit has
/// passed, and told to finish at the stop.
async fn connection(
    stream: TcpStream,
    app: axum::Router,
    limits: Limits,
    mut stopping: watch::Receiver<bool>,
    _counted: OpenConnection,
) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        stream,
        activity: activity.clone(),
    });
    let router = TowerToHyperService::new(app);
    let answering = activity.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let busy = answering.answering();
        let answer = hyper::service::Service::call(&router, request);
        async move {
            let answer = answer.await;
            drop(busy);
            answer
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        // Our own (see the module's doc); hyper's would need its timer.
        .header_read_timeout(None)
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes.max(MIN_BUF_BYTES));
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut stop_asked = false;
    let closed = loop {
        let deadline = activity.deadline(&limits);
        tokio::select! {
            result = conn.as_mut() => break Closed::of(&result, stop_asked),
            // A request began or ended, or a head began: the deadline moves.
            () = activity.changed.notified() => {}
            () = sleep_until(deadline), if deadline.is_some() => {
                if let Some(why) = activity.expired(&limits) {
                    break why; // dropping the connection closes the socket
                }
            }
            _ = stopping.changed(), if !stop_asked => {
                stop_asked = true;
                // Between requests hyper closes at once; a request being answered is answered
                // first. A head on its way has asked nothing yet: closed now, not after its
                // timeout.
                conn.as_mut().graceful_shutdown();
                if activity.reading_head() {
                    break Closed::Shutdown;
                }
            }
        }
    };
    closed.count();
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What a connection is doing, for its deadlines. Written from inside hyper's poll (the socket
/// and the service), read by the connection's task; all on one task, so the atomics are never
/// contended. Times are milliseconds since the accept.
struct Activity {
    accepted: Instant,
    /// The last read or write that moved bytes, or the end of the last answer.
    last_io_ms: AtomicU64,
    /// When the head being read began, plus one (0: none is being read).
    head_since_ms: AtomicU64,
    /// Requests being answered (the handler runs).
    answering: AtomicUsize,
    /// A deadline moved earlier or appeared.
    changed: Notify,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            accepted: Instant::now(),
            last_io_ms: AtomicU64::new(0),
            // The first head is awaited from the accept.
            head_since_ms: AtomicU64::new(1),
            answering: AtomicUsize::new(0),
            changed: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.accepted.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn at(&self, ms: u64) -> Option<Instant> {
        self.accepted.checked_add(Duration::from_millis(ms))
    }

    fn on_read(&self) {
        let now = self.now_ms();
        self.last_io_ms.store(now, Ordering::Release);
        // Bytes while nothing is answered and no head is awaited: the next request's head.
        if self.answering.load(Ordering::Acquire) == 0
            && self.head_since_ms.load(Ordering::Acquire) == 0
        {
            self.head_since_ms.store(now + 1, Ordering::Release);
            self.changed.notify_one();
        }
    }

    fn on_write(&self) {
        self.last_io_ms.store(self.now_ms(), Ordering::Release);
    }

    /// A request's head has arrived and its handler runs until the guard is dropped.
    fn answering(self: &Arc<Self>) -> Answering {
        self.answering.fetch_add(1, Ordering::AcqRel);
        self.head_since_ms.store(0, Ordering::Release);
        self.changed.notify_one();
        Answering(self.clone())
    }

    fn reading_head(&self) -> bool {
        self.answering.load(Ordering::Acquire) == 0
            && self.head_since_ms.load(Ordering::Acquire) != 0
    }

    /// The head's deadline, if one is being read, and the idle one, if nothing is answered.
    fn deadlines(&self, limits: &Limits) -> (Option<u64>, Option<u64>) {
        let head = match self.head_since_ms.load(Ordering::Acquire) {
            0 => None,
            since => Some((since - 1).saturating_add(ms(limits.header_read_timeout))),
        };
        let idle = (self.answering.load(Ordering::Acquire) == 0).then(|| {
            self.last_io_ms
                .load(Ordering::Acquire)
                .saturating_add(ms(limits.idle_timeout))
        });
        (head, idle)
    }

    /// The earliest deadline now, if any.
    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        let (head, idle) = self.deadlines(limits);
        let earliest = match (head, idle) {
            (Some(h), Some(i)) => Some(h.min(i)),
            (h, i) => h.or(i),
        };
        earliest.and_then(|ms| self.at(ms))
    }

    /// Which limit has passed, if one has.
    fn expired(&self, limits: &Limits) -> Option<Closed> {
        let now = self.now_ms();
        let (head, idle) = self.deadlines(limits);
        if head.is_some_and(|at| now >= at) {
            return Some(Closed::HeaderTimeout);
        }
        idle.is_some_and(|at| now >= at)
            .then_some(Closed::IdleTimeout)
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A request being answered; its end starts the idle time.
struct Answering(Arc<Activity>);

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.answering.fetch_sub(1, Ordering::AcqRel);
        self.0.on_write();
        self.0.changed.notify_one();
    }
}

/// The socket, telling [`Activity`] when bytes move.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.on_read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.on_write();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.on_write();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Reads until the end of the stream (or a reset); what was read.
    async fn read_to_end(s: &mut TcpStream) -> String {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return String::from_utf8_lossy(&all).to_string(),
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    }

    fn closed_for(reason: &str) -> f64 {
        let text = crate::metrics_handle().render();
        let sample = format!("meterflow_http_closed_total{{reason=\"{reason}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&sample))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    #[tokio::test]
    async fn the_stop_answers_what_is_being_answered_and_closes_the_rest() {
        let _ = crate::metrics_handle();
        // A handler that answers when the test lets it.
        let (started_tx, mut started) = tokio::sync::mpsc::channel::<()>(1);
        let release = Arc::new(Notify::new());
        let let_go = release.clone();
        let app = axum::Router::new()
            .route("/health", get(|| async { "ok\n" }))
            .route(
                "/slow",
                get(move || {
                    let (started_tx, release) = (started_tx.clone(), let_go.clone());
                    async move {
                        let _ = started_tx.send(()).await;
                        release.notified().await;
                        "slow\n"
                    }
                }),
            );
        // No timeout can close anything during the test: only the stop.
        let config = HttpConfig {
            header_read_timeout_ms: 86_400_000,
            idle_timeout_ms: 86_400_000,
            ..HttpConfig::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(async move { serve(listener, app, &config, stopped).await });

        let mut answering = TcpStream::connect(addr).await.unwrap();
        answering
            .write_all(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        started.recv().await.unwrap();
        let mut half_sent = TcpStream::connect(addr).await.unwrap();
        half_sent
            .write_all(b"GET /health HTTP/1.1\r\nHost: loc")
            .await
            .unwrap();
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = idle.read(&mut buf).await.unwrap();
        assert!(buf[..n].ends_with(b"ok\n"), "{:?}", &buf[..n]);
        let shutdown_before = closed_for("shutdown");

        stop.send(()).unwrap();
        // The half-sent head and the idle connection are closed while the slow request is
        // still being answered...
        assert_eq!(read_to_end(&mut half_sent).await, "");
        assert_eq!(read_to_end(&mut idle).await, "");
        // ...and nobody new is taken.
        while TcpStream::connect(addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
        assert!(!server.is_finished());
        // The slow request gets its answer, then its connection closes and the server ends.
        release.notify_one();
        let answer = read_to_end(&mut answering).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(
            answer.to_lowercase().contains("connection: close"),
            "{answer}"
        );
        assert!(answer.ends_with("slow\n"), "{answer}");
        server.await.unwrap();
        assert_eq!(closed_for("shutdown") - shutdown_before, 3.0);
    }
}
