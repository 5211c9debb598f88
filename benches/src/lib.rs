//! Hosts the benchmarks in `benches/`; no library code. Results: `RESULTS.md`.
