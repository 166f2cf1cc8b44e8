//! The handlers with a recording `Exec` whose `mount`/`umount` keep a mount table file, so
//! that what the plugin reads back from "the kernel" follows what it ran.
use super::*;
use ecs_host::exec::{FakeExec, Output};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

struct Host {
    dir: tempfile::TempDir,
    exec: Arc<FakeExec>,
    layout: Layout,
    mountinfo: PathBuf,
}

fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn efs() -> BTreeMap<String, String> {
    opts(&[
        ("type", "efs"),
        ("device", "fs-12345678:/"),
        ("o", "tls,iam"),
    ])
}

/// A mount table line for `target` (no escaping needed for the tests' paths).
fn table_line(target: &str) -> String {
    format!("90 22 0:50 / {target} rw,relatime - nfs4 127.0.0.1:/ rw\n")
}

impl Host {
    /// `mount` fails with `mount_error` when set.
    fn new(mount_error: Option<&'static str>) -> Host {
        let dir = tempfile::tempdir().unwrap();
        let mountinfo = dir.path().join("mountinfo");
        std::fs::write(&mountinfo, table_line("/")).unwrap();
        let table = mountinfo.clone();
        let exec = Arc::new(FakeExec::new(&["mount", "umount"], move |program, args| {
            let text = std::fs::read_to_string(&table).unwrap();
            let target = args.last().cloned().unwrap_or_default();
            let line = table_line(&target);
            match program {
                "mount" => match mount_error {
                    Some(e) => Ok(Output::failed(32, e)),
                    None => {
                        std::fs::write(&table, text + &line).unwrap();
                        Ok(Output::ok(""))
                    }
                },
                _ if !text.contains(&line) => Ok(Output::failed(
                    32,
                    format!("umount: {target}: not mounted."),
                )),
                _ => {
                    std::fs::write(&table, text.replacen(&line, "", 1)).unwrap();
                    Ok(Output::ok(""))
                }
            }
        }));
        let layout = Layout {
            volumes_root: dir.path().join("var/lib/ecs/volumes"),
            state_file: dir.path().join("var/lib/ecs/data").join(state::FILE_NAME),
        };
        Host {
            dir,
            exec,
            layout,
            mountinfo,
        }
    }

    fn plugin(&self) -> Plugin {
        let mounter = Mounter::new(
            self.exec.clone(),
            Duration::from_secs(5),
            self.mountinfo.clone(),
        );
        Plugin::load(self.layout.clone(), mounter)
    }

    fn path(&self, name: &str) -> String {
        self.layout.volumes_root.join(name).display().to_string()
    }

    fn saved(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&self.layout.state_file).unwrap()).unwrap()
    }

    fn mounted(&self) -> Vec<PathBuf> {
        crate::mounter::mount_points(&std::fs::read_to_string(&self.mountinfo).unwrap())
            .filter(|p| p != Path::new("/"))
            .collect()
    }
}

