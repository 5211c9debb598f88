//! `meterflow query anomalies` and `devices`, answered in Rust over what the read model
//! delivers ([`crate::readings`]: series, channel summaries; [`crate::status`]: status
//! reports). Both sources (the Parquet tree, ClickHouse) deliver the same rows, and one
//! implementation makes the answers the same, byte for byte. Pure functions: the caller
//! brings the rows, the instant called "now" and how a time is printed (its zone).
//!
//! Anomalies in `[from, to)`, one row each (`meter_id, channel, kind, at, detail`):
//! - `reverse_run`: a cumulative register fell, but not to below 1 % of the value before (a
//!   step billing adds nothing for);
//! - `register_reset`: a cumulative register fell to below 1 % of the value before, or went
//!   round its `[[billing.rollover]]` maximum (a reset or a wrap: billing counts on from the
//!   new value). Falls are classified by billing's own rule
//!   ([`meterflow_billing::register::step`]), so the two never disagree;
//! - `zero_consumption`: a consumption register (import 1.8.x, gas and water volumes 24.2.x,
//!   DSMR 3 gas 24.3.0; not export 2.8.x) did not move over at least `zero_days` days of
//!   readings in the period;
//! - `spike`: a step (a register's increase, or an interval channel's value) above
//!   `spike_factor` × the median step of that channel in the period (at least 8 steps, a
//!   median above 0);
//! - `missing_intervals`: a gap of more than one quarter hour in an interval channel (x.29.x);
//! - `error_flags`: a status report with error flags set whose own time is in the period;
//! - `stale`: a meter whose newest reading (by the reading's own time, any channel) before the
//!   end of the period is at least `stale_s` older than the end of the period, or than now
//!   when the period ends later; only readings of the [`STALE_LOOK_BACK_MS`] (30 days) before
//!   that silence are read ([`AnomalyQuestion::stale_since_ms`]), so a meter silent for longer
//!   is not listed (`query devices --stale-after` lists every one, reading all history).
//!
//! Readings inside the period count, and for a fall also the reading just before it (a
//! series read with the reading before brings it; `query anomalies` looks for it at most
//! [`FALL_LOOK_BACK_MS`] back): a fall from the last reading before `from` to the first
//! inside is the period's, dated at the reading inside. `zero_consumption`, `spike` and
//! `missing_intervals` look at the readings inside only. The rules are those of the SQL they
//! replace (`storage/sql/anomalies.sql` before issue 21), with the fixes of that issue.

use std::collections::BTreeMap;

use meterflow_billing::register::{step, Step};

use crate::analytics::Table;
use crate::clickhouse::StatusRow;
use crate::readings::summary::ChannelSummary;
use crate::readings::{
    is_consumption_register, is_cumulative_register, is_interval_channel, Series,
};

/// How far before the period a fall across its start is judged from: the reading before
/// `from` is looked for this far back at most (so that a meter new in the period does not
/// make the read go through the whole history).
pub const FALL_LOOK_BACK_MS: i64 = 7 * 86_400_000;

/// How far before the silence that makes a meter stale its newest reading is looked for: a
/// meter silent for longer than `stale_s` and this is not listed by `stale` (so that a
/// question about last week does not read all history).
pub const STALE_LOOK_BACK_MS: i64 = 30 * 86_400_000;
/// An interval channel's step.
const QUARTER_HOUR_MS: i64 = 900_000;
/// Steps a median needs before a spike is judged against it.
const MIN_STEPS: usize = 8;

