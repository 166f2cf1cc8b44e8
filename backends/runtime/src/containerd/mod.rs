//! The containerd backend: runs the agent on hosts without Docker, through containerd's gRPC API
//! (`containerd-client` over `tonic`, unix socket).
//!
//! Only services that containerd 1.6 (Debian 12) has are used: Version, Content, Leases,
//! Images, Snapshots, Diff, Containers and Tasks. Images are imported by hand (see [`import`])
//! because the Transfer service is 1.7+.
//!
//! Pieces outside this process:
//! * `ecs-agent-init` (workspace crate `backends/agent-init`), installed at
//!   [`DEFAULT_AGENT_INIT`]: bind-mounted into the container as PID 1 (Docker's `--init`) and
//!   started by containerd's shim as the `binary://` log shim.
//! * the log files `<log_dir>/<name>.log*` (json-file format, rotated).

mod content;
mod images;
pub mod import;
mod lease;
pub mod logs;
pub mod oci;
mod unpack;

use crate::spec::AgentSpec;
use crate::{
    ContainerState, Presence, Probed, Result, Runtime, RuntimeBackend as Backend, RuntimeError,
    RuntimeInfo, RuntimeKind, RuntimeOptions,
};
use async_trait::async_trait;
use containerd_client::services::v1::{
    container::Runtime as ContainerRuntimeInfo, containers_client::ContainersClient,
    snapshots::snapshots_client::SnapshotsClient, snapshots::PrepareSnapshotRequest,
    snapshots::RemoveSnapshotRequest, tasks_client::TasksClient, Container, CreateContainerRequest,
    CreateTaskRequest, DeleteContainerRequest, DeleteTaskRequest, GetContainerRequest, GetRequest,
    KillRequest, StartRequest, UpdateContainerRequest, WaitRequest,
};
use containerd_client::tonic::{transport::Channel, Code, Request, Status};
use containerd_client::types::v1::Status as TaskStatus;
use ecs_host::Exec;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// containerd's entry in the runtime registry ([`crate::BACKENDS`]).
pub const KIND: RuntimeKind = RuntimeKind(&ContainerdBackend);

/// The containerd backend: its name, probe and constructor.
pub struct ContainerdBackend;

#[async_trait]
impl Backend for ContainerdBackend {
    fn name(&self) -> &'static str {
        RT
    }

    /// The agent creates task containers through the Docker API only.
    fn agent_needs_docker_api(&self) -> bool {
        true
    }

    /// Whether the socket exists (containerd is not asked: Docker, when it answers, wins).
    async fn probe(&self, opts: &RuntimeOptions, _: &dyn Exec, _: Duration) -> Probed {
        let (presence, reason) = presence(opts.containerd.address.exists());
        Probed::new(presence, reason)
    }

    fn build(&self, opts: &RuntimeOptions) -> Result<Box<dyn Runtime>> {
        Ok(Box::new(ContainerdRuntime::with_options(
            opts.containerd.clone(),
        )?))
    }
}

/// How ready containerd looks: its socket exists, or nothing.
pub(crate) fn presence(socket_exists: bool) -> (Presence, &'static str) {
    if socket_exists {
        (
            Presence::Socket,
            "Docker does not answer and the containerd socket exists",
        )
    } else {
        (Presence::Absent, "the containerd socket does not exist")
    }
}

/// Default containerd socket.
pub const DEFAULT_ADDRESS: &str = "/run/containerd/containerd.sock";
/// Default containerd namespace for the agent container and image.
pub const DEFAULT_NAMESPACE: &str = "ecs";
/// Where packaging installs the static init / log shim.
pub const DEFAULT_AGENT_INIT: &str = "/usr/libexec/amazon-ecs-init-agent-init";
/// Where the agent's stdout/stderr log files go.
pub const DEFAULT_LOG_DIR: &str = "/var/log/ecs/containerd";
/// The snapshotter (containerd 1.6's default).
pub const DEFAULT_SNAPSHOTTER: &str = "overlayfs";
/// The runc shim.
pub const RUNTIME: &str = "io.containerd.runc.v2";

