//! Errors of the runtime backends.
use containerd_client::tonic::Code;
use std::path::PathBuf;
use std::time::Duration;

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The daemon's socket is missing or refuses connections.
    #[error("cannot connect to {runtime} at {endpoint}: {reason}")]
    Connect {
        runtime: &'static str,
        endpoint: String,
        reason: String,
    },
    /// The connection broke while a request was in flight (the daemon died or restarted under
    /// us): whether the request took effect is unknown.
    #[error("{runtime}: {action}: the connection broke ({reason})")]
    Lost {
        runtime: &'static str,
        action: String,
        reason: String,
    },
    /// The daemon did not answer before the deadline.
    #[error("{runtime} did not answer within {waited:?}: {source}")]
    Unavailable {
        runtime: &'static str,
        waited: Duration,
        #[source]
        source: Box<RuntimeError>,
    },
    /// The image tarball is missing, truncated or not a `docker save`/OCI archive.
    #[error("bad image tarball {path}: {reason}")]
    BadTarball { path: PathBuf, reason: String },
    /// No container of that name exists.
    #[error("no container named {0}")]
    NoSuchContainer(String),
    /// containerd refused a call; the gRPC status code stays typed so callers can match on it.
    #[error("containerd: {action}: {code:?}: {message}")]
    Containerd {
        action: String,
        code: Code,
        message: String,
    },
    /// Any other error the daemon reported, with what we were doing.
    #[error("{runtime}: {action}: {message}")]
    Daemon {
        runtime: &'static str,
        action: String,
        message: String,
    },
    #[error("{action}: {source}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },
}

impl RuntimeError {
    /// Shorthand for [`RuntimeError::Daemon`].
    pub fn daemon(
        runtime: &'static str,
        action: impl Into<String>,
        message: impl ToString,
    ) -> Self {
        RuntimeError::Daemon {
            runtime,
            action: action.into(),
            message: message.to_string(),
        }
    }

    /// The runtime went away (or never answered): waiting for it and trying again may help,
    /// unlike a refusal.
    pub fn is_lost_runtime(&self) -> bool {
        matches!(
            self,
            RuntimeError::Connect { .. }
                | RuntimeError::Lost { .. }
                | RuntimeError::Unavailable { .. }
        )
    }

    /// The gRPC status code of a containerd refusal.
    pub fn grpc_code(&self) -> Option<Code> {
        match self {
            RuntimeError::Containerd { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Shorthand for [`RuntimeError::Io`].
    pub fn io(action: impl Into<String>, source: std::io::Error) -> Self {
        RuntimeError::Io {
            action: action.into(),
            source,
        }
    }
}
