//! The analytics utilities run on the ClickHouse tables: billing consumption from cumulative
//! registers, anomalies, and device overviews. The SQL lives in `storage/sql/` (one file per
//! question, readable and runnable by hand after filling the `{placeholders}`); this module
//! fills them with validated values and returns the result as a [`Table`].
//!
//! Every query reads `readings FINAL`, so results are exact before background merges have
//! removed duplicate deliveries. The SQL runs on ClickHouse 18.16 (no window functions: steps
//! between readings are computed on sorted arrays) and on current releases.

use crate::clickhouse::{ClickHouseConfig, ClickHouseError};

const REGISTER_STEPS: &str = include_str!("../sql/register_steps.sql");
const BILLING: &str = include_str!("../sql/billing.sql");
const ANOMALIES: &str = include_str!("../sql/anomalies.sql");
const STALE: &str = include_str!("../sql/stale.sql");
const DEVICES: &str = include_str!("../sql/devices.sql");
const DEVICE_STATE: &str = include_str!("../sql/device_state.sql");
const STATUS_STATE: &str = include_str!("../sql/status_state.sql");

/// What a question is asked about.
#[derive(Debug, Clone)]
pub struct Period {
    /// Unix seconds, inclusive.
    pub from_s: i64,
    /// Unix seconds, exclusive.
    pub to_s: i64,
    /// One meter, or all. Must satisfy [`meterflow_proto::is_valid_meter_id`].
    pub meter: Option<String>,
}

/// Thresholds of the anomaly checks.
#[derive(Debug, Clone)]
pub struct AnomalyRules {
    /// An import register that has not moved for this many days.
    pub zero_days: u32,
    /// A step above this many times the meter's median step.
    pub spike_factor: f64,
    /// A meter not heard for this many seconds.
    pub stale_s: u64,
}

impl Default for AnomalyRules {
    fn default() -> Self {
        AnomalyRules {
            zero_days: 3,
            spike_factor: 5.0,
            stale_s: 86_400,
        }
    }
}

/// A query result: column names and rows of text cells.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// Parses `TabSeparatedWithNames`.
    fn from_tsv(text: &str) -> Table {
        let mut lines = text.lines();
        let columns = lines
            .next()
            .map(|l| l.split('\t').map(unescape).collect())
            .unwrap_or_default();
        let rows = lines
            .filter(|l| !l.is_empty())
            .map(|l| l.split('\t').map(unescape).collect())
            .collect();
        Table { columns, rows }
    }

    /// The cell of `column` in `row`.
    pub fn get(&self, row: usize, column: &str) -> Option<&str> {
        let c = self.columns.iter().position(|name| name == column)?;
        self.rows.get(row)?.get(c).map(String::as_str)
    }

    fn append(&mut self, other: Table) {
        if self.columns.is_empty() {
            self.columns = other.columns;
        }
        self.rows.extend(other.rows);
    }
}

