//! `meterflow query billing` end to end: the same readings imported into a real ClickHouse
//! and into the Parquet tree, billed from both, the answers identical, and checked against
//! figures computed by hand and against an independent computation in Python
//! (tests/it/billing_reference.py, written from the README's rules with Python's own time
//! zones).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use crate::harness::{config_file, import_canonical_csv, query_csv, ClickHouse, BIN};

const H: i64 = 3_600_000;

/// One reading as the test writes it.
#[derive(Debug, Clone)]
struct Reading {
    meter: String,
    channel: &'static str,
    /// Unix ms, whole seconds (ClickHouse 18.16 keeps seconds).
    ts_ms: i64,
    value: f64,
    unit: &'static str,
}

fn reading(
    meter: &str,
    channel: &'static str,
    ts_ms: i64,
    value: f64,
    unit: &'static str,
) -> Reading {
    Reading {
        meter: meter.to_string(),
        channel,
        ts_ms,
        value,
        unit,
    }
}

fn utc_ms(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap()
        .timestamp_millis()
}

fn write_csv(path: &Path, readings: &[Reading]) {
    let mut text = String::from("meter_id,channel,ts,value,unit\n");
    for r in readings {
        text.push_str(&format!(
            "{},{},{},{:?},{}\n",
            r.meter, r.channel, r.ts_ms, r.value, r.unit
        ));
    }
    std::fs::write(path, text).unwrap();
}

/// The same readings in a fresh ClickHouse database and in a Parquet tree: the config of
/// each (ClickHouse's first).
struct Both {
    _dirs: Vec<tempfile::TempDir>,
    clickhouse: String,
    parquet: String,
    db: String,
}

impl Both {
    fn load(readings: &[Reading]) -> Both {
        let ch = ClickHouse::shared();
        let db = ClickHouse::fresh_database("mf_bill");
        let csv_dir = tempfile::tempdir().unwrap();
        let csv = csv_dir.path().join("readings.csv");
        write_csv(&csv, readings);
        let parquet_data = tempfile::tempdir().unwrap();
        let (ch_cfg_dir, clickhouse) = config_file(&format!(
            "data_dir = \"{}\"\n[clickhouse]\nurl = \"{}\"\ndatabase = \"{db}\"\n",
            csv_dir.path().join("ch-data").display(),
            ch.url
        ));
        crate::harness::apply_schema(&clickhouse);
        let (pq_cfg_dir, parquet) = config_file(&format!(
            "data_dir = \"{}\"\n",
            parquet_data.path().display()
        ));
        for config in [&clickhouse, &parquet] {
            import_canonical_csv(config, &csv);
        }
        Both {
            _dirs: vec![csv_dir, parquet_data, ch_cfg_dir, pq_cfg_dir],
            clickhouse,
            parquet,
            db,
        }
    }

    /// `meterflow query --format csv billing ARGS` on both; asserts they answer the same,
    /// byte for byte, and gives the rows.
    fn bill(&self, args: &[&str]) -> Vec<BTreeMap<String, String>> {
        let on_clickhouse = bill_csv(&self.clickhouse, args);
        let on_parquet = bill_csv(&self.parquet, args);
        assert_eq!(
            on_clickhouse, on_parquet,
            "ClickHouse and Parquet differ for {args:?}"
        );
        parse_csv(&on_parquet)
    }
}

impl Drop for Both {
    fn drop(&mut self) {
        ClickHouse::shared().query(&format!("DROP DATABASE IF EXISTS {}", self.db));
    }
}

fn bill_csv(config: &str, args: &[&str]) -> String {
    query_csv(config, &[&["billing"][..], args].concat())
}

