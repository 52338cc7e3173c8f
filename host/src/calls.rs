//! The calls into one store's component, and what belongs to each: work the
//! host does for a call (a request, a decoding step) must not outlive it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The calls into one store's component, counted: odd while a call runs,
/// even between calls.
#[derive(Clone, Default)]
pub struct CallScope(Arc<AtomicU64>);

impl CallScope {
    /// A call starts.
    pub fn begin(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    /// The call ends, returned or cut off: work it started stops here.
    pub fn end(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    /// The call running now, for work it starts.
    pub fn ticket(&self) -> Ticket {
        Ticket { scope: self.clone(), made_in: self.0.load(Ordering::SeqCst) }
    }
}

/// Work done for one call: live only while that same call runs.
#[derive(Clone)]
pub struct Ticket {
    scope: CallScope,
    made_in: u64,
}

impl Ticket {
    /// Whether the call that made this ticket is still running.
    pub fn is_live(&self) -> bool {
        self.made_in % 2 == 1 && self.scope.0.load(Ordering::SeqCst) == self.made_in
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_lives_exactly_as_long_as_its_call() {
        let scope = CallScope::default();
        assert!(!scope.ticket().is_live(), "no call runs");
        scope.begin();
        let ticket = scope.ticket();
        assert!(ticket.is_live());
        scope.end();
        assert!(!ticket.is_live());
        scope.begin();
        assert!(!ticket.is_live(), "a later call does not revive it");
        assert!(scope.ticket().is_live());
    }
}
