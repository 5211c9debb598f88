//! DLMS/COSEM pushes through the real `meterflow serve` over MQTT (`mosquitto_pub -f`, binary
//! payload on `meters/{id}/dlms`): a ciphered push (the Tirol worked example: two M-Bus
//! segments, AES-GCM "encrypted only" under the meter's key from the credential store) gives
//! exactly its readings in Parquet; the same bytes again are a replay; a push whose system
//! title is another meter's is refused, and the same push in clear for a meter with a key;
//! each refusal is a dead letter with its kind and counted in
//! `meterflow_dlms_rejected_total{reason}`; the counters survive kill -9 (through the WAL's
//! replay) and a clean restart (through the counters file alone).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{read_readings, tirol_rows, Server};
use meterflow_storage::dead_letter;

const E1: &str = "e1-secret-0123456789";
const E2: &str = "e2-secret-0123456789";

/// A hex file of the Tirol example, as bytes in a file of `dir` (for `mosquitto_pub -f`).
fn fixture_file(dir: &Path, name: &str) -> PathBuf {
    hex_fixture(dir, &format!("fneur_smart_meter_tirol/{name}"))
}

fn publish(port: u16, user: &str, secret: &str, topic: &str, file: &Path) {
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-u", user, "-P", secret, "-t", topic, "-f"])
        .arg(file)
        .output()
        .expect("mosquitto_pub runs (the test command installs mosquitto-clients)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_ciphered_push_over_mqtt_is_stored_exactly_and_replays_and_forgeries_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("fleet.csv");
    // E1 is the Tirol meter (system title 4B464D1010000023, its key); E2 has no DLMS keys.
    std::fs::write(
        &csv,
        format!(
            "meter_id,secret,dlms_system_title,dlms_ek\n\
             E1,{E1},4B464D1010000023,101112131415161718191A1B1C1D1E1F\n\
             E2,{E2},,\n"
        ),
    )
    .unwrap();
    crate::harness::credentials(tmp.path(), &["import", csv.to_str().unwrap()]);
    let push = fixture_file(tmp.path(), "mbus_frames.hex");
    // The same DataNotification in clear (the document's decrypted APDU).
    let plain = fixture_file(tmp.path(), "apdu_plain.hex");
    let server = Server::start_in(tmp, &[]);
    publish(server.mqtt_port, "E1", E1, "meters/E1/dlms", &push);
    crate::harness::wait_for("the push handled", || {
        (server.metric("meterflow_decoded_total{format=\"dlms\"}") >= 1.0).then_some(())
    });
    // kill -9 and start again: the counter is remembered (from the checkpoint's counters, or
    // decided again as the WAL is replayed).
    let server = Server::start_in(server.crash(), &[]);
    let port = server.mqtt_port;
    // The same bytes again: a replay. From E2 for itself: the system title is E1's. In
    // clear for E1, which has a key: unprotected.
    publish(port, "E1", E1, "meters/E1/dlms", &push);
    publish(port, "E2", E2, "meters/E2/dlms", &push);
    publish(port, "E1", E1, "meters/E1/dlms", &plain);
    crate::harness::wait_for("the refusals counted", || {
        let m =
            |r: &str| server.metric(&format!("meterflow_dlms_rejected_total{{reason=\"{r}\"}}"));
        (m("replay") == 1.0 && m("unauthorized") == 1.0 && m("unprotected") == 1.0).then_some(())
    });
    // A clean stop writes the checkpoint and the counters with it: after a start with
    // nothing to replay from the WAL, the counters file alone refuses the push again.
    let (_, _, _, tmp) = server.stop();
    let server = Server::start_in(tmp, &[]);
    publish(server.mqtt_port, "E1", E1, "meters/E1/dlms", &push);
    crate::harness::wait_for("the replay refused from the counters file", || {
        (server.metric("meterflow_dlms_rejected_total{reason=\"replay\"}") == 1.0).then_some(())
    });
    // The device API counts each meter's refusals by kind, across the restarts.
    let (_, device) = server.http_get("/api/devices/E1");
    let device: serde_json::Value = serde_json::from_str(&device).unwrap();
    assert_eq!(
        device["dead_letters_by_kind"],
        serde_json::json!({"replay": 2, "unprotected": 1}),
        "{device}"
    );
    let (_, data_dir, log, _keep) = server.stop();
    assert!(
        !log.contains("101112131415161718191A1B1C1D1E1F"),
        "the key is in the log"
    );

    // Exactly the push's readings, at its own time (2021-07-19 15:46:35, UTC+2).
    // (Delivered at least once: a record replayed from the WAL may be stored twice.)
    let mut rows: Vec<(String, String, f64, String, i64)> = read_readings(&data_dir)
        .into_iter()
        .map(|r| (r.meter_id, r.channel, r.value, r.unit, r.ts_ms))
        .collect();
    rows.sort_by(|a, b| a.1.cmp(&b.1));
    rows.dedup();
    assert_eq!(rows, tirol_rows("E1"));

    let letters = dead_letter::read_all(&data_dir.join("dead_letters")).unwrap();
    let mut kinds: Vec<(String, String)> = letters
        .iter()
        .map(|l| (l.meter_id.clone().unwrap_or_default(), l.kind.clone()))
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("E1".to_string(), "replay".to_string()),
            ("E1".to_string(), "replay".to_string()),
            ("E1".to_string(), "unprotected".to_string()),
            ("E2".to_string(), "unauthorized".to_string())
        ]
    );
    let replay = letters.iter().find(|l| l.kind == "replay").unwrap();
    assert!(
        replay
            .reason
            .contains("invocation counter 2710426, not above the last accepted 2710426"),
        "{}",
        replay.reason
    );
    let forged = letters.iter().find(|l| l.kind == "unauthorized").unwrap();
    assert!(
        forged.reason.contains("meter E1's, sent for meter E2"),
        "{}",
        forged.reason
    );
    // The dead letters keep the bytes as sent.
    assert_eq!(replay.payload, std::fs::read(&push).unwrap());
    // Each replay is an event of E1 too (at its own second of arrival).
    let events = meterflow_storage::events::read_parquet(&data_dir, &Default::default()).unwrap();
    let replays: Vec<_> = events
        .iter()
        .filter(|e| e.kind == "replay_rejected")
        .collect();
    assert!(!replays.is_empty() && replays.len() <= 2, "{events:?}");
    assert!(replays
        .iter()
        .all(|e| e.meter_id == "E1" && e.severity == "critical"));
    assert!(
        replays[0].detail.contains("not above the last accepted"),
        "{replays:?}"
    );
}

