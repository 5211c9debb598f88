//! The HTTP listener: hyper's HTTP/1 connection under an accept loop of our own, so that what
//! a client can hold is bounded (`axum::serve` has none of these bounds):
//! - at most `http.max_connections` open connections. At the cap a new connection makes room:
//!   the held connection that has waited longest without a request being answered (idle
//!   between requests, or still sending its head) is closed (`reason="evicted"`); if none
//!   waits, the one that has been sending an answer the longest (its handler done, its
//!   client reading slowly); only when every held connection has a handler running is the
//!   new one closed at accept (`reason="max_connections"`). So a full listener still answers
//!   a load balancer's probe. Which one to close is found in O(log n): every connection that
//!   waits (or sends) is in an ordered index, changed under the same lock as the choice, so a
//!   connection that begins a request is never the one closed for it. A handler is not cut
//!   short: those open to all (`/`, `/health`, `/ready`) answer at once (`/ready`'s question
//!   to ClickHouse is asked by one caller at a time, the others get the last answer), the
//!   rest need the token;
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
//! close, a request being answered is answered (its connection then closes); whatever is
//! still open after `http.shutdown_max_ms` is closed (`reason="shutdown_timeout"`), so that a
//! client reading its answer slowly cannot hold the stop.

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use hyper::body::{Frame, Incoming, SizeHint};
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

/// An answer's body goes to hyper in pieces of this size at most: hyper takes the next only
/// when its write buffer has room, so the body ends (and its connection stops counting as
/// sending) only once all but the last pieces are on the socket.
const SEND_CHUNK_BYTES: usize = 16 * 1024;

/// Why a connection was closed: the `reason` of `meterflow_http_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    /// The client closed it, or asked for it to be closed (`Connection: close`).
    Client,
    /// Refused at accept: `http.max_connections` were open, every one answering a request.
    MaxConnections,
    /// Closed to make room for a new connection at `http.max_connections`: it had waited
    /// longest without a request being answered.
    Evicted,
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
    /// Still open `http.shutdown_max_ms` into the stop: cut off.
    ShutdownTimeout,
    /// A socket error (reset by the peer...).
    Io,
}

impl Closed {
    fn label(self) -> &'static str {
        match self {
            Closed::Client => "client",
            Closed::MaxConnections => "max_connections",
            Closed::Evicted => "evicted",
            Closed::HeaderTimeout => "header_timeout",
            Closed::IdleTimeout => "idle_timeout",
            Closed::HeaderTooLarge => "header_too_large",
            Closed::BadRequest => "bad_request",
            Closed::Shutdown => "shutdown",
            Closed::ShutdownTimeout => "shutdown_timeout",
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
    shutdown_max: Duration,
}

impl From<&HttpConfig> for Limits {
    fn from(config: &HttpConfig) -> Limits {
        Limits {
            max_connections: config.max_connections,
            header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(config.idle_timeout_ms),
            max_header_bytes: config.max_header_bytes,
            shutdown_max: Duration::from_millis(config.shutdown_max_ms),
        }
    }
}

/// What the stop asks of the connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Running,
    /// Finish what is being answered, close the rest.
    Drain,
    /// Close now: the drain took `http.shutdown_max_ms`.
    Cut,
}

/// Serves `app` on `listener` within the bounds of `config` until `stop` completes (or its
/// sender is dropped); then stops accepting and waits for the open connections to end, for
/// `http.shutdown_max_ms` at most.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    config: &HttpConfig,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let limits = Limits::from(config);
    let held = Arc::new(Held::new());
    metrics::gauge!("meterflow_http_connections").set(0.0);
    let (stopping, stopping_rx) = watch::channel(Stop::Running);
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
                let Some(counted) = held.admit(limits.max_connections) else {
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
    let _ = stopping.send(Stop::Drain);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(limits.shutdown_max, drain)
        .await
        .is_err()
    {
        tracing::warn!(
            connections = connections.len(),
            shutdown_max_ms = ms(limits.shutdown_max),
            "HTTP connections cut off at the stop: their answers were not read within http.shutdown_max_ms"
        );
        let _ = stopping.send(Stop::Cut);
        while connections.join_next().await.is_some() {}
    }
}

