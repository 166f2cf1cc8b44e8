//! The Docker Engine backend, over the Engine API on a unix socket (bollard).
//!
//! The client is created lazily on first use: ecs-init's `stop`/`post-stop` and the launcher's
//! `plan` must work while dockerd is down, so [`DockerRuntime::at_socket`] (and
//! [`DockerRuntime::connect`], which validates a `DOCKER_HOST` first) contacts nothing. The first
//! call that needs the daemon connects and negotiates the API version
//! (dockerd 20.10 speaks 1.41, bollard defaults to a newer one); a failed attempt is not cached,
//! so a later call retries once the daemon is back.

use crate::reference::familiar_reference;
use crate::{
    AgentSpec, ContainerState, DefaultBridge, NamespaceMode, Presence, Probed, Result, Runtime,
    RuntimeBackend as Backend, RuntimeError, RuntimeInfo, RuntimeKind, RuntimeOptions,
};
use async_trait::async_trait;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ImportImageOptionsBuilder, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
    TagImageOptionsBuilder, WaitContainerOptionsBuilder,
};
use bollard::{ClientVersion, Docker, API_DEFAULT_VERSION};
use bytes::{Bytes, BytesMut};
use ecs_host::Exec;
use futures_util::{StreamExt, TryStreamExt};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::OnceCell;

const RUNTIME: &str = "docker";

/// Docker's entry in the runtime registry ([`crate::BACKENDS`]).
pub const KIND: RuntimeKind = RuntimeKind(&DockerBackend);

/// The Docker Engine backend: its name, probe and constructor.
pub struct DockerBackend;

#[async_trait]
impl Backend for DockerBackend {
    fn name(&self) -> &'static str {
        RUNTIME
    }

    fn agent_needs_docker_api(&self) -> bool {
        false
    }

    /// A ping of at most `ping_timeout`, whether the socket exists, whether dockerd is
    /// installed. When Docker answered, its connected client comes back too.
    async fn probe(
        &self,
        opts: &RuntimeOptions,
        exec: &dyn Exec,
        ping_timeout: Duration,
    ) -> Probed {
        let client = DockerRuntime::at_socket(opts.docker_socket.clone());
        let answers = matches!(
            tokio::time::timeout(ping_timeout, client.ping()).await,
            Ok(Ok(_))
        );
        let (presence, reason) = presence(
            answers,
            opts.docker_socket.exists(),
            dockerd_installed(exec),
        );
        let mut probed = Probed::new(presence, reason);
        if answers {
            probed.client = Some(Box::new(client));
        }
        probed
    }

    fn build(&self, opts: &RuntimeOptions) -> Result<Box<dyn Runtime>> {
        Ok(Box::new(DockerRuntime::at_socket(
            opts.docker_socket.clone(),
        )))
    }
}

/// How ready Docker looks: answering; installed with its socket (restarting); only installed.
/// A socket without dockerd installed is stale (not a Docker host).
pub(crate) fn presence(
    answers: bool,
    socket_exists: bool,
    installed: bool,
) -> (Presence, &'static str) {
    match (answers, socket_exists, installed) {
        (true, _, _) => (Presence::Answers, "the Docker socket answers"),
        (false, true, true) => (
            Presence::Starting,
            "dockerd is installed and its socket exists (not answering yet)",
        ),
        (false, false, true) => (
            Presence::Installed,
            "dockerd is installed (not running yet)",
        ),
        (false, _, false) => (Presence::Absent, "dockerd is not installed"),
    }
}

/// Is `dockerd` installed: on the search path, or in the usual system directories.
fn dockerd_installed(exec: &dyn Exec) -> bool {
    exec.find("dockerd").is_some()
        || ["/usr/bin", "/usr/sbin", "/usr/local/bin"]
            .iter()
            .any(|d| Path::new(d).join("dockerd").is_file())
}

/// The socket used when `DOCKER_HOST` is unset (same as the Go ecs-init).
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// [`DEFAULT_SOCKET`] as an endpoint.
pub const DEFAULT_ENDPOINT: &str = "unix:///var/run/docker.sock";

