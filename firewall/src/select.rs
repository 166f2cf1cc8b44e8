//! The registry of firewall backends and the choice among them, made once at start-up: by name
//! (`ECS_INIT_FIREWALL`) or, for `auto`, by asking every backend in [`BACKENDS`] to probe the
//! host. Each backend module owns its entry (its name, its probe, its constructor), so adding
//! a firewall is one module plus one line in [`BACKENDS`]; selection, teardown, `plan` and the
//! settings' word list iterate that list. The choice always comes with a reason, which is
//! logged, shown by `plan` and recorded next to the backend name.
use crate::backend::FirewallKind;
use crate::Firewall;
use ecs_host::Exec;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

pub use crate::backend::{Availability, Backend};

/// Every firewall backend, in the order `auto` prefers them.
pub static BACKENDS: [FirewallKind; 3] = [
    crate::iptables::KIND,
    crate::nftables::KIND,
    crate::none::KIND,
];

impl FirewallKind {
    /// Every backend's name, in registry order.
    pub fn names() -> Vec<&'static str> {
        BACKENDS.iter().map(|k| k.as_str()).collect()
    }
}

impl FromStr for FirewallKind {
    type Err = UnknownFirewall;
    /// Exactly a backend's name (case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BACKENDS
            .iter()
            .copied()
            .find(|k| k.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownFirewall(s.to_string()))
    }
}

/// What `ECS_INIT_FIREWALL` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Request {
    #[default]
    Auto,
    Named(FirewallKind),
}

impl Request {
    /// The words `ECS_INIT_FIREWALL` accepts: `auto` and every backend's name.
    pub fn words() -> Vec<&'static str> {
        let mut words = vec!["auto"];
        words.extend(FirewallKind::names());
        words
    }
}

impl FromStr for Request {
    type Err = UnknownFirewall;
    /// Case-insensitive; empty means `auto` (the variable set to nothing).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(Request::Auto),
            v => v
                .parse()
                .map(Request::Named)
                .map_err(|_| UnknownFirewall(s.to_string())),
        }
    }
}

/// `ECS_INIT_FIREWALL` has a value we do not know. Raised before anything is changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownFirewall(pub String);

impl fmt::Display for UnknownFirewall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words = Request::words();
        let (last, rest) = words.split_last().expect("auto is always a word");
        write!(
            f,
            "unknown ECS_INIT_FIREWALL value {:?}: expected {} or {last}",
            self.0,
            rest.join(", ")
        )
    }
}

impl std::error::Error for UnknownFirewall {}

/// A backend and why it was chosen.
pub type Selection = ecs_host::Selection<FirewallKind>;

/// Nothing usable was found for `auto`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ECS_INIT_FIREWALL=auto: neither a working iptables nor nft was found on PATH; install one, or set ECS_INIT_FIREWALL=none if the operator manages the firewall")]
pub struct NoFirewallTool;

/// One backend's finding, as [`decide`] weighs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: FirewallKind,
    pub availability: Availability,
}

