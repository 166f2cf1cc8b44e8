//! Image archives (`docker save` tarballs and OCI image-layout tarballs), read and verified
//! runtime-neutrally.
//!
//! [`read`] walks the tar once, hashing every blob (and, for the containerd backend, streaming
//! it to the content store as it goes); [`images`] then ties the archive's documents together
//! — manifest.json or index.json, manifests, configs, layers — and refuses anything missing,
//! mislabelled or inconsistent. The Docker backend runs both before dockerd sees a byte (so a
//! bad archive never moves a tag), the containerd backend before it names an image, and the
//! launcher uses [`images`] to know which image a tarball brings.
//!
//! Errors describe what is wrong and where; they never quote bytes of the file beyond short
//! printable names (tar headers and JSON values of a hostile file could otherwise reach the log).

use crate::image::ImageConfig;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Component, Path};
use tokio::sync::mpsc;

pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MT_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Blobs up to this size are also kept in memory (configs, manifests, indexes) ...
pub const SMALL: u64 = 4 * 1024 * 1024;
/// ... as long as all of those together stay under this, so no archive makes memory grow
/// without bound.
const SMALL_TOTAL: u64 = 64 * 1024 * 1024;
const CHUNK: usize = 1024 * 1024;
/// How many links are followed to find a blob.
const MAX_LINKS: usize = 16;

/// `sha256:<hex>` of `data`.
pub fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// A name from the archive, fit for a message: short printable ASCII as is, anything else
/// only described.
fn shown(name: &str) -> String {
    if name.len() <= 160 && name.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
        format!("{name:?}")
    } else {
        format!("a name of {} bytes", name.len())
    }
}

/// What is wrong with a JSON document, without its content.
fn json_error(what: &str, e: serde_json::Error) -> String {
    use serde_json::error::Category;
    let why = match e.classify() {
        Category::Io => "cannot be read",
        Category::Syntax => "is not valid JSON",
        Category::Data => "does not have the expected fields and types",
        Category::Eof => "ends too early",
    };
    format!("{what} {why} (line {}, column {})", e.line(), e.column())
}

#[derive(Debug, Deserialize, Clone)]
pub struct JsonDescriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default)]
    pub annotations: Option<HashMap<String, String>>,
    #[serde(default)]
    pub platform: Option<JsonPlatform>,
}

#[derive(Debug, Deserialize, Clone)]
pub struct JsonPlatform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
}

#[derive(Debug, Deserialize)]
pub struct JsonIndex {
    pub manifests: Vec<JsonDescriptor>,
}

#[derive(Debug, Deserialize)]
pub struct JsonManifest {
    pub config: JsonDescriptor,
    pub layers: Vec<JsonDescriptor>,
}

#[derive(Debug, Deserialize, Clone)]
pub struct ConfigFile {
    #[serde(default)]
    pub config: Option<ImageConfig>,
    pub rootfs: RootFs,
}

