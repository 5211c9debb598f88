//! What `serve` asks of the ClickHouse tables: the device-state rebuild
//! (`storage/sql/device_state.sql`) and a meter's recent readings for the HTTP API and page;
//! and the [`Table`] every `meterflow query` answer is printed from. (`query billing`,
//! `anomalies` and `devices` run in Rust on the read model of [`crate::readings`], the same on
//! ClickHouse and on the Parquet tree: [`crate::questions`].) Values are filled into the SQL
//! only after validation (18.16 rejects `param_*`); `tests/it/clickhouse_current.rs` runs the
//! queries as the `*_sql` functions here fill them on a current ClickHouse engine.

use crate::clickhouse::{ClickHouseConfig, ClickHouseError, TimeColumns};

const DEVICE_STATE: &str = include_str!("../sql/device_state.sql");

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

/// A query result: column names and rows of text cells.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// Parses `TabSeparatedWithNames`, as the queries' answers are read.
    #[doc(hidden)]
    pub fn from_tsv(text: &str) -> Table {
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
}

/// A TSV cell as its text; ClickHouse's NULL (`\N`) is an empty cell.
fn unescape(cell: &str) -> String {
    if cell == "\\N" {
        return String::new();
    }
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

/// Runs a query; its answer may come compressed (`Accept-Encoding: lz4`: servers from
/// 25.10 on compress HTTP answers by default, older ones answer plain).
async fn run(config: &ClickHouseConfig, sql: &str) -> Result<Table, ClickHouseError> {
    Ok(Table::from_tsv(&run_text(config, sql).await?))
}

/// The answer of a query as text (`TabSeparatedWithNames`), as [`run`] reads it.
pub(crate) async fn run_text(
    config: &ClickHouseConfig,
    sql: &str,
) -> Result<String, ClickHouseError> {
    let client = config
        .client()?
        .with_compression(clickhouse::Compression::Lz4);
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
    Ok(String::from_utf8_lossy(&bytes).into_owned())
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
/// channel and the newest value of every status field. Streamed: `take` gets the snapshots a
/// few thousand meters at a time, so a fleet of millions never sits in memory at once.
pub async fn device_snapshots(
    config: &ClickHouseConfig,
    days: u32,
    take: impl FnMut(Vec<DeviceSnapshot>),
) -> Result<(), ClickHouseError> {
    snapshots(config, days, None, take).await
}

/// What ClickHouse knows of one meter heard in the last `days` days (as
/// [`device_snapshots`]), for a node asked about a meter it has not heard itself.
pub async fn device_snapshot(
    config: &ClickHouseConfig,
    meter_id: &str,
    days: u32,
) -> Result<Option<DeviceSnapshot>, ClickHouseError> {
    let mut found = None;
    snapshots(config, days, Some(meter_id), |chunk| {
        // Every chunk comes here, the last one maybe empty: keep what was found.
        if let Some(snapshot) = chunk.into_iter().find(|s| s.meter_id == meter_id) {
            found = Some(snapshot);
        }
    })
    .await?;
    Ok(found)
}

/// The newest `per_channel` readings of each channel of one meter received in the last
/// `days` days, as `(channel, ts_ms, value)`, oldest first per channel.
pub async fn recent_readings(
    config: &ClickHouseConfig,
    meter_id: &str,
    per_channel: usize,
    days: u32,
) -> Result<Vec<(String, i64, f64)>, ClickHouseError> {
    let times = crate::clickhouse::time_columns(config).await?;
    let sql = recent_readings_sql(&config.database, meter_id, per_channel, days, times)?;
    let table = run(config, &sql).await?;
    let mut points: Vec<(String, i64, f64)> = (0..table.rows.len())
        .filter_map(|row| {
            let channel = table.get(row, "channel")?.to_string();
            let ts_ms = table.get(row, "ts_ms")?.parse().ok()?;
            let value = table.get(row, "value")?.parse().ok()?;
            Some((channel, ts_ms, value))
        })
        .collect();
    points.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    Ok(points)
}

/// The SQL of [`recent_readings`] for a `readings` table with `times`, filled as it is sent.
#[doc(hidden)]
pub fn recent_readings_sql(
    db: &str,
    meter_id: &str,
    per_channel: usize,
    days: u32,
    times: TimeColumns,
) -> Result<String, ClickHouseError> {
    let period = Period {
        from_s: 0,
        to_s: 0,
        meter: Some(meter_id.to_string()),
    };
    let ms = millis_function(times);
    // A reading stored twice (a redelivery, before merges) counts once: the newest copy.
    Ok(format!(
        "SELECT channel, ts_ms, value FROM ( \
           SELECT channel, ts, toString({ms}(ts)) AS ts_ms, toString(value) AS value \
           FROM {db}.readings WHERE received_at >= now() - {days} * 86400 {filter} \
           ORDER BY channel, ts DESC, received_at DESC LIMIT 1 BY channel, ts) \
         ORDER BY channel, ts DESC LIMIT {per_channel} BY channel",
        filter = meter_filter(&period, "AND")?,
    ))
}

/// The function that turns the server's time columns into Unix milliseconds.
fn millis_function(times: TimeColumns) -> &'static str {
    match times {
        TimeColumns::Millis => "toUnixTimestamp64Milli",
        TimeColumns::Seconds => "1000 * toUnixTimestamp",
    }
}

/// The SQL of the device-state rebuild (`device_state.sql`) for tables with `times`, filled
/// as it is sent.
#[doc(hidden)]
pub fn device_state_sql(
    db: &str,
    days: u32,
    meter: Option<&str>,
    times: TimeColumns,
) -> Result<String, ClickHouseError> {
    let period = Period {
        from_s: 0,
        to_s: 0,
        meter: meter.map(str::to_string),
    };
    Ok(DEVICE_STATE
        .replace("{db}", db)
        .replace("{days}", &days.to_string())
        .replace("{meter_filter}", &meter_filter(&period, "AND")?)
        .replace("{ms}", millis_function(times)))
}

/// The snapshots in a whole answer of [`device_state_sql`] (`TabSeparatedWithNames`), as
/// the streamed rebuild folds them.
#[doc(hidden)]
pub fn snapshots_from_tsv(text: &str) -> Vec<DeviceSnapshot> {
    let mut folder = SnapshotFolder::default();
    let mut columns: Option<Vec<String>> = None;
    for line in text.lines().filter(|l| !l.is_empty()) {
        let cells: Vec<String> = line.split('\t').map(unescape).collect();
        match &columns {
            None => columns = Some(cells),
            Some(names) => folder.row(names, cells),
        }
    }
    folder.finish();
    folder.done
}

async fn snapshots(
    config: &ClickHouseConfig,
    days: u32,
    meter: Option<&str>,
    mut take: impl FnMut(Vec<DeviceSnapshot>),
) -> Result<(), ClickHouseError> {
    let times = crate::clickhouse::time_columns(config).await?;
    let sql = device_state_sql(&config.database, days, meter, times)?;
    let err = |source| ClickHouseError {
        action: "reading the device state",
        source,
    };
    let mut cursor = config
        .client()?
        .query(&sql)
        .fetch_bytes("TabSeparatedWithNames")
        .map_err(err)?;
    let mut folder = SnapshotFolder::default();
    let mut pending = Vec::new();
    let mut columns: Option<Vec<String>> = None;
    while let Some(bytes) = cursor.next().await.map_err(err)? {
        pending.extend_from_slice(&bytes);
        // Whole lines only; a partial one waits for the next chunk.
        let Some(end) = pending.iter().rposition(|b| *b == b'\n') else {
            continue;
        };
        let text = String::from_utf8_lossy(&pending[..=end]).into_owned();
        pending.drain(..=end);
        for line in text.lines().filter(|l| !l.is_empty()) {
            let cells: Vec<String> = line.split('\t').map(unescape).collect();
            match &columns {
                None => columns = Some(cells),
                Some(names) => folder.row(names, cells),
            }
        }
        if folder.done.len() >= 5_000 {
            take(std::mem::take(&mut folder.done));
        }
    }
    folder.finish();
    take(folder.done);
    Ok(())
}

/// Folds the rows of one meter (they come together, ordered by meter) into its snapshot.
#[derive(Default)]
struct SnapshotFolder {
    current: Option<DeviceSnapshot>,
    done: Vec<DeviceSnapshot>,
}

impl SnapshotFolder {
    fn row(&mut self, names: &[String], cells: Vec<String>) {
        let get = |name: &str| {
            names
                .iter()
                .position(|n| n == name)
                .and_then(|i| cells.get(i))
                .map(String::as_str)
                .filter(|v| !v.is_empty())
        };
        let int = |name: &str| get(name).and_then(|v| v.parse::<i64>().ok());
        let Some(meter) = get("meter_id") else {
            return;
        };
        if self.current.as_ref().is_some_and(|c| c.meter_id != meter) {
            self.finish();
        }
        let snap = self.current.get_or_insert_with(|| DeviceSnapshot {
            meter_id: meter.to_string(),
            first_seen_ms: i64::MAX,
            ..Default::default()
        });
        let last = int("last_ms").unwrap_or(0);
        match get("kind") {
            Some("r") => {
                snap.first_seen_ms = snap.first_seen_ms.min(int("first_ms").unwrap_or(last));
                if last >= snap.last_seen_ms {
                    snap.last_seen_ms = last;
                    snap.last_source = get("source").unwrap_or("").to_string();
                    snap.last_format = get("format").unwrap_or("").to_string();
                }
                snap.rows += int("n").unwrap_or(0) as u64;
                if let (Some(channel), Some(value)) = (
                    get("channel"),
                    get("last_value").and_then(|v| v.parse::<f64>().ok()),
                ) {
                    snap.last_values.push((
                        channel.to_string(),
                        SnapshotValue {
                            ts_ms: int("last_ts_ms").unwrap_or(0),
                            value,
                            unit: get("unit").unwrap_or("").to_string(),
                        },
                    ));
                }
            }
            Some("s") if last > 0 => {
                snap.first_seen_ms = snap.first_seen_ms.min(last);
                snap.last_seen_ms = snap.last_seen_ms.max(last);
                snap.status_at_ms = Some(last);
                snap.battery_pct = get("battery_pct").and_then(|v| v.parse().ok());
                snap.rssi_dbm = get("rssi_dbm").and_then(|v| v.parse().ok());
                snap.rsrp_dbm = get("rsrp_dbm").and_then(|v| v.parse().ok());
                snap.snr_db = get("snr_db").and_then(|v| v.parse().ok());
                snap.firmware = get("firmware").map(str::to_string);
                snap.error_flags = get("error_flags").and_then(|v| v.parse().ok());
            }
            _ => {}
        }
    }

    fn finish(&mut self) {
        if let Some(mut snap) = self.current.take() {
            if snap.first_seen_ms == i64::MAX {
                snap.first_seen_ms = snap.last_seen_ms;
            }
            self.done.push(snap);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_fold_channels_and_status_per_meter() {
        let names: Vec<String> = "meter_id kind channel unit n first_ms last_ms last_ts_ms last_value source format battery_pct rssi_dbm rsrp_dbm snr_db firmware error_flags"
            .split(' ')
            .map(String::from)
            .collect();
        let row = |line: &str| line.split('|').map(String::from).collect::<Vec<_>>();
        let mut f = SnapshotFolder::default();
        for line in [
            "m1|r|a|kWh|3|1000|5000|4000|1.5|mqtt|pb||||||",
            "m1|r|b|V|2|2000|6000|6000|230|coap|json||||||",
            "m1|s|||||7000|||||80|-70|||1.2|",
            "m2|s|||||9000||||||||||4",
        ] {
            f.row(&names, row(line));
        }
        f.finish();
        let snaps = f.done;
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
        let t = Table::from_tsv("a\tb\n1\tx\\ty\n2\t\\\\n\n3\t\\N\n");
        assert_eq!(t.columns, vec!["a", "b"]);
        // ClickHouse's NULL is an empty cell, not "N".
        assert_eq!(
            t.rows,
            vec![vec!["1", "x\ty"], vec!["2", "\\n"], vec!["3", ""]]
        );
        assert_eq!(t.get(1, "b"), Some("\\n"));
    }

    #[test]
    fn the_sql_has_no_placeholder_left_and_meter_ids_are_checked() {
        let sql = device_state_sql("mf", 7, Some("m-1"), TimeColumns::Seconds).unwrap();
        let code: String = sql
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect();
        assert!(!code.contains('{'), "{code}");
        assert!(code.contains("meter_id = 'm-1'"));
        assert!(device_state_sql("mf", 7, Some("x' OR 1=1 --"), TimeColumns::Seconds).is_err());
        assert!(recent_readings_sql("mf", "x'", 2, 7, TimeColumns::Millis).is_err());
    }
}
