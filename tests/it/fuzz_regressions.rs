//! The fuzz targets' inputs that matter, in the test command: every seed (`fuzz/seeds/`) and
//! every input that once made a target fail (`fuzz/regressions/`), through the same entry
//! points as the targets in `fuzz/fuzz_targets/`. Fuzzing itself runs in `benches/fuzz.sh`.

use std::path::Path;

use meterflow_decoders::Format;

/// Runs one input through the entry point of `target`.
fn run(target: &str, data: &[u8]) {
    let decoder = |format| meterflow_decoders::fuzz_decode(format, data);
    match target {
        "decode_pb" => decoder(Format::Pb),
        "decode_json" => decoder(Format::Json),
        "decode_cbor" => decoder(Format::Cbor),
        "decode_senml_json" => decoder(Format::Senml),
        "decode_senml_cbor" => decoder(Format::SenmlCbor),
        "decode_dsmr" => decoder(Format::Dsmr),
        "decode_lwm2m" => decoder(Format::Lwm2m),
        "decode_dlms" => decoder(Format::Dlms),
        "dlms_ciphered" => meterflow_decoders::dlms::fuzz_ciphered(data),
        "dlms_axdr" => meterflow_decoders::dlms::fuzz_axdr(data),
        "dlms_frame" => meterflow_decoders::dlms::fuzz_frame(data),
        "coap_datagram" => meterflow_ingest::edge::coap::fuzz_datagrams(data),
        "coaps_datagrams" => meterflow_ingest::edge::coap::dtls::fuzz_datagrams(data),
        "mqtt_connection" => meterflow_ingest::edge::mqtt::fuzz_connection(data),
        "wal_segment" => meterflow_storage::wal::fuzz_segment(data),
        "config_toml" => {
            if let Ok(text) = std::str::from_utf8(data) {
                if let Ok(config) = meterflow_ingest::config::Config::from_toml(text) {
                    let _ = config.validate();
                }
            }
        }
        other => panic!("no entry point for fuzz target {other}: add it here"),
    }
}

fn replay(root: &Path) -> usize {
    let mut inputs = 0;
    let Ok(targets) = std::fs::read_dir(root) else {
        return 0;
    };
    for target in targets.flatten().filter(|e| e.path().is_dir()) {
        let name = target.file_name().to_string_lossy().into_owned();
        for input in std::fs::read_dir(target.path()).unwrap().flatten() {
            let data = std::fs::read(input.path()).unwrap();
            run(&name, &data);
            inputs += 1;
        }
    }
    inputs
}

#[test]
fn every_seed_and_regression_input_passes_its_target() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let seeds = replay(&fuzz.join("seeds"));
    assert!(seeds >= 15, "the seeds are there ({seeds})");
    replay(&fuzz.join("regressions"));
    // The MQTT codec catches a panic of rumqttd's reader (and counts it); the fuzzer's panic
    // hook aborts on it instead. Here it must not have happened either.
    assert_eq!(
        meterflow_ingest::edge::mqtt::codec::CODEC_PANICS
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "an input made the MQTT codec panic"
    );
    assert_eq!(
        meterflow_ingest::edge::coap::dtls::DTLS_PANICS.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "an input made the DTLS library panic"
    );
}
