//! Configuration: the two env files and the process-environment knobs.
//!
//! Parsing is exactly the Go ecs-init's (UPSTREAM-BEHAVIOUR.md §4): trim the file, split on
//! `\n`, trim each line, split on the first `=`, skip lines without `=`; no comment or quote
//! handling. Lines that are probably mistakes still pass through (to stay a drop-in), but get a
//! warning naming the file and line.
use ecs_backends::{is_secret_key, REDACTED};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::paths::Paths;

/// Where a value came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
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

/// A configuration error that stops ecs-init (exit 255) before anything is changed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{key}={value:?} is not one of {allowed}")]
    BadChoice {
        key: &'static str,
        value: String,
        allowed: String,
    },
}

/// Parse one env file's text. Returns its entries in order and warnings for suspicious lines.
pub fn parse_env_file(path: &Path, text: &str) -> (Vec<Entry>, Vec<Warning>) {
    let mut entries = Vec::new();
    let mut warnings = Vec::new();
    // Line numbers are those of the untrimmed file, so count the leading lines trim removes.
    let leading = text.len() - text.trim_start().len();
    let first_line = 1 + text[..leading].matches('\n').count();
    for (i, raw) in text.trim().split('\n').enumerate() {
        let origin = Origin {
            file: path.to_path_buf(),
            line: first_line + i,
        };
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let warn = |warnings: &mut Vec<Warning>, key: Option<&str>, message: String| {
            warnings.push(Warning {
                origin: Some(origin.clone()),
                key: key.map(str::to_string),
                message,
            })
        };
        let Some((key, value)) = line.split_once('=') else {
            if !line.starts_with('#') {
                warn(&mut warnings, None, "line has no '=': ignored".into());
            }
            continue;
        };
        if key.is_empty() {
            warn(&mut warnings, None, "empty variable name: ignored".into());
            continue;
        }
        if key.starts_with('#') {
            warn(
                &mut warnings,
                Some(key),
                "commented-out line contains '=': it is passed to the agent as a variable (env files have no comments)".into(),
            );
        }
        if key.chars().any(char::is_whitespace) {
            warn(
                &mut warnings,
                Some(key),
                "variable name contains white space".into(),
            );
        }
        let v = value;
        if v.len() >= 2
            && ((v.starts_with('"') && v.ends_with('"'))
                || (v.starts_with('\'') && v.ends_with('\'')))
        {
            warn(
                &mut warnings,
                Some(key),
                "value is quoted: the quotes are part of the value (env files do not strip quotes)"
                    .into(),
            );
        }
        entries.push(Entry {
            key: key.to_string(),
            value: value.to_string(),
            origin,
        });
    }
    (entries, warnings)
}

/// Go's `strconv.ParseBool`: anything else is an error.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// The merged configuration: env files plus process environment.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Env-file variables in first-seen order; a later file's value wins.
    pub file_env: Vec<Entry>,
    /// The process environment (a snapshot, so tests can inject one).
    pub process_env: BTreeMap<String, String>,
    pub warnings: Vec<Warning>,
}

