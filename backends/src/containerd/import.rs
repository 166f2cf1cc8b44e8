//! Image import for containerd 1.6 without the Transfer service: `docker save` tarballs and OCI
//! image-layout tarballs are streamed entry by entry into the content store, verified, unpacked
//! into snapshots and only then named in the image store.
//!
//! Order matters for "a corrupt tarball removes nothing that worked before": every blob is
//! written under a lease (so nothing new is garbage-collected mid-import and everything new is
//! collected if we fail), every digest is checked against what the tarball claims (file names of
//! OCI blobs and of Docker configs, the config's `diff_ids` for uncompressed Docker layers, the
//! applied digest for every unpacked layer), and image records are created or moved only after
//! all of that succeeded. Existing content, snapshots and records are never deleted here.
//!
//! `docker save` has no manifest blob, so one is synthesised (OCI manifest with GC labels to the
//! config and layers); the result is deterministic, so re-importing the same tarball changes
//! nothing.

use super::oci::ImageConfig;
use super::ContainerdRuntime;
use crate::{Result, RuntimeError};
use containerd_client::services::v1::Info as ContentInfo;
use containerd_client::services::v1::{
    content_client::ContentClient, diff_client::DiffClient, images_client::ImagesClient,
    leases_client::LeasesClient, snapshots::snapshots_client::SnapshotsClient,
    snapshots::CommitSnapshotRequest, snapshots::PrepareSnapshotRequest,
    snapshots::RemoveSnapshotRequest, snapshots::StatSnapshotRequest, ApplyRequest,
    CreateImageRequest, CreateRequest as CreateLeaseRequest, DeleteRequest as DeleteLeaseRequest,
    GetImageRequest, Image, InfoRequest, ReadContentRequest, UpdateImageRequest, UpdateRequest,
    WriteAction, WriteContentRequest,
};
use containerd_client::tonic::{transport::Channel, Code, Status};
use containerd_client::types::Descriptor;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Component, Path};
use std::time::Duration;
use tokio::sync::mpsc;

const RT: &str = "containerd";
const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MT_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Blobs up to this size are also kept in memory (configs, manifests, indexes).
const SMALL: u64 = 4 * 1024 * 1024;
const CHUNK: usize = 1024 * 1024;

// ---------------------------------------------------------------- references and digests

/// Docker's normalisation: `amazon/amazon-ecs-agent` → `docker.io/amazon/amazon-ecs-agent:latest`,
/// `busybox` → `docker.io/library/busybox:latest`; references with a registry stay as they are.
pub fn normalize(reference: &str) -> String {
    let (name, suffix) = match reference.split_once('@') {
        Some((n, d)) => (n.to_string(), format!("@{d}")),
        None => match reference.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n.to_string(), format!(":{t}")),
            _ => (reference.to_string(), ":latest".to_string()),
        },
    };
    let first = name.split('/').next().unwrap_or_default();
    let has_domain =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let full = if has_domain {
        name
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    };
    format!("{full}{suffix}")
}

/// The short form Docker shows: `docker.io/library/busybox:latest` → `busybox:latest`,
/// `docker.io/amazon/x:latest` → `amazon/x:latest`.
pub fn familiar(full: &str) -> String {
    match full.strip_prefix("docker.io/") {
        Some(rest) => rest.strip_prefix("library/").unwrap_or(rest).to_string(),
        None => full.to_string(),
    }
}

fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The snapshot chain IDs of a layer stack (OCI image spec: `ChainID`).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => format!("sha256:{}", sha256_hex(format!("{prev} {d}").as_bytes())),
        };
        out.push(next);
    }
    out
}

fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{}-{nanos}", std::process::id())
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

// ---------------------------------------------------------------- content-store helpers

/// A containerd lease: resources created under it survive GC until it is deleted. It also
/// expires by itself, so a crashed import leaves nothing behind for long.
pub struct Lease {
    pub id: String,
}

impl Lease {
    pub async fn create(rt: &ContainerdRuntime, ttl: Duration) -> Result<Lease> {
        let expire = prost_types::Timestamp::from(std::time::SystemTime::now() + ttl).to_string();
        let lease = LeasesClient::new(rt.channel().await?)
            .create(rt.req(CreateLeaseRequest {
                id: format!("ecs-init-{}", unique()),
                labels: HashMap::from([("containerd.io/gc.expire".to_string(), expire)]),
            }))
            .await
            .map_err(|s| rt.err("create lease", s))?
            .into_inner()
            .lease
            .ok_or_else(|| RuntimeError::daemon(RT, "create lease", "no lease returned"))?;
        Ok(Lease { id: lease.id })
    }

    /// Best effort: an undeleted lease expires on its own.
    pub async fn delete(self, rt: &ContainerdRuntime) {
        let result = async {
            LeasesClient::new(rt.channel().await?)
                .delete(rt.req(DeleteLeaseRequest {
                    id: self.id.clone(),
                    sync: false,
                }))
                .await
                .map_err(|s| rt.err("delete lease", s))
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(lease = %self.id, error = %e, "could not delete lease; it expires by itself");
        }
    }
}

