//! `meterflow import` of a canonical CSV (`meter_id,channel,ts,value,unit`) and `meterflow
//! query --format csv`, as the billing and question tests run them on both sources.

use std::path::Path;
use std::process::Command;

use super::BIN;

/// Imports `csv` (columns named as the canonical ones) into the sinks of `config`.
pub fn import_canonical_csv(config: &str, csv: &Path) {
    let out = Command::new(BIN)
        .args(["import", "--config", config, "--map"])
        .arg("meter_id=meter_id,channel=channel,ts=ts,value=value,unit=unit")
        .arg(csv)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `meterflow query --format csv --config CONFIG ARGS`: its standard output; it must succeed.
pub fn query_csv(config: &str, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(["query", "--format", "csv", "--config", config])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
