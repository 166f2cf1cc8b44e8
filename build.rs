//! Records the git short hash for `amazon-ecs-init version` (the Go tool prints
//! `ecs-init version <semver> (<git short hash>)`). Outside a git checkout it is "unknown".
use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    let hash = git(&["rev-parse", "--short=8", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=ECS_INIT_GIT_HASH={hash}");
    // Rerun when HEAD moves: HEAD itself (a branch switch) and the file of the branch it names
    // (a commit), loose or packed. The paths come from git, because in a linked worktree `.git`
    // is a file and the refs live in the main checkout's git directory; a path that does not
    // exist would make cargo rerun this script, and rebuild the crate, on every build.
    let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(branch);
    }
    for name in watched {
        // --path-format needs git >= 2.31; older ones print the path relative to this package's
        // directory, which is also what cargo resolves relative paths against.
        let path = git(&["rev-parse", "--path-format=absolute", "--git-path", &name])
            .or_else(|| git(&["rev-parse", "--git-path", &name]));
        if let Some(path) = path {
            if Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
    // Outside a checkout: only this script.
    println!("cargo:rerun-if-changed=build.rs");
}
