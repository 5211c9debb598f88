//! Runs the real `meterflow` binary for the integration tests: free ports, a temporary data
//! folder, SIGTERM at the end; and reads back what it wrote.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, TimestampMillisecondType, UInt16Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

pub const BIN: &str = env!("CARGO_BIN_EXE_meterflow");

/// A port that is free now for both TCP and UDP, taken from below the kernel's ephemeral range
/// (32768 and up on Linux). A port from `bind(":0")` is an ephemeral one: between our check and
/// the server's bind, any outgoing connection of a parallel test (a simulated fleet opens
/// thousands) may take it as its local port, and the server then fails with "Address already in
/// use". Below that range only a listener can take it, and each process walks its own part of it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id() * 613) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free port between {FIRST} and {}", FIRST + SPAN)
}

/// A UDP port nobody uses now (for the CoAP listener).
pub fn free_udp_port() -> u16 {
    free_port()
}

pub struct Server {
    pub child: Child,
    pub mqtt_port: u16,
    pub mqtt_v5_port: u16,
    pub http_port: u16,
    pub coap_port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    args: Vec<String>,
    tmp: Option<tempfile::TempDir>,
}

impl Server {
    pub fn start() -> Server {
        Self::start_with(&[])
    }

    /// Starts `meterflow serve` and waits until MQTT and HTTP answer.
    pub fn start_with(extra_args: &[&str]) -> Server {
        Self::start_in(tempfile::tempdir().expect("tempdir"), extra_args)
    }

    /// Starts `meterflow serve` on the data folder of `tmp` (a folder [`Server::stop`] gave
    /// back: a fresh start on what an earlier run left), on new ports.
    pub fn start_in(tmp: tempfile::TempDir, extra_args: &[&str]) -> Server {
        let data_dir = tmp.path().join("data");
        let log = tmp.path().join("serve.log");
        // Keep an earlier run's log beside the new one.
        let _ = std::fs::rename(&log, log.with_extension("1.log"));
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (mqtt_port, mqtt_v5_port, http_port) = (free_port(), free_port(), free_port());
            let coap_port = free_udp_port();
            let child = spawn(
                [mqtt_port, mqtt_v5_port, http_port, coap_port],
                &data_dir,
                &log,
                extra_args,
            );
            let mut server = Server {
                child,
                mqtt_port,
                mqtt_v5_port,
                http_port,
                coap_port,
                data_dir: data_dir.clone(),
                log: log.clone(),
                args: extra_args.iter().map(|a| a.to_string()).collect(),
                tmp: None,
            };
            // A port taken by someone else between our check and the server's bind: new ports.
            if server.wait_until_ready().is_err() && attempts < 3 {
                let _ = server.child.wait();
                continue;
            }
            server.tmp = Some(tmp);
            return server;
        }
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill_9(&mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reaped");
    }

    /// SIGKILL, and the data folder back (to start again with other arguments).
    pub fn crash(mut self) -> tempfile::TempDir {
        self.kill_9();
        self.tmp.take().expect("crashed once")
    }

    /// Starts the server again on the same ports and data folder (after [`Server::kill_9`]).
    pub fn restart(mut self) -> Server {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        // Keep the first run's log beside the new one.
        let _ = std::fs::rename(&self.log, self.log.with_extension("1.log"));
        self.child = spawn(
            [
                self.mqtt_port,
                self.mqtt_v5_port,
                self.http_port,
                self.coap_port,
            ],
            &self.data_dir,
            &self.log,
            &args,
        );
        self.wait_until_ready()
            .expect("the ports of the first run are free again");
        self
    }
}

fn spawn(
    [mqtt_port, mqtt_v5_port, http_port, coap_port]: [u16; 4],
    data_dir: &Path,
    log: &Path,
    extra_args: &[&str],
) -> Child {
    Command::new(BIN)
        .arg("serve")
        .args(["--mqtt-listen", &format!("127.0.0.1:{mqtt_port}")])
        .args(["--mqtt-v5-listen", &format!("127.0.0.1:{mqtt_v5_port}")])
        .args(["--http-listen", &format!("127.0.0.1:{http_port}")])
        .args(["--coap-listen", &format!("127.0.0.1:{coap_port}")])
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra_args)
        .env("METERFLOW_LOG", "info")
        .stdout(Stdio::null())
        .stderr(File::create(log).expect("log file"))
        .spawn()
        .expect("meterflow serve starts")
}

