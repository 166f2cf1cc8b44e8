//! Std-only pieces shared by the launcher and its two small static programs (`ecs-agent-init`
//! on containerd hosts, and the stand-in agent of the tests): no dependencies, so those
//! binaries stay small and build from `std` alone.
pub mod caps;
pub mod json;
pub mod time;
