//! Local time: the zone bills are made in (`--tz`, `billing.timezone`), reading the times a
//! user gives and printing instants with their offset (RFC 3339).
//!
//! A local time that a DST switch skips (02:30 on the spring day in Europe/Berlin) is taken
//! as the first instant after the gap; one that happens twice (02:30 on the autumn day) as
//! the first of the two. A local day is from its midnight to the next: 23 or 25 hours on a
//! day with a switch.

use chrono::{DateTime, LocalResult, NaiveDate, NaiveDateTime, Offset, SecondsFormat, TimeZone};
use chrono_tz::Tz;

use crate::BillingError;

/// An IANA time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Zone(Tz);

impl Zone {
    pub const UTC: Zone = Zone(Tz::UTC);

    /// Reads an IANA name (`Europe/Berlin`, `UTC`); `what` names the flag or key it came from.
    pub fn parse(name: &str, what: &str) -> Result<Zone, BillingError> {
        name.trim()
            .parse::<Tz>()
            .map(Zone)
            .map_err(|_| BillingError::Zone {
                what: what.to_string(),
                name: name.to_string(),
            })
    }

    pub fn name(&self) -> &'static str {
        self.0.name()
    }

    /// The zone's offset from UTC at `at_ms`, seconds.
    pub fn offset_s(&self, at_ms: i64) -> i32 {
        match DateTime::from_timestamp_millis(at_ms) {
            Some(utc) => self
                .0
                .offset_from_utc_datetime(&utc.naive_utc())
                .fix()
                .local_minus_utc(),
            None => 0,
        }
    }

    /// The local date and time at `at_ms`.
    pub fn local(&self, at_ms: i64) -> NaiveDateTime {
        let offset_ms = i64::from(self.offset_s(at_ms)) * 1000;
        DateTime::from_timestamp_millis(at_ms.saturating_add(offset_ms))
            .unwrap_or_default()
            .naive_utc()
    }

    /// The instant of a local date and time: the first after a DST gap, the first of two in
    /// a DST overlap.
    pub fn instant(&self, local: NaiveDateTime) -> i64 {
        match self.0.from_local_datetime(&local) {
            LocalResult::Single(t) => t.timestamp_millis(),
            LocalResult::Ambiguous(first, _) => first.timestamp_millis(),
            LocalResult::None => {
                // In a gap (they end on a whole minute, a few hours at most): the first local
                // minute that exists is the instant the clocks jumped.
                let mut probe = local;
                for _ in 0..(24 * 60) {
                    probe += chrono::Duration::minutes(1);
                    if let LocalResult::Single(t) | LocalResult::Ambiguous(t, _) =
                        self.0.from_local_datetime(&probe)
                    {
                        return t.timestamp_millis();
                    }
                }
                local.and_utc().timestamp_millis()
            }
        }
    }

    /// Local midnight starting `day`.
    pub fn midnight(&self, day: NaiveDate) -> i64 {
        self.instant(day.and_hms_opt(0, 0, 0).unwrap_or_default())
    }

    /// `at_ms` in RFC 3339 with the zone's offset, e.g. `2026-03-29T03:00:00+02:00`
    /// (milliseconds only where there are some).
    pub fn format(&self, at_ms: i64) -> String {
        let Some(utc) = DateTime::from_timestamp_millis(at_ms) else {
            return at_ms.to_string();
        };
        let digits = if at_ms % 1000 == 0 {
            SecondsFormat::Secs
        } else {
            SecondsFormat::Millis
        };
        utc.with_timezone(&self.0).to_rfc3339_opts(digits, false)
    }

    /// Reads a time from the command line: RFC 3339 with an offset (an instant), or a local
    /// `YYYY-MM-DD` (its midnight), `YYYY-MM-DDTHH:MM[:SS]` or `YYYY-MM-DD HH:MM[:SS]`.
    pub fn parse_time(&self, text: &str, what: &str) -> Result<i64, BillingError> {
        let text = text.trim();
        if let Ok(t) = DateTime::parse_from_rfc3339(text) {
            return Ok(t.timestamp_millis());
        }
        if let Ok(day) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
            return Ok(self.midnight(day));
        }
        for format in [
            "%Y-%m-%dT%H:%M:%S",
            "%Y-%m-%dT%H:%M",
            "%Y-%m-%d %H:%M:%S",
            "%Y-%m-%d %H:%M",
        ] {
            if let Ok(local) = NaiveDateTime::parse_from_str(text, format) {
                return Ok(self.instant(local));
            }
        }
        Err(BillingError::Time {
            what: what.to_string(),
            reason: format!(
                "{text:?} is not a time: give YYYY-MM-DD (local midnight in {}), \
                 YYYY-MM-DDTHH:MM (local), or RFC 3339 with an offset",
                self.name()
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(name: &str) -> Zone {
        Zone::parse(name, "--tz").unwrap()
    }

    fn utc(text: &str) -> i64 {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn local_days_in_berlin_have_23_and_25_hours_on_the_dst_days() {
        let berlin = zone("Europe/Berlin");
        let day = |d: &str| berlin.parse_time(d, "--from").unwrap();
        assert_eq!(day("2026-03-29"), utc("2026-03-28T23:00:00Z"));
        assert_eq!(day("2026-03-30") - day("2026-03-29"), 23 * 3_600_000);
        assert_eq!(day("2026-10-26") - day("2026-10-25"), 25 * 3_600_000);
        assert_eq!(day("2026-06-02") - day("2026-06-01"), 24 * 3_600_000);
        // Printed with the offset of the instant.
        assert_eq!(
            berlin.format(day("2026-03-30")),
            "2026-03-30T00:00:00+02:00"
        );
        assert_eq!(
            berlin.format(day("2026-03-29")),
            "2026-03-29T00:00:00+01:00"
        );
        // The skipped 02:30 is the instant of the jump, 03:00 CEST; the doubled 02:30 the
        // first.
        assert_eq!(
            berlin.parse_time("2026-03-29T02:30", "--from").unwrap(),
            utc("2026-03-29T01:00:00Z")
        );
        assert_eq!(
            berlin.parse_time("2026-10-25 02:30", "--from").unwrap(),
            utc("2026-10-25T00:30:00Z")
        );
    }

    #[test]
    fn bishkek_is_six_hours_ahead_all_year() {
        let bishkek = zone("Asia/Bishkek");
        assert_eq!(
            bishkek.parse_time("2026-01-15", "--from").unwrap(),
            utc("2026-01-14T18:00:00Z")
        );
        assert_eq!(
            bishkek.parse_time("2026-07-15", "--from").unwrap(),
            utc("2026-07-14T18:00:00Z")
        );
        assert_eq!(
            bishkek.format(utc("2026-07-14T18:00:00Z")),
            "2026-07-15T00:00:00+06:00"
        );
    }

    #[test]
    fn an_instant_with_its_offset_is_taken_as_it_is() {
        let berlin = zone("Europe/Berlin");
        assert_eq!(
            berlin
                .parse_time("2026-03-01T00:00:00+06:00", "--to")
                .unwrap(),
            utc("2026-02-28T18:00:00Z")
        );
        assert_eq!(
            Zone::UTC.format(utc("2026-02-28T18:00:00.250Z")),
            "2026-02-28T18:00:00.250+00:00"
        );
    }

    #[test]
    fn bad_zones_and_times_are_named() {
        let e = Zone::parse("Europe/Bishkek", "--tz")
            .unwrap_err()
            .to_string();
        assert!(e.contains("--tz") && e.contains("Europe/Bishkek"), "{e}");
        let e = Zone::UTC
            .parse_time("01.03.2026", "--from")
            .unwrap_err()
            .to_string();
        assert!(e.contains("--from") && e.contains("01.03.2026"), "{e}");
    }
}
