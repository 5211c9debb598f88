//! Hosts the benchmarks in `benches/`; no library code. Results: `RESULTS.md`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly
