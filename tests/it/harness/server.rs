//! `meterflow serve` as a child process: free ports, a temporary data folder, SIGTERM or
//! SIGKILL, its log and metrics; and the other subcommands a test runs (`credentials`).

use std::fs::File;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::http::http_get;

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

    /// SIGTERM, without waiting for the end.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits for the process to end on its own (a minute at most, only so that a broken run
    /// cannot hang CI), then as [`Server::stop`].
    pub fn exited(mut self) -> (ExitStatus, PathBuf, String, tempfile::TempDir) {
        let exit = super::wait_for("meterflow to exit", || self.child.try_wait().unwrap());
        let log = self.log_text();
        let tmp = self.tmp.take().expect("stopped once");
        (exit, self.data_dir.clone(), log, tmp)
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

/// A config file for `serve --config`, in a folder that lives as long as the returned guard.
pub fn config_file(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meterflow.toml");
    std::fs::write(&path, text).unwrap();
    let path = path.to_str().unwrap().to_string();
    (dir, path)
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
