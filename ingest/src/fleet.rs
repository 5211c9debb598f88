//! The fleet as `serve` sees it for the people who look after it: each meter's health with
//! the reasons in words (last heard against the interval the meter registry gives it,
//! battery, signal, error flags), the fleet summary by health and district for the page, and
//! the gauges `meterflow_meters_registered{district}` and `meterflow_meters_heard{district}`
//! (worked out at each scrape of `/metrics`).
//!
//! The registry is optional and read from the configured source (ClickHouse's `meters`, else
//! the data folder), again every [`RELOAD`]: an import shows on every node within that.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use meterflow_decoders::events;
use meterflow_storage::registry::{MeterRecord, Registry};
use serde::Serialize;

use crate::devices::{DeviceRegistry, DeviceState, DevicesConfig, Health};

/// How often the registry is read again.
pub const RELOAD: Duration = Duration::from_secs(300);

/// The meter registry as `serve` holds it (empty without one).
#[derive(Clone, Default)]
pub struct Fleet {
    registry: Arc<RwLock<Arc<Registry>>>,
    /// The districts the gauges were last set for.
    pub gauged: Arc<Mutex<BTreeSet<String>>>,
}

impl Fleet {
    pub fn registry(&self) -> Arc<Registry> {
        self.registry
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn replace(&self, registry: Registry) {
        *self
            .registry
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(registry);
    }

    /// Reads the registry from ClickHouse when configured, else from the data folder.
    pub async fn reload(
        &self,
        clickhouse: Option<&meterflow_storage::clickhouse::ClickHouseConfig>,
        data_dir: &std::path::Path,
    ) {
        let loaded = match clickhouse {
            Some(config) => Registry::load_clickhouse(config).await,
            None => {
                let dir = data_dir.to_path_buf();
                tokio::task::spawn_blocking(move || Registry::load(&dir))
                    .await
                    .unwrap_or_else(|e| {
                        Err(meterflow_storage::StorageError::ReadRequest {
                            reason: format!("reading the meter registry: {e}"),
                        })
                    })
            }
        };
        match loaded {
            Ok(registry) => self.replace(registry),
            Err(e) => {
                tracing::warn!(error = %e, "the meter registry could not be read; keeping the one before")
            }
        }
    }
}

/// Keeps `fleet` current: the registry read at once and every [`RELOAD`]. Runs until
/// aborted.
pub async fn watch(
    fleet: Fleet,
    clickhouse: Option<meterflow_storage::clickhouse::ClickHouseConfig>,
    data_dir: std::path::PathBuf,
) {
    let mut tick = tokio::time::interval(RELOAD);
    loop {
        tick.tick().await;
        fleet.reload(clickhouse.as_ref(), &data_dir).await;
    }
}

/// A meter's health and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Assessment {
    pub health: Health,
    /// Every reason for amber or red, in words, worst first.
    pub reasons: Vec<String>,
    /// After this long without a message the meter is amber (and red after `red_after_s`).
    pub amber_after_s: u64,
    pub red_after_s: u64,
}

/// A duration for people: `40 s`, `25 min`, `3 h`, `2 days`.
pub fn duration_words(s: u64) -> String {
    match s {
        0..90 => format!("{s} s"),
        90..5400 => format!("{} min", (s + 30) / 60),
        5400..172_800 => format!("{} h", (s + 1800) / 3600),
        _ => format!("{} days", (s + 43_200) / 86_400),
    }
}

/// When a meter turns amber and red: after `silent_amber_intervals` and
/// `silent_red_intervals` of how often its registry record says it is heard (its
/// `report_interval_s`, else `expected_interval_s`), else after the fixed `amber_after_s`
/// and `red_after_s`.
pub fn thresholds(record: Option<&MeterRecord>, config: &DevicesConfig) -> (u64, u64) {
    match record.and_then(MeterRecord::heard_every_s) {
        Some(interval) => (
            u64::from(interval) * u64::from(config.silent_amber_intervals),
            u64::from(interval) * u64::from(config.silent_red_intervals),
        ),
        None => (config.amber_after_s, config.red_after_s),
    }
}

