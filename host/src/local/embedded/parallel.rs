//! Spreading independent work items over candle's worker threads.
//!
//! The model's own row-wise work (attention, sampling) runs on the same
//! pool as candle's kernels rather than a second one, so the two never
//! compete for the cores.

use std::sync::Mutex;

/// Calls `work` on every item, the items spread over candle's threads.
/// Each thread makes one `scratch` for all the items it takes, so a buffer
/// can be reused from item to item.
pub fn for_each<T: Send, S>(items: &mut [T], scratch: impl Fn() -> S + Sync, work: impl Fn(&mut S, &mut T) + Sync) {
    // Each item is taken by one thread only; the locks are never contended
    // and only let the items be handed out through a shared reference.
    let slots: Vec<Mutex<&mut T>> = items.iter_mut().map(Mutex::new).collect();
    candle_core::utils::barrier_pool().execute_chunked(slots.len(), |range| {
        let mut state = scratch();
        for i in range {
            let mut item = slots[i].lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&mut state, &mut item);
        }
    });
}