/// The open connections, for the accept loop to choose which to close at the cap.
struct Held {
    /// What the index's times count from.
    epoch: Instant,
    inner: Mutex<HeldInner>,
}

#[derive(Default)]
struct HeldInner {
    open: HashMap<u64, Place>,
    /// The connections that wait (no request being answered: idle, or reading a head), by
    /// since when, then by id: the first is the one to close at the cap.
    waiting: BTreeSet<(u64, u64)>,
    /// The connections whose handler is done and whose answer's body is being sent, by since
    /// when: closed at the cap only when none waits.
    sending: BTreeSet<(u64, u64)>,
    next_id: u64,
    /// Connections closed to make room whose tasks have not ended yet: no longer counted
    /// against the cap (their sockets are in the gauge until they are closed).
    evicting: usize,
}

/// Where a connection stands, as the accept loop sees it.
struct Place {
    activity: Arc<Activity>,
    /// Handlers running.
    handling: usize,
    /// Answers' bodies being sent (their handlers done).
    sending: usize,
    /// Its entry in [`HeldInner::waiting`] or [`HeldInner::sending`], if in one.
    indexed: Option<(Index, u64)>,
    evicted: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Index {
    Waiting,
    Sending,
}

/// A change of what a connection does.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// A request's head arrived: its handler runs.
    Handle,
    /// The handler is done, its answer's body is being sent.
    Send,
    /// The body was sent (or dropped).
    Sent,
    /// The handler's future was dropped before it was done (the connection closed).
    Dropped,
}

impl HeldInner {
    fn index_of(&mut self, which: Index) -> &mut BTreeSet<(u64, u64)> {
        match which {
            Index::Waiting => &mut self.waiting,
            Index::Sending => &mut self.sending,
        }
    }

    /// Applies `step` to connection `id` at `now` (listener's ms), keeping the indexes in step.
    fn step(&mut self, id: u64, step: Step, now: u64) {
        let Some(place) = self.open.get_mut(&id) else {
            return;
        };
        match step {
            Step::Handle => place.handling += 1,
            Step::Send => {
                place.handling = place.handling.saturating_sub(1);
                place.sending += 1;
            }
            Step::Sent => place.sending = place.sending.saturating_sub(1),
            Step::Dropped => place.handling = place.handling.saturating_sub(1),
        }
        let want = if place.evicted || place.handling > 0 {
            None
        } else if place.sending > 0 {
            Some(Index::Sending)
        } else {
            Some(Index::Waiting)
        };
        let was = place.indexed;
        if was.map(|(which, _)| which) == want {
            return;
        }
        place.indexed = want.map(|which| (which, now));
        if let Some((which, since)) = was {
            self.index_of(which).remove(&(since, id));
        }
        if let Some(which) = want {
            self.index_of(which).insert((now, id));
        }
    }

    /// Marks as evicted the connection that has waited longest (the first accepted among
    /// equals), else the one sending an answer the longest; `None` when every one has a
    /// handler running.
    fn evict_one(&mut self) -> Option<Arc<Activity>> {
        let (which, (since, id)) = match self.waiting.first() {
            Some(&first) => (Index::Waiting, first),
            None => (Index::Sending, *self.sending.first()?),
        };
        self.index_of(which).remove(&(since, id));
        let place = self.open.get_mut(&id)?;
        place.indexed = None;
        place.evicted = true;
        place.activity.evicted.store(true, Ordering::Release);
        self.evicting += 1;
        Some(place.activity.clone())
    }
}

