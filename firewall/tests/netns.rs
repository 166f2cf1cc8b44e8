//! Real-packet tests of the firewall backends and the host network setup, one shared matrix
//! for every backend.
//!
//! Each (backend, scenario) runs in namespaces created for it alone (`ip netns add`), never the
//! host's: a "host" netns H, an off-host peer P on a veth, and a task T behind a bridge
//! `docker0` in H. Everything that changes netfilter, sysctls or routes runs as a child process
//! inside H (`ip netns exec H <this binary> --role …`), so the test process itself never
//! changes namespace. TCP clients and servers are that same binary in other roles; a dropped
//! SYN shows as a timeout after a fraction of a second.
//!
//! Backends: `iptables-nft` (the system iptables), `iptables-legacy` (the same backend with
//! `iptables`/`ip6tables` on PATH pointing at xtables-legacy-multi) and `nftables`.
//! Needs root, `ip`, `nft`, `iptables`, `iptables-legacy`; fails (does not skip) without them.
//! Addresses are documentation ranges (198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32) that
//! exist only inside these namespaces.
use ecs_firewall::{
    Family, Firewall, FirewallKind, Firewalls, Request, Rule, RuleOptions, RuleSet, Scope,
};
use ecs_host::{Exec, SystemExec};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PREFIX: &str = "ecsfw";
const TIMEOUT_MS: u64 = 700;

// ---------------------------------------------------------------------------------------------
// Roles: this binary, run inside a namespace.

fn role(args: &[String]) -> i32 {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["serve", addrs @ ..] => serve(addrs),
        ["connect", addr, timeout] => {
            println!("{}", connect_once(addr, timeout.parse().unwrap()));
            0
        }
        ["fw", backend, op, json] => fw_role(backend, op, json),
        ["net", op, json] => net_role(op, json),
        other => {
            eprintln!("unknown role {other:?}");
            2
        }
    }
}

/// Listen on every address; answer each connection with the port it came in on. Prints
/// "ready" once bound; exits when stdin closes (the test dropped it or died).
fn serve(addrs: &[&str]) -> i32 {
    for addr in addrs {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let port = conn.local_addr().map(|a| a.port()).unwrap_or(0);
                let _ = writeln!(conn, "port {port}");
            }
        });
    }
    println!("ready");
    std::io::stdout().flush().unwrap();
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    0
}

