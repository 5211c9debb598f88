//! The revenue-protection questions: `meterflow query events` (what meters and the edge said
//! happened), on ClickHouse when a URL is configured, else on the Parquet tree.

use anyhow::Context;
use meterflow_decoders::events::EventKind;
use meterflow_ingest::Config;
use meterflow_storage::analytics::Table;
use meterflow_storage::events::{self as event_store, EventRequest, EventRow};

use super::questions::{check_meter, period, runtime, zone};

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
