//! `[vee]` of the config file: the parameters of every rule and method, with defaults that
//! work, each checked by its key name ([`VeeConfig::params`]).

use serde::{Deserialize, Serialize};

use meterflow_billing::config::parse_duration_ms;

use crate::VeeError;

/// `[vee]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VeeConfig {
    /// `zero`: days without consumption, on a meter that had some before, that make an
    /// exception.
    pub zero_days: u32,
    /// `stuck`: days a register stays unchanged while the meter's other channels move.
    pub stuck_days: u32,
    /// `clock`: a reading's time more than this many seconds after its receipt.
    pub clock_max_ahead_s: u64,
    /// `clock`: a reading's time more than this many days before its receipt.
    pub clock_max_age_days: u32,
    /// `spike`: an interval's consumption above this × the 95th percentile of the meter's
    /// intervals of the `look_back_days` before the period...
    pub spike_factor: f64,
    /// ...and above this (in the channel's unit): a meter that barely moves has a tiny 95th
    /// percentile.
    pub spike_floor: f64,
    /// `high_low`: a day's consumption above this × the meter's average day of the
    /// `look_back_days` before, or below it ÷ this.
    pub high_low_factor: f64,
    /// `sum_check`: the intervals' sum and the register's change over the same day differ
    /// by more than this share of the change.
    pub sum_check_tolerance: f64,
    /// `prolonged_estimation`: a meter estimated on more than this many days in a row.
    pub prolonged_estimation_days: u32,
    /// The history the statistics are taken over (95th percentile, average day), days.
    pub look_back_days: u32,
    /// `linear`: gaps up to this long (from the actual read before to the one after) are
    /// filled on the straight line: `2h`, `90m`, or seconds.
    pub linear_max_gap: String,
    /// `like_day` / `proration`: longer gaps up to this long are filled by the meter's own
    /// profile (the same local weekday and time of the last `like_day_weeks` weeks).
    pub like_day_max_gap: String,
    pub like_day_weeks: u32,
    /// `serve` runs VEE daily at this local time (`HH:MM`, in `billing.timezone`) over the
    /// `schedule_days` days before, and at start-up over those before the last such time if
    /// no run has judged all of them yet; empty: never (run `meterflow vee` instead).
    pub schedule: String,
    /// How many days before each scheduled time it judges (again): reads that came late, a
    /// run that failed or was missed, are judged on the next days' runs.
    pub schedule_days: u32,
}

impl Default for VeeConfig {
    fn default() -> Self {
        VeeConfig {
            zero_days: 3,
            stuck_days: 3,
            clock_max_ahead_s: 3600,
            clock_max_age_days: 30,
            spike_factor: 10.0,
            spike_floor: 1.0,
            high_low_factor: 3.0,
            sum_check_tolerance: 0.005,
            prolonged_estimation_days: 3,
            look_back_days: 30,
            linear_max_gap: "2h".into(),
            like_day_max_gap: "7d".into(),
            like_day_weeks: 4,
            schedule: String::new(),
            schedule_days: 3,
        }
    }
}

/// The parameters, checked and in the units the rules use.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub zero_days: u32,
    pub stuck_days: u32,
    pub clock_max_ahead_ms: i64,
    pub clock_max_age_ms: i64,
    pub spike_factor: f64,
    pub spike_floor: f64,
    pub high_low_factor: f64,
    pub sum_check_tolerance: f64,
    pub prolonged_estimation_days: u32,
    pub look_back_days: u32,
    pub linear_max_gap_ms: i64,
    pub like_day_max_gap_ms: i64,
    pub like_day_weeks: u32,
    /// `vee.schedule`: the local time of day `serve` runs VEE at, if it does.
    pub schedule: Option<chrono::NaiveTime>,
    /// `vee.schedule_days`.
    pub schedule_days: u32,
}

impl Default for Params {
    fn default() -> Self {
        VeeConfig::default()
            .params()
            .unwrap_or_else(|_| unreachable!("the defaults are valid"))
    }
}

