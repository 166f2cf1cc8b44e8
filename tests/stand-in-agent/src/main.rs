//! `ecs-stand-in-agent`: a tiny stand-in for the Amazon ECS Container Agent.
//!
//! The launcher's integration tests need *something* to run as the `ecs-agent` container that
//! behaves like the real agent where the launcher can observe it (ports, log file, exit codes,
//! the update hand-off through `/var/cache/ecs/desired-image`) and that can tell the tests what
//! it sees from the inside (environment, mounts, capabilities, namespaces). The real agent needs
//! AWS credentials and a cluster, so it cannot be used.
//!
//! The binary is packed alone into an image (see `ecs-test-support`), so it must be built as a
//! static executable and depends on nothing but `std` and `libc`.
//!
//! # What it does
//! * serves HTTP on `127.0.0.1:51678` (introspection): `GET /v1/metadata` returns
//!   `{"Cluster":"<ECS_CLUSTER or default>","ContainerInstanceArn":null,"Version":"Amazon ECS Agent - stand-in"}`,
//!   `GET /v1/tasks` returns `{"Tasks":[]}`, `GET /v1/report` returns the report (below);
//! * serves HTTP on `127.0.0.1:51679` (credentials endpoint): any `GET` returns
//!   200 `credentials stand-in`;
//! * prints `stand-in agent starting pid=<pid>` to stdout and to stderr, and appends log lines to
//!   `$ECS_LOGFILE` (default `/log/ecs-agent.log`, created if missing);
//! * exits 0 promptly on `SIGTERM` or `SIGINT` (it blocks them and waits for them in a dedicated
//!   thread, which also works when it runs as PID 1 without an init).
//!
//! # Report (`GET /v1/report`)
//! A JSON object with `pid`, `ppid`, `uid`, `gid`, `euid`, `egid`, `hostname`, `pid1_comm`
//! (`comm` of PID 1, e.g. `docker-init` under `docker run --init`), `pid1_is_self`,
//! `cgroup` (contents of `/proc/self/cgroup`), `env` (object), `args`, `mounts` (list of
//! `{mount_point, root, source, fstype, read_only, options}` from `/proc/self/mountinfo`),
//! `capabilities` (`{effective, bounding, permitted}` as lists of names like `CAP_NET_ADMIN`, plus
//! the raw hex masks), and `namespaces` (`{self: {net, pid, user, mnt, ipc, uts, cgroup}, pid1: {...}}`,
//! each the `readlink` of `/proc/<pid>/ns/<name>` or `null` when unreadable).
//!
//! # Behaviour knobs (environment)
//! * `STANDIN_PRINT_LINES=<n>`: print `line 1` … `line <n>` to stdout before anything else
//!   (for log-capture tests).
//! * `STANDIN_EXIT_CODE=<n>`: exit with code `n` after `STANDIN_EXIT_AFTER_MS` milliseconds
//!   (default 0), serving until then.
//! * `STANDIN_UPDATE_TO=<tarball basename>`: write `<basename>\n` to
//!   `/var/cache/ecs/desired-image` and exit 42 (after `STANDIN_EXIT_AFTER_MS` if set), as the
//!   real agent does when an update has been downloaded.
//! * `STANDIN_WRITE_REPORT=<path>`: also write the report JSON to this path at start.
//! * `STANDIN_SCRIPT=<path>`: successive runs of the same container (a supervisor restarts it with
//!   the same environment) can behave differently. Each start removes the first non-empty line
//!   of the file (rewriting it) and obeys it; it overrides `STANDIN_EXIT_CODE` / `STANDIN_UPDATE_TO`.
//!   Lines: `exit <code> [after <ms>]`, `update <basename> [after <ms>]`, `serve` (run until
//!   signalled), `hang` (run until signalled without listening: introspection never answers). An empty or exhausted script means `serve`. Every start also appends
//!   `<pid> <line>` to `<path>.log` so tests can count the starts.
//! * `STANDIN_IGNORE_SIGTERM=1`: ignore `SIGTERM` (log it and keep serving), like an agent that
//!   hangs on shutdown; only `SIGINT` or `SIGKILL` end it.
//! * `STANDIN_LISTEN_ADDR=<ip>`: address to listen on (default `127.0.0.1`).
//! * `STANDIN_DESIRED_IMAGE=<path>`: where the update hand-off is written (default
//!   `/var/cache/ecs/desired-image`).
//!
//! Exit codes: as asked above; 0 on `SIGTERM`/`SIGINT`; 1 when a listener cannot be bound
//! within 10 s or the script/knobs are malformed.

