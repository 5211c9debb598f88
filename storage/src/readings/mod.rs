//! The read model billing, anomalies and devices run on: the readings of a period, one series
//! per meter and register (or interval channel), with the readings just outside the period
//! that a register's value at the period's edges needs (when asked for), and each channel's
//! summary ([`summary`]: count, newest reading, last received). Two sources give the same
//! answers, bit for bit:
//!
//! - [`parquet`]: the Parquet tree under `{data_dir}/readings/date=YYYY-MM-DD/` (the embedded
//!   default), read with the crates already in the tree;
//! - [`clickhouse`]: the `readings` table of ClickHouse (18.16 and current releases).
//!
//! What a source delivers for a [`ReadRequest`] (the period `[from, to)` and a margin):
//!
//! - one [`Series`] per (meter, channel) with at least one reading in the window
//!   `[from - margin, to + margin]` (both ends included), delivered in (meter_id, channel)
//!   byte order, each exactly once;
//! - in it, every reading of the window, one per `ts`, ascending;
//! - with [`Neighbours::Before`] (or `BeforeAndAfter`), in front the last reading before the
//!   window when the series has none in `[from - margin, from)`, looked for as far back as
//!   the data goes or to [`ReadRequest::before_since_ms`]; with `BeforeAndAfter`, at the
//!   back the first reading after the window when it has none in `[to, to + margin]`, as far
//!   as the data goes;
//! - with [`ReadRequest::silent_since_ms`], also the series *silent* through the window: no
//!   reading in it, but one in `[silent_since, from - margin)`. Such a series is its last
//!   reading before the window alone (billing gives it a row with carried values, not no
//!   row). A series whose last reading is older is not delivered at all: nothing lists the
//!   meters that exist (a registry will), so the bound is what the read can afford;
//! - the unit of the newest reading delivered in the window (of a silent series, of its one
//!   reading);
//! - when each reading delivered was received (its copy that counts), and the window's
//!   instants whose copies came with different values (VEE's `clock` and `conflict` rules).
//!   A ClickHouse merge keeps one copy of a reading, so there the conflicts are seen only
//!   until the parts are merged (Parquet keeps every copy): the third difference.
//!
//! A copy whose value is not a finite number (NaN, ±inf: meterflow's decoders refuse them, a
//! foreign file or a direct insert may hold them) is not read at all, by both sources, so it
//! is neither a reading of the window nor a neighbour, and a finite copy of the same reading
//! counts instead. Once ClickHouse merges the parts, though, it keeps only the copy received
//! last: when that one is not a number, the reading is gone there, while Parquet still has
//! the finite copy. That is the second difference that cannot be helped (see below).
//!
//! Duplicates (a reading delivered twice, at least once delivery): of the copies of one
//! (meter, channel, ts) the one with the greatest `received_at` counts, as ClickHouse's
//! `ReplacingMergeTree(received_at)` keeps it; between copies with equal `received_at` the
//! greater value (−0 and +0 equal), then the greater unit (byte order). Both sources apply
//! the same rule themselves (ClickHouse's `FINAL` is not used: its choice between equal
//! versions is the last inserted, which nothing outside the server can know). That holds
//! until ClickHouse merges the parts: a merge keeps one copy of equal versions, the last
//! inserted, and drops the others for good. So two copies of one reading with the same
//! `received_at` and different values (a CSV imported again with a corrected value: its rows'
//! `received_at` is the reading's time) give the greater value on Parquet and, after a
//! merge, the last imported on ClickHouse. Corrections are VEE's (new versions, issue 23), or
//! a delivery received later. Another difference cannot be helped: ClickHouse before 20.5 stores `ts` and `received_at` in
//! whole seconds (`DateTime`), so there two copies received within the same second are equal
//! versions, and readings of one register within one second are one; Parquet keeps
//! milliseconds. On data with whole-second times (or a current ClickHouse) the answers are
//! identical: `tests/it/read_model.rs` reads the same readings from Parquet, from 18.16, and
//! (in milliseconds) from a current ClickHouse (chdb), with windows, margins, one meter and
//! all, and requires the same series bit for bit.

pub mod clickhouse;
pub mod parquet;
pub mod summary;

use std::cmp::Ordering;

use crate::StorageError;

/// The channels a question reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channels {
    /// Cumulative registers: import 1.8.x and export 2.8.x (`N-N:1.8.N`, `N-N:2.8.N`),
    /// gas/water M-Bus 24.2.x and DSMR 3 gas 24.3.0.
    CumulativeRegisters,
    /// The cumulative registers and the interval channels `N-N:N.29.N`: what `query
    /// anomalies` reads.
    RegistersAndIntervals,
    /// Every channel (VEE: a register that stands still while the meter's other channels,
    /// voltages among them, move is `stuck`).
    All,
}

