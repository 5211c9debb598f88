//! The decoders against real payloads of other projects, with the values their own tests
//! expect (`decoders/tests/fixtures/*/SOURCES.md` names each source), as one test binary.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly

mod dsmr;
mod lwm2m;
mod senml;
