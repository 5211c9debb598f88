//! The HTTP listener's limits against the real binary, with raw sockets (issue 20, findings 2
//! and 8): half-sent requests closed after `http.header_read_timeout_ms`, idle keep-alive
//! connections after `http.idle_timeout_ms`, a head over `http.max_header_bytes` answered 431,
//! connections beyond `http.max_connections` closed at once (the server holds no more sockets
//! than the cap), each counted in `meterflow_http_closed_total{reason}` with the
//! `meterflow_http_connections` gauge exact; `/ready` answering "stopping" through the
//! shutdown's drain; and `/ready` telling only its status to a caller without the token.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness::{config_file, free_port, http, wait_for, Server, SilentClickHouse, BIN};
use serde_json::Value;

const TOKEN: &str = "limits-token-0123456789";

fn start(http_keys: &str) -> (tempfile::TempDir, Server) {
    let (dir, config) = config_file(&format!("[http]\ntoken = \"{TOKEN}\"\n{http_keys}"));
    let server = Server::start_with(&["--config", &config]);
    (dir, server)
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

/// One sample of `/metrics` (read with the token), 0 when absent.
fn metric(server: &Server, sample: &str) -> f64 {
    let (status, body) = http(
        server.http_port,
        "GET",
        "/metrics",
        &[("Authorization", &bearer())],
        None,
    );
    assert_eq!(status, 200, "{body}");
    body.lines()
        .find(|l| l.starts_with(sample) && l[sample.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn closed(server: &Server, reason: &str) -> f64 {
    metric(
        server,
        &format!("meterflow_http_closed_total{{reason=\"{reason}\"}}"),
    )
}

fn connect(server: &Server) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", server.http_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    s
}

/// Whether the server has closed `s` (end of stream or reset); whatever it sent is discarded.
fn is_closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// Sends a GET on a kept-alive connection and reads its answer: the status and the body.
fn get_on(s: &mut TcpStream, path: &str) -> (u16, String) {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .unwrap();
    read_answer(s)
}

/// One answer with a Content-Length body.
fn read_answer(s: &mut TcpStream) -> (u16, String) {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(60);
    let complete = |raw: &[u8]| -> Option<(u16, String)> {
        let end = raw.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = String::from_utf8_lossy(&raw[..end]).to_string();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        (raw.len() >= end + length).then(|| {
            let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
            let body = String::from_utf8_lossy(&raw[end..end + length]).to_string();
            (status, body)
        })
    };
    loop {
        if let Some(answer) = complete(&raw) {
            return answer;
        }
        assert!(Instant::now() < deadline, "no answer: {raw:?}");
        match s.read(&mut buf) {
            Ok(0) => panic!("closed before a whole answer: {raw:?}"),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("{e}: {raw:?}"),
        }
    }
}

/// A GET with the token on a new connection (`Connection: close`): the whole answer, or `None`
/// when the server closed the connection without one.
fn try_get(server: &Server, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", server.http_port)).ok()?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
        bearer()
    );
    s.write_all(request.as_bytes()).ok()?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).ok()?;
    (!answer.is_empty()).then(|| String::from_utf8_lossy(&answer).to_string())
}

/// The HTTP connections the server process holds open: its sockets (from its file
/// descriptors) that are TCP connections on its HTTP port, not the listener.
fn held_connections(server: &Server) -> usize {
    let inodes: std::collections::HashSet<String> =
        std::fs::read_dir(format!("/proc/{}/fd", server.child.id()))
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let target = std::fs::read_link(e.path()).ok()?;
                let target = target.to_string_lossy();
                Some(
                    target
                        .strip_prefix("socket:[")?
                        .strip_suffix(']')?
                        .to_string(),
                )
            })
            .collect();
    let port = format!(":{:04X}", server.http_port);
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local address, state (0A: listening), inode
            fields.len() > 9
                && fields[1].ends_with(&port)
                && fields[3] != "0A"
                && inodes.contains(fields[9])
        })
        .count()
}

