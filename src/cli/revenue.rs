//! The revenue-protection questions: `meterflow query events` (what meters and the edge said
//! happened) and `query balance` (each feeder's, transformer's or district's energy against
//! its meters'), on ClickHouse when a URL is configured, else on the Parquet tree; the
//! registry from the same source.

use std::collections::HashMap;

use anyhow::Context;
use meterflow_billing::{Reading, Zone};
use meterflow_decoders::events::EventKind;
use meterflow_ingest::Config;
use meterflow_revenue::balance::{balance as balance_rows, Entry, Side};
use meterflow_revenue::energy::{Days, MeterDays};
use meterflow_storage::analytics::Table;
use meterflow_storage::events::{self as event_store, EventRequest, EventRow};
use meterflow_storage::questions::number;
use meterflow_storage::registry::{MeterKind, MeterRecord, Registry, Role};

use super::as_billed::{bill_as_billed, AsBilled, BasisArgs};
use super::questions::{check_meter, period, read_series, runtime, zone};

/// The flags of `query events`.
#[derive(clap::Args)]
pub struct EventsArgs {
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
    /// Only these kinds (repeat the flag or separate by commas), e.g. cover_open,forged_publish.
    #[arg(long, value_delimiter = ',')]
    kind: Vec<String>,
    /// IANA time zone of --from/--to and of the times printed [default: billing.timezone].
    #[arg(long)]
    tz: Option<String>,
}

/// The events of the configured source that `req` asks for.
pub fn read_events(config: &Config, req: &EventRequest) -> anyhow::Result<Vec<EventRow>> {
    if config.clickhouse.enabled() {
        runtime()?.block_on(event_store::read_clickhouse(&config.clickhouse, req))
    } else {
        event_store::read_parquet(&config.data_dir, req)
    }
    .context("reading the events")
}

/// The events in the period, oldest first.
pub fn events(config: &Config, args: EventsArgs) -> anyhow::Result<Table> {
    let zone = zone(config, &args.tz)?;
    let (from_ms, to_ms) = period(&zone, &args.from, &args.to)?;
    check_meter(&args.meter)?;
    for kind in &args.kind {
        anyhow::ensure!(
            EventKind::parse(kind).is_some(),
            "--kind: {kind:?} is not one of {}",
            EventKind::ALL
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let rows = read_events(
        config,
        &EventRequest {
            period: Some((from_ms, to_ms)),
            meter: args.meter,
            kinds: args.kind,
        },
    )?;
    Ok(Table {
        columns: [
            "ts", "meter_id", "kind", "severity", "source", "code", "detail",
        ]
        .map(String::from)
        .to_vec(),
        rows: rows
            .into_iter()
            .map(|e| {
                vec![
                    zone.format(e.ts_ms),
                    e.meter_id,
                    e.kind,
                    e.severity,
                    e.source,
                    e.code,
                    e.detail,
                ]
            })
            .collect(),
    })
}

/// The level of the grid a balance is drawn at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Level {
    /// Each feeder: its `feeder_head` meter against its customers.
    Feeder,
    /// Each transformer: its `transformer_head` meter against its customers.
    Transformer,
    /// Each district: the sum of its feeder heads against its customers.
    District,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Feeder => "feeder",
            Level::Transformer => "transformer",
            Level::District => "district",
        }
    }

    /// The group `record` is in at this level (`None`: none, or not an electricity meter),
    /// and what it is to the group.
    fn place(self, record: &MeterRecord) -> Option<(&str, Side)> {
        if record.kind != MeterKind::Electricity {
            return None;
        }
        let group = match self {
            Level::Feeder => &record.feeder,
            Level::Transformer => &record.transformer,
            Level::District => &record.district,
        };
        let side = match (self, record.role) {
            (_, Role::Customer) => Side::Customer,
            (Level::Feeder | Level::District, Role::FeederHead) => Side::Head,
            (Level::Transformer, Role::TransformerHead) => Side::Head,
            // A transformer head inside a feeder's balance (or the reverse) would count the
            // same energy twice.
            _ => return None,
        };
        (!group.is_empty()).then_some((group.as_str(), side))
    }
}

/// The flags of `query balance`.
#[derive(clap::Args)]
pub struct BalanceArgs {
    /// feeder, transformer or district.
    #[arg(long, value_enum)]
    level: Level,
    /// Start, inclusive: YYYY-MM-DD (local midnight in --tz), or a time as `query billing`
    /// takes it; the balance is drawn per whole local day.
    #[arg(long)]
    from: String,
    /// End, exclusive.
    #[arg(long)]
    to: String,
    /// IANA time zone of the days [default: billing.timezone].
    #[arg(long)]
    tz: Option<String>,
    #[command(flatten)]
    basis: BasisArgs,
}

/// The columns of `query balance` that hold numbers.
pub const BALANCE_NUMBERS: [&str; 8] = [
    "head_kwh",
    "customers_kwh",
    "loss_kwh",
    "loss_pct",
    "customers",
    "customers_missing",
    "heads",
    "heads_missing",
];

/// The longest balance drawn at once.
const MAX_BALANCE_DAYS: i64 = 400;

