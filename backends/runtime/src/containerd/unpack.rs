//! Unpacking image layers into committed snapshots named by chain ID.

use super::content::set_labels;
use super::images::ResolvedImage;
use super::lease::{unique, Lease};
use super::ContainerdRuntime;
use crate::{Result, RuntimeError};
use containerd_client::services::v1::{
    diff_client::DiffClient, snapshots::CommitSnapshotRequest, snapshots::PrepareSnapshotRequest,
    snapshots::StatSnapshotRequest, ApplyRequest,
};
use containerd_client::tonic::Code;
use containerd_client::types::Descriptor;
use ecs_formats::archive::sha256_hex;
use std::collections::HashMap;
use std::time::Duration;

use super::RT;

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

pub(crate) async fn snapshot_exists(rt: &ContainerdRuntime, key: &str) -> Result<bool> {
    match rt
        .snapshots()
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

/// One layer to unpack on top of `parent` into the snapshot `chain`.
struct Layer<'a> {
    index: usize,
    desc: &'a Descriptor,
    diff_id: &'a str,
    parent: String,
    chain: &'a str,
}

/// Apply one layer into a fresh snapshot, check what it unpacked to, commit it as its chain
/// ID. The snapshot being prepared is removed on any failure.
async fn unpack_layer(
    rt: &ContainerdRuntime,
    lease: &Lease,
    layer: Layer<'_>,
    bad: &(dyn Fn(String) -> RuntimeError + Sync),
) -> Result<()> {
    let snapshotter = rt.options().snapshotter.clone();
    let key = format!("ecs-init-extract-{}-{}", unique(), layer.index);
    let mounts = rt
        .snapshots()
        .await?
        .prepare(rt.leased(
            PrepareSnapshotRequest {
                snapshotter: snapshotter.clone(),
                key: key.clone(),
                parent: layer.parent,
                labels: HashMap::new(),
            },
            &lease.id,
        ))
        .await
        .map_err(|s| rt.err(format!("prepare snapshot for layer {}", layer.index), s))?
        .into_inner()
        .mounts;
    let applied = DiffClient::new(rt.channel().await?)
        .apply(rt.leased(
            ApplyRequest {
                diff: Some(layer.desc.clone()),
                mounts,
                payloads: HashMap::new(),
                sync_fs: false,
            },
            &lease.id,
        ))
        .await;
    let failure = match applied {
        Err(s) if s.code() == Code::Unavailable => Some(rt.err("apply layer", s)),
        Err(s) => Some(bad(format!(
            "layer {} cannot be applied: {}",
            layer.desc.digest,
            s.message()
        ))),
        Ok(r) => {
            let digest = r.into_inner().applied.map(|d| d.digest).unwrap_or_default();
            (digest != layer.diff_id).then(|| {
                bad(format!(
                    "layer {} unpacks to {digest}, but the config says {}",
                    layer.desc.digest, layer.diff_id
                ))
            })
        }
    };
    if let Some(e) = failure {
        let _ = rt.remove_snapshot(&key).await;
        return Err(e);
    }
    let committed = rt
        .snapshots()
        .await?
        .commit(rt.leased(
            CommitSnapshotRequest {
                snapshotter,
                name: layer.chain.to_string(),
                key: key.clone(),
                labels: HashMap::new(),
            },
            &lease.id,
        ))
        .await;
    match committed {
        Ok(_) => Ok(()),
        // Someone else committed the same layer meanwhile: theirs is identical.
        Err(s) if s.code() == Code::AlreadyExists => {
            let _ = rt.remove_snapshot(&key).await;
            Ok(())
        }
        Err(s) => {
            let _ = rt.remove_snapshot(&key).await;
            Err(rt.err(format!("commit snapshot {}", layer.chain), s))
        }
    }
}

/// Unpacks the layers into committed snapshots named by chain ID (skipping existing ones) and
/// labels the config so GC keeps the top snapshot while the image exists. Returns the top
/// chain ID. `bad` turns a content problem (bad layer) into the caller's error.
pub(crate) async fn unpack(
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
    for (i, desc) in layers.iter().enumerate() {
        if snapshot_exists(rt, &chains[i]).await? {
            continue;
        }
        let parent = if i == 0 {
            String::new()
        } else {
            chains[i - 1].clone()
        };
        let layer = Layer {
            index: i,
            desc,
            diff_id: &diff_ids[i],
            parent,
            chain: &chains[i],
        };
        unpack_layer(rt, lease, layer, bad).await?;
        tracing::debug!(layer = %desc.digest, chain = %chains[i], "layer unpacked");
    }
    let top = chains.last().cloned().unwrap_or_default();
    if !top.is_empty() {
        let snapshotter = &rt.options().snapshotter;
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
