//! Choosing the firewall backend once, at start-up: by name (`ECS_INIT_FIREWALL`) or, for
//! `auto`, by probing the host. The choice always comes with a reason, which is logged, shown by
//! `plan` and recorded next to the backend name.
use crate::exec::{find_tool, run_sync};
use crate::iptables::Iptables;
use crate::nftables::{tables_in, Nftables};
use crate::{Firewall, NoFirewall};
use serde::Serialize;
use std::fmt;
use std::str::FromStr;

/// A backend that can put rules into the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Iptables,
    Nftables,
    None,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Iptables => "iptables",
            Backend::Nftables => "nftables",
            Backend::None => "none",
        }
    }

    /// The backend object for this name.
    pub fn firewall(self) -> Box<dyn Firewall> {
        match self {
            Backend::Iptables => Box::new(Iptables::new()),
            Backend::Nftables => Box::new(Nftables::new()),
            Backend::None => Box::new(NoFirewall),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Backend {
    type Err = UnknownFirewall;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "iptables" => Ok(Backend::Iptables),
            "nftables" => Ok(Backend::Nftables),
            "none" => Ok(Backend::None),
            other => Err(UnknownFirewall(other.to_string())),
        }
    }
}

/// What `ECS_INIT_FIREWALL` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Auto,
    Named(Backend),
}

/// `ECS_INIT_FIREWALL` has a value we do not know. Raised before anything is changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown ECS_INIT_FIREWALL value {0:?}: expected auto, iptables, nftables or none")]
pub struct UnknownFirewall(pub String);

impl FromStr for Choice {
    type Err = UnknownFirewall;
    /// Case-insensitive; empty means `auto` (the variable set to nothing).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let v = s.trim().to_ascii_lowercase();
        match v.as_str() {
            "" | "auto" => Ok(Choice::Auto),
            _ => v
                .parse()
                .map(Choice::Named)
                .map_err(|_| UnknownFirewall(s.to_string())),
        }
    }
}

/// Which iptables the host's `iptables` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IptablesVariant {
    /// iptables-nft: xtables syntax on top of nf_tables.
    Nft,
    /// iptables-legacy: the old x_tables kernel interface.
    Legacy,
}

/// What the host has, as far as the choice is concerned. Probed read-only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HostProbe {
    /// `iptables -V` ran; its variant.
    pub iptables: Option<IptablesVariant>,
    /// `iptables -S` works (kernel support present) — false when the binary is masked/broken.
    pub iptables_usable: bool,
    /// Our credentials DNAT rule is in iptables' nat PREROUTING.
    pub iptables_has_ours: bool,
    /// `nft list tables` works.
    pub nft_usable: bool,
    /// One of our `ecs-init` tables exists.
    pub nft_has_ours: bool,
}

impl HostProbe {
    /// Look at the host: which tools exist and work, which variant iptables is, and whether
    /// rules of ours are already in place. Runs only read-only commands.
    pub fn probe() -> HostProbe {
        let mut p = HostProbe::default();
        if find_tool("iptables").is_some() {
            if let Ok(out) = run_sync("iptables", &["-V".to_string()]) {
                if out.success && out.stdout.starts_with("iptables v") {
                    p.iptables = Some(if out.stdout.contains("nf_tables") {
                        IptablesVariant::Nft
                    } else {
                        IptablesVariant::Legacy
                    });
                }
            }
        }
        if p.iptables.is_some() {
            let args: Vec<String> = ["-w", "-t", "nat", "-S", "PREROUTING"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            if let Ok(out) = run_sync("iptables", &args) {
                p.iptables_usable = out.success;
                p.iptables_has_ours = out.success
                    && out.stdout.lines().any(|l| {
                        l.starts_with("-A PREROUTING -d 169.254.170.2/32 ") && l.contains("-j DNAT")
                    });
            }
        }
        if find_tool("nft").is_some() {
            let args: Vec<String> = ["-j", "list", "tables"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            if let Ok(out) = run_sync("nft", &args) {
                p.nft_usable = out.success;
                p.nft_has_ours = out.success && !tables_in(&out.stdout).is_empty();
            }
        }
        p
    }
}

/// A choice and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Selection {
    pub backend: Backend,
    pub reason: String,
}

/// Nothing usable was found for `auto`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ECS_INIT_FIREWALL=auto: neither a working iptables nor nft was found on PATH; install one, or set ECS_INIT_FIREWALL=none if the operator manages the firewall")]
pub struct NoFirewallTool;

fn variant_word(v: Option<IptablesVariant>) -> &'static str {
    match v {
        Some(IptablesVariant::Nft) => "the nf_tables variant",
        Some(IptablesVariant::Legacy) => "the legacy variant",
        None => "unknown variant",
    }
}

