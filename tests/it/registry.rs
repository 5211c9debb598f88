//! `meterflow registry import` and `list` with the real binary: a meter exchange keeps both
//! records, each over its time; a bad CSV is refused by line and column and keeps the
//! registry before it.

use std::process::Command;

use crate::harness::{config_file, BIN};

fn meterflow(config: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .args(["--config", config])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_registry_is_imported_listed_and_a_bad_one_refused_by_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let (_cfg, config) = config_file(&format!(
        "data_dir = \"{}\"\n[billing]\ntimezone = \"Asia/Bishkek\"\n",
        dir.path().join("data").display()
    ));
    let good = dir.path().join("meters.csv");
    std::fs::write(
        &good,
        "meter_id,kind,model,expected_interval_s,district,feeder,transformer,role,import_only,tariff,valid_from,valid_to\n\
         E1,electricity,CE308,900,Pervomaisky,F-12,T-3,customer,yes,residential,2025-01-01,2025-07-01\n\
         E1,electricity,CE308,900,Pervomaisky,F-14,T-9,customer,yes,residential,2025-07-01,\n\
         H12,electricity,CE308,900,Pervomaisky,F-12,,feeder_head,no,,,\n",
    )
    .unwrap();
    let (ok, _, said) = meterflow(&config, &["registry", "import", good.to_str().unwrap()]);
    assert!(ok, "{said}");
    assert!(said.contains("3 record(s) of 2 meter(s)"), "{said}");
    let (ok, all, said) = meterflow(&config, &["registry", "list", "--format", "csv"]);
    assert!(ok, "{said}");
    assert_eq!(
        all,
        "meter_id,kind,model,expected_interval_s,district,feeder,transformer,role,import_only,tariff,valid_from,valid_to,report_interval_s\n\
         E1,electricity,CE308,900,Pervomaisky,F-12,T-3,customer,true,residential,2025-01-01T00:00:00+06:00,2025-07-01T00:00:00+06:00,\n\
         E1,electricity,CE308,900,Pervomaisky,F-14,T-9,customer,true,residential,2025-07-01T00:00:00+06:00,,\n\
         H12,electricity,CE308,900,Pervomaisky,F-12,,feeder_head,false,,,,\n"
    );
    // On 1 August E1 is on feeder F-14 (it moved on 1 July).
    let (ok, august, _) = meterflow(
        &config,
        &["registry", "list", "--at", "2025-08-01", "--format", "csv"],
    );
    assert!(ok);
    let feeders: Vec<&str> = august
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(5).unwrap())
        .collect();
    assert_eq!(feeders, ["F-14", "F-12"]);

    // A CSV with an unknown column: refused by name, the registry before kept.
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "meter_id,kind,colour\nE2,gas,red\n").unwrap();
    let (ok, _, said) = meterflow(&config, &["registry", "import", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        said.contains("line 1, column `colour`: unknown column"),
        "{said}"
    );
    let (_, still, _) = meterflow(&config, &["registry", "list", "--format", "csv"]);
    assert_eq!(still, all);
    let bad = dir.path().join("overlap.csv");
    std::fs::write(
        &bad,
        "meter_id,kind,valid_from,valid_to\nE1,gas,2025-01-01,2025-03-01\nE1,gas,2025-02-01,\n",
    )
    .unwrap();
    let (ok, _, said) = meterflow(&config, &["registry", "import", bad.to_str().unwrap()]);
    assert!(
        !ok && said.contains("line 3, column `valid_from`"),
        "{said}"
    );
}

