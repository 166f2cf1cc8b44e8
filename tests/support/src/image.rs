//! Packs the stand-in agent binary into image tarballs that real runtimes load.
//!
//! Two formats, because the launcher feeds `/var/cache/ecs/ecs-agent.tar` to both runtimes:
//! * [`write_docker_save`]: the classic `docker save` layout (`manifest.json`, `repositories`,
//!   `<config-sha>.json`, `<layer-id>/{VERSION,json,layer.tar}`), which is what the ECS agent
//!   tarball shipped in the RPM looks like and what dockerd 20.10 understands.
//! * [`write_oci_layout`]: an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/...`) with
//!   the name annotations containerd uses on import, *plus* a `manifest.json` pointing into the
//!   blobs, exactly like `docker save` of Docker 25+, so the same file loads into either runtime.
//!
//! Everything is deterministic (fixed timestamps, sorted JSON keys), so the same binary and
//! [`ImageSpec`] always give the same image ID; distinct references give distinct IDs (the
//! references are recorded as a label), which lets update tests see that the image changed.
//! The layer is uncompressed: its digest is then also its diff ID, and both dockerd and
//! containerd verify it.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Fixed creation time (2024-01-01T00:00:00Z) so digests are reproducible.
const CREATED: &str = "2024-01-01T00:00:00Z";
const MTIME: u64 = 1_704_067_200;

/// The label that records which references an image was packed for.
pub const REFERENCE_LABEL: &str = "com.amazonaws.ecs.stand-in.references";

/// What to put in the image besides the binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// Tags to give the image, e.g. `amazon/amazon-ecs-agent:latest` (a missing tag means
    /// `latest`). At least one is required.
    pub references: Vec<String>,
    /// Extra image-config environment (after `PATH`); the container's own env overrides it, so
    /// an "updated" image can be given a different default behaviour via `STANDIN_*`.
    pub env: Vec<(String, String)>,
    /// Extra image labels.
    pub labels: BTreeMap<String, String>,
    /// When set, the layer also holds `/stand-in-marker` with this text, which makes the layer
    /// digest unique. Needed by corruption tests: dockerd skips a layer whose chain ID it already
    /// has and containerd skips a blob whose digest it already has, so a damaged copy of a layer
    /// that is already loaded would be accepted without ever being read.
    pub marker: Option<String>,
}

impl ImageSpec {
    /// An image with one reference and no extras.
    pub fn new(reference: &str) -> Self {
        ImageSpec {
            references: vec![reference.to_string()],
            env: Vec::new(),
            labels: BTreeMap::new(),
            marker: None,
        }
    }

    /// Makes the layer unique (see [`ImageSpec::marker`]).
    pub fn marker(mut self, text: &str) -> Self {
        self.marker = Some(text.to_string());
        self
    }

    /// Adds an image-config environment variable.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Adds an image label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }

    /// A short, stable digest of the spec, for cache file names.
    pub fn fingerprint(&self) -> String {
        let text = format!("{:?}", self);
        sha256_hex(text.as_bytes())[..16].to_string()
    }
}

/// Hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Splits a reference into (repository, tag), defaulting the tag to `latest`.
/// Digest references are rejected: a tarball carries tags, not digests.
pub fn split_reference(reference: &str) -> io::Result<(String, String)> {
    if reference.contains('@') || reference.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("unsupported image reference {reference:?} (need repo[:tag])"),
        ));
    }
    let last_slash = reference.rfind('/').map(|i| i + 1).unwrap_or(0);
    match reference[last_slash..].rfind(':') {
        Some(i) => {
            let i = last_slash + i;
            Ok((reference[..i].to_string(), reference[i + 1..].to_string()))
        }
        None => Ok((reference.to_string(), "latest".to_string())),
    }
}

/// The fully qualified name containerd stores (`docker.io/library/x:tag` for `x`): the
/// launcher's own normalisation, for tag references only.
pub fn normalize_reference(reference: &str) -> io::Result<String> {
    split_reference(reference)?;
    Ok(ecs_runtime::reference::normalize(reference))
}

fn header(path: &str, size: u64, mode: u32, kind: tar::EntryType) -> io::Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)?;
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h.set_entry_type(kind);
    h.set_cksum();
    Ok(h)
}

