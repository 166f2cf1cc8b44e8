//! Host network preparation of pre-start and its undoing in post-stop
//! (packaging/COMPATIBILITY.md §6): `route_localnet`, `accept_ra` on Docker's bridge, the
//! `169.254.170.2/32 dev lo` route on hosts without an IPv4 default route, and the firewall rules
//! through the chosen backend.
//!
//! Everything is read and written relative to the network namespace the process runs in:
//! sysctls through `<proc_sys>/net/...` (per-netns), host facts through `<proc>/net/...`
//! (`proc` = the parent of `proc_sys`), the route through rtnetlink. Nothing shells out except
//! the firewall tools themselves.
use ecs_firewall::rules::{RuleOptions, RuleSet, CREDENTIALS_ENDPOINT};
use ecs_firewall::{Firewall, FirewallError, FirewallKind, Firewalls, Request, Selection};
use ecs_host::Record;
use rtnetlink::packet_route::route::RouteScope;
use serde::Serialize;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// Docker's default bridge.
pub const DOCKER_BRIDGE: &str = "docker0";
/// The file under the state directory naming the backend that applied the rules.
pub const RECORD_FILE: &str = "firewall-backend";
const ROUTE_LOCALNET_ALL: &str = "net/ipv4/conf/all/route_localnet";
const ROUTE_LOCALNET_DEFAULT: &str = "net/ipv4/conf/default/route_localnet";

/// What the launcher knows from its configuration. No backend reads `ecs.config`.
#[derive(Debug, Clone, Serialize)]
pub struct NetConfig {
    /// `ECS_SKIP_LOCALHOST_TRAFFIC_FILTER`.
    pub skip_localhost_filter: bool,
    /// `ECS_ALLOW_OFFHOST_INTROSPECTION_ACCESS`.
    pub allow_offhost_introspection: bool,
    /// `ECS_OFFHOST_INTROSPECTION_INTERFACE_NAME`, when set explicitly.
    pub introspection_interface: Option<String>,
    /// `<root>/var/lib/ecs`: where the chosen backend is recorded for post-stop.
    pub state_dir: PathBuf,
    /// `<root>/var/lib/ecs-init`: root-only and never bound into the agent container; where
    /// the `route_localnet` value to restore is kept (see [`original_route_localnet`]).
    pub private_dir: PathBuf,
    /// Normally `/proc/sys`; its parent is taken as `/proc`.
    pub proc_sys: PathBuf,
    /// Docker's default bridge, as the launcher learned it from the runtime (this crate asks
    /// no runtime).
    pub bridge: Bridge,
}

/// Docker's default bridge as the runtime reported it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bridge {
    /// Not known (containerd, or dockerd did not answer): [`DOCKER_BRIDGE`], when it exists.
    #[default]
    Unknown,
    /// dockerd's default bridge network uses this interface (when it exists).
    Named(String),
    /// dockerd has no default bridge network (`--bridge=none`): no bridge rule, whatever
    /// interface is called `docker0`.
    Absent,
}

impl Bridge {
    /// The interface to look for: the reported name when it is one the kernel allows (no
    /// wildcard, no path characters), else none; `docker0` when nothing was reported.
    pub fn candidate(&self) -> Option<&str> {
        match self {
            Bridge::Unknown => Some(DOCKER_BRIDGE),
            Bridge::Named(name) => match ecs_firewall::interface_pattern(name) {
                Ok(canonical) if canonical == *name && !name.ends_with('+') => Some(name),
                _ => {
                    tracing::warn!(bridge = %name, "the runtime reports a default bridge name that is not a usable interface name; no bridge rule");
                    None
                }
            },
            Bridge::Absent => None,
        }
    }
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            skip_localhost_filter: false,
            allow_offhost_introspection: false,
            introspection_interface: None,
            state_dir: PathBuf::from("/var/lib/ecs"),
            private_dir: PathBuf::from("/var/lib/ecs-init"),
            proc_sys: PathBuf::from("/proc/sys"),
            bridge: Bridge::Unknown,
        }
    }
}

/// One sysctl write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SysctlChange {
    /// Dotted name, e.g. `net.ipv4.conf.all.route_localnet`.
    pub key: String,
    pub value: String,
}

