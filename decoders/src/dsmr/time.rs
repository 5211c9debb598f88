//! DSMR timestamps: `YYMMDDhhmmssX`, local Dutch/Belgian/Luxembourg wall-clock time (CET/CEST
//! under the EU rule, computed here without a tz database) with `X` = `S` (summer, UTC+2) or
//! `W` (winter, UTC+1); DSMR 2.2/3.0 gas capture times have no `X`.

/// What a timestamp group says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stamp {
    /// Not of the form `YYMMDDhhmmss` with an optional `S`/`W` flag.
    Syntax,
    /// Of that form but not a calendar date and time: the DLMS "not specified" pattern
    /// (`632525252525S`), all zeros, anonymised dumps (`123412341234W`).
    NotADate,
    /// A real instant, Unix milliseconds UTC.
    At(i64),
}

/// Instants before this (2001-01-01T00:00:00Z) mean a meter clock that was never set: it counts
/// from its reset value 2000-01-01, and `700101010000W` is Unix time 0.
pub(crate) const CLOCK_SET_FROM_MS: i64 = 978_307_200_000;

/// Parses a `YYMMDDhhmmss[X]` group. Two-digit years 00-69 are 20YY, 70-99 19YY (the POSIX
/// `%y` pivot, so the placeholder `700101010000W` reads as the epoch it stands for).
pub(crate) fn parse_stamp(b: &[u8]) -> Stamp {
    let (digits, flag) = match b.len() {
        12 => (b, None),
        13 => match b.split_last() {
            Some((&f, d)) if matches!(f, b'S' | b'W' | b's' | b'w') => (d, Some(f)),
            _ => return Stamp::Syntax,
        },
        _ => return Stamp::Syntax,
    };
    let mut n = [0i64; 6];
    for (i, slot) in n.iter_mut().enumerate() {
        let (Some(&hi), Some(&lo)) = (digits.get(2 * i), digits.get(2 * i + 1)) else {
            return Stamp::Syntax;
        };
        if !hi.is_ascii_digit() || !lo.is_ascii_digit() {
            return Stamp::Syntax;
        }
        *slot = i64::from(hi - b'0') * 10 + i64::from(lo - b'0');
    }
    let [yy, month, day, hour, minute, second] = n;
    let year = if yy < 70 { 2000 + yy } else { 1900 + yy };
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return Stamp::NotADate;
    }
    let local_s = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    let summer = matches!(flag, Some(b'S' | b's'));
    Stamp::At(local_to_utc(year, local_s, summer) * 1000)
}

/// Local Dutch/Belgian/Luxembourg wall-clock seconds to UTC seconds under the EU rule. The
/// summer flag decides only where the wall clock alone cannot: in the autumn hour that occurs
/// twice and in the skipped spring hour (without a flag: winter time). A flag that contradicts
/// the date (the e-MUCS spec example's `200305122139S` in March) does not shift the time; this
/// is what pytz's `localize(is_dst=flag)` does in ndokter's dsmr_parser.
fn local_to_utc(year: i64, local_s: i64, summer_flag: bool) -> i64 {
    let (start, end) = eu_summer_time(year);
    let as_summer = local_s - 7200;
    let as_winter = local_s - 3600;
    let summer_fits = (start..end).contains(&as_summer);
    let winter_fits = !(start..end).contains(&as_winter);
    match (summer_fits, winter_fits) {
        (true, false) => as_summer,
        (false, true) => as_winter,
        // Ambiguous (autumn) or nonexistent (spring): the flag says which.
        _ if summer_flag => as_summer,
        _ => as_winter,
    }
}

/// EU summer time of `year` in UTC seconds: last Sunday of March 01:00 UTC to last Sunday of
/// October 01:00 UTC.
fn eu_summer_time(year: i64) -> (i64, i64) {
    (
        last_sunday(year, 3) * 86_400 + 3600,
        last_sunday(year, 10) * 86_400 + 3600,
    )
}