#[derive(Debug, Deserialize, Clone)]
pub struct RootFs {
    pub diff_ids: Vec<String>,
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

pub fn is_index(media_type: &str) -> bool {
    media_type == MT_OCI_INDEX || media_type == MT_DOCKER_LIST
}

/// The manifest for this host's platform in an index.
pub fn pick_platform(index: &JsonIndex) -> Option<&JsonDescriptor> {
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

// ------------------------------------------------------------------------ reading the tar

/// A piece of one blob, for a consumer that stores it while the archive is read.
pub enum Part {
    Data(Vec<u8>),
    /// The blob ended; its digest.
    Done(String),
}

/// What [`read`] tells a consumer that stores blobs as they stream by.
pub enum Event {
    /// A blob starts; its bytes follow on `parts` (dropping the receiver skips them).
    Blob {
        path: String,
        size: u64,
        parts: mpsc::Receiver<Part>,
    },
    /// The blob was read whole and its digest checked against its name.
    BlobDone { path: String },
}

#[derive(Debug, Clone)]
pub struct BlobInfo {
    pub digest: String,
    pub size: u64,
    /// First bytes, for compression sniffing.
    pub head: Vec<u8>,
    pub small: Option<Vec<u8>>,
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

/// The digest a blob's path promises (`blobs/sha256/<hex>`, `<hex>.json`), if any.
pub fn digest_from_path(p: &str) -> Option<String> {
    let hexpart = p
        .strip_prefix("blobs/sha256/")
        .or_else(|| p.strip_suffix(".json").filter(|s| !s.contains('/')))?;
    (hexpart.len() == 64 && hexpart.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("sha256:{hexpart}"))
}

/// What an archive holds: its top-level documents, every blob's digest and size, and links.
#[derive(Debug, Default)]
pub struct Archive {
    pub meta: HashMap<String, Vec<u8>>,
    pub blobs: HashMap<String, BlobInfo>,
    pub links: HashMap<String, String>,
    small_total: u64,
}

impl Archive {
    pub fn blob(&self, path: &str) -> Option<&BlobInfo> {
        let mut p = clean(Path::new(path));
        for _ in 0..MAX_LINKS {
            if let Some(b) = self.blobs.get(&p) {
                return Some(b);
            }
            p = self.links.get(&p)?.clone();
        }
        None
    }

    pub fn by_digest(&self, digest: &str) -> Option<&BlobInfo> {
        let hexpart = digest.strip_prefix("sha256:")?;
        self.blob(&format!("blobs/sha256/{hexpart}"))
    }

    fn link(&mut self, path: String, entry: &tar::Entry<'_, impl Read>) {
        let kind = entry.header().entry_type();
        let Some(link) = entry.link_name().ok().flatten() else {
            return;
        };
        let target = if kind.is_symlink() {
            clean(
                &Path::new(&path)
                    .parent()
                    .unwrap_or(Path::new(""))
                    .join(link),
            )
        } else {
            clean(&link)
        };
        self.links.insert(path, target);
    }

    fn meta_file(
        &mut self,
        path: String,
        entry: &mut tar::Entry<'_, impl Read>,
    ) -> Result<(), String> {
        let size = entry.size();
        if size > SMALL {
            return Err(format!("{path} is implausibly large ({size} bytes)"));
        }
        let mut data = Vec::with_capacity(size as usize);
        entry
            .read_to_end(&mut data)
            .map_err(|e| format!("cannot read {path} ({:?})", e.kind()))?;
        self.meta.insert(path, data);
        Ok(())
    }

    /// Hash one blob while streaming it to `events` (when given); its digest must match the
    /// one its name promises.
    fn blob_file(
        &mut self,
        path: String,
        entry: &mut tar::Entry<'_, impl Read>,
        events: Option<&mpsc::Sender<Event>>,
    ) -> Result<(), String> {
        let size = entry.size();
        let mut parts = None;
        if let Some(tx) = events {
            let (ptx, prx) = mpsc::channel(4);
            let blob = Event::Blob {
                path: path.clone(),
                size,
                parts: prx,
            };
            if tx.blocking_send(blob).is_ok() {
                parts = Some(ptx);
            }
        }
        let keep = size <= SMALL && self.small_total + size <= SMALL_TOTAL;
        let mut small = keep.then(Vec::new);
        let (mut hasher, mut head, mut read) = (Sha256::new(), Vec::new(), 0u64);
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = entry
                .read(&mut buf)
                .map_err(|e| format!("cannot read {} ({:?})", shown(&path), e.kind()))?;
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
            if parts
                .as_ref()
                .is_some_and(|p| p.blocking_send(Part::Data(buf)).is_err())
            {
                parts = None;
            }
        }
        if read != size {
            return Err(format!(
                "{} is truncated ({read} of {size} bytes)",
                shown(&path)
            ));
        }
        let digest = format!("sha256:{}", hex(&hasher.finalize()));
        if let Some(expected) = digest_from_path(&path).filter(|e| *e != digest) {
            return Err(format!(
                "{} has digest {digest}, its name says {expected}",
                shown(&path)
            ));
        }
        if let Some(p) = parts {
            let _ = p.blocking_send(Part::Done(digest.clone()));
        }
        self.small_total += small.as_ref().map_or(0, |s| s.len() as u64);
        let info = BlobInfo {
            digest,
            size,
            head,
            small,
        };
        self.blobs.insert(path.clone(), info);
        if let Some(tx) = events {
            let _ = tx.blocking_send(Event::BlobDone { path });
        }
        Ok(())
    }
}

/// Read a whole archive once (blocking): top-level documents, links, and every blob hashed
/// and checked against its name; blobs are also streamed to `events` when given.
pub fn read(reader: impl Read, events: Option<&mpsc::Sender<Event>>) -> Result<Archive, String> {
    let mut tar = tar::Archive::new(reader);
    let mut archive = Archive::default();
    let mut seen = 0usize;
    let entries = tar
        .entries()
        .map_err(|e| format!("not a tar archive ({:?})", e.kind()))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| format!("corrupt tar header after entry {seen} ({:?})", e.kind()))?;
        seen += 1;
        let path = entry
            .path()
            .map(|p| clean(&p))
            .map_err(|_| format!("entry {seen} has an unusable path"))?;
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            archive.link(path, &entry);
        } else if !(kind.is_file() || kind == tar::EntryType::Continuous) {
            continue;
        } else if META_FILES.contains(&path.as_str()) {
            archive.meta_file(path, &mut entry)?;
        } else if is_blob_path(&path) {
            archive.blob_file(path, &mut entry, events)?;
        }
    }
    if seen == 0 {
        return Err("empty archive".into());
    }
    Ok(archive)
}

