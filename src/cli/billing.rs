//! `meterflow query billing`: the question put together (the zone, the period, the tariff,
//! the rules of `[billing]`), each register's readings brought by the storage read model
//! (from ClickHouse when a URL is configured, else from the Parquet tree), billed by
//! `meterflow_billing`, and the rows laid out as a table for printing.

use std::path::PathBuf;

use anyhow::Context;
use meterflow_billing::{Bill, BillRow, Query, ReadKind, Reading, Tariff, Zone};
use meterflow_ingest::Config;
use meterflow_storage::analytics::Table;
use meterflow_storage::questions::number;
use meterflow_storage::readings::{Channels, Neighbours, ReadRequest, Series};

use super::as_billed::{bill_as_billed, AsBilled, BasisArgs};
use super::questions::{check_meter, period, read_series, zone};

/// The flags of `query billing`.
#[derive(clap::Args)]
pub struct BillingArgs {
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
    /// IANA time zone of the days and tariff hours, e.g. Europe/Berlin [default:
    /// billing.timezone, UTC].
    #[arg(long)]
    tz: Option<String>,
    /// A time-of-use tariff file (TOML): one row per period instead of `total`.
    #[arg(long)]
    tariff: Option<PathBuf>,
    /// As billed (VEE's estimates and substitutes overlaid) once VEE has judged the period,
    /// else as read; these choose.
    #[command(flatten)]
    basis: BasisArgs,
}

/// The longest span billed at once: a year and a bit. Max demand keeps a number per quarter
/// hour of the span for the register being billed.
const MAX_SPAN_DAYS: i64 = 400;

/// A bill, and the registers it could not bill.
pub struct Billed {
    pub table: Table,
    /// `METER CHANNEL (unit, other units)` of each register whose readings in the period came
    /// in more than one unit: a sum of their steps would mix scales (Wh and kWh are a
    /// thousand apart), so it has no row. VEE's `unit_change` (issue 23) is where such a
    /// register is mended.
    pub refused: Vec<String>,
}

/// Bills `args` on the readings of ClickHouse (when configured) or the Parquet tree.
pub fn run(config: &Config, args: BillingArgs) -> anyhow::Result<Billed> {
    let zone = zone(config, &args.tz)?;
    let (from_ms, to_ms) = period(&zone, &args.from, &args.to)?;
    anyhow::ensure!(
        to_ms - from_ms <= MAX_SPAN_DAYS * 86_400_000,
        "--to: a bill spans at most {MAX_SPAN_DAYS} days (bill a longer time as its months or years)"
    );
    check_meter(&args.meter)?;
    let tariff = match &args.tariff {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the tariff {}", path.display()))?;
            Some(Tariff::from_toml(&text, &path.display().to_string())?)
        }
        None => None,
    };
    let max_gap_ms = config.billing.max_gap_ms()?;
    let bill = Bill::new(Query {
        from_ms,
        to_ms,
        zone,
        tariff,
        max_gap_ms,
    });
    let request = register_request(config, from_ms, to_ms, args.meter.clone())?;
    let as_billed = if bill_as_billed(
        config,
        args.basis,
        &zone,
        from_ms,
        to_ms,
        args.meter.as_deref(),
    )? {
        Some(AsBilled::load(
            config,
            from_ms.saturating_sub(max_gap_ms),
            to_ms.saturating_add(max_gap_ms).saturating_add(1),
            args.meter.as_deref(),
        )?)
    } else {
        None
    };
    let mut rows: Vec<Row> = Vec::new();
    // Registers with no reading in the period: billed as carried, and counted for the note.
    let mut silent: Vec<(String, String)> = Vec::new();
    let mut refused: Vec<String> = Vec::new();
    let mut each = |mut series: Series| -> Result<(), meterflow_storage::StorageError> {
        let mended = as_billed
            .as_ref()
            .map_or_else(Vec::new, |vee| vee.apply(&mut series));
        let estimated = mended
            .iter()
            .filter(|ts| (from_ms..to_ms).contains(*ts))
            .count();
        if !series.other_units.is_empty() {
            tracing::error!(
                meter = %series.meter_id,
                channel = %series.channel,
                unit = %series.unit,
                other_units = ?series.other_units,
                "readings in more than one unit: not billed"
            );
            refused.push(format!(
                "{} {} ({}, {})",
                series.meter_id,
                series.channel,
                series.unit,
                series.other_units.join(", ")
            ));
            return Ok(());
        }
        // The read model leaves out values that are not numbers (NaN, infinite).
        let points: Vec<Reading> = series
            .points
            .iter()
            .map(|&(ts_ms, value)| Reading { ts_ms, value })
            .collect();
        if !points.iter().any(|p| from_ms <= p.ts_ms && p.ts_ms < to_ms) {
            silent.push((series.meter_id.clone(), series.channel.clone()));
        }
        let rollover = config
            .billing
            .rollover_for(&series.meter_id, &series.channel);
        rows.extend(
            bill.register(
                &series.meter_id,
                &series.channel,
                &series.unit,
                &points,
                rollover,
            )
            .into_iter()
            .map(|bill| Row {
                start_mended: mended.binary_search(&bill.from_ms).is_ok(),
                end_mended: mended.binary_search(&bill.to_ms).is_ok(),
                bill,
                estimated,
            }),
        );
        Ok(())
    };
    read_series(config, &request, &mut each)?;
    if let Some((meter, channel)) = silent.first() {
        eprintln!(
            "{} register(s) have no reading in the period (e.g. {meter} {channel}): their values \
             at its edges come from readings outside it (start_read, end_read)",
            silent.len()
        );
    }
    Ok(Billed {
        table: table(&rows, zone, as_billed.is_some()),
        refused,
    })
}

