//! HAProxy (Debian's; the test command installs it) terminating TLS in front of an HTTP
//! server, as ClickHouse Cloud and managed services are reached: a CA and a certificate for
//! 127.0.0.1 made with openssl as `deploy/cluster/up.sh` makes its own, and a second CA that
//! signed nothing here (a wrong one).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::server::free_port;
use super::wait_for;

pub struct TlsTerminator {
    /// `https://127.0.0.1:PORT`
    pub url: String,
    /// The CA (PEM) that signed the terminator's certificate.
    pub ca: PathBuf,
    /// A CA (PEM) that did not.
    pub other_ca: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

/// openssl: CA `$1/ca.pem`, another `$1/other-ca.pem`, and `$1/server.pem` (certificate and
/// key, as HAProxy takes them) for IP 127.0.0.1 signed by the first.
const MAKE_CERTIFICATES: &str = r#"
set -e
d=$1
for ca in ca other-ca; do
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -keyout "$d/$ca.key" -out "$d/$ca.pem" -subj "/CN=meterflow test $ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
done
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$d/server.key" \
  -out "$d/server.csr" -subj "/CN=127.0.0.1" 2>/dev/null
printf 'basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\n' >"$d/server.ext"
openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
  -out "$d/server.crt" -days 30 -extfile "$d/server.ext" 2>/dev/null
cat "$d/server.crt" "$d/server.key" >"$d/server.pem"
"#;

impl TlsTerminator {
    /// HTTPS on a free loopback port, forwarded as HTTP to `upstream` (`http://host:port`).
    pub fn start(upstream: &str) -> TlsTerminator {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("bash")
            .args(["-c", MAKE_CERTIFICATES, "make-certificates"])
            .arg(dir.path())
            .output()
            .expect("bash runs");
        assert!(
            out.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let upstream = upstream.trim_start_matches("http://").trim_end_matches('/');
        let config = dir.path().join("haproxy.cfg");
        std::fs::write(
            &config,
            format!(
                "global\n    maxconn 200\n\
                 defaults\n    mode http\n    timeout connect 2s\n    timeout client 60s\n    timeout server 60s\n\
                 frontend clickhouse_tls\n    bind 127.0.0.1:{port} ssl crt {crt}\n    default_backend clickhouse\n\
                 backend clickhouse\n    server ch {upstream}\n",
                crt = dir.path().join("server.pem").display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("haproxy.log")).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("haproxy runs (the test command installs it)");
        let terminator = TlsTerminator {
            url: format!("https://127.0.0.1:{port}"),
            ca: dir.path().join("ca.pem"),
            other_ca: dir.path().join("other-ca.pem"),
            child,
            _dir: dir,
        };
        wait_for("HAProxy to answer over TLS", || {
            let out = Command::new("curl")
                .args(["-sS", "--cacert"])
                .arg(&terminator.ca)
                .arg(format!("{}/ping", terminator.url))
                .output()
                .ok()?;
            (String::from_utf8_lossy(&out.stdout).trim() == "Ok.").then_some(())
        });
        terminator
    }
}

impl Drop for TlsTerminator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
