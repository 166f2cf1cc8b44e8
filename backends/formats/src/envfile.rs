//! The env files (`/var/lib/ecs/ecs.config`, then `/etc/ecs/ecs.config`): the agent's
//! environment, and launcher knobs for [`Settings`] in the launcher.
//!
//! Parsing is exactly the Go ecs-init's (packaging/COMPATIBILITY.md §4): trim the file, split on
//! `\n`, trim each line, split on the first `=`, skip lines without `=`; no comment or quote
//! handling. Lines that are probably mistakes still pass through (to stay a drop-in), but get a
//! warning naming the file and line.
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where a value came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
}

impl fmt::Display for Origin {
    /// `file:line`, or just `file` for problems with the whole file (line 0).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file.display())
        } else {
            write!(f, "{}:{}", self.file.display(), self.line)
        }
    }
}

/// One `KEY=VALUE` of an env file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    pub origin: Origin,
}

/// A problem in the configuration that does not stop ecs-init.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub origin: Option<Origin>,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(o) = &self.origin {
            write!(f, "{o}: ")?;
        }
        if let Some(k) = &self.key {
            write!(f, "{k}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// The kernel's limit on one `KEY=VALUE` string of an environment (`MAX_ARG_STRLEN`).
pub const MAX_ENV_STRING: usize = 128 * 1024;
/// What the env files may add to the agent's environment in all (the kernel allows 2 MiB of
/// arguments and environment together on a default stack limit; this leaves room for the rest).
pub const MAX_ENV_TOTAL: usize = 1024 * 1024;

/// What one env file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    pub entries: Vec<Entry>,
    /// Suspicious lines that still pass through.
    pub warnings: Vec<Warning>,
    /// Lines that cannot be used (they are left out).
    pub errors: Vec<Warning>,
}

/// Parse one env file's text: its entries in order, warnings for suspicious lines, errors for
/// unusable ones.
pub fn parse_env_file(path: &Path, text: &str) -> Parsed {
    let mut parsed = Parsed::default();
    // A byte order mark (an editor on another system) would otherwise become part of the
    // first key (`\u{FEFF}ECS_CLUSTER`), which the agent would never see.
    let text = match text.strip_prefix('\u{FEFF}') {
        Some(rest) => {
            parsed.warnings.push(Warning {
                origin: Some(Origin {
                    file: path.to_path_buf(),
                    line: 1,
                }),
                key: None,
                message: "the file starts with a UTF-8 byte order mark: removed".into(),
            });
            rest
        }
        None => text,
    };
    // Line numbers are those of the untrimmed file, so count the leading lines trim removes.
    let leading = text.len() - text.trim_start().len();
    let first_line = 1 + text[..leading].matches('\n').count();
    for (i, raw) in text.trim().split('\n').enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let origin = Origin {
            file: path.to_path_buf(),
            line: first_line + i,
        };
        let note = |key: Option<&str>, message: String| Warning {
            origin: Some(origin.clone()),
            key: key.map(str::to_string),
            message,
        };
        let Some((key, value)) = line.split_once('=') else {
            if !line.starts_with('#') {
                parsed
                    .warnings
                    .push(note(None, "line has no '=': ignored".into()));
            }
            continue;
        };
        if key.is_empty() {
            parsed
                .warnings
                .push(note(None, "empty variable name: ignored".into()));
            continue;
        }
        let doubts = name_doubts(key).into_iter();
        parsed
            .warnings
            .extend(doubts.map(|m| note(Some(key), m.into())));
        if let Err(message) = fits_an_environment(key, value) {
            parsed.errors.push(note(Some(key), message));
            continue;
        }
        if is_quoted(value) {
            parsed.warnings.push(note(
                Some(key),
                "value is quoted: the quotes are part of the value (env files do not strip quotes)"
                    .into(),
            ));
        }
        parsed.entries.push(Entry {
            key: key.to_string(),
            value: value.to_string(),
            origin,
        });
    }
    parsed
}

/// Variable names that pass through but are probably mistakes.
fn name_doubts(key: &str) -> Vec<&'static str> {
    let mut doubts = Vec::new();
    if key.starts_with('#') {
        doubts.push("commented-out line contains '=': it is passed to the agent as a variable (env files have no comments)");
    }
    if key.chars().any(char::is_whitespace) {
        doubts.push("variable name contains white space");
    }
    if doubts.is_empty() && !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        doubts.push("variable name contains characters other than A-Z, a-z, 0-9 and '_' (it is passed to the agent as it is)");
    }
    doubts
}