/// Thresholds of the anomaly checks.
#[derive(Debug, Clone)]
pub struct AnomalyRules {
    /// A consumption register that has not moved for this many days.
    pub zero_days: u32,
    /// A step above this many times the channel's median step.
    pub spike_factor: f64,
    /// A meter without a reading for this many seconds.
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

/// The columns of `query anomalies`.
pub const ANOMALY_COLUMNS: [&str; 5] = ["meter_id", "channel", "kind", "at", "detail"];
/// The columns of `query devices`.
pub const DEVICE_COLUMNS: [&str; 10] = [
    "meter_id",
    "last_seen",
    "seconds_since",
    "readings",
    "battery_pct",
    "rssi_dbm",
    "rsrp_dbm",
    "firmware",
    "error_flags",
    "last_values",
];

/// A number as printed: rounded to 6 decimals, no trailing zeros, never `-0`.
pub fn number(x: f64) -> String {
    if !x.is_finite() {
        return format!("{x}");
    }
    let rounded = (x * 1e6).round() / 1e6;
    if rounded == 0.0 {
        "0".into()
    } else {
        format!("{rounded}")
    }
}

/// One anomaly.
#[derive(Debug, Clone, PartialEq)]
pub struct Anomaly {
    pub meter_id: String,
    pub channel: String,
    pub kind: &'static str,
    pub at_ms: i64,
    pub detail: String,
}

/// What the anomalies of a period are found in.
pub struct AnomalyQuestion<'a> {
    /// `[from, to)`, Unix ms.
    pub from_ms: i64,
    pub to_ms: i64,
    pub rules: &'a AnomalyRules,
    /// The instant called now, Unix ms.
    pub now_ms: i64,
    /// How a time is printed (RFC 3339 in the zone asked for).
    pub time: &'a dyn Fn(i64) -> String,
    /// The rollover maximum of a register (meter, channel), as `[[billing.rollover]]` says.
    pub rollover: &'a dyn Fn(&str, &str) -> Option<f64>,
}

