//! Device identity on the MQTT edge, with real clients (`mosquitto_pub`, `mosquitto_sub`,
//! `openssl` for certificates) against the real `meterflow serve`: secrets from the
//! credential store, each meter publishing only for itself (gateways for their globs), no
//! subscriptions but a meter's own command topic, revocation that closes a live session,
//! session takeover only by the same identity, and TLS with client certificates.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use crate::harness::{read_readings, Server, BIN};
use meterflow_storage::dead_letter;

const E1: &str = "e1-secret-0123456789";
const E2: &str = "e2-secret-0123456789";
const GW: &str = "gw-secret-0123456789";

/// Every stored reading as (meter, value), sorted.
fn meter_values(data_dir: &Path) -> Vec<(String, f64)> {
    let mut rows: Vec<(String, f64)> = read_readings(data_dir)
        .into_iter()
        .map(|r| (r.meter_id, r.value))
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    rows
}

/// A data folder whose credential store holds E1, E2 and the gateway GW1 (for `G*`).
fn data_with_credentials() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("fleet.csv");
    std::fs::write(
        &csv,
        format!("meter_id,secret,publish_for\nE1,{E1},\nE2,{E2},\nGW1,{GW},G*\n"),
    )
    .unwrap();
    crate::harness::credentials(tmp.path(), &["import", csv.to_str().unwrap()]);
    tmp
}

