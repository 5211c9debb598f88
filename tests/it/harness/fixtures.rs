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
