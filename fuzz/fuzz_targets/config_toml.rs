#![no_main]
//! The config parser and its validation on any text: an error, never a panic.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(config) = meterflow_ingest::config::Config::from_toml(text) {
            let _ = config.validate();
            let _ = config.deprecated_keys();
        }
    }
});
