//! Reading image archives (`docker save` tarballs and OCI image-layout tarballs), runtime
//! neutrally: one pass over the tar that hashes every blob while it streams it to whoever stores
//! it, the archive's JSON documents (manifest.json, index.json, manifests, configs), and the
//! checks that tie them together. Never quotes bytes of the file in its errors.

use crate::containerd::oci::ImageConfig;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Component, Path};
use tokio::sync::mpsc;

pub(crate) const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(crate) const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const MT_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Blobs up to this size are also kept in memory (configs, manifests, indexes).
pub(crate) const SMALL: u64 = 4 * 1024 * 1024;
pub(crate) const CHUNK: usize = 1024 * 1024;

pub(crate) fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

#[derive(Debug, Deserialize, Clone)]
pub(crate) struct JsonDescriptor {
    #[serde(rename = "mediaType", default)]
    pub(crate) media_type: String,
    pub(crate) digest: String,
    pub(crate) size: i64,
    #[serde(default)]
    pub(crate) annotations: Option<HashMap<String, String>>,
    #[serde(default)]
    pub(crate) platform: Option<JsonPlatform>,
}

#[derive(Debug, Deserialize, Clone)]
pub(crate) struct JsonPlatform {
    #[serde(default)]
    pub(crate) os: String,
    #[serde(default)]
    pub(crate) architecture: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct JsonIndex {
    pub(crate) manifests: Vec<JsonDescriptor>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct JsonManifest {
    pub(crate) config: JsonDescriptor,
    pub(crate) layers: Vec<JsonDescriptor>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ConfigFile {
    #[serde(default)]
    pub(crate) config: Option<ImageConfig>,
    pub(crate) rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RootFs {
    pub(crate) diff_ids: Vec<String>,
}

pub(crate) fn is_index(media_type: &str) -> bool {
    media_type == MT_OCI_INDEX || media_type == MT_DOCKER_LIST
}

/// The manifest for this host's platform in an index.
pub(crate) fn pick_platform(index: &JsonIndex) -> Option<&JsonDescriptor> {
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

pub(crate) enum Part {
    Data(Vec<u8>),
    Done(String),
}

pub(crate) enum Event {
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
pub(crate) struct BlobInfo {
    pub(crate) digest: String,
    pub(crate) size: u64,
    /// First bytes, for compression sniffing.
    pub(crate) head: Vec<u8>,
    pub(crate) small: Option<Vec<u8>>,
}

pub(crate) const META_FILES: &[&str] =
    &["manifest.json", "index.json", "repositories", "oci-layout"];

/// Archive-relative path without `./`, with `..` resolved.
pub(crate) fn clean(path: &Path) -> String {
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

pub(crate) fn is_blob_path(p: &str) -> bool {
    p.starts_with("blobs/")
        || p.ends_with("/layer.tar")
        || (!p.contains('/') && p.ends_with(".json"))
}

/// Runs on a blocking thread: walks the tar once, hashing every blob while streaming it out.
pub(crate) fn read_tar(path: &Path, tx: mpsc::Sender<Event>) -> std::result::Result<(), String> {
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

/// The hex digest a blob's path promises (`blobs/sha256/<hex>`, `<hex>.json`), if any.
pub(crate) fn digest_from_path(p: &str) -> Option<String> {
    let hexpart = p
        .strip_prefix("blobs/sha256/")
        .or_else(|| p.strip_suffix(".json").filter(|s| !s.contains('/')))?;
    (hexpart.len() == 64 && hexpart.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("sha256:{hexpart}"))
}

pub(crate) struct Archive {
    pub(crate) meta: HashMap<String, Vec<u8>>,
    pub(crate) blobs: HashMap<String, BlobInfo>,
    pub(crate) links: HashMap<String, String>,
}

impl Archive {
    pub(crate) fn blob(&self, path: &str) -> Option<&BlobInfo> {
        let mut p = clean(Path::new(path));
        for _ in 0..16 {
            if let Some(b) = self.blobs.get(&p) {
                return Some(b);
            }
            p = self.links.get(&p)?.clone();
        }
        None
    }

    pub(crate) fn by_digest(&self, digest: &str) -> Option<&BlobInfo> {
        let hexpart = digest.strip_prefix("sha256:")?;
        self.blob(&format!("blobs/sha256/{hexpart}"))
    }
}

#[derive(Deserialize)]
pub(crate) struct DockerManifestEntry {
    #[serde(rename = "Config")]
    pub(crate) config: String,
    #[serde(rename = "RepoTags", default)]
    pub(crate) repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    pub(crate) layers: Vec<String>,
}

pub(crate) fn layer_media_type(head: &[u8]) -> String {
    if head.starts_with(&[0x1f, 0x8b]) {
        format!("{MT_LAYER_TAR}+gzip")
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        format!("{MT_LAYER_TAR}+zstd")
    } else {
        MT_LAYER_TAR.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
