//! Support code for batchgen's integration tests and benchmarks.

pub mod provider;