/// The host facts the rule set and the changes depend on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetFacts {
    /// Docker's default bridge, when it exists.
    pub bridge: Option<String>,
    /// The host has IPv6 addresses.
    pub ipv6: bool,
    /// The host has an IPv4 default route (otherwise the lo route is added).
    pub ipv4_default_route: bool,
}

/// What pre-start does (or did) to the host network; printed by `plan`.
#[derive(Debug, Clone, Serialize)]
pub struct NetPlan {
    /// The backend: iptables, nftables or none.
    pub firewall: String,
    /// Why that backend.
    pub reason: String,
    pub facts: NetFacts,
    pub rules: RuleSet,
    /// The exact commands / nft statements the backend issues for `rules`.
    pub rendered: Vec<String>,
    pub sysctls: Vec<SysctlChange>,
    /// Routes added, in `ip route` syntax.
    pub routes: Vec<String>,
}

/// Errors of host network setup/teardown.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("firewall ({backend}): {source}")]
    Firewall {
        backend: String,
        #[source]
        source: FirewallError,
    },
    #[error("sysctl {path}: {source}")]
    Sysctl {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("route {route}: {message}")]
    Route { route: String, message: String },
    #[error("{path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Teardown continues past failures and reports them all.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Several(Vec<NetError>),
}

fn proc_root(cfg: &NetConfig) -> PathBuf {
    cfg.proc_sys
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/proc"))
}

/// Probe the facts of the current network namespace. Read-only.
///
/// The bridge is the one the runtime reported (`docker0` when none was) and exists when
/// `<proc_sys>/net/ipv4/conf/<bridge>` does (every interface has one, and unlike
/// `/sys/class/net` it always follows the caller's namespace); IPv6 is present when
/// `<proc>/net/if_inet6` lists an address; the default route is read from `<proc>/net/route`.
pub fn host_facts(cfg: &NetConfig) -> NetFacts {
    let proc = proc_root(cfg);
    let bridge = cfg
        .bridge
        .candidate()
        .filter(|name| cfg.proc_sys.join("net/ipv4/conf").join(name).is_dir())
        .map(str::to_string);
    let ipv6 = std::fs::read_to_string(proc.join("net/if_inet6"))
        .map(|s| s.lines().any(|l| !l.trim().is_empty()))
        .unwrap_or(false);
    let ipv4_default_route = std::fs::read_to_string(proc.join("net/route"))
        .map(|s| has_default_route(&s))
        .unwrap_or(false);
    NetFacts {
        bridge,
        ipv6,
        ipv4_default_route,
    }
}

/// `/proc/net/route`: a default route has destination and mask 00000000.
fn has_default_route(table: &str) -> bool {
    table.lines().skip(1).any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        f.len() >= 8 && f[1] == "00000000" && f[7] == "00000000"
    })
}

/// The rule options for this config on this host.
pub fn rule_options(cfg: &NetConfig, facts: &NetFacts) -> RuleOptions {
    RuleOptions {
        skip_localhost_filter: cfg.skip_localhost_filter,
        allow_offhost_introspection: cfg.allow_offhost_introspection,
        introspection_interface: cfg.introspection_interface.clone(),
        bridge: facts.bridge.clone(),
        ipv6: facts.ipv6,
    }
}

fn lo_route_text() -> String {
    format!("{}/32 dev lo scope link", CREDENTIALS_ENDPOINT.ip())
}

/// What pre-start would do with `firewall` (chosen as `selection` says). Read-only: reads the
/// namespace's facts, changes nothing.
pub fn plan_network(cfg: &NetConfig, selection: Selection, firewall: &dyn Firewall) -> NetPlan {
    let facts = host_facts(cfg);
    let rules = RuleSet::build(&rule_options(cfg, &facts));
    let rendered = firewall.render(&rules);
    let mut sysctls = vec![SysctlChange {
        key: "net.ipv4.conf.all.route_localnet".into(),
        value: "1".into(),
    }];
    if let Some(bridge) = &facts.bridge {
        sysctls.push(SysctlChange {
            key: format!("net.ipv6.conf.{bridge}.accept_ra"),
            value: "0".into(),
        });
    }
    let routes = if facts.ipv4_default_route {
        Vec::new()
    } else {
        vec![lo_route_text()]
    };
    NetPlan {
        firewall: selection.kind.to_string(),
        reason: selection.reason,
        facts,
        rules,
        rendered,
        sysctls,
        routes,
    }
}

