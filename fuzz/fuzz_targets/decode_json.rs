#![no_main]
//! The json decoder on any bytes: no panic, and every row it counts is built.

use libfuzzer_sys::fuzz_target;
use meterflow_decoders::Format;

fuzz_target!(|data: &[u8]| meterflow_decoders::fuzz_decode(Format::Json, data));
