//! The same configuration yields the same agent on Docker and on containerd: the stand-in
//! agent's own report of its environment, mounts, capabilities and namespaces is compared
//! between the two runtimes. The differences allowed are the short, documented list in
//! [`RUNTIME_SPECIFIC_MOUNTS`] and [`RUNTIME_SPECIFIC_ENV`] (also in the README).
mod common;

use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Mount points only one runtime has, by design:
/// - Docker's `--init` binary and its own copies of the name-resolution files;
/// - containerd: our static init, the containerd socket directory (so the agent can reach its
///   runtime), and the host's name-resolution files bound read-only.
const RUNTIME_SPECIFIC_MOUNTS: &[&str] = &[
    "/sbin/docker-init",
    "/sbin/ecs-agent-init",
    "/run/containerd",
    "/var/run/containerd",
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/hostname",
];

/// Mounts below these are the runtime's own state, seen through the recursive `/var/run`
/// bind: containerd keeps each task's bundle (its rootfs and that rootfs's binds) under
/// `/run/containerd/io.containerd.runtime.v2.task/`, so the agent on containerd also sees its
/// own bundle there; Docker keeps its rootfs under `/var/lib/docker`.
const RUNTIME_STATE_DIRS: &[&str] = &["/run/containerd/", "/var/run/containerd/"];

/// Environment variables set by the runtime itself rather than by the spec.
const RUNTIME_SPECIFIC_ENV: &[&str] = &["HOSTNAME", "HOME"];

fn report_on(rt: &'static str) -> Value {
    let l = Launcher::new(rt);
    l.root
        .write_ecs_config("ECS_CLUSTER=same\nECS_AGENT_LABELS={\"k\":\"v\"}\n");
    l.pre_start_with(&ecs_test_support::stand_in_tarball(
        "amazon/amazon-ecs-agent:latest",
    ));
    let mut start = KillOnDrop(l.spawn_start());
    assert!(
        introspection_answers(Duration::from_secs(60)),
        "{rt}: introspection never answered"
    );
    let mut report = l.report();
    assert_ok(&l.run("stop"), "stop");
    assert_eq!(
        wait_exit(&mut start.0, Duration::from_secs(20)).and_then(|s| s.code()),
        Some(0)
    );
    // The test root differs between the two runs; make its paths comparable.
    let root = l.root.path().display().to_string();
    let text = report.to_string().replace(&root, "<root>");
    report = serde_json::from_str(&text).unwrap();
    report
}

fn env_of(r: &Value) -> BTreeMap<String, String> {
    r["env"]
        .as_object()
        .expect("env")
        .iter()
        .filter(|(k, _)| !RUNTIME_SPECIFIC_ENV.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
        .collect()
}

/// Mounts as (mount point, read-only), leaving out the root and the kernel filesystems every
/// container gets at /proc, /sys and /dev, whose exact layout is the runtime's.
fn binds_of(r: &Value) -> BTreeSet<(String, bool)> {
    r["mounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .map(|m| {
            (
                m["mount_point"].as_str().unwrap_or("").to_string(),
                m["read_only"].as_bool().unwrap_or(false),
            )
        })
        .filter(|(p, _)| {
            !RUNTIME_SPECIFIC_MOUNTS.iter().any(|s| p == s)
                && !RUNTIME_STATE_DIRS.iter().any(|d| p.starts_with(d))
                && !["/", "/proc", "/sys", "/dev"].contains(&p.as_str())
                && !["/dev/", "/proc/", "/sys/"]
                    .iter()
                    .any(|d| p.starts_with(d))
        })
        .collect()
}

#[test]
fn docker_and_containerd_run_the_same_agent() {
    let docker = report_on("docker");
    let containerd = report_on("containerd");

    let (de, ce) = (env_of(&docker), env_of(&containerd));
    let env_diff: Vec<_> = de
        .iter()
        .filter(|(k, v)| ce.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: docker={v:?} containerd={:?}", ce.get(k)))
        .chain(
            ce.keys()
                .filter(|k| !de.contains_key(*k))
                .map(|k| format!("{k}: only on containerd")),
        )
        .collect();
    assert!(
        env_diff.is_empty(),
        "environment differs:\n{}",
        env_diff.join("\n")
    );

    let (db, cb) = (binds_of(&docker), binds_of(&containerd));
    let only_docker: Vec<_> = db.difference(&cb).collect();
    let only_containerd: Vec<_> = cb.difference(&db).collect();
    assert!(
        only_docker.is_empty() && only_containerd.is_empty(),
        "bind mounts differ\nonly on docker: {only_docker:?}\nonly on containerd: {only_containerd:?}"
    );
    // The spec's binds are all there (a sample of each kind).
    for expect in [
        ("/log", false),
        ("/data", false),
        ("/host/proc", true),
        ("/var/lib/ecs", false),
    ] {
        assert!(
            db.contains(&(expect.0.to_string(), expect.1)),
            "missing {expect:?}"
        );
    }

    for caps in ["effective", "bounding", "permitted"] {
        assert_eq!(
            docker["capabilities"][caps], containerd["capabilities"][caps],
            "{caps} capabilities differ"
        );
    }
    for ns in ["net", "user", "ipc", "uts", "cgroup"] {
        let host = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let host = host.to_str().unwrap();
        let (d, c) = (
            &docker["namespaces"]["self"][ns],
            &containerd["namespaces"]["self"][ns],
        );
        assert_eq!(
            d == host,
            c == host,
            "{ns}: docker {d} containerd {c} host {host}"
        );
    }
    for key in ["pid1_is_self", "ppid", "uid", "gid"] {
        assert_eq!(docker[key], containerd[key], "{key} differs");
    }
}
