//! Consumption is additive: for every register and `a < b < c`, the bill of `[a, b)` plus the
//! bill of `[b, c)` is the bill of `[a, c)`, whatever the readings: irregular times, gaps
//! longer than the interpolation limit, resets, reverse runs, rollovers, edges on a reading
//! or between two, before the first reading or after the last. And a tariff's periods add up
//! to the total.
#![allow(clippy::unwrap_used)]

use meterflow_billing::{Bill, Query, Reading, Tariff, Zone};
use proptest::prelude::*;

const H: i64 = 3_600_000;
const GAP: i64 = 24 * H;

/// A register's readings: each one after the one before by 1 s to 3 days, rising by up to 5,
/// sometimes reset to near zero, sometimes falling a little (a reverse run), sometimes
/// wrapping at 1000 (with a rollover).
fn readings() -> impl Strategy<Value = Vec<Reading>> {
    prop::collection::vec((1_000i64..3 * 24 * H, 0u8..20, 0.0f64..5.0), 1..60).prop_map(|steps| {
        let mut t = 0;
        let mut v = 500.0;
        steps
            .into_iter()
            .map(|(dt, kind, rise)| {
                t += dt;
                v = match kind {
                    0 => rise * 0.1,                 // a reset
                    1 => (v - rise).max(0.0),        // a reverse run
                    2 => (v + rise * 40.0) % 1000.0, // maybe a wrap at 1000
                    _ => v + rise,
                };
                Reading { ts_ms: t, value: v }
            })
            .collect()
    })
}

fn consumption(rs: &[Reading], from: i64, to: i64, rollover: Option<f64>) -> f64 {
    let bill = Bill::new(Query {
        from_ms: from,
        to_ms: to,
        zone: Zone::UTC,
        tariff: None,
        max_gap_ms: GAP,
    });
    bill.register("E1", "1-0:1.8.0", "kWh", rs, rollover)
        .first()
        .map_or(0.0, |row| row.consumption)
}

fn close(x: f64, y: f64) -> bool {
    (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_split_of_a_period_adds_up(
        rs in readings(),
        cuts in prop::collection::vec(-2 * 24 * H..70 * 24 * H, 3),
        on_reading in any::<prop::sample::Index>(),
        use_reading in any::<bool>(),
        rollover in prop::option::of(Just(1000.0)),
    ) {
        let mut cuts = cuts;
        // Sometimes the middle edge is exactly on a reading.
        if use_reading {
            cuts[1] = rs[on_reading.index(rs.len())].ts_ms;
        }
        cuts.sort_unstable();
        let (a, b, c) = (cuts[0], cuts[1], cuts[2]);
        prop_assume!(a < b && b < c);
        let whole = consumption(&rs, a, c, rollover);
        let parts = consumption(&rs, a, b, rollover) + consumption(&rs, b, c, rollover);
        prop_assert!(close(whole, parts), "{whole} != {parts} for a={a} b={b} c={c}");
        prop_assert!(whole >= 0.0);
    }

}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_tariffs_periods_add_up_to_the_total(
        rs in readings(),
        from in 0i64..20 * 24 * H,
        len in H..40 * 24 * H,
    ) {
        let tariff = Tariff::from_toml(
            "name = \"t\"\nholidays = [\"1970-01-05\"]\n\
             [[period]]\nname = \"peak\"\ndays = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"]\nfrom = \"17:00\"\nto = \"21:00\"\n\
             [[period]]\nname = \"night\"\nfrom = \"23:00\"\nto = \"07:00\"\n\
             [[period]]\nname = \"day\"\n",
            "t.toml",
        ).unwrap();
        let zone = Zone::parse("Europe/Berlin", "--tz").unwrap();
        let bill = Bill::new(Query { from_ms: from, to_ms: from + len, zone, tariff: Some(tariff), max_gap_ms: GAP });
        let rows = bill.register("E1", "1-0:1.8.0", "kWh", &rs, None);
        prop_assert_eq!(rows.len(), 3);
        let sum: f64 = rows.iter().map(|r| r.consumption).sum();
        let total = consumption(&rs, from, from + len, None);
        prop_assert!(close(sum, total), "{sum} != {total}");
    }
}
