//! A bill: for each register of each meter, R at the period's edges, the consumption between
//! them (the steps of R from `from` to `to`, readings inside included), spread over the
//! tariff's periods, and the largest quarter hour.
//!
//! Time-of-use: the consumption of each step of R (between two consecutive values: R(from),
//! the readings inside, R(to)) is spread evenly over the time between them and split where
//! the period changes (in local time). Max demand: the consumption of each local quarter hour
//! wholly inside the period, from R at its edges (as the rows' start and end are found), × 4,
//! for energy registers (kWh; Wh and MWh converted), in the period its start belongs to. Every
//! zone's offset today is a whole number of quarter hours, so local quarter hours start where
//! UTC ones do.

use crate::clock::Zone;
use crate::register::{step, value_at, ReadKind, Reading, Value};
use crate::tariff::{Tariff, Timeline};

/// What is asked: the period, its zone, the tariff and the rules of registers.
#[derive(Debug, Clone)]
pub struct Query {
    /// `[from, to)`, Unix ms.
    pub from_ms: i64,
    pub to_ms: i64,
    pub zone: Zone,
    pub tariff: Option<Tariff>,
    /// `billing.max_interpolation_gap`.
    pub max_gap_ms: i64,
}

/// One row of a bill: a register of a meter over the period, or one tariff period of it.
#[derive(Debug, Clone, PartialEq)]
pub struct BillRow {
    pub meter_id: String,
    pub channel: String,
    pub register: String,
    pub unit: String,
    /// A tariff period's name, or `total`.
    pub period: String,
    pub from_ms: i64,
    pub to_ms: i64,
    pub start: Value,
    pub end: Value,
    pub consumption: f64,
    /// The largest quarter hour × 4, kW; `None` for registers not of energy or a period
    /// without a whole quarter hour.
    pub max_demand_kw: Option<f64>,
    /// Resets and wraps between `start` and `end`.
    pub resets: u32,
    /// Readings in `[from, to)`.
    pub readings: u32,
}

/// What a register is, from its OBIS channel: `import total`, `import tariff 2`,
/// `export total`, `export tariff 1`, `gas/water (M-Bus)`, or `other`.
pub fn register_name(channel: &str) -> String {
    let code = channel.rsplit(':').next().unwrap_or(channel);
    let mut parts = code.split('.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("1"), Some("8"), Some("0")) => "import total".into(),
        (Some("1"), Some("8"), Some(t)) => format!("import tariff {t}"),
        (Some("2"), Some("8"), Some("0")) => "export total".into(),
        (Some("2"), Some("8"), Some(t)) => format!("export tariff {t}"),
        (Some("24"), Some(_), Some(_)) => "gas/water (M-Bus)".into(),
        _ => "other".into(),
    }
}

/// kWh per one of the unit, for units of energy.
fn kwh_per(unit: &str) -> Option<f64> {
    match unit.trim() {
        "kWh" | "kwh" | "KWH" => Some(1.0),
        "Wh" | "wh" => Some(0.001),
        "MWh" | "mwh" => Some(1000.0),
        _ => None,
    }
}

const QUARTER_MS: i64 = 900_000;

/// Bills registers for one [`Query`].
#[derive(Debug, Clone)]
pub struct Bill {
    query: Query,
    timeline: Timeline,
    periods: Vec<String>,
}

impl Bill {
    pub fn new(query: Query) -> Bill {
        let (timeline, periods) = match &query.tariff {
            Some(t) => (
                Timeline::new(t, query.zone, query.from_ms, query.to_ms),
                t.periods().iter().map(|p| p.name.clone()).collect(),
            ),
            None => (
                Timeline::whole(query.from_ms, query.to_ms),
                vec!["total".to_string()],
            ),
        };
        Bill {
            query,
            timeline,
            periods,
        }
    }

    pub fn query(&self) -> &Query {
        &self.query
    }

