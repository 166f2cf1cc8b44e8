//! The docker-save / OCI archive reader and verifier: any bytes, no panic, bounded memory
//! (libFuzzer's -malloc_limit_mb catches a runaway allocation).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ecs_formats::archive::verify_reader(data);
});
