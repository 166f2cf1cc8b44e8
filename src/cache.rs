//! The agent image cache: `/var/cache/ecs/ecs-agent.tar` and its state file
//! (packaging/COMPATIBILITY.md §5).
//!
//! State 0 = uncached, 1 = cached (loaded), 2 = reload needed (packages ship 2). Both files must
//! exist and be non-empty to count as cached at all; an uncached host downloads the agent first
//! (an [`AgentSource`]: [`crate::download`]). A failed download or load changes neither the state
//! file nor any image already in the runtime.
use ecs_runtime::archive;
use ecs_runtime::reference::familiar_reference;
use ecs_runtime::{Runtime, RuntimeError};
use serde::Serialize;
use std::path::{Path, PathBuf};

use crate::agent::AGENT_IMAGE;
use crate::download::DownloadError;
use crate::paths::Paths;

/// Where the agent tarball of an uncached host comes from (the S3 download; a fake in tests).
#[async_trait::async_trait]
pub trait AgentSource: Send + Sync {
    /// Put a complete, verified tarball in place and return its path; on failure leave every
    /// file as it was.
    async fn fetch(&self) -> Result<PathBuf, DownloadError>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheState {
    Uncached = 0,
    Cached = 1,
    ReloadNeeded = 2,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{}: {reason}", path.display())]
    BadState { path: PathBuf, reason: String },
    #[error(
        "the agent tarball {} for {image} is missing or empty (pre-start downloads it when the \
         cache is uncached; or place a `docker save` tarball there and write 2 to {})",
        tarball.display(),
        state.display()
    )]
    NotCached {
        image: &'static str,
        tarball: PathBuf,
        state: PathBuf,
    },
    #[error("{}: {reason}", path.display())]
    DesiredImage { path: PathBuf, reason: String },
    #[error("loading {}: {source}", tarball.display())]
    Load {
        tarball: PathBuf,
        #[source]
        source: RuntimeError,
    },
    #[error(
        "{} does not contain {image} (it contains: {found:?})",
        tarball.display()
    )]
    WrongImage {
        tarball: PathBuf,
        image: &'static str,
        found: Vec<String>,
    },
    #[error(
        "loading {} did not update {image}: the runtime still has image {now}, the tarball's is {expected}",
        tarball.display()
    )]
    NotUpdated {
        tarball: PathBuf,
        image: &'static str,
        now: String,
        expected: String,
    },
    #[error(
        "refusing {}: its agent image {image} was rolled back before (README, Updates)",
        tarball.display()
    )]
    Refused { tarball: PathBuf, image: String },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Download(#[from] DownloadError),
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn non_empty(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.len() > 0)
        .unwrap_or(false)
}

/// The cache state as the files say.
pub fn state(paths: &Paths) -> Result<CacheState, CacheError> {
    let (tar, state_file) = (paths.agent_tarball(), paths.cache_state());
    if !non_empty(&tar) || !non_empty(&state_file) {
        return Ok(CacheState::Uncached);
    }
    // /var/cache/ecs is writable by the agent: never follow a symlink planted there.
    let text =
        ecs_host::files::read_to_string_capped(&state_file, ecs_host::files::caps::CACHE_STATE)
            .map_err(|e| CacheError::BadState {
                path: state_file.clone(),
                reason: e.to_string(),
            })?;
    match text.trim() {
        "0" => Ok(CacheState::Uncached),
        "1" => Ok(CacheState::Cached),
        "2" => Ok(CacheState::ReloadNeeded),
        other => Err(CacheError::BadState {
            path: state_file,
            reason: format!("expected 0, 1 or 2, found {other:?}"),
        }),
    }
}

fn set_state(paths: &Paths, state: CacheState) -> Result<(), CacheError> {
    let path = paths.cache_state();
    ecs_host::files::write_atomic(&path, (state as u8).to_string().as_bytes(), 0o644)
        .map_err(|source| CacheError::Write { path, source })
}

/// The agent image a tarball holds: its ID (config digest) and a version to name it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarballImage {
    pub image_id: String,
    /// The image's `org.opencontainers.image.version` (or `version`) label, else the tarball's
    /// file name (an update's is `ecs-agent-v<version>.tar`).
    pub version: String,
}

