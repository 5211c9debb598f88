//! The TCP side: the accept loop (a place in the connection budget first) and one task per
//! connection that reads a frame, hands it to the WAL writer and waits until it is durable
//! before it reads the next.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BufMut;
use meterflow_decoders::dlms::WRAPPER_HEADER;
use meterflow_storage::ShutdownSignal;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::frame::{self, Refused, Transport};
use super::slots::Place;
use super::{frame_timeout, idle_timeout, Edge};
use crate::edge::Budget;
use crate::edge::{Durability, Submission};

/// Accepts connections until the shutdown begins; each gets a task of its own holding a
/// clone of `alive`.
pub(super) async fn accept_loop(
    listener: TcpListener,
    edge: Arc<Edge>,
    mut shutdown: ShutdownSignal,
    alive: tokio::sync::mpsc::Sender<()>,
) {
    let mut errors: u64 = 0;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.stopping() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let place = match Place::take(&edge.slots, peer.ip()) {
                    Ok(place) => place,
                    Err(why) => {
                        why.count();
                        // A reset, not FIN: a frame may be on its way, and must not be
                        // taken for stored.
                        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection(
                    stream,
                    peer,
                    edge.clone(),
                    place,
                    shutdown.clone(),
                    alive.clone(),
                ));
            }
            Err(e) => {
                // Out of file descriptors or memory: say so now and then, and do not spin.
                errors += 1;
                if errors.is_power_of_two() {
                    tracing::warn!(error = %e, errors, "accepting DLMS connections");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// How a connection ends.
enum End {
    /// The meter ended its stream between frames: an orderly close (every frame it sent was
    /// read and is durable).
    Close,
    /// Anything else (refused, not stored, idle, the shutdown, cut inside a frame): a reset,
    /// so the meter does not take it for an orderly end; counted, but where the refusal was
    /// counted already or there is none (`None`).
    Reset(Option<Refused>),
}

/// One connection: frames in, each durable before the next is read.
async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    edge: Arc<Edge>,
    mut place: Place,
    mut shutdown: ShutdownSignal,
    _alive: tokio::sync::mpsc::Sender<()>,
) {
    // The first frame must be whole within dlms.frame_timeout_s of the accept.
    let mut first_by = Some(Instant::now() + frame_timeout(&edge.config));
    let end = loop {
        let read = tokio::select! {
            // The shutdown first: a stream that always has a frame ready must not keep the
            // connection from it.
            biased;
            _ = shutdown.stopping() => Err(Read::Shutdown),
            // Not identified yet, its place taken for a newcomer: reset (counted there).
            () = place.evicted() => Err(Read::Shutdown),
            read = read_frame(&mut stream, &edge, first_by) => read,
        };
        // An orderly close (FIN) only once the meter has ended its stream: then every frame
        // it sent was read, and is durable. Any other end (idle, the shutdown, a refusal)
        // resets: a frame may be on its way, and the meter must not take the close for
        // "all stored".
        let (frame, lease) = match read {
            Ok(Some(read)) => read,
            Ok(None) => break End::Close,
            // Between frames, a meter that has ended its stream already gets the orderly
            // close: everything it sent was read.
            Err(Read::Idle) => {
                metrics::counter!("meterflow_dlms_idle_closed_total").increment(1);
                break ended_or_reset(&stream);
            }
            Err(Read::Refused(why)) => break End::Reset(Some(why)),
            Err(Read::Shutdown) => break ended_or_reset(&stream),
            Err(Read::Io(e)) => {
                tracing::debug!(error = %e, %peer, "DLMS connection");
                break End::Reset(None);
            }
        };
        // A refused frame is not stored (its lease given back at once); the connection is
        // reset (counted with the refusal). But a push already stored, sent again (its
        // meter resending what it was not sure of, or a copy anyone captured), is skipped,
        // and the connection read on: what it asks for is done, and it proves nothing, so
        // the connection stays as it was (pending, if it was).
        let (message, reserved) = match edge.message(frame, peer, Transport::Tcp) {
            Ok(taken) => taken,
            Err(Refused::Replay) => continue,
            Err(_) => break End::Reset(None),
        };
        first_by = None;
        // Its first push taken: the connection is identified (once), if there is room.
        if let Err(why) = place.identify() {
            edge.not_stored(reserved);
            break End::Reset(Some(why).filter(|w| *w != Refused::PendingEvicted));
        }
        let (notify, told) = tokio::sync::oneshot::channel();
        let submission = Submission {
            message,
            notify: Some(notify),
            budget: Some(Box::new(lease)),
        };
        // Waits for room in the writer's channel (not reading meanwhile), unless the
        // shutdown comes first: then the frame is not stored and the connection is reset.
        // Room first: a frame already read that can go is stored, whatever else is ready.
        tokio::select! {
            biased;
            sent = edge.wal.send_async(submission) => if sent.is_err() {
                edge.not_stored(reserved);
                break End::Reset(Some(Refused::WalFailed));
            },
            _ = shutdown.stopping() => {
                edge.not_stored(reserved);
                break End::Reset(None);
            }
        }
        // The writer answers every submission it took, at shutdown too.
        match told.await {
            Ok(Durability::Durable(_)) => {}
            Ok(Durability::WalFull) => {
                edge.not_stored(reserved);
                break End::Reset(Some(Refused::WalFull));
            }
            Ok(Durability::Failed) | Err(_) => {
                edge.not_stored(reserved);
                break End::Reset(Some(Refused::WalFailed));
            }
        }
    };
    if let End::Reset(why) = end {
        if let Some(why) = why {
            why.count();
        }
        // SO_LINGER 0: the close sends RST, not FIN.
        if let Err(e) = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)) {
            tracing::debug!(error = %e, %peer, "DLMS: cannot reset the connection");
        }
    }
    // The place first: a meter that sees the close finds it free.
    drop(place);
    drop(stream);
}