    /// The rows of one register: one per tariff period (file order), or one `total`. None
    /// when it has no reading at all. `readings`: sorted by time, one per instant.
    pub fn register(
        &self,
        meter_id: &str,
        channel: &str,
        unit: &str,
        readings: &[Reading],
        rollover: Option<f64>,
    ) -> Vec<BillRow> {
        let q = &self.query;
        let (Some(start), Some(end)) = (
            value_at(readings, q.from_ms, q.max_gap_ms),
            value_at(readings, q.to_ms, q.max_gap_ms),
        ) else {
            return Vec::new();
        };
        let inside_from = readings.partition_point(|r| r.ts_ms < q.from_ms);
        let inside_to = readings.partition_point(|r| r.ts_ms < q.to_ms);
        let in_period = &readings[inside_from..inside_to];
        let count = u32::try_from(in_period.len()).unwrap_or(u32::MAX);
        // Strictly inside: a reading at `from` is R(from) itself.
        let inner = match in_period.first() {
            Some(r) if r.ts_ms == q.from_ms => &in_period[1..],
            _ => in_period,
        };

        let mut by_period = vec![0.0; self.periods.len()];
        let mut consumption = 0.0;
        let mut resets = 0u32;
        let mut last = Reading {
            ts_ms: q.from_ms,
            value: start.value,
        };
        let ends = [Reading {
            ts_ms: q.to_ms,
            value: end.value,
        }];
        for r in inner.iter().chain(ends.iter()) {
            let s = step(last.value, r.value, rollover);
            let c = s.consumption();
            consumption += c;
            resets += u32::from(s.is_reset());
            self.timeline.spread(last.ts_ms, r.ts_ms, c, &mut by_period);
            last = *r;
        }

        let demand = kwh_per(unit).map(|kwh| self.max_demand(readings, rollover, kwh));
        if q.tariff.is_none() {
            by_period[0] = consumption;
        }
        self.periods
            .iter()
            .enumerate()
            .map(|(i, period)| BillRow {
                register: register_name(channel),
                meter_id: meter_id.to_string(),
                channel: channel.to_string(),
                unit: unit.to_string(),
                period: period.clone(),
                from_ms: q.from_ms,
                to_ms: q.to_ms,
                start,
                end,
                consumption: by_period[i],
                max_demand_kw: demand.as_ref().and_then(|d| d[i]),
                resets,
                readings: count,
            })
            .collect()
    }

    /// The largest quarter hour's consumption × 4 in kW, per period (`None`: no whole
    /// quarter hour in it).
    fn max_demand(
        &self,
        readings: &[Reading],
        rollover: Option<f64>,
        kwh: f64,
    ) -> Vec<Option<f64>> {
        let q = &self.query;
        let mut max: Vec<Option<f64>> = vec![None; self.periods.len()];
        let mut quarter = q.from_ms.div_euclid(QUARTER_MS) * QUARTER_MS;
        if quarter < q.from_ms {
            quarter += QUARTER_MS;
        }
        // Readings strictly after the quarter's start not yet passed.
        let mut next = readings.partition_point(|r| r.ts_ms <= quarter);
        let mut at_start = value_at(readings, quarter, q.max_gap_ms);
        while quarter + QUARTER_MS <= q.to_ms {
            let end_ms = quarter + QUARTER_MS;
            let at_end = value_at(readings, end_ms, q.max_gap_ms);
            if let (Some(a), Some(b)) = (at_start, at_end) {
                let mut used = 0.0;
                let mut last = a.value;
                while let Some(r) = readings.get(next).filter(|r| r.ts_ms < end_ms) {
                    used += step(last, r.value, rollover).consumption();
                    last = r.value;
                    next += 1;
                }
                used += step(last, b.value, rollover).consumption();
                let kw = used * kwh * 4.0;
                let period = if q.tariff.is_some() {
                    self.timeline.period_at(quarter)
                } else {
                    0
                };
                if let Some(slot) = max.get_mut(period) {
                    *slot = Some(slot.map_or(kw, |m: f64| m.max(kw)));
                }
            }
            // A reading at the quarter's end is its R: not a step inside the next one.
            while readings.get(next).is_some_and(|r| r.ts_ms <= end_ms) {
                next += 1;
            }
            at_start = at_end;
            quarter = end_ms;
        }
        max
    }
}

