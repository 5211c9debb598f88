//! `meterflow vee` against the real binary, on the same readings in ClickHouse and in a
//! Parquet tree (imported with `meterflow import`): both find the same exceptions, and only
//! the injected ones. M1's register misses an hour of quarter-hourly reads in the day judged
//! (a `gap`, estimated on the line); M2 is clean.

use std::path::Path;
use std::process::Command;

use crate::harness::{config_file, import_canonical_csv, query_csv, ClickHouse, BIN};

const MIN15: i64 = 900_000;
const DAY: i64 = 86_400_000;
/// 2024-03-20T00:00:00Z: the day judged.
const FROM: i64 = 1_710_892_800_000;

/// Quarter-hourly reads of `1-0:1.8.0` from 35 days before the day to a day after it, less
/// those at `missing`.
fn register_csv(meter: &str, missing: &[i64], out: &mut String) {
    let mut value = 1000.0;
    let mut t = FROM - 35 * DAY;
    while t <= FROM + 2 * DAY {
        let hour = t.rem_euclid(DAY) / 3_600_000;
        value += if (7..22).contains(&hour) { 0.25 } else { 0.05 };
        if !missing.contains(&t) {
            out.push_str(&format!("{meter},1-0:1.8.0,{t},{value:?},kWh\n"));
        }
        t += MIN15;
    }
}

