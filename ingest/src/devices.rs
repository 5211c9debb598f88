//! Device state: what meterflow last heard from each meter, kept in memory from every
//! accepted message and status report, saved to `{data_dir}/state/devices.json` on shutdown
//! and loaded on start-up.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use meterflow_decoders::DeviceStatus;
use serde::{Deserialize, Serialize};

use crate::IngestError;

/// The latest value of one channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastValue {
    pub ts_ms: i64,
    pub value: f64,
    pub unit: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceState {
    pub meter_id: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub last_source: String,
    pub last_format: String,
    /// Messages accepted for this meter (decoded or not).
    pub messages: u64,
    /// Messages that did not decode, wholly or in part.
    pub decode_errors: u64,
    pub rows: u64,
    pub last_seq: Option<u64>,
    /// The newest reading per channel (by the meter's time).
    pub last_values: BTreeMap<String, LastValue>,
    /// Every field the meter has reported, each its latest value.
    pub status: DeviceStatus,
    pub status_at_ms: Option<i64>,
}

impl DeviceState {
    fn merge_status(&mut self, status: &DeviceStatus, at_ms: i64) {
        let s = &mut self.status;
        s.battery_pct = status.battery_pct.or(s.battery_pct);
        s.rssi_dbm = status.rssi_dbm.or(s.rssi_dbm);
        s.rsrp_dbm = status.rsrp_dbm.or(s.rsrp_dbm);
        s.snr_db = status.snr_db.or(s.snr_db);
        if status.firmware.is_some() {
            s.firmware = status.firmware.clone();
        }
        s.error_flags = status.error_flags.or(s.error_flags);
        self.status_at_ms = Some(at_ms);
    }
}

/// What the pipeline reports about one message.
pub struct Observation<'a> {
    pub meter_id: &'a str,
    pub received_at_ms: i64,
    pub source: &'a str,
    pub format: &'a str,
    pub decode_error: bool,
    pub seq: Option<u64>,
    pub rows: u64,
    pub status: Option<&'a DeviceStatus>,
    /// (channel, ts_ms, value, unit) of the readings of the message.
    pub readings: &'a mut dyn Iterator<Item = (&'a str, i64, f64, &'a str)>,
}

/// Meters tracked at most: past it, messages from new meter ids update no state (counted in
/// `meterflow_devices_untracked_total`), so a client inventing ids cannot exhaust memory.
pub const MAX_DEVICES: usize = 2_000_000;
/// Channels kept per meter at most (a DSMR 5 meter has about 30).
pub const MAX_CHANNELS: usize = 256;

/// Shared between the pipeline (writer) and the HTTP API (readers).
#[derive(Clone, Default)]
pub struct DeviceRegistry {
    inner: Arc<RwLock<HashMap<String, DeviceState>>>,
}

impl DeviceRegistry {
    pub fn observe(&self, o: Observation<'_>) {
        let mut map = match self.inner.write() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        let d = map
            .entry(o.meter_id.to_string())
            .or_insert_with(|| DeviceState {
                meter_id: o.meter_id.to_string(),
                first_seen_ms: o.received_at_ms,
                ..Default::default()
            });
        d.last_seen_ms = d.last_seen_ms.max(o.received_at_ms);
        d.last_source = o.source.to_string();
        d.last_format = o.format.to_string();
        d.messages += 1;
        d.decode_errors += u64::from(o.decode_error);
        d.rows += o.rows;
        if o.seq.is_some() {
            d.last_seq = o.seq;
        }
        if let Some(status) = o.status {
            d.merge_status(status, o.received_at_ms);
        }
        for (channel, ts_ms, value, unit) in o.readings {
            let known = d.last_values.contains_key(channel);
            if !known && d.last_values.len() >= MAX_CHANNELS {
                continue;
            }
            let newest = d
                .last_values
                .get(channel)
                .is_none_or(|last| last.ts_ms <= ts_ms);
            if newest {
                d.last_values.insert(
                    channel.to_string(),
                    LastValue {
                        ts_ms,
                        value,
                        unit: unit.to_string(),
                    },
                );
            }
        }
    }

