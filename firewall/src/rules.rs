//! The runtime-neutral rule description (packaging/COMPATIBILITY.md §6).
use serde::{Deserialize, Serialize};
use std::net::SocketAddrV4;

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    V4,
    V6,
}

/// Check an interface name as the kernel allows them (at most 15 bytes, not `.` or `..`, no
/// `/`, `:`, white space or control characters), with one optional trailing wildcard: `eth+`
/// (or `eth*`) means every interface whose name starts with `eth`, on iptables (`-i eth+`) and
/// nftables (`iifname "eth*"`) alike. Returns the canonical form (a trailing `+`), or why the
/// name cannot be one.
pub fn interface_pattern(name: &str) -> Result<String, String> {
    let (stem, wildcard) = match name.strip_suffix(['+', '*']) {
        Some(stem) => (stem, true),
        None => (name, false),
    };
    if stem.is_empty() {
        return Err(if wildcard {
            "a wildcard alone would match loopback too; name a prefix (e.g. eth+)".into()
        } else {
            "empty".into()
        });
    }
    let len = stem.len() + usize::from(wildcard);
    if len > 15 {
        return Err(format!("{len} bytes long; interface names have at most 15"));
    }
    if stem == "." || stem == ".." {
        return Err("not a usable interface name".into());
    }
    if let Some(c) = stem
        .chars()
        .find(|c| matches!(c, '/' | ':' | '+' | '*') || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "contains {c:?}; interface names cannot (a wildcard + or * may only end the name)"
        ));
    }
    Ok(if wildcard {
        format!("{stem}+")
    } else {
        stem.to_string()
    })
}

/// Which inbound interfaces an introspection block applies to.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Every interface but loopback (the default; see "Deviations we choose").
    AllExceptLoopback,
    /// Only this interface (`ECS_OFFHOST_INTROSPECTION_INTERFACE_NAME`), or every interface
    /// starting with it when it ends with `+` (see [`interface_pattern`]).
    Interface(String),
}

/// One rule of ours.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Rule {
    /// nat PREROUTING: TCP to `endpoint` is DNATed to `target` (task credentials endpoint).
    CredentialsDnat {
        endpoint: SocketAddrV4,
        target: SocketAddrV4,
    },
    /// nat OUTPUT: TCP to `endpoint` from the host itself is redirected to `target_port`.
    CredentialsRedirect {
        endpoint: SocketAddrV4,
        target_port: u16,
    },
    /// filter INPUT: drop packets to 127.0.0.0/8 not from 127.0.0.0/8 unless conntrack says
    /// RELATED, ESTABLISHED or DNAT.
    LocalhostFilter,
    /// filter INPUT: drop TCP to `port` arriving on `scope`.
    IntrospectionBlock {
        family: Family,
        port: u16,
        scope: Scope,
    },
    /// filter INPUT: accept TCP to `port` arriving on the Docker bridge (above the block).
    IntrospectionBridgeAccept {
        family: Family,
        port: u16,
        bridge: String,
    },
}

/// The rules in the order the existing ecs-init adds them.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default, Deserialize)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
}

/// The facts and knobs the rule set depends on; the launcher fills this from config and host
/// probes, so this crate never reads `ecs.config`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RuleOptions {
    /// `ECS_SKIP_LOCALHOST_TRAFFIC_FILTER`.
    pub skip_localhost_filter: bool,
    /// `ECS_ALLOW_OFFHOST_INTROSPECTION_ACCESS`.
    pub allow_offhost_introspection: bool,
    /// `ECS_OFFHOST_INTROSPECTION_INTERFACE_NAME`, when set explicitly.
    pub introspection_interface: Option<String>,
    /// Docker's default bridge, when it exists on the host.
    pub bridge: Option<String>,
    /// Whether the host has IPv6 (the introspection rules are then repeated for IPv6).
    pub ipv6: bool,
}

#[cfg(test)]
impl RuleOptions {
    /// Options under which every kind of rule is present (bridge, IPv6, all filters): the
    /// fixture of the backends' rendering tests.
    pub(crate) fn every_rule() -> RuleOptions {
        RuleOptions {
            skip_localhost_filter: false,
            allow_offhost_introspection: false,
            introspection_interface: None,
            bridge: Some("docker0".into()),
            ipv6: true,
        }
    }
}

