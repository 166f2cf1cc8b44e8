//! Writes the man page `amazon-ecs-init.1` and the bash, zsh and fish completions for
//! `amazon-ecs-init`, generated from the launcher's own clap definition
//! ([`amazon_ecs_init::cli::Cli`]) so that they can never drift from the real command line.
//!
//! Usage: `ecs-init-gen-docs <out-dir>`; creates `<out-dir>/man/amazon-ecs-init.1` (its
//! ENVIRONMENT section from the settings table) and
//! `<out-dir>/completions/{amazon-ecs-init.bash,_amazon-ecs-init,amazon-ecs-init.fish}`.
//! `ecs-init-gen-docs --readme-table` prints the README's knob table.
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use amazon_ecs_init::cli::Cli;
use clap::CommandFactory;
use clap_complete::Shell;

const BIN: &str = "amazon-ecs-init";

/// Shells we ship completions for, and the file name each one's loader looks for.
const SHELLS: [(Shell, &str); 3] = [
    (Shell::Bash, "amazon-ecs-init.bash"),
    (Shell::Zsh, "_amazon-ecs-init"),
    (Shell::Fish, "amazon-ecs-init.fish"),
];

fn man_page(out: &Path) -> io::Result<PathBuf> {
    let dir = out.join("man");
    fs::create_dir_all(&dir)?;
    let cmd = Cli::command();
    let man = clap_mangen::Man::new(cmd.clone())
        .section("1")
        .source(format!("amazon-ecs-init {}", env!("CARGO_PKG_VERSION")))
        .manual("System Manager's Manual");
    let mut buf = Vec::new();
    // Not `Man::render`: it lists subcommands as references to per-subcommand pages
    // (`amazon-ecs-init-start(1)`) that nobody ships. Operators look actions up in one page, so
    // the ACTIONS section is built here from the same clap definition.
    man.render_title(&mut buf)?;
    man.render_name_section(&mut buf)?;
    man.render_synopsis_section(&mut buf)?;
    man.render_description_section(&mut buf)?;
    man.render_options_section(&mut buf)?;
    render_actions(&cmd, &mut buf)?;
    render_environment(&mut buf)?;
    buf.extend_from_slice(FIXED_SECTIONS.as_bytes());
    let path = dir.join(format!("{BIN}.1"));
    fs::write(&path, buf)?;
    Ok(path)
}

