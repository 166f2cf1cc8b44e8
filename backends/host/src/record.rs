//! The records the launcher leaves under `/var/lib/ecs` for its later actions: which runtime
//! `start` used (for `stop` and `status`) and which firewall backend `pre-start` used (for
//! `post-stop`), with the reason, plus facts to restore (e.g. the `route_localnet` value found).
//!
//! One format for all of them:
//! ```text
//! <name>
//! <reason>
//! <key>=<value>
//! ```
//! Records written by earlier releases (only the name, or name and reason) read the same.
use std::collections::BTreeMap;
use std::io;
use std::path::Path;

/// Records are world-readable (they hold no secrets) and written by root only.
pub const MODE: u32 = 0o644;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// The backend's name, e.g. `docker` or `nftables`.
    pub name: String,
    /// Why it was chosen.
    pub reason: String,
    /// Further facts, one `key=value` line each.
    pub extras: BTreeMap<String, String>,
}

impl Record {
    pub fn new(name: impl Into<String>, reason: impl Into<String>) -> Record {
        Record {
            name: name.into(),
            reason: reason.into(),
            extras: BTreeMap::new(),
        }
    }

    pub fn render(&self) -> String {
        let mut out = format!("{}\n{}\n", self.name, self.reason.replace('\n', " "));
        for (k, v) in &self.extras {
            out.push_str(&format!("{k}={}\n", v.replace('\n', " ")));
        }
        out
    }

    pub fn parse(text: &str) -> Record {
        let mut lines = text.lines();
        let name = lines.next().unwrap_or_default().trim().to_string();
        let reason = lines.next().unwrap_or_default().trim().to_string();
        let extras = lines
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        Record {
            name,
            reason,
            extras,
        }
    }

    /// The record at `path`; `None` when there is none. A symlink there is an error.
    pub fn read(path: &Path) -> io::Result<Option<Record>> {
        match crate::files::read_to_string_capped(path, crate::files::caps::RECORD) {
            Ok(text) => Ok(Some(Record::parse(&text))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Write atomically (the directory must exist).
    pub fn write(&self, path: &Path) -> io::Result<()> {
        crate::files::write_atomic(path, self.render().as_bytes(), MODE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reads_old_formats() {
        let mut r = Record::new("iptables", "auto: iptables is installed");
        r.extras.insert("route_localnet".into(), "0".into());
        let text = r.render();
        assert_eq!(
            text,
            "iptables\nauto: iptables is installed\nroute_localnet=0\n"
        );
        assert_eq!(Record::parse(&text), r);
        assert_eq!(Record::parse("docker\n"), Record::new("docker", ""));
        assert_eq!(Record::parse("nftables\nwhy\n").reason, "why");
    }

    #[test]
    fn file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("runtime-backend");
        assert_eq!(Record::read(&p).unwrap(), None);
        Record::new("containerd", "ECS_INIT_RUNTIME=containerd")
            .write(&p)
            .unwrap();
        assert_eq!(Record::read(&p).unwrap().unwrap().name, "containerd");
    }
}
