//! The revenue-protection questions: `meterflow query events` (what meters and the edge said
//! happened) and `query balance` (each feeder's, transformer's or district's energy against
//! its meters') and `query suspects` (meters ranked by signals of theft), on ClickHouse when
//! a URL is configured, else on the Parquet tree; the registry from the same source.

use std::collections::HashMap;

use anyhow::Context;
use meterflow_billing::{Reading, Zone};
use meterflow_decoders::events::EventKind;
use meterflow_ingest::Config;
use meterflow_revenue::balance::{balance as balance_rows, Entry, Side};
use meterflow_revenue::energy::{Days, MeterDays, Shape};
use meterflow_revenue::suspects::{rank, MeterFacts, WEIGHTS};
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
pub const BALANCE_NUMBERS: [&str; 9] = [
    "head_kwh",
    "customers_kwh",
    "loss_kwh",
    "loss_pct",
    "customers",
    "customers_missing",
    "heads",
    "heads_missing",
    "customers_unmetered",
];

/// The longest balance drawn at once.
const MAX_BALANCE_DAYS: i64 = 400;

/// What the readings say of one meter over the days asked.
pub struct MeterEnergy {
    /// Net energy (import minus export, kWh) per day (`None`: not known that day).
    pub daily: Vec<Option<f64>>,
    /// Import energy per day, kWh (what the suspects' drops are measured on).
    pub import: Vec<Option<f64>>,
    /// Export energy per day, kWh.
    pub export: Vec<Option<f64>>,
    /// Its import by local hour before `split_ms` and from it on, and what ran back.
    pub shape: Shape,
}

/// Each meter's energy per day of `days` by billing's rule (as billed once VEE has judged
/// the period, unless `basis` says otherwise), for the meters `wanted` keeps, with the shape
/// of its day before and from `split_ms`.
pub fn meter_energy(
    config: &Config,
    zone: &Zone,
    days: &Days,
    basis: BasisArgs,
    split_ms: i64,
    wanted: impl Fn(&str) -> bool,
) -> anyhow::Result<HashMap<String, MeterEnergy>> {
    let (from_ms, to_ms) = (days.start_ms(0), days.end_ms().unwrap_or(days.start_ms(0)));
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
    let mut meters: HashMap<String, (MeterDays, Shape)> = HashMap::new();
    let mut mixed: Vec<String> = Vec::new();
    read_series(config, &request, &mut |mut series| {
        if !wanted(&series.meter_id) {
            return Ok(());
        }
        if !series.other_units.is_empty() {
            // Readings in more than one unit: the register is not known (as billing refuses
            // it), so neither is the meter's energy.
            mixed.push(format!("{} {}", series.meter_id, series.channel));
            meters
                .entry(series.meter_id.clone())
                .or_insert_with(|| (MeterDays::new(days), Shape::default()))
                .0
                .spoil(&series.channel);
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
        let (days_of, shape) = meters
            .entry(series.meter_id.clone())
            .or_insert_with(|| (MeterDays::new(days), Shape::default()));
        days_of.add_register(days, &series.channel, &series.unit, &points, rollover);
        let (channel, unit) = (&series.channel, &series.unit);
        shape.add_register(zone, split_ms, to_ms, channel, unit, &points, rollover);
        Ok(())
    })?;
    if let Some(first) = mixed.first() {
        eprintln!(
            "{} register(s) have readings in more than one unit and are not known (e.g. {first}): their meters count as missing",
            mixed.len()
        );
    }
    Ok(meters
        .into_iter()
        .map(|(meter, (d, shape))| {
            let energy = MeterEnergy {
                daily: d.net_kwh(),
                import: d.import_kwh(),
                export: d.export_kwh(),
                shape,
            };
            (meter, energy)
        })
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
    let energy = meter_energy(config, &zone, &days, args.basis, end, placed)?;
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
            "customers_unmetered",
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
                    r.customers_unmetered.to_string(),
                ]
            })
            .collect(),
    })
}

