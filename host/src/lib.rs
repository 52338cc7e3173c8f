//! batchgen: generate an LLM output column for every row of a dataset, in
//! batches, through a sandboxed WebAssembly component.
//!
//! The generation logic (model table, provider wire formats, retries) is a
//! WASI 0.2 component; this crate is its host: it reads and writes datasets,
//! owns credentials and network policy, and provides the local model.
//! [`run::run`] is the whole job; the `batchgen` binary is a thin CLI over it.

#![warn(missing_docs)]

pub mod bindings;
pub mod calls;
pub mod config;
pub mod cost;
pub mod dataset;
mod defaults;
pub mod journal;
pub mod local;
pub mod outbound;
pub mod pace;
pub mod plugin;
pub mod progress;
pub mod run;
pub mod summary;