/// [`read`] of an open file, then [`images`]: the whole archive verified. The caller opens it
/// (the launcher: `ecs_host::files::open_read`, which neither follows a symlink nor waits on a
/// FIFO planted in the agent-writable cache).
pub fn verify_file(file: std::fs::File) -> Result<Vec<Image>, String> {
    verify_reader(std::io::BufReader::with_capacity(CHUNK, file))
}

/// [`read`] then [`images`] of any reader (the fuzz targets feed it bytes).
pub fn verify_reader(reader: impl Read) -> Result<Vec<Image>, String> {
    images(&read(reader, None)?)
}

// ------------------------------------------------------------------------ the images

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

/// Where an image's manifest comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// `docker save`: no manifest blob (the importer synthesises one).
    Docker,
    /// OCI layout: the index entry, the platform manifest it leads to, and the nested indexes
    /// on the way with the children present in the archive.
    Oci(Box<OciSource>),
}

#[derive(Debug, Clone)]
pub struct OciSource {
    pub top: JsonDescriptor,
    pub manifest: JsonDescriptor,
    pub indexes: Vec<(String, Vec<String>)>,
}

/// One image of an archive, every part of it present and consistent.
#[derive(Debug, Clone)]
pub struct Image {
    /// The names the archive gives it, as written there (`RepoTags`, OCI ref annotations).
    pub names: Vec<String>,
    /// The digest of its config: Docker's image ID, containerd's config blob.
    pub config_digest: String,
    pub config: ConfigFile,
    config_size: u64,
    pub layers: Vec<Layer>,
    pub source: Source,
}

impl Image {
    pub fn diff_ids(&self) -> &[String] {
        &self.config.rootfs.diff_ids
    }

    /// The size of the config blob.
    pub fn config_size(&self) -> u64 {
        self.config_size
    }
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

fn parse_config(what: &str, bytes: &[u8]) -> Result<ConfigFile, String> {
    serde_json::from_slice(bytes).map_err(|e| json_error(what, e))
}

/// The images of a `docker save` archive (manifest.json).
fn docker_images(a: &Archive) -> Result<Vec<Image>, String> {
    let entries: Vec<DockerManifestEntry> = serde_json::from_slice(&a.meta["manifest.json"])
        .map_err(|e| json_error("manifest.json", e))?;
    let mut out = Vec::new();
    for entry in entries {
        let name = shown(&entry.config);
        let config = a
            .blob(&entry.config)
            .ok_or_else(|| format!("config {name} missing"))?;
        let bytes = config
            .small
            .as_ref()
            .ok_or_else(|| format!("config {name} too large"))?;
        let parsed = parse_config(&format!("config {name}"), bytes)?;
        let diff_ids = &parsed.rootfs.diff_ids;
        if diff_ids.len() != entry.layers.len() {
            return Err(format!(
                "{name} lists {} layers, its config {}",
                entry.layers.len(),
                diff_ids.len()
            ));
        }
        let mut layers = Vec::new();
        for (path, diff_id) in entry.layers.iter().zip(diff_ids) {
            let layer = a
                .blob(path)
                .ok_or_else(|| format!("layer {} missing", shown(path)))?;
            let media_type = layer_media_type(&layer.head);
            // Uncompressed layers must hash to their diff_id; compressed ones are checked when
            // unpacked.
            if media_type == MT_LAYER_TAR && &layer.digest != diff_id {
                return Err(format!(
                    "layer {} has digest {}, the config says {}",
                    shown(path),
                    layer.digest,
                    shown(diff_id)
                ));
            }
            layers.push(Layer {
                media_type,
                digest: layer.digest.clone(),
                size: layer.size,
            });
        }
        out.push(Image {
            names: entry.repo_tags.unwrap_or_default(),
            config_digest: config.digest.clone(),
            config: parsed,
            config_size: config.size,
            layers,
            source: Source::Docker,
        });
    }
    Ok(out)
}

/// A small blob of an OCI layout, of the size its descriptor says.
fn oci_small<'a>(a: &'a Archive, d: &JsonDescriptor) -> Result<&'a Vec<u8>, String> {
    let digest = shown(&d.digest);
    let b = a
        .by_digest(&d.digest)
        .ok_or_else(|| format!("blob {digest} missing"))?;
    if b.size as i64 != d.size {
        return Err(format!(
            "blob {digest} has size {}, expected {}",
            b.size, d.size
        ));
    }
    b.small
        .as_ref()
        .ok_or_else(|| format!("blob {digest} too large"))
}

