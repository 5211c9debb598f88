//! meterflow on a cluster, with the real harness (`deploy/cluster/up.sh`: ZooKeeper, 4
//! clickhouse-server processes as 2 shards x 2 replicas, 2 meterflow nodes behind HAProxy and
//! nginx): the schema made `ON CLUSTER` on every server; a replica killed mid-run (ingest goes
//! on, the replica catches up, both replicas of every shard agree); a node killed with kill -9
//! mid-run (meters reconnect through HAProxy to the other node, the node comes back and its
//! WAL replays); a node stopped with SIGTERM mid-run (it drains; its meters go to the other
//! node). Every acknowledged reading is in `readings FINAL` exactly once, each meter on one
//! shard. Either node's API answers for every meter (the other's from ClickHouse), MQTT over
//! TLS passes through HAProxy to the node, which sees the client certificate, and CoAP goes
//! through nginx's UDP balancer to both nodes.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};

use crate::harness::{fleet_acked, fleet_summary, pb_fleet, plan_rows, spawn_fleet, wait_for};
use meterflow_simulate::Plan;

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
            .arg("2")
            .env("METERFLOW_BIN", crate::harness::BIN)
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
        if std::env::var_os("METERFLOW_KEEP_CLUSTER").is_some() {
            // For a look after a failure: the processes and their logs stay.
            eprintln!("cluster kept in {}", self.dir.path().display());
            std::mem::forget(std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().unwrap(),
            ));
            return;
        }
        let _ = Command::new(format!("{HARNESS}/ctl.sh"))
            .arg(self.dir.path())
            .arg("down")
            .status();
    }
}

fn query(url: &str, sql: &str) -> String {
    crate::harness::ClickHouse::at(url).query(sql)
}

/// A query that may fail while a server starts (its tables still loading): `None` then.
fn try_query(url: &str, sql: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "--data-binary", sql, url])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).to_string())
}

fn count(url: &str, sql: &str) -> u64 {
    query(url, sql).trim().parse().unwrap()
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
            let mut state = Vec::new();
            for r in [1, 2] {
                let url = cluster.url(shard, r);
                try_query(url, &format!("SYSTEM SYNC REPLICA {db}.readings_local"))?;
                let rows: u64 = try_query(
                    url,
                    &format!("SELECT count() FROM {db}.readings_local FINAL"),
                )?
                .trim()
                .parse()
                .ok()?;
                let replica = try_query(
                    url,
                    &format!(
                        "SELECT is_readonly, queue_size, inserts_in_queue FROM system.replicas \
                         WHERE database = '{db}' AND table = 'readings_local'"
                    ),
                )?;
                state.push((rows, replica.trim().to_string()));
            }
            let settled = state.iter().all(|(_, r)| r == "0\t0\t0");
            (settled && state[0].0 == state[1].0 && state[0].0 > 0).then_some(())
        });
    }
}

/// The port of a `host:port` in cluster.env.
fn port(addr: &str) -> u16 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

