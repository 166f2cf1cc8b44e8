//! The iptables backend: the existing ecs-init's exact rules, made idempotent and all-or-nothing.
//!
//! Rules are written exactly as the Go ecs-init writes them (packaging/COMPATIBILITY.md §6), so
//! rules left by the Go tool are recognised and cleaned up, and operators see the familiar lines in
//! `iptables -S`. Unlike the Go tool every command uses `-w` (wait for the xtables lock), every
//! rule is checked (`-C`) before it is added, and an apply that fails part-way undoes what it did.
//! Works the same with iptables-nft and iptables-legacy: only the `iptables`/`ip6tables` programs
//! differ, and `-S` prints the same lines for both.
use crate::backend::{Availability, Backend, FirewallKind};
use crate::exec::{self, is_not_found};
use crate::rules::{Family, Hook, Position, CREDENTIALS_ENDPOINT, INTROSPECTION_PORT};
use crate::{Firewall, FirewallError, Result, Rule, RuleSet, Scope};
use async_trait::async_trait;
use ecs_host::exec::command_line;
use ecs_host::Exec;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

/// The interface name of loopback, as the existing tool uses it (`! -i lo`).
const LOOPBACK: &str = "lo";

/// The chains we touch, in the order apply visits them.
const GROUPS: [(Family, Hook); 4] = [
    (Family::V4, Hook::NatPrerouting),
    (Family::V4, Hook::FilterInput),
    (Family::V6, Hook::FilterInput),
    (Family::V4, Hook::NatOutput),
];

/// iptables / ip6tables, by program name (looked up on the search path of the [`Exec`]).
#[derive(Debug, Clone)]
pub struct Iptables {
    exec: Arc<dyn Exec>,
    v4: String,
    v6: String,
}

/// One undo step of an apply in progress.
#[derive(Debug)]
enum Undo {
    /// We added this rule: delete it.
    Delete(Rule),
    /// We deleted this rule from this 1-based position: insert it there again.
    Insert(Rule, usize),
}

fn table_chain(hook: Hook) -> (&'static str, &'static str) {
    match hook {
        Hook::NatPrerouting => ("nat", "PREROUTING"),
        Hook::NatOutput => ("nat", "OUTPUT"),
        Hook::FilterInput => ("filter", "INPUT"),
    }
}

/// The rule specification, exactly as the existing ecs-init passes it.
fn rule_args(rule: &Rule) -> Vec<String> {
    let v = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    match rule {
        Rule::CredentialsDnat { endpoint, target } => {
            let mut a = v(&["-p", "tcp", "-d"]);
            a.push(endpoint.ip().to_string());
            a.push("--dport".into());
            a.push(endpoint.port().to_string());
            a.extend(v(&["-j", "DNAT", "--to-destination"]));
            a.push(target.to_string());
            a
        }
        Rule::CredentialsRedirect {
            endpoint,
            target_port,
        } => {
            let mut a = v(&["-p", "tcp", "-d"]);
            a.push(endpoint.ip().to_string());
            a.push("--dport".into());
            a.push(endpoint.port().to_string());
            a.extend(v(&["-j", "REDIRECT", "--to-ports"]));
            a.push(target_port.to_string());
            a
        }
        Rule::LocalhostFilter => v(&[
            "--dst",
            "127.0.0.0/8",
            "!",
            "--src",
            "127.0.0.0/8",
            "-m",
            "conntrack",
            "!",
            "--ctstate",
            "RELATED,ESTABLISHED,DNAT",
            "-j",
            "DROP",
        ]),
        Rule::IntrospectionBlock { port, scope, .. } => {
            let mut a = v(&["-p", "tcp", "--dport"]);
            a.push(port.to_string());
            match scope {
                Scope::AllExceptLoopback => a.extend(v(&["!", "-i", LOOPBACK])),
                Scope::Interface(name) => a.extend(["-i".to_string(), name.clone()]),
            }
            a.extend(v(&["-j", "DROP"]));
            a
        }
        Rule::IntrospectionBridgeAccept { port, bridge, .. } => {
            let mut a = v(&["-p", "tcp", "--dport"]);
            a.push(port.to_string());
            a.extend([
                "-i".to_string(),
                bridge.clone(),
                "-j".into(),
                "ACCEPT".into(),
            ]);
            a
        }
    }
}