/// One OCI index entry: descend nested indexes to this platform's manifest.
fn oci_image(a: &Archive, top: &JsonDescriptor, name: String) -> Result<Image, String> {
    let mut manifest = top.clone();
    let mut indexes = Vec::new();
    for _ in 0..4 {
        if !is_index(&manifest.media_type) {
            break;
        }
        let what = format!("index {}", shown(&manifest.digest));
        let child: JsonIndex =
            serde_json::from_slice(oci_small(a, &manifest)?).map_err(|e| json_error(&what, e))?;
        let present = child
            .manifests
            .iter()
            .filter(|m| a.by_digest(&m.digest).is_some())
            .map(|m| m.digest.clone())
            .collect();
        indexes.push((manifest.digest.clone(), present));
        manifest = pick_platform(&child)
            .ok_or_else(|| format!("no manifest for linux/{}", host_arch()))?
            .clone();
    }
    let what = format!("manifest {}", shown(&manifest.digest));
    let m: JsonManifest =
        serde_json::from_slice(oci_small(a, &manifest)?).map_err(|e| json_error(&what, e))?;
    let config_what = format!("config {}", shown(&m.config.digest));
    let config = parse_config(&config_what, oci_small(a, &m.config)?)?;
    let mut layers = Vec::new();
    for l in &m.layers {
        let blob = a
            .by_digest(&l.digest)
            .ok_or_else(|| format!("layer {} missing", shown(&l.digest)))?;
        if blob.size as i64 != l.size {
            return Err(format!("layer {} has the wrong size", shown(&l.digest)));
        }
        layers.push(Layer {
            media_type: l.media_type.clone(),
            digest: l.digest.clone(),
            size: blob.size,
        });
    }
    if layers.len() != config.rootfs.diff_ids.len() {
        return Err(format!(
            "{what} lists {} layers, its config {}",
            layers.len(),
            config.rootfs.diff_ids.len()
        ));
    }
    Ok(Image {
        names: vec![name],
        config_digest: m.config.digest.clone(),
        config,
        config_size: m.config.size.max(0) as u64,
        layers,
        source: Source::Oci(Box::new(OciSource {
            top: top.clone(),
            manifest,
            indexes,
        })),
    })
}

/// The images of an OCI layout (index.json) that carry a full image name.
fn oci_images(a: &Archive) -> Result<Vec<Image>, String> {
    let index: JsonIndex =
        serde_json::from_slice(&a.meta["index.json"]).map_err(|e| json_error("index.json", e))?;
    let mut out = Vec::new();
    for top in &index.manifests {
        let annotations = top.annotations.clone().unwrap_or_default();
        let name = annotations
            .get("io.containerd.image.name")
            .or_else(|| annotations.get("org.opencontainers.image.ref.name"))
            .cloned();
        let Some(name) = name.filter(|n| n.contains(':') || n.contains('/')) else {
            tracing::warn!(digest = %shown(&top.digest), "OCI index entry without a full image name; skipped");
            continue;
        };
        out.push(oci_image(a, top, name)?);
    }
    Ok(out)
}

/// Every image of the archive, verified. OCI layouts (also written by Docker 25+ `docker save`,
/// next to manifest.json) carry real manifests and are preferred when they name images.
pub fn images(a: &Archive) -> Result<Vec<Image>, String> {
    let oci = if a.meta.contains_key("index.json") {
        oci_images(a)?
    } else {
        Vec::new()
    };
    let images = if !oci.is_empty() {
        oci
    } else if a.meta.contains_key("manifest.json") {
        docker_images(a)?
    } else {
        return Err("neither manifest.json nor index.json found".into());
    };
    if images.iter().all(|i| i.names.is_empty()) {
        return Err("the archive names no image".into());
    }
    Ok(images)
}

