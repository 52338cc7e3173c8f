//! Support code for batchgen's integration tests and benchmarks.

pub mod harness;
pub mod provider;
