//! The bridge's settings: URLs, topic patterns, the keys named by bad values, client ids.
//! The connection to a real broker is tested in `tests/it/bridge.rs`.

use super::*;

#[test]
fn urls_give_host_port_tls_and_login() {
    let e = parse_url("mqtts://meterflow:p%40ss%3Aword@broker.example", "url").unwrap();
    assert_eq!(
        e,
        Endpoint {
            host: "broker.example".into(),
            port: 8883,
            tls: true,
            username: Some("meterflow".into()),
            password: Some("p@ss:word".into()),
        }
    );
    let e = parse_url("mqtt://127.0.0.1:1999", "url").unwrap();
    assert_eq!((e.host.as_str(), e.port, e.tls), ("127.0.0.1", 1999, false));
    assert_eq!(e.username, None);
    assert_eq!(parse_url("tcp://[::1]", "url").unwrap().host, "[::1]");
    for bad in [
        "http://h",
        "mqtt://",
        "broker:1883",
        "mqtt://h/meters/#",
        "mqtt://h?x=1",
    ] {
        assert!(parse_url(bad, "url").is_err(), "{bad}");
    }
}

#[test]
fn printed_urls_hide_the_password() {
    assert_eq!(
        url_without_password("mqtts://mf:s3cret@broker:8883"),
        "mqtts://mf:***@broker:8883"
    );
    assert_eq!(url_without_password("mqtt://broker"), "mqtt://broker");
    assert!(!url_without_password("mqtt//mf:s3cret@b").contains("s3cret"));
}

#[test]
fn the_default_pattern_maps_topics_one_to_one() {
    let p = TopicPattern::parse("meters/{meter_id}/{format}", "", "topic").unwrap();
    assert_eq!(p.filter(), "meters/+/+");
    assert_eq!(p.canonical("meters/E1/pb").as_deref(), Some("meters/E1/pb"));
    assert_eq!(
        p.canonical("meters/E1/status").as_deref(),
        Some("meters/E1/status")
    );
    assert_eq!(p.canonical("meters/E 1/pb"), None);
    assert_eq!(p.canonical("meters/E1"), None);
    assert_eq!(p.canonical("other/E1/pb"), None);
}

#[test]
fn a_utility_tree_maps_to_the_canonical_topics() {
    let p = TopicPattern::parse("utility/+/ami/{meter_id}/up", "dsmr", "topic").unwrap();
    assert_eq!(p.filter(), "utility/+/ami/+/up");
    assert_eq!(
        p.canonical("utility/north/ami/E0001/up").as_deref(),
        Some("meters/E0001/dsmr")
    );
    assert_eq!(p.canonical("utility/north/ami/E0001/down"), None);
    let p = TopicPattern::parse("{format}/{meter_id}", "", "topic").unwrap();
    assert_eq!(p.canonical("json/M7").as_deref(), Some("meters/M7/json"));
}

#[test]
fn bad_patterns_say_why() {
    for (pattern, format) in [
        ("meters/{format}", ""),
        ("meters/{meter_id}/{meter_id}", ""),
        ("meters/{meter_id}", ""),
        ("meters/{meter_id}", "xml"),
        ("meters/{meter_id}/{format}", "pb"),
        ("meters/#", ""),
        ("meters//{meter_id}", "pb"),
        ("m{meter_id}", "pb"),
    ] {
        assert!(
            TopicPattern::parse(pattern, format, "topic").is_err(),
            "{pattern} {format}"
        );
    }
}

#[test]
fn bad_values_name_their_key() {
    let good = BridgeConfig::from_url("mqtt://u:p@broker");
    good.prepare(0).unwrap();
    for (config, key) in [
        (BridgeConfig::from_url("http://x"), "bridge[2].url"),
        (
            BridgeConfig {
                qos: 2,
                ..good.clone()
            },
            "bridge[2].qos",
        ),
        (
            BridgeConfig {
                share_group: "a/b".into(),
                ..good.clone()
            },
            "bridge[2].share_group",
        ),
        (
            BridgeConfig {
                tls_ca: Some("ca.pem".into()),
                ..good.clone()
            },
            "bridge[2].url",
        ),
        (
            BridgeConfig {
                url: "mqtt://broker".into(),
                password: "secret".into(),
                ..good.clone()
            },
            "bridge[2].password",
        ),
        (
            BridgeConfig {
                receive_maximum: 0,
                ..good.clone()
            },
            "bridge[2].receive_maximum",
        ),
        (
            BridgeConfig {
                keep_alive_s: 4,
                ..good.clone()
            },
            "bridge[2].keep_alive_s",
        ),
        (
            BridgeConfig {
                session_expiry_s: 0,
                ..good.clone()
            },
            "bridge[2].session_expiry_s",
        ),
        (
            BridgeConfig {
                url: "mqtts://u:p@broker".into(),
                tls_ca: Some("/nonexistent/ca.pem".into()),
                ..good.clone()
            },
            "bridge[2].tls_ca",
        ),
        (
            BridgeConfig::from_url("mqtts://[::1]:8883"),
            "bridge[2].url",
        ),
    ] {
        let e = config.prepare(2).err().unwrap().to_string();
        assert!(e.contains(key), "{e}");
        assert!(!e.contains("secret"), "{e}");
    }
}

#[test]
fn client_ids_follow_the_node() {
    let c = BridgeConfig::default();
    assert_eq!(c.client_id_for("", 0), "meterflow");
    assert_eq!(c.client_id_for("mf-2", 0), "meterflow-mf-2");
    assert_eq!(c.client_id_for("mf-2", 1), "meterflow-mf-2-1");
    let c = BridgeConfig {
        client_id: "fixed".into(),
        ..c
    };
    assert_eq!(c.client_id_for("mf-2", 1), "fixed");
}
