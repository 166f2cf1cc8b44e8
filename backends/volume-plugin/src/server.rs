//! Docker's volume plugin protocol: HTTP/1.1 `POST /<Method>` with a JSON body over a unix
//! socket, answered with JSON (`application/vnd.docker.plugins.v1+json`). A failed request is
//! HTTP 500 with `{"Err": "…"}` (what Docker shows the operator), as the Go plugin's helper
//! library answers; requests that are not the protocol get 400 (malformed JSON), 404 (unknown
//! endpoint), 405 (not POST) or 413 (a body over [`MAX_BODY`], refused before it is read).
use crate::plugin::{Plugin, Shown};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// The largest request body read (Docker's requests are a few hundred bytes).
pub const MAX_BODY: usize = 1 << 20;
/// How long a client may take to send a request's head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// The content type of every answer.
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1+json";

#[derive(Deserialize)]
struct CreateRequest {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Opts", default)]
    opts: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct NameRequest {
    #[serde(rename = "Name")]
    name: String,
}

#[derive(Deserialize)]
struct MountRequest {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "ID", default)]
    id: String,
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(CONTENT_TYPE),
    );
    resp
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    reply(status, json!({ "Err": message.into() }))
}

/// The answer to a handler's result: 200 with `ok`, or 500 with `{"Err": …}`.
fn answer<T>(result: Result<T, String>, ok: impl FnOnce(T) -> Value) -> Response<Full<Bytes>> {
    match result {
        Ok(v) => reply(StatusCode::OK, ok(v)),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

fn shown(v: Shown) -> Value {
    json!({"Name": v.name, "Mountpoint": v.mountpoint, "CreatedAt": v.created_at})
}

/// A request that is not the protocol: its status and words.
type Refusal = (StatusCode, String);

fn parse<T: for<'de> Deserialize<'de>>(endpoint: &str, body: &[u8]) -> Result<T, Refusal> {
    serde_json::from_slice(body).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!("malformed request to {endpoint}: {e}"),
        )
    })
}

/// Answer one request.
pub async fn handle(
    plugin: Arc<Plugin>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let endpoint = req.uri().path().to_string();
    tracing::debug!(endpoint = %endpoint, "request");
    if req.method() != Method::POST {
        return Ok(error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} {endpoint}: the plugin protocol uses POST", req.method()),
        ));
    }
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request to {endpoint} refused: its body is over {} KiB",
                MAX_BODY >> 10
            ),
        )
    };
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Ok(too_large());
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Ok(too_large()),
        Err(e) => {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request to {endpoint}: {e}"),
            ))
        }
    };
    // On a task of its own: a client that goes away (Docker's own timeout) must not cancel a
    // mount half-way, leaving it mounted but unrecorded.
    let work = tokio::spawn(async move {
        route(&plugin, &endpoint, &body)
            .await
            .unwrap_or_else(|(status, words)| error(status, words))
    });
    Ok(work.await.unwrap_or_else(|e| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the request failed: {e}"),
        )
    }))
}

async fn route(
    plugin: &Plugin,
    endpoint: &str,
    body: &[u8],
) -> Result<Response<Full<Bytes>>, Refusal> {
    Ok(match endpoint {
        "/Plugin.Activate" => reply(StatusCode::OK, json!({"Implements": ["VolumeDriver"]})),
        "/VolumeDriver.Capabilities" => {
            reply(StatusCode::OK, json!({"Capabilities": {"Scope": "local"}}))
        }
        "/VolumeDriver.List" => reply(
            StatusCode::OK,
            json!({"Volumes": plugin.list().into_iter().map(|v| json!({"Name": v.name, "Mountpoint": v.mountpoint})).collect::<Vec<_>>(), "Err": ""}),
        ),
        "/VolumeDriver.Create" => {
            let r: CreateRequest = parse(endpoint, body)?;
            answer(
                plugin.create(&r.name, r.opts.unwrap_or_default()).await,
                |_| json!({"Err": ""}),
            )
        }
        "/VolumeDriver.Remove" => {
            let r: NameRequest = parse(endpoint, body)?;
            answer(plugin.remove(&r.name).await, |_| json!({"Err": ""}))
        }
        "/VolumeDriver.Mount" => {
            let r: MountRequest = parse(endpoint, body)?;
            answer(
                plugin.mount(&r.name, &r.id).await,
                |p| json!({"Mountpoint": p, "Err": ""}),
            )
        }
        "/VolumeDriver.Unmount" => {
            let r: MountRequest = parse(endpoint, body)?;
            answer(plugin.unmount(&r.name, &r.id).await, |_| json!({"Err": ""}))
        }
        "/VolumeDriver.Path" => {
            let r: NameRequest = parse(endpoint, body)?;
            answer(
                plugin.path(&r.name),
                |p| json!({"Mountpoint": p, "Err": ""}),
            )
        }
        "/VolumeDriver.Get" => {
            let r: NameRequest = parse(endpoint, body)?;
            answer(
                plugin.get(&r.name),
                |v| json!({"Volume": shown(v), "Err": ""}),
            )
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!(
                "unknown endpoint {:?} (this is the amazon-ecs-volume-plugin volume driver)",
                endpoint.chars().take(200).collect::<String>()
            ),
        ),
    })
}

