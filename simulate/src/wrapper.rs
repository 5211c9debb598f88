//! `simulate --dlms HOST:PORT`: meters pushing straight to meterflow's DLMS wrapper listener
//! (IEC 62056-4-7), each push in a wrapper frame ([`crate::dlms::wrap`]).
//!
//! **TCP** (`--dlms-transport tcp`): one connection per meter, its pushes written one after
//! another (`--pause-ms` between them), then the sending side shut down. The listener never
//! answers a push; what it promises is in how it reads: it reads a frame only once the one
//! before is in the WAL (fsynced), and it closes in order (FIN) only after reading the end of
//! the stream, every frame before it durable. A refusal (a key or system title it does not
//! have), a full or failing WAL, a frame too large: a reset. So a meter's pushes count as
//! **acknowledged** together, when its connection ends with meterflow's orderly close after
//! the meter's last frame and no reset: then every one of them was read, hence durable. A
//! reset, or a close before the last frame was written (meterflow shutting down, its idle
//! timeout), fails the meter and acknowledges none of its pushes (some may be stored: a
//! second run would find them refused as replays, never stored twice). A write accepted by
//! the kernel proves nothing (socket buffers take many frames the server has not read), so
//! pushes are not counted one by one. The summary's ack latency is, per connection, the time
//! from the shutdown of the sending side to meterflow's close: the time its last push took to
//! become durable.
//!
//! **UDP** (`--dlms-transport udp`): a socket per meter, one datagram per push. Nothing comes
//! back, so pushes are counted as sent only (`messages_acked` stays 0): a datagram may be lost
//! on the way or dropped by a busy server.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

use crate::counters::Counters;
use crate::{dlms, Plan, SimulateError, Target};

/// Sends every push of meter `m` on one TCP connection; see the module's text for what counts
/// as acknowledged.
pub(super) async fn run_meter_tcp(
    plan: &Plan,
    m: usize,
    target: &Target,
    server: SocketAddr,
    counters: &Counters,
    acked_here: &AtomicU64,
) -> Result<(), SimulateError> {
    let meter_id = plan.meter_id(m);
    let socket = match server {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    let sources = &target.mqtt.source_addrs;
    if !sources.is_empty() {
        let source = sources[m % sources.len()];
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(|e| SimulateError::Bind {
                addr: source,
                source: e,
            })?;
    }
    let connecting = Instant::now();
    let mut stream = socket
        .connect(server)
        .await
        .map_err(|source| SimulateError::Connect { server, source })?;
    stream.set_nodelay(true)?;
    counters.note_connect(connecting.elapsed(), true, false);
    let reset = |frames: usize, source: std::io::Error| SimulateError::DlmsReset {
        meter_id: meter_id.clone(),
        frames,
        source,
    };
    for k in 0..plan.messages {
        if k > 0 && !target.pause.is_zero() {
            tokio::time::sleep(target.pause).await;
        }
        closed_early(&stream, &meter_id, k, plan.messages)?;
        let frame = dlms::wrap(&dlms::push(plan, m, k, &target.dlms)?)?;
        stream
            .write_all(&frame)
            .await
            .map_err(|source| reset(k, source))?;
        counters.sent.fetch_add(1, Ordering::Relaxed);
        counters
            .bytes
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
    }
    closed_early(&stream, &meter_id, plan.messages, plan.messages)?;
    stream
        .shutdown()
        .await
        .map_err(|source| reset(plan.messages, source))?;
    let closing = Instant::now();
    let mut buf = [0u8; 64];
    match stream.read(&mut buf).await {
        Ok(0) => {}
        Ok(bytes) => return Err(SimulateError::DlmsAnswered { meter_id, bytes }),
        Err(source) => return Err(reset(plan.messages, source)),
    }
    // A reset that came after the close (data of ours the server never read) shows here.
    if let Some(source) = stream.take_error()? {
        return Err(reset(plan.messages, source));
    }
    counters.acks.record(closing.elapsed());
    let n = plan.messages as u64;
    acked_here.fetch_add(n, Ordering::Relaxed);
    counters.acked.fetch_add(n, Ordering::Relaxed);
    Ok(())
}

/// Fails if meterflow has closed (or reset) the connection before frame `written` of
/// `messages` is written: the frames after its close would not be read.
fn closed_early(
    stream: &TcpStream,
    meter_id: &str,
    written: usize,
    messages: usize,
) -> Result<(), SimulateError> {
    match stream.try_read(&mut [0u8; 16]) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
        Ok(0) => Err(SimulateError::DlmsClosedEarly {
            meter_id: meter_id.to_string(),
            frames: written,
            messages,
        }),
        Ok(bytes) => Err(SimulateError::DlmsAnswered {
            meter_id: meter_id.to_string(),
            bytes,
        }),
        Err(source) => Err(SimulateError::DlmsReset {
            meter_id: meter_id.to_string(),
            frames: written,
            source,
        }),
    }
}

/// Sends every push of meter `m` as a datagram of its own socket; counted as sent only.
pub(super) async fn run_meter_udp(
    plan: &Plan,
    m: usize,
    target: &Target,
    server: SocketAddr,
    counters: &Counters,
) -> Result<(), SimulateError> {
    let local = if server.is_ipv4() {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
    };
    let socket = UdpSocket::bind(local)
        .await
        .map_err(SimulateError::BindUdp)?;
    socket.connect(server).await?;
    for k in 0..plan.messages {
        if k > 0 && !target.pause.is_zero() {
            tokio::time::sleep(target.pause).await;
        }
        let frame = dlms::wrap(&dlms::push(plan, m, k, &target.dlms)?)?;
        socket
            .send(&frame)
            .await
            .map_err(|source| SimulateError::DlmsUdpSend {
                meter_id: plan.meter_id(m),
                report: k,
                source,
            })?;
        counters.sent.fetch_add(1, Ordering::Relaxed);
        counters
            .bytes
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
    }
    Ok(())
}
