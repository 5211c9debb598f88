//! Each channel's summary, all channels of all meters (or one): how many readings it has
//! (one per `ts`), its newest reading (the copy that counts, as in the series: greatest
//! `received_at`, then value, then unit) and when meterflow last received one of its
//! readings. `query devices` (last seen, newest values) and the `stale` anomaly (a meter's
//! newest reading) run on it. Readings whose value is not a number are not read (as in the
//! series). The same summaries from the Parquet tree (every date folder between the bounds:
//! without `since`, as `query devices` asks, the whole history is read, columns meter_id,
//! channel, ts, value, unit, received_at, but only a running summary per channel is kept,
//! and for the count the times
//! of one date folder at a time: a reading's folder is its date, so its copies meet there)
//! and from ClickHouse (one query, deduplicating by itself as the series do; the count,
//! `uniqExact(ts)`, only when asked for).
//!
//! ClickHouse before 20.5 keeps `ts` and `received_at` in whole seconds: there the times are
//! whole seconds (on data with whole-second times both sources agree exactly).

use std::path::Path;

use crate::clickhouse::ClickHouseConfig;
use crate::StorageError;

/// Which readings to summarise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SummaryRequest {
    /// One meter (a valid meter id), or all.
    pub meter: Option<String>,
    /// Only readings with `ts` before this (Unix ms); all when `None`.
    pub before_ms: Option<i64>,
    /// Only readings with `ts` at or after this (Unix ms); all when `None`. Bounds what is
    /// read (on Parquet the date folders, on ClickHouse the partitions).
    pub since_ms: Option<i64>,
    /// Whether the readings are counted ([`ChannelSummary::readings`]; 0 when not). Counting
    /// one per `ts` costs a set of times (on Parquet one date folder's, on ClickHouse every
    /// time asked for): `stale` does without, `devices` asks for it.
    pub count: bool,
}

impl SummaryRequest {
    pub(crate) fn validate(&self) -> Result<(), StorageError> {
        match &self.meter {
            Some(m) if !meterflow_proto::is_valid_meter_id(m) => Err(StorageError::ReadRequest {
                reason: format!("{m:?} is not a meter id (1 to 64 of [A-Za-z0-9._-])"),
            }),
            _ => Ok(()),
        }
    }
}

/// One channel of one meter.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelSummary {
    pub meter_id: String,
    pub channel: String,
    /// The unit of the newest reading.
    pub unit: String,
    /// Readings, one per `ts` (0 when the request did not ask to count).
    pub readings: u64,
    pub last_ts_ms: i64,
    pub last_value: f64,
    /// The greatest `received_at` of its readings, Unix ms.
    pub last_received_ms: i64,
}

/// The summaries of `req` from the Parquet tree under `data_dir`, in (meter_id, channel) byte
/// order. A `data_dir` without a `readings` folder is an error.
pub fn read_parquet(
    data_dir: &Path,
    req: &SummaryRequest,
) -> Result<Vec<ChannelSummary>, StorageError> {
    super::parquet::summaries(data_dir, req)
}

/// The SQL of [`read_clickhouse`] (TabSeparatedWithNames), for `readings` tables of either
/// kind: times become Unix milliseconds through Float64 (`DateTime` and `DateTime64` alike,
/// exact to the millisecond for any date a meter sends), so one query, and no question
/// about the table first.
#[doc(hidden)]
pub fn clickhouse_sql(db: &str, req: &SummaryRequest) -> Result<String, StorageError> {
    req.validate()?;
    let ms = |column: &str| format!("toInt64(round(toFloat64({column}) * 1000))");
    let mut filter = String::new();
    if let Some(m) = &req.meter {
        filter.push_str(&format!(" AND meter_id = '{m}'"));
    }
    // Each bound twice: in whole seconds on the column itself (a superset, which lets the
    // server skip partitions on either kind of column), and exactly in milliseconds.
    // (The coarse one only inside what `DateTime` holds: clamped, it would not be a superset
    // on a `DateTime64` column.)
    let date_time = 0..=i64::from(u32::MAX);
    if let Some(before) = req.before_ms {
        let s = before.div_euclid(1000) + i64::from(before.rem_euclid(1000) != 0);
        if date_time.contains(&s) {
            filter.push_str(&format!(" AND ts < toDateTime({s})"));
        }
        filter.push_str(&format!(" AND {} < {before}", ms("ts")));
    }
    if let Some(since) = req.since_ms {
        let s = since.div_euclid(1000);
        if date_time.contains(&s) {
            filter.push_str(&format!(" AND ts >= toDateTime({s})"));
        }
        filter.push_str(&format!(" AND {} >= {since}", ms("ts")));
    }
    // Not FINAL: the copy that counts is chosen here as on Parquet (argMax on the same order).
    Ok(format!(
        "SELECT meter_id, channel, \
           argMax(unit, (ts, received_at, value, unit)) AS unit, \
           {readings} AS readings, \
           {last_ts} AS last_ts_ms, \
           argMax(value, (ts, received_at, value)) AS last_value, \
           {last_received} AS last_received_ms \
         FROM {db}.readings WHERE isFinite(value){filter} \
         GROUP BY meter_id, channel ORDER BY meter_id, channel",
        readings = if req.count { "uniqExact(ts)" } else { "0" },
        last_ts = ms("max(ts)"),
        last_received = ms("max(received_at)"),
    ))
}

