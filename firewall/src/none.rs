//! The `none` backend: for hosts where the operator manages the firewall.
use crate::{Firewall, Result, RuleSet};
use async_trait::async_trait;

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
