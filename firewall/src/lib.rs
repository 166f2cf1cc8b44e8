//! The firewall seam of ecs-init.
//!
//! The launcher describes the rules runtime-neutrally ([`RuleSet`], built by
//! [`RuleSet::build`] from a few host facts and operator knobs) and a [`Firewall`] backend puts
//! them into the kernel. Backends must be idempotent (apply twice = one copy of each rule),
//! all-or-nothing (a failed apply leaves nothing of its own behind) and remove must succeed when
//! nothing is there.

pub mod error;
mod exec;
pub mod hostnet;
pub mod iptables;
pub mod nftables;
pub mod none;
pub mod rules;
pub mod select;

pub use error::{FirewallError, Result};
pub use hostnet::{
    plan_network, recorded_backend, setup_network, teardown_backends, teardown_network, Bridge,
    HostFacts, NetConfig, NetError, NetPlan, SysctlChange,
};
pub use iptables::Iptables;
pub use nftables::Nftables;
pub use none::NoFirewall;
pub use rules::{interface_pattern, Family, Hook, Position, Rule, RuleOptions, RuleSet, Scope};
pub use select::{
    Backend, Choice, Firewalls, HostProbe, NoFirewallTool, Selection, UnknownFirewall,
};

use async_trait::async_trait;

/// One way of putting the rule set into the kernel (iptables, nftables, or nothing).
#[async_trait]
pub trait Firewall: Send + Sync {
    /// "iptables" | "nftables" | "none".
    fn name(&self) -> &'static str;
    /// Put every rule of `rules` in place. Idempotent; on error nothing this call added remains.
    async fn apply(&self, rules: &RuleSet) -> Result<()>;
    /// Take our rules out again. Idempotent; absent rules are fine. Also removes rules of ours
    /// left by an earlier configuration (e.g. an introspection block that is no longer wanted).
    async fn remove(&self, rules: &RuleSet) -> Result<()>;
    /// The rules of ours that are in the kernel now.
    async fn applied(&self) -> Result<RuleSet>;
    /// The exact commands / statements this backend would issue for `rules` (for `plan`).
    fn render(&self, rules: &RuleSet) -> Vec<String>;
}
