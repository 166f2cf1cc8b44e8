//! Image records: looking images up by either name form, creating or moving a record, and
//! resolving a record to the manifest, config and layers running it needs.

use super::content::read_blob;
use super::ContainerdRuntime;
use crate::reference::{familiar, normalize};
use crate::{Result, RuntimeError};
use containerd_client::services::v1::{
    images_client::ImagesClient, CreateImageRequest, GetImageRequest, Image, UpdateImageRequest,
};
use containerd_client::tonic::{transport::Channel, Code};
use containerd_client::types::Descriptor;
use ecs_formats::archive::{
    host_arch, is_index, pick_platform, ConfigFile, JsonDescriptor, JsonIndex, JsonManifest,
};
use ecs_formats::image::ImageConfig;
use std::collections::HashMap;

use super::RT;

/// The containerd form of an archive's descriptor (annotations are not kept).
pub(crate) fn to_proto(d: &JsonDescriptor) -> Descriptor {
    Descriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
        annotations: HashMap::new(),
    }
}

pub(crate) async fn images(rt: &ContainerdRuntime) -> Result<ImagesClient<Channel>> {
    Ok(ImagesClient::new(rt.channel().await?))
}

pub(crate) async fn get_image(rt: &ContainerdRuntime, name: &str) -> Result<Option<Image>> {
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

pub(crate) async fn find_image(rt: &ContainerdRuntime, reference: &str) -> Result<Option<Image>> {
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
pub(crate) async fn put_image(
    rt: &ContainerdRuntime,
    name: &str,
    target: &Descriptor,
) -> Result<()> {
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

/// [`Runtime::tag_image`](crate::Runtime::tag_image): the records of `target`'s familiar and
/// full names (as a load makes them) point at `source`'s target.
pub(crate) async fn tag_image(rt: &ContainerdRuntime, source: &str, target: &str) -> Result<()> {
    let image = find_image(rt, source).await?.ok_or_else(|| {
        RuntimeError::daemon(
            RT,
            format!("tag image {source} as {target}"),
            "image not present",
        )
    })?;
    let descriptor = image.target.ok_or_else(|| {
        RuntimeError::daemon(
            RT,
            format!("tag image {source} as {target}"),
            "image record has no target",
        )
    })?;
    let full = normalize(target);
    let short = familiar(&full);
    put_image(rt, &short, &descriptor).await?;
    if full != short {
        put_image(rt, &full, &descriptor).await?;
    }
    Ok(())
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
        target = to_proto(
            pick_platform(&index)
                .ok_or_else(|| bad(format!("no manifest for linux/{}", host_arch())))?,
        );
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
        layers: manifest.layers.iter().map(to_proto).collect(),
    })
}
