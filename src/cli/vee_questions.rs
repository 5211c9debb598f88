//! `meterflow query exceptions` (what VEE found, as its latest runs left it) and `meterflow
//! query readings` (a meter's readings with their quality, as billed or as read), on
//! ClickHouse when a URL is configured, else on the Parquet tree.

use anyhow::Context;
use meterflow_ingest::Config;
use meterflow_storage::analytics::Table;
use meterflow_storage::readings::{Channels, Neighbours, ReadRequest, Series};
use meterflow_storage::vee as vee_store;

use super::as_billed::{runs, AsBilled};
use super::questions::{check_meter, period, read_series, runtime, zone};

/// The flags of `query exceptions`.
#[derive(clap::Args)]
pub struct ExceptionsArgs {
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
    /// One rule (gap, spike, reverse, reset, zero, stuck, sum_check, clock, conflict,
    /// unit_change, high_low, prolonged_estimation).
    #[arg(long)]
    rule: Option<String>,
    /// IANA time zone of --from/--to and of the times printed [default: billing.timezone].
    #[arg(long)]
    tz: Option<String>,
}

/// The exceptions whose span meets the period, of the latest run that judged each meter
/// there.
pub fn exceptions(config: &Config, args: ExceptionsArgs) -> anyhow::Result<Table> {
    let zone = zone(config, &args.tz)?;
    let (from_ms, to_ms) = period(&zone, &args.from, &args.to)?;
    check_meter(&args.meter)?;
    if let Some(rule) = &args.rule {
        anyhow::ensure!(
            meterflow_vee::Rule::parse(rule).is_some(),
            "--rule: {rule:?} is not one of {}",
            meterflow_vee::Rule::ALL.map(|r| r.as_str()).join(", ")
        );
    }
    let runs = runs(config)?;
    let found = if config.clickhouse.enabled() {
        runtime()?.block_on(vee_store::runs::exceptions_clickhouse(
            &config.clickhouse,
            from_ms,
            to_ms,
            args.meter.as_deref(),
        ))
    } else {
        vee_store::runs::exceptions(&config.data_dir, from_ms, to_ms, args.meter.as_deref())
    }
    .context("reading VEE's exceptions")?;
    let mut standing = vee_store::runs::standing(&runs, found);
    if let Some(rule) = &args.rule {
        standing.retain(|e| &e.rule == rule);
    }
    if runs.is_empty() {
        eprintln!("VEE has not run yet: `meterflow vee --from --to` judges a period");
    } else if let Some(at) =
        vee_store::runs::first_unjudged(&runs, args.meter.as_deref(), from_ms, to_ms)
    {
        eprintln!(
            "VEE has not judged {} from {}: exceptions there are not known",
            args.meter.as_deref().unwrap_or("every meter"),
            zone.format(at)
        );
    }
    Ok(super::vee::exceptions_table(&standing, &zone))
}

/// The flags of `query readings`.
#[derive(clap::Args)]
pub struct ReadingsArgs {
    /// The meter.
    #[arg(long)]
    meter: String,
    /// Start, inclusive (as `query exceptions` takes it).
    #[arg(long)]
    from: String,
    /// End, exclusive.
    #[arg(long)]
    to: String,
    /// One channel (OBIS, e.g. 1-0:1.8.0) [default: every channel].
    #[arg(long)]
    channel: Option<String>,
    /// IANA time zone of --from/--to and of the times printed [default: billing.timezone].
    #[arg(long)]
    tz: Option<String>,
    /// The actual reads only [default: as billed, VEE's estimates and substitutes in place].
    #[arg(long, conflicts_with = "as_billed")]
    as_read: bool,
    /// VEE's estimates and substitutes in place of missing and failed reads (the default).
    #[arg(long)]
    as_billed: bool,
}

/// The columns of `query readings` that hold numbers.
pub const READINGS_NUMBERS: [&str; 1] = ["value"];

/// A meter's readings in the period, each with its quality: `A` an actual read, `E` an
/// estimate, `S` a substitute (with the rule and method that made it).
pub fn readings(config: &Config, args: ReadingsArgs) -> anyhow::Result<Table> {
    let zone = zone(config, &args.tz)?;
    let (from_ms, to_ms) = period(&zone, &args.from, &args.to)?;
    check_meter(&Some(args.meter.clone()))?;
    anyhow::ensure!(
        to_ms - from_ms <= 400 * 86_400_000,
        "--to: at most 400 days of readings at once"
    );
    let request = ReadRequest {
        from_ms,
        to_ms,
        margin_ms: 0,
        meter: Some(args.meter.clone()),
        channels: Channels::All,
        neighbours: Neighbours::None,
        before_since_ms: None,
        silent_since_ms: None,
    };
    let vee = if args.as_read {
        None
    } else {
        Some(AsBilled::load(config, from_ms, to_ms, Some(&args.meter))?)
    };
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut each = |mut series: Series| -> Result<(), meterflow_storage::StorageError> {
        if args.channel.as_ref().is_some_and(|c| c != &series.channel) {
            return Ok(());
        }
        let mended: std::collections::BTreeSet<i64> = match &vee {
            Some(vee) => vee.apply(&mut series).into_iter().collect(),
            None => Default::default(),
        };
        for &(ts, value) in &series.points {
            if !(from_ms..to_ms).contains(&ts) {
                continue;
            }
            let made = vee
                .as_ref()
                .filter(|_| mended.contains(&ts))
                .and_then(|v| v.value_at(&series.meter_id, &series.channel, ts));
            let (quality, rule, method) = match made {
                Some(v) => (v.quality.clone(), v.rule.clone(), v.method.clone()),
                None => ("A".to_string(), String::new(), String::new()),
            };
            rows.push(vec![
                series.channel.clone(),
                zone.format(ts),
                reading_number(value),
                series.unit.clone(),
                quality,
                rule,
                method,
            ]);
        }
        Ok(())
    };
    read_series(config, &request, &mut each)?;
    Ok(Table {
        columns: [
            "channel", "ts", "value", "unit", "quality", "rule", "method",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    })
}

/// A reading's value to 9 decimals (a µWh of a kWh register), without the noise of binary
/// fractions: 5155.200000000001 prints 5155.2.
fn reading_number(value: f64) -> String {
    let rounded = (value * 1e9).round() / 1e9;
    if rounded.is_finite() {
        rounded.to_string()
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_print_to_nine_decimals_without_noise() {
        assert_eq!(reading_number(5155.200000000001), "5155.2");
        assert_eq!(reading_number(0.1 + 0.2), "0.3");
        assert_eq!(reading_number(1234.123456789), "1234.123456789");
        assert_eq!(reading_number(12.0), "12");
        assert_eq!(reading_number(-0.5), "-0.5");
    }
}
