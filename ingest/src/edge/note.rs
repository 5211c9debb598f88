//! The edge's note on a message: why it refused it (a publish or post outside its sender's
//! identity), or that an identified device's message has a topic that routes nowhere: typed in memory, JSON only
//! in the WAL record (the storage crate keeps it as text), and the reason of the dead letter
//! it becomes (`unauthorized`, or `bad_topic` naming the sender).

use serde::{Deserialize, Serialize};

/// What the pipeline makes of a message the edge has a word on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgeNoteKind {
    /// Not its sender's to publish, and refused to it (MQTT 5 0x87, a 3.1.1 disconnect, CoAP
    /// 4.03): an `unauthorized` dead letter and nothing else. (What a record without a kind,
    /// written before there were others, is.)
    #[default]
    Unauthorized,
    /// An identified device's message, taken and acknowledged, whose topic is not
    /// `meters/{meter_id}/{format}`: a `bad_topic` dead letter, as any such message is, that
    /// names the sender and counts for it.
    BadTopic,
}

impl EdgeNoteKind {
    fn is_unauthorized(&self) -> bool {
        *self == EdgeNoteKind::Unauthorized
    }
}

/// Why an edge refused a message (or will not have it routed), and who sent it from where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeNote {
    /// Left out of the WAL record when `Unauthorized`: such records stay as they were.
    #[serde(default, skip_serializing_if = "EdgeNoteKind::is_unauthorized")]
    pub kind: EdgeNoteKind,
    /// The identity that sent it (a meter or gateway id); `None`: anonymous.
    pub identity: Option<String>,
    pub client_id: Option<String>,
    /// The peer's address and port.
    pub peer: String,
    pub reason: String,
}

impl EdgeNote {
    /// As kept in the WAL record.
    pub fn to_wal(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| self.reason.clone())
    }

    /// Reads what [`EdgeNote::to_wal`] wrote; any other text is taken as the reason.
    pub fn from_wal(text: &str) -> EdgeNote {
        serde_json::from_str(text).unwrap_or_else(|_| EdgeNote {
            kind: EdgeNoteKind::Unauthorized,
            identity: None,
            client_id: None,
            peer: String::new(),
            reason: text.to_string(),
        })
    }

    /// The dead letter's reason: what was refused, by whom, from where.
    pub fn describe(&self) -> String {
        format!("{} {}", self.reason, self.sender())
    }

    /// Who sent it from where: `(identity ID, client id C, peer ADDR)`.
    pub fn sender(&self) -> String {
        let mut text = format!(
            "(identity {}",
            self.identity.as_deref().unwrap_or("anonymous")
        );
        if let Some(client_id) = &self.client_id {
            text.push_str(&format!(", client id {client_id}"));
        }
        text.push_str(&format!(", peer {})", self.peer));
        text
    }
}

/// Whether a refusal may be logged now: at most [`REFUSALS_LOGGED_PER_S`] a second across
/// the edges (a flood of bad logins is counted in the metrics, not written out line by line).
pub fn log_allowed() -> bool {
    use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
    static SECOND: AtomicI64 = AtomicI64::new(0);
    static COUNT: AtomicU32 = AtomicU32::new(0);
    let now = meterflow_proto::now_ms() / 1000;
    if SECOND.swap(now, Ordering::Relaxed) != now {
        COUNT.store(0, Ordering::Relaxed);
    }
    COUNT.fetch_add(1, Ordering::Relaxed) < REFUSALS_LOGGED_PER_S
}

/// Refusals logged per second at most.
pub const REFUSALS_LOGGED_PER_S: u32 = 10;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_survives_the_wal_and_older_text_is_its_reason() {
        let refusal = EdgeNote {
            kind: EdgeNoteKind::Unauthorized,
            identity: Some("GW".into()),
            client_id: Some("c1".into()),
            peer: "10.0.0.1:5000".into(),
            reason: "may not publish to \"meters/E2/json\"".into(),
        };
        assert_eq!(EdgeNote::from_wal(&refusal.to_wal()), refusal);
        assert_eq!(
            refusal.describe(),
            "may not publish to \"meters/E2/json\" (identity GW, client id c1, peer 10.0.0.1:5000)"
        );
        let plain = EdgeNote::from_wal("not JSON");
        assert_eq!(plain.reason, "not JSON");
        assert_eq!(plain.identity, None);
        // A refusal's record is as it was before there were kinds; one without is a refusal.
        assert!(!refusal.to_wal().contains("kind"), "{}", refusal.to_wal());
        let bad_topic = EdgeNote {
            kind: EdgeNoteKind::BadTopic,
            ..refusal
        };
        assert!(bad_topic.to_wal().contains(r#""kind":"bad_topic""#));
        assert_eq!(EdgeNote::from_wal(&bad_topic.to_wal()), bad_topic);
    }
}
