//! The one error of revenue protection.

/// What can go wrong putting a revenue question together.
#[derive(Debug, thiserror::Error)]
pub enum RevenueError {
    /// The question cannot be answered as asked (no retry helps).
    #[error("{0}")]
    Question(String),
}

impl RevenueError {
    /// Whether a retry can help: never, the question must change.
    pub fn is_retryable(&self) -> bool {
        false
    }
}
