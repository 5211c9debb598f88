//! A cumulative register: its value at any instant, R(B), and what a step between two of its
//! values adds. The rules, as the README's "Billing" section states them:
//!
//! - **R(B)**: a reading at exactly B is taken as it is (`actual`). Else, between the last
//!   reading before B and the first after it, the straight line (`interpolated`), when both
//!   exist, are at most `billing.max_interpolation_gap` apart, and the register did not fall
//!   between them. Else the last reading before B, carried forward (`carried`), or, before
//!   the first reading, the first one. Never a made-up zero.
//! - **A step** from `a` to `b`: a rise adds `b - a`. A fall of a register with a configured
//!   rollover `max` is a wrap, adding `(max - a) + b`, when going forward through `max` is the
//!   shorter way (else it is judged as below). Any other fall to below 1 % of `a` is a reset:
//!   the register counts on from the new value, adding `b`. A smaller fall is a reverse run and
//!   adds nothing (`query anomalies` reports it). Wraps and resets are counted.
//!
//! Why no interpolation across a fall: consumption over a period is the sum of the steps of R
//! from its start to its end (readings inside, and R at both edges), and it must be additive
//! (`[a, b) + [b, c) = [a, c)`). Inserting R(b) between two readings keeps the sum only if R(b)
//! splits the step into parts of the same kind: on a rising line it does; across a reset a
//! point on the line would turn one reset into a reverse run and lose it. Carrying the value
//! before keeps the step whole, after b.
//!
//! Why forward and not the nearer of the two: a step that is not interpolated lands whole in
//! the period that holds the reading after it, and a register is billed in a period only when
//! it has a reading near it (the read model's margin). Carrying the nearer reading put the step
//! of a long silence (a meter that did not report for two months) at the silence's midpoint,
//! in a month with no reading: billed in no monthly bill. Carried forward, it is billed in the
//! month of the first reading after the silence, which is always billed.

/// One reading of a register: when the meter measured it (Unix ms) and its value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub ts_ms: i64,
    pub value: f64,
}

/// How R(B) was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadKind {
    Actual,
    Interpolated,
    Carried,
}

impl ReadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReadKind::Actual => "actual",
            ReadKind::Interpolated => "interpolated",
            ReadKind::Carried => "carried",
        }
    }
}

/// R(B) and how it was found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Value {
    pub value: f64,
    pub kind: ReadKind,
}

/// What a step between two consecutive values of a register is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// It rose (or stayed): adds the difference.
    Rise(f64),
    /// It went through its rollover maximum: adds the way round.
    Wrap(f64),
    /// It fell to below 1 % of the value before: counts on from the new value.
    Reset(f64),
    /// It fell less than that: adds nothing.
    Reverse,
}

impl Step {
    /// What the step adds to consumption.
    pub fn consumption(self) -> f64 {
        match self {
            Step::Rise(c) | Step::Wrap(c) | Step::Reset(c) => c,
            Step::Reverse => 0.0,
        }
    }

    /// Whether it is counted in `resets`.
    pub fn is_reset(self) -> bool {
        matches!(self, Step::Wrap(_) | Step::Reset(_))
    }
}

/// A fall to below this share of the value before is a reset.
pub const RESET_SHARE: f64 = 0.01;

/// A fall through a register's maximum that is also a fall to near zero (a reset's) is a
/// wrap only when the way round is less than this share of the maximum: a register is read
/// far more often than it goes a tenth of its range, so a longer way round to near zero is a
/// register exchanged (75 000 → 0.5 under a maximum of 100 000 is a new register at 0.5, not
/// 25 000.5 used). A fall that is no reset's stays a wrap (95 000 → 8 000 is 13 000 used).
pub const WRAP_SHARE: f64 = 0.1;

/// The step from `a` to `b` of a register that wraps after `rollover` (if it has one).
pub fn step(a: f64, b: f64, rollover: Option<f64>) -> Step {
    if b >= a {
        return Step::Rise(b - a);
    }
    if let Some(max) = rollover {
        let forward = (max - a) + b;
        let exchanged = forward >= max * WRAP_SHARE && b < a * RESET_SHARE;
        if forward >= 0.0 && forward < a - b && !exchanged {
            return Step::Wrap(forward);
        }
    }
    if b < a * RESET_SHARE {
        Step::Reset(b.max(0.0))
    } else {
        Step::Reverse
    }
}

