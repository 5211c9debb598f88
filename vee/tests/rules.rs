//! Each rule on data that trips it and on data that must not; each method's values against
//! an independent computation here. The meter: a register `1-0:1.8.0` read every 15 minutes,
//! with a consumption that follows the hour of the day, 35 days of history before the day
//! judged (2024-03-20, UTC) and a day after it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use meterflow_billing::Zone;
use meterflow_vee::{
    run_meter, Channel, ChannelKind, Meter, Method, Outcome, Params, Period, Point, Quality, Rule,
};

const MIN15: i64 = 900_000;
const DAY: i64 = 86_400_000;
/// 2024-03-20T00:00:00Z.
const FROM: i64 = 1_710_892_800_000;

fn zone() -> Zone {
    Zone::parse("UTC", "test").unwrap()
}

fn period() -> Period {
    Period {
        from_ms: FROM,
        to_ms: FROM + DAY,
    }
}

/// The consumption of the quarter hour ending at `ts` (kWh): more by day than by night.
fn usage(ts: i64) -> f64 {
    let hour = (ts.rem_euclid(DAY)) / 3_600_000;
    if (7..22).contains(&hour) {
        0.25
    } else {
        0.05
    }
}

/// Register readings every 15 minutes from 35 days before the period to a day after it.
fn register_points() -> Vec<Point> {
    let start = FROM - 35 * DAY;
    let mut value = 1000.0;
    let mut out = Vec::new();
    let mut t = start;
    while t <= FROM + 2 * DAY {
        if t > start {
            value += usage(t);
        }
        out.push(Point {
            ts_ms: t,
            value,
            received_at_ms: Some(t + 60_000),
        });
        t += MIN15;
    }
    out
}

fn interval_points() -> Vec<Point> {
    register_points()
        .iter()
        .skip(1)
        .map(|p| Point {
            ts_ms: p.ts_ms,
            value: usage(p.ts_ms),
            received_at_ms: p.received_at_ms,
        })
        .collect()
}

fn channel(name: &str, kind: ChannelKind, points: Vec<Point>) -> Channel {
    Channel {
        name: name.into(),
        kind,
        unit: "kWh".into(),
        other_units: Vec::new(),
        points,
        conflicts: Vec::new(),
        rollover: None,
        expected_interval_ms: None,
    }
}

fn meter(channels: Vec<Channel>) -> Meter {
    Meter {
        meter_id: "M1".into(),
        channels,
        estimated_days_before: 0,
    }
}

fn run(m: &Meter) -> Outcome {
    run_meter(m, period(), &Params::default(), &zone())
}

fn rules(o: &Outcome) -> Vec<Rule> {
    let mut r: Vec<Rule> = o.exceptions.iter().map(|e| e.rule).collect();
    r.dedup();
    r
}

#[test]
fn a_clean_meter_has_no_exception_and_no_new_version() {
    let m = meter(vec![
        channel("1-0:1.8.0", ChannelKind::Register, register_points()),
        channel("1-0:1.29.0", ChannelKind::Interval, interval_points()),
    ]);
    let o = run(&m);
    assert!(o.exceptions.is_empty(), "{:#?}", o.exceptions);
    assert!(o.rows.is_empty());
}

#[test]
fn a_one_hour_gap_in_a_register_is_estimated_on_the_line() {
    let mut points = register_points();
    // Four reads missing from 10:15 to 11:00.
    let gone: Vec<i64> = (1..=4).map(|k| FROM + 10 * 3_600_000 + k * MIN15).collect();
    let a = *points.iter().find(|p| p.ts_ms == gone[0] - MIN15).unwrap();
    let b = *points.iter().find(|p| p.ts_ms == gone[3] + MIN15).unwrap();
    points.retain(|p| !gone.contains(&p.ts_ms));
    let o = run(&meter(vec![channel(
        "1-0:1.8.0",
        ChannelKind::Register,
        points,
    )]));
    assert_eq!(rules(&o), [Rule::Gap]);
    let gap = &o.exceptions[0];
    assert_eq!(
        (gap.from_ms, gap.to_ms, gap.estimated),
        (gone[0], gone[3], true)
    );
    assert_eq!(o.rows.len(), 4);
    for (row, t) in o.rows.iter().zip(&gone) {
        let want =
            a.value + (b.value - a.value) * (t - a.ts_ms) as f64 / (b.ts_ms - a.ts_ms) as f64;
        assert_eq!(row.ts_ms, *t);
        assert!((row.value - want).abs() < 1e-9, "{} {want}", row.value);
        assert_eq!(
            (row.quality, row.rule, row.method),
            (Quality::E, Rule::Gap, Method::Linear)
        );
    }
}

