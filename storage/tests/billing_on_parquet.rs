//! Billing's additivity through the Parquet read model, as `query billing` runs it: random
//! registers (irregular times, gaps longer than the interpolation limit, resets, silences
//! through a whole period, edges on a reading) written by the sink, read for `[a, b)`,
//! `[b, c)` and `[a, c)` with billing's request (a margin of `max_interpolation_gap`, the
//! reading before, silent registers within the look-back), billed in Europe/Berlin with a
//! day/night tariff, and:
//! - each register's rows from what the read delivers equal its rows from all its readings
//!   (edges and their kinds, each period's consumption and max demand, resets, readings: the
//!   read gives the engine every reading it needs);
//! - `[a, b)` plus `[b, c)` is `[a, c)` for every register (relative 1e-9);
//! - a register left out of a period's read had no reading near it, so its bill is 0.
//!
//! ClickHouse gives the same series as Parquet bit for bit for the same requests
//! (`tests/it/read_model.rs` on 18.16 and a current server), so this holds there too.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;

use meterflow_billing::{Bill, BillRow, Query, Reading, Tariff, Zone};
use meterflow_proto::{ReadingBatchBuilder, TextRow};
use meterflow_storage::readings::{self, Channels, Neighbours, ReadRequest, Series};
use meterflow_storage::{ParquetConfig, ParquetSink, StorageError};
use proptest::prelude::*;

const S: i64 = 1_000;
const H: i64 = 3_600 * S;
const D: i64 = 24 * H;
/// 2024-03-01T00:00:00Z
const T0: i64 = 1_709_251_200_000;
/// billing.max_interpolation_gap and billing.silent_look_back, as `query billing` uses them.
const GAP: i64 = 7 * D;
const LOOK_BACK: i64 = 31 * D;

/// One register's readings: whole seconds (as ClickHouse 18.16 keeps them), 1 s to 12 days
/// apart, rising, sometimes reset to near zero or running back a little.
fn register() -> impl Strategy<Value = Vec<Reading>> {
    prop::collection::vec((1i64..12 * 86_400, 0u8..16, 0u32..5_000), 1..40).prop_map(|steps| {
        let mut t = T0 - 20 * D;
        let mut v = 100.0;
        steps
            .into_iter()
            .map(|(dt_s, kind, rise)| {
                t += dt_s * S;
                let rise = f64::from(rise) / 1000.0;
                v = match kind {
                    0 => rise * 0.01,         // a reset
                    1 => (v - rise).max(0.0), // a reverse run
                    _ => v + rise,
                };
                Reading { ts_ms: t, value: v }
            })
            .collect()
    })
}

fn write(dir: &Path, fleet: &[Vec<Reading>]) {
    let mut b = ReadingBatchBuilder::default();
    let meters: Vec<String> = (0..fleet.len()).map(|m| format!("E{m:04}")).collect();
    for (meter, readings) in meters.iter().zip(fleet) {
        for r in readings {
            b.append_text(&TextRow {
                meter_id: meter,
                channel: "1-0:1.8.0",
                ts_ms: r.ts_ms,
                value: r.value,
                unit: "kWh",
                quality: 0,
                received_at_ms: r.ts_ms + S,
                source: "mqtt",
                format: "json",
            });
        }
    }
    let config = ParquetConfig {
        row_group_rows: 16,
        ..Default::default()
    };
    let sink = ParquetSink::open_named(dir, config, "prop").unwrap();
    sink.write_named(&b.finish(), "prop").unwrap();
}

/// Day 07-23 and night in Berlin: the rows' tariff shares and max demand are compared too.
const TARIFF: &str = "name = \"t\"\n[[period]]\nname = \"day\"\nfrom = \"07:00\"\nto = \"23:00\"\n\
                      [[period]]\nname = \"night\"\n";

fn bill_rows(from: i64, to: i64, readings: &[Reading]) -> Vec<BillRow> {
    let bill = Bill::new(Query {
        from_ms: from,
        to_ms: to,
        zone: Zone::parse("Europe/Berlin", "zone").unwrap(),
        tariff: Some(Tariff::from_toml(TARIFF, "t.toml").unwrap()),
        max_gap_ms: GAP,
    });
    bill.register("m", "1-0:1.8.0", "kWh", readings, None)
}

