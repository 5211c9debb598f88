//! One meter through every rule and method, for a period of whole local days: what is found
//! becomes an [`Exception`]; what is estimated or substituted a [`VeeRow`] of the new version.
//! Actual reads are never changed; estimates never cross an actual read and never make a
//! register fall.
//!
//! The channels come with the history before the period (`look_back_days`, and the like-day
//! weeks), which the statistics (95th percentile, average day) and the like-day profile are
//! taken from, and with the reading before the period (a gap or a fall across its start).

use std::collections::{BTreeMap, HashMap};

use chrono::Duration;
use meterflow_billing::register::{step, value_at, Reading, Step};
use meterflow_billing::Zone;

use crate::config::Params;
use crate::model::{
    Channel, ChannelKind, Exception, Meter, Method, Outcome, Quality, Rule, VeeRow,
};

/// The period VEE judges, `[from, to)` in Unix ms, local midnights of `zone`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub from_ms: i64,
    pub to_ms: i64,
}

impl Period {
    fn contains(&self, ts: i64) -> bool {
        (self.from_ms..self.to_ms).contains(&ts)
    }
}

const DAY_MS: i64 = 86_400_000;

/// Runs every rule over one meter.
pub fn run_meter(meter: &Meter, period: Period, params: &Params, zone: &Zone) -> Outcome {
    let mut run = MeterRun {
        meter,
        period,
        params,
        zone,
        out: Outcome::default(),
    };
    for channel in &meter.channels {
        run.channel(channel);
    }
    run.meter_wide();
    run.out
        .exceptions
        .sort_by(|a, b| (&a.channel, a.from_ms, a.rule).cmp(&(&b.channel, b.from_ms, b.rule)));
    run.out
        .rows
        .sort_by(|a, b| (&a.channel, a.ts_ms).cmp(&(&b.channel, b.ts_ms)));
    run.out
}

struct MeterRun<'a> {
    meter: &'a Meter,
    period: Period,
    params: &'a Params,
    zone: &'a Zone,
    out: Outcome,
}

