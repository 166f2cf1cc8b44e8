//! The agent download through the real launcher: `pre-start` on an uncached host runs inside a
//! network namespace of the test's own, where fake instance-metadata, S3 (HTTPS, with a CA the
//! test generates and passes through `SSL_CERT_FILE`) and proxy servers listen on 127.0.0.1
//! (`ecs_test_support::fake_aws`). Nothing leaves loopback: the namespace has no other
//! interface.
//!
//! Failure cases run against containerd in a containerd namespace of their own, with an "old"
//! agent image already imported, and check that a failed download changes nothing: same image,
//! same state file, no temp file. The end-to-end cases (empty cache → agent answering
//! introspection) run on Docker and containerd and hold the agent lock.
mod common;

use common::*;
use ecs_test_support::fake_aws::{
    md5_hex, test_ca_pem, Answer, FakeAws, Imds, Netns, PROXY_ONLY_HOST,
};
use ecs_test_support::{stand_in_tarball_with, ImageSpec, TarballFormat, TestRoot, AGENT_IMAGE};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const BUCKET: &str = "amazon-ecs-agent";
const BIN: &str = env!("CARGO_BIN_EXE_amazon-ecs-init");

/// The published object's name for this build's architecture.
fn object() -> String {
    amazon_ecs_init::download::object_name(std::env::consts::ARCH).expect("supported arch")
}

/// The stand-in agent image tagged as the agent, with a marker so versions can be told apart.
fn image(marker: &str) -> PathBuf {
    let spec = ImageSpec::new(AGENT_IMAGE)
        .marker(marker)
        .env("STANDIN_IMAGE_VERSION", marker);
    stand_in_tarball_with(&spec, TarballFormat::DockerSave)
}

fn served_tarball() -> Vec<u8> {
    std::fs::read(image("downloaded")).expect("read the served tarball")
}

/// How many GETs of the tarball a download of `served` makes with the default part size and
/// parallelism (one per part; the first is the open range request).
fn tarball_gets(served: &[u8]) -> usize {
    let parts = amazon_ecs_init::download::fetch::plan_parts(served.len() as u64, 8 << 20, 8).len();
    assert!(
        parts > 1,
        "the stand-in tarball is large enough to be split"
    );
    parts
}

/// Settings of the test machine's own environment that must not leak into the launcher.
const SCRUB: &[&str] = &[
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_EC2_METADATA_DISABLED",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
    "AWS_USE_FIPS_ENDPOINT",
    "AWS_USE_DUALSTACK_ENDPOINT",
    "AWS_CA_BUNDLE",
    "AWS_EC2_METADATA_V1_DISABLED",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "ECS_EXTERNAL",
    "NOTIFY_SOCKET",
];

/// One uncached host: a test root, a network namespace with the fake endpoints, and a containerd
/// namespace of its own.
struct Host {
    root: TestRoot,
    netns: Netns,
    aws: FakeAws,
    ns: String,
    env: Vec<(String, String)>,
}