#[test]
fn a_six_hour_gap_in_a_register_is_prorated_by_the_meters_own_profile() {
    let mut points = register_points();
    // 05:00 to 11:00 missing: the morning step from 0.05 to 0.25 a quarter at 07:00.
    let a_ts = FROM + 5 * 3_600_000;
    let b_ts = FROM + 11 * 3_600_000;
    let a = *points.iter().find(|p| p.ts_ms == a_ts).unwrap();
    let b = *points.iter().find(|p| p.ts_ms == b_ts).unwrap();
    points.retain(|p| p.ts_ms <= a_ts || p.ts_ms >= b_ts);
    let o = run(&meter(vec![channel(
        "1-0:1.8.0",
        ChannelKind::Register,
        points,
    )]));
    assert_eq!(rules(&o), [Rule::Gap]);
    // Independently: each quarter's weight is the usage of the same quarter of earlier weeks
    // (the profile repeats daily), the change shared in proportion.
    let ends: Vec<i64> = (1..=24).map(|k| a_ts + k * MIN15).collect();
    let total: f64 = ends.iter().map(|t| usage(*t)).sum();
    let mut cumulative = 0.0;
    assert_eq!(o.rows.len(), 23);
    for (row, t) in o.rows.iter().zip(&ends) {
        cumulative += usage(*t);
        let want = a.value + (b.value - a.value) * cumulative / total;
        assert_eq!(row.ts_ms, *t);
        assert!((row.value - want).abs() < 1e-9, "{t}: {} {want}", row.value);
        assert_eq!(row.method, Method::Proration);
    }
    // The actual read after the gap is where the profile ends: never crossed, never a fall.
    assert!(o.rows.windows(2).all(|w| w[1].value >= w[0].value));
    assert!(o.rows.last().unwrap().value <= b.value);
}

#[test]
fn an_interval_spike_is_substituted_by_its_like_day_value() {
    let mut points = interval_points();
    let at = FROM + 12 * 3_600_000;
    points.iter_mut().find(|p| p.ts_ms == at).unwrap().value = 9.0;
    let o = run(&meter(vec![channel(
        "1-0:1.29.0",
        ChannelKind::Interval,
        points,
    )]));
    assert_eq!(rules(&o), [Rule::Spike]);
    assert_eq!(o.rows.len(), 1);
    let row = &o.rows[0];
    assert_eq!(
        (row.ts_ms, row.quality, row.method),
        (at, Quality::S, Method::Substitute)
    );
    assert!((row.value - usage(at)).abs() < 1e-12);
    // 3 × the usual: below 10 × the 95th percentile, no spike.
    let mut points = interval_points();
    points.iter_mut().find(|p| p.ts_ms == at).unwrap().value = 0.75;
    let o = run(&meter(vec![channel(
        "1-0:1.29.0",
        ChannelKind::Interval,
        points,
    )]));
    assert!(o.exceptions.is_empty(), "{:?}", o.exceptions);
}

#[test]
fn a_fall_is_reverse_unless_to_near_zero_which_is_a_reset() {
    let mut points = register_points();
    let at = FROM + 8 * 3_600_000;
    for p in points.iter_mut().filter(|p| p.ts_ms >= at) {
        p.value -= 5.0;
    }
    let o = run(&meter(vec![channel(
        "1-0:1.8.0",
        ChannelKind::Register,
        points,
    )]));
    assert_eq!(rules(&o), [Rule::Reverse]);
    let mut points = register_points();
    let base = points.iter().find(|p| p.ts_ms == at).unwrap().value;
    for p in points.iter_mut().filter(|p| p.ts_ms >= at) {
        p.value -= base - 1.0;
    }
    let o = run(&meter(vec![channel(
        "1-0:1.8.0",
        ChannelKind::Register,
        points,
    )]));
    assert_eq!(rules(&o), [Rule::Reset]);
}

#[test]
fn a_flat_register_is_zero_alone_and_stuck_beside_a_moving_channel() {
    let mut points = register_points();
    // Flat from 3 days before the period's end on.
    let since = FROM + DAY - 3 * DAY - MIN15;
    let flat = points.iter().find(|p| p.ts_ms == since).unwrap().value;
    for p in points.iter_mut().filter(|p| p.ts_ms >= since) {
        p.value = flat;
    }
    let o = run(&meter(vec![channel(
        "1-0:1.8.0",
        ChannelKind::Register,
        points.clone(),
    )]));
    assert!(rules(&o).contains(&Rule::Zero), "{:?}", o.exceptions);
    assert!(!rules(&o).contains(&Rule::Stuck));
    let voltage: Vec<Point> = register_points()
        .iter()
        .map(|p| Point {
            ts_ms: p.ts_ms,
            value: 230.0 + (p.ts_ms / MIN15 % 7) as f64,
            received_at_ms: None,
        })
        .collect();
    let o = run(&meter(vec![
        channel("1-0:1.8.0", ChannelKind::Register, points),
        channel("1-0:32.7.0", ChannelKind::Other, voltage),
    ]));
    assert!(rules(&o).contains(&Rule::Stuck), "{:?}", o.exceptions);
    assert!(!rules(&o).contains(&Rule::Zero));
    // An export register at 0 all along, beside the moving import: unused, not stuck (the
    // benchmark's 7 000 meters without panels were all `stuck` before).
    let export: Vec<Point> = register_points()
        .iter()
        .map(|p| Point { value: 0.0, ..*p })
        .collect();
    let o = run(&meter(vec![
        channel("1-0:1.8.0", ChannelKind::Register, register_points()),
        channel("1-0:2.8.0", ChannelKind::Register, export),
    ]));
    assert!(rules(&o).is_empty(), "{:?}", o.exceptions);
}

