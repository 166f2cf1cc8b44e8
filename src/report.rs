//! The two read-only actions: `plan` (what would be done, as JSON) and `status` (what is
//! running now). Both work without a running runtime, and neither changes the host.
use ecs_runtime::Runtime;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::compose::Host;
use crate::{agent, cache, download, time};

/// Print the resolved plan as JSON on stdout (secret values redacted).
pub async fn plan(host: &Host) -> anyhow::Result<()> {
    host.settings.check()?;
    let settings = &host.settings;
    let paths = &settings.paths;
    let (spec, warnings) = host.spec();
    let mut bridge = ecs_hostnet::Bridge::Unknown;
    let runtime = match host.choose_runtime().await {
        Ok((selection, rt)) => {
            bridge = host.default_bridge(rt.as_ref()).await;
            json!({
            "name": selection.kind,
            "reason": selection.reason,
            // What the backend itself submits for this spec (same code path as `start`).
            "submits": rt.describe(&spec).await,
            "docker_api_for_the_agent": host.docker_api_for_agent().await,
            "default_bridge": bridge,
            })
        }
        Err(e) => json!({"name": null, "reason": crate::describe(&e)}),
    };
    let network = match host.firewalls.choose(settings.firewall).await {
        Ok(selection) => {
            let firewall = host.firewalls.build(selection.kind);
            let plan =
                ecs_hostnet::plan_network(&host.net_config(bridge), selection, firewall.as_ref());
            // The exact commands of each real backend for these rules, not only the chosen one,
            // so an operator can compare before forcing ECS_INIT_FIREWALL.
            let by_backend: serde_json::Map<String, serde_json::Value> = ecs_firewall::BACKENDS
                .iter()
                .filter(|k| k.backend().puts_rules())
                .map(|k| {
                    (
                        k.to_string(),
                        json!(host.firewalls.build(*k).render(&plan.rules)),
                    )
                })
                .collect();
            let block = introspection_block(&settings.net, plan.facts.bridge.as_deref());
            let mut v = json!(plan);
            v["rendered_by_backend"] = by_backend.into();
            v["introspection_block"] = block;
            v
        }
        Err(e) => json!({"error": e.to_string()}),
    };
    let cache_state = match cache::state(paths) {
        Ok(s) => json!(s),
        Err(e) => json!({"error": e.to_string()}),
    };
    let options = &settings.runtime_options;
    let out = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "agent_version": download::AGENT_VERSION,
        "host_root": paths.root,
        "config_files": [paths.var_lib_config(), paths.etc_config()],
        "runtime": runtime,
        "endpoints": {
            "docker_host": format!("unix://{}", options.docker_socket.display()),
            "containerd_address": options.containerd.address,
            "containerd_namespace": options.containerd.namespace,
        },
        "network": network,
        "cache": {
            "tarball": paths.agent_tarball(),
            "state_file": paths.cache_state(),
            "state": cache_state,
            "download": download::describe(&crate::compose::download_options(settings)),
        },
        "agent": spec,
        "gpu": crate::gpu::plan(&host.gpu_options()),
        "rollback": crate::rollback::plan(paths, &settings.rollback),
        "ebs_csi_driver": crate::ebs::plan(&settings.paths, settings.agent.external),
        "volume_plugin": volume_plugin_report(&settings.volume_plugin.socket),
        "custom_healthcheck_socket": crate::healthcheck::plan(&paths.healthcheck_socket()),
        "settings": settings.shown,
        "warnings": warnings
            .iter()
            .map(|w| w.to_string())
            .chain(crate::ebs::warning(&settings.paths, settings.agent.external))
            .collect::<Vec<_>>(),
    });
    let mut text = serde_json::to_string_pretty(&out)?;
    text.push('\n');
    print_out(&text);
    Ok(())
}

/// Write `text` to stdout. A reader that closed the pipe early (`status | head -0`) or a full
/// disk behind a redirection is not the action's failure: nothing panics ("failed printing to
/// stdout", exit 134, before) and the exit code stays the action's; a full disk is named on
/// stderr.
pub fn print_out(text: &str) {
    print_to(&mut std::io::stdout().lock(), text);
}

fn print_to(out: &mut dyn Write, text: &str) {
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("amazon-ecs-init: could not write to stdout: {e}");
        }
    }
}

