//! A fleet's history with energy theft injected, for evaluating `meterflow query suspects`
//! and `query balance` against a known truth: customers of a few feeders, each feeder with a
//! head meter that measures what its customers really used plus technical losses; daily and
//! weekly load shapes (households with morning and evening peaks and busier weekends, small
//! businesses open on weekdays), a seasonal swing shared by a feeder, and noise per day and
//! per interval. A share of the customers steal from a day on, by the six attack shapes of
//! the literature (Jokar, Arianpoo and Leung, "Electricity Theft Detection in AMI Using
//! Customers' Consumption Patterns", IEEE Trans. Smart Grid 7(1), 2016, h1 to h5, and a
//! bypass after a magnet), and some honest customers drop for legitimate reasons (a holiday,
//! a new tenant) or have a tamper event without stealing (an inspection).
//!
//! Written as files `meterflow` takes: `readings.csv` (`meter_id,channel,ts,value,unit`: the
//! import register 1-0:1.8.0 in kWh every interval, as metered), `meters.csv` (the registry),
//! `events.csv` (`meter_id,ts,kind`) and `truth.csv` (each customer: thief or not, the attack
//! and its first day, and the energy it took). Deterministic for a seed.

use std::fmt::Write as _;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use chrono::{Duration, NaiveDate};

/// What to generate.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    pub customers: usize,
    pub feeders: usize,
    /// Days of readings, from `start`.
    pub days: u32,
    /// The last this many days are the period judged: thefts begin around its start.
    pub period_days: u32,
    pub interval_s: u32,
    /// Share of customers who steal.
    pub theft_share: f64,
    pub seed: u64,
    pub start: NaiveDate,
    /// The local time of the fleet, hours east of UTC (no DST: Central Asia).
    pub utc_offset_h: i32,
}

impl Default for FleetSpec {
    fn default() -> FleetSpec {
        FleetSpec {
            customers: 500,
            feeders: 10,
            days: 90,
            period_days: 30,
            interval_s: 900,
            theft_share: 0.05,
            seed: 1,
            start: NaiveDate::from_ymd_opt(2025, 6, 1).unwrap_or_default(),
            utc_offset_h: 6,
        }
    }
}

/// The attack shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attack {
    /// h1: every interval times a constant in [0.1, 0.8].
    Scale,
    /// h2: nothing for a window of hours each day.
    CutOff,
    /// h3: every interval times its own random factor in [0.1, 0.8].
    RandomScale,
    /// h4: every interval the day's mean (a flat day, the same energy).
    FlatMean,
    /// h5: the day reversed (the same energy, peaks moved to cheap hours).
    Reversed,
    /// A magnet on the meter (a `magnetic_tamper` event), then a bypass: 10 to 30 % metered.
    MagnetBypass,
}

impl Attack {
    pub const ALL: [Attack; 6] = [
        Attack::Scale,
        Attack::CutOff,
        Attack::RandomScale,
        Attack::FlatMean,
        Attack::Reversed,
        Attack::MagnetBypass,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Attack::Scale => "scale",
            Attack::CutOff => "cut_off",
            Attack::RandomScale => "random_scale",
            Attack::FlatMean => "flat_mean",
            Attack::Reversed => "reversed",
            Attack::MagnetBypass => "magnet_bypass",
        }
    }
}

/// What really happened to one customer.
#[derive(Debug, Clone, PartialEq)]
pub struct Truth {
    pub meter_id: String,
    pub feeder: String,
    pub attack: Option<Attack>,
    /// Its attack's first day (index from `start`).
    pub from_day: Option<u32>,
    /// A legitimate change, where it had one: `holiday`, `new_tenant`, `inspection`.
    pub honest_change: Option<&'static str>,
    /// kWh used and not metered in the period judged.
    pub stolen_kwh: f64,
}

/// SplitMix64: small, fast, and the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn between(&mut self, a: f64, b: f64) -> f64 {
        a + (b - a) * self.unit()
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit().max(1e-12), self.unit());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    /// Log-normal with median 1 and this sigma.
    fn spread(&mut self, sigma: f64) -> f64 {
        (sigma * self.normal()).exp()
    }
}

