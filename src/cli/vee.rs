//! `meterflow vee`: the validation rules run over a period of local days, on ClickHouse when
//! a URL is configured, else on the Parquet tree; each meter's channels read with the history
//! the statistics need and handed to `meterflow_vee::run_meter`. Prints the exceptions found,
//! with what was estimated or substituted for them, and stores the estimates and substitutes
//! as a new version (`readings_vee`, on the same source) when they differ from the latest one:
//! a rerun over the same data writes nothing; an estimate an actual read has replaced is
//! withdrawn (an `A` value).

use std::collections::{BTreeMap, HashMap};

use anyhow::Context;
use meterflow_ingest::Config;
use meterflow_storage::analytics::Table;
use meterflow_storage::readings::{
    is_cumulative_register, is_interval_channel, Channels, Neighbours, ReadRequest, Series,
};
use meterflow_storage::vee::{self as vee_store, StoredException, VeeRun, VeeValue};
use meterflow_vee::{
    run_meter, Channel, ChannelKind, Exception, Meter, Method, Outcome, Period, Point, Quality,
    Rule, VeeRow,
};

use super::questions::{check_meter, period, read_series, runtime, zone};

/// The flags of `vee`.
#[derive(clap::Args)]
pub struct VeeArgs {
    /// Start, inclusive: YYYY-MM-DD (local midnight in --tz), or as `query billing` takes it.
    #[arg(long)]
    from: String,
    /// End, exclusive (as --from).
    #[arg(long)]
    to: String,
    /// One meter.
    #[arg(long)]
    meter: Option<String>,
    /// IANA time zone of the days [default: billing.timezone].
    #[arg(long)]
    tz: Option<String>,
}

/// The longest period judged at once.
const MAX_SPAN_DAYS: i64 = 400;
const DAY_MS: i64 = 86_400_000;

/// Runs the rules over `args`' period and lays out what they found.
pub fn run(config: &Config, args: VeeArgs) -> anyhow::Result<Table> {
    let zone = zone(config, &args.tz)?;
    let (from_ms, to_ms) = period(&zone, &args.from, &args.to)?;
    anyhow::ensure!(
        to_ms - from_ms <= MAX_SPAN_DAYS * DAY_MS,
        "--to: VEE judges at most {MAX_SPAN_DAYS} days at once"
    );
    // Whole local days: the daily rules (high_low, sum_check, prolonged_estimation) compare
    // days with days.
    for (flag, at) in [("--from", from_ms), ("--to", to_ms)] {
        anyhow::ensure!(
            zone.midnight(zone.local(at).date()) == at,
            "{flag}: VEE judges whole local days; give a date (YYYY-MM-DD), not {}",
            zone.format(at)
        );
    }
    // Only days that have ended: in a day still running every meter has a gap to its end,
    // and estimates would be made for times still to come.
    let now = meterflow_proto::now_ms();
    anyhow::ensure!(
        to_ms <= now,
        "--to: {} has not come yet; VEE judges days that have ended",
        zone.format(to_ms)
    );
    check_meter(&args.meter)?;
    let judged = judge(
        config,
        &zone,
        Period { from_ms, to_ms },
        args.meter.as_deref(),
        "command",
    )?;
    eprintln!("vee: {}", judged.said);
    Ok(exceptions_table(&judged.exceptions, &zone))
}

/// What a run did.
pub struct Judged {
    pub run: VeeRun,
    pub exceptions: Vec<StoredException>,
    /// What it wrote, in words.
    pub said: String,
}

