//! `/var/cache/ecs/desired-image` (written by the agent): the result always stays in the cache
//! directory.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let dir = Path::new("/var/cache/ecs");
    if let Ok(p) = ecs_formats::desired::parse_desired_image(&text, dir) {
        assert_eq!(p.parent(), Some(dir), "{p:?} escapes the cache directory");
    }
});
