//! Mounting and unmounting through the `Exec` seam, as the Go plugin does: `mount -t <type>
//! -o <options> <device> <target>` (mount(8) hands `-t efs` to the EFS helper, `mount.efs`,
//! from amazon-efs-utils) and `umount -l <target>`: lazily, since the NFS server may be
//! unreachable once the task's network is gone. Each command is bounded by the operator's
//! timeout (`ECS_VOLUME_PLUGIN_MOUNT_TIMEOUT_SECONDS`).
//!
//! Whether a path is mounted is read from the kernel's mount table, never by `stat`ing the
//! path: `stat` on a hung NFS mount blocks.
use ecs_host::exec::command_line;
use ecs_host::Exec;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The mount table of the plugin's mount namespace.
pub const MOUNTINFO: &str = "/proc/self/mountinfo";

/// What `umount` says for a path that is not mounted (util-linux: "<path>: not mounted.").
const NOT_MOUNTED: &str = "not mounted";

#[derive(Debug, Clone)]
pub struct Mounter {
    exec: Arc<dyn Exec>,
    timeout: Duration,
    mountinfo: PathBuf,
}

/// What [`Mounter::unmount`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmounted {
    Done,
    /// `umount` said the path was not mounted: nothing to do.
    WasNotMounted,
}

impl Mounter {
    /// `mountinfo`: the mount table to read ([`MOUNTINFO`] but in tests).
    pub fn new(exec: Arc<dyn Exec>, timeout: Duration, mountinfo: PathBuf) -> Mounter {
        Mounter {
            exec,
            timeout,
            mountinfo,
        }
    }

    /// The arguments of `mount` for a volume, as the Go plugin builds them: `-t` only when the
    /// volume has a type, `-o` only when it has options.
    pub fn mount_args(kind: &str, options: &str, device: &str, target: &Path) -> Vec<String> {
        let mut args = Vec::new();
        if !kind.is_empty() {
            args.extend(["-t".to_string(), kind.to_string()]);
        }
        if !options.is_empty() {
            args.extend(["-o".to_string(), options.to_string()]);
        }
        args.extend([device.to_string(), target.display().to_string()]);
        args
    }

    /// Mount `device` at `target`. The error names the command (options redacted) and says
    /// what mount said.
    pub async fn mount(
        &self,
        kind: &str,
        options: &str,
        device: &str,
        target: &Path,
    ) -> Result<(), String> {
        let args = Self::mount_args(kind, options, device, target);
        self.run("mount", &args).await.map(|_| ())
    }

    /// `umount -l target`; "not mounted" is [`Unmounted::WasNotMounted`].
    pub async fn unmount(&self, target: &Path) -> Result<Unmounted, String> {
        let args = vec!["-l".to_string(), target.display().to_string()];
        match self.run("umount", &args).await {
            Ok(()) => Ok(Unmounted::Done),
            Err(e) if e.contains(NOT_MOUNTED) => Ok(Unmounted::WasNotMounted),
            Err(e) => Err(e),
        }
    }

    async fn run(&self, program: &str, args: &[String]) -> Result<(), String> {
        let shown = redacted_command(program, args);
        tracing::info!(command = %shown, "running");
        match self.exec.run_within(program, args, self.timeout).await {
            Ok(out) if out.success => Ok(()),
            Ok(out) => {
                let said = if out.stderr.is_empty() {
                    out.stdout.trim().to_string()
                } else {
                    out.stderr
                };
                let status = out
                    .code
                    .map(|c| format!("exit status {c}"))
                    .unwrap_or_else(|| "killed by a signal".into());
                Err(format!("`{shown}` failed ({status}): {said}"))
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Err(format!(
                "`{shown}` did not finish within {} s (ECS_VOLUME_PLUGIN_MOUNT_TIMEOUT_SECONDS) and was killed",
                self.timeout.as_secs_f64()
            )),
            Err(e) if ecs_host::exec::is_not_found(&e) => Err(format!(
                "cannot run {program}: {e} (is util-linux installed, and amazon-efs-utils for EFS volumes?)"
            )),
            Err(e) => Err(format!("cannot run `{shown}`: {e}")),
        }
    }

    /// Is `target` a mount point now (in this mount namespace)?
    pub fn is_mounted(&self, target: &Path) -> bool {
        std::fs::read(&self.mountinfo)
            .map(|table| mount_points(&String::from_utf8_lossy(&table)).any(|p| p == target))
            .unwrap_or(false)
    }
}

/// The mount points of a `/proc/<pid>/mountinfo` table (field 5, with the kernel's octal
/// escapes of space, tab, newline and backslash undone).
pub fn mount_points(table: &str) -> impl Iterator<Item = PathBuf> + '_ {
    table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape(field)))
}

fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match octal {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `program args…` with the secret-looking parts of mount options shown redacted: `-o`
/// values are split at commas and each `key=value` is shown as the launcher shows config
/// (`password=…` → `password=<redacted>`).
pub fn redacted_command(program: &str, args: &[String]) -> String {
    let mut shown = Vec::with_capacity(args.len());
    let mut options_next = false;
    for a in args {
        if options_next {
            shown.push(redacted_options(a));
        } else {
            shown.push(a.clone());
        }
        options_next = a == "-o";
    }
    command_line(program, &shown)
}

/// Mount options (`tls,iam,accesspoint=fsap-…`) with secret-looking values redacted.
pub fn redacted_options(options: &str) -> String {
    options
        .split(',')
        .map(ecs_formats::redact::redacted_entry)
        .collect::<Vec<_>>()
        .join(",")
}

/// The volume options of a request or the state file, for logs: secret-looking keys and
/// secret-looking mount options redacted.
pub fn shown_options(options: &BTreeMap<String, String>) -> String {
    options
        .iter()
        .map(|(k, v)| {
            let v = if k == "o" {
                redacted_options(v)
            } else {
                ecs_formats::redact::shown(k, v).to_string()
            };
            format!("{k}={v}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_read_with_escapes_undone() {
        let table = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                     90 22 0:50 / /var/lib/ecs/volumes/a\\040b rw - nfs4 fs-1:/ rw\n\
                     91 22 0:51 / /x\\134y rw - tmpfs tmpfs rw\n";
        let points: Vec<PathBuf> = mount_points(table).collect();
        assert_eq!(
            points,
            [
                PathBuf::from("/"),
                PathBuf::from("/var/lib/ecs/volumes/a b"),
                PathBuf::from("/x\\y")
            ]
        );
    }

    #[test]
    fn go_shaped_arguments_and_redacted_logs() {
        assert_eq!(
            Mounter::mount_args("efs", "tls,iam", "fs-12345678:/", Path::new("/v/a")),
            ["-t", "efs", "-o", "tls,iam", "fs-12345678:/", "/v/a"]
        );
        assert_eq!(
            Mounter::mount_args("", "", "fs-1:/", Path::new("/v/a")),
            ["fs-1:/", "/v/a"]
        );
        let args: Vec<String> = [
            "-t",
            "cifs",
            "-o",
            "user=me,password=hunter22,vers=3",
            "//s/x",
            "/v",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            redacted_command("mount", &args),
            "mount -t cifs -o user=me,password=<redacted>,vers=3 //s/x /v"
        );
        let opts = BTreeMap::from([
            (
                "o".to_string(),
                "tls,accesspoint=fsap-1,authtoken=x".to_string(),
            ),
            ("secret".to_string(), "s3cr3t".to_string()),
            ("device".to_string(), "fs-1:/".to_string()),
        ]);
        assert_eq!(
            shown_options(&opts),
            "device=fs-1:/ o=tls,accesspoint=fsap-1,authtoken=<redacted> secret=<redacted>"
        );
    }
}
