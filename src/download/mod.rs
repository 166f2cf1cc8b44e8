//! Downloading the agent on hosts with nothing cached (packaging/COMPATIBILITY.md §5).
//!
//! `pre-start` on an uncached host (state file missing, empty or `0`, or tarball missing or
//! empty) fetches `ecs-agent-v<AGENT_VERSION>.tar` (`ecs-agent-arm64-v…` on aarch64) and its
//! `.md5` anonymously over HTTPS from the partition bucket, then the regional bucket, checks the
//! MD5, and renames it to `/var/cache/ecs/ecs-agent.tar`; [`crate::cache`] then loads it and
//! records state 1.
//!
//! Everything this module needs comes in as [`DownloadOptions`], built by [`options`] from the
//! configuration: no code here reads the environment (proxies and `SSL_CERT_*` included: the
//! HTTP client and the trust store are configured explicitly).
pub mod fetch;
pub mod http;
pub mod imds;
pub mod proxy;
pub mod region;
pub mod tls;

use serde_json::json;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub use fetch::Progress;
use fetch::{FetchOptions, Fetched, SourceError};
use http::Client;
pub use http::Retry;
use proxy::{NoProxy, Proxies, ProxyUrl};
use region::Source;
use tls::TrustSettings;

/// The agent version this release downloads when nothing is cached.
pub const AGENT_VERSION: &str = "1.105.1";
/// The Go tool's region when none can be found.
pub const DEFAULT_REGION: &str = "us-east-1";
pub const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254";
pub const DEFAULT_IMDS_ENDPOINT_IPV6: &str = "http://[fd00:ec2::254]";

/// A value and the variable it came from, for knobs with more than one name
/// (`AWS_REGION`/`AWS_DEFAULT_REGION`, `HTTPS_PROXY`/`https_proxy`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub key: &'static str,
    pub value: String,
}

/// The knobs of the agent download, as the settings resolved them (the composition root puts
/// them into [`DownloadOptions`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DownloadSettings {
    /// `AWS_REGION`, else `AWS_DEFAULT_REGION`.
    pub region: Option<Setting>,
    /// The IMDS base URL: `AWS_EC2_METADATA_SERVICE_ENDPOINT`, else the default of
    /// `AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE` (IPv4 or IPv6).
    pub imds_endpoint: String,
    /// `AWS_EC2_METADATA_DISABLED=true` (only `true`, any case, as the AWS SDKs read it).
    pub imds_disabled: bool,
    pub imds_timeout: Duration,
    pub imds_attempts: u32,
    /// `AWS_EC2_METADATA_V1_DISABLED=true`: no IMDSv1 fallback.
    pub imds_v1_disabled: bool,
    /// `AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL`.
    pub s3_endpoint: Option<Setting>,
    /// `AWS_USE_FIPS_ENDPOINT`, `AWS_USE_DUALSTACK_ENDPOINT`.
    pub s3_variant: region::Variant,
    pub https_proxy: Option<Setting>,
    pub http_proxy: Option<Setting>,
    pub no_proxy: Option<String>,
    /// `SSL_CERT_FILE`, `SSL_CERT_DIR` (split at `:`).
    pub trust: TrustSettings,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// The limits of the download (`ECS_INIT_DOWNLOAD_DEADLINE_SECONDS`, `…_MIN_RATE_*`,
    /// `…_MAX_BYTES`, `…_PART_BYTES`, `…_PARALLELISM`).
    pub limits: DownloadLimits,
}

/// How long, how slow and how large the download may be, and how it is split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DownloadLimits {
    pub deadline: Duration,
    /// Bytes per second, per connection (0: no minimum).
    pub min_rate: u64,
    pub min_rate_window: Duration,
    pub max_bytes: u64,
    pub part_bytes: u64,
    pub parallelism: u32,
}

/// Everything the download needs (the composition root builds it from the settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadOptions {
    /// The download's knobs, as the settings resolved them.
    pub knobs: DownloadSettings,
    /// `ECS_EXTERNAL=true`: not on EC2, so no instance metadata.
    pub external: bool,
    /// Retries of each request.
    pub retry: Retry,
    pub progress: Progress,
    /// `/var/cache/ecs` (created 0700 when missing); the tarball goes to `ecs-agent.tar` in it.
    pub cache_dir: PathBuf,
    /// `std::env::consts::ARCH` of this build.
    pub arch: &'static str,
}

