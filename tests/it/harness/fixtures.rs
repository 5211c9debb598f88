//! Payloads from other projects' test vectors.

/// The Leshan Device object pack (`AbstractSenMLTest`; wakaama's CBOR test 1 is the same
/// bytes), from `decoders/tests/fixtures/lwm2m/leshan/leshan_vectors.json`.
pub fn leshan_device_object() -> Vec<u8> {
    let vectors: serde_json::Value = serde_json::from_str(include_str!(
        "../../../decoders/tests/fixtures/lwm2m/leshan/leshan_vectors.json"
    ))
    .unwrap();
    let hex = vectors["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == "leshan-device-object-3-0")
        .unwrap()["hex"]
        .as_str()
        .unwrap()
        .to_string();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// A hex file under `decoders/tests/fixtures/dlms/` (sources and licences in its
/// SOURCES.md) as bytes: whitespace and `#` comments are not data.
pub fn dlms_fixture(relative: &str) -> Vec<u8> {
    let text = std::fs::read_to_string(format!(
        "{}/decoders/tests/fixtures/dlms/{relative}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let digits: String = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(str::chars)
        .filter(char::is_ascii_hexdigit)
        .collect();
    (0..digits.len() / 2)
        .map(|i| u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// A hex file of the Tirol worked example (fneur/smart-meter-tirol, GPL-3.0 data; see
/// `decoders/tests/fixtures/dlms/SOURCES.md`) as bytes: `mbus_frames.hex` (the push as the
/// meter's M-Bus port sends it), `apdu_ciphered.hex`, `apdu_plain.hex`.
pub fn tirol(file: &str) -> Vec<u8> {
    dlms_fixture(&format!("fneur_smart_meter_tirol/{file}"))
}

/// The Tirol push's readings as stored for `meter`: (meter, channel, value, unit, ts), at
/// its own time (2021-07-19 15:46:35, UTC+2), in channel order.
pub fn tirol_rows(meter: &str) -> Vec<(String, String, f64, String, i64)> {
    let ts = 1_626_702_395_000;
    [
        ("1-0:1.7.0", 0.0, "W"),
        ("1-0:1.8.0", 9108.0, "Wh"),
        ("1-0:2.7.0", 0.0, "W"),
        ("1-0:2.8.0", 0.0, "Wh"),
        ("1-0:3.8.0", 96.0, "varh"),
        ("1-0:31.7.0", 0.0, "A"),
        ("1-0:32.7.0", 230.8, "V"),
        ("1-0:4.8.0", 9.0, "varh"),
    ]
    .into_iter()
    .map(|(c, v, u)| (meter.to_string(), c.to_string(), v, u.to_string(), ts))
    .collect()
}
