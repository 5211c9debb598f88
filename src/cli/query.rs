//! `meterflow query`: the questions (billing, anomalies, devices, VEE's exceptions, a
//! meter's readings: each on ClickHouse when a URL is configured, else on the Parquet tree), how results are printed (an aligned table
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
    /// when a URL is configured, else the Parquet tree under --data-dir. Exit status 3: the
    /// rows printed are complete but for registers whose readings come in more than one unit
    /// (named on stderr).
    Billing(super::billing::BillingArgs),
    /// Reverse runs, register resets, zero consumption, spikes, missing intervals, error
    /// flags, stale meters in [from, to). Reads ClickHouse when a URL is configured, else the
    /// Parquet tree under --data-dir.
    Anomalies(super::questions::AnomaliesArgs),
    /// Last seen, status and newest values per meter. Reads ClickHouse when a URL is
    /// configured, else the Parquet tree under --data-dir.
    Devices(super::questions::DevicesArgs),
    /// What VEE found in [from, to): meter, channel, rule, span, detail, and whether (and
    /// how) values were estimated, as the latest run that judged each meter there left it.
    Exceptions(super::vee_questions::ExceptionsArgs),
    /// One meter's readings in [from, to), each with its quality: A actual, E estimated, S
    /// substituted (and the rule and method). As billed by default; --as-read for the
    /// actual reads alone.
    Readings(super::vee_questions::ReadingsArgs),
    /// Events in [from, to): tamper, alarms, power failures from the meters, and refusals at
    /// the edge (a forged publish is an event of the meter it claimed to be).
    Events(super::revenue::EventsArgs),
    /// The energy balance per feeder, transformer or district (--level) and local day: the
    /// head meters' energy against the sum of the customers' (billing's boundary rule), the
    /// loss in kWh and %, and the meters not known that day (counted, never taken as 0).
    /// Needs the meter registry.
    Balance(super::revenue::BalanceArgs),
    /// Customer meters ranked by a score of theft signals in [from, to) against the
    /// --history-days before: a drop against their own past and their peers', a changed
    /// daily shape, zero days, reverse energy on an import-only meter, a tamper event then
    /// a drop, forged or replayed data, a feeder whose loss rose. Each signal is a column.
    Suspects(super::revenue::SuspectsArgs),
}

/// Asks the question of `args` and prints the answer.
pub fn run(config: Config, args: QueryArgs) -> anyhow::Result<()> {
    // Registers a bill leaves out: printed after the rows as the command's error.
    let mut refused = Vec::new();
    let (table, numbers): (Table, &[&str]) = match args.question {
        Question::Billing(billing) => {
            let billed = super::billing::run(&config, billing)?;
            refused = billed.refused;
            (billed.table, &BILLING_NUMBERS)
        }
        Question::Anomalies(args) => (super::questions::anomalies(&config, args)?, &[]),
        Question::Devices(args) => (super::questions::devices(&config, args)?, &DEVICE_NUMBERS),
        Question::Exceptions(args) => (
            super::vee_questions::exceptions(&config, args)?,
            &EXCEPTION_NUMBERS,
        ),
        Question::Readings(args) => (
            super::vee_questions::readings(&config, args)?,
            &super::vee_questions::READINGS_NUMBERS,
        ),
        Question::Events(args) => (super::revenue::events(&config, args)?, &[]),
        Question::Suspects(args) => (
            super::revenue::suspects(&config, args)?,
            &super::revenue::SUSPECT_NUMBERS,
        ),
        Question::Balance(args) => (
            super::revenue::balance(&config, args)?,
            &super::revenue::BALANCE_NUMBERS,
        ),
    };
    // Said before the rows, so that `| head` does not hide it.
    if !refused.is_empty() {
        let shown = refused
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ");
        let more = refused.len().saturating_sub(10);
        eprintln!(
            "Error: {} register(s) not billed: their readings in the period or within \
             billing.max_interpolation_gap of it come in more than one unit ({shown}{}); the \
             other rows are complete (exit status {INCOMPLETE_BILL})",
            refused.len(),
            if more > 0 {
                format!("; and {more} more")
            } else {
                String::new()
            }
        );
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match print(&table, numbers, args.format, &mut out).and_then(|()| Ok(out.flush()?)) {
        // `meterflow query ... | head`: the reader has what it wanted.
        Err(e) if is_broken_pipe(&e) => {}
        other => other?,
    }
    if !refused.is_empty() {
        // Not 1 (the command failed): the rows printed are a bill, short of those named.
        drop(out);
        std::process::exit(INCOMPLETE_BILL);
    }
    Ok(())
}

/// The exit status of a bill printed without the registers it could not bill.
pub const INCOMPLETE_BILL: i32 = 3;

/// The columns of `query billing` that hold numbers (JSON numbers in `--format json`).
const BILLING_NUMBERS: [&str; 7] = [
    "start_value",
    "end_value",
    "consumption",
    "max_demand_kw",
    "resets",
    "readings",
    "estimated",
];
/// The columns of `query exceptions` (and `vee`) that hold numbers.
pub const EXCEPTION_NUMBERS: [&str; 1] = ["values"];
/// The columns of `query devices` that hold numbers.
const DEVICE_NUMBERS: [&str; 6] = [
    "seconds_since",
    "readings",
    "battery_pct",
    "rssi_dbm",
    "rsrp_dbm",
    "error_flags",
];

/// A cell as JSON: `null` when empty; a number in a column of numbers (`numeric`) when it
/// is one JSON can hold (not `inf` or `nan`: those stay text); else text (meter ids and
/// channels stay text whatever they look like).
fn json_cell(cell: &str, numeric: bool) -> serde_json::Value {
    use serde_json::Value;
    if cell.is_empty() {
        return Value::Null;
    }
    if numeric {
        if let Ok(n) = cell.parse::<i64>() {
            return Value::from(n);
        }
        if let Some(n) = cell
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
        {
            return Value::Number(n);
        }
    }
    Value::String(cell.to_string())
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

/// Prints `table` to standard output (a closed pipe is no error); `numbers` names its
/// columns of numbers (for JSON).
pub fn print_table(table: &Table, numbers: &[&str], format: OutputFormat) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match print(table, numbers, format, &mut out).and_then(|()| Ok(out.flush()?)) {
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

/// Prints `table`; `numbers` names its columns of numbers (for JSON).
fn print(
    table: &Table,
    numbers: &[&str],
    format: OutputFormat,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
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
                        .map(|(c, v)| (c.clone(), json_cell(v, numbers.contains(&c.as_str()))))
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
    fn json_has_numbers_nulls_and_text() {
        let table = Table {
            columns: ["meter_id", "channel", "readings", "consumption", "firmware"]
                .map(String::from)
                .to_vec(),
            rows: vec![["0042", "1-0:1.8.0", "12", "1.5", ""]
                .map(String::from)
                .to_vec()],
        };
        let mut out = Vec::new();
        print(
            &table,
            &["readings", "consumption"],
            OutputFormat::Json,
            &mut out,
        )
        .unwrap();
        let rows: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            rows,
            serde_json::json!([{"meter_id": "0042", "channel": "1-0:1.8.0", "readings": 12,
                "consumption": 1.5, "firmware": null}])
        );
        assert_eq!(json_cell("inf", true), serde_json::json!("inf"));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration_s("90m").unwrap(), 5400);
        assert_eq!(parse_duration_s("2h").unwrap(), 7200);
        assert_eq!(parse_duration_s("3d").unwrap(), 259_200);
        assert_eq!(parse_duration_s("42").unwrap(), 42);
        assert!(parse_duration_s("2w").is_err());
    }
}
