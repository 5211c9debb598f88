//! What an edge hands the WAL writer ([`Submission`]: a [`RawMessage`] as accepted, maybe a
//! wish to be told, maybe a lease) and what it is told back ([`Durability`]). The pipeline
//! reads the same [`RawMessage`], from the queue or from the WAL.

use bytes::Bytes;
use flume::{Receiver, Sender};
use meterflow_proto::Source;
use meterflow_storage::WalRecord;
use tokio::sync::OwnedSemaphorePermit;

use super::note::EdgeNote;

/// A message as accepted from the network, before decoding.
#[derive(Debug, Clone)]
pub struct RawMessage {
    /// Its place in the WAL; 0 when it could not be written there (a WAL I/O error).
    pub lsn: u64,
    /// MQTT topic (or CoAP path).
    pub topic: String,
    pub payload: Bytes,
    pub source: Source,
    /// When meterflow accepted it, Unix ms.
    pub received_at_ms: i64,
    /// MQTT 5 content-type property, where the publisher set one.
    pub content_type: Option<String>,
    /// Why the edge refused it: kept as an `unauthorized` dead letter and nothing else; or,
    /// of kind `BadTopic`, who sent a message whose topic routes nowhere (boxed: both are
    /// rare, messages many).
    pub edge_note: Option<Box<EdgeNote>>,
    /// The gateway (or concentrator) that sent it for its meter, heard too. In memory only:
    /// not written to the WAL (a record an older binary reads stays as it was), so a message
    /// read back from the WAL tells no gateway's liveness.
    pub via: Option<Box<str>>,
}

impl RawMessage {
    /// A message as an edge accepts it (not yet in the WAL), received now.
    pub fn new(source: Source, topic: String, payload: Bytes) -> RawMessage {
        RawMessage {
            lsn: 0,
            topic,
            payload,
            source,
            received_at_ms: meterflow_proto::now_ms(),
            content_type: None,
            edge_note: None,
            via: None,
        }
    }
}

impl From<WalRecord> for RawMessage {
    fn from(r: WalRecord) -> Self {
        RawMessage {
            lsn: r.lsn,
            topic: r.topic,
            payload: Bytes::from(r.payload),
            source: r.source,
            received_at_ms: r.received_at_ms,
            content_type: r.content_type,
            edge_note: r
                .edge_note
                .as_deref()
                .map(|text| Box::new(EdgeNote::from_wal(text))),
            via: None,
        }
    }
}

/// Something an edge hands over with a message and gets back by its drop.
pub type Lease = Box<dyn std::any::Any + Send>;

/// A message's share of an edge's in-flight byte budget (`mqtt.max_inflight_bytes`,
/// `dlms.max_inflight_bytes`: a semaphore of that many permits, one a byte), lent to the WAL
/// writer with it as its [`Lease`] and given back when the writer is done with it; the edge's
/// gauge of bytes in flight follows it.
pub struct Budget {
    _permit: OwnedSemaphorePermit,
    bytes: f64,
    gauge: metrics::Gauge,
}

impl Budget {
    pub fn new(permit: OwnedSemaphorePermit, gauge: &metrics::Gauge) -> Budget {
        let bytes = permit.num_permits() as f64;
        gauge.increment(bytes);
        Budget {
            _permit: permit,
            bytes,
            gauge: gauge.clone(),
        }
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        self.gauge.decrement(self.bytes);
    }
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Budget({})", self.bytes)
    }
}

/// What became of a submission that asked to be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Durability {
    /// In the WAL at this LSN, fsynced unless `wal.fsync = "never"`.
    Durable(u64),
    /// The WAL is at its disk budget (`wal.max_bytes`): not stored; the sender should back off.
    WalFull,
    /// The WAL could not be written (an I/O error, logged): not stored.
    Failed,
}

/// One message from an edge.
#[derive(Debug)]
pub struct Submission {
    pub message: RawMessage,
    /// Told once the message is durable (or refused). Without it (MQTT QoS 0, an LwM2M
    /// heartbeat) a message the WAL cannot write still goes on to the pipeline.
    pub notify: Option<tokio::sync::oneshot::Sender<Durability>>,
    /// What the edge lends the writer with the message, dropped when the writer is done with
    /// it (an MQTT or DLMS message's [`Budget`]). The writer knows no edge.
    pub budget: Option<Lease>,
}

impl Submission {
    /// A message nobody waits for (its fate is not told).
    pub fn unanswered(message: RawMessage) -> Submission {
        Submission {
            message,
            notify: None,
            budget: None,
        }
    }
}

/// Submissions waiting for the writer at most on the MQTT way in (MQTT and the bridges): an
/// MQTT connection waits for room (and is not read meanwhile).
pub const SUBMISSIONS: usize = 8192;

/// The channel one edge submits through; `capacity` bounds what waits for the writer.
pub fn channel(capacity: usize) -> (Sender<Submission>, Receiver<Submission>) {
    flume::bounded(capacity)
}