/// Serve connections from `listener` until `stop` resolves; each connection (and each request
/// on it) runs on its own task.
pub async fn serve(
    listener: tokio::net::UnixListener,
    plugin: Arc<Plugin>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: wait a little instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let plugin = plugin.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(plugin.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mounter::Mounter;
    use crate::plugin::Layout;
    use crate::state::StateFile;
    use ecs_host::exec::{FakeExec, Output};
    use std::path::{Path, PathBuf};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A plugin on a real socket (its `mount` always succeeds; nothing is mounted).
    async fn serving(dir: &Path) -> (PathBuf, Arc<FakeExec>) {
        let exec = Arc::new(FakeExec::new(&["mount", "umount"], |_, _| {
            Ok(Output::ok(""))
        }));
        let layout = Layout {
            volumes_root: dir.join("volumes"),
            state_file: dir.join("data/state.json"),
        };
        let mounter = Mounter::new(exec.clone(), Duration::from_secs(5), dir.join("mountinfo"));
        let plugin = Arc::new(Plugin::new(layout, mounter, StateFile::default()));
        let socket = dir.join("p.sock");
        let listener =
            tokio::net::UnixListener::from_std(crate::listen::bind(&socket).unwrap()).unwrap();
        tokio::spawn(serve(listener, plugin, std::future::pending()));
        (socket, exec)
    }

    /// Send `head` and `body` on a fresh connection; the status and the JSON answer.
    async fn send(socket: &Path, head: &str, body: &[u8]) -> (u16, Value) {
        let mut s = tokio::net::UnixStream::connect(socket).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(body).await.unwrap();
        let mut text = Vec::new();
        s.read_to_end(&mut text).await.unwrap();
        parse_response(&text)
    }

    fn parse_response(text: &[u8]) -> (u16, Value) {
        let text = String::from_utf8_lossy(text);
        let status = text[9..12].parse().unwrap();
        let body = text.split_once("\r\n\r\n").unwrap().1;
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    async fn post(socket: &Path, endpoint: &str, body: &str) -> (u16, Value) {
        let head = format!(
            "POST {endpoint} HTTP/1.1\r\nHost: plugin\r\nContent-Type: application/vnd.docker.plugins.v1.2+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        send(socket, &head, body.as_bytes()).await
    }

    #[tokio::test]
    async fn the_protocol_as_docker_speaks_it() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, exec) = serving(dir.path()).await;
        assert_eq!(
            post(&socket, "/Plugin.Activate", "").await,
            (200, json!({"Implements": ["VolumeDriver"]}))
        );
        assert_eq!(
            post(&socket, "/VolumeDriver.Capabilities", "{}").await,
            (200, json!({"Capabilities": {"Scope": "local"}}))
        );
        let create = r#"{"Name":"v","Opts":{"type":"efs","device":"fs-12345678:/","o":"tls,iam"}}"#;
        assert_eq!(
            post(&socket, "/VolumeDriver.Create", create).await,
            (200, json!({"Err": ""}))
        );
        let path = dir.path().join("volumes/v").display().to_string();
        assert_eq!(
            exec.calls(),
            [format!("mount -t efs -o tls,iam fs-12345678:/ {path}")]
        );
        assert_eq!(
            post(&socket, "/VolumeDriver.Create", create).await,
            (500, json!({"Err": "volume v already exists"}))
        );
        assert_eq!(
            post(&socket, "/VolumeDriver.Mount", r#"{"Name":"v","ID":"abc"}"#).await,
            (200, json!({"Mountpoint": path, "Err": ""}))
        );
        assert_eq!(
            post(&socket, "/VolumeDriver.Path", r#"{"Name":"v"}"#).await,
            (200, json!({"Mountpoint": path, "Err": ""}))
        );
        let (status, got) = post(&socket, "/VolumeDriver.Get", r#"{"Name":"v"}"#).await;
        assert_eq!((status, &got["Volume"]["Mountpoint"]), (200, &json!(path)));
        assert_eq!(
            post(&socket, "/VolumeDriver.List", "{}").await,
            (
                200,
                json!({"Volumes": [{"Name": "v", "Mountpoint": path}], "Err": ""})
            )
        );
        let (status, err) = post(&socket, "/VolumeDriver.Remove", r#"{"Name":"v"}"#).await;
        assert_eq!(status, 500);
        assert!(err["Err"]
            .as_str()
            .unwrap()
            .contains("in use by 1 container mount(s) (abc)"));
        assert_eq!(
            post(
                &socket,
                "/VolumeDriver.Unmount",
                r#"{"Name":"v","ID":"abc"}"#
            )
            .await,
            (200, json!({"Err": ""}))
        );
        assert_eq!(
            post(&socket, "/VolumeDriver.Remove", r#"{"Name":"v"}"#).await,
            (200, json!({"Err": ""}))
        );
        assert_eq!(
            post(&socket, "/VolumeDriver.Get", r#"{"Name":"v"}"#).await,
            (500, json!({"Err": "volume v not found"}))
        );
    }

    #[tokio::test]
    async fn hostile_requests_get_clear_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, exec) = serving(dir.path()).await;
        let (status, err) = post(&socket, "/VolumeDriver.Create", "{\"Name\": ").await;
        assert_eq!(status, 400);
        assert!(
            err["Err"]
                .as_str()
                .unwrap()
                .starts_with("malformed request to /VolumeDriver.Create: "),
            "{err}"
        );
        let (status, err) = post(&socket, "/VolumeDriver.Create", r#"{"Name": 7}"#).await;
        assert_eq!(status, 400, "{err}");
        let (status, err) = post(&socket, "/VolumeDriver.Snapshot", "{}").await;
        assert_eq!(status, 404);
        assert!(err["Err"]
            .as_str()
            .unwrap()
            .starts_with("unknown endpoint \"/VolumeDriver.Snapshot\""));
        let (status, _) = send(
            &socket,
            "GET /VolumeDriver.List HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n",
            b"",
        )
        .await;
        assert_eq!(status, 405);
        for name in ["../../etc", "..", "a/b", "a\\u0000b"] {
            let body = format!(r#"{{"Name":"{name}","Opts":{{"device":"fs-1:/"}}}}"#);
            let (status, err) = post(&socket, "/VolumeDriver.Create", &body).await;
            assert_eq!(status, 500);
            assert!(
                err["Err"]
                    .as_str()
                    .unwrap()
                    .starts_with("invalid volume name"),
                "{err}"
            );
        }
        // 100 MB announced: refused from the head, the body is never read.
        let head = format!(
            "POST /VolumeDriver.Create HTTP/1.1\r\nHost: p\r\nContent-Length: {}\r\n\r\n",
            100 << 20
        );
        let (status, err) = send(&socket, &head, b"{").await;
        assert_eq!(status, 413);
        assert_eq!(
            err["Err"],
            "request to /VolumeDriver.Create refused: its body is over 1024 KiB"
        );
        // 100 MB streamed without a length: refused once 1 MiB has come, while the client is
        // still sending (its writes then fail), not after reading it all.
        let mut s = tokio::net::UnixStream::connect(&socket).await.unwrap();
        s.write_all(
            b"POST /VolumeDriver.Create HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .await
        .unwrap();
        let (mut rd, mut wr) = s.into_split();
        let writer = tokio::spawn(async move {
            let chunk = format!("10000\r\n{}\r\n", "x".repeat(0x10000));
            let mut sent = 0usize;
            while sent < 100 << 20 {
                if wr.write_all(chunk.as_bytes()).await.is_err() {
                    return sent;
                }
                sent += 0x10000;
            }
            sent
        });
        let mut text = Vec::new();
        rd.read_to_end(&mut text).await.unwrap();
        let (status, _) = parse_response(&text);
        assert_eq!(status, 413);
        let sent = writer.await.unwrap();
        assert!(sent < 100 << 20, "the server read all {sent} bytes");
        // Nothing of this reached mount.
        assert!(exec.calls().is_empty());
        // And the plugin still answers.
        assert_eq!(post(&socket, "/VolumeDriver.List", "{}").await.0, 200);
    }
}
