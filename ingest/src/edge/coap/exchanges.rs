//! Duplicate detection (RFC 7252 §4.5): the answer to every request, kept per peer (or DTLS
//! identity) and message ID for EXCHANGE_LIFETIME, so that a retransmitted CON (its ACK was
//! lost) or a duplicated NON gets the same answer again and is never ingested twice.
//!
//! A retransmission is a copy of the request, byte for byte: the key holds a fingerprint of
//! the request's bytes (token, options, payload) beside the endpoint and message ID. So two
//! different requests that share an endpoint and a message ID (two DTLS sessions of one
//! gateway, a client that reuses IDs) are two exchanges, each answered with its own token and
//! stored, never one answered with the other's cached answer; and a true retransmission is
//! still known in a new DTLS session of the same identity (a NAT rebinding).
//!
//! Sized for fleet rates: about 55 to 70 bytes per exchange (the hash tables' real bucket counts), bounded in bytes
//! (`coap.exchange_cache_bytes`).
//! - The key is 16 bytes ([`ExchangeKey`]): the endpoint (an IPv4 peer's address and port
//!   exactly; an IPv6 peer or a DTLS identity as a 64-bit keyed hash: SipHash with a key
//!   drawn at start-up), the message ID, and a 40-bit keyed hash of the request's bytes.
//! - An answer of at most 12 bytes (an ACK with its token and no options, which is what a 2.04
//!   is) is kept inline; a longer one (a diagnostic, Location-Path, Block1) is kept on the heap
//!   and counted in the bound.
//! - Exchanges are grouped into generations of [`GENERATION`] seconds, each its own map, so
//!   there is no per-entry queue: a generation goes whole once its newest exchange is past
//!   EXCHANGE_LIFETIME. Each entry keeps its time to the millisecond, so a lookup honours the
//!   lifetime exactly.
//!
//! When the bound is reached, the oldest generation may go early once its newest exchange is
//! older than [`LAST_COPY`] (MAX_TRANSMIT_SPAN + MAX_LATENCY, 145 s: the last moment any copy of
//! a request can still arrive). While every generation is younger, [`ExchangeCache::insert`]
//! refuses and the server answers 5.03: a retransmission is never ingested twice.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// RFC 7252 §4.8.2 with the default transmission parameters.
pub const EXCHANGE_LIFETIME: Duration = Duration::from_secs(247);
/// RFC 7252 §4.8.2: from a CON's first transmission to its last retransmission.
pub const MAX_TRANSMIT_SPAN: Duration = Duration::from_secs(45);
/// RFC 7252 §4.8.2: MAX_TRANSMIT_SPAN + MAX_LATENCY, after which no copy of a request can
/// arrive any more (NON_LIFETIME).
pub const LAST_COPY: Duration = Duration::from_secs(145);
/// How long one generation takes new exchanges. At most 65 s (offsets are u16 milliseconds).
pub const GENERATION: Duration = Duration::from_secs(15);

/// A peer (or DTLS identity), a message ID and the request's fingerprint, packed:
/// `[kind][endpoint: 8][message ID: 2][fingerprint: 5]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExchangeKey([u8; 16]);

/// Makes [`ExchangeKey`]s; holds the hash key for IPv6 peers and identities.
#[derive(Clone)]
pub struct KeyMaker(std::collections::hash_map::RandomState);

impl Default for KeyMaker {
    fn default() -> Self {
        KeyMaker(std::collections::hash_map::RandomState::new())
    }
}

impl KeyMaker {
    /// The exchange of `request` (the whole CoAP message) from a plain-CoAP peer: its address
    /// and port, the message ID, and the request's fingerprint.
    pub fn peer(&self, peer: SocketAddr, message_id: u16, request: &[u8]) -> ExchangeKey {
        let mut endpoint = [0u8; 8];
        let kind = match peer.ip() {
            IpAddr::V4(ip) => {
                endpoint[..4].copy_from_slice(&ip.octets());
                endpoint[4..6].copy_from_slice(&peer.port().to_be_bytes());
                4
            }
            IpAddr::V6(ip) => {
                endpoint = self.0.hash_one((ip.octets(), peer.port())).to_le_bytes();
                6
            }
        };
        self.key(kind, endpoint, message_id, request)
    }