/// Each meter's net energy (import minus export, kWh) per day of `days`, by billing's rule
/// (as billed once VEE has judged the period, unless `basis` says otherwise), for the meters
/// `wanted` keeps.
pub fn daily_energy(
    config: &Config,
    zone: &Zone,
    days: &Days,
    (from_ms, to_ms): (i64, i64),
    basis: BasisArgs,
    wanted: impl Fn(&str) -> bool,
) -> anyhow::Result<HashMap<String, Vec<Option<f64>>>> {
    let max_gap_ms = config.billing.max_gap_ms()?;
    let as_billed = if bill_as_billed(config, basis, zone, from_ms, to_ms, None)? {
        Some(AsBilled::load(
            config,
            from_ms.saturating_sub(max_gap_ms),
            to_ms.saturating_add(max_gap_ms).saturating_add(1),
            None,
        )?)
    } else {
        None
    };
    let request = super::billing::register_request(config, from_ms, to_ms, None)?;
    let mut meters: HashMap<String, MeterDays> = HashMap::new();
    read_series(config, &request, &mut |mut series| {
        if !wanted(&series.meter_id) || !series.other_units.is_empty() {
            return Ok(());
        }
        if let Some(vee) = &as_billed {
            vee.apply(&mut series);
        }
        let points: Vec<Reading> = series
            .points
            .iter()
            .map(|&(ts_ms, value)| Reading { ts_ms, value })
            .collect();
        let rollover = config
            .billing
            .rollover_for(&series.meter_id, &series.channel);
        meters
            .entry(series.meter_id.clone())
            .or_insert_with(|| MeterDays::new(days))
            .add_register(days, &series.channel, &series.unit, &points, rollover);
        Ok(())
    })?;
    Ok(meters
        .into_iter()
        .map(|(meter, d)| (meter, d.net_kwh()))
        .collect())
}

/// Per group of `--level` and local day: the head meters' energy, the customers', the loss,
/// and how many meters were not known that day.
pub fn balance(config: &Config, args: BalanceArgs) -> anyhow::Result<Table> {
    let zone = zone(config, &args.tz)?;
    let (from_ms, to_ms) = period(&zone, &args.from, &args.to)?;
    anyhow::ensure!(
        to_ms - from_ms <= MAX_BALANCE_DAYS * 86_400_000,
        "--to: a balance spans at most {MAX_BALANCE_DAYS} days"
    );
    let registry = super::registry::load(config)?;
    anyhow::ensure!(
        !registry.is_empty(),
        "a balance needs the meter registry (which meters are heads and customers of which feeder, transformer or district): `meterflow registry import meters.csv`"
    );
    let max_gap_ms = config.billing.max_gap_ms()?;
    let days = Days::new(zone, from_ms, to_ms, max_gap_ms);
    let Some(end) = days.end_ms() else {
        anyhow::bail!("--to: the period holds no local day");
    };
    let placed = |meter: &str| {
        registry
            .records_of(meter)
            .any(|r| args.level.place(r).is_some())
    };
    let energy = daily_energy(
        config,
        &zone,
        &days,
        (days.start_ms(0), end),
        args.basis,
        placed,
    )?;
    let entries = balance_entries(&registry, args.level, &days, &energy);
    let rows = balance_rows(entries);
    let level = args.level.as_str();
    let optional = |v: Option<f64>| v.map(number).unwrap_or_default();
    Ok(Table {
        columns: [
            "level",
            "group",
            "day",
            "head_kwh",
            "customers_kwh",
            "loss_kwh",
            "loss_pct",
            "complete",
            "heads",
            "heads_missing",
            "customers",
            "customers_missing",
        ]
        .map(String::from)
        .to_vec(),
        rows: rows
            .iter()
            .map(|r| {
                vec![
                    level.to_string(),
                    r.group.clone(),
                    r.day.to_string(),
                    optional(r.head_kwh),
                    number(r.customers_kwh),
                    optional(r.loss_kwh),
                    optional(r.loss_pct),
                    if r.is_complete() { "yes" } else { "no" }.to_string(),
                    r.heads.to_string(),
                    r.heads_missing.to_string(),
                    r.customers.to_string(),
                    r.customers_missing.to_string(),
                ]
            })
            .collect(),
    })
}

/// Every registered meter's place on each day (by the record that holds at the day's start)
/// with its energy that day (`None`: not known, or no readings at all).
fn balance_entries<'a>(
    registry: &'a Registry,
    level: Level,
    days: &Days,
    energy: &HashMap<String, Vec<Option<f64>>>,
) -> Vec<Entry<'a>> {
    let mut entries = Vec::new();
    let meters: std::collections::BTreeSet<&str> =
        registry.records().map(|r| r.meter_id.as_str()).collect();
    for meter in meters {
        let kwh = energy.get(meter);
        for (i, day) in days.dates().enumerate() {
            let Some(record) = registry.at(meter, days.start_ms(i)) else {
                continue;
            };
            let Some((group, side)) = level.place(record) else {
                continue;
            };
            entries.push(Entry {
                group,
                day,
                side,
                kwh: kwh.and_then(|k| k[i]),
            });
        }
    }
    entries
}
