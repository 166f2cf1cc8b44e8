//! `ECS_AGENT_LABELS` / `ECS_LOG_OPTS` JSON and its redaction: any text, no panic; a secret
//! member's value never survives redaction.
#![no_main]
use ecs_formats::envfile::parse_string_map;
use ecs_formats::redact::{is_secret_key, redacted_pair};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let shown = redacted_pair("ECS_LOG_OPTS", &text);
    if let Ok(map) = parse_string_map(&text) {
        for (k, v) in &map {
            if is_secret_key(k) && v.len() > 8 && !k.contains(v.as_str()) {
                assert!(!shown.contains(&format!("{v:?}")), "{k} shown");
            }
        }
    }
});
