//! `vee.schedule` in `serve`: VEE every day at a local time (`billing.timezone`) over the
//! `vee.schedule_days` days before (3: reads that came late, a run that failed or was
//! missed, are judged on the next days), the same run as `meterflow vee` (`trigger =
//! schedule` in `vee_runs`). At start-up the days before the last scheduled time are judged
//! at once when runs do not cover them all, so a server that was down at 02:00 catches up.
//! It runs on a thread of its own: the rules' CPU never holds the async runtime. A run in
//! progress at shutdown is cut short: it leaves no run row (its exceptions are skipped, its
//! values are not read as a version), and the next days' runs judge its days again.
//!
//! Metrics: `meterflow_vee_runs_total{outcome="ok|error"}`,
//! `meterflow_vee_exceptions_total{rule}` and `meterflow_vee_values_mended_total` (of each
//! run's newest day: every day counted once, though judged `schedule_days` times),
//! `meterflow_vee_last_run_seconds` (how long the last run took) and
//! `meterflow_vee_last_success_timestamp_seconds` (an alert on its age finds a schedule that
//! stopped judging).

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use chrono::NaiveTime;
use meterflow_billing::Zone;
use meterflow_ingest::Config;
use meterflow_vee::Period;

/// Starts the schedule of `config` on a thread, if it has one; it ends when `stop`'s sender
/// is dropped. Returns whether it started.
pub fn start(config: Config, stop: Receiver<()>) -> anyhow::Result<bool> {
    let params = config.vee.params()?;
    let Some(at) = params.schedule else {
        return Ok(false);
    };
    let days = params.schedule_days;
    let zone = config.billing.zone()?;
    std::thread::Builder::new()
        .name("vee-schedule".into())
        .spawn(move || run_schedule(&config, zone, at, days, &stop))?;
    tracing::info!(
        at = %at.format("%H:%M"),
        zone = zone.name(),
        days,
        "VEE runs daily over the days before"
    );
    Ok(true)
}

fn run_schedule(config: &Config, zone: Zone, at: NaiveTime, days: u32, stop: &Receiver<()>) {
    let now = meterflow_proto::now_ms();
    let missed = days_before(&zone, last_time(&zone, at, now), days);
    match super::as_billed::runs(config) {
        Ok(runs) => {
            if meterflow_storage::vee::runs::first_unjudged(
                &runs,
                None,
                missed.from_ms,
                missed.to_ms,
            )
            .is_some()
            {
                judge_days(config, &zone, missed);
            }
        }
        Err(e) => tracing::error!(
            error = format!("{e:#}"),
            "VEE schedule: cannot read the runs"
        ),
    }
    loop {
        let now = meterflow_proto::now_ms();
        let next = next_time(&zone, at, now);
        let wait = Duration::from_millis(u64::try_from(next - now).unwrap_or(0));
        match stop.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {
                judge_days(config, &zone, days_before(&zone, next, days));
            }
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// One scheduled run, logged and counted.
fn judge_days(config: &Config, zone: &Zone, window: Period) {
    let started = Instant::now();
    let result = super::vee::judge(config, zone, window, None, "schedule");
    let seconds = started.elapsed().as_secs_f64();
    metrics::gauge!("meterflow_vee_last_run_seconds").set(seconds);
    match result {
        Ok(judged) => {
            metrics::counter!("meterflow_vee_runs_total", "outcome" => "ok").increment(1);
            metrics::gauge!("meterflow_vee_last_success_timestamp_seconds")
                .set(meterflow_proto::now_ms() as f64 / 1000.0);
            // Counted once per day: of the window, the newest day only (the days before it
            // were counted the nights they were newest).
            let newest = zone.local(window.to_ms - 1).date();
            for e in judged.exceptions.iter().filter(|e| e.day == newest) {
                metrics::counter!("meterflow_vee_exceptions_total", "rule" => e.rule.clone())
                    .increment(1);
                metrics::counter!("meterflow_vee_values_mended_total")
                    .increment(u64::from(e.mended));
            }
            tracing::info!(
                from = zone.format(window.from_ms),
                to = zone.format(window.to_ms),
                meters = judged.run.meters,
                exceptions = judged.run.exceptions,
                mended = judged.run.mended,
                version_written = judged.run.version_written,
                seconds,
                "VEE run: {}",
                judged.said
            );
        }
        Err(e) => {
            metrics::counter!("meterflow_vee_runs_total", "outcome" => "error").increment(1);
            tracing::error!(
                from = zone.format(window.from_ms),
                to = zone.format(window.to_ms),
                error = format!("{e:#}"),
                "VEE run failed; the next days' runs judge these days again"
            );
        }
    }
}

/// The `days` local days before the one `at_ms` falls on.
fn days_before(zone: &Zone, at_ms: i64, days: u32) -> Period {
    let day = zone.local(at_ms).date();
    let first = day - chrono::Duration::days(i64::from(days.max(1)));
    Period {
        from_ms: zone.midnight(first),
        to_ms: zone.midnight(day),
    }
}

/// The first instant after `now_ms` whose local time is `at` (after a DST gap that skips
/// it, the instant the clocks jumped).
fn next_time(zone: &Zone, at: NaiveTime, now_ms: i64) -> i64 {
    let mut day = zone.local(now_ms).date();
    loop {
        let t = zone.instant(day.and_time(at));
        if t > now_ms {
            return t;
        }
        day = day.succ_opt().unwrap_or(day);
    }
}

/// The last instant at or before `now_ms` whose local time is `at`.
fn last_time(zone: &Zone, at: NaiveTime, now_ms: i64) -> i64 {
    let mut day = zone.local(now_ms).date();
    loop {
        let t = zone.instant(day.and_time(at));
        if t <= now_ms {
            return t;
        }
        day = day.pred_opt().unwrap_or(day);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc3339: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn the_schedule_runs_over_the_local_day_before_across_dst() {
        let berlin = Zone::parse("Europe/Berlin", "tz").unwrap();
        let two = NaiveTime::from_hms_opt(2, 0, 0).unwrap();
        let now = ms("2026-03-28T12:00:00+01:00");
        // 02:00 on 29 March does not exist in Berlin: the clocks jump to 03:00 then.
        let next = next_time(&berlin, two, now);
        assert_eq!(next, ms("2026-03-29T03:00:00+02:00"));
        assert_eq!(
            days_before(&berlin, next, 1),
            Period {
                from_ms: ms("2026-03-28T00:00:00+01:00"),
                to_ms: ms("2026-03-29T00:00:00+01:00"),
            }
        );
        // The day of the change is 23 hours long.
        let after = days_before(&berlin, ms("2026-03-30T02:00:00+02:00"), 1);
        assert_eq!(after.to_ms - after.from_ms, 23 * 3_600_000);
        let three = days_before(&berlin, ms("2026-03-30T02:00:00+02:00"), 3);
        assert_eq!(three.from_ms, ms("2026-03-27T00:00:00+01:00"));
        assert_eq!(three.to_ms - three.from_ms, (3 * 24 - 1) * 3_600_000);
        assert_eq!(
            last_time(&berlin, two, now),
            ms("2026-03-28T02:00:00+01:00")
        );
        assert_eq!(
            last_time(&berlin, two, ms("2026-03-28T02:00:00+01:00")),
            ms("2026-03-28T02:00:00+01:00")
        );
        assert_eq!(
            next_time(&berlin, two, ms("2026-03-28T02:00:00+01:00")),
            ms("2026-03-29T03:00:00+02:00")
        );
    }
}