/// How a connection ends between frames when meterflow ends it (idle, shutdown): in order if
/// the meter has ended its stream already (nothing more can come: everything it sent was
/// read), else a reset (a frame may be on its way).
fn ended_or_reset(stream: &TcpStream) -> End {
    match stream.try_read(&mut [0u8; 1]) {
        Ok(0) => End::Close,
        _ => End::Reset(None),
    }
}

/// Why a frame could not be read.
enum Read {
    Refused(Refused),
    /// No frame began within `dlms.idle_timeout_s` of the one before.
    Idle,
    /// The shutdown came first.
    Shutdown,
    Io(std::io::Error),
}

/// Reads one whole frame (header and APDU) and its share of `dlms.max_inflight_bytes`; `None`
/// at the end of the stream between frames. Only the bytes of this frame are read, nothing of
/// the next.
///
/// Deadlines: the first frame of a connection (`first_by`) must be whole by then, counted
/// from the accept; a later one must begin within `dlms.idle_timeout_s` (else [`Read::Idle`])
/// and be whole within `dlms.frame_timeout_s` of its first byte. Either deadline missed
/// inside a frame is `frame_timeout`. So a connection that sends nothing, or a frame a byte
/// at a time, holds its place (and its share) for `dlms.frame_timeout_s`, not for as long as
/// it keeps bytes coming.
///
/// The share, the whole frame's length, is taken once the header is read (waiting for room
/// within the frame's deadline, the connection not read meanwhile); the buffer grows as the
/// bytes come, so a header alone pins no more than its share says.
async fn read_frame(
    stream: &mut TcpStream,
    edge: &Edge,
    first_by: Option<Instant>,
) -> Result<Option<(Vec<u8>, Budget)>, Read> {
    let mut header = [0u8; WRAPPER_HEADER];
    // The first byte.
    let begin_by = first_by.unwrap_or_else(|| Instant::now() + idle_timeout(&edge.config));
    let n = match tokio::time::timeout_at(begin_by, stream.read(&mut header)).await {
        Err(_) if first_by.is_some() => return Err(Read::Refused(Refused::FrameTimeout)),
        Err(_) => return Err(Read::Idle),
        Ok(Ok(0)) => return Ok(None),
        Ok(Ok(n)) => n,
        Ok(Err(e)) => return Err(Read::Io(e)),
    };
    let whole_by = first_by.unwrap_or_else(|| Instant::now() + frame_timeout(&edge.config));
    let rest = read_rest(stream, edge, header, n);
    match tokio::time::timeout_at(whole_by, rest).await {
        Ok(read) => read.map(Some),
        Err(_) => Err(Read::Refused(Refused::FrameTimeout)),
    }
}

/// The rest of a frame whose first `filled` bytes are in `header`.
async fn read_rest(
    stream: &mut TcpStream,
    edge: &Edge,
    mut header: [u8; WRAPPER_HEADER],
    mut filled: usize,
) -> Result<(Vec<u8>, Budget), Read> {
    while filled < WRAPPER_HEADER {
        match stream.read(&mut header[filled..]).await {
            Ok(0) => return Err(Read::Refused(Refused::Truncated)),
            Ok(n) => filled += n,
            Err(e) => return Err(Read::Io(e)),
        }
    }
    let len = frame::apdu_len(&header, edge.config.max_apdu_bytes).map_err(Read::Refused)?;
    let total = WRAPPER_HEADER + len;
    let lease = edge
        .lease(total)
        .await
        .ok_or(Read::Refused(Refused::Busy))?;
    let mut frame = Vec::with_capacity(total.min(FIRST_CAPACITY));
    frame.extend_from_slice(&header);
    while frame.len() < total {
        if frame.capacity() == frame.len() {
            // Doubling (so a frame a byte at a time costs no more copying than one at once),
            // never past the frame's length.
            let target = (frame.capacity() * 2).min(total);
            frame.reserve_exact(target - frame.len());
        }
        // Never past the frame's length, whatever capacity the allocator gave.
        let room = frame.capacity().min(total) - frame.len();
        let mut limited = (&mut frame).limit(room);
        match stream.read_buf(&mut limited).await {
            Ok(0) => return Err(Read::Refused(Refused::Truncated)),
            Ok(_) => {}
            Err(e) => return Err(Read::Io(e)),
        }
    }
    Ok((frame, lease))
}

/// The buffer a frame begins with (header included); it doubles as the bytes come.
const FIRST_CAPACITY: usize = 1024;
