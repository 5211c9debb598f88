#![no_main]
//! A WAL segment of any bytes (a corrupted file): the check at open and the reader agree,
//! and neither panics.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| meterflow_storage::wal::fuzz_segment(data));