/// The socket a `DOCKER_HOST` value names: `unix:///p` is `/p`. Anything else (blank, `unix://`
/// alone or with a relative path or `/`, `tcp://…`, a bare path) names none: the Go ecs-init
/// then uses [`DEFAULT_SOCKET`]. The one reading of `DOCKER_HOST` (settings, the agent's bind
/// mount and [`DockerRuntime`]).
pub fn socket_of(host: &str) -> Option<PathBuf> {
    host.trim()
        .strip_prefix("unix://")
        .filter(|p| p.starts_with('/') && *p != "/")
        .map(PathBuf::from)
}

/// Per-request timeout for ordinary calls (bollard's own default).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Loading a large agent image on a slow disk can take minutes before dockerd answers.
const LOAD_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// `wait` blocks for the whole life of the agent; the request must never time out.
const WAIT_TIMEOUT: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
/// Extra time over the stop grace period for dockerd to kill and reap the container.
const STOP_SLACK: Duration = Duration::from_secs(30);
/// Read size when streaming an image tarball to dockerd.
const LOAD_CHUNK: usize = 256 * 1024;

/// Docker Engine as a [`Runtime`].
#[derive(Debug)]
pub struct DockerRuntime {
    /// `unix:///path/to/docker.sock`, as reported in errors and [`RuntimeInfo`].
    endpoint: String,
    /// The socket path inside `endpoint`.
    socket: PathBuf,
    /// The connected, version-negotiated client and the daemon's version; set by the first
    /// successful call.
    client: OnceCell<(Docker, String)>,
}

impl DockerRuntime {
    /// Prepare a client for `host` (the value of `DOCKER_HOST`, if set) without contacting the
    /// daemon.
    ///
    /// `None` or an empty value means [`DEFAULT_ENDPOINT`]. Only `unix://` endpoints are
    /// accepted: ecs-init bind-mounts the socket into the agent, so TCP endpoints make no sense.
    pub fn connect(host: Option<&str>) -> Result<Self> {
        match host.map(str::trim) {
            None | Some("") => Ok(Self::at_socket(DEFAULT_SOCKET.into())),
            Some(h) => socket_of(h)
                .map(Self::at_socket)
                .ok_or_else(|| RuntimeError::Connect {
                    runtime: RUNTIME,
                    endpoint: h.to_string(),
                    reason: "only unix:// endpoints (DOCKER_HOST=unix:///path/to/docker.sock) \
                             are supported"
                        .into(),
                }),
        }
    }

    /// A client for the daemon listening on `socket`, without contacting it.
    pub fn at_socket(socket: PathBuf) -> Self {
        let endpoint = format!("unix://{}", socket.display());
        tracing::debug!(%endpoint, "docker endpoint selected");
        DockerRuntime {
            endpoint,
            socket,
            client: OnceCell::new(),
        }
    }

    /// The endpoint this runtime talks to (`unix:///...`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The connected bollard client, connecting and negotiating the API version on first use.
    ///
    /// Public so that tests and diagnostics can ask dockerd things the [`Runtime`] trait does
    /// not cover (e.g. the full `docker inspect` document).
    pub async fn client(&self) -> Result<Docker> {
        Ok(self.connected().await?.0.clone())
    }

    /// Connect once: one `GET /version` both negotiates the API version (the lower of the
    /// daemon's and bollard's) and tells the daemon's version, which `ping` then reports
    /// without asking again. (`/version` costs dockerd several milliseconds; bollard's own
    /// negotiation plus a version call per ping made up most of the launcher's start-up
    /// overhead over a raw `docker run`.)
    async fn connected(&self) -> Result<&(Docker, String)> {
        self.client
            .get_or_try_init(|| async {
                if !self.socket.exists() {
                    return Err(self.connect_error(format!(
                        "socket {} does not exist (is dockerd running?)",
                        self.socket.display()
                    )));
                }
                let connect = |version: &ClientVersion| {
                    Docker::connect_with_unix(&self.endpoint, REQUEST_TIMEOUT.as_secs(), version)
                        .map_err(|e| self.connect_error(e.to_string()))
                };
                let probe = connect(API_DEFAULT_VERSION)?;
                let info = probe.version().await.map_err(|e| {
                    self.connect_error(format!("asking dockerd for its version: {e}"))
                })?;
                let api = info
                    .api_version
                    .as_deref()
                    .and_then(parse_api_version)
                    .filter(|v| {
                        (v.major_version, v.minor_version)
                            < (
                                API_DEFAULT_VERSION.major_version,
                                API_DEFAULT_VERSION.minor_version,
                            )
                    })
                    .unwrap_or(ClientVersion {
                        major_version: API_DEFAULT_VERSION.major_version,
                        minor_version: API_DEFAULT_VERSION.minor_version,
                    });
                let docker = connect(&api)?;
                let version = info.version.unwrap_or_default();
                tracing::debug!(endpoint = %self.endpoint, %version,
                    api_version = %format!("{}.{}", api.major_version, api.minor_version),
                    "connected to dockerd");
                Ok((docker, version))
            })
            .await
    }

