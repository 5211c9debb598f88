//! `meterflow import` of Parquet files written by other tools with their defaults (issue 25,
//! item 1): pandas, pyarrow with every compression meterflow reads and every timestamp unit
//! (with and without a zone, dictionary-encoded and large strings, float32 and integer
//! values), polars and DuckDB, each read exactly; a file with its own column names through
//! `--map` (an integer meter id, epoch seconds, a decimal); a column of the wrong type and a
//! codec meterflow does not read refused with what is wrong. The files are written by the
//! real libraries (`foreign_parquet.py`; the test command installs them from PyPI).

use std::path::Path;
use std::process::{Command, Output};

use crate::harness::{read_readings, BIN};

const WRITER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/foreign_parquet.py");

fn import(data: &Path, file: &Path, map: Option<&str>) -> Output {
    let mut command = Command::new(BIN);
    command.args(["import", "--json", "--data-dir"]).arg(data);
    if let Some(map) = map {
        command.args(["--map", map]);
    }
    command.arg(file).output().unwrap()
}

/// The rows stored under `data` as (meter, channel, ts, value, unit), sorted.
fn stored(data: &Path) -> Vec<(String, String, i64, f64, String)> {
    let mut rows: Vec<_> = read_readings(data)
        .into_iter()
        .map(|r| (r.meter_id, r.channel, r.ts_ms, r.value, r.unit))
        .collect();
    rows.sort_by_key(|r| r.2);
    rows
}

#[test]
fn parquet_written_by_pandas_pyarrow_polars_and_duckdb_imports_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("files");
    std::fs::create_dir(&files).unwrap();
    let out = Command::new("python3")
        .arg(WRITER)
        .arg(&files)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "writing the files (the test command installs pandas, pyarrow, polars, duckdb): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = 1_748_736_000_000i64; // 2025-06-01T00:00:00Z
    let want =
        |values: [f64; 3], meter: &str, unit: &str| -> Vec<(String, String, i64, f64, String)> {
            (0..3)
                .map(|k| {
                    (
                        meter.to_string(),
                        "1-0:1.8.0".to_string(),
                        start + k as i64 * 900_000,
                        values[k],
                        unit.to_string(),
                    )
                })
                .collect()
        };
    let mut names: Vec<String> = std::fs::read_dir(&files)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut imported = 0;
    for name in &names {
        let (expected, map) = match name.as_str() {
            "wrong.parquet" | "brotli.parquet" => continue,
            "integers.parquet" => (want([1500.0, 2250.0, 3000.0], "E1", "Wh"), None),
            "mapped.parquet" => (
                want([1.5, 2.25, 3.0], "871687", "kWh"),
                Some(r#"meter_id=EAN,channel="1-0:1.8.0",ts=Tijdstip,value=Stand,unit="kWh""#),
            ),
            _ => (want([1.5, 2.25, 3.0], "E1", "kWh"), None),
        };
        let data = dir.path().join(format!("data-{name}"));
        let out = import(&data, &files.join(name), map);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stored(&data), expected, "{name}");
        imported += 1;
    }
    // pandas, polars, DuckDB, Spark's INT96, integers, mapped, and 5 compressions x 4 units
    // x 2 zones.
    assert_eq!(imported, 6 + 40, "{names:?}");

    let refused = |name: &str| {
        let out = import(&dir.path().join("refused"), &files.join(name), None);
        assert_eq!(out.status.code(), Some(1), "{name}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let wrong = refused("wrong.parquet");
    assert!(
        wrong.contains(
            r#"column "value": value is Timestamp(ms, "UTC") in this file; expected a number"#
        ),
        "{wrong}"
    );
    let brotli = refused("brotli.parquet");
    assert!(
        brotli.contains("compressed with brotli, which meterflow does not read"),
        "{brotli}"
    );
    // A foreign file's column missing: named, with the file's columns and the flag to use.
    let missing = import(
        &dir.path().join("missing"),
        &files.join("mapped.parquet"),
        None,
    );
    let said = String::from_utf8_lossy(&missing.stderr);
    assert!(
        said.contains("no column meter_id (the file has EAN (Int64), Tijdstip (Int64), Stand (Decimal128(9, 2)))")
            && said.contains("--map meter_id=COLUMN"),
        "{said}"
    );
}
