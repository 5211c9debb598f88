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

/// Runs a Python `script` (pandas, pyarrow: the test command installs them) that writes its
/// files into `dir` (its first argument).
fn python(script: &str, dir: &Path) {
    let made = Command::new("python3")
        .args(["-c", script])
        .arg(dir)
        .output()
        .expect("python3 runs");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
}

/// An import's `--json` summary's files, failed files and rows.
fn files_failed_rows(summary: &serde_json::Value) -> (u64, u64, u64) {
    let n = |k: &str| summary[k].as_u64().unwrap_or(u64::MAX);
    (n("files"), n("files_failed"), n("rows"))
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

/// Review 25 M1: a file that fails midway (its second row group damaged, after 8192 rows were
/// read) takes none of its rows along into the next file's chunk: the next file, whose every
/// row is refused, still fails, and nothing is stored or counted.
#[test]
fn rows_of_a_file_that_fails_midway_do_not_go_with_the_next_file() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"
import sys, pyarrow as pa, pyarrow.parquet as pq
out = sys.argv[1]
n = 12000
t = pa.table({"meter_id": ["E1"] * n, "channel": ["1-0:1.8.0"] * n,
              "ts": pa.array([1748736000000 + i * 900000 for i in range(n)], pa.timestamp("ms", tz="UTC")),
              "value": [float(i) for i in range(n)], "unit": ["kWh"] * n})
pq.write_table(t, f"{out}/a-broken.parquet", row_group_size=10000, compression="snappy")
group = pq.ParquetFile(f"{out}/a-broken.parquet").metadata.row_group(1)
start = min(group.column(i).data_page_offset for i in range(group.num_columns))
data = bytearray(open(f"{out}/a-broken.parquet", "rb").read())
for k in range(start, start + 40):
    data[k] ^= 0xFF
open(f"{out}/a-broken.parquet", "wb").write(data)
r = pa.table({"meter_id": ["bad id!"] * 2, "channel": ["1-0:1.8.0"] * 2,
              "ts": pa.array([1748736000000, 1748736900000], pa.timestamp("ms", tz="UTC")),
              "value": [1.0, 2.0], "unit": ["kWh"] * 2})
pq.write_table(r, f"{out}/b-refused.parquet")
"#;
    python(script, dir.path());
    let data = dir.path().join("data");
    let out = Command::new(BIN)
        .args(["import", "--json", "--data-dir"])
        .arg(&data)
        .arg(dir.path().join("a-broken.parquet"))
        .arg(dir.path().join("b-refused.parquet"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(files_failed_rows(&summary), (0, 2, 0), "{summary}");
    assert!(stored(&data).is_empty());
}

/// Review 25 M2: `--tz`, `--to-unit` and `ts_format` apply to Parquet as to CSV. pandas
/// writes naive wall-clock times (no zone) when a frame's times have none: with `--tz` they
/// are local times, the repeated autumn hour first summer then standard time; Wh become kWh.
/// Text times in a layout of their own are read with the map's `ts_format`.
#[test]
fn naive_local_times_and_units_of_a_parquet_file_follow_tz_and_to_unit() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"
import sys, pandas as pd
out = sys.argv[1]
wall = ["2024-10-27 01:45", "2024-10-27 02:00", "2024-10-27 02:15",
        "2024-10-27 02:00", "2024-10-27 02:15", "2024-10-27 03:00"]
wh = [1000000, 1000250.5, 1000500, 1000750, 1001250, 1001500]
pd.DataFrame({"meter_id": ["871687400000000001"] * 6, "channel": ["1-0:1.8.0"] * 6,
              "ts": pd.to_datetime(wall), "value": wh, "unit": ["Wh"] * 6}).to_parquet(f"{out}/naive.parquet")
utc = pd.to_datetime(["2024-10-26 23:45", "2024-10-27 00:00", "2024-10-27 00:15",
                      "2024-10-27 01:00", "2024-10-27 01:15", "2024-10-27 02:00"]).tz_localize("UTC")
pd.DataFrame({"meter_id": ["871687400000000001"] * 6, "channel": ["1-0:1.8.0"] * 6,
              "ts": utc, "value": wh, "unit": ["Wh"] * 6}).to_parquet(
    f"{out}/int96.parquet", engine="pyarrow", use_deprecated_int96_timestamps=True)
pd.DataFrame({"EAN": ["871687400000000001"] * 6,
              "Tijdstip": [w[8:10] + "-" + w[5:7] + "-" + w[0:4] + w[10:] for w in wall],
              "Stand": wh}).to_parquet(f"{out}/text.parquet")
"#;
    python(script, dir.path());
    // (UTC seconds, kWh), as tests/it/import.rs's CSV of the same export.
    let want: Vec<(String, String, i64, f64, String)> = [
        (1_729_986_300, 1000.0),
        (1_729_987_200, 1000.2505),
        (1_729_988_100, 1000.5),
        (1_729_990_800, 1000.75),
        (1_729_991_700, 1001.25),
        (1_729_994_400, 1001.5),
    ]
    .iter()
    .map(|&(s, v)| {
        (
            "871687400000000001".to_string(),
            "1-0:1.8.0".to_string(),
            s * 1000,
            v,
            "kWh".to_string(),
        )
    })
    .collect();
    let run = |name: &str, extra: &[&str]| {
        let data = dir.path().join(format!("data-{name}"));
        let out = Command::new(BIN)
            .args(["import", "--json", "--data-dir"])
            .arg(&data)
            .args(extra)
            .args(["--tz", "Europe/Amsterdam", "--to-unit", "kWh"])
            .arg(dir.path().join(name))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        stored(&data)
    };
    assert_eq!(run("naive.parquet", &[]), want);
    // Spark's INT96 times are instants: --tz does not move them.
    assert_eq!(run("int96.parquet", &[]), want);
    // Imported first without --tz (taken as UTC), then again with it: other settings read
    // the file anew, not "done earlier".
    let data = dir.path().join("data-again");
    let import_naive = |extra: &[&str]| {
        let out = Command::new(BIN)
            .args(["import", "--json", "--data-dir"])
            .arg(&data)
            .args(extra)
            .arg(dir.path().join("naive.parquet"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    import_naive(&["--to-unit", "kWh"]);
    let again = import_naive(&["--tz", "Europe/Amsterdam", "--to-unit", "kWh"]);
    assert_eq!(files_failed_rows(&again), (1, 0, 6), "{again}");
    assert_eq!(again["files_already_done"], 0, "{again}");
    let map = r#"meter_id=EAN,channel="1-0:1.8.0",ts=Tijdstip,value=Stand,unit="Wh",ts_format="%d-%m-%Y %H:%M""#;
    assert_eq!(run("text.parquet", &["--map", map]), want);
}