fn version_of(config: &ecs_formats::image::ImageConfig, tarball: &Path) -> String {
    let labels = config.labels.as_ref();
    ["org.opencontainers.image.version", "version"]
        .iter()
        .find_map(|k| {
            labels
                .and_then(|l| l.get(*k))
                .filter(|v| !v.trim().is_empty())
        })
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| {
            tarball
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
}

/// The agent image in `tarball`: the whole archive is verified first, and a tarball without
/// the agent image is refused before anything is loaded.
pub async fn agent_image_in(tarball: &Path) -> Result<TarballImage, CacheError> {
    let path = tarball.to_path_buf();
    let images = tokio::task::spawn_blocking(move || {
        ecs_host::files::open_read(&path)
            .map_err(|e| format!("cannot open: {e}"))
            .and_then(archive::verify_file)
    })
    .await
    .map_err(|e| CacheError::Load {
        tarball: tarball.to_path_buf(),
        source: RuntimeError::io("verify image tarball", std::io::Error::other(e)),
    })?
    .map_err(|reason| CacheError::Load {
        tarball: tarball.to_path_buf(),
        source: RuntimeError::BadTarball {
            path: tarball.to_path_buf(),
            reason,
        },
    })?;
    let wanted = familiar_reference(AGENT_IMAGE);
    images
        .iter()
        .find(|i| i.names.iter().any(|n| familiar_reference(n) == wanted))
        .map(|i| TarballImage {
            image_id: i.config_digest.clone(),
            version: version_of(&i.config.config.clone().unwrap_or_default(), tarball),
        })
        .ok_or_else(|| CacheError::WrongImage {
            tarball: tarball.to_path_buf(),
            image: AGENT_IMAGE,
            found: images.iter().flat_map(|i| i.names.clone()).collect(),
        })
}

/// What a load brought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub tarball: PathBuf,
    /// The agent image's ID in the runtime now, and its version.
    pub image: TarballImage,
}

/// Load `tarball` and check that it brought the agent image: the tarball must contain it, and
/// afterwards the runtime's agent image must be the tarball's (its ID is the tarball's config
/// digest, or at least changed). The state file is written by the caller only after this
/// succeeded.
pub async fn load(runtime: &dyn Runtime, tarball: &Path) -> Result<Loaded, CacheError> {
    let image = agent_image_in(tarball).await?;
    load_checked(runtime, tarball, image).await
}

/// [`load`] of a tarball whose agent image ([`agent_image_in`]) the caller has read already, so
/// that the tarball is not read and hashed a second time.
pub async fn load_checked(
    runtime: &dyn Runtime,
    tarball: &Path,
    image: TarballImage,
) -> Result<Loaded, CacheError> {
    let TarballImage {
        image_id: expected,
        version,
    } = image;
    tracing::info!(tarball = %tarball.display(), runtime = runtime.name(), "loading agent image");
    crate::notify::extend_timeout(std::time::Duration::from_secs(300));
    let before = runtime.image_id(AGENT_IMAGE).await?;
    let found = runtime
        .load_image(tarball)
        .await
        .map_err(|source| CacheError::Load {
            tarball: tarball.to_path_buf(),
            source,
        })?;
    let now = runtime.image_id(AGENT_IMAGE).await?;
    match now {
        None => Err(CacheError::WrongImage {
            tarball: tarball.to_path_buf(),
            image: AGENT_IMAGE,
            found,
        }),
        Some(id) if id != expected && Some(&id) == before.as_ref() => Err(CacheError::NotUpdated {
            tarball: tarball.to_path_buf(),
            image: AGENT_IMAGE,
            now: id,
            expected,
        }),
        Some(id) => {
            tracing::info!(references = ?found, image_id = %id, %version, "agent image loaded");
            Ok(Loaded {
                tarball: tarball.to_path_buf(),
                image: TarballImage {
                    image_id: id,
                    version,
                },
            })
        }
    }
}

/// Pre-start: make sure the agent image is in the runtime, per the state file. Uncached: download
/// (whether or not an image is present, like the Go tool), load, then record state 1. Returns
/// what was loaded, if anything.
pub async fn ensure_image(
    paths: &Paths,
    runtime: &dyn Runtime,
    source: &dyn AgentSource,
) -> Result<Option<Loaded>, CacheError> {
    let state = state(paths)?;
    let present = runtime.image_present(AGENT_IMAGE).await?;
    tracing::info!(?state, present, "agent image cache");
    match (state, present) {
        (CacheState::Uncached, _) => {
            let tarball = source.fetch().await?;
            let loaded = load(runtime, &tarball).await?;
            set_state(paths, CacheState::Cached)?;
            Ok(Some(loaded))
        }
        (CacheState::Cached, true) => Ok(None),
        (CacheState::Cached, false) | (CacheState::ReloadNeeded, _) => {
            let loaded = load(runtime, &paths.agent_tarball()).await?;
            set_state(paths, CacheState::Cached)?;
            Ok(Some(loaded))
        }
    }
}