/// Every registered meter's place on each day with its energy that day (`None`: not known,
/// no readings at all, or a record of it that begins or ends inside the day: each group it
/// was in that day gets it as not known). At district
/// level a customer of a feeder without a head meter that day is `Side::Unmetered`: no head
/// measured its energy.
fn balance_entries<'a>(
    registry: &'a Registry,
    level: Level,
    days: &Days,
    energy: &HashMap<String, MeterEnergy>,
) -> Vec<Entry<'a>> {
    let mut entries = Vec::new();
    let meters: std::collections::BTreeSet<&str> =
        registry.records().map(|r| r.meter_id.as_str()).collect();
    // Per day, the feeders with a head meter.
    let headed: Vec<std::collections::HashSet<&str>> = (0..days.len())
        .map(|i| {
            registry
                .records()
                .filter(|r| r.role == Role::FeederHead && r.holds_at(days.start_ms(i)))
                .map(|r| r.feeder.as_str())
                .collect()
        })
        .collect();
    for meter in meters {
        let kwh = energy.get(meter);
        for (i, day) in days.dates().enumerate() {
            let (start, end) = (days.start_ms(i), days.end_of(i));
            // Its records over the day: one over all of it, or several (installed, moved or
            // exchanged during the day), and then which group had its energy when is not
            // known: each group gets it as not known.
            let over: Vec<&MeterRecord> = registry
                .records_of(meter)
                .filter(|r| {
                    r.valid_from_ms.is_none_or(|f| f < end)
                        && r.valid_to_ms.is_none_or(|t| t > start)
                })
                .collect();
            let whole_day = over.len() == 1 && over[0].holds_at(start) && over[0].holds_at(end - 1);
            for record in over {
                let Some((group, mut side)) = level.place(record) else {
                    continue;
                };
                if level == Level::District
                    && side == Side::Customer
                    && !headed[i].contains(record.feeder.as_str())
                {
                    side = Side::Unmetered;
                }
                entries.push(Entry {
                    group,
                    day,
                    side,
                    kwh: if whole_day {
                        kwh.and_then(|k| k.daily[i])
                    } else {
                        None
                    },
                });
            }
        }
    }
    entries
}

/// The flags of `query suspects`.
#[derive(clap::Args)]
pub struct SuspectsArgs {
    /// Start of the period judged, inclusive: YYYY-MM-DD (local midnight in --tz).
    #[arg(long)]
    from: String,
    /// End, exclusive.
    #[arg(long)]
    to: String,
    /// IANA time zone of the days [default: billing.timezone].
    #[arg(long)]
    tz: Option<String>,
    /// Days before --from each meter is compared with (its own, its peers', its feeder's
    /// loss).
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u32).range(14..=366))]
    history_days: u32,
    /// The first N of the ranking only.
    #[arg(long)]
    limit: Option<usize>,
    #[command(flatten)]
    basis: BasisArgs,
}

/// The columns of `query suspects` that hold numbers: the rank, the score and each signal.
pub const SUSPECT_NUMBERS: [&str; 2 + WEIGHTS.len()] = {
    let mut names = ["rank"; 2 + WEIGHTS.len()];
    names[1] = "score";
    let mut i = 0;
    while i < WEIGHTS.len() {
        names[2 + i] = WEIGHTS[i].0;
        i += 1;
    }
    names
};

/// The longest period judged at once.
const MAX_SUSPECT_DAYS: i64 = 92;

/// Whether an event kind is a sign on the data path (not at the meter).
fn on_data_path(kind: EventKind) -> bool {
    matches!(
        kind,
        EventKind::ForgedPublish | EventKind::ReplayRejected | EventKind::AuthFailed
    )
}

