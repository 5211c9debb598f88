//! The ways in, and the contract they share with the WAL writer.
//!
//! - [`mqtt`]: meterflow's own MQTT server (3.1.1 and 5, TLS, identities, limits);
//! - [`coap`]: the CoAP/UDP endpoint, plain and DTLS (reports, LwM2M 1.1 registration and Send);
//! - [`bridge`]: MQTT 5 clients of a broker the utility already runs (shared subscription,
//!   acknowledged to the broker once in the WAL);
//! - [`dlms`]: the DLMS/COSEM wrapper listener (IEC 62056-4-7 over TCP and UDP; meters
//!   identified by the system title of their ciphered pushes).
//!
//! The contract every edge keeps:
//! - it authenticates the peer and asks the one [`policy`]: may this [`Identity`] publish for
//!   this meter, are devices without identity served on this listener;
//! - it hands each message to the WAL writer as a [`Submission`] through its bounded
//!   [`channel`], a message it refused too (with its [`EdgeNote`]: it becomes an
//!   `unauthorized` dead letter), and one of an identified device whose topic routes nowhere
//!   with its sender (an [`EdgeNote`] of kind [`EdgeNoteKind::BadTopic`]: its `bad_topic` dead
//!   letter names the sender);
//! - it acknowledges to the device only what the writer reports [`Durability::Durable`], and
//!   tells the device to come back later on [`Durability::WalFull`] or
//!   [`Durability::Failed`];
//! - it stops taking messages when the runtime's shutdown begins, answers what it took once
//!   the writer has told its fate (an answer that waits on the device or a broker, by the
//!   shutdown's deadline), and then drops its sender.

pub mod bridge;
pub mod coap;
pub mod dlms;
pub mod mqtt;
mod note;
pub mod policy;
pub mod slots;
mod submission;

pub use note::{EdgeNote, EdgeNoteKind};

/// Asks for `bytes` of UDP receive and send buffer on `socket` (a burst of datagrams beyond
/// the receive buffer is dropped by the kernel, unseen); warns, naming the config `key`, when
/// the kernel grants less (`net.core.rmem_max`).
pub(crate) fn size_udp_buffers(socket: &socket2::Socket, bytes: usize, what: &str, key: &str) {
    for (direction, result) in [
        ("receive", socket.set_recv_buffer_size(bytes)),
        ("send", socket.set_send_buffer_size(bytes)),
    ] {
        if let Err(e) = result {
            tracing::warn!(error = %e, bytes, "{what}: cannot set the UDP {direction} buffer");
        }
    }
    // Linux reports twice what it grants (the other half is its bookkeeping).
    let granted = socket.recv_buffer_size().unwrap_or(0) / 2;
    if granted < bytes {
        tracing::warn!(
            asked = bytes,
            granted,
            "{what}: the UDP receive buffer is smaller than {key}; raise net.core.rmem_max"
        );
    }
}
pub use policy::Identity;
pub use submission::{channel, Budget, Durability, Lease, RawMessage, Submission, SUBMISSIONS};
