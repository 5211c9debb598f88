//! `meterflow query`: the questions asked of the ClickHouse tables (billing, anomalies,
//! devices), how results are printed (an aligned table for people, CSV or JSON for scripts)
//! and how times and durations are given on the command line.

use std::io::Write;

use anyhow::{bail, Context};
use clap::Subcommand;
use meterflow_ingest::Config;
use meterflow_storage::analytics::{self, AnomalyRules, Period, Table};

#[derive(clap::Args)]
pub struct QueryArgs {
    /// table (aligned, for people), csv or json (for scripts).
    #[arg(long, global = true, value_enum, default_value = "table")]
    format: OutputFormat,
    #[command(subcommand)]
    question: Question,
}

#[derive(Subcommand)]
pub enum Question {
    /// Consumption per meter and register (import 1.8.x, export 2.8.x, gas/water 24.2.x) in
    /// [from, to): the register's value at both edges (read, interpolated or carried) and
    /// every step between, local days (--tz), time-of-use periods (--tariff). Reads ClickHouse
    /// when a URL is configured, else the Parquet tree under --data-dir.
    Billing(super::billing::BillingArgs),
    /// Reverse runs, resets, zero consumption, spikes, missing intervals, stale meters.
    Anomalies {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        meter: Option<String>,
        /// Days an import register may stand still before it is flagged.
        #[arg(long, default_value_t = 3)]
        zero_days: u32,
        /// A step above this many times the meter's median step is a spike.
        #[arg(long, default_value_t = 5.0)]
        spike_factor: f64,
        /// Not heard for this long (e.g. 90m, 2h, 3d, or seconds) is stale.
        #[arg(long, default_value = "24h")]
        stale_after: String,
    },
    /// Last seen and newest values per meter.
    Devices {
        #[arg(long)]
        meter: Option<String>,
        /// Only meters not heard for this long (e.g. 2h).
        #[arg(long)]
        stale_after: Option<String>,
    },
}

/// Asks the question of `args` and prints the answer.
pub fn run(config: Config, args: QueryArgs) -> anyhow::Result<()> {
    let table = match args.question {
        Question::Billing(billing) => super::billing::run(&config, billing)?,
        Question::Anomalies {
            from,
            to,
            meter,
            zero_days,
            spike_factor,
            stale_after,
        } => {
            let rules = AnomalyRules {
                zero_days,
                spike_factor,
                stale_s: parse_duration_s(&stale_after).context("--stale-after")?,
            };
            let period = period(&from, &to, meter)?;
            clickhouse(&config)?.block_on(analytics::anomalies(
                &config.clickhouse,
                &period,
                &rules,
            ))?
        }
        Question::Devices { meter, stale_after } => {
            let stale_s = match stale_after {
                Some(text) => parse_duration_s(&text).context("--stale-after")?,
                None => 0,
            };
            clickhouse(&config)?.block_on(analytics::devices(&config.clickhouse, meter, stale_s))?
        }
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match print(&table, args.format, &mut out).and_then(|()| Ok(out.flush()?)) {
        // `meterflow query ... | head`: the reader has what it wanted.
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

/// Whether `e` is a write to a closed pipe.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The runtime of a question ClickHouse's SQL answers.
fn clickhouse(config: &Config) -> anyhow::Result<tokio::runtime::Runtime> {
    anyhow::ensure!(
        config.clickhouse.enabled(),
        "this query reads ClickHouse: give --clickhouse-url or clickhouse.url"
    );
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// `--from`, `--to` (UTC) and `--meter` of the questions ClickHouse answers.
fn period(from: &str, to: &str, meter: Option<String>) -> anyhow::Result<Period> {
    let period = Period {
        from_s: parse_time_s(from).context("--from")?,
        to_s: parse_time_s(to).context("--to")?,
        meter,
    };
    anyhow::ensure!(period.from_s < period.to_s, "--from must be before --to");
    Ok(period)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Csv,
    Json,
}

/// RFC 3339, or `YYYY-MM-DD` for UTC midnight; Unix seconds.
fn parse_time_s(text: &str) -> anyhow::Result<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.timestamp());
    }
    let day = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .with_context(|| format!("{text:?} is neither RFC 3339 nor YYYY-MM-DD"))?;
    Ok(day
        .and_hms_opt(0, 0, 0)
        .unwrap_or_default()
        .and_utc()
        .timestamp())
}

/// `90s`, `45m`, `2h`, `3d`, or plain seconds.
fn parse_duration_s(text: &str) -> anyhow::Result<u64> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .with_context(|| format!("{text:?} is not a duration like 90m, 2h or 3d"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("{text:?}: the unit must be s, m, h or d"),
    };
    Ok(n.saturating_mul(scale))
}

fn print(table: &Table, format: OutputFormat, out: &mut dyn Write) -> anyhow::Result<()> {
    match format {
        OutputFormat::Table => {
            let widths: Vec<usize> = (0..table.columns.len())
                .map(|c| {
                    table
                        .rows
                        .iter()
                        .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                        .chain([table.columns[c].len()])
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let line = |cells: &[String]| {
                cells
                    .iter()
                    .zip(&widths)
                    .map(|(cell, w)| format!("{cell:<w$}"))
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_string()
            };
            writeln!(out, "{}", line(&table.columns))?;
            for row in &table.rows {
                writeln!(out, "{}", line(row))?;
            }
            writeln!(out, "({} rows)", table.rows.len())?;
        }
        OutputFormat::Csv => {
            let quote = |s: &String| {
                if s.contains([',', '"', '\n']) {
                    format!("\"{}\"", s.replace('"', "\"\""))
                } else {
                    s.clone()
                }
            };
            writeln!(
                out,
                "{}",
                table
                    .columns
                    .iter()
                    .map(quote)
                    .collect::<Vec<_>>()
                    .join(",")
            )?;
            for row in &table.rows {
                writeln!(
                    out,
                    "{}",
                    row.iter().map(quote).collect::<Vec<_>>().join(",")
                )?;
            }
        }
        OutputFormat::Json => {
            let rows: Vec<serde_json::Map<String, serde_json::Value>> = table
                .rows
                .iter()
                .map(|row| {
                    table
                        .columns
                        .iter()
                        .zip(row)
                        .map(|(c, v)| (c.clone(), serde_json::Value::String(v.clone())))
                        .collect()
                })
                .collect();
            writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_durations_parse() {
        assert_eq!(parse_time_s("2024-03-01").unwrap(), 1_709_251_200);
        assert_eq!(
            parse_time_s("2024-03-01T01:00:00+01:00").unwrap(),
            1_709_251_200
        );
        assert!(parse_time_s("yesterday").is_err());
        assert_eq!(parse_duration_s("90m").unwrap(), 5400);
        assert_eq!(parse_duration_s("2h").unwrap(), 7200);
        assert_eq!(parse_duration_s("3d").unwrap(), 259_200);
        assert_eq!(parse_duration_s("42").unwrap(), 42);
        assert!(parse_duration_s("2w").is_err());
    }
}
