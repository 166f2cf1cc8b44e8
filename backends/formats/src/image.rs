//! The parts of an image's config the launcher uses (to start the agent on containerd as Docker
//! would: entrypoint, command, environment, user, working directory, labels).
use serde::Deserialize;
use std::collections::BTreeMap;

/// The parts of an image config (`config` object of the OCI/Docker image config) we use.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct ImageConfig {
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    #[serde(rename = "User", default)]
    pub user: Option<String>,
    #[serde(rename = "Labels", default)]
    pub labels: Option<BTreeMap<String, String>>,
}