fn append_dir<W: Write>(b: &mut tar::Builder<W>, path: &str, mode: u32) -> io::Result<()> {
    b.append(
        &header(path, 0, mode, tar::EntryType::Directory)?,
        io::empty(),
    )
}

fn append_file<W: Write>(
    b: &mut tar::Builder<W>,
    path: &str,
    mode: u32,
    data: &[u8],
) -> io::Result<()> {
    b.append(
        &header(path, data.len() as u64, mode, tar::EntryType::Regular)?,
        data,
    )
}

/// The single layer: `/agent` plus the directories the agent's binds and writes expect.
fn build_layer(binary: &Path, marker: Option<&str>) -> io::Result<Vec<u8>> {
    let bin = fs::read(binary)?;
    let mut b = tar::Builder::new(Vec::new());
    append_file(&mut b, "agent", 0o755, &bin)?;
    if let Some(text) = marker {
        append_file(&mut b, "stand-in-marker", 0o644, text.as_bytes())?;
    }
    for dir in [
        "data/",
        "etc/",
        "etc/ecs/",
        "log/",
        "var/",
        "var/cache/",
        "var/cache/ecs/",
        "var/lib/",
        "var/lib/ecs/",
    ] {
        append_dir(&mut b, dir, 0o755)?;
    }
    append_dir(&mut b, "tmp/", 0o1777)?;
    b.into_inner()
}

fn build_config(spec: &ImageSpec, diff_id_hex: &str) -> io::Result<Vec<u8>> {
    let mut env =
        vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()];
    env.extend(spec.env.iter().map(|(k, v)| format!("{k}={v}")));
    let mut labels = spec.labels.clone();
    labels.insert(REFERENCE_LABEL.to_string(), spec.references.join(","));
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "created": CREATED,
        "author": "ecs-test-support",
        "config": {
            "Env": env,
            "Entrypoint": ["/agent"],
            "WorkingDir": "/",
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id_hex}")]},
        "history": [{"created": CREATED, "created_by": "ecs-test-support: COPY ecs-stand-in-agent /agent"}],
    });
    serde_json::to_vec(&config).map_err(io::Error::other)
}

/// Layer and config bytes with their digests, shared by both formats.
struct Parts {
    layer: Vec<u8>,
    layer_hex: String,
    config: Vec<u8>,
    config_hex: String,
    tags: Vec<(String, String)>,
}

fn parts(binary: &Path, spec: &ImageSpec) -> io::Result<Parts> {
    if spec.references.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an image needs at least one reference",
        ));
    }
    let tags = spec
        .references
        .iter()
        .map(|r| split_reference(r))
        .collect::<io::Result<Vec<_>>>()?;
    let layer = build_layer(binary, spec.marker.as_deref())?;
    let layer_hex = sha256_hex(&layer);
    let config = build_config(spec, &layer_hex)?;
    let config_hex = sha256_hex(&config);
    Ok(Parts {
        layer,
        layer_hex,
        config,
        config_hex,
        tags,
    })
}

fn json_bytes(v: &Value) -> io::Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(io::Error::other)
}

fn repositories(p: &Parts) -> Value {
    let mut repos: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (repo, tag) in &p.tags {
        repos
            .entry(repo.clone())
            .or_default()
            .insert(tag.clone(), p.layer_hex.clone());
    }
    json!(repos)
}

fn repo_tags(p: &Parts) -> Vec<String> {
    p.tags.iter().map(|(r, t)| format!("{r}:{t}")).collect()
}

