//! The one error type of the ingest crate, and [`positive`], the check every config section
//! uses for its counts and durations.

use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A config value is wrong; start-up stops. `key` is the TOML path of the value.
    #[error("config key `{key}`: {reason}")]
    Config { key: String, reason: String },

    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    /// A thread or task of the runtime could not start, or died.
    #[error("{0}")]
    Runtime(String),

    /// The credential store or an import file is wrong (the text names the file and line).
    #[error("credentials: {0}")]
    Credentials(String),

    /// A device secret breaks the rules (the secret is not shown).
    #[error("a secret must be {min} to {max} printable ASCII characters without spaces")]
    InvalidSecret { min: usize, max: usize },

    /// A `publish_for` glob breaks the rules.
    #[error("publish_for glob {0:?} must be 1 to 64 characters of [A-Za-z0-9._-*?]")]
    InvalidGlob(String),

    /// A meter id that is not 1 to 64 characters of `[A-Za-z0-9._-]`.
    #[error("meter id {0:?} must be 1 to 64 characters of [A-Za-z0-9._-]")]
    InvalidMeterId(String),

    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    Storage(#[from] meterflow_storage::StorageError),
}

impl IngestError {
    pub(crate) fn config(key: impl Into<String>, reason: impl Into<String>) -> Self {
        IngestError::Config {
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// Whether trying again (later, unchanged) can help: a port in use may be freed, a
    /// disk may get space; a wrong config value will stay wrong.
    pub fn is_retryable(&self) -> bool {
        match self {
            IngestError::Config { .. } => false,
            IngestError::Bind { .. } | IngestError::Io { .. } => true,
            IngestError::Runtime(_)
            | IngestError::Credentials(_)
            | IngestError::InvalidSecret { .. }
            | IngestError::InvalidGlob(_)
            | IngestError::InvalidMeterId(_) => false,
            IngestError::Storage(e) => e.is_retryable(),
        }
    }
}

/// `Err` naming `key` when `value` is 0.
pub(crate) fn positive(key: &str, value: u64) -> Result<(), IngestError> {
    if value == 0 {
        return Err(IngestError::config(key, "must be greater than 0"));
    }
    Ok(())
}
