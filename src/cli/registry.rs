//! `meterflow registry`: the meter registry (what each meter is and where it sits in the
//! grid, `meterflow_storage::registry`) imported from the utility's CSV into the data folder,
//! and listed. Without one, everything works as before.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use meterflow_ingest::Config;
use meterflow_storage::analytics::Table;
use meterflow_storage::registry::Registry;

use super::query::{print_table, OutputFormat};
use super::questions::{runtime, zone};

#[derive(clap::Args)]
pub struct RegistryArgs {
    #[command(subcommand)]
    action: RegistryAction,
}

#[derive(Subcommand)]
enum RegistryAction {
    /// Reads a registry CSV (columns meter_id, kind, model, expected_interval_s, district,
    /// feeder, transformer, role, import_only, tariff, valid_from, valid_to,
    /// report_interval_s; an unknown one is refused by name) and keeps it as the registry,
    /// replacing the one before (in the data folder, and in ClickHouse when configured).
    Import {
        file: PathBuf,
        /// IANA time zone of valid_from/valid_to without an offset [default:
        /// billing.timezone].
        #[arg(long)]
        tz: Option<String>,
    },
    /// The registry's records, by meter and time: all, or those that hold at --at.
    List {
        /// Only the records valid at this time (RFC 3339, or local as a date).
        #[arg(long)]
        at: Option<String>,
        #[arg(long)]
        tz: Option<String>,
        /// table (aligned, for people), csv or json (for scripts).
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
    },
}

/// The registry of the configured source: ClickHouse's `meters` when a URL is configured
/// (where every node finds it), else the data folder.
pub fn load(config: &Config) -> anyhow::Result<Registry> {
    if config.clickhouse.enabled() {
        runtime()?
            .block_on(Registry::load_clickhouse(&config.clickhouse))
            .context("reading the meter registry from ClickHouse")
    } else {
        Registry::load(&config.data_dir).context("reading the meter registry")
    }
}

pub fn run(config: &Config, args: RegistryArgs) -> anyhow::Result<()> {
    match args.action {
        RegistryAction::Import { file, tz } => {
            let zone = zone(config, &tz)?;
            let bytes = std::fs::read(&file)
                .with_context(|| format!("reading the registry {}", file.display()))?;
            let registry = Registry::from_csv(&bytes, &zone)
                .with_context(|| format!("the registry {}", file.display()))?;
            meterflow_storage::data_dir::prepare(&config.data_dir)?;
            let imported_ms = meterflow_proto::now_ms();
            let saved = registry.save(&config.data_dir, imported_ms)?;
            let meters: std::collections::BTreeSet<&str> =
                registry.records().map(|r| r.meter_id.as_str()).collect();
            eprintln!(
                "registry: {} record(s) of {} meter(s) kept in {}",
                registry.records().count(),
                meters.len(),
                saved.display()
            );
            if config.clickhouse.enabled() {
                let clickhouse = &config.clickhouse;
                runtime()?
                    .block_on(async {
                        meterflow_storage::clickhouse::apply_schema(clickhouse, true).await?;
                        registry.save_clickhouse(clickhouse, imported_ms).await
                    })
                    .with_context(|| {
                        format!(
                            "writing the registry to ClickHouse {} (it is kept in {} already)",
                            meterflow_storage::url_without_password(&clickhouse.url),
                            saved.display()
                        )
                    })?;
                eprintln!(
                    "registry: and in ClickHouse's {}.meters",
                    clickhouse.database
                );
            }
            Ok(())
        }
        RegistryAction::List { at, tz, format } => {
            let zone = zone(config, &tz)?;
            let at = at.map(|t| zone.parse_time(&t, "--at")).transpose()?;
            let registry = load(config)?;
            let when = |t: Option<i64>| t.map(|t| zone.format(t)).unwrap_or_default();
            let rows = registry
                .records()
                .filter(|r| at.is_none_or(|t| r.holds_at(t)))
                .map(|r| {
                    vec![
                        r.meter_id.clone(),
                        r.kind.as_str().to_string(),
                        r.model.clone(),
                        r.expected_interval_s
                            .map(|s| s.to_string())
                            .unwrap_or_default(),
                        r.district.clone(),
                        r.feeder.clone(),
                        r.transformer.clone(),
                        r.role.as_str().to_string(),
                        r.import_only.to_string(),
                        r.tariff.clone(),
                        when(r.valid_from_ms),
                        when(r.valid_to_ms),
                        r.report_interval_s
                            .map(|s| s.to_string())
                            .unwrap_or_default(),
                    ]
                })
                .collect();
            let table = Table {
                columns: meterflow_storage::registry::COLUMNS
                    .iter()
                    .map(|c| c.to_string())
                    .collect(),
                rows,
            };
            print_table(
                &table,
                &["expected_interval_s", "report_interval_s"],
                format,
            )
        }
    }
}
