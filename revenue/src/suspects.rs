//! The suspects list: every meter scored by signals of energy theft or tampering, each
//! signal a number in `[0, 1]` of its own (printed as a column, so that a ranking can be
//! read and argued with), the score their weighted sum ([`WEIGHTS`]).
//!
//! The signals, over the period asked (`during`) against the days before it (`before`, up to
//! 90):
//! - `drop_self`: how far the meter's consumption fell against its own before, as the
//!   median of its weekly ratios (a week's mean over the before's mean): a theft lasts, a
//!   holiday is one or two weeks of a month and moves the median little;
//! - `drop_peers`: the same against its peers (the meters of its feeder and tariff; all
//!   meters without a registry): its ratio over the peers' median ratio, so a cold month
//!   that lowers everyone's use is no drop;
//! - `profile_change`: how much the shape of its day changed: 1 minus the correlation of its
//!   mean use per local hour during and before, halved (a profile flattened to its mean, or
//!   reversed, keeps the energy and changes the shape);
//! - `zero_days`: the share of days during with near-zero use (under 0.1 kWh) while the meter
//!   reported readings (it was on);
//! - `reverse`: energy exported, or a register that ran back, on a meter the registry says is
//!   import only (1 from 1 kWh);
//! - `tamper_drop`: after a tamper event (cover, terminal cover, magnet, fraud attempt), how
//!   far the next 7 days fell against the 14 before it (the largest over its events);
//! - `data_path`: forged publishes for it, replayed or badly tagged pushes (1 from 3 events);
//! - `feeder_loss`: how far its feeder's loss rose, in percentage points of the head's
//!   energy, during against before (1 from 10 points), on complete days only.

/// How much each signal counts in the score, in the order of [`Signals::values`].
pub const WEIGHTS: [(&str, f64); 8] = [
    ("drop_self", 1.0),
    ("drop_peers", 3.0),
    ("profile_change", 2.5),
    ("zero_days", 1.0),
    ("reverse", 2.0),
    ("tamper_drop", 3.0),
    ("data_path", 2.0),
    ("feeder_loss", 1.0),
];

/// Under this a day's use counts as zero, kWh.
pub const ZERO_DAY_KWH: f64 = 0.1;

/// What is known of one meter over the days before and during the period.
#[derive(Debug, Clone, Default)]
pub struct MeterFacts {
    pub meter_id: String,
    /// Its peers' key (feeder and tariff); meters with the same key compare to each other.
    pub peers: String,
    /// Net energy per day, kWh, over the before days then the during days (`None`: not
    /// known that day).
    pub daily: Vec<Option<f64>>,
    /// Energy by local hour of day, summed, before and during.
    pub hours_before: [f64; 24],
    pub hours_during: [f64; 24],
    /// kWh exported or run back during the period, on an import-only meter (0 otherwise).
    pub reverse_kwh: f64,
    /// Days (indices into `daily`) of its tamper events.
    pub tamper_days: Vec<usize>,
    /// Its forged-publish, replay and failed-tag events during the period.
    pub data_path_events: usize,
    /// Its feeder's loss during minus before, percentage points (`None`: not known).
    pub feeder_loss_rise: Option<f64>,
}

/// Every signal of one meter, each in `[0, 1]`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Signals {
    pub drop_self: f64,
    pub drop_peers: f64,
    pub profile_change: f64,
    pub zero_days: f64,
    pub reverse: f64,
    pub tamper_drop: f64,
    pub data_path: f64,
    pub feeder_loss: f64,
}

impl Signals {
    pub fn values(&self) -> [f64; 8] {
        [
            self.drop_self,
            self.drop_peers,
            self.profile_change,
            self.zero_days,
            self.reverse,
            self.tamper_drop,
            self.data_path,
            self.feeder_loss,
        ]
    }

    pub fn score(&self) -> f64 {
        self.values()
            .iter()
            .zip(WEIGHTS)
            .map(|(v, (_, w))| v * w)
            .sum()
    }

    /// The signals that made the score, strongest first, in words (those above 0.1).
    pub fn reasons(&self) -> Vec<&'static str> {
        let mut named: Vec<(f64, &'static str)> = self
            .values()
            .iter()
            .zip(WEIGHTS)
            .filter(|(v, _)| **v > 0.1)
            .map(|(v, (name, w))| (v * w, name))
            .collect();
        named.sort_by(|a, b| b.0.total_cmp(&a.0));
        named.into_iter().map(|(_, n)| n).collect()
    }
}

