//! The MQTT edge's two connection budgets, each exact in its gauge:
//!
//! - **pending**: connections that have not logged in yet (the TLS handshake and the
//!   CONNECT), at most `mqtt.max_pending_connections`, and at most
//!   `mqtt.max_pending_per_address` from one address. Taken at accept; one past the
//!   per-address cap is closed at once. With the budget full, the oldest pending connection
//!   of the address that holds the most is closed to make room for the newcomer
//!   (`reason="pending_evicted"`), if that address holds at least two more than the
//!   newcomer's; else the newcomer is closed at once. So silent sockets from a few addresses
//!   cannot keep a login from another out (the newcomer takes one of theirs), and their
//!   reopening only takes from each other until every address holds its share; a lone
//!   login in progress is not closed for anyone before half its deadline, and in a storm of logins from many
//!   addresses (each holding one or two) the logins in progress finish, where closing the
//!   oldest for every newcomer would close each before it could. But when no address holds
//!   two more, the oldest pending connection of all is closed for the newcomer if it has
//!   been pending for half of `mqtt.connect_timeout_ms` (a login takes 1 to 2 s even over
//!   NB-IoT): so a flood from many addresses (an IPv6 /48 holds 65 536 /64s) holding one
//!   each cannot keep every newcomer out; it can only keep each of its sockets for half the
//!   deadline. Pending connections end at `mqtt.connect_timeout_ms`.
//! - **logged in**: at most `mqtt.max_connections`. A connection moves here once it has
//!   authenticated (before it is registered, so a refused one never takes a session over);
//!   past the limit its CONNECT is refused (CONNACK 3 / 0x89).
//!
//! Only what has not logged in is capped per address: many meters share one public address
//! behind a carrier-grade NAT (NB-IoT, LTE-M), and a cap on their sessions would lock fleets
//! out. An IPv6 address counts by its /64 (what one subscriber gets), an IPv4-mapped one as
//! the IPv4 address.

use std::net::SocketAddr;
use std::sync::Arc;

use super::Edge;
pub use crate::edge::slots::{AddressKey, Full, NotLoggedIn, SlotMetrics, Slots, Taken};

/// The names of the MQTT edge's connection metrics.
pub const METRICS: SlotMetrics = SlotMetrics {
    pending_gauge: "meterflow_mqtt_pending_connections",
    identified_gauge: "meterflow_mqtt_connections",
    closed_counter: "meterflow_mqtt_closed_total",
};

/// A connection's pending place, from accept until it logs in ([`PendingSlot::log_in`]),
/// ends, or is evicted ([`PendingSlot::evicted`]). It carries the connection's peer (a
/// connection's task is held to a memory budget: the address is not kept twice).
pub struct PendingSlot {
    edge: Arc<Edge>,
    peer: SocketAddr,
    taken: Taken,
}

impl PendingSlot {
    /// A pending place for a connection from `peer`, or which budget is full (see
    /// [`Slots::take_pending`]).
    pub fn take(edge: &Arc<Edge>, peer: SocketAddr) -> Result<PendingSlot, Full> {
        let taken = edge.slots.take_pending(AddressKey::of(peer.ip()))?;
        Ok(PendingSlot {
            edge: edge.clone(),
            peer,
            taken,
        })
    }

    pub fn edge(&self) -> &Arc<Edge> {
        &self.edge
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Completes when the connection's place was taken for a newcomer (its place given):
    /// it is to close at once. Counted here, before the close, so that whoever sees the
    /// connection closed sees it counted; and not at all for one that logs in all the same
    /// ([`Slots::log_in`]).
    pub async fn evicted(&mut self) {
        let _ = (&mut self.taken.evicted).await;
        self.edge.slots.evicted.increment(1);
    }

    /// Moves the connection from the pending budget to `mqtt.max_connections`; or says why
    /// not, with the connection still pending (when that budget is full) or evicted.
    pub fn log_in(
        self: Box<Self>,
        edge: &Edge,
    ) -> Result<LoggedIn<'_>, (NotLoggedIn, Box<PendingSlot>)> {
        match edge
            .slots
            .log_in(AddressKey::of(self.peer.ip()), self.taken.n)
        {
            Ok(()) => {
                // Its place is given back already: the drop finds nothing to give.
                drop(self);
                Ok(LoggedIn(edge))
            }
            Err(why) => Err((why, self)),
        }
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.edge
            .slots
            .release_pending(AddressKey::of(self.peer.ip()), self.taken.n);
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