/// The download failed; the message says why, for every bucket tried.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("{key}={value:?} is not a valid AWS region name")]
    BadRegion { key: String, value: String },
    #[error(
        "the instance metadata service answered {value:?}, which is not a valid AWS region name"
    )]
    BadImdsRegion { value: String },
    #[error("{key}: {reason}")]
    BadProxy { key: &'static str, reason: String },
    #[error("no agent is published for the {0} architecture (only x86_64 and aarch64)")]
    Arch(String),
    #[error("creating {}: {source}", path.display())]
    CacheDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not download the agent: {0}")]
    Local(#[source] SourceError),
    #[error("could not download the agent: not done within the download deadline of {limit:?} (ECS_INIT_DOWNLOAD_DEADLINE_SECONDS)")]
    Deadline { limit: Duration },
    #[error("could not download the agent {object} (region {region}, {region_from}): {}", list(.failures))]
    AllFailed {
        object: String,
        region: String,
        region_from: RegionFrom,
        failures: Vec<(String, SourceError)>,
    },
}

fn list(failures: &[(String, SourceError)]) -> String {
    failures
        .iter()
        .map(|(bucket, e)| format!("bucket {bucket}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Where the region came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegionFrom {
    Setting(&'static str),
    Imds(imds::Version),
    /// The default region, and why.
    Default(String),
}

impl fmt::Display for RegionFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegionFrom::Setting(key) => write!(f, "from {key}"),
            RegionFrom::Imds(imds::Version::V2) => f.write_str("from instance metadata (IMDSv2)"),
            RegionFrom::Imds(imds::Version::V1) => f.write_str("from instance metadata (IMDSv1)"),
            RegionFrom::Default(why) => write!(f, "the default: {why}"),
        }
    }
}

/// The published object's name for `arch`.
pub fn object_name(arch: &str) -> Result<String, DownloadError> {
    match arch {
        "x86_64" => Ok(format!("ecs-agent-v{AGENT_VERSION}.tar")),
        "aarch64" => Ok(format!("ecs-agent-arm64-v{AGENT_VERSION}.tar")),
        other => Err(DownloadError::Arch(other.to_string())),
    }
}

impl DownloadOptions {
    /// The proxies, parsed; a bad value is an error naming its variable.
    pub fn proxies(&self) -> Result<Proxies, DownloadError> {
        let parse = |s: &Option<Setting>| -> Result<Option<ProxyUrl>, DownloadError> {
            s.as_ref()
                .map(|s| {
                    ProxyUrl::parse(&s.value)
                        .map_err(|reason| DownloadError::BadProxy { key: s.key, reason })
                })
                .transpose()
        };
        Ok(Proxies {
            http: parse(&self.knobs.http_proxy)?,
            https: parse(&self.knobs.https_proxy)?,
            no_proxy: NoProxy::parse(self.knobs.no_proxy.as_deref().unwrap_or("")),
        })
    }

    /// The endpoint URL (`AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL`), when set.
    pub fn endpoint(&self) -> Option<&str> {
        self.knobs.s3_endpoint.as_ref().map(|s| s.value.as_str())
    }

    /// Where the tarball ends up.
    pub fn tarball(&self) -> PathBuf {
        self.cache_dir.join("ecs-agent.tar")
    }

    /// The region when it needs no network: a setting, or the default when IMDS is not to be
    /// asked (`None`: IMDS decides).
    fn offline_region(&self) -> Result<Option<(String, RegionFrom)>, DownloadError> {
        if let Some(s) = &self.knobs.region {
            if !region::valid_region(&s.value) {
                return Err(DownloadError::BadRegion {
                    key: s.key.to_string(),
                    value: s.value.clone(),
                });
            }
            return Ok(Some((s.value.clone(), RegionFrom::Setting(s.key))));
        }
        let why = if self.external {
            "ECS_EXTERNAL=true (no instance metadata off EC2) and neither AWS_REGION nor AWS_DEFAULT_REGION is set"
        } else if self.knobs.imds_disabled {
            "AWS_EC2_METADATA_DISABLED=true and neither AWS_REGION nor AWS_DEFAULT_REGION is set"
        } else {
            return Ok(None);
        };
        Ok(Some((
            DEFAULT_REGION.to_string(),
            RegionFrom::Default(why.into()),
        )))
    }

    /// The region: settings, else instance metadata, else the default (with a warning).
    async fn region(&self, proxies: &Proxies) -> Result<(String, RegionFrom), DownloadError> {
        if let Some(found) = self.offline_region()? {
            if let RegionFrom::Default(why) = &found.1 {
                tracing::warn!("no region for the agent download: {why}; using {DEFAULT_REGION}");
            }
            return Ok(found);
        }
        let client = Client::new(
            proxies.clone(),
            self.knobs.trust.clone(),
            self.knobs.imds_timeout,
            self.knobs.imds_timeout,
        );
        let retry = Retry {
            attempts: self.knobs.imds_attempts,
            backoff: Duration::from_millis(200),
        };
        let v1 = !self.knobs.imds_v1_disabled;
        match imds::region(&client, &self.knobs.imds_endpoint, retry, v1).await {
            Ok((r, _)) if !region::valid_region(&r) => {
                Err(DownloadError::BadImdsRegion { value: r })
            }
            Ok((r, version)) => Ok((r, RegionFrom::Imds(version))),
            Err(e) => {
                let why = format!("the instance metadata service did not give one ({e})");
                tracing::warn!(
                    "no region for the agent download: {why}; using {DEFAULT_REGION} (set AWS_REGION, or ECS_EXTERNAL=true off EC2)"
                );
                Ok((DEFAULT_REGION.to_string(), RegionFrom::Default(why)))
            }
        }
    }
}

/// Earlier builds named a partial download `ecs-agent.tar.download-<pid>`; one a killed
/// launcher left is removed too (it can be hundreds of MB).
const LEGACY_PARTIAL_PREFIX: &str = "ecs-agent.tar.download-";

/// Download the agent into the cache directory (see the module doc). On success the tarball is
/// complete, verified and in place; on failure nothing in the cache directory has changed. The
/// whole of it (instance metadata, every bucket, every retry) ends at the deadline
/// (`ECS_INIT_DOWNLOAD_DEADLINE_SECONDS`); what was in flight is dropped, the temp file with it.
pub async fn download(opts: &DownloadOptions) -> Result<Fetched, DownloadError> {
    let limit = opts.knobs.limits.deadline;
    let deadline = tokio::time::Instant::now() + limit;
    match tokio::time::timeout_at(deadline, download_by(opts, deadline)).await {
        Ok(done) => done,
        Err(_) => Err(DownloadError::Deadline { limit }),
    }
}

async fn download_by(
    opts: &DownloadOptions,
    deadline: tokio::time::Instant,
) -> Result<Fetched, DownloadError> {
    let object = object_name(opts.arch)?;
    let proxies = opts.proxies()?;
    let (region, region_from) = opts.region(&proxies).await?;
    let sources = region::sources(&region, &object, opts.endpoint(), opts.knobs.s3_variant);
    tracing::info!(%region, from = %region_from, object, "downloading the agent: nothing is cached");
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&opts.cache_dir)
            .map_err(|source| DownloadError::CacheDir {
                path: opts.cache_dir.clone(),
                source,
            })?;
    }
    let dest = opts.tarball();
    // A killed launcher's partial download (under earlier builds' name too).
    let stale = ecs_host::files::remove_stale_temp_files(&dest)
        .into_iter()
        .chain(ecs_host::files::remove_named(
            &opts.cache_dir,
            LEGACY_PARTIAL_PREFIX,
        ));
    for path in stale {
        tracing::info!(path = %path.display(), "removed a stale partial download");
    }
    let mut client = Client::new(
        proxies,
        opts.knobs.trust.clone(),
        opts.knobs.connect_timeout,
        opts.knobs.read_timeout,
    );
    let limits = opts.knobs.limits;
    client.min_rate = (limits.min_rate, limits.min_rate_window);
    let fetch_opts = FetchOptions {
        retry: opts.retry,
        progress: opts.progress,
        limits,
        deadline,
    };
    let mut failures = Vec::new();
    for source in &sources {
        tracing::info!(url = %source.tarball, "downloading the agent");
        match fetch::from_source(&client, &fetch_opts, source, &dest).await {
            Ok(f) => {
                let secs = f.elapsed.as_secs_f64().max(0.001);
                tracing::info!(
                    url = %f.url,
                    bytes = f.bytes,
                    seconds = format!("{secs:.3}"),
                    rate_mib_s = format!("{:.1}", f.bytes as f64 / 1048576.0 / secs),
                    md5 = %f.md5,
                    path = %f.path.display(),
                    "agent downloaded"
                );
                return Ok(f);
            }
            Err(e) if e.is_local() => return Err(DownloadError::Local(e)),
            Err(e) => {
                tracing::warn!(bucket = %source.bucket, error = %e, "could not download the agent from this bucket");
                failures.push((source.bucket.clone(), e));
            }
        }
    }
    Err(DownloadError::AllFailed {
        object,
        region,
        region_from,
        failures,
    })
}