/// One run of VEE over `period` (local days of `zone`), on every meter or one: reads each
/// meter's channels, runs the rules, stores a new version when the values differ from the
/// latest, and then the run and its exceptions. `trigger`: `command` or `schedule`.
pub fn judge(
    config: &Config,
    zone: &meterflow_billing::Zone,
    vee_period: Period,
    meter: Option<&str>,
    trigger: &str,
) -> anyhow::Result<Judged> {
    let Period { from_ms, to_ms } = vee_period;
    let run_id = chrono::Utc::now().timestamp_millis();
    let params = config.vee.params().context("[vee]")?;
    // The meter registry (optional): the interval each meter reads at, for `gap`.
    let registry = super::registry::load(config)?;
    let parameters = serde_json::to_string(&config.vee).context("[vee] as JSON")?;
    // The history the statistics and the like-day profile are taken from, and a day after
    // the period (the read after a gap at its end).
    let history_days = i64::from(params.look_back_days.max(params.like_day_weeks * 7)) + 1;
    let request = ReadRequest {
        from_ms: from_ms - history_days * DAY_MS,
        to_ms,
        // The read that ends a gap at the period's end, as far as a gap is estimated.
        margin_ms: params.like_day_max_gap_ms.max(DAY_MS),
        meter: meter.map(str::to_string),
        channels: Channels::All,
        neighbours: Neighbours::Before,
        before_since_ms: Some(from_ms - (history_days + 31) * DAY_MS),
        silent_since_ms: None,
    };
    // What earlier runs wrote for the period: a new version only if this run differs.
    let stored = super::as_billed::latest_versions(config, from_ms, to_ms, meter)?;
    // How many local days in a row before the period each meter was estimated on, as far as
    // `prolonged_estimation` needs to know.
    let days_back = i64::from(params.prolonged_estimation_days) + 1;
    let first_day = zone.local(from_ms).date();
    let earlier_from = zone.midnight(first_day - chrono::Duration::days(days_back));
    let mut estimated_days: HashMap<String, std::collections::BTreeSet<chrono::NaiveDate>> =
        HashMap::new();
    for v in super::as_billed::latest_versions(config, earlier_from, from_ms, meter)? {
        if v.quality == "E" {
            estimated_days
                .entry(v.meter_id)
                .or_default()
                .insert(zone.local(v.ts_ms).date());
        }
    }
    let estimated_before = |meter: &str| -> u32 {
        let Some(days) = estimated_days.get(meter) else {
            return 0;
        };
        let mut n = 0;
        let mut day = first_day;
        while let Some(prev) = day.pred_opt().filter(|d| days.contains(d)) {
            n += 1;
            day = prev;
        }
        n
    };
    let mended_before: HashMap<Key, &VeeValue> = stored
        .iter()
        .filter(|v| v.quality != "A")
        .map(|v| ((v.meter_id.clone(), v.channel.clone(), v.ts_ms), v))
        .collect();
    let mended_series: std::collections::HashSet<(&str, &str)> = mended_before
        .keys()
        .map(|(meter, channel, _)| (meter.as_str(), channel.as_str()))
        .collect();
    // The actual reads where an earlier version estimated or substituted: what a withdrawn
    // estimate gives way to.
    let mut actual: HashMap<Key, f64> = HashMap::new();
    let mut outcome = Outcome::default();
    let mut meters = 0u64;
    // Series come in (meter, channel) order: a meter's channels together.
    let mut current: Option<Meter> = None;
    let mut finish = |meter: Meter, outcome: &mut Outcome| {
        meters += 1;
        let o = run_meter(&meter, vee_period, &params, zone);
        outcome.exceptions.extend(o.exceptions);
        outcome.rows.extend(o.rows);
    };
    let mut each = |series: Series| -> Result<(), meterflow_storage::StorageError> {
        if mended_series.contains(&(series.meter_id.as_str(), series.channel.as_str())) {
            for &(ts, value) in &series.points {
                let key = (series.meter_id.clone(), series.channel.clone(), ts);
                if mended_before.contains_key(&key) {
                    actual.insert(key, value);
                }
            }
        }
        let channel = channel_of(config, &series, &registry, to_ms - 1);
        match current.as_mut() {
            Some(m) if m.meter_id == series.meter_id => m.channels.push(channel),
            _ => {
                if let Some(done) = current.replace(Meter {
                    meter_id: series.meter_id.clone(),
                    channels: vec![channel],
                    estimated_days_before: estimated_before(&series.meter_id),
                }) {
                    finish(done, &mut outcome);
                }
            }
        }
        Ok(())
    };
    read_series(config, &request, &mut each)?;
    if let Some(done) = current.take() {
        finish(done, &mut outcome);
    }
    carry_conflict_substitutes(&mut outcome, &mended_before, zone);
    let vee_run = format!(
        "{} {parameters}",
        chrono::DateTime::from_timestamp_millis(run_id)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default()
    );
    let (version_written, said) =
        store(config, &outcome, &mended_before, &actual, run_id, &vee_run)?;
    let exceptions = stored_exceptions(&outcome, run_id, vee_period, zone);
    let run = VeeRun {
        run_id,
        from_ms,
        to_ms,
        timezone: zone.name().to_string(),
        meter: meter.unwrap_or_default().to_string(),
        trigger: trigger.to_string(),
        parameters,
        meters,
        exceptions: exceptions.len() as u64,
        mended: outcome.rows.len() as u64,
        version_written,
    };
    if config.clickhouse.enabled() {
        runtime()?.block_on(vee_store::runs::write_run_clickhouse(
            &config.clickhouse,
            &run,
            &exceptions,
        ))
    } else {
        vee_store::runs::write_run(&config.data_dir, &run, &exceptions).map(drop)
    }
    .context("storing the VEE run (on ClickHouse: `meterflow schema --apply` adds vee_runs and vee_exceptions)")?;
    Ok(Judged {
        run,
        exceptions,
        said,
    })
}

