#![no_main]
//! A-XDR data alone (every type, nesting, compact arrays): no panic, no unbounded allocation.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| meterflow_decoders::dlms::fuzz_axdr(data));