impl ReadKind {
    /// Whether the value was read at the instant.
    pub fn is_actual(self) -> bool {
        self == ReadKind::Actual
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;

    fn r(ts_ms: i64, value: f64) -> Reading {
        Reading { ts_ms, value }
    }

    fn query(from_ms: i64, to_ms: i64) -> Query {
        Query {
            from_ms,
            to_ms,
            zone: Zone::UTC,
            tariff: None,
            max_gap_ms: 7 * 24 * H,
        }
    }

    fn total(rs: &[Reading], from: i64, to: i64) -> BillRow {
        let rows = Bill::new(query(from, to)).register("E1", "1-0:1.8.0", "kWh", rs, None);
        assert_eq!(rows.len(), 1);
        rows.into_iter().next().unwrap()
    }

    #[test]
    fn the_step_across_the_period_edge_is_counted_and_the_day_adds_up() {
        // The case: readings before 06:00 and after, one meter.
        let rs = [
            r(-2 * H, 100.0),
            r(2 * H, 140.0),
            r(5 * H, 150.0),
            r(8 * H, 160.0),
            r(20 * H, 165.5),
            r(26 * H, 170.0),
        ];
        let night = total(&rs, 0, 6 * H);
        let day = total(&rs, 6 * H, 24 * H);
        let whole = total(&rs, 0, 24 * H);
        assert!((night.consumption + day.consumption - whole.consumption).abs() < 1e-9);
        // R(00:00) = 100 + 40 × 2/4 = 120; R(06:00) = 150 + 10/3; R(24:00) = 165.5 + 4.5 × 4/6.
        assert!((night.start.value - 120.0).abs() < 1e-9);
        assert_eq!(night.start.kind, ReadKind::Interpolated);
        assert!((whole.end.value - 168.5).abs() < 1e-9);
        assert!((whole.consumption - 48.5).abs() < 1e-9);
        assert_eq!(whole.readings, 4);
        assert_eq!(
            whole.max_demand_kw.map(|d| (d * 1e6).round() / 1e6),
            Some(10.0 * 0.25 * 4.0)
        );
    }

    #[test]
    fn a_reset_counts_on_from_the_new_value() {
        let rs = [r(0, 5000.0), r(H, 5010.0), r(2 * H, 3.0), r(3 * H, 8.0)];
        let row = total(&rs, 0, 3 * H + 1);
        assert_eq!(row.resets, 1);
        assert!((row.consumption - (10.0 + 3.0 + 5.0)).abs() < 1e-9);
        // Split at the reset's own hour and halfway before it: the same sum.
        let a = total(&rs, 0, 2 * H);
        let b = total(&rs, 2 * H, 3 * H + 1);
        assert!((a.consumption + b.consumption - row.consumption).abs() < 1e-9);
        let a = total(&rs, 0, H + H / 2);
        let b = total(&rs, H + H / 2, 3 * H + 1);
        assert!((a.consumption + b.consumption - row.consumption).abs() < 1e-9);
    }

    #[test]
    fn a_period_after_the_last_reading_is_carried_and_adds_nothing() {
        let rs = [r(0, 10.0), r(H, 12.0)];
        let row = total(&rs, 2 * H, 3 * H);
        assert_eq!(row.start.kind, ReadKind::Carried);
        assert_eq!(row.end.kind, ReadKind::Carried);
        assert_eq!(row.consumption, 0.0);
        assert_eq!(row.readings, 0);
        assert!(Bill::new(query(0, H))
            .register("E1", "1-0:1.8.0", "kWh", &[], None)
            .is_empty());
    }

    #[test]
    fn max_demand_is_the_largest_quarter_hour() {
        // 15-minute reads: 1, 1, 3 (the peak: 3 kWh in a quarter = 12 kW), 1.
        let q = QUARTER_MS;
        let rs = [
            r(0, 0.0),
            r(q, 1.0),
            r(2 * q, 2.0),
            r(3 * q, 5.0),
            r(4 * q, 6.0),
        ];
        let row = total(&rs, 0, 4 * q);
        assert!((row.max_demand_kw.unwrap() - 12.0).abs() < 1e-9);
        // Not an energy unit: none.
        let rows = Bill::new(query(0, 4 * q)).register("G1", "0-1:24.2.1", "m3", &rs, None);
        assert_eq!(rows[0].max_demand_kw, None);
        // Wh: converted.
        let rows = Bill::new(query(0, 4 * q)).register("E1", "1-0:1.8.0", "Wh", &rs, None);
        assert!((rows[0].max_demand_kw.unwrap() - 0.012).abs() < 1e-12);
    }

    #[test]
    fn registers_are_named_by_their_obis_code() {
        assert_eq!(register_name("1-0:1.8.0"), "import total");
        assert_eq!(register_name("1-0:1.8.2"), "import tariff 2");
        assert_eq!(register_name("1-0:2.8.0"), "export total");
        assert_eq!(register_name("0-1:24.2.1"), "gas/water (M-Bus)");
    }
}
