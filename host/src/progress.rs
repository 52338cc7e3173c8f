//! What a run reports while it goes: for progress bars, logs and embedders.

use crate::run::Summary;

/// Receives a run's progress. Calls come from the task driving the run,
/// after each batch is written, so implementations should be quick.
pub trait Progress: Send + Sync {
    /// The input holds `rows` rows (known after the validation pass).
    fn started(&self, _rows: u64) {}
    /// Another batch was written; `so_far` counts everything up to it.
    fn advanced(&self, _so_far: &Summary) {}
    /// The output is complete.
    fn finished(&self, _summary: &Summary) {}
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {}