fn unescape(cell: &str) -> String {
    if !cell.contains('\\') {
        return cell.to_string();
    }
    let mut out = String::with_capacity(cell.len());
    let mut chars = cell.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('\\') => out.push('\\'),
            Some('0') => out.push('\0'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

fn meter_filter(period: &Period, keyword: &str) -> Result<String, ClickHouseError> {
    match &period.meter {
        None => Ok(String::new()),
        Some(m) if meterflow_proto::is_valid_meter_id(m) => {
            Ok(format!("{keyword} meter_id = '{m}'"))
        }
        Some(m) => Err(ClickHouseError {
            action: "checking the meter id",
            source: clickhouse::error::Error::Custom(format!(
                "{m:?} is not a meter id (1 to 64 of [A-Za-z0-9._-])"
            )),
        }),
    }
}

fn steps(db: &str, period: &Period) -> Result<String, ClickHouseError> {
    Ok(REGISTER_STEPS
        .replace("{db}", db)
        .replace("{from}", &period.from_s.to_string())
        .replace("{to}", &period.to_s.to_string())
        .replace("{meter_filter}", &meter_filter(period, "AND")?))
}

async fn run(config: &ClickHouseConfig, sql: &str) -> Result<Table, ClickHouseError> {
    let client = clickhouse::Client::default()
        .with_url(&config.url)
        .with_user(&config.user)
        .with_password(&config.password);
    let bytes = client
        .query(sql)
        .fetch_bytes("TabSeparatedWithNames")
        .map_err(|source| ClickHouseError {
            action: "running an analytics query",
            source,
        })?
        .collect()
        .await
        .map_err(|source| ClickHouseError {
            action: "running an analytics query",
            source,
        })?;
    Ok(Table::from_tsv(&String::from_utf8_lossy(&bytes)))
}

/// Consumption per meter and register for the period.
pub async fn billing(config: &ClickHouseConfig, period: &Period) -> Result<Table, ClickHouseError> {
    let sql = BILLING.replace("{steps}", &steps(&config.database, period)?);
    run(config, &sql).await
}

/// Every anomaly of the period, and the meters not heard for `rules.stale_s`.
pub async fn anomalies(
    config: &ClickHouseConfig,
    period: &Period,
    rules: &AnomalyRules,
) -> Result<Table, ClickHouseError> {
    let sql = ANOMALIES
        .replace("{steps}", &steps(&config.database, period)?)
        .replace("{db}", &config.database)
        .replace("{from}", &period.from_s.to_string())
        .replace("{to}", &period.to_s.to_string())
        .replace("{meter_filter}", &meter_filter(period, "AND")?)
        .replace("{zero_days}", &rules.zero_days.to_string())
        .replace("{spike_factor}", &format!("{:.6}", rules.spike_factor));
    let mut table = run(config, &sql).await?;
    let stale = STALE
        .replace("{db}", &config.database)
        .replace("{meter_filter_where}", &meter_filter(period, "AND")?)
        .replace("{stale_s}", &rules.stale_s.to_string());
    table.append(run(config, &stale).await?);
    Ok(table)
}

/// Last seen and last values per meter; only meters not heard for `stale_after_s` when given.
pub async fn devices(
    config: &ClickHouseConfig,
    meter: Option<String>,
    stale_after_s: u64,
) -> Result<Table, ClickHouseError> {
    let period = Period {
        from_s: 0,
        to_s: 0,
        meter,
    };
    let sql = DEVICES
        .replace("{db}", &config.database)
        .replace("{meter_filter_where}", &meter_filter(&period, "AND")?)
        .replace("{stale_s}", &stale_after_s.to_string());
    run(config, &sql).await
}

/// The newest reading of one channel, as ClickHouse has it.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotValue {
    pub ts_ms: i64,
    pub value: f64,
    pub unit: String,
}

/// What ClickHouse knows of one meter, to rebuild the device state after a restart.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceSnapshot {
    pub meter_id: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub rows: u64,
    pub last_source: String,
    pub last_format: String,
    pub last_values: Vec<(String, SnapshotValue)>,
    pub battery_pct: Option<u8>,
    pub rssi_dbm: Option<i32>,
    pub rsrp_dbm: Option<i32>,
    pub snr_db: Option<f32>,
    pub firmware: Option<String>,
    pub error_flags: Option<u32>,
    /// When the newest status report came, if any.
    pub status_at_ms: Option<i64>,
}

/// Every meter heard in the last `days` days, as ClickHouse has it: the newest reading per
/// channel and the newest value of every status field.
pub async fn device_snapshots(
    config: &ClickHouseConfig,
    days: u32,
) -> Result<Vec<DeviceSnapshot>, ClickHouseError> {
    let ms = match crate::clickhouse::time_columns(config).await? {
        crate::clickhouse::TimeColumns::Millis => "toUnixTimestamp64Milli",
        crate::clickhouse::TimeColumns::Seconds => "1000 * toUnixTimestamp",
    };
    let fill = |sql: &str| {
        sql.replace("{db}", &config.database)
            .replace("{days}", &days.to_string())
            .replace("{ms}", ms)
    };
    let readings = run(config, &fill(DEVICE_STATE)).await?;
    let status = run(config, &fill(STATUS_STATE)).await?;
    Ok(snapshots_from(&readings, &status))
}