/// The health of `device` at `now_ms`, with the reasons: how long it has been silent
/// against its interval, its battery and signal against `[devices]`' thresholds, and the
/// error flags it reports, in words (a tamper flag is red, others amber).
pub fn assess(
    device: &DeviceState,
    record: Option<&MeterRecord>,
    now_ms: i64,
    config: &DevicesConfig,
) -> Assessment {
    let (amber_after_s, red_after_s) = thresholds(record, config);
    let mut found: Vec<(Health, String)> = Vec::new();
    let expected = record
        .and_then(MeterRecord::heard_every_s)
        .map(|i| format!(" (it reports every {})", duration_words(u64::from(i))))
        .unwrap_or_default();
    if device.last_seen_ms <= 0 {
        found.push((Health::Red, "never heard".into()));
    } else {
        let silent_s =
            u64::try_from(now_ms.saturating_sub(device.last_seen_ms) / 1000).unwrap_or(0);
        if silent_s >= red_after_s {
            found.push((
                Health::Red,
                format!("not heard for {}{expected}", duration_words(silent_s)),
            ));
        } else if silent_s >= amber_after_s {
            found.push((
                Health::Amber,
                format!("not heard for {}{expected}", duration_words(silent_s)),
            ));
        }
    }
    let status = &device.status;
    if let Some(b) = status.battery_pct {
        if b < config.battery_red_pct {
            found.push((
                Health::Red,
                format!("battery {b} % (below {} %)", config.battery_red_pct),
            ));
        } else if b < config.battery_amber_pct {
            found.push((
                Health::Amber,
                format!("battery low: {b} % (below {} %)", config.battery_amber_pct),
            ));
        }
    }
    if let Some(rssi) = status.rssi_dbm {
        if rssi < config.rssi_red_dbm {
            found.push((
                Health::Red,
                format!(
                    "no usable signal: RSSI {rssi} dBm (below {} dBm)",
                    config.rssi_red_dbm
                ),
            ));
        } else if rssi < config.rssi_amber_dbm {
            found.push((
                Health::Amber,
                format!(
                    "weak signal: RSSI {rssi} dBm (below {} dBm)",
                    config.rssi_amber_dbm
                ),
            ));
        }
    }
    if let Some(flags) = status.error_flags.filter(|f| *f != 0) {
        let format = device.flags_format();
        let kinds = events::flag_kinds(format, flags);
        let tamper = kinds.iter().any(|k| k.is_tamper());
        let words: Vec<String> = kinds.iter().map(|k| k.as_str().replace('_', " ")).collect();
        let reason = match (words.is_empty(), format == meterflow_proto::Format::Dlms) {
            // DLMS: the alarm registers OR'd; its events say which register's bit.
            (true, _) => format!("reports alarms (flags 0x{flags:x}; its events say which)"),
            (false, true) => format!(
                "reports {} (alarm flags 0x{flags:x}; its events say which)",
                words.join(", ")
            ),
            (false, false) => format!("reports {} (error flags 0x{flags:x})", words.join(", ")),
        };
        found.push((if tamper { Health::Red } else { Health::Amber }, reason));
    }
    found.sort_by_key(|(h, _)| std::cmp::Reverse(*h));
    Assessment {
        health: found.first().map_or(Health::Green, |(h, _)| *h),
        reasons: found.into_iter().map(|(_, r)| r).collect(),
        amber_after_s,
        red_after_s,
    }
}

/// The fleet summary: meters by health, and by district and health.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    pub meters: usize,
    pub by_health: BTreeMap<&'static str, usize>,
    /// District (`""`: none in the registry) -> health -> meters.
    pub by_district: BTreeMap<String, BTreeMap<&'static str, usize>>,
    /// Registered meters never heard (counted red above): by this node, on a cluster.
    pub never_heard: usize,
    /// Whether this node is one of a cluster's: it counts the meters it hears (the others'
    /// meters look never heard here).
    pub node_only: bool,
}

fn health_name(h: Health) -> &'static str {
    match h {
        Health::Green => "green",
        Health::Amber => "amber",
        Health::Red => "red",
    }
}

/// Every heard meter and every meter the registry has now, by health and district (a
/// registered meter never heard is red); `district` keeps one district only.
pub fn summary(
    devices: &DeviceRegistry,
    registry: &Registry,
    now_ms: i64,
    district: Option<&str>,
) -> Summary {
    let config = devices.config().clone();
    let mut out = Summary::default();
    // The registered meters heard, by a hash of their id (no copy of every id).
    let mut heard = std::collections::HashSet::new();
    let hash = |id: &str| {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut h);
        h.finish()
    };
    let count = |district_of: &str, health: Health, out: &mut Summary| {
        if district.is_some_and(|d| d != district_of) {
            return;
        }
        out.meters += 1;
        *out.by_health.entry(health_name(health)).or_default() += 1;
        *out.by_district
            .entry(district_of.to_string())
            .or_default()
            .entry(health_name(health))
            .or_default() += 1;
    };
    devices.for_each(|d| {
        let record = registry.at(&d.meter_id, now_ms);
        if record.is_some() {
            heard.insert(hash(&d.meter_id));
        }
        let health = assess(d, record, now_ms, &config).health;
        count(record.map_or("", |r| r.district.as_str()), health, &mut out);
    });
    for r in registry.records().filter(|r| r.holds_at(now_ms)) {
        if !heard.contains(&hash(&r.meter_id)) {
            out.never_heard += 1;
            count(&r.district, Health::Red, &mut out);
        }
    }
    out
}