impl AnomalyQuestion<'_> {
    /// The earliest reading `stale` reads: [`STALE_LOOK_BACK_MS`] before the reference instant
    /// less the silence that makes a meter stale.
    pub fn stale_since_ms(&self) -> i64 {
        let stale_ms = i64::try_from(self.rules.stale_s)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000);
        self.stale_reference_ms()
            .saturating_sub(stale_ms)
            .saturating_sub(STALE_LOOK_BACK_MS)
    }

    /// The reference instant of `stale`: the end of the period, or now when that is earlier.
    pub fn stale_reference_ms(&self) -> i64 {
        self.to_ms.min(self.now_ms)
    }

    /// The anomalies of one series (a cumulative register or an interval channel; its
    /// readings in the period are used, whatever else it holds).
    pub fn series(&self, series: &Series, out: &mut Vec<Anomaly>) {
        let points: Vec<(i64, f64)> = series
            .points
            .iter()
            .copied()
            .filter(|&(ts, _)| self.from_ms <= ts && ts < self.to_ms)
            .collect();
        if points.is_empty() {
            return;
        }
        // The reading before the period, when the series brings it (read with neighbours):
        // the step from it to the first reading inside is a step of the period.
        let before = series
            .points
            .iter()
            .copied()
            .take_while(|&(ts, _)| ts < self.from_ms)
            .last();
        let interval = is_interval_channel(&series.channel);
        let register = !interval && is_cumulative_register(&series.channel);
        let mut push = |kind: &'static str, at_ms: i64, detail: String| {
            out.push(Anomaly {
                meter_id: series.meter_id.clone(),
                channel: series.channel.clone(),
                kind,
                at_ms,
                detail,
            })
        };
        let unit = &series.unit;
        let rollover = (self.rollover)(&series.meter_id, &series.channel);
        if register {
            let with_before: Vec<(i64, f64)> =
                before.into_iter().chain(points.iter().copied()).collect();
            for w in with_before.windows(2) {
                let ((_, before), (at, value)) = (w[0], w[1]);
                let fell = format!("fell from {} to {} {unit}", number(before), number(value));
                match step(before, value, rollover) {
                    Step::Rise(_) => {}
                    Step::Reset(_) => push("register_reset", at, fell),
                    Step::Wrap(added) => push(
                        "register_reset",
                        at,
                        format!(
                            "went round its maximum {} from {} to {} {unit} ({} {unit} counted)",
                            number(rollover.unwrap_or_default()),
                            number(before),
                            number(value),
                            number(added)
                        ),
                    ),
                    Step::Reverse => push("reverse_run", at, fell),
                }
            }
            if let (true, Some(&(first_ts, first)), Some(&(last_ts, _))) = (
                is_consumption_register(&series.channel) && points.len() >= 2,
                points.first(),
                points.last(),
            ) {
                let still = points.iter().all(|&(_, v)| v == first);
                let long = last_ts - first_ts >= i64::from(self.rules.zero_days) * 86_400_000;
                if still && long {
                    push(
                        "zero_consumption",
                        first_ts,
                        format!(
                            "no change from {} to {} ({} {unit})",
                            (self.time)(first_ts),
                            (self.time)(last_ts),
                            number(first)
                        ),
                    );
                }
            }
        }
        if register || interval {
            // The steps after the first reading: what billing adds for a register's step (a
            // reverse run 0, a reset the new value, a wrap the way round), an interval
            // channel's values.
            let steps: Vec<(i64, f64)> = points
                .windows(2)
                .map(|w| {
                    let added = if interval {
                        w[1].1
                    } else {
                        step(w[0].1, w[1].1, rollover).consumption()
                    };
                    (w[1].0, added)
                })
                .collect();
            if steps.len() >= MIN_STEPS {
                let mut sorted: Vec<f64> = steps.iter().map(|s| s.1).collect();
                sorted.sort_by(f64::total_cmp);
                // The upper median (ClickHouse's quantileExact(0.5)).
                let median = sorted[sorted.len() / 2];
                if median > 0.0 {
                    for &(at, step) in &steps {
                        if step > self.rules.spike_factor * median && step > 0.0 {
                            push(
                                "spike",
                                at,
                                format!(
                                    "step {} {unit} against a median of {}",
                                    number(step),
                                    number(median)
                                ),
                            );
                        }
                    }
                }
            }
        }
        if interval {
            for w in points.windows(2) {
                let gap = w[1].0 - w[0].0;
                if gap > QUARTER_HOUR_MS {
                    push(
                        "missing_intervals",
                        w[0].0,
                        format!(
                            "{} quarter-hour value(s) missing after {}",
                            gap / QUARTER_HOUR_MS - 1,
                            (self.time)(w[0].0)
                        ),
                    );
                }
            }
        }
    }

    /// The status reports with error flags set whose own time is in the period (one row per
    /// meter, time and flags).
    pub fn error_flags(&self, reports: &[StatusRow], out: &mut Vec<Anomaly>) {
        let mut seen = std::collections::BTreeSet::new();
        for r in reports {
            let Some(flags) = r.error_flags.filter(|f| *f > 0) else {
                continue;
            };
            let ts = r.own_time_ms();
            if ts < self.from_ms || ts >= self.to_ms {
                continue;
            }
            if seen.insert((r.meter_id.clone(), ts, flags)) {
                out.push(Anomaly {
                    meter_id: r.meter_id.clone(),
                    channel: String::new(),
                    kind: "error_flags",
                    at_ms: ts,
                    detail: format!("error flags {flags}"),
                });
            }
        }
    }

    /// The stale meters among the summaries of the readings before the end of the period.
    pub fn stale(&self, summaries: &[ChannelSummary], out: &mut Vec<Anomaly>) {
        self.stale_by(summaries, &|_| None, &[], out);
    }

    /// [`AnomalyQuestion::stale`], each meter by its own silence when `stale_after_s` gives
    /// one (the meter registry's interval), and each of `expected` (the registry's meters)
    /// without any reading in the look-back stale too.
    pub fn stale_by(
        &self,
        summaries: &[ChannelSummary],
        stale_after_s: &dyn Fn(&str) -> Option<u64>,
        expected: &[&str],
        out: &mut Vec<Anomaly>,
    ) {
        let reference = self.stale_reference_ms();
        let mut newest: BTreeMap<&str, i64> = BTreeMap::new();
        for s in summaries {
            let e = newest.entry(&s.meter_id).or_insert(i64::MIN);
            *e = (*e).max(s.last_ts_ms);
        }
        let ms = |s: u64| i64::try_from(s).unwrap_or(i64::MAX).saturating_mul(1000);
        for (meter, last) in &newest {
            let silent = reference.saturating_sub(*last);
            let stale_ms = ms(stale_after_s(meter).unwrap_or(self.rules.stale_s));
            if silent >= stale_ms {
                out.push(Anomaly {
                    meter_id: meter.to_string(),
                    channel: String::new(),
                    kind: "stale",
                    at_ms: *last,
                    detail: format!(
                        "no reading for {} s before {}",
                        silent / 1000,
                        (self.time)(reference)
                    ),
                });
            }
        }
        for meter in expected.iter().filter(|m| !newest.contains_key(**m)) {
            out.push(Anomaly {
                meter_id: meter.to_string(),
                channel: String::new(),
                kind: "stale",
                at_ms: self.stale_since_ms(),
                detail: format!(
                    "in the meter registry, no reading from {} to {}",
                    (self.time)(self.stale_since_ms()),
                    (self.time)(reference)
                ),
            });
        }
    }

    /// The anomalies as a table, ordered by meter, channel, time, kind and detail.
    pub fn table(&self, mut rows: Vec<Anomaly>) -> Table {
        rows.sort_by(|a, b| {
            (
                a.meter_id.as_bytes(),
                a.channel.as_bytes(),
                a.at_ms,
                a.kind,
                &a.detail,
            )
                .cmp(&(
                    b.meter_id.as_bytes(),
                    b.channel.as_bytes(),
                    b.at_ms,
                    b.kind,
                    &b.detail,
                ))
        });
        Table {
            columns: ANOMALY_COLUMNS.iter().map(|c| c.to_string()).collect(),
            rows: rows
                .into_iter()
                .map(|a| {
                    vec![
                        a.meter_id,
                        a.channel,
                        a.kind.to_string(),
                        (self.time)(a.at_ms),
                        a.detail,
                    ]
                })
                .collect(),
        }
    }
}