/// `mosquitto_pub` with QoS 1 and a JSON reading; returns its output whatever it did.
fn publish(port: u16, topic: &str, value: f64, extra: &[&str]) -> Output {
    let payload = format!(
        r#"{{"readings":[{{"channel":"1-0:1.8.0","ts":"2024-03-01T12:00:00Z","value":{value},"unit":"kWh"}}]}}"#
    );
    Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-t", topic, "-m", &payload])
        .args(extra)
        .output()
        .expect("mosquitto_pub runs (the test command installs mosquitto-clients)")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Waits until the server has applied `n` changes of its credential store.
fn wait_for_reloads(server: &Server, n: usize) {
    crate::harness::wait_for("the credential change applied", || {
        (server
            .log_text()
            .matches("credential store changed; applied")
            .count()
            >= n)
            .then_some(())
    });
}

/// `mosquitto_sub` left running; its output goes to a file.
fn subscriber(port: u16, filter: &str, extra: &[&str], log: &Path) -> Child {
    Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-t", filter])
        .args(extra)
        .stdout(Stdio::from(std::fs::File::create(log).unwrap()))
        .stderr(Stdio::from(
            std::fs::File::create(log.with_extension("err")).unwrap(),
        ))
        .spawn()
        .unwrap()
}

#[test]
fn secrets_identify_meters_and_each_speaks_only_for_itself() {
    let server = Server::start_in(data_with_credentials(), &[]);
    let (port, port5) = (server.mqtt_port, server.mqtt_v5_port);
    let e1 = ["-u", "E1", "-P", E1];
    let e1_v5 = ["-u", "E1", "-P", E1, "-V", "mqttv5"];

    // Its own meter, both protocol versions, on both listeners.
    let ok = publish(port, "meters/E1/json", 1.0, &e1);
    assert!(ok.status.success(), "{}", text(&ok));
    let ok = publish(port5, "meters/E1/json", 2.0, &e1_v5);
    assert!(ok.status.success(), "{}", text(&ok));
    // A gateway for a meter its glob matches.
    let gw = ["-u", "GW1", "-P", GW];
    let ok = publish(port, "meters/G5/json", 3.0, &gw);
    assert!(ok.status.success(), "{}", text(&ok));

    // Wrong secret, unknown user, no credentials: CONNACK 5 on 3.1.1, not telling which.
    let bad = publish(
        port,
        "meters/E1/json",
        9.0,
        &["-u", "E1", "-P", "wrong-wrong-wrong"],
    );
    assert!(!bad.status.success());
    assert!(text(&bad).contains("not authorised"), "{}", text(&bad));
    let bad = publish(port, "meters/E1/json", 9.0, &["-u", "NOBODY", "-P", E1]);
    assert!(!bad.status.success(), "{}", text(&bad));
    let bad = publish(port, "meters/E1/json", 9.0, &[]);
    assert!(!bad.status.success());
    assert!(text(&bad).contains("not authorised"), "{}", text(&bad));
    // MQTT 5: 0x86 for a bad secret.
    let bad = publish(
        port,
        "meters/E1/json",
        9.0,
        &["-u", "E1", "-P", "wrong-wrong-wrong", "-V", "mqttv5"],
    );
    assert!(!bad.status.success());
    assert!(
        text(&bad)
            .to_lowercase()
            .contains("bad user name or password"),
        "{}",
        text(&bad)
    );

    // Forgeries: E1 for E2 over MQTT 3.1.1 (closed unanswered), over MQTT 5 (PUBACK 0x87),
    // and the gateway outside its globs.
    let forged = publish(port, "meters/E2/json", 666.0, &e1);
    assert!(!forged.status.success(), "3.1.1 closes: {}", text(&forged));
    let forged = publish(port5, "meters/E2/json", 667.0, &e1_v5);
    assert!(
        text(&forged).contains("Not authorized"),
        "{}",
        text(&forged)
    );
    let forged = publish(port, "meters/X9/json", 668.0, &gw);
    assert!(!forged.status.success(), "{}", text(&forged));

    // Subscriptions: nobody reads '#' or another meter; its own command topic is granted.
    let dir = tempfile::tempdir().unwrap();
    for filter in ["#", "meters/E2/json", "meters/+/json"] {
        let out = Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-t",
                filter,
                "-W",
                "5",
            ])
            .args(e1)
            .output()
            .unwrap();
        assert!(
            text(&out).contains("All subscription requests were denied"),
            "{filter}: {}",
            text(&out)
        );
    }
    let mut own = subscriber(port, "meters/E1/cmd/#", &e1, &dir.path().join("own.log"));
    crate::harness::wait_for("the command-topic subscriber's session", || {
        (server.metric("meterflow_mqtt_connections") >= 1.0).then_some(())
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        own.try_wait().unwrap().is_none(),
        "granted: it keeps running"
    );
    own.kill().unwrap();

    crate::harness::wait_for("every denial counted", || {
        let m = |r: &str| server.metric(&format!("meterflow_mqtt_denied_total{{reason=\"{r}\"}}"));
        (m("bad_credentials") == 3.0
            && m("no_credentials") == 1.0
            && m("publish") == 3.0
            && m("subscribe") == 3.0)
            .then_some(())
    });

    let (exit, data_dir, log, _keep) = server.stop();
    assert!(exit.success(), "{log}");
    for secret in [E1, E2, GW] {
        assert!(!log.contains(secret), "a secret in the log");
    }
    let rows = meter_values(&data_dir);
    assert_eq!(
        rows,
        vec![("E1".into(), 1.0), ("E1".into(), 2.0), ("G5".into(), 3.0)],
        "no forged row"
    );
    let letters = dead_letter::read_all(&data_dir.join("dead_letters")).unwrap();
    let mut refused: Vec<(String, String, String)> = letters
        .iter()
        .filter(|l| l.kind == "unauthorized")
        .map(|l| {
            (
                l.meter_id.clone().unwrap_or_default(),
                l.topic.clone(),
                l.reason.clone(),
            )
        })
        .collect();
    refused.sort();
    assert_eq!(refused.len(), 3, "{letters:#?}");
    assert_eq!(
        (refused[0].0.as_str(), refused[0].1.as_str()),
        ("E1", "meters/E2/json")
    );
    assert_eq!(
        (refused[2].0.as_str(), refused[2].1.as_str()),
        ("GW1", "meters/X9/json")
    );
    for (_, _, reason) in &refused {
        assert!(
            reason.contains("may not publish") && reason.contains("peer 127.0.0.1:"),
            "{reason}"
        );
    }
    let forged = letters
        .iter()
        .find(|l| l.topic == "meters/X9/json")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&forged.payload).contains("668"),
        "the raw bytes are kept"
    );
}