/// A value's place: meter, channel, time.
type Key = (String, String, i64);

/// A mended value's time and method.
type MendedAt<'o> = (i64, &'o str);

/// An earlier run's substitute for a conflict this run no longer sees stays, with its
/// exception: on ClickHouse the copies are one row once the table's parts merge (a
/// ReplacingMergeTree keeps one), and the copy kept may be the failed one. On the Parquet
/// tree, which keeps every copy, each run sees the conflict itself.
fn carry_conflict_substitutes(
    outcome: &mut Outcome,
    before: &HashMap<Key, &VeeValue>,
    zone: &meterflow_billing::Zone,
) {
    let made: std::collections::HashSet<(&str, &str, i64)> = outcome
        .rows
        .iter()
        .map(|r| (r.meter_id.as_str(), r.channel.as_str(), r.ts_ms))
        .collect();
    let carried: Vec<&VeeValue> = before
        .values()
        .filter(|v| v.rule == Rule::Conflict.as_str() && v.quality == Quality::S.as_str())
        .filter(|v| !made.contains(&(v.meter_id.as_str(), v.channel.as_str(), v.ts_ms)))
        .copied()
        .collect();
    for v in carried {
        outcome.rows.push(VeeRow {
            meter_id: v.meter_id.clone(),
            channel: v.channel.clone(),
            ts_ms: v.ts_ms,
            value: v.value,
            unit: v.unit.clone(),
            quality: Quality::S,
            rule: Rule::Conflict,
            method: Method::Substitute,
        });
        outcome.exceptions.push(Exception {
            meter_id: v.meter_id.clone(),
            channel: v.channel.clone(),
            rule: Rule::Conflict,
            from_ms: v.ts_ms,
            to_ms: v.ts_ms,
            detail: format!(
                "copies seen by the run of {}, which kept {}; stored as one since",
                zone.format(v.version),
                v.value
            ),
            estimated: true,
        });
    }
}

/// Writes this run's values as a new version when they differ from the latest stored: the
/// estimates and substitutes, and an `A` (actual) value for each earlier one no longer made
/// (an actual read came, or the rules changed). Says on stderr what it did.
fn store(
    config: &Config,
    outcome: &Outcome,
    before: &HashMap<Key, &VeeValue>,
    actual: &HashMap<Key, f64>,
    version: i64,
    vee_run: &str,
) -> anyhow::Result<(bool, String)> {
    let mut values: Vec<VeeValue> = outcome
        .rows
        .iter()
        .map(|r| VeeValue {
            meter_id: r.meter_id.clone(),
            channel: r.channel.clone(),
            ts_ms: r.ts_ms,
            value: r.value,
            unit: r.unit.clone(),
            quality: r.quality.as_str().into(),
            rule: r.rule.as_str().into(),
            method: r.method.as_str().into(),
            version,
            vee_run: vee_run.to_string(),
        })
        .collect();
    let now: HashMap<Key, &VeeValue> = values
        .iter()
        .map(|v| ((v.meter_id.clone(), v.channel.clone(), v.ts_ms), v))
        .collect();
    let same = now.len() == before.len()
        && now.iter().all(|(k, v)| {
            before.get(k).is_some_and(|b| {
                (b.value.to_bits(), &b.quality, &b.rule, &b.method)
                    == (v.value.to_bits(), &v.quality, &v.rule, &v.method)
            })
        });
    if now.is_empty() && before.is_empty() {
        return Ok((false, "nothing estimated or substituted".to_string()));
    }
    if same {
        return Ok((
            false,
            format!(
                "{} value(s) estimated or substituted, as the latest version has them: nothing written",
                now.len()
            ),
        ));
    }
    let withdrawn: Vec<VeeValue> = before
        .iter()
        .filter(|(k, _)| !now.contains_key(*k))
        .map(|(k, b)| {
            // The actual read, or none (NaN) when the rules no longer make a value where no
            // read came (a parameter changed): as read at that instant, either way.
            VeeValue {
                value: actual.get(k).copied().unwrap_or(f64::NAN),
                quality: "A".into(),
                method: Method::Actual.as_str().into(),
                version,
                vee_run: vee_run.to_string(),
                ..(*b).clone()
            }
        })
        .collect();
    let (new, gone) = (values.len(), withdrawn.len());
    values.extend(withdrawn);
    if config.clickhouse.enabled() {
        runtime()?.block_on(vee_store::versions::write_clickhouse(
            &config.clickhouse,
            &values,
        ))?;
    } else {
        vee_store::versions::write(&config.data_dir, &values)?;
    }
    Ok((
        true,
        format!(
            "version {version} written: {new} value(s) estimated or substituted, {gone} earlier one(s) withdrawn"
        ),
    ))
}

