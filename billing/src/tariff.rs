//! Time-of-use tariffs: a TOML file of named periods by local day type, month and time of
//! day, and the [`Timeline`] a question's span is cut into by them.
//!
//! ```toml
//! name = "residential-2026"
//! holidays = ["2026-01-01", "2026-03-08"]   # day type "holiday"
//! [[period]]
//! name = "day"
//! days = ["mon", "tue", "wed", "thu", "fri"] # mon..sun, "holiday"; default every day type
//! months = [1, 2, 3]                         # default all
//! from = "07:00"                             # local, [from, to); default the whole day
//! to = "23:00"                               # "24:00" is the end of the day; to < from wraps
//! [[period]]
//! name = "night"                             # no days/from/to: every instant left
//! ```
//!
//! An instant belongs to the first period, in file order, whose day types, months and hours
//! take it, judged at the instant's own local date and time (a holiday is a holiday whatever
//! its weekday). A file that leaves some instant to no period is refused, naming it.

use std::collections::{BTreeSet, HashSet};

use chrono::{Datelike, NaiveDate, NaiveDateTime, Timelike};
use serde::Deserialize;

use crate::clock::Zone;
use crate::BillingError;

/// A day type: a weekday, or a holiday of the file's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DayType {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
    Holiday,
}

impl DayType {
    const ALL: [DayType; 8] = [
        DayType::Mon,
        DayType::Tue,
        DayType::Wed,
        DayType::Thu,
        DayType::Fri,
        DayType::Sat,
        DayType::Sun,
        DayType::Holiday,
    ];

