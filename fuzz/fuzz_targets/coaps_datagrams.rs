#![no_main]
//! The DTLS sessions of the coaps listener on datagrams from a few peers (`[peer][u16 LE
//! length][bytes]` each), with the housekeeping in between: no panic, whatever arrives.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| meterflow_ingest::edge::coap::dtls::fuzz_datagrams(data));
