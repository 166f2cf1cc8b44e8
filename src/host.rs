//! Host preparation of pre-start and its undoing in post-stop.
//!
//! The network part (route_localnet, accept_ra on docker0, the 169.254.170.2 lo route, firewall
//! rules through the chosen backend) lives in `ecs_firewall::hostnet`, next to the backends and
//! their namespace tests; this module gives the launcher its small API and one error type to
//! map to exit codes. It never speaks iptables or nft itself.
use std::path::PathBuf;

pub use ecs_firewall::hostnet::{HostFacts, NetConfig, NetPlan, SysctlChange};

/// Errors of host preparation.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// `ECS_INIT_FIREWALL` has an unknown value. Raised before anything is changed; the
    /// launcher exits 255.
    #[error(transparent)]
    UnknownFirewall(ecs_firewall::UnknownFirewall),
    /// Sysctl, route, firewall or state-file failure (the message names which and where).
    #[error("host network: {0}")]
    Network(ecs_firewall::NetError),
}

impl From<ecs_firewall::NetError> for HostError {
    fn from(e: ecs_firewall::NetError) -> Self {
        match e {
            ecs_firewall::NetError::UnknownFirewall(u) => HostError::UnknownFirewall(u),
            other => HostError::Network(other),
        }
    }
}

/// A `NetConfig` for the host rooted at `root` (normally `/`): state under
/// `<root>/var/lib/ecs`, sysctls under `/proc/sys`.
pub fn net_config(
    root: &std::path::Path,
    firewall: Option<&str>,
    skip_localhost_filter: bool,
    allow_offhost_introspection: bool,
    introspection_interface: Option<&str>,
) -> NetConfig {
    NetConfig {
        firewall: firewall.unwrap_or("auto").to_string(),
        skip_localhost_filter,
        allow_offhost_introspection,
        introspection_interface: introspection_interface
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        state_dir: root.join("var/lib/ecs"),
        proc_sys: PathBuf::from("/proc/sys"),
    }
}

/// What pre-start would do to the host network. Read-only; used by `plan`.
pub fn plan_network(cfg: &NetConfig) -> Result<NetPlan, HostError> {
    Ok(ecs_firewall::plan_network(cfg)?)
}

/// pre-start: sysctls, route, firewall rules; records the backend under `state_dir`.
/// Needs a tokio runtime with IO enabled (rtnetlink and child processes).
pub async fn setup_network(cfg: &NetConfig) -> Result<NetPlan, HostError> {
    Ok(ecs_firewall::setup_network(cfg).await?)
}

/// post-stop: removes the rules with the recorded backend, restores route_localnet, removes
/// the route. Works with no container runtime at all.
pub async fn teardown_network(cfg: &NetConfig) -> Result<(), HostError> {
    Ok(ecs_firewall::teardown_network(cfg).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_firewall_is_its_own_variant() {
        let cfg = net_config(
            std::path::Path::new("/nonexistent-root"),
            Some("ufw"),
            false,
            false,
            None,
        );
        let err = plan_network(&cfg).unwrap_err();
        assert!(matches!(err, HostError::UnknownFirewall(_)), "{err:?}");
        assert!(err.to_string().contains("ECS_INIT_FIREWALL"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        assert!(matches!(
            rt.block_on(setup_network(&cfg)),
            Err(HostError::UnknownFirewall(_))
        ));
        assert!(matches!(
            rt.block_on(teardown_network(&cfg)),
            Err(HostError::UnknownFirewall(_))
        ));
    }

    #[test]
    fn config_defaults() {
        let cfg = net_config(std::path::Path::new("/"), None, false, true, Some(""));
        assert_eq!(cfg.firewall, "auto");
        assert_eq!(cfg.state_dir, PathBuf::from("/var/lib/ecs"));
        assert_eq!(cfg.introspection_interface, None);
        assert!(cfg.allow_offhost_introspection);
    }
}
