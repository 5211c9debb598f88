//! `meterflow query suspects` and `query balance` evaluated on a generated fleet with theft
//! injected (`meterflow_simulate::theft`: 500 customers on 10 feeders with head meters, 90
//! days, 5 % thieves by the six attack shapes, honest holidays, new tenants and
//! inspections): the ranking's AUC and precision at 10/20/50 against the truth, and each
//! feeder's loss against the energy injected as stolen plus its technical losses. The same
//! ranking from the Parquet tree and from ClickHouse 18.16 on a smaller fleet.
//!
//! `benches/suspects/run.sh` runs `evaluation_at_full_size` (15-minute reads) in release and
//! writes its figures to benches/RESULTS.md.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use chrono::NaiveDate;
use meterflow_simulate::theft::{auc, precision_at, write_fleet, FleetSpec, Truth};
use meterflow_storage::events::{events_batch, EventRow};

use crate::harness::{config_file, import_canonical_csv, query_csv, ClickHouse, BIN};

/// The fleet's events (`events.csv`: meter_id, ts, kind) as the pipeline would keep them:
/// into the events folder of `data_dir`, and into ClickHouse's `events` when `clickhouse`
/// is given (URL, database).
fn keep_events(dir: &Path, data_dir: &Path, clickhouse: Option<(&ClickHouse, &str)>) {
    let text = std::fs::read_to_string(dir.join("events.csv")).unwrap();
    let rows: Vec<EventRow> = text
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let kind = meterflow_decoders::events::EventKind::parse(f[2]).unwrap();
            EventRow {
                meter_id: f[0].into(),
                ts_ms: chrono::DateTime::parse_from_rfc3339(f[1])
                    .unwrap()
                    .timestamp_millis(),
                kind: f[2].into(),
                severity: kind.severity().as_str().into(),
                source: "import".into(),
                code: String::new(),
                detail: String::new(),
                raw: String::new(),
            }
        })
        .collect();
    let mut sink = meterflow_storage::ParquetSink::open_events(
        data_dir,
        meterflow_storage::ParquetConfig::default(),
        "",
    )
    .unwrap();
    sink.write(
        &events_batch(&rows).unwrap(),
        None,
        std::time::Instant::now(),
    )
    .unwrap();
    sink.close().unwrap();
    if let Some((ch, db)) = clickhouse {
        let values: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "('{}', toDateTime({}), '{}', '{}', 'import', '', '', '')",
                    r.meter_id,
                    r.ts_ms / 1000,
                    r.kind,
                    r.severity
                )
            })
            .collect();
        ch.query(&format!(
            "INSERT INTO {db}.events (meter_id, ts, kind, severity, source, code, detail, raw) VALUES {}",
            values.join(", ")
        ));
    }
}

fn meterflow_ok(args: &[&str]) {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The figures of one evaluation.
struct Figures {
    auc: f64,
    precision: [f64; 3],
    ranked: usize,
    thieves: usize,
    /// Per feeder: the loss `query balance` found over the period (kWh, %), and the truth:
    /// stolen kWh (of the customers' injected thefts).
    feeders: Vec<(String, f64, f64, f64)>,
    by_attack: Vec<(String, usize, usize)>,
}

/// Generates `spec` into a fresh data folder (Parquet), ranks and balances it.
fn evaluate(spec: &FleetSpec) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let truth = write_fleet(spec, dir.path()).unwrap();
    let data = dir.path().join("data");
    let (_c, config) = config_file(&format!(
        "data_dir = \"{}\"\n[billing]\ntimezone = \"Asia/Bishkek\"\n",
        data.display()
    ));
    import_canonical_csv(&config, &dir.path().join("readings.csv"));
    let meters = dir.path().join("meters.csv");
    meterflow_ok(&[
        "registry",
        "import",
        "--config",
        &config,
        meters.to_str().unwrap(),
    ]);
    keep_events(dir.path(), &data, None);
    let (from, to) = period(spec);
    let history = (spec.days - spec.period_days).to_string();
    let ranking = query_csv(
        &config,
        &[
            "suspects",
            "--from",
            &from,
            "--to",
            &to,
            "--history-days",
            &history,
        ],
    );
    let balance = query_csv(
        &config,
        &["balance", "--level", "feeder", "--from", &from, "--to", &to],
    );
    figures(&truth, &ranking, &balance)
}