/// The runtime's name in errors, for every module of this backend.
const RT: &str = "containerd";
/// How long `wait` keeps retrying while containerd does not answer (the shim keeps the agent).
const WAIT_THROUGH_RESTART: Duration = Duration::from_secs(300);
const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// Container extension recording when the task was started (containerd does not keep it).
const STARTED_AT_EXT: &str = "io.ecs-init.started-at";
/// Container extension recording how the task ended (`<exit code> <RFC 3339 time>`), kept after
/// the task is deleted so that `status` can still say so.
const EXITED_EXT: &str = "io.ecs-init.exited";

/// Settings of the containerd backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdOptions {
    /// Path of the containerd gRPC socket (`CONTAINERD_ADDRESS`, `unix://` prefix allowed).
    pub address: PathBuf,
    /// containerd namespace (`ECS_INIT_CONTAINERD_NAMESPACE`).
    pub namespace: String,
    /// Host path of the static `ecs-agent-init` binary (`ECS_INIT_AGENT_INIT`).
    pub agent_init: PathBuf,
    /// Directory of the agent's rotated stdout/stderr logs (`ECS_INIT_CONTAINERD_LOG_DIR`).
    pub log_dir: PathBuf,
    /// Snapshotter for image layers and the container root.
    pub snapshotter: String,
}

impl Default for ContainerdOptions {
    fn default() -> Self {
        ContainerdOptions {
            address: DEFAULT_ADDRESS.into(),
            namespace: DEFAULT_NAMESPACE.into(),
            agent_init: DEFAULT_AGENT_INIT.into(),
            log_dir: DEFAULT_LOG_DIR.into(),
            snapshotter: DEFAULT_SNAPSHOTTER.into(),
        }
    }
}

/// A containerd address as a socket path (`unix://` prefix allowed).
pub fn socket_path(address: &str) -> PathBuf {
    PathBuf::from(address.strip_prefix("unix://").unwrap_or(address))
}

/// containerd namespaces: a letter or digit, then letters, digits, `.`, `_` and `-`.
fn valid_namespace(ns: &str) -> bool {
    let mut chars = ns.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && ns.len() <= 76
}

/// The containerd [`Runtime`].
///
/// Constructing it never touches the socket: the launcher builds a runtime for `stop` and
/// `post-stop` too, which must work while containerd is down. The gRPC channel is opened on
/// first use and reused (tonic reconnects it after a daemon restart).
pub struct ContainerdRuntime {
    opts: ContainerdOptions,
    channel: tokio::sync::Mutex<Option<Channel>>,
}

impl std::fmt::Debug for ContainerdRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerdRuntime")
            .field("opts", &self.opts)
            .finish()
    }
}

impl ContainerdRuntime {
    /// The default settings with `address` and `namespace` overriding when given. Does not
    /// connect; fails only on an invalid namespace.
    pub fn connect(address: Option<&str>, namespace: Option<&str>) -> Result<Self> {
        let mut opts = ContainerdOptions::default();
        if let Some(a) = address {
            opts.address = socket_path(a);
        }
        if let Some(ns) = namespace {
            opts.namespace = ns.to_string();
        }
        Self::with_options(opts)
    }

    /// A runtime with explicit settings (tests use their own namespace and log directory).
    pub fn with_options(opts: ContainerdOptions) -> Result<Self> {
        if !valid_namespace(&opts.namespace) {
            return Err(RuntimeError::daemon(
                RT,
                "configure",
                format!("invalid containerd namespace {:?}", opts.namespace),
            ));
        }
        Ok(ContainerdRuntime {
            opts,
            channel: tokio::sync::Mutex::new(None),
        })
    }

    pub fn options(&self) -> &ContainerdOptions {
        &self.opts
    }

    fn endpoint(&self) -> String {
        format!("unix://{}", self.opts.address.display())
    }

    /// The shared channel, connecting on first use.
    pub(crate) async fn channel(&self) -> Result<Channel> {
        let mut guard = self.channel.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let c = containerd_client::connect(&self.opts.address)
            .await
            .map_err(|e| RuntimeError::Connect {
                runtime: RT,
                endpoint: self.endpoint(),
                reason: error_chain(&e),
            })?;
        *guard = Some(c.clone());
        Ok(c)
    }