fn record_path(state_dir: &Path) -> PathBuf {
    state_dir.join(RECORD_FILE)
}

/// The record of the last pre-start, if any (an unreadable one counts as none, with a warning).
fn read_record(state_dir: &Path) -> Option<Record> {
    let path = record_path(state_dir);
    match Record::read(&path) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(record = %path.display(), error = %e, "ignoring the firewall record");
            None
        }
    }
}

/// The backend recorded by the last pre-start, if any.
pub fn recorded_backend(state_dir: &Path) -> Option<FirewallKind> {
    read_record(state_dir)?.name.parse().ok()
}

/// Which backends post-stop removes rules with: the recorded one; without a record the
/// configured one; for `auto` (or a configuration that could not be read) every usable one.
pub async fn teardown_backends(
    firewalls: &Firewalls,
    state_dir: &Path,
    request: Option<Request>,
) -> Vec<FirewallKind> {
    match (recorded_backend(state_dir), request) {
        (Some(b), _) => vec![b],
        (None, Some(Request::Named(b))) => vec![b],
        (None, _) => firewalls
            .probe()
            .await
            .into_iter()
            .filter(|f| f.availability.usable)
            .map(|f| f.kind)
            .collect(),
    }
}

fn sysctl_path(cfg: &NetConfig, rel: &str) -> PathBuf {
    cfg.proc_sys.join(rel)
}

fn read_sysctl(path: &Path) -> Result<String, NetError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| NetError::Sysctl {
            path: path.to_path_buf(),
            source,
        })
}

fn write_sysctl(path: &Path, value: &str) -> Result<(), NetError> {
    tracing::info!(sysctl = %path.display(), value, "setting");
    std::fs::write(path, format!("{value}\n")).map_err(|source| NetError::Sysctl {
        path: path.to_path_buf(),
        source,
    })
}

fn netlink_code(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// Add (or remove) `169.254.170.2/32 dev lo scope link` through rtnetlink. Idempotent: an
/// existing route on add, or a missing one on remove, is success. Returns whether the call
/// changed the table.
async fn lo_route(add: bool) -> Result<bool, NetError> {
    let route_err = |message: String| NetError::Route {
        route: lo_route_text(),
        message,
    };
    let lo = {
        let name = std::ffi::CString::new("lo").expect("static name");
        // SAFETY: if_nametoindex reads a NUL-terminated string and touches nothing else. Kept
        // as FFI: std has no wrapper, and rustix's needs a socket opened for the purpose.
        unsafe { libc::if_nametoindex(name.as_ptr()) }
    };
    if lo == 0 {
        return Err(route_err("no loopback interface".into()));
    }
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| route_err(format!("netlink socket: {e}")))?;
    let task = tokio::spawn(conn);
    let msg = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(*CREDENTIALS_ENDPOINT.ip(), 32)
        .output_interface(lo)
        .scope(RouteScope::Link)
        .build();
    let result = if add {
        match handle.route().add(msg).execute().await {
            Err(e) if netlink_code(&e) == Some(libc::EEXIST) => Ok(false),
            other => other.map(|_| true),
        }
    } else {
        match handle.route().del(msg).execute().await {
            Err(e) if netlink_code(&e) == Some(libc::ESRCH) => Ok(false),
            other => other.map(|_| true),
        }
    };
    task.abort();
    result.map_err(|e| route_err(e.to_string()))
}

/// The file under [`NetConfig::private_dir`] holding the `route_localnet` value the first
/// pre-start found (post-stop restores it).
pub const ROUTE_LOCALNET_RECORD: &str = "route_localnet.original";

