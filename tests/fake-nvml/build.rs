//! Compiles `fake_nvml.c` into `$OUT_DIR/libnvidia-ml.so.1` and tells the crate where it is.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let src = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"))
        .join("fake_nvml.c");
    let lib = out.join("libnvidia-ml.so.1");
    println!("cargo:rerun-if-changed={}", src.display());
    // cc::Build knows the target's C compiler and base flags; a shared object needs its own
    // link line, which cc::Build (static archives only) does not make.
    let compiler = cc::Build::new().cargo_metadata(false).get_compiler();
    let mut cmd: Command = compiler.to_command();
    cmd.args(["-shared", "-fPIC", "-Wall", "-Wextra", "-Werror"])
        .arg("-Wl,-soname,libnvidia-ml.so.1")
        .arg("-o")
        .arg(&lib)
        .arg(&src);
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C compiler {cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed: {status}");
    println!("cargo:rustc-env=FAKE_NVML_LIBRARY={}", lib.display());
}
