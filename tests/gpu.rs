//! GPU hosts without a GPU: the launcher's NVML step against the fake `libnvidia-ml.so.1`
//! (`tests/fake-nvml`), loaded through the real run-time loading path (the
//! `ECS_INIT_NVML_LIBRARY` knob, or the dynamic loader's search with `LD_LIBRARY_PATH`), with
//! `/dev/nvidia*` faked inside a private mount namespace: each launcher runs under
//! `unshare -m` with a small tmpfs over `/dev` (the host's `/dev` is never written).
//!
//! The `gpu_step_*` tests run the debug build, or the binary named by `ECS_INIT_TEST_BINARY`:
//! `packaging/test.sh` runs them against the launcher installed from the DEB (the dynamic
//! glibc-2.17 build the packages ship). The last test runs the stand-in agent with GPU support
//! on Docker and on containerd and compares what each container gets. Needs root (mount
//! namespaces), `unshare`; the last one also dockerd and containerd (tests/setup.sh).
mod common;

use common::*;
use ecs_test_support::TestRoot;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// The launcher under test.
fn binary() -> PathBuf {
    match std::env::var_os("ECS_INIT_TEST_BINARY") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_amazon-ecs-init")),
    }
}

/// Sets up the private `/dev` and execs the rest of the command line. Arguments: the number of
/// fake device entries, the entries, then the command. With `ECS_TEST_NETNS=1` it also brings
/// `lo` up (the command then runs in a new network namespace too).
const FAKE_DEV: &str = r#"set -eu
n=$1; shift
old=$(mktemp -d /tmp/ecs-init-gpu-test-dev.XXXXXX)
mount --bind /dev "$old"
mount -t tmpfs -o mode=0755,size=256k ecs-init-test-dev /dev
for f in null zero full random urandom; do
    if [ -e "$old/$f" ]; then : > "/dev/$f"; mount --bind "$old/$f" "/dev/$f"; fi
done
umount -l "$old"
rmdir "$old"
while [ "$n" -gt 0 ]; do : > "/dev/$1"; shift; n=$((n - 1)); done
if [ -n "${ECS_TEST_LATE_DEVICE:-}" ]; then
    # "<seconds> <name>": a driver that creates its device node late.
    set -- $ECS_TEST_LATE_DEVICE "$@"
    (sleep "$1"; : > "/dev/$2") >/dev/null 2>&1 &
    shift 2
fi
if [ "${ECS_TEST_NETNS:-}" = 1 ]; then ip link set lo up; fi
exec "$@"
"#;

/// `cmd`, run in a new mount namespace (and network namespace with `netns`) whose `/dev` holds
/// only `null`, `zero`, `full`, `random`, `urandom` and the (empty, regular) files `devices`.
fn with_fake_dev(cmd: &Command, devices: &[&str], netns: bool) -> Command {
    ecs_test_support::require_root();
    let mut c = Command::new("unshare");
    // util-linux unshare makes the new mount namespace's propagation private, so nothing
    // mounted inside reaches the host.
    c.args(["-m", "--propagation", "private"]);
    if netns {
        c.arg("-n").env("ECS_TEST_NETNS", "1");
    }
    c.args(["--", "sh", "-c", FAKE_DEV, "sh"])
        .arg(devices.len().to_string())
        .args(devices)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c
}

/// One scratch host: a re-rooted ecs tree, the fake NVML in `<root>/nvml` and a config.
struct Host {
    root: TestRoot,
}

impl Host {
    fn new(scenario: &str, config: &str) -> Host {
        let root = TestRoot::new();
        fake_nvml::install(&root.join("nvml"), scenario);
        root.write_ecs_config(config);
        Host { root }
    }

    fn nvml(&self) -> PathBuf {
        self.root.join("nvml/libnvidia-ml.so.1")
    }

    fn calls(&self) -> Vec<String> {
        fake_nvml::calls(&self.root.join("nvml"))
    }

