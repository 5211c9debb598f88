//! LwM2M 1.1 SenML-CBOR / SenML-JSON vectors of wakaama and Leshan (fixtures/lwm2m).
//!
//! wakaama: every vector is checked on its own (a failure names the vector index, test id and
//! comment; all failures are reported together):
//! - `parse_must_fail`: `decode_lwm2m`, the plain decoder and `resolve_*` all fail, with the
//!   error kind the case calls for (`unsupported` for bver 11 and a must-understand field,
//!   `malformed` for structure);
//! - every other case parses; the resolved records (names, values, times, units) equal an
//!   independent resolution, written here, of the origin's own view of the input: the
//!   `input_decoded_cbor2` decode for CBOR, the input text for JSON. `decode_lwm2m` keeps every
//!   record (no rejection) and turns exactly the numeric ones into readings, channel = full path;
//! - `reserialized_equals_expected`: the records under the request `uri` also equal wakaama's
//!   expected output, apart from these wakaama behaviours, which we do not copy:
//!   * wakaama's serializer drops `bt`; where the input has one, times are not compared
//!     against the expected output (they are against the input, above);
//!   * test 2: wakaama keeps only the last of three timestamped values of `/72/1/2`; we keep
//!     all three with their own times (RFC 8428: each record is a measurement);
//!   * test 17: wakaama normalises the path `/67/0/00` to `/67/0/0`; we keep names verbatim.
//!
//! Leshan: one test per vector, asserting what Leshan's own test asserts.
//!
//! Relative times: times below 2**28 resolve against `now` (RFC 8428 section 4.5.3), so the
//! OMA examples' `bt: 25462634` means "25462634 s from now". Leshan's and wakaama's own tests
//! assert the raw `bt + t`; we assert `now + bt + t`.

use std::panic::{catch_unwind, AssertUnwindSafe};

use meterflow_decoders::senml::{
    decode_cbor, decode_json, decode_lwm2m, resolve_cbor, resolve_json, resolve_lwm2m,
    ResolvedRecord, SenmlValue,
};
use meterflow_decoders::{DecodeError, Decoded};
use serde_json::Value;

const NOW_MS: i64 = 1_700_000_000_000;
const NOW_S: f64 = 1_700_000_000.0;
const RELATIVE_LIMIT: f64 = 268_435_456.0;

#[derive(Debug, Clone, PartialEq)]
enum Val {
    F(f64),
    S(String),
    B(bool),
    D(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq)]
struct Rec {
    name: String,
    time_s: f64,
    unit: Option<String>,
    value: Option<Val>,
    sum: Option<f64>,
}