#[test]
fn revoke_closes_a_live_session_and_only_the_same_identity_takes_a_session_over() {
    let server = Server::start_in(data_with_credentials(), &[]);
    let port = server.mqtt_port;
    let dir = tempfile::tempdir().unwrap();
    let tmp_root = server.data_dir.parent().unwrap().to_path_buf();

    // E2 holds client id "shared". E1 connecting with the same client id gets a session of
    // its own, and E2's stays; only E2 itself takes its session over.
    let mut e2 = subscriber(
        port,
        "meters/E2/cmd/#",
        &["-u", "E2", "-P", E2, "-i", "shared"],
        &dir.path().join("e2.log"),
    );
    crate::harness::wait_for("E2's session", || {
        (server.metric("meterflow_mqtt_connects_total") >= 1.0).then_some(())
    });
    let out = publish(
        port,
        "meters/E1/json",
        1.0,
        &["-u", "E1", "-P", E1, "-i", "shared"],
    );
    assert!(out.status.success(), "{}", text(&out));
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(e2.try_wait().unwrap().is_none(), "the live session stays");
    assert_eq!(
        server.metric("meterflow_mqtt_closed_total{reason=\"taken_over\"}"),
        0.0
    );
    // A device may not use another device's meter id as its client id.
    let out = publish(
        port,
        "meters/E1/json",
        9.0,
        &["-u", "E1", "-P", E1, "-i", "E2"],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("not authorised"), "{}", text(&out));
    let out = publish(
        port,
        "meters/E2/json",
        2.0,
        &["-u", "E2", "-P", E2, "-i", "shared"],
    );
    assert!(
        out.status.success(),
        "the same identity takes over: {}",
        text(&out)
    );
    crate::harness::wait_for("the old session closed as taken over", || {
        (server.metric("meterflow_mqtt_closed_total{reason=\"taken_over\"}") >= 1.0).then_some(())
    });
    let _ = e2.kill();
    let _ = e2.wait();

    // A live session of E1, then revoke E1: the server closes it, and E1 cannot come back.
    let mut e1 = subscriber(
        port,
        "meters/E1/cmd/#",
        &["-u", "E1", "-P", E1, "-i", "e1-sub"],
        &dir.path().join("e1.log"),
    );
    crate::harness::wait_for("E1's session", || {
        (server.metric("meterflow_mqtt_connections") >= 1.0).then_some(())
    });
    let said = crate::harness::credentials(&tmp_root, &["revoke", "E1"]);
    assert!(said.contains("E1 revoked"), "{said}");
    wait_for_reloads(&server, 1);
    crate::harness::wait_for("the revoked session closed", || {
        (server.metric("meterflow_mqtt_closed_total{reason=\"revoked\"}") >= 1.0).then_some(())
    });
    // mosquitto_sub tries to reconnect, is refused, and gives up.
    crate::harness::wait_for("mosquitto_sub to end", || e1.try_wait().unwrap());
    let out = publish(port, "meters/E1/json", 3.0, &["-u", "E1", "-P", E1]);
    assert!(!out.status.success(), "{}", text(&out));

    // A credential added while running works within seconds, with a generated secret.
    let said = crate::harness::credentials(&tmp_root, &["add", "E3"]);
    let secret = said.rsplit(' ').next().unwrap().trim().to_string();
    assert_eq!(secret.len(), 32, "{said}");
    let listed = crate::harness::credentials(&tmp_root, &["list"]);
    assert!(
        listed.contains("E3") && listed.contains("revoked") && !listed.contains(&secret),
        "{listed}"
    );
    wait_for_reloads(&server, 2);
    let out = publish(port, "meters/E3/json", 4.0, &["-u", "E3", "-P", &secret]);
    assert!(out.status.success(), "{}", text(&out));
    let (exit, data_dir, log, _keep) = server.stop();
    assert!(exit.success(), "{log}");
    assert!(!log.contains(&secret));
    let rows = meter_values(&data_dir);
    assert_eq!(
        rows,
        vec![("E1".into(), 1.0), ("E2".into(), 2.0), ("E3".into(), 4.0)]
    );
    // The store on disk is owner-only.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data_dir.join("credentials")), 0o700);
    assert_eq!(mode(&data_dir.join("credentials/credentials.csv")), 0o600);
}

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}: {}", text(&out));
}

/// A CA (`{name}-ca.crt`), and certificates it signs: `{leaf}.crt`/`.key` with subject CN
/// `{leaf}` (and SAN IP 127.0.0.1 for the server).
fn pki(dir: &Path, name: &str, leaves: &[&str]) {
    let ca = format!("{name}-ca");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.crt"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={ca}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    for leaf in leaves {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{leaf}.key"),
                "-out",
                &format!("{leaf}.csr"),
                "-subj",
                &format!("/CN={leaf}"),
            ],
        );
        let ext = dir.join(format!("{leaf}.ext"));
        std::fs::write(
            &ext,
            "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\n",
        )
        .unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{leaf}.csr"),
                "-CA",
                &format!("{ca}.crt"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-out",
                &format!("{leaf}.crt"),
                "-days",
                "2",
                "-extfile",
                ext.to_str().unwrap(),
            ],
        );
    }
}

