//! "As billed" and "as read": which readings a question reads. As read, the actual reads
//! alone; as billed, the actual reads overlaid by VEE's latest version (estimates fill gaps,
//! substitutes replace failed values; `storage::vee::versions::overlay`). `query billing`
//! bills as billed once VEE has judged the whole period (its runs cover it), else as read and
//! says why; `--as-read` and `--as-billed` choose.

use std::collections::HashMap;

use anyhow::Context;
use meterflow_billing::Zone;
use meterflow_ingest::Config;
use meterflow_storage::readings::Series;
use meterflow_storage::vee::{self as vee_store, VeeRun, VeeValue};

use super::questions::runtime;

/// `--as-read` / `--as-billed`.
#[derive(clap::Args, Debug, Clone, Copy, Default)]
pub struct BasisArgs {
    /// The actual reads only, without VEE's estimates and substitutes.
    #[arg(long, conflicts_with = "as_billed")]
    pub as_read: bool,
    /// The actual reads overlaid by VEE's latest version, whether or not VEE has judged the
    /// whole period.
    #[arg(long)]
    pub as_billed: bool,
}

/// VEE's latest values of a window, by meter and channel, to overlay on its series.
pub struct AsBilled {
    by_series: HashMap<(String, String), Vec<VeeValue>>,
}

impl AsBilled {
    /// The latest values with `ts` in `[from, to)`, of `meter` or all.
    pub fn load(
        config: &Config,
        from_ms: i64,
        to_ms: i64,
        meter: Option<&str>,
    ) -> anyhow::Result<AsBilled> {
        let values = latest_versions(config, from_ms, to_ms, meter)?;
        let mut by_series: HashMap<(String, String), Vec<VeeValue>> = HashMap::new();
        for v in values {
            by_series
                .entry((v.meter_id.clone(), v.channel.clone()))
                .or_default()
                .push(v);
        }
        for values in by_series.values_mut() {
            values.sort_by_key(|v| v.ts_ms);
        }
        Ok(AsBilled { by_series })
    }

    /// Overlays `series`; returns the times of its points that are estimates or substitutes.
    pub fn apply(&self, series: &mut Series) -> Vec<i64> {
        match self
            .by_series
            .get(&(series.meter_id.clone(), series.channel.clone()))
        {
            Some(values) => vee_store::versions::overlay(series, values),
            None => Vec::new(),
        }
    }

    /// The latest value at `(meter, channel, ts)`, if VEE made one.
    pub fn value_at(&self, meter: &str, channel: &str, ts_ms: i64) -> Option<&VeeValue> {
        let values = self
            .by_series
            .get(&(meter.to_string(), channel.to_string()))?;
        let at = values.binary_search_by_key(&ts_ms, |v| v.ts_ms).ok()?;
        values.get(at)
    }
}

/// The latest version of every VEE value in `[from, to)`, of `meter` or all, from the
/// configured source.
pub fn latest_versions(
    config: &Config,
    from_ms: i64,
    to_ms: i64,
    meter: Option<&str>,
) -> anyhow::Result<Vec<VeeValue>> {
    if config.clickhouse.enabled() {
        runtime()?.block_on(vee_store::versions::latest_clickhouse(
            &config.clickhouse,
            from_ms,
            to_ms,
            meter,
        ))
    } else {
        vee_store::versions::latest(&config.data_dir, from_ms, to_ms, meter)
    }
    .context("reading VEE's versions (on ClickHouse: `meterflow schema --apply` adds readings_vee)")
}

/// Every finished VEE run, from the configured source.
pub fn runs(config: &Config) -> anyhow::Result<Vec<VeeRun>> {
    if config.clickhouse.enabled() {
        runtime()?.block_on(vee_store::runs::runs_clickhouse(&config.clickhouse))
    } else {
        vee_store::runs::runs(&config.data_dir)
    }
    .context(
        "reading VEE's runs (on ClickHouse: `meterflow schema --apply` adds vee_runs and vee_exceptions)",
    )
}

/// Whether a bill of `[from, to)` reads as billed: `--as-read` no, `--as-billed` yes, else
/// yes when VEE's runs cover the period (for `meter`, or for every meter). Says on stderr
/// which, and why when not.
pub fn bill_as_billed(
    config: &Config,
    basis: BasisArgs,
    zone: &Zone,
    from_ms: i64,
    to_ms: i64,
    meter: Option<&str>,
) -> anyhow::Result<bool> {
    if basis.as_read {
        return Ok(false);
    }
    if basis.as_billed {
        eprintln!("as billed: actual reads overlaid by VEE's latest version");
        return Ok(true);
    }
    let runs = runs(config)?;
    match vee_store::runs::first_unjudged(&runs, meter, from_ms, to_ms) {
        None => {
            eprintln!(
                "as billed: VEE has judged the period; actual reads overlaid by its latest version (--as-read for the reads alone)"
            );
            Ok(true)
        }
        Some(at) => {
            if !runs.is_empty() {
                eprintln!(
                    "as read: VEE has not judged {} from {} (run `meterflow vee` over the period, or --as-billed to overlay what it has)",
                    meter.unwrap_or("every meter"),
                    zone.format(at)
                );
            }
            Ok(false)
        }
    }
}
