//! The `none` backend: for hosts where the operator manages the firewall.
use crate::backend::{Availability, Backend, FirewallKind};
use crate::{Firewall, Result, RuleSet};
use async_trait::async_trait;
use ecs_host::Exec;
use std::sync::Arc;

/// `none`'s entry in the firewall registry ([`crate::BACKENDS`]).
pub const KIND: FirewallKind = FirewallKind(&NoneBackend);

/// The `none` backend: only ever chosen by name.
pub struct NoneBackend;

#[async_trait]
impl Backend for NoneBackend {
    fn name(&self) -> &'static str {
        "none"
    }

    fn puts_rules(&self) -> bool {
        false
    }

    async fn probe(&self, _: &dyn Exec) -> Availability {
        Availability::default()
    }

    fn build(&self, _: Arc<dyn Exec>) -> Box<dyn Firewall> {
        Box::new(NoFirewall)
    }
}

/// Applies nothing, removes nothing, reports nothing applied.
#[derive(Debug, Default)]
pub struct NoFirewall;

#[async_trait]
impl Firewall for NoFirewall {
    fn name(&self) -> &'static str {
        "none"
    }
    async fn apply(&self, rules: &RuleSet) -> Result<()> {
        tracing::info!(
            rules = rules.rules.len(),
            "firewall backend is none: leaving the host firewall to the operator"
        );
        Ok(())
    }
    async fn remove(&self, _rules: &RuleSet) -> Result<()> {
        Ok(())
    }
    async fn applied(&self) -> Result<RuleSet> {
        Ok(RuleSet::default())
    }
    fn render(&self, _rules: &RuleSet) -> Vec<String> {
        Vec::new()
    }
}
