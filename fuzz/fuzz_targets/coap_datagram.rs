#![no_main]
//! The CoAP server on datagrams from a few peers (`[u16 LE length][bytes]` each), with the
//! WAL's answers in between: no panic, whatever arrives.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| meterflow_ingest::edge::coap::fuzz_datagrams(data));