/// Escapes text for a roff body line: backslashes, hyphens (so they stay ASCII hyphens and
/// copy-paste correctly) and a leading control character.
fn roff_escape(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with('.') || escaped.starts_with('\'') {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

/// One `.TP` entry per action, with its long help when it has one.
fn render_actions(cmd: &clap::Command, w: &mut Vec<u8>) -> io::Result<()> {
    use std::io::Write;
    writeln!(w, ".SH ACTIONS")?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        writeln!(w, ".TP")?;
        writeln!(w, "\\fB{}\\fR", roff_escape(sub.get_name()))?;
        let about = sub.get_long_about().or(sub.get_about());
        if let Some(about) = about {
            for line in about.to_string().lines() {
                writeln!(w, "{}", roff_escape(line))?;
            }
        }
    }
    Ok(())
}

/// One `.TP` entry per knob of the launcher's settings table.
fn render_environment(w: &mut Vec<u8>) -> io::Result<()> {
    use amazon_ecs_init::settings::{Scope, KNOBS};
    use std::io::Write;
    writeln!(w, ".SH ENVIRONMENT")?;
    writeln!(
        w,
        "Launcher settings come from the process environment (systemd's EnvironmentFile=, \
upstart's env) and, for those marked so, from /etc/ecs/ecs.config, then /var/lib/ecs/ecs.config."
    )?;
    for k in KNOBS {
        writeln!(w, ".TP")?;
        writeln!(
            w,
            "\\fB{}\\fR ({})",
            roff_escape(k.name),
            roff_escape(&k.kind.describe().replace("\\|", "|"))
        )?;
        let scope = match k.scope {
            Scope::Process => "process environment only",
            Scope::Anywhere => "environment or env files",
            Scope::Files => "env files only",
        };
        writeln!(
            w,
            "{} Default: {}; {}.",
            roff_escape(&k.doc.replace('`', "")),
            roff_escape(k.default),
            scope
        )?;
    }
    Ok(())
}

/// Facts about the action contract that operators and init systems rely on; they are not part
/// of the clap definition, so they are stated once here.
const FIXED_SECTIONS: &str = r#".SH EXIT STATUS
.TP
\fB0\fR
Success.
.TP
\fB1\fR
No or unknown action; usage is printed.
.TP
\fB5\fR
The agent exited with its terminal code 5; it must not be restarted (systemd:
\fBRestartPreventExitStatus=5\fR).
.TP
\fB255\fR
Any other error.
.SH FILES
.TP
\fI/etc/ecs/ecs.config\fR
Agent configuration, \fBKEY=VALUE\fR lines; wins over \fI/var/lib/ecs/ecs.config\fR.
.TP
\fI/var/cache/ecs/ecs\-agent.tar\fR, \fI/var/cache/ecs/state\fR
Cached agent image (a \fBdocker save\fR tarball) and its state: 0 uncached, 1 cached, 2 reload needed.
.TP
\fI/var/lib/ecs/data\fR
Agent data directory.
.TP
\fI/var/log/ecs/ecs\-init.log\fR
Launcher log.
.SH SEE ALSO
\fBsystemctl\fR(1), \fBsystemd.service\fR(5), \fBdocker\fR(1), \fBiptables\fR(8), \fBnft\fR(8)
"#;

fn completions(out: &Path) -> io::Result<Vec<PathBuf>> {
    let dir = out.join("completions");
    fs::create_dir_all(&dir)?;
    let mut written = Vec::new();
    for (shell, file) in SHELLS {
        let mut cmd = Cli::command();
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cmd, BIN, &mut buf);
        let path = dir.join(file);
        fs::write(&path, buf)?;
        written.push(path);
    }
    Ok(written)
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        eprintln!("usage: ecs-init-gen-docs <out-dir> | --readme-table");
        return ExitCode::from(1);
    };
    if out == "--readme-table" {
        print!("{}", amazon_ecs_init::settings::readme_table());
        return ExitCode::SUCCESS;
    }
    let out = PathBuf::from(out);
    let result = man_page(&out).and_then(|man| {
        let mut all = vec![man];
        all.extend(completions(&out)?);
        Ok(all)
    });
    match result {
        Ok(paths) => {
            for p in paths {
                println!("{}", p.display());
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("ecs-init-gen-docs: writing into {}: {err}", out.display());
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_page_and_completions_name_every_action() {
        let dir = std::env::temp_dir().join(format!("gen-docs-test-{}", std::process::id()));
        let man = man_page(&dir).unwrap();
        let text = fs::read_to_string(man).unwrap();
        assert!(text.contains(".TH amazon-ecs-init 1"), "{text}");
        for action in ["pre\\-start", "post\\-stop", "reload\\-cache", "plan"] {
            assert!(
                text.contains(&format!("\\fB{action}\\fR")),
                "man page lacks {action}"
            );
        }
        assert!(
            !text.contains("amazon\\-ecs\\-init\\-start(1)"),
            "dangling per-action page"
        );
        for knob in amazon_ecs_init::settings::KNOBS {
            let name = knob.name.replace('-', "\\-");
            assert!(
                text.contains(&format!("\\fB{name}\\fR")),
                "man page lacks {}",
                knob.name
            );
        }
        for path in completions(&dir).unwrap() {
            let text = fs::read_to_string(&path).unwrap();
            assert!(
                text.contains("post-stop"),
                "{} lacks post-stop",
                path.display()
            );
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
