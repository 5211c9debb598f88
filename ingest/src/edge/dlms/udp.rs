//! The UDP side: one task reads datagrams, one wrapper frame each, and hands them to the WAL
//! writer without waiting (a UDP push has no answer to wait with); a datagram that finds the
//! writer's channel or `dlms.max_inflight_bytes` full is dropped (`busy`).

use std::sync::Arc;
use std::time::Duration;

use meterflow_decoders::dlms::WRAPPER_HEADER;
use meterflow_storage::ShutdownSignal;
use tokio::net::UdpSocket;

use super::frame::{self, Refused, Transport};
use super::Edge;
use crate::edge::Submission;

/// Reads datagrams until the shutdown begins.
pub(super) async fn serve(socket: UdpSocket, edge: Arc<Edge>, mut shutdown: ShutdownSignal) {
    // One byte more than the largest frame taken, so that a larger datagram shows as such.
    let mut buf = vec![0u8; WRAPPER_HEADER + edge.config.max_apdu_bytes + 1];
    let mut errors: u64 = 0;
    loop {
        let received = tokio::select! {
            r = socket.recv_from(&mut buf) => r,
            _ = shutdown.stopping() => break,
        };
        let (len, peer) = match received {
            Ok(received) => received,
            // An ICMP error for an earlier datagram surfaces here; a lasting one (out of
            // buffers) would come back at once: counted, said now and then, and no spinning.
            Err(e) => {
                errors += 1;
                metrics::counter!("meterflow_dlms_udp_errors_total").increment(1);
                if errors.is_power_of_two() {
                    tracing::warn!(error = %e, errors, "DLMS UDP receive");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let datagram = &buf[..len];
        if let Err(why) = frame::datagram(datagram, edge.config.max_apdu_bytes) {
            why.count();
            continue;
        }
        let Ok((message, reserved)) = edge.message(datagram.to_vec(), peer, Transport::Udp) else {
            continue;
        };
        // Its share of dlms.max_inflight_bytes, or dropped: a datagram does not wait.
        let Some(lease) = edge.try_lease(datagram.len()) else {
            edge.not_stored(reserved);
            Refused::Busy.count();
            continue;
        };
        let submission = Submission {
            budget: Some(Box::new(lease)),
            ..Submission::unanswered(message)
        };
        // Handed on, its counter stays reserved: should the writer drop it (the WAL at its
        // budget), a resend of the same push is refused as a replay. A UDP meter has no
        // answer to resend on; one that needs each push stored uses TCP.
        match edge.wal.try_send(submission) {
            Ok(()) => {}
            Err(flume::TrySendError::Full(_)) => {
                edge.not_stored(reserved);
                Refused::Busy.count();
            }
            Err(flume::TrySendError::Disconnected(_)) => break,
        }
    }
}
