//! One signal that stops the process, with the deadline by which the edges must have
//! answered what they took. The runtime holds the [`Shutdown`]; every part that must notice
//! holds a [`ShutdownSignal`]: the edges' tasks await it, threads (the ClickHouse writer
//! waiting for room) look at it. It lives in this crate, the lowest one with a part to stop.

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
        ShutdownSignal(watch::channel(None).1)
    }

    /// Whether the shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        self.0.borrow().is_some()
    }

    /// The shutdown's deadline, once it has begun.
    pub fn deadline(&self) -> Option<Instant> {
        *self.0.borrow()
    }

    /// Resolves when the shutdown begins (at once if it has), with its deadline; never for a
    /// signal whose [`Shutdown`] is gone without beginning.
    pub async fn stopping(&mut self) -> Instant {
        loop {
            if let Some(deadline) = *self.0.borrow_and_update() {
                return deadline;
            }
            if self.0.changed().await.is_err() {
                std::future::pending::<()>().await;
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
}
