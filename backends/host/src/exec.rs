//! The seam for every external program the launcher runs.
//!
//! Modelled on youki's `syscall` module: callers receive an `&dyn Exec` (or an `Arc`) from the
//! composition root and never spawn programs themselves, so the decisions around a program's
//! answers (iptables' converge and rollback, nft's batches and listings, the firewall probes,
//! AppArmor loading, realm membership) are unit-tested with [`FakeExec`], and the real programs are exercised by the
//! integration suites through [`SystemExec`].
use async_trait::async_trait;
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The search path used when the process environment has no `PATH`.
pub const DEFAULT_SEARCH_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a program that could be started did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    pub success: bool,
    /// The exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    pub stdout: String,
    /// Trimmed.
    pub stderr: String,
}

impl Output {
    /// Exit status 0 with this stdout.
    pub fn ok(stdout: impl Into<String>) -> Output {
        Output {
            success: true,
            code: Some(0),
            stdout: stdout.into(),
            stderr: String::new(),
        }
    }

    /// Exit status `code` with this stderr.
    pub fn failed(code: i32, stderr: impl Into<String>) -> Output {
        Output {
            success: false,
            code: Some(code),
            stdout: String::new(),
            stderr: stderr.into(),
        }
    }

    fn from_std(out: std::process::Output) -> Output {
        Output {
            success: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }
    }
}

/// `program args…` as one line, for errors, logs and `plan`.
pub fn command_line(program: &str, args: &[String]) -> String {
    std::iter::once(program)
        .chain(args.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The error of a command that did not finish within `limit`.
fn timed_out(program: &str, args: &[String], limit: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "{} did not finish within {} s and was killed",
            command_line(program, args),
            limit.as_secs_f64()
        ),
    )
}

/// Runs external programs. `Err` only when the program cannot be started at all (missing,
/// not executable); a program that ran and failed is an `Ok` [`Output`].
#[async_trait]
pub trait Exec: Send + Sync + fmt::Debug {
    /// Run `program args…` to completion with stdin from `/dev/null`.
    async fn run(&self, program: &str, args: &[String]) -> io::Result<Output>;
    /// Run `program args…` to completion with `input` as its stdin (`nft -j -f -`).
    async fn run_with_input(
        &self,
        program: &str,
        args: &[String],
        input: &[u8],
    ) -> io::Result<Output>;
    /// [`Exec::run`] bounded by `limit`: a program still running then is killed and the answer
    /// is a `TimedOut` error naming the command and the limit (a mount helper waiting on an
    /// unreachable NFS server must not hold its caller forever).
    async fn run_within(
        &self,
        program: &str,
        args: &[String],
        limit: Duration,
    ) -> io::Result<Output> {
        tokio::time::timeout(limit, self.run(program, args))
            .await
            .unwrap_or_else(|_| Err(timed_out(program, args, limit)))
    }
    /// The same, blocking (for probes made outside the async runtime).
    fn run_blocking(&self, program: &str, args: &[String]) -> io::Result<Output>;
    /// Where `name` is found on the search path, if it is installed.
    fn find(&self, name: &str) -> Option<PathBuf>;
}

/// The real thing: programs are looked up on the search path given at construction (the
/// process's `PATH`, read once by the composition root), never on an ambient one.
#[derive(Debug, Clone)]
pub struct SystemExec {
    search_path: OsString,
}

impl SystemExec {
    /// `search_path`: a `PATH`-style list; `None` means [`DEFAULT_SEARCH_PATH`].
    pub fn new(search_path: Option<OsString>) -> SystemExec {
        SystemExec {
            search_path: search_path
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| DEFAULT_SEARCH_PATH.into()),
        }
    }

    /// The program to start: a name is resolved on the search path, a path is used as is.
    fn resolve(&self, program: &str) -> PathBuf {
        if program.contains('/') {
            return PathBuf::from(program);
        }
        self.find(program).unwrap_or_else(|| PathBuf::from(program))
    }

    fn command(&self, program: &str, args: &[String]) -> std::process::Command {
        let mut cmd = std::process::Command::new(self.resolve(program));
        cmd.args(args)
            .env("PATH", &self.search_path)
            .stdin(std::process::Stdio::null());
        cmd
    }
}

#[async_trait]
impl Exec for SystemExec {
    async fn run(&self, program: &str, args: &[String]) -> io::Result<Output> {
        tracing::debug!(command = %command_line(program, args), "running");
        let out = tokio::process::Command::from(self.command(program, args))
            .output()
            .await?;
        Ok(Output::from_std(out))
    }