/// The `route_localnet` value to restore, from the root-only record under `private_dir`; `None`
/// (with a warning when a record is there but not trusted) otherwise.
///
/// Why there and not in `/var/lib/ecs/firewall-backend` (where releases before issue 20 kept
/// it): `/var/lib/ecs` is bound read-write into the agent container, and a value the agent can
/// forge decides whether the host is left with `route_localnet=1` — which, with the rules
/// removed by post-stop, exposes 127.0.0.0/8 services to the network. `/var/lib/ecs-init` is
/// created 0700 by root and is not among the agent's binds (`/run` would not do: the agent
/// gets `/var/run` read-write for the Docker socket). Still, the record is only trusted when
/// the directory is a real directory owned by this process's user and writable by no one
/// else, the file is a regular file (not followed when a symlink), and its value is `0` or
/// `1`; without a trusted record post-stop restores the kernel's `default` value, as before.
pub fn original_route_localnet(private_dir: &Path) -> Option<String> {
    let path = private_dir.join(ROUTE_LOCALNET_RECORD);
    let distrust = |why: String| {
        tracing::warn!(record = %path.display(), "not using the route_localnet record: {why}");
        None
    };
    match trusted_dir(private_dir) {
        Ok(true) => {}
        Ok(false) => return None,
        Err(why) => return distrust(why),
    }
    let text = match ecs_host::files::read_to_string_capped(&path, ecs_host::files::caps::RECORD) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => return distrust(e.to_string()),
    };
    match text.trim() {
        v @ ("0" | "1") => Some(v.to_string()),
        _ => distrust("its value is not 0 or 1".into()),
    }
}

/// Whether `dir` exists as a directory only this process's user can write (`Ok(false)`: it
/// does not exist).
fn trusted_dir(dir: &Path) -> Result<bool, String> {
    use std::os::unix::fs::MetadataExt;
    let m = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e.to_string()),
    };
    let me = rustix::process::geteuid().as_raw();
    if !m.file_type().is_dir() {
        Err(format!("{} is not a directory", dir.display()))
    } else if m.uid() != me || m.mode() & 0o022 != 0 {
        Err(format!(
            "{} is owned by uid {} with mode {:o}; it must be owned by uid {me} and writable by no one else",
            dir.display(),
            m.uid(),
            m.mode() & 0o7777
        ))
    } else {
        Ok(true)
    }
}

/// Record `value` as the `route_localnet` value to restore (root-only directory and file).
fn record_original_route_localnet(private_dir: &Path, value: &str) -> std::io::Result<()> {
    ecs_host::files::ensure_dir(private_dir, 0o700)?;
    trusted_dir(private_dir).map_err(std::io::Error::other)?;
    ecs_host::files::write_atomic(
        &private_dir.join(ROUTE_LOCALNET_RECORD),
        format!("{value}\n").as_bytes(),
        0o600,
    )
}

/// pre-start: remove the previous backend's rules when the backend changed, record the backend
/// (and the `route_localnet` value found, unless an earlier record already holds the original),
/// set the sysctls, add the lo route when needed and apply the rules.
///
/// All or nothing: when the route or the rules cannot be put in place, `route_localnet` is set
/// back, a route this call added is removed and the record is restored, so a failed pre-start
/// never leaves `route_localnet=1` without the localhost filter.
pub async fn setup_network(
    cfg: &NetConfig,
    plan: &NetPlan,
    firewall: &dyn Firewall,
    previous: Option<&dyn Firewall>,
) -> Result<(), NetError> {
    // A different backend applied last time (setting changed without a post-stop): take its
    // rules out so the host never has two copies.
    if let Some(prev) = previous.filter(|p| p.name() != firewall.name()) {
        tracing::warn!(
            previous = prev.name(),
            now = firewall.name(),
            "firewall backend changed; removing the previous backend's rules"
        );
        if let Err(e) = prev.remove(&plan.rules).await {
            tracing::warn!(error = %e, "could not remove the previous backend's rules");
        }
    }
    let all = sysctl_path(cfg, ROUTE_LOCALNET_ALL);
    let found = read_sysctl(&all)?;
    // The value to restore: the one an earlier pre-start recorded (this one may see our own
    // 1), else the one found now.
    let recorded_original = original_route_localnet(&cfg.private_dir);
    if recorded_original.is_none() {
        record_original_route_localnet(&cfg.private_dir, &found).map_err(|source| {
            NetError::State {
                path: cfg.private_dir.join(ROUTE_LOCALNET_RECORD),
                source,
            }
        })?;
    }
    let earlier = match write_setup_record(cfg, plan) {
        Ok(earlier) => earlier,
        Err(e) => {
            if recorded_original.is_none() {
                let _ = ecs_host::files::remove(&cfg.private_dir.join(ROUTE_LOCALNET_RECORD));
            }
            return Err(e);
        }
    };
    let mut route_added = false;
    let result = apply(cfg, plan, firewall, &all, &mut route_added).await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "host network setup failed; undoing the sysctl and route changes");
        undo(cfg, &all, &found, route_added, earlier).await;
        if recorded_original.is_none() {
            if let Err(e) = ecs_host::files::remove(&cfg.private_dir.join(ROUTE_LOCALNET_RECORD)) {
                tracing::error!(error = %e, "could not remove the route_localnet record");
            }
        }
        return Err(e);
    }
    tracing::info!(firewall = %plan.firewall, rules = plan.rules.rules.len(), "host network prepared");
    Ok(())
}