    fn info_file(&self) -> PathBuf {
        self.root.join("var/lib/ecs/gpu/nvidia-gpu-info.json")
    }

    /// The launcher with `action`, re-rooted, with a clean environment for the GPU knobs.
    fn cmd(&self, action: &str) -> Command {
        let mut c = Command::new(binary());
        c.arg(action)
            .env("ECS_INIT_HOST_ROOT", self.root.path())
            .env("ECS_LOGLEVEL", "info")
            .env_remove("ECS_ENABLE_GPU_SUPPORT")
            .env_remove("ECS_INIT_NVML_LIBRARY")
            .env_remove("LD_LIBRARY_PATH")
            .env_remove("NOTIFY_SOCKET");
        c
    }

    fn run(&self, cmd: Command, devices: &[&str], netns: bool) -> Output {
        let child = with_fake_dev(&cmd, devices, netns)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn unshare");
        wait_output(child, Duration::from_secs(60), "launcher")
    }

    /// Files left in the GPU directory (none after a failure, not even a temporary one).
    fn gpu_dir_entries(&self) -> Vec<String> {
        std::fs::read_dir(self.root.join("var/lib/ecs/gpu"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

const EULA: &str = "By using the GPU Optimized AMI, you agree to Nvidia’s End User License Agreement: https://www.nvidia.com/en-us/about-nvidia/eula-agreement/";

/// The file for the fake's defaults: 15872 MiB usable per GPU, no vGPU, and on the test root
/// no MPS control binary (nor, on a test machine, an enabled nvidia-mps.service).
fn expected_json(driver: &str, stem: &str, n: usize) -> String {
    let ids: Vec<String> = (0..n).map(|i| format!("\"GPU-{stem}-{i:012x}\"")).collect();
    let memory: Vec<String> = ids.iter().map(|id| format!("{id}:15872")).collect();
    format!(
        "{{\"DriverVersion\":\"{driver}\",\"GPUIDs\":[{}],\"GPUMemoryMiB\":{{{}}},\"MpsControlBinaryPresent\":false,\"MpsServiceEnabled\":false,\"HasVGPU\":false}}",
        ids.join(","),
        memory.join(",")
    )
}

fn assert_written(h: &Host, out: &Output, expected: &str) {
    assert_eq!(out.status.code(), Some(0), "{}", text(out));
    assert_eq!(
        std::fs::read_to_string(h.info_file()).expect("info file written"),
        expected
    );
    let dir = std::fs::metadata(h.root.join("var/lib/ecs/gpu")).unwrap();
    assert_eq!(dir.mode() & 0o7777, 0o700, "gpu dir mode");
    let file = std::fs::metadata(h.info_file()).unwrap();
    assert_eq!(file.mode() & 0o7777, 0o700, "info file mode");
    assert_eq!(h.gpu_dir_entries(), ["nvidia-gpu-info.json"]);
    let log = text(out);
    assert!(log.contains(EULA), "EULA line not logged:\n{log}");
    assert!(log.contains("GPU info written"), "{log}");
    assert_eq!(
        h.calls().last().map(String::as_str),
        Some("nvmlShutdown"),
        "NVML not shut down: {:?}",
        h.calls()
    );
}

#[test]
fn gpu_step_two_gpus_via_the_knob() {
    let h = Host::new(
        "devices=2\ndriver=535.183.01\nuuid_stem=5b1c2a9e-77d0-4f3a-b6e2\n",
        "",
    );
    // The knobs from the env file: ECS_ENABLE_GPU_SUPPORT as the Go tool reads it, the
    // library path as an operator would set it.
    h.root.write_ecs_config(&format!(
        "ECS_ENABLE_GPU_SUPPORT=true\nECS_INIT_NVML_LIBRARY={}\n",
        h.nvml().display()
    ));
    let out = h.run(
        h.cmd("gpu-info"),
        &["nvidia0", "nvidia1", "nvidiactl"],
        false,
    );
    assert_written(
        &h,
        &out,
        &expected_json("535.183.01", "5b1c2a9e-77d0-4f3a-b6e2", 2),
    );
    assert_eq!(
        h.calls(),
        [
            "nvmlInit_v2",
            "nvmlSystemGetDriverVersion",
            "nvmlDeviceGetCount_v2",
            "nvmlDeviceGetHandleByIndex_v2 0",
            "nvmlDeviceGetUUID 0",
            "nvmlDeviceGetVirtualizationMode 0",
            "nvmlDeviceGetMemoryInfo_v2 0",
            "nvmlDeviceGetHandleByIndex_v2 1",
            "nvmlDeviceGetUUID 1",
            "nvmlDeviceGetVirtualizationMode 1",
            "nvmlDeviceGetMemoryInfo_v2 1",
            "nvmlShutdown",
        ]
    );
    // A second run replaces the file (a driver upgrade between boots).
    fake_nvml::set_scenario(
        &h.root.join("nvml"),
        "devices=1\ndriver=550.90.07\nuuid_stem=0c0ffee0-1111-4222-8333\n",
    );
    let out = h.run(h.cmd("gpu-info"), &["nvidia0"], false);
    assert_written(
        &h,
        &out,
        &expected_json("550.90.07", "0c0ffee0-1111-4222-8333", 1),
    );
}

/// Without the knob the launcher opens the soname `libnvidia-ml.so.1`, found by the dynamic
/// loader (here through `LD_LIBRARY_PATH`, on a real host through ld.so.cache).
#[test]
fn gpu_step_default_soname_via_ld_library_path() {
    let h = Host::new(
        "devices=1\ndriver=470.256.02\nuuid_stem=aa11bb22-cc33-4d44-8e55\n",
        "",
    );
    let mut cmd = h.cmd("gpu-info");
    cmd.env("ECS_ENABLE_GPU_SUPPORT", "true")
        .env("LD_LIBRARY_PATH", h.root.join("nvml"));
    let out = h.run(cmd, &["nvidia0", "nvidia-uvm"], false);
    assert_written(
        &h,
        &out,
        &expected_json("470.256.02", "aa11bb22-cc33-4d44-8e55", 1),
    );
}

#[test]
fn gpu_step_failures_write_nothing() {
    for (scenario, needles, init_ok) in [
        (
            "devices=0\ndriver=535.1\n",
            vec!["NVML call nvmlDeviceGetCount_v2 reports no GPU devices although /dev/nvidia0 exists"],
            true,
        ),
        (
            "devices=2\ndriver=535.1\nfail=nvmlDeviceGetUUID\nfail_index=1\nfail_code=15\n",
            vec!["NVML call nvmlDeviceGetUUID (device 1) failed: GPU is lost (fake NVML) (NVML error 15)"],
            true,
        ),
        (
            "devices=2\nfail=nvmlInit_v2\nfail_code=9\n",
            vec!["NVML call nvmlInit_v2 failed: Driver Not Loaded (fake NVML) (NVML error 9)"],
            false,
        ),
        (
            "devices=2\nfail=nvmlSystemGetDriverVersion\n",
            vec!["NVML call nvmlSystemGetDriverVersion failed: Unknown Error (fake NVML) (NVML error 999)"],
            true,
        ),
    ] {
        let h = Host::new(scenario, "ECS_ENABLE_GPU_SUPPORT=true\n");
        let mut cmd = h.cmd("gpu-info");
        cmd.env("ECS_INIT_NVML_LIBRARY", h.nvml());
        let out = h.run(cmd, &["nvidia0", "nvidiactl"], false);
        let log = text(&out);
        assert_eq!(out.status.code(), Some(255), "{scenario:?}: {log}");
        for n in needles {
            assert!(log.contains(n), "{scenario:?}: no {n:?} in:\n{log}");
        }
        assert!(log.contains("gpu-info failed"), "{log}");
        assert!(!h.info_file().exists(), "{scenario:?}: file written");
        assert!(
            h.gpu_dir_entries().is_empty(),
            "{scenario:?}: left {:?}",
            h.gpu_dir_entries()
        );
        // NVML is shut down whenever it was initialised.
        let calls = h.calls();
        assert_eq!(calls.first().map(String::as_str), Some("nvmlInit_v2"));
        assert_eq!(
            calls.last().map(String::as_str) == Some("nvmlShutdown"),
            init_ok,
            "{scenario:?}: {calls:?}"
        );
    }
}

#[test]
fn gpu_step_no_device_is_not_a_gpu_host() {
    let h = Host::new("devices=1\n", "ECS_ENABLE_GPU_SUPPORT=true\n");
    let mut cmd = h.cmd("gpu-info");
    cmd.env("ECS_INIT_NVML_LIBRARY", h.nvml())
        .env("ECS_INIT_GPU_WAIT_SECONDS", "0");
    let out = h.run(cmd, &["nvme0"], false);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(
        log.contains("No GPU devices found, ignoring the GPU support config: no nvidia* device after 1 looks over 0 s"),
        "{log}"
    );
    assert!(log.contains(EULA), "{log}");
    assert!(h.calls().is_empty(), "NVML loaded: {:?}", h.calls());
    assert!(!h.root.join("var/lib/ecs/gpu").exists());

    // GPU support off: nothing at all, even with devices.
    h.root.write_ecs_config("ECS_ENABLE_GPU_SUPPORT=false\n");
    let out = h.run(h.cmd("gpu-info"), &["nvidia0"], false);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!text(&out).contains(EULA));
    assert!(h.calls().is_empty());
    assert!(!h.root.join("var/lib/ecs/gpu").exists());
}

#[test]
fn gpu_step_missing_library_is_named() {
    // The default soname, on a host without an NVIDIA driver (CI): a clear error naming it.
    let ldconfig = Command::new("ldconfig").arg("-p").output();
    if let Ok(o) = &ldconfig {
        assert!(
            !String::from_utf8_lossy(&o.stdout).contains("libnvidia-ml.so.1"),
            "this test expects a host without an NVIDIA driver (ldconfig -p lists libnvidia-ml.so.1)"
        );
    }
    let h = Host::new("devices=1\n", "ECS_ENABLE_GPU_SUPPORT=true\n");
    let out = h.run(h.cmd("gpu-info"), &["nvidiactl"], false);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(255), "{log}");
    assert!(
        log.contains(
            "/dev/nvidiactl exists but the NVML library libnvidia-ml.so.1 cannot be loaded"
        ) && log.contains("install the NVIDIA driver, or set ECS_INIT_NVML_LIBRARY"),
        "{log}"
    );
    // An explicit path that is not there.
    let mut cmd = h.cmd("gpu-info");
    cmd.env(
        "ECS_INIT_NVML_LIBRARY",
        h.root.join("missing/libnvidia-ml.so.1"),
    );
    let out = h.run(cmd, &["nvidia0"], false);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(255), "{log}");
    assert!(
        log.contains("missing/libnvidia-ml.so.1 cannot be loaded"),
        "{log}"
    );
    assert!(h.gpu_dir_entries().is_empty());
}

#[test]
fn gpu_step_plan_shows_it_without_loading_nvml() {
    let h = Host::new("devices=1\ndriver=1.2\n", "ECS_ENABLE_GPU_SUPPORT=true\n");
    let mut cmd = h.cmd("plan");
    cmd.env("ECS_INIT_NVML_LIBRARY", h.nvml())
        .env("ECS_INIT_RUNTIME", "docker")
        .env("ECS_INIT_FIREWALL", "none");
    let out = h.run(cmd, &["nvidia0"], false);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan is JSON");
    let gpu = &plan["gpu"];
    assert_eq!(gpu["enabled"], true, "{gpu}");
    assert_eq!(gpu["nvidia_device"], "/dev/nvidia0");
    assert_eq!(gpu["info_file"], h.info_file().display().to_string());
    assert_eq!(gpu["nvml_library"], h.nvml().display().to_string());
    assert_eq!(gpu["queries_nvml"], false);
    assert!(
        gpu["pre_start"].as_str().unwrap().contains("queries NVML"),
        "{gpu}"
    );
    // The agent gets the GPU directory bound (the spec in the same plan).
    let binds = plan["agent"]["mounts"].to_string();
    assert!(binds.contains("/var/lib/ecs/gpu"), "{binds}");
    assert!(h.calls().is_empty(), "plan loaded NVML: {:?}", h.calls());
    assert!(!h.root.join("var/lib/ecs/gpu").exists(), "plan wrote");
}

/// pre-start runs the GPU step and fails on an NVML error, before the runtime is waited for
/// and before any network change (it runs in a scratch network namespace anyway).
#[test]
fn gpu_step_pre_start_fails_on_nvml_errors() {
    let h = Host::new(
        "devices=1\nfail=nvmlInit_v2\nfail_code=9\n",
        "ECS_ENABLE_GPU_SUPPORT=true\n",
    );
    let mut cmd = h.cmd("pre-start");
    cmd.env("ECS_INIT_NVML_LIBRARY", h.nvml())
        .env("ECS_INIT_RUNTIME", "containerd")
        .env("CONTAINERD_ADDRESS", h.root.join("no-such.sock"))
        .env("ECS_INIT_FIREWALL", "none")
        .env("ECS_INIT_RUNTIME_WAIT_SECONDS", "1");
    let out = h.run(cmd, &["nvidia0"], true);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(255), "{log}");
    assert!(
        log.contains(
            "pre-start failed: NVML call nvmlInit_v2 failed: Driver Not Loaded (fake NVML)"
        ),
        "{log}"
    );
    assert!(log.contains(EULA), "{log}");
    assert!(!h.info_file().exists());
}