#[tokio::test]
async fn create_mounts_once_with_the_go_arguments_and_records_the_volume() {
    let host = Host::new(None);
    let plugin = host.plugin();
    plugin.create("v1", efs()).await.unwrap();
    let path = host.path("v1");
    assert_eq!(
        host.exec.calls(),
        [format!("mount -t efs -o tls,iam fs-12345678:/ {path}")]
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    let saved = host.saved();
    assert_eq!(saved["volumes"]["v1"]["type"], "efs");
    assert_eq!(saved["volumes"]["v1"]["path"], path.as_str());
    assert_eq!(saved["volumes"]["v1"]["options"]["device"], "fs-12345678:/");
    assert!(saved["volumes"]["v1"].get("mounts").is_none());
    let mode = std::fs::metadata(&host.layout.state_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // Nothing is mounted twice: a second create of the name is refused, without a mount.
    let err = plugin.create("v1", efs()).await.unwrap_err();
    assert_eq!(err, "volume v1 already exists");
    assert_eq!(host.exec.calls().len(), 1);
    assert_eq!(plugin.path("v1").unwrap(), path);
    let got = plugin.get("v1").unwrap();
    assert_eq!(
        (got.name.as_str(), got.mountpoint.as_str()),
        ("v1", path.as_str())
    );
    assert!(got.created_at.ends_with('Z'), "{}", got.created_at);
    assert_eq!(plugin.list().len(), 1);
    // type absent: efs, and mount gets no -t (as the Go plugin runs it).
    plugin
        .create("v2", opts(&[("device", "fs-2:/")]))
        .await
        .unwrap();
    assert_eq!(
        host.exec.calls()[1],
        format!("mount fs-2:/ {}", host.path("v2"))
    );
    plugin
        .create("v3", opts(&[("type", "s3files"), ("device", "fs-3:/")]))
        .await
        .unwrap();
    assert_eq!(
        host.exec.calls()[2],
        format!("mount -t s3files fs-3:/ {}", host.path("v3"))
    );
}

#[tokio::test]
async fn bad_requests_are_refused_in_words_and_touch_nothing() {
    let host = Host::new(None);
    let plugin = host.plugin();
    let err = plugin
        .create("v", opts(&[("type", "nfs"), ("device", "x:/")]))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        "volume type \"nfs\" is not supported (this plugin mounts efs and s3files)"
    );
    let err = plugin
        .create("v", opts(&[("type", "efs")]))
        .await
        .unwrap_err();
    assert!(err.contains("the option \"device\""), "{err}");
    let long = "a".repeat(256);
    for (name, why) in [
        ("..", "it is a relative directory"),
        (".", "it is a relative directory"),
        ("../etc", "it contains '/'"),
        ("a/b", "it contains '/'"),
        ("a\0b", "it contains a NUL byte"),
        ("", "it is empty"),
        (long.as_str(), "it is longer than 255 bytes"),
    ] {
        let err = plugin.create(name, efs()).await.unwrap_err();
        assert!(
            err.starts_with("invalid volume name") && err.ends_with(why),
            "{name:?}: {err}"
        );
        assert!(plugin.mount(name, "id").await.unwrap_err().ends_with(why));
        assert!(plugin.remove(name).await.unwrap_err().ends_with(why));
        assert!(plugin.path(name).unwrap_err().ends_with(why));
    }
    assert!(plugin.create(&"a".repeat(255), efs()).await.is_ok());
    let err = plugin
        .create(
            "t",
            opts(&[("device", "fs-1:/"), ("target", "/var/lib/../../etc")]),
        )
        .await
        .unwrap_err();
    assert!(err.contains("without '..'"), "{err}");
    assert_eq!(
        plugin.mount("nope", "id").await.unwrap_err(),
        "volume nope not found"
    );
    assert_eq!(
        plugin.mount("nope", "").await.unwrap_err(),
        "no mount ID in the request"
    );
    assert_eq!(
        plugin.remove("nope").await.unwrap_err(),
        "volume nope not found"
    );
    assert_eq!(plugin.get("nope").unwrap_err(), "volume nope not found");
    assert_eq!(host.exec.calls().len(), 1, "{:?}", host.exec.calls());
    assert!(!host.layout.volumes_root.join("v").exists());
}

#[tokio::test]
async fn a_failed_mount_names_the_command_and_leaves_nothing() {
    let host = Host::new(Some(
        "mount.efs: Failed to resolve \"fs-12345678.efs.us-east-1.amazonaws.com\"",
    ));
    let plugin = host.plugin();
    let err = plugin.create("v", efs()).await.unwrap_err();
    assert_eq!(
        err,
        format!(
            "cannot mount volume v: `mount -t efs -o tls,iam fs-12345678:/ {}` failed (exit status 32): mount.efs: Failed to resolve \"fs-12345678.efs.us-east-1.amazonaws.com\"",
            host.path("v")
        )
    );
    assert!(!Path::new(&host.path("v")).exists());
    assert!(plugin.list().is_empty());
    assert!(!host.layout.state_file.exists());
}

#[tokio::test]
async fn mounts_are_counted_and_remove_waits_for_the_last_container() {
    let host = Host::new(None);
    let plugin = host.plugin();
    plugin.create("v", efs()).await.unwrap();
    let path = host.path("v");
    assert_eq!(plugin.mount("v", "c1").await.unwrap(), path);
    assert_eq!(plugin.mount("v", "c2").await.unwrap(), path);
    assert_eq!(plugin.mount("v", "c2").await.unwrap(), path);
    assert_eq!(
        host.saved()["volumes"]["v"]["mounts"],
        serde_json::json!({"c1": 1, "c2": 2})
    );
    // Mounted once, whatever the number of containers.
    assert_eq!(host.exec.calls().len(), 1);
    let err = plugin.remove("v").await.unwrap_err();
    assert_eq!(
        err,
        "volume v is in use by 2 container mount(s) (c1, c2); stop those containers first"
    );
    plugin.unmount("v", "c2").await.unwrap();
    plugin.unmount("v", "c2").await.unwrap();
    plugin.unmount("v", "c2").await.unwrap(); // unknown now: a no-op, as in Go
    plugin.unmount("v", "c1").await.unwrap();
    assert!(host.saved()["volumes"]["v"].get("mounts").is_none());
    // Still mounted until removed.
    assert_eq!(host.mounted(), [PathBuf::from(&path)]);
    plugin.remove("v").await.unwrap();
    assert_eq!(host.exec.calls()[1], format!("umount -l {path}"));
    assert!(host.mounted().is_empty());
    assert!(!Path::new(&path).exists());
    assert_eq!(host.saved(), serde_json::json!({}));
    assert_eq!(
        plugin.unmount("v", "c1").await.unwrap_err(),
        "volume v not found"
    );
}

#[tokio::test]
async fn a_volume_whose_mount_is_gone_is_mounted_again_and_removed_without_umount() {
    let host = Host::new(None);
    let plugin = host.plugin();
    plugin.create("v", efs()).await.unwrap();
    // The host rebooted: the mount is gone, the record is not.
    std::fs::write(&host.mountinfo, table_line("/")).unwrap();
    let plugin = {
        drop(plugin);
        host.plugin()
    };
    assert_eq!(plugin.mount("v", "c1").await.unwrap(), host.path("v"));
    assert_eq!(host.exec.calls().len(), 2);
    assert_eq!(host.exec.calls()[1], host.exec.calls()[0]);
    plugin.unmount("v", "c1").await.unwrap();
    std::fs::write(&host.mountinfo, table_line("/")).unwrap();
    // Not mounted: removing it needs no umount.
    plugin.remove("v").await.unwrap();
    assert_eq!(host.exec.calls().len(), 2);
}

#[tokio::test]
async fn a_state_file_that_cannot_be_saved_rolls_the_create_back() {
    let host = Host::new(None);
    // The data directory is a file: the save fails.
    std::fs::create_dir_all(host.dir.path().join("var/lib/ecs")).unwrap();
    std::fs::write(host.dir.path().join("var/lib/ecs/data"), "").unwrap();
    let plugin = host.plugin();
    let err = plugin.create("v", efs()).await.unwrap_err();
    assert!(
        err.starts_with("cannot save the plugin's state file"),
        "{err}"
    );
    assert_eq!(
        host.exec.calls(),
        [
            format!("mount -t efs -o tls,iam fs-12345678:/ {}", host.path("v")),
            format!("umount -l {}", host.path("v"))
        ]
    );
    assert!(plugin.list().is_empty());
    assert!(host.mounted().is_empty());
}

/// A state file as the Go plugin writes it (json.MarshalIndent with tabs, Go's members, one
/// volume from a version that did not count mounts), continued: the plugin serves its
/// volumes, counts their mounts and removes them, and keeps what it does not know.
#[tokio::test]
async fn a_go_plugin_state_file_is_read_and_continued() {
    let host = Host::new(None);
    let root = host.layout.volumes_root.display().to_string();
    let go = format!(
        "{{\n\t\"volumes\": {{\n\t\t\"ecs-t1-efs\": {{\n\t\t\t\"type\": \"efs\",\n\t\t\t\"path\": \"{root}/ecs-t1-efs\",\n\t\t\t\"options\": {{\n\t\t\t\t\"device\": \"fs-1:/\",\n\t\t\t\t\"o\": \"tls,iam,accesspoint=fsap-1\",\n\t\t\t\t\"type\": \"efs\"\n\t\t\t}},\n\t\t\t\"createdAt\": \"2024-05-01T10:11:12.123456789Z\",\n\t\t\t\"mounts\": {{\n\t\t\t\t\"c0\": 1\n\t\t\t}}\n\t\t}},\n\t\t\"legacy\": {{\n\t\t\t\"path\": \"{root}/legacy\",\n\t\t\t\"options\": {{\n\t\t\t\t\"device\": \"fs-2:/\"\n\t\t\t}},\n\t\t\t\"createdAt\": \"2020-01-01T00:00:00Z\"\n\t\t}}\n\t}},\n\t\"futureMember\": true\n}}"
    );
    std::fs::create_dir_all(host.layout.state_file.parent().unwrap()).unwrap();
    std::fs::write(&host.layout.state_file, &go).unwrap();
    for v in ["ecs-t1-efs", "legacy"] {
        std::fs::create_dir_all(host.layout.volumes_root.join(v)).unwrap();
        let t = std::fs::read_to_string(&host.mountinfo).unwrap();
        std::fs::write(&host.mountinfo, t + &table_line(&host.path(v))).unwrap();
    }
    let plugin = host.plugin();
    // Loading changes nothing: no command, the file as it was.
    assert!(host.exec.calls().is_empty());
    assert_eq!(
        std::fs::read_to_string(&host.layout.state_file).unwrap(),
        go
    );
    let names: Vec<String> = plugin.list().into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["ecs-t1-efs", "legacy"]);
    assert_eq!(
        plugin.get("legacy").unwrap().created_at,
        "2020-01-01T00:00:00Z"
    );
    // The container the Go plugin counted still holds it.
    assert!(plugin
        .remove("ecs-t1-efs")
        .await
        .unwrap_err()
        .contains("(c0)"));
    plugin.mount("ecs-t1-efs", "c1").await.unwrap();
    plugin.unmount("ecs-t1-efs", "c0").await.unwrap();
    plugin.unmount("ecs-t1-efs", "c1").await.unwrap();
    plugin.remove("ecs-t1-efs").await.unwrap();
    plugin.remove("legacy").await.unwrap();
    assert_eq!(
        host.exec.calls(),
        [
            format!("umount -l {root}/ecs-t1-efs"),
            format!("umount -l {root}/legacy")
        ]
    );
    assert_eq!(
        std::fs::read_to_string(&host.layout.state_file).unwrap(),
        "{\n\t\"futureMember\": true\n}"
    );
}

