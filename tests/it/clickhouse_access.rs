//! How meterflow reaches a ClickHouse that is not open to all: a user with a password (from
//! `deploy/clickhouse-test.sh`), given in the URL or in `clickhouse.user` / `password`, is
//! sent (the server logs the inserts under that user) and shown nowhere; and `https://`
//! through a real TLS terminator (HAProxy) in front of the test server, trusted through
//! `clickhouse.tls_ca` or the system's roots, a wrong CA refused.

use std::process::Command;

use crate::harness::{
    config_file, mosquitto_pub, wait_for, ClickHouse, Server, TlsTerminator, BIN, LOGIN_PASSWORD,
    LOGIN_USER,
};

/// The password as a URL carries it.
const ENCODED_PASSWORD: &str = "Meter-flow%40test%3A42";

/// Publishes `n` readings of `meter` (values 1..=n kWh) as one JSON report.
fn publish(server: &Server, meter: &str, n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let readings: Vec<String> = (1..=n)
        .map(|i| {
            format!(
                r#"{{"channel": "1-0:1.8.1", "ts": {}, "value": {i}, "unit": "kWh"}}"#,
                1_709_251_200_000 + i as i64 * 900_000
            )
        })
        .collect();
    let file = dir.path().join("report.json");
    std::fs::write(
        &file,
        format!(r#"{{"readings": [{}]}}"#, readings.join(", ")),
    )
    .unwrap();
    mosquitto_pub(
        server.mqtt_port,
        &format!("meters/{meter}/json"),
        &file,
        &[],
    );
}

/// The values of `meter` in `db`, oldest first.
fn values(ch: &ClickHouse, db: &str, meter: &str) -> Vec<String> {
    ch.query(&format!(
        "SELECT value FROM {db}.readings FINAL WHERE meter_id = '{meter}' ORDER BY ts FORMAT TabSeparated"
    ))
    .lines()
    .map(str::to_string)
    .collect()
}

fn wait_for_values(ch: &ClickHouse, db: &str, meter: &str, n: usize) -> Vec<String> {
    wait_for(&format!("{n} readings of {meter} in ClickHouse"), || {
        let exists = ch.query(&format!(
            "SELECT count() FROM system.tables WHERE database = '{db}' AND name = 'readings'"
        ));
        if exists.trim() != "1" {
            return None;
        }
        let v = values(ch, db, meter);
        (v.len() >= n).then_some(v)
    })
}

fn meterflow(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("METERFLOW_CLICKHOUSE_URL")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_no_password(what: &str, text: &str) {
    for secret in [LOGIN_PASSWORD, ENCODED_PASSWORD] {
        assert!(!text.contains(secret), "{what} shows the password:\n{text}");
    }
}

#[test]
fn a_login_in_the_url_or_the_keys_is_sent_and_shown_nowhere() {
    let ch = ClickHouse::with_login_user();
    let host = ch.url.trim_start_matches("http://").trim_end_matches('/');
    let url = format!("http://{LOGIN_USER}:{ENCODED_PASSWORD}@{host}");
    let db = ClickHouse::fresh_database("mf_login");

    // `meterflow config`: the URL's login moved into the keys, the password not shown.
    let (ok, out, err) = meterflow(&["config", "--clickhouse-url", &url], &[]);
    assert!(ok, "{err}");
    assert_no_password("meterflow config", &out);
    assert!(out.contains(&format!("url = \"http://{host}/\"")), "{out}");
    assert!(out.contains(&format!("user = \"{LOGIN_USER}\"")), "{out}");
    assert!(out.contains("password = \"(set, not shown)\""), "{out}");
    // Nor in --help, where clap shows the environment's values.
    let (_, help, _) = meterflow(
        &["serve", "--help"],
        &[("METERFLOW_CLICKHOUSE_URL", url.as_str())],
    );
    assert_no_password("serve --help", &help);

    // serve with the login in the URL (the flag, as an operator may first try it).
    let (_c1, config) = config_file(&format!(
        "[clickhouse]\ndatabase = \"{db}\"\nretry_initial_ms = 100\nretry_max_ms = 500\n"
    ));
    let server = Server::start_with(&["--config", &config, "--clickhouse-url", &url]);
    publish(&server, "LOGIN-URL", 3);
    assert_eq!(wait_for_values(&ch, &db, "LOGIN-URL", 3), ["1", "2", "3"]);
    let (exit, _, log, _) = server.stop();
    assert!(exit.success(), "{log}");
    assert!(log.contains("ClickHouse sink on"), "{log}");
    assert_no_password("the serve log", &log);

    // serve with the keys.
    let (_c2, config) = config_file(&format!(
        "[clickhouse]\nurl = \"{}\"\ndatabase = \"{db}\"\nuser = \"{LOGIN_USER}\"\npassword = \"{LOGIN_PASSWORD}\"\n",
        ch.url
    ));
    let server = Server::start_with(&["--config", &config]);
    publish(&server, "LOGIN-KEYS", 2);
    assert_eq!(wait_for_values(&ch, &db, "LOGIN-KEYS", 2), ["1", "2"]);
    let (exit, _, log, _) = server.stop();
    assert!(exit.success(), "{log}");
    assert_no_password("the serve log", &log);

    // The server took both runs' inserts from that user, none from `default`.
    ch.query("SYSTEM FLUSH LOGS");
    let inserts = |user: &str| {
        ch.query(&format!(
            "SELECT count() FROM system.query_log WHERE user = '{user}' AND type = 2 \
             AND query LIKE 'INSERT INTO {db}.readings %'"
        ))
        .trim()
        .parse::<u32>()
        .unwrap()
    };
    assert!(inserts(LOGIN_USER) >= 2, "{}", inserts(LOGIN_USER));
    assert_eq!(inserts("default"), 0);

    // A wrong password is refused by the server, and the error shows no password.
    let wrong = format!("http://{LOGIN_USER}:Not-the-Pw-77@{host}");
    let (ok, _, err) = meterflow(&["schema", "--apply", "--clickhouse-url", &wrong], &[]);
    assert!(!ok);
    assert!(err.contains("193") || err.contains("password"), "{err}");
    assert!(!err.contains("Not-the-Pw-77"), "{err}");
    // A login in both places that differs: an error naming the key, nothing shown.
    let (ok, _, err) = meterflow(
        &["config", "--config", &config, "--clickhouse-url", &wrong],
        &[],
    );
    assert!(!ok);
    assert!(err.contains("clickhouse.password"), "{err}");
    assert!(!err.contains("Not-the-Pw-77"), "{err}");
    assert_no_password("the error", &err);
    ch.query(&format!("DROP DATABASE {db}"));
}

/// `meterflow config` with a password in every URL it may come in: the file's
/// `clickhouse.url` (before the host, or as `?password=`), the environment's, and a bridge's.
#[test]
fn meterflow_config_prints_no_password_of_any_url() {
    let (_c, before_host) = config_file(
        "[clickhouse]\nurl = \"http://ingest:Url-Pw-1@127.0.0.1:8123\"\n\
         [[bridge]]\nurl = \"mqtts://mf:Url-Pw-2@broker.example:8883\"\n",
    );
    let (_q, in_query) = config_file(
        "[clickhouse]\nurl = \"http://127.0.0.1:8123/?user=ingest&password=Url-Pw-3\"\n",
    );
    for (args, env) in [
        (vec!["config", "--config", &before_host], vec![]),
        (vec!["config", "--config", &in_query], vec![]),
        (
            vec!["config"],
            vec![(
                "METERFLOW_CLICKHOUSE_URL",
                "http://ingest:Url-Pw-4@127.0.0.1:8123",
            )],
        ),
    ] {
        let (ok, out, err) = meterflow(&args, &env);
        assert!(ok, "{args:?}: {err}");
        assert!(!out.contains("Url-Pw"), "{args:?} shows a password:\n{out}");
        // What the URLs name otherwise is still shown, and the login is there, hidden.
        assert!(out.contains("url = \"http://127.0.0.1:8123/"), "{out}");
        assert!(out.contains("user = \"ingest\""), "{out}");
        assert!(out.contains("password = \"(set, not shown)\""), "{out}");
    }
    let (_, out, _) = meterflow(&["config", "--config", &before_host], &[]);
    assert!(out.contains("mqtts://mf:***@broker.example:8883"), "{out}");
}

#[test]
fn the_writer_inserts_through_https_and_a_wrong_ca_is_refused() {
    let ch = ClickHouse::shared();
    let tls = TlsTerminator::start(&ch.url);
    let db = ClickHouse::fresh_database("mf_tls");
    let ca = tls.ca.display().to_string();
    let (_c1, config) = config_file(&format!(
        "[clickhouse]\nurl = \"{}\"\ndatabase = \"{db}\"\ntls_ca = \"{ca}\"\nretry_initial_ms = 100\nretry_max_ms = 500\n",
        tls.url
    ));

    // The writer inserts through HAProxy's TLS.
    let server = Server::start_with(&["--config", &config]);
    publish(&server, "TLS-1", 4);
    assert_eq!(wait_for_values(&ch, &db, "TLS-1", 4), ["1", "2", "3", "4"]);
    let (exit, _, log, _) = server.stop();
    assert!(exit.success(), "{log}");

    // Reads too: `meterflow query` through TLS, with tls_ca, then with the system's roots
    // (SSL_CERT_FILE stands in for the system's store).
    let (ok, out, err) = meterflow(
        &["query", "--config", &config, "devices", "--format", "json"],
        &[],
    );
    assert!(ok, "{err}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.len(), 1, "{out}");
    assert_eq!(rows[0]["meter_id"], "TLS-1");
    assert_eq!(rows[0]["readings"], 4, "a number");
    let roots = [
        "query",
        "--clickhouse-url",
        &tls.url,
        "devices",
        "--format",
        "json",
    ];
    let (_c2, db_only) = config_file(&format!("[clickhouse]\ndatabase = \"{db}\"\n"));
    let with_db = [&["--config", db_only.as_str()][..], &roots[..]].concat();
    let (ok, out, err) = meterflow(&with_db, &[("SSL_CERT_FILE", ca.as_str())]);
    assert!(ok, "{err}");
    assert!(out.contains("TLS-1"), "{out}");

    // A CA that did not sign the server's certificate: refused, and the error says why.
    let (_c3, wrong) = config_file(&format!(
        "[clickhouse]\nurl = \"{}\"\ndatabase = \"{db}\"\ntls_ca = \"{}\"\n",
        tls.url,
        tls.other_ca.display()
    ));
    let (ok, _, err) = meterflow(&["schema", "--apply", "--config", &wrong], &[]);
    assert!(!ok);
    assert!(
        err.contains("invalid peer certificate") && err.contains("UnknownIssuer"),
        "{err}"
    );
    let (ok, _, err) = meterflow(
        &with_db,
        &[("SSL_CERT_FILE", tls.other_ca.to_str().unwrap())],
    );
    assert!(!ok);
    assert!(err.contains("UnknownIssuer"), "{err}");
    // A file that is no CA, and a CA for a plain http:// URL: errors naming the key.
    let (_c4, not_pem) = config_file(&format!(
        "[clickhouse]\nurl = \"{}\"\ntls_ca = \"{}\"\n",
        tls.url, config
    ));
    let (ok, _, err) = meterflow(&["schema", "--apply", "--config", &not_pem], &[]);
    assert!(!ok && err.contains("clickhouse.tls_ca"), "{err}");
    let (_c5, plain) = config_file(&format!(
        "[clickhouse]\nurl = \"{}\"\ntls_ca = \"{ca}\"\n",
        ch.url
    ));
    let (ok, _, err) = meterflow(&["schema", "--apply", "--config", &plain], &[]);
    assert!(!ok && err.contains("clickhouse.tls_ca"), "{err}");
    ch.query(&format!("DROP DATABASE {db}"));
}