impl Host {
    fn new(imds: Imds) -> Host {
        ecs_test_support::require_root();
        ecs_test_support::require_containerd();
        static N: AtomicUsize = AtomicUsize::new(0);
        let ns = format!(
            "ecs-dl-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let root = TestRoot::new();
        let netns = Netns::new();
        let aws = FakeAws::start_in(&netns, imds);
        let ca = root.join("test-ca.pem");
        std::fs::write(&ca, &aws.ca_pem).expect("write the test CA");
        let env = vec![
            ("ECS_INIT_HOST_ROOT", root.path().display().to_string()),
            ("ECS_INIT_RUNTIME", "containerd".into()),
            ("ECS_INIT_CONTAINERD_NAMESPACE", ns.clone()),
            ("ECS_INIT_FIREWALL", "none".into()),
            ("ECS_LOGLEVEL", "debug".into()),
            ("SSL_CERT_FILE", ca.display().to_string()),
            ("AWS_ENDPOINT_URL_S3", aws.s3_url.clone()),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", aws.imds_url.clone()),
            ("ECS_INIT_DOWNLOAD_READ_TIMEOUT_SECONDS", "5".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Host {
            root,
            netns,
            aws,
            ns,
            env,
        }
    }

    fn set(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
    }

    fn unset(&mut self, key: &str) {
        self.env.retain(|(k, _)| k != key);
    }

    fn command(&self, mut c: Command) -> Command {
        for k in SCRUB {
            c.env_remove(k);
        }
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c
    }

    fn pre_start(&self) -> Output {
        let mut c = self.netns.command(BIN);
        c.arg("pre-start");
        let child = self.command(c).spawn().expect("spawn pre-start");
        wait_output(child, Duration::from_secs(180), "pre-start")
    }

    /// Import an "old" agent image into this host's containerd namespace; returns its digest.
    fn preload_old_image(&self) -> String {
        let out = Command::new("ctr")
            .args(["-n", &self.ns, "images", "import"])
            .arg(image("old"))
            .output()
            .expect("ctr images import");
        assert!(
            out.status.success(),
            "ctr import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.image_digest().expect("the old image is there")
    }

    /// The digest of the agent image in this host's containerd namespace.
    fn image_digest(&self) -> Option<String> {
        let out = Command::new("ctr")
            .args(["-n", &self.ns, "images", "ls"])
            .output()
            .expect("ctr images ls");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.starts_with("docker.io/amazon/amazon-ecs-agent:latest "))
            .and_then(|l| l.split_whitespace().nth(2))
            .map(str::to_string)
    }

    /// The names in `var/cache/ecs`, sorted.
    fn cache_listing(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.root.var_cache_ecs())
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    fn state(&self) -> Option<String> {
        self.root.read("var/cache/ecs/state")
    }

    /// Start uncached (state 0, no tarball) with the old image in the runtime; returns its digest.
    fn uncached_with_old_image(&self) -> String {
        self.root.write_cache_state(0);
        self.preload_old_image()
    }

    /// After a failed pre-start: exit 255, the error in stderr, and nothing changed.
    fn assert_failed_and_unchanged(&self, out: &Output, old_digest: &str) -> String {
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("pre-start stderr:\n{err}");
        assert_eq!(out.status.code(), Some(255), "pre-start must fail:\n{err}");
        assert_eq!(self.state().as_deref(), Some("0"), "state file unchanged");
        assert_eq!(
            self.cache_listing(),
            ["state"],
            "no tarball, no temp file left:\n{err}"
        );
        assert_eq!(
            self.image_digest().as_deref(),
            Some(old_digest),
            "the image already there is unchanged"
        );
        assert_eq!(self.image_version().as_deref(), Some("old"));
        err
    }

    /// After a successful pre-start: state 1, the served tarball in place (0600), no temp file,
    /// the downloaded image in the runtime.
    fn assert_downloaded(&self, out: &Output, served: &[u8]) -> String {
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_ok(out, "pre-start");
        assert_eq!(self.state().as_deref(), Some("1"), "state 1 after the load");
        let tar = self.root.var_cache_ecs().join("ecs-agent.tar");
        let got = std::fs::read(&tar).expect("the tarball is in place");
        assert_eq!(md5_hex(&got), md5_hex(served), "the served tarball, intact");
        let mode = std::fs::metadata(&tar).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "tarball mode");
        assert_eq!(
            self.cache_listing(),
            ["ecs-agent.tar", "state"],
            "no temp file"
        );
        assert_eq!(
            self.image_version().as_deref(),
            Some("downloaded"),
            "the downloaded image is the one in the runtime"
        );
        err
    }

    /// A blob of containerd's content store, as JSON.
    fn content(&self, digest: &str) -> serde_json::Value {
        let out = Command::new("ctr")
            .args(["-n", &self.ns, "content", "get", digest])
            .output()
            .expect("ctr content get");
        assert!(out.status.success(), "ctr content get {digest}");
        serde_json::from_slice(&out.stdout).expect("a JSON blob")
    }

    /// The marker (`STANDIN_IMAGE_VERSION`) in the config of the agent image in this host's
    /// containerd namespace: which tarball it came from, whoever imported it.
    fn image_version(&self) -> Option<String> {
        let mut blob = self.content(&self.image_digest()?);
        if let Some(first) = blob["manifests"].as_array().and_then(|m| m.first()) {
            let digest = first["digest"].as_str()?.to_string();
            blob = self.content(&digest);
        }
        let config = self.content(blob["config"]["digest"].as_str()?);
        config["config"]["Env"]
            .as_array()?
            .iter()
            .filter_map(|e| e.as_str())
            .find_map(|e| e.strip_prefix("STANDIN_IMAGE_VERSION="))
            .map(str::to_string)
    }
}

fn remove_namespace(ns: &str) {
    let ls = Command::new("ctr")
        .args(["-n", ns, "images", "ls", "-q"])
        .output();
    if let Ok(ls) = ls {
        for r in String::from_utf8_lossy(&ls.stdout).lines() {
            let _ = Command::new("ctr")
                .args(["-n", ns, "images", "rm", "--sync", r])
                .output();
        }
    }
    for _ in 0..50 {
        let ok = Command::new("ctr")
            .args(["namespaces", "remove", ns])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        remove_namespace(&self.ns);
    }
}

fn imds_v2(region: &str) -> Imds {
    Imds::V2 {
        region: region.into(),
    }
}

#[test]
fn imds_v2_region_and_the_partition_bucket() {
    let h = Host::new(imds_v2("eu-west-1"));
    let served = served_tarball();
    h.aws.put_agent(BUCKET, &object(), served.clone());
    // No cache directory at all: pre-start creates it 0700.
    std::fs::remove_dir_all(h.root.var_cache_ecs()).unwrap();
    let out = h.pre_start();
    let log = h.assert_downloaded(&out, &served);
    let mode = std::fs::metadata(h.root.var_cache_ecs())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700, "cache directory mode");
    // IMDSv2: PUT for a token with a TTL, then the region with that token.
    let imds = h.aws.requests_to("imds");
    assert_eq!(imds.len(), 2, "{imds:?}");
    assert_eq!(
        (imds[0].method.as_str(), imds[0].target.as_str()),
        ("PUT", "/latest/api/token")
    );
    assert!(imds[0]
        .header("x-aws-ec2-metadata-token-ttl-seconds")
        .is_some());
    assert_eq!(imds[1].target, "/latest/meta-data/placement/region");
    assert!(imds[1]
        .header("x-aws-ec2-metadata-token")
        .is_some_and(|t| t.starts_with("AQAEfake-token-")));
    assert!(
        log.contains("eu-west-1") && log.contains("IMDSv2"),
        "the log names the region and its source:\n{log}"
    );
    // The partition bucket answered: one GET of the checksum, one of each part of the tarball.
    assert_eq!(h.aws.gets(BUCKET, &format!("{}.md5", object())), 1);
    assert_eq!(h.aws.gets(BUCKET, &object()), tarball_gets(&served));
    assert!(log.contains("agent downloaded"), "final line:\n{log}");
    assert!(
        log.contains(&md5_hex(&served)),
        "the final line names the digest"
    );
}

#[test]
fn imds_v1_only_when_the_token_call_is_refused() {
    let h = Host::new(imds_v2("unused"));
    let served = served_tarball();
    // Only the regional bucket has it: the download proves which region IMDSv1 gave.
    let regional = format!("{BUCKET}-ap-northeast-1");
    h.aws.put_agent(&regional, &object(), served.clone());
    for refuse in [403, 404, 405] {
        h.aws.set_imds(Imds::V1Only {
            refuse,
            region: "ap-northeast-1".into(),
        });
        h.root.write_cache_state(0);
        let before = h.aws.requests_to("imds").len();
        let out = h.pre_start();
        h.assert_downloaded(&out, &served);
        let imds = h.aws.requests_to("imds")[before..].to_vec();
        assert_eq!(imds.len(), 2, "{refuse}: {imds:?}");
        assert_eq!(imds[0].method, "PUT");
        assert_eq!(imds[1].method, "GET");
        assert!(
            imds[1].header("x-aws-ec2-metadata-token").is_none(),
            "IMDSv1: no token"
        );
    }
    // A token call that fails otherwise (500) is not a reason to use IMDSv1: no region, the
    // default one with a warning, and only the partition bucket (us-east-1) could serve.
    h.aws.set_imds(Imds::V1Only {
        refuse: 500,
        region: "ap-northeast-1".into(),
    });
    h.aws.put_agent(BUCKET, &object(), served.clone());
    h.root.write_cache_state(0);
    let before = h.aws.requests_to("imds").len();
    let out = h.pre_start();
    let log = h.assert_downloaded(&out, &served);
    let imds = h.aws.requests_to("imds")[before..].to_vec();
    assert!(
        imds.iter().all(|r| r.method == "PUT"),
        "no IMDSv1 GET after a 500: {imds:?}"
    );
    assert!(
        log.contains("did not give one") && log.contains("us-east-1"),
        "{log}"
    );
}

#[test]
fn region_from_settings_and_the_default_without_imds() {
    let mut h = Host::new(imds_v2("eu-west-1"));
    let served = served_tarball();
    h.set("AWS_EC2_METADATA_DISABLED", "true");
    // From the env file.
    h.root.write_ecs_config("AWS_DEFAULT_REGION=sa-east-1\n");
    h.aws
        .put_agent(&format!("{BUCKET}-sa-east-1"), &object(), served.clone());
    let out = h.pre_start();
    let log = h.assert_downloaded(&out, &served);
    assert!(log.contains("from AWS_DEFAULT_REGION"), "{log}");
    // The process environment wins, and AWS_REGION over AWS_DEFAULT_REGION.
    h.set("AWS_REGION", "me-south-1");
    h.aws
        .put_agent(&format!("{BUCKET}-me-south-1"), &object(), served.clone());
    h.root.write_cache_state(0);
    let out = h.pre_start();
    h.assert_downloaded(&out, &served);
    assert_eq!(
        h.aws.gets(&format!("{BUCKET}-me-south-1"), &object()),
        tarball_gets(&served)
    );
    assert!(h.aws.requests_to("imds").is_empty(), "IMDS never asked");
    // No region at all: the Go tool's default, with a warning that says why.
    h.unset("AWS_REGION");
    h.root.write_ecs_config("");
    h.aws.put_agent(BUCKET, &object(), served.clone());
    h.root.write_cache_state(0);
    let out = h.pre_start();
    let log = h.assert_downloaded(&out, &served);
    assert!(
        log.contains("level=warn")
            && log.contains("AWS_EC2_METADATA_DISABLED=true")
            && log.contains("using us-east-1"),
        "{log}"
    );
    assert!(h.aws.requests_to("imds").is_empty(), "IMDS never asked");
    // IMDS enabled but not answering (nothing listens there): the default, and why.
    h.unset("AWS_EC2_METADATA_DISABLED");
    // Port 1 of the namespace's loopback: nothing listens there.
    let dead = "http://127.0.0.1:1";
    h.set("AWS_EC2_METADATA_SERVICE_ENDPOINT", dead);
    h.root.write_cache_state(0);
    let out = h.pre_start();
    let log = h.assert_downloaded(&out, &served);
    assert!(
        log.contains("instance metadata service did not give one") && log.contains(dead),
        "{log}"
    );
}

/// `reload-cache` on an uncached host downloads like `pre-start` (the Go tool does), loads it
/// and records state 1.
#[test]
fn reload_cache_on_an_uncached_host_downloads() {
    let h = Host::new(imds_v2("eu-west-1"));
    let served = served_tarball();
    h.aws.put_agent(BUCKET, &object(), served.clone());
    std::fs::remove_dir_all(h.root.var_cache_ecs()).unwrap();
    let mut c = h.netns.command(BIN);
    c.arg("reload-cache");
    let child = h.command(c).spawn().expect("spawn reload-cache");
    let out = wait_output(child, Duration::from_secs(180), "reload-cache");
    h.assert_downloaded(&out, &served);
    assert_eq!(h.aws.gets(BUCKET, &object()), tarball_gets(&served));
}

#[test]
fn first_bucket_404_then_the_regional_bucket() {
    let h = Host::new(imds_v2("eu-central-1"));
    let served = served_tarball();
    let regional = format!("{BUCKET}-eu-central-1");
    h.aws.put_agent(&regional, &object(), served.clone());
    let out = h.pre_start();
    let log = h.assert_downloaded(&out, &served);
    // The partition bucket: one GET of the checksum (404, not retried), no tarball GET.
    assert_eq!(h.aws.gets(BUCKET, &format!("{}.md5", object())), 1);
    assert_eq!(h.aws.gets(BUCKET, &object()), 0);
    assert_eq!(h.aws.gets(&regional, &object()), tarball_gets(&served));
    assert!(log.contains("HTTP 404"), "{log}");
}

#[test]
fn checksum_mismatch_changes_nothing() {
    let h = Host::new(imds_v2("eu-west-1"));
    let old = h.uncached_with_old_image();
    let served = served_tarball();
    let wrong = md5_hex(b"something else");
    for bucket in [BUCKET.to_string(), format!("{BUCKET}-eu-west-1")] {
        h.aws.put(&bucket, &object(), served.clone());
        h.aws.put(
            &bucket,
            &format!("{}.md5", object()),
            format!("{wrong}\n").into_bytes(),
        );
    }
    let out = h.pre_start();
    let err = h.assert_failed_and_unchanged(&out, &old);
    assert!(err.contains("does not match expected checksum"), "{err}");
    assert!(
        err.contains(&wrong) && err.contains(&md5_hex(&served)),
        "both digests: {err}"
    );
    assert!(
        err.contains(&format!("{}/{BUCKET}/{}", h.aws.s3_url, object())),
        "the URL: {err}"
    );
}

#[test]
fn malformed_md5_changes_nothing() {
    let h = Host::new(imds_v2("eu-west-1"));
    let old = h.uncached_with_old_image();
    for bucket in [BUCKET.to_string(), format!("{BUCKET}-eu-west-1")] {
        h.aws.put(&bucket, &object(), served_tarball());
        h.aws.put(
            &bucket,
            &format!("{}.md5", object()),
            b"<html>not a digest</html>".to_vec(),
        );
    }
    let out = h.pre_start();
    let err = h.assert_failed_and_unchanged(&out, &old);
    assert!(err.contains("malformed checksum file"), "{err}");
    assert!(
        err.contains(&format!("{}/{BUCKET}/{}.md5", h.aws.s3_url, object())),
        "{err}"
    );
    assert_eq!(h.aws.gets(BUCKET, &object()), 0, "no tarball fetched");
}

#[test]
fn not_found_in_either_bucket_is_not_retried() {
    let h = Host::new(imds_v2("eu-west-1"));
    let old = h.uncached_with_old_image();
    let out = h.pre_start();
    let err = h.assert_failed_and_unchanged(&out, &old);
    for bucket in [BUCKET.to_string(), format!("{BUCKET}-eu-west-1")] {
        let url = format!("{}/{bucket}/{}.md5", h.aws.s3_url, object());
        assert!(err.contains(&format!("GET {url}: HTTP 404")), "{err}");
        assert_eq!(
            h.aws.gets(&bucket, &format!("{}.md5", object())),
            1,
            "4xx: no retry"
        );
    }
}

#[test]
fn truncated_and_reset_bodies_are_retried() {
    let h = Host::new(imds_v2("eu-west-1"));
    let served = served_tarball();
    h.aws.put_agent(BUCKET, &object(), served.clone());
    for (i, answer) in [
        Answer::Truncate(served.len() / 2),
        Answer::Reset(served.len() / 3),
    ]
    .into_iter()
    .enumerate()
    {
        h.aws.script(BUCKET, &object(), vec![answer.clone()]);
        h.root.write_cache_state(0);
        let out = h.pre_start();
        let log = h.assert_downloaded(&out, &served);
        assert_eq!(
            h.aws.gets(BUCKET, &object()),
            2 * (i + 1),
            "{answer:?}: one broken attempt, one good"
        );
        assert!(log.contains("retrying"), "{answer:?}: {log}");
    }
}

#[test]
fn server_errors_are_retried() {
    let h = Host::new(imds_v2("eu-west-1"));
    let served = served_tarball();
    h.aws.put_agent(BUCKET, &object(), served.clone());
    h.aws.script(
        BUCKET,
        &format!("{}.md5", object()),
        vec![Answer::Status(500)],
    );
    h.aws.script(
        BUCKET,
        &object(),
        vec![Answer::Status(503), Answer::Status(502)],
    );
    let out = h.pre_start();
    h.assert_downloaded(&out, &served);
    assert_eq!(h.aws.gets(BUCKET, &format!("{}.md5", object())), 2);
    // Two failed first requests, then one GET per part.
    assert_eq!(h.aws.gets(BUCKET, &object()), 2 + tarball_gets(&served));
}

#[test]
fn stalled_server_times_out_with_a_clear_error() {
    let mut h = Host::new(imds_v2("eu-west-1"));
    let old = h.uncached_with_old_image();
    h.set("ECS_INIT_DOWNLOAD_READ_TIMEOUT_SECONDS", "1");
    for bucket in [BUCKET.to_string(), format!("{BUCKET}-eu-west-1")] {
        h.aws.put_agent(&bucket, &object(), served_tarball());
        h.aws
            .script(&bucket, &object(), vec![Answer::Stall(1000); 3]);
    }
    let t0 = Instant::now();
    let out = h.pre_start();
    let took = t0.elapsed();
    let err = h.assert_failed_and_unchanged(&out, &old);
    assert!(
        err.contains("no data for 1s after 1000 of") && err.contains("gave up after 3 attempts"),
        "{err}"
    );
    // 2 buckets × 3 attempts × 1 s, plus backoff (1 s, 2 s per bucket, ±10 %).
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

#[test]
fn no_space_left_in_the_cache_directory() {
    let h = Host::new(imds_v2("eu-west-1"));
    let old = h.preload_old_image();
    let served = served_tarball();
    assert!(served.len() > 256 * 1024, "the tarball must not fit");
    h.aws.put_agent(BUCKET, &object(), served.clone());
    h.aws
        .put_agent(&format!("{BUCKET}-eu-west-1"), &object(), served);
    // With Content-Length (checked before writing), then chunked (the write itself fails).
    for chunked in [false, true] {
        if chunked {
            for bucket in [BUCKET.to_string(), format!("{BUCKET}-eu-west-1")] {
                h.aws.script(&bucket, &object(), vec![Answer::Chunked]);
            }
        }
        // A 128 KiB tmpfs over the cache directory, in a mount namespace of this command only;
        // what it holds afterwards is listed to a file outside it.
        let listing = h.root.join("tmpfs-listing");
        let mut c = h.netns.command("unshare");
        c.args(["-m", "--propagation", "private", "--", "sh", "-c"])
            .arg(
                "mount -t tmpfs -o size=128k,mode=0700 ecs-test-tmpfs \"$1\" || exit 99; \
                 echo 0 > \"$1/state\"; \"$2\" pre-start; rc=$?; \
                 ls -A \"$1\" > \"$3\"; cat \"$1/state\" >> \"$3\"; exit $rc",
            )
            .arg("sh")
            .arg(h.root.var_cache_ecs())
            .arg(BIN)
            .arg(&listing);
        let child = h.command(c).spawn().expect("spawn pre-start on a tmpfs");
        let out = wait_output(child, Duration::from_secs(120), "pre-start");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(255), "chunked={chunked}: {err}");
        assert!(
            err.contains("No space left on device"),
            "chunked={chunked}: {err}"
        );
        assert_eq!(
            std::fs::read_to_string(&listing).unwrap(),
            "state\n0\n",
            "no temp file, state unchanged (chunked={chunked})"
        );
        assert_eq!(h.image_digest().as_deref(), Some(old.as_str()));
        if chunked {
            assert!(err.contains("writing"), "the write failed: {err}");
        } else {
            assert!(err.contains("not enough space"), "checked up front: {err}");
        }
        // Local trouble is not a bucket's fault: the second bucket is not tried.
        assert_eq!(h.aws.gets(&format!("{BUCKET}-eu-west-1"), &object()), 0);
    }
    // The host's real cache directory under the root was never touched.
    assert!(h.cache_listing().is_empty(), "{:?}", h.cache_listing());
}

#[test]
fn proxy_tunnels_the_download() {
    let mut h = Host::new(imds_v2("unused"));
    let served = served_tarball();
    h.aws.put_agent(BUCKET, &object(), served.clone());
    h.set("AWS_EC2_METADATA_DISABLED", "true");
    h.set("AWS_REGION", "eu-west-1");
    // A name only the proxy can resolve: reaching S3 by it proves the request went through it.
    h.set(
        "AWS_ENDPOINT_URL_S3",
        &format!("https://{PROXY_ONLY_HOST}:{}", h.aws.s3_port),
    );
    h.set(
        "HTTPS_PROXY",
        &format!("http://ecs:pa%40ss@{}", h.aws.proxy_addr),
    );
    h.set("NO_PROXY", "169.254.169.254,169.254.170.2");
    // base64("ecs:pa@ss")
    h.aws.require_proxy_auth("Basic ZWNzOnBhQHNz");
    let out = h.pre_start();
    h.assert_downloaded(&out, &served);
    let target = format!("{PROXY_ONLY_HOST}:{}", h.aws.s3_port);
    let proxy = h.aws.requests_to("proxy");
    assert_eq!(
        proxy.len(),
        1 + tarball_gets(&served),
        "checksum and each part of the tarball: {proxy:?}"
    );
    for r in &proxy {
        assert_eq!(
            (r.method.as_str(), r.target.as_str()),
            ("CONNECT", target.as_str())
        );
    }
    assert!(h
        .aws
        .requests_to("s3")
        .iter()
        .all(|r| r.header("host") == Some(target.as_str())));
    // NO_PROXY naming the host: straight there, which cannot work for this name.
    h.set("NO_PROXY", "169.254.169.254,.test");
    h.root.write_cache_state(0);
    let out = h.pre_start();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{err}");
    assert!(
        err.contains(&format!("cannot connect to server {PROXY_ONLY_HOST}:")),
        "{err}"
    );
    assert_eq!(
        h.aws.requests_to("proxy").len(),
        1 + tarball_gets(&served),
        "the proxy saw nothing new"
    );
}

#[test]
fn untrusted_certificate_is_refused_without_retries() {
    let mut h = Host::new(imds_v2("eu-west-1"));
    let old = h.uncached_with_old_image();
    h.aws.put_agent(BUCKET, &object(), served_tarball());
    // The host's own trust store only: the test CA is not in it.
    h.unset("SSL_CERT_FILE");
    let out = h.pre_start();
    let err = h.assert_failed_and_unchanged(&out, &old);
    assert!(
        err.contains("TLS handshake with 127.0.0.1 failed") && err.contains("UnknownIssuer"),
        "{err}"
    );
    assert!(!err.contains("gave up after"), "not retried: {err}");
    assert!(h.aws.requests_to("s3").is_empty(), "no request was sent");
}

/// Empty cache → `pre-start` (downloads and loads) → `start` → the downloaded agent answers.
fn empty_cache_to_introspection(rt: &'static str) {
    let mut l = Launcher::new(rt);
    if rt == "containerd" {
        l.env.push((
            "ECS_INIT_CONTAINERD_NAMESPACE".into(),
            format!("ecs-dl-e2e-{}", std::process::id()),
        ));
    }
    let netns = Netns::new();
    let aws = FakeAws::start_in(&netns, imds_v2("us-west-2"));
    let served = served_tarball();
    aws.put_agent(BUCKET, &object(), served.clone());
    let ca = l.root.join("test-ca.pem");
    std::fs::write(&ca, &aws.ca_pem).unwrap();
    for (k, v) in [
        ("SSL_CERT_FILE", ca.display().to_string()),
        ("AWS_ENDPOINT_URL_S3", aws.s3_url.clone()),
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", aws.imds_url.clone()),
        ("ECS_INIT_FIREWALL", "none".into()),
    ] {
        l.env.push((k.into(), v));
    }
    assert!(
        l.root.read("var/cache/ecs/state").is_none(),
        "nothing cached"
    );
    let mut c = l.cmd_in_netns("pre-start", &netns);
    for k in SCRUB {
        if !l.env.iter().any(|(e, _)| e == k) {
            c.env_remove(k);
        }
    }
    let child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pre-start");
    let out = wait_output(child, Duration::from_secs(180), "pre-start");
    assert_ok(&out, "pre-start");
    assert_eq!(l.root.read("var/cache/ecs/state").as_deref(), Some("1"));
    assert_eq!(aws.gets(BUCKET, &object()), tarball_gets(&served));
    let _start = KillOnDrop(l.spawn_start());
    assert!(
        introspection_answers(Duration::from_secs(60)),
        "{rt}: introspection never answered"
    );
    let report = l.report();
    assert_eq!(
        report["env"]["STANDIN_IMAGE_VERSION"], "downloaded",
        "{rt}: the downloaded image runs"
    );
    if rt == "containerd" {
        drop(_start);
        l.force_remove_agent();
        remove_namespace(&l.containerd_namespace());
    }
}

#[test]
fn docker_empty_cache_to_introspection() {
    empty_cache_to_introspection("docker");
}

#[test]
fn containerd_empty_cache_to_introspection() {
    empty_cache_to_introspection("containerd");
}

#[test]
fn plan_and_version_show_the_download() {
    let root = TestRoot::new();
    root.write_ecs_config("AWS_REGION=cn-northwest-1\nNO_PROXY=169.254.169.254,169.254.170.2\n");
    let mut c = Command::new(BIN);
    for k in SCRUB {
        c.env_remove(k);
    }
    let out = c
        .arg("plan")
        .env("ECS_INIT_HOST_ROOT", root.path())
        .env("ECS_INIT_FIREWALL", "none")
        .env("HTTPS_PROXY", "http://user:hunter2@proxy.corp:3128")
        .output()
        .expect("run plan");
    assert_ok(&out, "plan");
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan is JSON");
    let version = amazon_ecs_init::download::AGENT_VERSION;
    assert_eq!(plan["agent_version"], version);
    let dl = &plan["cache"]["download"];
    assert_eq!(dl["region"]["from"], "from AWS_REGION", "{dl}");
    assert_eq!(
        dl["sources"][0]["tarball"],
        format!(
            "https://amazon-ecs-agent.s3.cn-north-1.amazonaws.com.cn/{}",
            object()
        )
    );
    assert_eq!(
        dl["sources"][1]["md5"],
        format!(
            "https://amazon-ecs-agent-cn-northwest-1.s3.cn-northwest-1.amazonaws.com.cn/{}.md5",
            object()
        )
    );
    assert_eq!(
        dl["proxy"]["https"]["url"],
        "http://<credentials>@proxy.corp:3128"
    );
    assert_eq!(dl["proxy"]["no_proxy"], "169.254.169.254,169.254.170.2");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("hunter2"));
    let v = Command::new(BIN).arg("version").output().unwrap();
    let text = String::from_utf8_lossy(&v.stdout);
    assert_eq!(
        text.lines().nth(1),
        Some(format!("agent version {version}").as_str()),
        "{text}"
    );
}