#[tokio::test]
async fn a_corrupt_state_file_is_kept_aside_and_the_plugin_starts_empty() {
    let host = Host::new(None);
    std::fs::create_dir_all(host.layout.state_file.parent().unwrap()).unwrap();
    std::fs::write(&host.layout.state_file, "{\"volumes\": [").unwrap();
    let plugin = host.plugin();
    assert!(plugin.list().is_empty());
    let kept: Vec<_> = std::fs::read_dir(host.layout.state_file.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(kept.len(), 1);
    assert!(
        kept[0].starts_with("ecs_volume_plugin.json.corrupt-"),
        "{kept:?}"
    );
    // New volumes are saved to a new file; the corrupt one stays.
    plugin.create("v", efs()).await.unwrap();
    assert_eq!(
        std::fs::read_dir(host.layout.state_file.parent().unwrap())
            .unwrap()
            .count(),
        2
    );
}

#[tokio::test]
async fn requests_for_one_volume_are_serialised() {
    let host = Host::new(None);
    let plugin = Arc::new(host.plugin());
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let p = plugin.clone();
            tokio::spawn(async move { p.create("same", efs()).await })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(e) => assert_eq!(e, "volume same already exists"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(host.exec.calls().len(), 1);
    // The lock table forgets names nobody waits for.
    assert!(plugin.locks.lock().unwrap().is_empty());
}

/// A mount helper that hangs: the request fails after the operator's timeout with words that
/// name the knob, and meanwhile the other volumes and `List` answer at once. Real processes
/// (a `mount` script on the search path), so the kill is real too.
#[tokio::test]
async fn a_hung_mount_helper_is_bounded_and_blocks_no_one_else() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let mount = bin.join("mount");
    std::fs::write(
        &mount,
        "#!/bin/sh\ncase \"$*\" in *hang*) exec sleep 600;; esac\nexit 0\n",
    )
    .unwrap();
    std::fs::set_permissions(&mount, std::fs::Permissions::from_mode(0o755)).unwrap();
    let exec = Arc::new(ecs_host::SystemExec::new(Some(
        format!("{}:/usr/bin:/bin", bin.display()).into(),
    )));
    let layout = Layout {
        volumes_root: dir.path().join("volumes"),
        state_file: dir.path().join("data").join(state::FILE_NAME),
    };
    let mounter = Mounter::new(exec, Duration::from_millis(1500), dir.path().join("none"));
    let plugin = Arc::new(Plugin::new(layout, mounter, StateFile::default()));
    plugin
        .create("ok", opts(&[("device", "fs-ok:/")]))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let hung = {
        let p = plugin.clone();
        tokio::spawn(async move { p.create("v", opts(&[("device", "fs-hang:/")])).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    // While it hangs: List, Get and another volume's create answer at once.
    let quick = std::time::Instant::now();
    assert_eq!(plugin.list().len(), 1);
    assert!(plugin.get("ok").is_ok());
    plugin
        .create("other", opts(&[("device", "fs-other:/")]))
        .await
        .unwrap();
    assert!(
        quick.elapsed() < Duration::from_millis(1000),
        "{:?}",
        quick.elapsed()
    );
    let err = hung.await.unwrap().unwrap_err();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    assert!(
        err.ends_with(
            "did not finish within 1.5 s (ECS_VOLUME_PLUGIN_MOUNT_TIMEOUT_SECONDS) and was killed"
        ),
        "{err}"
    );
    assert!(err.contains("`mount fs-hang:/ "), "{err}");
    assert!(plugin.get("v").is_err());
    assert!(!dir.path().join("volumes/v").exists());
}
