//! The container-runtime seam of ecs-init.
//!
//! The launcher describes the agent container once, runtime-neutrally ([`AgentSpec`]), and a
//! [`Runtime`] backend turns that description into a running container. Backends never read
//! `ecs.config`; everything they need is in the spec or in their own connection settings.

/// Linux capability names (shared with the stand-in agent).
pub use ecs_common::caps;
/// Image archives: read and verified by [`ecs_formats::archive`].
pub use ecs_formats::archive;
pub mod containerd;
pub mod docker;
pub mod error;
pub mod kind;
pub mod reference;
pub mod select;
pub mod spec;

pub use error::{Result, RuntimeError};
pub use kind::{Backend as RuntimeBackend, Presence, Probed, RuntimeKind};
pub use select::{DockerApi, Request, Runtimes, Selection, BACKENDS};
pub use spec::{
    is_secret_key, redacted_entry, redacted_pair, AgentSpec, LogConfig, Mount, NamespaceMode,
    REDACTED,
};

use async_trait::async_trait;
use containerd::ContainerdOptions;
use ecs_host::Backoff;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Connection settings of every backend; the launcher builds them from its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// The Docker socket: the one `DOCKER_HOST` names ([`docker::socket_of`]), else
    /// [`docker::DEFAULT_SOCKET`].
    pub docker_socket: PathBuf,
    pub containerd: ContainerdOptions,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            docker_socket: docker::DEFAULT_SOCKET.into(),
            containerd: ContainerdOptions::default(),
        }
    }
}

/// What a runtime says about itself when it answers a ping.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RuntimeInfo {
    /// "docker" or "containerd".
    pub runtime: String,
    /// The daemon's own version string.
    pub version: String,
    /// Where we reached it (e.g. `unix:///var/run/docker.sock`).
    pub endpoint: String,
}

/// The state of a container as the runtime reports it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default)]
pub struct ContainerState {
    pub id: String,
    pub name: String,
    pub image: String,
    /// Runtime-reported status word ("running", "exited", "created", ...).
    pub status: String,
    pub running: bool,
    /// Exit code once the container has exited.
    pub exit_code: Option<i64>,
    /// RFC 3339 start time, when the runtime reports one.
    pub started_at: Option<String>,
    /// RFC 3339 finish time, when the runtime reports one.
    pub finished_at: Option<String>,
    /// Host PID of the container's first process while running.
    pub pid: Option<u32>,
    /// The container's labels (who created it, for what).
    pub labels: std::collections::BTreeMap<String, String>,
    /// When the container was created (RFC 3339): with the ID, which container this is even
    /// where IDs are names (containerd).
    pub created_at: Option<String>,
}

impl ContainerState {
    /// What identifies this container among all that ever had its name.
    pub fn identity(&self) -> String {
        format!("{} {}", self.id, self.created_at.as_deref().unwrap_or("-"))
    }
}

/// One container runtime (Docker Engine or containerd).
///
/// Every method is safe to call repeatedly: removing an absent container or stopping a
/// stopped one is success.
#[async_trait]
pub trait Runtime: Send + Sync {
    /// "docker" or "containerd".
    fn name(&self) -> &'static str;
    /// One connection attempt; see [`wait_ready`] for retrying while the daemon starts.
    async fn ping(&self) -> Result<RuntimeInfo>;
    /// The ID of the image with exactly this reference (its config digest, `sha256:…`, on
    /// both runtimes), or `None` when there is none.
    async fn image_id(&self, reference: &str) -> Result<Option<String>>;
    /// Is an image with exactly this reference present?
    async fn image_present(&self, reference: &str) -> Result<bool> {
        Ok(self.image_id(reference).await?.is_some())
    }
    /// Load a `docker save` (or OCI layout) tarball, streamed from disk. Returns the image
    /// references it contained. The whole archive is verified before any name moves: on error
    /// nothing that was present before is removed or retagged.
    async fn load_image(&self, tarball: &Path) -> Result<Vec<String>>;
    /// Point the reference `target` at the image `source` names (a reference), creating or
    /// moving it; `source` itself is unchanged. Docker: a tag (`docker tag`); containerd: image
    /// records of `target`'s familiar and full names with `source`'s target descriptor (what
    /// a load makes). A name of its own keeps an image from being pruned or collected while
    /// no container uses it. Fails when `source` is not present.
    async fn tag_image(&self, source: &str, target: &str) -> Result<()>;
    /// Force-remove the container with exactly this name; absent is success.
    async fn remove_container(&self, name: &str) -> Result<()>;
    /// Create and start the container described by `spec`.
    async fn run(&self, spec: &AgentSpec) -> Result<()>;
    /// Wait for the named container to exit and return its exit code. A non-zero exit is a
    /// result, not an error.
    async fn wait(&self, name: &str) -> Result<i64>;
    /// Stop the container: SIGTERM, then SIGKILL after `grace`. Not running is success.
    async fn stop(&self, name: &str, grace: Duration) -> Result<()>;
    /// The last `lines` lines of the container's stdout and stderr, with timestamps.
    async fn logs_tail(&self, name: &str, lines: usize) -> Result<String>;
    /// The container's state, or `None` when no such container exists.
    async fn inspect(&self, name: &str) -> Result<Option<ContainerState>>;
    /// What this backend submits to its runtime for `spec`, as the runtime's own document
    /// (Docker's create request, containerd's container record and OCI spec), built by the code
    /// that creates the container; secret values redacted. For `plan`; works while the runtime
    /// is down (then without the image's own config, which it says).
    async fn describe(&self, spec: &AgentSpec) -> serde_json::Value;
    /// The host interface of the runtime's default bridge network, as the runtime reports it
    /// (Docker: the `com.docker.network.bridge.name` option of its network `bridge`, `docker0`
    /// unless dockerd is configured otherwise). Runtimes without such a network (containerd)
    /// report [`DefaultBridge::Unknown`].
    async fn default_bridge(&self) -> Result<DefaultBridge> {
        Ok(DefaultBridge::Unknown)
    }
}

