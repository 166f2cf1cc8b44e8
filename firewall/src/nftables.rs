//! The nftables backend: tables owned by this tool (`ip ecs-init`, `ip6 ecs-init`), written as
//! one atomic `nft -j -f -` transaction.
//!
//! Apply sends, in one batch, `add table; delete table; add table; add chain…; add rule…` for
//! each family: the kernel either takes the whole new rule set (replacing any earlier copy of
//! ours, so re-apply never duplicates) or nothing. Remove is `add table; delete table` for both
//! families, also one batch. No other table is ever named, and the rule set is never flushed.
//!
//! Chains mirror the iptables hooks and priorities, so the packet-level effect is the same:
//! `prerouting` (nat, dstnat -100), `output` (nat, -100), `input` (filter, 0). Within `input` the
//! rules are in the order the iptables backend's `-I` produces (bridge ACCEPT, block, localhost
//! filter). Two backends' verdicts combine like two iptables tables: a DROP in either drops, an
//! ACCEPT only ends our chain.
use crate::backend::{Availability, Backend, FirewallKind};
use crate::exec::{args, run_ok, run_ok_with_input};
use crate::rules::{Family, Hook};
use crate::{Firewall, FirewallError, Result, Rule, RuleSet, Scope};
use async_trait::async_trait;
use ecs_host::Exec;
use nftables::batch::Batch;
use nftables::expr::{
    BinaryOperation, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix,
    SetItem, CT,
};
use nftables::schema::{Chain, NfListObject, NfObject, Nftables as NftDoc, Rule as NftRule, Table};
use nftables::stmt::{Match, Operator, Statement, NAT};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use std::borrow::Cow;
use std::net::SocketAddrV4;
use std::sync::Arc;

/// The name of our tables (one per family).
pub const TABLE: &str = "ecs-init";

/// The `nft` program, run through the [`Exec`] seam: batches go in as the `nftables` crate's
/// JSON schema on stdin (`nft -j -f -`), listings come back as JSON read with its typed schema.
#[derive(Debug, Clone)]
pub struct Nftables {
    exec: Arc<dyn Exec>,
    program: String,
}

/// One statement in both forms: the JSON the batch sends and the `nft` syntax `plan` shows.
type Stmt = (Statement<'static>, String);

fn nf_family(family: Family) -> NfFamily {
    match family {
        Family::V4 => NfFamily::IP,
        Family::V6 => NfFamily::IP6,
    }
}

fn family_word(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

/// (chain name, type, hook, priority) of the chain holding `hook`'s rules.
/// A hook's base chain: its name (also the nft hook's word), type (and its word), hook, priority.
fn chain_of(hook: Hook) -> (&'static str, NfChainType, &'static str, NfHook, i32) {
    match hook {
        Hook::NatPrerouting => (
            "prerouting",
            NfChainType::NAT,
            "nat",
            NfHook::Prerouting,
            -100,
        ),
        Hook::NatOutput => ("output", NfChainType::NAT, "nat", NfHook::Output, -100),
        Hook::FilterInput => ("input", NfChainType::Filter, "filter", NfHook::Input, 0),
    }
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed(protocol),
            field: Cow::Borrowed(field),
        },
    )))
}

fn matches(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn s(value: impl Into<String>) -> Expression<'static> {
    Expression::String(Cow::Owned(value.into()))
}

fn daddr_v4(addr: std::net::Ipv4Addr) -> Stmt {
    (
        matches(payload("ip", "daddr"), Operator::EQ, s(addr.to_string())),
        format!("ip daddr {addr}"),
    )
}

fn tcp_dport(port: u16) -> Stmt {
    (
        matches(
            payload("tcp", "dport"),
            Operator::EQ,
            Expression::Number(port.into()),
        ),
        format!("tcp dport {port}"),
    )
}

