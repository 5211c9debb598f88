//! Device state: what meterflow last heard from each meter, kept in memory from every
//! accepted message, status report and dead letter; saved to `{data_dir}/state/devices.json`
//! every `devices.save_interval_s` and on shutdown, loaded on start-up, and (when ClickHouse
//! is on) topped up from ClickHouse for meters the file does not know or knows older.
//!
//! Bounded: at most `devices.max_devices` meters (new ids past it are counted in
//! `meterflow_devices_untracked_total` and not tracked), [`MAX_CHANNELS`] channels per meter,
//! `devices.recent_points` recent readings for each of the first [`RECENT_CHANNELS`]
//! channels of a meter (for the page's charts; not saved) and [`RECENT_DEAD_LETTERS`] recent
//! dead letters per meter. Channel names, units and firmware are bounded by the decoders.
//!
//! The lock is held briefly: saves and long list scans go a chunk at a time.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use meterflow_decoders::DeviceStatus;
use serde::{Deserialize, Serialize};

use crate::error::IngestError;

/// The device state's settings (`[devices]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevicesConfig {
    /// Meters tracked at most; messages from new ids past it update no state.
    pub max_devices: usize,
    /// Recent readings kept per channel for the page's charts (0: none), for the first
    /// RECENT_CHANNELS (8) channels of a meter, 16 bytes each.
    pub recent_points: usize,
    /// The state file is written this often (and on shutdown), seconds.
    pub save_interval_s: u64,
    /// A meter not heard for this long is amber on the page and in `health`, seconds.
    pub amber_after_s: u64,
    /// ...and red after this long.
    pub red_after_s: u64,
    /// A meter the registry gives an interval is amber after this many intervals without a
    /// message (instead of `amber_after_s`)...
    pub silent_amber_intervals: u32,
    /// ...and red after this many.
    pub silent_red_intervals: u32,
    /// A battery below this % is amber...
    pub battery_amber_pct: u8,
    /// ...and below this red.
    pub battery_red_pct: u8,
    /// An RSSI below this (dBm) is amber...
    pub rssi_amber_dbm: i32,
    /// ...and below this red.
    pub rssi_red_dbm: i32,
}

impl DevicesConfig {
    /// Checks what the types alone do not; the error names the key.
    pub fn validate(&self) -> Result<(), IngestError> {
        crate::error::positive("devices.max_devices", self.max_devices as u64)?;
        crate::error::positive("devices.save_interval_s", self.save_interval_s)?;
        if self.red_after_s <= self.amber_after_s {
            return Err(IngestError::config(
                "devices.red_after_s",
                "must be greater than devices.amber_after_s",
            ));
        }
        crate::error::positive(
            "devices.silent_amber_intervals",
            u64::from(self.silent_amber_intervals),
        )?;
        if self.silent_red_intervals <= self.silent_amber_intervals {
            return Err(IngestError::config(
                "devices.silent_red_intervals",
                "must be greater than devices.silent_amber_intervals",
            ));
        }
        if self.battery_red_pct > self.battery_amber_pct || self.battery_amber_pct > 100 {
            return Err(IngestError::config(
                "devices.battery_red_pct",
                "must be at most devices.battery_amber_pct, which is at most 100",
            ));
        }
        if self.rssi_red_dbm > self.rssi_amber_dbm {
            return Err(IngestError::config(
                "devices.rssi_red_dbm",
                "must be at most devices.rssi_amber_dbm",
            ));
        }
        Ok(())
    }
}

impl Default for DevicesConfig {
    fn default() -> Self {
        DevicesConfig {
            max_devices: 2_000_000,
            recent_points: 24,
            save_interval_s: 30,
            amber_after_s: 2 * 3600,
            red_after_s: 25 * 3600,
            silent_amber_intervals: 3,
            silent_red_intervals: 12,
            battery_amber_pct: 20,
            battery_red_pct: 10,
            rssi_amber_dbm: -100,
            rssi_red_dbm: -110,
        }
    }
}

