//! `ecs-agent-init`: the two small helpers the containerd backend of ecs-init needs on a host
//! without Docker.
//!
//! * **Init** (`ecs-agent-init -- <command> [args…]`): runs as PID 1 of the agent container,
//!   like Docker's `--init` (tini as `/sbin/docker-init`). A containerd-only host has no
//!   `docker-init`, so ecs-init ships this one and bind-mounts it read-only into the container.
//!   It starts the command as its child, forwards every catchable signal to it, reaps every
//!   zombie re-parented to PID 1, and exits with the child's status (`128 + n` when the child
//!   was killed by signal `n`, as tini does).
//! * **Log shim** (`binary://` log URI of containerd): containerd's runc shim starts it with the
//!   container's stdout on fd 3, stderr on fd 4 and a readiness pipe on fd 5, passing the URI's
//!   query parameters as `key value` argument pairs in *random* order. It writes a Docker
//!   `json-file`-style log (`{"log":…,"stream":…,"time":…}` lines) to `<dir>/<id>.log` and
//!   rotates it at `max-size`, keeping `max-file` files, so the agent's output stays bounded and
//!   survives the launcher (a FIFO would die with it).
//!
//! It depends on `std`, `libc` and the std-only `ecs-common` only and is built as a static executable, because it must run
//! inside an arbitrary image (the agent image has no libc of its own to speak of).

mod init;
mod logshim;

use std::ffi::OsString;

fn main() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let code = match args.first().and_then(|a| a.to_str()) {
        Some("--") => init::run(&args[1..]),
        Some(_) if logshim::is_invocation(&args) => logshim::run(&args),
        _ => {
            eprintln!(
                "usage: ecs-agent-init -- COMMAND [ARG...]\n       \
                 (or as a containerd binary:// log shim: log-shim DIR [max-size N] [max-file N])"
            );
            2
        }
    };
    std::process::exit(code);
}