    async fn run_with_input(
        &self,
        program: &str,
        args: &[String],
        input: &[u8],
    ) -> io::Result<Output> {
        use tokio::io::AsyncWriteExt;
        tracing::debug!(command = %command_line(program, args), bytes = input.len(), "running with input");
        let mut cmd = tokio::process::Command::from(self.command(program, args));
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        // Written while the output is collected, so a program that answers before reading all
        // of its input cannot deadlock on a full pipe. A program that stops reading (EPIPE) is
        // judged by its exit status; any other write error fails a run that reported success,
        // since the program did not get all of its input.
        let write = async move {
            let written = stdin.write_all(input).await;
            drop(stdin);
            written
        };
        let (written, out) = tokio::join!(write, child.wait_with_output());
        let out = Output::from_std(out?);
        match written {
            Err(e) if e.kind() != io::ErrorKind::BrokenPipe && out.success => Err(io::Error::new(
                e.kind(),
                format!("writing the input of {program}: {e}"),
            )),
            Err(e) => {
                tracing::debug!(program, error = %e, "the program did not read all of its input");
                Ok(out)
            }
            Ok(()) => Ok(out),
        }
    }

    /// The program runs in a process group of its own, and the whole group is killed at the
    /// limit: `mount` waits for the helper it started (`mount.efs`, then `mount.nfs4`), and
    /// killing only `mount` would leave them behind.
    async fn run_within(
        &self,
        program: &str,
        args: &[String],
        limit: Duration,
    ) -> io::Result<Output> {
        use std::os::unix::process::CommandExt;
        tracing::debug!(command = %command_line(program, args), limit = ?limit, "running");
        let mut cmd = self.command(program, args);
        cmd.process_group(0);
        let child = tokio::process::Command::from(cmd)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let group = child.id();
        match tokio::time::timeout(limit, child.wait_with_output()).await {
            Ok(out) => Ok(Output::from_std(out?)),
            Err(_) => {
                if let Some(pid) = group.and_then(|p| libc::pid_t::try_from(p).ok()) {
                    // SAFETY: kill(2) of the process group the child leads (its pid).
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                }
                Err(timed_out(program, args, limit))
            }
        }
    }

    fn run_blocking(&self, program: &str, args: &[String]) -> io::Result<Output> {
        tracing::debug!(command = %command_line(program, args), "running");
        Ok(Output::from_std(self.command(program, args).output()?))
    }