    /// The exchange of `request` from an authenticated (DTLS) device: its identity, the
    /// message ID and the request's fingerprint, so a copy of the request sent again in a new
    /// session (after a NAT rebinding, say) is still known, and another request of another
    /// session with the same ID is not taken for it.
    pub fn identity(&self, identity: &str, message_id: u16, request: &[u8]) -> ExchangeKey {
        let endpoint = self.0.hash_one(identity).to_le_bytes();
        self.key(1, endpoint, message_id, request)
    }

    fn key(&self, kind: u8, endpoint: [u8; 8], message_id: u16, request: &[u8]) -> ExchangeKey {
        let mut key = [0u8; 16];
        key[0] = kind;
        key[1..9].copy_from_slice(&endpoint);
        key[9..11].copy_from_slice(&message_id.to_be_bytes());
        let fingerprint = self.0.hash_one(request).to_le_bytes();
        key[11..16].copy_from_slice(&fingerprint[..5]);
        ExchangeKey(key)
    }
}

/// Where an exchange stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exchange {
    /// Waiting for the WAL: a retransmission is ignored, the answer is on its way.
    InFlight,
    /// Answered with these bytes.
    Answered(Vec<u8>),
}

/// Longest answer kept inline: a 4-byte header and an 8-byte token.
const INLINE: usize = 12;
const IN_FLIGHT: u8 = 0xFF;
const ON_HEAP: u8 = 0xFE;

/// One exchange: when it began (milliseconds after its generation began) and its answer.
#[derive(Clone, Copy)]
struct Slot {
    offset_ms: [u8; 2],
    /// Answer length, or IN_FLIGHT, or ON_HEAP.
    len: u8,
    inline: [u8; INLINE],
}

/// Bytes a map bucket takes: key, value and hashbrown's control byte.
const BUCKET: usize = std::mem::size_of::<(ExchangeKey, Slot)>() + 1;
const HEAP_BUCKET: usize = std::mem::size_of::<(ExchangeKey, Box<[u8]>)>() + 1;

struct Generation {
    started: Instant,
    newest: Instant,
    slots: HashMap<ExchangeKey, Slot>,
    /// Answers longer than INLINE.
    heap: HashMap<ExchangeKey, Box<[u8]>>,
    heap_bytes: usize,
    /// The most buckets each table has had (`capacity()` shrinks with tombstones, the memory
    /// does not).
    most_buckets: (usize, usize),
}

/// hashbrown's bucket count for a table of `capacity` (7/8 full at most, a power of two).
fn buckets(capacity: usize) -> usize {
    match capacity {
        0 => 0,
        c if c < 8 => (c + 1).next_power_of_two(),
        c => (c * 8 / 7).next_power_of_two(),
    }
}

impl Generation {
    fn new(now: Instant) -> Self {
        Generation {
            started: now,
            newest: now,
            slots: HashMap::new(),
            heap: HashMap::new(),
            heap_bytes: 0,
            most_buckets: (0, 0),
        }
    }

    fn bytes(&self) -> usize {
        self.most_buckets.0 * BUCKET + self.most_buckets.1 * HEAP_BUCKET + self.heap_bytes
    }

    fn note_growth(&mut self) {
        self.most_buckets.0 = self.most_buckets.0.max(buckets(self.slots.capacity()));
        self.most_buckets.1 = self.most_buckets.1.max(buckets(self.heap.capacity()));
    }

    fn began(&self, slot: &Slot) -> Instant {
        self.started + Duration::from_millis(u64::from(u16::from_le_bytes(slot.offset_ms)))
    }

    fn exchange(&self, key: &ExchangeKey, slot: &Slot) -> Exchange {
        match slot.len {
            IN_FLIGHT => Exchange::InFlight,
            ON_HEAP => {
                Exchange::Answered(self.heap.get(key).map(|b| b.to_vec()).unwrap_or_default())
            }
            n => Exchange::Answered(slot.inline[..usize::from(n).min(INLINE)].to_vec()),
        }
    }

    fn set_answer(&mut self, key: ExchangeKey, bytes: &[u8]) {
        let Some(slot) = self.slots.get_mut(&key) else {
            return;
        };
        if let Some(old) = self.heap.remove(&key) {
            self.heap_bytes -= old.len();
        }
        if bytes.len() <= INLINE {
            slot.len = bytes.len() as u8;
            slot.inline = [0; INLINE];
            slot.inline[..bytes.len()].copy_from_slice(bytes);
        } else {
            slot.len = ON_HEAP;
            self.heap_bytes += bytes.len();
            self.heap.insert(key, bytes.into());
            self.note_growth();
        }
    }