/// Task credentials endpoint (169.254.170.2:80).
pub const CREDENTIALS_ENDPOINT: SocketAddrV4 =
    SocketAddrV4::new(std::net::Ipv4Addr::new(169, 254, 170, 2), 80);
/// Where the agent serves credentials (127.0.0.1:51679).
pub const CREDENTIALS_TARGET: SocketAddrV4 =
    SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 51679);
/// The agent's introspection port.
pub const INTROSPECTION_PORT: u16 = 51678;

impl RuleSet {
    /// The rule set for these options, in the existing tool's order.
    pub fn build(opts: &RuleOptions) -> RuleSet {
        let mut rules = vec![Rule::CredentialsDnat {
            endpoint: CREDENTIALS_ENDPOINT,
            target: CREDENTIALS_TARGET,
        }];
        if !opts.skip_localhost_filter {
            rules.push(Rule::LocalhostFilter);
        }
        if !opts.allow_offhost_introspection {
            let families: &[Family] = if opts.ipv6 {
                &[Family::V4, Family::V6]
            } else {
                &[Family::V4]
            };
            for &family in families {
                let scope = match &opts.introspection_interface {
                    Some(name) => Scope::Interface(name.clone()),
                    None => Scope::AllExceptLoopback,
                };
                rules.push(Rule::IntrospectionBlock {
                    family,
                    port: INTROSPECTION_PORT,
                    scope,
                });
                if let Some(bridge) = &opts.bridge {
                    rules.push(Rule::IntrospectionBridgeAccept {
                        family,
                        port: INTROSPECTION_PORT,
                        bridge: bridge.clone(),
                    });
                }
            }
        }
        rules.push(Rule::CredentialsRedirect {
            endpoint: CREDENTIALS_ENDPOINT,
            target_port: CREDENTIALS_TARGET.port(),
        });
        RuleSet { rules }
    }
}

/// Where a rule goes in its chain, as the existing ecs-init does it: `-I` (top) for the
/// filter rules, `-A` (bottom) for the nat rules. Both backends derive the final chain order from
/// this, so the packet-level effect is the same on iptables and nftables.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Position {
    /// Inserted at the top of the chain (`iptables -I`).
    Top,
    /// Appended to the chain (`iptables -A`).
    Bottom,
}

/// The netfilter hook (iptables table + chain) a rule lives in.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    /// nat PREROUTING (dstnat).
    NatPrerouting,
    /// nat OUTPUT (dstnat of locally generated packets).
    NatOutput,
    /// filter INPUT.
    FilterInput,
}

impl Rule {
    /// IPv4 or IPv6.
    pub fn family(&self) -> Family {
        match self {
            Rule::CredentialsDnat { .. }
            | Rule::CredentialsRedirect { .. }
            | Rule::LocalhostFilter => Family::V4,
            Rule::IntrospectionBlock { family, .. }
            | Rule::IntrospectionBridgeAccept { family, .. } => *family,
        }
    }

    /// The hook (table and chain) the rule belongs to.
    pub fn hook(&self) -> Hook {
        match self {
            Rule::CredentialsDnat { .. } => Hook::NatPrerouting,
            Rule::CredentialsRedirect { .. } => Hook::NatOutput,
            _ => Hook::FilterInput,
        }
    }

    /// Top (`-I`) or bottom (`-A`) of its chain.
    pub fn position(&self) -> Position {
        match self.hook() {
            Hook::FilterInput => Position::Top,
            Hook::NatPrerouting | Hook::NatOutput => Position::Bottom,
        }
    }
}

impl RuleSet {
    /// The rules of one (family, hook) in their final top-to-bottom order in the chain: rules
    /// inserted at the top end up in reverse insertion order above the appended ones.
    pub fn chain_order(&self, family: Family, hook: Hook) -> Vec<&Rule> {
        let in_chain = || {
            self.rules
                .iter()
                .filter(move |r| r.family() == family && r.hook() == hook)
        };
        let mut out: Vec<&Rule> = in_chain()
            .filter(|r| r.position() == Position::Top)
            .collect();
        out.reverse();
        out.extend(in_chain().filter(|r| r.position() == Position::Bottom));
        out
    }