/// The S3 download of the agent tarball, with its options (the composition root hands it to
/// the cache as the production agent source).
pub struct S3Download(pub DownloadOptions);

/// What `plan` shows: the resolved URLs and settings, without asking the network (the region
/// from instance metadata shows as `{region}` in the URLs).
pub fn describe(opts: &DownloadOptions) -> serde_json::Value {
    let object = object_name(opts.arch);
    let proxy = |s: &Option<Setting>| match s {
        None => json!(null),
        Some(s) => match ProxyUrl::parse(&s.value) {
            Ok(p) => json!({"variable": s.key, "url": p.to_string()}),
            Err(e) => json!({"variable": s.key, "error": e}),
        },
    };
    let (region, sources) = match (&object, opts.offline_region()) {
        (Err(e), _) => (json!({"error": e.to_string()}), json!(null)),
        (_, Err(e)) => (json!({"error": e.to_string()}), json!(null)),
        (Ok(obj), Ok(Some((r, from)))) => (
            json!({"name": r, "from": from.to_string()}),
            json!(region::sources(
                &r,
                obj,
                opts.endpoint(),
                opts.knobs.s3_variant
            )),
        ),
        (Ok(obj), Ok(None)) => (
            json!({
                "name": null,
                "from": format!(
                    "instance metadata at {} (IMDSv2, {}; {DEFAULT_REGION} when it does not answer); not asked by plan",
                    opts.knobs.imds_endpoint,
                    if opts.knobs.imds_v1_disabled {
                        "no IMDSv1 fallback: AWS_EC2_METADATA_V1_DISABLED=true"
                    } else {
                        "IMDSv1 when the token is refused"
                    }
                ),
            }),
            json!(sources_template(
                obj,
                opts.endpoint(),
                opts.knobs.s3_variant
            )),
        ),
    };
    json!({
        "when": "pre-start, when the cache is uncached (state missing, empty or 0, or the tarball missing or empty)",
        "agent_version": AGENT_VERSION,
        "object": object.as_ref().ok(),
        "region": region,
        "sources": sources,
        "instance_metadata": {
            "disabled": opts.knobs.imds_disabled || opts.external,
            "token_url": imds::url(&opts.knobs.imds_endpoint, imds::TOKEN_PATH),
            "region_url": imds::url(&opts.knobs.imds_endpoint, imds::REGION_PATH),
            "timeout_seconds": opts.knobs.imds_timeout.as_secs_f64(),
            "attempts": opts.knobs.imds_attempts,
            "imdsv1_fallback": !opts.knobs.imds_v1_disabled,
        },
        "endpoint": match &opts.knobs.s3_endpoint {
            Some(s) => json!({"variable": s.key, "url": s.value}),
            None => json!(null),
        },
        "fips": opts.knobs.s3_variant.fips,
        "dualstack": opts.knobs.s3_variant.dualstack,
        "proxy": {
            "https": proxy(&opts.knobs.https_proxy),
            "http": proxy(&opts.knobs.http_proxy),
            "no_proxy": opts.knobs.no_proxy,
        },
        "trust": {
            "aws_ca_bundle": opts.knobs.trust.ca_bundle,
            "files": opts.knobs.trust.files(),
            "directories": opts.knobs.trust.dirs(),
        },
        "connect_timeout_seconds": opts.knobs.connect_timeout.as_secs_f64(),
        "read_timeout_seconds": opts.knobs.read_timeout.as_secs_f64(),
        "deadline_seconds": opts.knobs.limits.deadline.as_secs_f64(),
        "min_rate": {
            "bytes_per_second": opts.knobs.limits.min_rate,
            "window_seconds": opts.knobs.limits.min_rate_window.as_secs_f64(),
        },
        "max_bytes": opts.knobs.limits.max_bytes,
        "part_bytes": opts.knobs.limits.part_bytes,
        "parallelism": opts.knobs.limits.parallelism,
        "attempts_per_request": opts.retry.attempts,
        "destination": opts.tarball(),
    })
}

