//! Time stamps: RFC 3339 with an offset, Unix seconds or milliseconds, naive local times
//! (built-in layouts or `ts_format`), and naive times in an IANA zone across its DST
//! transitions (the rules are in the module doc of `csv`).

use std::collections::HashMap;

use chrono::{
    DateTime, LocalResult, NaiveDate, NaiveDateTime, Offset as _, TimeDelta, TimeZone as _,
};
use chrono_tz::Tz;

use super::shown;
use crate::ImportError;

/// A parsed time stamp.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Stamp {
    /// An exact instant, Unix ms.
    Utc(i64),
    /// A wall-clock time without zone.
    Local(NaiveDateTime),
}

/// Unix integers at or above this are milliseconds, below it seconds (1e11 s is in 5138).
const EPOCH_MS_FROM: i64 = 100_000_000_000;

/// Naive layouts read without `ts_format` (`%.f`: optional fraction).
const NAIVE_FORMATS: [&str; 4] = [
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d %H:%M",
];

/// A stamp as the module doc lists them; `ts_format` is the mapping's. The error is a row's
/// reason (without the column, which the caller adds).
pub(crate) fn parse_time(text: &str, ts_format: Option<&str>) -> Result<Stamp, ImportError> {
    if let Some(format) = ts_format {
        if let Ok(t) = DateTime::parse_from_str(text, format) {
            return Ok(Stamp::Utc(t.timestamp_millis()));
        }
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Ok(Stamp::Local(t));
        }
        if let Ok(d) = NaiveDate::parse_from_str(text, format) {
            return Ok(Stamp::Local(d.and_time(chrono::NaiveTime::MIN)));
        }
        return Err(ImportError::row(
            "ts",
            format!("time {:?} does not match ts_format {format:?}", shown(text)),
        ));
    }
    let not_a_time = || {
        ImportError::row(
            "ts",
            format!(
                "time {:?} is not RFC 3339, YYYY-MM-DD[ hh:mm[:ss[.fff]]] or Unix seconds/ms \
                 (ts_format reads other layouts)",
                shown(text)
            ),
        )
    };
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        let n: i64 = text.parse().map_err(|_| not_a_time())?;
        return if n < EPOCH_MS_FROM {
            Ok(Stamp::Utc(n * 1000))
        } else {
            Ok(Stamp::Utc(n))
        };
    }
    let (body, offset_s) = split_offset(text).ok_or_else(not_a_time)?;
    let naive = NAIVE_FORMATS
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(body, f).ok())
        .or_else(|| {
            NaiveDate::parse_from_str(body, "%Y-%m-%d")
                .ok()
                .map(|d| d.and_time(chrono::NaiveTime::MIN))
        })
        .ok_or_else(not_a_time)?;
    Ok(match offset_s {
        Some(s) => Stamp::Utc(naive.and_utc().timestamp_millis() - s * 1000),
        None => Stamp::Local(naive),
    })
}

/// Splits a trailing `Z` or `±HH[:MM]` / `±HHMM` off a stamp: (the rest, seconds east of UTC).
/// `None`: an offset that does not parse.
fn split_offset(text: &str) -> Option<(&str, Option<i64>)> {
    if let Some(body) = text.strip_suffix(['Z', 'z']) {
        return Some((body.trim_end(), Some(0)));
    }
    // After "YYYY-MM-DD", a + or - starts the offset.
    let Some(at) = text.rfind(['+', '-']).filter(|&i| i > 10) else {
        return Some((text, None));
    };
    let (body, offset) = text.split_at(at);
    let sign = if offset.starts_with('-') { -1 } else { 1 };
    let digits = offset.get(1..)?;
    let (hh, mm) = match digits.len() {
        2 => (digits, "00"),
        4 => (digits.get(..2)?, digits.get(2..)?),
        5 if digits.get(2..3) == Some(":") => (digits.get(..2)?, digits.get(3..)?),
        _ => return None,
    };
    let digit_pair = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| s.parse::<i64>().ok())
            .flatten()
    };
    let (hh, mm) = (digit_pair(hh)?, digit_pair(mm)?);
    if hh > 23 || mm > 59 {
        return None;
    }
    Some((body.trim_end(), Some(sign * (hh * 3600 + mm * 60))))
}

/// A wall-clock time in `tz` as Unix ms, by the DST rules of the module doc. `previous`: the
/// series' last instant. `None`: out of chrono's range.
fn local_to_ms(tz: Tz, naive: NaiveDateTime, previous: Option<i64>) -> Option<i64> {
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(t) => Some(t.timestamp_millis()),
        LocalResult::Ambiguous(a, b) => {
            let (a, b) = (a.timestamp_millis(), b.timestamp_millis());
            let (earlier, later) = (a.min(b), a.max(b));
            Some(match previous {
                Some(p) if earlier <= p => later,
                _ => earlier,
            })
        }
        LocalResult::None => {
            // In a gap: the offset in force a day before, i.e. before the transition.
            let before = naive.checked_sub_signed(TimeDelta::days(1))?;
            let offset_s = tz.offset_from_utc_datetime(&before).fix().local_minus_utc();
            Some(naive.and_utc().timestamp_millis() - i64::from(offset_s) * 1000)
        }
    }
}

/// Stamps made instants: naive ones in `tz` (UTC without one) by the DST rules of the module
/// doc, for which it keeps each series' last instant.
pub(crate) struct Instants {
    tz: Option<Tz>,
    /// Last instant per (meter_id, channel), for the repeated autumn hour (with `tz` only).
    last_ts: HashMap<(String, String), i64>,
}

impl Instants {
    pub(crate) fn new(tz: Option<Tz>) -> Instants {
        Instants {
            tz,
            last_ts: HashMap::new(),
        }
    }

    /// The instant of `stamp` in the series of `meter_id` and `channel`, Unix ms.
    pub(crate) fn of(
        &mut self,
        stamp: Stamp,
        meter_id: &str,
        channel: &str,
    ) -> Result<i64, ImportError> {
        Ok(match (stamp, self.tz) {
            (Stamp::Utc(ms), None) => ms,
            (Stamp::Local(naive), None) => naive.and_utc().timestamp_millis(),
            (stamp, Some(tz)) => {
                let key = (meter_id.to_string(), channel.to_string());
                let ms = match stamp {
                    Stamp::Utc(ms) => ms,
                    Stamp::Local(naive) => local_to_ms(tz, naive, self.last_ts.get(&key).copied())
                        .ok_or_else(|| {
                            ImportError::row("ts", format!("time {naive} is out of range in {tz}"))
                        })?,
                };
                self.last_ts.insert(key, ms);
                ms
            }
        })
    }
}