impl Channels {
    /// Whether `channel` is one of these, exactly as ClickHouse's `match(channel,
    /// self.regex())` decides (RE2: `$` is the end of the text; digits are ASCII).
    pub fn matches(&self, channel: &str) -> bool {
        match self {
            Channels::CumulativeRegisters => is_cumulative_register(channel),
            Channels::RegistersAndIntervals => {
                is_cumulative_register(channel) || is_interval_channel(channel)
            }
            Channels::All => true,
        }
    }

    /// The RE2 regular expression of [`Channels::matches`], for ClickHouse's `match()`.
    pub fn regex(&self) -> &'static str {
        match self {
            Channels::CumulativeRegisters => {
                r"^[0-9]+-[0-9]+:(([12]\.8\.[0-9]+)|(24\.2\.[0-9]+)|(24\.3\.0))$"
            }
            Channels::RegistersAndIntervals => {
                r"^[0-9]+-[0-9]+:(([12]\.8\.[0-9]+)|(24\.2\.[0-9]+)|(24\.3\.0)|([0-9]+\.29\.[0-9]+))$"
            }
            // RE2: the empty pattern matches every text.
            Channels::All => "",
        }
    }
}

fn digits(s: &str) -> Option<&str> {
    let rest = s.trim_start_matches(|c: char| c.is_ascii_digit());
    (rest.len() < s.len()).then_some(rest)
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// What follows `N-N:` in an OBIS-style channel name.
fn obis_tail(channel: &str) -> Option<&str> {
    digits(channel)
        .and_then(|r| r.strip_prefix('-'))
        .and_then(digits)
        .and_then(|r| r.strip_prefix(':'))
}

/// `^[0-9]+-[0-9]+:(([12]\.8\.[0-9]+)|(24\.2\.[0-9]+)|(24\.3\.0))$`, by hand.
pub fn is_cumulative_register(channel: &str) -> bool {
    let Some(rest) = obis_tail(channel) else {
        return false;
    };
    if let Some(n) = rest
        .strip_prefix("1.8.")
        .or_else(|| rest.strip_prefix("2.8."))
        .or_else(|| rest.strip_prefix("24.2."))
    {
        return all_digits(n);
    }
    rest == "24.3.0"
}

/// A cumulative register that counts what is consumed: import 1.8.x, gas and water volumes
/// 24.2.x and DSMR 3 gas 24.3.0 (not export 2.8.x, which a meter without generation never
/// moves).
pub fn is_consumption_register(channel: &str) -> bool {
    is_cumulative_register(channel) && obis_tail(channel).is_some_and(|t| !t.starts_with("2.8."))
}

/// An interval channel, `^[0-9]+-[0-9]+:[0-9]+\.29\.[0-9]+$` (a quarter-hour series).
pub fn is_interval_channel(channel: &str) -> bool {
    obis_tail(channel)
        .and_then(digits)
        .and_then(|r| r.strip_prefix(".29."))
        .is_some_and(all_digits)
}

/// What to read: a period, a margin around it, one meter or all, which channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    /// The period `[from, to)`, Unix milliseconds.
    pub from_ms: i64,
    pub to_ms: i64,
    /// Readings with `ts` in `[from - margin, to + margin]` (both included) are read; at
    /// least 0.
    pub margin_ms: i64,
    /// One meter (a valid meter id, [`meterflow_proto::is_valid_meter_id`]), or all.
    pub meter: Option<String>,
    pub channels: Channels,
    /// Which readings just outside the window a series gets.
    pub neighbours: Neighbours,
    /// The reading before the window is looked for at or after this instant (Unix ms) only;
    /// `None`: as far back as the data goes (billing: a meter silent for months still
    /// carries its last reading to the period's start). `query anomalies` bounds it, so
    /// that a meter new in the period does not make it read the whole history.
    pub before_since_ms: Option<i64>,
    /// Series with no reading in the window but one in `[silent_since, from - margin)` are
    /// delivered too, as their last reading there; `None`: not looked for.
    pub silent_since_ms: Option<i64>,
}

/// Which readings just outside the window a series gets ([`ReadRequest::neighbours`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Neighbours {
    /// The window's readings alone.
    None,
    /// The last reading before the window: billing's R(from) when nothing is near it (with a
    /// margin of at least the interpolation gap, R(to) never needs the reading after), and a
    /// fall across the period's start for anomalies.
    Before,
    /// The last reading before and the first after (a window narrower than the gap to
    /// interpolate across; the read model's tests compare both sources with it).
    BeforeAndAfter,
}