async fn content(rt: &ContainerdRuntime) -> Result<ContentClient<Channel>> {
    Ok(ContentClient::new(rt.channel().await?))
}

async fn content_exists(rt: &ContainerdRuntime, digest: &str) -> Result<bool> {
    match content(rt)
        .await?
        .info(rt.req(InfoRequest {
            digest: digest.into(),
        }))
        .await
    {
        Ok(_) => Ok(true),
        Err(s) if s.code() == Code::NotFound => Ok(false),
        Err(s) => Err(rt.err(format!("content info {digest}"), s)),
    }
}

/// Reads a (small) blob from the content store.
pub async fn read_blob(rt: &ContainerdRuntime, digest: &str) -> Result<Vec<u8>> {
    let mut stream = content(rt)
        .await?
        .read(rt.req(ReadContentRequest {
            digest: digest.into(),
            offset: 0,
            size: 0,
        }))
        .await
        .map_err(|s| rt.err(format!("read {digest}"), s))?
        .into_inner();
    let mut out = Vec::new();
    while let Some(msg) = stream
        .message()
        .await
        .map_err(|s| rt.err(format!("read {digest}"), s))?
    {
        out.extend_from_slice(&msg.data);
        if out.len() as u64 > SMALL * 4 {
            return Err(RuntimeError::daemon(
                RT,
                format!("read {digest}"),
                "blob too large",
            ));
        }
    }
    if format!("sha256:{}", sha256_hex(&out)) != digest {
        return Err(RuntimeError::daemon(
            RT,
            format!("read {digest}"),
            "content does not match its digest",
        ));
    }
    Ok(out)
}

/// Writes a small in-memory blob in one committing message; existing content is fine.
async fn write_small(
    rt: &ContainerdRuntime,
    lease: &Lease,
    data: Vec<u8>,
    labels: HashMap<String, String>,
) -> Result<String> {
    let digest = format!("sha256:{}", sha256_hex(&data));
    let msg = WriteContentRequest {
        action: WriteAction::Commit as i32,
        r#ref: format!("ecs-init-{}", unique()),
        total: data.len() as i64,
        expected: digest.clone(),
        offset: 0,
        data,
        labels: labels.clone(),
    };
    let stream = futures_util::stream::iter([msg]);
    let result = async {
        let mut resp = content(rt)
            .await?
            .write(rt.leased(stream, &lease.id))
            .await
            .map_err(|s| rt.err("write blob", s))?
            .into_inner();
        while resp
            .message()
            .await
            .map_err(|s| rt.err("write blob", s))?
            .is_some()
        {}
        Ok::<_, RuntimeError>(())
    }
    .await;
    match result {
        Ok(()) => {}
        Err(RuntimeError::Daemon { message, .. }) if message.starts_with("AlreadyExists") => {
            set_labels(rt, &digest, labels).await?;
        }
        Err(e) => return Err(e),
    }
    Ok(digest)
}

/// Adds labels (GC references) to existing content without touching its other labels.
async fn set_labels(
    rt: &ContainerdRuntime,
    digest: &str,
    labels: HashMap<String, String>,
) -> Result<()> {
    if labels.is_empty() {
        return Ok(());
    }
    let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
    content(rt)
        .await?
        .update(rt.req(UpdateRequest {
            info: Some(ContentInfo {
                digest: digest.into(),
                labels,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths }),
        }))
        .await
        .map_err(|s| rt.err(format!("label {digest}"), s))?;
    Ok(())
}

// ---------------------------------------------------------------- image records

async fn images(rt: &ContainerdRuntime) -> Result<ImagesClient<Channel>> {
    Ok(ImagesClient::new(rt.channel().await?))
}

async fn get_image(rt: &ContainerdRuntime, name: &str) -> Result<Option<Image>> {
    match images(rt)
        .await?
        .get(rt.req(GetImageRequest { name: name.into() }))
        .await
    {
        Ok(r) => Ok(r.into_inner().image),
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(rt.err(format!("get image {name}"), s)),
    }
}

/// Is an image of this name, or of its normalised form, recorded?
pub async fn image_exists(rt: &ContainerdRuntime, reference: &str) -> Result<bool> {
    Ok(find_image(rt, reference).await?.is_some())
}

async fn find_image(rt: &ContainerdRuntime, reference: &str) -> Result<Option<Image>> {
    if let Some(i) = get_image(rt, reference).await? {
        return Ok(Some(i));
    }
    let full = normalize(reference);
    if full != reference {
        return get_image(rt, &full).await;
    }
    Ok(None)
}

/// Creates or moves the record `name` to `target`; an identical record is left alone.
async fn put_image(rt: &ContainerdRuntime, name: &str, target: &Descriptor) -> Result<()> {
    let image = Image {
        name: name.into(),
        target: Some(target.clone()),
        ..Default::default()
    };
    match get_image(rt, name).await? {
        Some(existing)
            if existing.target.as_ref().map(|t| (&t.digest, &t.media_type))
                == Some((&target.digest, &target.media_type)) =>
        {
            tracing::debug!(name, "image record already up to date");
            Ok(())
        }
        Some(_) => {
            images(rt)
                .await?
                .update(rt.req(UpdateImageRequest {
                    image: Some(image),
                    update_mask: None,
                    source_date_epoch: None,
                }))
                .await
                .map_err(|s| rt.err(format!("update image {name}"), s))?;
            tracing::info!(name, digest = %target.digest, "image record moved");
            Ok(())
        }
        None => {
            images(rt)
                .await?
                .create(rt.req(CreateImageRequest {
                    image: Some(image),
                    source_date_epoch: None,
                }))
                .await
                .map_err(|s| rt.err(format!("create image {name}"), s))?;
            tracing::info!(name, digest = %target.digest, "image record created");
            Ok(())
        }
    }
}