/// What a bill of `[from_ms, to_ms)` reads: every cumulative register (of `meter`, or all)
/// with billing's margin of `billing.max_interpolation_gap` around the period.
pub fn register_request(
    config: &Config,
    from_ms: i64,
    to_ms: i64,
    meter: Option<String>,
) -> anyhow::Result<ReadRequest> {
    let max_gap_ms = config.billing.max_gap_ms()?;
    let silent_look_back_ms = config.billing.silent_look_back_ms()?;
    let max_silence_ms = config.billing.max_silence_ms()?;
    Ok(ReadRequest {
        from_ms,
        to_ms,
        margin_ms: max_gap_ms,
        meter,
        channels: Channels::CumulativeRegisters,
        // The reading before the period, up to billing.max_silence back: a meter silent for months
        // that reports again is billed for those months. Not the reading after: a series
        // with none in [to, to + margin] has its first after more than the interpolation
        // gap from its last before `to`, so R(to) is that one carried, whatever comes after.
        neighbours: Neighbours::Before,
        before_since_ms: max_silence_ms.map(|ms| from_ms.saturating_sub(ms)),
        silent_since_ms: (silent_look_back_ms > 0)
            .then(|| from_ms.saturating_sub(silent_look_back_ms)),
    })
}

/// The columns of a bill, in order.
pub const COLUMNS: [&str; 17] = [
    "meter_id",
    "channel",
    "register",
    "unit",
    "period",
    "from",
    "to",
    "start_value",
    "start_read",
    "end_value",
    "end_read",
    "consumption",
    "max_demand_kw",
    "resets",
    "readings",
    "estimated",
    "basis",
];

/// A row of the bill as billed.
struct Row {
    bill: BillRow,
    /// Of its register's readings in the period (of `readings`), how many are VEE's
    /// estimates or substitutes.
    estimated: usize,
    /// Whether R at the period's start (end) is such a value, at that instant: its read
    /// kind is then `estimated`, not `actual`.
    start_mended: bool,
    end_mended: bool,
}

/// How R at an edge was found: `estimated` where billing's `actual` read is VEE's.
fn read_kind(kind: ReadKind, mended: bool) -> &'static str {
    match kind {
        ReadKind::Actual if mended => "estimated",
        kind => kind.as_str(),
    }
}

/// The rows as a table, times in `zone` with their offset; `as billed` or `as read` in each
/// row (a script exporting invoices can tell).
fn table(rows: &[Row], zone: Zone, as_billed: bool) -> Table {
    let basis = if as_billed { "as billed" } else { "as read" };
    Table {
        columns: COLUMNS.iter().map(|c| c.to_string()).collect(),
        rows: rows
            .iter()
            .map(|row| {
                let r = &row.bill;
                vec![
                    r.meter_id.clone(),
                    r.channel.clone(),
                    r.register.clone(),
                    r.unit.clone(),
                    r.period.clone(),
                    zone.format(r.from_ms),
                    zone.format(r.to_ms),
                    number(r.start.value),
                    read_kind(r.start.kind, row.start_mended).to_string(),
                    number(r.end.value),
                    read_kind(r.end.kind, row.end_mended).to_string(),
                    number(r.consumption),
                    r.max_demand_kw.map(number).unwrap_or_default(),
                    r.resets.to_string(),
                    r.readings.to_string(),
                    row.estimated.to_string(),
                    basis.to_string(),
                ]
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_rounded_without_noise() {
        assert_eq!(number(56.5), "56.5");
        assert_eq!(number(0.1 + 0.2), "0.3");
        assert_eq!(number(-0.0000001), "0");
        assert_eq!(number(1234567.1234564), "1234567.123456");
        assert_eq!(number(12.0), "12");
    }
}