/// Whether `KEY=VALUE` can be one string of a process environment.
fn fits_an_environment(key: &str, value: &str) -> Result<(), String> {
    let len = key.len() + value.len() + 2;
    if len > MAX_ENV_STRING {
        return Err(format!(
            "the variable is {len} bytes long; a process environment string holds at most {MAX_ENV_STRING} (the agent could not start)"
        ));
    }
    if value.contains('\0') {
        return Err("the value contains a NUL byte, which no process environment can hold".into());
    }
    if key.contains('\0') {
        // runc refuses the whole container for it ("environment variable name can't contain
        // null"), so `start` would give up: found by the junk soak (issue 20).
        return Err(
            "the variable name contains a NUL byte, which no process environment can hold".into(),
        );
    }
    Ok(())
}

fn is_quoted(v: &str) -> bool {
    v.len() >= 2
        && ((v.starts_with('"') && v.ends_with('"')) || (v.starts_with('\'') && v.ends_with('\'')))
}

/// Go's `strconv.ParseBool`: anything else is an error.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// The env files merged: the agent's environment from `/var/lib/ecs/ecs.config`, then
/// `/etc/ecs/ecs.config` (which wins). Launcher knobs are read from here by
/// [`crate::settings`], never directly.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Env-file variables in first-seen order; a later file's value wins.
    pub file_env: Vec<Entry>,
    pub warnings: Vec<Warning>,
    /// Files that cannot be read and lines that cannot be used.
    pub errors: Vec<Warning>,
}

fn file_problem(path: &Path, message: String) -> Warning {
    Warning {
        origin: Some(Origin {
            file: path.to_path_buf(),
            line: 0,
        }),
        key: None,
        message,
    }
}

/// The text of an env file read by `read` (the launcher's is non-blocking, refuses symlinks
/// and anything but a regular file, and is capped): `Ok(None)` when there is none; invalid
/// UTF-8 is replaced (with a warning per line naming it).
fn read_env_file(
    path: &Path,
    read: &dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
) -> Result<Option<(String, Vec<usize>)>, String> {
    let bytes = match read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read it: {e}")),
    };
    match String::from_utf8(bytes) {
        Ok(text) => Ok(Some((text, Vec::new()))),
        Err(e) => {
            let bytes = e.into_bytes();
            let bad_lines = bytes
                .split(|b| *b == b'\n')
                .enumerate()
                .filter(|(_, l)| std::str::from_utf8(l).is_err())
                .map(|(i, _)| i + 1)
                .collect();
            Ok(Some((
                String::from_utf8_lossy(&bytes).into_owned(),
                bad_lines,
            )))
        }
    }
}

impl Config {
    /// Read `files` with `read` in precedence order, lowest first (`/var/lib/ecs/ecs.config`,
    /// then `/etc/ecs/ecs.config`, which wins). A missing file is fine; one `read` refuses (a
    /// symlink, a FIFO, a file over its cap) is an error in [`Config::errors`].
    pub fn load(files: &[PathBuf], read: &dyn Fn(&Path) -> std::io::Result<Vec<u8>>) -> Config {
        let mut texts = Vec::new();
        let mut problems = Vec::new();
        let mut bad_utf8 = Vec::new();
        for path in files.iter().cloned() {
            match read_env_file(&path, read) {
                Ok(Some((text, bad_lines))) => {
                    for line in bad_lines {
                        bad_utf8.push(Warning {
                            origin: Some(Origin {
                                file: path.clone(),
                                line,
                            }),
                            key: None,
                            message: "invalid UTF-8, replaced by U+FFFD".into(),
                        });
                    }
                    texts.push((path, text));
                }
                Ok(None) => {}
                Err(message) => problems.push(file_problem(&path, message)),
            }
        }
        let mut cfg = Config::from_parts(&texts);
        cfg.warnings.extend(bad_utf8);
        cfg.errors.extend(problems);
        if let Some(last) = files.last() {
            cfg.check_total(last);
        }
        cfg
    }