/// The most frequent step between consecutive readings (at least three of them), ms.
pub fn inferred_interval(points: &[crate::model::Point]) -> Option<i64> {
    let mut counts: HashMap<i64, usize> = HashMap::new();
    for w in points.windows(2) {
        let d = w[1].ts_ms - w[0].ts_ms;
        if d > 0 {
            *counts.entry(d).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .filter(|(_, n)| *n >= 3)
        // The most frequent; of equals, the shorter.
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
        .map(|(d, _)| d)
}

/// The 95th percentile (nearest rank) of `values`; `None` when empty.
fn p95(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((values.len() as f64) * 0.95).ceil() as usize;
    values.get(rank.saturating_sub(1)).copied()
}

/// The interval channel of a register and back: `C.8.E` ↔ `C.29.E` (same A-B).
pub fn counterpart(name: &str, kind: ChannelKind) -> Option<String> {
    let (ab, code) = name.split_once(':')?;
    let mut parts = code.split('.');
    let (c, d, e) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    match (kind, d) {
        (ChannelKind::Register, "8") => Some(format!("{ab}:{c}.29.{e}")),
        (ChannelKind::Interval, "29") => Some(format!("{ab}:{c}.8.{e}")),
        _ => None,
    }
}

fn hours(ms: i64) -> String {
    let minutes = ms / 60_000;
    if minutes % 1440 == 0 {
        format!("{} d", minutes / 1440)
    } else if minutes % 60 == 0 {
        format!("{} h", minutes / 60)
    } else {
        format!("{minutes} min")
    }
}

impl<'a> MeterRun<'a> {
    fn exception(
        &mut self,
        channel: &str,
        rule: Rule,
        from_ms: i64,
        to_ms: i64,
        detail: String,
        estimated: bool,
    ) {
        self.out.exceptions.push(Exception {
            meter_id: self.meter.meter_id.clone(),
            channel: channel.to_string(),
            rule,
            from_ms,
            to_ms,
            detail,
            estimated,
        });
    }

    fn row(
        &mut self,
        ch: &Channel,
        ts_ms: i64,
        value: f64,
        quality: Quality,
        rule: Rule,
        method: Method,
    ) {
        self.out.rows.push(VeeRow {
            meter_id: self.meter.meter_id.clone(),
            channel: ch.name.clone(),
            ts_ms,
            value,
            unit: ch.unit.clone(),
            quality,
            rule,
            method,
        });
    }

    fn channel_named(&self, name: &str) -> Option<&'a Channel> {
        let meter: &'a Meter = self.meter;
        meter.channels.iter().find(|c| c.name == name)
    }

    /// The instant `weeks` weeks before `ts` at the same local time.
    fn weeks_before(&self, ts: i64, weeks: u32) -> i64 {
        let local = self.zone.local(ts) - Duration::days(7 * i64::from(weeks));
        self.zone.instant(local)
    }

    fn channel(&mut self, ch: &Channel) {
        let interval = ch
            .expected_interval_ms
            .or_else(|| inferred_interval(&ch.points));
        self.unit_change(ch);
        self.clock(ch);
        // Substituted points: not judged again by the rules after them.
        let substituted = self.conflicts(ch, interval);
        let spiked = match (ch.kind, interval) {
            (ChannelKind::Other, _) | (_, None) => Vec::new(),
            (_, Some(i)) => self.spikes(ch, i, &substituted),
        };
        if ch.kind == ChannelKind::Register {
            // A substituted copy's fall to the next read is the copy's fault, not the
            // register's: neither a spike's nor a conflict's is a `reverse`.
            let replaced: Vec<i64> = spiked.iter().chain(&substituted).copied().collect();
            self.falls(ch, &replaced);
            self.flat_runs(ch);
        }
        if ch.kind == ChannelKind::Interval {
            self.zero_intervals(ch);
        }
        if let (Some(i), ChannelKind::Register | ChannelKind::Interval) = (interval, ch.kind) {
            self.gaps(ch, i);
            if ch.kind == ChannelKind::Interval {
                self.sum_check(ch, i);
            }
            self.high_low(ch, i);
        }
    }

    // --- unit_change, clock, conflict ---------------------------------------------------

    fn unit_change(&mut self, ch: &Channel) {
        if ch.other_units.is_empty() {
            return;
        }
        let inside: Vec<i64> = ch
            .points
            .iter()
            .map(|p| p.ts_ms)
            .filter(|t| self.period.contains(*t))
            .collect();
        let (from, to) = match (inside.first(), inside.last()) {
            (Some(f), Some(l)) => (*f, *l),
            _ => (self.period.from_ms, self.period.to_ms),
        };
        self.exception(
            &ch.name,
            Rule::UnitChange,
            from,
            to,
            format!(
                "readings in {} and {}: not of one scale",
                ch.unit,
                ch.other_units.join(", ")
            ),
            false,
        );
    }

    fn clock(&mut self, ch: &Channel) {
        let p = self.params;
        // Runs of readings whose time is off their receipt, one exception each.
        let mut run: Option<(i64, i64, i64, usize)> = None; // from, to, worst offset, count
        let flush = |run: &mut Option<(i64, i64, i64, usize)>, this: &mut Self| {
            if let Some((from, to, worst, n)) = run.take() {
                let detail = if worst > 0 {
                    format!(
                        "{n} reading(s) stamped up to {} after their receipt",
                        hours(worst)
                    )
                } else {
                    format!(
                        "{n} reading(s) stamped up to {} before their receipt",
                        hours(-worst)
                    )
                };
                this.exception(&ch.name, Rule::Clock, from, to, detail, false);
            }
        };
        let period = self.period;
        for point in ch.points.iter().filter(|p| period.contains(p.ts_ms)) {
            let Some(received) = point.received_at_ms else {
                flush(&mut run, self);
                continue;
            };
            let offset = point.ts_ms - received;
            let off = offset > p.clock_max_ahead_ms || -offset > p.clock_max_age_ms;
            if !off {
                flush(&mut run, self);
                continue;
            }
            run = Some(match run {
                Some((from, _, worst, n)) => (
                    from,
                    point.ts_ms,
                    if offset.abs() > worst.abs() {
                        offset
                    } else {
                        worst
                    },
                    n + 1,
                ),
                None => (point.ts_ms, point.ts_ms, offset, 1),
            });
        }
        flush(&mut run, self);
    }

    /// Conflicting copies in the period: the copy nearest what the neighbours call for is
    /// kept (substituted when it is not the one the read model kept). Returns the instants
    /// substituted.
    fn conflicts(&mut self, ch: &Channel, interval: Option<i64>) -> Vec<i64> {
        let mut substituted = Vec::new();
        for (ts, copies) in &ch.conflicts {
            if !self.period.contains(*ts) || copies.is_empty() {
                continue;
            }
            let at = ch.points.binary_search_by_key(ts, |p| p.ts_ms).ok();
            let expected = at.and_then(|i| {
                let before = i.checked_sub(1).map(|j| ch.points[j]);
                let after = ch.points.get(i + 1).copied();
                match (ch.kind, before, after) {
                    (ChannelKind::Register, Some(a), Some(b)) if b.value >= a.value => Some(
                        a.value
                            + (b.value - a.value) * (*ts - a.ts_ms) as f64
                                / (b.ts_ms - a.ts_ms) as f64,
                    ),
                    (ChannelKind::Interval, ..) => interval
                        .and_then(|_| self.like_day_value(ch, *ts))
                        .or_else(|| match (before, after) {
                            (Some(a), Some(b)) => Some((a.value + b.value) / 2.0),
                            _ => None,
                        }),
                    _ => None,
                }
            });
            let kept = at.map(|i| ch.points[i].value);
            let chosen = expected.and_then(|e| {
                copies
                    .iter()
                    .copied()
                    .min_by(|x, y| (x - e).abs().total_cmp(&(y - e).abs()))
            });
            let values = copies
                .iter()
                .map(|v| meterflow_billing_number(*v))
                .collect::<Vec<_>>()
                .join(", ");
            // A register's substitute stays between its neighbours: the nearest copy, or
            // the line itself when every copy would make the register fall.
            let chosen = match (ch.kind, chosen, expected, at) {
                (ChannelKind::Register, Some(c), Some(e), Some(i)) => {
                    let low = i.checked_sub(1).map(|j| ch.points[j].value);
                    let high = ch.points.get(i + 1).map(|p| p.value);
                    let inside = low.is_none_or(|l| c >= l) && high.is_none_or(|h| c <= h);
                    Some(if inside { c } else { e })
                }
                (_, chosen, ..) => chosen,
            };
            let substitute = match (chosen, kept) {
                (Some(c), Some(k)) if c != k => Some(c),
                _ => None,
            };
            if let Some(value) = substitute {
                self.row(
                    ch,
                    *ts,
                    value,
                    Quality::S,
                    Rule::Conflict,
                    Method::Substitute,
                );
                substituted.push(*ts);
            }
            self.exception(
                &ch.name,
                Rule::Conflict,
                *ts,
                *ts,
                match substitute {
                    Some(v) => format!(
                        "copies with values {values}; {} kept, the nearest its neighbours",
                        meterflow_billing_number(v)
                    ),
                    None => format!("copies with values {values}"),
                },
                substitute.is_some(),
            );
        }
        substituted
    }

    // --- spike ------------------------------------------------------------------------

    /// The consumption of each interval: an interval channel's values, a register's rises
    /// between reads one interval apart (`ts` = the later read).
    fn interval_consumption(ch: &Channel, interval: i64) -> Vec<(i64, f64)> {
        match ch.kind {
            ChannelKind::Interval => ch.points.iter().map(|p| (p.ts_ms, p.value)).collect(),
            ChannelKind::Register => ch
                .points
                .windows(2)
                .filter(|w| w[1].ts_ms - w[0].ts_ms == interval && w[1].value >= w[0].value)
                .map(|w| (w[1].ts_ms, w[1].value - w[0].value))
                .collect(),
            ChannelKind::Other => Vec::new(),
        }
    }

    /// Intervals above `spike_factor` × the 95th percentile of the history and above the
    /// floor. An interval channel's value is substituted (the like-day value, else the mean
    /// of its neighbours); a register's reading that jumps and falls back (an outlier) is
    /// substituted on the line between its neighbours, and its fall back is no `reverse`.
    /// Returns the register readings substituted.
    fn spikes(&mut self, ch: &Channel, interval: i64, skip: &[i64]) -> Vec<i64> {
        let p = self.params;
        let history_from = self.period.from_ms - i64::from(p.look_back_days) * DAY_MS;
        let all = Self::interval_consumption(ch, interval);
        let history: Vec<f64> = all
            .iter()
            .filter(|(t, _)| (history_from..self.period.from_ms).contains(t))
            .map(|(_, v)| *v)
            .collect();
        let Some(reference) = p95(history) else {
            return Vec::new();
        };
        let limit = (reference * p.spike_factor).max(p.spike_floor);
        let mut substituted = Vec::new();
        for (ts, value) in all {
            if !self.period.contains(ts) || value <= limit || skip.contains(&ts) {
                continue;
            }
            let detail = format!(
                "{} {} in one interval, above {} × the 95th percentile ({}) of the last {} days",
                meterflow_billing_number(value),
                ch.unit,
                p.spike_factor,
                meterflow_billing_number(reference),
                p.look_back_days
            );
            let substitute = match ch.kind {
                ChannelKind::Interval => {
                    let i = ch.points.binary_search_by_key(&ts, |q| q.ts_ms).ok();
                    self.like_day_value(ch, ts).or_else(|| {
                        let i = i?;
                        let a = ch.points.get(i.checked_sub(1)?)?;
                        let b = ch.points.get(i + 1)?;
                        Some((a.value + b.value) / 2.0)
                    })
                }
                ChannelKind::Register => {
                    let i = ch.points.binary_search_by_key(&ts, |q| q.ts_ms).ok();
                    i.and_then(|i| {
                        let a = ch.points.get(i.checked_sub(1)?)?;
                        let b = ch.points.get(i + 1)?;
                        // An outlier: up and back down to where the line goes on.
                        (b.value >= a.value && ch.points[i].value > b.value).then(|| {
                            a.value
                                + (b.value - a.value) * (ts - a.ts_ms) as f64
                                    / (b.ts_ms - a.ts_ms) as f64
                        })
                    })
                }
                ChannelKind::Other => None,
            };
            if let Some(v) = substitute {
                self.row(ch, ts, v, Quality::S, Rule::Spike, Method::Substitute);
                if ch.kind == ChannelKind::Register {
                    substituted.push(ts);
                }
            }
            self.exception(&ch.name, Rule::Spike, ts, ts, detail, substitute.is_some());
        }
        substituted
    }

    // --- reverse, reset --------------------------------------------------------------

    fn falls(&mut self, ch: &Channel, outliers: &[i64]) {
        let points: Vec<_> = ch
            .points
            .iter()
            .filter(|p| !outliers.contains(&p.ts_ms))
            .collect();
        for w in points.windows(2) {
            let (a, b) = (w[0], w[1]);
            if !self.period.contains(b.ts_ms) {
                continue;
            }
            let (rule, what) = match step(a.value, b.value, ch.rollover) {
                Step::Reverse => (Rule::Reverse, "fell"),
                Step::Reset(_) => (Rule::Reset, "reset"),
                Step::Wrap(_) => (Rule::Reset, "wrapped at its rollover"),
                Step::Rise(_) => continue,
            };
            self.exception(
                &ch.name,
                rule,
                a.ts_ms,
                b.ts_ms,
                format!(
                    "{what}: {} to {} {}",
                    meterflow_billing_number(a.value),
                    meterflow_billing_number(b.value),
                    ch.unit
                ),
                false,
            );
        }
    }

    // --- zero, stuck ----------------------------------------------------------------

    /// Whether another channel of the meter moves over `[from, to]`.
    fn others_move(&self, name: &str, from: i64, to: i64) -> bool {
        self.meter
            .channels
            .iter()
            .filter(|c| c.name != name)
            .any(|c| {
                let mut values = c
                    .points
                    .iter()
                    .filter(|p| (from..=to).contains(&p.ts_ms))
                    .map(|p| p.value);
                match values.next() {
                    Some(first) => values.any(|v| v != first),
                    None => false,
                }
            })
    }

    /// A register unchanged for at least `zero_days` (`stuck_days`) that reaches into the
    /// period: `stuck` when the meter's other channels move meanwhile and the register rose
    /// before or after (one that never does is unused, as the export register of a meter
    /// without panels), else `zero` (when it had consumption before).
    fn flat_runs(&mut self, ch: &Channel) {
        let pts = &ch.points;
        let shortest = self.params.stuck_days.min(self.params.zero_days);
        let mut start = 0;
        // Whether the register rose at some step up to the current run's first read.
        let mut rose_before = false;
        for i in 1..=pts.len() {
            if i < pts.len() && pts[i].value == pts[start].value {
                continue;
            }
            let (from, to) = (pts[start].ts_ms, pts[i - 1].ts_ms);
            let moved_before = rose_before;
            start = i;
            if i < pts.len() && pts[i].value > pts[i - 1].value {
                rose_before = true;
            }
            let days = (to - from) as f64 / DAY_MS as f64;
            if to < self.period.from_ms || days < f64::from(shortest) {
                continue;
            }
            // A register at 0 that never rose in the window (an export register of a meter
            // with nothing to export) is unused, not stuck; one standing at another value
            // has counted before, however long ago.
            let moved = moved_before
                || pts[i - 1].value != 0.0
                || pts.get(i).is_some_and(|next| next.value > pts[i - 1].value);
            if self.others_move(&ch.name, from, to) {
                if days >= f64::from(self.params.stuck_days) && moved {
                    self.exception(
                        &ch.name,
                        Rule::Stuck,
                        from,
                        to,
                        format!(
                            "unchanged at {} {} for {:.1} days while the meter's other channels moved",
                            meterflow_billing_number(pts[i - 1].value),
                            ch.unit,
                            days
                        ),
                        false,
                    );
                }
            } else if days >= f64::from(self.params.zero_days) && moved_before {
                self.exception(
                    &ch.name,
                    Rule::Zero,
                    from,
                    to,
                    format!("no consumption for {days:.1} days"),
                    false,
                );
            }
        }
    }

    /// An interval channel at 0 for at least `zero_days`, reaching into the period, after
    /// consumption before.
    fn zero_intervals(&mut self, ch: &Channel) {
        let pts = &ch.points;
        let mut i = 0;
        while i < pts.len() {
            if pts[i].value != 0.0 {
                i += 1;
                continue;
            }
            let mut j = i;
            while j + 1 < pts.len() && pts[j + 1].value == 0.0 {
                j += 1;
            }
            let (from, to) = (pts[i].ts_ms, pts[j].ts_ms);
            let days = (to - from) as f64 / DAY_MS as f64;
            let before = pts[..i].iter().any(|p| p.value > 0.0);
            if to >= self.period.from_ms && days >= f64::from(self.params.zero_days) && before {
                self.exception(
                    &ch.name,
                    Rule::Zero,
                    from,
                    to,
                    format!("no consumption for {days:.1} days"),
                    false,
                );
            }
            i = j + 1;
        }
    }

    // --- gap, and its estimates -----------------------------------------------------

    /// Missing reads (more than 1.5 intervals between two, or none until the period's end
    /// after the last) that reach into the period, each gap one exception over its whole
    /// span; filled (in the period) when the method's bounds allow.
    fn gaps(&mut self, ch: &Channel, interval: i64) {
        let p = self.params;
        let pts = &ch.points;
        let mut pairs: Vec<(usize, Option<usize>)> =
            (1..pts.len()).map(|i| (i - 1, Some(i))).collect();
        if let Some(last) = pts.len().checked_sub(1) {
            pairs.push((last, None));
        }
        for (ia, ib) in pairs {
            let a = pts[ia];
            let end = ib.map_or(self.period.to_ms, |i| pts[i].ts_ms);
            // The missing slots: a's phase, one interval apart, before the read after (or the
            // period's end).
            let mut slots = Vec::new();
            let mut t = a.ts_ms + interval;
            let limit = match ib {
                Some(_) => end - interval / 2,
                None => end - 1,
            };
            // Every slot of the gap, in the period or not: an estimate is the same whichever
            // run makes it (a gap across midnight judged by two daily runs gets the values one
            // run over both days gives), and only the period's are written.
            while t <= limit {
                slots.push(t);
                t += interval;
            }
            if !slots.iter().any(|t| self.period.contains(*t)) {
                continue;
            }
            let b = ib.map(|i| pts[i]);
            let span = b.map(|b| b.ts_ms - a.ts_ms);
            let estimates: Option<(Method, Vec<f64>)> = match (ch.kind, b, span) {
                (ChannelKind::Register, Some(b), Some(span)) if b.value >= a.value => {
                    if span <= p.linear_max_gap_ms {
                        Some((Method::Linear, linear(a, b, &slots)))
                    } else if span <= p.like_day_max_gap_ms {
                        Some((Method::Proration, self.prorated(ch, a, b, &slots, interval)))
                    } else {
                        None
                    }
                }
                (ChannelKind::Interval, Some(b), Some(span)) if span <= p.linear_max_gap_ms => {
                    Some((Method::Linear, linear(a, b, &slots)))
                }
                (ChannelKind::Interval, _, _)
                    if span.unwrap_or(end - a.ts_ms) <= p.like_day_max_gap_ms =>
                {
                    self.like_day(ch, a.ts_ms, b.map(|b| (b.ts_ms, b.value)), &slots)
                        .map(|v| (Method::LikeDay, v))
                }
                _ => None,
            };
            let missing = slots.len();
            let (from, to) = (slots[0], slots[missing - 1]);
            let after = match b {
                Some(b) => format!("before the read at {}", self.zone.format(b.ts_ms)),
                None => "to the period's end".to_string(),
            };
            let mut detail = format!(
                "{missing} read(s) of every {} missing after {} {after}",
                hours(interval),
                self.zone.format(a.ts_ms)
            );
            if let Some((method, values)) = &estimates {
                for (t, v) in slots.iter().zip(values) {
                    if self.period.contains(*t) {
                        self.row(ch, *t, *v, Quality::E, Rule::Gap, *method);
                    }
                }
                detail.push_str(&format!("; estimated ({})", method.as_str()));
            }
            self.exception(&ch.name, Rule::Gap, from, to, detail, estimates.is_some());
        }
    }

    /// The average value at the same local weekday and time over the last `like_day_weeks`
    /// weeks (actual reads only); `None` when none of them was read.
    fn like_day_value(&self, ch: &Channel, ts: i64) -> Option<f64> {
        let values: Vec<f64> = (1..=self.params.like_day_weeks)
            .filter_map(|w| {
                let at = self.weeks_before(ts, w);
                ch.points
                    .binary_search_by_key(&at, |p| p.ts_ms)
                    .ok()
                    .map(|i| ch.points[i].value)
            })
            .collect();
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    }

    /// Like-day values for the missing slots of an interval channel; when its register has
    /// reads at both ends of the gap, scaled so that the intervals add up to the register's
    /// change. `None` when a slot has no like-day value.
    fn like_day(
        &self,
        ch: &Channel,
        a_ts: i64,
        b: Option<(i64, f64)>,
        slots: &[i64],
    ) -> Option<Vec<f64>> {
        let mut values: Vec<f64> = slots
            .iter()
            .map(|t| self.like_day_value(ch, *t).map(|v| v.max(0.0)))
            .collect::<Option<_>>()?;
        let register =
            counterpart(&ch.name, ChannelKind::Interval).and_then(|name| self.channel_named(&name));
        if let (Some(register), Some((b_ts, b_value))) = (register, b) {
            let at = |t: i64| {
                register
                    .points
                    .binary_search_by_key(&t, |p| p.ts_ms)
                    .ok()
                    .map(|i| register.points[i].value)
            };
            if let (Some(ra), Some(rb)) = (at(a_ts), at(b_ts)) {
                // The register's change over (a, b] is the missing intervals and b's.
                let target = rb - ra - b_value;
                let sum: f64 = values.iter().sum();
                if target >= 0.0 {
                    if sum > 0.0 {
                        let scale = target / sum;
                        for v in &mut values {
                            *v *= scale;
                        }
                    } else {
                        let each = target / values.len() as f64;
                        values.iter_mut().for_each(|v| *v = each);
                    }
                }
            }
        }
        Some(values)
    }

    /// A register's values at the missing slots between reads `a` and `b`: its change
    /// spread like the meter's profile (the like-day consumption of each interval, from its
    /// interval channel when it has one, else from its own rises); evenly where there is no
    /// profile.
    fn prorated(
        &self,
        ch: &Channel,
        a: crate::model::Point,
        b: crate::model::Point,
        slots: &[i64],
        interval: i64,
    ) -> Vec<f64> {
        // Each step's weight: slot k's interval ends at slot k; the last at b.
        let ends: Vec<i64> = slots.iter().copied().chain([b.ts_ms]).collect();
        let intervals =
            counterpart(&ch.name, ChannelKind::Register).and_then(|name| self.channel_named(&name));
        let own: BTreeMap<i64, f64> = Self::interval_consumption(ch, interval)
            .into_iter()
            .collect();
        let weight = |t: i64| -> Option<f64> {
            match intervals {
                Some(c) => self.like_day_value(c, t),
                None => {
                    let values: Vec<f64> = (1..=self.params.like_day_weeks)
                        .filter_map(|w| own.get(&self.weeks_before(t, w)).copied())
                        .collect();
                    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
                }
            }
        };
        let mut weights: Vec<Option<f64>> = ends.iter().map(|t| weight(*t)).collect();
        let known: Vec<f64> = weights.iter().flatten().copied().collect();
        let fill = if known.is_empty() {
            1.0
        } else {
            known.iter().sum::<f64>() / known.len() as f64
        };
        for w in &mut weights {
            *w = Some(w.unwrap_or(fill).max(0.0));
        }
        let weights: Vec<f64> = weights.into_iter().flatten().collect();
        let total: f64 = weights.iter().sum();
        let change = b.value - a.value;
        let mut cumulative = 0.0;
        slots
            .iter()
            .enumerate()
            .map(|(k, t)| {
                cumulative += weights[k];
                let share = if total > 0.0 {
                    cumulative / total
                } else {
                    (*t - a.ts_ms) as f64 / (b.ts_ms - a.ts_ms) as f64
                };
                (a.value + change * share).clamp(a.value, b.value)
            })
            .collect()
    }

    // --- sum_check, high_low ----------------------------------------------------------

    /// The local days of the period: `[start, end)` in ms.
    fn days(&self) -> Vec<(i64, i64)> {
        let mut out = Vec::new();
        let mut start = self.period.from_ms;
        while start < self.period.to_ms {
            let day = self.zone.local(start).date();
            let end = day
                .succ_opt()
                .map_or(self.period.to_ms, |next| self.zone.midnight(next))
                .min(self.period.to_ms);
            if end <= start {
                break;
            }
            out.push((start, end));
            start = end;
        }
        out
    }

    /// Each day of the period, the intervals' sum against the register's change, when both
    /// measured the whole day.
    fn sum_check(&mut self, ch: &Channel, interval: i64) {
        let Some(register) =
            counterpart(&ch.name, ChannelKind::Interval).and_then(|name| self.channel_named(&name))
        else {
            return;
        };
        let register_interval = register
            .expected_interval_ms
            .or_else(|| inferred_interval(&register.points))
            .unwrap_or(interval);
        let tolerance = self.params.sum_check_tolerance;
        let (intervals, changes) = (
            DayConsumption::new(ch, interval),
            DayConsumption::new(register, register_interval),
        );
        for (start, end) in self.days() {
            let (Some(sum), Some(change)) = (intervals.day(start, end), changes.day(start, end))
            else {
                continue;
            };
            let off = (sum - change).abs();
            if off > tolerance * change.abs().max(f64::MIN_POSITIVE) && off > 1e-9 {
                let name = register.name.clone();
                self.exception(
                    &ch.name,
                    Rule::SumCheck,
                    start,
                    end,
                    format!(
                        "the intervals add up to {} {}, {name} rose {} {}",
                        meterflow_billing_number(sum),
                        ch.unit,
                        meterflow_billing_number(change),
                        register.unit
                    ),
                    false,
                );
            }
        }
    }

    /// Each day of the period against the average of the measured days of the history.
    fn high_low(&mut self, ch: &Channel, interval: i64) {
        // A register with an interval channel is judged through that channel.
        if ch.kind == ChannelKind::Register
            && counterpart(&ch.name, ChannelKind::Register)
                .and_then(|n| self.channel_named(&n))
                .is_some()
        {
            return;
        }
        let p = self.params;
        let consumption = DayConsumption::new(ch, interval);
        let mut history = Vec::new();
        let mut day = self.zone.local(self.period.from_ms).date();
        for _ in 0..p.look_back_days {
            let Some(prev) = day.pred_opt() else { break };
            let (start, end) = (self.zone.midnight(prev), self.zone.midnight(day));
            if let Some(c) = consumption.day(start, end) {
                history.push(c);
            }
            day = prev;
        }
        if history.len() < 7 {
            return;
        }
        let average = history.iter().sum::<f64>() / history.len() as f64;
        if average <= 0.0 {
            return;
        }
        let k = p.high_low_factor;
        for (start, end) in self.days() {
            let Some(c) = consumption.day(start, end) else {
                continue;
            };
            let what = if c > k * average {
                "above"
            } else if c < average / k {
                "below"
            } else {
                continue;
            };
            self.exception(
                &ch.name,
                Rule::HighLow,
                start,
                end,
                format!(
                    "{} {} in the day, {what} the average day of {} {} ({} days) by more than {k}×",
                    meterflow_billing_number(c),
                    ch.unit,
                    meterflow_billing_number(average),
                    ch.unit,
                    history.len()
                ),
                false,
            );
        }
    }

    // --- prolonged_estimation ---------------------------------------------------------

    fn meter_wide(&mut self) {
        let days = self.days();
        let estimated: Vec<bool> = days
            .iter()
            .map(|(start, end)| {
                self.out
                    .rows
                    .iter()
                    .any(|r| r.quality == Quality::E && (*start..*end).contains(&r.ts_ms))
            })
            .collect();
        let limit = self.params.prolonged_estimation_days;
        let mut run = self.meter.estimated_days_before;
        let mut run_start: Option<usize> = (run > 0).then_some(0);
        let mut reported = false;
        for (i, e) in estimated.iter().enumerate() {
            if *e {
                run += 1;
                run_start.get_or_insert(i);
                if run > limit && !reported {
                    reported = true;
                    let start = run_start.map_or(days[i].0, |s| days[s].0);
                    let mut end = i;
                    while end + 1 < estimated.len() && estimated[end + 1] {
                        end += 1;
                    }
                    let total = run + (end - i) as u32;
                    self.exception(
                        "",
                        Rule::ProlongedEstimation,
                        start,
                        days[end].1,
                        format!("estimated on {total} days in a row (more than {limit})"),
                        true,
                    );
                }
            } else {
                run = 0;
                run_start = None;
                reported = false;
            }
        }
    }
}

/// A channel's consumption over a span, with what that needs made once per channel (the
/// daily rules ask for every day of the period and its history).
struct DayConsumption<'c> {
    ch: &'c Channel,
    interval: i64,
    /// A register's readings as billing reads them.
    readings: Vec<Reading>,
}