#[test]
fn intervals_that_do_not_add_up_to_the_register_fail_the_sum_check() {
    let mut intervals = interval_points();
    // One interval twice what it was in the day: 0.25 kWh more of 16.8, 1.5 %.
    let at = FROM + 9 * 3_600_000;
    intervals.iter_mut().find(|p| p.ts_ms == at).unwrap().value *= 2.0;
    let o = run(&meter(vec![
        channel("1-0:1.8.0", ChannelKind::Register, register_points()),
        channel("1-0:1.29.0", ChannelKind::Interval, intervals),
    ]));
    assert_eq!(rules(&o), [Rule::SumCheck]);
    // 1 % off one interval: 0.0025 kWh, 0.015 % of the day, under 0.5 %: no exception.
    let mut intervals = interval_points();
    intervals.iter_mut().find(|p| p.ts_ms == at).unwrap().value *= 1.01;
    let o = run(&meter(vec![
        channel("1-0:1.8.0", ChannelKind::Register, register_points()),
        channel("1-0:1.29.0", ChannelKind::Interval, intervals),
    ]));
    assert!(o.exceptions.is_empty(), "{:?}", o.exceptions);
}

#[test]
fn a_reading_stamped_after_its_receipt_is_a_clock_exception() {
    let mut points = register_points();
    for p in points
        .iter_mut()
        .filter(|p| (FROM + 3_600_000..FROM + 2 * 3_600_000).contains(&p.ts_ms))
    {
        p.received_at_ms = Some(p.ts_ms - 2 * 3_600_000);
    }
    let o = run(&meter(vec![channel(
        "1-0:1.8.0",
        ChannelKind::Register,
        points,
    )]));
    assert_eq!(rules(&o), [Rule::Clock]);
    assert_eq!(o.exceptions.len(), 1, "one run, one exception");
    assert!(
        o.exceptions[0].detail.starts_with("4 reading(s)"),
        "{}",
        o.exceptions[0].detail
    );
}

#[test]
fn conflicting_copies_keep_the_one_nearest_the_line() {
    let points = register_points();
    let at = FROM + 14 * 3_600_000;
    let i = points.iter().position(|p| p.ts_ms == at).unwrap();
    let right = points[i].value;
    let mut ch = channel("1-0:1.8.0", ChannelKind::Register, points.clone());
    // The read model kept the later copy, a wrong one; the right one came first.
    ch.points[i].value = right + 40.0;
    ch.conflicts = vec![(at, vec![right, right + 40.0])];
    let o = run(&meter(vec![ch]));
    // Only the conflict: the kept copy's fall to the next read is no `reverse`.
    assert_eq!(rules(&o), [Rule::Conflict], "{:?}", o.exceptions);
    let row = o.rows.iter().find(|r| r.rule == Rule::Conflict).unwrap();
    assert_eq!((row.ts_ms, row.value, row.quality), (at, right, Quality::S));
    // Copies where the kept one is the nearest: an exception, nothing substituted.
    let mut ch = channel("1-0:1.8.0", ChannelKind::Register, points);
    ch.conflicts = vec![(at, vec![right, right + 40.0])];
    let o = run(&meter(vec![ch]));
    assert_eq!(rules(&o), [Rule::Conflict]);
    assert!(o.rows.is_empty());
}

#[test]
fn a_change_of_unit_is_flagged() {
    let mut ch = channel("1-0:1.8.0", ChannelKind::Register, register_points());
    ch.other_units = vec!["Wh".into()];
    let o = run(&meter(vec![ch]));
    assert_eq!(rules(&o), [Rule::UnitChange]);
}

