#![no_main]
//! The dlms decoder on any bytes, as a topic's payload without keys: framing (HDLC, M-Bus,
//! wrapper), block transfer, the DataNotification and its A-XDR body; no panic, and every row
//! it counts is built.

use libfuzzer_sys::fuzz_target;
use meterflow_decoders::Format;

fuzz_target!(|data: &[u8]| meterflow_decoders::fuzz_decode(Format::Dlms, data));