/// The sources with the region left as `{region}` (it comes from instance metadata at run time;
/// the partition bucket shown is the commercial partition's).
fn sources_template(
    object: &str,
    s3_endpoint: Option<&str>,
    variant: region::Variant,
) -> Vec<Source> {
    region::sources("{region}", object, s3_endpoint, variant)
        .into_iter()
        .map(|mut s| {
            if s3_endpoint.is_none() {
                s.tarball = s
                    .tarball
                    .replace("{region}.amazonaws.com", "{region}.{partition domain}");
                s.md5 = s
                    .md5
                    .replace("{region}.amazonaws.com", "{region}.{partition domain}");
            }
            s
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use crate::settings::Settings;

    fn settings(env: &[(&str, &str)], file: &str) -> Settings {
        let cfg = crate::config::Config::from_parts(&[("/etc/ecs/ecs.config".into(), file.into())]);
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>();
        Settings::resolve(env, crate::paths::Paths::under("/r"), cfg)
    }

    fn opts(env: &[(&str, &str)], file: &str) -> DownloadOptions {
        crate::compose::download_options(&settings(env, file))
    }

    #[test]
    fn defaults() {
        let o = opts(&[], "");
        assert_eq!(o.knobs.region, None);
        assert_eq!(o.knobs.imds_endpoint, DEFAULT_IMDS_ENDPOINT);
        assert!(!o.knobs.imds_disabled && !o.external);
        assert_eq!(o.knobs.connect_timeout, Duration::from_secs(10));
        assert_eq!(o.knobs.read_timeout, Duration::from_secs(30));
        assert_eq!(o.tarball(), PathBuf::from("/r/var/cache/ecs/ecs-agent.tar"));
        assert_eq!(o.knobs.trust, tls::TrustSettings::default());
        assert_eq!(
            (o.knobs.imds_timeout, o.knobs.imds_attempts),
            (Duration::from_secs(2), 3)
        );
    }

    #[test]
    fn settings_from_env_then_files() {
        let o = opts(
            &[
                ("AWS_DEFAULT_REGION", "eu-west-1"),
                ("https_proxy", "proxy:3128"),
                ("SSL_CERT_DIR", "/a::/b"),
                ("ECS_INIT_DOWNLOAD_READ_TIMEOUT_SECONDS", "1.5"),
                ("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "IPv6"),
            ],
            "AWS_REGION=ap-south-1\nNO_PROXY=169.254.169.254,169.254.170.2\nAWS_EC2_METADATA_DISABLED=TRUE\n",
        );
        assert!(o.knobs.imds_disabled, "TRUE, any case");
        // AWS_REGION wins over AWS_DEFAULT_REGION, wherever each is set.
        assert_eq!(
            o.knobs.region,
            Some(Setting {
                key: "AWS_REGION",
                value: "ap-south-1".into()
            })
        );
        assert_eq!(o.knobs.https_proxy.as_ref().unwrap().key, "https_proxy");
        assert_eq!(
            o.knobs.no_proxy.as_deref(),
            Some("169.254.169.254,169.254.170.2")
        );
        assert!(o.knobs.imds_disabled);
        assert_eq!(o.knobs.imds_endpoint, DEFAULT_IMDS_ENDPOINT_IPV6);
        assert_eq!(
            o.knobs.trust.cert_dirs,
            Some(vec![PathBuf::from("/a"), PathBuf::from("/b")])
        );
        assert_eq!(o.knobs.read_timeout, Duration::from_millis(1500));
        assert_eq!(o.knobs.connect_timeout, Duration::from_secs(10));
        let p = o.proxies().unwrap();
        assert_eq!(p.https.unwrap().port, 3128);
        assert!(p.no_proxy.bypass("169.254.170.2", 80));
    }

    /// Values that cannot be used fall back to the table's defaults, with a warning naming the
    /// key and the file and line it came from.
    #[test]
    fn unusable_values_are_named_with_their_line() {
        let s = settings(
            &[("ECS_INIT_DOWNLOAD_CONNECT_TIMEOUT_SECONDS", "soon")],
            "AWS_METADATA_SERVICE_TIMEOUT=0\nAWS_METADATA_SERVICE_NUM_ATTEMPTS=11\n\
             AWS_EC2_METADATA_DISABLED=1\nAWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=v6\n\
             ECS_INIT_DOWNLOAD_READ_TIMEOUT_SECONDS=90000\n",
        );
        let o = crate::compose::download_options(&s);
        assert_eq!(o.knobs.connect_timeout, Duration::from_secs(10));
        assert_eq!(o.knobs.read_timeout, Duration::from_secs(30));
        assert_eq!(o.knobs.imds_timeout, Duration::from_secs(2));
        assert_eq!(o.knobs.imds_attempts, 3);
        assert!(
            !o.knobs.imds_disabled,
            "only `true` disables IMDS, as the AWS SDKs read it"
        );
        assert_eq!(o.knobs.imds_endpoint, DEFAULT_IMDS_ENDPOINT);
        let w: Vec<String> = s.warnings.iter().map(|w| w.to_string()).collect();
        let expect = [
            ("ECS_INIT_DOWNLOAD_CONNECT_TIMEOUT_SECONDS", None),
            ("AWS_METADATA_SERVICE_TIMEOUT", Some(1)),
            ("AWS_METADATA_SERVICE_NUM_ATTEMPTS", Some(2)),
            ("AWS_EC2_METADATA_DISABLED", Some(3)),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", Some(4)),
            ("ECS_INIT_DOWNLOAD_READ_TIMEOUT_SECONDS", Some(5)),
        ];
        for (key, line) in expect {
            let found = w.iter().find(|m| m.contains(key));
            let found = found.unwrap_or_else(|| panic!("no warning for {key}: {w:#?}"));
            if let Some(line) = line {
                assert!(
                    found.contains(&format!("/etc/ecs/ecs.config:{line}")),
                    "{found}"
                );
            }
        }
        assert_eq!(w.len(), expect.len(), "{w:#?}");
        let quiet = settings(&[], "AWS_EC2_METADATA_DISABLED=false\n");
        assert!(quiet.warnings.is_empty(), "{:?}", quiet.warnings);
    }

    /// The AWS SDK settings: `AWS_ENDPOINT_URL_S3` wins over `AWS_ENDPOINT_URL`, the flags are
    /// `true`/`false` as the SDKs read them (another word is a warning naming it), the CA bundle
    /// replaces the trust lists, and `plan` shows each.
    #[test]
    fn aws_sdk_settings() {
        let s = settings(
            &[
                ("AWS_ENDPOINT_URL", "https://all.example"),
                ("AWS_USE_FIPS_ENDPOINT", "TRUE"),
                ("AWS_CA_BUNDLE", "/etc/corp/ca.pem"),
                ("SSL_CERT_DIR", "/x"),
            ],
            "AWS_USE_DUALSTACK_ENDPOINT=yes\nAWS_EC2_METADATA_V1_DISABLED=true\nAWS_REGION=eusc-de-east-1\n",
        );
        let o = crate::compose::download_options(&s);
        assert_eq!(o.endpoint(), Some("https://all.example"));
        assert_eq!(
            o.knobs.s3_endpoint.as_ref().unwrap().key,
            "AWS_ENDPOINT_URL"
        );
        assert!(o.knobs.s3_variant.fips && !o.knobs.s3_variant.dualstack);
        assert!(o.knobs.imds_v1_disabled);
        assert_eq!(o.knobs.trust.files(), [PathBuf::from("/etc/corp/ca.pem")]);
        assert!(o.knobs.trust.dirs().is_empty());
        let w: Vec<String> = s.warnings.iter().map(|w| w.to_string()).collect();
        assert!(
            w.len() == 1
                && w[0].contains("AWS_USE_DUALSTACK_ENDPOINT")
                && w[0].contains("/etc/ecs/ecs.config:1"),
            "{w:?}"
        );
        let d = describe(&o);
        assert_eq!(d["endpoint"]["variable"], "AWS_ENDPOINT_URL");
        assert_eq!(
            (d["fips"].as_bool(), d["dualstack"].as_bool()),
            (Some(true), Some(false))
        );
        assert_eq!(d["instance_metadata"]["imdsv1_fallback"], false);
        assert_eq!(d["trust"]["aws_ca_bundle"], "/etc/corp/ca.pem");
        // The endpoint URL is used as given (path-style).
        assert_eq!(
            d["sources"][0]["tarball"],
            format!("https://all.example/amazon-ecs-agent/ecs-agent-v{AGENT_VERSION}.tar")
        );
        // AWS_ENDPOINT_URL_S3 wins; without an endpoint the partition's FIPS names show.
        let o = opts(
            &[
                ("AWS_ENDPOINT_URL", "https://all.example"),
                ("AWS_ENDPOINT_URL_S3", "https://s3.example"),
            ],
            "",
        );
        assert_eq!(o.endpoint(), Some("https://s3.example"));
        let d = describe(&opts(
            &[
                ("AWS_REGION", "eusc-de-east-1"),
                ("AWS_USE_FIPS_ENDPOINT", "true"),
            ],
            "",
        ));
        assert_eq!(
            d["sources"][0]["tarball"],
            format!("https://amazon-ecs-agent.s3-fips.eusc-de-east-1.amazonaws.eu/ecs-agent-v{AGENT_VERSION}.tar")
        );
    }

    #[test]
    fn offline_region_rules() {
        let r = |env: &[(&str, &str)]| opts(env, "").offline_region();
        assert_eq!(r(&[]).unwrap(), None, "IMDS decides");
        let (name, from) = r(&[("ECS_EXTERNAL", "true")]).unwrap().unwrap();
        assert_eq!(name, "us-east-1");
        assert!(from.to_string().contains("ECS_EXTERNAL=true"), "{from}");
        let (_, from) = r(&[("AWS_EC2_METADATA_DISABLED", "true")])
            .unwrap()
            .unwrap();
        assert!(
            from.to_string().contains("AWS_EC2_METADATA_DISABLED"),
            "{from}"
        );
        let (name, from) = r(&[("ECS_EXTERNAL", "true"), ("AWS_REGION", "eu-north-1")])
            .unwrap()
            .unwrap();
        assert_eq!(
            (name.as_str(), from),
            ("eu-north-1", RegionFrom::Setting("AWS_REGION"))
        );
        let err = r(&[("AWS_REGION", "eu west")]).unwrap_err().to_string();
        assert_eq!(err, "AWS_REGION=\"eu west\" is not a valid AWS region name");
    }

    #[test]
    fn object_names() {
        assert_eq!(
            object_name("x86_64").unwrap(),
            format!("ecs-agent-v{AGENT_VERSION}.tar")
        );
        assert_eq!(
            object_name("aarch64").unwrap(),
            format!("ecs-agent-arm64-v{AGENT_VERSION}.tar")
        );
        assert!(object_name("riscv64")
            .unwrap_err()
            .to_string()
            .contains("riscv64"));
    }

    #[test]
    fn bad_proxy_names_its_variable() {
        let err = opts(&[("HTTPS_PROXY", "socks5://h:1")], "")
            .proxies()
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("HTTPS_PROXY: proxy scheme socks5://"),
            "{err}"
        );
    }

    #[test]
    fn plan_shows_urls_and_hides_proxy_credentials() {
        let d = describe(&opts(
            &[
                ("AWS_REGION", "cn-north-1"),
                ("HTTPS_PROXY", "http://u:secret@p:8080"),
            ],
            "",
        ));
        assert_eq!(d["region"]["from"], "from AWS_REGION");
        assert_eq!(
            d["sources"][1]["tarball"],
            format!("https://amazon-ecs-agent-cn-north-1.s3.cn-north-1.amazonaws.com.cn/ecs-agent-v{AGENT_VERSION}.tar")
        );
        assert_eq!(d["proxy"]["https"]["url"], "http://<credentials>@p:8080");
        assert!(!d.to_string().contains("secret"));
        let d = describe(&opts(&[], ""));
        assert!(d["region"]["name"].is_null());
        assert!(
            d["sources"][1]["tarball"]
                .as_str()
                .unwrap()
                .starts_with("https://amazon-ecs-agent-{region}.s3.{region}."),
            "{d}"
        );
        assert_eq!(
            d["instance_metadata"]["token_url"],
            "http://169.254.169.254/latest/api/token"
        );
    }
}