/// Sets `meterflow_meters_registered{district}` (the registry's meters now) and
/// `meterflow_meters_heard{district}` (those this node received a message of in this run,
/// within their amber threshold: not from the saved state nor another node's snapshot);
/// a district that left the registry is set to 0. On a cluster each node hears its own
/// meters: the silent are the registered less the sum of every node's heard (the alert in
/// `deploy/prometheus/alerts.yml` sums them).
pub fn set_gauges(
    devices: &DeviceRegistry,
    registry: &Registry,
    now_ms: i64,
    shown: &Mutex<BTreeSet<String>>,
) {
    let config = devices.config().clone();
    let mut by_district: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let current: BTreeMap<&str, &MeterRecord> = registry
        .records()
        .filter(|r| r.holds_at(now_ms))
        .map(|r| (r.meter_id.as_str(), r))
        .collect();
    for r in current.values() {
        let e = by_district.entry(r.district.clone()).or_default();
        e.0 += 1;
        let heard = devices.heard_here_ms(&r.meter_id).is_some_and(|seen| {
            let (amber, _) = thresholds(Some(r), &config);
            now_ms.saturating_sub(seen) / 1000 < i64::try_from(amber).unwrap_or(i64::MAX)
        });
        e.1 += usize::from(heard);
    }
    let mut shown = shown
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for gone in shown.iter().filter(|d| !by_district.contains_key(*d)) {
        metrics::gauge!("meterflow_meters_registered", "district" => gone.clone()).set(0.0);
        metrics::gauge!("meterflow_meters_heard", "district" => gone.clone()).set(0.0);
    }
    shown.clear();
    for (district, (registered, heard)) in by_district {
        metrics::gauge!("meterflow_meters_registered", "district" => district.clone())
            .set(registered as f64);
        metrics::gauge!("meterflow_meters_heard", "district" => district.clone()).set(heard as f64);
        shown.insert(district);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meterflow_decoders::DeviceStatus;

    fn device(silent_s: i64, status: DeviceStatus) -> DeviceState {
        DeviceState {
            meter_id: "E1".into(),
            last_seen_ms: 1_000_000_000_000 - silent_s * 1000,
            last_format: "json".into(),
            status,
            ..DeviceState::default()
        }
    }

    const NOW: i64 = 1_000_000_000_000;

    #[test]
    fn health_has_reasons_in_words_against_the_meters_interval() {
        let config = DevicesConfig::default();
        let green = assess(&device(60, DeviceStatus::default()), None, NOW, &config);
        assert_eq!((green.health, green.reasons.len()), (Health::Green, 0));
        // Battery 12 %, RSSI -109 dBm and flags 0x5 (device fault, cover open): red for the
        // cover, the other reasons listed too.
        let status = DeviceStatus {
            battery_pct: Some(12),
            rssi_dbm: Some(-109),
            error_flags: Some(0x5),
            ..DeviceStatus::default()
        };
        let a = assess(&device(60, status), None, NOW, &config);
        assert_eq!(a.health, Health::Red);
        assert_eq!(
            a.reasons,
            [
                "reports device fault, cover open (error flags 0x5)",
                "battery low: 12 % (below 20 %)",
                "weak signal: RSSI -109 dBm (below -100 dBm)",
            ]
        );
        // A meter of the registry that reports every 15 minutes: amber after 45 min.
        let zone = meterflow_billing::Zone::parse("UTC", "tz").unwrap();
        let registry = Registry::from_csv(
            b"meter_id,kind,expected_interval_s,district\nE1,electricity,900,North\n",
            &zone,
        )
        .unwrap();
        let record = registry.at("E1", NOW);
        let silent = assess(
            &device(50 * 60, DeviceStatus::default()),
            record,
            NOW,
            &config,
        );
        assert_eq!(silent.health, Health::Amber);
        assert_eq!(
            silent.reasons,
            ["not heard for 50 min (it reports every 15 min)"]
        );
        // Without the registry the same silence is green (amber after 2 h).
        let free = assess(
            &device(50 * 60, DeviceStatus::default()),
            None,
            NOW,
            &config,
        );
        assert_eq!(free.health, Health::Green);
        let never = assess(&DeviceState::default(), None, NOW, &config);
        assert_eq!(never.reasons, ["never heard"]);
    }
}
