//! The two read-only actions: `plan` (what would be done, as JSON) and `status` (what is
//! running now). Both work without a running runtime, and neither changes the host.
use ecs_backends::Runtime;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::compose::Host;
use crate::{agent, cache, download, time};
use ecs_firewall::Backend;

/// Print the resolved plan as JSON on stdout (secret values redacted).
pub async fn plan(host: &Host) -> anyhow::Result<()> {
    host.settings.check()?;
    let settings = &host.settings;
    let paths = &settings.paths;
    let (spec, warnings) = host.spec();
    let runtime = match host.choose_runtime().await {
        Ok((selection, rt)) => json!({
            "name": selection.kind,
            "reason": selection.reason,
            // What the backend itself submits for this spec (same code path as `start`).
            "submits": rt.describe(&spec).await,
            "docker_api_for_the_agent": host.docker_api_for_agent().await,
        }),
        Err(e) => json!({"name": null, "reason": crate::describe(&e)}),
    };
    let network = match host.firewalls.select(settings.firewall).await {
        Ok(selection) => {
            let firewall = host.firewalls.build(selection.backend);
            let plan = ecs_firewall::plan_network(&host.net_config(), selection, firewall.as_ref());
            // The exact commands of each real backend for these rules, not only the chosen one,
            // so an operator can compare before forcing ECS_INIT_FIREWALL.
            let by_backend = json!({
                "iptables": host.firewalls.build(Backend::Iptables).render(&plan.rules),
                "nftables": host.firewalls.build(Backend::Nftables).render(&plan.rules),
            });
            let mut v = json!(plan);
            v["rendered_by_backend"] = by_backend;
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
            "download": download::describe(&download::options(settings)),
        },
        "agent": spec,
        "gpu": crate::gpu::plan(&host.gpu_options()),
        "volume_plugin": volume_plugin_report(&settings.volume_plugin.socket),
        "settings": settings.shown,
        "warnings": warnings.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
    });
    let mut text = serde_json::to_string_pretty(&out)?;
    text.push('\n');
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        // `plan | head` closing the pipe early is the reader's choice, not a failure.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
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
                if selection.kind == ecs_backends::RuntimeKind::Containerd {
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
    print!("{out}");
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
