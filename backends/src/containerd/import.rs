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

use super::content::{content, content_exists, set_labels, write_small, write_stream};
use super::images::{put_image, to_proto};
use super::lease::{unique, Lease};
use super::unpack::unpack;
use super::ContainerdRuntime;
use crate::archive::{
    digest_from_path, host_arch, is_index, layer_media_type, pick_platform, read_tar, Archive,
    ConfigFile, DockerManifestEntry, Event, JsonDescriptor, JsonIndex, JsonManifest, MT_LAYER_TAR,
    MT_OCI_CONFIG, MT_OCI_MANIFEST,
};
use crate::reference::{familiar, normalize};
use crate::{Result, RuntimeError};
use containerd_client::tonic::{Code, Status};
use containerd_client::types::Descriptor;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;
use tokio::sync::mpsc;

const RT: &str = "containerd";

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

/// One image of the tarball, verified and stored, ready for unpacking and naming.
struct Prepared {
    names: Vec<String>,
    target: Descriptor,
    config_digest: String,
    diff_ids: Vec<String>,
    layers: Vec<Descriptor>,
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
            target: to_proto(top),
            config_digest: manifest.config.digest.clone(),
            diff_ids: config.rootfs.diff_ids,
            layers: manifest.layers.iter().map(to_proto).collect(),
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
