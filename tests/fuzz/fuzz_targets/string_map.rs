//! `ECS_AGENT_LABELS` / `ECS_LOG_OPTS` JSON and its redaction: any text, no panic; whatever the
//! options parser reads as an object with a secret member is shown as that object with every
//! secret member's value replaced by the marker and every other member unchanged.
#![no_main]
use ecs_formats::envfile::parse_string_map;
use ecs_formats::redact::{is_secret_key, redacted_pair, REDACTED};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let shown = redacted_pair("ECS_LOG_OPTS", &text);
    let Ok(map) = parse_string_map(&text) else {
        return;
    };
    if !map.keys().any(|k| is_secret_key(k)) {
        return;
    }
    let json = shown.strip_prefix("ECS_LOG_OPTS=").expect("the key is kept");
    let redacted = parse_string_map(json).expect("the redacted value is still a JSON object");
    assert_eq!(redacted.len(), map.len(), "{shown}");
    for (k, v) in &map {
        let expected = if is_secret_key(k) { REDACTED } else { v.as_str() };
        assert_eq!(redacted[k], expected, "{k} in {shown}");
    }
});
