//! Choosing the firewall backend once, at start-up: by name (`ECS_INIT_FIREWALL`) or, for
//! `auto`, by probing the host. The choice always comes with a reason, which is logged, shown by
//! `plan` and recorded next to the backend name.
use crate::exec::args;
use crate::iptables::Iptables;
use crate::nftables::{parse_listing, tables_in, Nftables};
use crate::{Firewall, NoFirewall};
use ecs_host::Exec;
use serde::Serialize;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

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
}

/// The factory of firewall backends. The composition root makes one (with the [`Exec`] every
/// external program goes through) and hands it to the actions; nothing else constructs a
/// backend.
#[derive(Debug, Clone)]
pub struct Firewalls {
    exec: Arc<dyn Exec>,
}

impl Firewalls {
    pub fn new(exec: Arc<dyn Exec>) -> Firewalls {
        Firewalls { exec }
    }

    /// `nft` as found on the search path (the bare name when it is not installed, so that the
    /// error names it).
    fn nft(&self) -> String {
        self.exec
            .find("nft")
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "nft".into())
    }

    /// The backend object for this name.
    pub fn build(&self, backend: Backend) -> Box<dyn Firewall> {
        match backend {
            Backend::Iptables => Box::new(Iptables::new(self.exec.clone())),
            Backend::Nftables => Box::new(Nftables::new(self.exec.clone(), self.nft())),
            Backend::None => Box::new(NoFirewall),
        }
    }

    /// Look at the host (read-only); see [`HostProbe::probe`].
    pub async fn probe(&self) -> HostProbe {
        HostProbe::probe(self.exec.as_ref()).await
    }

    /// Choose the backend for `choice`, probing the host only for `auto`.
    pub async fn select(&self, choice: Choice) -> Result<Selection, NoFirewallTool> {
        let probe = match choice {
            Choice::Named(_) => HostProbe::default(),
            Choice::Auto => self.probe().await,
        };
        choose(choice, || probe)
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Choice {
    #[default]
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
    pub async fn probe(exec: &dyn Exec) -> HostProbe {
        let mut p = HostProbe::default();
        if exec.find("iptables").is_some() {
            if let Ok(out) = exec.run("iptables", &args(&["-V"])).await {
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
            let listing = args(&["-w", "-t", "nat", "-S", "PREROUTING"]);
            if let Ok(out) = exec.run("iptables", &listing).await {
                p.iptables_usable = out.success;
                p.iptables_has_ours = out.success
                    && out.stdout.lines().any(|l| {
                        l.starts_with("-A PREROUTING -d 169.254.170.2/32 ") && l.contains("-j DNAT")
                    });
            }
        }
        if exec.find("nft").is_some() {
            if let Ok(out) = exec.run("nft", &args(&["-j", "list", "tables"])).await {
                p.nft_usable = out.success;
                p.nft_has_ours = out.success
                    && parse_listing(&out.stdout).is_ok_and(|doc| !tables_in(&doc).is_empty());
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
    let p = match choice {
        Choice::Named(b) => {
            return Ok(Selection {
                backend: b,
                reason: format!("ECS_INIT_FIREWALL={b}"),
            })
        }
        Choice::Auto => probe(),
    };
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

    use ecs_host::exec::FakeExec;
    use ecs_host::Output;

    fn host(installed: &[&str], iptables_v: &str, prerouting: &str, nft_tables: &str) -> FakeExec {
        let (v, pre, nft) = (
            iptables_v.to_string(),
            prerouting.to_string(),
            nft_tables.to_string(),
        );
        FakeExec::new(installed, move |program, args| {
            Ok(match (program, args.join(" ").as_str()) {
                ("iptables", "-V") => Output::ok(v.clone()),
                ("iptables", "-w -t nat -S PREROUTING") if pre == "broken" => Output::failed(
                    3,
                    "iptables: Failed to initialize nft: Protocol not supported",
                ),
                ("iptables", "-w -t nat -S PREROUTING") => Output::ok(pre.clone()),
                ("nft", "-j list tables") => Output::ok(nft.clone()),
                other => Output::failed(2, format!("unexpected {other:?}")),
            })
        })
    }

    const NO_TABLES: &str =
        r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}]}"#;

    #[tokio::test]
    async fn probes_read_the_tools_answers() {
        let ours = "-P PREROUTING ACCEPT\n-A PREROUTING -d 169.254.170.2/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 127.0.0.1:51679\n";
        let exec = host(
            &["iptables", "nft"],
            "iptables v1.8.9 (nf_tables)\n",
            ours,
            NO_TABLES,
        );
        let p = HostProbe::probe(&exec).await;
        assert_eq!(p.iptables, Some(IptablesVariant::Nft));
        assert!(p.iptables_usable && p.iptables_has_ours);
        assert!(p.nft_usable && !p.nft_has_ours);
        // Every probe is read-only.
        assert_eq!(
            exec.calls(),
            [
                "iptables -V",
                "iptables -w -t nat -S PREROUTING",
                "nft -j list tables"
            ]
        );

        let exec = host(
            &["iptables", "nft"],
            "iptables v1.8.9 (legacy)\n",
            "broken",
            include_str!("../tests/fixtures/nft-list-tables.json"),
        );
        let p = HostProbe::probe(&exec).await;
        assert_eq!(p.iptables, Some(IptablesVariant::Legacy));
        assert!(!p.iptables_usable && !p.iptables_has_ours);
        assert!(p.nft_usable && p.nft_has_ours);
        assert_eq!(
            choose(Choice::Auto, || p).unwrap().backend,
            Backend::Nftables
        );

        // Nothing installed: nothing run, nothing usable.
        let exec = host(&[], "", "", "");
        let p = HostProbe::probe(&exec).await;
        assert_eq!(p, HostProbe::default());
        assert!(exec.calls().is_empty());
    }

    #[tokio::test]
    async fn the_factory_selects_without_probing_for_named_backends() {
        let exec = Arc::new(host(
            &["iptables"],
            "iptables v1.8.9 (nf_tables)\n",
            "",
            NO_TABLES,
        ));
        let firewalls = Firewalls::new(exec.clone());
        let s = firewalls
            .select(Choice::Named(Backend::Nftables))
            .await
            .unwrap();
        assert_eq!(s.backend, Backend::Nftables);
        assert!(exec.calls().is_empty());
        assert_eq!(firewalls.build(s.backend).name(), "nftables");
        let s = firewalls.select(Choice::Auto).await.unwrap();
        assert_eq!(s.backend, Backend::Iptables);
        assert_eq!(firewalls.build(s.backend).name(), "iptables");
    }
}
