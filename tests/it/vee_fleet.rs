//! VEE end to end, as issue 23 asks it shown: 100 meters × 30 days of quarter-hourly register
//! reads (Europe/Berlin, the spring DST day inside), with injected faults, imported into
//! ClickHouse and into a Parquet tree alike. `meterflow vee` must find every injection by
//! its rule and nothing on the clean meters, estimate the one-hour gap on the line to 1e-9,
//! leave the actual reads untouched (a hash of them before and after), and `query billing`
//! as billed must equal a computation written here over the series as billed.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::process::Command;

use crate::harness::{config_file, import_canonical_csv, query_csv, ClickHouse, BIN};

const MIN15: i64 = 900_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;
/// 2024-03-15T00:00:00+01:00, the period's start (local midnight in Berlin).
const FROM: i64 = 1_710_457_200_000;
/// 2024-04-14T00:00:00+02:00, its end: 30 local days, one of them 23 hours long.
const TO: i64 = 1_713_045_600_000;
/// The history VEE reads before the period (its statistics), and a day after it.
const DATA_FROM: i64 = FROM - 36 * DAY;
const DATA_TO: i64 = TO + DAY;

const REGISTER: &str = "1-0:1.8.0";
const VOLTAGE: &str = "1-0:32.7.0";

/// `YYYY-MM-DDTHH:MM` Berlin local time, in Unix ms (the hours used here are not in a DST
/// change: +01:00 before 31 March, +02:00 after).
fn berlin(text: &str) -> i64 {
    let naive = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M").unwrap();
    let offset = if naive.date() < chrono::NaiveDate::from_ymd_opt(2024, 3, 31).unwrap() {
        HOUR
    } else {
        2 * HOUR
    };
    naive.and_utc().timestamp_millis() - offset
}

/// The faults, one meter each.
struct Injections {
    gap_1h: Vec<i64>,
    gap_6h: Vec<i64>,
    gap_3d: Vec<i64>,
    spike_at: i64,
    reverse_from: i64,
    stuck: (i64, i64),
    clock_day: (i64, i64),
    conflict_at: i64,
    reset_at: i64,
}

fn injections() -> Injections {
    let slots = |from: &str, to: &str| -> Vec<i64> {
        (berlin(from)..=berlin(to))
            .step_by(MIN15 as usize)
            .collect()
    };
    Injections {
        gap_1h: slots("2024-03-20T10:15", "2024-03-20T11:00"),
        gap_6h: slots("2024-03-25T08:15", "2024-03-25T14:00"),
        // Three local days: the estimates touch no fourth day (that would be
        // `prolonged_estimation`, more than 3 days in a row).
        gap_3d: slots("2024-04-02T00:00", "2024-04-04T23:45"),
        spike_at: berlin("2024-03-22T12:00"),
        reverse_from: berlin("2024-03-28T12:00"),
        stuck: (berlin("2024-04-08T00:00"), berlin("2024-04-12T00:00")),
        clock_day: (berlin("2024-04-10T00:00"), berlin("2024-04-11T00:00")),
        conflict_at: berlin("2024-03-18T09:00"),
        reset_at: berlin("2024-03-26T06:00"),
    }
}

/// The consumption of meter `m` in the quarter hour ending at `t`: a day and night profile,
/// a size per meter and a little variation.
fn step(m: usize, t: i64) -> f64 {
    let local_hour = ((t + 2 * HOUR).rem_euclid(DAY)) / HOUR;
    let base = if (7..22).contains(&local_hour) {
        0.25
    } else {
        0.05
    };
    let wobble = ((m as i64 * 7 + t / MIN15 * 13).rem_euclid(5)) as f64 * 0.01;
    (base + wobble) * (1.0 + m as f64 / 100.0)
}

fn meter_id(m: usize) -> String {
    format!("E{m:03}")
}