/// A counter or gauge of node `n`'s `/metrics` (0 when absent or the node is down).
fn node_metric(cluster: &Cluster, n: u8, name: &str) -> f64 {
    let addr = &cluster.env[&format!("NODE_{n}_HTTP")];
    let page = Command::new("curl")
        .args(["-sS", &format!("http://{addr}/metrics")])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    page.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Starts a fleet of 40 meters through HAProxy and runs `kill` (a `ctl.sh` command) once
/// its first rows are on the cluster and before its last: a failure mid-run.
fn fleet_with_a_failure(cluster: &Cluster, prefix: &str, kill: &[&str]) -> (Plan, u64, Child) {
    let plan = pb_fleet(prefix, 40, 100);
    let rows = plan_rows(&plan) as u64;
    let publishing = spawn_fleet(port(&cluster.env["MQTT"]), &plan, 20);
    wait_for(&format!("the first rows of {prefix}"), || {
        let n = fleet_rows(cluster, prefix);
        assert!(
            n < rows,
            "the fleet finished before the kill: make it longer"
        );
        (n > 0).then_some(())
    });
    cluster.ctl(kill);
    (plan, rows, publishing)
}

/// Waits until every one of a fleet's `rows` is in `readings FINAL`, and checks none is there
/// twice.
fn every_reading_once(cluster: &Cluster, prefix: &str, rows: u64) {
    wait_for(&format!("every acknowledged reading of {prefix}"), || {
        (fleet_rows(cluster, prefix) >= rows).then_some(())
    });
    assert_eq!(
        fleet_rows(cluster, prefix),
        rows,
        "each reading of {prefix} once"
    );
}

/// Rows of one fleet in `readings FINAL`, through the Distributed table.
fn fleet_rows(cluster: &Cluster, prefix: &str) -> u64 {
    count(
        &cluster.env["CLICKHOUSE_URL"],
        &format!("SELECT count() FROM meterflow.readings FINAL WHERE meter_id LIKE '{prefix}%'"),
    )
}

#[test]
fn a_cluster_keeps_every_reading_through_a_dead_replica_and_a_dead_node() {
    let cluster = Cluster::up();
    let db = "meterflow";

    // The schema, ON CLUSTER (by up.sh): every server has the local and Distributed tables.
    let want_tables: BTreeSet<String> = [
        "dead_letters",
        "dead_letters_local",
        "device_status",
        "device_status_local",
        "events",
        "events_local",
        "meters",
        "meters_local",
        "readings",
        "readings_daily",
        "readings_daily_local",
        "readings_hourly",
        "readings_hourly_local",
        "readings_local",
        "readings_vee",
        "readings_vee_local",
        "vee_exceptions",
        "vee_exceptions_local",
        "vee_runs",
        "vee_runs_local",
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

    // 1. Replica 2 of shard 2 is killed while a fleet publishes through HAProxy.
    let (plan, rows, publishing) =
        fleet_with_a_failure(&cluster, "rep-", &["kill-replica", "2", "2"]);
    assert_eq!(
        fleet_acked(publishing),
        (plan.meters * plan.messages) as u64
    );
    // Ingest goes on: the nodes' inserts of every row are acknowledged by the cluster (an
    // insert waits for every shard; shard 2 takes it on its live replica).
    wait_for("every row inserted with a replica down", || {
        let written: f64 = (1..=2)
            .map(|n| {
                node_metric(
                    &cluster,
                    n,
                    "meterflow_rows_written_total{sink=\"clickhouse\"}",
                )
            })
            .sum();
        (written >= rows as f64).then_some(())
    });
    // The replica comes back, catches up, and agrees with its peer. (Rows it took and had not
    // passed on when it died are only on it until then: without insert_quorum, an
    // acknowledged insert is on one replica until it replicates.)
    cluster.ctl(&["start-replica", "2", "2"]);
    wait_replicas_agree(&cluster, db);
    assert_eq!(fleet_rows(&cluster, "rep-"), rows);
    // Each shard holds whole meters: no meter on both.
    let on = |shard: u8| -> BTreeSet<String> {
        query(
            cluster.url(shard, 1),
            &format!(
                "SELECT DISTINCT meter_id FROM {db}.readings_local WHERE meter_id LIKE 'rep-%'"
            ),
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
            &format!(
                "SELECT uniqExact(meter_id) FROM {db}.readings_hourly WHERE meter_id LIKE 'rep-%'"
            )
        ),
        plan.meters as u64
    );

    // Behind the load balancer, either node answers for every meter: its own from its state,
    // the other node's from ClickHouse (through the Distributed tables).
    let mut from_clickhouse = 0;
    for n in [1u8, 2] {
        let http = &cluster.env[&format!("NODE_{n}_HTTP")];
        for m in 0..plan.meters {
            let id = plan.meter_id(m);
            let out = Command::new("curl")
                .args(["-sS", &format!("http://{http}/api/devices/{id}")])
                .output()
                .unwrap();
            let device: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            for row in plan.expected_rows(m, plan.messages - 1) {
                let last = &device["last_values"][row.channel];
                assert_eq!(last["value"], row.value, "node {n}, {id}: {device}");
                assert_eq!(last["ts_ms"], row.ts_ms, "node {n}, {id}: {device}");
            }
            from_clickhouse += usize::from(device["from"] == "clickhouse");
        }
    }
    assert!(
        from_clickhouse > 0 && from_clickhouse < 2 * plan.meters,
        "each node heard some meters and read the others from ClickHouse ({from_clickhouse})"
    );

    // MQTT over TLS through HAProxy, passed through: the node sees the client certificate,
    // takes its CN as the meter's identity, and refuses a publish for another meter.
    let tls_publish = |topic: &str| {
        Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port(&cluster.env["MQTT_TLS"]).to_string()])
            .args(["--cafile", &cluster.env["TLS_CA"]])
            .args(["--cert", &cluster.env["TLS_CLIENT_CERT"]])
            .args(["--key", &cluster.env["TLS_CLIENT_KEY"]])
            .args(["-q", "1", "-t", topic])
            .args(["-m", r#"{"readings":[{"channel":"1-0:1.8.0","ts":1719792000000,"value":42.5,"unit":"kWh"}]}"#])
            .output()
            .unwrap()
    };
    assert!(tls_publish("meters/tls-meter-1/json").status.success());
    tls_publish("meters/tls-meter-2/json");
    wait_for("the TLS meter's reading and the refused publish", || {
        let url = &cluster.env["CLICKHOUSE_URL"];
        let reading = query(
            url,
            &format!("SELECT meter_id, value FROM {db}.readings WHERE meter_id LIKE 'tls-meter-%' FORMAT TSV"),
        );
        let refused = query(
            url,
            &format!("SELECT meter_id, kind FROM {db}.dead_letters WHERE kind = 'unauthorized' FORMAT TSV"),
        );
        (!reading.is_empty() && !refused.is_empty()).then_some((reading, refused))
    });
    let url = &cluster.env["CLICKHOUSE_URL"];
    assert_eq!(
        query(url, &format!("SELECT meter_id, value FROM {db}.readings WHERE meter_id LIKE 'tls-meter-%' FORMAT TSV")),
        "tls-meter-1\t42.5\n"
    );
    let refused = query(
        url,
        &format!(
            "SELECT meter_id, reason FROM {db}.dead_letters WHERE kind = 'unauthorized' FORMAT TSV"
        ),
    );
    assert!(
        refused.starts_with("tls-meter-1\t") && refused.contains("tls-meter-2"),
        "{refused}"
    );

    // VEE on the cluster (its tables Distributed over the shards): a run over the day of
    // tls-meter-1's reading stores its run, and billing reads as billed from it.
    let (_cfg, vee_config) = crate::harness::config_file(&format!(
        "data_dir = \"{}\"\n[clickhouse]\nurl = \"{url}\"\ndatabase = \"{db}\"\ncluster = \"meterflow\"\n",
        cluster.dir.path().join("vee-data").display()
    ));
    let day = ["--from", "2024-07-01", "--to", "2024-07-02"];
    let out = Command::new(crate::harness::BIN)
        .args(["vee", "--config", &vee_config, "--format", "csv"])
        .args(day)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("the VEE run in the Distributed vee_runs", || {
        (count(url, &format!("SELECT count() FROM {db}.vee_runs")) == 1).then_some(())
    });
    let mut args = vec!["billing", "--meter", "tls-meter-1"];
    args.extend_from_slice(&day);
    let bill = crate::harness::query_csv(&vee_config, &args);
    assert!(
        bill.lines()
            .nth(1)
            .is_some_and(|l| l.ends_with(",as billed")),
        "{bill}"
    );
    let mut args = vec!["exceptions"];
    args.extend_from_slice(&day);
    crate::harness::query_csv(&vee_config, &args);

    // CoAP through nginx's UDP balancer: each meter's datagrams (hashed by its address and
    // port) go to one node, the meters are spread over both, every report is answered and
    // stored.
    let coap_plan = pb_fleet("coap-", 20, 10);
    let summary = crate::harness::simulate_json(
        crate::harness::simulate_command(port(&cluster.env["MQTT"]), &coap_plan, 0)
            .args(["--coap", &cluster.env["COAP"]]),
    );
    assert_eq!(
        summary["messages_acked"],
        (coap_plan.meters * coap_plan.messages) as u64,
        "{summary}"
    );
    wait_for("the CoAP fleet's readings", || {
        (fleet_rows(&cluster, "coap-") == plan_rows(&coap_plan) as u64).then_some(())
    });
    for n in [1u8, 2] {
        assert!(
            node_metric(&cluster, n, "meterflow_received_total{source=\"coap\"}") > 0.0,
            "node {n} took CoAP meters"
        );
    }

    // 2. Node 1 is killed with kill -9 while a fleet publishes through HAProxy: its meters
    //    reconnect (to node 2, HAProxy redispatching), node 1 comes back and replays its WAL.
    let (plan, rows, publishing) = fleet_with_a_failure(&cluster, "node-", &["kill-node", "1"]);
    let summary = fleet_summary(publishing);
    assert_eq!(
        summary["messages_acked"],
        (plan.meters * plan.messages) as u64,
        "{summary}"
    );
    assert!(
        summary["reconnects"].as_u64().unwrap() > 0,
        "meters lost node 1: {summary}"
    );
    cluster.ctl(&["start-node", "1"]);
    every_reading_once(&cluster, "node-", rows);
    let node1_log = std::fs::read_to_string(cluster.dir.path().join("node-1/serve.log")).unwrap();
    assert!(
        node1_log.contains("replaying the WAL records"),
        "node 1 replayed its WAL: {node1_log}"
    );

    // 3. Node 2 gets SIGTERM while a fleet publishes: it stops accepting (HAProxy sends its
    //    meters' new connections to node 1), answers what it read, flushes and exits cleanly.
    let (plan, rows, publishing) = fleet_with_a_failure(&cluster, "term-", &["stop-node", "2"]);
    let summary = fleet_summary(publishing);
    assert_eq!(
        summary["messages_acked"],
        (plan.meters * plan.messages) as u64,
        "{summary}"
    );
    let node2_log = std::fs::read_to_string(cluster.dir.path().join("node-2/serve.log")).unwrap();
    assert!(
        node2_log.contains("meterflow stopped cleanly"),
        "node 2 drained: {node2_log}"
    );
    every_reading_once(&cluster, "term-", rows);
    cluster.ctl(&["start-node", "2"]);
    wait_replicas_agree(&cluster, db);
}