/// VEE's `gap` keeps the interval the registry gives a meter: hourly reads of a meter that
/// should read every 15 minutes are three reads missing each hour; without a registry the
/// interval is inferred from the reads, and hourly reads are complete.
#[test]
fn vee_finds_gaps_by_the_interval_the_registry_gives() {
    let dir = tempfile::tempdir().unwrap();
    let (_cfg, config) = config_file(&format!(
        "data_dir = \"{}\"\n",
        dir.path().join("data").display()
    ));
    // 2024-03-20T00:00:00Z, and 35 days of hourly reads before it to a day after.
    let day = 1_710_892_800_000i64;
    let mut csv = String::from("meter_id,channel,ts,value,unit\n");
    let mut value = 100.0;
    let mut t = day - 35 * 86_400_000;
    while t <= day + 2 * 86_400_000 {
        value += 1.0;
        csv.push_str(&format!("E5,1-0:1.8.0,{t},{value:?},kWh\n"));
        t += 3_600_000;
    }
    let readings = dir.path().join("readings.csv");
    std::fs::write(&readings, csv).unwrap();
    crate::harness::import_canonical_csv(&config, &readings);
    let vee = || {
        let (ok, out, said) = meterflow(
            &config,
            &[
                "vee",
                "--format",
                "csv",
                "--from",
                "2024-03-20",
                "--to",
                "2024-03-21",
            ],
        );
        assert!(ok, "{said}");
        out
    };
    assert_eq!(
        vee().lines().count(),
        1,
        "hourly reads are complete by themselves"
    );
    let meters = dir.path().join("meters.csv");
    std::fs::write(
        &meters,
        "meter_id,kind,expected_interval_s\nE5,electricity,900\n",
    )
    .unwrap();
    let (ok, _, said) = meterflow(&config, &["registry", "import", meters.to_str().unwrap()]);
    assert!(ok, "{said}");
    let found = vee();
    let gaps: Vec<&str> = found.lines().skip(1).collect();
    assert_eq!(gaps.len(), 24, "{found}");
    assert!(
        gaps.iter().all(|l| l.contains(",gap,")
            && l.contains("3 read(s) of every 15 min missing")
            && l.ends_with(",yes,3,linear")),
        "{found}"
    );
}

/// With ClickHouse configured the registry goes to `meters` too, and is read from there (so
/// every node finds it): the same list as the files give, and a later import replaces it
/// whole (a meter it no longer has is gone), the earlier one kept as history.
#[test]
fn a_registry_is_kept_in_clickhouse_and_the_newest_import_is_the_registry() {
    let ch = crate::harness::ClickHouse::shared();
    let db = crate::harness::ClickHouse::fresh_database("mf_registry");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_c1, with_clickhouse) = config_file(&format!(
        "data_dir = \"{}\"\n[billing]\ntimezone = \"Asia/Bishkek\"\n[clickhouse]\nurl = \"{}\"\ndatabase = \"{db}\"\n",
        data.display(),
        ch.url
    ));
    let (_c2, files_only) = config_file(&format!(
        "data_dir = \"{}\"\n[billing]\ntimezone = \"Asia/Bishkek\"\n",
        data.display()
    ));
    let first = dir.path().join("meters.csv");
    std::fs::write(
        &first,
        "meter_id,kind,model,expected_interval_s,district,feeder,transformer,role,import_only,tariff,valid_from,valid_to\n\
         E1,electricity,CE308,900,Pervomaisky,F-12,T-3,customer,yes,resid'ential,2025-01-01,2025-07-01\n\
         E1,electricity,CE308,900,Pervomaisky,F-14,T-9,customer,yes,residential,2025-07-01,\n\
         E2,gas,G4,,Oktyabrsky,F-20,,customer,no,,,\n\
         H12,electricity,CE308,900,Pervomaisky,F-12,,feeder_head,no,,,\n",
    )
    .unwrap();
    let (ok, _, said) = meterflow(
        &with_clickhouse,
        &["registry", "import", first.to_str().unwrap()],
    );
    assert!(ok, "{said}");
    assert!(
        said.contains(&format!("ClickHouse's {db}.meters")),
        "{said}"
    );
    let list = |config: &str| {
        let (ok, out, said) = meterflow(config, &["registry", "list", "--format", "csv"]);
        assert!(ok, "{said}");
        out
    };
    let from_clickhouse = list(&with_clickhouse);
    assert_eq!(from_clickhouse, list(&files_only));
    assert_eq!(from_clickhouse.lines().count(), 1 + 4, "{from_clickhouse}");
    assert!(from_clickhouse
        .contains("resid'ential,2025-01-01T00:00:00+06:00,2025-07-01T00:00:00+06:00"));

    // The next import has no E2: it is no longer in the registry; both imports stay stored.
    let second = dir.path().join("meters2.csv");
    std::fs::write(
        &second,
        "meter_id,kind,feeder,role\nE1,electricity,F-14,customer\nH12,electricity,F-12,feeder_head\n",
    )
    .unwrap();
    let (ok, _, said) = meterflow(
        &with_clickhouse,
        &["registry", "import", second.to_str().unwrap()],
    );
    assert!(ok, "{said}");
    let now = list(&with_clickhouse);
    assert_eq!(now, list(&files_only));
    assert!(!now.contains("E2"), "{now}");
    assert_eq!(now.lines().count(), 1 + 2, "{now}");
    assert_eq!(
        ch.query(&format!(
            "SELECT uniqExact(imported_at), count() FROM {db}.meters"
        ))
        .trim(),
        "2\t8",
        "each import's records and its marker"
    );
    // An import cut short (records without their marker) is not the registry.
    ch.query(&format!(
        "INSERT INTO {db}.meters (imported_at, meter_id, kind, role, line) VALUES (99999999999999, 'HALF', 'electricity', 'customer', 2)"
    ));
    assert_eq!(list(&with_clickhouse), now);
}

