//! Host facts the agent container depends on, detected at run time (not compiled in).
//!
//! [`HostFacts`] is plain data so that the spec builder's decisions are unit-tested without a
//! host; [`HostFacts::probe`] reads the real one.
use ecs_host::Exec;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The distribution families whose paths differ.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Distro {
    /// Amazon Linux 1 (upstart, `/cgroup`).
    AmazonLinux1,
    /// Amazon Linux 2 / 2023 (`/etc/pki`).
    AmazonLinux,
    /// Red Hat family without being Amazon Linux (`/etc/pki`).
    RedHat,
    /// SUSE, Ubuntu, Debian and others (`/etc/ssl`).
    Other,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HostFacts {
    pub distro: Distro,
    /// `<ID>_<VERSION_ID>` from `/etc/os-release` (quotes trimmed), `linux` if unknown.
    pub detailed_os_family: String,
    /// The host's certificate directory, when it exists (`SSL_CERT_DIR`).
    pub cert_dir: Option<PathBuf>,
    /// `/etc/pki` or `/etc/ssl`, when it exists (bind-mounted read-only).
    pub pki_dir: Option<PathBuf>,
    /// `/sys/fs/cgroup`, or `/cgroup` on Amazon Linux 1.
    pub cgroup_root: PathBuf,
    /// `/mnt/ecs/ebs` is a directory.
    pub ebs_dir: bool,
    /// Some `/dev/nvidia*` exists.
    pub nvidia_devices: bool,
    pub apparmor: bool,
    /// The host is joined to an Active Directory realm (for gMSA).
    pub realm_joined: bool,
    /// Host files bind-mounted only when they exist.
    pub nsenter: Option<PathBuf>,
    pub modinfo: Option<PathBuf>,
    pub cloud_init_result: Option<PathBuf>,
    /// Every path the spec builder asked about that exists (for the conditional binds).
    pub existing: Vec<PathBuf>,
    /// The ECS volume plugin is installed ([`VOLUME_PLUGIN`]): the agent may hand it EFS
    /// volumes.
    pub volume_plugin: bool,
}

/// The ECS volume plugin our packages install (the Docker volume driver for EFS volumes).
pub const VOLUME_PLUGIN: &str = "/usr/libexec/amazon-ecs-volume-plugin";

/// Paths whose existence decides a bind (checked on the real host, not re-rooted).
pub const CLOUD_INIT_RESULT: &str = "/var/lib/cloud/data/result.json";

impl HostFacts {
    /// Read the facts of the running host. `extra` are further paths whose existence the
    /// caller needs (e.g. the credentials-fetcher socket, re-rooted ecs dirs). `realm list` (an
    /// external program, and the spec is built at every agent restart) runs only when
    /// `ask_realm`: gMSA support is its only user.
    pub fn probe(extra: &[PathBuf], exec: &dyn Exec, ask_realm: bool) -> HostFacts {
        let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
        let (distro, detailed) = parse_os_release(&os_release);
        let (cert_dir, pki_dir) = match distro {
            Distro::AmazonLinux1 | Distro::AmazonLinux | Distro::RedHat => {
                ("/etc/pki/tls/certs", "/etc/pki")
            }
            Distro::Other => ("/etc/ssl/certs", "/etc/ssl"),
        };
        let is_dir = |p: &str| Path::new(p).is_dir();
        let exists = |p: &str| Path::new(p).exists();
        let nvidia_devices = std::fs::read_dir("/dev")
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("nvidia"))
            })
            .unwrap_or(false);
        HostFacts {
            distro,
            detailed_os_family: detailed,
            cert_dir: is_dir(cert_dir).then(|| cert_dir.into()),
            pki_dir: is_dir(pki_dir).then(|| pki_dir.into()),
            cgroup_root: if distro == Distro::AmazonLinux1 {
                "/cgroup".into()
            } else {
                "/sys/fs/cgroup".into()
            },
            ebs_dir: is_dir("/mnt/ecs/ebs"),
            nvidia_devices,
            apparmor: apparmor_supported(),
            realm_joined: ask_realm && realm_joined(exec),
            nsenter: exists("/usr/bin/nsenter").then(|| "/usr/bin/nsenter".into()),
            modinfo: ["/sbin/modinfo", "/usr/sbin/modinfo"]
                .into_iter()
                .find(|p| exists(p))
                .map(PathBuf::from),
            cloud_init_result: exists(CLOUD_INIT_RESULT).then(|| CLOUD_INIT_RESULT.into()),
            existing: extra.iter().filter(|p| p.exists()).cloned().collect(),
            volume_plugin: exists(VOLUME_PLUGIN),
        }
    }

    /// Does `path` exist (among the extra paths probed)?
    pub fn exists(&self, path: &Path) -> bool {
        self.existing.iter().any(|p| p == path)
    }
}