impl ReadRequest {
    /// Checks what the types do not: a meter id that is one (it goes into SQL), `from <=
    /// to`, a margin of at least 0.
    pub fn validate(&self) -> Result<(), StorageError> {
        let bad = |reason: String| Err(StorageError::ReadRequest { reason });
        if let Some(m) = &self.meter {
            if !meterflow_proto::is_valid_meter_id(m) {
                return bad(format!(
                    "{m:?} is not a meter id (1 to 64 of [A-Za-z0-9._-])"
                ));
            }
        }
        if self.from_ms > self.to_ms {
            return bad(format!(
                "the period ends ({}) before it starts ({})",
                self.to_ms, self.from_ms
            ));
        }
        if self.margin_ms < 0 {
            return bad(format!("the margin is negative ({} ms)", self.margin_ms));
        }
        Ok(())
    }

    /// The window `[lo, hi]`, both included: the period widened by the margin on each side.
    pub fn window(&self) -> (i64, i64) {
        (
            self.from_ms.saturating_sub(self.margin_ms),
            self.to_ms.saturating_add(self.margin_ms),
        )
    }

    /// Whether a series whose earliest reading in the window is at `first_ts` gets the
    /// reading before the window: it has none in `[from - margin, from)`.
    pub fn needs_before(&self, first_ts: i64) -> bool {
        self.neighbours != Neighbours::None && first_ts >= self.from_ms
    }

    /// Whether a series whose newest reading in the window is at `last_ts` gets the reading
    /// after the window: it has none in `[to, to + margin]`.
    pub fn needs_after(&self, last_ts: i64) -> bool {
        self.neighbours == Neighbours::BeforeAndAfter && last_ts < self.to_ms
    }

    /// Whether a reading at `ts` may be the reading before the window of a series that
    /// needs one.
    pub fn may_be_before(&self, ts: i64) -> bool {
        self.neighbours != Neighbours::None && self.before_since_ms.is_none_or(|s| ts >= s)
    }

    /// Whether a series with no reading in the window whose last reading before it is at
    /// `ts` is delivered (silent through the window).
    pub fn delivers_silent(&self, ts: i64) -> bool {
        self.silent_since_ms.is_some_and(|s| ts >= s) && ts < self.window().0
    }

    /// The earliest instant a reading before the window is of use from: as a neighbour or
    /// as a silent series' reading (`i64::MAX`: none is).
    pub fn before_floor(&self) -> i64 {
        let neighbour = match self.neighbours {
            Neighbours::None => i64::MAX,
            _ => self.before_since_ms.unwrap_or(i64::MIN),
        };
        neighbour.min(self.silent_since_ms.unwrap_or(i64::MAX))
    }

    /// Whether `meter` is asked for.
    pub(crate) fn wants_meter(&self, meter: &str) -> bool {
        self.meter.as_deref().is_none_or(|m| m == meter)
    }
}

/// One register of one meter.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub meter_id: String,
    pub channel: String,
    /// The unit of the newest reading in the window.
    pub unit: String,
    /// `(ts in Unix ms, value)`, strictly increasing `ts`: the readings of the window,
    /// plus (as [`ReadRequest::neighbours`] asks) in front the last reading before the
    /// window when the series has none in `[from - margin, from)`, and at the back the first
    /// reading after the window when it has none in `[to, to + margin]` (each when there is
    /// one). Those two may be far away: a meter silent for months. A series silent through
    /// the window ([`ReadRequest::silent_since_ms`]) is its last reading before it alone.
    pub points: Vec<(i64, f64)>,
    /// The units of the window's readings other than `unit`, in byte order: empty unless the
    /// register changed unit (or a copy came in another), when its values are not of one
    /// scale and a sum of its steps means nothing. The readings outside the window are not
    /// looked at.
    pub other_units: Vec<String>,
    /// When each point was received (of a reading received more than once, the copy that
    /// counts), Unix ms, in step with `points`; whole seconds on ClickHouse before 20.5. VEE's
    /// `clock` rule compares it with the reading's time.
    pub received_at: Vec<i64>,
    /// The window's instants whose copies came with different values: the time and the
    /// distinct values, ascending (−0 and +0 one). VEE's `conflict` rule.
    pub conflicts: Vec<(i64, Vec<f64>)>,
}

impl Series {
    /// The order series are delivered in: (meter_id, channel), bytewise.
    pub fn key(&self) -> (&[u8], &[u8]) {
        (self.meter_id.as_bytes(), self.channel.as_bytes())
    }
}

