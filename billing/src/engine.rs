//! A bill: for each register of each meter, R at the period's edges, the consumption between
//! them (the steps of R from `from` to `to`, readings inside included), spread over the
//! tariff's periods, and the largest quarter hour.
//!
//! Time-of-use: the consumption of each step of R (between two consecutive values: R(from),
//! the readings inside, R(to)) is spread evenly over the time between them and split where
//! the period changes (in local time). Max demand: the consumption of each local quarter hour
//! wholly inside the period, × 4, for energy registers (kWh; Wh and MWh converted), in the
//! period its start belongs to; a quarter hour's consumption is its share of the same evenly
//! spread steps. Where R is interpolated that is exactly the steps of R at the quarter hour's
//! edges; where R is carried (a gap longer than `billing.max_interpolation_gap`, a reset, a
//! reverse run) R jumps at one instant, and a quarter hour's demand from R would hold a whole
//! gap's consumption, or a new register's, as if drawn in 15 minutes: a demand charge for
//! power never drawn. Every zone's offset today is a whole number of quarter hours, so local
//! quarter hours start where UTC ones do.
//!
//! A carried start (R(from) is the reading before `from`, too far from the next one to
//! interpolate) bills the whole first step in this period (that keeps totals additive), but
//! the step was used over the time since that reading: it is spread from there, so its
//! tariff shares are those of the whole silence (the part before `from` by the periods of
//! that time) and its quarter hours in the period get the silence's average rate, not the
//! whole silence squeezed into the minutes before the first reading inside.

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
pub fn kwh_per(unit: &str) -> Option<f64> {
    match unit.trim() {
        "kWh" | "kwh" | "KWH" => Some(1.0),
        "Wh" | "wh" => Some(0.001),
        "MWh" | "mwh" => Some(1000.0),
        _ => None,
    }
}

const QUARTER_MS: i64 = 900_000;

/// How far before a period a carried start's step is spread at most (400 days): a longer
/// silence is spread over its last 400 days.
const MAX_SPREAD_BEFORE_MS: i64 = 400 * 86_400_000;

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
        let mut quarters = kwh_per(unit).map(|_| Quarters::new(q.from_ms, q.to_ms));
        let mut consumption = 0.0;
        let mut resets = 0u32;
        let mut last = Reading {
            ts_ms: q.from_ms,
            value: start.value,
        };
        // The first step is spread from the reading a carried start comes from.
        let mut spread_from = match start.kind {
            ReadKind::Carried => readings[..inside_from].last().map(|r| r.ts_ms),
            _ => None,
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
            // The share of the step used before `from` (a carried start only).
            let before = match spread_from.take() {
                Some(t0) if t0 < last.ts_ms && c != 0.0 => {
                    // At most a bill's longest span back: a reading dated decades ago (a
                    // clock never set) must not cost a timeline of those decades.
                    let t0 = t0.max(last.ts_ms.saturating_sub(MAX_SPREAD_BEFORE_MS));
                    let share = c * ((last.ts_ms - t0) as f64 / (r.ts_ms - t0) as f64);
                    if let Some(tariff) = &q.tariff {
                        Timeline::new(tariff, q.zone, t0, last.ts_ms).spread(
                            t0,
                            last.ts_ms,
                            share,
                            &mut by_period,
                        );
                    }
                    share
                }
                _ => 0.0,
            };
            self.timeline
                .spread(last.ts_ms, r.ts_ms, c - before, &mut by_period);
            if let Some(quarters) = &mut quarters {
                quarters.spread(last.ts_ms, r.ts_ms, c - before);
            }
            last = *r;
        }

        let demand = quarters
            .zip(kwh_per(unit))
            .map(|(quarters, kwh)| self.max_demand(&quarters, kwh));
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
    fn max_demand(&self, quarters: &Quarters, kwh: f64) -> Vec<Option<f64>> {
        let mut max: Vec<Option<f64>> = vec![None; self.periods.len()];
        for (i, used) in quarters.used.iter().enumerate() {
            let start = quarters.first_ms + i as i64 * QUARTER_MS;
            let period = if self.query.tariff.is_some() {
                self.timeline.period_at(start)
            } else {
                0
            };
            let kw = used * kwh * 4.0;
            if let Some(slot) = max.get_mut(period) {
                *slot = Some(slot.map_or(kw, |m: f64| m.max(kw)));
            }
        }
        max
    }
}

/// The consumption of each quarter hour wholly inside a period.
struct Quarters {
    /// The start of the first, Unix ms.
    first_ms: i64,
    used: Vec<f64>,
}

