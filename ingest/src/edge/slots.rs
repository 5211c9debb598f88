//! Connection budgets of an edge that serves connections before they prove who they are
//! (MQTT before its login, the DLMS listener before its first push), each exact in its gauge:
//!
//! - **pending**: connections that have not identified themselves yet, at most a budget in
//!   all and a cap from one address. Taken at accept; one past the per-address cap is closed
//!   at once. With the budget full, the oldest pending connection of the address that holds
//!   the most is closed to make room for the newcomer (`reason="pending_evicted"`), if that
//!   address holds at least two more than the newcomer's; else, the oldest pending connection
//!   of all if it has been pending for half its deadline; else the newcomer is closed at once.
//!   So silent sockets from a few addresses cannot keep another out, and a flood from many
//!   addresses (an IPv6 /48 holds 65 536 /64s) holding one each can only keep each socket for
//!   half the deadline. `ingest/src/edge/mqtt/slots.rs` says why in full.
//! - **identified**: at most a budget; a connection moves here once it has proved who it is.
//!
//! Only what is pending is capped per address: many meters share one public address behind a
//! carrier-grade NAT. An IPv6 address counts by its /64, an IPv4-mapped one as IPv4.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// The part of an address the per-address cap counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
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

/// Why a connection was closed at accept (the `reason` it is counted with).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The pending budget is full, no address holds two more than the newcomer's, and the
    /// oldest pending connection is younger than half the deadline.
    Pending,
    /// The newcomer's address holds its cap of pending connections.
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

/// The `reason` a pending connection closed to make room for a newcomer is counted with.
const EVICTED: &str = "pending_evicted";

/// A pending connection's entry: closing it (dropping it) tells the connection it was evicted.
type Evict = oneshot::Sender<()>;

/// The pending connections, by address and by age.
#[derive(Default)]
struct Table {
    /// The next connection's number: lower is older.
    next: u64,
    /// Pending connections by address, oldest first; an address without one has no entry.
    by_address: HashMap<AddressKey, BTreeMap<u64, Evict>>,
    /// Every address with pending connections, ranked by how many it holds, then by how old
    /// its oldest is: the last one is the one to take from.
    ranked: BTreeSet<(usize, Reverse<u64>, AddressKey)>,
    /// Every pending connection by number (oldest first): when it was taken, and its address.
    by_age: BTreeMap<u64, (Instant, AddressKey)>,
}

impl Table {
    fn count(&self, key: &AddressKey) -> usize {
        self.by_address.get(key).map_or(0, BTreeMap::len)
    }

    /// `key`'s place in `ranked`, if it holds any.
    fn rank(&self, key: AddressKey) -> Option<(usize, Reverse<u64>, AddressKey)> {
        let held = self.by_address.get(&key)?;
        let (&oldest, _) = held.first_key_value()?;
        Some((held.len(), Reverse(oldest), key))
    }

    /// Changes `key`'s connections with `change`, keeping `ranked` and the empty entries in
    /// step.
    fn update<T>(
        &mut self,
        key: AddressKey,
        change: impl FnOnce(&mut BTreeMap<u64, Evict>) -> T,
    ) -> T {
        if let Some(rank) = self.rank(key) {
            self.ranked.remove(&rank);
        }
        let held = self.by_address.entry(key).or_default();
        let out = change(held);
        if held.is_empty() {
            self.by_address.remove(&key);
        }
        if let Some(rank) = self.rank(key) {
            self.ranked.insert(rank);
        }
        out
    }

    fn insert(&mut self, key: AddressKey) -> (u64, oneshot::Receiver<()>) {
        let n = self.next;
        self.next += 1;
        let (evict, evicted) = oneshot::channel();
        self.update(key, |held| held.insert(n, evict));
        self.by_age.insert(n, (Instant::now(), key));
        (n, evicted)
    }

