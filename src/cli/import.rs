//! `meterflow import`: the flags (the CSV mapping and the settings that override it), the
//! [`ImportTarget`](meterflow_import::ImportTarget) built from the config, and the summary
//! line (or JSON) of [`meterflow_import::run`].

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use meterflow_import::csv::{parse_delimiter, CsvMapping, CsvOptions};
use meterflow_ingest::Config;

#[derive(clap::Args)]
pub struct ImportArgs {
    /// Files and folders; folders are searched for *.parquet and *.csv.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// How CSV columns map to readings, e.g.
    /// meter_id=EAN,channel="1-0:1.8.0",ts=Timestamp,value=Reading,unit="kWh"
    #[arg(long, conflicts_with = "mapping")]
    map: Option<String>,
    /// The CSV mapping as a TOML file (see README, "Importing history").
    #[arg(long)]
    mapping: Option<PathBuf>,
    /// IANA zone of CSV stamps without an offset, e.g. Europe/Amsterdam [default UTC]
    #[arg(long)]
    tz: Option<String>,
    /// Multiply CSV values by this (e.g. 0.001).
    #[arg(long)]
    scale: Option<f64>,
    /// Convert CSV values to this unit from the row's unit (e.g. kWh from Wh).
    #[arg(long)]
    to_unit: Option<String>,
    /// CSV field delimiter (one character, or `tab`) [default: detected from the header]
    #[arg(long)]
    delimiter: Option<String>,
    /// Forget the progress of earlier runs and import every file from its start.
    #[arg(long)]
    restart: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// Imports the files of `args` into the target of `config`; exits with status 1 when a file
/// failed (the others went on).
pub fn run(config: Config, args: ImportArgs) -> anyhow::Result<()> {
    config.parquet.validate()?;
    let mapping = match (&args.map, &args.mapping) {
        (Some(spec), _) => Some(CsvMapping::parse_spec(spec).context("--map")?),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading --mapping {}", path.display()))?;
            Some(
                CsvMapping::from_toml(&text)
                    .with_context(|| format!("--mapping {}", path.display()))?,
            )
        }
        // --tz, --scale or --to-unit alone: the columns by their own names.
        (None, None) if args.tz.is_some() || args.scale.is_some() || args.to_unit.is_some() => {
            Some(CsvMapping::by_own_names())
        }
        (None, None) => None,
    };
    let csv = match mapping {
        Some(mapping) => {
            let mut options = CsvOptions::from_mapping(mapping);
            if let Some(tz) = &args.tz {
                options.tz = Some(
                    tz.parse()
                        .map_err(|_| anyhow::anyhow!("--tz {tz:?} is not an IANA zone name"))?,
                );
            }
            if let Some(scale) = args.scale {
                options.scale = scale;
            }
            if let Some(unit) = &args.to_unit {
                options.to_unit = Some(unit.clone());
            }
            if let Some(d) = &args.delimiter {
                options.delimiter = Some(parse_delimiter(d).context("--delimiter")?);
            }
            Some(options)
        }
        None if args.delimiter.is_some() => {
            anyhow::bail!("--delimiter is for CSV files: give --map or --mapping too")
        }
        None => None,
    };
    let options = meterflow_import::ImportOptions {
        paths: args.paths,
        csv,
        restart: args.restart,
        bar: std::io::stderr().is_terminal(),
    };
    let target = meterflow_import::ImportTarget {
        data_dir: config.data_dir,
        node_id: config.node.id,
        parquet: config.parquet,
        clickhouse: config.clickhouse,
    };
    let summary = meterflow_import::run(&target, &options)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "imported {} rows from {} files into {} in {:.1} s ({:.0} rows/s); {} dead letters; {} files done earlier, {} failed",
            summary.rows,
            summary.files,
            summary.target,
            summary.seconds,
            summary.rows as f64 / summary.seconds.max(1e-3),
            summary.dead_letters,
            summary.files_already_done,
            summary.files_failed
        );
    }
    if summary.files_failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