/// Writes to `out.tmp.<pid>` and renames, so readers never see a half-written tarball.
fn write_atomically(
    out: &Path,
    fill: impl FnOnce(&mut tar::Builder<BufWriter<File>>) -> io::Result<()>,
) -> io::Result<()> {
    // Unique per writer, not only per process: test threads of one binary build the same
    // cached image at once on a cold cache (seen in a fresh clone: one thread renamed the
    // temp file away under the other).
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = out.with_extension(format!("tmp.{}.{seq}", std::process::id()));
    let result = (|| {
        let mut b = tar::Builder::new(BufWriter::new(File::create(&tmp)?));
        fill(&mut b)?;
        let mut w = b.into_inner()?;
        w.flush()?;
        w.get_ref().sync_all()?;
        fs::rename(&tmp, out)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes a `docker save`-format tarball of `binary` tagged `reference`.
pub fn write_docker_save(binary: &Path, reference: &str, out: &Path) -> io::Result<()> {
    write_docker_save_with(binary, &ImageSpec::new(reference), out)
}

/// [`write_docker_save`] with extra references, env or labels.
pub fn write_docker_save_with(binary: &Path, spec: &ImageSpec, out: &Path) -> io::Result<()> {
    let p = parts(binary, spec)?;
    let layer_json = json!({
        "id": p.layer_hex,
        "created": CREATED,
        "os": "linux",
        "architecture": "amd64",
        "config": {"Entrypoint": ["/agent"]},
    });
    let manifest = json!([{
        "Config": format!("{}.json", p.config_hex),
        "RepoTags": repo_tags(&p),
        "Layers": [format!("{}/layer.tar", p.layer_hex)],
    }]);
    write_atomically(out, |b| {
        append_dir(b, &format!("{}/", p.layer_hex), 0o755)?;
        append_file(b, &format!("{}/VERSION", p.layer_hex), 0o644, b"1.0")?;
        append_file(
            b,
            &format!("{}/json", p.layer_hex),
            0o644,
            &json_bytes(&layer_json)?,
        )?;
        append_file(b, &format!("{}/layer.tar", p.layer_hex), 0o644, &p.layer)?;
        append_file(b, &format!("{}.json", p.config_hex), 0o644, &p.config)?;
        append_file(b, "manifest.json", 0o644, &json_bytes(&manifest)?)?;
        append_file(b, "repositories", 0o644, &json_bytes(&repositories(&p))?)?;
        Ok(())
    })
}

/// Writes an OCI image-layout tarball of `binary` tagged `reference` (also loadable by
/// `docker load`, through the included `manifest.json`).
pub fn write_oci_layout(binary: &Path, reference: &str, out: &Path) -> io::Result<()> {
    write_oci_layout_with(binary, &ImageSpec::new(reference), out)
}

/// [`write_oci_layout`] with extra references, env or labels.
pub fn write_oci_layout_with(binary: &Path, spec: &ImageSpec, out: &Path) -> io::Result<()> {
    let p = parts(binary, spec)?;
    let manifest = json_bytes(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{}", p.config_hex),
            "size": p.config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": format!("sha256:{}", p.layer_hex),
            "size": p.layer.len(),
        }],
    }))?;
    let manifest_hex = sha256_hex(&manifest);
    let mut entries = Vec::new();
    for reference in &spec.references {
        let (_, tag) = split_reference(reference)?;
        entries.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_hex}"),
            "size": manifest.len(),
            "annotations": {
                "io.containerd.image.name": normalize_reference(reference)?,
                "org.opencontainers.image.ref.name": tag,
            },
        }));
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    });
    let docker_manifest = json!([{
        "Config": format!("blobs/sha256/{}", p.config_hex),
        "RepoTags": repo_tags(&p),
        "Layers": [format!("blobs/sha256/{}", p.layer_hex)],
    }]);
    write_atomically(out, |b| {
        append_file(b, "oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        append_dir(b, "blobs/", 0o755)?;
        append_dir(b, "blobs/sha256/", 0o755)?;
        append_file(b, &format!("blobs/sha256/{}", p.layer_hex), 0o644, &p.layer)?;
        append_file(
            b,
            &format!("blobs/sha256/{}", p.config_hex),
            0o644,
            &p.config,
        )?;
        append_file(b, &format!("blobs/sha256/{manifest_hex}"), 0o644, &manifest)?;
        append_file(b, "index.json", 0o644, &json_bytes(&index)?)?;
        append_file(b, "manifest.json", 0o644, &json_bytes(&docker_manifest)?)?;
        append_file(b, "repositories", 0o644, &json_bytes(&repositories(&p))?)?;
        Ok(())
    })
}

