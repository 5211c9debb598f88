//! What `serve` wrote, read back from the Parquet tree.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, TimestampMillisecondType, UInt16Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// One row of the readings table, as read back from Parquet.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub meter_id: String,
    pub channel: String,
    pub ts_ms: i64,
    pub value: f64,
    pub unit: String,
    pub quality: u16,
    pub received_at_ms: i64,
    pub source: String,
    pub format: String,
    /// The `date=` folder the file was in.
    pub date: String,
}

/// Every row of every complete Parquet file under `{data_dir}/readings`; also checks that
/// no incomplete file is left.
pub fn read_readings(data_dir: &Path) -> Vec<Row> {
    let mut rows = Vec::new();
    let root = data_dir.join("readings");
    let Ok(dirs) = std::fs::read_dir(&root) else {
        return rows;
    };
    for dir in dirs.flatten() {
        let date = dir
            .file_name()
            .to_string_lossy()
            .trim_start_matches("date=")
            .to_string();
        for f in std::fs::read_dir(dir.path()).unwrap().flatten() {
            let name = f.file_name().to_string_lossy().to_string();
            assert!(
                name.ends_with(".parquet") && !name.starts_with('.'),
                "leftover file {name}"
            );
            let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(f.path()).unwrap())
                .unwrap()
                .build()
                .unwrap();
            for batch in reader {
                let b = batch.unwrap();
                let s = |i: usize| b.column(i).as_string::<i32>().clone();
                let (meter, channel, unit, source, format) = (s(0), s(1), s(4), s(7), s(8));
                let ts = b.column(2).as_primitive::<TimestampMillisecondType>();
                let value = b.column(3).as_primitive::<Float64Type>();
                let quality = b.column(5).as_primitive::<UInt16Type>();
                let received = b.column(6).as_primitive::<TimestampMillisecondType>();
                for i in 0..b.num_rows() {
                    rows.push(Row {
                        meter_id: meter.value(i).into(),
                        channel: channel.value(i).into(),
                        ts_ms: ts.value(i),
                        value: value.value(i),
                        unit: unit.value(i).into(),
                        quality: quality.value(i),
                        received_at_ms: received.value(i),
                        source: source.value(i).into(),
                        format: format.value(i).into(),
                        date: date.clone(),
                    });
                }
            }
        }
    }
    rows
}

/// Rows grouped by meter, each group sorted by (ts, channel).
pub fn by_meter(rows: &[Row]) -> BTreeMap<String, Vec<Row>> {
    let mut map: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for r in rows {
        map.entry(r.meter_id.clone()).or_default().push(r.clone());
    }
    for v in map.values_mut() {
        v.sort_by(|a, b| (a.ts_ms, &a.channel).cmp(&(b.ts_ms, &b.channel)));
    }
    map
}

/// The UTC date of a Unix ms time, as the `date=` folder names it.
pub fn utc_date(ts_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ts_ms)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string()
}
