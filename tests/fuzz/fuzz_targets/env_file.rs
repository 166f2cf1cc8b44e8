//! The env-file parser and merge (`/etc/ecs/ecs.config`, `/var/lib/ecs/ecs.config`): any
//! bytes, no panic; every line it keeps fits an environment.
#![no_main]
use ecs_formats::envfile::{parse_bool, Config, MAX_ENV_STRING};
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).into_owned();
    let cfg = Config::from_parts(&[
        (PathBuf::from("/var/lib/ecs/ecs.config"), text.clone()),
        (PathBuf::from("/etc/ecs/ecs.config"), text),
    ]);
    for w in cfg.warnings.iter().chain(&cfg.errors) {
        let _ = w.to_string();
    }
    for e in &cfg.file_env {
        assert!(!e.key.is_empty() && !e.value.contains('\0'));
        assert!(e.key.len() + e.value.len() + 2 <= MAX_ENV_STRING);
        let _ = parse_bool(&e.value);
    }
    let _ = cfg.redacted_file_env();
});
