//! `meterflow query balance` against a computation written here, on the Parquet tree and on
//! ClickHouse 18.16: two feeders with head meters and customers over six Berlin days with
//! the spring DST day (23 hours), a customer that exports (its net counts), one whose
//! register resets, one that moves to the other feeder mid-period, one silent for a day and
//! a half (missing, never taken as 0), a transformer head (not counted in a feeder's
//! balance), and a gas meter (not electricity).

use std::collections::BTreeMap;
use std::path::Path;

use chrono::NaiveDate;

use crate::harness::{config_file, import_canonical_csv, query_csv, ClickHouse, BIN};

const QUARTER_MS: i64 = 900_000;

fn midnight(day: NaiveDate) -> i64 {
    meterflow_billing::Zone::parse("Europe/Berlin", "tz")
        .unwrap()
        .midnight(day)
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A deterministic energy for a quarter hour of a meter (kWh), different per meter and time.
fn quarter_kwh(seed: u64, q: i64) -> f64 {
    let x = (seed.wrapping_mul(6364136223846793005) ^ (q as u64).wrapping_mul(1442695040888963407))
        >> 40;
    0.05 + (x % 1000) as f64 / 4000.0
}

struct Meter {
    id: &'static str,
    seed: u64,
    /// Its channels: import, and export for a prosumer (a quarter's export is a share of
    /// its import energy).
    exports: bool,
    /// A quarter from which its register counts from 0 again.
    reset_at: Option<i64>,
    /// A span with no readings, [from, to).
    silent: Option<(i64, i64)>,
    /// Not an energy meter in kWh (gas in m3).
    gas: bool,
}

#[test]
fn balance_per_feeder_equals_a_computation_in_the_test_on_both_sources() {
    let days: Vec<NaiveDate> = (28..=31)
        .map(|d| NaiveDate::from_ymd_opt(2025, 3, d).unwrap())
        .chain((1..=2).map(|d| NaiveDate::from_ymd_opt(2025, 4, d).unwrap()))
        .collect();
    let start = midnight(days[0]);
    let end = midnight(NaiveDate::from_ymd_opt(2025, 4, 3).unwrap());
    // C4 hears nothing on 30 March and until noon on the 31st: the 30th has no reading (not
    // known); the edges around it are interpolated (billing's gap is 7 days).
    let silent = (midnight(days[2]), midnight(days[3]) + 12 * 3_600_000);
    let meters = [
        Meter {
            id: "H1",
            seed: 1,
            exports: false,
            reset_at: None,
            silent: None,
            gas: false,
        },
        Meter {
            id: "H2",
            seed: 2,
            exports: false,
            reset_at: None,
            silent: None,
            gas: false,
        },
        Meter {
            id: "C1",
            seed: 3,
            exports: true,
            reset_at: None,
            silent: None,
            gas: false,
        },
        Meter {
            id: "C2",
            seed: 4,
            exports: false,
            reset_at: Some((end - start) / QUARTER_MS / 2 + 7),
            silent: None,
            gas: false,
        },
        Meter {
            id: "C3",
            seed: 5,
            exports: false,
            reset_at: None,
            silent: None,
            gas: false,
        },
        Meter {
            id: "C4",
            seed: 6,
            exports: false,
            reset_at: None,
            silent: Some(silent),
            gas: false,
        },
        Meter {
            id: "T1",
            seed: 7,
            exports: false,
            reset_at: None,
            silent: None,
            gas: false,
        },
        Meter {
            id: "G1",
            seed: 8,
            exports: false,
            reset_at: None,
            silent: None,
            gas: true,
        },
        // A customer of feeder F3, which has no head meter.
        Meter {
            id: "U1",
            seed: 9,
            exports: false,
            reset_at: None,
            silent: None,
            gas: false,
        },
    ];
    // Readings every quarter hour from a day before to a day after.
    let mut csv = String::from("meter_id,channel,ts,value,unit\n");
    let (first, last) = (start - 86_400_000, end + 86_400_000);
    for m in &meters {
        let (mut import, mut export) = (1000.0 * m.seed as f64, 0.0);
        let mut ts = first;
        let mut q = 0;
        while ts <= last {
            if ts > first {
                // A head meter measures about its customers' energy and the losses.
                let e = quarter_kwh(m.seed, q) * if m.id.starts_with('H') { 3.5 } else { 1.0 };
                let x = if m.exports { e * 0.3 } else { 0.0 };
                if m.reset_at == Some(q) {
                    import = 0.0;
                }
                import += e;
                export += x;
            }
            let heard = m.silent.is_none_or(|(a, b)| ts < a || ts >= b);
            if heard {
                let (channel, unit) = if m.gas {
                    ("0-1:24.2.1", "m3")
                } else {
                    ("1-0:1.8.0", "kWh")
                };
                csv.push_str(&format!(
                    "{},{channel},{},{import:.6},{unit}\n",
                    m.id,
                    rfc3339(ts)
                ));
                if m.exports {
                    csv.push_str(&format!(
                        "{},1-0:2.8.0,{},{export:.6},kWh\n",
                        m.id,
                        rfc3339(ts)
                    ));
                }
            }
            ts += QUARTER_MS;
            q += 1;
        }
    }
    let registry = "meter_id,kind,district,feeder,transformer,role,valid_from,valid_to\n\
        H1,electricity,North,F1,,feeder_head,,\n\
        H2,electricity,North,F2,,feeder_head,,\n\
        C1,electricity,North,F1,T9,customer,,\n\
        C2,electricity,North,F1,T9,customer,,\n\
        C3,electricity,North,F1,T9,customer,,2025-03-31\n\
        C3,electricity,North,F2,,customer,2025-03-31,\n\
        C4,electricity,North,F2,,customer,,\n\
        T1,electricity,North,F1,T9,transformer_head,,\n\
        G1,gas,North,F1,,customer,,\n\
        U1,electricity,North,F3,,customer,,\n";

    // The computation: per meter and local day, the register's value at both midnights (a
    // reading there, else the line between the readings around it) and the positive steps
    // between (a fall to below 1 % counts from the new value), import minus export; a day
    // without a reading is not known.
    let mut series: BTreeMap<(&str, bool), Vec<(i64, f64)>> = BTreeMap::new();
    for line in csv.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let ts = chrono::DateTime::parse_from_rfc3339(f[2])
            .unwrap()
            .timestamp_millis();
        let meter: &str = meters.iter().find(|m| m.id == f[0]).unwrap().id;
        series
            .entry((meter, f[1] == "1-0:2.8.0"))
            .or_default()
            .push((ts, f[3].parse().unwrap()));
    }
    let at = |points: &[(i64, f64)], t: i64| -> f64 {
        let i = points.partition_point(|p| p.0 < t);
        if points.get(i).is_some_and(|p| p.0 == t) {
            return points[i].1;
        }
        let ((t0, v0), (t1, v1)) = (points[i - 1], points[i]);
        v0 + (v1 - v0) * (t - t0) as f64 / (t1 - t0) as f64
    };
    let steps = |points: &[(i64, f64)], d0: i64, d1: i64| -> Option<f64> {
        if !points.iter().any(|p| d0 <= p.0 && p.0 < d1) {
            return None;
        }
        let mut path = vec![at(points, d0)];
        path.extend(points.iter().filter(|p| d0 < p.0 && p.0 < d1).map(|p| p.1));
        path.push(at(points, d1));
        Some(
            path.windows(2)
                .map(|w| {
                    if w[1] >= w[0] {
                        w[1] - w[0]
                    } else if w[1] < 0.01 * w[0] {
                        w[1]
                    } else {
                        0.0
                    }
                })
                .sum(),
        )
    };
    let day_energy = |m: &Meter, d0: i64, d1: i64| -> Option<f64> {
        let import = steps(&series[&(m.id, false)], d0, d1)?;
        let export = match series.get(&(m.id, true)) {
            Some(points) => steps(points, d0, d1)?,
            None => 0.0,
        };
        Some(import - export)
    };
    let feeder_of = |id: &str, day: NaiveDate| -> Option<&str> {
        let moved = NaiveDate::from_ymd_opt(2025, 3, 31).unwrap();
        match id {
            "H1" | "C1" | "C2" => Some("F1"),
            "H2" | "C4" => Some("F2"),
            "C3" if day < moved => Some("F1"),
            "C3" => Some("F2"),
            _ => None, // T1: a transformer head; G1: gas
        }
    };
    let mut want: Vec<String> = Vec::new();
    for feeder in ["F1", "F2"] {
        for day in &days {
            let (d0, d1) = (midnight(*day), midnight(day.succ_opt().unwrap()));
            let (mut head, mut customers, mut n, mut missing) = (0.0, 0.0, 0, 0);
            for m in meters
                .iter()
                .filter(|m| feeder_of(m.id, *day) == Some(feeder))
            {
                let e = day_energy(m, d0, d1);
                if m.id.starts_with('H') {
                    head = e.unwrap();
                } else {
                    n += 1;
                    match e {
                        Some(e) => customers += e,
                        None => missing += 1,
                    }
                }
            }
            let loss = head - customers;
            want.push(format!(
                "{feeder},{day},{head:.6},{customers:.6},{loss:.6},{:.6},{},{n},{missing}",
                100.0 * loss / head,
                if missing == 0 { "yes" } else { "no" }
            ));
        }
    }
    // C4 is not known on 30 March only.
    assert_eq!(
        want.iter().filter(|w| w.ends_with(",1")).count(),
        1,
        "{want:#?}"
    );

    let check = |config: &str, source: &str| {
        let out = query_csv(
            config,
            &[
                "balance",
                "--level",
                "feeder",
                "--from",
                "2025-03-28",
                "--to",
                "2025-04-03",
                "--tz",
                "Europe/Berlin",
            ],
        );
        // F3 has no head: its rows say so (no loss), and are left out of the comparison.
        let no_head: Vec<&str> = out.lines().filter(|l| l.contains(",F3,")).collect();
        assert_eq!(no_head.len(), 6, "{out}");
        assert!(
            no_head.iter().all(|l| l.split(',').nth(5) == Some("")),
            "{out}"
        );
        let got: Vec<String> = out
            .lines()
            .skip(1)
            .filter(|l| !l.contains(",F3,"))
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                assert_eq!(f[0], "feeder");
                let n = |i: usize| format!("{:.6}", f[i].parse::<f64>().unwrap());
                format!(
                    "{},{},{},{},{},{},{},{},{}",
                    f[1],
                    f[2],
                    n(3),
                    n(4),
                    n(5),
                    n(6),
                    f[7],
                    f[10],
                    f[11]
                )
            })
            .collect();
        assert_eq!(got, want, "{source}: {out}");
        out
    };
    let dir = tempfile::tempdir().unwrap();
    let readings = dir.path().join("readings.csv");
    std::fs::write(&readings, &csv).unwrap();
    let meters_csv = dir.path().join("meters.csv");
    std::fs::write(&meters_csv, registry).unwrap();
    let import_registry = |config: &str| {
        let out = std::process::Command::new(BIN)
            .args([
                "registry",
                "import",
                "--config",
                config,
                "--tz",
                "Europe/Berlin",
            ])
            .arg(&meters_csv)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };

    let (_c1, parquet) = config_file(&format!(
        "data_dir = \"{}\"\n[billing]\ntimezone = \"Europe/Berlin\"\n",
        dir.path().join("files").display()
    ));
    import_canonical_csv(&parquet, Path::new(&readings));
    // Without a registry: refused with what to do.
    let out = std::process::Command::new(BIN)
        .args([
            "query", "--config", &parquet, "balance", "--level", "feeder",
        ])
        .args(["--from", "2025-03-28", "--to", "2025-04-03"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("registry import"));
    import_registry(&parquet);
    let from_files = check(&parquet, "parquet");

    let ch = ClickHouse::shared();
    let db = ClickHouse::fresh_database("mf_balance");
    let (_c2, clickhouse) = config_file(&format!(
        "data_dir = \"{}\"\n[billing]\ntimezone = \"Europe/Berlin\"\n[clickhouse]\nurl = \"{}\"\ndatabase = \"{db}\"\n",
        dir.path().join("ch").display(),
        ch.url
    ));
    import_canonical_csv(&clickhouse, Path::new(&readings));
    import_registry(&clickhouse);
    assert_eq!(check(&clickhouse, "clickhouse"), from_files);

    // The district: both feeder heads against their customers; U1 is on a feeder without a
    // head, so no head measured it: counted apart, not in the loss.
    let district = query_csv(
        &parquet,
        &[
            "balance",
            "--level",
            "district",
            "--from",
            "2025-03-28",
            "--to",
            "2025-04-03",
            "--tz",
            "Europe/Berlin",
        ],
    );
    let feeders: Vec<Vec<&str>> = from_files
        .lines()
        .skip(1)
        .filter(|l| !l.contains(",F3,"))
        .map(|l| l.split(',').collect())
        .collect();
    for (i, line) in district.lines().skip(1).enumerate() {
        let f: Vec<&str> = line.split(',').collect();
        let day = f[2];
        let of_day: Vec<&Vec<&str>> = feeders.iter().filter(|r| r[2] == day).collect();
        assert_eq!(of_day.len(), 2, "{day}");
        let sum = |c: usize| {
            of_day
                .iter()
                .map(|r| r[c].parse::<f64>().unwrap())
                .sum::<f64>()
        };
        assert!(
            (f[5].parse::<f64>().unwrap() - sum(5)).abs() < 1e-5,
            "{i}: {line}"
        );
        assert_eq!(f[12], "1", "U1 unmetered: {line}");
        assert_eq!(f[10].parse::<usize>().unwrap(), sum(10) as usize, "{line}");
    }
    assert_eq!(district.lines().count(), 1 + 6, "{district}");

    // The transformer level: T9's head against C1, C2 (and C3 until it moved).
    let transformer = query_csv(
        &parquet,
        &[
            "balance",
            "--level",
            "transformer",
            "--from",
            "2025-03-28",
            "--to",
            "2025-03-29",
        ],
    );
    let row: Vec<&str> = transformer.lines().nth(1).unwrap().split(',').collect();
    assert_eq!((row[1], row[10]), ("T9", "3"), "{transformer}");
}