/// A CSV without quoted cells (the bills here have none) as maps from column to cell.
fn parse_csv(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    lines
        .map(|l| {
            header
                .iter()
                .zip(l.split(','))
                .map(|(c, v)| (c.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

fn number(row: &BTreeMap<String, String>, column: &str) -> f64 {
    row[column]
        .parse()
        .unwrap_or_else(|_| panic!("{column} in {row:?}"))
}

/// The issue's case: a day split at 06:00 lost the step across 06:00 (50 + 5.5 against 56.5
/// for the whole day, on the former SQL). Now the parts add up to the day, on ClickHouse and
/// on Parquet alike, and each edge says how its value was found.
#[test]
fn a_day_split_at_six_adds_up_to_the_whole_day() {
    let m = "E0001";
    let c = "1-0:1.8.0";
    let day = utc_ms("2026-05-10T00:00:00Z");
    let readings = vec![
        reading(m, c, day - 2 * H, 1000.0, "kWh"),
        reading(m, c, day + 2 * H, 1010.0, "kWh"),
        reading(m, c, day + 5 * H, 1050.0, "kWh"),
        reading(m, c, day + 7 * H, 1052.0, "kWh"),
        reading(m, c, day + 12 * H, 1055.0, "kWh"),
        reading(m, c, day + 18 * H, 1055.5, "kWh"),
        reading(m, c, day + 26 * H, 1060.0, "kWh"),
    ];
    let both = Both::load(&readings);
    let night = both.bill(&["--from", "2026-05-10", "--to", "2026-05-10T06:00"]);
    let rest = both.bill(&["--from", "2026-05-10T06:00", "--to", "2026-05-11"]);
    let whole = both.bill(&["--from", "2026-05-10", "--to", "2026-05-11"]);
    let (night, rest, whole) = (&night[0], &rest[0], &whole[0]);
    // By hand: R(00:00) = 1000 + 10 × 2/4 = 1005; R(06:00) = 1050 + 2 × 1/2 = 1051;
    // R(24:00) = 1055.5 + 4.5 × 6/8 = 1058.875.
    assert_eq!(
        (night["start_value"].as_str(), night["start_read"].as_str()),
        ("1005", "interpolated")
    );
    assert_eq!(night["end_value"], "1051");
    assert_eq!(number(night, "consumption"), 46.0);
    assert_eq!(number(rest, "consumption"), 7.875);
    assert_eq!(number(whole, "consumption"), 53.875);
    assert_eq!(
        number(night, "consumption") + number(rest, "consumption"),
        number(whole, "consumption")
    );
    assert_eq!(whole["readings"], "5");
    assert_eq!(whole["period"], "total");
    assert_eq!(whole["from"], "2026-05-10T00:00:00+00:00");
    assert_eq!(whole["to"], "2026-05-11T00:00:00+00:00");
    // The largest quarter hour: 2 to 5 o'clock, 40 kWh in 3 h, 3.333… kWh a quarter = 13.33 kW.
    assert_eq!(whole["max_demand_kw"], "13.333333");
    // After the last reading: carried, and nothing consumed.
    let later = both.bill(&["--from", "2026-05-12", "--to", "2026-05-13"]);
    assert_eq!(
        (
            later[0]["start_read"].as_str(),
            later[0]["end_read"].as_str(),
            later[0]["consumption"].as_str()
        ),
        ("carried", "carried", "0")
    );
}

/// Local days: in Europe/Berlin the spring day has 23 hours and the autumn day 25, each
/// printed with its offsets; in Asia/Bishkek (UTC+6, no DST) a day starts at 18:00 UTC.
#[test]
fn local_days_in_berlin_and_bishkek() {
    // 1 kWh an hour, read every hour on the hour (UTC), around both switches and in May.
    let mut readings = Vec::new();
    for (start, hours) in [
        ("2026-03-27T00:00:00Z", 96),
        ("2026-10-23T00:00:00Z", 96),
        ("2026-05-08T00:00:00Z", 96),
    ] {
        let t0 = utc_ms(start);
        for h in 0..=hours {
            readings.push(reading(
                "E7",
                "1-0:1.8.0",
                t0 + h * H,
                5000.0 + h as f64,
                "kWh",
            ));
        }
    }
    let both = Both::load(&readings);
    let day = |tz: &str, from: &str, to: &str| {
        let rows = both.bill(&["--tz", tz, "--from", from, "--to", to]);
        assert_eq!(rows.len(), 1, "{rows:?}");
        rows.into_iter().next().unwrap()
    };
    let spring = day("Europe/Berlin", "2026-03-29", "2026-03-30");
    assert_eq!(spring["consumption"], "23");
    assert_eq!(spring["from"], "2026-03-29T00:00:00+01:00");
    assert_eq!(spring["to"], "2026-03-30T00:00:00+02:00");
    assert_eq!(spring["start_read"], "actual");
    let autumn = day("Europe/Berlin", "2026-10-25", "2026-10-26");
    assert_eq!(autumn["consumption"], "25");
    assert_eq!(autumn["from"], "2026-10-25T00:00:00+02:00");
    assert_eq!(autumn["to"], "2026-10-26T00:00:00+01:00");
    let bishkek = day("Asia/Bishkek", "2026-05-10", "2026-05-11");
    assert_eq!(bishkek["consumption"], "24");
    assert_eq!(bishkek["from"], "2026-05-10T00:00:00+06:00");
    // 2026-05-09T18:00Z is reading 42 of the May series: 5000 + 42.
    assert_eq!(bishkek["start_value"], "5042");
    // The same as the UTC instants given with offsets.
    let same = day(
        "UTC",
        "2026-05-10T00:00:00+06:00",
        "2026-05-11T00:00:00+06:00",
    );
    assert_eq!(same["consumption"], "24");
    assert_eq!(same["from"], "2026-05-09T18:00:00+00:00");
}

/// A small deterministic generator (xorshift64*), so the data is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// In [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const TARIFF: &str = r#"
name = "residential-2026"
holidays = ["2026-03-09"]
[[period]]
name = "peak"
days = ["mon", "tue", "wed", "thu", "fri"]
months = [1, 2, 3, 12]
from = "17:00"
to = "20:00"
[[period]]
name = "day"
days = ["mon", "tue", "wed", "thu", "fri"]
from = "07:00"
to = "23:00"
[[period]]
name = "night"
"#;

/// 50 meters × 31 days of March 2026 in Europe/Berlin (the spring switch on the 29th, a
/// holiday on Monday the 9th), irregular reads with gaps (hours, 9 days on one meter, 7¼ days
/// across the month's start on another: a carried start), a reset and a reverse run, an
/// import register read every ~15 minutes and a gas register every ~hour: every row of the
/// time-of-use bill equal to the independent computation to 1e-6, max demand too.
#[test]
fn time_of_use_matches_an_independent_computation() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let start = utc_ms("2026-02-24T00:00:00Z");
    let end = utc_ms("2026-04-05T00:00:00Z");
    let mut readings = Vec::new();
    for m in 0..50 {
        let meter = format!("TOU{m:03}");
        for (channel, unit, every_s) in [("1-0:1.8.0", "kWh", 900), ("0-1:24.2.1", "m3", 3600)] {
            let mut t = start + rng.below(every_s) as i64 * 1000;
            let mut v = 1000.0 + rng.below(50_000) as f64 / 8.0;
            let mut replaced_at: Option<f64> = None;
            while t < end {
                // Mostly on schedule, ± a tenth; sometimes a gap of up to 6 hours.
                let step_s = if rng.below(100) < 3 {
                    (every_s as f64 * (2.0 + rng.unit() * 22.0)) as i64
                } else {
                    (every_s as f64 * (0.9 + rng.unit() * 0.2)) as i64
                };
                t += step_s * 1000;
                // Meter 7 is silent for 9 days (longer than the 7 days interpolated across);
                // meter 11 for 7¼ days across the month's start, so R(from) is carried and
                // the first step is spread from 24 February.
                if m == 7
                    && (utc_ms("2026-03-11T00:00:00Z")..utc_ms("2026-03-20T00:00:00Z")).contains(&t)
                {
                    continue;
                }
                if m == 11
                    && (utc_ms("2026-02-24T06:00:00Z")..utc_ms("2026-03-03T12:00:00Z")).contains(&t)
                {
                    continue;
                }
                let rate = if unit == "kWh" { 0.4 } else { 0.05 };
                v += rate * rng.unit() * step_s as f64 / 900.0;
                // Meter 3's import register is replaced mid-month (a reset), meter 5's runs
                // back a little once.
                let value =
                    if m == 3 && channel == "1-0:1.8.0" && t >= utc_ms("2026-03-15T12:00:00Z") {
                        // The new register starts at 0.5.
                        v - *replaced_at.get_or_insert(v - 0.5)
                    } else {
                        v
                    };
                let value = if m == 5
                    && channel == "1-0:1.8.0"
                    && (utc_ms("2026-03-20T10:00:00Z")..utc_ms("2026-03-20T10:20:00Z")).contains(&t)
                {
                    value - 3.0
                } else {
                    value
                };
                // Three decimals, as meters report.
                readings.push(reading(
                    &meter,
                    channel,
                    t,
                    (value * 1000.0).round() / 1000.0,
                    unit,
                ));
            }
        }
    }
    let both = Both::load(&readings);
    let dir = tempfile::tempdir().unwrap();
    let tariff = dir.path().join("tariff.toml");
    std::fs::write(&tariff, TARIFF).unwrap();
    let csv = dir.path().join("readings.csv");
    write_csv(&csv, &readings);
    let rows = matches_the_reference(&both, &csv, &tariff, "2026-03-01", "2026-04-01");
    assert_eq!(rows.len(), 50 * 2 * 3);
    let mut resets = 0;
    for got in &rows {
        assert_eq!(got["from"], "2026-03-01T00:00:00+01:00");
        assert_eq!(got["to"], "2026-04-01T00:00:00+02:00");
        resets += got["resets"].parse::<u32>().unwrap();
    }
    // Each register's three periods carry its resets: meter 3's one, three times.
    assert_eq!(resets, 3);
    // The periods add up to the total of the same register, and so do two halves of the
    // month split at an odd local instant (on both sources: `bill` compares them).
    let month =
        |from: &str, to: &str| both.bill(&["--tz", "Europe/Berlin", "--from", from, "--to", to]);
    let totals = month("2026-03-01", "2026-04-01");
    // Split points: an odd local instant, the DST switch, inside meter 7's silence, and five
    // drawn at random (to the second, as ClickHouse 18.16 keeps time).
    let mut splits = vec![
        "2026-03-17T13:37:11".to_string(),
        "2026-03-29T03:00:00".to_string(),
        "2026-03-15T00:00:00".to_string(),
    ];
    let march = utc_ms("2026-03-01T00:00:00Z") / 1000;
    for _ in 0..5 {
        let at = march + 86_400 + rng.below(29 * 86_400) as i64;
        splits.push(
            chrono::DateTime::from_timestamp(at, 0)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        );
    }
    for split in &splits {
        let first = month("2026-03-01", split);
        let second = month(split, "2026-04-01");
        assert_eq!((first.len(), second.len()), (100, 100), "{split}");
        for ((total, a), b) in totals.iter().zip(&first).zip(&second) {
            let key = (&total["meter_id"], &total["channel"], split);
            assert_eq!((&a["meter_id"], &a["channel"], split), key);
            assert_eq!((&b["meter_id"], &b["channel"], split), key);
            assert_eq!(a["end_value"], b["start_value"], "{key:?}");
            let parts = number(a, "consumption") + number(b, "consumption");
            // Each printed to 6 decimals.
            assert!(
                (parts - number(total, "consumption")).abs() <= 2e-6,
                "{key:?}: {parts} against {}",
                total["consumption"]
            );
        }
    }
    assert_eq!(totals.len(), 100);
    for total in &totals {
        let sum: f64 = rows
            .iter()
            .filter(|r| r["meter_id"] == total["meter_id"] && r["channel"] == total["channel"])
            .map(|r| number(r, "consumption"))
            .sum();
        assert!(
            (sum - number(total, "consumption")).abs() <= 1e-5,
            "{total:?}: {sum}"
        );
    }

    // A season and a night over midnight, across the month's end: peak in March only, night
    // from 22:00 to 06:00 every day (after the peak: first match), the rest "day". The
    // period 25 March .. 4 April has peak hours on its March weekdays and none in April.
    std::fs::write(&tariff, TARIFF_SEASONS).unwrap();
    let rows = matches_the_reference(&both, &csv, &tariff, "2026-03-25", "2026-04-04");
    assert_eq!(rows.len(), 50 * 2 * 3);
    let peak: f64 = rows
        .iter()
        .filter(|r| r["period"] == "peak")
        .map(|r| number(r, "consumption"))
        .sum();
    assert!(peak > 0.0);
}

/// A tariff with a season (`months`) and a period over midnight, for the bill across a
/// month's end.
const TARIFF_SEASONS: &str = r#"
name = "seasons"
[[period]]
name = "peak"
days = ["mon", "tue", "wed", "thu", "fri"]
months = [3]
from = "17:00"
to = "20:00"
[[period]]
name = "night"
from = "22:00"
to = "06:00"
[[period]]
name = "day"
"#;

/// The time-of-use bill of `[from, to)` in Europe/Berlin on both sources, checked row by row
/// against `billing_reference.py`'s independent computation over the same readings (`csv`),
/// to 1e-6; the rows.
fn matches_the_reference(
    both: &Both,
    csv: &Path,
    tariff: &Path,
    from: &str,
    to: &str,
) -> Vec<BTreeMap<String, String>> {
    let tariff_arg = tariff.to_str().unwrap();
    let rows = both.bill(&[
        "--tz",
        "Europe/Berlin",
        "--from",
        from,
        "--to",
        to,
        "--tariff",
        tariff_arg,
    ]);
    let reference = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/it/billing_reference.py"
        ))
        .args([csv.to_str().unwrap(), tariff_arg, "Europe/Berlin", from, to])
        .arg((7 * 86_400).to_string())
        .output()
        .unwrap();
    assert!(
        reference.status.success(),
        "{}",
        String::from_utf8_lossy(&reference.stderr)
    );
    let expected = parse_csv(&String::from_utf8(reference.stdout).unwrap());
    assert_eq!(rows.len(), expected.len());
    for (got, want) in rows.iter().zip(&expected) {
        let key = (&got["meter_id"], &got["channel"], &got["period"]);
        assert_eq!(key, (&want["meter_id"], &want["channel"], &want["period"]));
        for column in ["consumption", "start_value", "end_value"] {
            let (g, w) = (number(got, column), number(want, column));
            assert!((g - w).abs() <= 1e-6, "{key:?} {column}: {g} against {w}");
        }
        match (
            got["max_demand_kw"].as_str(),
            want["max_demand_kw"].as_str(),
        ) {
            ("", "") => {}
            (g, w) => {
                let (g, w): (f64, f64) = (g.parse().unwrap(), w.parse().unwrap());
                assert!(
                    (g - w).abs() <= 1e-6,
                    "{key:?} max_demand_kw: {g} against {w}"
                );
            }
        }
        for column in ["start_read", "end_read", "resets", "readings"] {
            assert_eq!(got[column], want[column], "{key:?} {column}");
        }
    }
    rows
}

/// The README's "Billing" example runs as written (`meterflow` is this build's binary,
/// `./pilot` a fresh folder) and prints the CSV the README shows.
#[test]
fn the_readme_billing_example_prints_what_the_readme_shows() {
    let readme = include_str!("../../README.md");
    let section = &readme[readme.find("## Billing").unwrap()..];
    let block = |fence: &str| {
        let start = section.find(fence).unwrap() + fence.len();
        let end = start + section[start..].find("```").unwrap();
        section[start..end].to_string()
    };
    let commands = block("```sh\n");
    let shown = block("```csv\n");
    let pilot = tempfile::tempdir().unwrap();
    let script = format!("\n{commands}")
        .replace("\nmeterflow ", &format!("\n{BIN} "))
        .replace("./pilot", &pilot.path().join("pilot").display().to_string());
    let out = Command::new("sh")
        .args(["-ec", &script])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    // The import prints its summary line first; the bill is the rest.
    let bill = &printed[printed.find("meter_id,").unwrap()..];
    assert_eq!(bill, shown);
}

/// Issue 21 review: a meter silent for two months. Carrying the nearer reading put the whole
/// step of the silence at its midpoint, in February, a month with no reading near it and so
/// no bill: January + February + March billed 4 of the quarter's 100. Carried forward, the
/// step is billed in March, the month of the reading after the silence.
#[test]
fn a_long_silence_is_billed_in_the_month_of_the_reading_after_it() {
    let (m, c) = ("E0042", "1-0:1.8.0");
    let day = 24 * H;
    let jan1 = utc_ms("2026-01-01T00:00:00Z");
    let mut readings: Vec<Reading> = (0..5)
        .map(|d| reading(m, c, jan1 + d * day, d as f64, "kWh"))
        .collect();
    let mar31 = utc_ms("2026-03-31T12:00:00Z");
    readings.push(reading(m, c, mar31, 100.0, "kWh"));
    readings.push(reading(m, c, mar31 + day, 101.0, "kWh"));
    let both = Both::load(&readings);
    let bill = |from: &str, to: &str| -> f64 {
        both.bill(&["--from", from, "--to", to])
            .iter()
            .map(|row| number(row, "consumption"))
            .sum()
    };
    let quarter = bill("2026-01-01", "2026-04-01");
    let months = [
        bill("2026-01-01", "2026-02-01"),
        bill("2026-02-01", "2026-03-01"),
        bill("2026-03-01", "2026-04-01"),
    ];
    // R(04-01) = 100 + 1 × 12/24 = 100.5.
    assert_eq!(quarter, 100.5);
    assert_eq!(months, [4.0, 0.0, 96.5]);
    let march = both.bill(&["--from", "2026-03-01", "--to", "2026-04-01"]);
    assert_eq!(
        (
            march[0]["start_value"].as_str(),
            march[0]["start_read"].as_str()
        ),
        ("4", "carried")
    );
}

/// Issue 21 review: a register with no reading in the month nor within the interpolation gap
/// of it dropped out of the bill with no row. Now it gets its row (its last value carried to
/// both edges, consumption 0, no readings) and a note on stderr, when its last reading is
/// within `billing.silent_look_back` (31 days) of the period's start; older, or with the key
/// at 0, it is not listed.
#[test]
fn a_register_silent_through_the_period_gets_a_carried_row() {
    let c = "1-0:1.8.0";
    let day = 24 * H;
    let mar1 = utc_ms("2026-03-01T00:00:00Z");
    let readings = vec![
        // Reports through March.
        reading("E0001", c, mar1 - day, 10.0, "kWh"),
        reading("E0001", c, mar1 + 10 * day, 20.0, "kWh"),
        reading("E0001", c, mar1 + 31 * day, 30.0, "kWh"),
        // Silent since 20 February (9 days before March: beyond the 7-day gap).
        reading("E0002", c, mar1 - 12 * day, 40.0, "kWh"),
        reading("E0002", c, mar1 - 9 * day, 41.5, "kWh"),
        // Silent since 20 January (40 days before March): beyond the look-back.
        reading("E0003", c, mar1 - 40 * day, 7.0, "kWh"),
    ];
    let both = Both::load(&readings);
    let march = ["--from", "2026-03-01", "--to", "2026-04-01"];
    let rows = both.bill(&march);
    let cells = |r: &BTreeMap<String, String>| -> Vec<String> {
        [
            "meter_id",
            "start_value",
            "start_read",
            "end_value",
            "end_read",
            "consumption",
            "readings",
        ]
        .iter()
        .map(|k| r[*k].clone())
        .collect()
    };
    let got: Vec<Vec<String>> = rows.iter().map(cells).collect();
    let want: Vec<Vec<String>> = [
        ["E0001", "10", "carried", "30", "actual", "20", "1"],
        ["E0002", "41.5", "carried", "41.5", "carried", "0", "0"],
    ]
    .iter()
    .map(|r| r.iter().map(|s| s.to_string()).collect())
    .collect();
    assert_eq!(got, want);
    // The note names the count and one register.
    let out = Command::new(BIN)
        .args([
            "query",
            "--format",
            "csv",
            "--config",
            &both.parquet,
            "billing",
        ])
        .args(march)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("1 register(s) have no reading in the period (e.g. E0002 1-0:1.8.0)"),
        "{stderr}"
    );
    // A longer look-back lists E0003 too; 0 lists neither.
    for (look_back, meters) in [
        ("45d", vec!["E0001", "E0002", "E0003"]),
        ("0", vec!["E0001"]),
    ] {
        let mut listed = Vec::new();
        for config in [&both.clickhouse, &both.parquet] {
            let text = std::fs::read_to_string(config).unwrap();
            let changed = format!("{config}.{look_back}.toml");
            std::fs::write(
                &changed,
                format!("{text}\n[billing]\nsilent_look_back = \"{look_back}\"\n"),
            )
            .unwrap();
            listed.push(bill_csv(&changed, &march));
        }
        assert_eq!(listed[0], listed[1], "ClickHouse and Parquet, {look_back}");
        let rows = parse_csv(&listed[1]);
        let got: Vec<&str> = rows.iter().map(|r| r["meter_id"].as_str()).collect();
        assert_eq!(got, meters, "{look_back}");
    }
}

/// Review round 3: a register whose unit changed in the period (Wh, then kWh) was billed as
/// one series in its newest unit: about 5 000 kWh that were never used. It has no row now;
/// the command prints the other rows and exits with an error naming it, on both sources.
#[test]
fn a_register_in_two_units_is_not_billed_and_named() {
    let c = "1-0:1.8.0";
    let mar1 = utc_ms("2026-03-01T00:00:00Z");
    let readings = [
        reading("E0001", c, mar1 + H, 5_000_000.0, "Wh"),
        reading("E0001", c, mar1 + 10 * H, 5_000.25, "kWh"),
        reading("E0002", c, mar1 + H, 10.0, "kWh"),
        reading("E0002", c, mar1 + 10 * H, 12.0, "kWh"),
        // Review round 4: the unit changed while the register was silent, so only the
        // reading the period's start is carried from is in kWh.
        reading("E0003", c, mar1 - 19 * 24 * H, 5_000.0, "kWh"),
        reading("E0003", c, mar1 + 4 * 24 * H, 5_000_250.0, "Wh"),
    ];
    let both = Both::load(&readings);
    for config in [&both.clickhouse, &both.parquet] {
        let out = Command::new(BIN)
            .args(["query", "--format", "csv", "--config", config, "billing"])
            .args(["--from", "2026-03-01", "--to", "2026-03-02"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "an incomplete bill");
        let rows = parse_csv(&String::from_utf8(out.stdout).unwrap());
        let meters: Vec<&str> = rows.iter().map(|r| r["meter_id"].as_str()).collect();
        assert_eq!(meters, ["E0002"]);
        assert_eq!(rows[0]["consumption"], "2");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("2 register(s) not billed")
                && stderr.contains("E0001 1-0:1.8.0 (kWh, Wh)")
                && stderr.contains("E0003 1-0:1.8.0 (Wh, kWh)"),
            "{stderr}"
        );
    }
}

/// Bad questions stop with a message that names what to fix: a span too long to bill at once,
/// a zone that does not exist, a tariff that leaves an instant to no period.
#[test]
fn bad_questions_name_the_flag_or_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let tariff = dir.path().join("gap.toml");
    std::fs::write(
        &tariff,
        "name = \"g\"\n[[period]]\nname = \"day\"\nfrom = \"07:00\"\nto = \"23:00\"\n",
    )
    .unwrap();
    let data = dir.path().display().to_string();
    let refused = |args: &[&str]| -> String {
        let out = Command::new(BIN)
            .args(["query", "billing", "--data-dir", &data])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let e = refused(&["--from", "2020-01-01", "--to", "2026-01-01"]);
    assert!(e.contains("--to") && e.contains("400 days"), "{e}");
    let e = refused(&[
        "--from",
        "2026-01-01",
        "--to",
        "2026-02-01",
        "--tz",
        "Europe/Bishkek",
    ]);
    assert!(e.contains("--tz") && e.contains("Europe/Bishkek"), "{e}");
    let e = refused(&[
        "--from",
        "2026-01-01",
        "--to",
        "2026-02-01",
        "--tariff",
        tariff.to_str().unwrap(),
    ]);
    assert!(
        e.contains("gap.toml") && e.contains("no period takes mon in month 1 at 00:00"),
        "{e}"
    );
}