/// The push profile of the Slovenian ECE list 2 (Iskra: manufacturer ISK), in the order its
/// values come; the reactive registers in kvarh, read as varh with scaler -3.
const ECE_LIST_2: &str = r#"[[dlms.profile]]
name = "ece-2"
manufacturers = ["ISK"]
objects = [
  "1/0-0:42.0.0.255/2",
  "1/0-0:96.1.3.255/2",
  "70/0-0:96.3.10.255/2",
  "1/0-0:96.14.0.255/2",
  { object = "3/1-0:1.8.0.255/2", unit = "Wh" },
  { object = "3/1-0:1.8.1.255/2", unit = "Wh" },
  { object = "3/1-0:1.8.2.255/2", unit = "Wh" },
  { object = "3/1-0:2.8.0.255/2", unit = "Wh" },
  { object = "3/1-0:2.8.1.255/2", unit = "Wh" },
  { object = "3/1-0:2.8.2.255/2", unit = "Wh" },
  { object = "3/1-0:3.8.0.255/2", scaler = -3, unit = "varh" },
  { object = "3/1-0:4.8.0.255/2", scaler = -3, unit = "varh" },
]
"#;

/// The bytes of a hex fixture under `decoders/tests/fixtures/dlms/` (`#` comments are not
/// data), written to a file of `dir` for `mosquitto_pub -f`.
fn hex_fixture(dir: &Path, relative: &str) -> PathBuf {
    let path = dir.join(relative.replace('/', "_")).with_extension("bin");
    std::fs::write(&path, crate::harness::dlms_fixture(relative)).unwrap();
    path
}