fn from_resolved(records: &[ResolvedRecord<'_>]) -> Vec<Rec> {
    records
        .iter()
        .map(|r| Rec {
            name: r.name.to_string(),
            time_s: r.time_s,
            unit: r.unit.as_deref().map(str::to_string),
            value: r.value.as_ref().map(|v| match v {
                SenmlValue::Float(x) => Val::F(*x),
                SenmlValue::String(s) => Val::S(s.to_string()),
                SenmlValue::Bool(b) => Val::B(*b),
                SenmlValue::Data(d) => Val::D(d.to_vec()),
            }),
            sum: r.sum,
        })
        .collect()
}

/// Field names of the two views: CBOR labels as the cbor2 decode prints them, JSON names.
struct Labels {
    bn: &'static str,
    bt: &'static str,
    bu: &'static str,
    bv: &'static str,
    n: &'static str,
    u: &'static str,
    v: &'static str,
    vs: &'static str,
    vb: &'static str,
    vd: &'static str,
    s: &'static str,
    t: &'static str,
}

const CBOR_LABELS: Labels = Labels {
    bn: "-2",
    bt: "-3",
    bu: "-4",
    bv: "-5",
    n: "0",
    u: "1",
    v: "2",
    vs: "3",
    vb: "4",
    vd: "8",
    s: "5",
    t: "6",
};

const JSON_LABELS: Labels = Labels {
    bn: "bn",
    bt: "bt",
    bu: "bu",
    bv: "bv",
    n: "n",
    u: "u",
    v: "v",
    vs: "vs",
    vb: "vb",
    vd: "vd",
    s: "s",
    t: "t",
};

/// Standard or URL-safe base64, padding optional.
fn base64(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in text.bytes().filter(|&c| c != b'=') {
        let c = match c {
            b'-' => b'+',
            b'_' => b'/',
            c => c,
        };
        let d = ALPHABET.iter().position(|&a| a == c).expect("base64 digit") as u32;
        bits = (bits << 6) | d;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    out
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// A number as the views print it: a JSON number, or cbor2's rendering of a tag 4 decimal.
fn number(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().expect("finite"),
        Value::Object(o) => o["cbor_tag4_decimal_fraction"]
            .as_str()
            .expect("decimal text")
            .parse()
            .expect("decimal"),
        other => panic!("not a number: {other}"),
    }
}

fn bytes_of(v: &Value) -> Vec<u8> {
    match v {
        Value::String(s) => base64(s),
        Value::Object(o) => base64(o["bytes_b64"].as_str().expect("bytes_b64")),
        other => panic!("not bytes: {other}"),
    }
}

/// An independent RFC 8428 resolution of a pack given as JSON values.
fn model(records: &[Value], l: &Labels, now_s: f64) -> Vec<Rec> {
    let mut bn = String::new();
    let (mut bt, mut bu, mut bv) = (None::<f64>, None::<String>, 0.0);
    let mut out = Vec::new();
    for r in records {
        let o = r.as_object().expect("record is a map");
        if let Some(x) = o.get(l.bn) {
            bn = x.as_str().expect("bn").to_string();
        }
        if let Some(x) = o.get(l.bt) {
            bt = Some(number(x));
        }
        if let Some(x) = o.get(l.bu) {
            bu = Some(x.as_str().expect("bu").to_string());
        }
        if let Some(x) = o.get(l.bv) {
            bv = number(x);
        }
        let value = if let Some(x) = o.get(l.v) {
            Some(Val::F(number(x) + bv))
        } else if let Some(x) = o.get(l.vs) {
            Some(Val::S(x.as_str().expect("vs").to_string()))
        } else if let Some(x) = o.get(l.vb) {
            Some(Val::B(x.as_bool().expect("vb")))
        } else {
            o.get(l.vd).map(|x| Val::D(bytes_of(x)))
        };
        let sum = o.get(l.s).map(number);
        if value.is_none() && sum.is_none() {
            continue;
        }
        let name = format!("{bn}{}", o.get(l.n).map_or("", |n| n.as_str().expect("n")));
        let mut time_s = bt.unwrap_or(0.0) + o.get(l.t).map_or(0.0, number);
        if time_s < RELATIVE_LIMIT {
            time_s += now_s;
        }
        let unit = o
            .get(l.u)
            .map(|u| u.as_str().expect("u").to_string())
            .or(bu.clone());
        out.push(Rec {
            name,
            time_s,
            unit,
            value,
            sum,
        });
    }
    out
}

fn error_kind(e: &DecodeError) -> &'static str {
    e.kind()
}

/// The kind of error a wakaama must-fail case calls for, from its comment.
fn must_fail_kind(comment: &str) -> &'static str {
    match comment {
        "Unsupported base version" | "Unsupported field requiring error" => "unsupported",
        "Test missing array"
        | "Test extra array"
        | "Test missing record"
        | "Test extra record"
        | "Test indefinite size array"
        | "Test indefinite size record" => "malformed",
        other => panic!("new must-fail case, decide its error kind: {other:?}"),
    }
}

/// Readings must be exactly the numeric records, channel = full path, in order.
fn check_readings(decoded: &Decoded<'_>, records: &[Rec]) {
    assert!(
        decoded.rejected.is_empty(),
        "rejected: {:?}",
        decoded.rejected
    );
    let want: Vec<_> = records
        .iter()
        .filter_map(|r| match r.value {
            Some(Val::F(v)) => Some((r.name.clone(), (r.time_s * 1000.0).round() as i64, v)),
            _ => None,
        })
        .collect();
    let got: Vec<_> = decoded
        .readings
        .iter()
        .map(|r| (r.channel.to_string(), r.ts_ms, r.value))
        .collect();
    assert_eq!(got, want, "readings");
    assert_eq!(decoded.meter_id, None);
}