/// Every customer meter ranked by its score of theft signals, with each signal.
pub fn suspects(config: &Config, args: SuspectsArgs) -> anyhow::Result<Table> {
    let zone = zone(config, &args.tz)?;
    let (from_ms, to_ms) = period(&zone, &args.from, &args.to)?;
    anyhow::ensure!(
        to_ms - from_ms <= MAX_SUSPECT_DAYS * 86_400_000,
        "--to: a period judged spans at most {MAX_SUSPECT_DAYS} days"
    );
    let first_day = zone.local(from_ms).date() - chrono::Days::new(u64::from(args.history_days));
    let max_gap_ms = config.billing.max_gap_ms()?;
    let days = Days::new(zone, zone.midnight(first_day), to_ms, max_gap_ms);
    let before = (0..days.len())
        .take_while(|&i| days.start_ms(i) < from_ms)
        .count();
    anyhow::ensure!(before < days.len(), "--to: the period holds no local day");
    let registry = super::registry::load(config)?;
    let record = |meter: &str| registry.at(meter, from_ms);
    let customer = |meter: &str| match record(meter) {
        Some(r) => r.role == Role::Customer && r.kind == MeterKind::Electricity,
        // Without a registry (or a record) every meter is judged.
        None => registry.is_empty() || registry.records_of(meter).next().is_none(),
    };
    let energy = meter_energy(config, &zone, &days, args.basis, from_ms, |m| {
        customer(m) || registry.records_of(m).any(|r| r.role == Role::FeederHead)
    })?;
    let window = (days.start_ms(0), days.end_ms().unwrap_or(to_ms));
    let events = read_events(
        config,
        &EventRequest {
            period: Some(window),
            ..Default::default()
        },
    )?;
    let feeder_rise = feeder_loss_rise(&registry, &days, before, &energy);
    let day_of = |ts_ms: i64| (0..days.len()).rev().find(|&i| days.start_ms(i) <= ts_ms);
    let mut events_of: HashMap<&str, Vec<&EventRow>> = HashMap::new();
    for ev in &events {
        events_of.entry(ev.meter_id.as_str()).or_default().push(ev);
    }
    // A forged publish is counted once per identity that sent it, and not when that
    // identity is a gateway of the registry (one whose publish_for misses a meter).
    let gateway = |identity: &str| {
        registry
            .records_of(identity)
            .any(|r| r.kind == MeterKind::Gateway)
    };
    let mut facts: Vec<MeterFacts> = Vec::new();
    let mut feeders: HashMap<String, String> = HashMap::new();
    for (meter, e) in &energy {
        if !customer(meter) {
            continue;
        }
        let r = record(meter);
        let (hours_before, hours_during) = e.shape.hours();
        let import_only = r.is_some_and(|r| r.import_only);
        let exported: f64 = e.export[before..].iter().flatten().sum();
        let mine = events_of.get(meter.as_str()).map_or(&[][..], Vec::as_slice);
        let (mut tamper_days, mut data_path_events) = (Vec::new(), 0);
        let mut forgers = std::collections::BTreeSet::new();
        for ev in mine {
            let Some(kind) = EventKind::parse(&ev.kind) else {
                continue;
            };
            if kind == EventKind::ForgedPublish {
                if ev.ts_ms >= from_ms && !gateway(&ev.code) {
                    forgers.insert(ev.code.as_str());
                }
            } else if on_data_path(kind) {
                data_path_events += usize::from(ev.ts_ms >= from_ms);
            } else if kind.is_tamper() {
                tamper_days.extend(day_of(ev.ts_ms));
            }
        }
        data_path_events += forgers.len();
        let feeder = r.map(|r| r.feeder.clone()).unwrap_or_default();
        facts.push(MeterFacts {
            meter_id: meter.clone(),
            peers: r
                .map(|r| format!("{}/{}", r.feeder, r.tariff))
                .unwrap_or_default(),
            // Import, not net: a prosumer's export is no drop.
            daily: e.import.clone(),
            hours_before,
            hours_during,
            reverse_kwh: if import_only {
                exported + e.shape.ran_back_kwh
            } else {
                0.0
            },
            tamper_days,
            data_path_events,
            feeder_loss_rise: feeder_rise.get(&feeder).copied(),
        });
        feeders.insert(meter.clone(), feeder);
    }
    let ranked = rank(&facts, before);
    let columns: Vec<String> = ["rank", "meter_id", "score", "reasons"]
        .into_iter()
        .chain(WEIGHTS.iter().map(|(name, _)| *name))
        .chain(["feeder"])
        .map(String::from)
        .collect();
    let rows = ranked
        .iter()
        .take(args.limit.unwrap_or(usize::MAX))
        .enumerate()
        .map(|(i, s)| {
            let mut row = vec![
                (i + 1).to_string(),
                s.meter_id.clone(),
                format!("{:.3}", s.score),
                s.signals.reasons().join(" "),
            ];
            row.extend(s.signals.values().iter().map(|v| format!("{v:.3}")));
            row.push(feeders.get(&s.meter_id).cloned().unwrap_or_default());
            row
        })
        .collect();
    Ok(Table { columns, rows })
}