/// What the config says pushes are read with, through the real `serve`:
/// - a values-only push (the Slovenian ECE list 2 of an Iskra meter) is read through the
///   profile of its meter's manufacturer (ISK, from its system title), and its logical device
///   name becomes the meter's serial number on the device API;
/// - a meter whose credential names a profile that is not configured gets a dead letter that
///   says so (and a warning at start-up);
/// - a push whose clock carries no deviation (the Norwegian HAN list) is read in
///   `dlms.timezone`, unflagged.
#[test]
fn values_only_pushes_are_read_through_their_profile_and_clocks_in_their_zone() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("fleet.csv");
    std::fs::write(
        &csv,
        format!(
            "meter_id,secret,dlms_system_title,dlms_profile\n\
             E3,{E1},49534B0000000003,\n\
             E4,{E2},4142430000000004,missing\n\
             E5,{E1},,\n"
        ),
    )
    .unwrap();
    crate::harness::credentials(tmp.path(), &["import", csv.to_str().unwrap()]);
    let config = tmp.path().join("meterflow.toml");
    std::fs::write(
        &config,
        format!("[dlms]\ntimezone = \"Europe/Oslo\"\n\n{ECE_LIST_2}"),
    )
    .unwrap();
    let slovenia = hex_fixture(tmp.path(), "athombv_node_dsmr_parser/slovenia-list-2.txt");
    let norway = hex_fixture(tmp.path(), "esphome_dlms_parser/hdlc_norway_han_3phase.hex");
    let server = Server::start_in(tmp, &["--config", config.to_str().unwrap()]);
    publish(server.mqtt_port, "E3", E1, "meters/E3/dlms", &slovenia);
    publish(server.mqtt_port, "E4", E2, "meters/E4/dlms", &slovenia);
    publish(server.mqtt_port, "E5", E1, "meters/E5/dlms", &norway);
    crate::harness::wait_for("the three pushes handled", || {
        let decoded = server.metric("meterflow_decoded_total{format=\"dlms\"}");
        let dead = server.metric("meterflow_dead_letters_total{reason=\"unsupported\"}");
        (decoded >= 2.0 && dead >= 1.0).then_some(())
    });
    let (_, device) = server.http_get("/api/devices/E3");
    let device: serde_json::Value = serde_json::from_str(&device).unwrap();
    assert_eq!(device["status"]["serial"], "ISK1030783826316", "{device}");
    let (_, data_dir, log, _keep) = server.stop();
    assert!(
        log.contains("push profiles that are not configured") && log.contains("first_meter=E4"),
        "{log}"
    );

    let rows = read_readings(&data_dir);
    // E3: the profile's numbers, at the push's time (2025-09-04 10:00:10, deviation -120).
    let mut e3: Vec<(String, f64, String, u16, i64)> = rows
        .iter()
        .filter(|r| r.meter_id == "E3")
        .map(|r| {
            (
                r.channel.clone(),
                r.value,
                r.unit.clone(),
                r.quality,
                r.ts_ms,
            )
        })
        .collect();
    e3.sort_by(|a, b| a.0.cmp(&b.0));
    let at = 1_756_972_810_000;
    let want: Vec<(String, f64, String, u16, i64)> = [
        ("0-0:96.3.10", 1.0, ""),
        ("1-0:1.8.0", 3810.0, "Wh"),
        ("1-0:1.8.1", 0.0, "Wh"),
        ("1-0:1.8.2", 3810.0, "Wh"),
        ("1-0:2.8.0", 0.0, "Wh"),
        ("1-0:2.8.1", 0.0, "Wh"),
        ("1-0:2.8.2", 0.0, "Wh"),
        ("1-0:3.8.0", 4.531, "varh"),
        ("1-0:4.8.0", 0.0, "varh"),
    ]
    .into_iter()
    .map(|(c, v, u)| (c.to_string(), v, u.to_string(), 0, at))
    .collect();
    assert_eq!(e3, want);
    // E5: the Norwegian list's 26 numbers as its origin reads them, at its clock's
    // 2019-12-16 07:59:40 in Oslo (UTC+1): 06:59:40 UTC, not flagged.
    let vectors: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!(
            "{}/decoders/tests/fixtures/dlms/esphome_dlms_parser/vectors.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap(),
    )
    .unwrap();
    let vector = vectors["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == "hdlc_norway_han_3phase")
        .unwrap();
    let mut want: Vec<(String, f64, String, u16, i64)> = vector["expect"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "number")
        .map(|e| {
            (
                e["obis"].as_str().unwrap().to_string(),
                e["value"].as_f64().unwrap(),
                e["unit"].as_str().unwrap_or("").to_string(),
                0,
                1_576_479_580_000,
            )
        })
        .collect();
    want.sort_by(|a, b| a.0.cmp(&b.0));
    let mut e5: Vec<(String, f64, String, u16, i64)> = rows
        .iter()
        .filter(|r| r.meter_id == "E5")
        .map(|r| {
            (
                r.channel.clone(),
                r.value,
                r.unit.clone(),
                r.quality,
                r.ts_ms,
            )
        })
        .collect();
    e5.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(want.len(), 26);
    assert_eq!(e5, want);
    // E4: nothing stored; a dead letter that names the profile.
    assert!(rows.iter().all(|r| r.meter_id != "E4"));
    let letters = dead_letter::read_all(&data_dir.join("dead_letters")).unwrap();
    let e4: Vec<&str> = letters
        .iter()
        .filter(|l| l.meter_id.as_deref() == Some("E4"))
        .map(|l| l.reason.as_str())
        .collect();
    assert_eq!(e4.len(), 1);
    assert!(
        e4[0].contains("push profile \"missing\" is not configured"),
        "{}",
        e4[0]
    );
}