    /// A request in our namespace.
    pub(crate) fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.metadata_mut().insert(
            "containerd-namespace",
            self.opts
                .namespace
                .parse()
                .expect("namespace validated as ASCII at construction"),
        );
        r
    }

    /// A request in our namespace whose new resources are held by `lease` until it is deleted.
    pub(crate) fn leased<T>(&self, msg: T, lease: &str) -> Request<T> {
        let mut r = self.req(msg);
        if let Ok(v) = lease.parse() {
            r.metadata_mut().insert("containerd-lease", v);
        }
        r
    }

    /// Maps a gRPC status: "unavailable" means the socket is unreachable.
    pub(crate) fn err(&self, action: impl Into<String>, status: Status) -> RuntimeError {
        if lost_connection(&status) {
            RuntimeError::Connect {
                runtime: RT,
                endpoint: self.endpoint(),
                reason: status.message().to_string(),
            }
        } else {
            RuntimeError::Containerd {
                action: action.into(),
                code: status.code(),
                message: status.message().to_string(),
            }
        }
    }

    async fn containers(&self) -> Result<ContainersClient<Channel>> {
        Ok(ContainersClient::new(self.channel().await?))
    }
    async fn tasks(&self) -> Result<TasksClient<Channel>> {
        Ok(TasksClient::new(self.channel().await?))
    }
    pub(super) async fn snapshots(&self) -> Result<SnapshotsClient<Channel>> {
        Ok(SnapshotsClient::new(self.channel().await?))
    }

    async fn get_container(&self, name: &str) -> Result<Option<Container>> {
        match self
            .containers()
            .await?
            .get(self.req(GetContainerRequest { id: name.into() }))
            .await
        {
            Ok(r) => Ok(r.into_inner().container),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(self.err(format!("get container {name}"), s)),
        }
    }

    async fn task(&self, name: &str) -> Result<Option<containerd_client::types::v1::Process>> {
        match self
            .tasks()
            .await?
            .get(self.req(GetRequest {
                container_id: name.into(),
                exec_id: String::new(),
            }))
            .await
        {
            Ok(r) => Ok(r.into_inner().process),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(self.err(format!("get task {name}"), s)),
        }
    }

    async fn kill(&self, name: &str, signal: i32, all: bool) -> Result<()> {
        match self
            .tasks()
            .await?
            .kill(self.req(KillRequest {
                container_id: name.into(),
                exec_id: String::new(),
                signal: signal as u32,
                all,
            }))
            .await
        {
            Ok(_) => Ok(()),
            // Gone or already stopped: nothing to signal.
            Err(s) if matches!(s.code(), Code::NotFound | Code::FailedPrecondition) => Ok(()),
            Err(s) => Err(self.err(format!("signal {signal} to {name}"), s)),
        }
    }

    /// Tasks.Wait; `None` when there is no task.
    async fn wait_task(&self, name: &str) -> Result<Option<u32>> {
        match self
            .tasks()
            .await?
            .wait(self.req(WaitRequest {
                container_id: name.into(),
                exec_id: String::new(),
            }))
            .await
        {
            Ok(r) => Ok(Some(r.into_inner().exit_status)),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(self.err(format!("wait for {name}"), s)),
        }
    }

    pub(super) async fn remove_snapshot(&self, key: &str) -> Result<()> {
        match self
            .snapshots()
            .await?
            .remove(self.req(RemoveSnapshotRequest {
                snapshotter: self.opts.snapshotter.clone(),
                key: key.into(),
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(self.err(format!("remove snapshot {key}"), s)),
        }
    }

    /// The OCI runtime spec this backend submits for `spec` with this image's config: the one
    /// code path for creating the container and for `plan`.
    pub fn oci_spec(&self, spec: &AgentSpec, image: &oci::ImageConfig) -> serde_json::Value {
        let host = oci::HostFacts::detect();
        let containerd_dir = self.opts.address.parent().filter(|d| d.is_dir());
        oci::build(
            spec,
            &oci::Inputs {
                image,
                host: &host,
                init_host_path: &self.opts.agent_init,
                containerd_dir,
                namespace: &self.opts.namespace,
            },
        )
    }

    /// What `create_and_start` checks before it changes anything.
    fn check_before_create(&self, spec: &AgentSpec) -> Result<()> {
        let name = spec.name.as_str();
        if !self.opts.agent_init.is_file() {
            return Err(RuntimeError::daemon(
                RT,
                format!("create container {name}"),
                format!(
                    "the static agent init/log shim {} is missing (set ECS_INIT_AGENT_INIT)",
                    self.opts.agent_init.display()
                ),
            ));
        }
        if spec.log.driver != "json-file" {
            tracing::warn!(driver = %spec.log.driver,
                "log drivers other than json-file do not exist on containerd; keeping a rotated json-file log");
        }
        // dockerd creates a missing bind source as a directory; runc refuses to start instead.
        // Do what Docker does, so the same spec runs on both (e.g. /etc/docker/plugins on a
        // host without Docker).
        for m in spec.mounts.iter().filter(|m| !m.source.exists()) {
            tracing::info!(source = %m.source.display(), "creating the missing bind source as a directory, as Docker does");
            ecs_host::files::ensure_dir(&m.source, 0o755).map_err(|e| {
                RuntimeError::io(format!("create bind source {}", m.source.display()), e)
            })?;
        }
        Ok(())
    }

    /// Creates container `spec.name` and starts its task. On failure, removes what it made.
    async fn create_and_start(&self, spec: &AgentSpec) -> Result<()> {
        let name = spec.name.as_str();
        if self.get_container(name).await?.is_some() {
            return Err(RuntimeError::daemon(
                RT,
                format!("create container {name}"),
                "a container with this name already exists",
            ));
        }
        self.check_before_create(spec)?;
        let image = images::resolve_image(self, &spec.image).await?;
        let top_chain = unpack::ensure_unpacked(self, &image).await?;
        let oci_spec = self.oci_spec(spec, &image.config);
        // Once per process (a crash loop would repeat ~5 KB at every restart); the agent spec's
        // digest line of each start says whether it changed, and `plan` shows it in full.
        static LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::debug!(name, spec = %redacted(&oci_spec), "OCI runtime spec");
        }
        let lease = lease::Lease::create(self, Duration::from_secs(600)).await?;
        let result = self
            .create_container(spec, &image, &top_chain, oci_spec, &lease)
            .await;
        lease.delete(self).await;
        let mounts = match result {
            Ok(m) => m,
            Err(e) => {
                let _ = self.remove_snapshot(name).await;
                return Err(e);
            }
        };
        if let Err(e) = self.start_task(spec, mounts).await {
            tracing::warn!(name, error = %e, "starting the task failed; removing the container");
            let _ = self.remove_container(name).await;
            return Err(e);
        }
        Ok(())
    }

    /// The container record and its root snapshot (under `lease`); returns the root's mounts.
    async fn create_container(
        &self,
        spec: &AgentSpec,
        image: &images::ResolvedImage,
        top_chain: &str,
        oci_spec: serde_json::Value,
        lease: &lease::Lease,
    ) -> Result<Vec<containerd_client::types::Mount>> {
        let name = spec.name.as_str();
        // A snapshot of this name without a container is debris of an interrupted run.
        let mounts = match self.prepare_root(name, top_chain, lease).await {
            Err(s) if s.code() == Code::AlreadyExists => {
                tracing::info!(name, "removing a leftover snapshot of an earlier run");
                self.remove_snapshot(name).await?;
                self.prepare_root(name, top_chain, lease).await
            }
            other => other,
        }
        .map_err(|s| self.err(format!("prepare root snapshot of {name}"), s))?;
        let labels: HashMap<String, String> = container_labels(&image.config, spec).collect();
        let container = Container {
            id: name.into(),
            labels,
            image: image.name.clone(),
            runtime: Some(ContainerRuntimeInfo {
                name: RUNTIME.into(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE_URL.into(),
                value: serde_json::to_vec(&oci_spec).expect("JSON value serialises"),
            }),
            snapshotter: self.opts.snapshotter.clone(),
            snapshot_key: name.into(),
            ..Default::default()
        };
        self.containers()
            .await?
            .create(self.leased(
                CreateContainerRequest {
                    container: Some(container),
                },
                &lease.id,
            ))
            .await
            .map_err(|s| self.err(format!("create container {name}"), s))?;
        Ok(mounts)
    }

    /// SIGTERM, then SIGKILL to every process of the task after `grace`; returns once it exited.
    async fn terminate(&self, name: &str, grace: Duration) -> Result<()> {
        self.kill(name, libc::SIGTERM, false).await?;
        match tokio::time::timeout(grace, self.wait_task(name)).await {
            Ok(r) => {
                r?;
                Ok(())
            }
            Err(_) => {
                tracing::warn!(
                    name,
                    grace_ms = grace.as_millis() as u64,
                    "agent ignored SIGTERM; sending SIGKILL"
                );
                self.kill(name, libc::SIGKILL, true).await?;
                tokio::time::timeout(Duration::from_secs(30), self.wait_task(name))
                    .await
                    .map_err(|_| {
                        RuntimeError::daemon(
                            RT,
                            format!("stop {name}"),
                            "still running 30 s after SIGKILL",
                        )
                    })??;
                Ok(())
            }
        }
    }

    /// Record `value` as the container's extension `key` (best effort: only `inspect` uses it).
    async fn set_extension(&self, name: &str, key: &str, value: String) {
        let update = Container {
            id: name.into(),
            extensions: HashMap::from([(
                key.to_string(),
                prost_types::Any {
                    type_url: key.into(),
                    value: value.into_bytes(),
                },
            )]),
            ..Default::default()
        };
        let result = async {
            self.containers()
                .await?
                .update(self.req(UpdateContainerRequest {
                    container: Some(update),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec![format!("extensions.{key}")],
                    }),
                }))
                .await
                .map_err(|s| self.err("update container", s))
        }
        .await;
        if let Err(e) = result {
            tracing::debug!(name, key, error = %e, "could not record a container extension");
        }
    }

    /// Delete the stopped task of `name`, keeping how it ended in the container record: the
    /// shim and the log shim exit with it, so no process of the agent outlives it.
    /// The exit code of a task that is gone (exited and reaped already, e.g. by `stop`). Whoever
    /// reaps records the code right after deleting the task ([`Self::reap`]), so a container
    /// without one yet is asked again for a moment before the task counts as lost (seen: a
    /// `stop` that reaped while this wait was reconnecting after a containerd restart).
    async fn recorded_exit(&self, name: &str) -> Result<i64> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            match self.inspect(name).await? {
                Some(ContainerState {
                    exit_code: Some(code),
                    ..
                }) => return Ok(code),
                Some(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Some(_) => {
                    return Err(RuntimeError::daemon(
                        RT,
                        format!("wait for {name}"),
                        "the container has no task",
                    ))
                }
                None => return Err(RuntimeError::NoSuchContainer(name.into())),
            }
        }
    }

    async fn reap(&self, name: &str) -> Result<()> {
        let deleted = self
            .tasks()
            .await?
            .delete(self.req(DeleteTaskRequest {
                container_id: name.into(),
            }))
            .await;
        match deleted {
            Ok(r) => {
                let r = r.into_inner();
                let at = r.exited_at.map(|t| t.to_string()).unwrap_or_default();
                self.set_extension(name, EXITED_EXT, format!("{} {at}", r.exit_status))
                    .await;
                tracing::debug!(name, exit_code = r.exit_status, "task deleted");
                Ok(())
            }
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(self.err(format!("delete task {name}"), s)),
        }
    }

    /// The container's writable root on top of the image's top layer.
    async fn prepare_root(
        &self,
        name: &str,
        parent: &str,
        lease: &lease::Lease,
    ) -> std::result::Result<Vec<containerd_client::types::Mount>, Status> {
        let mut client = self
            .snapshots()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let resp = client
            .prepare(self.leased(
                PrepareSnapshotRequest {
                    snapshotter: self.opts.snapshotter.clone(),
                    key: name.into(),
                    parent: parent.into(),
                    labels: HashMap::new(),
                },
                &lease.id,
            ))
            .await?;
        Ok(resp.into_inner().mounts)
    }

    async fn start_task(
        &self,
        spec: &AgentSpec,
        rootfs: Vec<containerd_client::types::Mount>,
    ) -> Result<()> {
        let name = spec.name.as_str();
        ecs_host::files::ensure_dir(&self.opts.log_dir, 0o750)
            .map_err(|e| RuntimeError::io(format!("create {}", self.opts.log_dir.display()), e))?;
        let log = logs::uri(&self.opts.agent_init, &self.opts.log_dir, name, &spec.log);
        let mut tasks = self.tasks().await?;
        let created = tasks
            .create(self.req(CreateTaskRequest {
                container_id: name.into(),
                rootfs,
                stdout: log.clone(),
                stderr: log,
                ..Default::default()
            }))
            .await
            .map_err(|s| self.err(format!("create task {name}"), s))?
            .into_inner();
        tasks
            .start(self.req(StartRequest {
                container_id: name.into(),
                exec_id: String::new(),
            }))
            .await
            .map_err(|s| self.err(format!("start task {name}"), s))?;
        tracing::info!(name, pid = created.pid, "agent task started");
        // Best effort: only `inspect` uses it.
        let now = prost_types::Timestamp::from(std::time::SystemTime::now()).to_string();
        self.set_extension(name, STARTED_AT_EXT, now).await;
        Ok(())
    }
}

