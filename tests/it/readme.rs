//! The README runs as written: every ```sh block (with bash) and ```python block (with
//! python3) is executed in the order it appears, in one scratch folder that holds the
//! repository's files (so `deploy/examples/...` and the fixtures are there) and nothing else,
//! with the `meterflow` this suite built first on `PATH`.
//!
//! An HTML comment on the lines just above a block steers it:
//! - `<!-- readme-test: skip: REASON -->`: not run, and the reason is required;
//! - `<!-- readme-test: background -->`: started and left running (a `meterflow serve`); the
//!   next block waits until its `/ready` answers 200;
//! - `<!-- readme-test: stop -->`: before the block, the background blocks get SIGTERM and
//!   must exit 0 (a server completes its Parquet files on the way out);
//! - `<!-- readme-test: expect: TEXT -->` (any number): the block's output holds TEXT.
//!
//! The default ports the README shows (1883, 8080, ...) are replaced, as whole numbers, by
//! free ones in the blocks' text and in the listeners' environment, so the test can run beside
//! the others and on a machine where something listens on 1883; ClickHouse's 8123 becomes the
//! suite's shared server, whose `meterflow` database is the README's alone.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::harness::{free_port, free_udp_port, ClickHouse, BIN};

/// One block of the README with what its markers ask.
#[derive(Debug)]
struct Block {
    line: usize,
    language: &'static str,
    text: String,
    skip: Option<String>,
    /// The prose between the block before and this one's markers, lower case.
    prose: String,
    background: bool,
    stop_before: bool,
    expect: Vec<String>,
}

/// The README's runnable blocks, in order.
fn blocks(readme: &str) -> Vec<Block> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    // Where the prose before the next block begins.
    let mut prose_from = 0;
    while i < lines.len() {
        let fence = lines[i].trim_end();
        let language = match fence {
            "```sh" | "```bash" => "sh",
            "```python" => "python",
            _ if fence.starts_with("```") => {
                // Another block (text, toml, ...): its end starts the next prose.
                i += 1;
                while i < lines.len() && lines[i].trim_end() != "```" {
                    i += 1;
                }
                i += 1;
                prose_from = i;
                continue;
            }
            _ => {
                i += 1;
                continue;
            }
        };
        let mut block = Block {
            line: i + 1,
            language,
            text: String::new(),
            skip: None,
            prose: String::new(),
            background: false,
            stop_before: false,
            expect: Vec::new(),
        };
        // The markers: the comment lines right above the fence.
        let mut j = i;
        while j > 0 && lines[j - 1].starts_with("<!-- readme-test:") {
            j -= 1;
            let marker = lines[j]
                .trim_start_matches("<!-- readme-test:")
                .trim_end_matches("-->")
                .trim();
            if let Some(reason) = marker.strip_prefix("skip:") {
                assert!(
                    !reason.trim().is_empty(),
                    "README line {}: a skip needs its reason",
                    j + 1
                );
                block.skip = Some(reason.trim().to_string());
            } else if marker == "background" {
                block.background = true;
            } else if marker == "stop" {
                block.stop_before = true;
            } else if let Some(text) = marker.strip_prefix("expect:") {
                block.expect.push(text.trim().to_string());
            } else {
                panic!(
                    "README line {}: unknown readme-test marker {marker:?}",
                    j + 1
                );
            }
        }
        block.prose = lines[prose_from.min(j)..j].join("\n").to_lowercase();
        i += 1;
        while i < lines.len() && lines[i].trim_end() != "```" {
            block.text.push_str(lines[i]);
            block.text.push('\n');
            i += 1;
        }
        out.push(block);
        i += 1;
        prose_from = i;
    }
    out
}

/// The default ports the README shows, each with a free one for this run; 8123 (ClickHouse's
/// HTTP port) is the suite's shared ClickHouse, in place of the one the README installs.
fn ports(clickhouse: &ClickHouse) -> BTreeMap<&'static str, String> {
    let tcp = ["1883", "1884", "8883", "8080", "4059"];
    let udp = ["5683", "5684"];
    let mut map = BTreeMap::new();
    for p in tcp {
        map.insert(p, free_port().to_string());
    }
    for p in udp {
        map.insert(p, free_udp_port().to_string());
    }
    let port = clickhouse
        .url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    map.insert("8123", port);
    map
}