/// `meterflow decode --format dlms`: the keys from the environment (not the command line), a
/// values-only push through `--dlms-profile` of the config, and a profile the config has not
/// named refused before anything is read.
#[test]
fn decode_reads_a_push_with_keys_from_the_environment_and_a_profile_from_the_config() {
    let tmp = tempfile::tempdir().unwrap();
    let tirol_push = fixture_file(tmp.path(), "mbus_frames.hex");
    let out = Command::new(crate::harness::BIN)
        .args(["decode", "--format", "dlms"])
        .arg(&tirol_push)
        .env(
            "METERFLOW_DECODE_DLMS_EK",
            "101112131415161718191A1B1C1D1E1F",
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("system title 4B464D1010000023 (KFM)")
            && text.contains("1-0:1.8.0")
            && text.contains("9108")
            && text.contains("8 row(s)"),
        "{text}"
    );

    let slovenia = hex_fixture(tmp.path(), "athombv_node_dsmr_parser/slovenia-list-2.txt");
    let config = tmp.path().join("meterflow.toml");
    std::fs::write(&config, ECE_LIST_2).unwrap();
    let decode = |profile: &str| {
        Command::new(crate::harness::BIN)
            .args(["decode", "--format", "dlms", "--dlms-profile", profile])
            .arg("--config")
            .arg(&config)
            .arg(&slovenia)
            .output()
            .unwrap()
    };
    let out = decode("ece-2");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("push profile ece-2")
            && text.contains("1-0:3.8.0")
            && text.contains("4.531")
            && text.contains("varh")
            && text.contains("9 row(s)"),
        "{text}"
    );
    let out = decode("ece-9");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--dlms-profile: the config has no [[dlms.profile]] named \"ece-9\""),
        "{err}"
    );
}

