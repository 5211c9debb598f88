//! The operations surface against the real binary: the device API (status, recent readings,
//! dead letters, the stale list and its pages), state across restarts (SIGTERM and kill -9),
//! the bearer token, `/ready`, and `/metrics` parsed as Prometheus text with counters that
//! match what was published.

use std::collections::BTreeMap;
use std::path::Path;

use crate::harness::{config_file, http, mosquitto_pub, wait_for, Server};
use serde_json::Value;

fn publish(server: &Server, dir: &Path, topic: &str, payload: &str) {
    let file = dir.join("payload");
    std::fs::write(&file, payload).unwrap();
    mosquitto_pub(server.mqtt_port, topic, &file, &[]);
}

fn get_json(server: &Server, path: &str) -> (u16, Value) {
    let (status, body) = server.http_get(path);
    let value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (status, value)
}

/// Waits until the device API shows `meter` with `messages` messages.
fn device_with(server: &Server, meter: &str, messages: u64) -> Value {
    wait_for(&format!("{meter} with {messages} messages"), || {
        let (status, d) = get_json(server, &format!("/api/devices/{meter}"));
        (status == 200 && d["messages"] == messages).then_some(d)
    })
}

const NOW_TS: &str = "2024-03-01T12:00:00Z";

#[test]
fn the_device_api_shows_status_recent_readings_dead_letters_and_stale_meters() {
    let files = tempfile::tempdir().unwrap();
    // One page of the stale list and the health colours at test scale: amber after 3 s.
    let (_cfg, config) = config_file("[devices]\namber_after_s = 3\nred_after_s = 3600\n");
    let server = Server::start_with(&["--config", &config]);
    let dir = files.path();
    for (i, value) in [1000.5, 1001.25, 1002.0].iter().enumerate() {
        publish(
            &server,
            dir,
            "meters/FIELD-1/json",
            &format!(
                r#"{{"readings":[{{"channel":"1-0:1.8.0","ts":{},"value":{value},"unit":"kWh"}},
                   {{"channel":"1-0:1.7.0","ts":{},"value":{},"unit":"kW"}}],
                   "status":{{"battery_pct":{},"rssi_dbm":-87,"rsrp_dbm":-101,"snr_db":4.5,"firmware":"2.1.0","error_flags":{}}}}}"#,
                1_709_294_400_000i64 + i as i64 * 900_000,
                1_709_294_400_000i64 + i as i64 * 900_000,
                0.5 + i as f64,
                90 - i,
                i
            ),
        );
    }
    publish(&server, dir, "meters/FIELD-1/json", "{\"readings\": [oops");
    let d = device_with(&server, "FIELD-1", 4);
    assert_eq!(d["meter_id"], "FIELD-1");
    // Heard just now, but its last status has error flag bit 1 (low battery): amber, said why.
    assert_eq!(d["health"], "amber", "{d}");
    assert_eq!(
        d["reasons"],
        serde_json::json!(["reports low battery (error flags 0x2)"])
    );
    assert_eq!(d["error_flag_kinds"], serde_json::json!(["low_battery"]));
    assert_eq!(d["channel_names"]["1-0:1.8.0"], "energy imported, total");
    assert_eq!(d["last_source"], "mqtt");
    assert_eq!(d["last_format"], "json");
    assert_eq!(
        (d["rows"].as_u64(), d["decode_errors"].as_u64()),
        (Some(6), Some(1))
    );
    let s = &d["status"];
    assert_eq!(
        (
            &s["battery_pct"],
            &s["rssi_dbm"],
            &s["rsrp_dbm"],
            &s["snr_db"],
            &s["firmware"],
            &s["error_flags"]
        ),
        (
            &Value::from(88),
            &Value::from(-87),
            &Value::from(-101),
            &Value::from(4.5),
            &Value::from("2.1.0"),
            &Value::from(2)
        )
    );
    assert_eq!(d["last_values"]["1-0:1.8.0"]["value"], 1002.0);
    assert_eq!(d["last_values"]["1-0:1.8.0"]["unit"], "kWh");
    let recent = &d["recent_readings"]["1-0:1.8.0"];
    assert_eq!(
        recent,
        &serde_json::json!([
            [1_709_294_400_000i64, 1000.5],
            [1_709_295_300_000i64, 1001.25],
            [1_709_296_200_000i64, 1002.0]
        ])
    );
    assert_eq!(
        d["recent_readings"]["1-0:1.7.0"].as_array().unwrap().len(),
        3
    );
    let letters = d["recent_dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["kind"], "malformed");
    assert!(
        letters[0]["reason"]
            .as_str()
            .unwrap()
            .contains("json: malformed"),
        "{letters:?}"
    );
    assert_eq!(get_json(&server, "/api/devices/NOBODY").0, 404);

    // Stale: OLD-1 is heard, then (after more than amber_after_s) FIELD-2 is.
    publish(
        &server,
        dir,
        "meters/OLD-1/status",
        r#"{"battery_pct": 12}"#,
    );
    device_with(&server, "OLD-1", 1);
    std::thread::sleep(std::time::Duration::from_millis(3500));
    publish(
        &server,
        dir,
        "meters/FIELD-2/status",
        r#"{"battery_pct": 99}"#,
    );
    device_with(&server, "FIELD-2", 1);
    let (status, stale) = get_json(&server, "/api/devices?stale_after=3s");
    assert_eq!(status, 200);
    let ids: Vec<&str> = stale["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["meter_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["FIELD-1", "OLD-1"], "FIELD-2 was just heard");
    assert_eq!(stale["devices"][1]["health"], "amber");
    let (_, amber) = get_json(&server, "/api/devices?stale_after=amber");
    assert_eq!(amber["devices"].as_array().unwrap().len(), 2);

    // Pages: follow next_cursor through every meter, two at a time.
    for i in 0..5 {
        publish(
            &server,
            dir,
            &format!("meters/PAGE-{i}/status"),
            r#"{"battery_pct": 50}"#,
        );
    }
    device_with(&server, "PAGE-4", 1);
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/devices?limit=2&cursor={c}"),
            None => "/api/devices?limit=2".to_string(),
        };
        let (_, page) = get_json(&server, &path);
        let devices = page["devices"].as_array().unwrap();
        assert!(devices.len() <= 2);
        seen.extend(
            devices
                .iter()
                .map(|d| d["meter_id"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(
        seen,
        ["FIELD-1", "FIELD-2", "OLD-1", "PAGE-0", "PAGE-1", "PAGE-2", "PAGE-3", "PAGE-4"]
    );
    // The same device by query (ids like `.` cannot be a path segment).
    let (status, by_query) = get_json(&server, "/api/device?meter_id=FIELD-1");
    assert_eq!(
        (status, &by_query["meter_id"]),
        (200, &Value::from("FIELD-1"))
    );
    for bad in [
        "stale_after=soon",
        "stale_after=10000000000000000000",
        "limit=0",
        "limit=5000",
        "colour=red",
    ] {
        assert_eq!(
            server.http_get(&format!("/api/devices?{bad}")).0,
            400,
            "{bad}"
        );
    }
    // Without a token, only requests naming this machine by address or `localhost` (a web
    // page that rebinds its own domain to 127.0.0.1 gets nothing).
    let (status, _) = http(
        server.http_port,
        "GET",
        "/api/devices",
        &[("Host", "evil.example:8080")],
        None,
    );
    assert_eq!(status, 403);
    let (status, ready) = get_json(&server, "/ready");
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["checks"]["pipeline"]["ok"], true);
    assert_eq!(ready["checks"]["wal"]["ok"], true);
    let (exit, _, log, _tmp) = server.stop();
    assert!(exit.success(), "{log}");
}

#[test]
fn device_state_survives_a_restart_and_a_kill_9() {
    let files = tempfile::tempdir().unwrap();
    let (_cfg, config) = config_file("[devices]\nsave_interval_s = 1\n");
    let mut server = Server::start_with(&["--config", &config]);
    publish(
        &server,
        files.path(),
        "meters/KEEP-1/json",
        &format!(
            r#"{{"readings":[{{"channel":"1-0:1.8.0","ts":"{NOW_TS}","value":42.5,"unit":"kWh"}}],"status":{{"battery_pct":77,"firmware":"9.9"}}}}"#
        ),
    );
    publish(&server, files.path(), "meters/KEEP-1/json", "not json");
    let before = wait_for("KEEP-1 with its dead letter", || {
        let d = device_with(&server, "KEEP-1", 2);
        (d["recent_dead_letters"].as_array()?.len() == 1).then_some(d)
    });
    // kill -9 after the periodic save has run: nothing of it may be lost.
    wait_for("the periodic save", || {
        let text = std::fs::read_to_string(server.data_dir.join("state/devices.json")).ok()?;
        text.contains("json: malformed").then_some(())
    });
    server.kill_9();
    let server = server.restart();
    let after = device_with(&server, "KEEP-1", 2);
    for key in [
        "first_seen_ms",
        "last_seen_ms",
        "rows",
        "decode_errors",
        "status",
        "last_values",
        "recent_dead_letters",
    ] {
        assert_eq!(after[key], before[key], "{key} after kill -9");
    }
    assert_eq!(after["status"]["battery_pct"], 77);
    // A clean stop and start keep it too, with what came in between.
    publish(
        &server,
        files.path(),
        "meters/KEEP-1/status",
        r#"{"rssi_dbm": -70}"#,
    );
    device_with(&server, "KEEP-1", 3);
    let data_dir = server.data_dir.clone();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut server = server;
    assert!(server.child.wait().unwrap().success());
    let server = server.restart();
    let again = device_with(&server, "KEEP-1", 3);
    assert_eq!(again["status"]["rssi_dbm"], -70);
    assert_eq!(again["status"]["firmware"], "9.9");
    assert!(data_dir.join("state/devices.json").exists());
    // A state file that does not parse (a disk fault) does not keep meterflow down: it is put
    // aside and the state is rebuilt from traffic.
    let mut server = server;
    server.kill_9();
    std::fs::write(
        data_dir.join("state/devices.json"),
        b"[{\"meter_id\": \"KEEP-1\", trunc",
    )
    .unwrap();
    let server = server.restart();
    assert_eq!(server.http_get("/api/devices/KEEP-1").0, 404);
    let aside = std::fs::read_dir(data_dir.join("state"))
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().contains("corrupt"));
    assert!(aside, "the bad file is kept aside");
    assert!(server.log_text().contains("does not parse"));
}