/// Every reading of the fleet as the meters sent them: (meter, channel, ts, value).
fn fleet(inj: &Injections) -> Vec<(String, &'static str, i64, f64)> {
    let mut rows = Vec::new();
    for m in 0..100 {
        let id = meter_id(m);
        let mut value = 1000.0 + m as f64 * 10.0;
        let mut t = DATA_FROM;
        while t <= DATA_TO {
            let counting = !(m == 6 && (inj.stuck.0..inj.stuck.1).contains(&t));
            if counting {
                value += step(m, t);
            }
            if m == 9 && t == inj.reset_at {
                value = step(m, t);
            }
            if m == 5 && t == inj.reverse_from {
                value -= 20.0;
            }
            let mut sent = value;
            if m == 4 && t == inj.spike_at {
                sent += 300.0;
            }
            let missing = match m {
                1 => inj.gap_1h.contains(&t),
                2 => inj.gap_6h.contains(&t),
                3 => inj.gap_3d.contains(&t),
                _ => false,
            };
            if !missing {
                rows.push((id.clone(), REGISTER, t, sent));
            }
            if m == 6 {
                let volts = 229.0 + ((t / MIN15) % 7) as f64 * 0.5;
                rows.push((id.clone(), VOLTAGE, t, volts));
            }
            t += MIN15;
        }
    }
    rows
}

/// Writes the fleet: a CSV of every meter but E007, and a canonical Parquet file of E007
/// whose clock day is stamped two hours after its receipt (the CSV import takes a reading's
/// receipt to be its time).
fn write_inputs(dir: &Path, inj: &Injections) -> (std::path::PathBuf, std::path::PathBuf) {
    let rows = fleet(inj);
    let mut csv = String::from("meter_id,channel,ts,value,unit\n");
    let mut clock = meterflow_proto::ReadingBatchBuilder::with_capacity(8192);
    for (meter, channel, ts, value) in &rows {
        let unit = if *channel == VOLTAGE { "V" } else { "kWh" };
        if meter == "E007" {
            let shifted = (inj.clock_day.0..inj.clock_day.1).contains(ts);
            clock.append_text(&meterflow_proto::TextRow {
                meter_id: meter,
                channel,
                ts_ms: *ts,
                value: *value,
                unit,
                quality: 0,
                received_at_ms: if shifted { ts - 2 * HOUR } else { *ts },
                source: "import",
                format: "csv",
            });
        } else {
            csv.push_str(&format!("{meter},{channel},{ts},{value:?},{unit}\n"));
        }
    }
    let csv_path = dir.join("fleet.csv");
    std::fs::write(&csv_path, csv).unwrap();
    let parquet_path = dir.join("e007.parquet");
    let batch = clock.finish();
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&parquet_path).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    (csv_path, parquet_path)
}

fn meterflow(config: &str, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .args(["--config", config])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A hash of every actual reading a source holds.
fn raw_hash(config: &str, ch: Option<(&ClickHouse, &str)>, data_dir: &Path) -> String {
    match ch {
        Some((ch, db)) => ch.query(&format!(
            "SELECT count(), sum(cityHash64(meter_id, channel, toString(ts), value, unit, toString(received_at))) FROM {db}.readings"
        )),
        None => {
            let _ = config;
            let mut files: Vec<std::path::PathBuf> = Vec::new();
            let mut stack = vec![data_dir.join("readings")];
            while let Some(dir) = stack.pop() {
                for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                    if entry.file_type().unwrap().is_dir() {
                        stack.push(entry.path());
                    } else {
                        files.push(entry.path());
                    }
                }
            }
            files.sort();
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            for f in &files {
                f.hash(&mut hasher);
                std::fs::read(f).unwrap().hash(&mut hasher);
            }
            format!("{} files {:x}", files.len(), hasher.finish())
        }
    }
}

/// A CSV with a header (cells quoted where they hold a comma or a quote) as rows of named
/// cells.
fn records(csv: &str) -> Vec<BTreeMap<String, String>> {
    fn cells(line: &str) -> Vec<String> {
        let mut out = vec![String::new()];
        let mut quoted = false;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match (c, quoted) {
                ('"', true) if chars.peek() == Some(&'"') => {
                    chars.next();
                    out.last_mut().unwrap().push('"');
                }
                ('"', _) => quoted = !quoted,
                (',', false) => out.push(String::new()),
                (c, _) => out.last_mut().unwrap().push(c),
            }
        }
        out
    }
    let mut lines = csv.lines();
    let header = cells(lines.next().unwrap_or_default());
    lines
        .map(|l| header.iter().cloned().zip(cells(l)).collect())
        .collect()
}