fn connect_once(addr: &str, timeout_ms: u64) -> String {
    let addr: SocketAddr = addr.parse().unwrap();
    let timeout = Duration::from_millis(timeout_ms);
    match TcpStream::connect_timeout(&addr, timeout) {
        Ok(mut s) => {
            s.set_read_timeout(Some(timeout)).unwrap();
            let mut line = String::new();
            match BufReader::new(&mut s).read_line(&mut line) {
                Ok(_) if !line.is_empty() => line.trim().to_string(),
                Ok(_) => "closed".into(),
                Err(e) => format!("read error: {e}"),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => "timeout".into(),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => "refused".into(),
        Err(e) if e.raw_os_error() == Some(libc::ENETUNREACH) => "unreachable".into(),
        Err(e) => format!("error: {e}"),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The programs on this process's `PATH` (the roles run with the PATH the test gives them).
fn system_exec() -> SystemExec {
    SystemExec::new(std::env::var_os("PATH"))
}

fn find_tool(name: &str) -> Option<PathBuf> {
    system_exec().find(name)
}

fn firewalls() -> Firewalls {
    Firewalls::new(Arc::new(system_exec()))
}

fn backend(name: &str) -> Box<dyn Firewall> {
    match name.parse::<FirewallKind>() {
        Ok(kind) if kind.backend().puts_rules() => firewalls().build(kind),
        _ => panic!("backend {name}"),
    }
}

fn fw_role(name: &str, op: &str, json: &str) -> i32 {
    let fw = backend(name);
    let rules: RuleSet = rules_from_json(json);
    let rt = runtime();
    let result = rt.block_on(async {
        match op {
            "apply" => fw.apply(&rules).await.map(|_| String::new()),
            "remove" => fw.remove(&rules).await.map(|_| String::new()),
            "applied" => fw
                .applied()
                .await
                .map(|r| serde_json::to_string(&r).unwrap()),
            "render" => Ok(fw.render(&rules).join("\n")),
            other => panic!("op {other}"),
        }
    });
    match result {
        Ok(out) => {
            println!("{out}");
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

fn net_role(op: &str, json: &str) -> i32 {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let cfg = ecs_hostnet::NetConfig {
        skip_localhost_filter: v["skip"].as_bool().unwrap_or(false),
        allow_offhost_introspection: v["allow"].as_bool().unwrap_or(false),
        introspection_interface: v["iface"].as_str().map(str::to_string),
        state_dir: PathBuf::from(v["state"].as_str().unwrap()),
        private_dir: PathBuf::from(v["state"].as_str().unwrap()).join("private"),
        proc_sys: PathBuf::from("/proc/sys"),
        bridge: match v["bridge"].as_str() {
            Some(name) => ecs_hostnet::Bridge::Named(name.to_string()),
            None => ecs_hostnet::Bridge::Unknown,
        },
    };
    // The launcher validates ECS_INIT_FIREWALL before anything else; so does this glue.
    let choice: Request = match v["firewall"].as_str().unwrap().parse() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return 3;
        }
    };
    let firewalls = firewalls();
    let rt = runtime();
    let result: Result<String, String> = rt.block_on(async {
        match op {
            "setup" | "plan" => {
                let selection = firewalls.choose(choice).await.map_err(|e| e.to_string())?;
                let fw = firewalls.build(selection.kind);
                let plan = ecs_hostnet::plan_network(&cfg, selection, fw.as_ref());
                if op == "setup" {
                    let previous =
                        ecs_hostnet::recorded_backend(&cfg.state_dir).map(|b| firewalls.build(b));
                    ecs_hostnet::setup_network(&cfg, &plan, fw.as_ref(), previous.as_deref())
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok(serde_json::to_string(&plan).unwrap())
            }
            "teardown" => {
                let backends =
                    ecs_hostnet::teardown_backends(&firewalls, &cfg.state_dir, Some(choice)).await;
                let fws: Vec<Box<dyn Firewall>> =
                    backends.into_iter().map(|b| firewalls.build(b)).collect();
                ecs_hostnet::teardown_network(&cfg, &fws)
                    .await
                    .map(|_| String::new())
                    .map_err(|e| e.to_string())
            }
            other => panic!("op {other}"),
        }
    });
    match result {
        Ok(out) => {
            println!("{out}");
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

fn rules_from_json(json: &str) -> RuleSet {
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"))
}

// ---------------------------------------------------------------------------------------------
// The orchestrator side.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fw {
    IptablesNft,
    IptablesLegacy,
    Nftables,
}

impl Fw {
    fn label(self) -> &'static str {
        match self {
            Fw::IptablesNft => "iptables-nft",
            Fw::IptablesLegacy => "iptables-legacy",
            Fw::Nftables => "nftables",
        }
    }
    /// The backend name (and `ECS_INIT_FIREWALL` value).
    fn backend(self) -> &'static str {
        match self {
            Fw::Nftables => "nftables",
            _ => "iptables",
        }
    }
    fn is_iptables(self) -> bool {
        self != Fw::Nftables
    }
}

struct Env {
    exe: PathBuf,
    /// Absolute path of `ip` (a Command with its own PATH looks programs up on that PATH).
    ip: PathBuf,
    /// PATH with `iptables` etc. pointing at the legacy binaries.
    legacy_path: String,
    system_path: String,
    work: PathBuf,
}

static ENV: std::sync::OnceLock<Env> = std::sync::OnceLock::new();
static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn env() -> &'static Env {
    ENV.get().expect("env")
}

fn path_for(fw: Fw) -> &'static str {
    match fw {
        Fw::IptablesLegacy => &env().legacy_path,
        _ => &env().system_path,
    }
}

/// A network namespace of ours; deleted on drop (also when the scenario panics).
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("{PREFIX}-{}-{n}-{tag}", std::process::id());
        run_ok("ip", &["netns", "add", &name]);
        Netns(name)
    }
    fn name(&self) -> &str {
        &self.0
    }
    /// `ip -n NS args…`
    fn ip(&self, args: &str) {
        let mut full = vec!["-n", self.name()];
        full.extend(args.split_whitespace());
        run_ok("ip", &full);
    }
    /// A command inside the namespace, with the PATH of `fw`.
    fn cmd(&self, fw: Fw, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new(&env().ip);
        c.args(["netns", "exec", self.name(), program])
            .args(args)
            .env("PATH", path_for(fw));
        c
    }
    fn exec(&self, fw: Fw, program: &str, args: &[&str]) -> Output {
        self.cmd(fw, program, args).output().unwrap()
    }
    fn exec_ok(&self, fw: Fw, program: &str, args: &[&str]) -> String {
        let out = self.exec(fw, program, args);
        assert!(
            out.status.success(),
            "{program} {args:?} in {}: {}",
            self.name(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    fn sh(&self, fw: Fw, script: &str) -> String {
        self.exec_ok(fw, "sh", &["-ec", script])
    }
    fn role(&self, fw: Fw, args: &[&str]) -> Output {
        let mut full = vec!["--role"];
        full.extend_from_slice(args);
        self.exec(fw, env().exe.to_str().unwrap(), &full)
    }
    fn sysctl(&self, key: &str) -> String {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.sh(Fw::IptablesNft, &format!("cat {path}"))
            .trim()
            .to_string()
    }
    fn set_sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.sh(Fw::IptablesNft, &format!("echo {value} > {path}"));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new(&env().ip)
            .args(["netns", "del", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

fn run_ok(program: &str, args: &[&str]) -> String {
    let program = if program == "ip" {
        env().ip.to_str().unwrap()
    } else {
        program
    };
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// H (host), P (off-host peer on eth0), T (task on docker0), with servers in H.
struct Topo {
    servers: Vec<Child>,
    h: Netns,
    p: Netns,
    t: Netns,
}

const H_ETH: &str = "198.51.100.1";
const P_ETH: &str = "198.51.100.2";
const H_BR: &str = "203.0.113.1";
const H_ETH6: &str = "2001:db8:1::1";
const H_BR6: &str = "2001:db8:2::1";

impl Topo {
    fn new(default_route: bool) -> Topo {
        let (h, p, t) = (Netns::new("h"), Netns::new("p"), Netns::new("t"));
        run_ok(
            "ip",
            &[
                "link",
                "add",
                "name",
                "eth0",
                "netns",
                h.name(),
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                p.name(),
            ],
        );
        run_ok(
            "ip",
            &[
                "link",
                "add",
                "name",
                "vtask",
                "netns",
                h.name(),
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                t.name(),
            ],
        );
        h.ip("link set lo up");
        h.ip("link add docker0 type bridge");
        h.ip("link set vtask master docker0");
        for l in ["eth0", "docker0", "vtask"] {
            h.ip(&format!("link set {l} up"));
        }
        h.ip(&format!("addr add {H_ETH}/24 dev eth0"));
        h.ip(&format!("addr add {H_ETH6}/64 dev eth0 nodad"));
        h.ip(&format!("addr add {H_BR}/24 dev docker0"));
        h.ip(&format!("addr add {H_BR6}/64 dev docker0 nodad"));
        if default_route {
            h.ip(&format!("route add default via {P_ETH}"));
        }
        // The peer keeps lo down so that 127.0.0.0/8 can be routed to H: the attack the
        // localhost filter exists for.
        p.ip("link set eth0 up");
        p.ip(&format!("addr add {P_ETH}/24 dev eth0"));
        p.ip("addr add 2001:db8:1::2/64 dev eth0 nodad");
        p.ip(&format!("route add 127.0.0.0/8 via {H_ETH}"));
        p.set_sysctl("net.ipv4.conf.all.route_localnet", "1");
        t.ip("link set lo up");
        t.ip("link set eth0 up");
        t.ip("addr add 203.0.113.2/24 dev eth0");
        t.ip("addr add 2001:db8:2::2/64 dev eth0 nodad");
        t.ip(&format!("route add default via {H_BR}"));
        t.ip(&format!("-6 route add default via {H_BR6}"));
        let mut topo = Topo {
            servers: Vec::new(),
            h,
            p,
            t,
        };
        let mut server = topo
            .h
            .cmd(
                Fw::IptablesNft,
                env().exe.to_str().unwrap(),
                &["--role", "serve", "127.0.0.1:51679", "[::]:51678"],
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(server.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        topo.servers.push(server);
        topo
    }

    /// What a TCP client in `ns` gets from `addr`: "port N" (the server port that answered),
    /// "timeout", "refused", "unreachable" or an error.
    fn connect(ns: &Netns, addr: &str) -> String {
        let out = ns.role(Fw::IptablesNft, &["connect", addr, &TIMEOUT_MS.to_string()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}

fn opts(bridge: bool, ipv6: bool) -> RuleOptions {
    RuleOptions {
        skip_localhost_filter: false,
        allow_offhost_introspection: false,
        introspection_interface: None,
        bridge: bridge.then(|| "docker0".into()),
        ipv6,
    }
}

fn full_set() -> RuleSet {
    RuleSet::build(&opts(true, true))
}

/// Run a backend operation inside `ns`.
fn fw_op(ns: &Netns, fw: Fw, op: &str, rules: &RuleSet) -> Result<String, String> {
    let json = serde_json::to_string(rules).unwrap();
    let out = ns.role(fw, &["fw", fw.backend(), op, &json]);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn apply(ns: &Netns, fw: Fw, rules: &RuleSet) {
    fw_op(ns, fw, "apply", rules).unwrap_or_else(|e| panic!("apply: {e}"));
}

fn remove(ns: &Netns, fw: Fw, rules: &RuleSet) {
    fw_op(ns, fw, "remove", rules).unwrap_or_else(|e| panic!("remove: {e}"));
}

fn applied(ns: &Netns, fw: Fw) -> RuleSet {
    rules_from_json(&fw_op(ns, fw, "applied", &RuleSet::default()).unwrap())
}

/// The whole ruleset as the tools print it, without their comment/timestamp lines.
fn snapshot(ns: &Netns, fw: Fw) -> String {
    let mut out = String::new();
    if fw.is_iptables() {
        for tool in ["iptables-save", "ip6tables-save"] {
            out.push_str(&format!("== {tool}\n"));
            for line in ns.exec_ok(fw, tool, &[]).lines() {
                if line.starts_with('#') {
                    continue;
                }
                // Chain policies carry packet counters (`:OUTPUT ACCEPT [1:72]`), which the
                // namespace's own traffic (IPv6 router solicitations) moves: not a rule change.
                match line.strip_prefix(':').and_then(|l| l.rsplit_once(" [")) {
                    Some((chain, _)) => out.push_str(&format!(":{chain} [-]")),
                    None => out.push_str(line),
                }
                out.push('\n');
            }
        }
    }
    out.push_str("== nft list ruleset\n");
    out.push_str(&ns.exec_ok(Fw::Nftables, "nft", &["list", "ruleset"]));
    out
}

/// Rules an operator or Docker would have: ours must never disturb them.
fn prepopulate(ns: &Netns, fw: Fw) {
    if fw.is_iptables() {
        ns.sh(
            fw,
            "iptables -w -A INPUT -p tcp --dport 22 -j ACCEPT
             iptables -w -t nat -A POSTROUTING -s 203.0.113.0/24 ! -o docker0 -j MASQUERADE
             iptables -w -t nat -A PREROUTING -p tcp --dport 8080 -j DNAT --to-destination 203.0.113.2:80
             iptables -w -t nat -A OUTPUT -p tcp --dport 8081 -j REDIRECT --to-ports 81
             ip6tables -w -A INPUT -p tcp --dport 22 -j ACCEPT",
        );
    } else {
        ns.sh(
            fw,
            "nft add table inet operator
             nft 'add chain inet operator input { type filter hook input priority 0; policy accept; }'
             nft add rule inet operator input tcp dport 22 accept
             iptables -w -A INPUT -p tcp --dport 22 -j ACCEPT",
        );
    }
}

/// Host-network config for the `net` role.
fn net(
    ns: &Netns,
    fw: Fw,
    op: &str,
    extra: serde_json::Value,
    state: &Path,
) -> Result<String, (i32, String)> {
    let mut cfg = serde_json::json!({ "firewall": fw.backend(), "state": state.to_str().unwrap() });
    for (k, v) in extra.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    let out = ns.role(fw, &["net", op, &cfg.to_string()]);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }
}

fn state_dir(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = env().work.join(format!("state-{n}-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const OK_CREDS: &str = "port 51679";
const OK_INTRO: &str = "port 51678";

// ---------------------------------------------------------------------------------------------
// Scenarios. Each gets the backend and builds its own namespaces.

/// A task on the bridge reaches the credentials server through 169.254.170.2:80; it needs both
/// the DNAT rule and route_localnet=1.
fn credentials_from_task(fw: Fw) {
    let topo = Topo::new(true);
    let state = state_dir("creds-task");
    assert_ne!(
        Topo::connect(&topo.t, "169.254.170.2:80"),
        OK_CREDS,
        "no rules yet"
    );
    apply(&topo.h, fw, &full_set());
    assert_eq!(topo.h.sysctl("net.ipv4.conf.all.route_localnet"), "0");
    assert_ne!(
        Topo::connect(&topo.t, "169.254.170.2:80"),
        OK_CREDS,
        "DNAT to 127.0.0.1 from the bridge must not work without route_localnet"
    );
    net(&topo.h, fw, "setup", serde_json::json!({}), &state).unwrap();
    assert_eq!(topo.h.sysctl("net.ipv4.conf.all.route_localnet"), "1");
    assert_eq!(Topo::connect(&topo.t, "169.254.170.2:80"), OK_CREDS);
    net(&topo.h, fw, "teardown", serde_json::json!({}), &state).unwrap();
    assert_eq!(topo.h.sysctl("net.ipv4.conf.all.route_localnet"), "0");
    assert_ne!(Topo::connect(&topo.t, "169.254.170.2:80"), OK_CREDS);
}

/// A process on the host reaches it too (OUTPUT REDIRECT), with and without a default route.
fn credentials_from_host(fw: Fw) {
    let topo = Topo::new(true);
    let state = state_dir("creds-host");
    assert_ne!(Topo::connect(&topo.h, "169.254.170.2:80"), OK_CREDS);
    net(&topo.h, fw, "setup", serde_json::json!({}), &state).unwrap();
    assert_eq!(Topo::connect(&topo.h, "169.254.170.2:80"), OK_CREDS);
    assert_eq!(
        topo.h
            .exec_ok(fw, "ip", &["route", "show", "169.254.170.2"]),
        "",
        "default route exists: no lo route"
    );
    net(&topo.h, fw, "teardown", serde_json::json!({}), &state).unwrap();
    assert_ne!(Topo::connect(&topo.h, "169.254.170.2:80"), OK_CREDS);

    // IPv6-only style host: no IPv4 default route, so pre-start adds 169.254.170.2/32 dev lo.
    let topo = Topo::new(false);
    assert_eq!(Topo::connect(&topo.h, "169.254.170.2:80"), "unreachable");
    net(&topo.h, fw, "setup", serde_json::json!({}), &state).unwrap();
    let route = topo
        .h
        .exec_ok(fw, "ip", &["route", "show", "169.254.170.2"]);
    assert!(
        route.starts_with("169.254.170.2 dev lo ") && route.contains("scope link"),
        "{route}"
    );
    assert_eq!(Topo::connect(&topo.h, "169.254.170.2:80"), OK_CREDS);
    net(&topo.h, fw, "teardown", serde_json::json!({}), &state).unwrap();
    assert_eq!(
        topo.h
            .exec_ok(fw, "ip", &["route", "show", "169.254.170.2"]),
        ""
    );
    assert_eq!(Topo::connect(&topo.h, "169.254.170.2:80"), "unreachable");
}

fn assert_introspection(topo: &Topo, peer_allowed: bool) {
    let peer = if peer_allowed { OK_INTRO } else { "timeout" };
    assert_eq!(
        Topo::connect(&topo.p, &format!("{H_ETH}:51678")),
        peer,
        "peer v4"
    );
    assert_eq!(
        Topo::connect(&topo.p, &format!("[{H_ETH6}]:51678")),
        peer,
        "peer v6"
    );
    assert_eq!(
        Topo::connect(&topo.h, "127.0.0.1:51678"),
        OK_INTRO,
        "loopback v4"
    );
    assert_eq!(
        Topo::connect(&topo.h, "[::1]:51678"),
        OK_INTRO,
        "loopback v6"
    );
    assert_eq!(
        Topo::connect(&topo.h, &format!("{H_ETH}:51678")),
        OK_INTRO,
        "host to itself"
    );
    assert_eq!(
        Topo::connect(&topo.t, &format!("{H_BR}:51678")),
        OK_INTRO,
        "bridge v4"
    );
    assert_eq!(
        Topo::connect(&topo.t, &format!("[{H_BR6}]:51678")),
        OK_INTRO,
        "bridge v6"
    );
}

/// Off-host: blocked (v4 and v6); loopback and the bridge: allowed.
fn introspection_blocked_offhost(fw: Fw) {
    let topo = Topo::new(true);
    let state = state_dir("intro");
    assert_introspection(&topo, true);
    let plan = net(&topo.h, fw, "setup", serde_json::json!({}), &state).unwrap();
    assert!(plan.contains("introspection_block"), "{plan}");
    assert_introspection(&topo, false);
    net(&topo.h, fw, "teardown", serde_json::json!({}), &state).unwrap();
    assert_introspection(&topo, true);
}

/// ECS_ALLOW_OFFHOST_INTROSPECTION_ACCESS=true: the peer gets in, also when an earlier
/// configuration's DROP is still there (pre-start again without post-stop).
fn introspection_allowed(fw: Fw) {
    let topo = Topo::new(true);
    let state = state_dir("intro-allow");
    net(&topo.h, fw, "setup", serde_json::json!({}), &state).unwrap();
    assert_introspection(&topo, false);
    net(
        &topo.h,
        fw,
        "setup",
        serde_json::json!({ "allow": true }),
        &state,
    )
    .unwrap();
    assert_introspection(&topo, true);
    assert!(!applied(&topo.h, fw)
        .rules
        .iter()
        .any(|r| matches!(r, Rule::IntrospectionBlock { .. })));
}

/// ECS_OFFHOST_INTROSPECTION_INTERFACE_NAME: only that interface is blocked.
fn introspection_one_interface(fw: Fw) {
    let topo = Topo::new(true);
    let state = state_dir("intro-iface");
    net(
        &topo.h,
        fw,
        "setup",
        serde_json::json!({ "iface": "eth0" }),
        &state,
    )
    .unwrap();
    assert_introspection(&topo, false);
    net(
        &topo.h,
        fw,
        "setup",
        serde_json::json!({ "iface": "ens5" }),
        &state,
    )
    .unwrap();
    assert_introspection(&topo, true);
    let rules = applied(&topo.h, fw);
    assert!(rules.rules.contains(&Rule::IntrospectionBlock {
        family: Family::V4,
        port: 51678,
        scope: Scope::Interface("ens5".into())
    }));
    assert!(
        !rules.rules.contains(&Rule::IntrospectionBlock {
            family: Family::V4,
            port: 51678,
            scope: Scope::Interface("eth0".into())
        }),
        "the earlier configuration's block is gone"
    );
    // A trailing + is a prefix wildcard on every backend (nft spells it eth*), and reads back
    // in that one form.
    net(
        &topo.h,
        fw,
        "setup",
        serde_json::json!({ "iface": "et+" }),
        &state,
    )
    .unwrap();
    assert_introspection(&topo, false);
    assert!(applied(&topo.h, fw)
        .rules
        .contains(&Rule::IntrospectionBlock {
            family: Family::V4,
            port: 51678,
            scope: Scope::Interface("et+".into())
        }));
}

/// With route_localnet=1, an off-host packet to 127.0.0.1 reaches loopback services unless the
/// localhost filter drops it.
fn localhost_filter(fw: Fw) {
    let topo = Topo::new(true);
    let state = state_dir("lo-filter");
    topo.h.set_sysctl("net.ipv4.conf.all.route_localnet", "1");
    assert_eq!(
        Topo::connect(&topo.p, "127.0.0.1:51679"),
        OK_CREDS,
        "the hole the filter closes"
    );
    net(&topo.h, fw, "setup", serde_json::json!({}), &state).unwrap();
    assert_eq!(Topo::connect(&topo.p, "127.0.0.1:51679"), "timeout");
    // The DNATed path still works through the filter.
    assert_eq!(Topo::connect(&topo.t, "169.254.170.2:80"), OK_CREDS);
    assert_eq!(Topo::connect(&topo.h, "169.254.170.2:80"), OK_CREDS);
    net(
        &topo.h,
        fw,
        "setup",
        serde_json::json!({ "skip": true }),
        &state,
    )
    .unwrap();
    assert_eq!(Topo::connect(&topo.p, "127.0.0.1:51679"), OK_CREDS);
    assert!(!applied(&topo.h, fw).rules.contains(&Rule::LocalhostFilter));
}

/// Apply twice: one copy of each rule, identical ruleset.
fn apply_twice(fw: Fw) {
    let ns = Netns::new("twice");
    prepopulate(&ns, fw);
    apply(&ns, fw, &full_set());
    let first = snapshot(&ns, fw);
    assert_eq!(applied(&ns, fw), full_set());
    apply(&ns, fw, &full_set());
    assert_eq!(snapshot(&ns, fw), first);
    assert_eq!(applied(&ns, fw), full_set());
}

/// Apply, kill -9 at several points (whole process group, like systemd), apply: one copy of
/// each rule and exactly the ruleset of a clean apply. Also every partial state a crash can
/// leave, including out-of-order ones.
fn crash_then_apply(fw: Fw) {
    let ns = Netns::new("crash");
    prepopulate(&ns, fw);
    apply(&ns, fw, &full_set());
    let clean = snapshot(&ns, fw);
    remove(&ns, fw, &full_set());
    let json = serde_json::to_string(&full_set()).unwrap();
    for delay_ms in [0u64, 3, 8, 15, 25, 40, 60] {
        let mut child = ns
            .cmd(
                fw,
                env().exe.to_str().unwrap(),
                &["--role", "fw", fw.backend(), "apply", &json],
            )
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let pgid = child.id().to_string();
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .status();
        let _ = child.wait();
        apply(&ns, fw, &full_set());
        assert_eq!(snapshot(&ns, fw), clean, "after a kill at {delay_ms} ms");
        assert_eq!(applied(&ns, fw), full_set());
        remove(&ns, fw, &full_set());
    }
    let set = full_set();
    let mut partials: Vec<RuleSet> = (1..set.rules.len())
        .map(|k| RuleSet {
            rules: set.rules[..k].to_vec(),
        })
        .collect();
    // A bridge ACCEPT without its DROP below it (e.g. interrupted removal).
    partials.push(RuleSet {
        rules: vec![set.rules[3].clone(), set.rules[5].clone()],
    });
    for partial in partials {
        apply(&ns, fw, &partial);
        apply(&ns, fw, &set);
        assert_eq!(snapshot(&ns, fw), clean, "from partial {partial:?}");
    }
}

/// Apply then remove: byte-for-byte the ruleset before; remove again changes nothing.
fn apply_remove_restores(fw: Fw) {
    let ns = Netns::new("restore");
    prepopulate(&ns, fw);
    let before = snapshot(&ns, fw);
    apply(&ns, fw, &full_set());
    assert_ne!(snapshot(&ns, fw), before);
    remove(&ns, fw, &full_set());
    assert_eq!(snapshot(&ns, fw), before);
    remove(&ns, fw, &full_set());
    assert_eq!(snapshot(&ns, fw), before);
    assert_eq!(applied(&ns, fw), RuleSet::default());
    // Rules of an earlier configuration go too, even if the current one does not have them.
    apply(
        &ns,
        fw,
        &RuleSet::build(&RuleOptions {
            introspection_interface: Some("eth0".into()),
            ..opts(true, true)
        }),
    );
    remove(
        &ns,
        fw,
        &RuleSet::build(&RuleOptions {
            allow_offhost_introspection: true,
            ..opts(false, false)
        }),
    );
    assert_eq!(snapshot(&ns, fw), before);
}

/// A rule that fails part-way (an interface name longer than IFNAMSIZ) leaves nothing behind,
/// both on a clean host and over an earlier good apply.
fn failure_leaves_nothing(fw: Fw) {
    let ns = Netns::new("fail");
    prepopulate(&ns, fw);
    let before = snapshot(&ns, fw);
    let mut bad = full_set();
    bad.rules.insert(
        4,
        Rule::IntrospectionBlock {
            family: Family::V6,
            port: 51678,
            scope: Scope::Interface("an-interface-name-too-long".into()),
        },
    );
    let err = fw_op(&ns, fw, "apply", &bad).expect_err("must fail");
    assert!(
        err.contains("an-interface-name-too-long") || !err.is_empty(),
        "{err}"
    );
    assert_eq!(
        snapshot(&ns, fw),
        before,
        "after failed apply on a clean host"
    );
    apply(&ns, fw, &full_set());
    let good = snapshot(&ns, fw);
    fw_op(&ns, fw, "apply", &bad).expect_err("must fail");
    assert_eq!(snapshot(&ns, fw), good, "after failed re-apply");
}

/// Rules the Go ecs-init left (no -w, no check: duplicates, and the old one-interface block):
/// apply converges to one copy of each, remove takes them all.
fn legacy_leftovers(fw: Fw) {
    let ns = Netns::new("leftover");
    prepopulate(&ns, fw);
    let before = snapshot(&ns, fw);
    if fw.is_iptables() {
        let go = "iptables -t nat -A PREROUTING -p tcp -d 169.254.170.2 --dport 80 -j DNAT --to-destination 127.0.0.1:51679
                  iptables -t filter -I INPUT --dst 127.0.0.0/8 ! --src 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
                  iptables -t filter -I INPUT -p tcp -i eth0 --dport 51678 -j DROP
                  iptables -t nat -A OUTPUT -p tcp -d 169.254.170.2 --dport 80 -j REDIRECT --to-ports 51679";
        ns.sh(fw, go);
        ns.sh(fw, go);
    } else {
        // For nftables the leftovers are an older apply of ours with other settings.
        apply(
            &ns,
            fw,
            &RuleSet::build(&RuleOptions {
                introspection_interface: Some("eth0".into()),
                ..opts(false, true)
            }),
        );
    }
    apply(&ns, fw, &full_set());
    assert_eq!(applied(&ns, fw), full_set());
    remove(&ns, fw, &full_set());
    assert_eq!(snapshot(&ns, fw), before);
}

/// pre-start/post-stop host changes: route_localnet restored from default, accept_ra on the
/// bridge, the record of the backend; post-stop without a record still removes our rules.
fn host_setup_teardown(fw: Fw) {
    let topo = Topo::new(false);
    let h = &topo.h;
    let state = state_dir("host");
    h.set_sysctl("net.ipv4.conf.default.route_localnet", "0");
    h.set_sysctl("net.ipv6.conf.docker0.accept_ra", "1");
    let plan: serde_json::Value =
        serde_json::from_str(&net(h, fw, "plan", serde_json::json!({}), &state).unwrap()).unwrap();
    assert_eq!(plan["firewall"], fw.backend());
    assert_eq!(plan["routes"][0], "169.254.170.2/32 dev lo scope link");
    assert_eq!(applied(h, fw), RuleSet::default(), "plan changes nothing");
    assert!(!state.join("firewall-backend").exists());

    net(h, fw, "setup", serde_json::json!({}), &state).unwrap();
    assert_eq!(h.sysctl("net.ipv4.conf.all.route_localnet"), "1");
    assert_eq!(h.sysctl("net.ipv6.conf.docker0.accept_ra"), "0");
    let record = std::fs::read_to_string(state.join("firewall-backend")).unwrap();
    assert_eq!(record.lines().next(), Some(fw.backend()));
    assert_eq!(applied(h, fw), full_set());
    // Setting changed to an unknown value: error (exit 3 = UnknownFirewall) and no change.
    let snap = snapshot(h, fw);
    let err = net(
        h,
        fw,
        "setup",
        serde_json::json!({ "firewall": "ufw" }),
        &state,
    )
    .unwrap_err();
    assert_eq!(err.0, 3, "{}", err.1);
    assert_eq!(snapshot(h, fw), snap);

    net(h, fw, "teardown", serde_json::json!({}), &state).unwrap();
    assert_eq!(h.sysctl("net.ipv4.conf.all.route_localnet"), "0");
    assert_eq!(h.exec_ok(fw, "ip", &["route", "show", "169.254.170.2"]), "");
    assert!(!state.join("firewall-backend").exists());
    assert_eq!(applied(h, fw), RuleSet::default());
    net(h, fw, "teardown", serde_json::json!({}), &state).unwrap();

    // default.route_localnet=1 is what post-stop restores to.
    h.set_sysctl("net.ipv4.conf.default.route_localnet", "1");
    net(h, fw, "setup", serde_json::json!({}), &state).unwrap();
    // No record (e.g. lost /var/lib/ecs): auto teardown removes with what is available. The
    // route_localnet value found (0) is kept in the private directory; without it too, the
    // default value is what post-stop restores.
    std::fs::remove_file(state.join("firewall-backend")).unwrap();
    std::fs::remove_file(state.join("private/route_localnet.original")).unwrap();
    net(
        h,
        fw,
        "teardown",
        serde_json::json!({ "firewall": "auto" }),
        &state,
    )
    .unwrap();
    assert_eq!(h.sysctl("net.ipv4.conf.all.route_localnet"), "1");
    assert_eq!(applied(h, fw), RuleSet::default());
}

/// `render` is exactly what apply does: the rendered lines, run by hand in another fresh
/// namespace, give the same ruleset.
fn render_is_exact(fw: Fw) {
    let a = Netns::new("render-a");
    let b = Netns::new("render-b");
    prepopulate(&a, fw);
    prepopulate(&b, fw);
    apply(&a, fw, &full_set());
    let lines = fw_op(&b, fw, "render", &full_set()).unwrap();
    if fw.is_iptables() {
        for line in lines.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            b.exec_ok(fw, words[0], &words[1..]);
        }
    } else {
        let file = env().work.join(format!(
            "render-{}.nft",
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::write(&file, format!("{lines}\n")).unwrap();
        b.exec_ok(fw, "nft", &["-f", file.to_str().unwrap()]);
    }
    assert_eq!(snapshot(&a, fw), snapshot(&b, fw));
}

/// auto picks by probing: the tool and variant present, and rules of ours already there.
fn auto_selection(fw: Fw) {
    let ns = Netns::new("auto");
    let state = state_dir("auto");
    let plan = |ns: &Netns| -> serde_json::Value {
        serde_json::from_str(
            &net(
                ns,
                fw,
                "plan",
                serde_json::json!({ "firewall": "auto" }),
                &state,
            )
            .unwrap(),
        )
        .unwrap()
    };
    let p = plan(&ns);
    assert_eq!(p["firewall"], "iptables", "{p}");
    let variant = if fw == Fw::IptablesLegacy {
        "legacy"
    } else {
        "nf_tables"
    };
    assert!(p["reason"].as_str().unwrap().contains(variant), "{p}");
    apply(&ns, fw, &full_set());
    let p = plan(&ns);
    assert_eq!(p["firewall"], fw.backend(), "rules of ours exist: {p}");
    assert!(
        p["reason"].as_str().unwrap().contains("already exist"),
        "{p}"
    );
    remove(&ns, fw, &full_set());
    // A host with nft only (iptables absent or masked).
    let only_nft = env().work.join(format!(
        "only-nft-{}",
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&only_nft).unwrap();
    std::os::unix::fs::symlink(find_tool("nft").unwrap(), only_nft.join("nft")).unwrap();
    let exe = env().exe.to_str().unwrap().to_string();
    let cfg =
        serde_json::json!({ "firewall": "auto", "state": state.to_str().unwrap() }).to_string();
    let out = Command::new(&env().ip)
        .args([
            "netns",
            "exec",
            ns.name(),
            &exe,
            "--role",
            "net",
            "plan",
            &cfg,
        ])
        .env("PATH", &only_nft)
        .output()
        .unwrap();
    let p: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(p["firewall"], "nftables", "{p}");
    let out = Command::new(&env().ip)
        .args([
            "netns",
            "exec",
            ns.name(),
            &exe,
            "--role",
            "net",
            "plan",
            &cfg,
        ])
        .env("PATH", env().work.join("empty-path"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("neither a working iptables nor nft"));
}

// ---------------------------------------------------------------------------------------------
// The matrix.

type Scenario = (&'static str, fn(Fw));
/// (id, backend, scenario) of one matrix cell.
type Case = (String, Fw, fn(Fw));

const SCENARIOS: &[Scenario] = &[
    ("credentials_from_task", credentials_from_task),
    ("credentials_from_host", credentials_from_host),
    (
        "introspection_blocked_offhost",
        introspection_blocked_offhost,
    ),
    ("introspection_allowed", introspection_allowed),
    ("introspection_one_interface", introspection_one_interface),
    ("localhost_filter", localhost_filter),
    ("apply_twice", apply_twice),
    ("crash_then_apply", crash_then_apply),
    ("apply_remove_restores", apply_remove_restores),
    ("failure_leaves_nothing", failure_leaves_nothing),
    ("legacy_leftovers", legacy_leftovers),
    ("host_setup_teardown", host_setup_teardown),
    ("render_is_exact", render_is_exact),
    ("auto_selection", auto_selection),
];

const BACKENDS: &[Fw] = &[Fw::IptablesNft, Fw::IptablesLegacy, Fw::Nftables];

fn setup_env() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("these tests create network namespaces and need root".into());
    }
    for tool in [
        "ip",
        "nft",
        "iptables",
        "ip6tables",
        "iptables-legacy",
        "xtables-legacy-multi",
    ] {
        if find_tool(tool).is_none() {
            return Err(format!(
                "`{tool}` is not installed (apt-get install iproute2 nftables iptables)"
            ));
        }
    }
    let work = std::env::temp_dir().join(format!("{PREFIX}-{}", std::process::id()));
    let shim = work.join("legacy-bin");
    std::fs::create_dir_all(&shim).unwrap();
    std::fs::create_dir_all(work.join("empty-path")).unwrap();
    let multi = find_tool("xtables-legacy-multi").unwrap();
    for name in ["iptables", "ip6tables", "iptables-save", "ip6tables-save"] {
        std::os::unix::fs::symlink(&multi, shim.join(name)).unwrap();
    }
    let system_path = std::env::var("PATH").unwrap_or_default();
    let system_path = format!("{system_path}:/usr/sbin:/sbin");
    ENV.set(Env {
        exe: std::env::current_exe().unwrap(),
        ip: find_tool("ip").unwrap(),
        legacy_path: format!("{}:{system_path}", shim.display()),
        system_path,
        work,
    })
    .ok()
    .unwrap();
    cleanup_stale_namespaces();
    Ok(())
}

/// Namespaces of earlier runs that died (their pid is gone).
fn cleanup_stale_namespaces() {
    let list = run_ok("ip", &["netns", "list"]);
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let mut parts = name.splitn(3, '-');
        if parts.next() != Some(PREFIX) {
            continue;
        }
        let Some(pid) = parts.next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new(&env().ip)
                .args(["netns", "del", name])
                .status();
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--role") {
        std::process::exit(role(&args[2..]));
    }
    let filters: Vec<&String> = args[1..].iter().filter(|a| !a.starts_with("--")).collect();
    let mut cases: Vec<Case> = Vec::new();
    for &fw in BACKENDS {
        for (name, f) in SCENARIOS {
            let id = format!("{}::{name}", fw.label());
            if filters.is_empty() || filters.iter().any(|f| id.contains(f.as_str())) {
                cases.push((id, fw, *f));
            }
        }
    }
    if args.iter().any(|a| a == "--list") {
        for (id, ..) in &cases {
            println!("{id}: test");
        }
        return;
    }
    let started = Instant::now();
    println!("\nrunning {} tests", cases.len());
    if let Err(e) = setup_env() {
        println!("error: {e}");
        println!("\ntest result: FAILED. 0 passed; {} failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n", cases.len());
        std::process::exit(1);
    }
    let queue = Arc::new(Mutex::new(cases));
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    let passed = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (queue, failed, passed) = (queue.clone(), failed.clone(), passed.clone());
            std::thread::spawn(move || loop {
                let Some((id, fw, f)) = queue.lock().unwrap().pop() else {
                    return;
                };
                let t0 = Instant::now();
                let result = std::thread::Builder::new()
                    .name(id.clone())
                    .spawn(move || f(fw))
                    .unwrap()
                    .join();
                let secs = t0.elapsed().as_secs_f64();
                match result {
                    Ok(()) => {
                        println!("test {id} ... ok ({secs:.1}s)");
                        passed.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => {
                        println!("test {id} ... FAILED ({secs:.1}s)");
                        failed.lock().unwrap().push(id);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let _ = std::fs::remove_dir_all(&env().work);
    let failed = failed.lock().unwrap();
    let passed = passed.load(Ordering::SeqCst);
    if !failed.is_empty() {
        println!("\nfailures:");
        for id in failed.iter() {
            println!("    {id}");
        }
    }
    println!(
        "\ntest result: {}. {passed} passed; {} failed; 0 ignored; 0 measured; 0 filtered out; finished in {:.2}s\n",
        if failed.is_empty() { "ok" } else { "FAILED" },
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        std::process::exit(101);
    }
}