    /// Rebuild a rule set in insertion order (the order of [`RuleSet::build`]) from the chains'
    /// top-to-bottom contents, as listed by a backend. Inverse of [`RuleSet::chain_order`] for
    /// a rule set built by [`RuleSet::build`].
    pub fn from_chains(chains: &[(Family, Hook, Vec<Rule>)]) -> RuleSet {
        let mut rules = Vec::new();
        let pick = |family: Family, hook: Hook| -> Vec<Rule> {
            chains
                .iter()
                .filter(|(f, h, _)| *f == family && *h == hook)
                .flat_map(|(_, _, r)| r.iter().cloned())
                .collect()
        };
        rules.extend(pick(Family::V4, Hook::NatPrerouting));
        for family in [Family::V4, Family::V6] {
            let mut input = pick(family, Hook::FilterInput);
            input.reverse();
            rules.extend(input);
        }
        rules.extend(pick(Family::V4, Hook::NatOutput));
        RuleSet { rules }
    }

    /// Whether any rule needs IPv6 tooling.
    pub fn has_v6(&self) -> bool {
        self.rules.iter().any(|r| r.family() == Family::V6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> RuleOptions {
        RuleOptions::every_rule()
    }

    #[test]
    fn default_set_has_every_rule_in_order() {
        let set = RuleSet::build(&opts());
        let kinds: Vec<String> = set
            .rules
            .iter()
            .map(|r| {
                serde_json::to_value(r).unwrap()["kind"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "credentials_dnat",
                "localhost_filter",
                "introspection_block",
                "introspection_bridge_accept",
                "introspection_block",
                "introspection_bridge_accept",
                "credentials_redirect"
            ]
        );
    }

    #[test]
    fn knobs_drop_rules() {
        let set = RuleSet::build(&RuleOptions {
            skip_localhost_filter: true,
            allow_offhost_introspection: true,
            ..opts()
        });
        assert_eq!(set.rules.len(), 2);
        let set = RuleSet::build(&RuleOptions {
            introspection_interface: Some("ens5".into()),
            bridge: None,
            ipv6: false,
            ..opts()
        });
        assert!(set.rules.contains(&Rule::IntrospectionBlock {
            family: Family::V4,
            port: 51678,
            scope: Scope::Interface("ens5".into())
        }));
        assert_eq!(set.rules.len(), 4);
    }

    #[test]
    fn chain_order_round_trips() {
        let set = RuleSet::build(&opts());
        let input = set.chain_order(Family::V4, Hook::FilterInput);
        assert!(matches!(input[0], Rule::IntrospectionBridgeAccept { .. }));
        assert!(matches!(input[1], Rule::IntrospectionBlock { .. }));
        assert_eq!(input[2], &Rule::LocalhostFilter);
        let chains: Vec<(Family, Hook, Vec<Rule>)> = [Family::V4, Family::V6]
            .into_iter()
            .flat_map(|f| {
                [Hook::NatPrerouting, Hook::FilterInput, Hook::NatOutput]
                    .into_iter()
                    .map(move |h| (f, h))
            })
            .map(|(f, h)| (f, h, set.chain_order(f, h).into_iter().cloned().collect()))
            .collect();
        assert_eq!(RuleSet::from_chains(&chains), set);
    }

    #[test]
    fn interface_names_follow_the_kernels_rules() {
        assert_eq!(interface_pattern("eth0"), Ok("eth0".into()));
        assert_eq!(interface_pattern("ens5+"), Ok("ens5+".into()));
        assert_eq!(interface_pattern("ens*"), Ok("ens+".into()));
        assert_eq!(
            interface_pattern("abcdefghijklmno"),
            Ok("abcdefghijklmno".into())
        );
        for bad in [
            "",
            "+",
            "*",
            "abcdefghijklmnop",
            "eth/0",
            "eth 0",
            "eth0:1",
            "e+th",
            "e*h+",
            ".",
            "..",
            "eth\t",
        ] {
            assert!(interface_pattern(bad).is_err(), "{bad:?}");
        }
        assert!(interface_pattern("a b").unwrap_err().contains("' '"));
    }
}