// ---------------------------------------------------------------- manifests and configs

#[derive(Debug, Deserialize, Clone)]
struct JsonDescriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default)]
    annotations: Option<HashMap<String, String>>,
    #[serde(default)]
    platform: Option<JsonPlatform>,
}

#[derive(Debug, Deserialize, Clone)]
struct JsonPlatform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
}

impl JsonDescriptor {
    fn to_proto(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
            annotations: HashMap::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct JsonIndex {
    manifests: Vec<JsonDescriptor>,
}

#[derive(Debug, Deserialize)]
struct JsonManifest {
    config: JsonDescriptor,
    layers: Vec<JsonDescriptor>,
}

#[derive(Debug, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    config: Option<ImageConfig>,
    rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

/// An image resolved to what running it needs.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The record's name.
    pub name: String,
    pub config: ImageConfig,
    pub config_digest: String,
    pub diff_ids: Vec<String>,
    pub layers: Vec<Descriptor>,
}

fn is_index(media_type: &str) -> bool {
    media_type == MT_OCI_INDEX || media_type == MT_DOCKER_LIST
}

/// The manifest for this host's platform in an index.
fn pick_platform(index: &JsonIndex) -> Option<&JsonDescriptor> {
    index
        .manifests
        .iter()
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == host_arch())
        })
        .or_else(|| {
            // An index without platforms (single-image OCI layouts) has one manifest.
            (index.manifests.len() == 1 && index.manifests[0].platform.is_none())
                .then(|| &index.manifests[0])
        })
}

/// Looks the image up (either name form) and reads its manifest and config from the store.
pub async fn resolve_image(rt: &ContainerdRuntime, reference: &str) -> Result<ResolvedImage> {
    let image = find_image(rt, reference).await?.ok_or_else(|| {
        RuntimeError::daemon(
            RT,
            format!("resolve image {reference}"),
            "image not present",
        )
    })?;
    let bad = |m: String| RuntimeError::daemon(RT, format!("resolve image {reference}"), m);
    let mut target = image
        .target
        .clone()
        .ok_or_else(|| bad("image record has no target".into()))?;
    for _ in 0..4 {
        if !is_index(&target.media_type) {
            break;
        }
        let index: JsonIndex = serde_json::from_slice(&read_blob(rt, &target.digest).await?)
            .map_err(|e| bad(format!("bad index: {e}")))?;
        target = pick_platform(&index)
            .ok_or_else(|| bad(format!("no manifest for linux/{}", host_arch())))?
            .to_proto();
    }
    let manifest: JsonManifest = serde_json::from_slice(&read_blob(rt, &target.digest).await?)
        .map_err(|e| bad(format!("bad manifest: {e}")))?;
    let config: ConfigFile = serde_json::from_slice(&read_blob(rt, &manifest.config.digest).await?)
        .map_err(|e| bad(format!("bad config: {e}")))?;
    Ok(ResolvedImage {
        name: image.name,
        config: config.config.unwrap_or_default(),
        config_digest: manifest.config.digest.clone(),
        diff_ids: config.rootfs.diff_ids,
        layers: manifest
            .layers
            .iter()
            .map(JsonDescriptor::to_proto)
            .collect(),
    })
}

// ---------------------------------------------------------------- unpacking

async fn snapshots(rt: &ContainerdRuntime) -> Result<SnapshotsClient<Channel>> {
    Ok(SnapshotsClient::new(rt.channel().await?))
}

async fn snapshot_exists(rt: &ContainerdRuntime, key: &str) -> Result<bool> {
    match snapshots(rt)
        .await?
        .stat(rt.req(StatSnapshotRequest {
            snapshotter: rt.options().snapshotter.clone(),
            key: key.into(),
        }))
        .await
    {
        Ok(_) => Ok(true),
        Err(s) if s.code() == Code::NotFound => Ok(false),
        Err(s) => Err(rt.err(format!("stat snapshot {key}"), s)),
    }
}

async fn remove_snapshot_quietly(rt: &ContainerdRuntime, key: &str) {
    if let Ok(mut c) = snapshots(rt).await {
        let _ = c
            .remove(rt.req(RemoveSnapshotRequest {
                snapshotter: rt.options().snapshotter.clone(),
                key: key.into(),
            }))
            .await;
    }
}

