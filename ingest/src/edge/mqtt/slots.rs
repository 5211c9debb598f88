//! The MQTT edge's two connection budgets, each exact in its gauge:
//!
//! - **pending**: connections that have not logged in yet (the TLS handshake and the
//!   CONNECT), at most `mqtt.max_pending_connections`, and at most
//!   `mqtt.max_pending_per_address` from one address. Taken at accept; one past either is
//!   closed at once. They end at `mqtt.connect_timeout_ms`, so what an attacker holds
//!   without a login is bounded in number and in time, and never touches the budget of the
//!   devices that logged in.
//! - **logged in**: at most `mqtt.max_connections`. A connection moves here once it has
//!   authenticated (before it is registered, so a refused one never takes a session over);
//!   past the limit its CONNECT is refused (CONNACK 3 / 0x89).
//!
//! Only what has not logged in is capped per address: many meters share one public address
//! behind a carrier-grade NAT (NB-IoT, LTE-M), and a cap on their sessions would lock fleets
//! out. An IPv6 address counts by its /64 (what one subscriber gets), an IPv4-mapped one as
//! the IPv4 address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::Edge;

/// The part of an address the per-address cap counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressKey {
    V4([u8; 4]),
    /// The /64 prefix.
    V6([u8; 8]),
}

impl AddressKey {
    pub fn of(ip: IpAddr) -> AddressKey {
        match ip {
            IpAddr::V4(a) => AddressKey::V4(a.octets()),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => AddressKey::V4(v4.octets()),
                None => {
                    let mut prefix = [0; 8];
                    prefix.copy_from_slice(&a.octets()[..8]);
                    AddressKey::V6(prefix)
                }
            },
        }
    }
}

/// Why a connection was closed at accept: the `reason` of `meterflow_mqtt_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// `mqtt.max_pending_connections`.
    Pending,
    /// `mqtt.max_pending_per_address`.
    PerAddress,
}

impl Full {
    pub fn label(self) -> &'static str {
        match self {
            Full::Pending => "max_pending",
            Full::PerAddress => "pending_per_address",
        }
    }
}

/// The counts of both budgets.
pub struct Slots {
    max_pending: usize,
    max_per_address: usize,
    max_logged_in: usize,
    pending: AtomicUsize,
    logged_in: AtomicUsize,
    /// Pending connections by address; an address without one has no entry.
    per_address: Mutex<HashMap<AddressKey, usize>>,
    pending_gauge: metrics::Gauge,
    logged_in_gauge: metrics::Gauge,
}

impl Slots {
    pub fn new(max_pending: usize, max_per_address: usize, max_logged_in: usize) -> Slots {
        let slots = Slots {
            max_pending,
            max_per_address,
            max_logged_in,
            pending: AtomicUsize::new(0),
            logged_in: AtomicUsize::new(0),
            per_address: Mutex::new(HashMap::new()),
            pending_gauge: metrics::gauge!("meterflow_mqtt_pending_connections"),
            logged_in_gauge: metrics::gauge!("meterflow_mqtt_connections"),
        };
        slots.pending_gauge.set(0.0);
        slots.logged_in_gauge.set(0.0);
        slots
    }

    /// Open connections, pending or logged in. A connection moving between the two is never
    /// missing from the sum: it is counted logged in before it leaves the pending count, and
    /// the pending count is read first.
    pub fn open(&self) -> usize {
        let pending = self.pending.load(Ordering::Acquire);
        pending + self.logged_in.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AddressKey, usize>> {
        self.per_address.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A pending slot for a connection from `key`, or which budget is full.
    pub fn take_pending(&self, key: AddressKey) -> Result<(), Full> {
        let mut per_address = self.lock();
        let here = per_address.get(&key).copied().unwrap_or(0);
        if here >= self.max_per_address {
            return Err(Full::PerAddress);
        }
        // Under the lock: the accept loops of every listener take slots one at a time.
        if self.pending.load(Ordering::Acquire) >= self.max_pending {
            return Err(Full::Pending);
        }
        self.pending.fetch_add(1, Ordering::AcqRel);
        per_address.insert(key, here + 1);
        drop(per_address);
        self.pending_gauge.increment(1.0);
        Ok(())
    }

    fn release_pending(&self, key: AddressKey) {
        let mut per_address = self.lock();
        if let Some(n) = per_address.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                per_address.remove(&key);
            }
        }
        self.pending.fetch_sub(1, Ordering::AcqRel);
        drop(per_address);
        self.pending_gauge.decrement(1.0);
    }

