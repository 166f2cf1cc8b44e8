//! `/var/cache/ecs/desired-image`: written by the agent when it has downloaded an update (exit
//! 42), read by the launcher as root.
use std::path::{Path, PathBuf};

/// The tarball a `desired-image` text names: its first line (which must end with `\n`), only
/// its basename, under `cache_dir`. Pure, for tests and the fuzz target.
pub fn parse_desired_image(text: &str, cache_dir: &Path) -> Result<PathBuf, String> {
    let Some((first, _)) = text.split_once('\n') else {
        return Err("the first line must end with a newline".into());
    };
    let name = Path::new(first.trim())
        .file_name()
        .filter(|n| *n != "." && *n != "..")
        .ok_or_else(|| {
            format!(
                "{:?} names no file",
                first.chars().take(200).collect::<String>()
            )
        })?;
    Ok(cache_dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_basename_of_the_first_line_under_the_cache_dir() {
        let dir = Path::new("/var/cache/ecs");
        assert_eq!(
            parse_desired_image("/elsewhere/ecs-agent-v2.tar\nignored\n", dir),
            Ok(dir.join("ecs-agent-v2.tar"))
        );
        assert!(parse_desired_image("no newline", dir).is_err());
        for escape in ["..\n", ".\n", "/\n", "a/..\n"] {
            assert!(parse_desired_image(escape, dir).is_err(), "{escape:?}");
        }
    }
}
