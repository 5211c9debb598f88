//! `meterflow simulate` fleets: their plans, running them, and checking that every row they
//! sent arrived.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::readings::{by_meter, read_readings};
use super::server::BIN;

/// `meterflow simulate --json` for `plan` against an MQTT port, `pause_ms` between reports.
/// Every expected row of every plan is in Parquet, with its format, and nothing else; no
/// dead letters. `exactly_once`: no report may be stored twice either (no duplicates
/// expected, e.g. no reconnects).
pub fn assert_fleet_arrived(
    data_dir: &Path,
    plans: &[meterflow_simulate::Plan],
    expected_rows: usize,
    exactly_once: bool,
) {
    let mut rows = read_readings(data_dir);
    let total = rows.len();
    rows.sort_by(|a, b| {
        (&a.meter_id, &a.channel, a.ts_ms).cmp(&(&b.meter_id, &b.channel, b.ts_ms))
    });
    rows.dedup_by(|a, b| {
        (&a.meter_id, &a.channel, a.ts_ms, a.value) == (&b.meter_id, &b.channel, b.ts_ms, b.value)
    });
    assert_eq!(rows.len(), expected_rows);
    if exactly_once {
        assert_eq!(total, expected_rows, "no report may be stored twice");
    }
    let got = by_meter(&rows);
    for plan in plans {
        for m in 0..plan.meters {
            let id = plan.meter_id(m);
            let mut want: Vec<_> = (0..plan.messages)
                .flat_map(|k| plan.expected_rows(m, k))
                .map(|r| (r.channel.to_string(), r.ts_ms, r.value, r.unit.to_string()))
                .collect();
            want.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
            let have: Vec<_> = got
                .get(&id)
                .unwrap_or_else(|| panic!("no rows for {id}"))
                .iter()
                .map(|r| {
                    assert_eq!(r.format, plan.format.as_str());
                    (r.channel.clone(), r.ts_ms, r.value, r.unit.clone())
                })
                .collect();
            assert_eq!(have, want, "meter {id}");
        }
    }
    let letters = meterflow_storage::dead_letter::read_all(&data_dir.join("dead_letters")).unwrap();
    assert!(letters.is_empty(), "{letters:?}");
}

pub fn simulate_command(mqtt_port: u16, plan: &meterflow_simulate::Plan, pause_ms: u64) -> Command {
    let shape = match plan.shape {
        meterflow_simulate::Shape::Series => "series",
        meterflow_simulate::Shape::Readings => "readings",
    };
    let start = chrono::DateTime::from_timestamp_millis(plan.start_ms)
        .expect("a valid start")
        .to_rfc3339();
    let mut cmd = Command::new(BIN);
    cmd.args([
        "simulate",
        "--json",
        "--mqtt",
        &format!("127.0.0.1:{mqtt_port}"),
    ])
    .args(["--meters", &plan.meters.to_string()])
    .args(["--messages", &plan.messages.to_string()])
    .args(["--format", plan.format.as_str(), "--prefix", &plan.prefix])
    .args(["--shape", shape, "--start", &start])
    .args(["--interval-s", &plan.interval_s.to_string()])
    .args(["--pause-ms", &pause_ms.to_string()]);
    cmd
}

/// A fleet of `meters` sending `messages` protobuf reports of five registers each, a quarter
/// of an hour apart from 2024-07-01, with meter ids starting `prefix`.
pub fn pb_fleet(prefix: &str, meters: usize, messages: usize) -> meterflow_simulate::Plan {
    meterflow_simulate::Plan {
        meters,
        messages,
        format: meterflow_proto::Format::Pb,
        shape: meterflow_simulate::Shape::Readings,
        start_ms: 1_719_792_000_000,
        interval_s: 900,
        prefix: prefix.into(),
    }
}

/// Every row a plan sends.
pub fn plan_rows(plan: &meterflow_simulate::Plan) -> usize {
    plan.expected_rows(0, 0).len() * plan.meters * plan.messages
}

/// `meterflow simulate` for `plan` running in the background, its JSON summary piped.
pub fn spawn_fleet(mqtt_port: u16, plan: &meterflow_simulate::Plan, pause_ms: u64) -> Child {
    simulate_command(mqtt_port, plan, pause_ms)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("meterflow simulate starts")
}

/// The summary of a fleet from [`spawn_fleet`] once it is done; no meter may have failed.
pub fn fleet_summary(fleet: Child) -> serde_json::Value {
    let out = fleet.wait_with_output().expect("meterflow simulate ends");
    let summary: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("simulate --json prints its summary");
    assert_eq!(summary["meters_failed"], 0, "{summary}");
    summary
}

/// How many reports the server acknowledged to a fleet from [`spawn_fleet`].
pub fn fleet_acked(fleet: Child) -> u64 {
    fleet_summary(fleet)["messages_acked"]
        .as_u64()
        .expect("messages_acked")
}

/// Runs a `meterflow simulate --json` command to its end; the summary it printed.
pub fn simulate_json(command: &mut Command) -> serde_json::Value {
    let out = command.output().expect("meterflow simulate runs");
    assert!(
        out.status.success(),
        "simulate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("simulate --json prints JSON")
}