mod report;

use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What this run has been told to do, from `STANDIN_SCRIPT` or the environment.
#[derive(Debug, Clone, PartialEq)]
enum Action {
    /// Serve until signalled.
    Serve,
    /// Run until signalled without serving anything (an agent that hangs before it registers).
    Hang,
    /// Exit with `code` after `after_ms`.
    Exit { code: i32, after_ms: u64 },
    /// Write the desired-image hand-off, then exit 42 after `after_ms`.
    Update { name: String, after_ms: u64 },
}

/// Serialises writes to the log file and the standard streams so lines do not interleave.
static LOG: Mutex<()> = Mutex::new(());

fn log_file_path() -> String {
    std::env::var("ECS_LOGFILE")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "/log/ecs-agent.log".to_string())
}

/// Logs a line to stdout and the agent log file (like the real agent, which writes both).
fn log(msg: &str) {
    let _guard = LOG.lock().unwrap_or_else(|e| e.into_inner());
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let line = format!(
        "level=info time={secs} pid={} msg=\"{msg}\"\n",
        std::process::id()
    );
    let _ = std::io::stdout().write_all(line.as_bytes());
    let _ = std::io::stdout().flush();
    let path = log_file_path();
    if let Some(parent) = std::path::Path::new(&path).parent() {
        let _ = fs::create_dir_all(parent);
    }
    if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(&path) {
        let _ = f.write_all(line.as_bytes());
    }
}

fn fail(msg: &str) -> ! {
    log(msg);
    eprintln!("stand-in agent error: {msg}");
    std::process::exit(1);
}

/// Parses one script line (`exit 3 after 200`, `update x.tar`, `serve`).
fn parse_script_line(line: &str) -> Result<Action, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |rest: &[&str]| -> Result<u64, String> {
        match rest {
            [] => Ok(0),
            ["after", ms] => ms.parse().map_err(|_| format!("bad delay in {line:?}")),
            _ => Err(format!("bad script line {line:?}")),
        }
    };
    match words.as_slice() {
        ["serve"] => Ok(Action::Serve),
        ["hang"] => Ok(Action::Hang),
        ["exit", code, rest @ ..] => Ok(Action::Exit {
            code: code
                .parse()
                .map_err(|_| format!("bad exit code in {line:?}"))?,
            after_ms: after(rest)?,
        }),
        ["update", name, rest @ ..] => Ok(Action::Update {
            name: name.to_string(),
            after_ms: after(rest)?,
        }),
        _ => Err(format!("bad script line {line:?}")),
    }
}

/// Takes the first non-empty line of the script file, rewriting the file without it.
fn consume_script(path: &str) -> Result<Action, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next();
    let rest: Vec<&str> = lines.collect();
    let mut remaining = rest.join("\n");
    if !remaining.is_empty() {
        remaining.push('\n');
    }
    // Write-then-rename so a crash never leaves a half-written script behind.
    let tmp = format!("{path}.tmp.{}", std::process::id());
    fs::write(&tmp, remaining).map_err(|e| format!("cannot write {tmp}: {e}"))?;
    fs::rename(&tmp, path).map_err(|e| format!("cannot rename {tmp}: {e}"))?;
    let line = first.unwrap_or("serve");
    if let Ok(mut f) = OpenOptions::new()
        .create(true)
        .append(true)
        .open(format!("{path}.log"))
    {
        let _ = writeln!(f, "{} {line}", std::process::id());
    }
    parse_script_line(line)
}

fn env_u64(name: &str) -> Result<Option<u64>, String> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("{name}={v:?} is not a number")),
        _ => Ok(None),
    }
}