/// A ciphered push posted over CoAP (libcoap's client, Content-Format 65002) reaches
/// ClickHouse with exactly its readings; posted again it is a `replay`, kept as a dead letter
/// in ClickHouse with its bytes.
#[test]
fn a_push_over_coap_reaches_clickhouse_exactly_and_its_replay_is_a_dead_letter_there() {
    use crate::harness::ClickHouse;
    use crate::serve_coap::{answer_code, coap_client};
    let ch = ClickHouse::shared();
    let db = ClickHouse::fresh_database("mf_dlms");
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("fleet.csv");
    std::fs::write(
        &csv,
        format!(
            "meter_id,secret,dlms_system_title,dlms_ek\n\
             E1,{E1},4B464D1010000023,101112131415161718191A1B1C1D1E1F\n"
        ),
    )
    .unwrap();
    crate::harness::credentials(tmp.path(), &["import", csv.to_str().unwrap()]);
    let config = tmp.path().join("meterflow.toml");
    // Plain CoAP on loopback, open to anonymous posts: the push's own ciphering is what
    // identifies it (its system title must be the meter's, its key must open it).
    std::fs::write(
        &config,
        format!(
            "[coap]\nallow_anonymous = true\n[clickhouse]\nurl = \"{}\"\ndatabase = \"{db}\"\n[batch]\nmax_age_ms = 100\n",
            ch.url
        ),
    )
    .unwrap();
    crate::harness::apply_schema(config.to_str().unwrap());
    let push = fixture_file(tmp.path(), "mbus_frames.hex");
    let push_path = push.to_str().unwrap().to_string();
    let push_hex: String = std::fs::read(&push)
        .unwrap()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    let server = Server::start_in(tmp, &["--config", config.to_str().unwrap()]);
    let uri = format!("coap://127.0.0.1:{}/r/E1", server.coap_port);
    for _ in 0..2 {
        let out = coap_client(&["-m", "post", "-t", "65002", "-f", &push_path, &uri]);
        assert_eq!(answer_code(&out), "2.04", "{out}");
    }
    crate::harness::wait_for("the push in ClickHouse and its replay refused", || {
        let rows = ch.query(&format!("SELECT count() FROM {db}.readings"));
        let letters = ch.query(&format!("SELECT count() FROM {db}.dead_letters"));
        (rows.trim() == "8" && letters.trim() == "1").then_some(())
    });
    let _keep = server.stop();
    let got = ch.query(&format!(
        "SELECT meter_id, channel, value, unit, toUnixTimestamp(ts) FROM {db}.readings FINAL \
         WHERE source = 'coap' AND format = 'dlms' ORDER BY channel FORMAT TSV"
    ));
    let want: String = tirol_rows("E1")
        .into_iter()
        .map(|(m, c, v, u, ts)| format!("{m}\t{c}\t{v}\t{u}\t{}\n", ts / 1000))
        .collect();
    assert_eq!(got, want);
    let letter = ch.query(&format!(
        "SELECT meter_id, kind, payload = unhex('{push_hex}'), reason LIKE '%not above the last accepted%' \
         FROM {db}.dead_letters FORMAT TSV"
    ));
    assert_eq!(letter, "E1\treplay\t1\t1\n");
    ch.query(&format!("DROP DATABASE {db}"));
}

