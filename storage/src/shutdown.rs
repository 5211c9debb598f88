//! One signal that stops the process, with the deadline by which the edges must have
//! answered what they took. The runtime holds the [`Shutdown`]; every part that must notice
//! holds a [`ShutdownSignal`]: the edges' tasks await it, threads (the ClickHouse writer
//! waiting for room) look at it. A [`Shutdown`] dropped without [`Shutdown::begin`] (a runtime
//! given up on an error) stops everything at once. It lives in this crate, the lowest one
//! with a part to stop.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// The trigger, held by the runtime.
#[derive(Debug)]
pub struct Shutdown(watch::Sender<Option<Instant>>);

/// What every part that must stop holds: whether the shutdown has begun, and its deadline.
#[derive(Debug, Clone)]
pub struct ShutdownSignal(watch::Receiver<Option<Instant>>);

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown(watch::channel(None).0)
    }

    pub fn signal(&self) -> ShutdownSignal {
        ShutdownSignal(self.0.subscribe())
    }

    /// Begins the shutdown: from now on every signal says so, and the edges have `drain` to
    /// answer what they took. Returns the deadline. A second call keeps the first deadline.
    pub fn begin(&self, drain: Duration) -> Instant {
        let mut deadline = Instant::now() + drain;
        self.0.send_if_modified(|current| match current {
            Some(first) => {
                deadline = *first;
                false
            }
            None => {
                *current = Some(deadline);
                true
            }
        });
        deadline
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

impl ShutdownSignal {
    /// A signal that never fires (a part used outside `serve`: an import, a test).
    pub fn never() -> ShutdownSignal {
        static NEVER: OnceLock<watch::Sender<Option<Instant>>> = OnceLock::new();
        ShutdownSignal(NEVER.get_or_init(|| watch::channel(None).0).subscribe())
    }

    /// Whether the shutdown has begun (or its [`Shutdown`] is gone).
    pub fn is_stopping(&self) -> bool {
        self.deadline().is_some()
    }

    /// The shutdown's deadline, once it has begun; now, once its [`Shutdown`] is gone
    /// without beginning.
    pub fn deadline(&self) -> Option<Instant> {
        let begun = *self.0.borrow();
        begun.or_else(|| self.0.has_changed().is_err().then(Instant::now))
    }

    /// Resolves when the shutdown begins (at once if it has), with its deadline; at once, with
    /// now, when its [`Shutdown`] is gone without beginning.
    pub async fn stopping(&mut self) -> Instant {
        loop {
            if let Some(deadline) = *self.0.borrow_and_update() {
                return deadline;
            }
            if self.0.changed().await.is_err() {
                return Instant::now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_signal_sees_the_first_deadline() {
        let shutdown = Shutdown::new();
        let mut early = shutdown.signal();
        assert!(!early.is_stopping());
        assert_eq!(early.deadline(), None);
        let waiting = tokio::spawn(async move { early.stopping().await });
        let deadline = shutdown.begin(Duration::from_secs(5));
        assert_eq!(waiting.await.unwrap(), deadline);
        assert_eq!(shutdown.begin(Duration::from_secs(60)), deadline);
        let mut late = shutdown.signal();
        assert!(late.is_stopping());
        assert_eq!(late.stopping().await, deadline);
    }

    #[tokio::test]
    async fn a_signal_without_a_shutdown_never_fires() {
        let mut never = ShutdownSignal::never();
        assert!(!never.is_stopping());
        let waited = tokio::time::timeout(Duration::from_millis(20), never.stopping()).await;
        assert!(waited.is_err());
    }

    #[tokio::test]
    async fn a_shutdown_dropped_without_beginning_stops_everything() {
        let shutdown = Shutdown::new();
        let mut signal = shutdown.signal();
        let waiting = tokio::spawn(async move { signal.stopping().await });
        let other = shutdown.signal();
        drop(shutdown);
        waiting.await.unwrap();
        assert!(other.is_stopping());
        assert!(other.deadline().is_some());
    }
}
