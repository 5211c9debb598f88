#![no_main]
//! One MQTT connection's bytes through the codec and the session, bytes out: no panic.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| meterflow_ingest::edge::mqtt::fuzz_connection(data));