/// `reload-cache`: load the cached tarball again, whatever the state says; on an uncached host
/// (the same test as `pre-start`'s: state missing, empty or 0, or the tarball missing or empty)
/// download it first, as `pre-start` does (the Go tool's `ReloadCache` does the same).
pub async fn reload(
    paths: &Paths,
    runtime: &dyn Runtime,
    source: &dyn AgentSource,
) -> Result<Loaded, CacheError> {
    if state(paths)? == CacheState::Uncached {
        tracing::info!("reload-cache: nothing is cached; downloading the agent");
        source.fetch().await?;
    }
    reload_cached(paths, runtime).await
}

/// Load the cached tarball again, never downloading (the rollback's fallback: another version
/// from the network is no rollback).
pub async fn reload_cached(paths: &Paths, runtime: &dyn Runtime) -> Result<Loaded, CacheError> {
    let tar = paths.agent_tarball();
    if !non_empty(&tar) {
        return Err(CacheError::NotCached {
            image: AGENT_IMAGE,
            tarball: tar,
            state: paths.cache_state(),
        });
    }
    let loaded = load(runtime, &tar).await?;
    set_state(paths, CacheState::Cached)?;
    Ok(loaded)
}

/// The tarball named by `/var/cache/ecs/desired-image`: its first line, which must end in
/// `\n`; only its basename counts and it is resolved under `/var/cache/ecs/`.
pub fn desired_tarball(paths: &Paths) -> Result<PathBuf, CacheError> {
    let path = paths.desired_image();
    let bad = |reason: String| CacheError::DesiredImage {
        path: path.clone(),
        reason,
    };
    let text = ecs_host::files::read_to_string_capped(&path, ecs_host::files::caps::DESIRED_IMAGE)
        .map_err(|e| bad(e.to_string()))?;
    parse_desired_image(&text, &paths.var_cache_ecs).map_err(bad)
}

use ecs_formats::desired::parse_desired_image;

/// Agent exit 42: load the desired image and record it as cached.
pub async fn load_desired(paths: &Paths, runtime: &dyn Runtime) -> Result<Loaded, CacheError> {
    let tarball = desired_tarball(paths)?;
    let image = agent_image_in(&tarball).await?;
    load_desired_checked(paths, runtime, &tarball, image).await
}

