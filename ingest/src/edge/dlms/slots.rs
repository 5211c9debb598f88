//! The TCP connection budgets of the DLMS listener, on the edge's shared ones
//! ([`crate::edge::slots`]), as the MQTT edge's:
//!
//! - **pending**, from accept until the connection's first push is taken (it opened with its
//!   meter's keys: the listener's proof of who is there): `dlms.max_pending_connections` in
//!   all, `dlms.max_pending_per_address` from one address (an IPv6 /64 as one); with the
//!   budget full, the oldest pending connection of the address holding the most (or one
//!   pending for half of `dlms.frame_timeout_s`) is reset for the newcomer
//!   (`meterflow_dlms_refused_total{reason="pending_evicted"}`). So silent connections cannot
//!   hold the places meters need; gauge `meterflow_dlms_pending_connections`.
//! - **identified**, then: `dlms.max_connections` (not capped per address: meters behind a
//!   carrier's NAT share one); gauge `meterflow_dlms_connections`.

use std::net::IpAddr;
use std::sync::Arc;

use super::frame::Refused;
pub use crate::edge::slots::Slots;
use crate::edge::slots::{AddressKey, Full, NotLoggedIn, SlotMetrics, Taken};

/// The names of the DLMS listener's connection metrics.
pub const METRICS: SlotMetrics = SlotMetrics {
    pending_gauge: "meterflow_dlms_pending_connections",
    identified_gauge: "meterflow_dlms_connections",
    closed_counter: "meterflow_dlms_refused_total",
};

/// One connection's place: pending until [`Place::identify`], given back on drop.
pub struct Place {
    slots: Arc<Slots>,
    key: AddressKey,
    state: State,
}

enum State {
    Pending(Taken),
    Identified,
    /// Evicted, and not identified: nothing to give back.
    Gone,
}

impl Place {
    /// A pending place for a connection from `ip`, or why there is none.
    pub fn take(slots: &Arc<Slots>, ip: IpAddr) -> Result<Place, Refused> {
        let key = AddressKey::of(ip);
        match slots.take_pending(key) {
            Ok(taken) => Ok(Place {
                slots: slots.clone(),
                key,
                state: State::Pending(taken),
            }),
            Err(Full::Pending) => Err(Refused::MaxPending),
            Err(Full::PerAddress) => Err(Refused::PendingPerAddress),
        }
    }

    /// Completes when the pending place was taken for a newcomer (counted); never once the
    /// connection is identified.
    pub async fn evicted(&mut self) {
        match &mut self.state {
            State::Pending(taken) => {
                let _ = (&mut taken.evicted).await;
                self.slots.evicted.increment(1);
            }
            _ => std::future::pending().await,
        }
    }

    /// Moves the connection to `dlms.max_connections` (once, after its first push is taken);
    /// or why not: that budget full (`max_connections`), or evicted meanwhile with no room.
    pub fn identify(&mut self) -> Result<(), Refused> {
        let State::Pending(taken) = &self.state else {
            return Ok(());
        };
        match self.slots.log_in(self.key, taken.n) {
            Ok(()) => {
                self.state = State::Identified;
                Ok(())
            }
            Err(NotLoggedIn::Full) => Err(Refused::MaxConnections),
            Err(NotLoggedIn::Evicted) => {
                self.state = State::Gone;
                Err(Refused::PendingEvicted)
            }
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        match &self.state {
            State::Pending(taken) => self.slots.release_pending(self.key, taken.n),
            State::Identified => self.slots.release_logged_in(),
            State::Gone => {}
        }
    }
}