#[test]
fn the_api_asks_for_the_token_when_one_is_set() {
    let token = "field-token-0123456789";
    let server = Server::start_with(&["--http-token", token]);
    let bearer = format!("Bearer {token}");
    for path in ["/api/devices", "/api/devices/X", "/metrics"] {
        assert_eq!(
            http(server.http_port, "GET", path, &[], None).0,
            401,
            "{path}"
        );
        let wrong = http(
            server.http_port,
            "GET",
            path,
            &[("Authorization", "Bearer wrong-token-0123456789")],
            None,
        );
        assert_eq!(wrong.0, 401, "{path}");
    }
    assert_eq!(
        http(
            server.http_port,
            "GET",
            "/api/devices",
            &[("Authorization", &bearer)],
            None
        )
        .0,
        200
    );
    assert_eq!(
        http(
            server.http_port,
            "GET",
            "/metrics",
            &[("Authorization", &bearer)],
            None
        )
        .0,
        200
    );
    // Open: liveness, readiness, and the page's HTML (which asks for the token itself).
    assert_eq!(server.http_get("/health").0, 200);
    assert_eq!(server.http_get("/ready").0, 200);
    let (status, page) = server.http_get("/");
    assert_eq!(status, 200);
    assert!(page.contains("meterflow") && page.contains("Bearer"));
    // Not ready while ClickHouse cannot be reached (here: nothing listens on its port).
    let dead = format!("http://127.0.0.1:{}", crate::harness::free_port());
    let unready = Server::start_with(&["--clickhouse-url", &dead]);
    let (status, body) = unready.http_get("/ready");
    assert_eq!(status, 503, "{body}");
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["ready"], false);
    assert_eq!(ready["checks"]["clickhouse"]["ok"], false, "{ready}");
    assert_eq!(ready["checks"]["pipeline"]["ok"], true);
    // ...but ready to take data: the WAL holds it while ClickHouse is away.
    let (status, body) = unready.http_get("/ready?ingest");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("not counted for ?ingest"), "{body}");
    drop(unready);
    // Listening beyond loopback without a token is refused at start-up, naming the key.
    let out = std::process::Command::new(crate::harness::BIN)
        .args(["serve", "--http-listen", "0.0.0.0:0", "--data-dir"])
        .arg(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("http.token"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One sample of the Prometheus text exposition format, parsed strictly.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the text format (version 0.0.4): `# HELP`/`# TYPE` lines, and samples
/// `name{label="value",...} number`; panics on anything else.
fn parse_prometheus(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
    let ident = |s: &str| {
        !s.is_empty()
            && s.chars().enumerate().all(|(i, c)| {
                c == '_' || c == ':' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())
            })
    };
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(ident(name), "{line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "TYPE twice: {line}"
            );
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value in {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("labels end in }}: {line}"));
                let mut labels = BTreeMap::new();
                let mut rest = body;
                while !rest.is_empty() {
                    let (key, after) = rest
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("label in {line}"));
                    assert!(ident(key), "{line}");
                    let mut value = String::new();
                    let mut chars = after.char_indices();
                    let end = loop {
                        match chars.next() {
                            Some((_, '\\')) => value.push(chars.next().unwrap().1),
                            Some((i, '"')) => break i,
                            Some((_, c)) => value.push(c),
                            None => panic!("unterminated label value: {line}"),
                        }
                    };
                    labels.insert(key.to_string(), value);
                    rest = after[end + 1..].trim_start_matches(',');
                }
                (name, labels)
            }
        };
        assert!(ident(name), "{line}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample before its TYPE: {line}");
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    (types, samples)
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

