//! What VEE reads and what it writes: a meter's channels with their readings, the exceptions
//! its rules find, and the rows of a new version (estimates and substitutes).

use std::fmt;

/// The rules, by their fixed ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    Gap,
    Spike,
    Reverse,
    Reset,
    Zero,
    Stuck,
    SumCheck,
    Clock,
    Conflict,
    UnitChange,
    HighLow,
    ProlongedEstimation,
}

impl Rule {
    pub const ALL: [Rule; 12] = [
        Rule::Gap,
        Rule::Spike,
        Rule::Reverse,
        Rule::Reset,
        Rule::Zero,
        Rule::Stuck,
        Rule::SumCheck,
        Rule::Clock,
        Rule::Conflict,
        Rule::UnitChange,
        Rule::HighLow,
        Rule::ProlongedEstimation,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Gap => "gap",
            Rule::Spike => "spike",
            Rule::Reverse => "reverse",
            Rule::Reset => "reset",
            Rule::Zero => "zero",
            Rule::Stuck => "stuck",
            Rule::SumCheck => "sum_check",
            Rule::Clock => "clock",
            Rule::Conflict => "conflict",
            Rule::UnitChange => "unit_change",
            Rule::HighLow => "high_low",
            Rule::ProlongedEstimation => "prolonged_estimation",
        }
    }

    pub fn parse(text: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a value of a new version was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Method {
    /// On the straight line between the actual reads around a short gap.
    Linear,
    /// The average of the same local weekday and time of the last weeks (interval channels).
    LikeDay,
    /// A register's change between two actual reads spread like the meter's profile.
    Proration,
    /// A failed value (a spike, a conflict) replaced.
    Substitute,
    /// An estimate withdrawn: an actual read came for it.
    Actual,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Linear => "linear",
            Method::LikeDay => "like_day",
            Method::Proration => "proration",
            Method::Substitute => "substitute",
            Method::Actual => "actual",
        }
    }

    pub fn parse(text: &str) -> Option<Method> {
        [
            Method::Linear,
            Method::LikeDay,
            Method::Proration,
            Method::Substitute,
            Method::Actual,
        ]
        .into_iter()
        .find(|m| m.as_str() == text)
    }
}

/// The quality of a value of a new version (NEM12's flags): `A` actual (an estimate withdrawn
/// for the read that came), `E` estimated (a gap filled), `S` substituted (a failed value
/// replaced).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Quality {
    A,
    E,
    S,
}

impl Quality {
    pub fn as_str(self) -> &'static str {
        match self {
            Quality::A => "A",
            Quality::E => "E",
            Quality::S => "S",
        }
    }

    pub fn parse(text: &str) -> Option<Quality> {
        match text {
            "A" => Some(Quality::A),
            "E" => Some(Quality::E),
            "S" => Some(Quality::S),
            _ => None,
        }
    }
}

/// What kind of channel, from its OBIS code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// A cumulative register (`1.8.x`, `2.8.x`, gas and water `24.2.x`, `24.3.0`).
    Register,
    /// An interval channel (`N.29.N`): each value the consumption of its interval, stamped
    /// at the interval's end.
    Interval,
    /// Anything else (instantaneous values): read by `stuck` only, as a sign of life.
    Other,
}

/// One reading as VEE sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub ts_ms: i64,
    pub value: f64,
    /// When meterflow received it (`None`: not known).
    pub received_at_ms: Option<i64>,
}

/// One channel of a meter over the read window (the period, and the history before it).
#[derive(Debug, Clone, PartialEq)]
pub struct Channel {
    pub name: String,
    pub kind: ChannelKind,
    pub unit: String,
    /// Units of readings in the period other than `unit`.
    pub other_units: Vec<String>,
    /// Readings, strictly increasing `ts`, one per instant (the copy the read model keeps).
    pub points: Vec<Point>,
    /// Instants at which copies with different values were received: (ts, the values).
    pub conflicts: Vec<(i64, Vec<f64>)>,
    /// The value after which the register starts again from 0, if it does.
    pub rollover: Option<f64>,
    /// The interval between reads the meter is expected to keep (the registry's), ms;
    /// `None`: inferred from the readings.
    pub expected_interval_ms: Option<i64>,
}

/// A meter's channels, and how many local days in a row before the period it was estimated
/// on (from earlier runs, for `prolonged_estimation`).
#[derive(Debug, Clone, PartialEq)]
pub struct Meter {
    pub meter_id: String,
    pub channels: Vec<Channel>,
    pub estimated_days_before: u32,
}

/// What a rule found.
#[derive(Debug, Clone, PartialEq)]
pub struct Exception {
    pub meter_id: String,
    pub channel: String,
    pub rule: Rule,
    /// The span it concerns, `[from, to]` in Unix ms (`from == to` for one reading).
    pub from_ms: i64,
    pub to_ms: i64,
    pub detail: String,
    /// Whether a value of the span was estimated or substituted.
    pub estimated: bool,
}

/// A value of the new version.
#[derive(Debug, Clone, PartialEq)]
pub struct VeeRow {
    pub meter_id: String,
    pub channel: String,
    pub ts_ms: i64,
    pub value: f64,
    pub unit: String,
    pub quality: Quality,
    /// The rule whose finding it mends.
    pub rule: Rule,
    pub method: Method,
}

/// What a run gives for one meter.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    pub exceptions: Vec<Exception>,
    pub rows: Vec<VeeRow>,
}