    fn connect_error(&self, reason: String) -> RuntimeError {
        RuntimeError::Connect {
            runtime: RUNTIME,
            endpoint: self.endpoint.clone(),
            reason,
        }
    }

    /// Map a bollard error to a [`RuntimeError`], saying what we were doing.
    fn error(&self, action: impl Into<String>, err: BollardError) -> RuntimeError {
        let action = action.into();
        match err {
            BollardError::HyperLegacyError { err } if err.is_connect() => {
                self.connect_error(format!("{action}: {err}"))
            }
            BollardError::SocketNotFoundError(path) => {
                self.connect_error(format!("{action}: socket {path} does not exist"))
            }
            BollardError::DockerResponseServerError {
                status_code,
                message,
            } => RuntimeError::daemon(RUNTIME, action, format!("HTTP {status_code}: {message}")),
            // The connection broke under a request (dockerd died or restarted).
            err @ (BollardError::HyperLegacyError { .. } | BollardError::IOError { .. }) => {
                RuntimeError::Lost {
                    runtime: RUNTIME,
                    action,
                    reason: err.to_string(),
                }
            }
            other => RuntimeError::daemon(RUNTIME, action, other),
        }
    }

    /// The IDs of containers named exactly `name` (dockerd's name filter is a regex match, so
    /// `ecs-agent` would also find `ecs-agent-2`).
    async fn containers_named(&self, docker: &Docker, name: &str) -> Result<Vec<String>> {
        let wanted = format!("/{name}");
        let filters = HashMap::from([("name".to_string(), vec![name.to_string()])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = docker
            .list_containers(Some(options))
            .await
            .map_err(|e| self.error(format!("list containers named {name}"), e))?;
        Ok(list
            .into_iter()
            .filter(|c| c.names.iter().flatten().any(|n| *n == wanted))
            .filter_map(|c| c.id)
            .collect())
    }

    /// Load a tarball that is known to be readable, streaming it in chunks.
    async fn load_stream(&self, tarball: &Path, file: tokio::fs::File) -> Result<Vec<String>> {
        let docker = self.client().await?.with_timeout(LOAD_TIMEOUT);
        // A read error on our side must not be reported as a corrupt tarball; the stream
        // records it here and hands hyper a generic error.
        let read_error: Arc<Mutex<Option<std::io::Error>>> = Arc::default();
        let body = {
            let read_error = read_error.clone();
            futures_util::stream::unfold(Some(file), move |file| {
                let read_error = read_error.clone();
                async move {
                    let mut file = file?;
                    let mut buf = BytesMut::with_capacity(LOAD_CHUNK);
                    match file.read_buf(&mut buf).await {
                        Ok(0) => None,
                        Ok(_) => Some((Ok::<Bytes, std::io::Error>(buf.freeze()), Some(file))),
                        Err(err) => {
                            let kind = err.kind();
                            *read_error.lock().expect("read_error lock") = Some(err);
                            Some((Err(std::io::Error::new(kind, "reading tarball")), None))
                        }
                    }
                }
            })
        };
        let options = ImportImageOptionsBuilder::default().quiet(true).build();
        let mut progress = docker.import_image_stream(options, body, None);

        let mut loaded = Vec::new();
        let mut failure: Option<BollardError> = None;
        while let Some(item) = progress.next().await {
            match item {
                Ok(info) => {
                    for line in info
                        .stream
                        .iter()
                        .chain(info.status.iter())
                        .flat_map(|s| s.lines())
                    {
                        let line = line.trim();
                        if let Some(reference) = line.strip_prefix("Loaded image: ") {
                            loaded.push(reference.trim().to_string());
                        } else if let Some(id) = line.strip_prefix("Loaded image ID: ") {
                            tracing::info!(tarball = %tarball.display(), image_id = id.trim(),
                                "loaded untagged image");
                        } else if !line.is_empty() {
                            tracing::debug!(tarball = %tarball.display(), line, "image load progress");
                        }
                    }
                }
                Err(err) => {
                    failure = Some(err);
                    break;
                }
            }
        }

        if let Some(err) = read_error.lock().expect("read_error lock").take() {
            return Err(RuntimeError::io(
                format!("read image tarball {}", tarball.display()),
                err,
            ));
        }
        match failure {
            None => Ok(loaded),
            Some(BollardError::DockerStreamError { error }) => Err(RuntimeError::BadTarball {
                path: tarball.to_path_buf(),
                reason: error,
            }),
            // dockerd answers a tarball it cannot unpack or make sense of with an HTTP error
            // rather than a stream message; its message says what was wrong.
            Some(BollardError::DockerResponseServerError {
                status_code,
                message,
            }) => Err(RuntimeError::BadTarball {
                path: tarball.to_path_buf(),
                reason: format!("dockerd rejected it (HTTP {status_code}): {message}"),
            }),
            Some(err) => Err(self.error(format!("load image {}", tarball.display()), err)),
        }
    }
}

/// The Docker `Binds` entry of one mount: `src:dst` or `src:dst:ro`.
fn bind(mount: &crate::Mount) -> Result<String> {
    let source = mount.source.to_string_lossy();
    let target = mount.target.to_string_lossy();
    if source.contains(':') || target.contains(':') {
        return Err(RuntimeError::daemon(
            RUNTIME,
            "build bind mounts",
            format!(
                "path contains ':' and cannot be expressed as a Docker bind: {source} -> {target}"
            ),
        ));
    }
    Ok(if mount.read_only {
        format!("{source}:{target}:ro")
    } else {
        format!("{source}:{target}")
    })
}

fn namespace(mode: NamespaceMode) -> Option<String> {
    match mode {
        NamespaceMode::Host => Some("host".to_string()),
        NamespaceMode::Private => None,
    }
}

/// Translate the runtime-neutral spec into a Docker create request.
fn create_body(spec: &AgentSpec) -> Result<ContainerCreateBody> {
    let binds = spec.mounts.iter().map(bind).collect::<Result<Vec<_>>>()?;
    let host_config = HostConfig {
        binds: Some(binds),
        cap_add: Some(spec.cap_add.clone()),
        network_mode: namespace(spec.network),
        userns_mode: namespace(spec.userns),
        pid_mode: namespace(spec.pid),
        privileged: Some(spec.privileged),
        init: Some(spec.init),
        ipc_mode: Some(IPC_MODE.into()),
        security_opt: spec
            .apparmor_profile
            .as_ref()
            .map(|profile| vec![format!("apparmor:{profile}")]),
        log_config: Some(HostConfigLogConfig {
            typ: Some(spec.log.driver.clone()),
            config: Some(
                spec.log
                    .options
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
        }),
        ..Default::default()
    };
    Ok(ContainerCreateBody {
        image: Some(spec.image.clone()),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(
            spec.labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        host_config: Some(host_config),
        ..Default::default()
    })
}

fn is_status(err: &BollardError, codes: &[u16]) -> bool {
    matches!(err, BollardError::DockerResponseServerError { status_code, .. } if codes.contains(status_code))
}

/// The agent container's IPC mode: what the Go tool's container gets (it speaks API version
/// 1.25, whose default is `shareable`); dockerd's own default at newer API versions is
/// `private`. Either way the agent has an IPC namespace of its own; `shareable` only lets other
/// containers join it.
pub const IPC_MODE: &str = "shareable";

/// The option of Docker's `bridge` network naming its host interface.
pub const BRIDGE_NAME_OPTION: &str = "com.docker.network.bridge.name";

/// The default bridge from dockerd's answer to `GET /networks/bridge`: the interface its
/// [`BRIDGE_NAME_OPTION`] names (`docker0` when the option is missing: dockerd's own default).
pub fn bridge_of(options: Option<&HashMap<String, String>>) -> DefaultBridge {
    let name = options
        .and_then(|o| o.get(BRIDGE_NAME_OPTION))
        .map(|n| n.trim())
        .filter(|n| !n.is_empty())
        .unwrap_or("docker0");
    DefaultBridge::Named(name.to_string())
}

#[async_trait]
impl Runtime for DockerRuntime {
    async fn default_bridge(&self) -> Result<DefaultBridge> {
        let docker = self.client().await?;
        match docker.inspect_network("bridge", None).await {
            Ok(network) => Ok(bridge_of(network.options.as_ref())),
            // dockerd --bridge=none has no network named `bridge`.
            Err(err) if is_status(&err, &[404]) => Ok(DefaultBridge::Absent),
            Err(err) => Err(self.error("inspect the bridge network", err)),
        }
    }

    fn name(&self) -> &'static str {
        RUNTIME
    }

    async fn ping(&self) -> Result<RuntimeInfo> {
        let (docker, version) = self.connected().await?;
        // `/_ping` answers in well under a millisecond; the version was read on connect.
        docker
            .ping()
            .await
            .map_err(|e| self.error("ping dockerd", e))?;
        Ok(RuntimeInfo {
            runtime: RUNTIME.to_string(),
            version: version.clone(),
            endpoint: self.endpoint.clone(),
        })
    }

    async fn image_id(&self, reference: &str) -> Result<Option<String>> {
        let docker = self.client().await?;
        let image = match docker.inspect_image(reference).await {
            Ok(image) => image,
            Err(err) if is_status(&err, &[404]) => return Ok(None),
            Err(err) => return Err(self.error(format!("inspect image {reference}"), err)),
        };
        // Inspect also resolves image IDs and digests; only an exact tag counts.
        let wanted = familiar_reference(reference);
        let present = image
            .repo_tags
            .iter()
            .flatten()
            .chain(image.repo_digests.iter().flatten())
            .any(|tag| familiar_reference(tag) == wanted);
        tracing::debug!(reference, present, "image presence checked");
        Ok(present.then(|| image.id.unwrap_or_default()))
    }

    async fn load_image(&self, tarball: &Path) -> Result<Vec<String>> {
        // dockerd moves tags as it reads a multi-image archive and stops at the first bad part:
        // verify the whole archive first, so a bad one never moves the agent's tag.
        // One open for both (what was verified is what is sent), without following a symlink
        // or waiting on a FIFO planted in the agent-writable cache.
        let bad = |reason: String| RuntimeError::BadTarball {
            path: tarball.to_path_buf(),
            reason,
        };
        let mut file =
            ecs_host::files::open_read(tarball).map_err(|e| bad(format!("cannot open: {e}")))?;
        let verify = file
            .try_clone()
            .map_err(|e| bad(format!("cannot open: {e}")))?;
        tokio::task::spawn_blocking(move || crate::archive::verify_file(verify))
            .await
            .map_err(|e| RuntimeError::io("verify image tarball", std::io::Error::other(e)))?
            .map_err(bad)?;
        std::io::Seek::rewind(&mut file).map_err(|e| bad(format!("cannot read: {e}")))?;
        let file = tokio::fs::File::from_std(file);
        let size = file.metadata().await.map(|m| m.len()).unwrap_or(0);
        tracing::info!(tarball = %tarball.display(), bytes = size, "loading image into dockerd");
        let loaded = self.load_stream(tarball, file).await?;
        tracing::info!(tarball = %tarball.display(), references = ?loaded, "image loaded");
        Ok(loaded)
    }

    async fn tag_image(&self, source: &str, target: &str) -> Result<()> {
        let docker = self.client().await?;
        let full = familiar_reference(target);
        let (repo, tag) = match full.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') && !repo.contains('@') => (repo, tag),
            _ => {
                return Err(RuntimeError::daemon(
                    RUNTIME,
                    format!("tag image {source} as {target}"),
                    "the target must be a name with a tag",
                ))
            }
        };
        let options = TagImageOptionsBuilder::default()
            .repo(repo)
            .tag(tag)
            .build();
        docker
            .tag_image(source, Some(options))
            .await
            .map_err(|e| self.error(format!("tag image {source} as {target}"), e))?;
        tracing::info!(source, target, "image tagged");
        Ok(())
    }

    async fn remove_container(&self, name: &str) -> Result<()> {
        let docker = self.client().await?;
        for id in self.containers_named(&docker, name).await? {
            let options = RemoveContainerOptionsBuilder::default()
                .force(true)
                .v(true)
                .build();
            match docker.remove_container(&id, Some(options)).await {
                Ok(()) => tracing::info!(name, id, "removed container"),
                Err(err) if is_status(&err, &[404]) => {
                    tracing::debug!(name, id, "container vanished before removal")
                }
                Err(err) => return Err(self.error(format!("remove container {name} ({id})"), err)),
            }
        }
        Ok(())
    }

    async fn run(&self, spec: &AgentSpec) -> Result<()> {
        let docker = self.client().await?;
        let body = create_body(spec)?;
        let options = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        let created = docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| {
                self.error(
                    format!("create container {} from {}", spec.name, spec.image),
                    e,
                )
            })?;
        for warning in &created.warnings {
            tracing::warn!(name = %spec.name, warning, "dockerd warning on create");
        }
        if let Err(err) = docker.start_container(&created.id, None).await {
            let err = self.error(format!("start container {}", spec.name), err);
            // Leave no half-made agent behind: a created-but-never-started container would
            // only block the next attempt's name.
            let options = RemoveContainerOptionsBuilder::default()
                .force(true)
                .v(true)
                .build();
            if let Err(rm) = docker.remove_container(&created.id, Some(options)).await {
                tracing::warn!(name = %spec.name, error = %rm, "could not remove the container that failed to start");
            }
            return Err(err);
        }
        tracing::info!(name = %spec.name, id = %created.id, image = %spec.image, "container started");
        Ok(())
    }

    async fn wait(&self, name: &str) -> Result<i64> {
        let docker = self.client().await?.with_timeout(WAIT_TIMEOUT);
        let options = WaitContainerOptionsBuilder::default()
            .condition("not-running")
            .build();
        let first = docker.wait_container(name, Some(options)).try_next().await;
        match first {
            Ok(Some(resp))
                if resp
                    .error
                    .as_ref()
                    .and_then(|e| e.message.as_ref())
                    .is_none() =>
            {
                tracing::info!(name, exit_code = resp.status_code, "container exited");
                return Ok(resp.status_code);
            }
            // bollard turns every non-zero exit into an error; for us it is the result.
            Err(BollardError::DockerContainerWaitError { code, error }) => {
                if error.is_empty() {
                    tracing::info!(name, exit_code = code, "container exited");
                } else {
                    tracing::info!(name, exit_code = code, error, "container exited");
                }
                return Ok(code);
            }
            Err(err) if is_status(&err, &[404]) => {
                return Err(RuntimeError::NoSuchContainer(name.to_string()))
            }
            Err(err @ BollardError::HyperLegacyError { .. })
            | Err(err @ BollardError::DockerResponseServerError { .. }) => {
                return Err(self.error(format!("wait for container {name}"), err));
            }
            // The wait answered oddly (no body, an error message with code 0, a stream that
            // broke off): ask for the container's recorded state instead.
            other => tracing::warn!(name, answer = ?other, "unclear wait answer; inspecting"),
        }
        match self.inspect(name).await? {
            None => Err(RuntimeError::NoSuchContainer(name.to_string())),
            Some(state) if !state.running => Ok(state.exit_code.unwrap_or(-1)),
            Some(_) => Err(RuntimeError::daemon(
                RUNTIME,
                format!("wait for container {name}"),
                "wait ended while the container is still running",
            )),
        }
    }

    async fn stop(&self, name: &str, grace: Duration) -> Result<()> {
        let docker = self.client().await?.with_timeout(grace + STOP_SLACK);
        // Docker takes whole seconds; round up so a sub-second grace is not a SIGKILL.
        let seconds = grace.as_millis().div_ceil(1000).min(i32::MAX as u128) as i32;
        let options = StopContainerOptionsBuilder::default().t(seconds).build();
        match docker.stop_container(name, Some(options)).await {
            Ok(()) => {
                tracing::info!(name, grace_s = seconds, "container stopped");
                Ok(())
            }
            Err(err) if is_status(&err, &[304, 404]) => {
                tracing::debug!(name, "container not running; nothing to stop");
                Ok(())
            }
            Err(err) => Err(self.error(format!("stop container {name}"), err)),
        }
    }

    async fn logs_tail(&self, name: &str, lines: usize) -> Result<String> {
        let docker = self.client().await?;
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .timestamps(true)
            .follow(false)
            .tail(&lines.to_string())
            .build();
        let mut out = String::new();
        let mut stream = docker.logs(name, Some(options));
        while let Some(item) = stream.next().await {
            match item {
                Ok(chunk) => {
                    out.push_str(&String::from_utf8_lossy(chunk.as_ref()));
                    // dockerd sends the last `lines` entries, each up to 16 KB: keep only the
                    // end, so memory stays bounded (the caller cuts the excerpt further).
                    let max = ecs_host::files::caps::LOG_TAIL_READ as usize;
                    if out.len() > 2 * max {
                        let mut cut = out.len() - max;
                        while !out.is_char_boundary(cut) {
                            cut += 1;
                        }
                        out.drain(..cut);
                    }
                }
                Err(err) if is_status(&err, &[404]) => {
                    return Err(RuntimeError::NoSuchContainer(name.to_string()))
                }
                Err(err) => return Err(self.error(format!("read logs of container {name}"), err)),
            }
        }
        Ok(out)
    }

    async fn describe(&self, spec: &AgentSpec) -> serde_json::Value {
        match create_body(spec) {
            Ok(body) => {
                let mut v = serde_json::to_value(&body).unwrap_or_default();
                ecs_formats::redact::redact_env_at(&mut v, "/Env");
                // Log options such as splunk-token.
                if let Some(options) = v
                    .pointer_mut("/HostConfig/LogConfig/Config")
                    .and_then(|o| o.as_object_mut())
                {
                    ecs_formats::redact::redact_members(options);
                }
                serde_json::json!({
                    "request": "POST /containers/create",
                    "name": spec.name,
                    "body": v,
                })
            }
            Err(e) => serde_json::json!({"error": e.to_string()}),
        }
    }

    async fn inspect(&self, name: &str) -> Result<Option<ContainerState>> {
        let docker = self.client().await?;
        let info = match docker.inspect_container(name, None).await {
            Ok(info) => info,
            Err(err) if is_status(&err, &[404]) => return Ok(None),
            Err(err) => return Err(self.error(format!("inspect container {name}"), err)),
        };
        let id = info.id.unwrap_or_default();
        let found_name = info
            .name
            .as_deref()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string();
        // dockerd also resolves ID prefixes; a container merely whose ID starts with `name`
        // is not the one asked for.
        if found_name != name && id != name {
            return Ok(None);
        }
        let state = info.state.unwrap_or_default();
        let running = state.running.unwrap_or(false);
        let status = state.status.map(|s| s.to_string()).unwrap_or_default();
        let exited = !running && status != "created";
        // dockerd reports the zero time for a container that never started or finished.
        let time = |t: Option<String>| t.filter(|t| !t.starts_with("0001-01-01"));
        Ok(Some(ContainerState {
            id,
            name: found_name,
            created_at: info.created.clone(),
            labels: info
                .config
                .as_ref()
                .and_then(|c| c.labels.clone())
                .unwrap_or_default()
                .into_iter()
                .collect(),
            // The reference it was created from (`Config.Image`), not the image ID.
            image: info
                .config
                .and_then(|c| c.image)
                .or(info.image)
                .unwrap_or_default(),
            status,
            running,
            exit_code: if exited { state.exit_code } else { None },
            started_at: time(state.started_at),
            finished_at: time(state.finished_at),
            pid: state
                .pid
                .filter(|p| *p > 0 && running)
                .and_then(|p| u32::try_from(p).ok()),
        }))
    }
}

/// `"1.41"` → 1.41.
fn parse_api_version(v: &str) -> Option<ClientVersion> {
    let (major, minor) = v.trim().split_once('.')?;
    Some(ClientVersion {
        major_version: major.parse().ok()?,
        minor_version: minor.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// dockerd's `bridge` network names its interface in an option; without it, `docker0`.
    #[test]
    fn bridge_name_from_the_network_options() {
        let opts = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            bridge_of(Some(&opts(&[
                ("com.docker.network.bridge.default_bridge", "true"),
                (BRIDGE_NAME_OPTION, "br-ecs"),
            ]))),
            DefaultBridge::Named("br-ecs".into())
        );
        assert_eq!(
            bridge_of(Some(&opts(&[(BRIDGE_NAME_OPTION, " ")]))),
            DefaultBridge::Named("docker0".into())
        );
        assert_eq!(bridge_of(None), DefaultBridge::Named("docker0".into()));
    }
    use crate::{LogConfig, Mount};
    use std::collections::BTreeMap;

    #[test]
    fn endpoints() {
        let d = DockerRuntime::connect(None).unwrap();
        assert_eq!(d.endpoint(), DEFAULT_ENDPOINT);
        assert_eq!(d.socket, PathBuf::from("/var/run/docker.sock"));
        let d = DockerRuntime::connect(Some("")).unwrap();
        assert_eq!(d.endpoint(), DEFAULT_ENDPOINT);
        let d = DockerRuntime::connect(Some("unix:///run/x/docker.sock")).unwrap();
        assert_eq!(d.socket, PathBuf::from("/run/x/docker.sock"));
        for bad in [
            "tcp://127.0.0.1:2375",
            "unix://",
            "/var/run/docker.sock",
            "ssh://h",
        ] {
            let err = DockerRuntime::connect(Some(bad)).unwrap_err();
            assert!(
                matches!(&err, RuntimeError::Connect { endpoint, .. } if endpoint == bad),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn create_body_maps_every_field() {
        let spec = AgentSpec {
            image: "img:1".into(),
            name: "n".into(),
            env: vec![("A".into(), "1".into()), ("B".into(), "x=y".into())],
            mounts: vec![Mount::rw("/a", "/b"), Mount::ro("/c", "/d")],
            labels: BTreeMap::from([("l".into(), "v".into())]),
            cap_add: vec!["NET_ADMIN".into()],
            network: NamespaceMode::Host,
            pid: NamespaceMode::Private,
            userns: NamespaceMode::Host,
            privileged: true,
            init: true,
            apparmor_profile: Some("prof".into()),
            log: LogConfig::default(),
        };
        let body = create_body(&spec).unwrap();
        assert_eq!(body.image.as_deref(), Some("img:1"));
        assert_eq!(body.env.unwrap(), vec!["A=1", "B=x=y"]);
        assert!(body.cmd.is_none() && body.entrypoint.is_none());
        let hc = body.host_config.unwrap();
        assert_eq!(hc.binds.unwrap(), vec!["/a:/b", "/c:/d:ro"]);
        assert_eq!(hc.network_mode.as_deref(), Some("host"));
        assert_eq!(hc.userns_mode.as_deref(), Some("host"));
        assert_eq!(hc.pid_mode, None);
        assert_eq!(hc.security_opt.unwrap(), vec!["apparmor:prof"]);
        assert!(hc.restart_policy.is_none());
        assert_eq!(hc.log_config.unwrap().typ.as_deref(), Some("json-file"));

        let mut colon = spec.clone();
        colon.mounts.push(Mount::rw("/x:y", "/z"));
        assert!(create_body(&colon).is_err());
    }

    /// `plan` shows the create request: secret env values and log options are redacted.
    #[tokio::test]
    async fn describe_redacts_env_and_log_options() {
        let mut spec = AgentSpec::new(
            "img:1",
            "n",
            &[("ECS_ENGINE_AUTH_DATA", "env-secret"), ("A", "1")],
        );
        spec.log = LogConfig {
            driver: "splunk".into(),
            options: BTreeMap::from([
                ("splunk-token".into(), "opt-secret".into()),
                ("tag".into(), "ecs".into()),
            ]),
        };
        let d = DockerRuntime::connect(None).unwrap();
        let text = d.describe(&spec).await.to_string();
        assert!(
            !text.contains("env-secret") && !text.contains("opt-secret"),
            "{text}"
        );
        assert!(text.contains(r#""splunk-token":"<redacted>""#), "{text}");
        assert!(
            text.contains(r#""tag":"ecs""#) && text.contains("A=1"),
            "{text}"
        );
    }

    #[test]
    fn api_versions_parse() {
        let v = parse_api_version("1.41").unwrap();
        assert_eq!((v.major_version, v.minor_version), (1, 41));
        assert!(parse_api_version("141").is_none());
        assert!(parse_api_version("1.x").is_none());
    }

    #[test]
    fn the_default_endpoint_is_the_default_socket() {
        assert_eq!(socket_of(DEFAULT_ENDPOINT), Some(DEFAULT_SOCKET.into()));
    }

    #[test]
    fn docker_host_values() {
        assert_eq!(
            socket_of(" unix:///run/d.sock "),
            Some("/run/d.sock".into())
        );
        for none in [
            "",
            "unix://",
            "unix:///",
            "unix://docker.sock",
            "tcp://127.0.0.1:2375",
            "/var/run/docker.sock",
            "ssh://h",
        ] {
            assert_eq!(socket_of(none), None, "{none}");
        }
    }
}