/// What a runtime says about its default bridge network (see [`Runtime::default_bridge`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DefaultBridge {
    /// The runtime has no notion of one (containerd).
    Unknown,
    /// The bridge's interface name.
    Named(String),
    /// The runtime has no default bridge network (dockerd with `--bridge=none`).
    Absent,
}

/// Ping `runtime` until it answers or `window` has passed, backing off from 250 ms to 2 s, with
/// a last try at the end of the window; the error names the last cause once.
///
/// The Go ecs-init gives up after about 19 s, which kills it during an ordinary dockerd
/// restart; here the window is the caller's (configurable) choice.
pub async fn wait_ready(runtime: &dyn Runtime, window: Duration) -> Result<RuntimeInfo> {
    let start = tokio::time::Instant::now();
    let deadline = start + window;
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(2));
    loop {
        let err = match runtime.ping().await {
            Ok(info) => return Ok(info),
            Err(err) => err,
        };
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(RuntimeError::Unavailable {
                runtime: runtime.name(),
                waited: start.elapsed(),
                source: Box::new(err),
            });
        }
        let delay = backoff.next_delay().min(deadline - now);
        tracing::info!(runtime = runtime.name(), error = %err, retry_in_ms = delay.as_millis() as u64,
            "runtime not answering yet");
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A runtime that never answers, recording when it was asked.
    #[derive(Default)]
    struct Silent(Mutex<Vec<tokio::time::Instant>>);

    #[async_trait]
    impl Runtime for Silent {
        fn name(&self) -> &'static str {
            "silent"
        }
        async fn ping(&self) -> Result<RuntimeInfo> {
            self.0.lock().unwrap().push(tokio::time::Instant::now());
            Err(RuntimeError::Connect {
                runtime: "silent",
                endpoint: "unix:///nowhere".into(),
                reason: "no socket".into(),
            })
        }
        async fn image_id(&self, _: &str) -> Result<Option<String>> {
            unreachable!()
        }
        async fn load_image(&self, _: &Path) -> Result<Vec<String>> {
            unreachable!()
        }
        async fn tag_image(&self, _: &str, _: &str) -> Result<()> {
            unreachable!()
        }
        async fn remove_container(&self, _: &str) -> Result<()> {
            unreachable!()
        }
        async fn run(&self, _: &AgentSpec) -> Result<()> {
            unreachable!()
        }
        async fn wait(&self, _: &str) -> Result<i64> {
            unreachable!()
        }
        async fn stop(&self, _: &str, _: Duration) -> Result<()> {
            unreachable!()
        }
        async fn logs_tail(&self, _: &str, _: usize) -> Result<String> {
            unreachable!()
        }
        async fn inspect(&self, _: &str) -> Result<Option<ContainerState>> {
            unreachable!()
        }
        async fn describe(&self, _: &AgentSpec) -> serde_json::Value {
            unreachable!()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_whole_window_is_waited_with_a_last_try_at_its_end() {
        for secs in [3u64, 10] {
            let rt = Silent::default();
            let start = tokio::time::Instant::now();
            let err = wait_ready(&rt, Duration::from_secs(secs))
                .await
                .unwrap_err();
            let tries: Vec<Duration> = rt.0.lock().unwrap().iter().map(|t| *t - start).collect();
            assert_eq!(
                *tries.last().unwrap(),
                Duration::from_secs(secs),
                "{tries:?}"
            );
            assert!(
                matches!(&err, RuntimeError::Unavailable { waited, .. } if *waited == Duration::from_secs(secs))
            );
            // The cause is said once.
            let text = err.to_string();
            assert_eq!(text.matches("no socket").count(), 1, "{text}");
        }
    }
}