/// Record the backend before anything is applied (so a crash mid-apply still tears down with
/// the right one). Returns the record that was there before.
fn write_setup_record(cfg: &NetConfig, plan: &NetPlan) -> Result<Option<Record>, NetError> {
    let earlier = read_record(&cfg.state_dir);
    let record = Record::new(&plan.firewall, &plan.reason);
    let path = record_path(&cfg.state_dir);
    let state_err = |source| NetError::State {
        path: path.clone(),
        source,
    };
    ecs_host::files::ensure_dir(&cfg.state_dir, 0o755).map_err(state_err)?;
    record.write(&path).map_err(state_err)?;
    Ok(earlier)
}

/// The changes themselves: sysctls, the lo route when needed, the rules.
async fn apply(
    cfg: &NetConfig,
    plan: &NetPlan,
    firewall: &dyn Firewall,
    route_localnet: &Path,
    route_added: &mut bool,
) -> Result<(), NetError> {
    write_sysctl(route_localnet, "1")?;
    if let Some(bridge) = &plan.facts.bridge {
        let path = cfg
            .proc_sys
            .join(format!("net/ipv6/conf/{bridge}/accept_ra"));
        if let Err(e) = write_sysctl(&path, "0") {
            // IPv6 disabled on the bridge: nothing to ignore router advertisements on.
            tracing::debug!(error = %e, "accept_ra not set");
        }
    }
    if !plan.routes.is_empty() {
        tracing::info!(route = %lo_route_text(), "no IPv4 default route: adding");
        *route_added = lo_route(true).await?;
    }
    firewall
        .apply(&plan.rules)
        .await
        .map_err(|source| NetError::Firewall {
            backend: plan.firewall.clone(),
            source,
        })
}

/// Put back what a failed [`apply`] changed: `route_localnet`, a route it added, the record.
async fn undo(
    cfg: &NetConfig,
    route_localnet: &Path,
    found: &str,
    route_added: bool,
    earlier: Option<Record>,
) {
    if let Err(e) = write_sysctl(route_localnet, found) {
        tracing::error!(error = %e, "could not restore route_localnet");
    }
    if route_added {
        if let Err(e) = lo_route(false).await {
            tracing::error!(error = %e, "could not remove the lo route");
        }
    }
    let path = record_path(&cfg.state_dir);
    let restored = match &earlier {
        Some(r) => r.write(&path),
        None => ecs_host::files::remove(&path),
    };
    if let Err(e) = restored {
        tracing::error!(error = %e, "could not restore the firewall record");
    }
}