/// Send `request` on `stream` (its timeouts set) and read at most 4 KiB of the answer.
fn exchange(mut stream: impl Read + Write, request: &[u8]) -> Result<String, String> {
    stream.write_all(request).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    stream
        .take(4096)
        .read_to_end(&mut buf)
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Ask the agent's introspection endpoint; `Ok(status line)` when it answers HTTP.
pub fn introspection(timeout: Duration) -> Result<String, String> {
    let addr: SocketAddr = ([127, 0, 0, 1], 51678).into();
    let s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let text = exchange(s, b"GET /v1/metadata HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let status = text.lines().next().unwrap_or("").trim().to_string();
    if status.starts_with("HTTP/") {
        Ok(status)
    } else {
        Err(format!("unexpected answer {status:?}"))
    }
}

/// Ask the ECS volume plugin on `socket` to activate (`POST /Plugin.Activate`, as dockerd
/// does); `Ok(what it implements)` when it answers as a volume driver.
pub fn volume_plugin(socket: &Path, timeout: Duration) -> Result<String, String> {
    let s = UnixStream::connect(socket).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .and_then(|_| s.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let text = exchange(
        s,
        b"POST /Plugin.Activate HTTP/1.0\r\nHost: plugin\r\nContent-Length: 0\r\n\r\n",
    )?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let implements = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("Implements").cloned());
    match implements {
        Some(list)
            if list
                .as_array()
                .is_some_and(|l| l.iter().any(|i| i == "VolumeDriver")) =>
        {
            Ok(format!("implements {list}"))
        }
        _ => Err(format!(
            "unexpected answer {:?}",
            text.lines().next().unwrap_or("")
        )),
    }
}

/// The volume plugin for `plan`: installed, and answering on its socket.
fn volume_plugin_report(socket: &Path) -> serde_json::Value {
    let answer = volume_plugin(socket, Duration::from_secs(2));
    json!({
        "binary": crate::facts::VOLUME_PLUGIN,
        "installed": Path::new(crate::facts::VOLUME_PLUGIN).exists(),
        "socket": socket,
        "answers": answer.is_ok(),
        "detail": answer.unwrap_or_else(|e| e),
    })
}

/// Print the runtime, the agent container's state and whether introspection answers.
/// Exit 0 when the agent is running, 3 when it is not.
pub async fn status(host: &Host) -> anyhow::Result<i32> {
    let mut out = String::new();
    let mut running = false;
    match host.recorded_runtime().await {
        Err(e) => out += &format!("runtime:        unknown ({})\n", crate::describe(&e)),
        Ok((selection, rt)) => match rt.ping().await {
            Ok(info) => {
                out += &format!(
                    "runtime:        {} {} at {} ({})\n",
                    info.runtime, info.version, info.endpoint, selection.reason
                );
                if let Some(configured) = host.configured_other_runtime(&selection) {
                    out += &format!(
                        "                ECS_INIT_RUNTIME={configured} is set, but the agent was started on {}\n",
                        selection.kind
                    );
                }
                running = describe_agent(rt.as_ref(), &mut out).await;
                if selection.kind.backend().agent_needs_docker_api() {
                    let api = host.docker_api_for_agent().await;
                    out += &match api.warning {
                        None => format!(
                            "docker api:     {} answers (the agent runs tasks through it)\n",
                            api.endpoint
                        ),
                        Some(w) => format!("docker api:     {w}\n"),
                    };
                }
            }
            Err(e) => {
                out += &format!(
                    "runtime:        {} not answering: {e} ({})\n",
                    selection.kind, selection.reason
                )
            }
        },
    }
    out += &if host.settings.rollback.enabled {
        crate::rollback::status_lines(&host.settings.paths)
    } else {
        "rollback:       off (ECS_INIT_AGENT_ROLLBACK=false)\n".to_string()
    };
    match introspection(Duration::from_secs(2)) {
        Ok(line) => {
            out += &format!("introspection:  http://127.0.0.1:51678/v1/metadata answers ({line})\n")
        }
        Err(e) => {
            out += &format!(
                "introspection:  http://127.0.0.1:51678/v1/metadata does not answer ({e})\n"
            )
        }
    }
    let socket = &host.settings.volume_plugin.socket;
    out += &match volume_plugin(socket, Duration::from_secs(2)) {
        Ok(what) => format!("volume plugin:  {} answers ({what})\n", socket.display()),
        Err(e) if !Path::new(crate::facts::VOLUME_PLUGIN).exists() => {
            format!("volume plugin:  not installed ({e})\n")
        }
        Err(e) => format!(
            "volume plugin:  {} does not answer ({e})\n",
            socket.display()
        ),
    };
    print_out(&out);
    Ok(if running { 0 } else { 3 })
}

async fn describe_agent(rt: &dyn Runtime, out: &mut String) -> bool {
    match rt.inspect(agent::AGENT_NAME).await {
        Err(e) => {
            *out += &format!(
                "agent:          cannot inspect {}: {e}\n",
                agent::AGENT_NAME
            );
            false
        }
        Ok(None) => {
            *out += &format!("agent:          no container named {}\n", agent::AGENT_NAME);
            false
        }
        Ok(Some(st)) => {
            let since = st.started_at.as_deref().and_then(time::parse_rfc3339);
            let uptime = since
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .map(time::human_duration);
            if st.running {
                *out += &format!(
                    "agent:          {} running, up {}, pid {}, image {}\n",
                    agent::AGENT_NAME,
                    uptime.as_deref().unwrap_or("?"),
                    st.pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
                    st.image
                );
            } else if st.status == "created" {
                *out += &format!(
                    "agent:          {} created, not started yet, image {}\n",
                    agent::AGENT_NAME,
                    st.image
                );
            } else {
                let code = st
                    .exit_code
                    .map(|c| format!(" with exit code {c}"))
                    .unwrap_or_default();
                let when = st
                    .finished_at
                    .as_deref()
                    .map(|t| format!(", finished {t}"))
                    .unwrap_or_default();
                *out += &format!(
                    "agent:          {} {}{code}{when}\n",
                    agent::AGENT_NAME,
                    st.status
                );
            }
            st.running
        }
    }
}

/// The effective block of the agent's introspection port (51678) from off-host, in words, for
/// `plan`: where it is dropped, what stays accepted, and which setting decided.
/// `ECS_OFFHOST_INTROSPECTION_INTERFACE_NAME` was removed from the Go tool in 1.97; this product
/// keeps it (README).
pub fn introspection_block(
    net: &crate::settings::NetSettings,
    bridge: Option<&str>,
) -> serde_json::Value {
    if net.allow_offhost_introspection {
        return json!({
            "blocked": false,
            "blocked_on": null,
            "accepted_on": [],
            "decided_by": "ECS_ALLOW_OFFHOST_INTROSPECTION_ACCESS=true: port 51678 is reachable from off-host",
        });
    }
    let (blocked_on, decided_by) = match &net.introspection_interface {
        Some(name) => (
            name.clone(),
            format!(
                "ECS_OFFHOST_INTROSPECTION_INTERFACE_NAME={name} (removed from the Go tool in 1.97, kept by this one): blocked on that interface only"
            ),
        ),
        None => (
            "every interface but loopback".to_string(),
            "default (ECS_OFFHOST_INTROSPECTION_INTERFACE_NAME unset): blocked on every interface but loopback, as the Go tool since 1.97".to_string(),
        ),
    };
    let mut accepted = vec!["loopback".to_string()];
    if let Some(b) = bridge {
        accepted.push(format!("{b} (Docker's default bridge: task containers)"));
    }
    json!({
        "blocked": true,
        "blocked_on": blocked_on,
        "accepted_on": accepted,
        "decided_by": decided_by,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::NetSettings;

    /// Issue 20 (7): EPIPE and ENOSPC on stdout are not fatal (before: a panic, exit 134).
    #[test]
    fn a_closed_or_full_stdout_is_not_fatal() {
        struct Failing(i32);
        impl Write for Failing {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::from_raw_os_error(self.0))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        print_to(&mut Failing(libc::EPIPE), "status\n");
        print_to(&mut Failing(libc::ENOSPC), "status\n");
    }

    #[test]
    fn the_effective_introspection_block() {
        let net = NetSettings::default();
        let v = introspection_block(&net, Some("docker0"));
        assert_eq!(v["blocked"], true);
        assert_eq!(v["blocked_on"], "every interface but loopback");
        assert_eq!(
            v["accepted_on"],
            json!([
                "loopback",
                "docker0 (Docker's default bridge: task containers)"
            ])
        );
        let net = NetSettings {
            introspection_interface: Some("eth+".into()),
            ..NetSettings::default()
        };
        let v = introspection_block(&net, None);
        assert_eq!(v["blocked_on"], "eth+");
        assert!(v["decided_by"]
            .as_str()
            .unwrap()
            .contains("removed from the Go tool in 1.97"));
        assert_eq!(v["accepted_on"], json!(["loopback"]));
        let net = NetSettings {
            allow_offhost_introspection: true,
            introspection_interface: Some("eth0".into()),
            ..NetSettings::default()
        };
        let v = introspection_block(&net, Some("docker0"));
        assert_eq!(v["blocked"], false);
        assert!(v["blocked_on"].is_null());
    }
}