fn total(rows: &[BillRow]) -> f64 {
    rows.iter().map(|row| row.consumption).sum()
}

/// Whether two bills of one register say the same: edges (value and kind), each period's
/// consumption and max demand, resets, readings.
fn same_rows(a: &[BillRow], b: &[BillRow]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.period == y.period
                && x.start.kind == y.start.kind
                && x.end.kind == y.end.kind
                && close(x.start.value, y.start.value)
                && close(x.end.value, y.end.value)
                && close(x.consumption, y.consumption)
                && match (x.max_demand_kw, y.max_demand_kw) {
                    (Some(p), Some(q)) => close(p, q),
                    (p, q) => p == q,
                }
                && x.resets == y.resets
                && x.readings == y.readings
        })
}

/// Each register's consumption of `[from, to)` billed from what the Parquet read delivers,
/// by meter; checked against the bill from all of the register's readings.
fn bill_from_parquet(
    dir: &Path,
    fleet: &[Vec<Reading>],
    from: i64,
    to: i64,
) -> BTreeMap<String, f64> {
    let request = ReadRequest {
        from_ms: from,
        to_ms: to,
        margin_ms: GAP,
        meter: None,
        channels: Channels::CumulativeRegisters,
        // As `query billing` asks: the reading before only.
        neighbours: Neighbours::Before,
        before_since_ms: None,
        silent_since_ms: Some(from - LOOK_BACK),
    };
    let mut out = BTreeMap::new();
    readings::parquet::read(dir, &request, |s: Series| {
        let points: Vec<Reading> = s
            .points
            .iter()
            .map(|&(ts_ms, value)| Reading { ts_ms, value })
            .collect();
        out.insert(s.meter_id, bill_rows(from, to, &points));
        Ok::<_, StorageError>(())
    })
    .unwrap();
    let out: BTreeMap<String, f64> = fleet
        .iter()
        .enumerate()
        .filter_map(|(m, readings)| {
            let meter = format!("E{m:04}");
            let full_rows = bill_rows(from, to, readings);
            let full = total(&full_rows);
            match out.get(&meter) {
                Some(got) => {
                    assert!(
                        same_rows(got, &full_rows),
                        "{meter} [{from}, {to}): {got:?} from the read, {full_rows:?} from every reading"
                    );
                    Some((meter, total(got)))
                }
                None => {
                    // Left out: no reading in the window nor within the look-back before it.
                    assert!(
                        readings
                            .iter()
                            .all(|r| r.ts_ms < from - LOOK_BACK || r.ts_ms > to + GAP),
                        "{meter} [{from}, {to}) left out but has readings near it"
                    );
                    assert!(
                        close(full, 0.0),
                        "{meter} [{from}, {to}) left out but billed {full}"
                    );
                    None
                }
            }
        })
        .collect();
    out
}

fn close(x: f64, y: f64) -> bool {
    (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
}

proptest! {
    // Each case writes and reads a Parquet tree: few cases, many registers each.
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn any_split_adds_up_through_the_parquet_read(
        fleet in prop::collection::vec(register(), 1..8),
        cuts in prop::collection::vec(-30 * 86_400i64..200 * 86_400, 3),
        on_reading in any::<prop::sample::Index>(),
        use_reading in any::<bool>(),
    ) {
        let mut cuts: Vec<i64> = cuts.into_iter().map(|s| T0 + s * S).collect();
        if use_reading {
            // The middle edge exactly on a reading of the first register.
            cuts[1] = fleet[0][on_reading.index(fleet[0].len())].ts_ms;
        }
        cuts.sort_unstable();
        let (a, b, c) = (cuts[0], cuts[1], cuts[2]);
        prop_assume!(a < b && b < c);
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &fleet);
        let first = bill_from_parquet(dir.path(), &fleet, a, b);
        let second = bill_from_parquet(dir.path(), &fleet, b, c);
        let whole = bill_from_parquet(dir.path(), &fleet, a, c);
        for m in 0..fleet.len() {
            let meter = format!("E{m:04}");
            let part = |bills: &BTreeMap<String, f64>| bills.get(&meter).copied().unwrap_or(0.0);
            let (x, y, z) = (part(&first), part(&second), part(&whole));
            prop_assert!(close(x + y, z), "{meter}: {x} + {y} != {z} for a={a} b={b} c={c}");
        }
    }
}