    /// A logged-in slot, if `mqtt.max_connections` has room.
    fn take_logged_in(&self) -> bool {
        let taken = self
            .logged_in
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_logged_in).then_some(n + 1)
            })
            .is_ok();
        if taken {
            self.logged_in_gauge.increment(1.0);
        }
        taken
    }

    fn release_logged_in(&self) {
        self.logged_in.fetch_sub(1, Ordering::AcqRel);
        self.logged_in_gauge.decrement(1.0);
    }

    /// Addresses with pending connections now.
    #[cfg(test)]
    pub fn addresses(&self) -> usize {
        self.lock().len()
    }
}

/// A connection's pending slot, from accept until it logs in ([`PendingSlot::log_in`]) or
/// ends. It carries the connection's peer (a connection's task is held to a memory budget:
/// the address is not kept twice).
pub struct PendingSlot {
    edge: Arc<Edge>,
    peer: SocketAddr,
}

impl PendingSlot {
    /// A pending slot for a connection from `peer`, or which budget is full.
    pub fn take(edge: &Arc<Edge>, peer: SocketAddr) -> Result<PendingSlot, Full> {
        edge.slots.take_pending(AddressKey::of(peer.ip()))?;
        Ok(PendingSlot {
            edge: edge.clone(),
            peer,
        })
    }

    pub fn edge(&self) -> &Arc<Edge> {
        &self.edge
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Moves the connection from the pending budget to `mqtt.max_connections` (logged in
    /// first, so it is never missing from [`Slots::open`]); back, still pending, when that is
    /// full.
    pub fn log_in(self: Box<Self>, edge: &Edge) -> Result<LoggedIn<'_>, Box<PendingSlot>> {
        if !edge.slots.take_logged_in() {
            return Err(self);
        }
        drop(self);
        Ok(LoggedIn(edge))
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.edge
            .slots
            .release_pending(AddressKey::of(self.peer.ip()));
    }
}

/// A logged-in connection's place in `mqtt.max_connections`, for as long as it lives.
pub struct LoggedIn<'e>(&'e Edge);

#[cfg(test)]
impl<'e> LoggedIn<'e> {
    /// A logged-in slot without a connection (the task-size test).
    pub fn take(edge: &'e Edge) -> Option<LoggedIn<'e>> {
        edge.slots.take_logged_in().then_some(LoggedIn(edge))
    }
}

impl Drop for LoggedIn<'_> {
    fn drop(&mut self) {
        self.0.slots.release_logged_in();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_counts_as_one_subscriber_has_it() {
        let key = |s: &str| AddressKey::of(s.parse().unwrap());
        assert_eq!(key("192.0.2.7"), AddressKey::V4([192, 0, 2, 7]));
        assert_eq!(key("::ffff:192.0.2.7"), key("192.0.2.7"), "IPv4-mapped");
        assert_eq!(
            key("2001:db8:1:2::1"),
            key("2001:db8:1:2:ffff::9"),
            "one /64"
        );
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
    }

    #[test]
    fn each_budget_holds_what_it_says_and_gives_back_what_ends() {
        let slots = Slots::new(5, 3, 2);
        let a = AddressKey::of("10.0.0.1".parse().unwrap());
        let b = AddressKey::of("10.0.0.2".parse().unwrap());
        for _ in 0..3 {
            slots.take_pending(a).unwrap();
        }
        assert_eq!(slots.take_pending(a), Err(Full::PerAddress));
        slots.take_pending(b).unwrap();
        slots.take_pending(b).unwrap();
        assert_eq!(slots.take_pending(b), Err(Full::Pending));
        assert_eq!(slots.open(), 5);
        // Two log in (from a): a has room again; the logged-in budget is full.
        for _ in 0..2 {
            assert!(slots.take_logged_in());
            slots.release_pending(a);
        }
        assert!(!slots.take_logged_in());
        assert_eq!(slots.open(), 5);
        slots.take_pending(a).unwrap();
        slots.take_pending(a).unwrap();
        assert_eq!(slots.take_pending(a), Err(Full::PerAddress));
        // Everything ends: nothing is left, not even an address's entry.
        for _ in 0..3 {
            slots.release_pending(a);
        }
        slots.release_pending(b);
        slots.release_pending(b);
        slots.release_logged_in();
        slots.release_logged_in();
        assert_eq!(slots.open(), 0);
        assert_eq!(slots.addresses(), 0);
    }
}
