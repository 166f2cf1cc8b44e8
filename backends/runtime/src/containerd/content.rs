//! The content store: checking, reading and writing blobs (streamed, verified by digest) and
//! labelling them with GC references.

use super::lease::{unique, Lease};
use super::ContainerdRuntime;
use crate::{Result, RuntimeError};
use containerd_client::services::v1::Info as ContentInfo;
use containerd_client::services::v1::{
    content_client::ContentClient, InfoRequest, ReadContentRequest, UpdateRequest, WriteAction,
    WriteContentRequest,
};
use containerd_client::tonic::{transport::Channel, Code, Status};
use ecs_formats::archive::{sha256_hex, Part, SMALL};
use std::collections::HashMap;
use tokio::sync::mpsc;

use super::RT;

pub(crate) async fn content(rt: &ContainerdRuntime) -> Result<ContentClient<Channel>> {
    Ok(ContentClient::new(rt.channel().await?))
}

pub(crate) async fn content_exists(rt: &ContainerdRuntime, digest: &str) -> Result<bool> {
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
pub(crate) async fn write_small(
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
        Err(e) if e.grpc_code() == Some(Code::AlreadyExists) => {
            set_labels(rt, &digest, labels).await?;
        }
        Err(e) => return Err(e),
    }
    Ok(digest)
}

/// Adds labels (GC references) to existing content without touching its other labels.
pub(crate) async fn set_labels(
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

/// Streams one blob into the content store as it is read; commits with the digest the reader
/// computed, so containerd verifies what it stored.
pub(crate) async fn write_stream(
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
