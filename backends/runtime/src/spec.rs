//! The runtime-neutral description of the agent container.
//!
//! The launcher builds one [`AgentSpec`] from configuration and host facts; each backend maps
//! it onto its own API. Keeping this type free of Docker or OCI vocabulary is what lets the
//! conformance suite prove that both runtimes produce the same container.

use serde::{Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

pub use ecs_formats::redact::{is_secret_key, redacted_entry, redacted_pair, shown, REDACTED};

/// A bind mount from the host into the container.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Mount {
    /// Host path.
    pub source: PathBuf,
    /// Path inside the container.
    pub target: PathBuf,
    pub read_only: bool,
}

impl Mount {
    pub fn rw(source: impl Into<PathBuf>, target: impl Into<PathBuf>) -> Self {
        Mount {
            source: source.into(),
            target: target.into(),
            read_only: false,
        }
    }
    pub fn ro(source: impl Into<PathBuf>, target: impl Into<PathBuf>) -> Self {
        Mount {
            read_only: true,
            ..Mount::rw(source, target)
        }
    }
}

/// Whether the container shares a namespace with the host or gets its own.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum NamespaceMode {
    Host,
    #[default]
    Private,
}

/// Where the container's stdout/stderr go (Docker log driver vocabulary; the containerd
/// backend honours `json-file`'s size limits with its own rotated log).
#[derive(Clone, Serialize, PartialEq, Eq)]
pub struct LogConfig {
    pub driver: String,
    #[serde(serialize_with = "redacted_map")]
    pub options: BTreeMap<String, String>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            driver: "json-file".into(),
            options: BTreeMap::from([
                ("max-size".to_string(), "16m".to_string()),
                ("max-file".to_string(), "4".to_string()),
            ]),
        }
    }
}

impl fmt::Debug for LogConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogConfig")
            .field("driver", &self.driver)
            .field("options", &redact_pairs(self.options.iter()))
            .finish()
    }
}

/// The agent container, runtime-neutrally.
///
/// `Debug` and `Serialize` redact secret env values and log options (see [`is_secret_key`]);
/// backends read the fields directly.
#[derive(Clone, Serialize, PartialEq, Eq)]
pub struct AgentSpec {
    /// Image reference, e.g. `amazon/amazon-ecs-agent:latest`.
    pub image: String,
    /// Container name, e.g. `ecs-agent`.
    pub name: String,
    /// Environment in precedence order already resolved: each key once.
    #[serde(serialize_with = "redacted_env")]
    pub env: Vec<(String, String)>,
    /// Bind mounts, in order.
    pub mounts: Vec<Mount>,
    pub labels: BTreeMap<String, String>,
    /// Linux capabilities added to the default set, without the `CAP_` prefix.
    pub cap_add: Vec<String>,
    pub network: NamespaceMode,
    pub pid: NamespaceMode,
    pub userns: NamespaceMode,
    pub privileged: bool,
    /// Run a reaping, signal-forwarding init as PID 1 (Docker `--init`).
    pub init: bool,
    /// AppArmor profile name, when the host supports AppArmor.
    pub apparmor_profile: Option<String>,
    pub log: LogConfig,
}

impl AgentSpec {
    /// A spec with the agent's usual host configuration (host network and user namespace, own
    /// PID namespace, an init, json-file logs at their default limits) and nothing else: no
    /// mounts, labels or added capabilities. The launcher fills in every field itself; this is
    /// the starting point for anything smaller (backend tests, tools).
    pub fn new(
        image: impl Into<String>,
        name: impl Into<String>,
        env: &[(&str, &str)],
    ) -> AgentSpec {
        AgentSpec {
            image: image.into(),
            name: name.into(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            mounts: vec![],
            labels: BTreeMap::new(),
            cap_add: vec![],
            network: NamespaceMode::Host,
            pid: NamespaceMode::Private,
            userns: NamespaceMode::Host,
            privileged: false,
            init: true,
            apparmor_profile: None,
            log: LogConfig::default(),
        }
    }

    /// The value of an env var, if set.
    pub fn env_value(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl fmt::Debug for AgentSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentSpec")
            .field("image", &self.image)
            .field("name", &self.name)
            .field("env", &redact_pairs(self.env.iter().map(|(k, v)| (k, v))))
            .field("mounts", &self.mounts)
            .field("labels", &self.labels)
            .field("cap_add", &self.cap_add)
            .field("network", &self.network)
            .field("pid", &self.pid)
            .field("userns", &self.userns)
            .field("privileged", &self.privileged)
            .field("init", &self.init)
            .field("apparmor_profile", &self.apparmor_profile)
            .field("log", &self.log)
            .finish()
    }
}

fn redact_pairs<'a>(pairs: impl Iterator<Item = (&'a String, &'a String)>) -> Vec<String> {
    pairs.map(|(k, v)| redacted_pair(k, v)).collect()
}

fn redacted_env<S: Serializer>(env: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(redact_pairs(env.iter().map(|(k, v)| (k, v))))
}

fn redacted_map<S: Serializer>(map: &BTreeMap<String, String>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(map.iter().map(|(k, v)| (k, shown(k, v))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with(env: &[(&str, &str)]) -> AgentSpec {
        AgentSpec::new("i", "n", env)
    }

    #[test]
    fn secret_keys() {
        for k in [
            "ECS_ENGINE_AUTH_DATA",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "DB_PASSWORD",
            "splunk-token",
        ] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in [
            "ECS_CLUSTER",
            "ECS_LOGFILE",
            "AWS_ACCESS_KEY_ID",
            "max-size",
        ] {
            assert!(!is_secret_key(k), "{k}");
        }
    }

    #[test]
    fn secret_members_of_json_values_are_redacted() {
        let shown = redacted_pair(
            "ECS_LOG_OPTS",
            r#"{"splunk-token":"tok-123","splunk-url":"https://s:8088"}"#,
        );
        assert!(!shown.contains("tok-123"), "{shown}");
        assert!(
            shown.contains("https://s:8088") && shown.contains(REDACTED),
            "{shown}"
        );
        assert_eq!(redacted_pair("A", "{not json"), "A={not json");
        assert_eq!(redacted_pair("A", r#"{"x":"1"}"#), r#"A={"x":"1"}"#);
    }

    #[test]
    fn debug_and_json_redact_secrets() {
        let mut spec = spec_with(&[("ECS_CLUSTER", "prod"), ("ECS_ENGINE_AUTH_DATA", "hunter2")]);
        spec.log
            .options
            .insert("splunk-token".into(), "tok-123".into());
        let debug = format!("{spec:?}");
        let json = serde_json::to_string(&spec).unwrap();
        for out in [&debug, &json] {
            assert!(!out.contains("hunter2"), "{out}");
            assert!(!out.contains("tok-123"), "{out}");
            assert!(out.contains("ECS_CLUSTER=prod"), "{out}");
            assert!(out.contains(REDACTED), "{out}");
        }
        // The backends still see the real value.
        assert_eq!(spec.env_value("ECS_ENGINE_AUTH_DATA"), Some("hunter2"));
    }
}
