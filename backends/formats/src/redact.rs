//! Which configuration values are secrets, and how they are shown wherever config is printed
//! or logged (the logger also scrubs the values themselves from every line).

/// What a secret value is replaced by wherever config is printed or logged.
pub const REDACTED: &str = "<redacted>";

/// Is the value of this key (an env var or log option) a secret that must never be printed?
///
/// Matches `ECS_ENGINE_AUTH_DATA`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` and any key
/// containing SECRET, TOKEN, PASSWORD or AUTH, case-insensitively (log options such as
/// `splunk-token` are covered too).
pub fn is_secret_key(key: &str) -> bool {
    let upper = key.to_ascii_uppercase();
    ["SECRET", "TOKEN", "PASSWORD", "AUTH"]
        .iter()
        .any(|needle| upper.contains(needle))
}

/// `value`, or [`REDACTED`] when `key` names a secret.
pub fn shown<'a>(key: &str, value: &'a str) -> &'a str {
    if is_secret_key(key) {
        REDACTED
    } else {
        value
    }
}

/// Replaces the value of every member of `object` whose key names a secret; returns whether
/// any was replaced.
pub fn redact_members(object: &mut serde_json::Map<String, serde_json::Value>) -> bool {
    let mut any = false;
    for (k, v) in object.iter_mut() {
        if is_secret_key(k) {
            *v = serde_json::Value::String(REDACTED.into());
            any = true;
        }
    }
    any
}

/// `KEY=VALUE`, the value redacted when the key names a secret, and secret-looking members
/// redacted when the value is a JSON object (`ECS_LOG_OPTS={"splunk-token":"…"}`).
pub fn redacted_pair(key: &str, value: &str) -> String {
    let shown = shown(key, value);
    // Trimmed as `parse_string_map` trims (Unicode white space, which JSON's is not): whatever
    // the launcher would read as a JSON object is redacted as one.
    let trimmed = shown.trim();
    if trimmed.starts_with('{') {
        if let Ok(mut map) = serde_json::from_str(trimmed) {
            if redact_members(&mut map) {
                let text = serde_json::to_string(&map).unwrap_or_else(|_| REDACTED.into());
                return format!("{key}={text}");
            }
        }
    }
    format!("{key}={shown}")
}

/// An environment entry `KEY=VALUE` (as in an OCI spec), redacted like [`redacted_pair`].
pub fn redacted_entry(entry: &str) -> String {
    match entry.split_once('=') {
        Some((k, v)) => redacted_pair(k, v),
        None => entry.to_string(),
    }
}

/// Redacts, in place, every `KEY=VALUE` string of the JSON array at `pointer` in `doc` (an
/// environment as Docker's create request or an OCI spec holds it), like [`redacted_entry`].
pub fn redact_env_at(doc: &mut serde_json::Value, pointer: &str) {
    if let Some(env) = doc.pointer_mut(pointer).and_then(|e| e.as_array_mut()) {
        for var in env.iter_mut() {
            if let Some(entry) = var.as_str() {
                *var = serde_json::Value::String(redacted_entry(entry));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the fuzz target: a value the options parser reads as JSON (it trims Unicode
    /// white space such as a vertical tab) must be redacted as JSON too.
    #[test]
    fn json_with_unicode_white_space_around_is_redacted() {
        let shown = redacted_pair("ECS_LOG_OPTS", "\u{b}{\"splunk-token\":\"tok-123\"}\u{b}");
        assert!(!shown.contains("tok-123"), "{shown}");
    }
}
