//! RFC 8428 examples (fixtures/senml/rfc8428, from core-wg/senml-spec): every example that has
//! an `exN.gen.resolved.json` must resolve to exactly those records, and the CBOR forms
//! (ex3 = RFC 8428 section 6, ex5) to the same records as their JSON forms.
//!
//! Floats are compared exactly. That is sound here: the generator prints every time and value
//! with enough digits to name one binary64 (e.g. `1.276020071001e+09`); serde_json reads such
//! short decimals (significand below 2**53, exponent within 22) correctly rounded; and adding an
//! integer number of seconds to a base time near 1.3e9 is exact in binary64 (the spacing there
//! is 2**-22 s, which divides 1 s), so `bt + t` lands on the very double the resolved file names.
//! Records without a time resolve against "now": the generator's now was 1498780179 s (ex1,
//! ex2, ex9) and 1499109309 s (ex7), so those tests pass that as `now_ms`; all other examples
//! get an unrelated `now_ms` to show they do not depend on it.
//!
//! Also here: property tests that arbitrary and mutated input never panics the decoders.

use meterflow_decoders::senml::{
    decode_cbor, decode_json, decode_lwm2m, resolve_cbor, resolve_json, resolve_lwm2m,
    ResolvedRecord, SenmlValue,
};
use meterflow_decoders::Position;
use proptest::prelude::*;
use serde_json::Value;

const GENERATOR_NOW_MS: i64 = 1_498_780_179_000;
const GENERATOR_NOW_EX7_MS: i64 = 1_499_109_309_000;
const UNRELATED_NOW_MS: i64 = 1_700_000_000_000;

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!("../fixtures/senml/rfc8428/", $name))
    };
}

/// The comparable content of a resolved record.
#[derive(Debug, PartialEq)]
struct Rec {
    name: String,
    unit: Option<String>,
    time_s: f64,
    value: Option<Val>,
}

#[derive(Debug, PartialEq)]
enum Val {
    F(f64),
    S(String),
    B(bool),
    D(Vec<u8>),
}