/// Channels kept per meter at most (a DSMR 5 meter has about 30).
pub const MAX_CHANNELS: usize = 64;
/// Channels of a meter that keep recent readings for the charts.
pub const RECENT_CHANNELS: usize = 8;
/// Devices cloned per lock hold when saving or scanning.
const CHUNK: usize = 10_000;
/// Devices a list request looks at, at most (then it answers with a cursor to go on from).
const SCAN_BUDGET: usize = 100_000;
/// Dead letters remembered per meter (the newest).
pub const RECENT_DEAD_LETTERS: usize = 5;

/// The latest value of one channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastValue {
    pub ts_ms: i64,
    pub value: f64,
    pub unit: String,
}

/// A payload of this meter that did not decode, as the page shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterNote {
    pub received_at_ms: i64,
    pub kind: String,
    pub reason: String,
    pub bytes: usize,
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
    /// The newest dead letters of this meter, newest last.
    #[serde(default)]
    pub recent_dead_letters: VecDeque<DeadLetterNote>,
    /// Every dead letter of this meter, counted by kind (`malformed`, and the DLMS refusals
    /// `replay`, `auth_failed`, `unauthorized` ...: a fixed set of names).
    #[serde(default)]
    pub dead_letters_by_kind: BTreeMap<String, u64>,
    /// Per channel, the newest readings `(ts_ms, value)` in arrival order (in memory only).
    #[serde(skip)]
    pub recent: BTreeMap<String, VecDeque<(i64, f64)>>,
    /// The WAL position of the newest message counted here: a message replayed from the WAL
    /// after a restart (at or below it) is not counted twice.
    #[serde(default)]
    pub last_lsn: u64,
    /// The same for dead letters.
    #[serde(default)]
    pub last_dead_letter_lsn: u64,
    /// The format of the report its `status.error_flags` came in (what their bits mean:
    /// `json` for the status topic); empty when not known.
    #[serde(default)]
    pub flags_format: String,
    /// When this node last received a message of it in this run (not from a snapshot or the
    /// saved state): what `meterflow_meters_heard` counts.
    #[serde(skip)]
    pub heard_here_ms: i64,
}

impl DeviceState {
    /// The format whose table words its error flags.
    pub fn flags_format(&self) -> meterflow_proto::Format {
        let name = if self.flags_format.is_empty() {
            &self.last_format
        } else {
            &self.flags_format
        };
        name.parse().unwrap_or(meterflow_proto::Format::Json)
    }
}

impl DeviceState {
    /// Takes a newer status report: its fields win, ours fill its gaps.
    fn merge_status(&mut self, status: &DeviceStatus, at_ms: i64) {
        self.status = overlay(status, &self.status);
        self.status_at_ms = Some(self.status_at_ms.map_or(at_ms, |t| t.max(at_ms)));
    }

    /// What ClickHouse remembers of a meter, as a state of its own (a meter this node has not
    /// heard: the API's answer behind a load balancer).
    pub fn from_snapshot(snapshot: DeviceSnapshot) -> DeviceState {
        let mut state = DeviceState {
            meter_id: snapshot.meter_id.clone(),
            first_seen_ms: snapshot.first_seen_ms,
            ..Default::default()
        };
        state.take_snapshot(snapshot);
        state
    }

    /// Takes what ClickHouse remembers where it is newer than ours; whether anything changed.
    fn take_snapshot(&mut self, snap: DeviceSnapshot) -> bool {
        let mut changed = false;
        if snap.first_seen_ms < self.first_seen_ms {
            self.first_seen_ms = snap.first_seen_ms;
            changed = true;
        }
        if snap.last_seen_ms > self.last_seen_ms {
            self.last_seen_ms = snap.last_seen_ms;
            self.last_source = snap.last_source.clone();
            self.last_format = snap.last_format.clone();
            changed = true;
        }
        if snap.rows > self.rows {
            self.rows = snap.rows;
        }
        for (channel, v) in snap.last_values {
            let newer = self
                .last_values
                .get(&channel)
                .is_none_or(|l| l.ts_ms < v.ts_ms);
            let room =
                self.last_values.len() < MAX_CHANNELS || self.last_values.contains_key(&channel);
            if newer && room {
                self.last_values.insert(
                    channel,
                    LastValue {
                        ts_ms: v.ts_ms,
                        value: v.value,
                        unit: v.unit,
                    },
                );
                changed = true;
            }
        }
        if let Some(at) = snap.status_at_ms {
            let status = DeviceStatus {
                battery_pct: snap.battery_pct,
                rssi_dbm: snap.rssi_dbm,
                rsrp_dbm: snap.rsrp_dbm,
                snr_db: snap.snr_db,
                firmware: snap.firmware.clone(),
                error_flags: snap.error_flags,
                // Not kept in ClickHouse's device_status: the state's own stays.
                serial: None,
            };
            if self.status_at_ms.is_none_or(|local| at > local) {
                // ClickHouse's report is the newer: its fields win, ours fill gaps.
                self.merge_status(&status, at);
            } else {
                // Ours is newer: take only the fields we never had.
                self.fill_status(&status);
            }
            changed = true;
        }
        changed
    }