/// Recognise one of our rules in an `iptables -S CHAIN` line (`-A CHAIN …`). Only rules on our
/// ports/endpoint are ours; anything else in the chain is left alone.
fn parse_rule(family: Family, hook: Hook, line: &str) -> Option<Rule> {
    let tokens: Vec<&str> = line.split_whitespace().collect();
    let (_, chain) = table_chain(hook);
    let rest = match tokens.as_slice() {
        ["-A", c, rest @ ..] if *c == chain => rest,
        _ => return None,
    };
    let endpoint = |d: &str, p: &str| -> Option<SocketAddrV4> {
        let ip: Ipv4Addr = d.strip_suffix("/32").unwrap_or(d).parse().ok()?;
        let ep = SocketAddrV4::new(ip, p.parse().ok()?);
        (ep == CREDENTIALS_ENDPOINT).then_some(ep)
    };
    let our_port = |p: &str| -> Option<u16> {
        let p: u16 = p.parse().ok()?;
        (p == INTROSPECTION_PORT).then_some(p)
    };
    match (hook, family, rest) {
        (
            Hook::NatPrerouting,
            Family::V4,
            ["-d", d, "-p", "tcp", "-m", "tcp", "--dport", p, "-j", "DNAT", "--to-destination", to],
        ) => Some(Rule::CredentialsDnat {
            endpoint: endpoint(d, p)?,
            target: to.parse().ok()?,
        }),
        (
            Hook::NatOutput,
            Family::V4,
            ["-d", d, "-p", "tcp", "-m", "tcp", "--dport", p, "-j", "REDIRECT", "--to-ports", tp],
        ) => Some(Rule::CredentialsRedirect {
            endpoint: endpoint(d, p)?,
            target_port: tp.parse().ok()?,
        }),
        (
            Hook::FilterInput,
            Family::V4,
            ["!", "-s", "127.0.0.0/8", "-d", "127.0.0.0/8", "-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED,DNAT", "-j", "DROP"],
        ) => Some(Rule::LocalhostFilter),
        (
            Hook::FilterInput,
            _,
            ["!", "-i", lo, "-p", "tcp", "-m", "tcp", "--dport", p, "-j", "DROP"],
        ) if *lo == LOOPBACK => Some(Rule::IntrospectionBlock {
            family,
            port: our_port(p)?,
            scope: Scope::AllExceptLoopback,
        }),
        (
            Hook::FilterInput,
            _,
            ["-i", name, "-p", "tcp", "-m", "tcp", "--dport", p, "-j", verdict],
        ) => {
            let port = our_port(p)?;
            match *verdict {
                "DROP" => Some(Rule::IntrospectionBlock {
                    family,
                    port,
                    scope: Scope::Interface(name.to_string()),
                }),
                "ACCEPT" => Some(Rule::IntrospectionBridgeAccept {
                    family,
                    port,
                    bridge: name.to_string(),
                }),
                _ => None,
            }
        }
        _ => None,
    }
}

/// iptables' entry in the firewall registry ([`crate::BACKENDS`]).
pub const KIND: FirewallKind = FirewallKind(&IptablesBackend);

/// The iptables backend: its name, probe and constructor.
pub struct IptablesBackend;

#[async_trait]
impl Backend for IptablesBackend {
    fn name(&self) -> &'static str {
        "iptables"
    }

    fn puts_rules(&self) -> bool {
        true
    }

    /// `iptables -V` (which variant), then `iptables -w -t nat -S PREROUTING` (kernel support
    /// present, and whether our credentials DNAT rule is there). Read-only.
    async fn probe(&self, exec: &dyn Exec) -> Availability {
        let mut variant = None;
        if exec.find("iptables").is_some() {
            if let Ok(out) = exec.run("iptables", &exec::args(&["-V"])).await {
                if out.success && out.stdout.starts_with("iptables v") {
                    variant = Some(if out.stdout.contains("nf_tables") {
                        "the nf_tables variant"
                    } else {
                        "the legacy variant"
                    });
                }
            }
        }
        let Some(variant) = variant else {
            return Availability {
                unusable_because: "iptables is not installed".into(),
                ..Availability::default()
            };
        };
        let (mut usable, mut holds_ours) = (false, false);
        let listing = exec::args(&["-w", "-t", "nat", "-S", "PREROUTING"]);
        if let Ok(out) = exec.run("iptables", &listing).await {
            usable = out.success;
            holds_ours = out.success
                && out.stdout.lines().any(|l| {
                    l.starts_with("-A PREROUTING -d 169.254.170.2/32 ") && l.contains("-j DNAT")
                });
        }
        Availability {
            usable,
            holds_ours,
            ours_in: format!("iptables ({variant})"),
            usable_because: format!(
                "iptables is installed and working ({variant}), as the existing ecs-init uses"
            ),
            unusable_because: "iptables is installed but not usable".into(),
        }
    }

    fn build(&self, exec: Arc<dyn Exec>) -> Box<dyn Firewall> {
        Box::new(Iptables::new(exec))
    }
}