/// R(`at`) of the register whose readings are `readings` (sorted by time, one per instant);
/// `None` when it has none. `max_gap_ms`: the longest span interpolated across.
pub fn value_at(readings: &[Reading], at_ms: i64, max_gap_ms: i64) -> Option<Value> {
    // The first reading at or after `at`.
    let i = readings.partition_point(|r| r.ts_ms < at_ms);
    let after = readings.get(i);
    if let Some(r) = after.filter(|r| r.ts_ms == at_ms) {
        return Some(Value {
            value: r.value,
            kind: ReadKind::Actual,
        });
    }
    let before = i.checked_sub(1).and_then(|j| readings.get(j));
    let carried = |r: &Reading| Value {
        value: r.value,
        kind: ReadKind::Carried,
    };
    match (before, after) {
        (None, None) => None,
        (Some(p), None) => Some(carried(p)),
        (None, Some(q)) => Some(carried(q)),
        (Some(p), Some(q)) => {
            let span = q.ts_ms - p.ts_ms;
            if span <= max_gap_ms && q.value >= p.value {
                let share = (at_ms - p.ts_ms) as f64 / span as f64;
                Some(Value {
                    value: p.value + (q.value - p.value) * share,
                    kind: ReadKind::Interpolated,
                })
            } else {
                Some(carried(p))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(ts_ms: i64, value: f64) -> Reading {
        Reading { ts_ms, value }
    }

    #[test]
    fn steps_rise_wrap_reset_and_reverse() {
        assert_eq!(step(10.0, 12.5, None), Step::Rise(2.5));
        assert_eq!(step(10.0, 10.0, None), Step::Rise(0.0));
        // Below 1 % of the value before: a reset, counting on from the new value.
        assert_eq!(step(1000.0, 3.0, None), Step::Reset(3.0));
        // 1 % or more: a reverse run.
        assert_eq!(step(1000.0, 10.0, None), Step::Reverse);
        assert_eq!(step(1000.0, 990.0, None), Step::Reverse);
        // A five-digit gas register wrapping.
        assert_eq!(step(99_990.0, 5.0, Some(100_000.0)), Step::Wrap(15.0));
        // With a rollover, a small fall is still a reverse run, a fall to near zero from the
        // middle of the range a reset.
        assert_eq!(step(50_000.0, 49_999.0, Some(100_000.0)), Step::Reverse);
        assert_eq!(step(50_000.0, 100.0, Some(100_000.0)), Step::Reset(100.0));
        // A register exchanged high in its range: the way round (25 000.5) is more than a
        // tenth of the maximum, so not a wrap but a new register at 0.5.
        assert_eq!(step(75_000.0, 0.5, Some(100_000.0)), Step::Reset(0.5));
        assert_eq!(step(91_000.0, 500.0, Some(100_000.0)), Step::Wrap(9_500.0));
        // Far from zero after the fall: a wrap however long the way round (no reset's fall).
        assert_eq!(
            step(95_000.0, 8_000.0, Some(100_000.0)),
            Step::Wrap(13_000.0)
        );
        assert_eq!(step(9_500.0, 700.0, Some(10_000.0)), Step::Wrap(1_200.0));
    }

    #[test]
    fn the_value_at_an_instant() {
        let rs = [r(0, 10.0), r(100, 20.0), r(200, 5.0), r(10_000, 30.0)];
        let v = |at| value_at(&rs, at, 1000).unwrap();
        assert_eq!(
            v(100),
            Value {
                value: 20.0,
                kind: ReadKind::Actual
            }
        );
        assert_eq!(
            v(25),
            Value {
                value: 12.5,
                kind: ReadKind::Interpolated
            }
        );
        let carried = |value| Value {
            value,
            kind: ReadKind::Carried,
        };
        // Across a fall: the value before, carried forward.
        assert_eq!(v(140), carried(20.0));
        assert_eq!(v(199), carried(20.0));
        // Too far apart to interpolate: carried forward, however near the next one is.
        assert_eq!(v(5000), carried(5.0));
        assert_eq!(v(9999), carried(5.0));
        // Before the first and after the last.
        assert_eq!(
            v(-5),
            Value {
                value: 10.0,
                kind: ReadKind::Carried
            }
        );
        assert_eq!(
            v(20_000),
            Value {
                value: 30.0,
                kind: ReadKind::Carried
            }
        );
        assert_eq!(value_at(&[], 0, 1000), None);
    }
}
