#![no_main]
//! DLMS framing alone (HDLC, M-Bus, the wrapper header) and the system title read from a
//! push's first bytes, as the wrapper listener does: no panic, no unbounded allocation.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| meterflow_decoders::dlms::fuzz_frame(data));