    fn remove(&mut self, key: &ExchangeKey) {
        self.slots.remove(key);
        if let Some(old) = self.heap.remove(key) {
            self.heap_bytes -= old.len();
        }
    }
}

pub struct ExchangeCache {
    max_bytes: usize,
    /// Oldest first; the last one takes new exchanges.
    generations: VecDeque<Generation>,
    len: usize,
}

impl ExchangeCache {
    pub fn new(max_bytes: usize) -> Self {
        ExchangeCache {
            max_bytes: max_bytes.max(1),
            generations: VecDeque::new(),
            len: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Exchanges held (some may be past their lifetime until their generation goes).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Memory held, bytes: what the bound counts.
    pub fn bytes(&self) -> usize {
        self.generations.iter().map(Generation::bytes).sum()
    }

    /// The exchange, unless its lifetime is over.
    pub fn get(&self, key: &ExchangeKey, now: Instant) -> Option<Exchange> {
        self.generations.iter().rev().find_map(|g| {
            let slot = g.slots.get(key)?;
            (g.began(slot) + EXCHANGE_LIFETIME > now).then(|| g.exchange(key, slot))
        })
    }

    /// Starts an exchange (or replaces one whose ID the peer reused after it expired).
    /// Returns false, storing nothing, when the bound is reached and no generation is past
    /// [`LAST_COPY`]: dropping one could let a retransmission in twice.
    #[must_use]
    pub fn insert(&mut self, key: ExchangeKey, exchange: Exchange, now: Instant) -> bool {
        self.expire(now);
        // A reused ID (its old exchange is over) must not be found in an older generation.
        self.remove(&key);
        let needs_generation = self
            .generations
            .back()
            .is_none_or(|g| now.saturating_duration_since(g.started) >= GENERATION);
        // What this insert may add: a new generation's first table, or the current table
        // doubling when it is at its capacity.
        let growth = match self.generations.back() {
            Some(g) if !needs_generation => {
                if g.slots.len() + 1 >= g.slots.capacity() {
                    buckets(g.slots.capacity()).max(4) * BUCKET
                } else {
                    0
                }
            }
            _ => 4 * BUCKET,
        } + match &exchange {
            Exchange::Answered(b) if b.len() > INLINE => b.len() + 4 * HEAP_BUCKET,
            _ => 0,
        };
        while self.bytes() + growth > self.max_bytes {
            // (The only generation, past LAST_COPY, is not the one taking new exchanges.)
            let oldest_done = self
                .generations
                .front()
                .is_some_and(|g| now.saturating_duration_since(g.newest) >= LAST_COPY);
            if !oldest_done {
                metrics::counter!("meterflow_coap_exchanges_full_total").increment(1);
                return false;
            }
            if let Some(g) = self.generations.pop_front() {
                self.len -= g.slots.len();
                metrics::counter!("meterflow_coap_exchange_evictions_total")
                    .increment(g.slots.len() as u64);
            }
        }
        if needs_generation {
            self.generations.push_back(Generation::new(now));
        }
        let Some(g) = self.generations.back_mut() else {
            return false;
        };
        let offset = now.saturating_duration_since(g.started).as_millis();
        g.newest = now;
        g.slots.insert(
            key,
            Slot {
                offset_ms: u16::try_from(offset).unwrap_or(u16::MAX).to_le_bytes(),
                len: IN_FLIGHT,
                inline: [0; INLINE],
            },
        );
        g.note_growth();
        self.len += 1;
        if let Exchange::Answered(bytes) = exchange {
            g.set_answer(key, &bytes);
        }
        true
    }

    /// Records the answer of an exchange still in the cache; returns false when it is gone.
    pub fn answer(&mut self, key: &ExchangeKey, bytes: &[u8]) -> bool {
        match self
            .generations
            .iter_mut()
            .rev()
            .find(|g| g.slots.contains_key(key))
        {
            Some(g) => {
                g.set_answer(*key, bytes);
                true
            }
            None => false,
        }
    }

    /// Forgets an exchange (one that was refused: nothing was stored, so a retransmission is
    /// a new attempt).
    pub fn remove(&mut self, key: &ExchangeKey) {
        for g in &mut self.generations {
            if g.slots.contains_key(key) {
                g.remove(key);
                self.len -= 1;
            }
        }
    }

    /// Drops the generations whose newest exchange is past its lifetime.
    pub fn expire(&mut self, now: Instant) {
        while self
            .generations
            .front()
            .is_some_and(|g| now.saturating_duration_since(g.newest) >= EXCHANGE_LIFETIME)
        {
            if let Some(g) = self.generations.pop_front() {
                self.len -= g.slots.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key of one request per port and message ID (one key maker: its hash key is drawn
    /// once).
    fn key(port: u16, mid: u16) -> ExchangeKey {
        static KEYS: std::sync::OnceLock<KeyMaker> = std::sync::OnceLock::new();
        let keys = KEYS.get_or_init(KeyMaker::default);
        keys.peer(SocketAddr::from(([127, 0, 0, 1], port)), mid, b"request")
    }

    const MIB: usize = 1 << 20;

    #[test]
    fn slots_stay_small() {
        assert_eq!(std::mem::size_of::<(ExchangeKey, Slot)>(), 31);
    }

    #[test]
    fn answers_are_kept_for_the_exchange_lifetime() {
        let mut cache = ExchangeCache::new(MIB);
        let t0 = Instant::now();
        assert!(cache.insert(key(1, 7), Exchange::InFlight, t0));
        assert_eq!(cache.get(&key(1, 7), t0), Some(Exchange::InFlight));
        assert!(cache.answer(&key(1, 7), &[1, 2]));
        assert_eq!(
            cache.get(&key(1, 7), t0 + Duration::from_secs(200)),
            Some(Exchange::Answered(vec![1, 2]))
        );
        let long = vec![7u8; 300];
        assert!(cache.answer(&key(1, 7), &long));
        assert_eq!(
            cache.get(&key(1, 7), t0 + Duration::from_secs(246)),
            Some(Exchange::Answered(long))
        );
        assert_eq!(
            cache.get(&key(2, 7), t0),
            None,
            "another peer, another exchange"
        );
        let later = t0 + EXCHANGE_LIFETIME;
        assert_eq!(cache.get(&key(1, 7), later), None);
        cache.expire(later);
        assert_eq!(cache.len(), 0);
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn each_exchange_has_its_own_lifetime_within_a_generation() {
        let mut cache = ExchangeCache::new(MIB);
        let t0 = Instant::now();
        assert!(cache.insert(key(1, 1), Exchange::InFlight, t0));
        let t1 = t0 + Duration::from_millis(9_500);
        assert!(cache.insert(key(1, 2), Exchange::InFlight, t1));
        let at = t0 + EXCHANGE_LIFETIME + Duration::from_millis(1);
        assert_eq!(cache.get(&key(1, 1), at), None);
        assert_eq!(cache.get(&key(1, 2), at), Some(Exchange::InFlight));
    }

    #[test]
    fn a_full_cache_drops_only_what_can_no_longer_arrive() {
        // Room for a few thousand exchanges.
        let mut cache = ExchangeCache::new(256 * 1024);
        let t0 = Instant::now();
        let mut taken = 0u32;
        let mut t = t0;
        while cache.insert(
            key((taken % 60_000) as u16, (taken / 60_000) as u16),
            Exchange::InFlight,
            t,
        ) {
            taken += 1;
            t = t0 + Duration::from_millis(u64::from(taken) * 10);
        }
        assert!(taken > 3_000, "{taken}");
        assert!(cache.bytes() <= 256 * 1024);
        // Full of young exchanges: refused, nothing dropped.
        assert!(cache.get(&key(0, 0), t).is_some());
        // Once the old generations are past LAST_COPY, they make room, oldest first.
        let later = t0 + GENERATION + LAST_COPY + Duration::from_secs(60);
        assert!(later < t0 + EXCHANGE_LIFETIME);
        for i in 0..taken {
            assert!(
                cache.insert(key(60_001, i as u16), Exchange::InFlight, later),
                "{i}"
            );
        }
        assert!(cache.get(&key(0, 0), later).is_none());
        assert!(
            !cache.answer(&key(0, 0), &[]),
            "a dropped exchange is not revived"
        );
        assert!(cache.bytes() <= 256 * 1024);
    }

    #[test]
    fn a_reused_message_id_after_expiry_starts_a_new_exchange() {
        let mut cache = ExchangeCache::new(MIB);
        let t0 = Instant::now();
        assert!(cache.insert(key(1, 1), Exchange::Answered(vec![9]), t0));
        // Keep the first generation alive with another exchange.
        assert!(cache.insert(key(2, 1), Exchange::InFlight, t0 + Duration::from_secs(10)));
        let later = t0 + EXCHANGE_LIFETIME + Duration::from_secs(1);
        assert!(cache.get(&key(1, 1), later).is_none());
        assert!(cache.insert(key(1, 1), Exchange::InFlight, later));
        assert_eq!(cache.get(&key(1, 1), later), Some(Exchange::InFlight));
        assert!(cache.answer(&key(1, 1), &[5]));
        assert_eq!(
            cache.get(&key(1, 1), later),
            Some(Exchange::Answered(vec![5]))
        );
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn a_removed_exchange_is_new_again() {
        let mut cache = ExchangeCache::new(MIB);
        let t0 = Instant::now();
        assert!(cache.insert(key(1, 1), Exchange::InFlight, t0));
        cache.remove(&key(1, 1));
        assert_eq!(cache.get(&key(1, 1), t0), None);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn identities_and_address_families_do_not_collide() {
        let keys = KeyMaker::default();
        let r = b"request";
        let v4 = keys.peer(SocketAddr::from(([10, 0, 0, 1], 5683)), 1, r);
        let v6 = keys.peer(
            SocketAddr::from(([0, 0, 0, 0, 0, 0xffff, 0x0a00, 1], 5683)),
            1,
            r,
        );
        let id = keys.identity("10.0.0.1", 1, r);
        assert_ne!(v4, v6);
        assert_ne!(v4, id);
        assert_ne!(keys.identity("a", 1, r), keys.identity("b", 1, r));
        assert_eq!(keys.identity("a", 1, r), keys.identity("a", 1, r));
        assert_ne!(keys.identity("a", 1, r), keys.identity("a", 2, r));
        let port = |p| SocketAddr::from(([10, 0, 0, 1], p));
        assert_ne!(keys.peer(port(1), 1, r), keys.peer(port(2), 1, r));
    }

    #[test]
    fn only_a_copy_of_the_request_is_its_retransmission() {
        let keys = KeyMaker::default();
        let peer = SocketAddr::from(([10, 0, 0, 1], 5683));
        // (first request, second request, same exchange)
        let cases: [(&[u8], &[u8], bool); 3] = [
            (
                b"\x42\x02\x61\x61\xa1body",
                b"\x42\x02\x61\x61\xa1body",
                true,
            ),
            (
                b"\x42\x02\x61\x61\xa1body",
                b"\x42\x02\x61\x61\xb2body",
                false,
            ),
            (
                b"\x42\x02\x61\x61\xa1body",
                b"\x42\x02\x61\x61\xa1other",
                false,
            ),
        ];
        for (first, second, same) in cases {
            assert_eq!(
                keys.peer(peer, 0x6161, first) == keys.peer(peer, 0x6161, second),
                same
            );
            assert_eq!(
                keys.identity("gw", 0x6161, first) == keys.identity("gw", 0x6161, second),
                same
            );
        }
    }

    /// Memory per exchange at a steady rate, once the first generations expire (the figure
    /// the bound is sized by; `benches/coap_exchanges.rs` measures it at 30k requests/s).
    #[test]
    fn a_steady_rate_costs_under_80_bytes_per_exchange() {
        let mut cache = ExchangeCache::new(1 << 30);
        let keys = KeyMaker::default();
        let t0 = Instant::now();
        let per_second = 2_000u32;
        let mut most = 0f64;
        for second in 0..300u32 {
            for i in 0..per_second {
                let n = second * per_second + i;
                let peer = SocketAddr::from(([10, (n >> 16) as u8, (n >> 8) as u8, n as u8], 5683));
                let now =
                    t0 + Duration::from_micros(u64::from(second) * 1_000_000 + u64::from(i) * 500);
                let k = keys.peer(peer, (n % 65_536) as u16, &n.to_le_bytes());
                assert!(cache.insert(k, Exchange::InFlight, now));
                // A 2.04 ACK with an 8-byte token.
                assert!(cache.answer(&k, &[0x68, 0x44, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8]));
            }
            if second >= 250 {
                most = most.max(cache.bytes() as f64 / cache.len() as f64);
            }
        }
        assert!(most < 80.0, "{most:.1} bytes per exchange");
    }
}
