//! The integration suite: the real component in the real host, against a
//! stand-in provider server and real files.
//!
//! One test binary with a module per area, as wasmtime does: each binary
//! links wasmtime, llama.cpp, arrow and parquet, so one link instead of nine
//! saves most of the suite's build time.

mod common;

mod batch_jobs;
mod cli;
mod docs;
mod local_model;
mod local_servers;
mod preflight;
mod properties;
mod resilience;
mod row_errors;
mod sandbox;
mod saved_work;
mod structured;
mod templates;
mod wire_format;