impl Quarters {
    fn new(from_ms: i64, to_ms: i64) -> Quarters {
        let first_ms = from_ms.div_euclid(QUARTER_MS) * QUARTER_MS
            + if from_ms.rem_euclid(QUARTER_MS) == 0 {
                0
            } else {
                QUARTER_MS
            };
        let count = (to_ms - first_ms).div_euclid(QUARTER_MS).max(0);
        Quarters {
            first_ms,
            used: vec![0.0; usize::try_from(count).unwrap_or(0)],
        }
    }

    /// Adds `amount`, spread evenly over `[t0, t1)`, to the quarter hours it covers.
    fn spread(&mut self, t0: i64, t1: i64, amount: f64) {
        if t1 <= t0 || amount == 0.0 || self.used.is_empty() {
            return;
        }
        let span = (t1 - t0) as f64;
        let first = (t0 - self.first_ms).div_euclid(QUARTER_MS).max(0);
        let mut i = usize::try_from(first).unwrap_or(0);
        while let Some(slot) = self.used.get_mut(i) {
            let start = self.first_ms + i as i64 * QUARTER_MS;
            if start >= t1 {
                break;
            }
            let (a, b) = (start.max(t0), (start + QUARTER_MS).min(t1));
            if b > a {
                *slot += amount * ((b - a) as f64 / span);
            }
            i += 1;
        }
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
    fn a_reset_or_a_long_gap_is_no_demand_spike() {
        // 6 kWh in 6 hours (1 kW), then a new register that shows 2.75 six hours later: its
        // 2.75 kWh spread over those hours, not drawn in one quarter hour (11 kW).
        let rs = [r(0, 5000.0), r(6 * H, 5006.0), r(12 * H, 2.75)];
        let row = total(&rs, 0, 12 * H);
        assert_eq!(row.resets, 1);
        assert!((row.consumption - 8.75).abs() < 1e-9);
        assert!((row.max_demand_kw.unwrap() - 1.0).abs() < 1e-9, "{row:?}");
        // Ten days without a read (longer than the 7 interpolated across): 240 kWh over
        // 240 hours is 1 kW, not 960 kW at the jump of R.
        let rs = [r(0, 0.0), r(240 * H, 240.0)];
        let row = total(&rs, 0, 240 * H);
        assert!((row.max_demand_kw.unwrap() - 1.0).abs() < 1e-9, "{row:?}");
    }

    #[test]
    fn a_carried_start_spreads_the_silence_from_its_reading() {
        // Review round 3: 1000 kWh nine days before the period, 1216 a quarter hour into it,
        // then 1 kW. The 216 kWh of the silence are billed in this period, but used at 1 kW
        // over the nine days: max demand 1 kW, not 864; the night share is the silence's.
        let q = QUARTER_MS;
        let day = 24 * H;
        let from = 9 * day;
        let mut rs = vec![r(0, 1000.0)];
        for k in 1..=96 {
            rs.push(r(from + k * q, 1216.0 + 0.25 * (k - 1) as f64));
        }
        let tariff = Tariff::from_toml(
            "name = \"t\"\n[[period]]\nname = \"day\"\nfrom = \"07:00\"\nto = \"23:00\"\n[[period]]\nname = \"night\"\n",
            "t.toml",
        )
        .unwrap();
        let bill = Bill::new(Query {
            tariff: Some(tariff),
            ..query(from, from + day)
        });
        let rows = bill.register("X", "1-0:1.8.0", "kWh", &rs, None);
        let (day_row, night_row) = (&rows[0], &rows[1]);
        assert_eq!(day_row.start.kind, ReadKind::Carried);
        let total = day_row.consumption + night_row.consumption;
        // 216 for the silence, 95 × 0.25 inside, R(to) carried from the last reading.
        assert!((total - (216.0 + 95.0 * 0.25)).abs() < 1e-9, "{rows:?}");
        // The silence: 9 days + 15 minutes at 216 / (9 × 96 + 1) kWh per quarter hour, 16 of
        // every 24 hours in `day`; the quarter hour 00:00-00:15 of the period is night.
        let per_q = 216.0 / (9.0 * 96.0 + 1.0);
        let silence_day = per_q * 9.0 * 64.0;
        let inside_day = 64.0 * 0.25; // 07:00-23:00 of the period, 1 kW
        assert!(
            (day_row.consumption - (silence_day + inside_day)).abs() < 1e-9,
            "{rows:?}"
        );
        for row in &rows {
            let kw = row.max_demand_kw.unwrap();
            assert!((0.9..=1.001).contains(&kw), "{row:?}");
        }
    }

    #[test]
    fn registers_are_named_by_their_obis_code() {
        assert_eq!(register_name("1-0:1.8.0"), "import total");
        assert_eq!(register_name("1-0:1.8.2"), "import tariff 2");
        assert_eq!(register_name("1-0:2.8.0"), "export total");
        assert_eq!(register_name("0-1:24.2.1"), "gas/water (M-Bus)");
    }
}
