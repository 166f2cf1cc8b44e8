//! Host primitives shared by every crate of the launcher.
//!
//! * [`exec`]: the seam for every external program the launcher runs (iptables, nft,
//!   apparmor_parser, realm, …): one trait, a real implementation and a recording double, so
//!   the decisions around those programs are unit-tested without touching the host.
//! * [`files`]: creating and replacing files in directories the agent container can write
//!   (`/var/lib/ecs`, `/var/log/ecs`, `/var/cache/ecs`) without following planted symlinks.
//! * [`record`]: the one format of the small records the launcher leaves for its later actions
//!   (which runtime and which firewall backend are in use).
//! * [`selection`]: a backend choice and its reason, the same shape for both seams.
//! * [`backoff`]: exponential backoff with jitter, for every retry loop.
pub mod backoff;
pub mod exec;
pub mod files;
pub mod record;
pub mod selection;

pub use backoff::Backoff;
pub use exec::{Exec, Output, SystemExec};
pub use record::Record;
pub use selection::Selection;
