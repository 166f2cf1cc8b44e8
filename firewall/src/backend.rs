//! A firewall backend's entry in the registry ([`crate::BACKENDS`]) and the name type that
//! stands for it. Each backend module implements [`Backend`] for its entry.
use crate::Firewall;
use async_trait::async_trait;
use ecs_host::Exec;
use serde::Serialize;
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

ecs_host::registry_kind! {
    /// A firewall backend, by its registry entry: compared, hashed, printed and serialised by name.
    pub struct FirewallKind(dyn Backend);
}