/// The summaries in an answer to [`clickhouse_sql`], in (meter_id, channel) byte order.
#[doc(hidden)]
pub fn from_tsv(text: &str) -> Result<Vec<ChannelSummary>, StorageError> {
    let table = crate::analytics::Table::from_tsv(text);
    let mut out = Vec::with_capacity(table.rows.len());
    for i in 0..table.rows.len() {
        let bad = |column: &str| StorageError::ClickHouseAnswer {
            action: "reading the channels' summaries",
            offset: i as u64,
            reason: format!("column {column} of row {i} is missing or does not parse"),
        };
        let text = |c: &'static str| table.get(i, c).ok_or_else(|| bad(c));
        let number = |c: &'static str| text(c)?.parse::<i64>().map_err(|_| bad(c));
        out.push(ChannelSummary {
            meter_id: text("meter_id")?.to_string(),
            channel: text("channel")?.to_string(),
            unit: text("unit")?.to_string(),
            readings: text("readings")?.parse().map_err(|_| bad("readings"))?,
            last_ts_ms: number("last_ts_ms")?,
            last_value: parse_float(text("last_value")?).ok_or_else(|| bad("last_value"))?,
            last_received_ms: number("last_received_ms")?,
        });
    }
    out.sort_by(|a, b| {
        (a.meter_id.as_bytes(), a.channel.as_bytes())
            .cmp(&(b.meter_id.as_bytes(), b.channel.as_bytes()))
    });
    Ok(out)
}

/// A Float64 as ClickHouse prints it (`inf`, `-inf`, `nan` included).
fn parse_float(text: &str) -> Option<f64> {
    match text {
        "inf" | "+inf" => Some(f64::INFINITY),
        "-inf" => Some(f64::NEG_INFINITY),
        "nan" | "-nan" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

/// The summaries of `req` from ClickHouse's `readings`, as [`read_parquet`] gives them.
pub async fn read_clickhouse(
    config: &ClickHouseConfig,
    req: &SummaryRequest,
) -> Result<Vec<ChannelSummary>, StorageError> {
    let sql = clickhouse_sql(&config.database, req)?;
    from_tsv(&crate::analytics::run_text(config, &sql).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_and_the_sql_is_bounded() {
        let rows = from_tsv(
            "meter_id\tchannel\tunit\treadings\tlast_ts_ms\tlast_value\tlast_received_ms\n\
             b\tx\tkWh\t3\t2000\t1.5\t3000\n\
             a\ty\tV\t1\t1000\t-inf\t1000\n",
        )
        .unwrap();
        assert_eq!(rows[0].meter_id, "a");
        assert_eq!(rows[0].last_value, f64::NEG_INFINITY);
        assert_eq!((rows[1].readings, rows[1].last_ts_ms), (3, 2000));
        assert!(from_tsv("meter_id\tchannel\na\tb\n").is_err());
        let req = SummaryRequest {
            meter: Some("m-1".into()),
            before_ms: Some(5_500),
            since_ms: Some(-1_500),
            count: false,
        };
        let sql = clickhouse_sql("mf", &req).unwrap();
        assert!(!sql.contains("uniq"), "stale needs no set of times: {sql}");
        let counted = SummaryRequest {
            count: true,
            ..req.clone()
        };
        assert!(clickhouse_sql("mf", &counted)
            .unwrap()
            .contains("uniqExact(ts)"));
        assert!(
            sql.contains("meter_id = 'm-1'")
                && sql
                    .contains("ts < toDateTime(6) AND toInt64(round(toFloat64(ts) * 1000)) < 5500")
                // Before 1970 `DateTime` holds nothing: no whole-second bound, the exact one.
                && !sql.contains("ts >= toDateTime(")
                && sql.contains("toInt64(round(toFloat64(ts) * 1000)) >= -1500")
                && sql.contains("WHERE isFinite(value)"),
            "{sql}"
        );
        let bad = SummaryRequest {
            meter: Some("x'".into()),
            before_ms: None,
            since_ms: None,
            count: true,
        };
        assert!(clickhouse_sql("mf", &bad).is_err());
    }
}
