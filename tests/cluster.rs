//! meterflow on a ClickHouse cluster, with the real harness (`deploy/cluster/up.sh`:
//! ZooKeeper and 4 clickhouse-server processes as 2 shards x 2 replicas): the schema made
//! `ON CLUSTER`, every reading once in `readings FINAL` through the Distributed table, each
//! shard holding its own meters, and a replica killed mid-run: ingest goes on, the replica
//! catches up, and both replicas of every shard agree.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};

use common::{config_file, wait_for, Server};
use meterflow::simulate::{Plan, Shape};
use meterflow_proto::Format;

const HARNESS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/cluster");

/// The harness, taken down when the test ends (however it ends).
struct Cluster {
    dir: tempfile::TempDir,
    env: BTreeMap<String, String>,
}

impl Cluster {
    fn up() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(format!("{HARNESS}/up.sh"))
            .arg(dir.path())
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        let cluster = Cluster {
            env: std::fs::read_to_string(dir.path().join("cluster.env"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            dir,
        };
        assert!(out.status.success(), "deploy/cluster/up.sh failed");
        cluster
    }

    fn ctl(&self, args: &[&str]) {
        let status = Command::new(format!("{HARNESS}/ctl.sh"))
            .arg(self.dir.path())
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "ctl.sh {args:?}");
    }

    fn url(&self, shard: u8, replica: u8) -> &str {
        &self.env[&format!("CLICKHOUSE_{shard}_{replica}_URL")]
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(format!("{HARNESS}/ctl.sh"))
            .arg(self.dir.path())
            .arg("down")
            .status();
    }
}

fn query(url: &str, sql: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "--data-binary", sql, url])
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "query {sql} on {url}: {body}");
    body
}

fn count(url: &str, sql: &str) -> u64 {
    query(url, sql).trim().parse().unwrap()
}

fn fleet(prefix: &str, meters: usize, messages: usize) -> Plan {
    Plan {
        meters,
        messages,
        format: Format::Pb,
        shape: Shape::Readings,
        start_ms: 1_719_792_000_000,
        interval_s: 900,
        prefix: prefix.into(),
    }
}

fn rows_of(plan: &Plan) -> usize {
    plan.expected_rows(0, 0).len() * plan.meters * plan.messages
}

fn simulate(port: u16, plan: &Plan, pause_ms: u64) -> std::process::Child {
    common::simulate_command(port, plan, pause_ms)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn acked(child: std::process::Child) -> u64 {
    let out = child.wait_with_output().unwrap();
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["meters_failed"], 0, "{summary}");
    summary["messages_acked"].as_u64().unwrap()
}

fn tables(url: &str, db: &str) -> BTreeSet<String> {
    query(
        url,
        &format!("SELECT name FROM system.tables WHERE database = '{db}' ORDER BY name"),
    )
    .lines()
    .map(String::from)
    .collect()
}

/// Waits until both replicas of every shard hold the same rows and have nothing queued (a
/// replica back from the dead first pulls the log it missed from ZooKeeper).
fn wait_replicas_agree(cluster: &Cluster, db: &str) {
    for shard in [1, 2] {
        wait_for(&format!("the replicas of shard {shard} to agree"), || {
            let state: Vec<(u64, String)> = [1, 2]
                .iter()
                .map(|&r| {
                    let url = cluster.url(shard, r);
                    query(url, &format!("SYSTEM SYNC REPLICA {db}.readings_local"));
                    let rows = count(
                        url,
                        &format!("SELECT count() FROM {db}.readings_local FINAL"),
                    );
                    let replica = query(
                        url,
                        &format!(
                            "SELECT is_readonly, queue_size, inserts_in_queue FROM system.replicas \
                             WHERE database = '{db}' AND table = 'readings_local'"
                        ),
                    );
                    (rows, replica.trim().to_string())
                })
                .collect();
            let settled = state.iter().all(|(_, r)| r == "0\t0\t0");
            (settled && state[0].0 == state[1].0 && state[0].0 > 0).then_some(())
        });
    }
}

#[test]
fn a_cluster_takes_every_reading_once_and_a_dead_replica_does_not_stop_ingest() {
    let cluster = Cluster::up();
    let db = "mf_cluster";
    let (_cfg, config) = config_file(&format!(
        "[clickhouse]\nurl = \"{}\"\ndatabase = \"{db}\"\ncluster = \"meterflow\"\nretry_initial_ms = 50\nretry_max_ms = 500\n[batch]\nmax_age_ms = 200\n",
        cluster.env["CLICKHOUSE_URL"]
    ));

    // The schema, ON CLUSTER: every server has the local and the Distributed tables.
    common::apply_schema(&config);
    let want_tables: BTreeSet<String> = [
        "dead_letters",
        "dead_letters_local",
        "device_status",
        "device_status_local",
        "readings",
        "readings_daily",
        "readings_daily_local",
        "readings_hourly",
        "readings_hourly_local",
        "readings_local",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for shard in [1, 2] {
        for replica in [1, 2] {
            let got: BTreeSet<String> = tables(cluster.url(shard, replica), db)
                .into_iter()
                .filter(|t| !t.starts_with(".inner"))
                .collect();
            assert_eq!(got, want_tables, "server {shard}-{replica}");
        }
    }

    // A fleet through one node; replica 2 of shard 2 is killed while it publishes.
    let server = Server::start_with(&["--config", &config]);
    let plan = fleet("cl-", 40, 100);
    let rows = rows_of(&plan) as u64;
    let publishing = simulate(server.mqtt_port, &plan, 20);
    let total = || {
        count(
            cluster.url(1, 1),
            &format!("SELECT count() FROM {db}.readings"),
        )
    };
    wait_for("some rows on the cluster", || {
        let n = total();
        assert!(
            n < rows,
            "the fleet finished before the kill: make it longer"
        );
        (n > 0).then_some(())
    });
    cluster.ctl(&["kill-replica", "2", "2"]);
    assert_eq!(acked(publishing), (plan.meters * plan.messages) as u64);
    wait_for("every row through the Distributed table", || {
        (total() >= rows).then_some(())
    });
    assert_eq!(
        count(
            cluster.url(1, 1),
            &format!("SELECT count() FROM {db}.readings FINAL")
        ),
        rows
    );
    // Each shard holds whole meters: no meter on both.
    let on = |shard: u8| -> BTreeSet<String> {
        query(
            cluster.url(shard, 1),
            &format!("SELECT DISTINCT meter_id FROM {db}.readings_local"),
        )
        .lines()
        .map(String::from)
        .collect()
    };
    let (one, two) = (on(1), on(2));
    assert!(
        !one.is_empty() && !two.is_empty(),
        "both shards have meters"
    );
    assert!(one.is_disjoint(&two), "a meter on both shards");
    assert_eq!(one.len() + two.len(), plan.meters);

    // The rollups answer through their Distributed tables, every meter once.
    assert_eq!(
        count(
            cluster.url(2, 1),
            &format!("SELECT uniqExact(meter_id) FROM {db}.readings_hourly")
        ),
        plan.meters as u64
    );

    // The replica comes back, catches up, and agrees with its peer.
    cluster.ctl(&["start-replica", "2", "2"]);
    wait_replicas_agree(&cluster, db);
    let (exit, _data, log, _tmp) = server.stop();
    assert!(exit.success(), "{log}");
}