    /// Build from file texts (in precedence order, lowest first). Linear in the number of lines.
    pub fn from_parts(files: &[(PathBuf, String)]) -> Config {
        let mut cfg = Config::default();
        let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for (path, text) in files {
            let parsed = parse_env_file(path, text);
            cfg.warnings.extend(parsed.warnings);
            cfg.errors.extend(parsed.errors);
            for e in parsed.entries {
                match index.get(&e.key) {
                    Some(&i) => cfg.file_env[i] = e,
                    None => {
                        index.insert(e.key.clone(), cfg.file_env.len());
                        cfg.file_env.push(e);
                    }
                }
            }
        }
        cfg
    }

    /// All the variables together must fit into the agent's environment.
    fn check_total(&mut self, path: &Path) {
        let total: usize = self
            .file_env
            .iter()
            .map(|e| e.key.len() + e.value.len() + 2)
            .sum();
        if total > MAX_ENV_TOTAL {
            self.errors.push(file_problem(
                path,
                format!(
                    "the env files hold {total} bytes of variables; the agent's environment can take at most {MAX_ENV_TOTAL} (the agent could not start)"
                ),
            ));
        }
    }

    /// The env-file entry for `key`, if any (the last file's).
    pub fn file_entry(&self, key: &str) -> Option<&Entry> {
        self.file_env.iter().find(|e| e.key == key)
    }

    /// The env-file variables with secret values redacted (for logs and `plan`).
    pub fn redacted_file_env(&self) -> Vec<String> {
        self.file_env
            .iter()
            .map(|e| crate::redact::redacted_pair(&e.key, &e.value))
            .collect()
    }
}

