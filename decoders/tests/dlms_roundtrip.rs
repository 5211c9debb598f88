//! Round trip against an independent implementation (issue 22): Gurux's DLMS library for
//! Python (PyPI `gurux-dlms`, pinned and installed by deploy/run-tests.sh) makes ciphered
//! pushes with random keys, system titles, invocation counters, objects and values
//! (`dlms_roundtrip.py`: the A-XDR, the DataNotification, the AES-GCM ciphering and the
//! framings are all the library's), and the decoder must give back exactly what was asked
//! for: every numeric object a reading, channel = its OBIS code, value = raw × 10^scaler as
//! the double closest to that decimal (worked out here from the decimal text, not by the
//! decoder's arithmetic), unit = the symbol of its DLMS unit code, the time the script
//! computed from the date-time it gave the library, and the push's system title, security
//! control and invocation counter. Each push is decoded as the bare APDU and, for three in
//! four, framed as the library framed it too (IEC 62056-4-7 wrapper, HDLC frames, or
//! general-block-transfer blocks). A damaged push is refused: with security 0x30 or 0x10
//! (which carry a tag) a flipped byte of the content, the tag, the invocation counter or the
//! security control, or another authentication key, is `auth_failed`; a flipped byte of the
//! system title is `unknown_system_title` (for 0x20 too, whose damaged content no receiver can
//! tell: it has no tag).
//!
//! Values of 64-bit types stay within ±2^53 (every meter's range) in the main test; the last
//! test takes them beyond it too.
//!
//! Python and the library are required, not optional: without them this test fails and
//! says how to install them. `METERFLOW_DLMS_ROUNDTRIP_SEED` replays another seed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use meterflow_decoders::dlms::{decode_push, Framing, KeyLookup, Keys, Push};
use meterflow_decoders::{DecodeError, Refusal};
use meterflow_proto::quality;
use serde_json::Value;

/// Pushes per run.
const PUSHES: usize = 300;
/// The seed of the pushes, unless `METERFLOW_DLMS_ROUNDTRIP_SEED` gives another.
const SEED: u64 = 20_240_622;
/// The time of receipt handed to the decoder (what a push without a date-time is stamped).
const RECEIVED_MS: i64 = 1_750_000_000_000;
/// The library version deploy/run-tests.sh installs.
const GURUX: &str = "gurux-dlms==1.0.203";

fn install_hint() -> String {
    format!(
        "deploy/run-tests.sh installs it; by hand: python3 -m pip install '{GURUX}' \
         (add --break-system-packages on a Debian python3, or use a venv whose python3 is \
         first on PATH)"
    )
}

/// The script's pushes, one JSON object each.
fn generate(seed: u64, count: usize, wide: bool) -> Vec<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dlms_roundtrip.py");
    let mut python = Command::new("python3");
    python
        .arg(&script)
        .arg(seed.to_string())
        .arg(count.to_string());
    if wide {
        python.arg("--wide");
    }
    let out = match python.output() {
        Ok(out) => out,
        Err(e) => panic!(
            "cannot run python3 ({e}): this test needs python3 and the PyPI package {GURUX}; \
             install python3 and python3-pip (Debian), then the package: {}",
            install_hint()
        ),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(3) {
        panic!(
            "python3 has no gurux_dlms, the independent DLMS implementation of this test: {}\n{stderr}",
            install_hint()
        );
    }
    assert!(
        out.status.success(),
        "{} failed ({}):\n{stderr}",
        script.display(),
        out.status
    );
    let pushes: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(pushes.len(), count, "{stderr}");
    pushes
}

fn hex(text: &str) -> Vec<u8> {
    assert!(text.len().is_multiple_of(2), "{text}");
    (0..text.len() / 2)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

fn hex_of(v: &Value, field: &str) -> Vec<u8> {
    hex(v[field].as_str().unwrap())
}

fn key(v: &Value, field: &str) -> [u8; 16] {
    hex_of(v, field).try_into().unwrap()
}

/// A key store that knows this push's system title and no other.
fn lookup(title: [u8; 8], keys: Keys) -> impl Fn(&[u8; 8]) -> KeyLookup {
    move |st: &[u8; 8]| {
        if *st == title {
            KeyLookup::Keys(keys.clone())
        } else {
            KeyLookup::Unknown
        }
    }
}

/// `A-B:C.D.E`, with `.F` unless F is 255, from the script's `A.B.C.D.E.F`.
fn channel(obis: &str) -> String {
    let p: Vec<&str> = obis.split('.').collect();
    assert_eq!(p.len(), 6, "{obis}");
    let base = format!("{}-{}:{}.{}.{}", p[0], p[1], p[2], p[3], p[4]);
    if p[5] == "255" {
        base
    } else {
        format!("{base}.{}", p[5])
    }
}

/// The symbols of the DLMS unit codes the script sends (IEC 62056-6-2 unit table); 255 is
/// a count, no unit.
fn unit_symbol(code: u64) -> &'static str {
    match code {
        13 | 14 => "m3",
        27 => "W",
        28 => "VA",
        29 => "var",
        30 => "Wh",
        32 => "varh",
        33 => "A",
        35 => "V",
        44 => "Hz",
        255 => "",
        other => panic!("unit code {other}: add its symbol here"),
    }
}