/// `meterflow vee` over the day: (its CSV, what it said on stderr).
fn vee_csv(config: &str) -> (String, String) {
    let out = Command::new(BIN)
        .args(["vee", "--config", config, "--format", "csv"])
        .args(["--from", "2024-03-20", "--to", "2024-03-21"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{said}");
    (String::from_utf8(out.stdout).unwrap(), said)
}

#[test]
fn vee_finds_the_injected_gap_and_nothing_else_on_clickhouse_and_parquet_alike() {
    let gone: Vec<i64> = (1..=4).map(|k| FROM + 10 * 3_600_000 + k * MIN15).collect();
    let mut csv_text = String::from("meter_id,channel,ts,value,unit\n");
    register_csv("M1", &gone, &mut csv_text);
    register_csv("M2", &[], &mut csv_text);
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("readings.csv");
    std::fs::write(&csv, csv_text).unwrap();

    let ch = ClickHouse::shared();
    let db = ClickHouse::fresh_database("mf_vee");
    let (_ch_dir, on_clickhouse) = config_file(&format!(
        "data_dir = \"{}\"\n[clickhouse]\nurl = \"{}\"\ndatabase = \"{db}\"\n",
        dir.path().join("ch-data").display(),
        ch.url
    ));
    crate::harness::apply_schema(&on_clickhouse);
    let (_pq_dir, on_parquet) = config_file(&format!(
        "data_dir = \"{}\"\n",
        dir.path().join("pq").display()
    ));
    for config in [&on_clickhouse, &on_parquet] {
        import_canonical_csv(config, Path::new(&csv));
    }
    let (from_clickhouse, said_ch) = vee_csv(&on_clickhouse);
    let (from_parquet, said_pq) = vee_csv(&on_parquet);
    assert_eq!(from_clickhouse, from_parquet);
    let lines: Vec<&str> = from_parquet.lines().collect();
    assert_eq!(
        lines[0],
        "meter_id,channel,rule,from,to,detail,estimated,values,method"
    );
    assert_eq!(lines.len(), 2, "one exception: {from_parquet}");
    let cells: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(
        (cells[0], cells[1], cells[2], cells[3], cells[4]),
        (
            "M1",
            "1-0:1.8.0",
            "gap",
            "2024-03-20T10:15:00+00:00",
            "2024-03-20T11:00:00+00:00"
        )
    );
    assert_eq!(&cells[cells.len() - 3..], ["yes", "4", "linear"]);
    for said in [&said_ch, &said_pq] {
        assert!(
            said.contains(
                "written: 4 value(s) estimated or substituted, 0 earlier one(s) withdrawn"
            ),
            "{said}"
        );
    }
    // What was stored: the exception, the estimates as billed, and a bill that says so.
    for config in [&on_clickhouse, &on_parquet] {
        let stored = query_csv(
            config,
            &["exceptions", "--from", "2024-03-20", "--to", "2024-03-21"],
        );
        assert_eq!(
            stored, from_parquet,
            "query exceptions shows what vee found"
        );
        let readings = |extra: &[&str]| {
            let mut args = vec![
                "readings",
                "--meter",
                "M1",
                "--from",
                "2024-03-20T10:00",
                "--to",
                "2024-03-20T11:15",
            ];
            args.extend_from_slice(extra);
            query_csv(config, &args)
        };
        let as_billed = readings(&[]);
        let rows: Vec<Vec<&str>> = as_billed.lines().map(|l| l.split(',').collect()).collect();
        assert_eq!(
            rows[0],
            ["channel", "ts", "value", "unit", "quality", "rule", "method"]
        );
        assert_eq!(rows.len(), 1 + 5, "10:00 to 11:00: {as_billed}");
        // The line between the reads at 10:00 and 11:15, computed here.
        let at = |t: i64| {
            let mut v = 1000.0;
            let mut x = FROM - 35 * DAY;
            while x <= t {
                let hour = x.rem_euclid(DAY) / 3_600_000;
                v += if (7..22).contains(&hour) { 0.25 } else { 0.05 };
                x += MIN15;
            }
            v
        };
        let (t0, t1) = (FROM + 10 * 3_600_000, FROM + 10 * 3_600_000 + 5 * MIN15);
        for (k, row) in rows[1..].iter().enumerate() {
            let t = t0 + k as i64 * MIN15;
            if k == 0 {
                assert_eq!(&row[4..], ["A", "", ""], "{row:?}");
                continue;
            }
            let want = at(t0) + (at(t1) - at(t0)) * (t - t0) as f64 / (t1 - t0) as f64;
            let got: f64 = row[2].parse().unwrap();
            assert!((got - want).abs() < 1e-9, "{row:?}: {want}");
            assert_eq!(&row[4..], ["E", "gap", "linear"], "{row:?}");
        }
        let as_read = readings(&["--as-read"]);
        assert_eq!(
            as_read.lines().count(),
            1 + 1,
            "only the actual read: {as_read}"
        );
        // VEE judged the day: the bill is as billed and counts the four estimates; as read
        // it has none of them (the line adds nothing to the day's steps).
        let bill = |extra: &[&str]| {
            let mut args = vec!["billing", "--from", "2024-03-20", "--to", "2024-03-21"];
            args.extend_from_slice(extra);
            let text = query_csv(config, &args);
            text.lines()
                .skip(1)
                .map(|l| {
                    let c: Vec<&str> = l.split(',').collect();
                    (
                        c[0].to_string(),
                        c[11].to_string(),
                        c[14].to_string(),
                        c[15].to_string(),
                    )
                })
                .collect::<Vec<_>>()
        };
        let day_use = format!("{}", ((at(FROM + DAY) - at(FROM)) * 1e6).round() / 1e6);
        assert_eq!(
            bill(&[]),
            vec![
                ("M1".into(), day_use.clone(), "96".into(), "4".into()),
                ("M2".into(), day_use.clone(), "96".into(), "0".into()),
            ]
        );
        assert_eq!(
            bill(&["--as-read"]),
            vec![
                ("M1".into(), day_use.clone(), "92".into(), "0".into()),
                ("M2".into(), day_use.clone(), "96".into(), "0".into()),
            ]
        );
    }
    // Again over the same data: the same answer, and no new version.
    for config in [&on_clickhouse, &on_parquet] {
        let (again, said) = vee_csv(config);
        assert_eq!(again, from_parquet);
        assert!(
            said.contains("as the latest version has them: nothing written"),
            "{said}"
        );
    }
    // The missing reads arrive: no exception any more, and the four estimates withdrawn.
    let late = dir.path().join("late.csv");
    let mut late_text = String::from("meter_id,channel,ts,value,unit\n");
    let mut all = String::new();
    register_csv("M1", &[], &mut all);
    for line in all.lines() {
        let ts: i64 = line.split(',').nth(2).unwrap().parse().unwrap();
        if gone.contains(&ts) {
            late_text.push_str(line);
            late_text.push('\n');
        }
    }
    std::fs::write(&late, late_text).unwrap();
    for config in [&on_clickhouse, &on_parquet] {
        import_canonical_csv(config, &late);
        // Before any rerun, the reads that came take the estimates' places in the bill.
        let readings = query_csv(
            config,
            &[
                "readings",
                "--meter",
                "M1",
                "--from",
                "2024-03-20T10:15",
                "--to",
                "2024-03-20T11:15",
            ],
        );
        assert!(
            readings.lines().skip(1).all(|l| l.ends_with(",A,,")),
            "{readings}"
        );
        let (after, said) = vee_csv(config);
        assert_eq!(after.lines().count(), 1, "no exception: {after}");
        // The latest run speaks for the day: the gap it no longer finds is gone.
        let stored = query_csv(
            config,
            &["exceptions", "--from", "2024-03-20", "--to", "2024-03-21"],
        );
        assert_eq!(stored.lines().count(), 1, "{stored}");
        assert!(
            said.contains(
                "written: 0 value(s) estimated or substituted, 4 earlier one(s) withdrawn"
            ),
            "{said}"
        );
    }
    ch.query(&format!("DROP DATABASE {db}"));
}

/// `meterflow vee` over one local (UTC) day `YYYY-MM-DD`: its CSV.
fn vee_day(config: &str, day: &str, next: &str) -> String {
    let out = Command::new(BIN)
        .args(["vee", "--config", config, "--format", "csv"])
        .args(["--from", day, "--to", next])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Daily runs remember what earlier runs estimated: a meter with a gap estimated every day is
/// `prolonged_estimation` on the fourth day in a row (more than `vee.prolonged_estimation_days`,
/// 3), not before.
#[test]
fn a_meter_estimated_day_after_day_is_prolonged_estimation_on_the_fourth() {
    let days = [
        "2024-03-17",
        "2024-03-18",
        "2024-03-19",
        "2024-03-20",
        "2024-03-21",
    ];
    let gone: Vec<i64> = (0..4)
        .flat_map(|d| (1..=4).map(move |k| FROM - (3 - d) * DAY + 10 * 3_600_000 + k * MIN15))
        .collect();
    let mut csv_text = String::from("meter_id,channel,ts,value,unit\n");
    register_csv("M3", &gone, &mut csv_text);
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("readings.csv");
    std::fs::write(&csv, csv_text).unwrap();
    let (_pq_dir, config) = config_file(&format!(
        "data_dir = \"{}\"\n",
        dir.path().join("pq").display()
    ));
    import_canonical_csv(&config, Path::new(&csv));
    for (i, window) in days.windows(2).enumerate() {
        let out = vee_day(&config, window[0], window[1]);
        let prolonged = out.lines().any(|l| l.contains(",prolonged_estimation,"));
        assert!(out.contains(",gap,"), "{}: {out}", window[0]);
        assert_eq!(prolonged, i == 3, "{}: {out}", window[0]);
    }
}

/// `vee.schedule` in `serve`: started after its daily time has passed, with the days before
/// not yet judged, it judges them at once (the catch-up: `vee.schedule_days`, 3, days before
/// the last scheduled time), stores the run with `trigger = schedule`, and counts it on
/// /metrics. Each of the last three days has a gap: all three are found, each on its day.
#[test]
fn serve_runs_vee_on_its_schedule_and_catches_up_a_missed_day() {
    let clock = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    // Not across midnight (UTC): the days the server judges are the days before its today.
    let left = DAY - clock().rem_euclid(DAY);
    if left < 300_000 {
        std::thread::sleep(std::time::Duration::from_millis(left as u64 + 5_000));
    }
    let now = clock();
    let today = now - now.rem_euclid(DAY);
    let gone: Vec<i64> = (1..=3)
        .flat_map(|d| (1..=4).map(move |k| today - d * DAY + 10 * 3_600_000 + k * MIN15))
        .collect();
    let mut csv_text = String::from("meter_id,channel,ts,value,unit\n");
    let mut value = 1000.0;
    let mut t = today - 40 * DAY;
    while t <= now {
        value += 0.25;
        if !gone.contains(&t) {
            csv_text.push_str(&format!("S1,1-0:1.8.0,{t},{value:?},kWh\n"));
        }
        t += MIN15;
    }
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("readings.csv");
    std::fs::write(&csv, csv_text).unwrap();
    let config = tmp.path().join("meterflow.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[vee]\nschedule = \"00:00\"\n",
            tmp.path().join("data").display()
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    import_canonical_csv(&config, &csv);
    let server = crate::harness::Server::start_in(tmp, &["--config", &config]);
    crate::harness::wait_for("the scheduled run", || {
        (server.metric("meterflow_vee_runs_total{outcome=\"ok\"}") >= 1.0).then_some(())
    });
    assert_eq!(
        server.metric("meterflow_vee_runs_total{outcome=\"ok\"}"),
        1.0
    );
    // Counted for the newest day of the window only (each day once, however often judged).
    assert_eq!(
        server.metric("meterflow_vee_exceptions_total{rule=\"gap\"}"),
        1.0
    );
    assert_eq!(server.metric("meterflow_vee_values_mended_total"), 4.0);
    let runs = std::fs::read_dir(server.data_dir.join("vee_runs"))
        .unwrap()
        .count();
    assert_eq!(runs, 1);
    // The days it judged: a gap on each.
    let found = query_csv(
        &config,
        &[
            "exceptions",
            "--from",
            &utc_day(today - 3 * DAY),
            "--to",
            &utc_day(today),
        ],
    );
    let days: Vec<String> = found
        .lines()
        .skip(1)
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            assert_eq!((cells[0], cells[2]), ("S1", "gap"), "{found}");
            cells[3][..10].to_string()
        })
        .collect();
    assert_eq!(days, [3, 2, 1].map(|d| utc_day(today - d * DAY)), "{found}");
    assert!(
        server.log_text().contains("VEE run"),
        "{}",
        server.log_text()
    );
    // The meter's page: the gap, and the four estimates to mark in its chart.
    let (status, body) = server.http_get("/api/device/vee?meter_id=S1");
    assert_eq!(status, 200, "{body}");
    let vee: serde_json::Value = serde_json::from_str(&body).unwrap();
    let exceptions = vee["exceptions"].as_array().unwrap();
    assert_eq!(exceptions.len(), 3, "{body}");
    assert!(
        exceptions
            .iter()
            .all(|e| e["rule"] == "gap" && e["values"] == 4),
        "{body}"
    );
    assert_eq!(vee["judged"], true, "{body}");
    let mended = vee["mended"]["1-0:1.8.0"].as_array().unwrap();
    assert_eq!(mended.len(), 12, "{body}");
    assert!(mended.iter().all(|p| p[2] == "E"), "{body}");
    let (status, _) = server.http_get("/api/device/vee?meter_id=a%2Fb");
    assert_eq!(status, 400);
}

/// `YYYY-MM-DD` of a UTC instant.
fn utc_day(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string()
}

/// The README's "Validation and estimation" example runs as written (`meterflow` is this build's binary,
/// `./vee-pilot` a fresh folder) and prints what the README shows.
#[test]
fn the_readme_vee_example_prints_what_the_readme_shows() {
    let readme = include_str!("../../README.md");
    let section = &readme[readme.find("## Validation and estimation").unwrap()..];
    let block = |fence: &str| {
        let start = section.find(fence).unwrap() + fence.len();
        let end = start + section[start..].find("```").unwrap();
        section[start..end].to_string()
    };
    let pilot = tempfile::tempdir().unwrap();
    let script = format!("\n{}", block("```sh\n"))
        .replace("\nmeterflow ", &format!("\n{BIN} "))
        .replace(
            "./vee-pilot",
            &pilot.path().join("vee-pilot").display().to_string(),
        );
    let out = Command::new("sh")
        .args(["-ec", &script])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    let printed = String::from_utf8(out.stdout).unwrap();
    // The import prints its summary line first.
    let shown = &printed[printed.find("meter_id,channel,rule").unwrap()..];
    assert_eq!(shown, block("```text\n"));
    assert!(
        said.contains("as billed: VEE has judged the period"),
        "{said}"
    );
}

/// Issue 23 review: a gap across midnight judged by two daily runs (as `vee.schedule` does)
/// was prorated twice, differently, and the register as billed fell at midnight: the two
/// days billed 88 % more than was used. Now the bill as billed of both days is what the
/// meter used, and the series never falls. Then a parameter that no longer allows the
/// estimate withdraws it (no actual read came: NaN), and a rerun writes nothing. And VEE
/// refuses a period that has not ended, or parts of days.
#[test]
fn daily_runs_over_a_gap_across_midnight_bill_what_was_used() {
    let gap_from = FROM + 20 * 3_600_000;
    let gap_to = FROM + DAY + 4 * 3_600_000;
    let gone: Vec<i64> = (1..)
        .map(|k| gap_from + k * MIN15)
        .take_while(|t| *t < gap_to)
        .collect();
    let mut csv_text = String::from("meter_id,channel,ts,value,unit\n");
    register_csv("M4", &gone, &mut csv_text);
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("readings.csv");
    std::fs::write(&csv, &csv_text).unwrap();
    let data = dir.path().join("pq");
    let (_cfg, config) = config_file(&format!("data_dir = \"{}\"\n", data.display()));
    import_canonical_csv(&config, &csv);
    let vee = |config: &str, from: &str, to: &str| -> (bool, String) {
        let out = Command::new(BIN)
            .args([
                "vee", "--config", config, "--format", "csv", "--from", from, "--to", to,
            ])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (from, to) in [("2024-03-20", "2024-03-21"), ("2024-03-21", "2024-03-22")] {
        let (ok, said) = vee(&config, from, to);
        assert!(ok, "{said}");
    }
    // What the meter used over the two days, from the readings as written here.
    let value_at = |t: i64| -> f64 {
        csv_text
            .lines()
            .skip(1)
            .find(|l| l.split(',').nth(2) == Some(&t.to_string()))
            .map(|l| l.split(',').nth(3).unwrap().parse().unwrap())
            .unwrap()
    };
    let used = value_at(FROM + 2 * DAY) - value_at(FROM);
    let bill = query_csv(
        &config,
        &["billing", "--from", "2024-03-20", "--to", "2024-03-22"],
    );
    let row: Vec<&str> = bill.lines().nth(1).unwrap().split(',').collect();
    let billed: f64 = row[11].parse().unwrap();
    assert!(
        (billed - used).abs() < 1e-6,
        "billed {billed}, used {used}: {bill}"
    );
    assert_eq!(
        (row[15], row[16]),
        (gone.len().to_string().as_str(), "as billed")
    );
    let series = query_csv(
        &config,
        &[
            "readings",
            "--meter",
            "M4",
            "--from",
            "2024-03-20T18:00",
            "--to",
            "2024-03-21T06:00",
        ],
    );
    let values: Vec<f64> = series
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(2).unwrap().parse().unwrap())
        .collect();
    assert_eq!(values.len(), 12 * 4);
    assert!(values.windows(2).all(|w| w[1] >= w[0]), "{series}");

    // A parameter that no longer allows the estimate (an 8-hour gap, like_day_max_gap 2h):
    // the rerun withdraws the day's estimates, and the next writes nothing.
    let (_cfg2, stricter) = config_file(&format!(
        "data_dir = \"{}\"\n[vee]\nlike_day_max_gap = \"2h\"\n",
        data.display()
    ));
    let (ok, said) = vee(&stricter, "2024-03-20", "2024-03-21");
    assert!(ok, "{said}");
    assert!(
        said.contains("written: 0 value(s) estimated or substituted, 15 earlier one(s) withdrawn"),
        "{said}"
    );
    let (ok, said) = vee(&stricter, "2024-03-20", "2024-03-21");
    assert!(
        ok && said.contains("nothing estimated or substituted"),
        "{said}"
    );
    let day = query_csv(
        &stricter,
        &[
            "readings",
            "--meter",
            "M4",
            "--from",
            "2024-03-20T20:00",
            "--to",
            "2024-03-21T00:00",
        ],
    );
    assert_eq!(day.lines().count(), 1 + 1, "the estimates are gone: {day}");

    // Not a day that has not ended, nor part of a day.
    let (ok, said) = vee(&config, "2098-12-31", "2099-01-01");
    assert!(!ok && said.contains("has not come yet"), "{said}");
    let (ok, said) = vee(&config, "2024-03-20T06:00", "2024-03-21");
    assert!(!ok && said.contains("whole local days"), "{said}");
}

/// A `readings_vee` made before it had `vee_run` (84837fe), and a `vee_exceptions` made
/// before it had `day` (eddab5c), get their columns from `meterflow schema --apply`, and VEE
/// then reads and writes them.
#[test]
fn an_earlier_readings_vee_gets_its_vee_run_column() {
    let ch = ClickHouse::shared();
    let db = ClickHouse::fresh_database("mf_vee_old");
    ch.query(&format!("CREATE DATABASE {db}"));
    ch.query(&format!(
        "CREATE TABLE {db}.readings_vee (meter_id String, channel String, ts DateTime, value Float64, \
         unit String, quality String, rule String, method String, version Int64) \
         ENGINE = ReplacingMergeTree(version) PARTITION BY toYYYYMM(ts) ORDER BY (meter_id, channel, ts)"
    ));
    let dir = tempfile::tempdir().unwrap();
    let (_cfg, config) = config_file(&format!(
        "data_dir = \"{}\"\n[clickhouse]\nurl = \"{}\"\ndatabase = \"{db}\"\n",
        dir.path().display(),
        ch.url
    ));
    ch.query(&format!(
        "CREATE TABLE {db}.vee_exceptions (run_id Int64, meter_id String, channel String, rule String, \
         from_ts DateTime, to_ts DateTime, detail String, estimated UInt8, mended UInt32, method String) \
         ENGINE = ReplacingMergeTree() PARTITION BY toYYYYMM(from_ts) ORDER BY (meter_id, from_ts, channel, rule, run_id)"
    ));
    ch.query(&format!(
        "INSERT INTO {db}.vee_exceptions (run_id, meter_id, channel, rule, from_ts, to_ts, detail, estimated, mended, method) \
         VALUES (1, 'M9', 'c', 'gap', toDateTime('2024-03-19 10:00:00'), toDateTime('2024-03-19 11:00:00'), '', 0, 0, '')"
    ));
    crate::harness::apply_schema(&config);
    let columns = ch.query(&format!(
        "SELECT table, name, type FROM system.columns WHERE database = '{db}' \
         AND (table, name) IN (('readings_vee', 'vee_run'), ('vee_exceptions', 'day')) ORDER BY table"
    ));
    assert_eq!(
        columns,
        "readings_vee\tvee_run\tString\nvee_exceptions\tday\tDate\n"
    );
    // An earlier row's day, from its start.
    assert_eq!(
        ch.query(&format!(
            "SELECT toString(day) FROM {db}.vee_exceptions WHERE meter_id = 'M9'"
        )),
        "2024-03-19\n"
    );
    // Applying again is a no-op.
    crate::harness::apply_schema(&config);
    let gone: Vec<i64> = (1..=4).map(|k| FROM + 10 * 3_600_000 + k * MIN15).collect();
    let mut csv_text = String::from("meter_id,channel,ts,value,unit\n");
    register_csv("M1", &gone, &mut csv_text);
    let csv = dir.path().join("readings.csv");
    std::fs::write(&csv, csv_text).unwrap();
    import_canonical_csv(&config, &csv);
    let (found, said) = vee_csv(&config);
    assert!(found.contains(",gap,"), "{found}");
    assert!(said.contains("written: 4 value(s)"), "{said}");
    ch.query(&format!("DROP DATABASE {db}"));
}