/// Ways to damage a tarball, for tests of the launcher's load and rollback paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corruption {
    /// Cut the file in half (the tar ends mid-entry).
    Truncated,
    /// Flip bytes inside the agent binary within the layer: every archive header still parses,
    /// but the layer no longer matches its digest / diff ID.
    FlippedLayerBytes,
    /// Replace the content with text that is not a tar archive at all.
    NotATar,
    /// A `docker save` tarball whose first image is intact and whose manifest.json lists a
    /// second image (tagged `<first tag>-broken`) with a layer the archive does not hold:
    /// dockerd tags the first image before it trips over the second.
    BrokenSecondImage,
}

/// Finds the absolute offset (in the outer tarball) of the middle of the largest file inside
/// the largest entry, which for our images is the `agent` binary inside the layer.
fn locate_layer_payload(src: &Path) -> io::Result<u64> {
    let mut outer = tar::Archive::new(File::open(src)?);
    let mut best: Option<(u64, u64)> = None; // (position, size)
    for entry in outer.entries()? {
        let entry = entry?;
        let size = entry.size();
        if best.is_none_or(|(_, s)| size > s) {
            best = Some((entry.raw_file_position(), size));
        }
    }
    let (layer_pos, layer_size) =
        best.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "empty tarball"))?;
    let mut f = File::open(src)?;
    f.seek(SeekFrom::Start(layer_pos))?;
    let mut inner = tar::Archive::new(f.take(layer_size));
    let mut inner_best: Option<(u64, u64)> = None;
    if let Ok(entries) = inner.entries() {
        for entry in entries.flatten() {
            let size = entry.size();
            if inner_best.is_none_or(|(_, s)| size > s) {
                inner_best = Some((entry.raw_file_position(), size));
            }
        }
    }
    Ok(match inner_best {
        Some((pos, size)) if size > 0 => layer_pos + pos + size / 2,
        _ => layer_pos + layer_size / 2,
    })
}

/// Copies `src` to `dst`, damaged as `how` says.
///
/// For [`Corruption::FlippedLayerBytes`] the source image should carry a unique
/// [`ImageSpec::marker`]: runtimes skip layers they already have, so a damaged copy of a layer
/// that is already loaded is accepted.
pub fn corrupt_copy(src: &Path, dst: &Path, how: Corruption) -> io::Result<()> {
    match how {
        Corruption::Truncated => {
            let data = fs::read(src)?;
            fs::write(dst, &data[..data.len() / 2])
        }
        Corruption::NotATar => fs::write(
            dst,
            b"this is not a tar archive, it is a test fixture that should be rejected\n",
        ),
        Corruption::BrokenSecondImage => broken_second_image(src, dst),
        Corruption::FlippedLayerBytes => {
            let at = locate_layer_payload(src)?;
            let mut data = fs::read(src)?;
            let at = at as usize;
            for byte in data.iter_mut().skip(at).take(16) {
                *byte ^= 0xff;
            }
            fs::write(dst, data)
        }
    }
}