/// The order of two values of copies of one reading: the greater wins. A total order (so
/// sorting never panics, NaN included) in which −0 and +0 are equal, as in ClickHouse.
pub(crate) fn value_order(a: f64, b: f64) -> Ordering {
    (a + 0.0).total_cmp(&(b + 0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_sets_match_as_their_regular_expressions_say() {
        let c = Channels::CumulativeRegisters;
        for yes in [
            "1-0:1.8.0",
            "1-0:1.8.1",
            "1-0:2.8.2",
            "0-1:24.2.1",
            "0-2:24.2.3",
            "0-1:24.3.0",
            "01-00:1.8.10",
            "1-0:1.8.255",
        ] {
            assert!(c.matches(yes), "{yes}");
        }
        for no in [
            "1-0:1.29.0",
            "1-0:3.8.0",
            "1-0:11.8.0",
            "1-0:1.8.",
            "1-0:1.8.0\n",
            "1-0:1.8.0x",
            "1-0:1.8.1.1",
            "-0:1.8.0",
            "1-:1.8.0",
            "1-0:24.3.1",
            "1-0:24.2",
            "1-0:32.7.0",
            "1.8.0",
            "a-0:1.8.0",
            "1-0:1.8.٣",
            "",
        ] {
            assert!(!c.matches(no), "{no:?}");
        }
        assert!(!c.regex().contains("29"));
        let both = Channels::RegistersAndIntervals;
        for yes in [
            "1-0:1.8.1",
            "0-1:24.2.1",
            "1-0:1.29.0",
            "1-0:2.29.0",
            "10-0:16.29.12",
        ] {
            assert!(both.matches(yes), "{yes}");
        }
        for no in [
            "1-0:1.29",
            "1-0:1.29.",
            "1-0:.29.0",
            "1-0:1.29.0x",
            "1-0:1.7.0",
            "1.29.0",
        ] {
            assert!(!both.matches(no), "{no}");
        }
        assert!(is_consumption_register("1-0:1.8.0") && is_consumption_register("0-1:24.2.1"));
        assert!(is_consumption_register("0-1:24.3.0") && !is_consumption_register("1-0:2.8.1"));
        assert!(!is_consumption_register("1-0:1.29.0"));
    }

    #[test]
    fn requests_are_checked_and_widened() {
        let r = ReadRequest {
            from_ms: 1_000,
            to_ms: 2_000,
            margin_ms: 100,
            meter: Some("m-1".into()),
            channels: Channels::CumulativeRegisters,
            neighbours: Neighbours::BeforeAndAfter,
            before_since_ms: None,
            silent_since_ms: None,
        };
        r.validate().unwrap();
        assert_eq!(r.window(), (900, 2_100));
        assert!(r.needs_before(1_000) && !r.needs_before(999));
        assert!(r.needs_after(1_999) && !r.needs_after(2_000));
        assert!(r.may_be_before(i64::MIN) && r.before_floor() == i64::MIN);
        assert!(!r.delivers_silent(0));
        let alone = ReadRequest {
            neighbours: Neighbours::None,
            ..r.clone()
        };
        assert!(!alone.needs_before(1_000) && !alone.needs_after(1_999));
        assert!(!alone.may_be_before(0) && alone.before_floor() == i64::MAX);
        let before = ReadRequest {
            neighbours: Neighbours::Before,
            before_since_ms: Some(500),
            silent_since_ms: Some(300),
            ..r.clone()
        };
        assert!(before.needs_before(1_000) && !before.needs_after(1_999));
        assert!(before.may_be_before(500) && !before.may_be_before(499));
        assert!(before.delivers_silent(300) && before.delivers_silent(899));
        assert!(!before.delivers_silent(299) && !before.delivers_silent(900));
        assert_eq!(before.before_floor(), 300);
        for bad in [
            ReadRequest {
                meter: Some("x' OR 1=1 --".into()),
                ..r.clone()
            },
            ReadRequest {
                from_ms: 3_000,
                ..r.clone()
            },
            ReadRequest {
                margin_ms: -1,
                ..r.clone()
            },
        ] {
            let e = bad.validate().unwrap_err();
            assert!(matches!(e, StorageError::ReadRequest { .. }), "{e}");
            assert!(!e.is_retryable());
        }
        let wide = ReadRequest {
            from_ms: i64::MIN + 1,
            to_ms: i64::MAX - 1,
            margin_ms: 10,
            ..r
        };
        assert_eq!(wide.window(), (i64::MIN, i64::MAX));
    }

    #[test]
    fn values_order_totally_with_zeros_equal() {
        assert_eq!(value_order(-0.0, 0.0), Ordering::Equal);
        assert_eq!(value_order(1.0, 2.0), Ordering::Less);
        assert_eq!(value_order(f64::NAN, 1.0), Ordering::Greater);
    }
}
