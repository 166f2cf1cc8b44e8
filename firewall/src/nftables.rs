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
use crate::exec::{self, command_line};
use crate::rules::{Family, Hook};
use crate::{Firewall, FirewallError, Result, Rule, RuleSet, Scope};
use async_trait::async_trait;
use nftables::batch::Batch;
use nftables::expr::{
    BinaryOperation, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix,
    SetItem, CT,
};
use nftables::schema::{Chain, NfListObject, Nftables as NftDoc, Rule as NftRule, Table};
use nftables::stmt::{Match, Operator, Statement, NAT};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use serde_json::Value;
use std::borrow::Cow;
use std::net::SocketAddrV4;

/// The name of our tables (one per family).
pub const TABLE: &str = "ecs-init";

/// The `nft` program (looked up on `PATH`).
#[derive(Debug, Clone)]
pub struct Nftables {
    program: String,
}

impl Default for Nftables {
    fn default() -> Self {
        Nftables::new()
    }
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
fn chain_of(hook: Hook) -> (&'static str, NfChainType, NfHook, i32) {
    match hook {
        Hook::NatPrerouting => ("prerouting", NfChainType::NAT, NfHook::Prerouting, -100),
        Hook::NatOutput => ("output", NfChainType::NAT, NfHook::Output, -100),
        Hook::FilterInput => ("input", NfChainType::Filter, NfHook::Input, 0),
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

fn iifname(op: Operator, name: &str) -> Stmt {
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
            let (name, kind, nf_hook, prio) = chain_of(*hook);
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
            let kind_word = match kind {
                NfChainType::NAT => "nat",
                _ => "filter",
            };
            let hook_word = match nf_hook {
                NfHook::Prerouting => "prerouting",
                NfHook::Output => "output",
                _ => "input",
            };
            text.push(format!(
                "add chain {word} {TABLE} {name} {{ type {kind_word} hook {hook_word} priority {prio}; policy accept; }}"
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

/// The remove transaction: our two tables, nothing else.
fn remove_batch() -> (NftDoc<'static>, Vec<String>) {
    let mut batch = Batch::new();
    let mut text = Vec::new();
    for family in [Family::V4, Family::V6] {
        let table = || {
            NfListObject::Table(Table {
                family: nf_family(family),
                name: Cow::Borrowed(TABLE),
                handle: None,
            })
        };
        batch.add(table());
        batch.delete(table());
        let word = family_word(family);
        text.push(format!("add table {word} {TABLE}"));
        text.push(format!("delete table {word} {TABLE}"));
    }
    (batch.to_nftables(), text)
}

/// Decode one of our rules from `nft -j` output (the shapes [`statements`] writes).
fn decode_rule(family: Family, chain: &str, expr: &[Value]) -> Option<Rule> {
    let mut daddr: Option<Value> = None;
    let mut saddr_ne: Option<Value> = None;
    let mut dport: Option<u16> = None;
    let mut iif: Option<(String, String)> = None;
    let mut ct_state_ne = false;
    let mut ct_status_ne_dnat = false;
    let mut verdict: Option<&str> = None;
    let mut nat_to: Option<(Option<String>, Option<u16>)> = None;
    for stmt in expr {
        if let Some(m) = stmt.get("match") {
            let op = m.get("op")?.as_str()?;
            let left = m.get("left")?;
            let right = m.get("right")?;
            let field = left.pointer("/payload/field").and_then(Value::as_str);
            let proto = left.pointer("/payload/protocol").and_then(Value::as_str);
            match (proto, field, op) {
                (Some("ip"), Some("daddr"), "==") => daddr = Some(right.clone()),
                (Some("ip"), Some("saddr"), "!=") => saddr_ne = Some(right.clone()),
                (Some("tcp"), Some("dport"), "==") => {
                    dport = right.as_u64().and_then(|p| p.try_into().ok())
                }
                _ if left.pointer("/meta/key").and_then(Value::as_str) == Some("iifname") => {
                    iif = Some((op.to_string(), right.as_str()?.to_string()))
                }
                _ if left.pointer("/ct/key").and_then(Value::as_str) == Some("state")
                    && op == "!=" =>
                {
                    ct_state_ne = true
                }
                _ if left.pointer("/&/0/ct/key").and_then(Value::as_str) == Some("status")
                    && op == "!="
                    && right.as_str() == Some("dnat") =>
                {
                    ct_status_ne_dnat = true
                }
                _ => return None,
            }
        } else if stmt.get("accept").is_some() {
            verdict = Some("accept");
        } else if stmt.get("drop").is_some() {
            verdict = Some("drop");
        } else if let Some(n) = stmt.get("dnat").or_else(|| stmt.get("redirect")) {
            let addr = n.get("addr").and_then(Value::as_str).map(str::to_string);
            let port = n
                .get("port")
                .and_then(Value::as_u64)
                .and_then(|p| p.try_into().ok());
            nat_to = Some((addr, port));
            verdict = Some(if stmt.get("dnat").is_some() {
                "dnat"
            } else {
                "redirect"
            });
        } else if stmt.get("counter").is_none() {
            return None;
        }
    }
    let loopback_prefix = |v: &Option<Value>| {
        v.as_ref()
            .and_then(|v| v.pointer("/prefix/addr"))
            .and_then(Value::as_str)
            == Some("127.0.0.0")
            && v.as_ref()
                .and_then(|v| v.pointer("/prefix/len"))
                .and_then(Value::as_u64)
                == Some(8)
    };
    let endpoint = || -> Option<SocketAddrV4> {
        Some(SocketAddrV4::new(
            daddr.as_ref()?.as_str()?.parse().ok()?,
            dport?,
        ))
    };
    match (chain, verdict?) {
        ("prerouting", "dnat") => {
            let (addr, port) = nat_to.clone()?;
            Some(Rule::CredentialsDnat {
                endpoint: endpoint()?,
                target: SocketAddrV4::new(addr?.parse().ok()?, port?),
            })
        }
        ("output", "redirect") => Some(Rule::CredentialsRedirect {
            endpoint: endpoint()?,
            target_port: nat_to.clone()?.1?,
        }),
        ("input", "drop")
            if loopback_prefix(&daddr)
                && loopback_prefix(&saddr_ne)
                && ct_state_ne
                && ct_status_ne_dnat =>
        {
            Some(Rule::LocalhostFilter)
        }
        ("input", "drop") => {
            let (op, name) = iif?;
            let scope = match (op.as_str(), name.as_str()) {
                ("!=", "lo") => Scope::AllExceptLoopback,
                ("==", _) => Scope::Interface(name),
                _ => return None,
            };
            Some(Rule::IntrospectionBlock {
                family,
                port: dport?,
                scope,
            })
        }
        ("input", "accept") => {
            let (op, name) = iif?;
            (op == "==").then_some(())?;
            Some(Rule::IntrospectionBridgeAccept {
                family,
                port: dport?,
                bridge: name,
            })
        }
        _ => None,
    }
}

impl Nftables {
    /// The host's `nft`.
    pub fn new() -> Nftables {
        Nftables::with_program("nft")
    }

    /// An explicit `nft` program.
    pub fn with_program(program: impl Into<String>) -> Nftables {
        Nftables {
            program: program.into(),
        }
    }

    async fn send(&self, doc: &NftDoc<'_>) -> Result<()> {
        let payload = serde_json::to_string(doc)
            .map_err(|e| FirewallError::Other(format!("serialising the nft batch: {e}")))?;
        tracing::debug!(batch = %payload, "nft -j -f -");
        let mut child = tokio::process::Command::new(&self.program)
            .args(["-j", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|source| FirewallError::Spawn {
                tool: self.program.clone(),
                source,
            })?;
        {
            use tokio::io::AsyncWriteExt;
            let mut stdin = child.stdin.take().expect("piped stdin");
            stdin
                .write_all(payload.as_bytes())
                .await
                .map_err(|source| FirewallError::Spawn {
                    tool: self.program.clone(),
                    source,
                })?;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|source| FirewallError::Spawn {
                tool: self.program.clone(),
                source,
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(FirewallError::Command {
                command: format!("{} -j -f - <<< {payload}", self.program),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    /// Which of our tables exist now.
    async fn our_tables(&self) -> Result<Vec<Family>> {
        let args: Vec<String> = ["-j", "list", "tables"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let out = exec::run_ok(&self.program, &args).await?;
        Ok(tables_in(&out.stdout))
    }
}

/// Our tables among `nft -j list tables` output.
pub(crate) fn tables_in(json: &str) -> Vec<Family> {
    let doc: Value = serde_json::from_str(json).unwrap_or(Value::Null);
    let mut found = Vec::new();
    for obj in doc
        .get("nftables")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(t) = obj.get("table") else { continue };
        if t.get("name").and_then(Value::as_str) != Some(TABLE) {
            continue;
        }
        match t.get("family").and_then(Value::as_str) {
            Some("ip") => found.push(Family::V4),
            Some("ip6") => found.push(Family::V6),
            _ => {}
        }
    }
    found
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
        for family in self.our_tables().await? {
            let args: Vec<String> = ["-j", "list", "table", family_word(family), TABLE]
                .iter()
                .map(|s| s.to_string())
                .collect();
            let out = exec::run_ok(&self.program, &args).await?;
            let doc: Value = serde_json::from_str(&out.stdout).map_err(|e| {
                FirewallError::Other(format!(
                    "{}: bad JSON: {e}",
                    command_line(&self.program, &args)
                ))
            })?;
            for hook in [Hook::NatPrerouting, Hook::NatOutput, Hook::FilterInput] {
                let (name, ..) = chain_of(hook);
                let mut found = Vec::new();
                for obj in doc
                    .get("nftables")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let Some(rule) = obj.get("rule") else {
                        continue;
                    };
                    if rule.get("chain").and_then(Value::as_str) != Some(name) {
                        continue;
                    }
                    let expr = rule
                        .get("expr")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    match decode_rule(family, name, &expr) {
                        Some(r) => found.push(r),
                        None => tracing::warn!(rule = %rule, "unrecognised rule in our nft table"),
                    }
                }
                chains.push((family, hook, found));
            }
        }
        Ok(RuleSet::from_chains(&chains))
    }

    fn render(&self, rules: &RuleSet) -> Vec<String> {
        apply_batch(rules).1
    }
}

/// The `nft -f` lines of the remove transaction (for `plan` and docs).
pub fn render_remove() -> Vec<String> {
    remove_batch().1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RuleOptions;

    fn all_rules() -> RuleSet {
        RuleSet::build(&RuleOptions::every_rule())
    }

    #[test]
    fn renders_one_transaction_per_family() {
        let lines = Nftables::new().render(&all_rules());
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
        // Round trip through the JSON the batch sends (nft lists the same shapes back).
        let set = all_rules();
        let doc = serde_json::to_value(apply_batch(&set).0).unwrap();
        let mut chains = Vec::new();
        for family in [Family::V4, Family::V6] {
            for hook in [Hook::NatPrerouting, Hook::NatOutput, Hook::FilterInput] {
                let (name, ..) = chain_of(hook);
                let found: Vec<Rule> = doc["nftables"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|o| o.pointer("/add/rule"))
                    .filter(|r| r["chain"] == name && r["family"] == family_word(family))
                    .map(|r| {
                        decode_rule(family, name, r["expr"].as_array().unwrap()).expect("decodes")
                    })
                    .collect();
                chains.push((family, hook, found));
            }
        }
        assert_eq!(RuleSet::from_chains(&chains), set);
    }
}