#[test]
fn metrics_parse_as_prometheus_text_and_count_what_a_run_published() {
    let files = tempfile::tempdir().unwrap();
    // Files complete every second, so rows_written counts while the server runs.
    let (_cfg, config) = config_file("[parquet]\nfile_max_age_s = 1\n");
    let server = Server::start_with(&["--config", &config]);
    let json = r#"{"readings":[{"channel":"a","ts":1709294400000,"value":1,"unit":"kWh"},{"channel":"b","ts":1709294400000,"value":2,"unit":"kWh"}]}"#;
    for i in 0..7 {
        publish(&server, files.path(), &format!("meters/M-{i}/json"), json);
    }
    let senml = r#"[{"bn":"x:","bt":1709294400,"n":"e","u":"kWh","v":5}]"#;
    for i in 0..3 {
        publish(&server, files.path(), &format!("meters/S-{i}/senml"), senml);
    }
    publish(&server, files.path(), "meters/M-0/json", "{broken");
    publish(&server, files.path(), "meters/M-0/pb", "\u{1}\u{2}");
    publish(&server, files.path(), "elsewhere/x", "{}");
    // Over CoAP too: one report.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut con = vec![
        0x40, 0x02, 0x00, 0x01, 0xb1, b'r', 0x03, b'C', b'-', b'1', 0x11, 50, 0xff,
    ];
    con.extend_from_slice(json.as_bytes());
    socket
        .send_to(&con, ("127.0.0.1", server.coap_port))
        .unwrap();
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).unwrap();
    assert_eq!(&buf[..2], &[0x60, 0x44], "2.04: {:?}", &buf[..n]);

    let expected_rows = 7.0 * 2.0 + 3.0 + 2.0;
    let (types, samples) = wait_for("every row written to Parquet", || {
        let (status, text) = http(server.http_port, "GET", "/metrics", &[], None);
        assert_eq!(status, 200);
        let (types, samples) = parse_prometheus(&text);
        (value(
            &samples,
            "meterflow_rows_written_total",
            &[("sink", "parquet")],
        ) == expected_rows)
            .then_some((types, samples))
    });
    let v = |name: &str, labels: &[(&str, &str)]| value(&samples, name, labels);
    assert_eq!(v("meterflow_received_total", &[("source", "mqtt")]), 13.0);
    assert_eq!(v("meterflow_received_total", &[("source", "coap")]), 1.0);
    assert_eq!(
        v(
            "meterflow_messages_total",
            &[("source", "mqtt"), ("format", "json")]
        ),
        8.0
    );
    assert_eq!(
        v(
            "meterflow_messages_total",
            &[("source", "mqtt"), ("format", "senml")]
        ),
        3.0
    );
    assert_eq!(
        v(
            "meterflow_messages_total",
            &[("source", "mqtt"), ("format", "pb")]
        ),
        1.0
    );
    assert_eq!(
        v(
            "meterflow_messages_total",
            &[("source", "mqtt"), ("format", "none")]
        ),
        1.0
    );
    assert_eq!(
        v(
            "meterflow_messages_total",
            &[("source", "coap"), ("format", "json")]
        ),
        1.0
    );
    assert_eq!(v("meterflow_decoded_total", &[("format", "json")]), 8.0);
    assert_eq!(v("meterflow_rows_decoded_total", &[]), expected_rows);
    assert_eq!(
        v("meterflow_dead_letters_total", &[("reason", "malformed")]),
        2.0
    );
    assert_eq!(
        v("meterflow_dead_letters_total", &[("reason", "bad_topic")]),
        1.0
    );
    assert_eq!(v("meterflow_coap_answers_total", &[("code", "2.04")]), 1.0);
    assert_eq!(v("meterflow_router_drops_total", &[]), 0.0);
    assert_eq!(v("meterflow_devices", &[]), 11.0);
    assert!(v("meterflow_wal_bytes", &[]) > 0.0);
    // The batch-latency histogram: buckets rise to the count.
    assert_eq!(
        types
            .get("meterflow_batch_write_seconds")
            .map(String::as_str),
        Some("histogram")
    );
    let count = v(
        "meterflow_batch_write_seconds_count",
        &[("sink", "parquet")],
    );
    assert!(count >= 1.0);
    assert_eq!(
        v(
            "meterflow_batch_write_seconds_bucket",
            &[("sink", "parquet"), ("le", "+Inf")]
        ),
        count
    );
    for (name, kind) in [
        ("meterflow_received_total", "counter"),
        ("meterflow_messages_total", "counter"),
        ("meterflow_rows_written_total", "counter"),
        ("meterflow_dead_letters_total", "counter"),
        ("meterflow_wal_bytes", "gauge"),
        ("meterflow_sink_lag_seconds", "gauge"),
        ("meterflow_coap_ack_seconds", "histogram"),
    ] {
        assert_eq!(types.get(name).map(String::as_str), Some(kind), "{name}");
    }
    let (exit, _, log, _tmp) = server.stop();
    assert!(exit.success(), "{log}");
}