    /// Takes connection `n` of `key` out; its entry (`None` when it is not there: evicted).
    fn take(&mut self, key: AddressKey, n: u64) -> Option<Evict> {
        if !self.by_address.contains_key(&key) {
            return None;
        }
        let evict = self.update(key, |held| held.remove(&n))?;
        self.by_age.remove(&n);
        Some(evict)
    }

    /// Removes connection `n` of `key`; false when it is not there (evicted).
    fn remove(&mut self, key: AddressKey, n: u64) -> bool {
        self.take(key, n).is_some()
    }

    /// Takes out, to close it, the oldest pending connection of the address that holds the
    /// most (of those, the one whose oldest is oldest) if it holds at least two more than
    /// `own`; else the oldest pending connection of all if it has been pending for
    /// `stale_after`. Its entry (dropped, it tells the connection).
    fn evict_for(&mut self, own: usize, stale_after: Duration) -> Option<Evict> {
        if let Some(&(most, _, key)) = self.ranked.last() {
            if most >= own + 2 {
                let n = *self.by_address.get(&key)?.first_key_value()?.0;
                return self.take(key, n);
            }
        }
        let (&n, &(since, key)) = self.by_age.first_key_value()?;
        if since.elapsed() < stale_after {
            return None;
        }
        self.take(key, n)
    }
}

/// The metrics of one edge's budgets: the gauges of pending and identified connections,
/// and the counter evictions go to (`reason="pending_evicted"`).
#[derive(Debug, Clone, Copy)]
pub struct SlotMetrics {
    pub pending_gauge: &'static str,
    pub identified_gauge: &'static str,
    pub closed_counter: &'static str,
}

/// The counts of both budgets.
pub struct Slots {
    max_pending: usize,
    max_per_address: usize,
    max_logged_in: usize,
    /// Half of the deadline of a pending connection: one this old may be closed for a
    /// newcomer when no address holds more than its share.
    stale_after: Duration,
    /// The pending connections; their number is `pending`, changed under this lock.
    table: Mutex<Table>,
    pending: AtomicUsize,
    logged_in: AtomicUsize,
    pending_gauge: metrics::Gauge,
    logged_in_gauge: metrics::Gauge,
    pub(crate) evicted: metrics::Counter,
}

/// A pending connection's place in the table.
pub struct Taken {
    pub(crate) n: u64,
    /// Completes when the connection was evicted (its entry dropped).
    pub(crate) evicted: oneshot::Receiver<()>,
}

/// Why a pending connection did not move to the identified budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotLoggedIn {
    /// That many are logged in.
    Full,
    /// Its pending place was taken for a newcomer, and the identified budget has no room
    /// for it (counted as `pending_evicted`).
    Evicted,
}

