//! A firewall backend's entry in the registry ([`crate::BACKENDS`]) and the name type that
//! stands for it. Each backend module implements [`Backend`] for its entry.
use crate::Firewall;
use async_trait::async_trait;
use ecs_host::Exec;
use serde::{Serialize, Serializer};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// A firewall backend's entry in the registry.
#[async_trait]
pub trait Backend: Send + Sync {
    /// The name operators write (`ECS_INIT_FIREWALL`), logged, recorded and shown by `plan`.
    fn name(&self) -> &'static str;
    /// Whether it puts rules into the kernel (`none` does not): only these are chosen by
    /// `auto`, rendered by `plan` and swept by a teardown without a record.
    fn puts_rules(&self) -> bool;
    /// Look at the host, read-only, for `auto` and for a teardown without a record.
    async fn probe(&self, exec: &dyn Exec) -> Availability;
    /// The backend object, running its tools through `exec`.
    fn build(&self, exec: Arc<dyn Exec>) -> Box<dyn Firewall>;
}

/// What a backend's probe found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Availability {
    /// Its tool works on this kernel.
    pub usable: bool,
    /// Rules of ours are in place through it already.
    pub holds_ours: bool,
    /// Where (for the reason: "rules of ours already exist in …").
    pub ours_in: String,
    /// Why it can be used (e.g. "nft is available").
    pub usable_because: String,
    /// Why not (e.g. "iptables is not installed"), said when a later backend is chosen.
    pub unusable_because: String,
}

/// A firewall backend, by its registry entry: compared, hashed, printed and serialised by name.
#[derive(Clone, Copy)]
pub struct FirewallKind(pub &'static dyn Backend);

impl FirewallKind {
    pub fn as_str(self) -> &'static str {
        self.0.name()
    }

    /// The registry entry.
    pub fn backend(self) -> &'static dyn Backend {
        self.0
    }
}

impl PartialEq for FirewallKind {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for FirewallKind {}

impl Hash for FirewallKind {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl fmt::Debug for FirewallKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for FirewallKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for FirewallKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}
