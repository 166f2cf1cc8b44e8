//! The env-file parser and the settings resolved from it: any bytes, no panic.
#![no_main]
use amazon_ecs_init::config::Config;
use amazon_ecs_init::paths::Paths;
use amazon_ecs_init::settings::Settings;
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).into_owned();
    let cfg = Config::from_parts(&[(PathBuf::from("/etc/ecs/ecs.config"), text)]);
    for w in cfg.warnings.iter().chain(&cfg.errors) {
        let _ = w.to_string();
    }
    let settings = Settings::resolve(Default::default(), Paths::under("/"), cfg);
    let _ = settings.check();
    let _ = settings.secret_values();
});