/// Days since 1970-01-01 of the last Sunday of a 31-day month.
fn last_sunday(year: i64, month: i64) -> i64 {
    let last = days_from_civil(year, month, 31);
    // 1970-01-01 was a Thursday: (days + 4) mod 7 is 0 on Sundays.
    last - (last + 4).rem_euclid(7)
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveDate, TimeZone, Utc};

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> i64 {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
            .single()
            .map(|t| t.timestamp_millis())
            .unwrap_or_default()
    }

    #[test]
    fn flags_give_the_offset() {
        assert_eq!(
            parse_stamp(b"170102192002W"),
            Stamp::At(utc(2017, 1, 2, 18, 20, 2))
        );
        assert_eq!(
            parse_stamp(b"200512135409S"),
            Stamp::At(utc(2020, 5, 12, 11, 54, 9))
        );
    }

    #[test]
    fn days_match_chrono() {
        for (y, m, d) in [(1970, 1, 1), (2000, 2, 29), (2024, 12, 31), (2069, 3, 1)] {
            let days = NaiveDate::from_ymd_opt(y, m, d)
                .and_then(|n| n.and_hms_opt(0, 0, 0))
                .map(|n| n.and_utc().timestamp() / 86_400)
                .unwrap_or_default();
            assert_eq!(days_from_civil(y.into(), m.into(), d.into()), days);
        }
    }

    #[test]
    fn unflagged_times_follow_the_eu_rule() {
        // 2012-05-17 02:00 local is summer time.
        assert_eq!(
            parse_stamp(b"120517020000"),
            Stamp::At(utc(2012, 5, 17, 0, 0, 0))
        );
        // 2009-02-12 16:00 local is winter time.
        assert_eq!(
            parse_stamp(b"090212160000"),
            Stamp::At(utc(2009, 2, 12, 15, 0, 0))
        );
        // 2023: summer time from 26 March 01:00 UTC to 29 October 01:00 UTC.
        assert_eq!(
            parse_stamp(b"230326015959"),
            Stamp::At(utc(2023, 3, 26, 0, 59, 59))
        );
        assert_eq!(
            parse_stamp(b"230326030000"),
            Stamp::At(utc(2023, 3, 26, 1, 0, 0))
        );
        // The skipped hour reads as winter time.
        assert_eq!(
            parse_stamp(b"230326023000"),
            Stamp::At(utc(2023, 3, 26, 1, 30, 0))
        );
        // The repeated hour reads as winter time unless flagged summer.
        assert_eq!(
            parse_stamp(b"231029023000"),
            Stamp::At(utc(2023, 10, 29, 1, 30, 0))
        );
        assert_eq!(
            parse_stamp(b"231029023000S"),
            Stamp::At(utc(2023, 10, 29, 0, 30, 0))
        );
        assert_eq!(
            parse_stamp(b"231029023000W"),
            Stamp::At(utc(2023, 10, 29, 1, 30, 0))
        );
        // A flag against the date does not shift the time.
        assert_eq!(
            parse_stamp(b"200305122139S"),
            Stamp::At(utc(2020, 3, 5, 11, 21, 39))
        );
        assert_eq!(
            parse_stamp(b"231029030000"),
            Stamp::At(utc(2023, 10, 29, 2, 0, 0))
        );
    }

    #[test]
    fn malformed_and_impossible_stamps() {
        assert_eq!(parse_stamp(b"632525252525S"), Stamp::NotADate);
        assert_eq!(parse_stamp(b"000000000000W"), Stamp::NotADate);
        assert_eq!(parse_stamp(b"250000000000W"), Stamp::NotADate);
        assert_eq!(parse_stamp(b"230229000000W"), Stamp::NotADate);
        assert_eq!(
            parse_stamp(b"240229000000W"),
            Stamp::At(utc(2024, 2, 28, 23, 0, 0))
        );
        assert_eq!(parse_stamp(b"23010112000X"), Stamp::Syntax);
        assert_eq!(parse_stamp(b"2301011200001"), Stamp::Syntax);
        assert_eq!(parse_stamp(b"2301011200"), Stamp::Syntax);
        assert_eq!(parse_stamp(b"\xff301011200000"), Stamp::Syntax);
        assert_eq!(parse_stamp(b"700101010000W"), Stamp::At(0));
    }
}