    pub fn get(&self, meter_id: &str) -> Option<DeviceState> {
        let map = self.inner.read().unwrap_or_else(|p| p.into_inner());
        map.get(meter_id).cloned()
    }

    /// Every device, by meter id.
    pub fn all(&self) -> Vec<DeviceState> {
        let map = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<DeviceState> = map.values().cloned().collect();
        all.sort_by(|a, b| a.meter_id.cmp(&b.meter_id));
        all
    }

    pub fn len(&self) -> usize {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn state_path(data_dir: &Path) -> PathBuf {
        data_dir.join("state").join("devices.json")
    }

    /// Loads the state saved by [`DeviceRegistry::save`]; an absent file is an empty registry.
    pub fn load(data_dir: &Path) -> Result<DeviceRegistry, IngestError> {
        let path = Self::state_path(data_dir);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(IngestError::Io {
                    action: "reading device state",
                    path,
                    source,
                })
            }
        };
        let devices: Vec<DeviceState> =
            serde_json::from_slice(&text).map_err(|e| IngestError::Io {
                action: "parsing device state",
                path: path.clone(),
                source: e.into(),
            })?;
        let map = devices
            .into_iter()
            .map(|d| (d.meter_id.clone(), d))
            .collect();
        Ok(DeviceRegistry {
            inner: Arc::new(RwLock::new(map)),
        })
    }

    /// Writes every device to the state file (write, fsync, rename).
    pub fn save(&self, data_dir: &Path) -> Result<(), IngestError> {
        let path = Self::state_path(data_dir);
        let io = |action, source| IngestError::Io {
            action,
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io("creating the folder of", e))?;
        }
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_vec(&self.all()).map_err(|e| io("encoding", e.into()))?;
        std::fs::write(&tmp, json).map_err(|e| io("writing", e))?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| io("syncing", e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io("renaming", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observe(
        r: &DeviceRegistry,
        at: i64,
        readings: &[(&'static str, i64, f64, &'static str)],
        status: Option<&DeviceStatus>,
    ) {
        let mut it = readings.iter().copied();
        r.observe(Observation {
            meter_id: "m1",
            received_at_ms: at,
            source: "mqtt",
            format: "json",
            decode_error: false,
            seq: Some(at as u64),
            rows: readings.len() as u64,
            status,
            readings: &mut it,
        });
    }

    #[test]
    fn keeps_the_newest_value_per_channel_and_merges_status() {
        let r = DeviceRegistry::default();
        let s1 = DeviceStatus {
            battery_pct: Some(90),
            firmware: Some("1.0".into()),
            ..Default::default()
        };
        observe(
            &r,
            10,
            &[("a", 100, 1.0, "kWh"), ("b", 100, 5.0, "V")],
            Some(&s1),
        );
        let s2 = DeviceStatus {
            rssi_dbm: Some(-70),
            ..Default::default()
        };
        observe(
            &r,
            20,
            &[("a", 50, 0.5, "kWh"), ("b", 200, 6.0, "V")],
            Some(&s2),
        );
        let d = r.get("m1").unwrap();
        assert_eq!(
            (d.first_seen_ms, d.last_seen_ms, d.messages, d.rows),
            (10, 20, 2, 4)
        );
        assert_eq!(
            d.last_values["a"].value, 1.0,
            "an older reading does not replace a newer one"
        );
        assert_eq!(d.last_values["b"].value, 6.0);
        assert_eq!(d.status.battery_pct, Some(90));
        assert_eq!(d.status.rssi_dbm, Some(-70));
        assert_eq!(d.status.firmware.as_deref(), Some("1.0"));
        assert_eq!(d.last_seq, Some(20));
    }

    #[test]
    fn state_survives_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let r = DeviceRegistry::default();
        observe(&r, 10, &[("a", 100, 1.0, "kWh")], None);
        r.save(dir.path()).unwrap();
        let back = DeviceRegistry::load(dir.path()).unwrap();
        assert_eq!(back.all(), r.all());
        assert!(DeviceRegistry::load(&dir.path().join("none"))
            .unwrap()
            .is_empty());
    }
}
