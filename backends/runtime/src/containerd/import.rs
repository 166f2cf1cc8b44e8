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
use crate::reference::{familiar, normalize};
use crate::{Result, RuntimeError};
use containerd_client::tonic::{Code, Status};
use containerd_client::types::Descriptor;
use ecs_formats::archive::{self, Archive, Event, Image, Source, MT_OCI_CONFIG, MT_OCI_MANIFEST};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;
use tokio::sync::mpsc;

use super::RT;

type WriteTask = tokio::task::JoinHandle<std::result::Result<(), Status>>;

/// Streams the tarball into the content store under `lease` while [`archive::read`] verifies
/// it; returns what the archive holds.
async fn stream_tarball(rt: &ContainerdRuntime, tarball: &Path, lease: &Lease) -> Result<Archive> {
    let bad = |reason: String| RuntimeError::BadTarball {
        path: tarball.to_path_buf(),
        reason,
    };
    let (tx, mut rx) = mpsc::channel::<Event>(4);
    // Not following a symlink nor waiting on a FIFO planted in the agent-writable cache.
    let file = ecs_host::files::open_read(tarball).map_err(|e| bad(format!("cannot open: {e}")))?;
    let reader = tokio::task::spawn_blocking(move || {
        archive::read(
            std::io::BufReader::with_capacity(1024 * 1024, file),
            Some(&tx),
        )
    });
    let client = content(rt).await?;
    let meta_template = rt.leased((), &lease.id).into_parts().0;
    let mut pending: Option<WriteTask> = None;
    let mut failure: Option<RuntimeError> = None;
    let mut n = 0usize;
    while let Some(event) = rx.recv().await {
        match event {
            Event::Blob { path, size, parts } => {
                let stored = match archive::digest_from_path(&path) {
                    Some(d) if failure.is_none() => content_exists(rt, &d).await?,
                    _ => false,
                };
                pending = if stored || failure.is_some() {
                    None
                } else {
                    n += 1;
                    let reference = format!("ecs-init-import-{}-{n}", unique());
                    Some(tokio::spawn(write_stream(
                        client.clone(),
                        meta_template.clone(),
                        reference,
                        size as i64,
                        parts,
                    )))
                };
            }
            Event::BlobDone { path } => {
                if let Some(e) = finish_write(rt, pending.take(), &path).await {
                    failure = failure.or(Some(e));
                }
            }
        }
    }
    let read = reader
        .await
        .map_err(|e| RuntimeError::io("read tarball", std::io::Error::other(e)))?;
    let archive = read.map_err(bad)?;
    match failure {
        Some(e) => Err(e),
        None => Ok(archive),
    }
}

/// Wait for one blob's write; the error, if it failed (an existing blob is fine).
async fn finish_write(
    rt: &ContainerdRuntime,
    task: Option<WriteTask>,
    path: &str,
) -> Option<RuntimeError> {
    match task?.await {
        Ok(Ok(())) => None,
        Ok(Err(s)) if s.code() == Code::AlreadyExists => None,
        Ok(Err(s)) => Some(rt.err(format!("store {path}"), s)),
        Err(e) => Some(RuntimeError::daemon(RT, format!("store {path}"), e)),
    }
}

/// One image of the tarball, stored and labelled, ready for unpacking and naming.
struct Prepared {
    names: Vec<String>,
    target: Descriptor,
    image: Image,
}

fn descriptor(media_type: &str, digest: &str, size: u64) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest: digest.into(),
        size: size as i64,
        annotations: HashMap::new(),
    }
}

/// GC references from a manifest to its config and layers.
fn manifest_labels(image: &Image) -> HashMap<String, String> {
    let mut labels = HashMap::from([(
        "containerd.io/gc.ref.content.config".to_string(),
        image.config_digest.clone(),
    )]);
    for (i, l) in image.layers.iter().enumerate() {
        labels.insert(
            format!("containerd.io/gc.ref.content.l.{i}"),
            l.digest.clone(),
        );
    }
    labels
}

/// A `docker save` image: synthesise its OCI manifest (deterministic, so re-importing the same
/// tarball changes nothing) with GC labels; names are the tags in both forms.
async fn prepare_docker(rt: &ContainerdRuntime, lease: &Lease, image: Image) -> Result<Prepared> {
    let config_size = image.config_size();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST,
        "config": {"mediaType": MT_OCI_CONFIG, "digest": image.config_digest, "size": config_size},
        "layers": image.layers.iter().map(|l| json!({"mediaType": l.media_type, "digest": l.digest, "size": l.size})).collect::<Vec<_>>(),
    });
    let manifest_bytes = serde_json::to_vec(&manifest).expect("JSON value serialises");
    let size = manifest_bytes.len() as u64;
    let digest = write_small(rt, lease, manifest_bytes, manifest_labels(&image)).await?;
    let mut names = Vec::new();
    for tag in &image.names {
        for n in [tag.clone(), normalize(tag)] {
            if !names.contains(&n) {
                names.push(n);
            }
        }
    }
    Ok(Prepared {
        names,
        target: descriptor(MT_OCI_MANIFEST, &digest, size),
        image,
    })
}

/// An OCI layout image: label its indexes and manifest for GC; names are the familiar and the
/// full form.
async fn prepare_oci(rt: &ContainerdRuntime, image: Image) -> Result<Prepared> {
    let Source::Oci(oci) = &image.source else {
        unreachable!("prepare_oci is called for OCI images")
    };
    let (top, manifest, indexes) = (&oci.top, &oci.manifest, &oci.indexes);
    for (index, children) in indexes {
        let labels = children
            .iter()
            .enumerate()
            .map(|(i, d)| (format!("containerd.io/gc.ref.content.m.{i}"), d.clone()))
            .collect();
        set_labels(rt, index, labels).await?;
    }
    set_labels(rt, &manifest.digest, manifest_labels(&image)).await?;
    let full = normalize(&image.names[0]);
    let mut names = vec![familiar(&full)];
    if full != names[0] {
        names.push(full);
    }
    Ok(Prepared {
        names,
        target: to_proto(top),
        image,
    })
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
        let mut prepared = Vec::new();
        for image in archive::images(&archive).map_err(bad)? {
            prepared.push(match image.source {
                Source::Docker => prepare_docker(rt, &lease, image).await?,
                Source::Oci(_) => prepare_oci(rt, image).await?,
            });
        }
        let mut unpacked: BTreeMap<String, String> = BTreeMap::new();
        for p in &prepared {
            let i = &p.image;
            if !unpacked.contains_key(&i.config_digest) {
                let layers: Vec<Descriptor> = i
                    .layers
                    .iter()
                    .map(|l| descriptor(&l.media_type, &l.digest, l.size))
                    .collect();
                let top = unpack(rt, &lease, &layers, i.diff_ids(), &i.config_digest, &bad).await?;
                unpacked.insert(i.config_digest.clone(), top);
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