/// Per feeder, how far its loss rose during the period against before, percentage points of
/// the head's energy, over complete days (a feeder without complete days on either side has
/// none).
fn feeder_loss_rise(
    registry: &Registry,
    days: &Days,
    before: usize,
    energy: &HashMap<String, MeterEnergy>,
) -> HashMap<String, f64> {
    let rows = balance_rows(balance_entries(registry, Level::Feeder, days, energy));
    let mut sides: HashMap<String, [(f64, f64); 2]> = HashMap::new();
    let first_during = (before < days.len())
        .then(|| days.dates().nth(before))
        .flatten();
    for row in rows.iter().filter(|r| r.is_complete()) {
        let (Some(head), Some(loss)) = (row.head_kwh, row.loss_kwh) else {
            continue;
        };
        let side = usize::from(first_during.is_some_and(|d| row.day >= d));
        let sums = &mut sides.entry(row.group.clone()).or_default()[side];
        sums.0 += loss;
        sums.1 += head;
    }
    sides
        .into_iter()
        .filter(|(_, [b, d])| b.1 > 0.0 && d.1 > 0.0)
        .map(|(feeder, [b, d])| (feeder, 100.0 * (d.0 / d.1 - b.0 / b.1)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    /// A meter installed at 14:00, and one that moves feeder at 14:00: that day each group
    /// they were in has them as not known; the days around are whole.
    #[test]
    fn a_record_that_begins_or_ends_inside_a_day_makes_that_day_not_known_in_each_group() {
        let zone = Zone::parse("UTC", "tz").unwrap();
        let registry = Registry::from_csv(
            b"meter_id,kind,feeder,district,role,valid_from,valid_to\n\
              NEW,electricity,F1,D,customer,2025-06-02T14:00:00Z,\n\
              MOVE,electricity,F1,D,customer,,2025-06-02T14:00:00Z\n\
              MOVE,electricity,F2,D,customer,2025-06-02T14:00:00Z,\n",
            &zone,
        )
        .unwrap();
        let from = zone.midnight(chrono::NaiveDate::from_ymd_opt(2025, 6, 1).unwrap());
        let days = Days::new(zone, from, from + 3 * DAY, 3_600_000);
        let known = |kwh: f64| MeterEnergy {
            daily: vec![Some(kwh); 3],
            import: vec![Some(kwh); 3],
            export: vec![Some(0.0); 3],
            shape: Shape::default(),
        };
        let energy: HashMap<String, MeterEnergy> = [
            ("NEW".to_string(), known(5.0)),
            ("MOVE".to_string(), known(7.0)),
        ]
        .into_iter()
        .collect();
        let got: Vec<(String, String, Option<f64>)> =
            balance_entries(&registry, Level::Feeder, &days, &energy)
                .into_iter()
                .map(|e| (e.day.to_string(), e.group.to_string(), e.kwh))
                .collect();
        let want = |d: &str, g: &str, kwh: Option<f64>| (d.to_string(), g.to_string(), kwh);
        assert_eq!(
            got,
            [
                want("2025-06-01", "F1", Some(7.0)),
                want("2025-06-02", "F1", None),
                want("2025-06-02", "F2", None),
                want("2025-06-03", "F2", Some(7.0)),
                want("2025-06-02", "F1", None),
                want("2025-06-03", "F1", Some(5.0)),
            ]
        );
    }
}