/// The period judged: the last `period_days` of the fleet.
fn period(spec: &FleetSpec) -> (String, String) {
    let day = |d: u32| (spec.start + chrono::Duration::days(i64::from(d))).to_string();
    (day(spec.days - spec.period_days), day(spec.days))
}

fn figures(truth: &[Truth], ranking: &str, balance: &str) -> Figures {
    let thief: HashMap<&str, &Truth> = truth.iter().map(|t| (t.meter_id.as_str(), t)).collect();
    let mut lines = ranking.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (meter, score) = (col("meter_id"), col("score"));
    let ranked: Vec<(f64, bool, &str)> = lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let t = thief[f[meter]];
            (f[score].parse().unwrap(), t.attack.is_some(), f[meter])
        })
        .collect();
    assert_eq!(
        ranked.len(),
        truth.len(),
        "every customer ranked, no head meter"
    );
    let scored: Vec<(f64, bool)> = ranked.iter().map(|r| (r.0, r.1)).collect();
    let mut by_attack: HashMap<&str, (usize, usize)> = HashMap::new();
    for (i, r) in ranked.iter().enumerate() {
        if let Some(a) = thief[r.2].attack {
            let e = by_attack.entry(a.as_str()).or_default();
            e.0 += 1;
            e.1 += usize::from(i < 50);
        }
    }
    let mut by_attack: Vec<(String, usize, usize)> = by_attack
        .into_iter()
        .map(|(a, (n, top))| (a.to_string(), n, top))
        .collect();
    by_attack.sort();
    // Balance: per feeder over the period, the loss found, against the stolen truth.
    let mut feeders: HashMap<String, (f64, f64)> = HashMap::new();
    let mut blines = balance.lines();
    let bh: Vec<&str> = blines.next().unwrap().split(',').collect();
    let bcol = |name: &str| bh.iter().position(|h| *h == name).unwrap();
    for l in blines {
        let f: Vec<&str> = l.split(',').collect();
        assert_eq!(f[bcol("complete")], "yes", "{l}");
        let e = feeders.entry(f[bcol("group")].to_string()).or_default();
        e.0 += f[bcol("loss_kwh")].parse::<f64>().unwrap();
        e.1 += f[bcol("head_kwh")].parse::<f64>().unwrap();
    }
    let mut stolen: HashMap<&str, f64> = HashMap::new();
    for t in truth {
        *stolen.entry(t.feeder.as_str()).or_default() += t.stolen_kwh;
    }
    let mut feeders: Vec<(String, f64, f64, f64)> = feeders
        .into_iter()
        .map(|(f, (loss, head))| {
            let s = stolen.get(f.as_str()).copied().unwrap_or(0.0);
            (f, loss, 100.0 * loss / head, s)
        })
        .collect();
    feeders.sort_by(|a, b| a.0.cmp(&b.0));
    Figures {
        auc: auc(&scored),
        precision: [10, 20, 50].map(|k| precision_at(&scored, k)),
        ranked: ranked.len(),
        thieves: truth.iter().filter(|t| t.attack.is_some()).count(),
        feeders,
        by_attack,
    }
}

fn report(f: &Figures) -> String {
    let mut text = format!(
        "{} customers, {} thieves: AUC {:.3}, precision@10 {:.2}, @20 {:.2}, @50 {:.2}\n",
        f.ranked, f.thieves, f.auc, f.precision[0], f.precision[1], f.precision[2]
    );
    for (attack, n, top) in &f.by_attack {
        text.push_str(&format!("  {attack}: {top} of {n} in the first 50\n"));
    }
    for (feeder, loss, pct, stolen) in &f.feeders {
        text.push_str(&format!(
            "  {feeder}: loss {loss:.1} kWh ({pct:.2} %), of which stolen (truth) {stolen:.1} kWh\n"
        ));
    }
    text
}

/// The goals: AUC at least 0.85, precision at 20 at least 0.8; and each feeder's loss is at
/// least what was stolen on it and at most that plus 8 % of its head (technical losses are
/// 3 to 7 % and the head meter's noise 1 %).
fn check(f: &Figures) {
    let text = report(f);
    assert!(f.auc >= 0.85, "{text}");
    assert!(f.precision[1] >= 0.8, "{text}");
    for (feeder, loss, pct, stolen) in &f.feeders {
        let head = loss / pct * 100.0;
        assert!(
            *loss >= *stolen && *loss <= stolen + 0.08 * head,
            "{feeder}: {text}"
        );
    }
}

