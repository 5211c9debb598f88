//! The field engineers' page in a real browser: Debian's headless Chromium, driven over the
//! W3C WebDriver protocol by chromedriver (both installed by the test command). The page is
//! loaded on a phone-sized window, a meter that was just published is searched by typing its
//! id, and its status, colour and chart must show; the stale list must name a silent meter.
//! With a meter registry and credentials: the health's reasons in words (a low battery is
//! amber, a cover opened red), a gateway heard through its meter's messages, channel names,
//! the charts' time axis, events, and the fleet summary by health and district.
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
    publish("meters/SILENT-1/status", r#"{"battery_pct": 55}"#.into());
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

/// The page interprets: amber for a low battery with the reason in words, red for a cover
/// opened (and the event listed), a gateway green after publishing for its meter, channel
/// names and a time axis, the fleet summary's counts with a district filter.
#[test]
fn the_page_says_what_is_wrong_and_sums_up_the_fleet() {
    let tmp = tempfile::tempdir().unwrap();
    let (lowbat, tamper, gw) = (
        "lowbat-secret-0123",
        "tamper-secret-0123",
        "gw-secret-0123456",
    );
    let fleet = tmp.path().join("fleet.csv");
    std::fs::write(
        &fleet,
        format!(
            "meter_id,secret,publish_for\nLOWBAT-1,{lowbat},\nTAMPER-1,{tamper},\nGW1,{gw},G*\n"
        ),
    )
    .unwrap();
    crate::harness::credentials(tmp.path(), &["import", fleet.to_str().unwrap()]);
    let meters = tmp.path().join("meters.csv");
    std::fs::write(
        &meters,
        "meter_id,kind,expected_interval_s,district,feeder,role\n\
         LOWBAT-1,electricity,900,North,F1,customer\n\
         G5,gas,3600,North,F1,customer\n\
         GW1,gateway,900,North,,customer\n\
         TAMPER-1,electricity,900,South,F2,customer\n\
         NEVER-1,electricity,900,South,F2,customer\n",
    )
    .unwrap();
    let out = std::process::Command::new(crate::harness::BIN)
        .args(["registry", "import", "--data-dir"])
        .arg(tmp.path().join("data"))
        .arg(&meters)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Events are read from complete files (no ClickHouse here): files complete within a second.
    let (_cfg, config) = config_file("[parquet]\nfile_max_age_s = 1\n");
    let server = Server::start_in(tmp, &["--config", &config]);
    let files = tempfile::tempdir().unwrap();
    let publish = |topic: &str, user: &str, secret: &str, payload: &str| {
        let file = files.path().join("p");
        std::fs::write(&file, payload).unwrap();
        mosquitto_pub(server.mqtt_port, topic, &file, &["-u", user, "-P", secret]);
    };
    let now = meterflow_proto::now_ms();
    for k in 0..4 {
        let ts = now - (3 - k) * 900_000;
        publish(
            "meters/LOWBAT-1/json",
            "LOWBAT-1",
            lowbat,
            &format!(
                r#"{{"readings":[{{"channel":"1-0:1.8.0","ts":{ts},"value":{},"unit":"kWh"}}],"status":{{"battery_pct":12,"rssi_dbm":-75}}}}"#,
                100 + k
            ),
        );
    }
    publish(
        "meters/TAMPER-1/json",
        "TAMPER-1",
        tamper,
        &format!(
            r#"{{"readings":[{{"channel":"1-0:1.8.0","ts":{now},"value":5,"unit":"kWh"}}],"status":{{"error_flags":4}}}}"#
        ),
    );
    publish(
        "meters/G5/json",
        "GW1",
        gw,
        &format!(
            r#"{{"readings":[{{"channel":"0-1:24.2.1","ts":{now},"value":12.5,"unit":"m3"}}]}}"#
        ),
    );
    wait_for("the gateway heard", || {
        let (_, body) = server.http_get("/api/devices/GW1");
        body.contains("\"health\":\"green\"").then_some(())
    });
    // The gateway's liveness comes from the message it sent for G5.
    let (_, body) = server.http_get("/api/devices/GW1");
    let gw1: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(gw1["last_format"], "gateway", "{body}");
    assert_eq!(gw1["registry"]["kind"], "gateway", "{body}");
    wait_for("the events written", || {
        let (_, body) = server.http_get("/api/devices/TAMPER-1/events");
        body.contains("cover_open").then_some(())
    });

    // The fleet gauges: South has TAMPER-1 (heard) and NEVER-1 (never heard); North's three
    // are heard.
    assert_eq!(
        server.metric("meterflow_meters_registered{district=\"South\"}"),
        2.0
    );
    assert_eq!(
        server.metric("meterflow_meters_heard{district=\"South\"}"),
        1.0
    );
    assert_eq!(
        server.metric("meterflow_meters_heard{district=\"North\"}"),
        3.0
    );

    let browser = Browser::start();
    browser.go(&format!("http://127.0.0.1:{}/#LOWBAT-1", server.http_port));
    let health = browser.wait_for("#health");
    assert_eq!(browser.attribute(&health, "data-health"), "amber");
    let reasons = browser.text(&browser.wait_for("#reasons"));
    assert_eq!(reasons, "battery low: 12 % (below 20 %)");
    let registry = browser.text(&browser.find("#registry").unwrap());
    assert!(
        registry.contains("district North") && registry.contains("every 15 min"),
        "{registry}"
    );
    let chart = browser.text(&browser.wait_for(".chart[data-channel=\"1-0:1.8.0\"]"));
    assert!(chart.contains("energy imported, total"), "{chart}");
    let ticks = browser.call(
        "POST",
        "/elements",
        Some(json!({"using": "css selector", "value": ".chart .axis .tick"})),
    );
    assert_eq!(ticks.1.as_array().map(Vec::len), Some(5), "{:?}", ticks.1);
    browser.screenshot(&screenshots().join("meter-low-battery.png"));

    browser.go(&format!("http://127.0.0.1:{}/#TAMPER-1", server.http_port));
    wait_for("TAMPER-1 shown red", || {
        let health = browser.find("#health")?;
        (browser.text(&browser.find("#meter-id")?) == "TAMPER-1"
            && browser.attribute(&health, "data-health") == "red")
            .then_some(())
    });
    let reasons = browser.text(&browser.find("#reasons").unwrap());
    assert_eq!(reasons, "reports cover open (error flags 0x4)");
    let events = browser.text(&browser.wait_for("#events"));
    assert!(
        events.contains("cover open") && events.contains("cover was opened"),
        "{events}"
    );
    let status = browser.text(&browser.find("#status").unwrap());
    assert!(status.contains("0x4 (cover open)"), "{status}");

    // The fleet: green G5 and GW1, amber LOWBAT-1, red TAMPER-1 and NEVER-1 (never heard).
    let count = |health: &str| {
        browser
            .find(&format!("#fleet-{health}"))
            .map(|e| browser.attribute(&e, "data-count"))
    };
    wait_for("the fleet summary", || {
        (count("green").as_deref() == Some("2")).then_some(())
    });
    assert_eq!(count("amber").as_deref(), Some("1"));
    assert_eq!(count("red").as_deref(), Some("2"));
    let districts = browser.text(&browser.find("#fleet-districts").unwrap());
    assert!(
        districts.contains("North 2 1 0") && districts.contains("South 0 0 2"),
        "{districts}"
    );
    // Filtered to South.
    let select = browser.find("#district").unwrap();
    browser.call(
        "POST",
        &format!("/element/{select}/value"),
        Some(json!({"text": "South"})),
    );
    wait_for("the South summary", || {
        (count("green").as_deref() == Some("0") && count("red").as_deref() == Some("2"))
            .then_some(())
    });
    browser.screenshot(&screenshots().join("fleet-summary.png"));
    drop(browser);
    let (exit, _, log, _tmp) = server.stop();
    assert!(exit.success(), "{log}");
}