impl Server {
    /// Waits until every listener answers; `Err` when the server exited because a port was
    /// taken (the caller may try other ports). Any other failure to start fails the test.
    fn wait_until_ready(&mut self) -> Result<(), ()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let up = |p| TcpStream::connect(("127.0.0.1", p)).is_ok();
            // The log line comes after every listener (CoAP's UDP one included) is bound.
            if up(self.mqtt_port)
                && up(self.mqtt_v5_port)
                && up(self.http_port)
                && self.log_text().contains("meterflow ready")
            {
                return Ok(());
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                if self.log_text().contains("Address already in use") {
                    return Err(());
                }
                panic!("meterflow exited at start:\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "meterflow did not start:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit status.
    pub fn stop(mut self) -> (ExitStatus, PathBuf, String, tempfile::TempDir) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let exit = self.child.wait().expect("meterflow exits");
        let log = self.log_text();
        let tmp = self.tmp.take().expect("stopped once");
        (exit, self.data_dir.clone(), log, tmp)
    }

    pub fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.http_port, path)
    }

    /// A counter or gauge from `/metrics`, with its labels as written there
    /// (`name{label="value"}`); 0 when absent.
    pub fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.http_get("/metrics");
        body.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// A minimal HTTP/1.1 GET over a real socket.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    http(port, "GET", path, &[], None)
}

/// A minimal HTTP/1.1 request over a real socket (Connection: close), with extra headers and
/// an optional JSON body; returns the status and the body (chunked bodies decoded).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    json: Option<&str>,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("http connect");
    let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        request.push_str("Host: localhost\r\n");
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = json {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    } else {
        request.push_str("\r\n");
    }
    s.write_all(request.as_bytes()).unwrap();
    // Read the head, then exactly the body it announces: some servers (chromedriver) keep
    // the connection open after `Connection: close`.
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).unwrap();
        if n == 0 {
            break raw.len();
        }
        raw.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut body = raw[head_end.min(raw.len())..].to_vec();
    if let Some(length) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while body.len() < length {
            let n = s.read(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body.truncate(length);
        return (status, String::from_utf8_lossy(&body).to_string());
    }
    s.read_to_end(&mut body).unwrap();
    let body = String::from_utf8_lossy(&body).to_string();
    let chunked = header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        let mut out = String::new();
        let mut rest = body.as_str();
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&after[..n.min(after.len())]);
            rest = after.get(n + 2..).unwrap_or("");
        }
        out
    } else {
        body
    };
    (status, body)
}

/// `mosquitto_pub` publishing `payload_file` with QoS 1 to 127.0.0.1.
fn mosquitto_pub_command(port: u16, topic: &str, payload_file: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new("mosquitto_pub");
    command
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            topic,
        ])
        .arg("-f")
        .arg(payload_file)
        .args(extra);
    command
}

const MOSQUITTO_PUB: &str = "mosquitto_pub runs (the test command installs mosquitto-clients)";

