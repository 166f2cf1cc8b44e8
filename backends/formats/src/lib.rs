//! The launcher's readers of untrusted input: what an operator, a tool or the agent container
//! writes and the launcher reads as root. Kept in one crate with few dependencies so that the
//! fuzz targets (`tests/fuzz`) build in a minute and cover exactly this code.
//!
//! * [`envfile`]: `/etc/ecs/ecs.config` and `/var/lib/ecs/ecs.config`, parsed like the Go tool.
//! * [`archive`]: `docker save` and OCI image archives, read and verified.
//! * [`image`]: the parts of an image config the launcher uses.
//! * [`desired`]: `/var/cache/ecs/desired-image`, written by the agent.
//! * [`redact`]: which values are secrets and how they are shown.
pub mod archive;
pub mod desired;
pub mod envfile;
pub mod image;
pub mod redact;