impl Iptables {
    /// The host's `iptables` / `ip6tables` (whichever variant the system links them to).
    pub fn new(exec: Arc<dyn Exec>) -> Iptables {
        Iptables::with_programs(exec, "iptables", "ip6tables")
    }

    /// Explicit programs, e.g. `iptables-legacy` / `ip6tables-legacy`.
    pub fn with_programs(
        exec: Arc<dyn Exec>,
        v4: impl Into<String>,
        v6: impl Into<String>,
    ) -> Iptables {
        Iptables {
            exec,
            v4: v4.into(),
            v6: v6.into(),
        }
    }

    fn program(&self, family: Family) -> &str {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    /// `-w -t TABLE OP CHAIN [INDEX] SPEC…`
    fn args(rule: &Rule, op: &str, index: Option<usize>) -> Vec<String> {
        let (table, chain) = table_chain(rule.hook());
        let mut a = vec![
            "-w".to_string(),
            "-t".into(),
            table.into(),
            op.into(),
            chain.into(),
        ];
        if let Some(i) = index {
            a.push(i.to_string());
        }
        a.extend(rule_args(rule));
        a
    }

    /// The command that adds `rule` the way the existing tool does (`-I` or `-A`).
    fn add_args(rule: &Rule) -> Vec<String> {
        let op = match rule.position() {
            Position::Top => "-I",
            Position::Bottom => "-A",
        };
        Iptables::args(rule, op, None)
    }

    /// `-C`: is this exact rule in its chain? Exit 1 means "no such rule"; any other failure
    /// (bad interface name, missing kernel support) is an error.
    async fn check(&self, rule: &Rule) -> Result<bool> {
        let program = self.program(rule.family());
        let args = Iptables::args(rule, "-C", None);
        let out = exec::run(self.exec.as_ref(), program, &args).await?;
        match (out.success, out.code) {
            (true, _) => Ok(true),
            (false, Some(1)) => Ok(false),
            _ => Err(FirewallError::Command {
                command: command_line(program, &args),
                stderr: out.stderr,
            }),
        }
    }

    async fn run_rule(&self, rule: &Rule, args: Vec<String>) -> Result<()> {
        exec::run_ok(self.exec.as_ref(), self.program(rule.family()), &args)
            .await
            .map(|_| ())
    }

    async fn insert_at(&self, rule: &Rule, index: usize) -> Result<()> {
        self.run_rule(rule, Iptables::args(rule, "-I", Some(index)))
            .await
    }

    async fn delete(&self, rule: &Rule) -> Result<()> {
        self.run_rule(rule, Iptables::args(rule, "-D", None)).await
    }

    /// Our rules in one chain, top to bottom, with their 1-based positions. `None` when the
    /// program is not installed (then there can be none of our rules either).
    async fn list(&self, family: Family, hook: Hook) -> Result<Option<Vec<(usize, Rule)>>> {
        let (table, chain) = table_chain(hook);
        let program = self.program(family);
        let args = exec::args(&["-w", "-t", table, "-S", chain]);
        let out = match exec::run_ok(self.exec.as_ref(), program, &args).await {
            Ok(out) => out,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut index = 0;
        let mut ours = Vec::new();
        for line in out.stdout.lines() {
            if !line.starts_with("-A ") {
                continue;
            }
            index += 1;
            if let Some(rule) = parse_rule(family, hook, line) {
                ours.push((index, rule));
            }
        }
        Ok(Some(ours))
    }

    /// Bring one chain to exactly `desired` (top to bottom), recording undo steps.
    async fn converge_chain(
        &self,
        family: Family,
        hook: Hook,
        desired: &[&Rule],
        journal: &mut Vec<Undo>,
    ) -> Result<()> {
        let listed = match self.list(family, hook).await {
            Ok(Some(listed)) => listed,
            // No ip6tables and nothing wanted there: nothing to do.
            Ok(None) if desired.is_empty() => return Ok(()),
            Ok(None) => {
                return Err(FirewallError::Other(format!(
                    "{} is not installed but {} {:?} rule(s) are wanted",
                    self.program(family),
                    desired.len(),
                    family
                )))
            }
            Err(e) => return Err(e),
        };
        let present: Vec<&Rule> = listed.iter().map(|(_, r)| r).collect();
        if present == desired {
            return Ok(());
        }
        let position = match hook {
            Hook::FilterInput => Position::Top,
            _ => Position::Bottom,
        };
        // Crash between two inserts (or an older run that wanted fewer rules): the rules we
        // have are the bottom part of what we want; insert the missing ones right above them.
        if position == Position::Top && !present.is_empty() {
            if let Some(k) = desired.len().checked_sub(present.len()) {
                if desired[k..] == present[..] {
                    let at = listed[0].0;
                    for rule in desired[..k].iter().rev() {
                        self.add_checked(rule, Some(at), journal).await?;
                    }
                    return Ok(());
                }
            }
        }
        // Otherwise remove every rule of ours that is stale, duplicated or out of order, then add
        // what is missing. For the top-inserted chain that is all of ours (order matters there).
        let mut kept: Vec<&Rule> = Vec::new();
        let mut removed = 0;
        for (index, rule) in &listed {
            let keep =
                position == Position::Bottom && desired.contains(&rule) && !kept.contains(&rule);
            if keep {
                kept.push(rule);
                continue;
            }
            tracing::info!(rule = ?rule, "removing stale, duplicate or misplaced rule");
            self.delete(rule).await?;
            journal.push(Undo::Insert(rule.clone(), index - removed));
            removed += 1;
        }
        match position {
            Position::Top => {
                for rule in desired.iter().rev() {
                    self.add_checked(rule, None, journal).await?;
                }
            }
            Position::Bottom => {
                for rule in desired.iter().filter(|r| !kept.contains(r)) {
                    self.add_checked(rule, None, journal).await?;
                }
            }
        }
        Ok(())
    }

    /// Add `rule` unless `-C` finds it (never a duplicate, even if listing missed it).
    async fn add_checked(
        &self,
        rule: &Rule,
        at: Option<usize>,
        journal: &mut Vec<Undo>,
    ) -> Result<()> {
        if self.check(rule).await? {
            return Ok(());
        }
        let args = match at {
            Some(i) => Iptables::args(rule, "-I", Some(i)),
            None => Iptables::add_args(rule),
        };
        self.run_rule(rule, args).await?;
        journal.push(Undo::Delete(rule.clone()));
        Ok(())
    }

    /// Undo an apply that failed, newest step first. Errors are logged: the original error is
    /// what the caller needs to see.
    async fn rollback(&self, journal: Vec<Undo>) {
        for step in journal.into_iter().rev() {
            let result = match &step {
                Undo::Delete(rule) => self.delete(rule).await,
                Undo::Insert(rule, index) => match self.insert_at(rule, *index).await {
                    Ok(()) => Ok(()),
                    // The chain got shorter meanwhile: put it back at its end.
                    Err(_) if rule.position() == Position::Bottom => {
                        self.run_rule(rule, Iptables::args(rule, "-A", None)).await
                    }
                    Err(_) => self.insert_at(rule, 1).await,
                },
            };
            if let Err(e) = result {
                tracing::error!(step = ?step, error = %e, "rollback step failed");
            }
        }
    }
}

#[async_trait]
impl Firewall for Iptables {
    fn name(&self) -> &'static str {
        "iptables"
    }

    async fn apply(&self, rules: &RuleSet) -> Result<()> {
        let mut journal = Vec::new();
        for (family, hook) in GROUPS {
            let desired = rules.chain_order(family, hook);
            if let Err(e) = self
                .converge_chain(family, hook, &desired, &mut journal)
                .await
            {
                tracing::warn!(error = %e, steps = journal.len(), "iptables apply failed; rolling back");
                self.rollback(journal).await;
                return Err(e);
            }
        }
        Ok(())
    }

    async fn remove(&self, rules: &RuleSet) -> Result<()> {
        let mut targets: Vec<Rule> = Vec::new();
        let mut errors = Vec::new();
        match self.applied().await {
            Ok(found) => targets.extend(found.rules),
            Err(e) => errors.push(e.to_string()),
        }
        for rule in &rules.rules {
            if !targets.contains(rule) {
                targets.push(rule.clone());
            }
        }
        targets.dedup();
        for rule in targets.iter().rev() {
            // Every copy (the Go tool could leave several); bounded in case a delete is a no-op.
            for _ in 0..64 {
                match self.check(rule).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) if is_not_found(&e) && rule.family() == Family::V6 => break,
                    Err(e) => {
                        errors.push(e.to_string());
                        break;
                    }
                }
                if let Err(e) = self.delete(rule).await {
                    errors.push(e.to_string());
                    break;
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(FirewallError::Other(format!(
                "removing iptables rules: {}",
                errors.join("; ")
            )))
        }
    }

    async fn applied(&self) -> Result<RuleSet> {
        let mut chains = Vec::new();
        for (family, hook) in GROUPS {
            if let Some(listed) = self.list(family, hook).await? {
                chains.push((family, hook, listed.into_iter().map(|(_, r)| r).collect()));
            }
        }
        Ok(RuleSet::from_chains(&chains))
    }

    fn render(&self, rules: &RuleSet) -> Vec<String> {
        rules
            .rules
            .iter()
            .map(|rule| command_line(self.program(rule.family()), &Iptables::add_args(rule)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RuleOptions;

    fn all_rules() -> RuleSet {
        RuleSet::build(&RuleOptions::every_rule())
    }

    #[test]
    fn renders_the_existing_tools_rules() {
        let lines = Iptables::new(Arc::new(Xtables::default().exec())).render(&all_rules());
        assert_eq!(
            lines,
            [
                "iptables -w -t nat -A PREROUTING -p tcp -d 169.254.170.2 --dport 80 -j DNAT --to-destination 127.0.0.1:51679",
                "iptables -w -t filter -I INPUT --dst 127.0.0.0/8 ! --src 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
                "iptables -w -t filter -I INPUT -p tcp --dport 51678 ! -i lo -j DROP",
                "iptables -w -t filter -I INPUT -p tcp --dport 51678 -i docker0 -j ACCEPT",
                "ip6tables -w -t filter -I INPUT -p tcp --dport 51678 ! -i lo -j DROP",
                "ip6tables -w -t filter -I INPUT -p tcp --dport 51678 -i docker0 -j ACCEPT",
                "iptables -w -t nat -A OUTPUT -p tcp -d 169.254.170.2 --dport 80 -j REDIRECT --to-ports 51679",
            ]
        );
    }

    #[test]
    fn parses_what_iptables_s_prints() {
        let v4 = Family::V4;
        let cases = [
            (Hook::NatPrerouting, "-A PREROUTING -d 169.254.170.2/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 127.0.0.1:51679"),
            (Hook::NatOutput, "-A OUTPUT -d 169.254.170.2/32 -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 51679"),
            (Hook::FilterInput, "-A INPUT ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"),
            (Hook::FilterInput, "-A INPUT ! -i lo -p tcp -m tcp --dport 51678 -j DROP"),
            (Hook::FilterInput, "-A INPUT -i docker0 -p tcp -m tcp --dport 51678 -j ACCEPT"),
        ];
        let parsed: Vec<Rule> = cases
            .iter()
            .map(|(h, l)| parse_rule(v4, *h, l).unwrap_or_else(|| panic!("{l}")))
            .collect();
        let want = all_rules();
        for rule in parsed {
            assert!(want.rules.contains(&rule), "{rule:?}");
        }
        // The Go 1.63 line's one-interface block is ours too (so it gets cleaned up) ...
        assert_eq!(
            parse_rule(
                v4,
                Hook::FilterInput,
                "-A INPUT -i eth0 -p tcp -m tcp --dport 51678 -j DROP"
            ),
            Some(Rule::IntrospectionBlock {
                family: v4,
                port: 51678,
                scope: Scope::Interface("eth0".into())
            })
        );
        // ... but an operator's rule on another port or address is not.
        assert_eq!(
            parse_rule(
                v4,
                Hook::FilterInput,
                "-A INPUT -i eth0 -p tcp -m tcp --dport 22 -j DROP"
            ),
            None
        );
        assert_eq!(parse_rule(v4, Hook::NatPrerouting, "-A PREROUTING -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 127.0.0.1:51679"), None);
        assert_eq!(parse_rule(v4, Hook::FilterInput, "-P INPUT ACCEPT"), None);
    }

    // ---- a model of iptables' rule tables behind the Exec seam, for converge and rollback ----

    use ecs_host::exec::FakeExec;
    use ecs_host::Output;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// How `iptables -S` prints one of our rules (the inverse of [`parse_rule`]).
    fn s_line(rule: &Rule) -> String {
        let (_, chain) = table_chain(rule.hook());
        let body = match rule {
            Rule::CredentialsDnat { endpoint, target } => format!(
                "-d {}/32 -p tcp -m tcp --dport {} -j DNAT --to-destination {target}",
                endpoint.ip(),
                endpoint.port()
            ),
            Rule::CredentialsRedirect {
                endpoint,
                target_port,
            } => format!(
                "-d {}/32 -p tcp -m tcp --dport {} -j REDIRECT --to-ports {target_port}",
                endpoint.ip(),
                endpoint.port()
            ),
            Rule::LocalhostFilter => "! -s 127.0.0.0/8 -d 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP".into(),
            Rule::IntrospectionBlock { port, scope, .. } => match scope {
                Scope::AllExceptLoopback => format!("! -i lo -p tcp -m tcp --dport {port} -j DROP"),
                Scope::Interface(i) => format!("-i {i} -p tcp -m tcp --dport {port} -j DROP"),
            },
            Rule::IntrospectionBridgeAccept { port, bridge, .. } => {
                format!("-i {bridge} -p tcp -m tcp --dport {port} -j ACCEPT")
            }
        };
        format!("-A {chain} {body}")
    }

    /// Every rule the tests use, to map a command's rule specification back to a rule.
    fn universe() -> Vec<Rule> {
        let mut all = all_rules().rules;
        for family in [Family::V4, Family::V6] {
            all.push(Rule::IntrospectionBlock {
                family,
                port: INTROSPECTION_PORT,
                scope: Scope::Interface("eth0".into()),
            });
        }
        all
    }

    /// The kernel's tables as `-S` lines per (program, table, chain); an operator's rule is
    /// kept in INPUT to check it is never touched.
    #[derive(Default, Clone)]
    struct Tables(HashMap<(String, String, String), Vec<String>>);

    const OPERATOR_RULE: &str = "-A INPUT -s 10.0.0.0/8 -p tcp -m tcp --dport 22 -j ACCEPT";

    #[derive(Default, Clone)]
    struct Xtables {
        state: Arc<Mutex<Tables>>,
        /// A command line containing this fails (exit 2) when run.
        fail_on: Arc<Mutex<Option<String>>>,
    }

    impl Xtables {
        fn with_operator_rule() -> Xtables {
            let x = Xtables::default();
            x.set("iptables", "filter", "INPUT", vec![OPERATOR_RULE.into()]);
            x
        }

        fn lines(&self, program: &str, table: &str, chain: &str) -> Vec<String> {
            self.state
                .lock()
                .unwrap()
                .0
                .get(&(program.into(), table.into(), chain.into()))
                .cloned()
                .unwrap_or_default()
        }

        fn set(&self, program: &str, table: &str, chain: &str, lines: Vec<String>) {
            self.state
                .lock()
                .unwrap()
                .0
                .insert((program.into(), table.into(), chain.into()), lines);
        }

        fn answer(&self, program: &str, args: &[String]) -> Output {
            let line = ecs_host::exec::command_line(program, args);
            if let Some(f) = self.fail_on.lock().unwrap().as_ref() {
                if line.contains(f.as_str()) {
                    return Output::failed(2, "iptables: injected failure");
                }
            }
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            let ["-w", "-t", table, op, chain, rest @ ..] = a.as_slice() else {
                return Output::failed(2, format!("unexpected: {line}"));
            };
            let mut lines = self.lines(program, table, chain);
            let (index, spec) = match rest {
                [n, spec @ ..] if n.parse::<usize>().is_ok() => {
                    (Some(n.parse::<usize>().unwrap()), spec)
                }
                spec => (None, spec),
            };
            let spec: Vec<String> = spec.iter().map(|s| s.to_string()).collect();
            let rule = universe().into_iter().find(|r| rule_args(r) == spec);
            let out = match (*op, rule) {
                ("-S", _) => {
                    let mut out = format!("-P {chain} ACCEPT\n");
                    for l in &lines {
                        out.push_str(l);
                        out.push('\n');
                    }
                    return Output::ok(out);
                }
                ("-C", Some(r)) => {
                    return if lines.contains(&s_line(&r)) {
                        Output::ok("")
                    } else {
                        Output::failed(
                            1,
                            "iptables: Bad rule (does a matching rule exist in that chain?).",
                        )
                    }
                }
                ("-A", Some(r)) => {
                    lines.push(s_line(&r));
                    Output::ok("")
                }
                ("-I", Some(r)) => {
                    let at = index.unwrap_or(1) - 1;
                    if at > lines.len() {
                        return Output::failed(1, "iptables: Index of insertion too big.");
                    }
                    lines.insert(at, s_line(&r));
                    Output::ok("")
                }
                ("-D", Some(r)) => match lines.iter().position(|l| *l == s_line(&r)) {
                    Some(i) => {
                        lines.remove(i);
                        Output::ok("")
                    }
                    None => return Output::failed(1, "iptables: Bad rule"),
                },
                _ => return Output::failed(2, format!("unexpected: {line}")),
            };
            self.set(program, table, chain, lines);
            out
        }

        fn exec(&self) -> FakeExec {
            let me = self.clone();
            FakeExec::new(&["iptables", "ip6tables"], move |p, a| Ok(me.answer(p, a)))
        }

        fn iptables(&self) -> (Arc<FakeExec>, Iptables) {
            let exec = Arc::new(self.exec());
            (exec.clone(), Iptables::new(exec))
        }

        /// Our rules in one chain, top to bottom.
        fn ours(&self, program: &str, table: &str, chain: &str) -> Vec<String> {
            self.lines(program, table, chain)
                .into_iter()
                .filter(|l| l != OPERATOR_RULE)
                .collect()
        }

        /// The whole state as it would be after a clean apply of `rules` on an empty host.
        async fn expected(rules: &RuleSet) -> Tables {
            let x = Xtables::with_operator_rule();
            let (_, ipt) = x.iptables();
            ipt.apply(rules).await.unwrap();
            let t = x.state.lock().unwrap().clone();
            t
        }
    }

    fn snapshot(x: &Xtables) -> HashMap<(String, String, String), Vec<String>> {
        x.state.lock().unwrap().0.clone()
    }

    fn adds(exec: &FakeExec) -> Vec<String> {
        exec.calls()
            .into_iter()
            .filter(|c| c.contains(" -A ") || c.contains(" -I ") || c.contains(" -D "))
            .collect()
    }

    #[tokio::test]
    async fn apply_converges_once_and_is_idempotent() {
        let x = Xtables::with_operator_rule();
        let (exec, ipt) = x.iptables();
        let rules = all_rules();
        ipt.apply(&rules).await.unwrap();
        // Chain order as the existing tool's -I/-A leave it, the operator's rule below ours.
        assert_eq!(
            x.lines("iptables", "filter", "INPUT"),
            [
                "-A INPUT -i docker0 -p tcp -m tcp --dport 51678 -j ACCEPT",
                "-A INPUT ! -i lo -p tcp -m tcp --dport 51678 -j DROP",
                "-A INPUT ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
                OPERATOR_RULE,
            ]
        );
        assert_eq!(x.ours("iptables", "nat", "PREROUTING").len(), 1);
        assert_eq!(x.ours("ip6tables", "filter", "INPUT").len(), 2);
        assert_eq!(ipt.applied().await.unwrap(), rules);
        // Every add was checked first.
        let calls = exec.calls();
        for (i, c) in calls.iter().enumerate() {
            if c.contains(" -A ") || c.contains(" -I ") {
                assert!(
                    calls[i - 1].contains(" -C "),
                    "{c} not checked first: {calls:?}"
                );
            }
        }
        // A second apply lists and changes nothing.
        let before = adds(&exec).len();
        ipt.apply(&rules).await.unwrap();
        assert_eq!(adds(&exec).len(), before, "{:?}", exec.calls());
    }

    #[tokio::test]
    async fn apply_removes_duplicates_stale_and_misordered_rules_of_ours_only() {
        let rules = all_rules();
        let x = Xtables::with_operator_rule();
        let dnat = s_line(&rules.rules[0]);
        let stale = s_line(&Rule::IntrospectionBlock {
            family: Family::V4,
            port: INTROSPECTION_PORT,
            scope: Scope::Interface("eth0".into()),
        });
        x.set("iptables", "nat", "PREROUTING", vec![dnat.clone(), dnat]);
        let mut input = x.lines("iptables", "filter", "INPUT");
        input.insert(0, stale.clone());
        input.push(s_line(&Rule::LocalhostFilter));
        x.set("iptables", "filter", "INPUT", input);
        let (_, ipt) = x.iptables();
        ipt.apply(&rules).await.unwrap();
        assert_eq!(snapshot(&x), Xtables::expected(&rules).await.0);
    }

    #[tokio::test]
    async fn a_crash_between_inserts_is_completed_above_the_rules_present() {
        let rules = all_rules();
        let x = Xtables::with_operator_rule();
        // The bottom part of the INPUT rules is there (the first -I ran), the rest is missing.
        let mut input = x.lines("iptables", "filter", "INPUT");
        input.insert(0, s_line(&Rule::LocalhostFilter));
        x.set("iptables", "filter", "INPUT", input);
        let (exec, ipt) = x.iptables();
        ipt.apply(&rules).await.unwrap();
        assert_eq!(snapshot(&x), Xtables::expected(&rules).await.0);
        assert!(
            !exec
                .calls()
                .iter()
                .any(|c| c.starts_with("iptables -w -t filter -D")),
            "the present rule was kept, not re-added: {:?}",
            exec.calls()
        );
    }

    #[tokio::test]
    async fn a_failed_apply_rolls_back_to_exactly_the_state_before() {
        let rules = all_rules();
        let x = Xtables::with_operator_rule();
        // A stale rule that converge deletes first, then an ip6tables insert that fails.
        let stale = s_line(&Rule::IntrospectionBlock {
            family: Family::V4,
            port: INTROSPECTION_PORT,
            scope: Scope::Interface("eth0".into()),
        });
        let mut input = x.lines("iptables", "filter", "INPUT");
        input.insert(0, stale);
        x.set("iptables", "filter", "INPUT", input);
        let before = snapshot(&x);
        *x.fail_on.lock().unwrap() = Some("ip6tables -w -t filter -I INPUT".into());
        let (_, ipt) = x.iptables();
        let err = ipt.apply(&rules).await.unwrap_err();
        assert!(err.to_string().contains("injected failure"), "{err}");
        assert!(
            err.to_string().contains("ip6tables -w -t filter -I INPUT"),
            "{err}"
        );
        let after: HashMap<_, _> = snapshot(&x)
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .collect();
        assert_eq!(after, before);
    }

    #[tokio::test]
    async fn remove_takes_out_every_copy_and_nothing_else() {
        let rules = all_rules();
        let x = Xtables::with_operator_rule();
        let (_, ipt) = x.iptables();
        ipt.apply(&rules).await.unwrap();
        // A second copy of the DNAT rule, as the Go tool leaves after an unclean stop.
        let mut nat = x.lines("iptables", "nat", "PREROUTING");
        nat.push(nat[0].clone());
        x.set("iptables", "nat", "PREROUTING", nat);
        ipt.remove(&rules).await.unwrap();
        for ((program, table, chain), _) in snapshot(&x) {
            assert!(
                x.ours(&program, &table, &chain).is_empty(),
                "{program} {table} {chain}"
            );
        }
        assert_eq!(x.lines("iptables", "filter", "INPUT"), [OPERATOR_RULE]);
        // Removing again (nothing there) is fine.
        ipt.remove(&rules).await.unwrap();
    }

    #[tokio::test]
    async fn no_ip6tables_is_fine_when_no_ipv6_rule_is_wanted() {
        let x = Xtables::default();
        let exec = Arc::new(FakeExec::new(&["iptables"], {
            let x = x.clone();
            move |p, a| Ok(x.answer(p, a))
        }));
        let ipt = Iptables::new(exec);
        let v4_only = RuleSet::build(&RuleOptions {
            ipv6: false,
            ..RuleOptions::every_rule()
        });
        ipt.apply(&v4_only).await.unwrap();
        ipt.remove(&v4_only).await.unwrap();
        let err = ipt.apply(&all_rules()).await.unwrap_err();
        assert!(
            err.to_string().contains("ip6tables is not installed"),
            "{err}"
        );
        assert!(
            x.ours("iptables", "filter", "INPUT").is_empty(),
            "rolled back"
        );
    }
}
