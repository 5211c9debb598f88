//! What flows from the network edges to the pipeline: a [`RawMessage`] as accepted, before
//! decoding, and an [`EdgeRefusal`] that says why an edge refused one.

use bytes::Bytes;
use meterflow_proto::Source;
use meterflow_storage::WalRecord;
use serde::{Deserialize, Serialize};

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
    /// Why the edge refused it, an [`EdgeRefusal`] as JSON: kept as an `unauthorized` dead letter
    /// and nothing else.
    pub refused: Option<String>,
}

/// Why an edge refused a message (a publish outside its identity), as kept in the WAL (JSON)
/// and told in its dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeRefusal {
    /// The identity that sent it (a meter or gateway id).
    pub identity: Option<String>,
    pub client_id: Option<String>,
    /// The peer's address and port.
    pub peer: String,
    pub reason: String,
}

impl EdgeRefusal {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| self.reason.clone())
    }

    /// Reads what [`EdgeRefusal::to_json`] wrote; any other text is taken as the reason.
    pub fn parse(text: &str) -> EdgeRefusal {
        serde_json::from_str(text).unwrap_or_else(|_| EdgeRefusal {
            identity: None,
            client_id: None,
            peer: String::new(),
            reason: text.to_string(),
        })
    }

    /// The dead letter's reason: what was refused, by whom, from where.
    pub fn describe(&self) -> String {
        let mut text = self.reason.clone();
        text.push_str(&format!(
            " (identity {}",
            self.identity.as_deref().unwrap_or("anonymous")
        ));
        if let Some(client_id) = &self.client_id {
            text.push_str(&format!(", client id {client_id}"));
        }
        text.push_str(&format!(", peer {})", self.peer));
        text
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
            refused: r.refused,
        }
    }
}

pub use meterflow_proto::now_ms;