#[test]
fn tls_with_client_certificates_and_a_certificate_reload() {
    let pki_dir = tempfile::tempdir().unwrap();
    let d = pki_dir.path();
    pki(d, "meters", &["server", "E7"]);
    pki(d, "rogue", &["E8"]);
    pki(d, "next", &["server2"]);
    let tls_port = crate::harness::free_port();
    let config = format!(
        "[mqtt]\ntls_cert = \"{0}/server.crt\"\ntls_key = \"{0}/server.key\"\ntls_client_ca = \"{0}/meters-ca.crt\"\n",
        d.display()
    );
    let (_config_dir, config_path) = crate::harness::config_file(&config);
    let server = Server::start_in(
        data_with_credentials(),
        &[
            "--config",
            &config_path,
            "--mqtt-tls-listen",
            &format!("127.0.0.1:{tls_port}"),
        ],
    );
    let path = |f: &str| d.join(f).to_str().unwrap().to_string();
    let tls = |extra: &[&str]| {
        let mut args = vec!["--cafile".to_string(), path("meters-ca.crt")];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let run = |topic: &str, value: f64, args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        publish(tls_port, topic, value, &args)
    };

    // A client certificate with CN E7 is meter E7, with no password.
    let cert = |name: &str| {
        vec![
            "--cert".into(),
            path(&format!("{name}.crt")),
            "--key".into(),
            path(&format!("{name}.key")),
        ]
    };
    let out = run("meters/E7/json", 7.0, [tls(&[]), cert("E7")].concat());
    assert!(out.status.success(), "{}", text(&out));
    // ...and only E7: 3.1.1 is closed when it publishes for E1.
    let out = run("meters/E1/json", 70.0, [tls(&[]), cert("E7")].concat());
    assert!(!out.status.success(), "{}", text(&out));
    // A secret still works over TLS, without a certificate.
    let out = run("meters/E1/json", 1.0, tls(&["-u", "E1", "-P", E1]));
    assert!(out.status.success(), "{}", text(&out));
    // No certificate and no secret: refused; a certificate from another CA: no handshake.
    let out = run("meters/E1/json", 9.0, tls(&[]));
    assert!(!out.status.success(), "{}", text(&out));
    let out = run("meters/E8/json", 8.0, [tls(&[]), cert("E8")].concat());
    assert!(!out.status.success(), "{}", text(&out));
    // Plain MQTT to the TLS port gets nowhere.
    let out = publish(tls_port, "meters/E1/json", 9.0, &["-u", "E1", "-P", E1]);
    assert!(!out.status.success());
    // A socket that never starts its TLS handshake is pending, not logged in, until it goes.
    let gauges = || {
        (
            server.metric("meterflow_mqtt_pending_connections"),
            server.metric("meterflow_mqtt_connections"),
        )
    };
    crate::harness::wait_for("every client gone", || {
        (gauges() == (0.0, 0.0)).then_some(())
    });
    let silent = std::net::TcpStream::connect(("127.0.0.1", tls_port)).unwrap();
    crate::harness::wait_for("the silent TLS socket pending", || {
        (gauges() == (1.0, 0.0)).then_some(())
    });
    drop(silent);
    crate::harness::wait_for("the silent TLS socket gone", || {
        (gauges() == (0.0, 0.0)).then_some(())
    });

    // Revoking E7 refuses its certificate too.
    let tmp_root = server.data_dir.parent().unwrap().to_path_buf();
    crate::harness::credentials(&tmp_root, &["revoke", "E7"]);
    wait_for_reloads(&server, 1);
    let out = run("meters/E7/json", 77.0, [tls(&[]), cert("E7")].concat());
    assert!(!out.status.success(), "{}", text(&out));

    // A new server certificate from another CA, swapped on disk: new connections get it
    // without a restart.
    std::fs::copy(d.join("server2.key"), d.join("server.key.new")).unwrap();
    std::fs::copy(d.join("server2.crt"), d.join("server.crt.new")).unwrap();
    std::fs::rename(d.join("server.key.new"), d.join("server.key")).unwrap();
    std::fs::rename(d.join("server.crt.new"), d.join("server.crt")).unwrap();
    crate::harness::wait_for("the new certificate in use", || {
        let args = vec![
            "--cafile".to_string(),
            path("next-ca.crt"),
            "-u".into(),
            "E2".into(),
            "-P".into(),
            E2.into(),
        ];
        run("meters/E2/json", 2.0, args)
            .status
            .success()
            .then_some(())
    });
    assert!(
        !run("meters/E2/json", 22.0, tls(&["-u", "E2", "-P", E2]))
            .status
            .success(),
        "the old CA no longer fits"
    );

    // simulate says why a TLS connection failed, in words: a CA that did not sign the
    // server's certificate.
    let out = Command::new(BIN)
        .args(["simulate", "--mqtt"])
        .arg(format!("127.0.0.1:{tls_port}"))
        .args(["--tls-ca", &path("rogue-ca.crt")])
        .args(["--meters", "1", "--messages", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains(
            "TLS handshake: the server's certificate is not signed by the CA given with --tls-ca"
        ),
        "{}",
        text(&out)
    );

    let (exit, data_dir, log, _keep) = server.stop();
    assert!(exit.success(), "{log}");
    assert!(log.contains("MQTT TLS certificate reloaded"), "{log}");
    // mosquitto_pub names 127.0.0.1 in SNI: rustls' warning of that, once per connection, is
    // not logged, with METERFLOW_LOG=info as the systemd unit sets it.
    assert!(!log.contains("SNI"), "{log}");
    let rows = meter_values(&data_dir);
    assert_eq!(
        rows,
        vec![("E1".into(), 1.0), ("E2".into(), 2.0), ("E7".into(), 7.0)]
    );
}

/// An MQTT 3.1.1 session opened by hand (CONNECT, CONNACK), left idle.
fn raw_connect(port: u16, client_id: &str) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut connect = vec![0x10, (12 + client_id.len()) as u8, 0, 4];
    connect.extend_from_slice(b"MQTT");
    connect.extend_from_slice(&[4, 0x02, 0, 60, 0, client_id.len() as u8]);
    connect.extend_from_slice(client_id.as_bytes());
    s.write_all(&connect).unwrap();
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0], "accepted");
    s
}

