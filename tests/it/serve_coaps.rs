//! CoAP over DTLS (coaps, PSK) end to end against the real binary, with libcoap's
//! `coap-client-openssl` and `coap-client-gnutls` (two DTLS stacks nobody here wrote) as the
//! devices: reports stored exactly, a wrong key and an unknown identity refused at the
//! handshake, a post for another meter answered 4.03 and kept as an `unauthorized` dead
//! letter, Block1 over DTLS, LwM2M registration bound to the identity and Send bound to the
//! registering session, the session limits, expiry and revocation, and a simulated DTLS fleet.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::{read_readings, Row, Server};
use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType};
use meterflow_proto::Format;
use meterflow_simulate::dtls::DtlsLink;
use meterflow_simulate::{Plan, Shape};
use meterflow_storage::dead_letter;

const A_KEY: &str = "a-secret-0123456789";
const B_KEY: &str = "b-secret-0123456789";
const GW_KEY: &str = "gw-secret-0123456789";
const IMEI: &str = "imei-490154203237518";
const IMEI_KEY: &str = "imei-secret-0123456789";

/// A data folder whose credential store has meter-a, meter-b, a gateway for `field-*` and an
/// LwM2M device.
fn data_with_credentials(extra: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("fleet.csv");
    std::fs::write(
        &csv,
        format!(
            "meter_id,secret,publish_for\nmeter-a,{A_KEY},\nmeter-b,{B_KEY},\ngw-1,{GW_KEY},field-*\n{IMEI},{IMEI_KEY},\n{extra}"
        ),
    )
    .unwrap();
    crate::harness::credentials(tmp.path(), &["import", csv.to_str().unwrap()]);
    tmp
}

/// Starts serve with a coaps listener on a free port (and `extra` arguments); the port too.
fn start_with_dtls(tmp: tempfile::TempDir, extra: &[&str]) -> (Server, u16) {
    let port = crate::harness::free_udp_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["--coaps-listen", listen.as_str()];
    args.extend_from_slice(extra);
    (Server::start_in(tmp, &args), port)
}

