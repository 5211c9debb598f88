//! The Debian package, installed on this machine as an operator would: `deploy/package.sh`
//! packages the binary this suite built, `dpkg -i` installs it (the postinst makes the
//! `meterflow` user, `/var/lib/meterflow` and the config's permissions), `meterflow serve`
//! runs from the installed paths exactly as the installed unit's `ExecStart=` says, as its
//! `User=`, with the config from `/etc/meterflow`, takes a report and stores it; then
//! `dpkg -r` and `dpkg -P` take it away again.
//!
//! It installs a system package, so it runs only when asked (`METERFLOW_TEST_PACKAGE=1`,
//! which `deploy/run-tests.sh` sets when it runs as root, as CI does), only as root, and only
//! on a machine without any meterflow of its own: no `meterflow` user, no `/etc/meterflow`,
//! no `/var/lib/meterflow`, no `meterflow.service`, no package. It then removes exactly what
//! it made, however it ends (a run killed outright leaves them: the next run refuses the
//! machine until they are removed by hand). Where systemd runs, the service the package starts is stopped
//! first; the unit itself is checked by `systemd-analyze verify`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::harness::{
    free_port, free_udp_port, mosquitto_pub_acked, read_readings, wait_ready, BIN,
};

const UNIT: &str = "/usr/lib/systemd/system/meterflow.service";
const STATE: &str = "/var/lib/meterflow";

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}", text(&out));
    text(&out)
}

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// What this machine has of meterflow already; the test touches none of it.
fn meterflow_here() -> Vec<String> {
    let mut found = Vec::new();
    if succeeds("getent", &["passwd", "meterflow"]) {
        found.push("the user meterflow".to_string());
    }
    if succeeds("getent", &["group", "meterflow"]) {
        found.push("the group meterflow".to_string());
    }
    for path in [
        "/etc/meterflow",
        STATE,
        "/etc/systemd/system/meterflow.service",
        "/lib/systemd/system/meterflow.service",
        UNIT,
        "/usr/local/bin/meterflow",
        "/usr/bin/meterflow",
    ] {
        if Path::new(path).exists() {
            found.push(path.to_string());
        }
    }
    if succeeds("dpkg", &["-s", "meterflow"]) {
        found.push("the meterflow package".to_string());
    }
    found
}

/// Stops the test's server, purges the package and removes what it made (the state folder
/// and the user, which did not exist before), however the test ends.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        for signal in ["-TERM", "-KILL"] {
            let _ = Command::new("pkill")
                .args([signal, "-u", "meterflow", "-x", "meterflow"])
                .output();
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        let _ = Command::new("dpkg").args(["--purge", "meterflow"]).output();
        // Neither was there before the test (it checked).
        let _ = std::fs::remove_dir_all(STATE);
        let _ = std::fs::remove_dir_all("/etc/meterflow");
        let _ = Command::new("deluser")
            .args(["--system", "meterflow"])
            .output();
    }
}