/// See [`Corruption::BrokenSecondImage`].
fn broken_second_image(src: &Path, dst: &Path) -> io::Result<()> {
    let mut input = tar::Archive::new(File::open(src)?);
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for e in input.entries()? {
        let mut e = e?;
        if !e.header().entry_type().is_file() {
            continue;
        }
        let name = e.path()?.to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data)?;
        files.push((name, data));
    }
    let manifest_at = files
        .iter()
        .position(|(n, _)| n == "manifest.json")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no manifest.json"))?;
    let mut manifest: Vec<serde_json::Value> = serde_json::from_slice(&files[manifest_at].1)?;
    let mut second = manifest[0].clone();
    let tag = second["RepoTags"][0].as_str().unwrap_or("x:y").to_string();
    second["RepoTags"] = json!([format!("{tag}-broken")]);
    second["Layers"] =
        json!(["0000000000000000000000000000000000000000000000000000000000000000/layer.tar"]);
    manifest.push(second);
    files[manifest_at].1 = serde_json::to_vec(&manifest)?;
    write_atomically(dst, |b| {
        for (name, data) in &files {
            append_file(b, name, 0o644, data)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Reads every file of a tarball into memory (path → bytes).
    fn entries(path: &Path) -> HashMap<String, Vec<u8>> {
        let mut ar = tar::Archive::new(File::open(path).unwrap());
        let mut out = HashMap::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            out.insert(name, data);
        }
        out
    }

    fn fake_binary(dir: &Path) -> PathBuf {
        let p = dir.join("agent-bin");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(&p, data).unwrap();
        p
    }

    use std::path::PathBuf;

    #[test]
    fn references_split_and_normalize() {
        assert_eq!(
            split_reference("amazon/amazon-ecs-agent:latest").unwrap(),
            ("amazon/amazon-ecs-agent".into(), "latest".into())
        );
        assert_eq!(
            split_reference("localhost:5000/x").unwrap(),
            ("localhost:5000/x".into(), "latest".into())
        );
        assert!(split_reference("x@sha256:abc").is_err());
        assert_eq!(
            normalize_reference("amazon/amazon-ecs-agent:latest").unwrap(),
            "docker.io/amazon/amazon-ecs-agent:latest"
        );
        assert_eq!(
            normalize_reference("busybox").unwrap(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalize_reference("localhost:5000/a/b:v2").unwrap(),
            "localhost:5000/a/b:v2"
        );
    }

    #[test]
    fn docker_save_digests_and_layout_are_consistent() {
        let dir = tempfile::tempdir().unwrap();
        let bin = fake_binary(dir.path());
        let out = dir.path().join("img.tar");
        write_docker_save(&bin, "amazon/amazon-ecs-agent:latest", &out).unwrap();
        let files = entries(&out);

        let manifest: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
        let m = &manifest[0];
        assert_eq!(m["RepoTags"], json!(["amazon/amazon-ecs-agent:latest"]));
        let config_name = m["Config"].as_str().unwrap();
        let config_bytes = &files[config_name];
        assert_eq!(
            format!("{}.json", sha256_hex(config_bytes)),
            config_name,
            "config file is named by its digest"
        );
        let config: Value = serde_json::from_slice(config_bytes).unwrap();
        assert_eq!(config["config"]["Entrypoint"], json!(["/agent"]));
        assert_eq!(config["architecture"], "amd64");
        assert_eq!(config["os"], "linux");
        let layer_name = m["Layers"][0].as_str().unwrap();
        let layer = &files[layer_name];
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            format!("sha256:{}", sha256_hex(layer))
        );
        let repos: Value = serde_json::from_slice(&files["repositories"]).unwrap();
        assert_eq!(
            repos["amazon/amazon-ecs-agent"]["latest"],
            layer_name.trim_end_matches("/layer.tar")
        );

        // The layer holds the binary, executable, at /agent, and the directories.
        let mut ar = tar::Archive::new(&layer[..]);
        let mut seen = HashMap::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mode = e.header().mode().unwrap();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            seen.insert(name, (mode, data));
        }
        assert_eq!(seen["agent"].0, 0o755);
        assert_eq!(seen["agent"].1, fs::read(&bin).unwrap());
        for d in [
            "log/",
            "data/",
            "etc/ecs/",
            "var/cache/ecs/",
            "var/lib/ecs/",
            "tmp/",
        ] {
            assert!(seen.contains_key(d), "layer lacks {d}");
        }
        assert_eq!(seen["tmp/"].0, 0o1777);
    }

    #[test]
    fn output_is_deterministic_and_references_change_the_image_id() {
        let dir = tempfile::tempdir().unwrap();
        let bin = fake_binary(dir.path());
        let (a, b, c) = (
            dir.path().join("a.tar"),
            dir.path().join("b.tar"),
            dir.path().join("c.tar"),
        );
        write_docker_save(&bin, "x/y:1", &a).unwrap();
        write_docker_save(&bin, "x/y:1", &b).unwrap();
        write_docker_save(&bin, "x/y:2", &c).unwrap();
        assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
        let config_of = |p: &Path| {
            let files = entries(p);
            let m: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
            m[0]["Config"].as_str().unwrap().to_string()
        };
        assert_ne!(config_of(&a), config_of(&c));
    }

    #[test]
    fn oci_layout_digests_and_annotations_are_consistent() {
        let dir = tempfile::tempdir().unwrap();
        let bin = fake_binary(dir.path());
        let out = dir.path().join("oci.tar");
        let spec = ImageSpec::new("amazon/amazon-ecs-agent:latest").env("STANDIN_EXIT_CODE", "3");
        write_oci_layout_with(&bin, &spec, &out).unwrap();
        let files = entries(&out);
        assert_eq!(
            serde_json::from_slice::<Value>(&files["oci-layout"]).unwrap()["imageLayoutVersion"],
            "1.0.0"
        );
        // Every blob is named by its digest.
        for (name, data) in &files {
            if let Some(hex) = name.strip_prefix("blobs/sha256/") {
                if !hex.is_empty() {
                    assert_eq!(sha256_hex(data), hex, "blob {name} digest");
                }
            }
        }
        let index: Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let desc = &index["manifests"][0];
        assert_eq!(
            desc["annotations"]["io.containerd.image.name"],
            "docker.io/amazon/amazon-ecs-agent:latest"
        );
        assert_eq!(
            desc["annotations"]["org.opencontainers.image.ref.name"],
            "latest"
        );
        let mhex = desc["digest"]
            .as_str()
            .unwrap()
            .strip_prefix("sha256:")
            .unwrap();
        let mbytes = &files[&format!("blobs/sha256/{mhex}")];
        assert_eq!(desc["size"], mbytes.len());
        let manifest: Value = serde_json::from_slice(mbytes).unwrap();
        let chex = manifest["config"]["digest"]
            .as_str()
            .unwrap()
            .strip_prefix("sha256:")
            .unwrap();
        let config: Value =
            serde_json::from_slice(&files[&format!("blobs/sha256/{chex}")]).unwrap();
        assert_eq!(
            config["rootfs"]["diff_ids"][0], manifest["layers"][0]["digest"],
            "uncompressed layer: digest == diff id"
        );
        assert!(config["config"]["Env"]
            .as_array()
            .unwrap()
            .contains(&json!("STANDIN_EXIT_CODE=3")));
        // The docker manifest points at the same blobs.
        let dm: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
        assert_eq!(dm[0]["Config"], format!("blobs/sha256/{chex}"));
    }

    #[test]
    fn corruptions_break_what_they_claim() {
        let dir = tempfile::tempdir().unwrap();
        let bin = fake_binary(dir.path());
        let good = dir.path().join("good.tar");
        write_docker_save(&bin, "x/y:1", &good).unwrap();

        let flipped = dir.path().join("flipped.tar");
        corrupt_copy(&good, &flipped, Corruption::FlippedLayerBytes).unwrap();
        // Still a readable archive with the same names and sizes …
        let (g, f) = (entries(&good), entries(&flipped));
        assert_eq!(g.len(), f.len());
        let m: Value = serde_json::from_slice(&f["manifest.json"]).unwrap();
        let layer_name = m[0]["Layers"][0].as_str().unwrap();
        // … whose layer no longer matches its name/diff id, and only the layer changed.
        assert_ne!(sha256_hex(&f[layer_name]), sha256_hex(&g[layer_name]));
        for (name, data) in &g {
            if name != layer_name {
                assert_eq!(data, &f[name], "{name} must be untouched");
            }
        }
        // The damage is inside the agent binary, so the inner tar still parses.
        let mut inner = tar::Archive::new(&f[layer_name][..]);
        assert!(inner.entries().unwrap().all(|e| e.is_ok()));

        let truncated = dir.path().join("truncated.tar");
        corrupt_copy(&good, &truncated, Corruption::Truncated).unwrap();
        assert_eq!(
            fs::metadata(&truncated).unwrap().len(),
            fs::metadata(&good).unwrap().len() / 2
        );
        let mut ar = tar::Archive::new(File::open(&truncated).unwrap());
        let read_all = ar.entries().unwrap().try_for_each(|e| {
            let mut e = e?;
            io::copy(&mut e, &mut io::sink()).map(|_| ())
        });
        assert!(
            read_all.is_err(),
            "a truncated tarball must not read cleanly"
        );

        let junk = dir.path().join("junk.tar");
        corrupt_copy(&good, &junk, Corruption::NotATar).unwrap();
        let mut ar = tar::Archive::new(File::open(&junk).unwrap());
        assert!(ar.entries().unwrap().any(|e| e.is_err()));
    }
}