/// post-stop: remove our rules with each of `firewalls` (see [`teardown_backends`]), restore
/// route_localnet (to the value pre-start recorded under the root-only `private_dir`, see
/// [`original_route_localnet`]; else to the `default` value — never to a value from the
/// agent-writable `/var/lib/ecs`), remove the lo route. Needs no container runtime. Carries on
/// past failures and reports them all; the records are removed once everything succeeded (a
/// record that cannot be removed, e.g. on a read-only `/var/lib/ecs`, is only a warning: the
/// host is clean).
pub async fn teardown_network(
    cfg: &NetConfig,
    firewalls: &[Box<dyn Firewall>],
) -> Result<(), NetError> {
    let facts = host_facts(cfg);
    let rules = RuleSet::build(&rule_options(cfg, &facts));
    let mut errors = Vec::new();
    for fw in firewalls {
        tracing::info!(firewall = fw.name(), "removing firewall rules");
        if let Err(source) = fw.remove(&rules).await {
            errors.push(NetError::Firewall {
                backend: fw.name().to_string(),
                source,
            });
        }
    }
    let restore = match original_route_localnet(&cfg.private_dir) {
        Some(v) => Ok(v),
        None => read_sysctl(&sysctl_path(cfg, ROUTE_LOCALNET_DEFAULT)),
    };
    if let Err(e) = restore.and_then(|v| write_sysctl(&sysctl_path(cfg, ROUTE_LOCALNET_ALL), &v)) {
        errors.push(e);
    }
    if let Err(e) = lo_route(false).await {
        errors.push(e);
    }
    if errors.is_empty() {
        for path in [
            record_path(&cfg.state_dir),
            cfg.private_dir.join(ROUTE_LOCALNET_RECORD),
        ] {
            if let Err(e) = ecs_host::files::remove(&path) {
                tracing::warn!(record = %path.display(), error = %e, "host network cleaned up, but its record could not be removed");
            }
        }
        Ok(())
    } else if errors.len() == 1 {
        Err(errors.remove(0))
    } else {
        Err(NetError::Several(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use ecs_firewall::NoFirewall;

    fn fake_proc(bridge: bool, ipv6: bool, default_route: bool) -> (tempfile::TempDir, NetConfig) {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        std::fs::create_dir_all(sys.join("net/ipv4/conf/all")).unwrap();
        std::fs::create_dir_all(sys.join("net/ipv4/conf/default")).unwrap();
        std::fs::create_dir_all(dir.path().join("net")).unwrap();
        if bridge {
            std::fs::create_dir_all(sys.join("net/ipv4/conf/docker0")).unwrap();
        }
        let inet6 = if ipv6 {
            "00000000000000000000000000000001 01 80 10 80       lo\n"
        } else {
            ""
        };
        std::fs::write(dir.path().join("net/if_inet6"), inet6).unwrap();
        let mut route =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
                .to_string();
        route.push_str("eth0\t0064A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n");
        if default_route {
            route.push_str("eth0\t00000000\t0164A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n");
        }
        std::fs::write(dir.path().join("net/route"), route).unwrap();
        let cfg = NetConfig {
            state_dir: dir.path().join("state"),
            private_dir: dir.path().join("var/lib/ecs-init"),
            proc_sys: sys,
            ..NetConfig::default()
        };
        (dir, cfg)
    }

    fn none_selection() -> Selection {
        Selection {
            kind: ecs_firewall::none::KIND,
            reason: "ECS_INIT_FIREWALL=none".into(),
        }
    }

    #[test]
    fn facts_follow_the_proc_tree() {
        let (_d, cfg) = fake_proc(true, true, true);
        assert_eq!(
            host_facts(&cfg),
            NetFacts {
                bridge: Some("docker0".into()),
                ipv6: true,
                ipv4_default_route: true
            }
        );
        let (_d, cfg) = fake_proc(false, false, false);
        assert_eq!(
            host_facts(&cfg),
            NetFacts {
                bridge: None,
                ipv6: false,
                ipv4_default_route: false
            }
        );
    }

    /// The bridge dockerd reports decides the ACCEPT rule and `accept_ra`: its own name when
    /// it exists here, none when dockerd has no default bridge (even with a `docker0` present),
    /// `docker0` when the runtime said nothing (containerd), and never a name the kernel would
    /// refuse (a path, a wildcard).
    #[test]
    fn the_reported_bridge_name_decides() {
        let (d, mut cfg) = fake_proc(true, false, true);
        std::fs::create_dir_all(cfg.proc_sys.join("net/ipv4/conf/br-ecs")).unwrap();
        let bridge_of = |cfg: &NetConfig| host_facts(cfg).bridge;
        assert_eq!(
            bridge_of(&cfg).as_deref(),
            Some("docker0"),
            "unknown: docker0"
        );
        cfg.bridge = Bridge::Named("br-ecs".into());
        assert_eq!(bridge_of(&cfg).as_deref(), Some("br-ecs"));
        let plan = plan_network(&cfg, none_selection(), &NoFirewall);
        assert!(
            plan.rules.rules.iter().any(|r| matches!(r,
                ecs_firewall::Rule::IntrospectionBridgeAccept { bridge, .. } if bridge == "br-ecs")),
            "{:?}",
            plan.rules
        );
        assert_eq!(plan.sysctls[1].key, "net.ipv6.conf.br-ecs.accept_ra");
        cfg.bridge = Bridge::Named("br-gone".into());
        assert_eq!(bridge_of(&cfg), None, "reported but not in this namespace");
        cfg.bridge = Bridge::Absent;
        assert_eq!(
            bridge_of(&cfg),
            None,
            "dockerd has no bridge: docker0 is not its"
        );
        let plan = plan_network(&cfg, none_selection(), &NoFirewall);
        assert!(!plan
            .rules
            .rules
            .iter()
            .any(|r| matches!(r, ecs_firewall::Rule::IntrospectionBridgeAccept { .. })));
        for bad in ["../../../../etc", "docker+", "br ecs", ""] {
            cfg.bridge = Bridge::Named(bad.into());
            assert_eq!(bridge_of(&cfg), None, "{bad:?}");
        }
        drop(d);
    }

    #[test]
    fn plan_lists_rules_sysctls_and_route() {
        let (_d, cfg) = fake_proc(true, true, false);
        let plan = plan_network(&cfg, none_selection(), &NoFirewall);
        assert_eq!(plan.firewall, "none");
        assert_eq!(plan.reason, "ECS_INIT_FIREWALL=none");
        assert_eq!(plan.rules.rules.len(), 7);
        assert!(plan.rendered.is_empty());
        assert_eq!(plan.sysctls.len(), 2);
        assert_eq!(plan.sysctls[1].key, "net.ipv6.conf.docker0.accept_ra");
        assert_eq!(plan.routes, ["169.254.170.2/32 dev lo scope link"]);
        let json = serde_json::to_value(&plan).unwrap();
        assert_eq!(json["facts"]["bridge"], "docker0");

        let (_d, cfg) = fake_proc(false, false, true);
        let plan = plan_network(&cfg, none_selection(), &NoFirewall);
        assert!(plan.routes.is_empty());
        assert_eq!(plan.sysctls.len(), 1);
        // Nothing is written by planning.
        assert!(!cfg.state_dir.exists());
    }

    /// A firewall whose apply fails (as a rejected rule does).
    struct Refusing;

    #[async_trait]
    impl Firewall for Refusing {
        fn name(&self) -> &'static str {
            "iptables"
        }
        async fn apply(&self, _: &RuleSet) -> ecs_firewall::Result<()> {
            Err(FirewallError::Command {
                command: "iptables -w -t filter -I INPUT …".into(),
                stderr: "no such interface".into(),
            })
        }
        async fn remove(&self, _: &RuleSet) -> ecs_firewall::Result<()> {
            Ok(())
        }
        async fn applied(&self) -> ecs_firewall::Result<RuleSet> {
            Ok(RuleSet::default())
        }
        fn render(&self, _: &RuleSet) -> Vec<String> {
            Vec::new()
        }
    }

    fn route_localnet(cfg: &NetConfig) -> String {
        read_sysctl(&sysctl_path(cfg, ROUTE_LOCALNET_ALL)).unwrap()
    }

    #[tokio::test]
    async fn a_failed_apply_undoes_the_sysctl_and_the_record() {
        // A default route exists, so no route is added (unit tests never touch the host's).
        let (_d, cfg) = fake_proc(false, false, true);
        std::fs::write(sysctl_path(&cfg, ROUTE_LOCALNET_ALL), "0\n").unwrap();
        let plan = plan_network(&cfg, none_selection(), &Refusing);
        let err = setup_network(&cfg, &plan, &Refusing, None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no such interface"), "{err}");
        assert_eq!(route_localnet(&cfg), "0");
        assert!(!record_path(&cfg.state_dir).exists());
        assert!(!cfg.private_dir.join(ROUTE_LOCALNET_RECORD).exists());
    }

    #[tokio::test]
    async fn the_record_keeps_the_route_localnet_value_first_found() {
        let (_d, cfg) = fake_proc(false, false, true);
        std::fs::write(sysctl_path(&cfg, ROUTE_LOCALNET_ALL), "0\n").unwrap();
        let plan = plan_network(&cfg, none_selection(), &NoFirewall);
        setup_network(&cfg, &plan, &NoFirewall, None).await.unwrap();
        assert_eq!(route_localnet(&cfg), "1");
        // pre-start again without post-stop: the original value is still 0, not our 1.
        setup_network(&cfg, &plan, &NoFirewall, None).await.unwrap();
        let record = Record::read(&record_path(&cfg.state_dir)).unwrap().unwrap();
        assert_eq!(record.name, "none");
        assert_eq!(
            original_route_localnet(&cfg.private_dir).as_deref(),
            Some("0")
        );
        assert_eq!(
            recorded_backend(&cfg.state_dir),
            Some(ecs_firewall::none::KIND)
        );
        // A failure now restores the record as it was (and keeps the original value).
        let _ = setup_network(&cfg, &plan, &Refusing, None)
            .await
            .unwrap_err();
        let again = Record::read(&record_path(&cfg.state_dir)).unwrap().unwrap();
        assert_eq!(again, record);
        assert_eq!(
            original_route_localnet(&cfg.private_dir).as_deref(),
            Some("0")
        );
    }

    /// Issue 20 (4): the value to restore never comes from the agent-writable record: a forged
    /// `route_localnet=1` in `/var/lib/ecs/firewall-backend` is not used nor kept by the next
    /// pre-start, and the root-only record is trusted only when only root can write it and its
    /// value is 0 or 1.
    #[tokio::test]
    async fn the_value_to_restore_is_not_the_agents_to_decide() {
        use std::os::unix::fs::PermissionsExt;
        let (_d, cfg) = fake_proc(false, false, true);
        std::fs::write(sysctl_path(&cfg, ROUTE_LOCALNET_ALL), "0\n").unwrap();
        std::fs::create_dir_all(&cfg.state_dir).unwrap();
        // The agent forges the old-format record before the first pre-start.
        std::fs::write(
            record_path(&cfg.state_dir),
            "iptables\nforged\nroute_localnet=1\n",
        )
        .unwrap();
        let plan = plan_network(&cfg, none_selection(), &NoFirewall);
        setup_network(&cfg, &plan, &NoFirewall, None).await.unwrap();
        assert_eq!(
            original_route_localnet(&cfg.private_dir).as_deref(),
            Some("0")
        );
        let rec = cfg.private_dir.join(ROUTE_LOCALNET_RECORD);
        assert_eq!(
            std::fs::metadata(&rec).unwrap().permissions().mode() & 0o7777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(&cfg.private_dir)
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o700
        );
        // Forged after pre-start too: the next pre-start still keeps 0.
        std::fs::write(
            record_path(&cfg.state_dir),
            "none\nforged\nroute_localnet=1\n",
        )
        .unwrap();
        setup_network(&cfg, &plan, &NoFirewall, None).await.unwrap();
        assert_eq!(
            original_route_localnet(&cfg.private_dir).as_deref(),
            Some("0")
        );
        // A value that is not 0 or 1, a directory others can write, a symlink: not trusted.
        std::fs::write(&rec, "7\n").unwrap();
        assert_eq!(original_route_localnet(&cfg.private_dir), None);
        std::fs::write(&rec, "1\n").unwrap();
        std::fs::set_permissions(&cfg.private_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(original_route_localnet(&cfg.private_dir), None);
        std::fs::set_permissions(&cfg.private_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(
            original_route_localnet(&cfg.private_dir).as_deref(),
            Some("1")
        );
        std::fs::remove_file(&rec).unwrap();
        let elsewhere = cfg.state_dir.join("one");
        std::fs::write(&elsewhere, "1\n").unwrap();
        std::os::unix::fs::symlink(&elsewhere, &rec).unwrap();
        assert_eq!(original_route_localnet(&cfg.private_dir), None);
    }
}