#[test]
fn a_node_answers_for_a_meter_another_node_heard_from_clickhouse() {
    // Two nodes behind one load balancer share a ClickHouse database; a meter reports to node
    // A only, after node B has rebuilt its state at start-up. Asked about it, node B answers
    // from ClickHouse: last seen, the newest value per channel, status, recent readings.
    let clickhouse = crate::harness::ClickHouse::shared();
    let db = crate::harness::ClickHouse::fresh_database("api");
    let (_cfg, config) = config_file(&format!(
        "[clickhouse]\nurl = \"{}\"\ndatabase = \"{db}\"\n[batch]\nmax_age_ms = 100\n",
        clickhouse.url
    ));
    crate::harness::apply_schema(&config);
    let node_a = Server::start_with(&["--config", &config]);
    let node_b = Server::start_with(&["--config", &config]);
    wait_for("node B's start-up rebuild", || {
        node_b
            .log_text()
            .contains("device state topped up from ClickHouse")
            .then_some(())
    });
    let files = tempfile::tempdir().unwrap();
    for (i, value) in [500.25, 501.5].iter().enumerate() {
        publish(
            &node_a,
            files.path(),
            "meters/ELSEWHERE-1/json",
            &format!(
                r#"{{"readings":[{{"channel":"1-0:1.8.0","ts":{},"value":{value},"unit":"kWh"}}],
                   "status":{{"battery_pct":77,"rssi_dbm":-90,"firmware":"3.0.1"}}}}"#,
                1_709_294_400_000i64 + i as i64 * 900_000
            ),
        );
    }
    wait_for("both reports in ClickHouse", || {
        let n = clickhouse.query(&format!(
            "SELECT count() FROM {db}.readings WHERE meter_id = 'ELSEWHERE-1' FORMAT TSV"
        ));
        (n.trim() == "2").then_some(())
    });
    wait_for("the status in ClickHouse", || {
        let n = clickhouse.query(&format!(
            "SELECT count() FROM {db}.device_status WHERE meter_id = 'ELSEWHERE-1' FORMAT TSV"
        ));
        (n.trim() != "0").then_some(())
    });

    let (status, local) = get_json(&node_a, "/api/devices/ELSEWHERE-1");
    assert_eq!(status, 200);
    assert!(local.get("from").is_none(), "{local}");
    for path in [
        "/api/devices/ELSEWHERE-1",
        "/api/device?meter_id=ELSEWHERE-1",
    ] {
        let (status, d) = get_json(&node_b, path);
        assert_eq!(status, 200, "{d}");
        assert_eq!(d["from"], "clickhouse");
        assert_eq!(d["meter_id"], "ELSEWHERE-1");
        assert_eq!(d["last_source"], "mqtt");
        assert_eq!(d["last_format"], "json");
        assert_eq!(d["last_values"]["1-0:1.8.0"]["value"], 501.5);
        assert_eq!(d["last_values"]["1-0:1.8.0"]["ts_ms"], 1_709_295_300_000i64);
        assert_eq!(d["last_values"]["1-0:1.8.0"]["unit"], "kWh");
        assert_eq!(d["status"]["battery_pct"], 77);
        assert_eq!(d["status"]["firmware"], "3.0.1");
        assert_eq!(d["health"], "green", "{d}");
        assert_eq!(
            d["recent_readings"]["1-0:1.8.0"],
            serde_json::json!([
                [1_709_294_400_000i64, 500.25],
                [1_709_295_300_000i64, 501.5]
            ])
        );
        // received_at is whole seconds in ClickHouse.
        let (seen, seen_here) = (
            d["last_seen_ms"].as_i64().unwrap(),
            local["last_seen_ms"].as_i64().unwrap(),
        );
        assert!((seen_here - seen).abs() < 1000, "{seen} vs {seen_here}");
    }
    // Node B's own list stays its own: it has heard nobody.
    let (_, list) = get_json(&node_b, "/api/devices");
    assert_eq!(list["devices"], serde_json::json!([]));
    // Nobody heard of this one.
    let (status, body) = node_b.http_get("/api/devices/NOBODY-1");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("nor by ClickHouse"), "{body}");

    // Node B restarts and rebuilds its state from ClickHouse (the meter is in it now, as it
    // was then); the meter goes on reporting to node A. Node B answers with what ClickHouse
    // has now, not with its rebuilt copy.
    let (status, _, log, tmp) = node_b.stop();
    assert!(status.success(), "{log}");
    let node_b = Server::start_in(tmp, &["--config", &config]);
    wait_for("node B's rebuild after the restart", || {
        node_b
            .log_text()
            .contains("device state topped up from ClickHouse")
            .then_some(())
    });
    let (_, rebuilt) = get_json(&node_b, "/api/devices");
    assert_eq!(
        rebuilt["devices"][0]["meter_id"], "ELSEWHERE-1",
        "{rebuilt}"
    );
    publish(
        &node_a,
        files.path(),
        "meters/ELSEWHERE-1/json",
        r#"{"readings":[{"channel":"1-0:1.8.0","ts":1709296200000,"value":502.75,"unit":"kWh"}]}"#,
    );
    wait_for("the third report in ClickHouse", || {
        let n = clickhouse.query(&format!(
            "SELECT count() FROM {db}.readings WHERE meter_id = 'ELSEWHERE-1' FORMAT TSV"
        ));
        (n.trim() == "3").then_some(())
    });
    let (status, d) = get_json(&node_b, "/api/devices/ELSEWHERE-1");
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["from"], "clickhouse", "{d}");
    assert_eq!(d["last_values"]["1-0:1.8.0"]["value"], 502.75, "{d}");
}