impl VeeConfig {
    /// The parameters, or the first bad key.
    pub fn params(&self) -> Result<Params, VeeError> {
        let positive_days = |key: &str, v: u32, max: u32| {
            if v == 0 || v > max {
                Err(VeeError::config(key, format!("must be 1 to {max}")))
            } else {
                Ok(v)
            }
        };
        let factor = |key: &str, v: f64| {
            if v.is_finite() && v > 1.0 {
                Ok(v)
            } else {
                Err(VeeError::config(key, "must be a number above 1"))
            }
        };
        let duration = |key: &str, text: &str| {
            parse_duration_ms(text).filter(|ms| *ms > 0).ok_or_else(|| {
                VeeError::config(
                    key,
                    format!("{text:?} is not a duration such as 2h, 90m, 7d or seconds"),
                )
            })
        };
        if !(self.spike_floor.is_finite() && self.spike_floor >= 0.0) {
            return Err(VeeError::config(
                "vee.spike_floor",
                "must be a number of at least 0",
            ));
        }
        if !(self.sum_check_tolerance.is_finite() && (0.0..1.0).contains(&self.sum_check_tolerance))
        {
            return Err(VeeError::config(
                "vee.sum_check_tolerance",
                "must be a share from 0 to below 1 (0.005 is 0.5 %)",
            ));
        }
        if self.clock_max_ahead_s == 0 || self.clock_max_ahead_s > 86_400 * 366 {
            return Err(VeeError::config(
                "vee.clock_max_ahead_s",
                "must be 1 to 31622400",
            ));
        }
        let linear_max_gap_ms = duration("vee.linear_max_gap", &self.linear_max_gap)?;
        let like_day_max_gap_ms = duration("vee.like_day_max_gap", &self.like_day_max_gap)?;
        if like_day_max_gap_ms < linear_max_gap_ms {
            return Err(VeeError::config(
                "vee.like_day_max_gap",
                "must be at least vee.linear_max_gap",
            ));
        }
        if like_day_max_gap_ms > 31 * 86_400_000 {
            return Err(VeeError::config(
                "vee.like_day_max_gap",
                "must be at most 31d",
            ));
        }
        let schedule = match self.schedule.trim() {
            "" => None,
            text => Some(
                chrono::NaiveTime::parse_from_str(text, "%H:%M").map_err(|_| {
                    VeeError::config(
                        "vee.schedule",
                        format!("{text:?} is not a local time of day HH:MM, such as \"02:00\" (empty: never)"),
                    )
                })?,
            ),
        };
        Ok(Params {
            zero_days: positive_days("vee.zero_days", self.zero_days, 366)?,
            stuck_days: positive_days("vee.stuck_days", self.stuck_days, 366)?,
            clock_max_ahead_ms: self.clock_max_ahead_s as i64 * 1000,
            clock_max_age_ms: i64::from(positive_days(
                "vee.clock_max_age_days",
                self.clock_max_age_days,
                3660,
            )?) * 86_400_000,
            spike_factor: factor("vee.spike_factor", self.spike_factor)?,
            spike_floor: self.spike_floor,
            high_low_factor: factor("vee.high_low_factor", self.high_low_factor)?,
            sum_check_tolerance: self.sum_check_tolerance,
            prolonged_estimation_days: positive_days(
                "vee.prolonged_estimation_days",
                self.prolonged_estimation_days,
                366,
            )?,
            look_back_days: positive_days("vee.look_back_days", self.look_back_days, 366)?,
            linear_max_gap_ms,
            like_day_max_gap_ms,
            like_day_weeks: positive_days("vee.like_day_weeks", self.like_day_weeks, 52)?,
            schedule,
            // At least 2: a catch-up at start-up that runs past the daily time makes the
            // next night's run the first to judge the day before it.
            schedule_days: match self.schedule_days {
                2..=31 => self.schedule_days,
                _ => {
                    return Err(VeeError::config(
                        "vee.schedule_days",
                        "must be 2 to 31 (the day before, and at least one more to catch up)",
                    ))
                }
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_the_issues_and_valid() {
        let p = VeeConfig::default().params().unwrap();
        assert_eq!((p.zero_days, p.stuck_days), (3, 3));
        assert_eq!(p.clock_max_ahead_ms, 3_600_000);
        assert_eq!(p.clock_max_age_ms, 30 * 86_400_000);
        assert_eq!((p.spike_factor, p.high_low_factor), (10.0, 3.0));
        assert_eq!(p.linear_max_gap_ms, 2 * 3_600_000);
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let bad = |f: fn(&mut VeeConfig), key: &str| {
            let mut c = VeeConfig::default();
            f(&mut c);
            match c.params() {
                Err(VeeError::Config { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{key}: {other:?}"),
            }
        };
        bad(|c| c.zero_days = 0, "vee.zero_days");
        bad(|c| c.spike_factor = 1.0, "vee.spike_factor");
        bad(|c| c.spike_floor = f64::NAN, "vee.spike_floor");
        bad(|c| c.sum_check_tolerance = 1.0, "vee.sum_check_tolerance");
        bad(
            |c| c.linear_max_gap = "2 hours".into(),
            "vee.linear_max_gap",
        );
        bad(|c| c.like_day_max_gap = "1h".into(), "vee.like_day_max_gap");
        bad(|c| c.schedule = "2am".into(), "vee.schedule");
        bad(|c| c.schedule = "25:00".into(), "vee.schedule");
        bad(|c| c.schedule_days = 0, "vee.schedule_days");
        bad(|c| c.schedule_days = 1, "vee.schedule_days");
        let mut c = VeeConfig::default();
        assert_eq!(c.params().unwrap().schedule, None);
        c.schedule = "02:30".into();
        assert_eq!(
            c.params().unwrap().schedule,
            chrono::NaiveTime::from_hms_opt(2, 30, 0)
        );
    }
}