/// Folds the per-channel rows and the per-meter status rows into one snapshot per meter.
fn snapshots_from(readings: &Table, status: &Table) -> Vec<DeviceSnapshot> {
    let mut by_meter: std::collections::BTreeMap<String, DeviceSnapshot> = Default::default();
    let int = |t: &Table, r: usize, c: &str| t.get(r, c).and_then(|v| v.parse::<i64>().ok());
    // Status fields come as text, '' for none.
    let opt =
        |t: &Table, r: usize, c: &str| t.get(r, c).filter(|v| !v.is_empty()).map(str::to_string);
    for r in 0..readings.rows.len() {
        let Some(meter) = readings.get(r, "meter_id") else {
            continue;
        };
        let snap = by_meter
            .entry(meter.to_string())
            .or_insert_with(|| DeviceSnapshot {
                meter_id: meter.to_string(),
                first_seen_ms: i64::MAX,
                ..Default::default()
            });
        let last = int(readings, r, "last_ms").unwrap_or(0);
        snap.first_seen_ms = snap
            .first_seen_ms
            .min(int(readings, r, "first_ms").unwrap_or(last));
        if last >= snap.last_seen_ms {
            snap.last_seen_ms = last;
            snap.last_source = readings.get(r, "source").unwrap_or("").to_string();
            snap.last_format = readings.get(r, "format").unwrap_or("").to_string();
        }
        snap.rows += int(readings, r, "n").unwrap_or(0) as u64;
        if let (Some(channel), Some(value)) = (
            readings.get(r, "channel"),
            readings
                .get(r, "last_value")
                .and_then(|v| v.parse::<f64>().ok()),
        ) {
            snap.last_values.push((
                channel.to_string(),
                SnapshotValue {
                    ts_ms: int(readings, r, "last_ts_ms").unwrap_or(0),
                    value,
                    unit: readings.get(r, "unit").unwrap_or("").to_string(),
                },
            ));
        }
    }
    for r in 0..status.rows.len() {
        let Some(meter) = status.get(r, "meter_id") else {
            continue;
        };
        let at = int(status, r, "at_ms").unwrap_or(0);
        let snap = by_meter
            .entry(meter.to_string())
            .or_insert_with(|| DeviceSnapshot {
                meter_id: meter.to_string(),
                first_seen_ms: at,
                ..Default::default()
            });
        snap.last_seen_ms = snap.last_seen_ms.max(at);
        snap.status_at_ms = Some(at);
        snap.battery_pct = opt(status, r, "battery_pct").and_then(|v| v.parse().ok());
        snap.rssi_dbm = opt(status, r, "rssi_dbm").and_then(|v| v.parse().ok());
        snap.rsrp_dbm = opt(status, r, "rsrp_dbm").and_then(|v| v.parse().ok());
        snap.snr_db = opt(status, r, "snr_db").and_then(|v| v.parse().ok());
        snap.firmware = opt(status, r, "firmware");
        snap.error_flags = opt(status, r, "error_flags").and_then(|v| v.parse().ok());
    }
    by_meter
        .into_values()
        .map(|mut s| {
            if s.first_seen_ms == i64::MAX {
                s.first_seen_ms = s.last_seen_ms;
            }
            s
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_fold_channels_and_status_per_meter() {
        let readings = Table::from_tsv(
            "meter_id\tchannel\tunit\tn\tfirst_ms\tlast_ms\tlast_ts_ms\tlast_value\tsource\tformat\n\
             m1\ta\tkWh\t3\t1000\t5000\t4000\t1.5\tmqtt\tpb\n\
             m1\tb\tV\t2\t2000\t6000\t6000\t230\tcoap\tjson\n",
        );
        let status = Table::from_tsv(
            "meter_id\tat_ms\tbattery_pct\trssi_dbm\trsrp_dbm\tsnr_db\tfirmware\terror_flags\n\
             m1\t7000\t80\t-70\t\t\t1.2\t\n\
             m2\t9000\t\t\t\t\t\t4\n",
        );
        let snaps = snapshots_from(&readings, &status);
        assert_eq!(snaps.len(), 2);
        let m1 = &snaps[0];
        assert_eq!(
            (m1.first_seen_ms, m1.last_seen_ms, m1.rows),
            (1000, 7000, 5)
        );
        assert_eq!(
            (m1.last_source.as_str(), m1.last_format.as_str()),
            ("coap", "json")
        );
        assert_eq!(m1.last_values.len(), 2);
        assert_eq!(m1.last_values[0].1.value, 1.5);
        assert_eq!(
            (m1.battery_pct, m1.rssi_dbm, m1.rsrp_dbm),
            (Some(80), Some(-70), None)
        );
        assert_eq!(m1.firmware.as_deref(), Some("1.2"));
        let m2 = &snaps[1];
        assert_eq!(
            (m2.last_seen_ms, m2.error_flags, m2.status_at_ms),
            (9000, Some(4), Some(9000))
        );
    }

    #[test]
    fn tsv_with_names_parses_with_escapes() {
        let t = Table::from_tsv("a\tb\n1\tx\\ty\n2\t\\\\n\n");
        assert_eq!(t.columns, vec!["a", "b"]);
        assert_eq!(t.rows, vec![vec!["1", "x\ty"], vec!["2", "\\n"]]);
        assert_eq!(t.get(1, "b"), Some("\\n"));
    }

    #[test]
    fn the_sql_has_no_placeholder_left() {
        let period = Period {
            from_s: 1,
            to_s: 2,
            meter: Some("m-1".into()),
        };
        let s = steps("mf", &period).unwrap();
        for sql in [
            BILLING.replace("{steps}", &s),
            ANOMALIES
                .replace("{steps}", &s)
                .replace("{db}", "mf")
                .replace("{from}", "1")
                .replace("{to}", "2")
                .replace("{meter_filter}", "AND meter_id = 'm-1'")
                .replace("{zero_days}", "3")
                .replace("{spike_factor}", "5"),
        ] {
            let code: String = sql
                .lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect();
            assert!(!code.contains('{'), "{code}");
            assert!(code.contains("meter_id = 'm-1'"));
        }
        let bad = Period {
            meter: Some("x' OR 1=1 --".into()),
            ..period
        };
        assert!(steps("mf", &bad).is_err());
    }
}
