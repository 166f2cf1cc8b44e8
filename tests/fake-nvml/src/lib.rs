//! A fake NVIDIA Management Library for the GPU tests: CI has no GPU.
//!
//! `fake_nvml.c` exports the NVML functions amazon-ecs-init calls; build.rs compiles it into a
//! shared object named `libnvidia-ml.so.1`. Its answers come from a scenario file next to the
//! loaded library (see the C file for the keys), and it logs every call next to itself, so
//! [`install`] gives each test its own copy and tests run in parallel.
use std::path::{Path, PathBuf};

/// The built library (in cargo's `OUT_DIR`).
pub const LIBRARY: &str = env!("FAKE_NVML_LIBRARY");

/// The library's file name: the soname the launcher opens by default.
pub const SONAME: &str = "libnvidia-ml.so.1";

/// Copy the fake into `dir` as `libnvidia-ml.so.1` with `scenario` (lines of `key=value`)
/// beside it, and clear its call log. Returns the library's path.
pub fn install(dir: &Path, scenario: &str) -> PathBuf {
    std::fs::create_dir_all(dir).expect("create the fake NVML directory");
    let lib = dir.join(SONAME);
    std::fs::copy(LIBRARY, &lib).expect("copy the fake NVML library");
    std::fs::write(side_file(&lib, "scenario"), scenario).expect("write the scenario");
    let _ = std::fs::remove_file(side_file(&lib, "calls"));
    lib
}

/// Replace the scenario of the copy in `dir` (already [`install`]ed) and clear its call log,
/// without rewriting the library itself.
pub fn set_scenario(dir: &Path, scenario: &str) {
    let lib = dir.join(SONAME);
    std::fs::write(side_file(&lib, "scenario"), scenario).expect("write the scenario");
    let _ = std::fs::remove_file(side_file(&lib, "calls"));
}

/// The calls made so far to the copy in `dir`, one entry each (`name` or `name index`).
pub fn calls(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(side_file(&dir.join(SONAME), "calls"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn side_file(lib: &Path, suffix: &str) -> PathBuf {
    let mut name = lib.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}