impl Slots {
    /// `connect_timeout`: the deadline of a pending connection (MQTT's `connect_timeout_ms`,
    /// DLMS's `frame_timeout_s`), of which one that has lived half may be closed for a
    /// newcomer.
    pub fn new(
        max_pending: usize,
        max_per_address: usize,
        max_logged_in: usize,
        connect_timeout: Duration,
        names: SlotMetrics,
    ) -> Slots {
        let slots = Slots {
            max_pending,
            max_per_address,
            max_logged_in,
            stale_after: connect_timeout / 2,
            table: Mutex::new(Table::default()),
            pending: AtomicUsize::new(0),
            logged_in: AtomicUsize::new(0),
            pending_gauge: metrics::gauge!(names.pending_gauge),
            logged_in_gauge: metrics::gauge!(names.identified_gauge),
            evicted: metrics::counter!(names.closed_counter, "reason" => EVICTED),
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A pending place for a connection from `key`, or which budget is full. With the
    /// budget full, the oldest pending connection of the address that holds the most is
    /// closed to make room, if that address holds at least two more than `key` does: so
    /// sockets from a few addresses cannot keep a login from another out, while a
    /// connection is never closed for one from an address that holds about as many (in a
    /// storm of logins from many addresses, every login in progress would be closed for
    /// the next before it could finish). When no address holds two more, the oldest pending
    /// connection of all is closed if it has been pending for half of
    /// the deadline.
    pub fn take_pending(&self, key: AddressKey) -> Result<Taken, Full> {
        let mut table = self.lock();
        let own = table.count(&key);
        if own >= self.max_per_address {
            return Err(Full::PerAddress);
        }
        // Under the lock: the accept loops of every listener take places one at a time.
        let full = self.pending.load(Ordering::Acquire) >= self.max_pending;
        // Dropped, the entry wakes its connection, which counts the eviction and closes
        // ([`PendingSlot::evicted`]).
        if full && table.evict_for(own, self.stale_after).is_none() {
            return Err(Full::Pending);
        }
        let (n, receiver) = table.insert(key);
        if !full {
            self.pending.fetch_add(1, Ordering::AcqRel);
        }
        drop(table);
        if !full {
            self.pending_gauge.increment(1.0);
        }
        Ok(Taken {
            n,
            evicted: receiver,
        })
    }

    /// Gives back connection `n`'s pending place, unless it was evicted (given already).
    pub(crate) fn release_pending(&self, key: AddressKey, n: u64) {
        let mut table = self.lock();
        if table.remove(key, n) {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            drop(table);
            self.pending_gauge.decrement(1.0);
        }
    }

    /// Moves connection `n` from the pending budget to the identified one if it has
    /// room (logged in first: it is never missing from [`Slots::open`]); under the lock, so
    /// that it is not evicted half-way. One evicted while it authenticated (its pending place
    /// given already) has passed authentication all the same: it takes a logged-in place if
    /// there is one.
    pub(crate) fn log_in(&self, key: AddressKey, n: u64) -> Result<(), NotLoggedIn> {
        let mut table = self.lock();
        if !table
            .by_address
            .get(&key)
            .is_some_and(|held| held.contains_key(&n))
        {
            return if self.take_logged_in() {
                Ok(())
            } else {
                self.evicted.increment(1);
                Err(NotLoggedIn::Evicted)
            };
        }
        if !self.take_logged_in() {
            return Err(NotLoggedIn::Full);
        }
        table.remove(key, n);
        self.pending.fetch_sub(1, Ordering::AcqRel);
        drop(table);
        self.pending_gauge.decrement(1.0);
        Ok(())
    }

    /// A logged-in (identified) place, if that budget has room.
    pub(crate) fn take_logged_in(&self) -> bool {
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

    pub(crate) fn release_logged_in(&self) {
        self.logged_in.fetch_sub(1, Ordering::AcqRel);
        self.logged_in_gauge.decrement(1.0);
    }

    /// Addresses with pending connections now.
    #[cfg(test)]
    pub fn addresses(&self) -> usize {
        let table = self.lock();
        assert_eq!(table.by_address.len(), table.ranked.len());
        let held: usize = table.by_address.values().map(BTreeMap::len).sum();
        assert_eq!(held, table.by_age.len());
        table.by_address.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);
    const TEST: SlotMetrics = SlotMetrics {
        pending_gauge: "test_pending_connections",
        identified_gauge: "test_connections",
        closed_counter: "test_closed_total",
    };

    fn key(s: &str) -> AddressKey {
        AddressKey::of(s.parse().unwrap())
    }

    #[test]
    fn an_address_counts_as_one_subscriber_has_it() {
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

    /// Whether the connection was evicted (its entry dropped), without waiting.
    fn evicted(taken: &mut Taken) -> bool {
        !matches!(
            taken.evicted.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        )
    }

    #[test]
    fn each_budget_holds_what_it_says_and_gives_back_what_ends() {
        let slots = Slots::new(5, 3, 2, HOUR, TEST);
        let (a, b) = (key("10.0.0.1"), key("10.0.0.2"));
        let mut from_a: Vec<Taken> = (0..3).map(|_| slots.take_pending(a).unwrap()).collect();
        assert_eq!(slots.take_pending(a).err(), Some(Full::PerAddress));
        let mut from_b: Vec<Taken> = (0..2).map(|_| slots.take_pending(b).unwrap()).collect();
        // Full; b holds 2, a 3: not two more than b, so b's newcomer is refused.
        assert_eq!(slots.take_pending(b).err(), Some(Full::Pending));
        assert_eq!(slots.open(), 5);
        // Two of a's log in: a has room again; the logged-in budget is full.
        for t in from_a.drain(..2) {
            slots.log_in(a, t.n).unwrap();
        }
        assert_eq!(slots.log_in(a, from_a[0].n), Err(NotLoggedIn::Full));
        assert_eq!(slots.open(), 5);
        from_a.push(slots.take_pending(a).unwrap());
        from_a.push(slots.take_pending(a).unwrap());
        assert_eq!(slots.take_pending(a).err(), Some(Full::PerAddress));
        assert!(from_a.iter_mut().chain(&mut from_b).all(|t| !evicted(t)));
        // Everything ends: nothing is left, not even an address's entry.
        for t in from_a {
            slots.release_pending(a, t.n);
        }
        for t in from_b {
            slots.release_pending(b, t.n);
        }
        slots.release_logged_in();
        slots.release_logged_in();
        assert_eq!(slots.open(), 0);
        assert_eq!(slots.addresses(), 0);
    }

    #[test]
    fn a_full_budget_takes_from_the_address_that_holds_the_most() {
        let slots = Slots::new(8, 8, 8, HOUR, TEST);
        let addresses: Vec<AddressKey> = ["10.0.0.1", "10.0.0.2", "2001:db8::1", "10.0.0.4"]
            .into_iter()
            .chain(["10.0.0.5", "10.0.0.6", "10.0.0.7", "10.0.0.8", "10.0.0.9"])
            .map(key)
            .collect();
        let [a, b, c, d, e, f, g, h, i] = addresses[..] else {
            unreachable!()
        };
        // a holds 5, b 3: full.
        let mut from_a: Vec<Taken> = (0..5).map(|_| slots.take_pending(a).unwrap()).collect();
        let mut from_b: Vec<Taken> = (0..3).map(|_| slots.take_pending(b).unwrap()).collect();
        // c (none) takes a's oldest place, then the next (a 4 >= c 1 + 2); then a and b hold
        // 3, c 2: not two more, c is refused.
        let mut from_c = vec![slots.take_pending(c).unwrap()];
        assert!(evicted(&mut from_a[0]));
        assert!(from_a[1..].iter_mut().all(|t| !evicted(t)));
        from_c.push(slots.take_pending(c).unwrap());
        assert!(evicted(&mut from_a[1]));
        assert_eq!(slots.take_pending(c).err(), Some(Full::Pending));
        assert_eq!(slots.open(), 8);
        // d: a and b hold 3; a's oldest is older than b's: a's goes. Then b's (b holds the
        // most), then d holds 2 like everyone, and is refused.
        let mut from_d = vec![slots.take_pending(d).unwrap()];
        assert!(evicted(&mut from_a[2]));
        assert!(!evicted(&mut from_b[0]));
        from_d.push(slots.take_pending(d).unwrap());
        assert!(evicted(&mut from_b[0]));
        assert_eq!(slots.take_pending(d).err(), Some(Full::Pending));
        // Four new addresses take one each from those holding 2, oldest first: a, b, c, d.
        let mut others: Vec<Taken> = [e, f, g, h]
            .into_iter()
            .map(|k| slots.take_pending(k).unwrap())
            .collect();
        assert!(evicted(&mut from_a[3]));
        assert!(evicted(&mut from_b[1]));
        assert!(evicted(&mut from_c[0]));
        assert!(evicted(&mut from_d[0]));
        // Eight addresses hold one each: a lone connection is not taken (none has been
        // pending for half the connect timeout, an hour here), so a ninth
        // address is refused.
        assert_eq!(slots.take_pending(i).err(), Some(Full::Pending));
        let alone = [
            &mut from_a[4],
            &mut from_b[2],
            &mut from_c[1],
            &mut from_d[1],
        ];
        assert!(alone
            .into_iter()
            .chain(others.iter_mut())
            .all(|t| !evicted(t)));
        assert_eq!(slots.open(), 8);
        assert_eq!(slots.addresses(), 8);
        // An evicted connection's end gives nothing back twice.
        slots.release_pending(a, from_a[0].n);
        assert_eq!(slots.open(), 8);
        // One that is still there logs in; its address has no entry left.
        slots.log_in(a, from_a[4].n).unwrap();
        assert_eq!((slots.open(), slots.addresses()), (8, 7));
    }

    /// Issue 20 review round 2, finding 7: a connection evicted while it authenticated was
    /// refused as if `mqtt.max_connections` were full. It has passed authentication: it
    /// takes a logged-in place if there is one, and is refused only when there is none.
    #[test]
    fn a_login_evicted_while_it_authenticated_takes_a_free_logged_in_place() {
        let slots = Slots::new(3, 3, 1, HOUR, TEST);
        let (a, b, c) = (key("10.0.0.1"), key("10.0.0.2"), key("10.0.0.3"));
        let mut from_a: Vec<Taken> = (0..3).map(|_| slots.take_pending(a).unwrap()).collect();
        // b's newcomer takes a's oldest place (a holds two more than b).
        let _b = slots.take_pending(b).unwrap();
        assert!(evicted(&mut from_a[0]) && !evicted(&mut from_a[1]));
        assert_eq!(slots.open(), 3);
        // It had authenticated meanwhile: logged in, the pending budget untouched.
        assert_eq!(slots.log_in(a, from_a[0].n), Ok(()));
        assert_eq!(slots.open(), 4);
        // Now max_connections (1) is full: the next evicted one is refused for it.
        let _c = slots.take_pending(c).unwrap();
        assert!(evicted(&mut from_a[1]));
        assert_eq!(slots.log_in(a, from_a[1].n), Err(NotLoggedIn::Evicted));
        slots.release_pending(a, from_a[1].n);
        assert_eq!(slots.open(), 4);
    }

    /// Issue 20 review round 2, finding 5: with the budget full of addresses holding one
    /// each (a flood from many IPv6 /64s), every newcomer was refused. Now the oldest is
    /// closed for a newcomer once it has been pending for half of the connect timeout.
    #[test]
    fn a_budget_full_of_lone_connections_gives_the_oldest_stale_one() {
        let slots = Slots::new(4, 4, 4, Duration::from_millis(400), TEST);
        let flood: Vec<AddressKey> = (1..=4)
            .map(|i| key(&format!("2001:db8:0:{i}::1")))
            .collect();
        let mut held: Vec<Taken> = flood
            .iter()
            .map(|&k| {
                let t = slots.take_pending(k).unwrap();
                std::thread::sleep(Duration::from_millis(5));
                t
            })
            .collect();
        let newcomer = key("2001:db8:0:99::1");
        // Young: nobody is closed.
        assert_eq!(slots.take_pending(newcomer).err(), Some(Full::Pending));
        assert!(held.iter_mut().all(|t| !evicted(t)));
        // Half the deadline (200 ms) later: the oldest is.
        std::thread::sleep(Duration::from_millis(250));
        let _n = slots.take_pending(newcomer).unwrap();
        assert!(evicted(&mut held[0]));
        assert!(held[1..].iter_mut().all(|t| !evicted(t)));
        assert_eq!(slots.open(), 4);
        assert_eq!(slots.addresses(), 4);
    }
}
