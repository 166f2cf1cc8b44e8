//! The agent image cache: `/var/cache/ecs/ecs-agent.tar` and its state file
//! (UPSTREAM-BEHAVIOUR.md §5).
//!
//! State 0 = uncached, 1 = cached (loaded), 2 = reload needed (packages ship 2). Both files must
//! exist and be non-empty to count as cached at all; an uncached host downloads the agent first
//! (an [`AgentSource`]: [`crate::download`]). A failed download or load changes neither the state
//! file nor any image already in the runtime.
use ecs_backends::{Runtime, RuntimeError};
use serde::Serialize;
use std::path::{Path, PathBuf};

use crate::agent::AGENT_IMAGE;
use crate::download::DownloadError;
use crate::paths::{write_atomic, Paths};

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
        "loading {} succeeded but it did not contain {image} (it contained: {found:?})",
        tarball.display()
    )]
    WrongImage {
        tarball: PathBuf,
        image: &'static str,
        found: Vec<String>,
    },
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
    let text = std::fs::read_to_string(&state_file).map_err(|e| CacheError::BadState {
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
    write_atomic(&path, (state as u8).to_string().as_bytes())
        .map_err(|source| CacheError::Write { path, source })
}

/// Load `tarball` and check it brought the agent image; the state file is written by the
/// caller only after this succeeded.
pub async fn load(runtime: &dyn Runtime, tarball: &Path) -> Result<(), CacheError> {
    tracing::info!(tarball = %tarball.display(), runtime = runtime.name(), "loading agent image");
    crate::notify::extend_timeout(std::time::Duration::from_secs(300));
    let found = runtime
        .load_image(tarball)
        .await
        .map_err(|source| CacheError::Load {
            tarball: tarball.to_path_buf(),
            source,
        })?;
    if !runtime.image_present(AGENT_IMAGE).await? {
        return Err(CacheError::WrongImage {
            tarball: tarball.to_path_buf(),
            image: AGENT_IMAGE,
            found,
        });
    }
    tracing::info!(references = ?found, "agent image loaded");
    Ok(())
}

/// Pre-start: make sure the agent image is in the runtime, per the state file. Uncached: download
/// (whether or not an image is present, like the Go tool), load, then record state 1.
pub async fn ensure_image(
    paths: &Paths,
    runtime: &dyn Runtime,
    source: &dyn AgentSource,
) -> Result<(), CacheError> {
    let state = state(paths)?;
    let present = runtime.image_present(AGENT_IMAGE).await?;
    tracing::info!(?state, present, "agent image cache");
    match (state, present) {
        (CacheState::Uncached, _) => {
            let tarball = source.fetch().await?;
            load(runtime, &tarball).await?;
            set_state(paths, CacheState::Cached)
        }
        (CacheState::Cached, true) => Ok(()),
        (CacheState::Cached, false) | (CacheState::ReloadNeeded, _) => {
            load(runtime, &paths.agent_tarball()).await?;
            set_state(paths, CacheState::Cached)
        }
    }
}

/// `reload-cache`: load the cached tarball again, whatever the state says.
pub async fn reload(paths: &Paths, runtime: &dyn Runtime) -> Result<(), CacheError> {
    let tar = paths.agent_tarball();
    if !non_empty(&tar) {
        return Err(CacheError::NotCached {
            image: AGENT_IMAGE,
            tarball: tar,
            state: paths.cache_state(),
        });
    }
    load(runtime, &tar).await?;
    set_state(paths, CacheState::Cached)
}

/// The tarball named by `/var/cache/ecs/desired-image`: its first line, which must end in
/// `\n`; only its basename counts and it is resolved under `/var/cache/ecs/`.
pub fn desired_tarball(paths: &Paths) -> Result<PathBuf, CacheError> {
    let path = paths.desired_image();
    let bad = |reason: String| CacheError::DesiredImage {
        path: path.clone(),
        reason,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
    let Some((first, _)) = text.split_once('\n') else {
        return Err(bad("the first line must end with a newline".into()));
    };
    let name = Path::new(first.trim())
        .file_name()
        .ok_or_else(|| bad(format!("{first:?} names no file")))?;
    Ok(paths.var_cache_ecs.join(name))
}

/// Agent exit 42: load the desired image and record it as cached.
pub async fn load_desired(paths: &Paths, runtime: &dyn Runtime) -> Result<PathBuf, CacheError> {
    let tarball = desired_tarball(paths)?;
    load(runtime, &tarball).await?;
    set_state(paths, CacheState::Cached)?;
    Ok(tarball)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            std::fs::write(&self.dest, "downloaded").unwrap();
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
}
