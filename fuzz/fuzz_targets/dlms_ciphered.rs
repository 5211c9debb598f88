#![no_main]
//! The dlms decoder with a key for every system title: the ciphering layer (lengths, security
//! control, tags), and for "encrypted only" pushes (no tag) the deciphered body; no panic.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| meterflow_decoders::dlms::fuzz_ciphered(data));
