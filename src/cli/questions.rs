//! `meterflow query anomalies` and `meterflow query devices`: the flags, the rows brought by
//! the storage read model (from ClickHouse when a URL is configured, else from the Parquet
//! tree under the data folder), and the answer of `meterflow_storage::questions` on them: one
//! implementation for both sources, so both give the same table.

use anyhow::Context;
use meterflow_billing::Zone;
use meterflow_ingest::Config;
use meterflow_storage::analytics::Table;
use meterflow_storage::questions::{self, AnomalyQuestion, AnomalyRules, FALL_LOOK_BACK_MS};
use meterflow_storage::readings::summary::{self, ChannelSummary, SummaryRequest};
use meterflow_storage::readings::{self, Channels, Neighbours, ReadRequest, Series};
use meterflow_storage::registry::MeterKind;
use meterflow_storage::status::{self, StatusRequest, StatusView};
use meterflow_storage::StorageError;

/// The flags of `query anomalies`.
#[derive(clap::Args)]
pub struct AnomaliesArgs {
    /// Start, inclusive: YYYY-MM-DD (local midnight in --tz), YYYY-MM-DDTHH:MM (local), or
    /// RFC 3339 with an offset.
    #[arg(long)]
    from: String,
    /// End, exclusive (as --from).
    #[arg(long)]
    to: String,
    /// One meter.
    #[arg(long)]
    meter: Option<String>,
    /// A consumption register (1.8.x, 24.2.x, 24.3.0) whose readings in the period all show
    /// one value over at least this many days is flagged (a standstill inside a longer
    /// period that then moves is not).
    #[arg(long, default_value_t = 3)]
    zero_days: u32,
    /// A step above this many times the channel's median step is a spike.
    #[arg(long, default_value_t = 5.0)]
    spike_factor: f64,
    /// No reading (by its own time) for this long before the period's end, or before now when
    /// that is earlier, is stale (e.g. 90m, 2h, 3d, or seconds); a meter the registry gives an
    /// interval is stale after `devices.silent_amber_intervals` of it instead. Only the 30
    /// days before that silence are read: a meter silent for longer is listed by `query
    /// devices --stale-after` (and a registered meter without any reading there, as stale).
    #[arg(long, default_value = "24h")]
    stale_after: String,
    /// IANA time zone of --from/--to and of the times printed [default: billing.timezone].
    #[arg(long)]
    tz: Option<String>,
    /// The instant taken as now (RFC 3339, or local as --from) [default: the clock].
    #[arg(long)]
    now: Option<String>,
}

/// The flags of `query devices`.
#[derive(clap::Args)]
pub struct DevicesArgs {
    /// One meter.
    #[arg(long)]
    meter: Option<String>,
    /// Only meters not heard for this long (e.g. 2h).
    #[arg(long)]
    stale_after: Option<String>,
    /// IANA time zone of the times printed [default: billing.timezone].
    #[arg(long)]
    tz: Option<String>,
    /// The instant taken as now (RFC 3339, or local in --tz) [default: the clock].
    #[arg(long)]
    now: Option<String>,
}

/// `--tz`, else `billing.timezone`.
pub(super) fn zone(config: &Config, tz: &Option<String>) -> anyhow::Result<Zone> {
    Ok(match tz {
        Some(name) => Zone::parse(name, "--tz")?,
        None => config.billing.zone()?,
    })
}

fn now_ms(zone: &Zone, now: &Option<String>) -> anyhow::Result<i64> {
    Ok(match now {
        Some(text) => zone.parse_time(text, "--now")?,
        None => meterflow_proto::now_ms(),
    })
}

/// `--meter`, when given, is a meter id.
pub(super) fn check_meter(meter: &Option<String>) -> anyhow::Result<()> {
    if let Some(meter) = meter {
        anyhow::ensure!(
            meterflow_proto::is_valid_meter_id(meter),
            "--meter {meter:?} is not a meter id"
        );
    }
    Ok(())
}

/// `--from` and `--to` read in `zone`, Unix ms; `--from` before `--to`.
pub(super) fn period(zone: &Zone, from: &str, to: &str) -> anyhow::Result<(i64, i64)> {
    let from_ms = zone.parse_time(from, "--from")?;
    let to_ms = zone.parse_time(to, "--to")?;
    anyhow::ensure!(from_ms < to_ms, "--from must be before --to");
    Ok((from_ms, to_ms))
}

/// Streams the series `request` asks for, in (meter, channel) order, from ClickHouse when a
/// URL is configured, else from the Parquet tree.
pub(super) fn read_series(
    config: &Config,
    request: &ReadRequest,
    each: &mut impl FnMut(Series) -> Result<(), StorageError>,
) -> anyhow::Result<()> {
    if config.clickhouse.enabled() {
        runtime()?.block_on(readings::clickhouse::read(
            &config.clickhouse,
            request,
            each,
        ))?;
    } else {
        readings::parquet::read(&config.data_dir, request, each)?;
    }
    Ok(())
}

