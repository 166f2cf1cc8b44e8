//! The "what I see from inside" report, as hand-written JSON (no serde: the binary stays small
//! and depends on `std`, `libc` and the std-only `ecs-common` only).

use std::fs;

use ecs_common::caps::CAPABILITIES as CAP_NAMES;
use ecs_common::json;
/// Namespaces reported for this process and for PID 1.
const NAMESPACES: [&str; 7] = ["net", "pid", "user", "mnt", "ipc", "uts", "cgroup"];

/// Quotes a string as a JSON string literal.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    json::escape_into(&mut out, s);
    out.push('"');
    out
}

fn json_opt(s: Option<String>) -> String {
    s.map(|s| json_string(&s))
        .unwrap_or_else(|| "null".to_string())
}

fn json_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| json_string(s)).collect();
    format!("[{}]", quoted.join(","))
}

/// Undoes the octal escapes (`\040` for space etc.) that mountinfo uses.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One mount as seen in `/proc/self/mountinfo`.
#[derive(Debug, PartialEq)]
pub struct Mount {
    pub mount_point: String,
    pub root: String,
    pub source: String,
    pub fstype: String,
    pub read_only: bool,
    pub options: String,
}

/// Parses mountinfo lines: `id parent maj:min root mountpoint opts [optional...] - fstype source superopts`.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            if sep < 6 || fields.len() < sep + 3 {
                return None;
            }
            let options = fields[5].to_string();
            Some(Mount {
                root: unescape_mountinfo(fields[3]),
                mount_point: unescape_mountinfo(fields[4]),
                read_only: options.split(',').any(|o| o == "ro"),
                options,
                fstype: fields[sep + 1].to_string(),
                source: unescape_mountinfo(fields[sep + 2]),
            })
        })
        .collect()
}

/// Decodes a capability mask (hex, as in `/proc/self/status`) into names.
pub fn cap_names(mask_hex: &str) -> Vec<String> {
    let mask = u64::from_str_radix(mask_hex.trim(), 16).unwrap_or(0);
    (0..64)
        .filter(|bit| mask & (1u64 << bit) != 0)
        .map(|bit| {
            CAP_NAMES
                .get(bit)
                .map(|s| s.to_string())
                .unwrap_or_else(|| format!("CAP_{bit}"))
        })
        .collect()
}

fn status_field(status: &str, key: &str) -> Option<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
}

fn namespaces(pid: &str) -> String {
    let entries: Vec<String> = NAMESPACES
        .iter()
        .map(|ns| {
            let link = fs::read_link(format!("/proc/{pid}/ns/{ns}"))
                .ok()
                .map(|p| p.to_string_lossy().into_owned());
            format!("{}:{}", json_string(ns), json_opt(link))
        })
        .collect();
    format!("{{{}}}", entries.join(","))
}

fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: buffer is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// Builds the full report JSON.
pub fn build() -> String {
    let pid = std::process::id();
    // SAFETY: these libc getters have no preconditions.
    let (ppid, uid, gid, euid, egid) = unsafe {
        (
            libc::getppid(),
            libc::getuid(),
            libc::getgid(),
            libc::geteuid(),
            libc::getegid(),
        )
    };
    let pid1_comm = fs::read_to_string("/proc/1/comm")
        .ok()
        .map(|s| s.trim().to_string());
    let cgroup = fs::read_to_string("/proc/self/cgroup").ok();

    let mut env: Vec<(String, String)> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    env.sort();
    let env_json: Vec<String> = env
        .iter()
        .map(|(k, v)| format!("{}:{}", json_string(k), json_string(v)))
        .collect();

    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();

    let mounts = parse_mountinfo(&fs::read_to_string("/proc/self/mountinfo").unwrap_or_default());
    let mounts_json: Vec<String> = mounts
        .iter()
        .map(|m| {
            format!(
                "{{\"mount_point\":{},\"root\":{},\"source\":{},\"fstype\":{},\"read_only\":{},\"options\":{}}}",
                json_string(&m.mount_point),
                json_string(&m.root),
                json_string(&m.source),
                json_string(&m.fstype),
                m.read_only,
                json_string(&m.options)
            )
        })
        .collect();

    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap = |key: &str| status_field(&status, key).unwrap_or_default();
    let (eff, bnd, prm) = (cap("CapEff:"), cap("CapBnd:"), cap("CapPrm:"));
    let caps = format!(
        "{{\"effective\":{},\"bounding\":{},\"permitted\":{},\"effective_hex\":{},\"bounding_hex\":{},\"permitted_hex\":{}}}",
        json_list(&cap_names(&eff)),
        json_list(&cap_names(&bnd)),
        json_list(&cap_names(&prm)),
        json_string(&eff),
        json_string(&bnd),
        json_string(&prm)
    );

    format!(
        concat!(
            "{{\"pid\":{},\"ppid\":{},\"uid\":{},\"gid\":{},\"euid\":{},\"egid\":{},",
            "\"hostname\":{},\"pid1_comm\":{},\"pid1_is_self\":{},\"cgroup\":{},",
            "\"env\":{{{}}},\"args\":{},\"mounts\":[{}],\"capabilities\":{},",
            "\"namespaces\":{{\"self\":{},\"pid1\":{}}}}}"
        ),
        pid,
        ppid,
        uid,
        gid,
        euid,
        egid,
        json_opt(hostname()),
        json_opt(pid1_comm),
        pid == 1,
        json_opt(cgroup),
        env_json.join(","),
        json_list(&args),
        mounts_json.join(","),
        caps,
        namespaces("self"),
        namespaces("1"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_decode() {
        // CAP_NET_ADMIN = 12, CAP_SYS_ADMIN = 21.
        let mask = format!("{:016x}", (1u64 << 12) | (1u64 << 21));
        assert_eq!(cap_names(&mask), vec!["CAP_NET_ADMIN", "CAP_SYS_ADMIN"]);
        assert_eq!(cap_names("0000000000000000"), Vec::<String>::new());
    }

    #[test]
    fn mountinfo_parses() {
        let text =
            "36 35 98:0 /mnt1 /mnt\\040x rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                    40 35 0:5 / /etc/ssl ro,relatime - tmpfs tmpfs rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, "/mnt x");
        assert_eq!(m[0].root, "/mnt1");
        assert_eq!(m[0].source, "/dev/root");
        assert_eq!(m[0].fstype, "ext3");
        assert!(!m[0].read_only);
        assert!(m[1].read_only);
    }

    #[test]
    fn json_escapes() {
        assert_eq!(json_string("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }

    #[test]
    fn report_is_plausible() {
        let r = build();
        assert!(r.starts_with("{\"pid\":"));
        assert!(r.contains("\"namespaces\":{\"self\":{\"net\":"));
        assert!(r.ends_with("}}}"));
    }
}