fn from_resolved(records: &[ResolvedRecord<'_>]) -> Vec<Rec> {
    records
        .iter()
        .map(|r| Rec {
            name: r.name.to_string(),
            unit: r.unit.as_deref().map(str::to_string),
            time_s: r.time_s,
            value: r.value.as_ref().map(|v| match v {
                SenmlValue::Float(x) => Val::F(*x),
                SenmlValue::String(s) => Val::S(s.to_string()),
                SenmlValue::Bool(b) => Val::B(*b),
                SenmlValue::Data(d) => Val::D(d.to_vec()),
            }),
        })
        .collect()
}

/// Reads an `exN.gen.resolved.json` (fields n, u, t, v, vs, vb; others such as `l` ignored).
fn from_expected(text: &str) -> Vec<Rec> {
    let records: Vec<Value> = serde_json::from_str(text).expect("fixture is JSON");
    records
        .iter()
        .map(|r| Rec {
            name: r["n"]
                .as_str()
                .expect("resolved records have n")
                .to_string(),
            unit: r
                .get("u")
                .map(|u| u.as_str().expect("u is a string").to_string()),
            time_s: r["t"].as_f64().expect("resolved records have t"),
            value: if let Some(v) = r.get("v") {
                Some(Val::F(v.as_f64().expect("v is a number")))
            } else if let Some(v) = r.get("vs") {
                Some(Val::S(v.as_str().expect("vs is a string").to_string()))
            } else {
                r.get("vb")
                    .map(|v| Val::B(v.as_bool().expect("vb is a bool")))
            },
        })
        .collect()
}

/// Resolves `input` (JSON) and compares with `resolved`; also checks that `decode_json`
/// accepts every record and turns exactly the numeric ones into readings.
fn check_json(example: &str, input: &str, resolved: &str, now_ms: i64) {
    let got = resolve_json(input.as_bytes(), now_ms)
        .unwrap_or_else(|e| panic!("{example}: resolve failed: {e}"));
    assert_eq!(
        from_resolved(&got),
        from_expected(resolved),
        "{example}: resolved records"
    );
    let decoded = decode_json(input.as_bytes(), now_ms)
        .unwrap_or_else(|e| panic!("{example}: decode failed: {e}"));
    assert!(
        decoded.rejected.is_empty(),
        "{example}: {:?}",
        decoded.rejected
    );
    let numeric: Vec<_> = got
        .iter()
        .filter_map(|r| match r.value {
            Some(SenmlValue::Float(v)) => Some((r.ts_ms(), v)),
            _ => None,
        })
        .collect();
    let readings: Vec<_> = decoded
        .readings
        .iter()
        .map(|r| (r.ts_ms, r.value))
        .collect();
    assert_eq!(readings, numeric, "{example}: readings");
}

#[test]
fn ex1_single_datapoint() {
    check_json(
        "ex1",
        fixture!("ex1.gen.json"),
        fixture!("ex1.gen.resolved.json"),
        GENERATOR_NOW_MS,
    );
    let r = resolve_json(fixture!("ex1.gen.json").as_bytes(), GENERATOR_NOW_MS).unwrap();
    assert!(r[0].time_from_receiver, "ex1 has neither t nor bt");
    // No base name: the channel is the whole name.
    let d = decode_json(fixture!("ex1.gen.json").as_bytes(), GENERATOR_NOW_MS).unwrap();
    assert_eq!(d.readings[0].channel, "urn:dev:ow:10e2073a01080063");
    assert_eq!(d.readings[0].unit, "Cel");
    assert_eq!(d.meter_id, None);
}

#[test]
fn ex2_multiple_datapoints() {
    check_json(
        "ex2",
        fixture!("ex2.gen.json"),
        fixture!("ex2.gen.resolved.json"),
        GENERATOR_NOW_MS,
    );
    // The name after the base name is the channel.
    let d = decode_json(fixture!("ex2.gen.json").as_bytes(), GENERATOR_NOW_MS).unwrap();
    let channels: Vec<_> = d.readings.iter().map(|r| r.channel.as_ref()).collect();
    assert_eq!(channels, ["voltage", "current"]);
}

#[test]
fn ex3_base_version_unit_time() {
    check_json(
        "ex3",
        fixture!("ex3.gen.json"),
        fixture!("ex3.gen.resolved.json"),
        UNRELATED_NOW_MS,
    );
}

#[test]
fn ex3_cbor_equals_resolved_and_json_form() {
    let cbor = include_bytes!("../fixtures/senml/rfc8428/ex3.gen.cbor");
    let from_cbor = resolve_cbor(cbor, UNRELATED_NOW_MS).expect("ex3 CBOR resolves");
    assert_eq!(
        from_resolved(&from_cbor),
        from_expected(fixture!("ex3.gen.resolved.json"))
    );
    let from_json = resolve_json(fixture!("ex3.gen.json").as_bytes(), UNRELATED_NOW_MS).unwrap();
    // Whole records, including the time_from_receiver flag: the CBOR's explicit `t: 0` on the
    // last record and the JSON's missing `t` mean the same thing under `bt`.
    assert_eq!(from_cbor, from_json);
    let d = decode_cbor(cbor, UNRELATED_NOW_MS).unwrap();
    assert_eq!(
        d.readings,
        decode_json(fixture!("ex3.gen.json").as_bytes(), UNRELATED_NOW_MS)
            .unwrap()
            .readings
    );
    assert_eq!(d.readings[1].ts_ms, 1_276_020_071_001);
}

#[test]
fn ex4_relative_times_under_base_time() {
    check_json(
        "ex4",
        fixture!("ex4.gen.json"),
        fixture!("ex4.gen.resolved.json"),
        UNRELATED_NOW_MS,
    );
}

#[test]
fn ex5_multiple_measurements() {
    check_json(
        "ex5",
        fixture!("ex5.gen.json"),
        fixture!("ex5.gen.resolved.json"),
        UNRELATED_NOW_MS,
    );
}

#[test]
fn ex5_cbor_equals_resolved_and_json_form() {
    let cbor = include_bytes!("../fixtures/senml/rfc8428/ex5.gen.cbor");
    let from_cbor = resolve_cbor(cbor, UNRELATED_NOW_MS).expect("ex5 CBOR resolves");
    assert_eq!(
        from_resolved(&from_cbor),
        from_expected(fixture!("ex5.gen.resolved.json"))
    );
    let from_json = resolve_json(fixture!("ex5.gen.json").as_bytes(), UNRELATED_NOW_MS).unwrap();
    assert_eq!(from_cbor, from_json);
}

#[test]
fn ex6_collection_of_resources() {
    check_json(
        "ex6",
        fixture!("ex6.gen.json"),
        fixture!("ex6.gen.resolved.json"),
        UNRELATED_NOW_MS,
    );
}

#[test]
fn ex7_multiple_data_types() {
    // The generator's resolved file leaves out the `vd` record; we resolve it (RFC 8428
    // section 4.6 keeps every record), so compare the first three and check the fourth here.
    let input = fixture!("ex7.gen.json");
    let got = from_resolved(&resolve_json(input.as_bytes(), GENERATOR_NOW_EX7_MS).unwrap());
    let want = from_expected(fixture!("ex7.gen.resolved.json"));
    assert_eq!(got.len(), 4);
    assert_eq!(got[..3], want[..]);
    assert_eq!(
        got[3],
        Rec {
            name: "urn:dev:ow:10e2073a01080063:nfv-reader".into(),
            unit: None,
            time_s: 1_499_109_309.0,
            value: Some(Val::D(b"hi \n".to_vec())), // base64url "aGkgCg"
        }
    );
    // Only the numeric record becomes a reading; the others are skipped, not rejected.
    let d = decode_json(input.as_bytes(), GENERATOR_NOW_EX7_MS).unwrap();
    assert_eq!(d.readings.len(), 1);
    assert_eq!(
        (d.readings[0].channel.as_ref(), d.readings[0].value),
        ("temp", 23.1)
    );
    assert!(d.rejected.is_empty());
}

#[test]
fn ex8_unknown_extension_field_is_ignored() {
    check_json(
        "ex8",
        fixture!("ex8.gen.json"),
        fixture!("ex8.gen.resolved.json"),
        UNRELATED_NOW_MS,
    );
}

#[test]
fn ex9_actuator_with_base_only_record() {
    check_json(
        "ex9",
        fixture!("ex9.gen.json"),
        fixture!("ex9.gen.resolved.json"),
        GENERATOR_NOW_MS,
    );
}

#[test]
fn ex10_two_measurements() {
    check_json(
        "ex10",
        fixture!("ex10.gen.json"),
        fixture!("ex10.gen.resolved.json"),
        UNRELATED_NOW_MS,
    );
}

#[test]
fn ex11_two_measurements_with_base_name() {
    check_json(
        "ex11",
        fixture!("ex11.gen.json"),
        fixture!("ex11.gen.resolved.json"),
        UNRELATED_NOW_MS,
    );
    // No `n`: the base name is the channel.
    let d = decode_json(fixture!("ex11.gen.json").as_bytes(), UNRELATED_NOW_MS).unwrap();
    assert!(d
        .readings
        .iter()
        .all(|r| r.channel == "urn:dev:ow:10e2073a01080063"));
}

#[test]
fn ex12_actuator_lights_on() {
    check_json(
        "ex12",
        fixture!("ex12.gen.json"),
        fixture!("ex12.gen.resolved.json"),
        UNRELATED_NOW_MS,
    );
}

#[test]
fn ex13_actuator_dim_then_off() {
    // No resolved file in the origin; RFC 8428 section 5.1.7 says: dim both lights now
    // (at bt), switch them off 100 ms later.
    let got = resolve_json(fixture!("ex13.gen.json").as_bytes(), UNRELATED_NOW_MS).unwrap();
    let summary: Vec<_> = got
        .iter()
        .map(|r| {
            (
                r.name.as_ref(),
                r.ts_ms(),
                r.unit.as_deref(),
                r.value.clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "2001:db8::3",
                1_320_078_429_000,
                Some("/"),
                Some(SenmlValue::Float(0.5))
            ),
            (
                "2001:db8::4",
                1_320_078_429_000,
                Some("/"),
                Some(SenmlValue::Float(0.5))
            ),
            (
                "2001:db8::3",
                1_320_078_429_100,
                Some("/"),
                Some(SenmlValue::Float(0.0))
            ),
            (
                "2001:db8::4",
                1_320_078_429_100,
                Some("/"),
                Some(SenmlValue::Float(0.0))
            ),
        ]
    );
}

#[test]
fn a_bad_record_is_an_error_in_the_strict_view_and_a_rejection_in_decode() {
    let payload = br#"[{"bn":"d:","n":"a","v":1},{"n":"b","v":"x"}]"#;
    let e = resolve_json(payload, UNRELATED_NOW_MS).unwrap_err();
    assert_eq!(e.position(), Some(Position::Record(1)));
    let d = decode_json(payload, UNRELATED_NOW_MS).unwrap();
    assert_eq!(d.readings.len(), 1);
    assert_eq!(d.rejected.len(), 1);
    assert_eq!(d.rejected[0].position, Position::Record(1));
}

fn mutate(base: &[u8], edits: &[(usize, u8)], cut: usize) -> Vec<u8> {
    let mut bytes = base.to_vec();
    for &(at, b) in edits {
        if !bytes.is_empty() {
            let i = at % bytes.len();
            bytes[i] = b;
        }
    }
    bytes.truncate(cut % (bytes.len() + 1));
    bytes
}

fn run_all(bytes: &[u8]) {
    let _ = decode_cbor(bytes, UNRELATED_NOW_MS);
    let _ = decode_json(bytes, UNRELATED_NOW_MS);
    let _ = decode_lwm2m(bytes, UNRELATED_NOW_MS);
    let _ = resolve_cbor(bytes, UNRELATED_NOW_MS);
    let _ = resolve_json(bytes, UNRELATED_NOW_MS);
    let _ = resolve_lwm2m(bytes, UNRELATED_NOW_MS);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        run_all(&bytes);
    }

    #[test]
    fn random_bytes_after_an_array_header_never_panic(
        head in prop::sample::select(vec![0x81u8, 0x82, 0x83, 0x98, 0x9f, 0x5b]),
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut payload = vec![head];
        payload.extend(bytes);
        run_all(&payload);
    }

    #[test]
    fn mutated_cbor_never_panics(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        cut in any::<usize>(),
    ) {
        run_all(&mutate(include_bytes!("../fixtures/senml/rfc8428/ex3.gen.cbor"), &edits, cut));
        run_all(&mutate(include_bytes!("../fixtures/senml/rfc8428/ex5.gen.cbor"), &edits, cut));
    }

    #[test]
    fn mutated_json_never_panics(
        edits in proptest::collection::vec(
            (any::<usize>(), prop::sample::select(b"[]{}\",:0123456789.e-_\\nvbtsu ".to_vec())),
            0..6,
        ),
        cut in any::<usize>(),
    ) {
        run_all(&mutate(fixture!("ex3.gen.json").as_bytes(), &edits, cut));
        run_all(&mutate(fixture!("ex7.gen.json").as_bytes(), &edits, cut));
    }
}