impl Config {
    /// Read `/var/lib/ecs/ecs.config` then `/etc/ecs/ecs.config` (which wins), plus the process
    /// environment. A missing file is fine; an unreadable one is an error.
    pub fn load(paths: &Paths) -> Result<Config, ConfigError> {
        let mut texts = Vec::new();
        for path in [paths.var_lib_config(), paths.etc_config()] {
            match std::fs::read(&path) {
                Ok(bytes) => {
                    let text = String::from_utf8_lossy(&bytes).into_owned();
                    texts.push((path, text));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(ConfigError::Read { path, source }),
            }
        }
        Ok(Config::from_parts(&texts, std::env::vars().collect()))
    }

    /// Build from file texts (in precedence order, lowest first) and a process environment.
    pub fn from_parts(
        files: &[(PathBuf, String)],
        process_env: BTreeMap<String, String>,
    ) -> Config {
        let mut cfg = Config {
            process_env,
            ..Config::default()
        };
        for (path, text) in files {
            let (entries, warnings) = parse_env_file(path, text);
            cfg.warnings.extend(warnings);
            for e in entries {
                match cfg.file_env.iter_mut().find(|x| x.key == e.key) {
                    Some(existing) => *existing = e,
                    None => cfg.file_env.push(e),
                }
            }
        }
        cfg
    }

    /// The env-file entry for `key`, if any.
    pub fn file_entry(&self, key: &str) -> Option<&Entry> {
        self.file_env.iter().find(|e| e.key == key)
    }

    /// A launcher knob: the process environment wins (systemd's `EnvironmentFile=` and
    /// upstart's `env` put it there); otherwise the env files, so that a knob written in
    /// `/etc/ecs/ecs.config` also works when ecs-init is run by hand or under upstart.
    pub fn knob(&self, key: &str) -> Option<&str> {
        self.process_env
            .get(key)
            .map(String::as_str)
            .or_else(|| self.file_entry(key).map(|e| e.value.as_str()))
    }

    /// A boolean knob; unset is `false`; unparsable is logged and `false` (like ecs-init).
    pub fn knob_bool(&self, key: &str) -> bool {
        match self.knob(key) {
            None | Some("") => false,
            Some(v) => parse_bool(v).unwrap_or_else(|| {
                tracing::warn!(key, value = v, "not a boolean; treating as false");
                false
            }),
        }
    }

    /// A knob restricted to a set of words (e.g. `ECS_INIT_RUNTIME`); unset or empty is
    /// `default`, anything else outside `allowed` is an error.
    pub fn choice(
        &self,
        key: &'static str,
        allowed: &'static [&'static str],
        default: &'static str,
    ) -> Result<&'static str, ConfigError> {
        let value = self.knob(key).unwrap_or("").trim();
        if value.is_empty() {
            return Ok(default);
        }
        allowed
            .iter()
            .find(|a| a.eq_ignore_ascii_case(value))
            .copied()
            .ok_or_else(|| ConfigError::BadChoice {
                key,
                value: value.to_string(),
                allowed: allowed.join("|"),
            })
    }

    /// The env-file variables with secret values redacted (for logs and `plan`).
    pub fn redacted_file_env(&self) -> Vec<String> {
        self.file_env
            .iter()
            .map(|e| {
                let v = if is_secret_key(&e.key) {
                    REDACTED
                } else {
                    &e.value
                };
                format!("{}={}", e.key, v)
            })
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

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn parses_like_go() {
        let text = "\n\n  ECS_CLUSTER=prod  \nNOEQUALS\n#ECS_X=1\nA=b=c\nQ=\"quoted\"\n=bad\n";
        let (entries, warnings) = parse_env_file(&p("/etc/ecs/ecs.config"), text);
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
        let cfg = Config::from_parts(
            &[
                (p("/var/lib/ecs/ecs.config"), "A=1\nB=2\n".into()),
                (p("/etc/ecs/ecs.config"), "C=3\nA=9\n".into()),
            ],
            BTreeMap::new(),
        );
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
    fn knobs_prefer_process_env_and_parse_bools_like_go() {
        let cfg = Config::from_parts(
            &[(
                p("/etc/ecs/ecs.config"),
                "ECS_SKIP_LOCALHOST_TRAFFIC_FILTER=true\nECS_EXTERNAL=yes\n".into(),
            )],
            BTreeMap::from([("ECS_ALLOW_OFFHOST_INTROSPECTION_ACCESS".into(), "1".into())]),
        );
        assert!(cfg.knob_bool("ECS_SKIP_LOCALHOST_TRAFFIC_FILTER"));
        assert!(cfg.knob_bool("ECS_ALLOW_OFFHOST_INTROSPECTION_ACCESS"));
        assert!(!cfg.knob_bool("ECS_EXTERNAL"), "'yes' is not a Go boolean");
        assert!(!cfg.knob_bool("UNSET"));
    }

    #[test]
    fn choices() {
        let cfg = Config::from_parts(
            &[],
            BTreeMap::from([("ECS_INIT_RUNTIME".into(), "Podman".into())]),
        );
        let err = cfg
            .choice(
                "ECS_INIT_RUNTIME",
                &["auto", "docker", "containerd"],
                "auto",
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "ECS_INIT_RUNTIME=\"Podman\" is not one of auto|docker|containerd"
        );
        assert_eq!(
            cfg.choice("ECS_INIT_FIREWALL", &["auto", "none"], "auto")
                .unwrap(),
            "auto"
        );
    }

    #[test]
    fn redaction() {
        let cfg = Config::from_parts(
            &[(
                p("/etc/ecs/ecs.config"),
                "ECS_ENGINE_AUTH_DATA={\"x\":1}\nECS_CLUSTER=c\n".into(),
            )],
            BTreeMap::new(),
        );
        assert_eq!(
            cfg.redacted_file_env(),
            [
                format!("ECS_ENGINE_AUTH_DATA={REDACTED}"),
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
}
