//! Duplicate detection (RFC 7252 §4.5): the answer to every request, kept per peer and
//! message ID for EXCHANGE_LIFETIME, so that a retransmitted CON (its ACK was lost) or a
//! duplicated NON gets the same answer again and is never ingested twice. Bounded: when
//! full, the oldest entry goes first (counted; a retransmission of an evicted exchange would
//! be ingested again, which the at-least-once sinks absorb).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// RFC 7252 §4.8.2 with the default transmission parameters.
pub const EXCHANGE_LIFETIME: Duration = Duration::from_secs(247);

pub type ExchangeKey = (SocketAddr, u16);

/// Where an exchange stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exchange {
    /// Waiting for the WAL: a retransmission is ignored, the answer is on its way.
    InFlight,
    /// Answered with these bytes.
    Answered(Vec<u8>),
}

pub struct ExchangeCache {
    capacity: usize,
    /// Each exchange with the time it expires.
    entries: HashMap<ExchangeKey, (Instant, Exchange)>,
    /// Insertion order with the expiry time given then; an item whose time no longer matches
    /// its entry is stale (the key was inserted again) and is skipped.
    order: VecDeque<(Instant, ExchangeKey)>,
}

impl ExchangeCache {
    pub fn new(capacity: usize) -> Self {
        ExchangeCache {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The exchange, unless its lifetime is over.
    pub fn get(&self, key: &ExchangeKey, now: Instant) -> Option<&Exchange> {
        match self.entries.get(key) {
            Some((expires, exchange)) if *expires > now => Some(exchange),
            _ => None,
        }
    }

    /// Starts an exchange (or replaces one whose ID the peer reused after it expired).
    pub fn insert(&mut self, key: ExchangeKey, exchange: Exchange, now: Instant) {
        self.expire(now);
        let expires = now + EXCHANGE_LIFETIME;
        let fresh = self.entries.insert(key, (expires, exchange)).is_none();
        self.order.push_back((expires, key));
        if fresh {
            while self.entries.len() > self.capacity {
                let Some((at, oldest)) = self.order.pop_front() else {
                    break;
                };
                if self.remove_if_current(at, oldest) {
                    metrics::counter!("meterflow_coap_exchange_evictions_total").increment(1);
                }
            }
        }
    }

    /// Records the answer of an exchange still in the cache; returns false when it was
    /// evicted meanwhile.
    pub fn answer(&mut self, key: &ExchangeKey, bytes: Vec<u8>) -> bool {
        match self.entries.get_mut(key) {
            Some((_, exchange)) => {
                *exchange = Exchange::Answered(bytes);
                true
            }
            None => false,
        }
    }

    /// Drops the entries whose lifetime is over.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&(at, key)) = self.order.front() {
            if at > now {
                break;
            }
            self.order.pop_front();
            self.remove_if_current(at, key);
        }
    }

    fn remove_if_current(&mut self, at: Instant, key: ExchangeKey) -> bool {
        match self.entries.get(&key) {
            Some((expires, _)) if *expires == at => {
                self.entries.remove(&key);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16, mid: u16) -> ExchangeKey {
        (SocketAddr::from(([127, 0, 0, 1], port)), mid)
    }

    #[test]
    fn answers_are_kept_for_the_exchange_lifetime() {
        let mut cache = ExchangeCache::new(10);
        let t0 = Instant::now();
        cache.insert(key(1, 7), Exchange::InFlight, t0);
        assert_eq!(cache.get(&key(1, 7), t0), Some(&Exchange::InFlight));
        assert!(cache.answer(&key(1, 7), vec![1, 2]));
        assert_eq!(
            cache.get(&key(1, 7), t0 + Duration::from_secs(200)),
            Some(&Exchange::Answered(vec![1, 2]))
        );
        assert_eq!(
            cache.get(&key(2, 7), t0),
            None,
            "another peer, another exchange"
        );
        let later = t0 + EXCHANGE_LIFETIME + Duration::from_secs(1);
        assert_eq!(cache.get(&key(1, 7), later), None);
        cache.expire(later);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn the_cache_never_grows_past_its_capacity() {
        let mut cache = ExchangeCache::new(100);
        let t0 = Instant::now();
        for i in 0..10_000u32 {
            cache.insert(
                key((i % 500) as u16, (i / 500) as u16),
                Exchange::InFlight,
                t0,
            );
            assert!(cache.len() <= 100);
        }
        // The newest stay, the oldest went.
        assert!(cache.get(&key(499, 19), t0).is_some());
        assert!(cache.get(&key(0, 0), t0).is_none());
        assert!(
            !cache.answer(&key(0, 0), vec![]),
            "an evicted exchange is not revived"
        );
    }

    #[test]
    fn a_reused_message_id_after_expiry_starts_a_new_exchange() {
        let mut cache = ExchangeCache::new(10);
        let t0 = Instant::now();
        cache.insert(key(1, 1), Exchange::Answered(vec![9]), t0);
        let later = t0 + EXCHANGE_LIFETIME + Duration::from_secs(1);
        assert!(cache.get(&key(1, 1), later).is_none());
        cache.insert(key(1, 1), Exchange::InFlight, later);
        assert_eq!(cache.get(&key(1, 1), later), Some(&Exchange::InFlight));
        cache.expire(later + Duration::from_secs(1));
        assert_eq!(
            cache.len(),
            1,
            "the stale order item did not take the new entry"
        );
    }
}
