//! `meterflow query`: the questions (billing, anomalies, devices: each on ClickHouse when a
//! URL is configured, else on the Parquet tree), how results are printed (an aligned table
//! for people, CSV or JSON for scripts) and how durations are given on the command line.

use std::io::Write;

use anyhow::{bail, Context};
use clap::Subcommand;
use meterflow_ingest::Config;
use meterflow_storage::analytics::Table;

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
    /// Reverse runs, register resets, zero consumption, spikes, missing intervals, error
    /// flags, stale meters in [from, to). Reads ClickHouse when a URL is configured, else the
    /// Parquet tree under --data-dir.
    Anomalies(super::questions::AnomaliesArgs),
    /// Last seen, status and newest values per meter. Reads ClickHouse when a URL is
    /// configured, else the Parquet tree under --data-dir.
    Devices(super::questions::DevicesArgs),
}

/// Asks the question of `args` and prints the answer.
pub fn run(config: Config, args: QueryArgs) -> anyhow::Result<()> {
    let table = match args.question {
        Question::Billing(billing) => super::billing::run(&config, billing)?,
        Question::Anomalies(args) => super::questions::anomalies(&config, args)?,
        Question::Devices(args) => super::questions::devices(&config, args)?,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Csv,
    Json,
}

/// `90s`, `45m`, `2h`, `3d`, or plain seconds.
pub(super) fn parse_duration_s(text: &str) -> anyhow::Result<u64> {
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
    fn durations_parse() {
        assert_eq!(parse_duration_s("90m").unwrap(), 5400);
        assert_eq!(parse_duration_s("2h").unwrap(), 7200);
        assert_eq!(parse_duration_s("3d").unwrap(), 259_200);
        assert_eq!(parse_duration_s("42").unwrap(), 42);
        assert!(parse_duration_s("2w").is_err());
    }
}