/// Works out this run's action: the script wins, then the update knob, then the exit knob.
fn decide() -> Result<Action, String> {
    if let Ok(path) = std::env::var("STANDIN_SCRIPT") {
        if !path.is_empty() {
            return consume_script(&path);
        }
    }
    let after_ms = env_u64("STANDIN_EXIT_AFTER_MS")?.unwrap_or(0);
    if let Ok(name) = std::env::var("STANDIN_UPDATE_TO") {
        if !name.is_empty() {
            return Ok(Action::Update { name, after_ms });
        }
    }
    match std::env::var("STANDIN_EXIT_CODE") {
        Ok(v) if !v.trim().is_empty() => {
            let code = v
                .trim()
                .parse()
                .map_err(|_| format!("STANDIN_EXIT_CODE={v:?} is not a number"))?;
            Ok(Action::Exit { code, after_ms })
        }
        _ => Ok(Action::Serve),
    }
}

/// Blocks SIGTERM and SIGINT in every thread (call before spawning any) so that one thread can
/// collect them with `sigwait`. Blocked signals are queued even for PID 1, which would otherwise
/// ignore signals it has no handler for.
fn block_signals() -> libc::sigset_t {
    // SAFETY: plain libc calls on a local, zero-initialised sigset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for_signal(set: libc::sigset_t) -> ! {
    // STANDIN_IGNORE_SIGTERM=1: play an agent that hangs on shutdown, so tests can prove the
    // runtime's SIGKILL after the stop grace period. SIGINT still ends it.
    let ignore_term = std::env::var("STANDIN_IGNORE_SIGTERM").is_ok_and(|v| v == "1");
    let mut sig: libc::c_int = 0;
    loop {
        // SAFETY: `set` is a valid initialised sigset; `sig` is a valid out pointer.
        let rc = unsafe { libc::sigwait(&set, &mut sig) };
        if rc != 0 {
            continue;
        }
        if ignore_term && sig == libc::SIGTERM {
            log("received SIGTERM, ignoring it (STANDIN_IGNORE_SIGTERM=1)");
            continue;
        }
        break;
    }
    let name = if sig == libc::SIGTERM {
        "SIGTERM"
    } else {
        "SIGINT"
    };
    log(&format!("received {name}, exiting 0"));
    std::process::exit(0);
}

/// Binds, retrying for a while: a previous agent container on the host network may still be
/// releasing the port when the supervisor restarts us.
fn bind(addr: &str) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(addr) {
            Ok(l) => return l,
            Err(e) if Instant::now() < deadline => {
                log(&format!("cannot bind {addr} yet: {e}; retrying"));
                thread::sleep(Duration::from_millis(200));
            }
            Err(e) => fail(&format!("cannot bind {addr}: {e}")),
        }
    }
}

/// Reads the request head and returns (method, path). Bodies are ignored (only GET is served).
fn read_request(stream: &TcpStream) -> Option<(String, String)> {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(stream.take(64 * 1024));
    let mut first = String::new();
    reader.read_line(&mut first).ok()?;
    let mut parts = first.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) if line == "\r\n" || line == "\n" => break,
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    Some((method, path))
}

fn respond(mut stream: TcpStream, status: &str, content_type: &str, body: &str) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body.as_bytes());
    let _ = stream.flush();
}

fn metadata_json() -> String {
    let cluster = std::env::var("ECS_CLUSTER")
        .ok()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "default".to_string());
    format!(
        "{{\"Cluster\":{},\"ContainerInstanceArn\":null,\"Version\":\"Amazon ECS Agent - stand-in\"}}",
        report::json_string(&cluster)
    )
}

fn serve_introspection(stream: TcpStream) {
    let Some((method, path)) = read_request(&stream) else {
        return;
    };
    if method != "GET" {
        return respond(stream, "405 Method Not Allowed", "text/plain", "GET only\n");
    }
    let path = path.split('?').next().unwrap_or("");
    match path {
        "/v1/metadata" => respond(stream, "200 OK", "application/json", &metadata_json()),
        "/v1/tasks" => respond(stream, "200 OK", "application/json", "{\"Tasks\":[]}"),
        "/v1/report" => respond(stream, "200 OK", "application/json", &report::build()),
        _ => respond(stream, "404 Not Found", "text/plain", "not found\n"),
    }
}

fn serve_credentials(stream: TcpStream) {
    if read_request(&stream).is_some() {
        respond(stream, "200 OK", "text/plain", "credentials stand-in");
    }
}