impl<'c> DayConsumption<'c> {
    fn new(ch: &'c Channel, interval: i64) -> Self {
        let readings = match ch.kind {
            ChannelKind::Register => ch
                .points
                .iter()
                .map(|p| Reading {
                    ts_ms: p.ts_ms,
                    value: p.value,
                })
                .collect(),
            _ => Vec::new(),
        };
        DayConsumption {
            ch,
            interval,
            readings,
        }
    }

    /// The consumption over `(start, end]`: an interval channel's intervals when every one
    /// was read; a register's change between its values at both ends (read or
    /// interpolated, not carried), when it did not fall.
    fn day(&self, start: i64, end: i64) -> Option<f64> {
        match self.ch.kind {
            ChannelKind::Interval => {
                let pts = &self.ch.points;
                let first = pts.partition_point(|p| p.ts_ms <= start);
                let last = pts.partition_point(|p| p.ts_ms <= end);
                let expected = ((end - start) / self.interval) as usize;
                (last - first == expected && expected > 0)
                    .then(|| pts[first..last].iter().map(|p| p.value).sum())
            }
            ChannelKind::Register => {
                let at = |t: i64| {
                    let v = value_at(&self.readings, t, self.interval)?;
                    (v.kind != meterflow_billing::ReadKind::Carried).then_some(v.value)
                };
                let (a, b) = (at(start)?, at(end)?);
                (b >= a).then_some(b - a)
            }
            ChannelKind::Other => None,
        }
    }
}

/// Values on the straight line from `a` to `b` at `slots`.
fn linear(a: crate::model::Point, b: crate::model::Point, slots: &[i64]) -> Vec<f64> {
    let span = (b.ts_ms - a.ts_ms) as f64;
    slots
        .iter()
        .map(|t| a.value + (b.value - a.value) * (*t - a.ts_ms) as f64 / span)
        .collect()
}

/// A number as people read it (no needless digits).
fn meterflow_billing_number(x: f64) -> String {
    let s = format!("{x:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}
