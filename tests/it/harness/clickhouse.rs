//! ClickHouse for the tests: the shared server of the test command or a private one, queries
//! over HTTP, the schema, and a proxy that loses an answer.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::server::{free_port, BIN};

/// A ClickHouse server for a test: the one the test command started
/// (`METERFLOW_TEST_CLICKHOUSE_URL`), or a private one started here with
/// `deploy/clickhouse-test.sh` (needed when the test stops and starts it).
pub struct ClickHouse {
    pub url: String,
    /// The private server's folder; `None` for the shared one.
    dir: Option<tempfile::TempDir>,
}

/// The user with a password that `deploy/clickhouse-test.sh` adds (users.d), and its password:
/// `@` and `:` as a URL must percent-encode them.
pub const LOGIN_USER: &str = "meterflow_test";
pub const LOGIN_PASSWORD: &str = "Meter-flow@test:42";

const CLICKHOUSE_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/clickhouse-test.sh");

impl ClickHouse {
    pub fn shared() -> ClickHouse {
        match std::env::var("METERFLOW_TEST_CLICKHOUSE_URL") {
            Ok(url) if !url.is_empty() => ClickHouse { url, dir: None },
            _ => Self::private(),
        }
    }

    /// A server that knows [`LOGIN_USER`]: the shared one when it was started by this
    /// tree's `deploy/clickhouse-test.sh`, else a private one.
    pub fn with_login_user() -> ClickHouse {
        let shared = Self::shared();
        let knows = Command::new("curl")
            .args(["-sS", "--fail", "-H"])
            .arg(format!("X-ClickHouse-User: {LOGIN_USER}"))
            .arg("-H")
            .arg(format!("X-ClickHouse-Key: {LOGIN_PASSWORD}"))
            .args(["--data-binary", "SELECT 1", &shared.url])
            .output()
            .is_ok_and(|o| o.status.success());
        if knows {
            shared
        } else {
            Self::private()
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
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "clickhouse-test.sh {command}: {stderr}"
        );
        // A start that needed another try says why; the test prints it if it fails later.
        if !stderr.trim().is_empty() {
            eprintln!("clickhouse-test.sh {command}: {stderr}");
        }
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

/// A ClickHouse that takes connections and never answers (a server hung, a firewall that
/// accepts and drops): the shutdown's flush waits on it until it is let go or the shutdown's
/// deadline and grace pass.
pub struct SilentClickHouse {
    pub url: String,
    release: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SilentClickHouse {
    pub fn start() -> SilentClickHouse {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind(("127.0.0.1", free_port())).unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let release = std::sync::Arc::new(AtomicBool::new(false));
        let released = release.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !released.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((s, _)) => held.push(s),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        SilentClickHouse {
            url,
            release,
            thread: Some(thread),
        }
    }

    /// Closes every connection and the port: ClickHouse is away, and the stop goes on.
    pub fn let_go(&mut self) {
        self.release
            .store(true, std::sync::atomic::Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}