/// One meter of the ranking.
#[derive(Debug, Clone, PartialEq)]
pub struct Suspect {
    pub meter_id: String,
    pub score: f64,
    pub signals: Signals,
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

/// The meter's use during against before: the median of its weekly ratios (a trailing
/// part week of at least 3 known days counts as a week). `None` without a before.
fn weekly_ratio(daily: &[Option<f64>], before: usize) -> Option<f64> {
    let base = mean(daily[..before].iter().flatten().copied())?;
    if base <= 0.0 {
        return None;
    }
    let ratios: Vec<f64> = daily[before..]
        .chunks(7)
        .filter_map(|week| {
            let known: Vec<f64> = week.iter().flatten().copied().collect();
            (known.len() >= 3).then(|| known.iter().sum::<f64>() / known.len() as f64 / base)
        })
        .collect();
    median(ratios)
}

fn correlation(a: &[f64; 24], b: &[f64; 24]) -> f64 {
    let (ma, mb) = (a.iter().sum::<f64>() / 24.0, b.iter().sum::<f64>() / 24.0);
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        cov += (x - ma) * (y - mb);
        va += (x - ma).powi(2);
        vb += (y - mb).powi(2);
    }
    if va <= 0.0 || vb <= 0.0 {
        // A flat profile against a shaped one has nothing in common.
        return if va <= 0.0 && vb <= 0.0 { 1.0 } else { 0.0 };
    }
    cov / (va * vb).sqrt()
}

/// Scores every meter; `before` is how many of the days come before the period. Ordered by
/// score, highest first (then by meter id).
pub fn rank(meters: &[MeterFacts], before: usize) -> Vec<Suspect> {
    let ratios: Vec<Option<f64>> = meters
        .iter()
        .map(|m| weekly_ratio(&m.daily, before.min(m.daily.len())))
        .collect();
    let mut by_peers: std::collections::HashMap<&str, Vec<f64>> = Default::default();
    for (m, r) in meters.iter().zip(&ratios) {
        if let Some(r) = r {
            by_peers.entry(m.peers.as_str()).or_default().push(*r);
        }
    }
    let peer_median: std::collections::HashMap<&str, f64> = by_peers
        .into_iter()
        .filter_map(|(k, v)| Some((k, median(v)?)))
        .collect();
    let mut ranked: Vec<Suspect> = meters
        .iter()
        .zip(&ratios)
        .map(|(m, ratio)| {
            let signals = signals(
                m,
                *ratio,
                peer_median.get(m.peers.as_str()).copied(),
                before,
            );
            Suspect {
                meter_id: m.meter_id.clone(),
                score: signals.score(),
                signals,
            }
        })
        .collect();
    ranked.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.meter_id.cmp(&b.meter_id))
    });
    ranked
}