/// nft's spelling of an interface pattern: a trailing `+` (iptables' wildcard, our canonical
/// form) is nft's `*`.
fn nft_ifname(name: &str) -> String {
    match name.strip_suffix('+') {
        Some(stem) => format!("{stem}*"),
        None => name.to_string(),
    }
}

/// The canonical pattern of an nft interface string (inverse of [`nft_ifname`]).
fn canonical_ifname(name: &str) -> String {
    match name.strip_suffix('*') {
        Some(stem) => format!("{stem}+"),
        None => name.to_string(),
    }
}

fn iifname(op: Operator, name: &str) -> Stmt {
    let name = &nft_ifname(name);
    let text = match op {
        Operator::NEQ => format!("iifname != \"{name}\""),
        _ => format!("iifname \"{name}\""),
    };
    (
        matches(
            Expression::Named(NamedExpression::Meta(Meta {
                key: MetaKey::Iifname,
            })),
            op,
            s(name),
        ),
        text,
    )
}

fn loopback_net(field: &'static str, op: Operator) -> Stmt {
    let prefix = Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(s("127.0.0.0")),
        len: 8,
    }));
    let text = match op {
        Operator::NEQ => format!("ip {field} != 127.0.0.0/8"),
        _ => format!("ip {field} 127.0.0.0/8"),
    };
    (matches(payload("ip", field), op, prefix), text)
}

fn ct(key: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: Cow::Borrowed(key),
        family: None,
        dir: None,
    }))
}

/// The statements of one rule, in both forms.
fn statements(rule: &Rule) -> Vec<Stmt> {
    match rule {
        Rule::CredentialsDnat { endpoint, target } => vec![
            daddr_v4(*endpoint.ip()),
            tcp_dport(endpoint.port()),
            (
                Statement::DNAT(Some(NAT {
                    addr: Some(s(target.ip().to_string())),
                    family: None,
                    port: Some(Expression::Number(target.port().into())),
                    flags: None,
                })),
                format!("dnat to {target}"),
            ),
        ],
        Rule::CredentialsRedirect {
            endpoint,
            target_port,
        } => vec![
            daddr_v4(*endpoint.ip()),
            tcp_dport(endpoint.port()),
            (
                Statement::Redirect(Some(NAT {
                    addr: None,
                    family: None,
                    port: Some(Expression::Number((*target_port).into())),
                    flags: None,
                })),
                format!("redirect to :{target_port}"),
            ),
        ],
        // iptables: ! --ctstate RELATED,ESTABLISHED,DNAT. `ct state` holds exactly one state, so
        // "not in {established, related}" is the same test; DNAT is a status bit.
        Rule::LocalhostFilter => vec![
            loopback_net("daddr", Operator::EQ),
            loopback_net("saddr", Operator::NEQ),
            (
                matches(
                    ct("state"),
                    Operator::NEQ,
                    Expression::Named(NamedExpression::Set(vec![
                        SetItem::Element(s("established")),
                        SetItem::Element(s("related")),
                    ])),
                ),
                "ct state != { established, related }".into(),
            ),
            (
                matches(
                    Expression::BinaryOperation(Box::new(BinaryOperation::AND(
                        ct("status"),
                        s("dnat"),
                    ))),
                    Operator::NEQ,
                    s("dnat"),
                ),
                "ct status & dnat != dnat".into(),
            ),
            (Statement::Drop(None), "drop".into()),
        ],
        Rule::IntrospectionBlock { port, scope, .. } => vec![
            match scope {
                Scope::AllExceptLoopback => iifname(Operator::NEQ, "lo"),
                Scope::Interface(name) => iifname(Operator::EQ, name),
            },
            tcp_dport(*port),
            (Statement::Drop(None), "drop".into()),
        ],
        Rule::IntrospectionBridgeAccept { port, bridge, .. } => vec![
            iifname(Operator::EQ, bridge),
            tcp_dport(*port),
            (Statement::Accept(None), "accept".into()),
        ],
    }
}