/// Runs a libcoap client (`coap-client-openssl` or `coap-client-gnutls`) with `-v 6` and
/// returns what it printed. libcoap exits 0 even when the handshake fails: callers look at
/// the answer, and at the server.
fn coap_client(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool)
        .args(["-v", "6", "-B", "20"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} runs (the test command installs libcoap3-bin): {e}"));
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The code of the last answer the client printed (`v:1 t:ACK c:2.04 i:...`), if any.
fn answer_code(output: &str) -> Option<String> {
    output
        .lines()
        .rev()
        .filter_map(|l| l.split(" c:").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .find(|c| c.len() == 4 && c.as_bytes()[1] == b'.' && !c.starts_with('0'))
        .map(str::to_string)
}

fn post(tool: &str, id: &str, key: &str, port: u16, path: &str, cf: &str, file: &Path) -> String {
    coap_client(
        tool,
        &[
            "-u",
            id,
            "-k",
            key,
            "-m",
            "post",
            "-t",
            cf,
            "-f",
            file.to_str().unwrap(),
            &format!("coaps://127.0.0.1:{port}{path}"),
        ],
    )
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn values_of(rows: &[Row], meter: &str) -> Vec<(i64, f64)> {
    let mut v: Vec<(i64, f64)> = rows
        .iter()
        .filter(|r| r.meter_id == meter)
        .map(|r| (r.ts_ms, r.value))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    v
}

fn json_report(ts: &str, value: f64) -> Vec<u8> {
    format!(
        r#"{{"readings":[{{"channel":"1-0:1.8.0","ts":"{ts}","value":{value},"unit":"kWh"}}]}}"#
    )
    .into_bytes()
}

#[test]
fn libcoap_over_dtls_stores_each_identity_s_reports_and_refuses_the_rest() {
    let (server, port) = start_with_dtls(data_with_credentials(""), &[]);
    let files = tempfile::tempdir().unwrap();
    let dir = files.path();
    let ssl = "coap-client-openssl";
    let tls = "coap-client-gnutls";

    // JSON over OpenSSL's DTLS.
    let json = write(dir, "a.json", &json_report("2024-03-01T00:15:00Z", 11.5));
    let out = post(ssl, "meter-a", A_KEY, port, "/r/meter-a", "50", &json);
    assert_eq!(answer_code(&out).as_deref(), Some("2.04"), "{out}");

    // SenML-CBOR (RFC 8428 §6's example, seven records) over GnuTLS's.
    let cbor = std::fs::read("decoders/tests/fixtures/senml/rfc8428/ex3.gen.cbor").unwrap();
    let cbor = write(dir, "ex3.cbor", &cbor);
    let out = post(tls, "meter-a", A_KEY, port, "/r/meter-a", "112", &cbor);
    assert_eq!(answer_code(&out).as_deref(), Some("2.04"), "{out}");

    // Block1 over DTLS: 96 quarter-hours of SenML-JSON in 64-byte blocks.
    let mut records =
        vec![r#"{"bn":"","bt":1709251200,"bu":"kWh","n":"1-0:1.29.0","v":0.0}"#.to_string()];
    for i in 1..96 {
        records.push(format!(
            r#"{{"n":"1-0:1.29.0","t":{},"v":{}.25}}"#,
            i * 900,
            i
        ));
    }
    let big = write(
        dir,
        "big.json",
        format!("[{}]", records.join(",")).as_bytes(),
    );
    let out = coap_client(
        ssl,
        &[
            "-u",
            "meter-b",
            "-k",
            B_KEY,
            "-b",
            "64",
            "-m",
            "post",
            "-t",
            "110",
            "-f",
            big.to_str().unwrap(),
            &format!("coaps://127.0.0.1:{port}/r/meter-b"),
        ],
    );
    assert!(out.contains("Block1"), "the upload went in blocks:\n{out}");
    assert_eq!(answer_code(&out).as_deref(), Some("2.04"), "{out}");

    // A gateway posts for a meter its glob matches.
    let field = write(dir, "f.json", &json_report("2024-03-01T00:30:00Z", 7.0));
    let out = post(tls, "gw-1", GW_KEY, port, "/r/field-7", "50", &field);
    assert_eq!(answer_code(&out).as_deref(), Some("2.04"), "{out}");

    // meter-a posting for meter-b, and the gateway outside its glob: 4.03.
    let forged = write(
        dir,
        "forged.json",
        &json_report("2024-03-01T00:45:00Z", 666.0),
    );
    let out = post(ssl, "meter-a", A_KEY, port, "/r/meter-b", "50", &forged);
    assert_eq!(answer_code(&out).as_deref(), Some("4.03"), "{out}");
    let out = post(tls, "gw-1", GW_KEY, port, "/r/meter-a", "50", &forged);
    assert_eq!(answer_code(&out).as_deref(), Some("4.03"), "{out}");

    // A wrong key and an unknown identity fail the handshake: no answer at all.
    let out = post(
        ssl,
        "meter-a",
        "not-the-key-0123",
        port,
        "/r/meter-a",
        "50",
        &forged,
    );
    assert_eq!(answer_code(&out), None, "{out}");
    let out = post(tls, "meter-z", A_KEY, port, "/r/meter-z", "50", &forged);
    assert_eq!(answer_code(&out), None, "{out}");
    crate::harness::wait_for("the failed handshakes counted", || {
        (server.metric("meterflow_coaps_handshakes_total{result=\"failed\"}") >= 2.0).then_some(())
    });

    // Plain CoAP with a non-empty store: 4.01, nothing stored.
    let out = Command::new("coap-client-notls")
        .args(["-v", "6", "-B", "20", "-m", "post", "-t", "50", "-f"])
        .arg(&forged)
        .arg(format!("coap://127.0.0.1:{}/r/meter-a", server.coap_port))
        .output()
        .unwrap();
    let out =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(answer_code(&out).as_deref(), Some("4.01"), "{out}");

    assert_eq!(
        server.metric("meterflow_coap_denied_total{reason=\"forbidden\"}"),
        2.0
    );
    assert_eq!(
        server.metric("meterflow_coap_denied_total{reason=\"unauthenticated\"}"),
        1.0
    );
    assert!(server.metric("meterflow_coaps_handshakes_total{result=\"ok\"}") >= 6.0);

    let (exit, data_dir, log, _keep) = server.stop();
    assert!(exit.success(), "{log}");
    for secret in [A_KEY, B_KEY, GW_KEY] {
        assert!(!log.contains(secret), "a secret in the log");
    }
    // Each forged post is an event of the meter it claimed to be, naming who sent it.
    let forged: Vec<(String, String, String, String)> =
        meterflow_storage::events::read_parquet(&data_dir, &Default::default())
            .unwrap()
            .into_iter()
            .map(|e| (e.meter_id, e.kind, e.code, e.source))
            .collect();
    let event = |meter: &str, by: &str| {
        (
            meter.to_string(),
            "forged_publish".to_string(),
            by.to_string(),
            "coap".to_string(),
        )
    };
    assert_eq!(forged.len(), 2, "{forged:?}");
    assert!(forged.contains(&event("meter-b", "meter-a")), "{forged:?}");
    assert!(forged.contains(&event("meter-a", "gw-1")), "{forged:?}");
    let rows = read_readings(&data_dir);
    let ex3: Vec<(i64, f64)> = vec![
        (1_276_020_071_001, 1.2),
        (1_276_020_072_001, 1.3),
        (1_276_020_073_001, 1.4),
        (1_276_020_074_001, 1.5),
        (1_276_020_075_001, 1.6),
        (1_276_020_076_001, 1.7),
        (1_276_020_076_001, 120.1),
        (1_709_252_100_000, 11.5),
    ];
    assert_eq!(
        values_of(&rows, "meter-a"),
        ex3,
        "JSON and SenML-CBOR, exactly"
    );
    let block: Vec<(i64, f64)> = (0..96)
        .map(|i| {
            (
                1_709_251_200_000 + i * 900_000,
                if i == 0 { 0.0 } else { i as f64 + 0.25 },
            )
        })
        .collect();
    assert_eq!(
        values_of(&rows, "meter-b"),
        block,
        "Block1 whole, nothing forged"
    );
    assert_eq!(values_of(&rows, "field-7"), vec![(1_709_253_000_000, 7.0)]);
    assert!(rows.iter().all(|r| r.value != 666.0), "no forged row");
    assert!(rows.iter().all(|r| r.source == "coap"));

    let letters = dead_letter::read_all(&data_dir.join("dead_letters")).unwrap();
    let mut refused: Vec<(String, String)> = letters
        .iter()
        .filter(|l| l.kind == "unauthorized")
        .map(|l| (l.meter_id.clone().unwrap_or_default(), l.topic.clone()))
        .collect();
    refused.sort();
    assert_eq!(
        refused,
        vec![
            ("gw-1".to_string(), "/r/meter-a".to_string()),
            ("meter-a".to_string(), "/r/meter-b".to_string())
        ],
        "{letters:#?}"
    );
    let letter = letters.iter().find(|l| l.topic == "/r/meter-b").unwrap();
    assert!(
        letter.reason.contains("127.0.0.1:"),
        "the peer: {}",
        letter.reason
    );
    assert!(
        String::from_utf8_lossy(&letter.payload).contains("666"),
        "the raw body is kept"
    );
}

/// A confirmable POST with a token, path segments, queries and a Content-Format.
fn coap_post(
    mid: u16,
    path: &[&str],
    queries: &[&str],
    cf: Option<u16>,
    payload: &[u8],
) -> Vec<u8> {
    let mut p = Packet::new();
    p.header.set_version(1);
    p.header.set_type(MessageType::Confirmable);
    p.header.code = MessageClass::Request(RequestType::Post);
    p.header.message_id = mid;
    p.set_token(vec![0x51, mid as u8]);
    for seg in path {
        p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
    }
    for q in queries {
        p.add_option(CoapOption::UriQuery, q.as_bytes().to_vec());
    }
    if let Some(cf) = cf {
        p.add_option(CoapOption::ContentFormat, vec![(cf >> 8) as u8, cf as u8]);
    }
    p.payload = payload.to_vec();
    p.to_bytes().unwrap()
}

/// One request in a held DTLS session, its answer.
async fn ask(link: &mut DtlsLink, request: &[u8]) -> Packet {
    link.send(request).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(20), link.recv(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    Packet::from_bytes(&buf[..n]).unwrap()
}

async fn dtls_session(port: u16, id: &str, key: &str) -> DtlsLink {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let server = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    socket.connect(server).await.unwrap();
    DtlsLink::connect(socket, server, id, key.as_bytes(), Duration::from_secs(20))
        .await
        .unwrap()
}

/// The alert an OpenSSL DTLS 1.2 PSK handshake as `identity` with `key` ends with
/// (`SSL alert number N`), or "established".
fn dtls_handshake_alert(port: u16, identity: &str, key: &[u8]) -> String {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-dtls1_2",
            "-psk_identity",
            identity,
            "-psk",
            &hex,
        ])
        .args(["-cipher", "PSK-AES128-GCM-SHA256", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl runs (the test command installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match text.split("SSL alert number ").nth(1) {
        Some(rest) => format!("alert {}", rest.split_whitespace().next().unwrap_or("?")),
        None if text.contains("Cipher is PSK") && text.contains("Verify return code") => {
            "established".into()
        }
        None => format!("no alert: {text}"),
    }
}

/// Issue 20, finding 5: the handshake does not tell which meter ids exist. An unknown or
/// revoked identity gets a dummy key (RFC 4279 §2), so its handshake fails exactly as a
/// known identity's with a wrong key does. Before the fix the first two ended with alert 80
/// (internal_error) and the wrong key with 115.
#[test]
fn dtls_handshakes_fail_alike_for_unknown_ids_revoked_ids_and_wrong_keys() {
    let tmp = data_with_credentials("");
    crate::harness::credentials(tmp.path(), &["revoke", "meter-b"]);
    let (server, port) = start_with_dtls(tmp, &[]);
    assert_eq!(
        dtls_handshake_alert(port, "meter-a", A_KEY.as_bytes()),
        "established"
    );
    let wrong_key = dtls_handshake_alert(port, "meter-a", b"not-the-secret-0123");
    assert!(wrong_key.starts_with("alert "), "{wrong_key}");
    for (who, key) in [
        ("no-such-meter", b"not-the-secret-0123".as_slice()),
        ("no-such-meter", A_KEY.as_bytes()),
        ("meter-b", B_KEY.as_bytes()),
    ] {
        assert_eq!(dtls_handshake_alert(port, who, key), wrong_key, "{who}");
    }
    assert_eq!(server.metric("meterflow_coaps_unknown_identity_total"), 3.0);
}

/// A POST of a JSON report to `/r/{meter}` with this message ID and token.
fn report_post(mid: u16, token: &[u8], meter: &str, value: f64) -> Vec<u8> {
    let mut p = Packet::from_bytes(&coap_post(
        mid,
        &["r", meter],
        &[],
        Some(50),
        &json_report("2024-03-01T00:15:00Z", value),
    ))
    .unwrap();
    p.set_token(token.to_vec());
    p.to_bytes().unwrap()
}

fn code_and_token(answer: &Packet) -> (String, Vec<u8>) {
    (answer.header.code.to_string(), answer.get_token().to_vec())
}

/// Issue 20, finding 1: two live sessions of one identity (a gateway with a session per
/// meter) that happen to use the same message ID are two exchanges, not a retransmission:
/// each gets its own answer with its own token and each report is stored. Before the fix
/// the second got the first's cached ACK (its token, or its 4.03) and its report was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_of_one_identity_with_one_message_id_are_two_exchanges() {
    let (server, port) = start_with_dtls(data_with_credentials(""), &[]);
    let mut a = dtls_session(port, "gw-1", GW_KEY).await;
    let mut b = dtls_session(port, "gw-1", GW_KEY).await;

    let first = report_post(0x6161, &[0xA1], "field-91", 91.0);
    let answer = ask(&mut a, &first).await;
    assert_eq!(code_and_token(&answer), ("2.04".into(), vec![0xA1]));
    let answer = ask(&mut b, &report_post(0x6161, &[0xB2], "field-92", 92.0)).await;
    assert_eq!(
        code_and_token(&answer),
        ("2.04".into(), vec![0xB2]),
        "the second session's own answer, not the first's"
    );

    // A refusal in one session is not the other's answer either.
    let answer = ask(&mut b, &report_post(0x6262, &[0xB3], "meter-a", 1.0)).await;
    assert_eq!(code_and_token(&answer), ("4.03".into(), vec![0xB3]));
    let answer = ask(&mut a, &report_post(0x6262, &[0xA4], "field-93", 93.0)).await;
    assert_eq!(code_and_token(&answer), ("2.04".into(), vec![0xA4]));

    // A true retransmission is still known: in its session, and in a new session of the same
    // identity (a NAT rebinding), where its token and content are the same.
    let answer = ask(&mut a, &first).await;
    assert_eq!(code_and_token(&answer), ("2.04".into(), vec![0xA1]));
    let mut c = dtls_session(port, "gw-1", GW_KEY).await;
    let answer = ask(&mut c, &first).await;
    assert_eq!(code_and_token(&answer), ("2.04".into(), vec![0xA1]));
    assert_eq!(server.metric("meterflow_coap_duplicates_total"), 2.0);
    drop((a, b, c));

    let (status, data_dir, log, _tmp) = server.stop();
    assert!(status.success(), "{log}");
    let rows = read_readings(&data_dir);
    for (meter, value) in [("field-91", 91.0), ("field-92", 92.0), ("field-93", 93.0)] {
        assert_eq!(
            values_of(&rows, meter),
            vec![(1_709_252_100_000, value)],
            "{meter} stored once"
        );
    }
    assert!(values_of(&rows, "meter-a").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lwm2m_over_dtls_registers_only_its_own_endpoint_and_sends_only_in_its_session() {
    let (server, port) = start_with_dtls(data_with_credentials(""), &[]);
    let endpoint = format!("urn:imei:{}", &IMEI[5..]);
    let register_uri =
        |ep: &str| format!("coaps://127.0.0.1:{port}/rd?ep={ep}&lt=300&lwm2m=1.1&b=U");

    // libcoap: the right endpoint registers; another endpoint is refused.
    let libcoap = |args: &[&str]| {
        let mut all = vec!["-u", IMEI, "-k", IMEI_KEY];
        all.extend_from_slice(args);
        coap_client("coap-client-openssl", &all)
    };
    let out = libcoap(&[
        "-m",
        "post",
        "-t",
        "40",
        "-e",
        "</3/0>",
        &register_uri(&endpoint),
    ]);
    assert_eq!(answer_code(&out).as_deref(), Some("2.01"), "{out}");
    let out = libcoap(&[
        "-m",
        "post",
        "-t",
        "40",
        "-e",
        "</3/0>",
        &register_uri("urn:imei:111111111111111"),
    ]);
    assert_eq!(answer_code(&out).as_deref(), Some("4.03"), "{out}");
    // A Send from another session (each libcoap run handshakes anew) is refused, even from
    // the identity that registered.
    let files = tempfile::tempdir().unwrap();
    let pack = write(
        files.path(),
        "device.cbor",
        &crate::harness::leshan_device_object(),
    );
    let out = libcoap(&[
        "-m",
        "post",
        "-t",
        "112",
        "-f",
        pack.to_str().unwrap(),
        &format!("coaps://127.0.0.1:{port}/dp"),
    ]);
    assert_eq!(answer_code(&out).as_deref(), Some("4.03"), "{out}");

    // One session that registers, then sends: taken. Another identity's session cannot
    // update or delete that registration.
    let mut device = dtls_session(port, IMEI, IMEI_KEY).await;
    let ep_query = format!("ep={endpoint}");
    let answer = ask(
        &mut device,
        &coap_post(
            1,
            &["rd"],
            &[&ep_query, "lt=300", "lwm2m=1.1"],
            Some(40),
            b"</3/0>",
        ),
    )
    .await;
    assert_eq!(answer.header.get_code(), "2.01");
    let location: Vec<String> = answer
        .get_option(CoapOption::LocationPath)
        .unwrap()
        .iter()
        .map(|v| String::from_utf8(v.clone()).unwrap())
        .collect();
    assert_eq!(location[0], "rd");
    let answer = ask(
        &mut device,
        &coap_post(
            2,
            &["dp"],
            &[],
            Some(112),
            &crate::harness::leshan_device_object(),
        ),
    )
    .await;
    assert_eq!(answer.header.get_code(), "2.04");
    let mut intruder = dtls_session(port, "meter-a", A_KEY).await;
    let answer = ask(
        &mut intruder,
        &coap_post(3, &["rd", &location[1]], &["lt=600"], None, b""),
    )
    .await;
    assert_eq!(answer.header.get_code(), "4.03");

    let (exit, data_dir, log, _keep) = server.stop();
    assert!(exit.success(), "{log}");
    let rows = read_readings(&data_dir);
    let battery: Vec<f64> = rows
        .iter()
        .filter(|r| r.meter_id == IMEI && r.channel == "/3/0/9")
        .map(|r| r.value)
        .collect();
    assert_eq!(
        battery,
        vec![100.0],
        "the one Send in the registering session"
    );
    assert!(
        rows.iter().all(|r| r.meter_id == IMEI),
        "nothing else stored"
    );
    let letters = dead_letter::read_all(&data_dir.join("dead_letters")).unwrap();
    let mut refused: Vec<String> = letters
        .iter()
        .filter(|l| l.kind == "unauthorized")
        .map(|l| l.topic.clone())
        .collect();
    refused.sort();
    assert_eq!(
        refused,
        vec!["/dp", "/rd", &format!("/rd/{}", location[1])],
        "{letters:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dtls_sessions_are_bounded_expire_and_end_with_their_credential() {
    let (_dir, config) = crate::harness::config_file(
        "[coap]\ndtls_max_sessions_per_address = 2\ndtls_handshake_timeout_s = 1\ndtls_idle_timeout_s = 3\n",
    );
    let (server, port) = start_with_dtls(data_with_credentials(""), &["--config", &config]);
    let server_addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));

    // A ClientHello without a cookie gets a HelloVerifyRequest, smaller than the hello.
    let hello = {
        use rtc_dtls::config::ConfigBuilder;
        use rtc_dtls::endpoint::Endpoint;
        let config = ConfigBuilder::default()
            .with_crypto_provider(rtc_dtls::crypto_provider::default_provider().unwrap())
            .with_cipher_suites(vec![
                rtc_dtls::cipher_suite::CipherSuiteId::Tls_Psk_With_Aes_128_Ccm_8,
            ])
            .with_psk(Some(std::sync::Arc::new(|_: &[u8]| Ok(b"x".to_vec()))))
            .with_psk_identity_hint(Some(b"meter-a".to_vec()))
            .build(true, Some(server_addr))
            .unwrap();
        let mut client = Endpoint::new(
            "127.0.0.1:1".parse().unwrap(),
            rtc_shared::TransportProtocol::UDP,
            None,
        );
        client
            .connect(
                std::time::Instant::now(),
                server_addr,
                std::sync::Arc::new(config),
                None,
            )
            .unwrap();
        client.poll_transmit().unwrap().message.to_vec()
    };
    let raw = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    raw.send_to(&hello, server_addr).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let (n, _) = tokio::time::timeout(Duration::from_secs(20), raw.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(buf[0], 22, "a handshake record");
    assert_eq!(buf[13], 3, "HelloVerifyRequest");
    assert!(
        n < hello.len(),
        "no amplification: {n} bytes for a {}-byte hello",
        hello.len()
    );
    // Left half-done, it is dropped after the handshake timeout.
    crate::harness::wait_for("the half-done handshake dropped", || {
        (server.metric("meterflow_coaps_sessions_ended_total{why=\"handshake_timeout\"}") >= 1.0)
            .then_some(())
    });

    // Two sessions from 127.0.0.1 at most: the third is not answered.
    let mut a = dtls_session(port, "meter-a", A_KEY).await;
    let _b = dtls_session(port, "meter-b", B_KEY).await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(server_addr).await.unwrap();
    let third = DtlsLink::connect(
        socket,
        server_addr,
        "gw-1",
        GW_KEY.as_bytes(),
        Duration::from_secs(3),
    )
    .await;
    assert!(third.is_err(), "a third session from one address");
    assert!(server.metric("meterflow_coaps_refused_total{why=\"per_address\"}") >= 1.0);

    // A revoked credential ends its session within seconds.
    let answer = ask(
        &mut a,
        &coap_post(
            1,
            &["r", "meter-a"],
            &[],
            Some(50),
            &json_report("2024-03-01T01:00:00Z", 1.0),
        ),
    )
    .await;
    assert_eq!(answer.header.get_code(), "2.04");
    crate::harness::credentials(server.data_dir.parent().unwrap(), &["revoke", "meter-a"]);
    crate::harness::wait_for("meter-a's session closed", || {
        (server.metric("meterflow_coaps_sessions_ended_total{why=\"revoked\"}") >= 1.0)
            .then_some(())
    });
    // meter-b's session, unused, expires when idle.
    crate::harness::wait_for("meter-b's idle session closed", || {
        (server.metric("meterflow_coaps_sessions_ended_total{why=\"idle\"}") >= 1.0).then_some(())
    });
    crate::harness::wait_for("no session left", || {
        (server.metric("meterflow_coaps_sessions{state=\"established\"}") == 0.0).then_some(())
    });
    let (exit, _, log, _keep) = server.stop();
    assert!(exit.success(), "{log}");
}

/// `simulate --coap --dtls` with the fleet's credentials file: every row once.
#[test]
fn a_simulated_dtls_fleet_arrives_complete_and_exactly_once() {
    let plan = Plan {
        meters: 30,
        messages: 5,
        format: Format::Json,
        shape: Shape::Readings,
        start_ms: 1_711_843_200_000,
        interval_s: 900,
        prefix: "dtls-".into(),
    };
    let fleet: String = (0..plan.meters)
        .map(|m| {
            format!(
                "{},secret-of-{}-0123456789,\n",
                plan.meter_id(m),
                plan.meter_id(m)
            )
        })
        .collect();
    let tmp = data_with_credentials(&fleet);
    let csv = tmp.path().join("fleet.csv");
    let (server, port) = start_with_dtls(tmp, &[]);
    let summary = crate::harness::simulate_json(
        crate::harness::simulate_command(server.mqtt_port, &plan, 0)
            .args(["--coap", &format!("127.0.0.1:{port}"), "--dtls"])
            .arg("--credentials")
            .arg(&csv),
    );
    assert_eq!(summary["messages_acked"], 150, "{summary}");
    assert_eq!(
        server.metric("meterflow_coaps_handshakes_total{result=\"ok\"}"),
        30.0
    );
    let (exit, data_dir, log, _keep) = server.stop();
    assert!(exit.success(), "{log}");
    crate::harness::assert_fleet_arrived(
        &data_dir,
        std::slice::from_ref(&plan),
        150 * plan.rows_per_message(),
        true,
    );
}