/// Applies the documented wakaama behaviours to our records before comparing them with
/// wakaama's expected output.
fn as_wakaama_reserializes(
    test_id: &str,
    uri: Option<&str>,
    ours: &[Rec],
    input_has_bt: bool,
) -> Vec<Rec> {
    let mut out: Vec<Rec> = ours
        .iter()
        .filter(|r| uri.is_none_or(|u| r.name.starts_with(u)))
        .cloned()
        .collect();
    if input_has_bt {
        for r in &mut out {
            r.time_s = NOW_S; // wakaama's output has no time: "now"
        }
    }
    match test_id {
        "2" => {
            // wakaama keeps only the last record of a path.
            let last = out.pop().expect("records");
            out = vec![last];
        }
        "17" => {
            for r in &mut out {
                if r.name == "/67/0/00" {
                    r.name = "/67/0/0".into();
                }
            }
        }
        _ => {}
    }
    out
}

/// Runs `check` for every vector; reports every failing vector at the end.
fn for_each_vector(file: &str, vectors: &[Value], check: impl Fn(usize, &Value)) {
    let mut failures = Vec::new();
    for (i, v) in vectors.iter().enumerate() {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| check(i, v))) {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!(
                "{file} vector #{i} (test {} {:?}): {msg}",
                v["test_id"],
                v["origin_comments"]
                    .get(0)
                    .and_then(Value::as_str)
                    .unwrap_or("")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn first_comment(v: &Value) -> &str {
    v["origin_comments"]
        .get(0)
        .and_then(Value::as_str)
        .unwrap_or("")
}

#[test]
fn wakaama_senml_cbor_vectors() {
    let file: Value = serde_json::from_str(include_str!(
        "../fixtures/lwm2m/wakaama/senml_cbor_vectors.json"
    ))
    .unwrap();
    let vectors = file["vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), 36);
    for_each_vector("wakaama senml_cbor_vectors.json", vectors, |_, v| {
        let input = hex(v["input_hex"].as_str().unwrap());
        let test_id = v["test_id"].as_str().unwrap();
        if v["expect"] == "parse_must_fail" {
            let kind = must_fail_kind(first_comment(v));
            let errors = [
                decode_lwm2m(&input, NOW_MS).map(drop),
                decode_cbor(&input, NOW_MS).map(drop),
                resolve_cbor(&input, NOW_MS).map(drop),
            ];
            for e in errors {
                let e = e.expect_err("must fail");
                assert_eq!(error_kind(&e), kind, "{e}");
            }
            return;
        }
        let ours = from_resolved(&resolve_cbor(&input, NOW_MS).expect("parses"));
        let decoded_view = v["input_decoded_cbor2"].as_array().expect("cbor2 decode");
        assert_eq!(ours, model(decoded_view, &CBOR_LABELS, NOW_S), "input");
        assert_eq!(from_resolved(&resolve_lwm2m(&input, NOW_MS).unwrap()), ours);
        check_readings(&decode_lwm2m(&input, NOW_MS).expect("decodes"), &ours);
        if v["expect"] == "reserialized_equals_expected" {
            let expected = v["expected_output_decoded_cbor2"].as_array().unwrap();
            let has_bt = decoded_view.iter().any(|r| r.get("-3").is_some());
            assert_eq!(
                as_wakaama_reserializes(test_id, v["uri"].as_str(), &ours, has_bt),
                model(expected, &CBOR_LABELS, NOW_S),
                "expected output"
            );
        }
    });
}

#[test]
fn wakaama_senml_json_vectors() {
    let file: Value = serde_json::from_str(include_str!(
        "../fixtures/lwm2m/wakaama/senml_json_vectors.json"
    ))
    .unwrap();
    let vectors = file["vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), 31);
    for_each_vector("wakaama senml_json_vectors.json", vectors, |_, v| {
        let text = v["input_text"].as_str().unwrap();
        let test_id = v["test_id"].as_str().unwrap();
        if v["expect"] == "parse_must_fail" {
            let kind = must_fail_kind(first_comment(v));
            let errors = [
                decode_lwm2m(text.as_bytes(), NOW_MS).map(drop),
                decode_json(text.as_bytes(), NOW_MS).map(drop),
                resolve_json(text.as_bytes(), NOW_MS).map(drop),
            ];
            for e in errors {
                let e = e.expect_err("must fail");
                assert_eq!(error_kind(&e), kind, "{e}");
            }
            return;
        }
        let ours = from_resolved(&resolve_json(text.as_bytes(), NOW_MS).expect("parses"));
        let view: Vec<Value> = serde_json::from_str(text).unwrap();
        assert_eq!(ours, model(&view, &JSON_LABELS, NOW_S), "input");
        check_readings(
            &decode_lwm2m(text.as_bytes(), NOW_MS).expect("decodes"),
            &ours,
        );
        if v["expect"] == "reserialized_equals_expected" {
            let expected: Vec<Value> =
                serde_json::from_str(v["expected_output_text"].as_str().unwrap()).unwrap();
            let has_bt = view.iter().any(|r| r.get("bt").is_some());
            assert_eq!(
                as_wakaama_reserializes(test_id, v["uri"].as_str(), &ours, has_bt),
                model(&expected, &JSON_LABELS, NOW_S),
                "expected output"
            );
        }
    });
}

/// Hand-written expectations for the vectors whose meaning matters most to us.
#[test]
fn wakaama_key_vectors_by_hand() {
    let cbor: Value = serde_json::from_str(include_str!(
        "../fixtures/lwm2m/wakaama/senml_cbor_vectors.json"
    ))
    .unwrap();
    let json: Value = serde_json::from_str(include_str!(
        "../fixtures/lwm2m/wakaama/senml_json_vectors.json"
    ))
    .unwrap();
    let cbor_input = |i: usize| hex(cbor["vectors"][i]["input_hex"].as_str().unwrap());

    // #0, test 1: the Device object (OMA table 7.4.4-2): readings and device status.
    let device = cbor_input(0);
    let d = decode_lwm2m(&device, NOW_MS).unwrap();
    assert_eq!(d.readings.len(), 10);
    let battery = d.readings.iter().find(|r| r.channel == "/3/0/9").unwrap();
    assert_eq!((battery.value, battery.ts_ms), (100.0, NOW_MS));
    let status = d.status.expect("device status");
    assert_eq!(status.battery_pct, Some(100));
    assert_eq!(status.firmware.as_deref(), Some("1.0"));
    assert_eq!(status.error_flags, Some(0), "/3/0/11/0 = 0: no error");
    assert_eq!(status.rssi_dbm, None);

    // #1, test 2: timestamped values (OMA table 7.4.4-3), bt 25462634 < 2**28: relative.
    let timestamped = cbor_input(1);
    let r = resolve_cbor(&timestamped, NOW_MS).unwrap();
    let got: Vec<_> = r
        .iter()
        .map(|r| (r.name.as_ref(), r.time_s - NOW_S, r.value.clone()))
        .collect();
    assert_eq!(
        got,
        [
            ("/72/1/2", 25_462_629.0, Some(SenmlValue::Float(22.4))),
            ("/72/1/2", 25_462_604.0, Some(SenmlValue::Float(22.9))),
            ("/72/1/2", 25_462_584.0, Some(SenmlValue::Float(24.1))),
        ]
    );

    // Base value (test 22): v 1 + bv 1 = 2, in both syntaxes.
    let by_id = |file: &Value, id: &str| -> Value {
        file["vectors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["test_id"] == id)
            .cloned()
            .unwrap()
    };
    let v22 = by_id(&cbor, "22");
    let bytes = hex(v22["input_hex"].as_str().unwrap());
    let r = resolve_cbor(&bytes, NOW_MS).unwrap();
    assert_eq!(
        (r[0].name.as_ref(), r[0].value.clone()),
        ("/34/0/2", Some(SenmlValue::Float(2.0)))
    );
    let v22 = by_id(&json, "22");
    let text = v22["input_text"].as_str().unwrap();
    let r = resolve_json(text.as_bytes(), NOW_MS).unwrap();
    assert_eq!(r[0].value, Some(SenmlValue::Float(2.0)));

    // Opaque data (23a): CBOR bytes and JSON base64 (standard alphabet, padded).
    let v = by_id(&cbor, "23a");
    let bytes = hex(v["input_hex"].as_str().unwrap());
    let r = resolve_cbor(&bytes, NOW_MS).unwrap();
    assert_eq!(
        r[0].value,
        Some(SenmlValue::Data(vec![1, 2, 3, 4, 5].into()))
    );
    let v = by_id(&json, "23a");
    let text = v["input_text"].as_str().unwrap();
    let r = resolve_json(text.as_bytes(), NOW_MS).unwrap();
    assert_eq!(
        r[0].value,
        Some(SenmlValue::Data(vec![1, 2, 3, 4, 5].into()))
    );

    // JSON string escapes (24a), including an embedded NUL.
    let v = by_id(&json, "24a");
    let text = v["input_text"].as_str().unwrap();
    let r = resolve_json(text.as_bytes(), NOW_MS).unwrap();
    let Some(SenmlValue::String(s)) = &r[0].value else {
        panic!("24a is a string")
    };
    assert!(s.starts_with("\u{0}\u{1}\u{2}"));
    assert!(s.ends_with(" \"\\/\u{8}\u{c}\n\r\t"));
    assert_eq!(s.chars().count(), 33 + 8); // U+0000..=U+0020, then 8 escapes

    // Path joining: bn "/2/3" + n "/0" (test 9); bn "/5/0/1" + n "" (test 16).
    let v = by_id(&cbor, "9");
    let bytes = hex(v["input_hex"].as_str().unwrap());
    let r = resolve_cbor(&bytes, NOW_MS).unwrap();
    assert_eq!(r[0].name, "/2/3/0");
    let v = by_id(&cbor, "16");
    let bytes = hex(v["input_hex"].as_str().unwrap());
    let r = resolve_cbor(&bytes, NOW_MS).unwrap();
    assert_eq!(r[0].name, "/5/0/1");
}

fn leshan(id: &str) -> Value {
    let file: Value =
        serde_json::from_str(include_str!("../fixtures/lwm2m/leshan/leshan_vectors.json")).unwrap();
    file["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no Leshan vector {id}"))
}

fn leshan_bytes(v: &Value) -> Vec<u8> {
    match v.get("hex") {
        Some(h) => hex(h.as_str().unwrap()),
        None => v["text"].as_str().unwrap().as_bytes().to_vec(),
    }
}

#[test]
fn leshan_device_object_3_0() {
    let v = leshan("leshan-device-object-3-0");
    let input = leshan_bytes(&v);
    let ours = from_resolved(&resolve_lwm2m(&input, NOW_MS).unwrap());
    let expected = v["expected_records"].as_array().unwrap();
    assert_eq!(ours, model(expected, &JSON_LABELS, NOW_S));
    assert_eq!(
        ours,
        model(v["decoded_cbor2"].as_array().unwrap(), &CBOR_LABELS, NOW_S)
    );
    // Byte-identical to wakaama's CBOR test 1: two implementations agree.
    let wakaama: Value = serde_json::from_str(include_str!(
        "../fixtures/lwm2m/wakaama/senml_cbor_vectors.json"
    ))
    .unwrap();
    assert_eq!(v["hex"], wakaama["vectors"][0]["input_hex"]);
    check_readings(&decode_lwm2m(&input, NOW_MS).unwrap(), &ours);
}

#[test]
fn leshan_opaque() {
    let input = leshan_bytes(&leshan("leshan-opaque"));
    let r = resolve_lwm2m(&input, NOW_MS).unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].name, "/0/0/3");
    assert_eq!(
        r[0].value,
        Some(SenmlValue::Data(vec![0xab, 0xcd, 0xef].into()))
    );
    let d = decode_lwm2m(&input, NOW_MS).unwrap();
    assert!(d.readings.is_empty() && d.rejected.is_empty() && d.status.is_none());
}

#[test]
fn leshan_half_float() {
    let input = leshan_bytes(&leshan("leshan-half-float"));
    let d = decode_lwm2m(&input, NOW_MS).unwrap();
    assert_eq!(d.readings.len(), 1);
    assert_eq!(
        (d.readings[0].channel.as_ref(), d.readings[0].value),
        ("/3442/0/130", 300.0)
    );
}

#[test]
fn leshan_empty_array() {
    // An empty pack is an empty, valid result. (An empty payload is refused earlier, by
    // `decoders::decode`, as `DecodeError::Empty`; Leshan decodes it to an empty resource.)
    let input = leshan_bytes(&leshan("leshan-empty-array"));
    assert!(resolve_lwm2m(&input, NOW_MS).unwrap().is_empty());
    let d = decode_lwm2m(&input, NOW_MS).unwrap();
    assert!(d.readings.is_empty() && d.rejected.is_empty());
}

#[test]
fn leshan_send_timestamped_nodes_with_tag_4_base_time() {
    let input = leshan_bytes(&leshan("leshan-send-timestamped-nodes"));
    let r = resolve_lwm2m(&input, NOW_MS).unwrap();
    let got: Vec<_> = r
        .iter()
        .map(|r| {
            (
                r.name.as_ref(),
                r.time_s,
                r.value.clone(),
                r.time_from_receiver,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "/0/0/0",
                500_000_004.0,
                Some(SenmlValue::String("SampleString".into())),
                false
            ),
            (
                "/0/0/1",
                500_000_005.0,
                Some(SenmlValue::Bool(false)),
                false
            ),
            (
                "/0/0/2",
                500_000_006.0,
                Some(SenmlValue::Float(456.0)),
                false
            ),
        ]
    );
    let d = decode_lwm2m(&input, NOW_MS).unwrap();
    assert_eq!(d.readings.len(), 1);
    let reading = &d.readings[0];
    assert_eq!(
        (
            reading.channel.as_ref(),
            reading.ts_ms,
            reading.value,
            reading.quality
        ),
        ("/0/0/2", 500_000_006_000, 456.0, 0)
    );
}

#[test]
fn leshan_send_timestamped_json() {
    let input = leshan_bytes(&leshan("leshan-send-timestamped-json"));
    let r = resolve_lwm2m(&input, NOW_MS).unwrap();
    let got: Vec<_> = r
        .iter()
        .map(|r| (r.name.as_ref(), r.time_s, r.value.clone()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "/0/0/0",
                500_000_001.0,
                Some(SenmlValue::String("TestString".into()))
            ),
            ("/0/1/1", 500_000_002.0, Some(SenmlValue::Bool(true))),
            ("/0/1/2", 500_000_002.0, Some(SenmlValue::Float(123.0))),
        ]
    );
}

#[test]
fn leshan_timestamped_resources_json() {
    let input = leshan_bytes(&leshan("leshan-timestamped-resources-json"));
    let d = decode_lwm2m(&input, NOW_MS).unwrap();
    let got: Vec<_> = d
        .readings
        .iter()
        .map(|r| (r.channel.as_ref(), r.ts_ms, r.value))
        .collect();
    // 268500000 >= 2**28: absolute times.
    assert_eq!(
        got,
        [
            ("/1024/0/1", 268_500_000_000, 22.9),
            ("/1024/0/1", 268_500_010_000, 22.4),
            ("/1024/0/1", 268_500_020_000, 24.1),
        ]
    );
}

#[test]
fn leshan_legacy_oma_json_timestamped() {
    // LwM2M 1.0 JSON (`e` array, t relative to bt). Leshan expects, newest first:
    // 22.4 @25462629, 22.9 @25462604, 24.1 @25462584 (raw bt + t). We keep payload order and,
    // as bt + t < 2**28, take the times relative to now (RFC 8428 section 4.5.3).
    let input = leshan_bytes(&leshan("leshan-oma-json-timestamped"));
    let r = resolve_lwm2m(&input, NOW_MS).unwrap();
    let mut got: Vec<_> = r
        .iter()
        .map(|r| (r.name.as_ref(), r.time_s - NOW_S, r.value.clone()))
        .collect();
    got.sort_by(|a, b| b.1.total_cmp(&a.1));
    assert_eq!(
        got,
        [
            ("/1024/0/1", 25_462_629.0, Some(SenmlValue::Float(22.4))),
            ("/1024/0/1", 25_462_604.0, Some(SenmlValue::Float(22.9))),
            ("/1024/0/1", 25_462_584.0, Some(SenmlValue::Float(24.1))),
        ]
    );
    assert_eq!(decode_lwm2m(&input, NOW_MS).unwrap().readings.len(), 3);
}