#[test]
fn a_day_far_above_the_average_day_is_high_low() {
    let mut intervals = interval_points();
    for p in intervals
        .iter_mut()
        .filter(|p| p.ts_ms > FROM && p.ts_ms <= FROM + DAY)
    {
        p.value *= 4.0;
    }
    let o = run(&meter(vec![channel(
        "1-0:1.29.0",
        ChannelKind::Interval,
        intervals,
    )]));
    assert_eq!(rules(&o), [Rule::HighLow]);
    let mut intervals = interval_points();
    for p in intervals
        .iter_mut()
        .filter(|p| p.ts_ms > FROM && p.ts_ms <= FROM + DAY)
    {
        p.value *= 2.0;
    }
    let o = run(&meter(vec![channel(
        "1-0:1.29.0",
        ChannelKind::Interval,
        intervals,
    )]));
    assert!(
        o.exceptions.is_empty(),
        "2x is within 3x: {:?}",
        o.exceptions
    );
}

#[test]
fn a_meter_estimated_day_after_day_is_prolonged_estimation() {
    let mut points = register_points();
    let gone: Vec<i64> = (1..=4).map(|k| FROM + 10 * 3_600_000 + k * MIN15).collect();
    points.retain(|p| !gone.contains(&p.ts_ms));
    let mut m = meter(vec![channel("1-0:1.8.0", ChannelKind::Register, points)]);
    m.estimated_days_before = 3;
    let o = run(&m);
    assert!(
        rules(&o).contains(&Rule::ProlongedEstimation),
        "{:?}",
        o.exceptions
    );
    m.estimated_days_before = 2;
    let o = run(&m);
    assert!(!rules(&o).contains(&Rule::ProlongedEstimation));
}

/// Issue 23 review: a gap across midnight judged by two daily runs got two different
/// prorations (each run spread the whole change over its own slots), and the register as
/// billed fell at midnight. Every run now estimates the whole gap and keeps its own
/// period's values: two daily runs give what one run over both days gives.
#[test]
fn a_gap_across_midnight_gets_the_same_estimates_from_daily_runs_as_from_one_run() {
    let mut points = register_points();
    // 20:00 on the day to 04:00 the day after: 31 reads missing, prorated (8 h).
    let (gap_from, gap_to) = (FROM + 20 * 3_600_000, FROM + DAY + 4 * 3_600_000);
    points.retain(|p| p.ts_ms <= gap_from || p.ts_ms >= gap_to);
    let m = meter(vec![channel("1-0:1.8.0", ChannelKind::Register, points)]);
    let params = Params::default();
    let both = run_meter(
        &m,
        Period {
            from_ms: FROM,
            to_ms: FROM + 2 * DAY,
        },
        &params,
        &zone(),
    );
    let mut daily = run_meter(&m, period(), &params, &zone()).rows;
    daily.extend(
        run_meter(
            &m,
            Period {
                from_ms: FROM + DAY,
                to_ms: FROM + 2 * DAY,
            },
            &params,
            &zone(),
        )
        .rows,
    );
    assert_eq!(both.rows.len(), 31);
    assert_eq!(daily, both.rows);
    assert!(both.rows.iter().all(|r| r.method == Method::Proration));
    assert!(both.rows.windows(2).all(|w| w[1].value >= w[0].value));
}

/// A conflict whose every copy lies outside its neighbours: the line, not a copy that would
/// make the register fall.
#[test]
fn a_conflict_substitute_never_makes_the_register_fall() {
    let points = register_points();
    let at = FROM + 14 * 3_600_000;
    let i = points.iter().position(|p| p.ts_ms == at).unwrap();
    let (before, after) = (points[i - 1].value, points[i + 1].value);
    let mut ch = channel("1-0:1.8.0", ChannelKind::Register, points.clone());
    ch.points[i].value = after + 50.0;
    ch.conflicts = vec![(at, vec![before - 0.1, after + 50.0])];
    let o = run(&meter(vec![ch]));
    let row = o.rows.iter().find(|r| r.rule == Rule::Conflict).unwrap();
    let line = before + (after - before) / 2.0;
    assert!((row.value - line).abs() < 1e-9, "{} vs {line}", row.value);
}

/// A register standing at a value other than 0 for longer than the window, beside a moving
/// channel: stuck, though it never rose in the window.
#[test]
fn a_register_stuck_for_longer_than_the_window_is_still_stuck() {
    let stuck: Vec<Point> = register_points()
        .iter()
        .map(|p| Point {
            value: 4321.5,
            ..*p
        })
        .collect();
    let voltage: Vec<Point> = register_points()
        .iter()
        .map(|p| Point {
            value: 230.0 + (p.ts_ms / MIN15 % 7) as f64,
            ..*p
        })
        .collect();
    let o = run(&meter(vec![
        channel("1-0:1.8.0", ChannelKind::Register, stuck),
        channel("1-0:32.7.0", ChannelKind::Other, voltage),
    ]));
    assert!(rules(&o).contains(&Rule::Stuck), "{:?}", o.exceptions);
}