/// The apply transaction for `rules`, as JSON objects and as `nft -f` lines.
fn apply_batch(rules: &RuleSet) -> (NftDoc<'static>, Vec<String>) {
    let mut batch = Batch::new();
    let mut text = Vec::new();
    for family in [Family::V4, Family::V6] {
        let fam = nf_family(family);
        let word = family_word(family);
        let table = || {
            NfListObject::Table(Table {
                family: fam,
                name: Cow::Borrowed(TABLE),
                handle: None,
            })
        };
        // add + delete: removes any earlier copy (or succeeds when there is none).
        batch.add(table());
        batch.delete(table());
        text.push(format!("add table {word} {TABLE}"));
        text.push(format!("delete table {word} {TABLE}"));
        let hooks: Vec<(Hook, Vec<&Rule>)> =
            [Hook::NatPrerouting, Hook::NatOutput, Hook::FilterInput]
                .into_iter()
                .map(|h| (h, rules.chain_order(family, h)))
                .filter(|(_, r)| !r.is_empty())
                .collect();
        if hooks.is_empty() {
            continue;
        }
        batch.add(table());
        text.push(format!("add table {word} {TABLE}"));
        for (hook, _) in &hooks {
            let (name, kind, kind_word, nf_hook, prio) = chain_of(*hook);
            batch.add(NfListObject::Chain(Chain {
                family: fam,
                table: Cow::Borrowed(TABLE),
                name: Cow::Borrowed(name),
                _type: Some(kind),
                hook: Some(nf_hook),
                prio: Some(prio),
                policy: Some(NfChainPolicy::Accept),
                ..Chain::default()
            }));
            text.push(format!(
                "add chain {word} {TABLE} {name} {{ type {kind_word} hook {name} priority {prio}; policy accept; }}"
            ));
        }
        for (hook, chain_rules) in &hooks {
            let (name, ..) = chain_of(*hook);
            for rule in chain_rules {
                let (stmts, words): (Vec<_>, Vec<_>) = statements(rule).into_iter().unzip();
                batch.add(NfListObject::Rule(NftRule {
                    family: fam,
                    table: Cow::Borrowed(TABLE),
                    chain: Cow::Borrowed(name),
                    expr: Cow::Owned(stmts),
                    ..NftRule::default()
                }));
                text.push(format!(
                    "add rule {word} {TABLE} {name} {}",
                    words.join(" ")
                ));
            }
        }
    }
    (batch.to_nftables(), text)
}

/// The remove transaction: our two tables, nothing else (the apply transaction of no rules).
fn remove_batch() -> (NftDoc<'static>, Vec<String>) {
    apply_batch(&RuleSet::default())
}

/// What [`decode_rule`] collects from one rule's statements.
#[derive(Default)]
struct Seen {
    daddr: Option<String>,
    daddr_loopback: bool,
    saddr_not_loopback: bool,
    dport: Option<u16>,
    iif: Option<(Operator, String)>,
    ct_state_ne: bool,
    ct_status_ne_dnat: bool,
    verdict: Option<&'static str>,
    nat_to: Option<(Option<String>, Option<u16>)>,
}

fn as_str<'e>(e: &'e Expression<'_>) -> Option<&'e str> {
    match e {
        Expression::String(s) => Some(s),
        _ => None,
    }
}

fn as_port(e: &Expression<'_>) -> Option<u16> {
    match e {
        Expression::Number(n) => (*n).try_into().ok(),
        _ => None,
    }
}

fn is_loopback_prefix(e: &Expression<'_>) -> bool {
    matches!(e, Expression::Named(NamedExpression::Prefix(Prefix { addr, len: 8 }))
        if as_str(addr) == Some("127.0.0.0"))
}

fn ct_key<'e>(e: &'e Expression<'_>) -> Option<&'e str> {
    match e {
        Expression::Named(NamedExpression::CT(ct)) => Some(&ct.key),
        _ => None,
    }
}

