//! The Debian package, installed on this machine as an operator would: `deploy/package.sh`
//! packages the binary this suite built, `dpkg -i` installs it (the postinst makes the
//! `meterflow` user, `/var/lib/meterflow` and the config's permissions), `meterflow serve`
//! runs from the installed paths exactly as the installed unit's `ExecStart=` says, as its
//! `User=`, with the config from `/etc/meterflow`, takes a report and stores it; then
//! `dpkg -r` and `dpkg -P` take it away again. It needs root (the test command runs as root
//! in CI, or with sudo) and no systemd: the unit itself is checked by `systemd-analyze verify`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

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

/// `program` as root: itself when this test runs as root, else through `sudo -n`.
fn as_root(program: &str) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.arg("-n").arg(program);
        c
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn run_as_root(program: &str, args: &[&str]) -> String {
    let out = as_root(program).args(args).output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}", text(&out));
    text(&out)
}

/// Purges the package and what the test made, however the test ends.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = as_root("dpkg").args(["--purge", "meterflow"]).output();
        let _ = as_root("rm").args(["-rf", STATE]).output();
        let _ = as_root("deluser").args(["--system", "meterflow"]).output();
    }
}

#[test]
fn the_debian_package_installs_serves_and_removes() {
    let root_works = is_root()
        || Command::new("sudo")
            .args(["-n", "true"])
            .output()
            .is_ok_and(|o| o.status.success());
    assert!(
        root_works,
        "the package test installs with dpkg: run the tests as root or with passwordless sudo"
    );
    let already = Command::new("dpkg")
        .args(["-s", "meterflow"])
        .output()
        .unwrap();
    assert!(
        !already.status.success(),
        "a meterflow package is already installed here; this test installs and purges its own"
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
    run_as_root("dpkg", &["-i", &deb]);

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
    let mut serve: Child = as_root("runuser")
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
    run_as_root("pkill", &["-TERM", "-u", "meterflow", "-x", "meterflow"]);
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
    run_as_root("dpkg", &["-r", "meterflow"]);
    assert!(!Path::new("/usr/bin/meterflow").exists());
    assert!(!Path::new(UNIT).exists());
    assert!(Path::new("/etc/meterflow/meterflow.toml").exists());
    let purged = run_as_root("dpkg", &["-P", "meterflow"]);
    assert!(!Path::new("/etc/meterflow").exists());
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