#[test]
fn anonymous_devices_only_on_loopback_with_an_empty_store_or_when_allowed() {
    // A listener reachable from the network with an empty store: start-up stops, saying why.
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "serve",
            "--mqtt-listen",
            &format!("0.0.0.0:{}", crate::harness::free_port()),
        ])
        .args(["--mqtt-v5-listen", "off", "--coap-listen", "off"])
        .args([
            "--http-listen",
            &format!("127.0.0.1:{}", crate::harness::free_port()),
        ])
        .arg("--data-dir")
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out);
    assert!(
        err.contains("mqtt.listen")
            && err.contains("meterflow credentials")
            && err.contains("allow_anonymous"),
        "{err}"
    );

    // allow_anonymous: anonymous publishes are taken, with a warning at start-up.
    let (_dir, config) = crate::harness::config_file("[mqtt]\nallow_anonymous = true\n");
    let server = Server::start_in(data_with_credentials(), &["--config", &config]);
    let out = publish(server.mqtt_port, "meters/ANY/json", 5.0, &[]);
    assert!(out.status.success(), "{}", text(&out));
    // ...but a wrong secret is still refused.
    let out = publish(
        server.mqtt_port,
        "meters/E1/json",
        5.0,
        &["-u", "E1", "-P", "wrong-wrong-wrong"],
    );
    assert!(!out.status.success());
    let (exit, data_dir, log, _keep) = server.stop();
    assert!(exit.success());
    assert!(log.contains("mqtt.allow_anonymous = true"), "{log}");
    assert_eq!(read_readings(&data_dir).len(), 1);

    // Once the store has an entry, loopback needs identity too; live anonymous sessions end.
    let server = Server::start();
    let mut anon = raw_connect(server.mqtt_port, "anon");
    let out = publish(server.mqtt_port, "meters/A1/json", 1.0, &[]);
    assert!(
        out.status.success(),
        "empty store, loopback: {}",
        text(&out)
    );
    let tmp_root = server.data_dir.parent().unwrap().to_path_buf();
    crate::harness::credentials(
        &tmp_root,
        &["add", "A1", "--secret", "a1-secret-0123456789"],
    );
    wait_for_reloads(&server, 1);
    let out = publish(server.mqtt_port, "meters/A1/json", 2.0, &[]);
    assert!(
        !out.status.success(),
        "identity required now: {}",
        text(&out)
    );
    let out = publish(
        server.mqtt_port,
        "meters/A1/json",
        3.0,
        &["-u", "A1", "-P", "a1-secret-0123456789"],
    );
    assert!(out.status.success(), "{}", text(&out));
    // The anonymous session that was open is closed by the server.
    use std::io::Read;
    let mut byte = [0u8; 1];
    anon.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    assert_eq!(anon.read(&mut byte).unwrap(), 0, "closed by the server");
    let (exit, data_dir, log, _keep) = server.stop();
    assert!(exit.success(), "{log}");
    let mut values: Vec<f64> = read_readings(&data_dir).iter().map(|r| r.value).collect();
    values.sort_by(f64::total_cmp);
    assert_eq!(values, vec![1.0, 3.0]);
}

