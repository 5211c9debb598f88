//! The bridge against a real broker: Mosquitto 2.0 from Debian with a password file and an
//! ACL (each meter may publish under its own id only; meterflow's user may only read). Two
//! meterflow nodes share one subscription; one is killed with kill -9 mid-run and started
//! again. Every report Mosquitto acknowledged to the meters is in ClickHouse's `readings
//! FINAL` exactly once, with `source = 'bridge'`, both nodes took a share, a report on a topic
//! the pipeline cannot route became a dead letter, and a meter could not publish for another.
//! With the recommended ACL line, a broker user named `E2/json` cannot have a report stored
//! as E2 (with the line the docs gave before, it can).

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::{fleet_acked, free_port, pb_fleet, plan_rows, wait_for, ClickHouse, Server};
use meterflow_simulate::Plan;

/// A private Mosquitto with logins and an ACL, stopped when dropped.
struct Mosquitto {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Mosquitto {
    /// `users` log in with their password; `acl` is Mosquitto's ACL file.
    fn start(users: &[(String, String)], acl: &str) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let passwords = dir.path().join("passwords");
        let plain: String = users.iter().map(|(u, p)| format!("{u}:{p}\n")).collect();
        std::fs::write(&passwords, plain).unwrap();
        // Hashes every password of the file in place.
        let status = Command::new("mosquitto_passwd")
            .arg("-U")
            .arg(&passwords)
            .status()
            .expect("mosquitto_passwd (Debian package mosquitto) runs");
        assert!(status.success());
        std::fs::write(dir.path().join("acl"), acl).unwrap();
        let port = free_port();
        // max_queued_messages: what the broker holds for a session that is away (a killed
        // node). Mosquitto's default, 1000, drops the rest without telling the publisher.
        let conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\nacl_file {}\n\
             persistence false\nmax_queued_messages 1000000\nlog_dest stderr\nlog_type all\n",
            passwords.display(),
            dir.path().join("acl").display(),
        );
        std::fs::write(dir.path().join("mosquitto.conf"), conf).unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            // Its log: Mosquitto, started as root, runs as user mosquitto and could not open
            // a file in this folder.
            .stderr(std::fs::File::create(dir.path().join("mosquitto.log")).unwrap())
            .spawn()
            .expect("mosquitto (Debian package mosquitto) starts");
        let mut broker = Mosquitto { child, port, dir };
        wait_for("Mosquitto to listen", || {
            if let Ok(Some(status)) = broker.child.try_wait() {
                panic!("mosquitto exited ({status}):\n{}", broker.log());
            }
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        broker
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Mosquitto's users for a fleet (each meter logs in with its own secret) plus meterflow's,
/// the same as a CSV for `meterflow simulate --credentials`, and an ACL that keeps each meter
/// to its own topics and lets meterflow only read.
fn logins(
    plan: &Plan,
    bridge_password: &str,
) -> (Vec<(String, String)>, tempfile::NamedTempFile, &'static str) {
    let mut users = vec![("meterflow".to_string(), bridge_password.to_string())];
    let mut csv = String::from("meter_id,secret\n");
    for m in 0..plan.meters {
        let (id, secret) = (plan.meter_id(m), format!("secret-of-{m:04}-long-enough"));
        csv.push_str(&format!("{id},{secret}\n"));
        users.push((id, secret));
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), csv).unwrap();
    (users, file, ACL)
}

/// The ACL line the docs recommend: the bridge's topic pattern with `%u` for `{meter_id}` and
/// `+` for `{format}`, never `#` (README, docs/ARCHITECTURE.md, the example config).
const METER_ACL_LINE: &str = "pattern write meters/%u/+";

/// Mosquitto's ACL for these tests: meterflow reads, each meter writes its own topics.
const ACL: &str = "user meterflow\ntopic read meters/#\n\npattern write meters/%u/+\n";

/// `plan` published to the broker, each meter with its own login.
fn spawn_fleet_at(broker: &Mosquitto, plan: &Plan, creds: &Path, pause_ms: u64) -> Child {
    crate::harness::simulate_command(broker.port, plan, pause_ms)
        .arg("--credentials")
        .arg(creds)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// A `[[bridge]]` section for the broker.
fn bridge_section(broker: &Mosquitto, password: &str) -> String {
    format!(
        "[[bridge]]\nurl = \"mqtt://meterflow:{password}@127.0.0.1:{}\"\nname = \"mosquitto\"\n",
        broker.port
    )
}

/// meterflow's password at the broker in these tests.
const BRIDGE_PASSWORD: &str = "bridge-secret-for-the-test";

/// The number in the first line of a query's answer.
fn number(text: &str) -> u64 {
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("a number: {text:?}"))
}

#[test]
fn two_nodes_share_a_mosquitto_subscription_and_a_killed_one_loses_nothing() {
    // About 5 s of publishing at 25 ms between reports: node 1 is killed well inside it.
    let plan = pb_fleet("br-", 30, 200);
    let bridge_password = BRIDGE_PASSWORD;
    let (users, creds, acl) = logins(&plan, bridge_password);
    let broker = Mosquitto::start(&users, acl);

    let clickhouse = ClickHouse::shared();
    let db = ClickHouse::fresh_database("bridge");
    let node_config = |id: &str| {
        crate::harness::config_file(&format!(
            "[node]\nid = \"{id}\"\n[clickhouse]\nurl = \"{}\"\ndatabase = \"{db}\"\n\
             [batch]\nmax_age_ms = 100\n{}receive_maximum = 8\n",
            clickhouse.url,
            bridge_section(&broker, bridge_password)
        ))
    };
    // A small Receive Maximum: Mosquitto keeps to it, but sends a resumed session everything
    // it queued meanwhile at once (node 1's, after the kill), far more than 8 unacknowledged.
    let (_c1, config_1) = node_config("mf-1");
    let (_c2, config_2) = node_config("mf-2");
    crate::harness::apply_schema(&config_1);
    let mut node_1 = Server::start_with(&["--config", &config_1]);
    let node_2 = Server::start_with(&["--config", &config_2]);
    for node in [&node_1, &node_2] {
        wait_for("both bridges to subscribe", || {
            node.log_text().contains("bridge subscribed").then_some(())
        });
        // The password is in the config, never in the log.
        assert!(!node.log_text().contains(bridge_password));
    }

    // Before the fleet: a meter publishing for another meter (Mosquitto's ACL drops it) and a
    // report on a topic the pipeline cannot route (a dead letter, acknowledged all the same).
    let (first, first_secret) = &users[1];
    for topic in [
        format!("meters/{first}-not-mine/json"),
        format!("meters/{first}/xml"),
    ] {
        let status = Command::new("mosquitto_pub")
            .args(["-p", &broker.port.to_string(), "-q", "1", "-V", "mqttv5"])
            .args(["-u", first, "-P", first_secret, "-i", "rogue"])
            .args(["-t", &topic, "-m", "{\"readings\":[]}"])
            .status()
            .unwrap();
        assert!(status.success());
    }

    let mut fleet = spawn_fleet_at(&broker, &plan, creds.path(), 25);
    // Mid-run: node 1 has acknowledged part of its share to Mosquitto.
    let acked = r#"meterflow_bridge_acked_total{bridge="mosquitto"}"#;
    wait_for("node 1 to take a share", || {
        (node_1.metric(acked) >= 200.0).then_some(())
    });
    assert!(
        fleet.try_wait().unwrap().is_none(),
        "the fleet is still publishing when node 1 is killed"
    );
    node_1.kill_9();
    std::thread::sleep(Duration::from_millis(500));
    let node_1 = node_1.restart();
    wait_for("node 1's bridge to resume its session", || {
        node_1
            .log_text()
            .contains("session_present=true")
            .then_some(())
    });
    // What Mosquitto had sent node 1 and not had acknowledged, and what it queued for node 1's
    // session while it was away, goes to node 1 again.
    wait_for("node 1 to take messages again", || {
        (node_1.metric(r#"meterflow_received_total{source="bridge"}"#) > 0.0).then_some(())
    });
    let reports = fleet_acked(fleet);
    assert_eq!(
        reports as usize,
        plan.meters * plan.messages,
        "Mosquitto took every report"
    );
    let want = plan_rows(&plan) as u64;

    let count = |sql: &str| number(&clickhouse.query(&format!("{sql} FORMAT TSV")));
    wait_for("every reading in ClickHouse", || {
        let have = count(&format!(
            "SELECT count() FROM {db}.readings FINAL WHERE meter_id LIKE 'br-%'"
        ));
        assert!(
            have <= want,
            "more readings than were sent: {have} > {want}"
        );
        (have == want).then_some(())
    });
    // Exactly the plan's values, each once after dedup, all from the bridge.
    assert_eq!(
        count(&format!(
            "SELECT uniqExact(meter_id, channel, ts, value) FROM {db}.readings WHERE meter_id LIKE 'br-%'"
        )),
        want
    );
    let expected_sum: f64 = (0..plan.meters)
        .flat_map(|m| (0..plan.messages).map(move |k| (m, k)))
        .map(|(m, k)| {
            plan.expected_rows(m, k)
                .iter()
                .map(|r| r.value)
                .sum::<f64>()
        })
        .sum();
    let sum: f64 = clickhouse
        .query(&format!(
            "SELECT sum(value) FROM {db}.readings FINAL WHERE meter_id LIKE 'br-%' FORMAT TSV"
        ))
        .trim()
        .parse()
        .unwrap();
    assert!(
        (sum - expected_sum).abs() < 1e-6 * expected_sum.abs().max(1.0),
        "{sum} vs {expected_sum}"
    );
    assert_eq!(
        clickhouse
            .query(&format!(
                "SELECT DISTINCT source FROM {db}.readings FORMAT TSV"
            ))
            .trim(),
        "bridge"
    );
    assert_eq!(
        count(&format!(
            "SELECT count() FROM {db}.readings WHERE meter_id = '{first}-not-mine'"
        )),
        0,
        "Mosquitto's ACL keeps a meter to its own topics"
    );
    let letters = clickhouse.query(&format!(
        "SELECT meter_id, source, kind, reason FROM {db}.dead_letters FORMAT TSV"
    ));
    assert!(
        letters.contains("\tbridge\tbad_topic\t") && letters.contains("xml"),
        "{letters}"
    );
    // Both nodes took a share: the subscription is shared, not duplicated.
    let node_2_took = node_2.metric(r#"meterflow_received_total{source="bridge"}"#);
    assert!(
        node_2_took > 0.0 && node_2_took < reports as f64,
        "{node_2_took}"
    );

    for node in [node_1, node_2] {
        let (status, _, log, _) = node.stop();
        assert!(status.success(), "{log}");
        assert!(log.contains("bridge stopped"), "{log}");
        assert!(!log.contains(bridge_password));
    }
    drop(broker);
}

#[test]
fn a_message_the_wal_cannot_take_is_not_acknowledged_and_comes_again() {
    // A WAL of 16 KiB that nothing confirms (Parquet files stay open for an hour): it fills
    // up while the broker still holds most of the fleet's reports.
    let plan = pb_fleet("wf-", 10, 30);
    let password = BRIDGE_PASSWORD;
    let (users, creds, acl) = logins(&plan, password);
    let broker = Mosquitto::start(&users, acl);
    let (_dir, config) = crate::harness::config_file(&format!(
        "[wal]\nsegment_bytes = 8192\nmax_bytes = 16384\n[parquet]\nfile_max_age_s = 3600\n{}",
        bridge_section(&broker, password)
    ));
    let node = Server::start_with(&["--config", &config]);
    wait_for("the bridge to subscribe", || {
        node.log_text().contains("bridge subscribed").then_some(())
    });
    let reports = fleet_acked(spawn_fleet_at(&broker, &plan, creds.path(), 0));
    assert_eq!(reports as usize, plan.meters * plan.messages);
    wait_for("a report the WAL refused", || {
        (node.metric(r#"meterflow_bridge_not_acked_total{bridge="mosquitto"}"#) > 0.0).then_some(())
    });
    assert!(node.metric("meterflow_wal_overflow_total") >= 1.0);
    let acked = node.metric(r#"meterflow_bridge_acked_total{bridge="mosquitto"}"#);
    assert!(acked < reports as f64, "{acked} acknowledged of {reports}");

    // SIGTERM closes the Parquet files (the WAL is confirmed); the next run has room, resumes
    // the session, and the broker sends what was not acknowledged.
    let (status, _, log, tmp) = node.stop();
    assert!(status.success(), "{log}");
    std::fs::write(
        &config,
        format!(
            "[parquet]\nfile_max_age_s = 1\n{}",
            bridge_section(&broker, password)
        ),
    )
    .unwrap();
    let node = Server::start_in(tmp, &["--config", &config]);
    // Done when every report was acknowledged at least once and nothing the node took waits
    // for its acknowledgement. (A PUBACK sent just before the bridge dropped its connection
    // may never reach the broker, the socket being reset with unread data: then it sends the
    // report again, and the report is stored twice, never lost.)
    let bridge = |name: &str| node.metric(&format!("{name}{{bridge=\"mosquitto\"}}"));
    wait_for("every report acknowledged", || {
        let now = bridge("meterflow_bridge_acked_total");
        let taken = node.metric(r#"meterflow_received_total{source="bridge"}"#);
        (acked + now >= reports as f64 && now == taken).then_some(())
    });
    let (status, data_dir, log, _tmp) = node.stop();
    assert!(status.success(), "{log}");
    // Every report once after dedup, with its values; a report may be there twice (kept in
    // the WAL and sent again), never missing.
    let want = plan_rows(&plan);
    crate::harness::assert_fleet_arrived(&data_dir, &[plan], want, false);
}

#[test]
fn a_broker_user_named_like_a_topic_cannot_publish_as_a_meter() {
    // Mosquitto puts the username into `%u` as it is, `/` included. With the ACL line the
    // docs used to give, `pattern write meters/%u/#`, a broker user named "E2/json" may write
    // `meters/E2/json` (`#` also matches its parent level), which the bridge takes as meter
    // E2's report. With the recommended `meters/%u/+` that user may write
    // `meters/E2/json/{anything}` only: four levels, which the bridge's subscription
    // (`meters/+/+`) does not even take, and nothing is stored as E2 but E2's own report. One
    // node takes from two brokers that differ only in that line.
    assert!(ACL.contains(METER_ACL_LINE));
    // The line the docs give is the one this test shows safe, and the former one is gone.
    for (doc, text) in [
        ("README.md", include_str!("../../README.md")),
        (
            "docs/ARCHITECTURE.md",
            include_str!("../../docs/ARCHITECTURE.md"),
        ),
        (
            "deploy/meterflow.example.toml",
            include_str!("../../deploy/meterflow.example.toml"),
        ),
    ] {
        assert!(
            text.contains(METER_ACL_LINE),
            "{doc} recommends {METER_ACL_LINE}"
        );
        assert!(
            !text.contains("pattern write meters/%u/#"),
            "{doc} still gives the former line"
        );
    }
    let forger = (
        "E2/json".to_string(),
        "forger-secret-0123456789".to_string(),
    );
    let e2 = ("E2".to_string(), "e2-secret-0123456789".to_string());
    let users = vec![
        ("meterflow".to_string(), BRIDGE_PASSWORD.to_string()),
        e2.clone(),
        forger.clone(),
    ];
    let acl = |meters: &str| format!("user meterflow\ntopic read meters/#\n\n{meters}\n");
    let recommended = Mosquitto::start(&users, &acl(METER_ACL_LINE));
    let former = Mosquitto::start(&users, &acl("pattern write meters/%u/#"));
    let section = |broker: &Mosquitto, name: &str| {
        bridge_section(broker, BRIDGE_PASSWORD).replace("\"mosquitto\"", &format!("\"{name}\""))
    };
    let (_dir, config) = crate::harness::config_file(&format!(
        "[batch]\nmax_age_ms = 100\n{}{}",
        section(&recommended, "recommended"),
        section(&former, "former")
    ));
    let node = Server::start_with(&["--config", &config]);
    for name in ["recommended", "former"] {
        wait_for("both bridges to subscribe", || {
            (node.metric(&format!("meterflow_bridge_subscribed{{bridge=\"{name}\"}}")) == 1.0)
                .then_some(())
        });
    }

    // mosquitto_pub -q 1 returns once the broker has answered: what it refused is gone then.
    let publish = |broker: &Mosquitto,
                   (user, password): &(String, String),
                   topic: &str,
                   value: u32| {
        let report = format!(
            r#"{{"readings":[{{"channel":"1-0:1.8.0","ts":"2024-03-01T12:00:00Z","value":{value},"unit":"kWh"}}]}}"#
        );
        let out = Command::new("mosquitto_pub")
            .args(["-p", &broker.port.to_string(), "-q", "1", "-V", "mqttv5"])
            .args(["-u", user, "-P", password, "-i", &format!("pub-{value}")])
            .args(["-t", topic, "-m", &report])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let said = publish(&recommended, &forger, "meters/E2/json", 666);
    assert!(
        said.contains("Not authorized"),
        "refused by the broker: {said}"
    );
    // What that user may write has four levels: not even in the bridge's subscription.
    publish(&recommended, &forger, "meters/E2/json/x", 665);
    publish(&recommended, &e2, "meters/E2/json", 2);
    publish(&former, &forger, "meters/E2/json", 667);
    wait_for("the two messages the brokers delivered", || {
        (node.metric(r#"meterflow_received_total{source="bridge"}"#) == 2.0).then_some(())
    });

    let (status, data_dir, log, _keep) = node.stop();
    assert!(status.success(), "{log}");
    let mut e2_values: Vec<f64> = crate::harness::read_readings(&data_dir)
        .into_iter()
        .map(|r| {
            assert_eq!(r.meter_id, "E2");
            r.value
        })
        .collect();
    e2_values.sort_by(f64::total_cmp);
    assert_eq!(
        e2_values,
        vec![2.0, 667.0],
        "E2's own report, and the forgery the former ACL line let through; none through the recommended one"
    );
    let letters = meterflow_storage::dead_letter::read_all(&data_dir.join("dead_letters")).unwrap();
    assert!(letters.is_empty(), "{letters:#?}");
    drop((recommended, former));
}