    fn parse(text: &str) -> Option<DayType> {
        Some(match text.to_ascii_lowercase().as_str() {
            "mon" => DayType::Mon,
            "tue" => DayType::Tue,
            "wed" => DayType::Wed,
            "thu" => DayType::Thu,
            "fri" => DayType::Fri,
            "sat" => DayType::Sat,
            "sun" => DayType::Sun,
            "holiday" => DayType::Holiday,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            DayType::Mon => "mon",
            DayType::Tue => "tue",
            DayType::Wed => "wed",
            DayType::Thu => "thu",
            DayType::Fri => "fri",
            DayType::Sat => "sat",
            DayType::Sun => "sun",
            DayType::Holiday => "holiday",
        }
    }

    fn weekday(day: NaiveDate) -> DayType {
        DayType::ALL[day.weekday().num_days_from_monday() as usize]
    }
}

/// One period of a tariff.
#[derive(Debug, Clone, PartialEq)]
pub struct Period {
    pub name: String,
    days: BTreeSet<DayType>,
    /// Months 1..=12 it applies in.
    months: BTreeSet<u32>,
    /// Minutes of the local day, [from, to); `to` 1440 is midnight at the end; `to < from`
    /// wraps over midnight. `None`: the whole day.
    hours: Option<(u32, u32)>,
}

impl Period {
    fn takes(&self, day: DayType, month: u32, minute: u32) -> bool {
        self.days.contains(&day)
            && self.months.contains(&month)
            && match self.hours {
                None => true,
                Some((from, to)) if from < to => (from..to).contains(&minute),
                Some((from, to)) => minute >= from || minute < to,
            }
    }
}

/// A time-of-use tariff, as read from its file.
#[derive(Debug, Clone, PartialEq)]
pub struct Tariff {
    pub name: String,
    holidays: HashSet<NaiveDate>,
    periods: Vec<Period>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TariffFile {
    name: String,
    #[serde(default)]
    holidays: Vec<String>,
    #[serde(default)]
    period: Vec<PeriodFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PeriodFile {
    name: String,
    days: Option<Vec<String>>,
    months: Option<Vec<u32>>,
    from: Option<String>,
    to: Option<String>,
}

/// `HH:MM` as minutes of the day; `24:00` (the end of the day) only where `end`.
fn minute_of_day(text: &str, end: bool) -> Option<u32> {
    let (h, m) = text.trim().split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    match (h, m) {
        (24, 0) if end => Some(1440),
        (0..=23, 0..=59) => Some(h * 60 + m),
        _ => None,
    }
}

impl Tariff {
    /// Reads a tariff file; errors name `file` and what to fix in it.
    pub fn from_toml(text: &str, file: &str) -> Result<Tariff, BillingError> {
        let bad = |reason: String| BillingError::tariff(file, reason);
        let parsed: TariffFile = toml::from_str(text).map_err(|e| bad(e.message().to_string()))?;
        if parsed.name.trim().is_empty() {
            return Err(bad("`name` is empty".into()));
        }
        let mut holidays = HashSet::new();
        for h in &parsed.holidays {
            let day = NaiveDate::parse_from_str(h.trim(), "%Y-%m-%d")
                .map_err(|_| bad(format!("holiday {h:?} is not a date like 2026-01-01")))?;
            holidays.insert(day);
        }
        if parsed.period.is_empty() {
            return Err(bad("no [[period]]".into()));
        }
        let mut periods: Vec<Period> = Vec::new();
        for (i, p) in parsed.period.iter().enumerate() {
            let at = format!("period {} ({:?})", i + 1, p.name);
            let name = p.name.trim();
            if name.is_empty() {
                return Err(bad(format!("period {}: `name` is empty", i + 1)));
            }
            if name == "total" || periods.iter().any(|q| q.name == name) {
                return Err(bad(format!(
                    "{at}: the name is taken (by another period, or `total`)"
                )));
            }
            let days = match &p.days {
                None => DayType::ALL.into_iter().collect(),
                Some(list) => {
                    let mut days = BTreeSet::new();
                    for d in list {
                        days.insert(DayType::parse(d).ok_or_else(|| {
                            bad(format!(
                                "{at}: day {d:?} is none of mon, tue, wed, thu, fri, sat, sun, holiday"
                            ))
                        })?);
                    }
                    if days.is_empty() {
                        return Err(bad(format!("{at}: `days` is empty")));
                    }
                    days
                }
            };
            let months = match &p.months {
                None => (1..=12).collect(),
                Some(list) => {
                    if list.is_empty() {
                        return Err(bad(format!("{at}: `months` is empty")));
                    }
                    if let Some(m) = list.iter().find(|m| !(1..=12).contains(*m)) {
                        return Err(bad(format!("{at}: month {m} is not 1 to 12")));
                    }
                    list.iter().copied().collect()
                }
            };
            let hours = match (&p.from, &p.to) {
                (None, None) => None,
                (Some(from), Some(to)) => {
                    let f = minute_of_day(from, false).ok_or_else(|| {
                        bad(format!("{at}: from {from:?} is not a time like 07:00"))
                    })?;
                    let t = minute_of_day(to, true).ok_or_else(|| {
                        bad(format!(
                            "{at}: to {to:?} is not a time like 23:00 (or 24:00)"
                        ))
                    })?;
                    if f == t {
                        return Err(bad(format!(
                            "{at}: from and to are both {from:?}: an empty period (leave both out for the whole day)"
                        )));
                    }
                    if f == 0 && t == 1440 {
                        None
                    } else {
                        Some((f, t % 1440))
                    }
                }
                _ => return Err(bad(format!("{at}: give both `from` and `to`, or neither"))),
            };
            periods.push(Period {
                name: name.to_string(),
                days,
                months,
                hours,
            });
        }
        let tariff = Tariff {
            name: parsed.name.trim().to_string(),
            holidays,
            periods,
        };
        // Every day type, month and minute must have a period: else the first that has none.
        // Without holidays in the file no day is of type `holiday`: it needs none.
        let day_types = if tariff.holidays.is_empty() {
            &DayType::ALL[..7]
        } else {
            &DayType::ALL[..]
        };
        for &day in day_types {
            for month in 1..=12 {
                for minute in 0..1440 {
                    if tariff.period_index(day, month, minute).is_none() {
                        return Err(bad(format!(
                            "no period takes {} in month {month} at {:02}:{:02}: \
                             add it to a period, or end the file with a period that takes \
                             every instant left (a name only)",
                            day.name(),
                            minute / 60,
                            minute % 60
                        )));
                    }
                }
            }
        }
        Ok(tariff)
    }

    /// The periods, in file order.
    pub fn periods(&self) -> &[Period] {
        &self.periods
    }

    fn period_index(&self, day: DayType, month: u32, minute: u32) -> Option<usize> {
        self.periods
            .iter()
            .position(|p| p.takes(day, month, minute))
    }

    /// The period of a local date and time (a minute).
    fn period_at(&self, local: NaiveDateTime) -> usize {
        let date = local.date();
        let day = if self.holidays.contains(&date) {
            DayType::Holiday
        } else {
            DayType::weekday(date)
        };
        let minute = local.hour() * 60 + local.minute();
        // Every instant has one: checked when the file was read.
        self.period_index(day, date.month(), minute).unwrap_or(0)
    }

    /// The local times of day at which some period may begin or end, minutes, sorted.
    fn edges(&self) -> Vec<u32> {
        let mut edges: BTreeSet<u32> = [0].into();
        for p in &self.periods {
            if let Some((from, to)) = p.hours {
                edges.insert(from);
                edges.insert(to);
            }
        }
        edges.into_iter().collect()
    }
}

/// A span `[from, to)` cut where the period changes: `(start_ms, period)` in time order, the
/// first at `from`. Without a tariff, one piece, period 0 (`total`).
#[derive(Debug, Clone, PartialEq)]
pub struct Timeline {
    pieces: Vec<(i64, usize)>,
    to_ms: i64,
}

impl Timeline {
    /// One period over the whole span.
    pub fn whole(from_ms: i64, to_ms: i64) -> Timeline {
        Timeline {
            pieces: vec![(from_ms, 0)],
            to_ms,
        }
    }

    /// `[from, to)` cut by `tariff`'s periods in local time of `zone`.
    pub fn new(tariff: &Tariff, zone: Zone, from_ms: i64, to_ms: i64) -> Timeline {
        let edges = tariff.edges();
        let mut pieces: Vec<(i64, usize)> = Vec::new();
        let mut t = from_ms;
        while t < to_ms {
            let local = zone.local(t);
            let period = tariff.period_at(local);
            if pieces.last().is_none_or(|&(_, p)| p != period) {
                pieces.push((t, period));
            }
            // The next local edge of the day (or the next midnight), as an instant at today's
            // offset; a DST switch before it ends the piece there instead.
            let minute_now = local.hour() * 60 + local.minute();
            let next_minute = edges
                .iter()
                .copied()
                .find(|&e| e > minute_now)
                .unwrap_or(1440);
            let day_start = local.date().and_hms_opt(0, 0, 0).unwrap_or_default();
            let next_local = day_start + chrono::Duration::minutes(i64::from(next_minute));
            let step_ms = (next_local - local).num_milliseconds().max(1);
            let mut next = t.saturating_add(step_ms);
            let offset = zone.offset_s(t);
            if zone.offset_s(next) != offset {
                // The first instant (to the second) at the new offset.
                let (mut lo, mut hi) = (t / 1000, next.div_euclid(1000) + 1);
                while hi - lo > 1 {
                    let mid = lo + (hi - lo) / 2;
                    if zone.offset_s(mid * 1000) == offset {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                next = (hi * 1000).max(t + 1);
            }
            t = next;
        }
        Timeline { pieces, to_ms }
    }

    /// The period at `at_ms` (inside the span).
    pub fn period_at(&self, at_ms: i64) -> usize {
        let i = self.pieces.partition_point(|&(start, _)| start <= at_ms);
        self.pieces.get(i.saturating_sub(1)).map_or(0, |&(_, p)| p)
    }

    /// Adds `amount`, spread evenly over `[t0, t1)`, to `by_period` at the periods' indexes,
    /// for the part of it inside the span.
    pub fn spread(&self, t0: i64, t1: i64, amount: f64, by_period: &mut [f64]) {
        if t1 <= t0 || amount == 0.0 {
            return;
        }
        let span = (t1 - t0) as f64;
        let first = self
            .pieces
            .partition_point(|&(start, _)| start <= t0)
            .saturating_sub(1);
        for (k, &(start, period)) in self.pieces.iter().enumerate().skip(first) {
            if start >= t1 {
                break;
            }
            let end = self.pieces.get(k + 1).map_or(self.to_ms, |&(s, _)| s);
            let (a, b) = (start.max(t0), end.min(t1));
            if b > a {
                if let Some(slot) = by_period.get_mut(period) {
                    *slot += amount * ((b - a) as f64 / span);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOU: &str = r#"
name = "residential-2026"
holidays = ["2026-01-01", "2026-03-08"]
[[period]]
name = "day"
days = ["mon", "tue", "wed", "thu", "fri"]
from = "07:00"
to = "23:00"
[[period]]
name = "night"
"#;

    fn utc(text: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(text)
            .unwrap()
            .timestamp_millis()
    }

    fn pieces(t: &Timeline, zone: Zone) -> Vec<(String, usize)> {
        t.pieces.iter().map(|&(s, p)| (zone.format(s), p)).collect()
    }

    #[test]
    fn a_berlin_week_with_a_dst_switch_and_a_holiday() {
        let tariff = Tariff::from_toml(TOU, "tou.toml").unwrap();
        let berlin = Zone::parse("Europe/Berlin", "--tz").unwrap();
        // Fri 2026-03-06 .. Tue 2026-03-10 (Sun 03-08 a holiday: night anyway), then the
        // DST switch on Sun 2026-03-29.
        let from = berlin.parse_time("2026-03-06", "").unwrap();
        let to = berlin.parse_time("2026-03-10", "").unwrap();
        let t = Timeline::new(&tariff, berlin, from, to);
        assert_eq!(
            pieces(&t, berlin),
            vec![
                ("2026-03-06T00:00:00+01:00".into(), 1),
                ("2026-03-06T07:00:00+01:00".into(), 0),
                ("2026-03-06T23:00:00+01:00".into(), 1),
                ("2026-03-09T07:00:00+01:00".into(), 0),
                ("2026-03-09T23:00:00+01:00".into(), 1),
            ]
        );
        let from = berlin.parse_time("2026-03-27", "").unwrap();
        let to = berlin.parse_time("2026-03-31", "").unwrap();
        let t = Timeline::new(&tariff, berlin, from, to);
        assert_eq!(
            pieces(&t, berlin),
            vec![
                ("2026-03-27T00:00:00+01:00".into(), 1),
                ("2026-03-27T07:00:00+01:00".into(), 0),
                ("2026-03-27T23:00:00+01:00".into(), 1),
                ("2026-03-30T07:00:00+02:00".into(), 0),
                ("2026-03-30T23:00:00+02:00".into(), 1),
            ]
        );
        // Spreading 23 kWh evenly over the local Sunday of 23 hours: all night.
        let mut by = [0.0, 0.0];
        let sun = berlin.parse_time("2026-03-29", "").unwrap();
        let mon = berlin.parse_time("2026-03-30", "").unwrap();
        assert_eq!(mon - sun, 23 * 3_600_000);
        t.spread(sun, mon, 23.0, &mut by);
        assert_eq!(by, [0.0, 23.0]);
        // Monday: 7 h night, 16 h day, 1 h night.
        let mut by = [0.0, 0.0];
        t.spread(mon, mon + 24 * 3_600_000, 24.0, &mut by);
        assert!(
            (by[0] - 16.0).abs() < 1e-12 && (by[1] - 8.0).abs() < 1e-12,
            "{by:?}"
        );
    }

    #[test]
    fn a_period_over_midnight_and_by_month() {
        let tariff = Tariff::from_toml(
            r#"
name = "seasonal"
[[period]]
name = "winter-peak"
months = [1, 2, 12]
from = "17:00"
to = "21:00"
[[period]]
name = "night"
from = "23:00"
to = "06:00"
[[period]]
name = "rest"
"#,
            "seasonal.toml",
        )
        .unwrap();
        let t = Timeline::new(
            &tariff,
            Zone::UTC,
            utc("2026-02-28T12:00:00Z"),
            utc("2026-03-01T18:00:00Z"),
        );
        assert_eq!(
            pieces(&t, Zone::UTC),
            vec![
                ("2026-02-28T12:00:00+00:00".into(), 2),
                ("2026-02-28T17:00:00+00:00".into(), 0),
                ("2026-02-28T21:00:00+00:00".into(), 2),
                ("2026-02-28T23:00:00+00:00".into(), 1),
                ("2026-03-01T06:00:00+00:00".into(), 2),
            ]
        );
        assert_eq!(t.period_at(utc("2026-03-01T17:30:00Z")), 2);
        assert_eq!(t.period_at(utc("2026-03-01T02:00:00Z")), 1);
    }

    #[test]
    fn files_that_leave_an_instant_to_no_period_or_say_too_much_are_refused() {
        let e = |text: &str| Tariff::from_toml(text, "t.toml").unwrap_err().to_string();
        let weekdays_only = r#"
[[period]]
name = "day"
days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
from = "07:00"
to = "23:00"
[[period]]
name = "night"
from = "23:00"
to = "07:00"
"#;
        // Without holidays no day is a holiday: the file covers every instant.
        Tariff::from_toml(&format!("name = \"x\"\n{weekdays_only}"), "t.toml").unwrap();
        // With them, the holidays' days from 07:00 to 23:00 are in no period.
        let gap = e(&format!(
            "name = \"x\"\nholidays = [\"2026-01-01\"]\n{weekdays_only}"
        ));
        assert!(
            gap.contains("t.toml") && gap.contains("no period takes holiday in month 1 at 07:00"),
            "{gap}"
        );
        assert!(
            e("name = \"x\"\n[[period]]\nname = \"a\"\nfrom = \"7:00\"\nto = \"23:00\"\n")
                .contains("from \"7:00\"")
        );
        assert!(
            e("name = \"x\"\n[[period]]\nname = \"a\"\ndays = [\"monday\"]\n")
                .contains("\"monday\"")
        );
        assert!(e("name = \"x\"\n[[period]]\nname = \"a\"\nmonths = [13]\n").contains("month 13"));
        assert!(
            e("name = \"x\"\n[[period]]\nname = \"a\"\n[[period]]\nname = \"a\"\n")
                .contains("taken")
        );
        assert!(e("name = \"x\"\nseason = 1\n[[period]]\nname = \"a\"\n").contains("season"));
        assert!(e("name = \"x\"\n").contains("no [[period]]"));
        assert!(
            e("name = \"x\"\n[[period]]\nname = \"a\"\nfrom = \"07:00\"\nto = \"07:00\"\n")
                .contains("empty period")
        );
        assert!(e("name = \"x\"\n[[period]]\nname = \"a\"\nfrom = \"07:00\"\n").contains("both"));
    }
}