/// A customer's way of using energy.
struct Customer {
    id: String,
    feeder: usize,
    business: bool,
    daily_kwh: f64,
    /// Weight per local hour of a weekday and of a weekend day.
    weekday: [f64; 24],
    weekend: [f64; 24],
    attack: Option<(Attack, u32)>,
    /// h1's factor, h2's window (start hour, hours), the bypass's factor.
    factor: f64,
    window: (f64, f64),
    honest: Option<(&'static str, u32, u32)>,
    tenant: Option<(f64, [f64; 24])>,
}

fn household(rng: &mut Rng) -> [f64; 24] {
    let morning = rng.between(6.0, 8.5);
    let evening = rng.between(17.0, 20.0);
    let (am, pm) = (rng.between(0.8, 1.6), rng.between(1.2, 2.4));
    std::array::from_fn(|h| {
        let h = h as f64 + 0.5;
        let bump =
            |centre: f64, height: f64, width: f64| height * (-((h - centre) / width).powi(2)).exp();
        0.35 + bump(morning, am, 1.2) + bump(evening, pm, 2.0) + bump(13.0, 0.3, 3.0)
    })
}

fn business(rng: &mut Rng) -> ([f64; 24], [f64; 24]) {
    let (open, close) = (rng.between(7.0, 9.5), rng.between(17.0, 20.0));
    let weekday = std::array::from_fn(|h| {
        let h = h as f64 + 0.5;
        if h >= open && h < close {
            2.0
        } else {
            0.3
        }
    });
    (weekday, [0.35; 24])
}

fn normalised(w: [f64; 24]) -> [f64; 24] {
    let sum: f64 = w.iter().sum();
    w.map(|v| v / sum)
}

/// Writes the fleet's files into `dir`; returns each customer's truth.
pub fn write_fleet(spec: &FleetSpec, dir: &Path) -> io::Result<Vec<Truth>> {
    let mut rng = Rng(spec.seed);
    let per_hour = (3600 / spec.interval_s.max(1)).max(1) as usize;
    let per_day = 24 * per_hour;
    let period_start = spec.days.saturating_sub(spec.period_days);
    let thieves = ((spec.customers as f64) * spec.theft_share).round() as usize;
    // Which customers steal: spread over the fleet, not the first few ids.
    let mut order: Vec<usize> = (0..spec.customers).collect();
    for i in (1..order.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    let mut customers: Vec<Customer> = (0..spec.customers)
        .map(|i| {
            let is_business = rng.unit() < 0.15;
            let (weekday, weekend) = if is_business {
                business(&mut rng)
            } else {
                let w = household(&mut rng);
                (w, w)
            };
            let daily_kwh = if is_business {
                30.0 * rng.spread(0.4)
            } else {
                8.0 * rng.spread(0.4)
            };
            Customer {
                id: format!("C{i:04}"),
                feeder: i % spec.feeders.max(1),
                business: is_business,
                daily_kwh,
                weekday: normalised(weekday),
                weekend: normalised(weekend),
                attack: None,
                factor: 1.0,
                window: (0.0, 0.0),
                honest: None,
                tenant: None,
            }
        })
        .collect();
    for (k, &i) in order.iter().take(thieves).enumerate() {
        let attack = Attack::ALL[k % Attack::ALL.len()];
        let from = (period_start as f64 + rng.between(-10.0, 5.0)).max(1.0) as u32;
        let c = &mut customers[i];
        c.attack = Some((attack, from));
        c.factor = match attack {
            Attack::MagnetBypass => rng.between(0.1, 0.3),
            _ => rng.between(0.1, 0.8),
        };
        let start = rng.between(0.0, 20.0);
        c.window = (start, rng.between(4.0, 24.0 - start));
    }
    // Honest changes among the others: 4 % a holiday of one to two weeks, 1 % a new tenant,
    // 1 % an inspection (the cover opened, nothing taken).
    for &i in order.iter().skip(thieves) {
        let draw = rng.unit();
        let day = rng.between(10.0, f64::from(spec.days) - 14.0) as u32;
        let c = &mut customers[i];
        if draw < 0.04 {
            c.honest = Some(("holiday", day, day + rng.between(7.0, 14.0) as u32));
        } else if draw < 0.05 {
            c.honest = Some(("new_tenant", day, spec.days));
            let w = household(&mut rng);
            c.tenant = Some((rng.between(0.5, 1.4), normalised(w)));
        } else if draw < 0.06 {
            c.honest = Some(("inspection", day, day));
        }
    }

    let mut readings = BufWriter::new(std::fs::File::create(dir.join("readings.csv"))?);
    writeln!(readings, "meter_id,channel,ts,value,unit")?;
    let mut events = String::from("meter_id,ts,kind\n");
    let offset_ms = i64::from(spec.utc_offset_h) * 3_600_000;
    let day0 = spec
        .start
        .and_hms_opt(0, 0, 0)
        .unwrap_or_default()
        .and_utc()
        .timestamp_millis()
        - offset_ms;
    let interval_ms = i64::from(spec.interval_s) * 1000;
    let ts_text = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default()
    };
    // Each feeder's seasonal swing and weather, per day.
    let weather: Vec<Vec<f64>> = (0..spec.feeders)
        .map(|_| {
            let phase = rng.between(0.0, std::f64::consts::TAU);
            (0..spec.days)
                .map(|d| {
                    1.0 + 0.12 * (f64::from(d) / 90.0 * std::f64::consts::TAU + phase).sin()
                        + 0.05 * rng.normal()
                })
                .collect()
        })
        .collect();
    // What each feeder's customers really used, per interval, for its head meter.
    let mut feeder_use = vec![vec![0.0f64; spec.days as usize * per_day]; spec.feeders];
    let mut truth = Vec::with_capacity(customers.len());
    let mut line = String::new();
    for c in &customers {
        let mut register = 1000.0 * rng.between(1.0, 20.0);
        let mut stolen = 0.0;
        line.clear();
        writeln!(
            line,
            "{},1-0:1.8.0,{},{register:.3},kWh",
            c.id,
            ts_text(day0)
        )
        .ok();
        readings.write_all(line.as_bytes())?;
        for d in 0..spec.days {
            let date = spec.start + Duration::days(i64::from(d));
            let weekend = matches!(
                chrono::Datelike::weekday(&date),
                chrono::Weekday::Sat | chrono::Weekday::Sun
            );
            let (mut level, mut shape) = (
                c.daily_kwh * weather[c.feeder][d as usize] * rng.spread(0.15),
                if weekend { c.weekend } else { c.weekday },
            );
            if weekend && !c.business {
                level *= 1.15;
            }
            if c.business && weekend {
                level *= 0.3;
            }
            match c.honest {
                Some(("holiday", a, b)) if d >= a && d < b => level *= 0.08,
                Some(("new_tenant", a, _)) if d >= a => {
                    if let Some((scale, profile)) = c.tenant {
                        level *= scale;
                        shape = profile;
                    }
                }
                Some(("inspection", a, _)) if d == a => {
                    let ts = day0 + i64::from(d) * 86_400_000 + 10 * 3_600_000;
                    writeln!(events, "{},{},cover_open", c.id, ts_text(ts)).ok();
                }
                _ => {}
            }
            let used: Vec<f64> = (0..per_day)
                .map(|q| {
                    let hour = q / per_hour;
                    level * shape[hour] / per_hour as f64 * rng.spread(0.35)
                })
                .collect();
            let metered = match c.attack {
                Some((attack, from)) if d >= from => {
                    if attack == Attack::MagnetBypass && d == from {
                        let ts = day0 + i64::from(d) * 86_400_000 + 9 * 3_600_000;
                        writeln!(events, "{},{},magnetic_tamper", c.id, ts_text(ts)).ok();
                    }
                    tamper(attack, c, &used, per_hour, &mut rng)
                }
                _ => used.clone(),
            };
            for (q, (u, m)) in used.iter().zip(&metered).enumerate() {
                feeder_use[c.feeder][d as usize * per_day + q] += u;
                if d >= period_start {
                    stolen += u - m;
                }
                register += m;
                let ts = day0 + (i64::from(d) * per_day as i64 + q as i64 + 1) * interval_ms;
                line.clear();
                writeln!(line, "{},1-0:1.8.0,{},{register:.3},kWh", c.id, ts_text(ts)).ok();
                readings.write_all(line.as_bytes())?;
            }
        }
        truth.push(Truth {
            meter_id: c.id.clone(),
            feeder: format!("F{:02}", c.feeder),
            attack: c.attack.map(|a| a.0),
            from_day: c.attack.map(|a| a.1),
            honest_change: c.honest.map(|h| h.0),
            stolen_kwh: stolen,
        });
    }
    // Head meters: what the customers used, and 3 to 7 % technical losses, to 1 %.
    for (f, used) in feeder_use.iter().enumerate() {
        let losses = rng.between(0.03, 0.07);
        let mut register = 100_000.0;
        line.clear();
        writeln!(
            line,
            "H{f:02},1-0:1.8.0,{},{register:.3},kWh",
            ts_text(day0)
        )
        .ok();
        readings.write_all(line.as_bytes())?;
        for (q, u) in used.iter().enumerate() {
            register += u * (1.0 + losses) * (1.0 + 0.01 * rng.normal());
            let ts = day0 + (q as i64 + 1) * interval_ms;
            line.clear();
            writeln!(line, "H{f:02},1-0:1.8.0,{},{register:.3},kWh", ts_text(ts)).ok();
            readings.write_all(line.as_bytes())?;
        }
    }
    readings.flush()?;
    std::fs::write(dir.join("events.csv"), events)?;

    let mut meters =
        String::from("meter_id,kind,district,feeder,transformer,role,tariff,import_only\n");
    for f in 0..spec.feeders {
        writeln!(
            meters,
            "H{f:02},electricity,D{},F{f:02},,feeder_head,,no",
            f % 3
        )
        .ok();
    }
    for c in &customers {
        let tariff = if c.business { "business" } else { "household" };
        writeln!(
            meters,
            "{},electricity,D{},F{:02},T{:02}-{},customer,{tariff},yes",
            c.id,
            c.feeder % 3,
            c.feeder,
            c.feeder,
            c.id.len() % 2
        )
        .ok();
    }
    std::fs::write(dir.join("meters.csv"), meters)?;
    let mut text = String::from("meter_id,feeder,thief,attack,from_day,honest_change,stolen_kwh\n");
    for t in &truth {
        writeln!(
            text,
            "{},{},{},{},{},{},{:.3}",
            t.meter_id,
            t.feeder,
            u8::from(t.attack.is_some()),
            t.attack.map(Attack::as_str).unwrap_or(""),
            t.from_day.map(|d| d.to_string()).unwrap_or_default(),
            t.honest_change.unwrap_or(""),
            t.stolen_kwh
        )
        .ok();
    }
    std::fs::write(dir.join("truth.csv"), text)?;
    Ok(truth)
}

/// What the meter records of a day's use `used` under `attack`.
fn tamper(attack: Attack, c: &Customer, used: &[f64], per_hour: usize, rng: &mut Rng) -> Vec<f64> {
    match attack {
        Attack::Scale | Attack::MagnetBypass => used.iter().map(|u| u * c.factor).collect(),
        Attack::CutOff => used
            .iter()
            .enumerate()
            .map(|(q, u)| {
                let hour = q as f64 / per_hour as f64;
                if hour >= c.window.0 && hour < c.window.0 + c.window.1 {
                    0.0
                } else {
                    *u
                }
            })
            .collect(),
        Attack::RandomScale => used.iter().map(|u| u * rng.between(0.1, 0.8)).collect(),
        Attack::FlatMean => {
            let mean = used.iter().sum::<f64>() / used.len() as f64;
            vec![mean; used.len()]
        }
        Attack::Reversed => used.iter().rev().copied().collect(),
    }
}

/// The area under the ROC curve of `scores` (higher: more suspect) against `thief`: the
/// chance that a thief scores above an honest customer (ties count half).
pub fn auc(ranked: &[(f64, bool)]) -> f64 {
    let thieves = ranked.iter().filter(|r| r.1).count();
    let honest = ranked.len() - thieves;
    if thieves == 0 || honest == 0 {
        return f64::NAN;
    }
    let mut wins = 0.0;
    for (s, _) in ranked.iter().filter(|r| r.1) {
        for (h, _) in ranked.iter().filter(|r| !r.1) {
            wins += if s > h {
                1.0
            } else if s == h {
                0.5
            } else {
                0.0
            };
        }
    }
    wins / (thieves * honest) as f64
}

/// The share of thieves among the first `k` of a ranking (highest score first).
pub fn precision_at(ranked: &[(f64, bool)], k: usize) -> f64 {
    let k = k.min(ranked.len());
    if k == 0 {
        return f64::NAN;
    }
    ranked.iter().take(k).filter(|r| r.1).count() as f64 / k as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_fleet_is_written_with_its_thieves_and_heads() {
        let dir = tempfile::tempdir().unwrap();
        let spec = FleetSpec {
            customers: 40,
            feeders: 2,
            days: 20,
            period_days: 10,
            interval_s: 3600,
            theft_share: 0.15,
            ..FleetSpec::default()
        };
        let truth = write_fleet(&spec, dir.path()).unwrap();
        assert_eq!(truth.len(), 40);
        assert_eq!(truth.iter().filter(|t| t.attack.is_some()).count(), 6);
        assert!(truth
            .iter()
            .filter(|t| t.attack.is_some())
            .all(|t| t.stolen_kwh > 0.0
                || matches!(t.attack, Some(Attack::FlatMean | Attack::Reversed))));
        let readings = std::fs::read_to_string(dir.path().join("readings.csv")).unwrap();
        // 42 meters, a reading at the start and one per hour.
        assert_eq!(readings.lines().count(), 1 + 42 * (1 + 20 * 24));
        let again = tempfile::tempdir().unwrap();
        assert_eq!(write_fleet(&spec, again.path()).unwrap(), truth);
        let events = std::fs::read_to_string(dir.path().join("events.csv")).unwrap();
        assert!(events.contains("magnetic_tamper"));
        assert_eq!(auc(&[(2.0, true), (1.0, false), (1.0, true)]), 0.75);
        assert_eq!(precision_at(&[(2.0, true), (1.0, false)], 2), 0.5);
    }
}