/// What the readings of a push must be: (channel, value, unit), time and quality.
struct Expected {
    readings: Vec<(String, f64, &'static str)>,
    ts_ms: i64,
    quality: u16,
}

fn expected(v: &Value) -> Expected {
    let readings = v["expect"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let raw = e["raw"].as_str().unwrap();
            let scaler = e["scaler"].as_i64().unwrap();
            // The decimal raw × 10^scaler, read as the closest double.
            let value: f64 = format!("{raw}e{scaler}").parse().unwrap();
            (
                channel(e["obis"].as_str().unwrap()),
                value,
                unit_symbol(e["unit_code"].as_u64().unwrap()),
            )
        })
        .collect();
    let (ts_ms, quality) = match &v["date_time"] {
        Value::Null => (RECEIVED_MS, quality::TIME_FROM_RECEIVER),
        dt => (
            dt["utc_ms"].as_i64().unwrap(),
            if dt["deviation_known"].as_bool().unwrap() {
                0
            } else {
                quality::CLOCK_INVALID
            },
        ),
    };
    Expected {
        readings,
        ts_ms,
        quality,
    }
}

/// The differences between a decoded push and what the script asked for (empty: none).
fn compare(v: &Value, push: &Push, want: &Expected) -> Vec<String> {
    let mut diffs = Vec::new();
    let title: [u8; 8] = hex_of(v, "system_title").try_into().unwrap();
    match push.security {
        Some(s) => {
            if s.system_title != title {
                diffs.push(format!("system title {:02x?}", s.system_title));
            }
            if u64::from(s.invocation_counter) != v["invocation_counter"].as_u64().unwrap() {
                diffs.push(format!("invocation counter {}", s.invocation_counter));
            }
            if u64::from(s.control) != v["security"].as_u64().unwrap() {
                diffs.push(format!("security control 0x{:02X}", s.control));
            }
            if s.tag != 0xDB {
                diffs.push(format!("ciphering tag 0x{:02X}, DB expected", s.tag));
            }
        }
        None => diffs.push("no security header".into()),
    }
    let invoke = push.long_invoke_id.map(|id| id & 0x00FF_FFFF);
    if invoke.map(u64::from) != v["long_invoke_id"].as_u64() {
        diffs.push(format!("long invoke id {:?}", push.long_invoke_id));
    }
    let d = &push.decoded;
    if !d.rejected.is_empty() {
        diffs.push(format!("rejected parts {:?}", d.rejected));
    }
    if !d.series.is_empty() {
        diffs.push(format!("{} series", d.series.len()));
    }
    let got: Vec<(String, f64, &str)> = d
        .readings
        .iter()
        .map(|r| (r.channel.to_string(), r.value, r.unit.as_ref()))
        .collect();
    if got.len() != want.readings.len() {
        diffs.push(format!(
            "{} readings, {} expected: got {got:?}",
            got.len(),
            want.readings.len()
        ));
    }
    for (i, (g, w)) in got.iter().zip(&want.readings).enumerate() {
        let e = &v["expect"][i];
        // Bit for bit: the closest double, and the same sign of zero.
        if g.0 != w.0 || g.1.to_bits() != w.1.to_bits() || g.2 != w.2 {
            diffs.push(format!(
                "object {i} ({} {} raw {} scaler {} unit {}): got {} = {:?} {:?}, expected {} = {:?} {:?}",
                e["obis"], e["type"].as_str().unwrap(), e["raw"].as_str().unwrap(),
                e["scaler"], e["unit_code"], g.0, g.1, g.2, w.0, w.1, w.2
            ));
        }
    }
    for r in &d.readings {
        if r.ts_ms != want.ts_ms || r.quality != want.quality {
            diffs.push(format!(
                "{} at {} quality {}, expected {} quality {} ({})",
                r.channel, r.ts_ms, r.quality, want.ts_ms, want.quality, v["date_time"]
            ));
            break;
        }
    }
    diffs
}