/// An error with its sources, which tonic's transport errors need to be useful; a source whose
/// text is already there (some errors print their source too) is not repeated.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        let text = src.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = src.source();
    }
    s
}

#[async_trait]
impl Runtime for ContainerdRuntime {
    fn name(&self) -> &'static str {
        RT
    }

    async fn ping(&self) -> Result<RuntimeInfo> {
        let mut client = containerd_client::services::v1::version_client::VersionClient::new(
            self.channel().await?,
        );
        let v = client
            .version(())
            .await
            .map_err(|s| self.err("version", s))?
            .into_inner();
        Ok(RuntimeInfo {
            runtime: RT.into(),
            version: v.version,
            endpoint: self.endpoint(),
        })
    }

    async fn image_id(&self, reference: &str) -> Result<Option<String>> {
        if !images::image_exists(self, reference).await? {
            return Ok(None);
        }
        Ok(Some(
            images::resolve_image(self, reference).await?.config_digest,
        ))
    }

    async fn load_image(&self, tarball: &Path) -> Result<Vec<String>> {
        import::load(self, tarball).await
    }

    async fn tag_image(&self, source: &str, target: &str) -> Result<()> {
        images::tag_image(self, source, target).await
    }

    async fn remove_container(&self, name: &str) -> Result<()> {
        if let Some(task) = self.task(name).await? {
            if task.status != TaskStatus::Stopped as i32 {
                tracing::info!(name, pid = task.pid, "killing leftover task");
                self.kill(name, libc::SIGKILL, true).await?;
                let _ = tokio::time::timeout(Duration::from_secs(10), self.wait_task(name)).await;
            }
            match self
                .tasks()
                .await?
                .delete(self.req(DeleteTaskRequest {
                    container_id: name.into(),
                }))
                .await
            {
                Ok(_) => {}
                Err(s) if s.code() == Code::NotFound => {}
                Err(s) => return Err(self.err(format!("delete task {name}"), s)),
            }
        }
        match self
            .containers()
            .await?
            .delete(self.req(DeleteContainerRequest { id: name.into() }))
            .await
        {
            Ok(_) => tracing::info!(name, "container removed"),
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(self.err(format!("delete container {name}"), s)),
        }
        self.remove_snapshot(name).await?;
        logs::remove(&self.opts.log_dir, name);
        Ok(())
    }

    async fn run(&self, spec: &AgentSpec) -> Result<()> {
        self.create_and_start(spec).await
    }

    async fn wait(&self, name: &str) -> Result<i64> {
        // The shim keeps the task alive across a containerd restart; keep waiting through one,
        // however long the agent ran before it: the window counts only the time containerd
        // does not answer (it used to start with the wait, so a restart after 5 minutes of the
        // agent's life ended the wait and the supervisor replaced a healthy agent).
        let mut retry = ecs_host::Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
        let mut unreachable_since: Option<tokio::time::Instant> = None;
        loop {
            match self.wait_task(name).await {
                Ok(Some(code)) => {
                    if let Err(e) = self.reap(name).await {
                        tracing::warn!(name, error = %e, "could not delete the exited task");
                    }
                    return Ok(i64::from(code));
                }
                Ok(None) => return self.recorded_exit(name).await,
                Err(e @ RuntimeError::Connect { .. }) => {
                    let since = *unreachable_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= WAIT_THROUGH_RESTART {
                        return Err(e);
                    }
                    tracing::warn!(name, error = %e, "lost containerd while waiting; retrying");
                    tokio::time::sleep(retry.next_delay()).await;
                    if self.task(name).await.is_ok() {
                        unreachable_since = None;
                        retry.reset();
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn stop(&self, name: &str, grace: Duration) -> Result<()> {
        let Some(task) = self.task(name).await? else {
            return Ok(());
        };
        if task.status != TaskStatus::Stopped as i32 {
            self.terminate(name, grace).await?;
        }
        self.reap(name).await
    }

    async fn logs_tail(&self, name: &str, lines: usize) -> Result<String> {
        let dir = self.opts.log_dir.clone();
        let owned = name.to_string();
        let out = tokio::task::spawn_blocking(move || logs::tail(&dir, &owned, lines))
            .await
            .map_err(|e| RuntimeError::io("read logs", std::io::Error::other(e)))?
            .map_err(|e| RuntimeError::io(format!("read logs of {name}"), e))?;
        if out.is_empty() && self.get_container(name).await?.is_none() {
            return Err(RuntimeError::NoSuchContainer(name.into()));
        }
        Ok(out)
    }

    async fn describe(&self, spec: &AgentSpec) -> serde_json::Value {
        let (config, image, note) = match images::resolve_image(self, &spec.image).await {
            Ok(i) => (i.config, i.name, None),
            Err(e) => (
                oci::ImageConfig::default(),
                spec.image.clone(),
                Some(format!(
                    "the image's own config could not be read ({e}); process args and env from the image are missing here"
                )),
            ),
        };
        let labels: std::collections::BTreeMap<String, String> =
            container_labels(&config, spec).collect();
        let oci_spec = self.oci_spec(spec, &config);
        serde_json::json!({
            "namespace": self.opts.namespace,
            "container": {
                "id": spec.name,
                "image": image,
                "runtime": RUNTIME,
                "snapshotter": self.opts.snapshotter,
                "labels": labels,
            },
            "log": logs::uri(&self.opts.agent_init, &self.opts.log_dir, &spec.name, &spec.log),
            "spec": redacted(&oci_spec),
            "note": note,
        })
    }

    async fn inspect(&self, name: &str) -> Result<Option<ContainerState>> {
        let Some(container) = self.get_container(name).await? else {
            return Ok(None);
        };
        let started_at = container
            .extensions
            .get(STARTED_AT_EXT)
            .and_then(|a| String::from_utf8(a.value.clone()).ok());
        let mut state = ContainerState {
            id: container.id.clone(),
            name: container.id.clone(),
            image: container.image.clone(),
            status: "created".into(),
            labels: container.labels.clone().into_iter().collect(),
            created_at: container.created_at.map(|t| t.to_string()),
            ..Default::default()
        };
        let Some(task) = self.task(name).await? else {
            // The task was deleted once it exited: how it ended is in the record.
            if let Some((code, at)) = container
                .extensions
                .get(EXITED_EXT)
                .and_then(|a| String::from_utf8(a.value.clone()).ok())
                .and_then(|v| {
                    let (code, at) = v.split_once(' ')?;
                    Some((code.parse::<i64>().ok()?, at.to_string()))
                })
            {
                state.status = "exited".into();
                state.exit_code = Some(code);
                state.started_at = started_at;
                state.finished_at = Some(at).filter(|a| !a.is_empty());
            }
            return Ok(Some(state));
        };
        {
            state.started_at = started_at;
            let status = TaskStatus::try_from(task.status).unwrap_or(TaskStatus::Unknown);
            state.status = match status {
                TaskStatus::Created => "created",
                TaskStatus::Running => "running",
                TaskStatus::Stopped => "exited",
                TaskStatus::Paused => "paused",
                TaskStatus::Pausing => "pausing",
                TaskStatus::Unknown => "unknown",
            }
            .into();
            state.running = status == TaskStatus::Running;
            if state.running || status == TaskStatus::Paused {
                state.pid = Some(task.pid);
            }
            if status == TaskStatus::Stopped {
                state.exit_code = Some(i64::from(task.exit_status));
                state.finished_at = task.exited_at.map(|t| t.to_string());
            }
        }
        Ok(Some(state))
    }
}

/// The OCI spec with secret env values replaced, for logging (the spec carries the agent's
/// environment, which may hold `ECS_ENGINE_AUTH_DATA` or AWS credentials).
fn redacted(oci_spec: &serde_json::Value) -> serde_json::Value {
    let mut shown = oci_spec.clone();
    ecs_formats::redact::redact_env_at(&mut shown, "/process/env");
    shown
}

/// Did this call fail because the connection to containerd went away (containerd stopped,
/// crashed or is restarting), rather than because containerd refused it? tonic reports a
/// connection it cannot make as `Unavailable`, but one that breaks under a call in flight (a
/// `Wait` when containerd is killed) as `Unknown: transport error`.
fn lost_connection(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable => true,
        Code::Unknown => {
            let m = status.message().to_ascii_lowercase();
            [
                "transport error",
                "broken pipe",
                "connection reset",
                "connection refused",
            ]
            .iter()
            .any(|needle| m.contains(needle))
        }
        _ => false,
    }
}

/// The container record's labels: the image's own, then the spec's (which win), as Docker
/// merges them.
fn container_labels<'a>(
    config: &oci::ImageConfig,
    spec: &'a AgentSpec,
) -> impl Iterator<Item = (String, String)> + 'a {
    let image_labels = config.labels.clone().unwrap_or_default();
    image_labels
        .into_iter()
        .chain(spec.labels.iter().map(|(k, v)| (k.clone(), v.clone())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces() {
        assert!(valid_namespace("ecs"));
        assert!(valid_namespace("ecs-init-test.1"));
        assert!(!valid_namespace(""));
        assert!(!valid_namespace("-x"));
        assert!(!valid_namespace("a b"));
    }

    #[test]
    fn connect_does_not_touch_the_socket() {
        let rt = ContainerdRuntime::connect(Some("unix:///nonexistent/c.sock"), Some("t")).unwrap();
        assert_eq!(rt.options().address, PathBuf::from("/nonexistent/c.sock"));
        assert_eq!(rt.options().namespace, "t");
    }

    #[tokio::test]
    async fn calls_fail_with_connect_naming_the_socket() {
        let rt = ContainerdRuntime::connect(Some("/nonexistent/c.sock"), None).unwrap();
        let err = rt.ping().await.unwrap_err();
        assert!(matches!(err, RuntimeError::Connect { .. }), "{err:?}");
        assert!(err.to_string().contains("/nonexistent/c.sock"), "{err}");
        let err = rt
            .stop("ecs-agent", Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(err, RuntimeError::Connect { .. }), "{err:?}");
    }

    #[test]
    fn logged_spec_redacts_secret_env() {
        let spec = serde_json::json!({"process": {"env": ["ECS_CLUSTER=c", "AWS_SECRET_ACCESS_KEY=abc", "NOEQ"]}});
        let shown = super::redacted(&spec).to_string();
        assert!(
            shown.contains("ECS_CLUSTER=c") && shown.contains("NOEQ"),
            "{shown}"
        );
        assert!(!shown.contains("abc"), "{shown}");
    }

    #[test]
    fn a_broken_transport_is_a_lost_connection() {
        assert!(super::lost_connection(&Status::unavailable(
            "connect refused"
        )));
        assert!(super::lost_connection(&Status::unknown("transport error")));
        assert!(!super::lost_connection(&Status::unknown(
            "oci runtime error"
        )));
        assert!(!super::lost_connection(&Status::not_found("no such task")));
    }
}