impl Held {
    fn new() -> Held {
        Held {
            epoch: Instant::now(),
            inner: Mutex::new(HeldInner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HeldInner> {
        // A panic while holding it cannot leave the map half-changed: take it as it is.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now(&self) -> u64 {
        ms(self.epoch.elapsed())
    }

    /// Counts one more open connection. At `max`, the held one that has waited longest without
    /// a request being answered (else the one sending an answer the longest) is told to close
    /// and the new one takes its place; `None` when every held connection has a handler
    /// running.
    fn admit(self: &Arc<Self>, max: usize) -> Option<OpenConnection> {
        let now = self.now();
        let mut held = self.lock();
        if held.open.len() - held.evicting >= max {
            let victim = held.evict_one()?;
            victim.evict.notify_one();
        }
        let id = held.next_id;
        held.next_id += 1;
        let activity = Arc::new(Activity::new());
        held.open.insert(
            id,
            Place {
                activity: activity.clone(),
                handling: 0,
                sending: 0,
                indexed: Some((Index::Waiting, now)),
                evicted: false,
            },
        );
        held.waiting.insert((now, id));
        metrics::gauge!("meterflow_http_connections").increment(1.0);
        Some(OpenConnection {
            tracker: Tracker {
                held: self.clone(),
                id,
                activity,
            },
        })
    }
}

/// A connection's handle on [`Held`], for its requests to say what they do.
#[derive(Clone)]
struct Tracker {
    held: Arc<Held>,
    id: u64,
    activity: Arc<Activity>,
}

impl Tracker {
    fn step(&self, step: Step) {
        let now = self.held.now();
        self.held.lock().step(self.id, step, now);
    }
}

/// One open connection in `meterflow_http_connections` and in [`Held`], taken out when
/// dropped.
struct OpenConnection {
    tracker: Tracker,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        let t = &self.tracker;
        let mut held = t.held.lock();
        if let Some(place) = held.open.remove(&t.id) {
            if let Some((which, since)) = place.indexed {
                held.index_of(which).remove(&(since, t.id));
            }
            if place.evicted {
                held.evicting = held.evicting.saturating_sub(1);
            }
        }
        metrics::gauge!("meterflow_http_connections").decrement(1.0);
    }
}

/// One connection: hyper's HTTP/1 state machine, closed when [`Activity`] says a limit has
/// passed or the accept loop needs its place, and told to finish at the stop.
async fn connection(
    stream: TcpStream,
    app: axum::Router,
    limits: Limits,
    mut stopping: watch::Receiver<Stop>,
    counted: OpenConnection,
) {
    let _ = stream.set_nodelay(true);
    let activity = counted.tracker.activity.clone();
    let io = TokioIo::new(Watched {
        stream,
        activity: activity.clone(),
    });
    let router = TowerToHyperService::new(app);
    let tracker = counted.tracker.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let mut answering = Answering::begin(tracker.clone());
        let answer = hyper::service::Service::call(&router, request);
        async move {
            let answer = answer.await;
            // The handler is done; the answer is being sent until its body is: the guard
            // goes with the body, so a client reading a large answer slowly is not taken for
            // an idle one.
            answering.handler_done();
            answer.map(|response| {
                response.map(|body| {
                    Body::new(SentBody {
                        inner: body,
                        rest: Bytes::new(),
                        answering: Some(answering),
                    })
                })
            })
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
            // The accept loop needs the place: closed now (it was not answering).
            () = activity.evict.notified() => {
                if activity.is_evicted() {
                    break Closed::Evicted;
                }
            }
            changed = stopping.changed() => {
                let stop = if changed.is_ok() { *stopping.borrow_and_update() } else { Stop::Cut };
                match stop {
                    Stop::Running => {}
                    Stop::Drain if !stop_asked => {
                        stop_asked = true;
                        // Between requests hyper closes at once; a request being answered is
                        // answered first. A head on its way has asked nothing yet: closed now,
                        // not after its timeout.
                        conn.as_mut().graceful_shutdown();
                        if activity.reading_head() {
                            break Closed::Shutdown;
                        }
                    }
                    Stop::Drain => {}
                    Stop::Cut => break Closed::ShutdownTimeout,
                }
            }
        }
    };
    closed.count();
    drop(counted);
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What a connection is doing, for its deadlines. Written from inside hyper's poll (the
/// socket and the service), read by the connection's task; `evicted` by the accept loop
/// (under [`Held`]'s lock, where what the accept loop chooses from is kept). Times are
/// milliseconds since the accept.
struct Activity {
    accepted: Instant,
    /// The last read or write that moved bytes, or the end of the last handler.
    last_io_ms: AtomicU64,
    /// When the head being read began, plus one (0: none is being read).
    head_since_ms: AtomicU64,
    /// Requests being answered (the handler runs).
    answering: AtomicUsize,
    /// The accept loop closed it to make room.
    evicted: AtomicBool,
    /// A deadline moved earlier or appeared.
    changed: Notify,
    /// The accept loop evicted it.
    evict: Notify,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            accepted: Instant::now(),
            last_io_ms: AtomicU64::new(0),
            // The first head is awaited from the accept.
            head_since_ms: AtomicU64::new(1),
            answering: AtomicUsize::new(0),
            evicted: AtomicBool::new(false),
            changed: Notify::new(),
            evict: Notify::new(),
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

    fn reading_head(&self) -> bool {
        self.answering.load(Ordering::Acquire) == 0
            && self.head_since_ms.load(Ordering::Acquire) != 0
    }

    fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
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

/// A request being answered: its handler runs (no deadline), then its body is sent (the
/// idle deadline runs again, but the connection is closed at the cap only when none waits).
struct Answering {
    tracker: Tracker,
    /// The handler is done.
    sending: bool,
}

impl Answering {
    /// A request's head has arrived and its handler runs until [`Answering::handler_done`].
    fn begin(tracker: Tracker) -> Answering {
        let a = &tracker.activity;
        a.answering.fetch_add(1, Ordering::AcqRel);
        a.head_since_ms.store(0, Ordering::Release);
        tracker.step(Step::Handle);
        a.changed.notify_one();
        Answering {
            tracker,
            sending: false,
        }
    }

    /// The handler is done: the idle time starts; the body is being sent until the guard is
    /// dropped.
    fn handler_done(&mut self) {
        if self.sending {
            return;
        }
        self.sending = true;
        let a = &self.tracker.activity;
        a.answering.fetch_sub(1, Ordering::AcqRel);
        self.tracker.step(Step::Send);
        a.on_write();
        a.changed.notify_one();
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        if self.sending {
            self.tracker.step(Step::Sent);
        } else {
            // The handler's future dropped: the connection is closing.
            let a = &self.tracker.activity;
            a.answering.fetch_sub(1, Ordering::AcqRel);
            self.tracker.step(Step::Dropped);
            a.on_write();
            a.changed.notify_one();
        }
    }
}

/// An answer's body as hyper sends it: in pieces of [`SEND_CHUNK_BYTES`], with the request's
/// [`Answering`] dropped when the last piece is taken (or the body dropped).
struct SentBody {
    inner: Body,
    /// What is left of a data frame larger than a piece.
    rest: Bytes,
    answering: Option<Answering>,
}

impl HttpBody for SentBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = if this.rest.is_empty() {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(mut data) => {
                        if data.len() > SEND_CHUNK_BYTES {
                            this.rest = data.split_off(SEND_CHUNK_BYTES);
                        }
                        Poll::Ready(Some(Ok(Frame::data(data))))
                    }
                    Err(other) => Poll::Ready(Some(Ok(other))),
                },
                polled => polled,
            }
        } else {
            let n = this.rest.len().min(SEND_CHUNK_BYTES);
            Poll::Ready(Some(Ok(Frame::data(this.rest.split_to(n)))))
        };
        // The last piece taken (or none left): the answer is as good as sent. Said now,
        // before hyper writes it, so that a client that has read its whole answer finds its
        // connection waiting, not still sending.
        if matches!(polled, Poll::Ready(None)) || self.is_end_stream() {
            self.answering = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(rest));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(rest));
        }
        hint
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

    /// The `meterflow_http_closed_total` counters are the process's: tests that count them
    /// take turns.
    static COUNTERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
        let _counters = COUNTERS.lock().await;
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
            shutdown_max_ms: 86_400_000,
            ..HttpConfig::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(async move { serve(listener, app, &config, stopped).await });

        let mut answering = begin_slow(addr, &mut started).await;
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

    /// `/health`, and `/slow`, which says when it has begun and answers when released.
    fn slow_app() -> (axum::Router, tokio::sync::mpsc::Receiver<()>, Arc<Notify>) {
        let (started_tx, started) = tokio::sync::mpsc::channel::<()>(8);
        let release = Arc::new(Notify::new());
        let let_go = release.clone();
        let app = axum::Router::new()
            .route("/health", get(|| async { "ok\n" }))
            .route(
                "/slow",
                get(move || {
                    let (started_tx, release) = (started_tx.clone(), let_go.clone());
                    async move {
                        // Waiting before saying so: a release cannot come before the wait.
                        let released = release.notified();
                        tokio::pin!(released);
                        released.as_mut().enable();
                        let _ = started_tx.send(()).await;
                        released.await;
                        "slow\n"
                    }
                }),
            );
        (app, started, release)
    }

    /// Serves `app` with `config` on a port of its own; its address, the stop and the task.
    async fn start(
        app: axum::Router,
        config: HttpConfig,
    ) -> (
        std::net::SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let _ = crate::metrics_handle();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(async move { serve(listener, app, &config, stopped).await });
        (addr, stop, server)
    }

    /// No timeout closes anything during a test unless it says so.
    fn patient() -> HttpConfig {
        HttpConfig {
            header_read_timeout_ms: 86_400_000,
            idle_timeout_ms: 86_400_000,
            shutdown_max_ms: 86_400_000,
            ..HttpConfig::default()
        }
    }

    /// A connection whose `GET /slow` is being answered (its handler has begun).
    async fn begin_slow(
        addr: std::net::SocketAddr,
        started: &mut tokio::sync::mpsc::Receiver<()>,
    ) -> TcpStream {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        started.recv().await.unwrap();
        s
    }

    /// Sends a GET on `s` and reads one answer (the body of `/health` or `/slow`).
    async fn get_on(s: &mut TcpStream, path: &str) -> String {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
            .await
            .unwrap();
        read_answer(s).await
    }

    async fn read_answer(s: &mut TcpStream) -> String {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while !(all.ends_with(b"ok\n") || all.ends_with(b"slow\n")) {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&all));
            all.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&all).to_string()
    }

    #[tokio::test]
    async fn at_the_cap_the_longest_waiting_connection_makes_room() {
        let _counters = COUNTERS.lock().await;
        let (app, mut started, _release) = slow_app();
        let config = HttpConfig {
            max_connections: 3,
            ..patient()
        };
        let (addr, _stop, server) = start(app, config).await;
        let evicted_before = closed_for("evicted");
        // One being answered, one idle after an answer, one sending its head.
        let _answering = begin_slow(addr, &mut started).await;
        let mut idle = TcpStream::connect(addr).await.unwrap();
        assert!(get_on(&mut idle, "/health")
            .await
            .starts_with("HTTP/1.1 200"));
        let mut half_sent = TcpStream::connect(addr).await.unwrap();
        half_sent
            .write_all(b"GET /health HTTP/1.1\r\nHost: loc")
            .await
            .unwrap();
        // A fourth: the idle one (waiting since its answer, before the half-sent one came)
        // makes room.
        let mut fourth = TcpStream::connect(addr).await.unwrap();
        assert!(get_on(&mut fourth, "/health").await.ends_with("ok\n"));
        assert_eq!(read_to_end(&mut idle).await, "");
        // A fifth: the half-sent one (waiting since its accept, before the fourth's answer).
        let mut fifth = TcpStream::connect(addr).await.unwrap();
        assert!(get_on(&mut fifth, "/health").await.ends_with("ok\n"));
        assert_eq!(read_to_end(&mut half_sent).await, "");
        assert_eq!(closed_for("evicted") - evicted_before, 2.0);
        // The one being answered was kept, and the others still serve.
        assert!(get_on(&mut fourth, "/health").await.ends_with("ok\n"));
        assert!(get_on(&mut fifth, "/health").await.ends_with("ok\n"));
        server.abort();
    }

    /// Issue 20 review round 2, finding 4: the guard of a request being answered was dropped
    /// when its handler ended, before hyper had written the body: a client reading a large
    /// answer slowly counted as waiting since then, and was closed at the cap mid-answer
    /// while an idle connection that came later was kept.
    #[tokio::test]
    async fn at_the_cap_a_slow_reader_of_a_large_answer_is_kept_while_an_idle_one_exists() {
        const LARGE: usize = 48 * 1024 * 1024;
        let _counters = COUNTERS.lock().await;
        let (handled_tx, mut handled) = tokio::sync::mpsc::channel::<()>(1);
        let app = axum::Router::new()
            .route("/health", get(|| async { "ok\n" }))
            .route(
                "/large",
                get(move || {
                    let handled_tx = handled_tx.clone();
                    async move {
                        let _ = handled_tx.send(()).await;
                        vec![b'x'; LARGE]
                    }
                }),
            );
        let config = HttpConfig {
            max_connections: 2,
            ..patient()
        };
        let (addr, _stop, server) = start(app, config).await;
        let evicted_before = closed_for("evicted");
        // A client that asks for a large answer and does not read it yet (more than the
        // sockets' buffers hold).
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /large HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        handled.recv().await.unwrap();
        // Then an idle one, after its answer.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        assert!(get_on(&mut idle, "/health").await.ends_with("ok\n"));
        // A third: the idle one makes room, not the one being sent its answer.
        let mut third = TcpStream::connect(addr).await.unwrap();
        let answered = tokio::time::timeout(Duration::from_secs(60), get_on(&mut third, "/health"));
        assert!(answered
            .await
            .expect("the third answered")
            .ends_with("ok\n"));
        let closed = tokio::time::timeout(Duration::from_secs(60), read_to_end(&mut idle));
        assert_eq!(closed.await.expect("the idle one closed"), "");
        assert_eq!(closed_for("evicted") - evicted_before, 1.0);
        // The slow reader gets its whole answer.
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        let mut head = Vec::new();
        while got < LARGE {
            let n = slow.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed after {got} bytes of the body");
            if head.len() < 4 || !head.ends_with(b"\r\n\r\n") {
                // Still in the head: count the body from its end.
                let mut i = 0;
                while i < n && !(head.len() >= 4 && head.ends_with(b"\r\n\r\n")) {
                    head.push(buf[i]);
                    i += 1;
                }
                got += n - i;
            } else {
                got += n;
            }
        }
        assert_eq!(got, LARGE);
        assert!(head.starts_with(b"HTTP/1.1 200 OK"));
        server.abort();
    }

    /// The other side of finding 4: with no connection waiting, one sending its answer the
    /// longest makes room (a slow reader cannot hold a place that a new client needs), while
    /// one whose handler runs does not.
    #[tokio::test]
    async fn at_the_cap_with_none_waiting_the_longest_sending_makes_room() {
        const LARGE: usize = 48 * 1024 * 1024;
        let _counters = COUNTERS.lock().await;
        let (slow_app, mut started, release) = slow_app();
        let app = slow_app.route("/large", get(|| async { vec![b'x'; LARGE] }));
        let config = HttpConfig {
            max_connections: 2,
            ..patient()
        };
        let (addr, _stop, server) = start(app, config).await;
        let evicted_before = closed_for("evicted");
        let mut answering = begin_slow(addr, &mut started).await;
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /large HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        // Its answer begins to arrive: its handler is done.
        let mut first = [0u8; 16];
        slow.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"HTTP/1.1 200 OK\r");
        let mut third = TcpStream::connect(addr).await.unwrap();
        assert!(get_on(&mut third, "/health").await.ends_with("ok\n"));
        // The slow reader was cut off (what it reads ends short of the answer).
        let rest = read_to_end(&mut slow).await;
        assert!(rest.len() < LARGE, "{}", rest.len());
        assert_eq!(closed_for("evicted") - evicted_before, 1.0);
        release.notify_waiters();
        assert!(read_answer(&mut answering).await.ends_with("slow\n"));
        server.abort();
    }

    #[tokio::test]
    async fn at_the_cap_a_new_connection_is_refused_only_when_every_one_is_answering() {
        let _counters = COUNTERS.lock().await;
        let (app, mut started, release) = slow_app();
        let config = HttpConfig {
            max_connections: 2,
            ..patient()
        };
        let (addr, _stop, server) = start(app, config).await;
        let refused_before = closed_for("max_connections");
        let mut busy = Vec::new();
        for _ in 0..2 {
            let s = begin_slow(addr, &mut started).await;
            busy.push(s);
        }
        let mut refused = TcpStream::connect(addr).await.unwrap();
        let _ = refused
            .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await;
        assert_eq!(read_to_end(&mut refused).await, "");
        assert_eq!(closed_for("max_connections") - refused_before, 1.0);
        // Both answered in the end.
        release.notify_waiters();
        for s in &mut busy {
            assert!(read_answer(s).await.ends_with("slow\n"));
        }
        // Idle now: a new one makes room again.
        let mut next = TcpStream::connect(addr).await.unwrap();
        assert!(get_on(&mut next, "/health").await.ends_with("ok\n"));
        assert_eq!(closed_for("max_connections") - refused_before, 1.0);
        server.abort();
    }

    #[tokio::test]
    async fn the_stop_cuts_off_what_is_still_open_after_shutdown_max() {
        let _counters = COUNTERS.lock().await;
        let (app, mut started, _release) = slow_app();
        let config = HttpConfig {
            shutdown_max_ms: 200,
            ..patient()
        };
        let (addr, stop, server) = start(app, config).await;
        let cut_before = closed_for("shutdown_timeout");
        // An answer that never comes (as one a client never reads).
        let mut held = begin_slow(addr, &mut started).await;
        stop.send(()).unwrap();
        server.await.unwrap();
        assert_eq!(read_to_end(&mut held).await, "");
        assert_eq!(closed_for("shutdown_timeout") - cut_before, 1.0);
    }

    #[tokio::test]
    async fn whole_pipelined_requests_leave_the_connection_idle_not_reading_a_head() {
        let config = HttpConfig {
            header_read_timeout_ms: 100,
            ..patient()
        };
        let app = axum::Router::new().route("/health", get(|| async { "ok\n" }));
        let (addr, _stop, server) = start(app, config).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        // Blank lines between requests are no head either.
        s.write_all(
            b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n\r\nGET /health HTTP/1.1\r\nHost: localhost\r\n\r\n",
        )
        .await
        .unwrap();
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while all.windows(3).filter(|w| w == b"ok\n").count() < 2 {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0);
            all.extend_from_slice(&buf[..n]);
        }
        // Ten header timeouts later, still open (idle, with a day's idle timeout).
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert!(get_on(&mut s, "/health").await.ends_with("ok\n"));
        server.abort();
    }
}
