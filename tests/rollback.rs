//! Automatic rollback of a failed agent update (README, "Updates"), on both runtimes with the
//! real daemons and the scripted stand-in agent. Thresholds are shortened through the settings
//! (`ECS_INIT_AGENT_HEALTHY_SECONDS=1` & co.); the stand-in's script decides each start.
mod common;

use common::*;
use ecs_test_support::{stand_in_tarball_with, ImageSpec, TarballFormat};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The stand-in as the agent image `version` (label, env and a unique layer).
fn agent_image(version: &str) -> PathBuf {
    let spec = ImageSpec::new("amazon/amazon-ecs-agent:latest")
        .marker(&format!("rollback-{version}"))
        .env("STANDIN_IMAGE_VERSION", version)
        .label("org.opencontainers.image.version", version);
    stand_in_tarball_with(&spec, TarballFormat::DockerSave)
}

fn image_id(tarball: &std::path::Path) -> String {
    ecs_runtime::archive::verify_file(std::fs::File::open(tarball).unwrap()).unwrap()[0]
        .config_digest
        .clone()
}

const RECORD: &str = "var/lib/ecs-init/agent-images";

/// The rollback record's `key=value` lines.
fn ledger(l: &Launcher) -> BTreeMap<String, String> {
    l.root
        .read(RECORD)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn running_version(l: &Launcher) -> Option<String> {
    l.try_report().map(|r| {
        r["env"]["STANDIN_IMAGE_VERSION"]
            .as_str()
            .unwrap_or("")
            .to_string()
    })
}

/// A launcher with v1 loaded by pre-start, v2 and v3 in the cache, short thresholds, and the
/// stand-in's starts scripted by `script`.
fn setup(rt: &'static str, extra: &str, script: &str) -> Launcher {
    let mut l = Launcher::new(rt);
    l.env
        .push(("ECS_INIT_RESTART_DELAY_MS".into(), "300".into()));
    l.script(
        &format!("ECS_INIT_AGENT_HEALTHY_SECONDS=1\nECS_INIT_ROLLBACK_FAILED_STARTS=3\n{extra}"),
        script,
    );
    l.pre_start_with(&agent_image("v1"));
    l.root
        .place_cache_file(&agent_image("v2"), "ecs-agent-v2.tar");
    l.root
        .place_cache_file(&agent_image("v3"), "ecs-agent-v3.tar");
    l
}

fn wait_log(l: &Launcher, what: &str, secs: u64) {
    assert!(
        wait_until(Duration::from_secs(secs), || l.init_log().contains(what)),
        "{what:?} never logged; log:\n{}",
        l.init_log()
    );
}

fn stop(l: &Launcher, start: &mut KillOnDrop) {
    assert_ok(&l.run("stop"), "stop");
    assert_eq!(
        wait_exit(&mut start.0, Duration::from_secs(30)).and_then(|s| s.code()),
        Some(0)
    );
}

/// v1 healthy → exit 42 with a v2 that exits 1 at once → after 3 starts v1 runs again, under
/// the same container name, with one warning (journal priority 4) and `status` showing it; the
/// same v2 offered again is refused without loading it; a v3 is loaded.
fn failed_update_rolls_back(rt: &'static str) {
    let l = setup(
        rt,
        "",
        "update ecs-agent-v2.tar after 2500\nexit 1\nexit 1\nexit 1\n\
         update ecs-agent-v2.tar after 4000\nupdate ecs-agent-v3.tar after 2500\nserve\n",
    );
    // stderr to a file that JOURNAL_STREAM names: the console takes the journal's format.
    let stderr_path = l.root.join("start.stderr");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let meta = {
        use std::os::unix::fs::MetadataExt;
        let m = stderr.metadata().unwrap();
        (m.dev(), m.ino())
    };
    let mut start = KillOnDrop(
        l.cmd("start")
            .env("JOURNAL_STREAM", format!("{}:{}", meta.0, meta.1))
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap(),
    );
    let t0 = std::time::Instant::now();
    wait_log(&l, "rolled back the agent update to v2", 90);
    let rolled = t0.elapsed();
    // v1 again (it serves 4 s before offering v2 again).
    assert!(
        wait_until(Duration::from_secs(30), || running_version(&l).as_deref()
            == Some("v1")),
        "v1 did not come back; log:\n{}",
        l.init_log()
    );
    eprintln!(
        "{rt}: start to rollback logged {rolled:?} (v1 2.5 s, v2 loaded, 3 failed starts 0.3 s apart), then v1 answering after {:?}",
        t0.elapsed() - rolled
    );
    assert_eq!(l.agent_containers(), 1, "one container named ecs-agent");
    let status = l.run("status");
    let text = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(
        text.contains("last rollback:")
            && text.contains("from v2 (image")
            && text.contains("to v1 (image")
            && text.contains("3 consecutive starts failed (last exit code 1)")
            && text.contains("known good:     v1"),
        "{text}"
    );
    // The same v2 is refused, v3 is taken.
    wait_log(&l, "refusing the agent update to v2", 60);
    assert!(
        wait_until(Duration::from_secs(60), || running_version(&l).as_deref()
            == Some("v3")),
        "v3 never ran; log:\n{}",
        l.init_log()
    );
    let log = l.init_log();
    assert_eq!(
        log.matches("rolled back the agent update").count(),
        1,
        "{log}"
    );
    let v2_loads = log
        .lines()
        .filter(|line| line.contains("loading agent image") && line.contains("ecs-agent-v2.tar"))
        .count();
    assert_eq!(v2_loads, 1, "v2 loaded once only; log:\n{log}");
    let journal = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(
        journal
            .lines()
            .any(|line| line.starts_with("<4>rolled back the agent update to v2")),
        "{journal}"
    );
    let rec = ledger(&l);
    assert_eq!(rec.get("refused"), Some(&image_id(&agent_image("v2"))));
    stop(&l, &mut start);
}

/// v2 runs healthy: no rollback, v2 is the known-good agent (and kept under our name).
fn healthy_update_becomes_known_good(rt: &'static str) {
    let l = setup(rt, "", "update ecs-agent-v2.tar after 2500\nserve\n");
    let mut start = KillOnDrop(l.spawn_start());
    let v2 = image_id(&agent_image("v2"));
    assert!(
        wait_until(Duration::from_secs(60), || ledger(&l).get("known_good")
            == Some(&v2)
            && !ledger(&l).contains_key("probation")),
        "v2 never became known good; record {:?}; log:\n{}",
        ledger(&l),
        l.init_log()
    );
    assert_eq!(running_version(&l).as_deref(), Some("v2"));
    assert!(!l.init_log().contains("rolled back"));
    let kept = match rt {
        "docker" => Command::new("docker")
            .args([
                "image",
                "inspect",
                "--format",
                "{{.Id}}",
                "amazon/amazon-ecs-agent:ecs-init-known-good",
            ])
            .output()
            .unwrap(),
        _ => Command::new("ctr")
            .args([
                "-n",
                &l.containerd_namespace(),
                "images",
                "ls",
                "name==amazon/amazon-ecs-agent:ecs-init-known-good",
            ])
            .output()
            .unwrap(),
    };
    let kept = String::from_utf8_lossy(&kept.stdout).into_owned();
    match rt {
        "docker" => assert_eq!(kept.trim(), v2),
        _ => assert!(kept.contains("ecs-init-known-good"), "{kept}"),
    }
    let status = String::from_utf8_lossy(&l.run("status").stdout).into_owned();
    assert!(status.contains("known good:     v2"), "{status}");
    stop(&l, &mut start);
}

/// v2 hangs (never answers introspection) for the timeout: rolled back.
fn hung_update_rolls_back_after_the_timeout(rt: &'static str) {
    let l = setup(
        rt,
        "ECS_INIT_ROLLBACK_TIMEOUT_SECONDS=4\n",
        "update ecs-agent-v2.tar after 2500\nhang\nserve\n",
    );
    let mut start = KillOnDrop(l.spawn_start());
    wait_log(&l, "not healthy within 4 s of the update", 90);
    assert!(
        wait_until(Duration::from_secs(30), || running_version(&l).as_deref()
            == Some("v1")),
        "log:\n{}",
        l.init_log()
    );
    assert_eq!(l.agent_starts(), 3, "v1, v2 (hung), v1");
    stop(&l, &mut start);
}

/// `kill -9` of the launcher during probation, then `start`: the probation continues from the
/// record (two failures before, one after: rolled back at the third, not the fifth).
fn probation_survives_kill_9(rt: &'static str) {
    let l = setup(
        rt,
        "",
        "update ecs-agent-v2.tar after 2500\nexit 1\nexit 1\nhang\nexit 1\nserve\n",
    );
    let mut start = KillOnDrop(l.spawn_start());
    assert!(
        wait_until(Duration::from_secs(60), || l.agent_starts() == 4),
        "log:\n{}",
        l.init_log()
    );
    assert!(
        wait_until(Duration::from_secs(10), || ledger(&l)
            .get("probation_failures")
            .map(String::as_str)
            == Some("2")),
        "{:?}",
        ledger(&l)
    );
    signal(&start.0, libc::SIGKILL);
    let _ = wait_exit(&mut start.0, Duration::from_secs(10));
    assert_eq!(
        ledger(&l).get("probation_failures").map(String::as_str),
        Some("2"),
        "nothing invented by the kill"
    );
    assert!(!l.init_log().contains("rolled back"));
    let mut start = KillOnDrop(l.spawn_start());
    wait_log(&l, "rolled back the agent update to v2", 60);
    assert!(
        l.init_log()
            .contains("3 consecutive starts failed (last exit code 1)"),
        "{}",
        l.init_log()
    );
    assert!(
        wait_until(Duration::from_secs(30), || running_version(&l).as_deref()
            == Some("v1")),
        "log:\n{}",
        l.init_log()
    );
    assert_eq!(l.agent_starts(), 6, "v1, v2 ×2, v2 hung (killed), v2, v1");
    stop(&l, &mut start);
}

/// Remove the known-good image's own name by hand (`docker rmi -f`, `ctr images rm`).
fn remove_known_good(l: &Launcher) {
    let out = match l.runtime {
        "docker" => Command::new("docker")
            .args(["rmi", "-f", "amazon/amazon-ecs-agent:ecs-init-known-good"])
            .output()
            .unwrap(),
        _ => Command::new("ctr")
            .args([
                "-n",
                &l.containerd_namespace(),
                "images",
                "rm",
                "amazon/amazon-ecs-agent:ecs-init-known-good",
                "docker.io/amazon/amazon-ecs-agent:ecs-init-known-good",
            ])
            .output()
            .unwrap(),
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The known-good image removed by hand: the rollback loads the cached tarball; with the
/// tarball gone too: a clear error, and the update keeps being restarted as before.
fn removed_known_good_falls_back_to_the_tarball(rt: &'static str) {
    for tarball_too in [false, true] {
        let l = setup(
            rt,
            "",
            "update ecs-agent-v2.tar after 5000\nexit 1\nexit 1\nexit 1\nexit 1\nexit 1\nserve\n",
        );
        let mut start = KillOnDrop(l.spawn_start());
        assert!(
            wait_until(Duration::from_secs(30), || ledger(&l)
                .contains_key("known_good")),
            "v1 never became known good; log:\n{}",
            l.init_log()
        );
        remove_known_good(&l);
        if tarball_too {
            std::fs::remove_file(l.root.join("var/cache/ecs/ecs-agent.tar")).unwrap();
        }
        if !tarball_too {
            wait_log(&l, "rolled back the agent update to v2", 90);
            assert!(
                l.init_log().contains("known-good agent image is gone"),
                "{}",
                l.init_log()
            );
            assert!(
                wait_until(Duration::from_secs(30), || running_version(&l).as_deref()
                    == Some("v1")),
                "log:\n{}",
                l.init_log()
            );
        } else {
            wait_log(&l, "cannot be rolled back", 90);
            // Today's behaviour: v2 restarted (two more failures, then it serves).
            assert!(
                wait_until(Duration::from_secs(60), || running_version(&l).as_deref()
                    == Some("v2")),
                "log:\n{}",
                l.init_log()
            );
            assert_eq!(l.agent_starts(), 7);
            assert!(!l.init_log().contains("rolled back the agent update"));
        }
        stop(&l, &mut start);
    }
}

/// A forged record (writable by others, as one the agent could have planted) is not trusted:
/// its "refused" v2 is loaded anyway, with a warning; the launcher writes its own record.
fn forged_records_are_not_trusted(rt: &'static str) {
    let l = setup(rt, "", "update ecs-agent-v2.tar after 2500\nserve\n");
    let dir = l.root.join("var/lib/ecs-init");
    std::fs::create_dir_all(&dir).unwrap();
    let forged = l.root.join(RECORD);
    std::fs::write(
        &forged,
        format!(
            "agent-images\nforged\nrefused={}\n",
            image_id(&agent_image("v2"))
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&forged, std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut start = KillOnDrop(l.spawn_start());
    assert!(
        wait_until(Duration::from_secs(60), || running_version(&l).as_deref()
            == Some("v2")),
        "log:\n{}",
        l.init_log()
    );
    let log = l.init_log();
    assert!(log.contains("not trusting the agent-image record"), "{log}");
    assert!(!log.contains("refusing"), "{log}");
    let mode = std::fs::metadata(&forged).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "replaced by the launcher's own record");
    stop(&l, &mut start);
}

macro_rules! rollback {
    ($runtime:ident) => {
        mod $runtime {
            const RT: &str = stringify!($runtime);
            #[test]
            fn failed_update_rolls_back() {
                super::failed_update_rolls_back(RT)
            }
            #[test]
            fn healthy_update_becomes_known_good() {
                super::healthy_update_becomes_known_good(RT)
            }
            #[test]
            fn hung_update_rolls_back_after_the_timeout() {
                super::hung_update_rolls_back_after_the_timeout(RT)
            }
            #[test]
            fn probation_survives_kill_9() {
                super::probation_survives_kill_9(RT)
            }
            #[test]
            fn removed_known_good_falls_back_to_the_tarball() {
                super::removed_known_good_falls_back_to_the_tarball(RT)
            }
            #[test]
            fn forged_records_are_not_trusted() {
                super::forged_records_are_not_trusted(RT)
            }
        }
    };
}

rollback!(docker);
rollback!(containerd);