/// Decide. Explicit names win; `auto` keeps whatever already holds our rules (so a restart
/// never ends up with two copies in two backends), then prefers iptables like the existing
/// ecs-init (its rules stay visible in `iptables -S`, and a legacy-iptables host must not get
/// rules it cannot list), and uses nftables where iptables is absent or unusable.
pub fn choose(
    choice: Choice,
    probe: impl FnOnce() -> HostProbe,
) -> Result<Selection, NoFirewallTool> {
    let backend = match choice {
        Choice::Named(b) => {
            return Ok(Selection {
                backend: b,
                reason: format!("ECS_INIT_FIREWALL={b}"),
            })
        }
        Choice::Auto => probe(),
    };
    let p = backend;
    let pick = |backend: Backend, reason: String| Ok(Selection { backend, reason });
    if p.nft_has_ours && p.nft_usable && !p.iptables_has_ours {
        return pick(
            Backend::Nftables,
            "auto: rules of ours already exist in nftables table ecs-init".into(),
        );
    }
    if p.iptables_has_ours && p.iptables_usable {
        return pick(
            Backend::Iptables,
            format!(
                "auto: rules of ours already exist in iptables ({})",
                variant_word(p.iptables)
            ),
        );
    }
    if p.iptables_usable {
        return pick(
            Backend::Iptables,
            format!(
                "auto: iptables is installed and working ({}), as the existing ecs-init uses",
                variant_word(p.iptables)
            ),
        );
    }
    if p.nft_usable {
        let why = if p.iptables.is_some() {
            "iptables is installed but not usable"
        } else {
            "iptables is not installed"
        };
        return pick(Backend::Nftables, format!("auto: {why}; nft is available"));
    }
    Err(NoFirewallTool)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(f: impl Fn(&mut HostProbe)) -> impl FnOnce() -> HostProbe {
        let mut p = HostProbe::default();
        f(&mut p);
        move || p
    }

    #[test]
    fn parses_the_setting() {
        assert_eq!("auto".parse(), Ok(Choice::Auto));
        assert_eq!("".parse(), Ok(Choice::Auto));
        assert_eq!("NFTables".parse(), Ok(Choice::Named(Backend::Nftables)));
        assert_eq!("none".parse(), Ok(Choice::Named(Backend::None)));
        let err = "firewalld".parse::<Choice>().unwrap_err();
        assert_eq!(err, UnknownFirewall("firewalld".into()));
        assert!(err.to_string().contains("ECS_INIT_FIREWALL"));
    }

    #[test]
    fn explicit_names_do_not_probe() {
        let s = choose(Choice::Named(Backend::None), || panic!("probed")).unwrap();
        assert_eq!(s.backend, Backend::None);
        assert_eq!(s.reason, "ECS_INIT_FIREWALL=none");
    }

    #[test]
    fn auto_decisions() {
        let both = |p: &mut HostProbe| {
            p.iptables = Some(IptablesVariant::Nft);
            p.iptables_usable = true;
            p.nft_usable = true;
        };
        let s = choose(Choice::Auto, probe(both)).unwrap();
        assert_eq!(s.backend, Backend::Iptables);
        assert!(s.reason.contains("nf_tables"), "{}", s.reason);

        let s = choose(
            Choice::Auto,
            probe(|p| {
                both(p);
                p.nft_has_ours = true;
            }),
        )
        .unwrap();
        assert_eq!(s.backend, Backend::Nftables);
        assert!(s.reason.contains("already exist"), "{}", s.reason);

        let s = choose(
            Choice::Auto,
            probe(|p| {
                both(p);
                p.iptables = Some(IptablesVariant::Legacy);
                p.iptables_has_ours = true;
                p.nft_has_ours = true;
            }),
        )
        .unwrap();
        assert_eq!(s.backend, Backend::Iptables);
        assert!(s.reason.contains("legacy"), "{}", s.reason);

        let s = choose(
            Choice::Auto,
            probe(|p| {
                p.iptables = Some(IptablesVariant::Legacy);
                p.nft_usable = true;
            }),
        )
        .unwrap();
        assert_eq!(s.backend, Backend::Nftables);
        assert!(s.reason.contains("not usable"), "{}", s.reason);

        assert_eq!(choose(Choice::Auto, probe(|_| {})), Err(NoFirewallTool));
    }
}