/// What the stand-in agent sees of GPU support: the bind of the GPU directory and the
/// variable, on `rt`.
fn gpu_view(rt: &'static str) -> (Vec<(String, bool)>, Option<String>, String) {
    let mut l = Launcher::new(rt);
    let lib = fake_nvml::install(
        &l.root.join("nvml"),
        "devices=2\ndriver=535.183.01\nuuid_stem=9d8c7b6a-5f4e-4d3c-8b2a\n",
    );
    // As on a GPU AMI: the switch in the env file (the agent reads it too).
    l.root
        .write_ecs_config("ECS_CLUSTER=gpu\nECS_ENABLE_GPU_SUPPORT=true\n");
    l.env
        .push(("ECS_INIT_NVML_LIBRARY".into(), lib.display().to_string()));
    l.root.place_agent_tarball(
        &ecs_test_support::stand_in_tarball("amazon/amazon-ecs-agent:latest"),
        2,
    );
    let devices = ["nvidia0", "nvidia1", "nvidiactl"];
    // `l.cmd("pre-start")` already runs in a scratch network namespace.
    let child = with_fake_dev(&l.cmd("pre-start"), &devices, false)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pre-start");
    let out = wait_output(child, Duration::from_secs(180), "pre-start");
    assert_ok(&out, &format!("{rt}: pre-start"));
    let info = l
        .root
        .read("var/lib/ecs/gpu/nvidia-gpu-info.json")
        .expect("pre-start wrote the GPU info");
    let mut start = KillOnDrop(
        with_fake_dev(&l.cmd("start"), &devices, false)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn start"),
    );
    assert!(
        introspection_answers(Duration::from_secs(60)),
        "{rt}: introspection never answered"
    );
    let report = l.report();
    assert_ok(&l.run("stop"), "stop");
    assert_eq!(
        wait_exit(&mut start.0, Duration::from_secs(20)).and_then(|s| s.code()),
        Some(0)
    );
    let binds: Vec<(String, bool)> = report["mounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .filter(|m| {
            m["mount_point"]
                .as_str()
                .is_some_and(|p| p.contains("gpu") || p.contains("nvidia"))
        })
        .map(|m| {
            (
                m["mount_point"].as_str().unwrap().to_string(),
                m["read_only"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    let env: BTreeMap<String, String> = report["env"]
        .as_object()
        .expect("env")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
        .collect();
    (
        binds,
        env.get("ECS_ENABLE_GPU_SUPPORT").cloned(),
        info.replace(&l.root.path().display().to_string(), "<root>"),
    )
}

#[test]
fn agent_gets_the_gpu_bind_and_env_on_docker_and_containerd() {
    let docker = gpu_view("docker");
    let containerd = gpu_view("containerd");
    assert_eq!(
        docker.0,
        [("/var/lib/ecs/gpu".to_string(), false)],
        "docker: GPU binds"
    );
    assert_eq!(docker.1.as_deref(), Some("true"), "docker: env");
    assert_eq!(
        docker.2,
        expected_json("535.183.01", "9d8c7b6a-5f4e-4d3c-8b2a", 2)
    );
    assert_eq!(docker, containerd, "Docker and containerd differ");
}

/// A driver that comes up late: the wait looks again every 3 s (each look logged) and, once the
/// device node appears, the step goes on as if it had been there.
#[test]
fn gpu_step_waits_for_a_late_device() {
    let h = Host::new("devices=1\ndriver=3.0\n", "ECS_ENABLE_GPU_SUPPORT=true\n");
    let mut cmd = h.cmd("gpu-info");
    cmd.env("ECS_INIT_NVML_LIBRARY", h.nvml())
        .env("ECS_INIT_GPU_WAIT_SECONDS", "30")
        .env("ECS_TEST_LATE_DEVICE", "4 nvidia0");
    let t = std::time::Instant::now();
    let out = h.run(cmd, &["nvme0"], false);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(t.elapsed() >= Duration::from_secs(4), "{:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    let looks = log
        .matches("no nvidia* device exists yet; looking again")
        .count();
    assert!((2..=3).contains(&looks), "{looks} looks logged:\n{log}");
    assert!(log.contains("attempt=2 tries=10"), "{log}");
    assert!(log.contains("GPU device appeared"), "{log}");
    assert_eq!(
        std::fs::read_to_string(h.info_file()).unwrap(),
        expected_json("3.0", "00000000-0000-4000-8000", 1),
        "{log}"
    );
}

/// No device in the window: a warning, nothing written, and `plan` (same namespace, no device)
/// says what pre-start would do and shows the agent's environment without the GPU switch.
#[test]
fn gpu_step_gives_up_after_the_window_and_plan_says_so() {
    let h = Host::new(
        "devices=1\n",
        "ECS_CLUSTER=c\nECS_ENABLE_GPU_SUPPORT=true\n",
    );
    let mut cmd = h.cmd("gpu-info");
    cmd.env("ECS_INIT_NVML_LIBRARY", h.nvml())
        .env("ECS_INIT_GPU_WAIT_SECONDS", "6");
    let t = std::time::Instant::now();
    let out = h.run(cmd, &[], false);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    // Two looks, 3 s apart.
    assert!(t.elapsed() >= Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(
        log.matches("no nvidia* device exists yet; looking again")
            .count(),
        1,
        "{log}"
    );
    assert!(
        log.contains("No GPU devices found, ignoring the GPU support config: no nvidia* device after 2 looks over 3 s (ECS_INIT_GPU_WAIT_SECONDS)"),
        "{log}"
    );
    assert!(h.calls().is_empty(), "NVML loaded: {:?}", h.calls());
    assert!(!h.root.join("var/lib/ecs/gpu").exists());

    let mut cmd = h.cmd("plan");
    cmd.env("ECS_INIT_NVML_LIBRARY", h.nvml())
        .env("ECS_INIT_GPU_WAIT_SECONDS", "6")
        .env("ECS_INIT_RUNTIME", "docker")
        .env("ECS_INIT_FIREWALL", "none");
    let out = h.run(cmd, &[], false);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan is JSON");
    let gpu = &plan["gpu"];
    assert_eq!(gpu["device_wait"]["tries"], 2, "{gpu}");
    assert_eq!(gpu["device_wait"]["seconds"], 6, "{gpu}");
    let step = gpu["pre_start"].as_str().unwrap();
    assert!(
        step.contains("look for one again (2 looks 3 s apart)")
            && step.contains("ECS_ENABLE_GPU_SUPPORT is left out of the agent's environment"),
        "{step}"
    );
    let env = plan["agent"]["env"].to_string();
    assert!(env.contains("ECS_CLUSTER"), "{env}");
    assert!(!env.contains("ECS_ENABLE_GPU_SUPPORT"), "{env}");
    let warnings = plan["warnings"].to_string();
    assert!(
        warnings.contains("ECS_ENABLE_GPU_SUPPORT: No GPU devices found (no /dev/nvidia*), ignoring the GPU support config"),
        "{warnings}"
    );
}

/// `start` waits for the device too (a driver may come up after pre-start): a SIGTERM during
/// that wait is answered at once, and no container is created.
#[test]
fn start_answers_sigterm_during_the_gpu_wait() {
    let mut l = Launcher::new("docker");
    l.root
        .write_ecs_config("ECS_CLUSTER=gpu\nECS_ENABLE_GPU_SUPPORT=true\n");
    l.env
        .push(("ECS_INIT_GPU_WAIT_SECONDS".into(), "600".into()));
    let mut start = KillOnDrop(
        with_fake_dev(&l.cmd("start"), &[], false)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn start"),
    );
    assert!(
        wait_until(Duration::from_secs(30), || l
            .init_log()
            .contains("no nvidia* device exists yet; looking again")),
        "start never waited for the GPU device:\n{}",
        l.init_log()
    );
    signal(&start.0, libc::SIGTERM);
    let t0 = std::time::Instant::now();
    let status = wait_exit(&mut start.0, Duration::from_secs(5)).expect("start ended");
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    assert_eq!(status.code(), Some(0), "{}", l.init_log());
    assert_eq!(l.agent_containers(), 0);
}

/// `start` with GPU support on and no device after the wait: the agent runs (on the real
/// runtime) without `ECS_ENABLE_GPU_SUPPORT` and without the GPU bind, and the log says why.
#[test]
fn start_leaves_the_gpu_switch_out_without_devices() {
    let mut l = Launcher::new("docker");
    l.root
        .write_ecs_config("ECS_CLUSTER=gpu\nECS_ENABLE_GPU_SUPPORT=true\n");
    l.env.push(("ECS_INIT_GPU_WAIT_SECONDS".into(), "3".into()));
    l.root.place_agent_tarball(
        &ecs_test_support::stand_in_tarball("amazon/amazon-ecs-agent:latest"),
        2,
    );
    let out = wait_output(
        with_fake_dev(&l.cmd("pre-start"), &[], false)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pre-start"),
        Duration::from_secs(180),
        "pre-start",
    );
    assert_ok(&out, "pre-start");
    let mut start = KillOnDrop(
        with_fake_dev(&l.cmd("start"), &[], false)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn start"),
    );
    assert!(
        introspection_answers(Duration::from_secs(60)),
        "introspection never answered:\n{}",
        l.init_log()
    );
    let report = l.report();
    assert_ok(&l.run("stop"), "stop");
    assert_eq!(
        wait_exit(&mut start.0, Duration::from_secs(20)).and_then(|s| s.code()),
        Some(0)
    );
    let env = report["env"].as_object().expect("env");
    assert_eq!(env.get("ECS_CLUSTER").and_then(|v| v.as_str()), Some("gpu"));
    assert!(!env.contains_key("ECS_ENABLE_GPU_SUPPORT"), "{env:?}");
    assert!(
        !report["mounts"].to_string().contains("/var/lib/ecs/gpu"),
        "{}",
        report["mounts"]
    );
    let log = l.init_log();
    // pre-start and start each warned.
    assert!(
        log.matches("ignoring the GPU support config").count() >= 4,
        "{log}"
    );
}