fn is_refusal(r: &Result<Push, DecodeError>, want: Refusal) -> bool {
    matches!(r, Err(DecodeError::Refused { refusal, .. }) if *refusal == want)
}

/// Where the ciphered content of a general-glo-ciphering APDU starts (after tag, system
/// title, length, security control and invocation counter).
fn content_start(apdu: &[u8]) -> usize {
    assert_eq!(&apdu[..2], [0xDB, 8]);
    let len_at = 10;
    let len_bytes = match apdu[len_at] {
        b if b < 0x80 => 1,
        b => 1 + usize::from(b & 0x7F),
    };
    len_at + len_bytes + 1 + 4
}

/// Damaged copies of a push: each must be refused as `refusal`.
fn damaged(v: &Value, apdu: &[u8]) -> Vec<(String, Vec<u8>, Refusal)> {
    let start = content_start(apdu);
    let mut out = Vec::new();
    let mut flip = |what: &str, at: usize, refusal: Refusal| {
        let mut bad = apdu.to_vec();
        bad[at] ^= 0x01;
        out.push((format!("{what} (byte {at}) flipped"), bad, refusal));
    };
    // Every push: another system title belongs to no meter.
    flip("a system title byte", 2 + 7, Refusal::UnknownSystemTitle);
    // 0x30 and 0x10 carry a tag over the content (and the counter, through the IV).
    if v["security"] != 0x20 {
        let tag_at = apdu.len() - 12;
        flip(
            "a content byte half-way",
            start + (tag_at - start) / 2,
            Refusal::AuthFailed,
        );
        flip("the first content byte", start, Refusal::AuthFailed);
        flip("the last tag byte", apdu.len() - 1, Refusal::AuthFailed);
        flip("an invocation counter byte", start - 1, Refusal::AuthFailed);
        flip("the security control byte", start - 5, Refusal::AuthFailed);
    }
    out
}

#[derive(Default)]
struct Tally {
    pushes: usize,
    decodes: usize,
    values: usize,
    refusals: usize,
    library_defects: usize,
    kinds: BTreeMap<String, usize>,
    failures: Vec<String>,
}

impl Tally {
    fn count(&mut self, kind: String) {
        *self.kinds.entry(kind).or_default() += 1;
    }
}

/// A failed decode, with all it takes to replay it.
fn report(v: &Value, name: &str, what: &str) -> String {
    let bytes = if name == "apdu" {
        "apdu_hex"
    } else {
        "payload_hex"
    };
    format!(
        "push {} ({name}, security {}, {} body): {what}\n  bytes {}\n  keys ek {} ak {}",
        v["seq"],
        v["security"],
        v["shape"].as_str().unwrap(),
        v[bytes].as_str().unwrap(),
        v["ek"].as_str().unwrap(),
        v["ak"].as_str().unwrap()
    )
}