/// Unpacks the layers into committed snapshots named by chain ID (skipping existing ones) and
/// labels the config so GC keeps the top snapshot while the image exists. Returns the top
/// chain ID. `bad` turns a content problem (bad layer) into the caller's error.
async fn unpack(
    rt: &ContainerdRuntime,
    lease: &Lease,
    layers: &[Descriptor],
    diff_ids: &[String],
    config_digest: &str,
    bad: &(dyn Fn(String) -> RuntimeError + Sync),
) -> Result<String> {
    if layers.len() != diff_ids.len() {
        return Err(bad(format!(
            "{} layers but {} diff_ids in the config",
            layers.len(),
            diff_ids.len()
        )));
    }
    let chains = chain_ids(diff_ids);
    let snapshotter = rt.options().snapshotter.clone();
    for (i, layer) in layers.iter().enumerate() {
        if snapshot_exists(rt, &chains[i]).await? {
            continue;
        }
        let key = format!("ecs-init-extract-{}-{i}", unique());
        let parent = if i == 0 {
            String::new()
        } else {
            chains[i - 1].clone()
        };
        let mounts = snapshots(rt)
            .await?
            .prepare(rt.leased(
                PrepareSnapshotRequest {
                    snapshotter: snapshotter.clone(),
                    key: key.clone(),
                    parent,
                    labels: HashMap::new(),
                },
                &lease.id,
            ))
            .await
            .map_err(|s| rt.err(format!("prepare snapshot for layer {i}"), s))?
            .into_inner()
            .mounts;
        let applied = DiffClient::new(rt.channel().await?)
            .apply(rt.leased(
                ApplyRequest {
                    diff: Some(layer.clone()),
                    mounts,
                    payloads: HashMap::new(),
                    sync_fs: false,
                },
                &lease.id,
            ))
            .await;
        let applied = match applied {
            Ok(r) => r.into_inner().applied,
            Err(s) => {
                remove_snapshot_quietly(rt, &key).await;
                return Err(if s.code() == Code::Unavailable {
                    rt.err("apply layer", s)
                } else {
                    bad(format!(
                        "layer {} cannot be applied: {}",
                        layer.digest,
                        s.message()
                    ))
                });
            }
        };
        let applied_digest = applied.map(|d| d.digest).unwrap_or_default();
        if applied_digest != diff_ids[i] {
            remove_snapshot_quietly(rt, &key).await;
            return Err(bad(format!(
                "layer {} unpacks to {applied_digest}, but the config says {}",
                layer.digest, diff_ids[i]
            )));
        }
        match snapshots(rt)
            .await?
            .commit(rt.leased(
                CommitSnapshotRequest {
                    snapshotter: snapshotter.clone(),
                    name: chains[i].clone(),
                    key: key.clone(),
                    labels: HashMap::new(),
                },
                &lease.id,
            ))
            .await
        {
            Ok(_) => {}
            // Someone else committed the same layer meanwhile: theirs is identical.
            Err(s) if s.code() == Code::AlreadyExists => remove_snapshot_quietly(rt, &key).await,
            Err(s) => {
                remove_snapshot_quietly(rt, &key).await;
                return Err(rt.err(format!("commit snapshot {}", chains[i]), s));
            }
        }
        tracing::debug!(layer = %layer.digest, chain = %chains[i], "layer unpacked");
    }
    let top = chains.last().cloned().unwrap_or_default();
    if !top.is_empty() {
        set_labels(
            rt,
            config_digest,
            HashMap::from([(
                format!("containerd.io/gc.ref.snapshot.{snapshotter}"),
                top.clone(),
            )]),
        )
        .await?;
    }
    Ok(top)
}

/// Makes sure the image's layers are unpacked (they can be missing if the snapshotter was
/// cleaned); returns the top chain ID.
pub async fn ensure_unpacked(rt: &ContainerdRuntime, image: &ResolvedImage) -> Result<String> {
    let top = chain_ids(&image.diff_ids)
        .last()
        .cloned()
        .unwrap_or_default();
    if top.is_empty() || snapshot_exists(rt, &top).await? {
        return Ok(top);
    }
    tracing::info!(image = %image.name, "unpacking image layers");
    let lease = Lease::create(rt, Duration::from_secs(3600)).await?;
    let name = image.name.clone();
    let bad = move |m: String| RuntimeError::daemon(RT, format!("unpack {name}"), m);
    let result = unpack(
        rt,
        &lease,
        &image.layers,
        &image.diff_ids,
        &image.config_digest,
        &bad,
    )
    .await;
    lease.delete(rt).await;
    result
}

// ---------------------------------------------------------------- reading the tarball

enum Part {
    Data(Vec<u8>),
    Done(String),
}

enum Event {
    Meta {
        path: String,
        data: Vec<u8>,
    },
    Blob {
        path: String,
        size: u64,
        parts: mpsc::Receiver<Part>,
    },
    BlobDone {
        path: String,
        info: BlobInfo,
    },
    Link {
        path: String,
        target: String,
    },
}

#[derive(Debug, Clone)]
struct BlobInfo {
    digest: String,
    size: u64,
    /// First bytes, for compression sniffing.
    head: Vec<u8>,
    small: Option<Vec<u8>>,
}

const META_FILES: &[&str] = &["manifest.json", "index.json", "repositories", "oci-layout"];

/// Archive-relative path without `./`, with `..` resolved.
fn clean(path: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    parts.join("/")
}