/// `query anomalies` judges silence by the registry: a meter that reports every 15 minutes is
/// stale after 45 minutes (`devices.silent_amber_intervals` 3), a meter the registry has
/// but that never read is stale, and a meter without a record keeps `--stale-after` (24 h).
#[test]
fn anomalies_judge_silence_by_each_meters_registry_interval() {
    let dir = tempfile::tempdir().unwrap();
    let (_cfg, config) = config_file(&format!(
        "data_dir = \"{}\"\n[billing]\ntimezone = \"UTC\"\n",
        dir.path().join("data").display()
    ));
    // Q15 and FREE last read at 10:00; the question is asked at 12:00.
    let readings = dir.path().join("readings.csv");
    std::fs::write(
        &readings,
        "meter_id,channel,ts,value,unit\n\
         Q15,1-0:1.8.0,2025-06-01T09:45:00Z,10,kWh\n\
         Q15,1-0:1.8.0,2025-06-01T10:00:00Z,11,kWh\n\
         FREE,1-0:1.8.0,2025-06-01T09:45:00Z,10,kWh\n\
         FREE,1-0:1.8.0,2025-06-01T10:00:00Z,11,kWh\n",
    )
    .unwrap();
    crate::harness::import_canonical_csv(&config, &readings);
    let meters = dir.path().join("meters.csv");
    std::fs::write(
        &meters,
        "meter_id,kind,expected_interval_s\nQ15,electricity,900\nGHOST,electricity,900\nGW,gateway,900\n",
    )
    .unwrap();
    let (ok, _, said) = meterflow(&config, &["registry", "import", meters.to_str().unwrap()]);
    assert!(ok, "{said}");
    let out = crate::harness::query_csv(
        &config,
        &[
            "anomalies",
            "--from",
            "2025-06-01",
            "--to",
            "2025-06-01T12:00",
            "--now",
            "2025-06-01T12:00:00Z",
        ],
    );
    let stale: Vec<(&str, &str)> = out
        .lines()
        .skip(1)
        .filter(|l| l.contains(",stale,"))
        .map(|l| {
            let f: Vec<&str> = l.splitn(5, ',').collect();
            (f[0], f[4])
        })
        .collect();
    assert_eq!(stale.len(), 2, "{out}");
    assert_eq!(stale[0].0, "GHOST");
    assert!(stale[0].1.contains("in the meter registry"), "{out}");
    assert_eq!(
        stale[1],
        (
            "Q15",
            "no reading for 7200 s before 2025-06-01T12:00:00+00:00"
        )
    );
}