/// A series as VEE reads it: its kind from its OBIS code, its register's rollover, and the
/// interval its meter reads at when the registry has it (at `at_ms`, the period's last
/// instant), else inferred from its reads.
fn channel_of(
    config: &Config,
    s: &Series,
    registry: &meterflow_storage::registry::Registry,
    at_ms: i64,
) -> Channel {
    let kind = if is_cumulative_register(&s.channel) {
        ChannelKind::Register
    } else if is_interval_channel(&s.channel) {
        ChannelKind::Interval
    } else {
        ChannelKind::Other
    };
    let points = s
        .points
        .iter()
        .enumerate()
        .map(|(i, &(ts_ms, value))| Point {
            ts_ms,
            value,
            received_at_ms: s.received_at.get(i).copied(),
        })
        .collect();
    Channel {
        name: s.channel.clone(),
        kind,
        unit: s.unit.clone(),
        other_units: s.other_units.clone(),
        points,
        conflicts: s.conflicts.clone(),
        rollover: config.billing.rollover_for(&s.meter_id, &s.channel),
        expected_interval_ms: registry
            .at(&s.meter_id, at_ms)
            .and_then(|r| r.expected_interval_s)
            .map(|seconds| i64::from(seconds) * 1000),
    }
}

/// The exceptions of a run as stored: each cut to the run's period and into its local days
/// (a day's exceptions are those of the latest run that judged that day: a later run over
/// one day replaces that day's pieces only), each piece with how many values of its span (of
/// its channel) were estimated or substituted, and how. A gap of three days is three
/// pieces, each with the whole gap's detail.
fn stored_exceptions(
    outcome: &Outcome,
    run_id: i64,
    period: Period,
    zone: &meterflow_billing::Zone,
) -> Vec<StoredException> {
    // The values each rule's findings mended, by meter and channel.
    let mut mended: BTreeMap<(&str, &str, Rule), Vec<MendedAt<'_>>> = BTreeMap::new();
    for r in &outcome.rows {
        mended
            .entry((r.meter_id.as_str(), r.channel.as_str(), r.rule))
            .or_default()
            .push((r.ts_ms, r.method.as_str()));
    }
    for rows in mended.values_mut() {
        rows.sort_by_key(|(t, _)| *t);
    }
    let mut days = Vec::new();
    let mut start = period.from_ms;
    while start < period.to_ms {
        let next = zone
            .local(start)
            .date()
            .succ_opt()
            .map_or(period.to_ms, |d| zone.midnight(d));
        let end = next.min(period.to_ms);
        if end <= start {
            break;
        }
        days.push((start, end));
        start = end;
    }
    let mut list = Vec::new();
    for e in &outcome.exceptions {
        let rows: &[MendedAt<'_>] = mended
            .get(&(e.meter_id.as_str(), e.channel.as_str(), e.rule))
            .map_or(&[], Vec::as_slice);
        for &(day_from, day_to) in &days {
            let (from, last_in_day) = (e.from_ms.max(day_from), e.to_ms.min(day_to - 1));
            if from > last_in_day {
                continue;
            }
            let first = rows.partition_point(|(t, _)| *t < from);
            let last = rows.partition_point(|(t, _)| *t <= last_in_day);
            let values = &rows[first..last];
            // A span that ends at the midnight starting this day (a whole day's `high_low`,
            // `sum_check`: [start, end]) is the day before's, not this one's; a gap's last
            // missing read at that midnight, estimated, is this day's.
            if from == e.to_ms && e.from_ms < from && values.is_empty() {
                continue;
            }
            // Cut at the day's end: its last mended value, else the day's end itself.
            let to = if e.to_ms < day_to {
                e.to_ms
            } else {
                values.last().map_or(day_to, |(t, _)| *t).max(from)
            };
            list.push(StoredException {
                run_id,
                day: zone.local(day_from).date(),
                meter_id: e.meter_id.clone(),
                channel: e.channel.clone(),
                rule: e.rule.as_str().to_string(),
                from_ms: from,
                to_ms: to,
                detail: e.detail.clone(),
                estimated: e.estimated && (!values.is_empty() || e.channel.is_empty()),
                mended: values.len() as u32,
                method: values.first().map(|(_, m)| *m).unwrap_or("").to_string(),
            });
        }
    }
    list.sort_by(|a, b| {
        (&a.meter_id, &a.channel, &a.rule, a.from_ms, a.to_ms).cmp(&(
            &b.meter_id,
            &b.channel,
            &b.rule,
            b.from_ms,
            b.to_ms,
        ))
    });
    list
}

/// One row per exception, times in `zone`: what `vee` prints and `query exceptions` too.
pub fn exceptions_table(list: &[StoredException], zone: &meterflow_billing::Zone) -> Table {
    let mut rows: Vec<Vec<String>> = list
        .iter()
        .map(|e| {
            vec![
                e.meter_id.clone(),
                e.channel.clone(),
                e.rule.clone(),
                zone.format(e.from_ms),
                zone.format(e.to_ms),
                e.detail.clone(),
                if e.estimated { "yes" } else { "no" }.to_string(),
                e.mended.to_string(),
                e.method.clone(),
            ]
        })
        .collect();
    rows.sort();
    Table {
        columns: [
            "meter_id",
            "channel",
            "rule",
            "from",
            "to",
            "detail",
            "estimated",
            "values",
            "method",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;
    /// 2024-03-20T00:00:00Z.
    const D0: i64 = 1_710_892_800_000;

    fn exception(rule: Rule, from_ms: i64, to_ms: i64) -> Exception {
        Exception {
            meter_id: "M1".into(),
            channel: "1-0:1.8.0".into(),
            rule,
            from_ms,
            to_ms,
            detail: rule.as_str().into(),
            estimated: rule == Rule::Gap,
        }
    }

    fn row(ts_ms: i64, rule: Rule, method: Method) -> VeeRow {
        VeeRow {
            meter_id: "M1".into(),
            channel: "1-0:1.8.0".into(),
            ts_ms,
            value: 1.0,
            unit: "kWh".into(),
            quality: if rule == Rule::Gap {
                Quality::E
            } else {
                Quality::S
            },
            rule,
            method,
        }
    }

    /// A gap from 22:00 on day 0 to 00:00 on day 2 (hourly) is three pieces, each with its own
    /// day's estimates; a whole day's high_low ([00:00, next 00:00]) is one piece, of its day
    /// alone; a spike's substitute on day 1 is not counted with the gap's estimates.
    #[test]
    fn exceptions_are_stored_cut_into_local_days_with_their_own_rules_values() {
        let zone = meterflow_billing::Zone::parse("UTC", "tz").unwrap();
        let gap: Vec<i64> = (0..=26)
            .map(|h| D0 + 22 * 3_600_000 + h * 3_600_000)
            .collect();
        let mut rows: Vec<VeeRow> = gap
            .iter()
            .map(|t| row(*t, Rule::Gap, Method::Proration))
            .collect();
        rows.push(row(
            D0 + DAY + 3_600_000 + 1,
            Rule::Spike,
            Method::Substitute,
        ));
        let outcome = Outcome {
            exceptions: vec![
                exception(Rule::Gap, gap[0], *gap.last().unwrap()),
                exception(Rule::HighLow, D0 + DAY, D0 + 2 * DAY),
                exception(
                    Rule::Spike,
                    D0 + DAY + 3_600_000 + 1,
                    D0 + DAY + 3_600_000 + 1,
                ),
            ],
            rows,
        };
        let period = Period {
            from_ms: D0,
            to_ms: D0 + 3 * DAY,
        };
        let stored = stored_exceptions(&outcome, 7, period, &zone);
        let brief: Vec<(&str, i64, i64, u32)> = stored
            .iter()
            .map(|e| (e.rule.as_str(), e.from_ms, e.to_ms, e.mended))
            .collect();
        assert_eq!(
            brief,
            vec![
                ("gap", gap[0], D0 + DAY - 3_600_000, 2),
                ("gap", D0 + DAY, D0 + 2 * DAY - 3_600_000, 24),
                ("gap", D0 + 2 * DAY, D0 + 2 * DAY, 1),
                ("high_low", D0 + DAY, D0 + 2 * DAY, 0),
                ("spike", D0 + DAY + 3_600_001, D0 + DAY + 3_600_001, 1),
            ]
        );
        assert_eq!(
            stored.iter().map(|e| e.day.to_string()).collect::<Vec<_>>(),
            [
                "2024-03-20",
                "2024-03-21",
                "2024-03-22",
                "2024-03-21",
                "2024-03-21"
            ]
        );
        assert!(stored.iter().all(|e| e.run_id == 7));
    }
}