fn is_blob_path(p: &str) -> bool {
    p.starts_with("blobs/")
        || p.ends_with("/layer.tar")
        || (!p.contains('/') && p.ends_with(".json"))
}

/// Runs on a blocking thread: walks the tar once, hashing every blob while streaming it out.
fn read_tar(path: &Path, tx: mpsc::Sender<Event>) -> std::result::Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(CHUNK, file));
    let mut seen = 0usize;
    for entry in archive
        .entries()
        .map_err(|e| format!("not a tar archive: {e}"))?
    {
        let mut entry = entry.map_err(|e| format!("corrupt tar entry: {e}"))?;
        seen += 1;
        let p = clean(&entry.path().map_err(|e| format!("bad entry path: {e}"))?);
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let Some(link) = entry.link_name().ok().flatten() else {
                continue;
            };
            let target = if kind.is_symlink() {
                clean(&Path::new(&p).parent().unwrap_or(Path::new("")).join(link))
            } else {
                clean(&link)
            };
            if tx.blocking_send(Event::Link { path: p, target }).is_err() {
                return Ok(());
            }
            continue;
        }
        if !(kind.is_file() || kind == tar::EntryType::Continuous) {
            continue;
        }
        let size = entry.size();
        if META_FILES.contains(&p.as_str()) {
            if size > SMALL {
                return Err(format!("{p} is implausibly large ({size} bytes)"));
            }
            let mut data = Vec::with_capacity(size as usize);
            entry
                .read_to_end(&mut data)
                .map_err(|e| format!("cannot read {p}: {e}"))?;
            if tx.blocking_send(Event::Meta { path: p, data }).is_err() {
                return Ok(());
            }
            continue;
        }
        if !is_blob_path(&p) {
            continue;
        }
        let (ptx, prx) = mpsc::channel(4);
        if tx
            .blocking_send(Event::Blob {
                path: p.clone(),
                size,
                parts: prx,
            })
            .is_err()
        {
            return Ok(());
        }
        let mut hasher = Sha256::new();
        let mut head = Vec::new();
        let mut small = (size <= SMALL).then(Vec::new);
        let mut sending = true;
        let mut read = 0u64;
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = entry
                .read(&mut buf)
                .map_err(|e| format!("cannot read {p}: {e}"))?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            read += n as u64;
            hasher.update(&buf);
            if head.len() < 8 {
                head.extend(buf.iter().take(8 - head.len()));
            }
            if let Some(s) = small.as_mut() {
                s.extend_from_slice(&buf);
            }
            // The consumer stops listening when the blob is already stored; keep hashing.
            if sending && ptx.blocking_send(Part::Data(buf)).is_err() {
                sending = false;
            }
        }
        if read != size {
            return Err(format!("{p} is truncated ({read} of {size} bytes)"));
        }
        let digest = format!("sha256:{}", hex(&hasher.finalize()));
        if sending {
            let _ = ptx.blocking_send(Part::Done(digest.clone()));
        }
        drop(ptx);
        let info = BlobInfo {
            digest,
            size,
            head,
            small,
        };
        if tx.blocking_send(Event::BlobDone { path: p, info }).is_err() {
            return Ok(());
        }
    }
    if seen == 0 {
        return Err("empty archive".into());
    }
    Ok(())
}

/// Streams one blob into the content store as it is read; commits with the digest the reader
/// computed, so containerd verifies what it stored.
async fn write_stream(
    mut client: ContentClient<Channel>,
    request_meta: containerd_client::tonic::metadata::MetadataMap,
    reference: String,
    total: i64,
    parts: mpsc::Receiver<Part>,
) -> std::result::Result<(), Status> {
    let stream =
        futures_util::stream::unfold((parts, 0i64, false), move |(mut rx, offset, done)| {
            let reference = reference.clone();
            async move {
                if done {
                    return None;
                }
                match rx.recv().await? {
                    Part::Data(data) => {
                        let len = data.len() as i64;
                        let msg = WriteContentRequest {
                            action: WriteAction::Write as i32,
                            r#ref: reference,
                            total,
                            offset,
                            data,
                            ..Default::default()
                        };
                        Some((msg, (rx, offset + len, false)))
                    }
                    Part::Done(digest) => {
                        let msg = WriteContentRequest {
                            action: WriteAction::Commit as i32,
                            r#ref: reference,
                            total,
                            offset,
                            expected: digest,
                            ..Default::default()
                        };
                        Some((msg, (rx, offset, true)))
                    }
                }
            }
        });
    let mut req = containerd_client::tonic::Request::new(stream);
    *req.metadata_mut() = request_meta;
    let mut resp = client.write(req).await?.into_inner();
    while resp.message().await?.is_some() {}
    Ok(())
}

/// The hex digest a blob's path promises (`blobs/sha256/<hex>`, `<hex>.json`), if any.
fn digest_from_path(p: &str) -> Option<String> {
    let hexpart = p
        .strip_prefix("blobs/sha256/")
        .or_else(|| p.strip_suffix(".json").filter(|s| !s.contains('/')))?;
    (hexpart.len() == 64 && hexpart.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("sha256:{hexpart}"))
}

