//! The field engineers' page in a real browser: Debian's headless Chromium, driven over the
//! W3C WebDriver protocol by chromedriver (both installed by the test command). The page is
//! loaded on a phone-sized window, a meter that was just published is searched by typing its
//! id, and its status, colour and chart must show; the stale list must name a silent meter.
//! Screenshots are kept under `target/tmp/browser/`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::harness::{config_file, http, mosquitto_pub, wait_for, Server};
use base64::Engine;
use serde_json::{json, Value};

/// The W3C element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Browser {
        let port = crate::harness::free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (the test command installs chromium-driver)");
        wait_for("chromedriver", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
            let (_, body) = http(port, "GET", "/status", &[], None);
            let status: Value = serde_json::from_str(&body).ok()?;
            (status["value"]["ready"] == true).then_some(())
        });
        let profile = tempfile::tempdir().unwrap();
        // The flags a closed network needs (no background fetches), as root in a container.
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=390,844",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        }}});
        let (status, body) = http(
            port,
            "POST",
            "/session",
            &[],
            Some(&capabilities.to_string()),
        );
        assert_eq!(status, 200, "new session: {body}");
        let reply: Value = serde_json::from_str(&body).unwrap();
        let session = reply["value"]["sessionId"].as_str().unwrap().to_string();
        Browser {
            driver,
            port,
            session,
            _profile: profile,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string());
        let (status, text) = http(
            self.port,
            method,
            &format!("/session/{}{path}", self.session),
            &[],
            body.as_deref(),
        );
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, value["value"].clone())
    }

    fn go(&self, url: &str) {
        let (status, v) = self.call("POST", "/url", Some(json!({"url": url})));
        assert_eq!(status, 200, "{v}");
    }

    fn find(&self, css: &str) -> Option<String> {
        let (status, v) = self.call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        (status == 200).then(|| v[ELEMENT].as_str().unwrap().to_string())
    }

    fn wait_for(&self, css: &str) -> String {
        wait_for(&format!("{css} on the page"), || self.find(css))
    }

    fn text(&self, element: &str) -> String {
        let (_, v) = self.call("GET", &format!("/element/{element}/text"), None);
        v.as_str().unwrap_or_default().to_string()
    }

    fn attribute(&self, element: &str, name: &str) -> String {
        let (_, v) = self.call("GET", &format!("/element/{element}/attribute/{name}"), None);
        v.as_str().unwrap_or_default().to_string()
    }

    fn type_into(&self, element: &str, text: &str) {
        let (status, v) = self.call(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({"text": text})),
        );
        assert_eq!(status, 200, "{v}");
    }

    fn click(&self, element: &str) {
        let (status, v) = self.call(
            "POST",
            &format!("/element/{element}/click"),
            Some(json!({})),
        );
        assert_eq!(status, 200, "{v}");
    }

    fn screenshot(&self, path: &Path) {
        let (status, v) = self.call("GET", "/screenshot", None);
        assert_eq!(status, 200);
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.call("DELETE", "", None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn screenshots() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser")
}

#[test]
fn a_field_engineer_finds_a_meter_on_a_phone_and_sees_its_status_and_chart() {
    // Amber after 5 s: the silent meter goes amber while the browser starts, the meter looked
    // up stays green (it is published just before).
    let (_cfg, config) = config_file("[devices]\namber_after_s = 5\nred_after_s = 3600\n");
    let server = Server::start_with(&["--config", &config]);
    let files = tempfile::tempdir().unwrap();
    let publish = |topic: &str, payload: String| {
        let file = files.path().join("p");
        std::fs::write(&file, payload).unwrap();
        mosquitto_pub(server.mqtt_port, topic, &file, &[]);
    };
    publish("meters/SILENT-1/status", r#"{"battery_pct": 5}"#.into());
    let browser = Browser::start();
    wait_for("SILENT-1 to go amber", || {
        let (_, body) = server.http_get("/api/devices/SILENT-1");
        body.contains("\"health\":\"amber\"").then_some(())
    });
    let start = 1_709_294_400_000i64;
    for k in 0..6 {
        publish(
            "meters/BROWSER-1/json",
            format!(
                r#"{{"readings":[{{"channel":"1-0:1.8.0","ts":{},"value":{},"unit":"kWh"}}],
                    "status":{{"battery_pct":87,"rssi_dbm":-71,"firmware":"4.2.17"}}}}"#,
                start + k * 900_000,
                1200.0 + (k * k) as f64 * 0.25
            ),
        );
    }
    publish("meters/BROWSER-1/json", "{not json".into());
    wait_for("BROWSER-1 in the API", || {
        let (_, body) = server.http_get("/api/devices/BROWSER-1");
        body.contains("\"messages\":7").then_some(())
    });

    browser.go(&format!("http://127.0.0.1:{}/", server.http_port));
    let stale = browser.wait_for("#stale");
    wait_for("the stale list to name the silent meter", || {
        browser.text(&stale).contains("SILENT-1").then_some(())
    });
    assert!(
        !browser.text(&stale).contains("BROWSER-1"),
        "a meter just heard is not stale"
    );

    let search = browser.wait_for("#search");
    browser.type_into(&search, "BROWSER-1");
    browser.click(&browser.find("#go").unwrap());
    let health = browser.wait_for("#health");
    assert_eq!(browser.attribute(&health, "data-health"), "green");
    let heard = browser.text(&browser.find("#last-heard").unwrap());
    assert!(
        heard.starts_with("Last heard") && heard.ends_with("ago"),
        "{heard}"
    );
    let status = browser.text(&browser.find("#status").unwrap());
    for shown in ["87 %", "-71 dBm", "4.2.17"] {
        assert!(status.contains(shown), "{shown} in the status: {status}");
    }
    let chart = browser.wait_for(".chart[data-channel=\"1-0:1.8.0\"] polyline");
    let points = browser.attribute(&chart, "points");
    assert_eq!(
        points.split_whitespace().count(),
        6,
        "one point per reading: {points}"
    );
    let chart_label = browser.text(&browser.find(".chart[data-channel=\"1-0:1.8.0\"]").unwrap());
    assert!(
        chart_label.contains("1206.25 kWh"),
        "the newest value: {chart_label}"
    );
    let letters = browser.text(&browser.find("#dead-letters").unwrap());
    assert!(letters.contains("malformed"), "{letters}");
    // VEE has not judged it: its checks say so, not "none" (tests/it/vee.rs shows a meter
    // with some).
    let checks = browser.text(&browser.wait_for("#vee-exceptions"));
    assert!(
        checks.contains("VEE has not judged this meter in the last 30 days"),
        "{checks}"
    );
    browser.screenshot(&screenshots().join("meter-page-phone.png"));

    // A meter nobody heard: said plainly.
    let search = browser.find("#search").unwrap();
    let (_, _) = browser.call("POST", &format!("/element/{search}/clear"), Some(json!({})));
    browser.type_into(&search, "NOBODY-1");
    browser.click(&browser.find("#go").unwrap());
    let missing = browser.wait_for("#not-found");
    assert!(
        browser.text(&missing).contains("no meter"),
        "{}",
        browser.text(&missing)
    );
    browser.screenshot(&screenshots().join("meter-not-found.png"));
    drop(browser);
    let (exit, _, log, _tmp) = server.stop();
    assert!(exit.success(), "{log}");
}