/// Decide. Explicit names win; `auto` keeps whatever already holds our rules (so a restart
/// never ends up with two copies in two backends; the registry's order breaks a tie), then
/// takes the first usable backend in the registry's order: iptables like the existing ecs-init
/// (its rules stay visible in `iptables -S`, and a legacy-iptables host must not get rules it
/// cannot list), nftables where iptables is absent or unusable.
pub fn decide(request: Request, findings: &[Finding]) -> Result<Selection, NoFirewallTool> {
    if let Request::Named(kind) = request {
        return Ok(Selection::new(kind, format!("ECS_INIT_FIREWALL={kind}")));
    }
    let candidates = || findings.iter().filter(|f| f.kind.backend().puts_rules());
    if let Some(f) = candidates().find(|f| f.availability.usable && f.availability.holds_ours) {
        return Ok(Selection::new(
            f.kind,
            format!(
                "auto: rules of ours already exist in {}",
                f.availability.ours_in
            ),
        ));
    }
    let mut passed_over = Vec::new();
    for f in candidates() {
        if f.availability.usable {
            passed_over.push(f.availability.usable_because.as_str());
            return Ok(Selection::new(
                f.kind,
                format!("auto: {}", passed_over.join("; ")),
            ));
        }
        passed_over.push(f.availability.unusable_because.as_str());
    }
    Err(NoFirewallTool)
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

    /// The backend object for `kind` (its registry entry's constructor).
    pub fn build(&self, kind: FirewallKind) -> Box<dyn Firewall> {
        kind.backend().build(self.exec.clone())
    }

    /// Every backend that puts rules into the kernel, with what its probe found (read-only).
    pub async fn probe(&self) -> Vec<Finding> {
        let mut findings = Vec::new();
        for kind in BACKENDS.iter().copied() {
            if kind.backend().puts_rules() {
                let availability = kind.backend().probe(self.exec.as_ref()).await;
                findings.push(Finding { kind, availability });
            }
        }
        findings
    }

    /// Choose the backend for `request`, probing the host only for `auto`.
    pub async fn choose(&self, request: Request) -> Result<Selection, NoFirewallTool> {
        let findings = match request {
            Request::Named(_) => Vec::new(),
            Request::Auto => self.probe().await,
        };
        decide(request, &findings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iptables::KIND as IPTABLES;
    use crate::nftables::KIND as NFTABLES;
    use crate::none::KIND as NONE;
    use ecs_host::exec::FakeExec;
    use ecs_host::Output;

    #[test]
    fn parses_the_setting() {
        assert_eq!("auto".parse(), Ok(Request::Auto));
        assert_eq!("".parse(), Ok(Request::Auto));
        assert_eq!("NFTables".parse(), Ok(Request::Named(NFTABLES)));
        assert_eq!("none".parse(), Ok(Request::Named(NONE)));
        let err = "firewalld".parse::<Request>().unwrap_err();
        assert_eq!(err, UnknownFirewall("firewalld".into()));
        assert_eq!(
            err.to_string(),
            "unknown ECS_INIT_FIREWALL value \"firewalld\": expected auto, iptables, nftables or none"
        );
        assert_eq!(FirewallKind::names(), ["iptables", "nftables", "none"]);
    }

    #[test]
    fn explicit_names_win() {
        let s = decide(Request::Named(NONE), &[]).unwrap();
        assert_eq!(s.kind, NONE);
        assert_eq!(s.reason, "ECS_INIT_FIREWALL=none");
    }

    /// What the two netfilter backends' probes find on a host with these tools' answers.
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
    const OURS: &str = "-P PREROUTING ACCEPT\n-A PREROUTING -d 169.254.170.2/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 127.0.0.1:51679\n";
    const NFT_V: &str = "iptables v1.8.9 (nf_tables)\n";
    const LEGACY_V: &str = "iptables v1.8.9 (legacy)\n";
    fn our_tables() -> &'static str {
        include_str!("../tests/fixtures/nft-list-tables.json")
    }

    async fn chosen(exec: FakeExec) -> Result<Selection, NoFirewallTool> {
        Firewalls::new(Arc::new(exec)).choose(Request::Auto).await
    }

    #[tokio::test]
    async fn auto_decisions() {
        // Both usable, none holds ours: iptables, naming its variant.
        let s = chosen(host(&["iptables", "nft"], NFT_V, "", NO_TABLES))
            .await
            .unwrap();
        assert_eq!(s.kind, IPTABLES);
        assert!(s.reason.contains("nf_tables"), "{}", s.reason);

        // Ours in nftables only: keep nftables.
        let s = chosen(host(&["iptables", "nft"], NFT_V, "", our_tables()))
            .await
            .unwrap();
        assert_eq!(s.kind, NFTABLES);
        assert!(s.reason.contains("already exist"), "{}", s.reason);

        // Ours in both: iptables (legacy), the registry's order.
        let s = chosen(host(&["iptables", "nft"], LEGACY_V, OURS, our_tables()))
            .await
            .unwrap();
        assert_eq!(s.kind, IPTABLES);
        assert!(s.reason.contains("legacy"), "{}", s.reason);

        // iptables installed but broken: nftables, saying why.
        let s = chosen(host(&["iptables", "nft"], LEGACY_V, "broken", NO_TABLES))
            .await
            .unwrap();
        assert_eq!(s.kind, NFTABLES);
        assert_eq!(
            s.reason,
            "auto: iptables is installed but not usable; nft is available"
        );
        let s = chosen(host(&["nft"], "", "", NO_TABLES)).await.unwrap();
        assert_eq!(
            s.reason,
            "auto: iptables is not installed; nft is available"
        );

        assert_eq!(chosen(host(&[], "", "", "")).await, Err(NoFirewallTool));
    }

    #[tokio::test]
    async fn probes_read_the_tools_answers() {
        let exec = Arc::new(host(&["iptables", "nft"], NFT_V, OURS, NO_TABLES));
        let findings = Firewalls::new(exec.clone()).probe().await;
        let kinds: Vec<_> = findings.iter().map(|f| f.kind).collect();
        assert_eq!(kinds, [IPTABLES, NFTABLES], "none is never probed");
        assert!(findings[0].availability.usable && findings[0].availability.holds_ours);
        assert!(findings[1].availability.usable && !findings[1].availability.holds_ours);
        // Every probe is read-only.
        assert_eq!(
            exec.calls(),
            [
                "iptables -V",
                "iptables -w -t nat -S PREROUTING",
                "nft -j list tables"
            ]
        );

        let exec = Arc::new(host(&["iptables", "nft"], LEGACY_V, "broken", our_tables()));
        let findings = Firewalls::new(exec).probe().await;
        assert!(findings[0].availability.ours_in.contains("legacy"));
        assert!(!findings[0].availability.usable && !findings[0].availability.holds_ours);
        assert!(findings[1].availability.usable && findings[1].availability.holds_ours);
        assert_eq!(decide(Request::Auto, &findings).unwrap().kind, NFTABLES);

        // Nothing installed: nothing run, nothing usable.
        let exec = Arc::new(host(&[], "", "", ""));
        let findings = Firewalls::new(exec.clone()).probe().await;
        assert!(findings.iter().all(|f| !f.availability.usable));
        assert!(exec.calls().is_empty());
    }

    #[tokio::test]
    async fn the_factory_chooses_without_probing_for_named_backends() {
        let exec = Arc::new(host(&["iptables"], NFT_V, "", NO_TABLES));
        let firewalls = Firewalls::new(exec.clone());
        let s = firewalls.choose(Request::Named(NFTABLES)).await.unwrap();
        assert_eq!(s.kind, NFTABLES);
        assert!(exec.calls().is_empty());
        assert_eq!(firewalls.build(s.kind).name(), "nftables");
        let s = firewalls.choose(Request::Auto).await.unwrap();
        assert_eq!(s.kind, IPTABLES);
        assert_eq!(firewalls.build(s.kind).name(), "iptables");
        // Every registry entry builds the backend of its own name.
        for kind in BACKENDS {
            assert_eq!(firewalls.build(kind).name(), kind.as_str());
        }
    }
}