struct Archive {
    meta: HashMap<String, Vec<u8>>,
    blobs: HashMap<String, BlobInfo>,
    links: HashMap<String, String>,
}

impl Archive {
    fn blob(&self, path: &str) -> Option<&BlobInfo> {
        let mut p = clean(Path::new(path));
        for _ in 0..16 {
            if let Some(b) = self.blobs.get(&p) {
                return Some(b);
            }
            p = self.links.get(&p)?.clone();
        }
        None
    }

    fn by_digest(&self, digest: &str) -> Option<&BlobInfo> {
        let hexpart = digest.strip_prefix("sha256:")?;
        self.blob(&format!("blobs/sha256/{hexpart}"))
    }
}

/// Streams the tarball into the content store under `lease`.
async fn stream_tarball(rt: &ContainerdRuntime, tarball: &Path, lease: &Lease) -> Result<Archive> {
    let bad = |reason: String| RuntimeError::BadTarball {
        path: tarball.to_path_buf(),
        reason,
    };
    let (tx, mut rx) = mpsc::channel::<Event>(4);
    let path = tarball.to_path_buf();
    let reader = tokio::task::spawn_blocking(move || read_tar(&path, tx));
    let client = content(rt).await?;
    let meta_template = rt.leased((), &lease.id).into_parts().0;
    let mut archive = Archive {
        meta: HashMap::new(),
        blobs: HashMap::new(),
        links: HashMap::new(),
    };
    let mut pending: Option<tokio::task::JoinHandle<std::result::Result<(), Status>>> = None;
    let mut failure: Option<RuntimeError> = None;
    let mut n = 0usize;
    while let Some(event) = rx.recv().await {
        match event {
            Event::Meta { path, data } => {
                archive.meta.insert(path, data);
            }
            Event::Link { path, target } => {
                archive.links.insert(path, target);
            }
            Event::Blob { path, size, parts } => {
                let known = digest_from_path(&path);
                let stored = match &known {
                    Some(d) if failure.is_none() => content_exists(rt, d).await?,
                    _ => false,
                };
                if stored || failure.is_some() {
                    drop(parts);
                    pending = None;
                } else {
                    n += 1;
                    let reference = format!("ecs-init-import-{}-{n}", unique());
                    pending = Some(tokio::spawn(write_stream(
                        client.clone(),
                        meta_template.clone(),
                        reference,
                        size as i64,
                        parts,
                    )));
                }
            }
            Event::BlobDone { path, info } => {
                if let Some(task) = pending.take() {
                    match task.await {
                        Ok(Ok(())) => {}
                        Ok(Err(s)) if s.code() == Code::AlreadyExists => {}
                        Ok(Err(s)) => {
                            failure = failure.or(Some(rt.err(format!("store {path}"), s)))
                        }
                        Err(e) => {
                            failure = failure.or(Some(RuntimeError::daemon(
                                RT,
                                format!("store {path}"),
                                e,
                            )))
                        }
                    }
                }
                if let Some(expected) = digest_from_path(&path) {
                    if expected != info.digest {
                        failure = failure.or(Some(bad(format!(
                            "{path} has digest {}, its name says {expected}",
                            info.digest
                        ))));
                    }
                }
                archive.blobs.insert(path, info);
            }
        }
    }
    let read = reader
        .await
        .map_err(|e| RuntimeError::io("read tarball", std::io::Error::other(e)))?;
    read.map_err(bad)?;
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(archive)
}

// ---------------------------------------------------------------- the two tarball formats