/// The README's DLMS example runs as written: its `credentials add` for E0001, then its
/// Python meter pushing the Tirol example to the wrapper listener over TCP (on this test's
/// port instead of 4059) prints "stored: yes", the push's readings are in Parquet, and sent a second
/// time it is a `replay` dead letter, as the README says.
#[test]
fn the_readme_dlms_example_runs_as_written() {
    let readme = include_str!("../../README.md");
    let section = &readme[readme.find("## DLMS/COSEM meters").unwrap()..];
    let block = |after: &str| {
        let from = section.find(after).unwrap();
        let start = from + section[from..].find("```sh\n").unwrap() + "```sh\n".len();
        let end = start + section[start..].find("```").unwrap();
        section[start..end].to_string()
    };
    let add = block("opened with the keys of its system title");
    let meter = block("A push as a meter sends it");
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let run = |script: &str| {
        let out = Command::new("sh")
            .args(["-ec", script])
            .env("METERFLOW_DATA_DIR", &data_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    run(&add.replace("meterflow ", &format!("{} ", crate::harness::BIN)));
    let port = crate::harness::free_port();
    let listen = format!("127.0.0.1:{port}");
    let server = Server::start_in(tmp, &["--dlms-listen", &listen]);
    let meter = meter.replace("4059", &port.to_string());
    assert_eq!(run(&meter), "stored: yes\n");
    assert_eq!(
        run(&meter),
        "stored: yes\n",
        "read (its meter has no authentication key), then refused by the pipeline"
    );
    crate::harness::wait_for("the second push refused as a replay", || {
        (server.metric("meterflow_dlms_rejected_total{reason=\"replay\"}") == 1.0).then_some(())
    });
    let (_, data_dir, _, _keep) = server.stop();
    let mut rows: Vec<(String, String, f64, String, i64)> = read_readings(&data_dir)
        .into_iter()
        .map(|r| (r.meter_id, r.channel, r.value, r.unit, r.ts_ms))
        .collect();
    rows.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(rows, tirol_rows("E0001"));
}

/// A wrong key is refused end to end: the Aidon push (HDLC, authenticated and encrypted, 0x30)
/// for a meter whose authentication key is wrong is an `auth_failed` dead letter and stores
/// nothing; once the store has the right key (changed while serving), the same push (its
/// counter never accepted) gives its 26 readings.
#[test]
fn a_wrong_key_is_refused_and_the_right_one_taken_once_the_store_has_it() {
    let tmp = tempfile::tempdir().unwrap();
    let title = "7379737469746C65"; // "systitle"
    let ek = "0123456789ABCDEF0123456789ABCDEF";
    let right_ak = "FFEEDDCCBBAA99887766554433221100";
    let wrong_ak = "FFEEDDCCBBAA99887766554433221101";
    let add = |dir: &Path, ak: &str| {
        crate::harness::credentials(
            dir,
            &[
                "add",
                "E6",
                "--secret",
                E1,
                "--dlms-system-title",
                title,
                "--dlms-ek",
                ek,
                "--dlms-ak",
                ak,
            ],
        )
    };
    add(tmp.path(), wrong_ak);
    let push = hex_fixture(
        tmp.path(),
        "athombv_node_dsmr_parser/encrypted/aidon-example-2-with-aad.txt",
    );
    let server = Server::start_in(tmp, &[]);
    publish(server.mqtt_port, "E6", E1, "meters/E6/dlms", &push);
    crate::harness::wait_for("the push refused as auth_failed", || {
        (server.metric("meterflow_dlms_rejected_total{reason=\"auth_failed\"}") == 1.0)
            .then_some(())
    });
    add(server.data_dir.parent().unwrap(), right_ak);
    crate::harness::wait_for("the store reloaded", || {
        std::fs::read_to_string(&server.log)
            .unwrap()
            .contains("credential store changed")
            .then_some(())
    });
    publish(server.mqtt_port, "E6", E1, "meters/E6/dlms", &push);
    crate::harness::wait_for("the push decoded", || {
        (server.metric("meterflow_decoded_total{format=\"dlms\"}") >= 1.0).then_some(())
    });
    let (_, data_dir, log, _keep) = server.stop();
    for key in [right_ak, wrong_ak, ek] {
        assert!(!log.contains(key), "a key is in the log");
    }
    let rows: Vec<_> = read_readings(&data_dir)
        .into_iter()
        .filter(|r| r.meter_id == "E6")
        .collect();
    assert_eq!(rows.len(), 26);
    let power = rows.iter().find(|r| r.channel == "1-0:1.8.0").unwrap();
    assert_eq!((power.value, power.unit.as_str()), (10_049_926.0, "Wh"));
    let letters = dead_letter::read_all(&data_dir.join("dead_letters")).unwrap();
    let kinds: Vec<&str> = letters.iter().map(|l| l.kind.as_str()).collect();
    assert_eq!(kinds, ["auth_failed"]);
    for key in [right_ak, wrong_ak, ek] {
        assert!(!letters[0].reason.contains(key), "{}", letters[0].reason);
    }
}