    /// Whether a message at `lsn` is new to this state (and takes it); 0 is always new.
    fn take_lsn(&mut self, lsn: u64) -> bool {
        if lsn == 0 {
            return true;
        }
        if lsn <= self.last_lsn {
            return false;
        }
        self.last_lsn = lsn;
        true
    }

    /// Takes from an older status report only the fields this state never had.
    fn fill_status(&mut self, status: &DeviceStatus) {
        self.status = overlay(&self.status, status);
    }
}

/// Each field from `newer` where it has one, else from `older`.
fn overlay(newer: &DeviceStatus, older: &DeviceStatus) -> DeviceStatus {
    DeviceStatus {
        battery_pct: newer.battery_pct.or(older.battery_pct),
        rssi_dbm: newer.rssi_dbm.or(older.rssi_dbm),
        rsrp_dbm: newer.rsrp_dbm.or(older.rsrp_dbm),
        snr_db: newer.snr_db.or(older.snr_db),
        firmware: newer.firmware.clone().or_else(|| older.firmware.clone()),
        error_flags: newer.error_flags.or(older.error_flags),
        serial: newer.serial.clone().or_else(|| older.serial.clone()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Green,
    Amber,
    Red,
}

/// What the pipeline reports about one message.
pub struct Observation<'a> {
    pub meter_id: &'a str,
    /// The message's WAL position (0: not in the WAL).
    pub lsn: u64,
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

/// A meter as ClickHouse remembers it (see `storage::analytics::device_snapshots`).
pub use meterflow_storage::analytics::DeviceSnapshot;

/// How far back ClickHouse is asked about a meter (the state rebuilt at start-up, the API's
/// answer for a meter another node took), by when meterflow received it.
pub const CLICKHOUSE_LOOKBACK_DAYS: u32 = 35;

/// Shared between the pipeline (writer) and the HTTP API (readers). Ordered by meter id, so
/// pages of the device list are ranges.
#[derive(Clone, Default)]
pub struct DeviceRegistry {
    inner: Arc<RwLock<BTreeMap<String, DeviceState>>>,
    config: Arc<DevicesConfig>,
    save_lock: Arc<std::sync::Mutex<()>>,
}

/// One page of the device list.
#[derive(Debug, Serialize)]
pub struct Page {
    pub devices: Vec<DeviceState>,
    /// Pass as `cursor` for the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

impl DeviceRegistry {
    pub fn new(config: DevicesConfig) -> Self {
        DeviceRegistry {
            inner: Arc::default(),
            config: Arc::new(config),
            save_lock: Arc::default(),
        }
    }

    pub fn config(&self) -> &DevicesConfig {
        &self.config
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, DeviceState>> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, DeviceState>> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The state of `meter_id`, created if there is room.
    fn entry<'m>(
        &self,
        map: &'m mut BTreeMap<String, DeviceState>,
        meter_id: &str,
        at_ms: i64,
    ) -> Option<&'m mut DeviceState> {
        if !map.contains_key(meter_id) {
            if map.len() >= self.config.max_devices {
                metrics::counter!("meterflow_devices_untracked_total").increment(1);
                return None;
            }
            map.insert(
                meter_id.to_string(),
                DeviceState {
                    meter_id: meter_id.to_string(),
                    first_seen_ms: at_ms,
                    ..Default::default()
                },
            );
        }
        map.get_mut(meter_id)
    }

    pub fn observe(&self, o: Observation<'_>) {
        let recent_points = self.config.recent_points;
        let mut map = self.write();
        let Some(d) = self.entry(&mut map, o.meter_id, o.received_at_ms) else {
            return;
        };
        if !d.take_lsn(o.lsn) {
            return; // counted before the restart
        }
        d.last_seen_ms = d.last_seen_ms.max(o.received_at_ms);
        d.heard_here_ms = d.heard_here_ms.max(o.received_at_ms);
        // Assigned only when they change: this runs for every message.
        if d.last_source != o.source {
            d.last_source = o.source.to_string();
        }
        if d.last_format != o.format {
            d.last_format = o.format.to_string();
        }
        d.messages += 1;
        d.decode_errors += u64::from(o.decode_error);
        d.rows += o.rows;
        if o.seq.is_some() {
            d.last_seq = o.seq;
        }
        if let Some(status) = o.status {
            d.merge_status(status, o.received_at_ms);
            if status.error_flags.is_some() {
                let format = if o.format == "status" {
                    "json"
                } else {
                    o.format
                };
                if d.flags_format != format {
                    d.flags_format = format.to_string();
                }
            }
        }
        for (channel, ts_ms, value, unit) in o.readings {
            // Known channels are updated in place (one lookup, no allocation).
            if let Some(last) = d.last_values.get_mut(channel) {
                if last.ts_ms <= ts_ms {
                    last.ts_ms = ts_ms;
                    last.value = value;
                    if last.unit != unit {
                        last.unit = unit.to_string();
                    }
                }
            } else if d.last_values.len() < MAX_CHANNELS {
                d.last_values.insert(
                    channel.to_string(),
                    LastValue {
                        ts_ms,
                        value,
                        unit: unit.to_string(),
                    },
                );
            } else {
                continue;
            }
            if recent_points > 0 {
                if !d.recent.contains_key(channel) && d.recent.len() < RECENT_CHANNELS {
                    d.recent.insert(channel.to_string(), VecDeque::new());
                }
                if let Some(points) = d.recent.get_mut(channel) {
                    if points.len() >= recent_points {
                        points.pop_front();
                    }
                    points.push_back((ts_ms, value));
                }
            }
        }
    }

    /// Remembers a dead letter of a meter (the newest few). `lsn` as in [`Observation`].
    pub fn note_dead_letter(&self, meter_id: &str, lsn: u64, note: DeadLetterNote) {
        let mut map = self.write();
        let Some(d) = self.entry(&mut map, meter_id, note.received_at_ms) else {
            return;
        };
        if lsn > 0 {
            if lsn <= d.last_dead_letter_lsn {
                return; // replayed
            }
            d.last_dead_letter_lsn = lsn;
        }
        *d.dead_letters_by_kind.entry(note.kind.clone()).or_default() += 1;
        if d.recent_dead_letters.len() >= RECENT_DEAD_LETTERS {
            d.recent_dead_letters.pop_front();
        }
        d.recent_dead_letters.push_back(note);
    }

    /// Takes what ClickHouse knows that this registry does not, field by field: first seen
    /// (the earlier), last seen (the later), each channel's newest value, and each status
    /// field from the newer report. Runs beside live traffic, so a meter already heard again
    /// keeps its newer state. Returns how many meters it added or brought forward.
    pub fn merge_snapshots(&self, snapshots: Vec<DeviceSnapshot>) -> usize {
        let mut taken = 0;
        // A chunk per lock hold: the pipeline must not wait for a whole fleet.
        let mut snapshots = snapshots.into_iter().peekable();
        while snapshots.peek().is_some() {
            let mut map = self.write();
            for snap in snapshots.by_ref().take(CHUNK) {
                let Some(d) = self.entry(&mut map, &snap.meter_id, snap.first_seen_ms) else {
                    continue;
                };
                taken += usize::from(d.take_snapshot(snap));
            }
        }
        taken
    }

    /// The highest WAL position any meter has counted (after a load): new messages must get
    /// higher ones, or they would be taken for replays.
    pub fn max_lsn(&self) -> u64 {
        self.read()
            .values()
            .map(|d| d.last_lsn.max(d.last_dead_letter_lsn))
            .max()
            .unwrap_or(0)
    }

    pub fn get(&self, meter_id: &str) -> Option<DeviceState> {
        self.read().get(meter_id).cloned()
    }

    /// Every device, by meter id (for tests and small fleets: it clones them all).
    pub fn all(&self) -> Vec<DeviceState> {
        let mut all = Vec::new();
        self.for_each_chunk(|chunk| all.extend(chunk));
        all
    }

    /// Hands every device to `f`, one at a time, [`CHUNK`] per hold of the read lock (no
    /// clone: `f` should be quick).
    pub fn for_each(&self, mut f: impl FnMut(&DeviceState)) {
        let mut after: Option<String> = None;
        loop {
            let map = self.read();
            let from = match &after {
                Some(id) => Bound::Excluded(id.clone()),
                None => Bound::Unbounded,
            };
            let mut seen = 0;
            for (id, d) in map.range::<String, _>((from, Bound::Unbounded)).take(CHUNK) {
                f(d);
                seen += 1;
                after = Some(id.clone());
            }
            if seen < CHUNK {
                return;
            }
        }
    }

    /// When this node last received a message of `meter_id` in this run, if it did.
    pub fn heard_here_ms(&self, meter_id: &str) -> Option<i64> {
        self.read()
            .get(meter_id)
            .map(|d| d.heard_here_ms)
            .filter(|t| *t > 0)
    }

    /// Hands every device to `f`, a chunk at a time, holding the lock only to clone a chunk.
    fn for_each_chunk(&self, mut f: impl FnMut(Vec<DeviceState>)) {
        let mut after: Option<String> = None;
        loop {
            let chunk: Vec<DeviceState> = {
                let map = self.read();
                let from = match &after {
                    Some(id) => Bound::Excluded(id.clone()),
                    None => Bound::Unbounded,
                };
                map.range::<String, _>((from, Bound::Unbounded))
                    .take(CHUNK)
                    .map(|(_, d)| d.clone())
                    .collect()
            };
            let Some(last) = chunk.last() else {
                return;
            };
            after = Some(last.meter_id.clone());
            let done = chunk.len() < CHUNK;
            f(chunk);
            if done {
                return;
            }
        }
    }

    /// Up to `limit` devices after `cursor` (by meter id), only those not heard for
    /// `stale_after_ms` when given. Looks at [`SCAN_BUDGET`] devices at most, so that a
    /// filtered list of a large fleet does not hold the pipeline up: then the page may hold
    /// fewer than `limit`, and `next_cursor` says where to go on.
    pub fn page(
        &self,
        cursor: Option<&str>,
        limit: usize,
        stale_after_ms: Option<i64>,
        now_ms: i64,
    ) -> Page {
        self.page_where(cursor, limit, |d| {
            stale_after_ms.is_none_or(|s| now_ms.saturating_sub(d.last_seen_ms) >= s)
        })
    }

    /// [`DeviceRegistry::page`] of the devices `keep` keeps.
    pub fn page_where(
        &self,
        cursor: Option<&str>,
        limit: usize,
        keep: impl Fn(&DeviceState) -> bool,
    ) -> Page {
        let map = self.read();
        let from = match cursor {
            Some(c) => Bound::Excluded(c.to_string()),
            None => Bound::Unbounded,
        };
        let mut devices = Vec::new();
        let mut last_seen_id: Option<&str> = None;
        let mut more = false;
        for (scanned, (id, d)) in map.range::<String, _>((from, Bound::Unbounded)).enumerate() {
            if devices.len() == limit || scanned == SCAN_BUDGET {
                more = true;
                break;
            }
            last_seen_id = Some(id);
            if keep(d) {
                devices.push(d.clone());
            }
        }
        Page {
            devices,
            next_cursor: more.then(|| last_seen_id.unwrap_or_default().to_string()),
        }
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn state_path(data_dir: &Path) -> PathBuf {
        data_dir.join("state").join("devices.json")
    }

    /// Loads the state saved by [`DeviceRegistry::save`]; an absent file is an empty registry.
    pub fn load(data_dir: &Path, config: DevicesConfig) -> Result<DeviceRegistry, IngestError> {
        let registry = DeviceRegistry::new(config);
        let path = Self::state_path(data_dir);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(registry),
            Err(source) => {
                return Err(IngestError::Io {
                    action: "reading device state",
                    path,
                    source,
                })
            }
        };
        let devices: Vec<DeviceState> = match serde_json::from_slice(&text) {
            Ok(devices) => devices,
            Err(e) => {
                // Not a reason to stay down: the state is rebuilt from traffic (and
                // ClickHouse). Kept aside for a look.
                let aside =
                    path.with_extension(format!("json.corrupt-{}", meterflow_proto::now_ms()));
                tracing::error!(error = %e, path = %path.display(), aside = %aside.display(), "the device state file does not parse; starting without it");
                let _ = std::fs::rename(&path, &aside);
                return Ok(registry);
            }
        };
        {
            let mut map = registry.write();
            for d in devices.into_iter().take(registry.config.max_devices) {
                map.insert(d.meter_id.clone(), d);
            }
        }
        Ok(registry)
    }

    /// Saves the state every `every`, so a crash loses at most that much of it (a task of
    /// the runtime's, aborted at shutdown, which then saves once more).
    pub async fn save_every(self, data_dir: PathBuf, every: std::time::Duration) {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let (devices, dir) = (self.clone(), data_dir.clone());
            match tokio::task::spawn_blocking(move || devices.save(&dir)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "saving the device state"),
                Err(e) => tracing::warn!(error = %e, "saving the device state"),
            }
        }
    }

    /// Tops up the state from ClickHouse, in a task of its own so start-up never waits for
    /// it: meters the state file does not know, or knows older (a new disk, a kill -9 between
    /// two saves). Retries while ClickHouse is away, for up to ten minutes.
    pub async fn top_up_from_clickhouse(
        self,
        config: meterflow_storage::clickhouse::ClickHouseConfig,
    ) {
        let mut delay = std::time::Duration::from_secs(1);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(600);
        loop {
            let (mut known, mut taken) = (0, 0);
            let read = meterflow_storage::analytics::device_snapshots(
                &config,
                CLICKHOUSE_LOOKBACK_DAYS,
                |chunk| {
                    known += chunk.len();
                    taken += self.merge_snapshots(chunk);
                },
            )
            .await;
            match read {
                Ok(()) => {
                    tracing::info!(
                        in_clickhouse = known,
                        taken,
                        "device state topped up from ClickHouse"
                    );
                    return;
                }
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "device state from ClickHouse: not yet");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(30));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "device state could not be read from ClickHouse; the state file's stands");
                    return;
                }
            }
        }
    }

    /// Writes every device to the state file (write, fsync, rename), a chunk at a time so
    /// the pipeline never waits long. One save at a time: a periodic save still running at
    /// shutdown finishes before the last one starts.
    pub fn save(&self, data_dir: &Path) -> Result<(), IngestError> {
        use std::io::Write;
        let _one_at_a_time = self.save_lock.lock().unwrap_or_else(|p| p.into_inner());
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
        let file = std::fs::File::create(&tmp).map_err(|e| io("creating", e))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        let mut result: std::io::Result<()> = out.write_all(b"[");
        let mut first = true;
        self.for_each_chunk(|chunk| {
            for d in chunk {
                if result.is_err() {
                    return;
                }
                result = (if first { Ok(()) } else { out.write_all(b",") })
                    .and_then(|()| serde_json::to_writer(&mut out, &d).map_err(Into::into));
                first = false;
            }
        });
        result
            .and_then(|()| out.write_all(b"]"))
            .and_then(|()| out.into_inner().map_err(|e| e.into_error()))
            .and_then(|file| file.sync_all())
            .map_err(|e| io("writing", e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io("renaming", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