/// Small archives for unit tests (here and in the launcher's).
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use super::sha256_hex;

    /// A tar with these (path, bytes) files.
    pub fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, path, *data).expect("in-memory tar");
        }
        b.into_inner().expect("in-memory tar")
    }

    /// A minimal `docker save` archive of one image tagged `tag` with one uncompressed layer
    /// holding `content`; `lie_about_layer` makes the config's diff_id wrong.
    pub fn docker_save(tag: &str, content: &[u8], lie_about_layer: bool) -> Vec<u8> {
        let layer = tar_of(&[("agent", content)]);
        let hashed: &[u8] = if lie_about_layer { b"other" } else { &layer };
        let diff_id = format!("sha256:{}", sha256_hex(hashed));
        let config = format!(
            r#"{{"config":{{"Env":["A=1"]}},"rootfs":{{"type":"layers","diff_ids":["{diff_id}"]}}}}"#
        );
        let config_name = format!("{}.json", sha256_hex(config.as_bytes()));
        let manifest = format!(
            r#"[{{"Config":"{config_name}","RepoTags":["{tag}"],"Layers":["l1/layer.tar"]}}]"#
        );
        tar_of(&[
            (&config_name, config.as_bytes()),
            ("l1/layer.tar", &layer),
            ("manifest.json", manifest.as_bytes()),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{docker_save, tar_of};
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

    fn verify(bytes: &[u8]) -> Result<Vec<Image>, String> {
        images(&read(bytes, None)?)
    }

    #[test]
    fn verifies_a_docker_save_archive() {
        let imgs = verify(&docker_save(
            "amazon/amazon-ecs-agent:latest",
            b"#!/bin/true\n",
            false,
        ))
        .unwrap();
        assert_eq!(imgs.len(), 1);
        assert_eq!(imgs[0].names, ["amazon/amazon-ecs-agent:latest"]);
        assert!(imgs[0].config_digest.starts_with("sha256:"));
        assert_eq!(imgs[0].layers[0].media_type, MT_LAYER_TAR);
        assert_eq!(imgs[0].diff_ids().len(), 1);
    }

    #[test]
    fn refuses_inconsistent_archives_without_quoting_them() {
        let err = verify(&docker_save("a:1", b"x", true)).unwrap_err();
        assert!(err.contains("the config says"), "{err}");
        // A layer missing from the archive.
        let good = docker_save("a:1", b"x", false);
        let archive = read(good.as_slice(), None).unwrap();
        let mut without = archive;
        without.blobs.remove("l1/layer.tar");
        assert!(images(&without)
            .unwrap_err()
            .contains("layer \"l1/layer.tar\" missing"));
        // A config whose name does not match its digest.
        let h = "0".repeat(64);
        let err = verify(&tar_of(&[(&format!("{h}.json"), b"{}")])).unwrap_err();
        assert!(err.contains("its name says"), "{err}");
        // JSON with a secret-looking value: the error describes, never quotes.
        let err = verify(&tar_of(&[(
            "manifest.json",
            br#"{"Config": "hunter2-secret"}"#,
        )]))
        .unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(
            err.starts_with("manifest.json does not have the expected fields"),
            "{err}"
        );
        // Not a tar at all, and a header whose fields are text from elsewhere.
        let err = verify(b"ECS_ENGINE_AUTH_DATA=topsecret\n".repeat(40).as_slice()).unwrap_err();
        assert!(!err.contains("topsecret"), "{err}");
        assert!(verify(b"").is_err());
    }

    #[test]
    fn memory_kept_for_small_blobs_is_bounded() {
        // Many 1 MiB "configs": only SMALL_TOTAL worth are kept in memory.
        let big = vec![b'{'; 1024 * 1024];
        let names: Vec<String> = (0..80).map(|i| format!("blobs/x{i}")).collect();
        let files: Vec<(&str, &[u8])> =
            names.iter().map(|n| (n.as_str(), big.as_slice())).collect();
        let a = read(tar_of(&files).as_slice(), None).unwrap();
        let kept: u64 = a
            .blobs
            .values()
            .filter_map(|b| b.small.as_ref())
            .map(|s| s.len() as u64)
            .sum();
        assert!(kept <= SMALL_TOTAL, "{kept}");
        assert_eq!(a.blobs.len(), 80);
    }
}
