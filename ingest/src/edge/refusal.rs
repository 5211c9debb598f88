//! Why an edge refused a message (a publish or post outside its sender's identity): typed in
//! memory, JSON only in the WAL record (the storage crate keeps it as text), and the reason
//! of the `unauthorized` dead letter it becomes.

use serde::{Deserialize, Serialize};

/// Why an edge refused a message, and who sent it from where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The identity that sent it (a meter or gateway id); `None`: anonymous.
    pub identity: Option<String>,
    pub client_id: Option<String>,
    /// The peer's address and port.
    pub peer: String,
    pub reason: String,
}

impl Refusal {
    /// As kept in the WAL record.
    pub fn to_wal(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| self.reason.clone())
    }

    /// Reads what [`Refusal::to_wal`] wrote; any other text is taken as the reason.
    pub fn from_wal(text: &str) -> Refusal {
        serde_json::from_str(text).unwrap_or_else(|_| Refusal {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_survives_the_wal_and_older_text_is_its_reason() {
        let refusal = Refusal {
            identity: Some("GW".into()),
            client_id: Some("c1".into()),
            peer: "10.0.0.1:5000".into(),
            reason: "may not publish to \"meters/E2/json\"".into(),
        };
        assert_eq!(Refusal::from_wal(&refusal.to_wal()), refusal);
        assert_eq!(
            refusal.describe(),
            "may not publish to \"meters/E2/json\" (identity GW, client id c1, peer 10.0.0.1:5000)"
        );
        let plain = Refusal::from_wal("not JSON");
        assert_eq!(plain.reason, "not JSON");
        assert_eq!(plain.identity, None);
    }
}
