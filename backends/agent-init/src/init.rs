//! PID 1: start the command, forward signals, reap zombies, exit with the command's status.
//!
//! All signals are blocked in the init and collected synchronously with `sigtimedwait`, the
//! same structure tini uses: no async handlers, so nothing can race with `waitpid`.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;

/// Signals that must never be forwarded: they are about the init itself or cannot be caught.
fn forwardable(sig: libc::c_int) -> bool {
    !matches!(
        sig,
        libc::SIGCHLD | libc::SIGKILL | libc::SIGSTOP | libc::SIGTTIN | libc::SIGTTOU
    )
}

pub fn run(command: &[OsString]) -> i32 {
    if command.is_empty() {
        eprintln!("ecs-agent-init: no command given after --");
        return 2;
    }
    let argv: Vec<CString> = match command
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
    {
        Ok(v) => v,
        Err(_) => {
            eprintln!("ecs-agent-init: argument contains a NUL byte");
            return 2;
        }
    };
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());

    // SAFETY: plain libc signal-mask and process calls. Between fork and exec the child only
    // calls async-signal-safe functions on memory prepared before the fork.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_SETMASK, &all, &mut old);

        let child = libc::fork();
        if child < 0 {
            eprintln!(
                "ecs-agent-init: fork failed: {}",
                std::io::Error::last_os_error()
            );
            return 1;
        }
        if child == 0 {
            // Own process group, like tini, so a terminal's job control targets the command.
            libc::setpgid(0, 0);
            libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            libc::execvp(argv_ptrs[0], argv_ptrs.as_ptr());
            let err = *libc::__errno_location();
            let msg = b"ecs-agent-init: exec failed\n";
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(if err == libc::ENOENT { 127 } else { 126 });
        }

        supervise(child, &all)
    }
}

/// Forwards signals to `child` and reaps until it exits; returns its shell-style status.
///
/// # Safety
/// `all` must be an initialised signal set that is blocked in this thread.
unsafe fn supervise(child: libc::pid_t, all: &libc::sigset_t) -> i32 {
    let timeout = libc::timespec {
        tv_sec: 1,
        tv_nsec: 0,
    };
    loop {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let sig = libc::sigtimedwait(all, &mut info, &timeout);
        if sig > 0 && forwardable(sig) {
            // ESRCH only means the child is already gone; the reaping below notices that.
            libc::kill(child, sig);
        }
        // Reap everything that has exited, not only on SIGCHLD: signals coalesce.
        loop {
            let mut status: libc::c_int = 0;
            let pid = libc::waitpid(-1, &mut status, libc::WNOHANG);
            if pid <= 0 {
                break;
            }
            if pid == child {
                let code = if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else if libc::WIFSIGNALED(status) {
                    128 + libc::WTERMSIG(status)
                } else {
                    continue;
                };
                // Collect any remaining zombies before leaving.
                while libc::waitpid(-1, &mut status, libc::WNOHANG) > 0 {}
                return code;
            }
        }
    }
}