/// [`load_desired`] of `tarball` (the one `desired-image` names), whose agent image the caller
/// has read already (the rollback checks it against the refused updates first).
pub async fn load_desired_checked(
    paths: &Paths,
    runtime: &dyn Runtime,
    tarball: &Path,
    image: TarballImage,
) -> Result<Loaded, CacheError> {
    let loaded = load_checked(runtime, tarball, image).await?;
    set_state(paths, CacheState::Cached)?;
    Ok(loaded)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small, valid `docker save` tarball of the agent image (`content` makes it unique).
    pub(crate) fn agent_tar(content: &str) -> Vec<u8> {
        archive::testing::docker_save(AGENT_IMAGE, content.as_bytes(), false)
    }

    fn root() -> (tempfile::TempDir, Paths) {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        std::fs::create_dir_all(&paths.var_cache_ecs).unwrap();
        (dir, paths)
    }

    #[test]
    fn state_needs_both_files_non_empty() {
        let (_d, p) = root();
        assert_eq!(state(&p).unwrap(), CacheState::Uncached);
        std::fs::write(p.cache_state(), "2").unwrap();
        assert_eq!(state(&p).unwrap(), CacheState::Uncached, "no tarball");
        std::fs::write(p.agent_tarball(), "").unwrap();
        assert_eq!(state(&p).unwrap(), CacheState::Uncached, "empty tarball");
        std::fs::write(p.agent_tarball(), "x").unwrap();
        assert_eq!(state(&p).unwrap(), CacheState::ReloadNeeded);
        std::fs::write(p.cache_state(), "1\n").unwrap();
        assert_eq!(state(&p).unwrap(), CacheState::Cached);
        std::fs::write(p.cache_state(), "7").unwrap();
        let err = state(&p).unwrap_err().to_string();
        assert!(
            err.contains("var/cache/ecs/state") && err.contains("\"7\""),
            "{err}"
        );
    }

    #[test]
    fn planted_symlinks_in_the_cache_are_not_followed() {
        let (d, p) = root();
        let target = d.path().join("elsewhere");
        std::fs::write(&target, "1\n/x/ecs-agent-v2.tar\n").unwrap();
        std::fs::write(p.agent_tarball(), "x").unwrap();
        std::os::unix::fs::symlink(&target, p.cache_state()).unwrap();
        std::os::unix::fs::symlink(&target, p.desired_image()).unwrap();
        let err = state(&p).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        let err = desired_tarball(&p).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
    }

    #[test]
    fn desired_image_rules() {
        let (_d, p) = root();
        assert!(desired_tarball(&p).is_err());
        std::fs::write(p.desired_image(), "/somewhere/else/ecs-agent-v2.tar").unwrap();
        let err = desired_tarball(&p).unwrap_err().to_string();
        assert!(err.contains("newline"), "{err}");
        std::fs::write(
            p.desired_image(),
            "/somewhere/else/ecs-agent-v2.tar\nignored\n",
        )
        .unwrap();
        assert_eq!(
            desired_tarball(&p).unwrap(),
            p.var_cache_ecs.join("ecs-agent-v2.tar")
        );
    }

    /// Writes the tarball when it succeeds; changes nothing when it fails.
    struct FakeSource {
        dest: PathBuf,
        fail: bool,
        calls: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl AgentSource for FakeSource {
        async fn fetch(&self) -> Result<PathBuf, DownloadError> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if self.fail {
                return Err(DownloadError::Arch("test".into()));
            }
            std::fs::write(&self.dest, agent_tar("downloaded")).unwrap();
            Ok(self.dest.clone())
        }
    }

    impl FakeSource {
        fn new(p: &Paths, fail: bool) -> FakeSource {
            FakeSource {
                dest: p.agent_tarball(),
                fail,
                calls: 0.into(),
            }
        }
        fn calls(&self) -> usize {
            self.calls.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    /// `reload-cache` loads the tarball whatever the state says, and on an uncached host
    /// downloads it first (as the Go tool does) instead of failing.
    #[tokio::test]
    async fn reload_downloads_on_an_uncached_host() {
        use crate::testing::FakeRuntime;
        let (_d, p) = root();
        let rt = FakeRuntime::default();
        // Uncached and the download fails: its error, nothing loaded, no state.
        let none = FakeSource::new(&p, true);
        let err = reload(&p, &rt, &none).await.unwrap_err().to_string();
        assert!(err.contains("test architecture"), "{err}");
        assert!(rt.loaded().is_empty() && !p.cache_state().exists());
        // Uncached: downloaded, loaded, state 1.
        let dl = FakeSource::new(&p, false);
        reload(&p, &rt, &dl).await.unwrap();
        assert_eq!((dl.calls(), rt.loaded().len()), (1, 1));
        assert_eq!(std::fs::read_to_string(p.cache_state()).unwrap(), "1");
        // Cached (1) or reload needed (2): loaded again, no download.
        for state in ["1", "2"] {
            std::fs::write(p.cache_state(), state).unwrap();
            reload(&p, &rt, &none).await.unwrap();
            assert_eq!(none.calls(), 1, "state {state}: no download");
            assert_eq!(std::fs::read_to_string(p.cache_state()).unwrap(), "1");
        }
        assert_eq!(rt.loaded().len(), 3);
    }

    #[tokio::test]
    async fn ensure_image_follows_the_state_table() {
        use crate::testing::FakeRuntime;
        let (_d, p) = root();
        let none = FakeSource::new(&p, true);
        // Uncached and the download fails: its error; nothing loaded, no state written.
        let rt = FakeRuntime::default();
        let err = ensure_image(&p, &rt, &none).await.unwrap_err().to_string();
        assert!(err.contains("test architecture"), "{err}");
        assert!(rt.loaded().is_empty());
        assert!(!p.cache_state().exists());
        // Uncached, even with an image present (like the Go tool): downloaded, loaded, state 1.
        rt.set_image_present(true);
        let dl = FakeSource::new(&p, false);
        ensure_image(&p, &rt, &dl).await.unwrap();
        assert_eq!(dl.calls(), 1);
        assert_eq!(rt.loaded(), [p.agent_tarball()]);
        assert_eq!(std::fs::read_to_string(p.cache_state()).unwrap(), "1");
        // State 0 with a tarball is uncached too.
        std::fs::write(p.cache_state(), "0").unwrap();
        ensure_image(&p, &rt, &dl).await.unwrap();
        assert_eq!(dl.calls(), 2);
        // Reload needed: loaded even though present, no download, then state 1.
        std::fs::write(p.cache_state(), "2").unwrap();
        ensure_image(&p, &rt, &none).await.unwrap();
        assert_eq!(rt.loaded().len(), 3);
        assert_eq!(std::fs::read_to_string(p.cache_state()).unwrap(), "1");
        // Cached and present: no load.
        ensure_image(&p, &rt, &none).await.unwrap();
        assert_eq!(rt.loaded().len(), 3);
        // Cached but missing from the runtime: loaded again.
        rt.set_image_present(false);
        ensure_image(&p, &rt, &none).await.unwrap();
        assert_eq!(rt.loaded().len(), 4);
        assert_eq!(none.calls(), 1, "only the uncached case downloads");
    }

    #[tokio::test]
    async fn a_tarball_without_the_agent_image_is_refused_and_the_state_kept() {
        use crate::testing::FakeRuntime;
        let (_d, p) = root();
        let other = archive::testing::docker_save("busybox:latest", b"x", false);
        std::fs::write(p.agent_tarball(), other).unwrap();
        std::fs::write(p.cache_state(), "2").unwrap();
        // An older agent image is present: that must not count as loaded.
        let rt = FakeRuntime::default();
        rt.set_image_present(true);
        let none = FakeSource::new(&p, true);
        let err = ensure_image(&p, &rt, &none).await.unwrap_err().to_string();
        assert!(
            err.contains("does not contain amazon/amazon-ecs-agent:latest"),
            "{err}"
        );
        assert!(err.contains("busybox:latest"), "{err}");
        assert!(rt.loaded().is_empty(), "nothing loaded");
        assert_eq!(std::fs::read_to_string(p.cache_state()).unwrap(), "2");
        // A corrupt tarball: refused before the runtime sees it.
        std::fs::write(p.agent_tarball(), b"not a tarball at all").unwrap();
        let err = ensure_image(&p, &rt, &none).await.unwrap_err().to_string();
        assert!(err.contains("ecs-agent.tar"), "{err}");
        assert!(rt.loaded().is_empty());
        assert_eq!(std::fs::read_to_string(p.cache_state()).unwrap(), "2");
    }

    #[tokio::test]
    async fn a_load_that_leaves_the_old_agent_image_in_place_is_an_error() {
        use crate::testing::FakeRuntime;
        let (_d, p) = root();
        std::fs::write(p.agent_tarball(), agent_tar("v2")).unwrap();
        std::fs::write(p.cache_state(), "2").unwrap();
        let rt = FakeRuntime::default();
        rt.set_image_present(true);
        rt.keep_image_on_load();
        let none = FakeSource::new(&p, true);
        let err = ensure_image(&p, &rt, &none).await.unwrap_err().to_string();
        assert!(
            err.contains("did not update amazon/amazon-ecs-agent:latest"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(p.cache_state()).unwrap(), "2");
    }

    /// Issue 20 (1, 3): a `*.tar` named by `desired-image` that is a symlink to a valid agent
    /// tarball, or a FIFO, is refused before the runtime sees it (before: loaded as the agent,
    /// or the open waited for a writer forever).
    #[tokio::test]
    async fn a_desired_tarball_that_is_a_symlink_or_a_fifo_is_refused() {
        use crate::testing::FakeRuntime;
        let (d, p) = root();
        let valid = d.path().join("elsewhere.tar");
        std::fs::write(&valid, agent_tar("v2")).unwrap();
        std::os::unix::fs::symlink(&valid, p.var_cache_ecs.join("ecs-agent-v2.tar")).unwrap();
        std::fs::write(p.desired_image(), "ecs-agent-v2.tar\n").unwrap();
        let rt = FakeRuntime::default();
        let err = load_desired(&p, &rt).await.unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        std::fs::remove_file(p.var_cache_ecs.join("ecs-agent-v2.tar")).unwrap();
        assert!(std::process::Command::new("mkfifo")
            .arg(p.var_cache_ecs.join("ecs-agent-v2.tar"))
            .status()
            .unwrap()
            .success());
        let err = tokio::time::timeout(std::time::Duration::from_secs(5), load_desired(&p, &rt))
            .await
            .expect("waited on a FIFO")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a regular file"), "{err}");
        assert_eq!(rt.calls_of("load_image"), 0);
        assert!(rt.loaded().is_empty());
    }
}
