//! `meterflow vee`: the validation rules run over a period of local days, on ClickHouse when
//! a URL is configured, else on the Parquet tree; each meter's channels read with the history
//! the statistics need and handed to `meterflow_vee::run_meter`. Prints the exceptions found,
//! with what was estimated or substituted for them.

use std::collections::BTreeMap;

use anyhow::Context;
use meterflow_ingest::Config;
use meterflow_storage::analytics::Table;
use meterflow_storage::readings::{
    self, is_cumulative_register, is_interval_channel, Channels, Neighbours, ReadRequest, Series,
};
use meterflow_vee::{run_meter, Channel, ChannelKind, Meter, Outcome, Period, Point, Quality};

use super::questions::{check_meter, period, runtime, zone};

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
    check_meter(&args.meter)?;
    let params = config.vee.params().context("[vee]")?;
    // The history the statistics and the like-day profile are taken from, and a day after
    // the period (the read after a gap at its end).
    let history_days = i64::from(params.look_back_days.max(params.like_day_weeks * 7)) + 1;
    let request = ReadRequest {
        from_ms: from_ms - history_days * DAY_MS,
        to_ms,
        margin_ms: DAY_MS,
        meter: args.meter.clone(),
        channels: Channels::All,
        neighbours: Neighbours::Before,
        before_since_ms: Some(from_ms - (history_days + 31) * DAY_MS),
        silent_since_ms: None,
    };
    let vee_period = Period { from_ms, to_ms };
    let mut outcome = Outcome::default();
    // Series come in (meter, channel) order: a meter's channels together.
    let mut current: Option<Meter> = None;
    let finish = |meter: Meter, outcome: &mut Outcome| {
        let o = run_meter(&meter, vee_period, &params, &zone);
        outcome.exceptions.extend(o.exceptions);
        outcome.rows.extend(o.rows);
    };
    let mut each = |series: Series| -> Result<(), meterflow_storage::StorageError> {
        let channel = channel_of(config, &series);
        match current.as_mut() {
            Some(m) if m.meter_id == series.meter_id => m.channels.push(channel),
            _ => {
                if let Some(done) = current.replace(Meter {
                    meter_id: series.meter_id.clone(),
                    channels: vec![channel],
                    estimated_days_before: 0,
                }) {
                    finish(done, &mut outcome);
                }
            }
        }
        Ok(())
    };
    if config.clickhouse.enabled() {
        runtime()?.block_on(readings::clickhouse::read(
            &config.clickhouse,
            &request,
            &mut each,
        ))?;
    } else {
        readings::parquet::read(&config.data_dir, &request, &mut each)?;
    }
    if let Some(done) = current.take() {
        finish(done, &mut outcome);
    }
    Ok(table(&outcome, &zone))
}

/// A series as VEE reads it: its kind from its OBIS code, its register's rollover.
fn channel_of(config: &Config, s: &Series) -> Channel {
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
        expected_interval_ms: None,
    }
}

/// A value of a new version: its time, quality and method.
type Mended<'o> = (i64, Quality, &'o str);

/// One row per exception, with how many values of its span were estimated or substituted.
fn table(outcome: &Outcome, zone: &meterflow_billing::Zone) -> Table {
    let mut mended: BTreeMap<(&str, &str), Vec<Mended<'_>>> = BTreeMap::new();
    for r in &outcome.rows {
        mended
            .entry((r.meter_id.as_str(), r.channel.as_str()))
            .or_default()
            .push((r.ts_ms, r.quality, r.method.as_str()));
    }
    let mut rows: Vec<Vec<String>> = outcome
        .exceptions
        .iter()
        .map(|e| {
            let values: Vec<&Mended<'_>> = mended
                .get(&(e.meter_id.as_str(), e.channel.as_str()))
                .map(|v| {
                    v.iter()
                        .filter(|(t, ..)| (e.from_ms..=e.to_ms).contains(t))
                        .collect()
                })
                .unwrap_or_default();
            let method = values.first().map(|(_, _, m)| *m).unwrap_or("");
            vec![
                e.meter_id.clone(),
                e.channel.clone(),
                e.rule.as_str().to_string(),
                zone.format(e.from_ms),
                zone.format(e.to_ms),
                e.detail.clone(),
                if e.estimated { "yes" } else { "no" }.to_string(),
                values.len().to_string(),
                method.to_string(),
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