fn spawn_server(listener: TcpListener, handler: fn(TcpStream)) {
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || handler(stream));
        }
    });
}

fn main() {
    // Before any thread exists, so every thread inherits the mask.
    let signals = block_signals();

    if let Some(n) = env_u64("STANDIN_PRINT_LINES").unwrap_or_else(|e| fail(&e)) {
        let mut out = std::io::stdout().lock();
        for i in 1..=n {
            let _ = writeln!(out, "line {i}");
        }
        let _ = out.flush();
    }

    let pid = std::process::id();
    println!("stand-in agent starting pid={pid}");
    eprintln!("stand-in agent starting pid={pid} (stderr)");
    log("stand-in agent starting");

    let action = decide().unwrap_or_else(|e| fail(&e));
    log(&format!("action: {action:?}"));

    if let Ok(path) = std::env::var("STANDIN_WRITE_REPORT") {
        if !path.is_empty() {
            if let Err(e) = fs::write(&path, report::build()) {
                fail(&format!("cannot write report to {path}: {e}"));
            }
        }
    }

    if action == Action::Hang {
        log("hanging: not serving introspection");
        wait_for_signal(signals);
    }

    let ip = std::env::var("STANDIN_LISTEN_ADDR")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "127.0.0.1".to_string());
    spawn_server(bind(&format!("{ip}:51678")), serve_introspection);
    spawn_server(bind(&format!("{ip}:51679")), serve_credentials);
    log("listening on 51678 (introspection) and 51679 (credentials)");

    match action {
        Action::Serve | Action::Hang => {}
        Action::Exit { code, after_ms } => {
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(after_ms));
                log(&format!("exiting with code {code} as asked"));
                std::process::exit(code);
            });
        }
        Action::Update { name, after_ms } => {
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(after_ms));
                let path = std::env::var("STANDIN_DESIRED_IMAGE")
                    .ok()
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "/var/cache/ecs/desired-image".to_string());
                if let Err(e) = fs::write(&path, format!("{name}\n")) {
                    fail(&format!("cannot write {path}: {e}"));
                }
                log(&format!("update to {name} ready; exiting 42"));
                std::process::exit(42);
            });
        }
    }

    wait_for_signal(signals);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_lines_parse() {
        assert_eq!(parse_script_line("serve"), Ok(Action::Serve));
        assert_eq!(parse_script_line("hang"), Ok(Action::Hang));
        assert_eq!(
            parse_script_line("exit 3 after 200"),
            Ok(Action::Exit {
                code: 3,
                after_ms: 200
            })
        );
        assert_eq!(
            parse_script_line("exit 5"),
            Ok(Action::Exit {
                code: 5,
                after_ms: 0
            })
        );
        assert_eq!(
            parse_script_line("update ecs-agent-v2.tar after 10"),
            Ok(Action::Update {
                name: "ecs-agent-v2.tar".into(),
                after_ms: 10
            })
        );
        assert!(parse_script_line("exit x").is_err());
        assert!(parse_script_line("exit 1 before 3").is_err());
        assert!(parse_script_line("dance").is_err());
    }

    #[test]
    fn script_is_consumed_line_by_line() {
        let dir = std::env::temp_dir().join(format!("standin-script-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let script = dir.join("script");
        fs::write(&script, "exit 3 after 1\n\nexit 0\n").unwrap();
        let p = script.to_str().unwrap();
        assert_eq!(
            consume_script(p),
            Ok(Action::Exit {
                code: 3,
                after_ms: 1
            })
        );
        assert_eq!(fs::read_to_string(&script).unwrap(), "exit 0\n");
        assert_eq!(
            consume_script(p),
            Ok(Action::Exit {
                code: 0,
                after_ms: 0
            })
        );
        assert_eq!(consume_script(p), Ok(Action::Serve));
        let log = fs::read_to_string(dir.join("script.log")).unwrap();
        assert_eq!(log.lines().count(), 3);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn metadata_mentions_cluster() {
        let m = metadata_json();
        assert!(m.starts_with("{\"Cluster\":"));
        assert!(m.contains("\"ContainerInstanceArn\":null"));
    }
}