impl Seen {
    /// Record one `match` statement; `None` when it is not one we write.
    fn matched(&mut self, m: &Match<'_>) -> Option<()> {
        match &m.left {
            Expression::Named(NamedExpression::Payload(Payload::PayloadField(f))) => {
                match (f.protocol.as_ref(), f.field.as_ref(), m.op) {
                    ("ip", "daddr", Operator::EQ) if is_loopback_prefix(&m.right) => {
                        self.daddr_loopback = true
                    }
                    ("ip", "daddr", Operator::EQ) => {
                        self.daddr = Some(as_str(&m.right)?.to_string())
                    }
                    ("ip", "saddr", Operator::NEQ) if is_loopback_prefix(&m.right) => {
                        self.saddr_not_loopback = true
                    }
                    ("tcp", "dport", Operator::EQ) => self.dport = Some(as_port(&m.right)?),
                    _ => return None,
                }
            }
            Expression::Named(NamedExpression::Meta(Meta {
                key: MetaKey::Iifname,
            })) => self.iif = Some((m.op, canonical_ifname(as_str(&m.right)?))),
            left if ct_key(left) == Some("state") && m.op == Operator::NEQ => {
                self.ct_state_ne = true
            }
            Expression::BinaryOperation(op) => match op.as_ref() {
                BinaryOperation::AND(l, r)
                    if ct_key(l) == Some("status")
                        && as_str(r) == Some("dnat")
                        && m.op == Operator::NEQ
                        && as_str(&m.right) == Some("dnat") =>
                {
                    self.ct_status_ne_dnat = true
                }
                _ => return None,
            },
            _ => return None,
        }
        Some(())
    }

    fn nat(&mut self, verdict: &'static str, n: Option<&NAT<'_>>) {
        let addr = n
            .and_then(|n| n.addr.as_ref())
            .and_then(as_str)
            .map(str::to_string);
        let port = n.and_then(|n| n.port.as_ref()).and_then(as_port);
        self.nat_to = Some((addr, port));
        self.verdict = Some(verdict);
    }
}