/// Consumption over `[from, to]` of a register series holding reads at both ends: its
/// positive steps, a fall to below 1 % of the value before counting on from the new value
/// (a reset), any other fall adding nothing.
fn consumption(points: &[(i64, f64)], from: i64, to: i64) -> f64 {
    let inside: Vec<f64> = points
        .iter()
        .filter(|(t, _)| (from..=to).contains(t))
        .map(|&(_, v)| v)
        .collect();
    inside
        .windows(2)
        .map(|w| {
            let d = w[1] - w[0];
            if d >= 0.0 {
                d
            } else if w[1] < 0.01 * w[0] {
                w[1]
            } else {
                0.0
            }
        })
        .sum()
}

#[test]
fn a_fleet_with_injected_faults_is_judged_estimated_and_billed_alike_on_both_sources() {
    let inj = injections();
    let dir = tempfile::tempdir().unwrap();
    let (csv, e007) = write_inputs(dir.path(), &inj);
    let ch = ClickHouse::shared();
    let db = ClickHouse::fresh_database("mf_vee_fleet");
    let settings = "[billing]\ntimezone = \"Europe/Berlin\"\n";
    let (_ch_dir, on_clickhouse) = config_file(&format!(
        "data_dir = \"{}\"\n{settings}[clickhouse]\nurl = \"{}\"\ndatabase = \"{db}\"\n",
        dir.path().join("ch-data").display(),
        ch.url
    ));
    crate::harness::apply_schema(&on_clickhouse);
    let pq_data = dir.path().join("pq");
    let (_pq_dir, on_parquet) =
        config_file(&format!("data_dir = \"{}\"\n{settings}", pq_data.display()));
    // On ClickHouse the two copies of the conflicting reading are two rows only until the
    // parts merge (ReplacingMergeTree keeps one): merges wait until VEE has judged.
    ch.query(&format!("SYSTEM STOP MERGES {db}.readings"));
    let duplicate = dir.path().join("duplicate.csv");
    let conflict_value = fleet(&inj)
        .into_iter()
        .find(|r| r.0 == "E008" && r.1 == REGISTER && r.2 == inj.conflict_at)
        .unwrap()
        .3;
    std::fs::write(
        &duplicate,
        format!(
            "meter_id,channel,ts,value,unit\nE008,{REGISTER},{},{:?},kWh\n",
            inj.conflict_at,
            conflict_value + 0.5
        ),
    )
    .unwrap();
    for config in [&on_clickhouse, &on_parquet] {
        import_canonical_csv(config, &csv);
        meterflow(config, &["import", e007.to_str().unwrap()]);
        import_canonical_csv(config, &duplicate);
    }
    let sources = [
        (on_clickhouse.as_str(), Some((&ch, db.as_str()))),
        (on_parquet.as_str(), None),
    ];
    let before: Vec<String> = sources
        .iter()
        .map(|(config, c)| raw_hash(config, *c, &pq_data))
        .collect();

    let period = ["--from", "2024-03-15", "--to", "2024-04-14"];
    let mut judged = Vec::new();
    for (config, _) in &sources {
        let mut args = vec!["vee", "--format", "csv"];
        args.extend_from_slice(&period);
        judged.push(meterflow(config, &args));
    }
    assert_eq!(judged[0], judged[1], "ClickHouse and Parquet judge alike");
    let found = records(&judged[0]);
    let by_meter: BTreeMap<&str, BTreeSet<&str>> =
        found.iter().fold(BTreeMap::new(), |mut m, e| {
            m.entry(e["meter_id"].as_str())
                .or_default()
                .insert(e["rule"].as_str());
            m
        });
    eprintln!("{}", judged[0]);
    let want: BTreeMap<&str, BTreeSet<&str>> = [
        ("E001", &["gap"][..]),
        ("E002", &["gap"]),
        ("E003", &["gap"]),
        ("E004", &["spike"]),
        ("E005", &["reverse"]),
        // The stuck register's days have no consumption: each is also far below the
        // meter's average day.
        ("E006", &["high_low", "stuck"]),
        ("E007", &["clock"]),
        ("E008", &["conflict"]),
        ("E009", &["reset"]),
    ]
    .into_iter()
    .map(|(m, rules)| (m, rules.iter().copied().collect()))
    .collect();
    assert_eq!(by_meter, want, "{}", judged[0]);

    // Where each was found, and how it was mended.
    let one = |meter: &str, rule: &str| -> &BTreeMap<String, String> {
        let hits: Vec<_> = found
            .iter()
            .filter(|e| e["meter_id"] == meter && e["rule"] == rule)
            .collect();
        assert_eq!(hits.len(), 1, "{meter} {rule}: {}", judged[0]);
        hits[0]
    };
    let zone = |ms: i64| {
        let z = meterflow_billing::Zone::parse("Europe/Berlin", "tz").unwrap();
        z.format(ms)
    };
    // A gap is one exception per local day it covers (a day's exceptions are those of the
    // latest run that judged it), each with its day's estimates.
    for (meter, gap, method, days) in [
        ("E001", &inj.gap_1h, "linear", 1),
        ("E002", &inj.gap_6h, "proration", 1),
        ("E003", &inj.gap_3d, "proration", 3),
    ] {
        let pieces: Vec<_> = found
            .iter()
            .filter(|e| e["meter_id"] == meter && e["rule"] == "gap")
            .collect();
        assert_eq!(pieces.len(), days, "{meter}: {}", judged[0]);
        assert_eq!(pieces[0]["from"], zone(gap[0]), "{pieces:?}");
        assert_eq!(
            pieces[days - 1]["to"],
            zone(*gap.last().unwrap()),
            "{pieces:?}"
        );
        for e in &pieces {
            assert_eq!(
                (e["estimated"].as_str(), e["method"].as_str()),
                ("yes", method)
            );
        }
        let values: usize = pieces
            .iter()
            .map(|e| e["values"].parse::<usize>().unwrap())
            .sum();
        assert_eq!(values, gap.len(), "{pieces:?}");
    }
    assert_eq!(one("E004", "spike")["from"], zone(inj.spike_at));
    assert_eq!(one("E004", "spike")["method"], "substitute");
    // A fall is the step from the read before to the read that fell.
    assert_eq!(one("E005", "reverse")["to"], zone(inj.reverse_from));
    assert_eq!(one("E008", "conflict")["from"], zone(inj.conflict_at));
    assert_eq!(one("E009", "reset")["to"], zone(inj.reset_at));
    assert_eq!(one("E007", "clock")["from"], zone(inj.clock_day.0));

    // The actual reads are as they were.
    let after: Vec<String> = sources
        .iter()
        .map(|(config, c)| raw_hash(config, *c, &pq_data))
        .collect();
    assert_eq!(before, after);

    // Each mended meter's series as billed, from each source; the one-hour gap on the line
    // between the reads around it, computed here.
    let truth = fleet(&inj);
    let series_of = |meter: &str| -> Vec<(i64, f64)> {
        truth
            .iter()
            .filter(|r| r.0 == meter && r.1 == REGISTER)
            .map(|r| (r.2, r.3))
            .collect()
    };
    let window = ["--from", "2024-03-14", "--to", "2024-04-15"];
    for (config, _) in &sources {
        let mut billed_series: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
        // Of each, how many readings in the period are estimates or substitutes.
        let mut mended_in_period: BTreeMap<String, usize> = BTreeMap::new();
        for meter in ["E001", "E002", "E003", "E004", "E008"] {
            let mut args = vec!["readings", "--meter", meter, "--channel", REGISTER];
            args.extend_from_slice(&window);
            let rows = records(&query_csv(config, &args));
            let points: Vec<(i64, f64)> = rows
                .iter()
                .map(|r| {
                    let ts = chrono::DateTime::parse_from_rfc3339(&r["ts"])
                        .unwrap()
                        .timestamp_millis();
                    (ts, r["value"].parse().unwrap())
                })
                .collect();
            let estimated = rows.iter().filter(|r| r["quality"] != "A").count();
            let want_estimated = match meter {
                "E001" => inj.gap_1h.len(),
                "E002" => inj.gap_6h.len(),
                "E003" => inj.gap_3d.len(),
                _ => 1,
            };
            assert_eq!(estimated, want_estimated, "{meter}");
            let in_period = rows
                .iter()
                .zip(&points)
                .filter(|(r, p)| r["quality"] != "A" && (FROM..TO).contains(&p.0))
                .count();
            mended_in_period.insert(meter.to_string(), in_period);
            billed_series.insert(meter.to_string(), points);
        }
        let e001 = &billed_series["E001"];
        let actual = series_of("E001");
        let before_gap = *actual.iter().rfind(|p| p.0 < inj.gap_1h[0]).unwrap();
        let after_gap = *actual.iter().find(|p| p.0 > inj.gap_1h[3]).unwrap();
        for &t in &inj.gap_1h {
            let want = before_gap.1
                + (after_gap.1 - before_gap.1) * (t - before_gap.0) as f64
                    / (after_gap.0 - before_gap.0) as f64;
            let got = e001.iter().find(|p| p.0 == t).unwrap().1;
            assert!((got - want).abs() < 1e-9, "E001 at {t}: {got} vs {want}");
        }
        // Estimates never cross an actual read nor make a register fall.
        for meter in ["E002", "E003"] {
            let s = &billed_series[meter];
            assert!(s.windows(2).all(|w| w[1].1 >= w[0].1), "{meter} falls");
        }

        // The bill as billed, against the computation here over the series as billed (the
        // clean meters' and the others' series are the readings as sent).
        let mut args = vec!["billing"];
        args.extend_from_slice(&period);
        let bill = records(&query_csv(config, &args));
        assert_eq!(
            bill.iter().filter(|r| r["channel"] == REGISTER).count(),
            100
        );
        for row in bill.iter().filter(|r| r["channel"] == REGISTER) {
            let meter = row["meter_id"].as_str();
            let series = billed_series
                .get(meter)
                .cloned()
                .unwrap_or_else(|| series_of(meter));
            let want = consumption(&series, FROM, TO);
            let got: f64 = row["consumption"].parse().unwrap();
            assert!(
                (got - want).abs() < 1e-6,
                "{meter}: billed {got}, computed {want}"
            );
            let estimated: usize = row["estimated"].parse().unwrap();
            let want_estimated = mended_in_period.get(meter).copied().unwrap_or(0);
            assert_eq!(estimated, want_estimated, "{meter}");
        }
        // A day inside the three-day gap: both its edges are estimates, and its bill is
        // the prorated register's change over it.
        let day = query_csv(
            config,
            &[
                "billing",
                "--meter",
                "E003",
                "--from",
                "2024-04-03",
                "--to",
                "2024-04-04",
            ],
        );
        let row = &records(&day)[0];
        let (d0, d1) = (berlin("2024-04-03T00:00"), berlin("2024-04-04T00:00"));
        let want = consumption(&billed_series["E003"], d0, d1);
        let got: f64 = row["consumption"].parse().unwrap();
        assert!(
            (got - want).abs() < 1e-6,
            "E003 on 3 April: {got} vs {want}"
        );
        assert_eq!(row["estimated"], "96");
        assert_eq!(
            (row["start_read"].as_str(), row["end_read"].as_str()),
            ("estimated", "estimated")
        );
        // As read, the spike's 300 kWh is billed (its fall back adds nothing, and takes the
        // next step with it); as billed, the substitute on the line is.
        let mut args = vec!["billing", "--as-read", "--meter", "E004"];
        args.extend_from_slice(&period);
        let as_read: f64 = records(&query_csv(config, &args))[0]["consumption"]
            .parse()
            .unwrap();
        let want_as_read = consumption(&series_of("E004"), FROM, TO);
        assert!(
            (as_read - want_as_read).abs() < 1e-6,
            "{as_read} vs {want_as_read}"
        );
        let as_billed = consumption(&billed_series["E004"], FROM, TO);
        assert!(as_read - as_billed > 299.0, "{as_read} vs {as_billed}");
    }

    // query exceptions shows what the run stored, the same on both sources.
    let stored: Vec<String> = sources
        .iter()
        .map(|(config, _)| {
            let mut args = vec!["exceptions"];
            args.extend_from_slice(&period);
            query_csv(config, &args)
        })
        .collect();
    assert_eq!(stored[0], judged[0]);
    assert_eq!(stored[1], judged[0]);
    ch.query(&format!("DROP DATABASE {db}"));
}