/// `text` with every default port, as a whole number, replaced.
fn with_ports(text: &str, ports: &BTreeMap<&'static str, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_number = bytes[i].is_ascii_digit() && (i == 0 || !bytes[i - 1].is_ascii_digit());
        if starts_number {
            let end = (i..bytes.len())
                .find(|&k| !bytes[k].is_ascii_digit())
                .unwrap_or(bytes.len());
            let number = &text[i..end];
            out.push_str(ports.get(number).map_or(number, String::as_str));
            i = end;
        } else {
            let c = text[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// A scratch folder with links to the repository's top-level entries that git tracks (not
/// its build output, nor files a developer left in the checkout, which blocks would find or
/// write through).
fn scratch_with_repository() -> tempfile::TempDir {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Without git (a source tarball): every entry but the build output and data folders.
    let tracked = Command::new("git")
        .args(["-c", "safe.directory=*", "ls-files", "-z"])
        .current_dir(repo)
        .output()
        .ok()
        .filter(|o| o.status.success());
    let top: std::collections::BTreeSet<String> = match tracked {
        Some(out) => out
            .stdout
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .filter_map(|p| {
                let p = String::from_utf8_lossy(p).into_owned();
                p.split('/').next().map(str::to_string)
            })
            .collect(),
        None => std::fs::read_dir(repo)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| ![".git", "target", "data"].contains(&n.as_str()))
            .collect(),
    };
    let tmp = tempfile::tempdir().unwrap();
    for name in top {
        std::os::unix::fs::symlink(repo.join(&name), tmp.path().join(&name)).unwrap();
    }
    tmp
}

fn command(block: &Block, dir: &Path, ports: &BTreeMap<&'static str, String>) -> Command {
    let mut text = with_ports(&block.text, ports);
    if block.background {
        // One command, run in bash's place so that SIGTERM reaches it.
        assert_eq!(
            text.trim().lines().count(),
            1,
            "README line {}: a background block is one command",
            block.line
        );
        text = format!("exec {text}");
    }
    let mut command = match block.language {
        "python" => {
            let mut c = Command::new("python3");
            c.arg("-c").arg(text);
            c
        }
        _ => {
            let mut c = Command::new("bash");
            c.arg("-euo").arg("pipefail").arg("-c").arg(text);
            c
        }
    };
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let at = |p: &str| format!("127.0.0.1:{}", ports[p]);
    command
        .current_dir(dir)
        .env("PATH", path)
        .env("METERFLOW_MQTT_LISTEN", at("1883"))
        .env("METERFLOW_MQTT_V5_LISTEN", at("1884"))
        .env("METERFLOW_COAP_LISTEN", at("5683"))
        .env("METERFLOW_HTTP_LISTEN", at("8080"))
        .env_remove("METERFLOW_CONFIG")
        .env_remove("METERFLOW_DATA_DIR")
        .env_remove("METERFLOW_CLICKHOUSE_URL")
        .env_remove("METERFLOW_LOG");
    command
}

/// The background blocks running: (README line, process, log). Killed if the test fails
/// before it stops them.
#[derive(Default)]
struct Background(Vec<(usize, Child, std::path::PathBuf)>);

impl Drop for Background {
    fn drop(&mut self) {
        for (_, child, _) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Stops the background blocks with SIGTERM; each must exit 0.
fn stop(background: &mut Background) {
    for (line, mut child, log) in background.0.drain(..) {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let status = child.wait().unwrap();
        assert!(
            status.success(),
            "README line {line}: the background block exited {status}:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
}

#[test]
fn the_readme_runs_as_written() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let blocks = blocks(&readme);
    // The README's database on the shared server: its own, and empty (the other tests make
    // theirs with fresh names).
    let clickhouse = ClickHouse::shared();
    clickhouse.query("DROP DATABASE IF EXISTS meterflow");
    let ports = ports(&clickhouse);
    let dir = scratch_with_repository();
    let mut background = Background::default();
    let (mut ran, mut skipped) = (0, Vec::new());
    for block in &blocks {
        if let Some(reason) = &block.skip {
            skipped.push(format!("line {}: {reason}", block.line));
            continue;
        }
        if block.stop_before {
            // What the test does, the reader is told to do.
            assert!(
                block.prose.contains("ctrl-c") || block.prose.contains("stop the meterflow"),
                "README line {}: a `stop` marker, but the text before the block does not tell the reader to stop the meterflow running (Ctrl-C)",
                block.line
            );
            stop(&mut background);
        }
        if block.background {
            assert!(
                background.0.is_empty(),
                "README line {} starts a meterflow while the one of line {} still runs: say to stop it, and mark the block <!-- readme-test: stop -->",
                block.line,
                background.0[0].0
            );
            let log = dir.path().join(format!("background-{}.log", block.line));
            let file = std::fs::File::create(&log).unwrap();
            let child = command(block, dir.path(), &ports)
                .stdin(Stdio::null())
                .stdout(file.try_clone().unwrap())
                .stderr(file)
                .spawn()
                .unwrap();
            // The HTTP listener answers /ready once every listener is bound.
            let http: u16 = ports["8080"].parse().unwrap();
            let what = format!("README line {}", block.line);
            // Held before the wait, so that a server never ready is killed with the rest.
            background.0.push((block.line, child, log.clone()));
            if let Some((_, child, _)) = background.0.last_mut() {
                crate::harness::wait_ready(&what, child, http, &log);
            }
            ran += 1;
            continue;
        }
        let out = command(block, dir.path(), &ports).output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Shown with --nocapture, or when the test fails.
        eprintln!("--- README line {}:\n{said}", block.line);
        assert!(
            out.status.success(),
            "README line {} ({}) failed with {}:\n{}\n--- it said:\n{said}",
            block.line,
            block.language,
            out.status,
            block.text
        );
        for text in &block.expect {
            assert!(
                said.contains(text.as_str()),
                "README line {}: the output does not hold {text:?}:\n{said}",
                block.line
            );
        }
        ran += 1;
    }
    stop(&mut background);
    eprintln!(
        "README: {ran} blocks ran, {} skipped:\n  {}",
        skipped.len(),
        skipped.join("\n  ")
    );
    assert!(ran > 0);
}

#[test]
fn ports_are_replaced_as_whole_numbers_only() {
    let mut ports = BTreeMap::new();
    ports.insert("1883", "40001".to_string());
    assert_eq!(
        with_ports("-p 1883 :1883/ 18830 21883 1883", &ports),
        "-p 40001 :40001/ 18830 21883 40001"
    );
}