fn check(v: &Value, t: &mut Tally) {
    let seq = &v["seq"];
    let title: [u8; 8] = hex_of(v, "system_title").try_into().unwrap();
    let keys = Keys {
        ek: key(v, "ek"),
        ak: Some(key(v, "ak")),
    };
    let apdu = hex_of(v, "apdu_hex");
    let payload = hex_of(v, "payload_hex");
    let want = expected(v);
    let framing = v["framing"].as_str().unwrap();
    t.pushes += 1;
    t.count(format!(
        "security 0x{:02X}",
        v["security"].as_u64().unwrap()
    ));
    t.count(format!("framing {framing}"));
    if v["blocks"].as_u64().unwrap() > 1 {
        t.count("framing blocks > 1".into());
    }
    // Block transfers Gurux got wrong and the script made again with another PDU size.
    t.library_defects += v["library_defects"].as_u64().unwrap() as usize;
    t.count(format!("body {}", v["shape"].as_str().unwrap()));
    t.count(format!(
        "time from {}",
        v["date_time"]["in"].as_str().unwrap_or("receipt")
    ));
    for e in v["expect"].as_array().unwrap() {
        t.count(format!("type {}", e["type"].as_str().unwrap()));
        t.count(format!("scaler {}", e["scaler"]));
    }

    let store = lookup(title, keys.clone());
    let mut inputs = vec![("apdu", &apdu)];
    if framing != "apdu" {
        inputs.push((framing, &payload));
    }
    for (name, bytes) in inputs {
        t.decodes += 1;
        match decode_push(bytes, RECEIVED_MS, &store, None) {
            Ok(push) => {
                let mut diffs = compare(v, &push, &want);
                let framed = match name {
                    "wrapper" => Framing::Wrapper,
                    "hdlc" => Framing::Hdlc,
                    _ => Framing::Raw,
                };
                if push.framing != framed {
                    diffs.push(format!("framing {:?}, {framed:?} expected", push.framing));
                }
                let blocks = if name == "blocks" {
                    v["blocks"].as_u64().unwrap()
                } else {
                    0
                };
                if push.blocks as u64 != blocks {
                    diffs.push(format!("{} blocks, {blocks} expected", push.blocks));
                }
                if diffs.is_empty() {
                    t.values += want.readings.len();
                } else {
                    t.failures.push(report(v, name, &diffs.join("; ")));
                }
            }
            Err(e) => t.failures.push(report(v, name, &e.to_string())),
        }
    }

    for (what, bad, refusal) in damaged(v, &apdu) {
        let got = decode_push(&bad, RECEIVED_MS, &store, None);
        if is_refusal(&got, refusal) {
            t.refusals += 1;
        } else {
            t.failures.push(format!(
                "push {seq} (security {}), {what}: {:?}, {} expected",
                v["security"],
                got.map(|p| p.decoded.readings.len()),
                refusal.as_str()
            ));
        }
    }
    // The right encryption key with another authentication key: the tag does not match.
    if v["security"] != 0x20 {
        let mut ak = keys.ak.unwrap();
        ak[0] ^= 0x80;
        let wrong = lookup(
            title,
            Keys {
                ek: keys.ek,
                ak: Some(ak),
            },
        );
        let got = decode_push(&apdu, RECEIVED_MS, &wrong, None);
        if is_refusal(&got, Refusal::AuthFailed) {
            t.refusals += 1;
        } else {
            t.failures.push(format!(
                "push {seq} (security {}) with another authentication key: {:?}, auth_failed expected",
                v["security"],
                got.map(|p| p.decoded.readings.len())
            ));
        }
    }
}

fn seed() -> u64 {
    std::env::var("METERFLOW_DLMS_ROUNDTRIP_SEED")
        .ok()
        .map_or(SEED, |s| {
            s.parse().expect("METERFLOW_DLMS_ROUNDTRIP_SEED: a number")
        })
}

/// Makes and checks `PUSHES` pushes; panics with every difference found.
fn round_trip(seed: u64, wide: bool) -> Tally {
    let pushes = generate(seed, PUSHES, wide);
    let mut t = Tally::default();
    for v in &pushes {
        check(v, &mut t);
    }
    eprintln!(
        "seed {seed}: {} pushes ({} decodes), {} values exact, {} damaged pushes refused, \
         {} defective block transfers of Gurux made again; {:?}",
        t.pushes, t.decodes, t.values, t.refusals, t.library_defects, t.kinds
    );
    assert!(
        t.failures.is_empty(),
        "seed {seed}: {} of {} checks failed:\n{}",
        t.failures.len(),
        t.decodes + t.refusals + t.failures.len(),
        t.failures.join("\n")
    );
    t
}

#[test]
fn pushes_made_by_gurux_decode_to_exactly_their_values() {
    let seed = seed();
    let t = round_trip(seed, false);
    // The run covers what it claims to.
    assert!(t.pushes >= 200);
    for kind in [
        "security 0x30",
        "security 0x20",
        "security 0x10",
        "framing apdu",
        "framing wrapper",
        "framing hdlc",
        "framing blocks",
        "framing blocks > 1",
        "body nested",
        "body flat",
        "time from notification",
        "time from clock",
        "time from receipt",
        "type int8",
        "type uint8",
        "type int16",
        "type uint16",
        "type int32",
        "type uint32",
        "type int64",
        "type uint64",
        "scaler -3",
        "scaler 3",
    ] {
        assert!(
            t.kinds.get(kind).copied().unwrap_or(0) >= 10,
            "seed {seed}: too few pushes or objects of {kind}: {:?}",
            t.kinds
        );
    }
}

/// The same with 64-bit values over their whole range (the test above keeps them within
/// ±2^53, where every meter counts): beyond 2^53 a raw value is not an exact double, so the
/// decoder parses the decimal rather than rounding twice (int64 7490934182599440749 with
/// scaler -3 is 7490934182599441, the double closest to 7490934182599440.749).
#[test]
fn pushes_with_64_bit_values_beyond_2_53_decode_to_exactly_their_values() {
    round_trip(seed(), true);
}
