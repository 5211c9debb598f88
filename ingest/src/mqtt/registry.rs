//! The live sessions by client id: session takeover (only by the same identity), and closing
//! sessions from outside (a revoked credential, shutdown). Each connection task holds a
//! [`Kick`] it listens on; the registry keeps one per client id.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::session::CloseReason;

/// How a connection is told to close.
#[derive(Debug, Default)]
pub struct Kick {
    /// `CloseReason::to_u8() + 1`; 0 while not kicked.
    reason: AtomicU8,
    notify: Notify,
}

impl Kick {
    /// Tells the connection to close; the first reason given stands.
    pub fn kick(&self, reason: CloseReason) {
        let _ = self.reason.compare_exchange(
            0,
            reason.to_u8() + 1,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        // A permit is stored when nobody waits yet: the kick is never missed.
        self.notify.notify_one();
    }

    /// Tells the connection to close for this reason, whatever it was told before (a drain
    /// that ran out of time).
    pub fn force(&self, reason: CloseReason) {
        self.reason.store(reason.to_u8() + 1, Ordering::Release);
        self.notify.notify_one();
    }

    /// Waits until the connection is told to close for a reason other than `seen` (the one
    /// it already acts on); that reason.
    pub async fn kicked(&self, seen: Option<CloseReason>) -> CloseReason {
        loop {
            let r = self.reason.load(Ordering::Acquire);
            if r > 0 && Some(CloseReason::from_u8(r - 1)) != seen {
                return CloseReason::from_u8(r - 1);
            }
            self.notify.notified().await;
        }
    }
}

struct Live {
    conn: u64,
    identity: Option<Box<str>>,
    kick: Arc<Kick>,
}

/// What [`Registry::register`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    New,
    /// The same identity's older session with this client id was told to close.
    TookOver,
    /// Another identity holds a live session with this client id: refused, it stays.
    Refused,
}

#[derive(Default)]
pub struct Registry {
    live: Mutex<HashMap<Box<str>, Live>>,
}

impl Registry {
    /// Registers connection `conn` under `client_id`. A live session with that id is taken
    /// over only by the same identity (`None` is anonymous); anyone else is refused and the
    /// live session stays.
    pub fn register(
        &self,
        client_id: &str,
        identity: Option<&str>,
        conn: u64,
        kick: Arc<Kick>,
    ) -> Registered {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let entry = Live {
            conn,
            identity: identity.map(Box::from),
            kick,
        };
        match live.get_mut(client_id) {
            Some(old) if old.identity.as_deref() != identity => Registered::Refused,
            Some(old) => {
                old.kick.kick(CloseReason::TakenOver);
                *old = entry;
                Registered::TookOver
            }
            None => {
                live.insert(client_id.into(), entry);
                Registered::New
            }
        }
    }

    /// Removes `client_id` if connection `conn` still holds it.
    pub fn unregister(&self, client_id: &str, conn: u64) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if live.get(client_id).is_some_and(|l| l.conn == conn) {
            live.remove(client_id);
        }
    }

    /// Closes every session of these identities; returns how many.
    pub fn kick_identities(&self, ids: &HashSet<&str>, reason: CloseReason) -> usize {
        self.kick_where(|identity| identity.is_some_and(|i| ids.contains(i)), reason)
    }

    /// Tells every session to close for `reason`, over any earlier reason.
    pub fn force_all(&self, reason: CloseReason) {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        for l in live.values() {
            l.kick.force(reason);
        }
    }

    /// Closes every session whose identity passes `select`; returns how many.
    pub fn kick_where(&self, select: impl Fn(Option<&str>) -> bool, reason: CloseReason) -> usize {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        for l in live.values().filter(|l| select(l.identity.as_deref())) {
            l.kick.kick(reason);
            n += 1;
        }
        n
    }

    pub fn len(&self) -> usize {
        self.live.lock().map(|l| l.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_identity_takes_a_session_over() {
        let r = Registry::default();
        let first = Arc::new(Kick::default());
        assert_eq!(
            r.register("c1", Some("E1"), 1, first.clone()),
            Registered::New
        );
        // Another identity with the same client id: refused, the first one stays.
        let other = Arc::new(Kick::default());
        assert_eq!(
            r.register("c1", Some("E2"), 2, other.clone()),
            Registered::Refused
        );
        assert_eq!(r.register("c1", None, 3, other), Registered::Refused);
        assert_eq!(first.reason.load(Ordering::Relaxed), 0);
        // The same identity: the old one is told to close.
        let second = Arc::new(Kick::default());
        assert_eq!(
            r.register("c1", Some("E1"), 4, second.clone()),
            Registered::TookOver
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(first.kicked(None)), CloseReason::TakenOver);
        // The old connection's cleanup does not remove the new one.
        r.unregister("c1", 1);
        assert_eq!(r.len(), 1);
        r.unregister("c1", 4);
        assert!(r.is_empty());
    }

    #[test]
    fn identities_are_kicked_with_their_reason() {
        let r = Registry::default();
        let kicks: Vec<Arc<Kick>> = (0..4).map(|_| Arc::new(Kick::default())).collect();
        r.register("a", Some("E1"), 1, kicks[0].clone());
        r.register("b", Some("E1"), 2, kicks[1].clone());
        r.register("c", Some("E2"), 3, kicks[2].clone());
        r.register("d", None, 4, kicks[3].clone());
        let ids: HashSet<&str> = ["E1"].into_iter().collect();
        assert_eq!(r.kick_identities(&ids, CloseReason::Revoked), 2);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(kicks[1].kicked(None)), CloseReason::Revoked);
        assert_eq!(kicks[2].reason.load(Ordering::Relaxed), 0);
        assert_eq!(r.kick_where(|i| i.is_none(), CloseReason::Revoked), 1);
        // A second kick keeps the first reason; a forced one replaces it and is seen as new.
        kicks[0].kick(CloseReason::ShuttingDown);
        assert_eq!(rt.block_on(kicks[0].kicked(None)), CloseReason::Revoked);
        kicks[0].force(CloseReason::ShutdownTimeout);
        assert_eq!(
            rt.block_on(kicks[0].kicked(Some(CloseReason::Revoked))),
            CloseReason::ShutdownTimeout
        );
    }
}