/// One image of the tarball, verified and stored, ready for unpacking and naming.
struct Prepared {
    names: Vec<String>,
    target: Descriptor,
    config_digest: String,
    diff_ids: Vec<String>,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

fn layer_media_type(head: &[u8]) -> String {
    if head.starts_with(&[0x1f, 0x8b]) {
        format!("{MT_LAYER_TAR}+gzip")
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        format!("{MT_LAYER_TAR}+zstd")
    } else {
        MT_LAYER_TAR.to_string()
    }
}

async fn prepare_docker(
    rt: &ContainerdRuntime,
    lease: &Lease,
    archive: &Archive,
    bad: &(dyn Fn(String) -> RuntimeError + Sync),
) -> Result<Vec<Prepared>> {
    let entries: Vec<DockerManifestEntry> = serde_json::from_slice(&archive.meta["manifest.json"])
        .map_err(|e| bad(format!("manifest.json: {e}")))?;
    let mut out = Vec::new();
    for entry in entries {
        let config = archive
            .blob(&entry.config)
            .ok_or_else(|| bad(format!("config {} missing", entry.config)))?;
        let config_bytes = config
            .small
            .as_ref()
            .ok_or_else(|| bad(format!("config {} too large", entry.config)))?;
        let parsed: ConfigFile = serde_json::from_slice(config_bytes)
            .map_err(|e| bad(format!("config {}: {e}", entry.config)))?;
        if parsed.rootfs.diff_ids.len() != entry.layers.len() {
            return Err(bad(format!(
                "{} lists {} layers, its config {}",
                entry.config,
                entry.layers.len(),
                parsed.rootfs.diff_ids.len()
            )));
        }
        let mut layers = Vec::new();
        for (path, diff_id) in entry.layers.iter().zip(&parsed.rootfs.diff_ids) {
            let layer = archive
                .blob(path)
                .ok_or_else(|| bad(format!("layer {path} missing")))?;
            let media_type = layer_media_type(&layer.head);
            // Uncompressed layers must hash to their diff_id; compressed ones are checked
            // when unpacked.
            if media_type == MT_LAYER_TAR && &layer.digest != diff_id {
                return Err(bad(format!(
                    "layer {path} has digest {}, the config says {diff_id}",
                    layer.digest
                )));
            }
            layers.push(Descriptor {
                media_type,
                digest: layer.digest.clone(),
                size: layer.size as i64,
                annotations: HashMap::new(),
            });
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MT_OCI_MANIFEST,
            "config": {"mediaType": MT_OCI_CONFIG, "digest": config.digest, "size": config.size},
            "layers": layers.iter().map(|l| json!({"mediaType": l.media_type, "digest": l.digest, "size": l.size})).collect::<Vec<_>>(),
        });
        let manifest_bytes = serde_json::to_vec(&manifest).expect("JSON value serialises");
        let mut labels = HashMap::from([(
            "containerd.io/gc.ref.content.config".to_string(),
            config.digest.clone(),
        )]);
        for (i, l) in layers.iter().enumerate() {
            labels.insert(
                format!("containerd.io/gc.ref.content.l.{i}"),
                l.digest.clone(),
            );
        }
        let size = manifest_bytes.len() as i64;
        let digest = write_small(rt, lease, manifest_bytes, labels).await?;
        let mut names = Vec::new();
        for tag in entry.repo_tags.unwrap_or_default() {
            for n in [tag.clone(), normalize(&tag)] {
                if !names.contains(&n) {
                    names.push(n);
                }
            }
        }
        out.push(Prepared {
            names,
            target: Descriptor {
                media_type: MT_OCI_MANIFEST.into(),
                digest,
                size,
                annotations: HashMap::new(),
            },
            config_digest: config.digest.clone(),
            diff_ids: parsed.rootfs.diff_ids,
            layers,
        });
    }
    Ok(out)
}

async fn prepare_oci(
    rt: &ContainerdRuntime,
    archive: &Archive,
    bad: &(dyn Fn(String) -> RuntimeError + Sync),
) -> Result<Vec<Prepared>> {
    let index: JsonIndex = serde_json::from_slice(&archive.meta["index.json"])
        .map_err(|e| bad(format!("index.json: {e}")))?;
    let small = |d: &JsonDescriptor| -> Result<&Vec<u8>> {
        let b = archive
            .by_digest(&d.digest)
            .ok_or_else(|| bad(format!("blob {} missing", d.digest)))?;
        if b.size as i64 != d.size {
            return Err(bad(format!(
                "blob {} has size {}, expected {}",
                d.digest, b.size, d.size
            )));
        }
        b.small
            .as_ref()
            .ok_or_else(|| bad(format!("blob {} too large", d.digest)))
    };
    let mut out = Vec::new();
    for top in &index.manifests {
        let annotations = top.annotations.clone().unwrap_or_default();
        let name = annotations
            .get("io.containerd.image.name")
            .or_else(|| annotations.get("org.opencontainers.image.ref.name"))
            .cloned();
        let Some(name) = name.filter(|n| n.contains(':') || n.contains('/')) else {
            tracing::warn!(digest = %top.digest, "OCI index entry without a full image name; skipped");
            continue;
        };
        let mut manifest_desc = top.clone();
        for _ in 0..4 {
            if !is_index(&manifest_desc.media_type) {
                break;
            }
            let child: JsonIndex = serde_json::from_slice(small(&manifest_desc)?)
                .map_err(|e| bad(format!("index {}: {e}", manifest_desc.digest)))?;
            let labels: HashMap<String, String> = child
                .manifests
                .iter()
                .enumerate()
                .filter(|(_, m)| archive.by_digest(&m.digest).is_some())
                .map(|(i, m)| {
                    (
                        format!("containerd.io/gc.ref.content.m.{i}"),
                        m.digest.clone(),
                    )
                })
                .collect();
            set_labels(rt, &manifest_desc.digest, labels).await?;
            manifest_desc = pick_platform(&child)
                .ok_or_else(|| bad(format!("no manifest for linux/{}", host_arch())))?
                .clone();
        }
        let manifest: JsonManifest = serde_json::from_slice(small(&manifest_desc)?)
            .map_err(|e| bad(format!("manifest {}: {e}", manifest_desc.digest)))?;
        let config: ConfigFile = serde_json::from_slice(small(&manifest.config)?)
            .map_err(|e| bad(format!("config {}: {e}", manifest.config.digest)))?;
        let mut labels = HashMap::from([(
            "containerd.io/gc.ref.content.config".to_string(),
            manifest.config.digest.clone(),
        )]);
        for (i, l) in manifest.layers.iter().enumerate() {
            let blob = archive
                .by_digest(&l.digest)
                .ok_or_else(|| bad(format!("layer {} missing", l.digest)))?;
            if blob.size as i64 != l.size {
                return Err(bad(format!("layer {} has the wrong size", l.digest)));
            }
            labels.insert(
                format!("containerd.io/gc.ref.content.l.{i}"),
                l.digest.clone(),
            );
        }
        set_labels(rt, &manifest_desc.digest, labels).await?;
        let full = normalize(&name);
        let mut names = vec![familiar(&full)];
        if full != names[0] {
            names.push(full);
        }
        out.push(Prepared {
            names,
            target: top.to_proto(),
            config_digest: manifest.config.digest.clone(),
            diff_ids: config.rootfs.diff_ids,
            layers: manifest
                .layers
                .iter()
                .map(JsonDescriptor::to_proto)
                .collect(),
        });
    }
    Ok(out)
}