/// The runtime a question to ClickHouse runs on.
pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Every anomaly of the period, from ClickHouse (when configured) or the Parquet tree.
pub fn anomalies(config: &Config, args: AnomaliesArgs) -> anyhow::Result<Table> {
    let zone = zone(config, &args.tz)?;
    let (from_ms, to_ms) = period(&zone, &args.from, &args.to)?;
    check_meter(&args.meter)?;
    let rules = AnomalyRules {
        zero_days: args.zero_days,
        spike_factor: args.spike_factor,
        stale_s: super::query::parse_duration_s(&args.stale_after).context("--stale-after")?,
    };
    let now_ms = now_ms(&zone, &args.now)?;
    let time = |ms: i64| zone.format(ms);
    let question = AnomalyQuestion {
        from_ms,
        to_ms,
        rules: &rules,
        now_ms,
        time: &time,
        rollover: &|meter, channel| config.billing.rollover_for(meter, channel),
    };
    let series_req = ReadRequest {
        from_ms,
        to_ms,
        margin_ms: 0,
        meter: args.meter.clone(),
        channels: Channels::RegistersAndIntervals,
        // The reading before the period (a fall across its start is judged too), from a
        // week back at most: a meter new in the period must not make it read all history.
        neighbours: Neighbours::Before,
        before_since_ms: Some(from_ms.saturating_sub(FALL_LOOK_BACK_MS)),
        silent_since_ms: None,
    };
    let status_req = StatusRequest {
        meter: args.meter.clone(),
        period: Some((from_ms, to_ms)),
        view: StatusView::Flagged,
    };
    let summary_req = SummaryRequest {
        meter: args.meter.clone(),
        before_ms: Some(to_ms),
        since_ms: Some(question.stale_since_ms()),
        count: false,
    };
    let mut found = Vec::new();
    let mut each = |series: Series| -> Result<(), StorageError> {
        question.series(&series, &mut found);
        Ok(())
    };
    let (reports, summaries) = if config.clickhouse.enabled() {
        let ch = &config.clickhouse;
        runtime()?.block_on(async {
            readings::clickhouse::read(ch, &series_req, &mut each).await?;
            let reports = status::read_clickhouse(ch, &status_req).await?;
            let summaries = summary::read_clickhouse(ch, &summary_req).await?;
            Ok::<_, StorageError>((reports, summaries))
        })?
    } else {
        readings::parquet::read(&config.data_dir, &series_req, &mut each)?;
        (
            status::read_parquet(&config.data_dir, &status_req)?,
            summary::read_parquet(&config.data_dir, &summary_req)?,
        )
    };
    question.error_flags(&reports, &mut found);
    // With a meter registry: each meter stale after `devices.silent_amber_intervals` of its
    // interval, and a registered meter without readings stale too.
    let registry = super::registry::load(config)?;
    let reference = question.stale_reference_ms();
    let intervals = u64::from(config.devices.silent_amber_intervals);
    let stale_after_s = |meter: &str| {
        let interval = registry.at(meter, reference)?.heard_every_s()?;
        Some(u64::from(interval) * intervals)
    };
    // Gateways have no readings of their own.
    let expected: Vec<&str> = registry
        .records()
        .filter(|r| r.holds_at(reference) && r.kind != MeterKind::Gateway)
        .map(|r| r.meter_id.as_str())
        .filter(|m| args.meter.as_deref().is_none_or(|one| one == *m))
        .collect();
    question.stale_by(&summaries, &stale_after_s, &expected, &mut found);
    Ok(question.table(found))
}

/// Last seen, status and newest values per meter, from ClickHouse (when configured) or the
/// Parquet tree.
pub fn devices(config: &Config, args: DevicesArgs) -> anyhow::Result<Table> {
    let zone = zone(config, &args.tz)?;
    check_meter(&args.meter)?;
    let stale_s = match &args.stale_after {
        Some(text) => super::query::parse_duration_s(text).context("--stale-after")?,
        None => 0,
    };
    let now_ms = now_ms(&zone, &args.now)?;
    let summary_req = SummaryRequest {
        meter: args.meter.clone(),
        before_ms: None,
        since_ms: None,
        count: true,
    };
    let status_req = StatusRequest {
        meter: args.meter.clone(),
        period: None,
        view: StatusView::Latest,
    };
    let (summaries, reports): (Vec<ChannelSummary>, _) = if config.clickhouse.enabled() {
        let ch = &config.clickhouse;
        runtime()?.block_on(async {
            let summaries = summary::read_clickhouse(ch, &summary_req).await?;
            let reports = status::read_clickhouse(ch, &status_req).await?;
            Ok::<_, StorageError>((summaries, reports))
        })?
    } else {
        (
            summary::read_parquet(&config.data_dir, &summary_req)?,
            status::read_parquet(&config.data_dir, &status_req)?,
        )
    };
    Ok(questions::devices(
        &summaries,
        &reports,
        stale_s,
        now_ms,
        &|ms| zone.format(ms),
    ))
}
