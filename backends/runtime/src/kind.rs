//! A runtime backend's entry in the registry ([`crate::BACKENDS`]) and the name type that stands
//! for it. Each backend module owns its entry (its name, its probe, its constructor, and whether
//! the agent it runs needs a Docker API beside it), so adding a runtime is one module plus one
//! line in [`crate::BACKENDS`].
use crate::{Result, Runtime, RuntimeOptions};
use async_trait::async_trait;
use ecs_host::Exec;
use std::time::Duration;

/// A runtime backend's entry in the registry.
#[async_trait]
pub trait Backend: Send + Sync {
    /// The name operators write (`ECS_INIT_RUNTIME`), logged, recorded and shown by `plan`.
    fn name(&self) -> &'static str;
    /// Whether the ECS agent, run on this backend, still needs a Docker API beside it for the
    /// tasks it places (the agent creates task containers through the Docker API only).
    fn agent_needs_docker_api(&self) -> bool;
    /// Look at the host, read-only, for `auto` (a ping takes at most `ping_timeout`).
    async fn probe(&self, opts: &RuntimeOptions, exec: &dyn Exec, ping_timeout: Duration)
        -> Probed;
    /// A client; never contacts the daemon (so `stop`, `post-stop` and `plan` work while it is
    /// down); fails only on settings that cannot work.
    fn build(&self, opts: &RuntimeOptions) -> Result<Box<dyn Runtime>>;
}

/// How ready a runtime looks on this host; `auto` takes the readiest (list order breaks ties).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Presence {
    /// Nothing of it here (a stale socket of an uninstalled daemon counts as nothing).
    Absent,
    /// Installed, not running yet.
    Installed,
    /// Its socket exists (the daemon is not asked).
    Socket,
    /// Installed and its socket exists, not answering yet (restarting).
    Starting,
    /// It answered a ping.
    Answers,
}

/// What a backend's probe found.
pub struct Probed {
    pub presence: Presence,
    /// Why, in words, for the selection's reason.
    pub reason: String,
    /// A client that is already connected, when the probe made one (saves a second connect).
    pub client: Option<Box<dyn Runtime>>,
}

impl Probed {
    pub fn new(presence: Presence, reason: impl Into<String>) -> Probed {
        Probed {
            presence,
            reason: reason.into(),
            client: None,
        }
    }
}

ecs_host::registry_kind! {
    /// A runtime backend, by its registry entry: compared, hashed, printed and serialised by name.
    pub struct RuntimeKind(dyn Backend);
}