#[test]
fn past_its_share_of_sessions_an_identity_loses_its_oldest() {
    let (_dir, config) = crate::harness::config_file("[mqtt]\nmax_sessions_per_identity = 2\n");
    let server = Server::start_in(data_with_credentials(), &["--config", &config]);
    let dir = tempfile::tempdir().unwrap();
    let e1_session = |i: usize| {
        let id = format!("e1-{i}");
        let args = ["-u", "E1", "-P", E1, "-i", id.as_str()];
        subscriber(
            server.mqtt_port,
            "meters/E1/cmd/#",
            &args,
            &dir.path().join(format!("{i}.log")),
        )
    };
    let mut oldest = e1_session(0);
    crate::harness::wait_for("the first session", || {
        (server.metric("meterflow_mqtt_connects_total") == 1.0).then_some(())
    });
    let mut second = e1_session(1);
    crate::harness::wait_for("the second session", || {
        (server.metric("meterflow_mqtt_connects_total") == 2.0).then_some(())
    });
    // A third: taken, and the oldest is closed (a meter whose client id changes cannot be
    // locked out by its own dead sessions).
    let out = publish(
        server.mqtt_port,
        "meters/E1/json",
        1.0,
        &["-u", "E1", "-P", E1, "-i", "e1-2"],
    );
    assert!(out.status.success(), "{}", text(&out));
    crate::harness::wait_for("the oldest session closed", || {
        (server.metric("meterflow_mqtt_closed_total{reason=\"sessions_per_identity\"}") == 1.0)
            .then_some(())
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(second.try_wait().unwrap().is_none(), "the second stays");
    // Another identity is not affected.
    let out = publish(
        server.mqtt_port,
        "meters/E2/json",
        2.0,
        &["-u", "E2", "-P", E2],
    );
    assert!(out.status.success(), "{}", text(&out));
    for s in [&mut oldest, &mut second] {
        let _ = s.kill();
        let _ = s.wait();
    }
    let (exit, data_dir, log, _keep) = server.stop();
    assert!(exit.success(), "{log}");
    let mut rows: Vec<String> = read_readings(&data_dir)
        .into_iter()
        .map(|r| r.meter_id)
        .collect();
    rows.sort();
    assert_eq!(rows, vec!["E1", "E2"]);
}

#[test]
fn a_topic_that_routes_nowhere_is_a_dead_letter_that_names_its_sender() {
    // An identified device may publish under meters/{its id}/ at any depth; what is not
    // exactly meters/{meter_id}/{format} is acknowledged and dead-lettered as bad_topic, and
    // the dead letter says who sent it (identity, client id, peer) and counts for the sender.
    // Anonymous devices (allowed here for the comparison) stay as the README has it.
    let (_dir, config) = crate::harness::config_file("[mqtt]\nallow_anonymous = true\n");
    let server = Server::start_in(data_with_credentials(), &["--config", &config]);
    let (port, port5) = (server.mqtt_port, server.mqtt_v5_port);
    let sent = [
        (
            port,
            "meters/E1/../E2/json",
            1.0,
            vec!["-u", "E1", "-P", E1, "-i", "e1-a"],
        ),
        (
            port5,
            "meters/E1/json/v2",
            2.0,
            vec!["-u", "E1", "-P", E1, "-i", "e1-b", "-V", "mqttv5"],
        ),
        (
            port,
            "meters/E1/xml",
            3.0,
            vec!["-u", "E1", "-P", E1, "-i", "e1-c"],
        ),
        (
            port,
            "meters/G5/x/y",
            4.0,
            vec!["-u", "GW1", "-P", GW, "-i", "gw-a"],
        ),
        (port, "meters/E9/../E2/json", 5.0, vec!["-i", "anon-a"]),
        (
            port,
            "meters/E1/json",
            6.0,
            vec!["-u", "E1", "-P", E1, "-i", "e1-d"],
        ),
    ];
    for (port, topic, value, login) in &sent {
        let out = publish(*port, topic, *value, login);
        assert!(out.status.success(), "{topic} acknowledged: {}", text(&out));
    }
    crate::harness::wait_for("five dead letters written", || {
        (server.metric("meterflow_dead_letters_written_total") == 5.0).then_some(())
    });
    let letters = dead_letter::read_all(&server.data_dir.join("dead_letters")).unwrap();
    let mut bad: Vec<(String, Option<String>, String)> = letters
        .iter()
        .map(|l| {
            assert_eq!(l.kind, "bad_topic", "{l:?}");
            (l.topic.clone(), l.meter_id.clone(), l.reason.clone())
        })
        .collect();
    bad.sort();
    assert_eq!(bad.len(), 5, "{letters:#?}");
    let sender = |topic: &str| bad.iter().find(|(t, _, _)| t == topic).unwrap();
    for (topic, who, client_id) in [
        ("meters/E1/../E2/json", "E1", "e1-a"),
        ("meters/E1/json/v2", "E1", "e1-b"),
        ("meters/E1/xml", "E1", "e1-c"),
        ("meters/G5/x/y", "GW1", "gw-a"),
    ] {
        let (_, meter_id, reason) = sender(topic);
        assert_eq!(meter_id.as_deref(), Some(who), "{topic}: the sender");
        assert!(
            reason.contains(&format!(
                "identity {who}, client id {client_id}, peer 127.0.0.1:"
            )),
            "{topic}: {reason}"
        );
    }
    // Anonymous: no identity to name, as before.
    let (_, meter_id, reason) = sender("meters/E9/../E2/json");
    assert_eq!(meter_id, &None);
    assert!(!reason.contains("identity"), "{reason}");
    // The sender's device page shows them among its recent dead letters.
    crate::harness::wait_for("E1's dead letters on its page", || {
        let (_, body) = server.http_get("/api/device?meter_id=E1");
        let device: serde_json::Value = serde_json::from_str(&body).ok()?;
        let recent = device["recent_dead_letters"]
            .as_array()?
            .iter()
            .filter(|l| l["kind"] == "bad_topic")
            .count();
        (recent == 3 && device["dead_letters_by_kind"]["bad_topic"] == 3).then_some(())
    });

    let (exit, data_dir, log, _keep) = server.stop();
    assert!(exit.success(), "{log}");
    assert_eq!(
        meter_values(&data_dir),
        vec![("E1".into(), 6.0)],
        "nothing stored as E2"
    );
}

/// `meterflow credentials generate` makes a fleet's CSV (random secrets, 0600, never
/// overwritten) that `credentials import` takes and `simulate --credentials` logs in with.
#[test]
fn a_generated_fleet_is_imported_and_simulated() {
    let tmp = tempfile::tempdir().unwrap();
    let fleet = tmp.path().join("fleet.csv");
    let generate = || {
        Command::new(BIN)
            .args([
                "credentials",
                "generate",
                "--meters",
                "5",
                "--prefix",
                "gen-",
                "--out",
            ])
            .arg(&fleet)
            .output()
            .unwrap()
    };
    let out = generate();
    assert!(out.status.success(), "{}", text(&out));
    let csv = std::fs::read_to_string(&fleet).unwrap();
    let secrets: Vec<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap())
        .collect();
    assert_eq!(csv.lines().next(), Some("meter_id,secret,publish_for"));
    assert_eq!(secrets.len(), 5);
    assert!(secrets.iter().all(|s| s.len() == 32), "{csv}");
    let unique: std::collections::BTreeSet<&&str> = secrets.iter().collect();
    assert_eq!(unique.len(), 5, "every secret its own");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&fleet).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        !generate().status.success(),
        "an existing file is not overwritten"
    );
    crate::harness::credentials(tmp.path(), &["import", fleet.to_str().unwrap()]);
    let server = Server::start_in(tmp, &[]);
    let out = Command::new(BIN)
        .args(["simulate", "--json", "--mqtt"])
        .arg(format!("127.0.0.1:{}", server.mqtt_port))
        .args([
            "--meters",
            "5",
            "--messages",
            "2",
            "--prefix",
            "gen-",
            "--credentials",
        ])
        .arg(&fleet)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["meters_failed"], 0, "{summary}");
    assert_eq!(summary["messages_acked"], 10, "{summary}");

    // Without the credentials every meter is refused: said in words, not tried again, and
    // the exit status says nothing was acknowledged.
    let out = Command::new(BIN)
        .args(["simulate", "--json", "--mqtt"])
        .arg(format!("127.0.0.1:{}", server.mqtt_port))
        .args(["--meters", "3", "--messages", "2", "--prefix", "gen-"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("connection refused: not authorised (no or wrong credentials")
            && said.contains("(CONNACK 5)")
            && said.contains("no report was acknowledged"),
        "{said}"
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["meters_failed"], 3, "{summary}");
    assert_eq!(
        summary["reconnects"], 0,
        "a refusal is not retried: {summary}"
    );

    // Over plain CoAP, with the store holding the fleet: 4.01, said in words.
    let out = Command::new(BIN)
        .args(["simulate", "--coap"])
        .arg(format!("127.0.0.1:{}", server.coap_port))
        .args(["--meters", "1", "--messages", "1", "--prefix", "gen-"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("was answered 4.01 Unauthorized (plain CoAP serves devices only"),
        "{}",
        text(&out)
    );
    crate::harness::wait_for("the CoAP refusal in the server's log", || {
        server
            .log_text()
            .contains("CoAP request refused (4.01)")
            .then_some(())
    });

    // A known meter with a wrong secret: the server's log names the meter, the peer and the
    // reason, and never the secret it was given.
    let wrong = tmp_wrong_secrets(&csv);
    let out = Command::new(BIN)
        .args(["simulate", "--json", "--mqtt"])
        .arg(format!("127.0.0.1:{}", server.mqtt_port))
        .args([
            "--meters",
            "1",
            "--messages",
            "1",
            "--prefix",
            "gen-",
            "--credentials",
        ])
        .arg(wrong.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let refused =
        |l: &&str| l.contains("MQTT login refused") && l.contains("meter_id=\"gen-000000\"");
    let log = crate::harness::wait_for("the refused login of gen-000000 in the log", || {
        let log = server.log_text();
        log.lines().any(|l| refused(&l)).then_some(log)
    });
    let line = log.lines().find(refused).unwrap();
    assert!(
        line.contains("WARN")
            && line.contains("peer=127.0.0.1:")
            && line.contains("reason=\"bad_credentials\""),
        "{line}"
    );
    assert!(
        !log.contains("wrong-secret-"),
        "a secret was logged:\n{log}"
    );
}

/// The fleet's CSV with every secret replaced by a wrong one.
fn tmp_wrong_secrets(csv: &str) -> tempfile::NamedTempFile {
    use std::io::Write;
    let mut file = tempfile::NamedTempFile::new().unwrap();
    for (i, line) in csv.lines().enumerate() {
        let mut fields: Vec<String> = line.split(',').map(str::to_string).collect();
        if i > 0 {
            fields[1] = format!("wrong-secret-{i:020}");
        }
        writeln!(file, "{}", fields.join(",")).unwrap();
    }
    file
}

/// Certificates that rustls refuses stop `serve` with the config key, the file at fault and
/// the cause in words: a v1 certificate (what OpenSSL 3's `x509 -req` makes without
/// extensions) and a key of another certificate.
#[test]
fn a_v1_certificate_or_a_foreign_key_is_named_in_words() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-noenc",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend(["-subj", "/CN=ca", "-keyout", "ca.key", "-out", "ca.crt"]);
    openssl(dir, &ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend(["-subj", "/CN=v1", "-keyout", "v1.key", "-out", "v1.csr"]);
    openssl(dir, &csr);
    openssl(
        dir,
        &[
            "x509", "-req", "-in", "v1.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-out", "v1.crt",
        ],
    );
    let serve = |cert: &str, key: &str| {
        let config = dir.join(format!("{cert}-{key}.toml"));
        std::fs::write(
            &config,
            format!(
                "[mqtt]\ntls_cert = \"{0}/{cert}\"\ntls_key = \"{0}/{key}\"\n",
                dir.display()
            ),
        )
        .unwrap();
        let out = Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--mqtt-tls-listen")
            .arg(format!("127.0.0.1:{}", crate::harness::free_port()))
            .arg("--mqtt-listen")
            .arg(format!("127.0.0.1:{}", crate::harness::free_port()))
            .args(["--mqtt-v5-listen", "off", "--coap-listen", "off"])
            .arg("--http-listen")
            .arg(format!("127.0.0.1:{}", crate::harness::free_port()))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{}", text(&out));
        text(&out)
    };
    let said = serve("v1.crt", "v1.key");
    assert!(
        said.contains("mqtt.tls_cert")
            && said.contains("v1.crt: certificate \"CN=v1\" is X.509 v1, and TLS needs v3"),
        "{said}"
    );
    let said = serve("ca.crt", "v1.key");
    assert!(
        said.contains("mqtt.tls_key")
            && said.contains("v1.key is not the private key of the certificate in"),
        "{said}"
    );
    assert!(
        !said.contains("Other(") && !said.contains("Some("),
        "{said}"
    );
    // A v1 certificate as a CA of client certificates is taken (rustls accepts v1 trust
    // anchors): only the server's own certificate must be v3.
    let config = dir.join("v1-client-ca.toml");
    std::fs::write(
        &config,
        format!(
            "[mqtt]\ntls_cert = \"{0}/ca.crt\"\ntls_key = \"{0}/ca.key\"\ntls_client_ca = \"{0}/v1.crt\"\n",
            dir.display()
        ),
    )
    .unwrap();
    let server = Server::start_with(&[
        "--config",
        config.to_str().unwrap(),
        "--mqtt-tls-listen",
        &format!("127.0.0.1:{}", crate::harness::free_port()),
    ]);
    drop(server);
}