    fn find(&self, name: &str) -> Option<PathBuf> {
        std::env::split_paths(&self.search_path)
            .map(|dir| dir.join(name))
            .find(|candidate| is_executable(candidate))
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Whether `err` (from [`Exec::run`]) says the program is not installed.
pub fn is_not_found(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::NotFound
}

#[cfg(any(test, feature = "testing"))]
pub use fake::FakeExec;

#[cfg(any(test, feature = "testing"))]
mod fake {
    use super::*;
    use std::sync::Mutex;

    type Handler = Box<dyn Fn(&str, &[String]) -> io::Result<Output> + Send + Sync>;

    /// A recording, scripted [`Exec`] for unit tests: every call is recorded as its command
    /// line (and its stdin, if any), and a handler decides the answer (it may keep state, e.g.
    /// model a rule table).
    pub struct FakeExec {
        handler: Handler,
        installed: Vec<String>,
        calls: Mutex<Vec<String>>,
        inputs: Mutex<Vec<String>>,
    }

    impl fmt::Debug for FakeExec {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("FakeExec")
                .field("installed", &self.installed)
                .finish()
        }
    }

    impl FakeExec {
        /// `installed`: the programs [`Exec::find`] knows (others are "not installed" and
        /// fail to start with `NotFound`); `handler` answers every run of an installed one.
        pub fn new(
            installed: &[&str],
            handler: impl Fn(&str, &[String]) -> io::Result<Output> + Send + Sync + 'static,
        ) -> FakeExec {
            FakeExec {
                handler: Box::new(handler),
                installed: installed.iter().map(|s| s.to_string()).collect(),
                calls: Mutex::new(Vec::new()),
                inputs: Mutex::new(Vec::new()),
            }
        }

        /// Every command line run so far, in order.
        pub fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }

        /// The stdin of every [`Exec::run_with_input`] so far, in order.
        pub fn inputs(&self) -> Vec<String> {
            self.inputs.lock().unwrap().clone()
        }

        fn answer(&self, program: &str, args: &[String]) -> io::Result<Output> {
            self.calls.lock().unwrap().push(command_line(program, args));
            let name = Path::new(program)
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or(program);
            if !self.installed.iter().any(|i| i == name || i == program) {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{program}: not installed"),
                ));
            }
            (self.handler)(program, args)
        }
    }

    #[async_trait]
    impl Exec for FakeExec {
        async fn run(&self, program: &str, args: &[String]) -> io::Result<Output> {
            self.answer(program, args)
        }
        async fn run_with_input(
            &self,
            program: &str,
            args: &[String],
            input: &[u8],
        ) -> io::Result<Output> {
            self.inputs
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(input).into_owned());
            self.answer(program, args)
        }
        fn run_blocking(&self, program: &str, args: &[String]) -> io::Result<Output> {
            self.answer(program, args)
        }
        fn find(&self, name: &str) -> Option<PathBuf> {
            self.installed
                .iter()
                .any(|i| i == name)
                .then(|| PathBuf::from("/usr/sbin").join(name))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn runs_programs_from_the_given_search_path_only() {
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("ecs-host-test-tool");
        std::fs::write(
            &tool,
            "#!/bin/sh\necho \"out $1\"; echo 'err ' >&2; exit 3\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = OsString::from(format!("{}:/bin:/usr/bin", dir.path().display()));
        let exec = SystemExec::new(Some(path));
        assert_eq!(exec.find("ecs-host-test-tool"), Some(tool.clone()));
        let out = exec.run("ecs-host-test-tool", &args(&["x"])).await.unwrap();
        assert_eq!(
            out,
            Output {
                success: false,
                code: Some(3),
                stdout: "out x\n".into(),
                stderr: "err".into()
            }
        );
        assert_eq!(
            exec.run_blocking("ecs-host-test-tool", &args(&["y"]))
                .unwrap()
                .stdout,
            "out y\n"
        );
        // Not on this search path, whatever the process's own PATH says.
        let other = SystemExec::new(Some("/nonexistent".into()));
        assert_eq!(other.find("ecs-host-test-tool"), None);
        let err = other.run("ecs-host-test-tool", &[]).await.unwrap_err();
        assert!(is_not_found(&err), "{err}");
        let err = other
            .run_with_input("ecs-host-test-tool", &[], b"x")
            .await
            .unwrap_err();
        assert!(is_not_found(&err), "{err}");
    }

    #[tokio::test]
    async fn input_reaches_stdin_and_a_large_one_cannot_deadlock() {
        let exec = SystemExec::new(None);
        // Reads everything, then answers with its length.
        let script = args(&["-c", "wc -c; exit 4"]);
        let out = exec
            .run_with_input("sh", &script, b"hello\n")
            .await
            .unwrap();
        assert_eq!((out.code, out.stdout.trim()), (Some(4), "6"));
        // 4 MiB: far over a pipe's buffer, echoed back whole while still being written (a
        // deadlock fails the test after 30 s instead of hanging it).
        let big = vec![b'a'; 4 << 20];
        let out = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            exec.run_with_input("sh", &args(&["-c", "cat"]), &big),
        )
        .await
        .expect("no deadlock")
        .unwrap();
        assert_eq!(out.stdout.len(), big.len());
        // A program that exits without reading: judged by its status, not by the broken pipe.
        let out = exec
            .run_with_input("sh", &args(&["-c", "echo no >&2; exit 1"]), &big)
            .await
            .unwrap();
        assert_eq!((out.code, out.stderr.as_str()), (Some(1), "no"));
    }

    #[tokio::test]
    async fn a_program_over_its_limit_is_killed_with_its_children() {
        let exec = SystemExec::new(None);
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        // The shell starts a child (as mount starts its helper) and waits for it.
        let script = format!("sleep 60 & echo $! > {}; wait", pidfile.display());
        let started = std::time::Instant::now();
        let err = exec
            .run_within("sh", &args(&["-c", &script]), Duration::from_millis(500))
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(
            err.to_string().contains("did not finish within 0.5 s"),
            "{err}"
        );
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The grandchild went with the group (it may linger as a zombie of its dead parent
        // for a moment, so wait for it to be reaped by init).
        let gone = (0..50).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.is_empty() || stat.contains(") Z ")
        });
        assert!(gone, "the helper {pid} outlived the timeout");
        // Within the limit: the ordinary answer.
        let out = exec
            .run_within(
                "sh",
                &args(&["-c", "echo hi; exit 2"]),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert_eq!((out.code, out.stdout.as_str()), (Some(2), "hi\n"));
    }

    #[test]
    fn fake_records_and_refuses_what_is_not_installed() {
        let fake = FakeExec::new(&["iptables"], |_, a| Ok(Output::ok(a.join(","))));
        assert_eq!(
            fake.run_blocking("iptables", &args(&["-S"]))
                .unwrap()
                .stdout,
            "-S"
        );
        assert!(is_not_found(&fake.run_blocking("nft", &[]).unwrap_err()));
        assert_eq!(fake.calls(), ["iptables -S", "nft"]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let out = rt
            .block_on(fake.run_with_input("iptables", &args(&["-f", "-"]), b"batch"))
            .unwrap();
        assert_eq!(out.stdout, "-f,-");
        assert_eq!(fake.inputs(), ["batch"]);
        assert!(fake.find("iptables").is_some() && fake.find("nft").is_none());
    }
}
