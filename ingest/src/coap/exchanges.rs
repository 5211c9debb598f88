//! Duplicate detection (RFC 7252 §4.5): the answer to every request, kept per peer and
//! message ID for EXCHANGE_LIFETIME, so that a retransmitted CON (its ACK was lost) or a
//! duplicated NON gets the same answer again and is never ingested twice.
//!
//! Bounded: when full, the oldest entry goes, but only once it is older than
//! MAX_TRANSMIT_SPAN (45 s, the last moment a client retransmits); while every entry is
//! younger, [`ExchangeCache::insert`] refuses and the server answers 5.03, so a retransmission
//! is never ingested twice. The capacity therefore bounds the sustained request rate to about
//! `capacity / 45` per second.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// RFC 7252 §4.8.2 with the default transmission parameters.
pub const EXCHANGE_LIFETIME: Duration = Duration::from_secs(247);
/// RFC 7252 §4.8.2: from a CON's first transmission to its last retransmission.
pub const MAX_TRANSMIT_SPAN: Duration = Duration::from_secs(45);

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
    /// Returns false, storing nothing, when the cache is full of exchanges younger than
    /// MAX_TRANSMIT_SPAN: evicting one could let its retransmission in twice.
    #[must_use]
    pub fn insert(&mut self, key: ExchangeKey, exchange: Exchange, now: Instant) -> bool {
        self.expire(now);
        if !self.entries.contains_key(&key) {
            while self.entries.len() >= self.capacity {
                let Some(&(at, oldest)) = self.order.front() else {
                    break;
                };
                let current = self.entries.get(&oldest).is_some_and(|(e, _)| *e == at);
                if !current {
                    self.order.pop_front(); // stale order item
                    continue;
                }
                // Inserted at `at - EXCHANGE_LIFETIME`; evictable once past the span.
                let inserted = at.checked_sub(EXCHANGE_LIFETIME).unwrap_or(now);
                if now.saturating_duration_since(inserted) < MAX_TRANSMIT_SPAN {
                    metrics::counter!("meterflow_coap_exchanges_full_total").increment(1);
                    return false;
                }
                self.order.pop_front();
                self.entries.remove(&oldest);
                metrics::counter!("meterflow_coap_exchange_evictions_total").increment(1);
            }
        }
        let expires = now + EXCHANGE_LIFETIME;
        self.entries.insert(key, (expires, exchange));
        self.order.push_back((expires, key));
        true
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

    fn remove_if_current(&mut self, at: Instant, key: ExchangeKey) {
        if self
            .entries
            .get(&key)
            .is_some_and(|(expires, _)| *expires == at)
        {
            self.entries.remove(&key);
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
        assert!(cache.insert(key(1, 7), Exchange::InFlight, t0));
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
    fn a_full_cache_evicts_only_what_can_no_longer_be_retransmitted() {
        let mut cache = ExchangeCache::new(100);
        let t0 = Instant::now();
        for i in 0..100u16 {
            assert!(cache.insert(key(i, 1), Exchange::InFlight, t0));
        }
        // Full of young exchanges: refused, nothing evicted.
        assert!(!cache.insert(
            key(500, 1),
            Exchange::InFlight,
            t0 + Duration::from_secs(10)
        ));
        assert!(cache.get(&key(0, 1), t0).is_some());
        // Past MAX_TRANSMIT_SPAN the oldest make room, one per new exchange.
        let later = t0 + MAX_TRANSMIT_SPAN + Duration::from_secs(1);
        for i in 0..10_000u32 {
            assert!(
                cache.insert(
                    key(1000 + (i % 50_000) as u16, 2),
                    Exchange::InFlight,
                    later
                ) || i >= 100
            );
            assert!(cache.len() <= 100);
        }
        assert!(cache.get(&key(0, 1), later).is_none());
        assert!(
            !cache.answer(&key(0, 1), vec![]),
            "an evicted exchange is not revived"
        );
    }

    #[test]
    fn a_reused_message_id_after_expiry_starts_a_new_exchange() {
        let mut cache = ExchangeCache::new(10);
        let t0 = Instant::now();
        assert!(cache.insert(key(1, 1), Exchange::Answered(vec![9]), t0));
        let later = t0 + EXCHANGE_LIFETIME + Duration::from_secs(1);
        assert!(cache.get(&key(1, 1), later).is_none());
        assert!(cache.insert(key(1, 1), Exchange::InFlight, later));
        assert_eq!(cache.get(&key(1, 1), later), Some(&Exchange::InFlight));
        cache.expire(later + Duration::from_secs(1));
        assert_eq!(
            cache.len(),
            1,
            "the stale order item did not take the new entry"
        );
    }
}