/// [`Runtime::load_image`](crate::Runtime::load_image) for containerd.
pub async fn load(rt: &ContainerdRuntime, tarball: &Path) -> Result<Vec<String>> {
    let started = std::time::Instant::now();
    let bad = |reason: String| RuntimeError::BadTarball {
        path: tarball.to_path_buf(),
        reason,
    };
    if !tarball.is_file() {
        return Err(bad("no such file".into()));
    }
    let lease = Lease::create(rt, Duration::from_secs(3600)).await?;
    let result = async {
        let archive = stream_tarball(rt, tarball, &lease).await?;
        // OCI layouts (also written by Docker 25+ `docker save`, next to manifest.json) carry
        // real manifests; prefer them when they name images.
        let oci = if archive.meta.contains_key("index.json") {
            prepare_oci(rt, &archive, &bad).await?
        } else {
            Vec::new()
        };
        let prepared = if !oci.is_empty() {
            oci
        } else if archive.meta.contains_key("manifest.json") {
            prepare_docker(rt, &lease, &archive, &bad).await?
        } else {
            return Err(bad("neither manifest.json nor index.json found".into()));
        };
        if prepared.iter().all(|p| p.names.is_empty()) {
            return Err(bad("the archive names no image".into()));
        }
        let mut unpacked: BTreeMap<String, String> = BTreeMap::new();
        for p in &prepared {
            if !unpacked.contains_key(&p.config_digest) {
                let top =
                    unpack(rt, &lease, &p.layers, &p.diff_ids, &p.config_digest, &bad).await?;
                unpacked.insert(p.config_digest.clone(), top);
            }
        }
        // Everything is stored and verified: only now do names move.
        let mut loaded = Vec::new();
        for p in &prepared {
            for name in &p.names {
                put_image(rt, name, &p.target).await?;
            }
            if let Some(first) = p.names.first() {
                loaded.push(first.clone());
            }
        }
        Ok(loaded)
    }
    .await;
    lease.delete(rt).await;
    match &result {
        Ok(names) => tracing::info!(tarball = %tarball.display(), images = ?names,
            elapsed_ms = started.elapsed().as_millis() as u64, "image tarball loaded"),
        Err(e) => {
            tracing::warn!(tarball = %tarball.display(), error = %e, "image tarball not loaded")
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_docker() {
        assert_eq!(
            normalize("amazon/amazon-ecs-agent:latest"),
            "docker.io/amazon/amazon-ecs-agent:latest"
        );
        assert_eq!(normalize("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(normalize("localhost:5000/x"), "localhost:5000/x:latest");
        assert_eq!(
            normalize("public.ecr.aws/ecs/amazon-ecs-agent:v1"),
            "public.ecr.aws/ecs/amazon-ecs-agent:v1"
        );
        assert_eq!(
            normalize("docker.io/amazon/amazon-ecs-agent:latest"),
            "docker.io/amazon/amazon-ecs-agent:latest"
        );
    }

    #[test]
    fn familiar_names() {
        assert_eq!(
            familiar("docker.io/amazon/amazon-ecs-agent:latest"),
            "amazon/amazon-ecs-agent:latest"
        );
        assert_eq!(
            familiar("docker.io/library/busybox:latest"),
            "busybox:latest"
        );
        assert_eq!(familiar("public.ecr.aws/x:1"), "public.ecr.aws/x:1");
    }

    #[test]
    fn chain_ids_follow_the_spec() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let c = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(c[0], a);
        assert_eq!(
            c[1],
            format!("sha256:{}", sha256_hex(format!("{a} {b}").as_bytes()))
        );
    }

    #[test]
    fn paths() {
        assert_eq!(clean(Path::new("./abc/../def/layer.tar")), "def/layer.tar");
        assert!(is_blob_path("abc/layer.tar"));
        assert!(is_blob_path("blobs/sha256/ab"));
        assert!(is_blob_path("ab.json"));
        assert!(!is_blob_path("abc/json"));
        let h = "0".repeat(64);
        assert_eq!(
            digest_from_path(&format!("{h}.json")),
            Some(format!("sha256:{h}"))
        );
        assert_eq!(digest_from_path("manifest.json"), None);
    }

    #[test]
    fn sniffs_compression() {
        assert_eq!(
            layer_media_type(&[0x1f, 0x8b, 8]),
            format!("{MT_LAYER_TAR}+gzip")
        );
        assert_eq!(layer_media_type(b"usta"), MT_LAYER_TAR);
    }
}