#[test]
fn the_debian_package_installs_serves_and_removes() {
    if std::env::var("METERFLOW_TEST_PACKAGE").as_deref() != Ok("1") {
        eprintln!(
            "not run: it installs a system package; METERFLOW_TEST_PACKAGE=1 asks for it \
             (deploy/run-tests.sh sets it when run as root)"
        );
        return;
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    assert!(
        root,
        "METERFLOW_TEST_PACKAGE=1: the package test installs with dpkg, as root"
    );
    let here = meterflow_here();
    assert!(
        here.is_empty(),
        "this machine has a meterflow of its own ({}): the package test would touch it, so it \
         does not run here",
        here.join(", ")
    );
    let out_dir = tempfile::tempdir().unwrap();
    let built = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/package.sh"))
        .arg("--binary")
        .arg(BIN)
        .arg("--out")
        .arg(out_dir.path())
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", text(&built));
    let deb = String::from_utf8_lossy(&built.stdout).trim().to_string();
    assert!(deb.ends_with(".deb"), "{}", text(&built));
    // The package's own description of itself.
    let info = Command::new("dpkg-deb")
        .args(["-I", &deb])
        .output()
        .unwrap();
    let info = text(&info);
    assert!(
        info.contains("Package: meterflow") && info.contains("Depends: libc6"),
        "{info}"
    );

    let _installed = Installed;
    run("dpkg", &["-i", &deb]);
    // Where systemd runs, the postinst started the service: this test runs its own.
    if Path::new("/run/systemd/system").exists() {
        run("systemctl", &["stop", "meterflow.service"]);
    }

    // What the postinst made.
    let user = Command::new("getent")
        .args(["passwd", "meterflow"])
        .output()
        .unwrap();
    let user = String::from_utf8_lossy(&user.stdout).to_string();
    assert!(
        user.contains(":/var/lib/meterflow:/usr/sbin/nologin"),
        "{user}"
    );
    let uid: u32 = user.split(':').nth(2).unwrap().parse().unwrap();
    let state = std::fs::metadata(STATE).unwrap();
    assert_eq!(
        (state.uid(), state.permissions().mode() & 0o777),
        (uid, 0o750)
    );
    let config = std::fs::metadata("/etc/meterflow/meterflow.toml").unwrap();
    assert_eq!(config.permissions().mode() & 0o777, 0o640);
    assert_eq!(
        std::fs::metadata("/etc/meterflow")
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o750
    );

    // The installed unit: hardened, and (where systemd-analyze is) valid.
    let unit = std::fs::read_to_string(UNIT).unwrap();
    for line in [
        "User=meterflow",
        "StateDirectory=meterflow",
        "UMask=0027",
        "LimitNOFILE=1048576",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "{line} missing from {UNIT}"
        );
    }
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        let verify = Command::new("systemd-analyze")
            .args(["verify", UNIT])
            .output()
            .unwrap();
        let said = text(&verify);
        assert!(
            !said.contains("meterflow.service:"),
            "systemd-analyze verify {UNIT}:\n{said}"
        );
    }

    // `serve` as the unit runs it, as its user; only the ports are this test's own.
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    let argv: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(argv[0], "/usr/bin/meterflow");
    let (mqtt, http) = (free_port(), free_port());
    let log = out_dir.path().join("serve.log");
    let mut serve = Command::new("runuser")
        .args(["-u", "meterflow", "--"])
        .args(&argv)
        .env("METERFLOW_MQTT_LISTEN", format!("127.0.0.1:{mqtt}"))
        .env("METERFLOW_MQTT_V5_LISTEN", "off")
        .env(
            "METERFLOW_COAP_LISTEN",
            format!("127.0.0.1:{}", free_udp_port()),
        )
        .env("METERFLOW_HTTP_LISTEN", format!("127.0.0.1:{http}"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::options().append(true).open(&log).unwrap())
        .spawn()
        .unwrap();
    wait_ready("the installed meterflow", &mut serve, http, &log);
    let report = r#"{"readings": [{"channel": "1-0:1.8.0", "ts": "2026-03-01T00:00:00Z", "value": 4242.5, "unit": "kWh"}]}"#;
    assert!(mosquitto_pub_acked(mqtt, "meters/PKG-1/json", report));
    // SIGTERM, as systemd stops it: the Parquet file is completed on the way out.
    run("pkill", &["-TERM", "-u", "meterflow", "-x", "meterflow"]);
    let status = serve.wait().unwrap();
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status.success(),
        "the installed meterflow exited {status}:\n{said}"
    );
    let rows = read_readings(Path::new(STATE));
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0].meter_id.as_str(), rows[0].value),
        ("PKG-1", 4242.5)
    );
    // Everything it wrote belongs to its user and is closed to others (UMask=0027 and its own).
    let readings = walk(&Path::new(STATE).join("readings"));
    assert!(!readings.is_empty());
    for path in readings {
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.uid(), uid, "{}", path.display());
        assert_eq!(meta.permissions().mode() & 0o007, 0, "{}", path.display());
    }

    // Remove: the binary goes, the config (a conffile) and the readings stay; purge: the
    // config goes too, the readings stay.
    run("dpkg", &["-r", "meterflow"]);
    assert!(!Path::new("/usr/bin/meterflow").exists());
    assert!(!Path::new(UNIT).exists());
    assert!(Path::new("/etc/meterflow/meterflow.toml").exists());
    // A file an admin put beside the config (a key) survives the purge, and so its folder.
    std::fs::write("/etc/meterflow/server.key", "an admin's file").unwrap();
    let purged = run("dpkg", &["-P", "meterflow"]);
    assert!(!Path::new("/etc/meterflow/meterflow.toml").exists());
    assert!(Path::new("/etc/meterflow/server.key").exists());
    std::fs::remove_dir_all("/etc/meterflow").unwrap();
    assert!(purged.contains("/var/lib/meterflow are kept"), "{purged}");
    assert_eq!(read_readings(Path::new(STATE)).len(), 1);
}

/// Every file and folder under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}
