//! The one error type of the VEE crate.

/// What can go wrong in VEE's pure part: a bad `[vee]` value (start-up stops, naming the key).
#[derive(Debug, thiserror::Error)]
pub enum VeeError {
    /// A config value is wrong; `key` is its TOML path. Retrying cannot help.
    #[error("config key `{key}`: {reason}")]
    Config { key: String, reason: String },
}

impl VeeError {
    pub(crate) fn config(key: impl Into<String>, reason: impl Into<String>) -> Self {
        VeeError::Config {
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// Whether trying again, unchanged, can help: never for a config value.
    pub fn is_retryable(&self) -> bool {
        false
    }
}