#[test]
fn half_sent_requests_are_closed_after_the_header_timeout_and_counted() {
    let (_cfg, server) = start("header_read_timeout_ms = 1000\n");
    // The attack of issue 20: 40 requests whose head never ends (each held ~400 KB for as long
    // as the client liked), before the token is checked; and 5 connections that send nothing.
    let mut held = Vec::new();
    for _ in 0..40 {
        let mut s = connect(&server);
        s.write_all(b"GET /api/devices HTTP/1.1\r\nHost: localhost\r\nX-Pad: ")
            .unwrap();
        s.write_all(&[b'a'; 4000]).unwrap();
        held.push(s);
    }
    for _ in 0..5 {
        held.push(connect(&server));
    }
    for (i, s) in held.iter_mut().enumerate() {
        wait_for(&format!("connection {i} closed by the server"), || {
            is_closed(s).then_some(())
        });
    }
    assert_eq!(closed(&server, "header_timeout"), 45.0);
    // Only the connection that asks for the metrics is open now.
    assert_eq!(metric(&server, "meterflow_http_connections"), 1.0);
    // A whole request is answered as before.
    let (status, body) = http(
        server.http_port,
        "GET",
        "/api/devices",
        &[("Authorization", &bearer())],
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(closed(&server, "header_timeout"), 45.0);
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    // The idle timeout is longer than the header timeout: a connection between two requests is
    // idle, not reading a head.
    let (_cfg, server) = start("header_read_timeout_ms = 1000\nidle_timeout_ms = 5000\n");
    let mut kept = connect(&server);
    assert_eq!(get_on(&mut kept, "/health"), (200, "ok\n".to_string()));
    let answered = Instant::now();
    assert_eq!(get_on(&mut kept, "/health"), (200, "ok\n".to_string()));
    // Idle for twice the header timeout: still served (unless this machine stalled the test
    // for longer than the idle timeout, when there is nothing to check).
    std::thread::sleep(Duration::from_millis(2000));
    let served = get_on(&mut kept, "/health");
    if answered.elapsed() < Duration::from_millis(4500) {
        assert_eq!(served, (200, "ok\n".to_string()));
    }
    wait_for("the idle connection closed by the server", || {
        is_closed(&mut kept).then_some(())
    });
    // Closed for being idle, not by the header timeout.
    assert_eq!(closed(&server, "idle_timeout"), 1.0);
    assert_eq!(closed(&server, "header_timeout"), 0.0);
    assert_eq!(metric(&server, "meterflow_http_connections"), 1.0);
}

#[test]
fn a_client_that_stops_reading_its_answers_is_closed_after_the_idle_timeout() {
    let (_cfg, server) = start("idle_timeout_ms = 1000\n");
    // Thousands of pipelined requests for the page, never read: the answers (tens of MB) fill
    // the socket's buffers and the server's writes stop moving.
    let mut s = connect(&server);
    let requests = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".repeat(4000);
    s.write_all(requests.as_bytes()).unwrap();
    wait_for("the stalled connection closed for being idle", || {
        (closed(&server, "idle_timeout") == 1.0).then_some(())
    });
    // What the server had written is still there to read, then the end.
    wait_for("the end of the stalled connection", || {
        is_closed(&mut s).then_some(())
    });
    assert_eq!(closed(&server, "header_timeout"), 0.0);
    assert_eq!(metric(&server, "meterflow_http_connections"), 1.0);
}

#[test]
fn a_head_over_the_limit_is_answered_431_and_closed() {
    // The default limit: 16 KiB.
    let (_cfg, server) = start("");
    let send = |pad: usize| {
        let mut s = connect(&server);
        let head = format!(
            "GET /health HTTP/1.1\r\nHost: localhost\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(pad)
        );
        s.write_all(head.as_bytes()).unwrap();
        let answer = read_answer(&mut s);
        (answer, s)
    };
    // 8 KB of headers pass.
    let ((status, body), _) = send(8000);
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    // 20 KB do not: 431, and the connection is closed.
    let ((status, _), mut s) = send(20_000);
    assert_eq!(status, 431);
    wait_for("the connection closed after the 431", || {
        is_closed(&mut s).then_some(())
    });
    // hyper shuts the socket down before it tells why: the count may follow the close.
    wait_for("the close counted", || {
        (closed(&server, "header_too_large") == 1.0).then_some(())
    });
}

#[test]
fn connections_beyond_the_cap_make_room_and_the_server_holds_no_more() {
    const CAP: usize = 8;
    let (_cfg, server) = start(&format!(
        "max_connections = {CAP}\nheader_read_timeout_ms = 120000\n"
    ));
    // The harness's probes of the port at start-up are gone.
    wait_for("no connection held", || {
        (held_connections(&server) == 0).then_some(())
    });
    // Four times the cap's worth of connections that say nothing, one after the other: each
    // beyond the cap closes the oldest (all wait since their accept).
    let mut all: Vec<TcpStream> = Vec::new();
    for i in 0..4 * CAP {
        all.push(connect(&server));
        wait_for(&format!("connection {i} held"), || {
            (held_connections(&server) == (i + 1).min(CAP)).then_some(())
        });
    }
    for (i, s) in all.iter_mut().enumerate() {
        if i < 3 * CAP {
            wait_for(&format!("connection {i} closed to make room"), || {
                is_closed(s).then_some(())
            });
        } else {
            assert!(!is_closed(s), "connection {i}, among the newest, closed");
        }
    }
    // The server holds the cap's connections and no more (a held connection is what costs
    // memory: the cap bounds it).
    assert_eq!(held_connections(&server), CAP);
    // Asked on the newest connection: no new one.
    let (status, body) = get_with_token_on(all.last_mut().unwrap(), "/metrics");
    assert_eq!(status, 200, "{body}");
    let reason = |r: &str| {
        sample(
            &body,
            &format!("meterflow_http_closed_total{{reason=\"{r}\"}}"),
        )
    };
    assert_eq!(reason("evicted"), (3 * CAP) as f64, "{body}");
    assert_eq!(reason("max_connections"), 0.0, "{body}");
    assert_eq!(sample(&body, "meterflow_http_connections"), CAP as f64);
    // A normal request on a new connection is answered, making room in turn.
    let answer = try_get(&server, "/api/devices").expect("an answer at the cap");
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    wait_for("the oldest held one closed to make room", || {
        is_closed(&mut all[3 * CAP]).then_some(())
    });
    wait_for("the cap's connections but the two gone", || {
        (held_connections(&server) == CAP - 1).then_some(())
    });
}

#[test]
fn ready_tells_only_its_status_without_the_token() {
    // Not ready: ClickHouse cannot be reached (nothing listens on its port), whose error text
    // names the server.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let (_cfg, config) = config_file(&format!(
        "[http]\ntoken = \"{TOKEN}\"\n[clickhouse]\nurl = \"{dead}\"\n"
    ));
    let server = Server::start_with(&["--config", &config]);
    let ask = |path: &str, headers: &[(&str, &str)]| {
        let (status, body) = http(server.http_port, "GET", path, headers, None);
        let value: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        (status, value, body)
    };
    let wrong = "Bearer wrong-token-0123456789";
    for headers in [&[][..], &[("Authorization", wrong)][..]] {
        let (status, value, body) = ask("/ready", headers);
        assert_eq!(status, 503, "{body}");
        assert_eq!(value, serde_json::json!({"ready": false}), "{body}");
        for secret in ["127.0.0.1", "clickhouse", "bytes", "wal", "unreachable"] {
            assert!(!body.to_lowercase().contains(secret), "{secret} in {body}");
        }
        // The load balancer's question keeps its meaning: the WAL holds the data meanwhile.
        let (status, value, body) = ask("/ready?ingest", headers);
        assert_eq!(status, 200, "{body}");
        assert_eq!(value, serde_json::json!({"ready": true}), "{body}");
    }
    // With the token: every check, as before.
    let token = bearer();
    let (status, value, body) = ask("/ready", &[("Authorization", &token)]);
    assert_eq!(status, 503, "{body}");
    assert_eq!(value["ready"], false);
    assert_eq!(value["checks"]["clickhouse"]["ok"], false, "{body}");
    let detail = value["checks"]["clickhouse"]["detail"].as_str().unwrap();
    assert!(detail.contains("unreachable"), "{detail}");
    let wal = value["checks"]["wal"]["detail"].as_str().unwrap();
    assert!(wal.contains("wal.max_bytes"), "{wal}");
    assert_eq!(value["checks"]["pipeline"]["ok"], true);
    let (status, value, body) = ask("/ready?ingest", &[("Authorization", &token)]);
    assert_eq!(status, 200, "{body}");
    assert!(
        value["checks"]["clickhouse"]["detail"]
            .as_str()
            .unwrap()
            .contains("not counted for ?ingest"),
        "{body}"
    );
}

