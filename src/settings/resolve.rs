//! The resolver: reads each knob once (process environment, else the env files where the knob
//! may be set there, else its default), keeps its source for `plan`, and collects what cannot
//! be used as warnings or errors naming the file, line and key.
use super::*;

/// Resolves knobs one by one, collecting values, sources and problems.
pub(super) struct Resolver<'a> {
    pub(super) env: &'a BTreeMap<String, String>,
    pub(super) files: &'a Config,
    pub(super) shown: Vec<Shown>,
    pub(super) raw: BTreeMap<&'static str, String>,
    pub(super) warnings: Vec<Warning>,
    pub(super) errors: Vec<Warning>,
}

impl Resolver<'_> {
    /// The raw value and its source; empty values count as unset.
    pub(super) fn raw(&self, k: &Knob) -> Option<(String, Source)> {
        if let Some(v) = self.env.get(k.name).filter(|v| !v.is_empty()) {
            return Some((v.clone(), Source::Process));
        }
        if k.scope == Scope::Files {
            return self
                .files
                .file_entry(k.name)
                .filter(|e| !e.value.is_empty())
                .map(|e| (e.value.clone(), Source::File(e.origin.clone())));
        }
        if k.scope == Scope::Anywhere {
            if let Some(e) = self
                .files
                .file_entry(k.name)
                .filter(|e| !e.value.is_empty())
            {
                return Some((e.value.clone(), Source::File(e.origin.clone())));
            }
        }
        None
    }

    pub(super) fn show(&mut self, k: &Knob, value: &str, source: &Source) {
        let value = url_credentials(value)
            .map(|(creds, _)| value.replacen(creds, "<credentials>", 1))
            .unwrap_or_else(|| value.to_string());
        self.shown.push(Shown {
            name: k.name,
            value: ecs_runtime::redacted_pair(k.name, &value)
                .split_once('=')
                .map(|(_, v)| v.to_string())
                .unwrap_or_default(),
            source: source.to_string(),
        });
    }

    pub(super) fn problem(k: &Knob, source: &Source, message: String) -> Warning {
        Warning {
            origin: source.origin(),
            key: Some(k.name.to_string()),
            message,
        }
    }

    pub(super) fn warn(&mut self, k: &Knob, source: &Source, message: String) {
        self.warnings.push(Self::problem(k, source, message));
    }

    /// The value, or `None` (shown as its default).
    pub(super) fn get(&mut self, name: &str) -> Option<(String, Source)> {
        let k = knob(name);
        let got = self.raw(k);
        match &got {
            Some((v, s)) => {
                self.show(k, v, s);
                self.raw.insert(k.name, v.clone());
            }
            None => self.show(k, k.default, &Source::Default),
        }
        got
    }

    pub(super) fn text(&mut self, name: &str) -> Option<String> {
        self.get(name).map(|(v, _)| v)
    }

    pub(super) fn trimmed(&mut self, name: &str) -> Option<String> {
        self.text(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    pub(super) fn bool(&mut self, name: &str) -> bool {
        let Some((v, source)) = self.get(name) else {
            return false;
        };
        parse_bool(&v).unwrap_or_else(|| {
            self.warn(
                knob(name),
                &source,
                format!("{v:?} is not a boolean; treating as false"),
            );
            false
        })
    }

    /// A choice the launcher cannot guess: anything else is an error.
    pub(super) fn choice<T: std::str::FromStr + Default>(&mut self, name: &str) -> T {
        let k = knob(name);
        let Some((v, source)) = self.get(name) else {
            return T::default();
        };
        v.parse().unwrap_or_else(|_| {
            let Kind::Choice(words) = k.kind else {
                unreachable!("{name} is a choice")
            };
            let words = words();
            self.errors.push(Self::problem(
                k,
                &source,
                format!("{v:?} is not one of {}", words.join("|")),
            ));
            T::default()
        })
    }

    /// The value parsed by `parse`, else the table's default (parsed the same way) with a
    /// warning that the value is not `what`.
    pub(super) fn parsed<T>(
        &mut self,
        name: &str,
        what: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> T {
        let k = knob(name);
        let default = parse(k.default).expect("the table's default parses");
        let Some((v, source)) = self.get(name) else {
            return default;
        };
        parse(v.trim()).unwrap_or_else(|| {
            self.warn(
                k,
                &source,
                format!("{v:?} is not {what}; using the default {}", k.default),
            );
            default
        })
    }

    /// A whole number of seconds.
    pub(super) fn seconds(&mut self, name: &str) -> Duration {
        self.parsed(name, "a whole number of seconds", |v| {
            v.parse().ok().map(Duration::from_secs)
        })
    }

    /// A positive number of seconds, fractions allowed, at most a day.
    pub(super) fn positive_seconds(&mut self, name: &str) -> Duration {
        self.parsed(name, "a number of seconds above 0 and at most a day", |v| {
            v.parse::<f64>()
                .ok()
                .filter(|s| *s > 0.0 && *s <= 86400.0)
                .map(Duration::from_secs_f64)
        })
    }

    /// A whole number in `range`.
    pub(super) fn count_in(&mut self, name: &str, range: std::ops::RangeInclusive<u32>) -> u32 {
        let what = format!("a number from {} to {}", range.start(), range.end());
        self.parsed(name, &what, |v| {
            v.parse().ok().filter(|n| range.contains(n))
        })
    }

    /// The first of `names` that is set and not blank, and which one it was.
    pub(super) fn first(&mut self, names: &[&'static str]) -> Option<Setting> {
        names
            .iter()
            .find_map(|&key| self.trimmed(key).map(|value| Setting { key, value }))
    }

    /// The download's knobs.
    pub(super) fn download(&mut self) -> DownloadSettings {
        let region = self.first(&["AWS_REGION", "AWS_DEFAULT_REGION"]);
        let explicit = self.trimmed("AWS_EC2_METADATA_SERVICE_ENDPOINT");
        let ipv6 = self.imds_ipv6();
        let imds_endpoint = explicit.unwrap_or_else(|| {
            if ipv6 {
                download::DEFAULT_IMDS_ENDPOINT_IPV6
            } else {
                download::DEFAULT_IMDS_ENDPOINT
            }
            .to_string()
        });
        let imds_disabled = self.imds_disabled();
        let imds_timeout = self.positive_seconds("AWS_METADATA_SERVICE_TIMEOUT");
        let imds_attempts = self.count_in("AWS_METADATA_SERVICE_NUM_ATTEMPTS", 1..=10);
        let imds_v1_disabled = self.sdk_true("AWS_EC2_METADATA_V1_DISABLED");
        let s3_endpoint = self.first(&["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]);
        let s3_variant = download::region::Variant {
            fips: self.sdk_true("AWS_USE_FIPS_ENDPOINT"),
            dualstack: self.sdk_true("AWS_USE_DUALSTACK_ENDPOINT"),
        };
        let https_proxy = self.first(&["HTTPS_PROXY", "https_proxy"]);
        let http_proxy = self.first(&["HTTP_PROXY", "http_proxy"]);
        let no_proxy = self.first(&["NO_PROXY", "no_proxy"]).map(|s| s.value);
        let trust = TrustSettings {
            ca_bundle: self.trimmed("AWS_CA_BUNDLE").map(PathBuf::from),
            cert_file: self.trimmed("SSL_CERT_FILE").map(PathBuf::from),
            cert_dirs: self.trimmed("SSL_CERT_DIR").map(|dirs| {
                dirs.split(':')
                    .filter(|d| !d.is_empty())
                    .map(PathBuf::from)
                    .collect()
            }),
        };
        DownloadSettings {
            region,
            imds_endpoint,
            imds_disabled,
            imds_timeout,
            imds_attempts,
            imds_v1_disabled,
            s3_endpoint,
            s3_variant,
            https_proxy,
            http_proxy,
            no_proxy,
            trust,
            connect_timeout: self.positive_seconds("ECS_INIT_DOWNLOAD_CONNECT_TIMEOUT_SECONDS"),
            read_timeout: self.positive_seconds("ECS_INIT_DOWNLOAD_READ_TIMEOUT_SECONDS"),
            limits: self.download_limits(),
        }
    }

    /// The download's deadline, minimum rate, size cap and split.
    pub(super) fn download_limits(&mut self) -> DownloadLimits {
        let mut bytes = |name: &str, what: &str, range: std::ops::RangeInclusive<u64>| {
            self.parsed(name, what, |v| {
                v.parse::<u64>().ok().filter(|n| range.contains(n))
            })
        };
        let min_rate = bytes(
            "ECS_INIT_DOWNLOAD_MIN_RATE_BYTES",
            "a number of bytes from 0 to 1073741824",
            0..=1 << 30,
        );
        let max_bytes = bytes(
            "ECS_INIT_DOWNLOAD_MAX_BYTES",
            "a number of bytes from 1 to 1099511627776",
            1..=1 << 40,
        );
        let part_bytes = bytes(
            "ECS_INIT_DOWNLOAD_PART_BYTES",
            "a number of bytes from 65536 to 1073741824",
            1 << 16..=1 << 30,
        );
        DownloadLimits {
            deadline: self.positive_seconds("ECS_INIT_DOWNLOAD_DEADLINE_SECONDS"),
            min_rate,
            min_rate_window: self.positive_seconds("ECS_INIT_DOWNLOAD_MIN_RATE_SECONDS"),
            max_bytes,
            part_bytes,
            parallelism: self.count_in("ECS_INIT_DOWNLOAD_PARALLELISM", 1..=64),
        }
    }

    /// `AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE`: `IPv6` or `IPv4` (any case); anything else is
    /// a warning and means IPv4.
    pub(super) fn imds_ipv6(&mut self) -> bool {
        let k = knob("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE");
        let Some((v, source)) = self.get(k.name) else {
            return false;
        };
        let Kind::Choice(words) = k.kind else {
            unreachable!("{} is a choice", k.name)
        };
        let words = words();
        match words.iter().find(|w| w.eq_ignore_ascii_case(v.trim())) {
            Some(w) => *w == "IPv6",
            None => {
                self.warn(
                    k,
                    &source,
                    format!("{v:?} is not one of {}; using IPv4", words.join("|")),
                );
                false
            }
        }
    }

    /// An AWS SDK flag (`AWS_USE_FIPS_ENDPOINT`, …): `true` or `false`, any case, as the SDKs
    /// read them; another word is a warning and false.
    pub(super) fn sdk_true(&mut self, name: &str) -> bool {
        let k = knob(name);
        let Some((v, source)) = self.get(k.name) else {
            return false;
        };
        match v.trim().to_ascii_lowercase().as_str() {
            "true" => true,
            "false" | "" => false,
            _ => {
                self.warn(
                    k,
                    &source,
                    format!("{v:?} is neither true nor false (as the AWS SDKs read it); treating as false"),
                );
                false
            }
        }
    }

    /// `AWS_EC2_METADATA_DISABLED`: only `true` (any case) turns instance metadata off, as the
    /// AWS SDKs read it; another word that reads as true elsewhere (`1`, `t`) is named.
    pub(super) fn imds_disabled(&mut self) -> bool {
        let k = knob("AWS_EC2_METADATA_DISABLED");
        let Some((v, source)) = self.get(k.name) else {
            return false;
        };
        let v = v.trim();
        if v.eq_ignore_ascii_case("true") {
            return true;
        }
        if parse_bool(v) != Some(false) {
            self.warn(
                k,
                &source,
                format!("{v:?}: only `true` turns instance metadata off (as the AWS SDKs read it); ignored"),
            );
        }
        false
    }

    /// A whole number of milliseconds, when set (anything else is a warning and unset).
    pub(super) fn millis(&mut self, name: &str) -> Option<Duration> {
        let (v, source) = self.get(name)?;
        match v.trim().parse::<u64>() {
            Ok(ms) => Some(Duration::from_millis(ms)),
            Err(_) => {
                self.warn(
                    knob(name),
                    &source,
                    format!("{v:?} is not a whole number of milliseconds; ignored"),
                );
                None
            }
        }
    }

    /// `ECS_LOGLEVEL`: unknown words are a warning and mean `info`.
    pub(super) fn log_level(&mut self) -> &'static str {
        let k = knob("ECS_LOGLEVEL");
        let Some((v, source)) = self.get(k.name) else {
            return "info";
        };
        let Kind::Choice(words) = k.kind else {
            unreachable!()
        };
        let words = words();
        let lower = v.trim().to_ascii_lowercase();
        match words.iter().find(|w| **w == lower) {
            Some(w) => w,
            None => {
                self.warn(
                    k,
                    &source,
                    format!("{v:?} is not one of {}; using info", words.join("|")),
                );
                "info"
            }
        }
    }

    /// `ECS_OFFHOST_INTROSPECTION_INTERFACE_NAME`, checked against the kernel's rules (an
    /// error: a rule on a name that cannot exist would fail half-way through pre-start).
    pub(super) fn interface(&mut self) -> Option<String> {
        let k = knob("ECS_OFFHOST_INTROSPECTION_INTERFACE_NAME");
        let (v, source) = self.get(k.name)?;
        let v = v.trim();
        match ecs_firewall::interface_pattern(v) {
            Ok(canonical) => Some(canonical),
            Err(why) => {
                self.errors.push(Self::problem(
                    k,
                    &source,
                    format!("{v:?} is not an interface name: {why}"),
                ));
                None
            }
        }
    }

    /// `DOCKER_HOST` and the containerd knobs.
    pub(super) fn runtime_options(
        &mut self,
        paths: &Paths,
        docker_host: Option<PathBuf>,
    ) -> RuntimeOptions {
        let mut containerd = ContainerdOptions::default();
        if let Some(a) = self.trimmed("CONTAINERD_ADDRESS") {
            containerd.address = strip_unix(&a);
        }
        if let Some(ns) = self.trimmed("ECS_INIT_CONTAINERD_NAMESPACE") {
            containerd.namespace = ns;
        }
        if let Some(init) = self.trimmed("ECS_INIT_AGENT_INIT") {
            containerd.agent_init = init.into();
        }
        // The agent's stdout/stderr follow the (re-rooted) ecs log directory unless set.
        containerd.log_dir = self
            .trimmed("ECS_INIT_CONTAINERD_LOG_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| paths.var_log_ecs.join("containerd"));
        RuntimeOptions {
            docker_socket: docker_host.unwrap_or_else(|| docker::DEFAULT_SOCKET.into()),
            containerd,
        }
    }

    /// `DOCKER_HOST`'s socket. A value that is not `unix:///path` is an error (the Go tool
    /// silently uses the default socket instead; the README lists the difference): the socket
    /// is bind-mounted into the agent, and automatic selection must not pass over a Docker the
    /// operator named.
    pub(super) fn docker_host(&mut self) -> Option<PathBuf> {
        let k = knob("DOCKER_HOST");
        let (v, source) = self.get(k.name).filter(|(v, _)| !v.trim().is_empty())?;
        let socket = docker::socket_of(&v);
        if socket.is_none() {
            self.errors.push(Self::problem(
                k,
                &source,
                format!("{v:?} is not a unix socket (DOCKER_HOST=unix:///path/to/docker.sock)"),
            ));
        }
        socket
    }

    /// The rollback knobs; `ECS_INIT_AGENT_ROLLBACK` reads as a boolean but defaults to true.
    pub(super) fn rollback(&mut self) -> RollbackSettings {
        let enabled = match self.raw(knob("ECS_INIT_AGENT_ROLLBACK")) {
            None => {
                self.get("ECS_INIT_AGENT_ROLLBACK");
                true
            }
            Some(_) => self.bool("ECS_INIT_AGENT_ROLLBACK"),
        };
        RollbackSettings {
            enabled,
            failed_starts: self.count_in("ECS_INIT_ROLLBACK_FAILED_STARTS", 1..=1000),
            timeout: self.positive_seconds("ECS_INIT_ROLLBACK_TIMEOUT_SECONDS"),
            healthy_after: self.positive_seconds("ECS_INIT_AGENT_HEALTHY_SECONDS"),
        }
    }

    /// The knobs of the agent container.
    pub(super) fn agent(&mut self, files: &Config, docker_host: Option<PathBuf>) -> AgentKnobs {
        let log_driver = self.log_driver();
        let log_driver_set = self
            .raw(knob("ECS_LOG_DRIVER"))
            .is_some_and(|(v, _)| !v.is_empty());
        AgentKnobs {
            log_driver,
            log_driver_unknown: log_driver.is_none() && log_driver_set,
            log_opts: self.log_opts(),
            log_file_size: self.text("ECS_INIT_DOCKER_LOG_FILE_SIZE"),
            log_file_num: self.text("ECS_INIT_DOCKER_LOG_FILE_NUM"),
            privileged: self.bool("ECS_AGENT_RUN_PRIVILEGED"),
            pid_host: self.bool("ECS_AGENT_PID_NAMESPACE_HOST"),
            apparmor_profile: self
                .text("ECS_AGENT_APPARMOR_PROFILE")
                .unwrap_or_else(|| crate::agent::DEFAULT_APPARMOR_PROFILE.into()),
            external: self.bool("ECS_EXTERNAL"),
            gmsa: self.bool("ECS_GMSA_SUPPORTED"),
            credentials_fetcher: self
                .text("CREDENTIALS_FETCHER_HOST")
                .map(|v| strip_unix(&v))
                .unwrap_or_else(|| crate::agent::CREDENTIALS_FETCHER_SOCKET.into()),
            gpu_support: self.bool("ECS_ENABLE_GPU_SUPPORT"),
            docker_host,
            docker_host_in_files: files
                .file_entry("DOCKER_HOST")
                .and_then(|e| docker::socket_of(&e.value)),
            labels: self.labels(),
        }
    }

    /// `ECS_AGENT_LABELS`: a JSON object of strings; anything else is a warning and no labels.
    pub(super) fn labels(&mut self) -> BTreeMap<String, String> {
        let k = knob("ECS_AGENT_LABELS");
        let Some((v, source)) = self.get(k.name) else {
            return BTreeMap::new();
        };
        parse_string_map(&v).unwrap_or_else(|err| {
            self.warn(
                k,
                &source,
                format!(
                    "Failed to decode the container labels, skipping labels ({err}; expected a JSON object of strings)"
                ),
            );
            BTreeMap::new()
        })
    }

    /// `ECS_LOG_DRIVER`: one of [`LOG_DRIVERS`], else a warning (the default driver is used).
    pub(super) fn log_driver(&mut self) -> Option<&'static str> {
        let k = knob("ECS_LOG_DRIVER");
        let (v, source) = self.get(k.name)?;
        let found = LOG_DRIVERS.iter().find(|d| **d == v.trim()).copied();
        if found.is_none() {
            self.warn(
                k,
                &source,
                format!(
                    "unknown log driver {v:?} (want one of {}); using {}",
                    LOG_DRIVERS.join(", "),
                    k.default
                ),
            );
        }
        found
    }

    pub(super) fn log_opts(&mut self) -> Option<BTreeMap<String, String>> {
        let k = knob("ECS_LOG_OPTS");
        let (v, source) = self.get(k.name)?;
        match parse_string_map(&v) {
            Ok(map) => Some(map),
            Err(err) => {
                self.warn(
                    k,
                    &source,
                    format!("not a JSON object of strings ({err}); using the default log options"),
                );
                None
            }
        }
    }
}

/// The `user:password` part of a URL (`http://user:password@proxy:3128`) and the password, if
/// the value is such a URL (proxies): never shown, and scrubbed from logs.
pub(super) fn url_credentials(value: &str) -> Option<(&str, &str)> {
    let (_, rest) = value.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let (creds, _) = authority.rsplit_once('@')?;
    let password = creds.split_once(':').map(|(_, p)| p).unwrap_or(creds);
    Some((creds, password))
}

/// `unix:///x` or `/x` → `/x`.
pub(super) fn strip_unix(v: &str) -> PathBuf {
    containerd::socket_path(v)
}
