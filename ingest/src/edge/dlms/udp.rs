//! The UDP side: one task reads datagrams, one wrapper frame each, and hands them to the WAL
//! writer without waiting (a UDP push has no answer to wait with); a datagram that finds the
//! writer's channel or `dlms.max_inflight_bytes` full is dropped (`busy`).

use std::sync::Arc;

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
    loop {
        let received = tokio::select! {
            r = socket.recv_from(&mut buf) => r,
            _ = shutdown.stopping() => break,
        };
        let (len, peer) = match received {
            Ok(received) => received,
            // An ICMP error for an earlier datagram surfaces here.
            Err(e) => {
                tracing::debug!(error = %e, "DLMS UDP receive");
                continue;
            }
        };
        let datagram = &buf[..len];
        if let Err(why) = frame::datagram(datagram, edge.config.max_apdu_bytes) {
            why.count();
            continue;
        }
        let Ok(message) = edge.message(datagram.to_vec(), peer, Transport::Udp) else {
            continue;
        };
        // Its share of dlms.max_inflight_bytes, or dropped: a datagram does not wait.
        let Some(lease) = edge.try_lease(datagram.len()) else {
            Refused::Busy.count();
            continue;
        };
        let submission = Submission {
            budget: Some(Box::new(lease)),
            ..Submission::unanswered(message)
        };
        match edge.wal.try_send(submission) {
            Ok(()) => {}
            Err(flume::TrySendError::Full(_)) => Refused::Busy.count(),
            Err(flume::TrySendError::Disconnected(_)) => break,
        }
    }
}