#[test]
fn suspects_rank_the_thieves_of_a_generated_fleet_first() {
    let spec = FleetSpec {
        interval_s: 3600,
        ..FleetSpec::default()
    };
    let figures = evaluate(&spec);
    eprintln!("{}", report(&figures));
    check(&figures);
}

/// The full evaluation, as `benches/suspects/run.sh` runs it: 15-minute reads.
#[test]
#[ignore = "a benchmark: benches/suspects/run.sh"]
fn evaluation_at_full_size() {
    let seeds: Vec<u64> = std::env::var("METERFLOW_EVAL_SEEDS")
        .unwrap_or_else(|_| "1".into())
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    for seed in seeds {
        let spec = FleetSpec {
            seed,
            ..FleetSpec::default()
        };
        let started = std::time::Instant::now();
        let figures = evaluate(&spec);
        println!(
            "seed {seed} ({:.0} s):\n{}",
            started.elapsed().as_secs_f64(),
            report(&figures)
        );
        check(&figures);
    }
}

/// The ranking is the same from the Parquet tree and from ClickHouse.
#[test]
fn suspects_are_the_same_on_parquet_and_clickhouse() {
    let spec = FleetSpec {
        customers: 60,
        feeders: 3,
        days: 42,
        period_days: 14,
        interval_s: 3600,
        theft_share: 0.1,
        seed: 7,
        start: NaiveDate::from_ymd_opt(2025, 9, 1).unwrap(),
        ..FleetSpec::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let truth = write_fleet(&spec, dir.path()).unwrap();
    let ch = ClickHouse::shared();
    let db = ClickHouse::fresh_database("mf_suspects");
    let files = dir.path().join("files");
    let (_c1, parquet) = config_file(&format!(
        "data_dir = \"{}\"\n[billing]\ntimezone = \"Asia/Bishkek\"\n",
        files.display()
    ));
    let (_c2, clickhouse) = config_file(&format!(
        "data_dir = \"{}\"\n[billing]\ntimezone = \"Asia/Bishkek\"\n[clickhouse]\nurl = \"{}\"\ndatabase = \"{db}\"\n",
        dir.path().join("ch").display(),
        ch.url
    ));
    let readings = dir.path().join("readings.csv");
    let meters = dir.path().join("meters.csv");
    for config in [&parquet, &clickhouse] {
        import_canonical_csv(config, &readings);
        meterflow_ok(&[
            "registry",
            "import",
            "--config",
            config,
            meters.to_str().unwrap(),
        ]);
    }
    keep_events(dir.path(), &files, Some((&ch, &db)));
    let (from, to) = period(&spec);
    let args = [
        "suspects",
        "--from",
        &from,
        "--to",
        &to,
        "--history-days",
        "28",
    ];
    let from_files = query_csv(&parquet, &args);
    assert_eq!(from_files.lines().count(), 1 + 60, "{from_files}");
    assert_eq!(query_csv(&clickhouse, &args), from_files);
    // The bypasses after a magnet have a tamper drop; an inspection (a cover opened, nothing
    // taken) has none.
    let header: Vec<&str> = from_files.lines().next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let row = |meter: &str| -> Vec<String> {
        from_files
            .lines()
            .map(|l| l.split(',').map(str::to_string).collect::<Vec<_>>())
            .find(|f| f[col("meter_id")] == meter)
            .unwrap()
    };
    let drop = |meter: &str| row(meter)[col("tamper_drop")].parse::<f64>().unwrap();
    let magnets: Vec<&Truth> = truth
        .iter()
        .filter(|t| t.attack == Some(meterflow_simulate::theft::Attack::MagnetBypass))
        .collect();
    assert!(!magnets.is_empty());
    for t in magnets {
        assert!(
            drop(&t.meter_id) > 0.5,
            "{}: {:?}",
            t.meter_id,
            row(&t.meter_id)
        );
        assert!(row(&t.meter_id)[col("reasons")].contains("tamper_drop"));
    }
    for t in truth
        .iter()
        .filter(|t| t.honest_change == Some("inspection"))
    {
        assert!(
            drop(&t.meter_id) < 0.3,
            "{}: {:?}",
            t.meter_id,
            row(&t.meter_id)
        );
    }
}
