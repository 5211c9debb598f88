//! The live sessions, by identity and client id: session takeover, the per-identity session
//! cap, and closing sessions from outside (a revoked credential, shutdown). Each connection
//! task holds a [`Kick`] it listens on; the registry keeps one per session.
//!
//! Sessions are keyed by identity *and* client id: a session is taken over only by a new
//! connection of the same identity with the same client id, and no identity can hold (and so
//! lock out) a client id another identity uses. No session state outlives a connection, so
//! two identities never need to share one.

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
    kick: Arc<Kick>,
}

/// What [`Registry::register`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    New,
    /// The same identity's older session with this client id was told to close.
    TookOver,
    /// The identity held `mqtt.max_sessions_per_identity` sessions: its oldest was told to
    /// close (a dead session left by a meter whose client id changes cannot lock it out).
    EvictedOldest,
}

#[derive(Default)]
struct Inner {
    /// (identity, "" for anonymous; client id) -> the live session.
    live: HashMap<(Box<str>, Box<str>), Live>,
    /// Each identity's sessions, oldest first: (connection, client id). Anonymous ones are
    /// not counted.
    per_identity: HashMap<Box<str>, std::collections::VecDeque<(u64, Box<str>)>>,
}

#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers connection `conn` of `identity` (`None`: anonymous) under `client_id`. The
    /// identity's live session with that client id, if any, is taken over; past
    /// `max_per_identity` sessions, the identity's oldest is closed.
    pub fn register(
        &self,
        identity: Option<&str>,
        client_id: &str,
        conn: u64,
        kick: Arc<Kick>,
        max_per_identity: usize,
    ) -> Registered {
        let mut inner = self.lock();
        let key = (Box::from(identity.unwrap_or("")), Box::from(client_id));
        if let Some(old) = inner.live.get_mut(&key) {
            old.kick.kick(CloseReason::TakenOver);
            let old_conn = std::mem::replace(old, Live { conn, kick }).conn;
            if let Some(sessions) = identity.and_then(|id| inner.per_identity.get_mut(id)) {
                for s in sessions.iter_mut().filter(|s| s.0 == old_conn) {
                    s.0 = conn;
                }
            }
            return Registered::TookOver;
        }
        let mut outcome = Registered::New;
        if let Some(id) = identity {
            let sessions = inner.per_identity.entry(id.into()).or_default();
            let evicted = if sessions.len() >= max_per_identity.max(1) {
                sessions.pop_front()
            } else {
                None
            };
            sessions.push_back((conn, client_id.into()));
            if let Some((_, old_client)) = evicted {
                if let Some(old) = inner.live.remove(&(Box::from(id), old_client)) {
                    old.kick.kick(CloseReason::Evicted);
                }
                outcome = Registered::EvictedOldest;
            }
        }
        inner.live.insert(key, Live { conn, kick });
        outcome
    }

    /// Removes the session if connection `conn` still holds it.
    pub fn unregister(&self, identity: Option<&str>, client_id: &str, conn: u64) {
        let mut inner = self.lock();
        let key = (Box::from(identity.unwrap_or("")), Box::from(client_id));
        if inner.live.get(&key).is_some_and(|l| l.conn == conn) {
            inner.live.remove(&key);
            if let Some(id) = identity {
                if let Some(sessions) = inner.per_identity.get_mut(id) {
                    sessions.retain(|s| s.0 != conn);
                    if sessions.is_empty() {
                        inner.per_identity.remove(id);
                    }
                }
            }
        }
    }

    /// Closes every session of these identities; returns how many.
    pub fn kick_identities(&self, ids: &HashSet<&str>, reason: CloseReason) -> usize {
        self.kick_where(|identity| identity.is_some_and(|i| ids.contains(i)), reason)
    }

    /// Tells every session to close for `reason`, over any earlier reason.
    pub fn force_all(&self, reason: CloseReason) {
        for l in self.lock().live.values() {
            l.kick.force(reason);
        }
    }

    /// Closes every session whose identity (`None`: anonymous) passes `select`; returns how
    /// many.
    pub fn kick_where(&self, select: impl Fn(Option<&str>) -> bool, reason: CloseReason) -> usize {
        let inner = self.lock();
        let mut n = 0;
        for ((identity, _), l) in &inner.live {
            let identity = (!identity.is_empty()).then_some(&**identity);
            if select(identity) {
                l.kick.kick(reason);
                n += 1;
            }
        }
        n
    }

    pub fn len(&self) -> usize {
        self.lock().live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_identity_takes_a_session_over_and_nobody_locks_another_out() {
        let r = Registry::default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let first = Arc::new(Kick::default());
        assert_eq!(
            r.register(Some("E1"), "c1", 1, first.clone(), 4),
            Registered::New
        );
        // Another identity with the same client id gets a session of its own; the first stays.
        let other = Arc::new(Kick::default());
        assert_eq!(
            r.register(Some("E2"), "c1", 2, other.clone(), 4),
            Registered::New
        );
        assert_eq!(
            r.register(None, "c1", 3, Arc::default(), 4),
            Registered::New
        );
        assert_eq!(first.reason.load(Ordering::Relaxed), 0);
        assert_eq!(r.len(), 3);
        // The same identity: the old one is told to close.
        let second = Arc::new(Kick::default());
        assert_eq!(
            r.register(Some("E1"), "c1", 4, second.clone(), 4),
            Registered::TookOver
        );
        assert_eq!(rt.block_on(first.kicked(None)), CloseReason::TakenOver);
        // The old connection's cleanup does not remove the new one.
        r.unregister(Some("E1"), "c1", 1);
        assert_eq!(r.len(), 3);
        r.unregister(Some("E1"), "c1", 4);
        r.unregister(Some("E2"), "c1", 2);
        r.unregister(None, "c1", 3);
        assert!(r.is_empty());
    }

    #[test]
    fn past_its_share_of_sessions_an_identity_loses_its_oldest() {
        let r = Registry::default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let kicks: Vec<Arc<Kick>> = (0..5).map(|_| Arc::new(Kick::default())).collect();
        for (i, kick) in kicks.iter().take(3).enumerate() {
            let got = r.register(Some("GW"), &format!("c{i}"), i as u64, kick.clone(), 3);
            assert_eq!(got, Registered::New);
        }
        // A fourth session closes the oldest (c0); the registry no longer holds it.
        assert_eq!(
            r.register(Some("GW"), "c3", 3, kicks[3].clone(), 3),
            Registered::EvictedOldest
        );
        assert_eq!(rt.block_on(kicks[0].kicked(None)), CloseReason::Evicted);
        assert_eq!(r.len(), 3);
        r.unregister(Some("GW"), "c0", 0); // its cleanup changes nothing
        assert_eq!(r.len(), 3);
        // A takeover is no new session and keeps its place in the order.
        assert_eq!(
            r.register(Some("GW"), "c1", 10, kicks[4].clone(), 3),
            Registered::TookOver
        );
        assert_eq!(
            r.register(Some("GW"), "c4", 11, Arc::default(), 3),
            Registered::EvictedOldest
        );
        assert_eq!(
            rt.block_on(kicks[4].kicked(None)),
            CloseReason::Evicted,
            "c1, now conn 10"
        );
        // Closed sessions free their place.
        r.unregister(Some("GW"), "c2", 2);
        assert_eq!(
            r.register(Some("GW"), "c5", 12, Arc::default(), 3),
            Registered::New
        );
        // Anonymous sessions have no identity to count.
        for i in 0..5 {
            assert_eq!(
                r.register(None, &format!("a{i}"), 20 + i, Arc::default(), 3),
                Registered::New
            );
        }
    }

    #[test]
    fn identities_are_kicked_with_their_reason() {
        let r = Registry::default();
        let kicks: Vec<Arc<Kick>> = (0..4).map(|_| Arc::new(Kick::default())).collect();
        r.register(Some("E1"), "a", 1, kicks[0].clone(), 8);
        r.register(Some("E1"), "b", 2, kicks[1].clone(), 8);
        r.register(Some("E2"), "c", 3, kicks[2].clone(), 8);
        r.register(None, "d", 4, kicks[3].clone(), 8);
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