/// A `NOTIFY_SOCKET` of the test's own: what the launcher tells systemd.
struct NotifySocket {
    sock: std::os::unix::net::UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn bind(root: &TestRoot) -> NotifySocket {
        let path = root.join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).expect("bind the notify socket");
        sock.set_nonblocking(true).unwrap();
        NotifySocket { sock, path }
    }

    /// Every message received so far.
    fn messages(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.sock.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }
}

/// A server that sends one byte a second never trips the read timeout; the minimum rate ends
/// each attempt with a clear error, and systemd is never asked for more time meanwhile (before,
/// every progress line extended the start timeout by 120 s, for ever).
#[test]
fn a_trickling_server_ends_with_a_clear_error_and_no_timeout_extension() {
    let mut h = Host::new(imds_v2("eu-west-1"));
    let old = h.uncached_with_old_image();
    let notify = NotifySocket::bind(&h.root);
    h.set("NOTIFY_SOCKET", &notify.path.display().to_string());
    h.set("ECS_INIT_DOWNLOAD_MIN_RATE_BYTES", "1000");
    h.set("ECS_INIT_DOWNLOAD_MIN_RATE_SECONDS", "2");
    for bucket in [BUCKET.to_string(), format!("{BUCKET}-eu-west-1")] {
        h.aws.put_agent(&bucket, &object(), served_tarball());
        h.aws.script(&bucket, &object(), vec![Answer::Trickle; 3]);
    }
    let t0 = Instant::now();
    let out = h.pre_start();
    let took = t0.elapsed();
    let err = h.assert_failed_and_unchanged(&out, &old);
    assert!(
        err.contains("slower than the minimum of 1000 bytes/s")
            && err.contains("gave up after 3 attempts"),
        "{err}"
    );
    // 2 buckets × 3 attempts × 2 s, plus backoff (1 s, 2 s per bucket, ±10 %).
    assert!(took < Duration::from_secs(40), "took {took:?}");
    let messages = notify.messages();
    assert!(
        messages
            .iter()
            .any(|m| m.contains("STATUS=downloading the agent")),
        "progress reached the notify socket: {messages:?}"
    );
    assert!(
        !messages.iter().any(|m| m.contains("EXTEND_TIMEOUT_USEC")),
        "no start-timeout extension without bytes arriving: {messages:?}"
    );
}

