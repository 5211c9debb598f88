//! LwM2M 1.1 device health from the resources of a Send (`POST /dp`) payload.
//!
//! Owns the mapping from well-known LwM2M resources to [`DeviceStatus`]. Only resources whose
//! meaning is fixed by the OMA object definitions are mapped, and only for instance 0 (both
//! objects are single-instance):
//! - `/3/0/9` Device / Battery Level (integer, %, 0..=100) -> `battery_pct`;
//! - `/3/0/3` Device / Firmware Version (string) -> `firmware`;
//! - `/3/0/11` and `/3/0/11/{i}` Device / Error Code (multiple-instance integer) -> `error_flags`:
//!   every code `c` in 1..=31 sets bit `1 << c` (1 low battery, 2 external power off, 3 GPS
//!   failure, 4 low signal, 5 out of memory, 6 SMS failure, 7 IP connectivity failure,
//!   8 peripheral malfunction; 16..=31 device specific); code 0 ("no error") sets no bit but
//!   still yields `Some(0)`, so "reported healthy" differs from "not reported". Codes above 31
//!   do not fit the u32 and are ignored. All codes in the pack are OR-ed;
//! - `/4/0/2` Connectivity Monitoring / Radio Signal Strength (integer, dBm) -> `rssi_dbm`.
//!   The object defines it as the bearer's signal strength (RSSI on GSM, RSRP on LTE); we
//!   report it as `rssi_dbm` without guessing the bearer.
//!
//! Not mapped (not certain enough, or no field for it): `/4/0/3` Link Quality, SNR/RSRP
//! resources of later object versions. Where a pack carries a resource at several times (a
//! timestamped Send), the newest time wins (the later record on a tie). The numeric records
//! still become readings as well; the status is extra.

use super::resolve::RawValue;
use crate::DeviceStatus;

#[derive(Debug, Default)]
pub(crate) struct StatusBuilder {
    status: DeviceStatus,
    battery_at: Option<f64>,
    firmware_at: Option<f64>,
    rssi_at: Option<f64>,
}

/// True where `at` is at least as new as the time the field was last set.
fn newer(seen: &mut Option<f64>, at: f64) -> bool {
    match *seen {
        Some(previous) if previous > at => false,
        _ => {
            *seen = Some(at);
            true
        }
    }
}

impl StatusBuilder {
    /// Looks at one resolved record: `path` is its full name, `time_s` its resolved time.
    pub(crate) fn observe(&mut self, path: &str, value: Option<&RawValue<'_>>, time_s: f64) {
        // `newer` records the time when it says yes, and the arm then always stores the value.
        match (path, value) {
            ("/3/0/9", Some(RawValue::Float(pct)))
                if (0.0..=100.0).contains(pct) && newer(&mut self.battery_at, time_s) =>
            {
                self.status.battery_pct = Some(pct.round() as u8);
            }
            ("/3/0/3", Some(RawValue::String(version))) if newer(&mut self.firmware_at, time_s) => {
                self.status.firmware = Some(version.to_string());
            }
            ("/4/0/2", Some(RawValue::Float(dbm)))
                if (-1000.0..=1000.0).contains(dbm) && newer(&mut self.rssi_at, time_s) =>
            {
                self.status.rssi_dbm = Some(dbm.round() as i32);
            }
            (path, Some(RawValue::Float(code)))
                if (path == "/3/0/11" || path.starts_with("/3/0/11/"))
                    && code.fract() == 0.0
                    && (0.0..=31.0).contains(code) =>
            {
                let bit = match *code as u32 {
                    0 => 0,
                    c => 1u32 << c,
                };
                self.status.error_flags = Some(self.status.error_flags.unwrap_or(0) | bit);
            }
            _ => {}
        }
    }

    /// The status, if any mapped resource was present.
    pub(crate) fn finish(self) -> Option<DeviceStatus> {
        (!self.status.is_empty()).then_some(self.status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    #[test]
    fn maps_known_resources_and_newest_wins() {
        let mut b = StatusBuilder::default();
        b.observe("/3/0/9", Some(&RawValue::Float(80.0)), 20.0);
        b.observe("/3/0/9", Some(&RawValue::Float(90.0)), 10.0); // older: ignored
        b.observe(
            "/3/0/3",
            Some(&RawValue::String(Cow::Borrowed("1.2.3"))),
            0.0,
        );
        b.observe("/4/0/2", Some(&RawValue::Float(-71.0)), 0.0);
        b.observe("/3/0/11/0", Some(&RawValue::Float(1.0)), 0.0);
        b.observe("/3/0/11/1", Some(&RawValue::Float(7.0)), 0.0);
        b.observe("/3/0/11/2", Some(&RawValue::Float(40.0)), 0.0); // does not fit
        b.observe("/3/0/9/0", Some(&RawValue::Float(5.0)), 0.0); // not the resource
        b.observe("/3/1/9", Some(&RawValue::Float(5.0)), 0.0);
        let s = b.finish().unwrap();
        assert_eq!(s.battery_pct, Some(80));
        assert_eq!(s.firmware.as_deref(), Some("1.2.3"));
        assert_eq!(s.rssi_dbm, Some(-71));
        assert_eq!(s.error_flags, Some((1 << 1) | (1 << 7)));
    }

    #[test]
    fn no_error_is_some_zero_and_nothing_is_none() {
        let mut b = StatusBuilder::default();
        b.observe("/3/0/11/0", Some(&RawValue::Float(0.0)), 0.0);
        assert_eq!(b.finish().unwrap().error_flags, Some(0));
        let mut b = StatusBuilder::default();
        b.observe("/3/0/9", Some(&RawValue::Float(101.0)), 0.0);
        assert_eq!(b.finish(), None);
    }
}
