//! The billing crate's one error type: a bad tariff file, a bad time or zone, a bad config
//! value. None of them is helped by a retry: each names what to fix.

/// What went wrong, and where.
#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    /// A tariff file that cannot be read or does not say what it must.
    #[error("tariff {file}: {reason}")]
    Tariff { file: String, reason: String },
    /// A config key of `[billing]` with a value it cannot take.
    #[error("{key}: {reason}")]
    Config { key: String, reason: String },
    /// A time given on the command line (`--from`, `--to`) that cannot be read.
    #[error("{what}: {reason}")]
    Time { what: String, reason: String },
    /// A time zone name that is not in the IANA database.
    #[error("{what}: {name:?} is not an IANA time zone (e.g. Europe/Berlin, Asia/Bishkek, UTC)")]
    Zone { what: String, name: String },
}

impl BillingError {
    pub(crate) fn tariff(file: &str, reason: impl Into<String>) -> BillingError {
        BillingError::Tariff {
            file: file.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn config(key: &str, reason: impl Into<String>) -> BillingError {
        BillingError::Config {
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    /// Whether doing the same again can succeed: never, the input must change.
    pub fn is_retryable(&self) -> bool {
        false
    }
}
