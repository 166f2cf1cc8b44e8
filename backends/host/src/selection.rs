//! The shape both seams (runtime and firewall) use for "which backend, and why": chosen once at
//! start-up, logged, shown by `plan` and recorded for the later actions.
use serde::Serialize;

/// A backend and why it was chosen.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Selection<K> {
    pub kind: K,
    pub reason: String,
}

impl<K> Selection<K> {
    pub fn new(kind: K, reason: impl Into<String>) -> Selection<K> {
        Selection {
            kind,
            reason: reason.into(),
        }
    }
}