/// Parse a JSON object of string → string (for `ECS_AGENT_LABELS`, `ECS_LOG_OPTS`).
/// Empty or `{}` is an empty map.
pub fn parse_string_map(value: &str) -> Result<BTreeMap<String, String>, String> {
    let v = value.trim();
    if v.is_empty() {
        return Ok(BTreeMap::new());
    }
    serde_json::from_str::<BTreeMap<String, String>>(v).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two env files under a scratch root.
    struct TestPaths(PathBuf);

    impl TestPaths {
        fn new(root: &Path) -> TestPaths {
            TestPaths(root.to_path_buf())
        }
        fn var_lib_config(&self) -> PathBuf {
            self.0.join("var/lib/ecs/ecs.config")
        }
        fn etc_config(&self) -> PathBuf {
            self.0.join("etc/ecs/ecs.config")
        }
        fn files(&self) -> [PathBuf; 2] {
            [self.var_lib_config(), self.etc_config()]
        }
    }

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    /// The launcher's reader.
    fn read(path: &Path) -> std::io::Result<Vec<u8>> {
        ecs_host::files::read_capped(path, ecs_host::files::caps::ENV_FILE)
    }

    #[test]
    fn parses_like_go() {
        let text = "\n\n  ECS_CLUSTER=prod  \nNOEQUALS\n#ECS_X=1\nA=b=c\nQ=\"quoted\"\n=bad\n";
        let Parsed {
            entries, warnings, ..
        } = parse_env_file(&p("/etc/ecs/ecs.config"), text);
        let kv: Vec<(&str, &str, usize)> = entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str(), e.origin.line))
            .collect();
        assert_eq!(
            kv,
            [
                ("ECS_CLUSTER", "prod", 3),
                ("#ECS_X", "1", 5),
                ("A", "b=c", 6),
                ("Q", "\"quoted\"", 7)
            ]
        );
        let msgs: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("/etc/ecs/ecs.config:4: line has no '='")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("/etc/ecs/ecs.config:5: #ECS_X: commented-out")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("/etc/ecs/ecs.config:7: Q: value is quoted")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("/etc/ecs/ecs.config:8: empty variable name")),
            "{msgs:?}"
        );
    }

    #[test]
    fn etc_wins_over_var_lib_and_keeps_first_seen_order() {
        let cfg = Config::from_parts(&[
            (p("/var/lib/ecs/ecs.config"), "A=1\nB=2\n".into()),
            (p("/etc/ecs/ecs.config"), "C=3\nA=9\n".into()),
        ]);
        let kv: Vec<String> = cfg
            .file_env
            .iter()
            .map(|e| format!("{}={}", e.key, e.value))
            .collect();
        assert_eq!(kv, ["A=9", "B=2", "C=3"]);
        assert_eq!(
            cfg.file_entry("A").unwrap().origin.file,
            p("/etc/ecs/ecs.config")
        );
    }

    #[test]
    fn redaction() {
        let cfg = Config::from_parts(&[(
            p("/etc/ecs/ecs.config"),
            "ECS_ENGINE_AUTH_DATA={\"x\":1}\nECS_CLUSTER=c\n".into(),
        )]);
        assert_eq!(
            cfg.redacted_file_env(),
            [
                format!("ECS_ENGINE_AUTH_DATA={}", crate::redact::REDACTED),
                "ECS_CLUSTER=c".into()
            ]
        );
    }

    #[test]
    fn string_maps() {
        assert!(parse_string_map("").unwrap().is_empty());
        assert!(parse_string_map("{}").unwrap().is_empty());
        assert_eq!(parse_string_map(r#"{"a":"b"}"#).unwrap()["a"], "b");
        assert!(parse_string_map(r#"{"a":1}"#).is_err());
        assert!(parse_string_map("{not json").is_err());
    }

    #[test]
    fn nul_bytes_are_errors_naming_file_line_and_key() {
        let cfg = Config::from_parts(&[(
            p("/etc/ecs/ecs.config"),
            "ECS_CLUSTER=c\nECS_ENGINE_AUTH_DATA=abc\0def\n".into(),
        )]);
        let errors: Vec<String> = cfg.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with(
                "/etc/ecs/ecs.config:2: ECS_ENGINE_AUTH_DATA: the value contains a NUL byte"
            ),
            "{errors:?}"
        );
        assert!(!errors[0].contains("abc"), "the value is not quoted");
        assert!(cfg.file_entry("ECS_ENGINE_AUTH_DATA").is_none());
        // In the name too (runc refused the container, and start gave up).
        let cfg = Config::from_parts(&[(p("/etc/ecs/ecs.config"), "A\0B=1\nC=2\n".into())]);
        assert_eq!(cfg.file_env.len(), 1);
        assert!(
            cfg.errors[0]
                .to_string()
                .contains("the variable name contains a NUL byte"),
            "{:?}",
            cfg.errors
        );
    }

    #[test]
    fn unreadable_dangling_and_invalid_files() {
        let dir = tempfile::tempdir().unwrap();
        let paths = TestPaths::new(dir.path());
        std::fs::create_dir_all(dir.path().join("etc/ecs")).unwrap();
        std::fs::create_dir_all(dir.path().join("var/lib/ecs")).unwrap();
        // A directory where the file should be, and a dangling symlink.
        std::fs::create_dir(paths.etc_config()).unwrap();
        std::os::unix::fs::symlink("/nonexistent/ecs.config", paths.var_lib_config()).unwrap();
        let cfg = Config::load(&paths.files(), &read);
        let errors: Vec<String> = cfg.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].contains("var/lib/ecs/ecs.config is a symbolic link; refusing to follow it"),
            "{errors:?}"
        );
        assert!(
            errors[1].contains("etc/ecs/ecs.config: cannot read it"),
            "{errors:?}"
        );
        // Invalid UTF-8: a warning naming the line; the rest is read.
        std::fs::remove_dir(paths.etc_config()).unwrap();
        std::fs::write(paths.etc_config(), b"ECS_CLUSTER=c\nBAD=\xff\xfe\n").unwrap();
        let cfg = Config::load(&paths.files(), &read);
        assert_eq!(cfg.file_entry("ECS_CLUSTER").unwrap().value, "c");
        let warnings: Vec<String> = cfg.warnings.iter().map(|e| e.to_string()).collect();
        assert!(
            warnings
                .iter()
                .any(|w| w.ends_with("etc/ecs/ecs.config:2: invalid UTF-8, replaced by U+FFFD")),
            "{warnings:?}"
        );
    }

    #[test]
    fn merging_is_linear() {
        // 200k distinct keys merge in well under a second (the old merge was quadratic).
        let text: String = (0..200_000).map(|i| format!("K{i}=v\n")).collect();
        let t = std::time::Instant::now();
        let cfg = Config::from_parts(&[(p("/etc/ecs/ecs.config"), text)]);
        assert_eq!(cfg.file_env.len(), 200_000);
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn values_too_long_for_an_environment_are_errors() {
        let long = "x".repeat(MAX_ENV_STRING);
        let cfg = Config::from_parts(&[(
            p("/etc/ecs/ecs.config"),
            format!("ECS_CLUSTER=c\nECS_AGENT_LABELS={long}\n"),
        )]);
        let errors: Vec<String> = cfg.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("/etc/ecs/ecs.config:2: ECS_AGENT_LABELS: the variable is"),
            "{errors:?}"
        );
        // Many values each under the limit, too many together.
        let dir = tempfile::tempdir().unwrap();
        let paths = TestPaths::new(dir.path());
        std::fs::create_dir_all(dir.path().join("etc/ecs")).unwrap();
        let text: String = (0..20)
            .map(|i| format!("K{i}={}\n", "v".repeat(100_000)))
            .collect();
        std::fs::write(paths.etc_config(), text).unwrap();
        let cfg = Config::load(&paths.files(), &read);
        assert!(
            cfg.errors
                .iter()
                .any(|e| e.to_string().contains("bytes of variables")),
            "{:?}",
            cfg.errors
        );
    }

    /// Issue 20 (9): a byte order mark is removed with a warning naming file and line, so the
    /// first key keeps its name.
    #[test]
    fn a_byte_order_mark_is_removed_with_a_warning() {
        let parsed = parse_env_file(
            &p("/etc/ecs/ecs.config"),
            "\u{FEFF}ECS_CLUSTER=prod\nECS_LOGLEVEL=debug\n",
        );
        assert_eq!(parsed.entries[0].key, "ECS_CLUSTER");
        assert_eq!(parsed.entries[0].origin.line, 1);
        let msgs: Vec<String> = parsed.warnings.iter().map(|w| w.to_string()).collect();
        assert_eq!(
            msgs,
            ["/etc/ecs/ecs.config:1: the file starts with a UTF-8 byte order mark: removed"]
        );
    }

    /// Issue 20 (9): keys with characters outside `[A-Za-z0-9_]` pass through with a warning.
    #[test]
    fn unusual_key_characters_are_named() {
        let parsed = parse_env_file(
            &p("/etc/ecs/ecs.config"),
            "ECS-CLUSTER=a\nECS_CLUSTER=b\nK\u{e9}Y=c\nX.Y=d\n",
        );
        assert_eq!(parsed.entries.len(), 4);
        let msgs: Vec<String> = parsed.warnings.iter().map(|w| w.to_string()).collect();
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        assert!(
            msgs[0].starts_with(
                "/etc/ecs/ecs.config:1: ECS-CLUSTER: variable name contains characters other than"
            ),
            "{msgs:?}"
        );
        assert!(
            msgs[1].starts_with("/etc/ecs/ecs.config:3: K\u{e9}Y: "),
            "{msgs:?}"
        );
        assert!(
            msgs[2].starts_with("/etc/ecs/ecs.config:4: X.Y: "),
            "{msgs:?}"
        );
    }

    /// Issue 20 (1, 2, 3): with the launcher's reader a FIFO, a symlink (also to `/dev/zero`)
    /// and a file over the cap are errors naming the file, and nothing blocks.
    #[test]
    fn fifos_symlinks_and_giants_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let paths = TestPaths::new(dir.path());
        std::fs::create_dir_all(dir.path().join("etc/ecs")).unwrap();
        std::fs::create_dir_all(dir.path().join("var/lib/ecs")).unwrap();
        let secret = dir.path().join("root-only");
        std::fs::write(&secret, "SECRET_KEY=x\n").unwrap();
        std::os::unix::fs::symlink(&secret, paths.var_lib_config()).unwrap();
        assert!(std::process::Command::new("mkfifo")
            .arg(paths.etc_config())
            .status()
            .unwrap()
            .success());
        let cfg = Config::load(&paths.files(), &read);
        assert!(cfg.file_entry("SECRET_KEY").is_none());
        let errors: Vec<String> = cfg.errors.iter().map(|e| e.to_string()).collect();
        assert!(errors[0].contains("symbolic link"), "{errors:?}");
        assert!(errors[1].contains("not a regular file"), "{errors:?}");
        std::fs::remove_file(paths.etc_config()).unwrap();
        std::fs::File::create(paths.etc_config())
            .unwrap()
            .set_len(1 << 30)
            .unwrap();
        let cfg = Config::load(&paths.files(), &read);
        assert!(
            cfg.errors
                .iter()
                .any(|e| e.to_string().contains("is 1073741824 bytes; refusing")),
            "{:?}",
            cfg.errors
        );
    }
}
