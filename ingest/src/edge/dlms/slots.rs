//! The TCP connection budget: `dlms.max_connections` in all, `dlms.max_connections_per_address`
//! from one address (an IPv6 /64 counts as one, an IPv4-mapped address as the IPv4 one, as
//! for MQTT), with an exact gauge (`meterflow_dlms_connections`). A place is taken at accept,
//! before anything is read, and given back when the connection's task ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use super::frame::Refused;
use crate::edge::mqtt::AddressKey;

/// The open connections, in all and per address.
pub struct Slots {
    max: usize,
    per_address: usize,
    table: Mutex<Table>,
    gauge: metrics::Gauge,
}

#[derive(Default)]
struct Table {
    open: usize,
    by_address: HashMap<AddressKey, usize>,
}

impl Slots {
    pub fn new(max: usize, per_address: usize) -> Arc<Slots> {
        let gauge = metrics::gauge!("meterflow_dlms_connections");
        gauge.set(0.0);
        Arc::new(Slots {
            max,
            per_address,
            table: Mutex::new(Table::default()),
            gauge,
        })
    }

    /// A place for a connection from `ip`, or why there is none.
    pub fn take(self: &Arc<Slots>, ip: IpAddr) -> Result<Slot, Refused> {
        let key = AddressKey::of(ip);
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if table.open >= self.max {
            return Err(Refused::MaxConnections);
        }
        let held = table.by_address.entry(key).or_default();
        if *held >= self.per_address {
            return Err(Refused::MaxConnectionsPerAddress);
        }
        *held += 1;
        table.open += 1;
        self.gauge.set(table.open as f64);
        Ok(Slot {
            slots: self.clone(),
            key,
        })
    }

    /// Open connections now.
    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .open
    }

    fn release(&self, key: AddressKey) {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = table.by_address.get_mut(&key) {
            *held -= 1;
            if *held == 0 {
                table.by_address.remove(&key);
            }
        }
        table.open = table.open.saturating_sub(1);
        self.gauge.set(table.open as f64);
    }
}

/// One connection's place, given back on drop.
pub struct Slot {
    slots: Arc<Slots>,
    key: AddressKey,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.release(self.key);
    }
}
