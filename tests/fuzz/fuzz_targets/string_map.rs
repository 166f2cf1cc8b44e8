//! `ECS_AGENT_LABELS` / `ECS_LOG_OPTS` JSON and its redaction: any text, no panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = amazon_ecs_init::config::parse_string_map(&text);
    let _ = ecs_backends::redacted_pair("ECS_LOG_OPTS", &text);
});