fn signals(m: &MeterFacts, ratio: Option<f64>, peers: Option<f64>, before: usize) -> Signals {
    let before = before.min(m.daily.len());
    let clamp = |v: f64| {
        if v.is_finite() {
            v.clamp(0.0, 1.0)
        } else {
            0.0
        }
    };
    let drop_self = ratio.map_or(0.0, |r| clamp(1.0 - r));
    let drop_peers = match (ratio, peers) {
        (Some(r), Some(p)) if p > 0.0 => clamp(1.0 - r / p),
        _ => 0.0,
    };
    let shaped = |h: &[f64; 24]| h.iter().sum::<f64>() > 0.0;
    let profile_change = if shaped(&m.hours_before) && m.hours_during.iter().any(|v| *v != 0.0) {
        clamp((1.0 - correlation(&m.hours_before, &m.hours_during)) / 2.0)
    } else {
        0.0
    };
    let during: Vec<f64> = m.daily[before..].iter().flatten().copied().collect();
    let zero_days = if during.is_empty() {
        0.0
    } else {
        during.iter().filter(|d| **d < ZERO_DAY_KWH).count() as f64 / during.len() as f64
    };
    let tamper_drop = m
        .tamper_days
        .iter()
        .filter(|d| **d >= before.saturating_sub(7) && **d < m.daily.len())
        .filter_map(|&d| {
            let prior = mean(m.daily[d.saturating_sub(14)..d].iter().flatten().copied())?;
            let after = mean(
                m.daily[d..(d + 7).min(m.daily.len())]
                    .iter()
                    .flatten()
                    .copied(),
            )?;
            (prior > 0.0).then(|| clamp(1.0 - after / prior))
        })
        .fold(0.0, f64::max);
    Signals {
        drop_self,
        drop_peers,
        profile_change,
        zero_days,
        reverse: clamp(m.reverse_kwh),
        tamper_drop,
        data_path: clamp(m.data_path_events as f64 / 3.0),
        feeder_loss: m.feeder_loss_rise.map_or(0.0, |p| clamp(p / 10.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shaped() -> [f64; 24] {
        std::array::from_fn(|h| {
            if (7..9).contains(&h) || (18..22).contains(&h) {
                3.0
            } else {
                1.0
            }
        })
    }

    fn meter(id: &str, before: &[f64], during: &[f64]) -> MeterFacts {
        MeterFacts {
            meter_id: id.into(),
            peers: "F1".into(),
            daily: before.iter().chain(during).map(|d| Some(*d)).collect(),
            hours_before: shaped(),
            hours_during: shaped(),
            ..Default::default()
        }
    }

    #[test]
    fn a_lasting_drop_outranks_a_holiday_and_peers_correct_for_a_cold_month() {
        let before = [10.0; 28];
        // Everyone uses 20 % less during (a mild month); the thief 60 % less than before;
        // the holiday-maker nothing for one week of four.
        let normal = [8.0; 28];
        let mut holiday = [8.0; 28];
        holiday[7..14].fill(0.0);
        let thief = [4.0; 28];
        let meters = [
            meter("honest1", &before, &normal),
            meter("honest2", &before, &normal),
            meter("holiday", &before, &holiday),
            meter("thief", &before, &thief),
        ];
        let ranked = rank(&meters, 28);
        assert_eq!(ranked[0].meter_id, "thief");
        let thief = &ranked[0].signals;
        assert!((thief.drop_self - 0.6).abs() < 1e-9);
        assert!((thief.drop_peers - 0.5).abs() < 1e-9, "{thief:?}");
        let honest = ranked.iter().find(|s| s.meter_id == "honest1").unwrap();
        assert_eq!(honest.signals.drop_peers, 0.0);
        let holiday = ranked.iter().find(|s| s.meter_id == "holiday").unwrap();
        assert!(holiday.signals.drop_peers < 0.01, "{holiday:?}");
        assert!((holiday.signals.zero_days - 0.25).abs() < 1e-9);
        assert_eq!(ranked[0].signals.reasons()[0], "drop_peers");
    }

    #[test]
    fn a_flattened_or_reversed_day_is_a_profile_change() {
        let mut flat = meter("flat", &[10.0; 14], &[10.0; 14]);
        flat.hours_during = [1.5; 24];
        let mut reversed = meter("reversed", &[10.0; 14], &[10.0; 14]);
        let s = shaped();
        reversed.hours_during = std::array::from_fn(|h| s[23 - h]);
        let same = meter("same", &[10.0; 14], &[10.0; 14]);
        let ranked = rank(&[flat, reversed, same], 14);
        let change = |id: &str| {
            ranked
                .iter()
                .find(|r| r.meter_id == id)
                .unwrap()
                .signals
                .profile_change
        };
        assert_eq!(change("flat"), 0.5);
        assert!(change("reversed") > 0.3, "{}", change("reversed"));
        assert_eq!(change("same"), 0.0);
    }

    #[test]
    fn a_tamper_event_then_a_drop_and_the_data_path_count() {
        let mut bypassed = meter("bypassed", &[10.0; 28], &[10.0; 28]);
        for d in &mut bypassed.daily[35..] {
            *d = Some(2.0);
        }
        bypassed.tamper_days = vec![35];
        bypassed.data_path_events = 6;
        bypassed.reverse_kwh = 0.25;
        let s = rank(&[bypassed], 28)[0].signals;
        assert!((s.tamper_drop - 0.8).abs() < 1e-9, "{s:?}");
        assert_eq!(s.data_path, 1.0);
        assert_eq!(s.reverse, 0.25);
    }
}
