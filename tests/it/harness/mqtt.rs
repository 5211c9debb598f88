//! `mosquitto_pub`, the real MQTT client the tests publish with.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

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