/// Decode one of our rules from its statements as `nft -j` lists them (the shapes
/// [`statements`] writes); `None` for anything else.
fn decode_rule(family: Family, chain: &str, expr: &[Statement<'_>]) -> Option<Rule> {
    let mut seen = Seen::default();
    for stmt in expr {
        match stmt {
            Statement::Match(m) => seen.matched(m)?,
            Statement::Accept(_) => seen.verdict = Some("accept"),
            Statement::Drop(_) => seen.verdict = Some("drop"),
            Statement::DNAT(n) => seen.nat("dnat", n.as_ref()),
            Statement::Redirect(n) => seen.nat("redirect", n.as_ref()),
            Statement::Counter(_) => {}
            _ => return None,
        }
    }
    let endpoint = || -> Option<SocketAddrV4> {
        Some(SocketAddrV4::new(
            seen.daddr.as_ref()?.parse().ok()?,
            seen.dport?,
        ))
    };
    match (chain, seen.verdict?) {
        ("prerouting", "dnat") => {
            let (addr, port) = seen.nat_to.clone()?;
            Some(Rule::CredentialsDnat {
                endpoint: endpoint()?,
                target: SocketAddrV4::new(addr?.parse().ok()?, port?),
            })
        }
        ("output", "redirect") => Some(Rule::CredentialsRedirect {
            endpoint: endpoint()?,
            target_port: seen.nat_to.clone()?.1?,
        }),
        ("input", "drop")
            if seen.daddr_loopback
                && seen.saddr_not_loopback
                && seen.ct_state_ne
                && seen.ct_status_ne_dnat =>
        {
            Some(Rule::LocalhostFilter)
        }
        ("input", "drop") => {
            let (op, name) = seen.iif.clone()?;
            let scope = match (op, name.as_str()) {
                (Operator::NEQ, "lo") => Scope::AllExceptLoopback,
                (Operator::EQ, _) => Scope::Interface(name),
                _ => return None,
            };
            Some(Rule::IntrospectionBlock {
                family,
                port: seen.dport?,
                scope,
            })
        }
        ("input", "accept") => {
            let (op, name) = seen.iif.clone()?;
            (op == Operator::EQ).then_some(())?;
            Some(Rule::IntrospectionBridgeAccept {
                family,
                port: seen.dport?,
                bridge: name,
            })
        }
        _ => None,
    }
}

/// Our tables among the objects of a listing.
pub(crate) fn tables_in(doc: &NftDoc<'_>) -> Vec<Family> {
    doc.objects
        .iter()
        .filter_map(|o| match o {
            NfObject::ListObject(NfListObject::Table(t)) if t.name == TABLE => match t.family {
                NfFamily::IP => Some(Family::V4),
                NfFamily::IP6 => Some(Family::V6),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Parse `nft -j` output with the crate's typed schema.
pub(crate) fn parse_listing(json: &str) -> std::result::Result<NftDoc<'static>, String> {
    serde_json::from_str(json).map_err(|e| format!("unexpected `nft -j` output: {e}"))
}

/// nftables' entry in the firewall registry ([`crate::BACKENDS`]).
pub const KIND: FirewallKind = FirewallKind(&NftablesBackend);

/// The nftables backend: its name, probe and constructor.
pub struct NftablesBackend;

#[async_trait]
impl Backend for NftablesBackend {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn puts_rules(&self) -> bool {
        true
    }

    /// `nft -j list tables`: whether nft works, and whether one of our tables exists. Read-only.
    async fn probe(&self, exec: &dyn Exec) -> Availability {
        let mut found = Availability {
            ours_in: format!("nftables table {TABLE}"),
            usable_because: "nft is available".into(),
            unusable_because: "nft is not installed".into(),
            ..Availability::default()
        };
        if exec.find("nft").is_some() {
            found.unusable_because = "nft is installed but not usable".into();
            if let Ok(out) = exec.run("nft", &args(&["-j", "list", "tables"])).await {
                found.usable = out.success;
                found.holds_ours = out.success
                    && parse_listing(&out.stdout).is_ok_and(|doc| !tables_in(&doc).is_empty());
            }
        }
        found
    }

    /// `nft` as found on the search path (the bare name when it is not installed, so that the
    /// error names it).
    fn build(&self, exec: Arc<dyn Exec>) -> Box<dyn Firewall> {
        let program = exec
            .find("nft")
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "nft".into());
        Box::new(Nftables::new(exec, program))
    }
}

impl Nftables {
    /// `nft` at this path (the composition root resolves it on the search path), run by `exec`.
    pub fn new(exec: Arc<dyn Exec>, program: impl Into<String>) -> Nftables {
        Nftables {
            exec,
            program: program.into(),
        }
    }

    /// `nft -j <args>` with `input` on stdin (or none): its stdout, or an error naming the
    /// command and nft's complaint.
    async fn nft(&self, a: &[&str], input: Option<&[u8]>) -> Result<String> {
        let (exec, a) = (self.exec.as_ref(), args(&[&["-j"], a].concat()));
        let out = match input {
            Some(input) => run_ok_with_input(exec, &self.program, &a, input).await?,
            None => run_ok(exec, &self.program, &a).await?,
        };
        Ok(out.stdout)
    }

    /// Send one batch (`nft -j -f -`): the kernel takes all of it or nothing.
    async fn send(&self, doc: &NftDoc<'_>) -> Result<()> {
        let json = serde_json::to_string(doc)
            .map_err(|e| FirewallError::Other(format!("encoding the nft batch: {e}")))?;
        tracing::debug!(batch = %json, "nft -j -f -");
        self.nft(&["-f", "-"], Some(json.as_bytes()))
            .await
            .map(drop)
    }

    /// `nft -j <args>`, typed.
    async fn list(&self, a: &[&str]) -> Result<NftDoc<'static>> {
        let json = self.nft(a, None).await?;
        parse_listing(&json)
            .map_err(|e| FirewallError::Other(format!("{} -j {}: {e}", self.program, a.join(" "))))
    }
}

#[async_trait]
impl Firewall for Nftables {
    fn name(&self) -> &'static str {
        "nftables"
    }

    async fn apply(&self, rules: &RuleSet) -> Result<()> {
        self.send(&apply_batch(rules).0).await
    }

    async fn remove(&self, _rules: &RuleSet) -> Result<()> {
        self.send(&remove_batch().0).await
    }

    async fn applied(&self) -> Result<RuleSet> {
        let mut chains = Vec::new();
        for family in tables_in(&self.list(&["list", "tables"]).await?) {
            let doc = self
                .list(&["list", "table", family_word(family), TABLE])
                .await?;
            for hook in [Hook::NatPrerouting, Hook::NatOutput, Hook::FilterInput] {
                let (name, ..) = chain_of(hook);
                let found = doc
                    .objects
                    .iter()
                    .filter_map(|o| match o {
                        NfObject::ListObject(NfListObject::Rule(r)) if r.chain == name => Some(r),
                        _ => None,
                    })
                    .filter_map(|r| {
                        let rule = decode_rule(family, name, &r.expr);
                        if rule.is_none() {
                            tracing::warn!(rule = ?r.expr, "unrecognised rule in our nft table");
                        }
                        rule
                    })
                    .collect();
                chains.push((family, hook, found));
            }
        }
        Ok(RuleSet::from_chains(&chains))
    }

    fn render(&self, rules: &RuleSet) -> Vec<String> {
        apply_batch(rules).1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RuleOptions;
    use ecs_host::exec::FakeExec;
    use ecs_host::Output;

    fn all_rules() -> RuleSet {
        RuleSet::build(&RuleOptions::every_rule())
    }

    /// An `nft` that lists what nft 1.0.6 (Debian 12) lists after our batch was applied, and
    /// takes every batch (or refuses it, with nft's complaint).
    fn fake_nft(accept: bool) -> (Arc<FakeExec>, Nftables) {
        let exec = Arc::new(FakeExec::new(&["nft"], move |_, a| {
            Ok(match a.join(" ").as_str() {
                "-j list tables" => {
                    Output::ok(include_str!("../tests/fixtures/nft-list-tables.json"))
                }
                "-j list table ip ecs-init" => {
                    Output::ok(include_str!("../tests/fixtures/nft-list-table-ip.json"))
                }
                "-j list table ip6 ecs-init" => {
                    Output::ok(include_str!("../tests/fixtures/nft-list-table-ip6.json"))
                }
                "-j -f -" if accept => Output::ok(""),
                "-j -f -" => {
                    Output::failed(1, "Error: Could not process rule: Operation not permitted")
                }
                other => panic!("unexpected nft {other}"),
            })
        }));
        (exec.clone(), Nftables::new(exec, "nft"))
    }

    /// Apply and remove are one `nft -j -f -` each, with the batch (the JSON of what `render`
    /// shows) on stdin; a refused batch is an error naming the command and nft's words.
    #[tokio::test]
    async fn apply_and_remove_send_one_batch_each() {
        let (exec, nft) = fake_nft(true);
        nft.apply(&all_rules()).await.unwrap();
        nft.remove(&all_rules()).await.unwrap();
        assert_eq!(exec.calls(), ["nft -j -f -", "nft -j -f -"]);
        let inputs = exec.inputs();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&inputs[0]).unwrap(),
            serde_json::to_value(apply_batch(&all_rules()).0).unwrap()
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&inputs[1]).unwrap(),
            serde_json::to_value(remove_batch().0).unwrap()
        );
        let (_, refusing) = fake_nft(false);
        let err = refusing.apply(&all_rules()).await.unwrap_err().to_string();
        assert!(
            err.contains("nft -j -f -") && err.contains("Operation not permitted"),
            "{err}"
        );
        let missing = Nftables::new(Arc::new(FakeExec::new(&[], |_, _| unreachable!())), "nft");
        let err = missing.applied().await.unwrap_err();
        assert!(matches!(err, FirewallError::Spawn { .. }), "{err:?}");
        let err = missing.apply(&all_rules()).await.unwrap_err();
        assert!(matches!(err, FirewallError::Spawn { .. }), "{err:?}");
    }

    #[test]
    fn renders_one_transaction_per_family() {
        let lines = fake_nft(true).1.render(&all_rules());
        assert_eq!(
            lines,
            [
                "add table ip ecs-init",
                "delete table ip ecs-init",
                "add table ip ecs-init",
                "add chain ip ecs-init prerouting { type nat hook prerouting priority -100; policy accept; }",
                "add chain ip ecs-init output { type nat hook output priority -100; policy accept; }",
                "add chain ip ecs-init input { type filter hook input priority 0; policy accept; }",
                "add rule ip ecs-init prerouting ip daddr 169.254.170.2 tcp dport 80 dnat to 127.0.0.1:51679",
                "add rule ip ecs-init output ip daddr 169.254.170.2 tcp dport 80 redirect to :51679",
                "add rule ip ecs-init input iifname \"docker0\" tcp dport 51678 accept",
                "add rule ip ecs-init input iifname != \"lo\" tcp dport 51678 drop",
                "add rule ip ecs-init input ip daddr 127.0.0.0/8 ip saddr != 127.0.0.0/8 ct state != { established, related } ct status & dnat != dnat drop",
                "add table ip6 ecs-init",
                "delete table ip6 ecs-init",
                "add table ip6 ecs-init",
                "add chain ip6 ecs-init input { type filter hook input priority 0; policy accept; }",
                "add rule ip6 ecs-init input iifname \"docker0\" tcp dport 51678 accept",
                "add rule ip6 ecs-init input iifname != \"lo\" tcp dport 51678 drop",
            ]
        );
    }

    #[test]
    fn decodes_what_it_writes() {
        // Round trip through the JSON the batch sends (nft lists the same shapes back), read
        // with the crate's typed schema.
        let set = all_rules();
        let doc = apply_batch(&set).0;
        let mut chains = Vec::new();
        for family in [Family::V4, Family::V6] {
            for hook in [Hook::NatPrerouting, Hook::NatOutput, Hook::FilterInput] {
                let (name, ..) = chain_of(hook);
                let found: Vec<Rule> = doc
                    .objects
                    .iter()
                    .filter_map(|o| match o {
                        NfObject::CmdObject(nftables::schema::NfCmd::Add(NfListObject::Rule(
                            r,
                        ))) => Some(r),
                        _ => None,
                    })
                    .filter(|r| r.chain == name && r.family == nf_family(family))
                    .map(|r| decode_rule(family, name, &r.expr).expect("decodes"))
                    .collect();
                chains.push((family, hook, found));
            }
        }
        assert_eq!(RuleSet::from_chains(&chains), set);
    }

    /// What nft 1.0.6 (Debian 12) lists back after this batch was applied, read with the
    /// typed schema: the shapes differ from what we send (prefixes, sets), and must decode.
    #[tokio::test]
    async fn decodes_what_nft_lists() {
        let (exec, nft) = fake_nft(true);
        assert_eq!(nft.applied().await.unwrap(), all_rules());
        assert_eq!(
            exec.calls(),
            [
                "nft -j list tables",
                "nft -j list table ip ecs-init",
                "nft -j list table ip6 ecs-init"
            ]
        );
        assert!(parse_listing("not json").is_err());
    }
}