#[test]
fn ready_answers_stopping_while_the_shutdown_drains() {
    let mut clickhouse = SilentClickHouse::start();
    let (_cfg, config) = config_file(&format!(
        "[http]\ntoken = \"{TOKEN}\"\n[clickhouse]\nurl = \"{}\"\n[pipeline]\nshutdown_max_ms = 60000\n",
        clickhouse.url
    ));
    let mut server = Server::start_with(&["--config", &config]);
    // A reading for the ClickHouse writer to hold at the stop.
    let dir = tempfile::tempdir().unwrap();
    let payload = dir.path().join("payload");
    std::fs::write(
        &payload,
        r#"{"readings":[{"channel":"1-0:1.8.0","ts":1709294400000,"value":1.5,"unit":"kWh"}]}"#,
    )
    .unwrap();
    crate::harness::mosquitto_pub(server.mqtt_port, "meters/DRAIN-1/json", &payload, &[]);
    let mut kept = connect(&server);
    assert_eq!(get_on(&mut kept, "/health"), (200, "ok\n".to_string()));
    let status = std::process::Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Draining: /ready says why, with the token, on a connection kept from before the stop...
    let token = bearer();
    let checks: Value = wait_for("/ready saying stopping", || {
        let (status, body) = http(
            server.http_port,
            "GET",
            "/ready",
            &[("Authorization", &token)],
            None,
        );
        let value: Value = serde_json::from_str(&body).ok()?;
        (status == 503 && value["checks"]["shutdown"]["ok"] == false).then_some(value)
    });
    let detail = checks["checks"]["shutdown"]["detail"].as_str().unwrap();
    assert!(detail.starts_with("stopping"), "{detail}");
    kept.write_all(
        format!("GET /ready?ingest HTTP/1.1\r\nHost: localhost\r\nAuthorization: {token}\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let (status, body) = read_answer(&mut kept);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("stopping"), "{body}");
    // ...and without it, the status alone, to a load balancer's new connection.
    for path in ["/ready", "/ready?ingest"] {
        let (status, body) = http(server.http_port, "GET", path, &[], None);
        assert_eq!(
            (status, body.as_str()),
            (503, r#"{"ready":false}"#),
            "{path}"
        );
    }
    // ClickHouse goes away: the stop completes, HTTP last, and cleanly.
    clickhouse.let_go();
    let exit = server.child.wait().unwrap();
    let log = server.log_text();
    assert!(exit.success(), "{log}");
    assert!(log.contains("meterflow stopped cleanly"), "{log}");
    assert!(is_closed(&mut kept));
}

/// A GET with the token on a kept-alive connection: the status and the body.
fn get_with_token_on(s: &mut TcpStream, path: &str) -> (u16, String) {
    s.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: {}\r\n\r\n",
            bearer()
        )
        .as_bytes(),
    )
    .unwrap();
    read_answer(s)
}

/// One sample of a `/metrics` body, 0 when absent.
fn sample(body: &str, sample: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(sample) && l[sample.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// With the cap full of `holders` (the oldest first), three probes of the load balancer
/// (`GET /ready?ingest` on a new connection, kept open afterwards as an engineer's page would)
/// are each answered, each closing the holder that waited the longest; the others stay open,
/// the evictions are counted, and the gauge says what the server holds.
fn probes_are_answered_at_the_cap(server: &Server, holders: &mut [TcpStream]) {
    let cap = holders.len();
    let mut probes = Vec::new();
    for (i, holder) in holders.iter_mut().enumerate().take(3) {
        let mut probe = connect(server);
        let (status, body) = get_on(&mut probe, "/ready?ingest");
        assert_eq!(
            (status, body.as_str()),
            (200, r#"{"ready":true}"#),
            "probe {i}"
        );
        wait_for(&format!("holder {i} closed to make room"), || {
            is_closed(holder).then_some(())
        });
        probes.push(probe);
    }
    for (i, s) in holders.iter_mut().enumerate().skip(3) {
        assert!(!is_closed(s), "holder {i} closed");
    }
    // Asked on the newest probe: no new connection.
    let (status, body) = get_with_token_on(probes.last_mut().unwrap(), "/metrics");
    assert_eq!(status, 200, "{body}");
    let reason = |r: &str| {
        sample(
            &body,
            &format!("meterflow_http_closed_total{{reason=\"{r}\"}}"),
        )
    };
    assert_eq!(reason("evicted"), 3.0, "{body}");
    assert_eq!(reason("max_connections"), 0.0, "{body}");
    assert_eq!(sample(&body, "meterflow_http_connections"), cap as f64);
    assert_eq!(held_connections(server), cap);
}

/// Issue 20 review, H1: 256 connections that each asked for `/health` and stayed idle made
/// every new connection (HAProxy's `/ready?ingest` check among them) be closed at accept for
/// the idle timeout, which takes every node out of the load balancer.
#[test]
fn a_full_listener_of_idle_connections_still_answers_the_load_balancer() {
    const CAP: usize = 16;
    let (_cfg, server) = start(&format!("max_connections = {CAP}\n"));
    wait_for("no connection held", || {
        (held_connections(&server) == 0).then_some(())
    });
    // Kept-alive connections after one request each (field engineers' pages between two
    // refreshes, or an attacker's), one after the other.
    let mut holders: Vec<TcpStream> = (0..CAP)
        .map(|_| {
            let mut s = connect(&server);
            assert_eq!(get_on(&mut s, "/health"), (200, "ok\n".to_string()));
            s
        })
        .collect();
    wait_for("the server holding the cap's connections", || {
        (held_connections(&server) == CAP).then_some(())
    });
    probes_are_answered_at_the_cap(&server, &mut holders);
}

/// H1 with half-sent heads (the header timeout far away): the oldest is closed for the probe.
#[test]
fn a_full_listener_of_half_sent_heads_still_answers_the_load_balancer() {
    const CAP: usize = 16;
    let (_cfg, server) = start(&format!(
        "max_connections = {CAP}\nheader_read_timeout_ms = 120000\n"
    ));
    wait_for("no connection held", || {
        (held_connections(&server) == 0).then_some(())
    });
    let mut holders: Vec<TcpStream> = (0..CAP)
        .map(|i| {
            let mut s = connect(&server);
            s.write_all(b"GET /api/devices HTTP/1.1\r\nHost: localhost\r\nX-Pad: ")
                .unwrap();
            s.write_all(&[b'a'; 4000]).unwrap();
            // One at a time: the server has taken this one before the next comes.
            wait_for(&format!("holder {i} held"), || {
                (held_connections(&server) == i + 1).then_some(())
            });
            s
        })
        .collect();
    probes_are_answered_at_the_cap(&server, &mut holders);
}

/// The bytes waiting in the receive queue of the local TCP socket `s` (/proc/net/tcp).
fn receive_queue(s: &TcpStream) -> Option<u64> {
    let local = s.local_addr().unwrap();
    let port = format!(":{:04X}", local.port());
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
    tcp.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() > 4 && fields[1].ends_with(&port) {
            let (_, rx) = fields[4].split_once(':')?;
            u64::from_str_radix(rx, 16).ok()
        } else {
            None
        }
    })
}

/// Issue 20 review, L2: the HTTP drain at the stop had no cut-off of its own; a client that
/// reads its answers slowly, or not at all, held the stop until the idle timeout (here ten
/// minutes; a client that reads a little now and then escapes even that), past systemd's
/// TimeoutStopSec. Now the drain is cut off after `http.shutdown_max_ms` (5 s by default).
#[test]
fn a_client_that_does_not_read_its_answers_cannot_hold_the_stop() {
    let (_cfg, server) = start("idle_timeout_ms = 600000\n");
    let mut s = connect(&server);
    // Thousands of pipelined requests for the page, never read: tens of MB of answers.
    let requests = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".repeat(4000);
    s.write_all(requests.as_bytes()).unwrap();
    // The server's writes have stopped: what waits for the client no longer grows.
    let mut last = 0;
    let mut same = 0;
    wait_for("the answers stalled", || {
        let queued = receive_queue(&s).unwrap_or(0);
        same = if queued > 0 && queued == last {
            same + 1
        } else {
            0
        };
        last = queued;
        (same >= 3).then_some(())
    });
    server.sigterm();
    let (exit, _, log, _tmp) = server.exited();
    assert!(exit.success(), "{log}");
    assert!(log.contains("meterflow stopped cleanly"), "{log}");
    assert!(
        log.contains("HTTP connections cut off at the stop"),
        "{log}"
    );
    // The client got part of its answers, then the end.
    let mut got = 0usize;
    let mut buf = [0u8; 65536];
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    assert!(got > 0 && got < 4000 * 10_000, "{got}");
}

/// Issue 20 review round 2, finding 6: the open-files check at start-up counted MQTT's two
/// budgets and not `http.max_connections` (4096 sockets more). Under a hard limit of 4000,
/// MQTT's budgets here (1000 + 1000, + 1024) fit and the HTTP cap does not: warned; under
/// 8000 everything fits: not warned.
#[test]
fn the_open_files_check_counts_the_http_connections() {
    let serve_under = |limit: u32| -> String {
        let tmp = tempfile::tempdir().unwrap();
        let config = tmp.path().join("meterflow.toml");
        std::fs::write(
            &config,
            "[mqtt]\nmax_connections = 1000\nmax_pending_connections = 1000\n",
        )
        .unwrap();
        let log = tmp.path().join("serve.log");
        let listen = || format!("127.0.0.1:{}", free_port());
        let mut child = std::process::Command::new("prlimit")
            .arg(format!("--nofile={limit}:{limit}"))
            .arg(BIN)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(tmp.path().join("data"))
            .args(["--mqtt-listen", &listen()])
            .args(["--mqtt-v5-listen", &listen()])
            .args(["--http-listen", &listen()])
            .args(["--coap-listen", &listen()])
            .env("METERFLOW_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let text = wait_for("meterflow ready", || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Ok(Some(status)) = child.try_wait() {
                panic!("meterflow exited ({status}):\n{text}");
            }
            text.contains("meterflow ready").then_some(text)
        });
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
        text
    };
    let low = serve_under(4000);
    assert!(
        low.contains("the open-files limit is below")
            && low.contains("http.max_connections")
            && low.contains("open_files=4000"),
        "{low}"
    );
    let high = serve_under(8000);
    assert!(!high.contains("the open-files limit is below"), "{high}");
}