/// `(distro, "<ID>_<VERSION_ID>")` from the text of `/etc/os-release`.
pub fn parse_os_release(text: &str) -> (Distro, String) {
    let field = |name: &str| {
        text.lines()
            .filter_map(|l| l.trim().split_once('='))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().trim_matches('"').trim_matches('\'').to_string())
            .filter(|v| !v.is_empty())
    };
    let id = field("ID");
    let version = field("VERSION_ID");
    let id_like = field("ID_LIKE").unwrap_or_default();
    let distro = match (id.as_deref(), version.as_deref()) {
        (Some("amzn"), Some(v))
            if v.starts_with("2018") || v.starts_with("2017") || v.starts_with("2016") =>
        {
            Distro::AmazonLinux1
        }
        (Some("amzn"), _) => Distro::AmazonLinux,
        (Some("rhel" | "centos" | "fedora" | "rocky" | "almalinux"), _) => Distro::RedHat,
        _ if id_like
            .split_whitespace()
            .any(|l| l == "rhel" || l == "fedora") =>
        {
            Distro::RedHat
        }
        _ => Distro::Other,
    };
    let detailed = match (id, version) {
        (Some(i), Some(v)) => format!("{i}_{v}"),
        _ => "linux".to_string(),
    };
    (distro, detailed)
}

/// AppArmor is usable when the kernel has it enabled, the parser exists, and we are not
/// inside a container (packaging/COMPATIBILITY.md §7).
fn apparmor_supported() -> bool {
    Path::new("/sys/kernel/security/apparmor").exists()
        && Path::new("/sbin/apparmor_parser").exists()
        && std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
            .map(|s| s.starts_with('Y'))
            .unwrap_or(false)
        && !Path::new("/.dockerenv").exists()
        && !Path::new("/run/.containerenv").exists()
}

/// `realm list` describes each joined realm with a `realm-name:` line; the host is joined when
/// it succeeds and names one, as the Go tool checks (no `realm` tool: not joined).
fn realm_joined(exec: &dyn Exec) -> bool {
    // Looked up on the search path, as the Go tool does.
    let Some(realm) = exec.find("realm") else {
        tracing::warn!(
            "ECS_GMSA_SUPPORTED is on but realmd's realm tool is not installed: not domain-joined"
        );
        return false;
    };
    match exec.run_blocking(&realm.to_string_lossy(), &["list".to_string()]) {
        Ok(o) if o.success && names_a_realm(&o.stdout) => true,
        Ok(o) if o.success => {
            tracing::warn!("realm list names no realm (no realm-name line): not domain-joined");
            false
        }
        Ok(o) => {
            tracing::warn!(stderr = %o.stderr.trim(), "realm list failed: not domain-joined");
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not run realm list: not domain-joined");
            false
        }
    }
}

/// Does `realm list`'s output name a realm (a `realm-name` line, the Go tool's test)?
fn names_a_realm(stdout: &str) -> bool {
    stdout.contains("realm-name")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realm_list_must_name_a_realm() {
        let joined = "example.com\n  type: kerberos\n  realm-name: EXAMPLE.COM\n  domain-name: example.com\n  configured: kerberos-member\n";
        assert!(names_a_realm(joined));
        // Output that lists no realm (e.g. only a discovery hint) is not a join.
        assert!(!names_a_realm(""));
        assert!(!names_a_realm("example.com\n  type: kerberos\n"));
    }

    #[test]
    fn os_release() {
        assert_eq!(
            parse_os_release("NAME=\"Amazon Linux\"\nID=\"amzn\"\nVERSION_ID=\"2\"\n"),
            (Distro::AmazonLinux, "amzn_2".into())
        );
        assert_eq!(
            parse_os_release("ID=amzn\nVERSION_ID=\"2018.03\"\n"),
            (Distro::AmazonLinux1, "amzn_2018.03".into())
        );
        assert_eq!(
            parse_os_release("ID=debian\nVERSION_ID=\"12\"\n"),
            (Distro::Other, "debian_12".into())
        );
        assert_eq!(parse_os_release(""), (Distro::Other, "linux".into()));
        assert_eq!(
            parse_os_release("ID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\nVERSION_ID=\"9.3\""),
            (Distro::RedHat, "rocky_9.3".into())
        );
    }
}