/// `query devices`: per meter with readings, when meterflow last received one (to the
/// second), the seconds since (0 for a time ahead of now), its readings (one per channel
/// and time), the newest value of each of its fields of status (each the newest report that
/// carried it, by arrival: `(at, lsn)`, as [`crate::status::StatusView::Latest`] gives them),
/// and every channel's newest reading (`channel=value
/// unit @ time`, by channel, `; ` between). Only meters silent for at least `stale_s` seconds
/// (0: all). `summaries` in (meter, channel) order; `reports` in (meter, at, lsn) order.
pub fn devices(
    summaries: &[ChannelSummary],
    reports: &[StatusRow],
    stale_s: u64,
    now_ms: i64,
    time: &dyn Fn(i64) -> String,
) -> Table {
    #[derive(Default)]
    struct Fields {
        battery_pct: Option<u8>,
        rssi_dbm: Option<i32>,
        rsrp_dbm: Option<i32>,
        firmware: Option<String>,
        error_flags: Option<u32>,
    }
    let mut status: BTreeMap<&str, Fields> = BTreeMap::new();
    for r in reports {
        // In (meter, at, lsn) order: a later report's field wins where it has one.
        let f = status.entry(&r.meter_id).or_default();
        f.battery_pct = r.battery_pct.or(f.battery_pct);
        f.rssi_dbm = r.rssi_dbm.or(f.rssi_dbm);
        f.rsrp_dbm = r.rsrp_dbm.or(f.rsrp_dbm);
        f.firmware = r.firmware.clone().or(f.firmware.take());
        f.error_flags = r.error_flags.or(f.error_flags);
    }
    let seconds = |ms: i64| ms.div_euclid(1000);
    let mut rows = Vec::new();
    let mut start = 0;
    while start < summaries.len() {
        let meter = &summaries[start].meter_id;
        let end = summaries[start..]
            .iter()
            .position(|s| &s.meter_id != meter)
            .map_or(summaries.len(), |n| start + n);
        let channels = &summaries[start..end];
        start = end;
        let last_received = channels
            .iter()
            .map(|c| c.last_received_ms)
            .max()
            .unwrap_or(0);
        let since = (seconds(now_ms) - seconds(last_received)).max(0);
        if u64::try_from(since).unwrap_or(0) < stale_s {
            continue;
        }
        let mut values: Vec<String> = channels
            .iter()
            .map(|c| {
                format!(
                    "{}={} {} @ {}",
                    c.channel,
                    number(c.last_value),
                    c.unit,
                    time(c.last_ts_ms)
                )
            })
            .collect();
        values.sort();
        let f = status.get(meter.as_str());
        let cell = |v: Option<String>| v.unwrap_or_default();
        rows.push(vec![
            meter.clone(),
            time(seconds(last_received) * 1000),
            since.to_string(),
            channels.iter().map(|c| c.readings).sum::<u64>().to_string(),
            cell(f.and_then(|f| f.battery_pct).map(|v| v.to_string())),
            cell(f.and_then(|f| f.rssi_dbm).map(|v| v.to_string())),
            cell(f.and_then(|f| f.rsrp_dbm).map(|v| v.to_string())),
            cell(f.and_then(|f| f.firmware.clone())),
            cell(f.and_then(|f| f.error_flags).map(|v| v.to_string())),
            values.join("; "),
        ]);
    }
    Table {
        columns: DEVICE_COLUMNS.iter().map(|c| c.to_string()).collect(),
        rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;
    const D: i64 = 24 * H;

    fn series(meter: &str, channel: &str, unit: &str, points: &[(i64, f64)]) -> Series {
        Series {
            meter_id: meter.into(),
            channel: channel.into(),
            unit: unit.into(),
            points: points.to_vec(),
            other_units: Vec::new(),
            received_at: Vec::new(),
            conflicts: Vec::new(),
        }
    }

    fn utc(ms: i64) -> String {
        chrono::DateTime::from_timestamp_millis(ms)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default()
    }

    fn question(rules: &AnomalyRules) -> AnomalyQuestion<'_> {
        AnomalyQuestion {
            from_ms: 0,
            to_ms: 10 * D,
            rules,
            now_ms: 100 * D,
            time: &utc,
            rollover: &|_, _| None,
        }
    }

    fn kinds(rows: &[Anomaly]) -> Vec<(&str, &str, i64)> {
        rows.iter()
            .map(|a| (a.channel.as_str(), a.kind, a.at_ms))
            .collect()
    }

    #[test]
    fn falls_are_resets_below_one_percent_else_reverse_runs() {
        let rules = AnomalyRules::default();
        let q = question(&rules);
        let mut out = Vec::new();
        q.series(
            &series(
                "m",
                "1-0:1.8.1",
                "kWh",
                &[
                    (0, 1000.0),
                    (H, 999.0),
                    (2 * H, 9.99),
                    (3 * H, 10.0),
                    (4 * H, 0.099),
                ],
            ),
            &mut out,
        );
        assert_eq!(
            kinds(&out),
            [
                ("1-0:1.8.1", "reverse_run", H),
                ("1-0:1.8.1", "reverse_run", 2 * H),
                ("1-0:1.8.1", "register_reset", 4 * H)
            ],
            "9.99 is not below 1 % of 999; 0.099 is below 1 % of 10"
        );
        assert_eq!(out[2].detail, "fell from 10 to 0.099 kWh");
    }

    #[test]
    fn a_fall_through_a_rollover_maximum_is_a_reset_as_billing_counts_it() {
        let rules = AnomalyRules::default();
        let gas = |meter: &str, channel: &str| {
            (meter == "g" && channel == "0-1:24.2.1").then_some(100_000.0)
        };
        let q = AnomalyQuestion {
            rollover: &gas,
            ..question(&rules)
        };
        let points = [(0, 99_990.0), (H, 1_200.0), (2 * H, 1_100.0)];
        let mut out = Vec::new();
        q.series(&series("g", "0-1:24.2.1", "m3", &points), &mut out);
        assert_eq!(
            kinds(&out),
            [
                ("0-1:24.2.1", "register_reset", H),
                ("0-1:24.2.1", "reverse_run", 2 * H)
            ]
        );
        assert_eq!(
            out[0].detail,
            "went round its maximum 100000 from 99990 to 1200 m3 (1210 m3 counted)"
        );
        // Another meter without the rule: the same fall is a reverse run (1200 is not
        // below 1 % of 99990).
        let mut out = Vec::new();
        q.series(&series("h", "0-1:24.2.1", "m3", &points), &mut out);
        assert_eq!(kinds(&out)[0], ("0-1:24.2.1", "reverse_run", H));
    }

    #[test]
    fn zero_consumption_on_every_consumption_register_not_export() {
        let rules = AnomalyRules::default();
        let q = question(&rules);
        let flat = [(0, 5.0), (2 * D, 5.0), (4 * D, 5.0)];
        let mut out = Vec::new();
        for channel in ["1-0:1.8.0", "0-1:24.2.1", "0-1:24.3.0", "1-0:2.8.0"] {
            q.series(&series("m", channel, "m3", &flat), &mut out);
        }
        // Three days less a millisecond is not three days.
        q.series(
            &series("m", "0-2:24.2.1", "m3", &[(0, 5.0), (3 * D - 1, 5.0)]),
            &mut out,
        );
        assert_eq!(
            kinds(&out),
            [
                ("1-0:1.8.0", "zero_consumption", 0),
                ("0-1:24.2.1", "zero_consumption", 0),
                ("0-1:24.3.0", "zero_consumption", 0)
            ]
        );
        assert_eq!(
            out[1].detail,
            "no change from 1970-01-01T00:00:00+00:00 to 1970-01-05T00:00:00+00:00 (5 m3)"
        );
    }

    #[test]
    fn spikes_against_the_upper_median_and_gaps_in_quarter_hours() {
        let rules = AnomalyRules::default();
        let q = question(&rules);
        let q15 = QUARTER_HOUR_MS;
        // Values 1, 1, ..., one 6 (not above 5 x 1) and one 5.5 (above): 10 values, a gap.
        let mut points: Vec<(i64, f64)> = (0..10).map(|i| (i * q15, 1.0)).collect();
        points[4].1 = 5.0;
        points[7].1 = 5.5;
        points[9].0 = 12 * q15;
        let mut out = Vec::new();
        q.series(&series("m", "1-0:1.29.0", "kWh", &points), &mut out);
        assert_eq!(
            kinds(&out),
            [
                ("1-0:1.29.0", "spike", 7 * q15),
                ("1-0:1.29.0", "missing_intervals", 8 * q15)
            ]
        );
        assert_eq!(
            out[1].detail,
            "3 quarter-hour value(s) missing after 1970-01-01T02:00:00+00:00"
        );
        // Seven steps are too few.
        let mut out = Vec::new();
        q.series(&series("m", "1-0:1.29.0", "kWh", &points[..8]), &mut out);
        assert!(out.is_empty(), "{out:?}");
        // A fall from the reading before the period to the first inside is the period's,
        // dated inside; one to the reading after the period is not.
        let mut out = Vec::new();
        q.series(
            &series(
                "m",
                "1-0:1.8.0",
                "kWh",
                &[(-2 * H, 1.0), (-H, 9.0), (0, 5.0), (10 * D, 1.0)],
            ),
            &mut out,
        );
        assert_eq!(kinds(&out), [("1-0:1.8.0", "reverse_run", 0)]);
        assert_eq!(out[0].detail, "fell from 9 to 5 kWh");
    }

    #[test]
    fn error_flags_by_their_own_time_and_stale_meters_by_their_newest_reading() {
        let rules = AnomalyRules {
            stale_s: 86_400,
            ..AnomalyRules::default()
        };
        let q = question(&rules);
        // Received an hour after their own time: the own time counts.
        let report = |meter: &str, ts_ms: i64, flags: Option<u32>, lsn: u64| StatusRow {
            meter_id: meter.into(),
            at_ms: ts_ms + H,
            ts_ms,
            error_flags: flags,
            lsn,
            ..StatusRow::default()
        };
        let mut out = Vec::new();
        q.error_flags(
            &[
                report("a", 10 * D - 1000, Some(4), 1),
                report("a", 10 * D - 1000, Some(4), 2),
                report("a", 10 * D, Some(4), 3),
                report("b", H, Some(0), 4),
                report("c", H, None, 5),
            ],
            &mut out,
        );
        assert_eq!(kinds(&out), [("", "error_flags", 10 * D - 1000)]);
        let summary = |meter: &str, channel: &str, last_ts_ms: i64| ChannelSummary {
            meter_id: meter.into(),
            channel: channel.into(),
            unit: "kWh".into(),
            readings: 1,
            last_ts_ms,
            last_value: 1.0,
            last_received_ms: 99 * D,
        };
        let mut out = Vec::new();
        q.stale(
            &[
                summary("a", "x", 9 * D),
                summary("a", "y", 8 * D),
                summary("b", "x", 9 * D + 1),
            ],
            &mut out,
        );
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!((out[0].meter_id.as_str(), out[0].at_ms), ("a", 9 * D));
        assert_eq!(
            out[0].detail,
            "no reading for 86400 s before 1970-01-11T00:00:00+00:00"
        );
        let table = q.table(vec![
            out[0].clone(),
            Anomaly {
                meter_id: "a".into(),
                channel: String::new(),
                kind: "error_flags",
                at_ms: 0,
                detail: String::new(),
            },
        ]);
        assert_eq!(
            table.rows[0][2], "error_flags",
            "by time within a meter and channel"
        );
    }

    #[test]
    fn devices_take_each_field_from_the_newest_report_that_has_it() {
        let s = |meter: &str, channel: &str, value: f64, received: i64| ChannelSummary {
            meter_id: meter.into(),
            channel: channel.into(),
            unit: "kWh".into(),
            readings: 2,
            last_ts_ms: 1_000,
            last_value: value,
            last_received_ms: received,
        };
        let summaries = [
            s("a", "1-0:2.8.0", 0.5, 5_999),
            s("a", "1-0:1.8.0", 12.25, 3_000),
            s("b", "1-0:1.8.0", 1.0, 9_000),
        ];
        let reports = [
            StatusRow {
                meter_id: "a".into(),
                at_ms: 1_000,
                battery_pct: Some(87),
                rssi_dbm: Some(-71),
                firmware: Some("4.2.17".into()),
                error_flags: Some(0),
                ..StatusRow::default()
            },
            StatusRow {
                meter_id: "a".into(),
                at_ms: 2_000,
                rssi_dbm: Some(-75),
                firmware: Some("4.2.18".into()),
                ..StatusRow::default()
            },
        ];
        let t = devices(&summaries, &reports, 0, 10_500, &utc);
        assert_eq!(t.rows.len(), 2);
        assert_eq!(
            t.rows[0],
            [
                "a",
                "1970-01-01T00:00:05+00:00",
                "5",
                "4",
                "87",
                "-75",
                "",
                "4.2.18",
                "0",
                "1-0:1.8.0=12.25 kWh @ 1970-01-01T00:00:01+00:00; 1-0:2.8.0=0.5 kWh @ 1970-01-01T00:00:01+00:00"
            ]
        );
        assert_eq!(t.rows[1][4], "", "no status: empty cells");
        let stale = devices(&summaries, &reports, 3, 10_500, &utc);
        assert_eq!(stale.rows.len(), 1);
        assert_eq!(stale.rows[0][0], "a");
        // A clock ahead of now reads as just heard.
        let ahead = devices(&summaries, &reports, 0, 1_000, &utc);
        assert_eq!(ahead.rows[1][2], "0");
    }
}