/// Issue 20 review round 2, finding 3: `/ready` is open to all, and when its answer from
/// ClickHouse is older than 5 s it asks again, waiting up to 2 s. Every caller asked at once
/// for itself: a few connections sending `/ready` to a node whose ClickHouse does not answer
/// kept every connection of the listener busy, and new ones (the load balancer's probe
/// among them) were closed at accept. Now one caller asks and the others get the last answer.
#[test]
fn connections_asking_ready_at_once_cost_one_question_and_leave_room() {
    const CAP: usize = 4;
    let clickhouse = SilentClickHouse::start();
    let (_cfg, config) = config_file(&format!(
        "[http]\ntoken = \"{TOKEN}\"\nmax_connections = {CAP}\n[clickhouse]\nurl = \"{}\"\n",
        clickhouse.url
    ));
    let server = Server::start_with(&["--config", &config]);
    // A first answer (ClickHouse silent: "no answer within 2 s"), then let it grow old.
    let (status, body) = http(server.http_port, "GET", "/ready", &[], None);
    assert_eq!((status, body.as_str()), (503, r#"{"ready":false}"#));
    std::thread::sleep(Duration::from_millis(5_500));
    wait_for("no connection held", || {
        (held_connections(&server) == 0).then_some(())
    });
    // The cap's worth of connections ask at once, without the token.
    let mut askers: Vec<TcpStream> = (0..CAP)
        .map(|_| {
            let mut s = connect(&server);
            s.write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    wait_for("the askers held", || {
        (held_connections(&server) == CAP).then_some(())
    });
    // All but one have their (old) answer at once: a new connection makes room.
    let answered: Vec<usize> = wait_for("all but one answered", || {
        let answered: Vec<usize> = askers
            .iter_mut()
            .enumerate()
            .filter_map(|(i, s)| has_answer(s).then_some(i))
            .collect();
        (answered.len() >= CAP - 1).then_some(answered)
    });
    // (Each asking for itself, all would answer together, 2 s on.)
    assert_eq!(answered.len(), CAP - 1, "one of them is still asking");
    let mut probe = connect(&server);
    assert_eq!(get_on(&mut probe, "/health"), (200, "ok\n".to_string()));
    // The one asking was kept; the oldest answered one made room.
    let asking = (0..CAP).find(|i| !answered.contains(i)).unwrap();
    let (status, body) = read_answer(&mut askers[asking]);
    assert_eq!((status, body.as_str()), (503, r#"{"ready":false}"#));
    let (status, body) = get_with_token_on(&mut probe, "/metrics");
    assert_eq!(status, 200, "{body}");
    let reason = |r: &str| {
        sample(
            &body,
            &format!("meterflow_http_closed_total{{reason=\"{r}\"}}"),
        )
    };
    assert_eq!(reason("max_connections"), 0.0, "{body}");
    assert_eq!(reason("evicted"), 1.0, "{body}");
    drop(clickhouse);
}

/// Whether a whole answer to one request has arrived on `s` (read and kept aside).
fn has_answer(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    match s.peek(&mut buf) {
        Ok(n) if n > 0 => {
            let text = String::from_utf8_lossy(&buf[..n]);
            text.contains("\r\n\r\n") && text.ends_with('}')
        }
        _ => false,
    }
}