/// The whole download has a deadline, whatever each connection does.
#[test]
fn the_download_deadline_ends_a_slow_download() {
    let mut h = Host::new(imds_v2("eu-west-1"));
    let old = h.uncached_with_old_image();
    h.set("ECS_INIT_DOWNLOAD_DEADLINE_SECONDS", "4");
    h.set("ECS_INIT_DOWNLOAD_MIN_RATE_BYTES", "0");
    h.aws.put_agent(BUCKET, &object(), served_tarball());
    h.aws.script(BUCKET, &object(), vec![Answer::Trickle]);
    let t0 = Instant::now();
    let out = h.pre_start();
    let took = t0.elapsed();
    let err = h.assert_failed_and_unchanged(&out, &old);
    assert!(
        err.contains("not done within the download deadline of 4s")
            && err.contains("ECS_INIT_DOWNLOAD_DEADLINE_SECONDS"),
        "{err}"
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

/// An endless chunked body is cut off at the size cap instead of filling /var/cache/ecs; an
/// announced size over the cap is refused before writing.
#[test]
fn the_size_cap_stops_endless_and_oversized_bodies() {
    let mut h = Host::new(imds_v2("eu-west-1"));
    let old = h.uncached_with_old_image();
    let served = served_tarball();
    h.set(
        "ECS_INIT_DOWNLOAD_MAX_BYTES",
        &(served.len() - 1).to_string(),
    );
    for bucket in [BUCKET.to_string(), format!("{BUCKET}-eu-west-1")] {
        h.aws.put_agent(&bucket, &object(), served.clone());
        h.aws.script(&bucket, &object(), vec![Answer::Endless]);
    }
    let out = h.pre_start();
    let err = h.assert_failed_and_unchanged(&out, &old);
    assert!(
        err.contains("without announcing its size; cut off"),
        "{err}"
    );
    // Now with the size announced (206 Content-Range, then 200 Content-Length).
    for ignore_range in [false, true] {
        h.aws.ignore_range(ignore_range);
        let out = h.pre_start();
        let err = h.assert_failed_and_unchanged(&out, &old);
        assert!(
            err.contains(&format!(
                "is {} bytes, more than the {} bytes of ECS_INIT_DOWNLOAD_MAX_BYTES; refused before writing",
                served.len(),
                served.len() - 1
            )),
            "ignore_range={ignore_range}: {err}"
        );
    }
}

/// The ranged download: parts of `ECS_INIT_DOWNLOAD_PART_BYTES`, at most
/// `ECS_INIT_DOWNLOAD_PARALLELISM` at a time, each asked once (part 0 rides on the first, open
/// range request); a part that breaks resumes where it stopped, with the ETag checked; a server
/// that ignores `Range` gets one stream.
#[test]
fn ranged_download_in_parallel_parts() {
    let mut h = Host::new(imds_v2("eu-west-1"));
    let served = served_tarball();
    h.aws.put_agent(BUCKET, &object(), served.clone());
    let part = 64 * 1024;
    h.set("ECS_INIT_DOWNLOAD_PART_BYTES", &part.to_string());
    h.set("ECS_INIT_DOWNLOAD_PARALLELISM", "4");
    let parts = served.len().div_ceil(part);
    assert!(
        parts >= 4,
        "the tarball ({} bytes) makes several parts",
        served.len()
    );
    let ranges = |h: &Host| -> Vec<String> {
        h.aws
            .requests_to("s3")
            .iter()
            .filter(|r| r.target == format!("/{BUCKET}/{}", object()))
            .map(|r| r.header("range").unwrap_or("none").to_string())
            .collect()
    };
    h.root.write_cache_state(0);
    let out = h.pre_start();
    h.assert_downloaded(&out, &served);
    let seen = ranges(&h);
    assert_eq!(seen.len(), parts, "{seen:?}");
    assert_eq!(seen[0], "bytes=0-");
    for i in 1..parts {
        let want = format!(
            "bytes={}-{}",
            i * part,
            ((i + 1) * part).min(served.len()) - 1
        );
        assert!(seen.contains(&want), "{want} in {seen:?}");
    }
    let if_match = h
        .aws
        .requests_to("s3")
        .iter()
        .filter(|r| r.header("range").is_some_and(|r| r != "bytes=0-"))
        .all(|r| r.header("if-match") == Some("\"fake\""));
    assert!(if_match, "parts are asked for the same object (ETag)");
    // Each of the 4 workers keeps its connection from one part to the next (S3 keeps them);
    // the first request's open range cannot be reused (its body goes on past part 0).
    let conns: std::collections::BTreeSet<usize> = h
        .aws
        .requests_to("s3")
        .iter()
        .filter(|r| r.target == format!("/{BUCKET}/{}", object()) && r.header("range").is_some())
        .map(|r| r.conn)
        .collect();
    assert!(
        conns.len() <= 5,
        "{parts} parts on {} connections: {conns:?}",
        conns.len()
    );

    // Part 0 breaks after 1000 bytes: it resumes at byte 1001 (the break sent bytes 0-1000).
    h.aws
        .script(BUCKET, &object(), vec![Answer::PartTruncate(1000)]);
    h.root.write_cache_state(0);
    let before = ranges(&h).len();
    let out = h.pre_start();
    let log = h.assert_downloaded(&out, &served);
    let seen = ranges(&h)[before..].to_vec();
    assert_eq!(seen.len(), parts + 1, "{seen:?}");
    assert!(
        seen.contains(&format!("bytes=1001-{}", part - 1)),
        "resumed where it broke: {seen:?}"
    );
    assert!(log.contains("retrying"), "{log}");

    // A server without range support: one stream, one GET.
    h.aws.ignore_range(true);
    h.root.write_cache_state(0);
    let before = ranges(&h).len();
    let out = h.pre_start();
    h.assert_downloaded(&out, &served);
    assert_eq!(ranges(&h)[before..], ["bytes=0-"]);
}

/// The AWS SDK settings the Go tool honours through its SDK, against the loopback fakes: the
/// European Sovereign Cloud partition with FIPS and dual-stack S3 names (reached through the
/// fake proxy, which sends those real names to the fake S3), then FIPS alone in the commercial
/// partition.
#[test]
fn sovereign_cloud_fips_and_dualstack_names() {
    let mut h = Host::new(imds_v2("unused"));
    let served = served_tarball();
    h.aws.put_agent(BUCKET, &object(), served.clone());
    h.aws
        .put_agent(&format!("{BUCKET}-us-west-2"), &object(), served.clone());
    h.unset("AWS_ENDPOINT_URL_S3");
    h.set("AWS_EC2_METADATA_DISABLED", "true");
    h.set("HTTPS_PROXY", &format!("http://{}", h.aws.proxy_addr));
    h.set("NO_PROXY", "169.254.169.254,169.254.170.2");
    h.set("AWS_REGION", "eusc-de-east-1");
    h.set("AWS_USE_FIPS_ENDPOINT", "true");
    h.set("AWS_USE_DUALSTACK_ENDPOINT", "TRUE");
    let out = h.pre_start();
    h.assert_downloaded(&out, &served);
    let host = "amazon-ecs-agent.s3-fips.dualstack.eusc-de-east-1.amazonaws.eu";
    let proxy = h.aws.requests_to("proxy");
    assert!(
        !proxy.is_empty() && proxy.iter().all(|r| r.target == format!("{host}:443")),
        "{proxy:?}"
    );
    // FIPS alone, in the commercial partition: the partition bucket's name (us-east-1) is not
    // one the fake proxy knows (502, retried, then the next bucket), the regional one is.
    h.set("AWS_REGION", "us-west-2");
    h.unset("AWS_USE_DUALSTACK_ENDPOINT");
    h.root.write_cache_state(0);
    let before = h.aws.requests_to("proxy").len();
    let out = h.pre_start();
    h.assert_downloaded(&out, &served);
    let targets: Vec<String> = h.aws.requests_to("proxy")[before..]
        .iter()
        .map(|r| r.target.clone())
        .collect();
    assert!(
        targets.contains(&"amazon-ecs-agent.s3-fips.us-east-1.amazonaws.com:443".to_string())
            && targets.contains(
                &"amazon-ecs-agent-us-west-2.s3-fips.us-west-2.amazonaws.com:443".to_string()
            ),
        "{targets:?}"
    );
}

/// `AWS_ENDPOINT_URL` (every service) is the S3 endpoint when `AWS_ENDPOINT_URL_S3` is unset;
/// `AWS_CA_BUNDLE` replaces the trust store (`SSL_CERT_FILE` naming another CA does not matter,
/// and a bundle without the server's CA fails).
#[test]
fn global_endpoint_url_and_the_ca_bundle() {
    let mut h = Host::new(imds_v2("eu-west-1"));
    let old = h.uncached_with_old_image();
    let served = served_tarball();
    h.aws.put_agent(BUCKET, &object(), served.clone());
    h.unset("AWS_ENDPOINT_URL_S3");
    h.set("AWS_ENDPOINT_URL", &h.aws.s3_url.clone());
    let other = h.root.join("other-ca.pem");
    std::fs::write(&other, test_ca_pem("not the S3 CA")).unwrap();
    let right = h.root.join("test-ca.pem");
    // A bundle without the server's CA (SSL_CERT_FILE has it): refused, nothing changes.
    h.set("AWS_CA_BUNDLE", &other.display().to_string());
    h.set("SSL_CERT_FILE", &right.display().to_string());
    let out = h.pre_start();
    let err = h.assert_failed_and_unchanged(&out, &old);
    assert!(err.contains("certificate"), "{err}");
    // The right CA only in the bundle, another in SSL_CERT_FILE: trusted.
    h.set("AWS_CA_BUNDLE", &right.display().to_string());
    h.set("SSL_CERT_FILE", &other.display().to_string());
    let out = h.pre_start();
    h.assert_downloaded(&out, &served);
    // The global endpoint was used: the fake S3 saw the path-style requests.
    assert!(h.aws.gets(BUCKET, &object()) >= 1);
}

/// `AWS_EC2_METADATA_V1_DISABLED=true`: a refused IMDSv2 token is not followed by IMDSv1; the
/// region is the default, with a warning that says why.
#[test]
fn no_imdsv1_fallback_when_disabled() {
    let mut h = Host::new(Imds::V1Only {
        refuse: 403,
        region: "ap-south-1".into(),
    });
    let served = served_tarball();
    h.aws.put_agent(BUCKET, &object(), served.clone());
    h.set("AWS_EC2_METADATA_V1_DISABLED", "true");
    let out = h.pre_start();
    let log = h.assert_downloaded(&out, &served);
    let imds = h.aws.requests_to("imds");
    assert!(
        !imds.is_empty() && imds.iter().all(|r| r.method == "PUT"),
        "only token requests, no IMDSv1 GET: {imds:?}"
    );
    assert!(
        log.contains("AWS_EC2_METADATA_V1_DISABLED=true forbids the IMDSv1 fallback")
            && log.contains("us-east-1"),
        "{log}"
    );
}
