//! `pack-stand-in OUT.tar [REFERENCE] [--oci]`: build the static stand-in agent and write it as
//! an image tarball (by default a `docker save` tarball tagged `amazon/amazon-ecs-agent:latest`),
//! for the demo and the benchmark. Also prints the path of the static `ecs-agent-init` that the
//! containerd backend needs (`ECS_INIT_AGENT_INIT`) when `--print-agent-init` is given.
use std::path::PathBuf;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--print-agent-init") {
        println!("{}", ecs_test_support::agent_init_binary().display());
        return;
    }
    let oci = args.iter().any(|a| a == "--oci");
    let positional: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let Some(out) = positional.first().map(PathBuf::from) else {
        eprintln!("usage: pack-stand-in OUT.tar [REFERENCE] [--oci] | --print-agent-init");
        std::process::exit(1);
    };
    let reference = positional
        .get(1)
        .map(|s| s.as_str())
        .unwrap_or(ecs_test_support::AGENT_IMAGE);
    let binary = ecs_test_support::stand_in_agent_binary();
    let written = if oci {
        ecs_test_support::write_oci_layout(&binary, reference, &out)
    } else {
        ecs_test_support::write_docker_save(&binary, reference, &out)
    };
    if let Err(e) = written {
        eprintln!("writing {}: {e}", out.display());
        std::process::exit(255);
    }
    println!("{}", out.display());
}