/// `mosquitto_pub` with QoS 1; panics with its output if it fails.
pub fn mosquitto_pub(port: u16, topic: &str, payload_file: &Path, extra: &[&str]) {
    let out = mosquitto_pub_command(port, topic, payload_file, extra)
        .output()
        .expect(MOSQUITTO_PUB);
    assert!(
        out.status.success(),
        "mosquitto_pub {topic}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Publishes `payload` with QoS 1; whether the server acknowledged it (a connection the
/// server closed unanswered ends mosquitto_pub with an error).
pub fn mosquitto_pub_acked(port: u16, topic: &str, payload: &str) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("payload");
    std::fs::write(&file, payload).unwrap();
    let mut child = mosquitto_pub_command(port, topic, &file, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect(MOSQUITTO_PUB);
    // The guard only keeps a hung client from hanging the test.
    for _ in 0..600 {
        if let Some(status) = child.try_wait().unwrap() {
            return status.success();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    false
}

/// One row of the readings table, as read back from Parquet.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub meter_id: String,
    pub channel: String,
    pub ts_ms: i64,
    pub value: f64,
    pub unit: String,
    pub quality: u16,
    pub received_at_ms: i64,
    pub source: String,
    pub format: String,
    /// The `date=` folder the file was in.
    pub date: String,
}

/// Every row of every complete Parquet file under `{data_dir}/readings`; also checks that
/// no incomplete file is left.
pub fn read_readings(data_dir: &Path) -> Vec<Row> {
    let mut rows = Vec::new();
    let root = data_dir.join("readings");
    let Ok(dirs) = std::fs::read_dir(&root) else {
        return rows;
    };
    for dir in dirs.flatten() {
        let date = dir
            .file_name()
            .to_string_lossy()
            .trim_start_matches("date=")
            .to_string();
        for f in std::fs::read_dir(dir.path()).unwrap().flatten() {
            let name = f.file_name().to_string_lossy().to_string();
            assert!(
                name.ends_with(".parquet") && !name.starts_with('.'),
                "leftover file {name}"
            );
            let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(f.path()).unwrap())
                .unwrap()
                .build()
                .unwrap();
            for batch in reader {
                let b = batch.unwrap();
                let s = |i: usize| b.column(i).as_string::<i32>().clone();
                let (meter, channel, unit, source, format) = (s(0), s(1), s(4), s(7), s(8));
                let ts = b.column(2).as_primitive::<TimestampMillisecondType>();
                let value = b.column(3).as_primitive::<Float64Type>();
                let quality = b.column(5).as_primitive::<UInt16Type>();
                let received = b.column(6).as_primitive::<TimestampMillisecondType>();
                for i in 0..b.num_rows() {
                    rows.push(Row {
                        meter_id: meter.value(i).into(),
                        channel: channel.value(i).into(),
                        ts_ms: ts.value(i),
                        value: value.value(i),
                        unit: unit.value(i).into(),
                        quality: quality.value(i),
                        received_at_ms: received.value(i),
                        source: source.value(i).into(),
                        format: format.value(i).into(),
                        date: date.clone(),
                    });
                }
            }
        }
    }
    rows
}

/// Rows grouped by meter, each group sorted by (ts, channel).
pub fn by_meter(rows: &[Row]) -> BTreeMap<String, Vec<Row>> {
    let mut map: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for r in rows {
        map.entry(r.meter_id.clone()).or_default().push(r.clone());
    }
    for v in map.values_mut() {
        v.sort_by(|a, b| (a.ts_ms, &a.channel).cmp(&(b.ts_ms, &b.channel)));
    }
    map
}

/// The UTC date of a Unix ms time, as the `date=` folder names it.
pub fn utc_date(ts_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ts_ms)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string()
}

/// Polls `check` until it gives a value. The deadline only keeps a broken run from hanging
/// CI; no test depends on how fast things happen.
pub fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A ClickHouse server for a test: the one the test command started
/// (`METERFLOW_TEST_CLICKHOUSE_URL`), or a private one started here with
/// `deploy/clickhouse-test.sh` (needed when the test stops and starts it).
pub struct ClickHouse {
    pub url: String,
    /// The private server's folder; `None` for the shared one.
    dir: Option<tempfile::TempDir>,
}

const CLICKHOUSE_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/clickhouse-test.sh");

impl ClickHouse {
    pub fn shared() -> ClickHouse {
        match std::env::var("METERFLOW_TEST_CLICKHOUSE_URL") {
            Ok(url) if !url.is_empty() => ClickHouse { url, dir: None },
            _ => Self::private(),
        }
    }

    pub fn private() -> ClickHouse {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = Self::script("start", dir.path());
        ClickHouse {
            url,
            dir: Some(dir),
        }
    }

    fn script(command: &str, dir: &Path) -> String {
        let out = Command::new(CLICKHOUSE_SCRIPT)
            .arg(command)
            .arg(dir)
            .output()
            .expect("deploy/clickhouse-test.sh runs");
        assert!(
            out.status.success(),
            "clickhouse-test.sh {command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Kills the private server at once (an outage).
    pub fn kill(&self) {
        Self::script("kill", self.dir.as_ref().expect("a private server").path());
    }

    /// Starts the private server again: same port, same data.
    pub fn start(&self) {
        Self::script("start", self.dir.as_ref().expect("a private server").path());
    }

    /// A server somebody else runs (a cluster's), for [`ClickHouse::query`].
    pub fn at(url: &str) -> ClickHouse {
        ClickHouse {
            url: url.to_string(),
            dir: None,
        }
    }

    /// Runs a query over HTTP and returns the body (TSV); panics on an error answer.
    pub fn query(&self, sql: &str) -> String {
        let out = Command::new("curl")
            .args(["-sS", "--fail-with-body", "--data-binary", sql, &self.url])
            .output()
            .expect("curl runs");
        let body = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "query {sql}: {body}");
        body
    }

    /// A database name no other test uses.
    pub fn fresh_database(prefix: &str) -> String {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        format!(
            "{prefix}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            Self::script("stop", dir.path());
        }
    }
}

/// A config file for `serve --config`, in a folder that lives as long as the returned guard.
pub fn config_file(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meterflow.toml");
    std::fs::write(&path, text).unwrap();
    let path = path.to_str().unwrap().to_string();
    (dir, path)
}

/// `meterflow schema --apply` with the ClickHouse of a config file.
pub fn apply_schema(config: &str) {
    let out = Command::new(BIN)
        .args(["schema", "--apply", "--config", config])
        .output()
        .expect("meterflow schema runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `meterflow simulate --json` for `plan` against an MQTT port, `pause_ms` between reports.
/// Every expected row of every plan is in Parquet, with its format, and nothing else; no
/// dead letters. `exactly_once`: no report may be stored twice either (no duplicates
/// expected, e.g. no reconnects).
pub fn assert_fleet_arrived(
    data_dir: &Path,
    plans: &[meterflow::simulate::Plan],
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

pub fn simulate_command(
    mqtt_port: u16,
    plan: &meterflow::simulate::Plan,
    pause_ms: u64,
) -> Command {
    let shape = match plan.shape {
        meterflow::simulate::Shape::Series => "series",
        meterflow::simulate::Shape::Readings => "readings",
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
pub fn pb_fleet(prefix: &str, meters: usize, messages: usize) -> meterflow::simulate::Plan {
    meterflow::simulate::Plan {
        meters,
        messages,
        format: meterflow_proto::Format::Pb,
        shape: meterflow::simulate::Shape::Readings,
        start_ms: 1_719_792_000_000,
        interval_s: 900,
        prefix: prefix.into(),
    }
}

/// Every row a plan sends.
pub fn plan_rows(plan: &meterflow::simulate::Plan) -> usize {
    plan.expected_rows(0, 0).len() * plan.meters * plan.messages
}

/// `meterflow simulate` for `plan` running in the background, its JSON summary piped.
pub fn spawn_fleet(mqtt_port: u16, plan: &meterflow::simulate::Plan, pause_ms: u64) -> Child {
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

/// A TCP proxy in front of an HTTP server that can lose one answer for real: armed with a
/// needle, it forwards the next request that contains it, lets the server answer, and closes
/// the client's connection instead of passing the answer on (an insert that "timed out" after
/// the server committed it).
pub struct LossyProxy {
    pub url: String,
    armed: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    dropped: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl LossyProxy {
    /// Listens on a free loopback port and forwards to `upstream` (`http://host:port`).
    pub fn start(upstream: &str) -> LossyProxy {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind(("127.0.0.1", free_port())).expect("proxy listens");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let armed: Arc<Mutex<Option<String>>> = Arc::default();
        let dropped = Arc::new(AtomicUsize::new(0));
        let (armed2, dropped2) = (armed.clone(), dropped.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let lose_answer = Arc::new(AtomicBool::new(false));
                let (mut c_read, mut s_write) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (armed, lose) = (armed2.clone(), lose_answer.clone());
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = c_read.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let mut needle = armed.lock().unwrap();
                        if needle
                            .as_deref()
                            .is_some_and(|x| buf[..n].windows(x.len()).any(|w| w == x.as_bytes()))
                        {
                            *needle = None;
                            lose.store(true, Ordering::SeqCst);
                        }
                        drop(needle);
                        if s_write.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = s_write.shutdown(std::net::Shutdown::Write);
                });
                let dropped = dropped2.clone();
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let (mut s_read, mut c_write) = (server, client);
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = s_read.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        if lose_answer.load(Ordering::SeqCst) {
                            dropped.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        if c_write.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = c_write.shutdown(std::net::Shutdown::Both);
                    let _ = s_read.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        LossyProxy {
            url,
            armed,
            dropped,
        }
    }

    /// The answer to the next request containing `needle` is lost.
    pub fn lose_answer_to(&self, needle: &str) {
        *self.armed.lock().unwrap() = Some(needle.to_string());
    }

    /// Answers lost so far.
    pub fn lost(&self) -> usize {
        self.dropped.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// `meterflow credentials ARGS --data-dir TMP/data`; its standard output.
pub fn credentials(tmp: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("credentials")
        .arg("--data-dir")
        .arg(tmp.join("data"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "credentials {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The Leshan Device object pack (`AbstractSenMLTest`; wakaama's CBOR test 1 is the same
/// bytes), from `decoders/tests/fixtures/lwm2m/leshan/leshan_vectors.json`.
pub fn leshan_device_object() -> Vec<u8> {
    let vectors: serde_json::Value = serde_json::from_str(include_str!(
        "../../decoders/tests/fixtures/lwm2m/leshan/leshan_vectors.json"
    ))
    .unwrap();
    let hex = vectors["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == "leshan-device-object-3-0")
        .unwrap()["hex"]
        .as_str()
        .unwrap()
        .to_string();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
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
