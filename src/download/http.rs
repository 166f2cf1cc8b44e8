//! A small HTTP/1.1 client for the download: a connection per request, or one kept alive for
//! the next request to the same server when the caller keeps it, direct or through an
//! `http://` forward proxy (a CONNECT tunnel for HTTPS, absolute-form requests for plain HTTP),
//! TLS by rustls with the ring provider and the host's trust store, a connect timeout, a read
//! timeout that applies to the response head and to every wait for body data, and retries with
//! backoff for the failures that may pass (connect errors, timeouts, a connection lost midway,
//! 5xx) but not for the ones that will not (4xx, certificate errors).
//!
//! Built on hyper's low-level `client::conn::http1`, which the launcher already links (through
//! bollard): the bytes on the wire, chunked bodies and keep-alive rules are hyper's; what is ours
//! is connecting, the tunnel, the timeouts and the error classification.
use ecs_host::Backoff;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::{header, Method, Request};
use hyper_util::rt::TokioIo;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::proxy::{bracket, split_host_port, Proxies, ProxyUrl};
use super::tls::{load_roots, TrustSettings};

const USER_AGENT: &str = concat!("amazon-ecs-init/", env!("CARGO_PKG_VERSION"));

/// What went wrong, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The URL itself is unusable.
    Invalid,
    /// DNS, refused, unreachable: may pass.
    Connect,
    /// Certificate or protocol failure in the TLS handshake: will not pass.
    Tls,
    /// The proxy refused the tunnel (status) or broke (no status).
    Proxy(Option<u16>),
    /// The server answered with this status.
    Status(u16),
    /// No answer or no data within the timeout.
    Timeout,
    /// The connection broke (reset, truncated body).
    Interrupted,
}

/// A failed request; the message names the method, the URL and what happened.
#[derive(Debug)]
pub struct HttpError {
    pub method: &'static str,
    pub url: String,
    pub kind: Kind,
    pub detail: String,
    /// How many attempts were made (set by [`with_retries`]).
    pub attempts: u32,
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.method, self.url, self.detail)?;
        if self.attempts > 1 {
            write!(f, " (gave up after {} attempts)", self.attempts)?;
        }
        Ok(())
    }
}

impl std::error::Error for HttpError {}

impl HttpError {
    pub fn status(&self) -> Option<u16> {
        match self.kind {
            Kind::Status(s) => Some(s),
            _ => None,
        }
    }
}

/// Errors that [`with_retries`] can judge.
pub trait Attempt: fmt::Display {
    fn retryable(&self) -> bool;
    fn set_attempts(&mut self, attempts: u32);
}

impl Attempt for HttpError {
    fn retryable(&self) -> bool {
        match self.kind {
            Kind::Connect | Kind::Timeout | Kind::Interrupted | Kind::Proxy(None) => true,
            Kind::Status(s) | Kind::Proxy(Some(s)) => s >= 500,
            Kind::Invalid | Kind::Tls => false,
        }
    }
    fn set_attempts(&mut self, attempts: u32) {
        self.attempts = attempts;
    }
}

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all (1 = no retry).
    pub attempts: u32,
    /// Wait before the second attempt; doubles each time (±10 % jitter), at most 30 s.
    pub backoff: Duration,
}

/// Run `attempt` until it succeeds, fails for good, or the attempts are used up.
pub async fn with_retries<T, E, F, Fut>(retry: Retry, what: &str, mut attempt: F) -> Result<T, E>
where
    E: Attempt,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::new(retry.backoff, Duration::from_secs(30)).with_jitter(0.1);
    let mut n = 1;
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if e.retryable() && n < retry.attempts => {
                let wait = backoff.next_delay();
                tracing::warn!(
                    attempt = n,
                    of = retry.attempts,
                    retry_in_ms = wait.as_millis() as u64,
                    error = %e,
                    "{what} failed; retrying"
                );
                tokio::time::sleep(wait).await;
                n += 1;
            }
            Err(mut e) => {
                e.set_attempts(n);
                return Err(e);
            }
        }
    }
}

/// An `http://` or `https://` URL taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    /// Without brackets.
    pub host: String,
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            other => return Err(format!("unsupported scheme {other:?} (http or https)")),
        };
        let authority = uri.authority().ok_or("no host in the URL")?.as_str();
        if authority.contains('@') {
            return Err("credentials in the URL are not supported".into());
        }
        let (host, port) = split_host_port(authority)?;
        Ok(Target {
            https,
            host,
            port: port.unwrap_or(if https { 443 } else { 80 }),
            path: uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/".into()),
        })
    }

    /// `host[:port]` for the Host header and CONNECT (the port only when not the default).
    fn host_header(&self) -> String {
        let default = if self.https { 443 } else { 80 };
        if self.port == default {
            bracket(&self.host)
        } else {
            format!("{}:{}", bracket(&self.host), self.port)
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// The error and all its sources, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        let t = src.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = src.source();
    }
    s
}

/// The client: settings plus the TLS configuration, loaded at the first HTTPS request.
pub struct Client {
    pub proxies: Proxies,
    pub trust: TrustSettings,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// A body that brings less than `min_rate.0` bytes per second over a window of
    /// `min_rate.1` fails with a timeout (0: no minimum).
    pub min_rate: (u64, Duration),
    tls: OnceLock<Result<Arc<rustls::ClientConfig>, String>>,
}

/// A response whose body has not been read yet.
pub struct Response {
    pub status: u16,
    pub content_length: Option<u64>,
    /// `Content-Range: bytes <first>-<last>/<total>` of a 206: (first, last, total), the total
    /// `None` when the server wrote `*`.
    pub content_range: Option<(u64, u64, Option<u64>)>,
    pub etag: Option<String>,
    pub received: u64,
    method: &'static str,
    url: String,
    body: Incoming,
    read_timeout: Duration,
    min_rate: (u64, Duration),
    /// Where the current minimum-rate window started, and what it has received.
    window: (Instant, u64),
}

type SendRequest = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// A connection kept open for the next request to the same server ([`Client::request_on`]).
pub struct Conn {
    /// Scheme, host, port and proxy: what a request must share to use it.
    key: String,
    sender: SendRequest,
}

/// How long a kept connection may take to be ready for the next request: a connection whose
/// last body was read to its end is ready at once.
const KEPT_READY: Duration = Duration::from_millis(100);

/// `bytes <first>-<last>/<total|*>`.
pub fn parse_content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let (first, last) = (first.trim().parse().ok()?, last.trim().parse().ok()?);
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    (first <= last && total.is_none_or(|t| last < t)).then_some((first, last, total))
}

impl Client {
    pub fn new(
        proxies: Proxies,
        trust: TrustSettings,
        connect_timeout: Duration,
        read_timeout: Duration,
    ) -> Client {
        Client {
            proxies,
            trust,
            connect_timeout,
            read_timeout,
            min_rate: (0, Duration::from_secs(60)),
            tls: OnceLock::new(),
        }
    }

    fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        self.tls
            .get_or_init(|| {
                let (roots, n) = load_roots(&self.trust)?;
                tracing::debug!(certificates = n, "trust store loaded");
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let mut config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                Ok(Arc::new(config))
            })
            .clone()
    }

    /// Send one request (empty body) on a connection of its own and wait for the response head.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&'static str, &str)],
    ) -> Result<Response, HttpError> {
        self.request_on(&mut None, method, url, headers).await
    }

    /// Send one request on the connection kept in `slot` when it is to the same server (and
    /// through the same proxy) and ready for another request (the previous response's body was
    /// read to its end), else on a new one; the connection is then kept in `slot` for the next
    /// request. A kept connection the server has closed meanwhile is replaced once, without
    /// counting as a failed attempt: keep-alive saves a TCP and TLS handshake per request (a
    /// ranged download makes several per connection), but a server may close an idle
    /// connection at any time.
    pub async fn request_on(
        &self,
        slot: &mut Option<Conn>,
        method: Method,
        url: &str,
        headers: &[(&'static str, &str)],
    ) -> Result<Response, HttpError> {
        let name: &'static str = if method == Method::PUT { "PUT" } else { "GET" };
        let err = |kind, detail: String| HttpError {
            method: name,
            url: url.to_string(),
            kind,
            detail,
            attempts: 1,
        };
        let target = Target::parse(url).map_err(|d| err(Kind::Invalid, d))?;
        let proxy = self
            .proxies
            .for_target(target.https, &target.host, target.port);
        let key = format!(
            "{}://{}:{} via {}",
            if target.https { "https" } else { "http" },
            target.host,
            target.port,
            proxy.map_or_else(|| "none".to_string(), |p| format!("{}:{}", p.host, p.port))
        );
        let kept = match slot.take() {
            Some(mut c) if c.key == key => {
                // Ready at once when the last body was read to its end; a connection that
                // is not (closed, or a body left unread) is not waited for.
                match timeout(KEPT_READY, c.sender.ready()).await {
                    Ok(Ok(())) => Some(c.sender),
                    _ => None,
                }
            }
            _ => None,
        };
        // Plain HTTP through a proxy uses the absolute form; otherwise the origin form.
        let forward = proxy.filter(|_| !target.https);
        let uri = match forward {
            Some(_) => url.to_string(),
            None => target.path.clone(),
        };
        let build = || {
            let mut req = Request::builder()
                .method(method.clone())
                .uri(uri.as_str())
                .header(header::HOST, target.host_header())
                .header(header::USER_AGENT, USER_AGENT)
                .header(header::ACCEPT, "*/*");
            if let Some(auth) = forward.and_then(|p| p.authorization.as_deref()) {
                req = req.header(header::PROXY_AUTHORIZATION, auth);
            }
            if method == Method::PUT {
                req = req.header(header::CONTENT_LENGTH, "0");
            }
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            req.body(Empty::<Bytes>::new())
                .map_err(|e| err(Kind::Invalid, e.to_string()))
        };
        let open = || async {
            let io = self
                .connect(&target, proxy)
                .await
                .map_err(|(k, d)| err(k, d))?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
                .await
                .map_err(|e| err(Kind::Interrupted, chain(&e)))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok::<_, HttpError>(sender)
        };
        let send = |sender: &mut SendRequest, req| {
            let sent = sender.send_request(req);
            async move {
                match timeout(self.read_timeout, sent).await {
                    Err(_) => Err(err(
                        Kind::Timeout,
                        format!("no response within {:?}", self.read_timeout),
                    )),
                    Ok(Err(e)) => Err(err(Kind::Interrupted, chain(&e))),
                    Ok(Ok(r)) => Ok(r),
                }
            }
        };
        let (sender, resp) = match kept {
            Some(mut sender) => match send(&mut sender, build()?).await {
                Ok(resp) => (sender, resp),
                Err(e) if e.kind == Kind::Interrupted => {
                    tracing::debug!(url, error = %e, "a kept connection was closed; a new one");
                    let mut sender = open().await?;
                    let resp = send(&mut sender, build()?).await?;
                    (sender, resp)
                }
                Err(e) => return Err(e),
            },
            None => {
                let mut sender = open().await?;
                let resp = send(&mut sender, build()?).await?;
                (sender, resp)
            }
        };
        *slot = Some(Conn { key, sender });
        let text = |name| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_length = text(header::CONTENT_LENGTH).and_then(|v| v.parse().ok());
        let content_range = text(header::CONTENT_RANGE).and_then(|v| parse_content_range(&v));
        let etag = text(header::ETAG);
        Ok(Response {
            status: resp.status().as_u16(),
            content_length,
            content_range,
            etag,
            received: 0,
            method: name,
            url: url.to_string(),
            body: resp.into_body(),
            read_timeout: self.read_timeout,
            min_rate: self.min_rate,
            window: (Instant::now(), 0),
        })
    }

    /// GET that must answer 2xx.
    pub async fn get(&self, url: &str) -> Result<Response, HttpError> {
        self.request(Method::GET, url, &[]).await?.success()
    }

    async fn connect(
        &self,
        target: &Target,
        proxy: Option<&ProxyUrl>,
    ) -> Result<Box<dyn Io>, (Kind, String)> {
        let (host, port, what) = match proxy {
            Some(p) => (p.host.as_str(), p.port, format!("proxy {p}")),
            None => (target.host.as_str(), target.port, "server".to_string()),
        };
        let addr = format!("{}:{port}", bracket(host));
        let tcp = match timeout(self.connect_timeout, TcpStream::connect((host, port))).await {
            Err(_) => {
                return Err((
                    Kind::Timeout,
                    format!(
                        "connecting to {what} {addr} timed out after {:?}",
                        self.connect_timeout
                    ),
                ))
            }
            Ok(Err(e)) => {
                let kind = if proxy.is_some() {
                    Kind::Proxy(None)
                } else {
                    Kind::Connect
                };
                return Err((kind, format!("cannot connect to {what} {addr}: {e}")));
            }
            Ok(Ok(s)) => s,
        };
        let _ = tcp.set_nodelay(true);
        let mut tcp = tcp;
        if let (Some(p), true) = (proxy, target.https) {
            self.tunnel(&mut tcp, target, p).await?;
        }
        if !target.https {
            return Ok(Box::new(tcp));
        }
        let config = self.tls_config().map_err(|e| (Kind::Tls, e))?;
        let name = rustls_pki_types::ServerName::try_from(target.host.clone())
            .map_err(|e| (Kind::Invalid, format!("{:?}: {e}", target.host)))?;
        let connector = tokio_rustls::TlsConnector::from(config);
        match timeout(self.connect_timeout, connector.connect(name, tcp)).await {
            Err(_) => Err((
                Kind::Timeout,
                format!(
                    "TLS handshake with {} timed out after {:?}",
                    target.host, self.connect_timeout
                ),
            )),
            Ok(Err(e)) => {
                // A certificate or protocol error will not pass; a connection lost during the
                // handshake may.
                let kind = match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                    Some(_) => Kind::Tls,
                    None => Kind::Interrupted,
                };
                Err((
                    kind,
                    format!("TLS handshake with {} failed: {e}", target.host),
                ))
            }
            Ok(Ok(tls)) => Ok(Box::new(tls)),
        }
    }

    /// `CONNECT host:port` through the proxy; the tunnel then carries TLS end to end.
    async fn tunnel(
        &self,
        tcp: &mut TcpStream,
        target: &Target,
        proxy: &ProxyUrl,
    ) -> Result<(), (Kind, String)> {
        let authority = format!("{}:{}", bracket(&target.host), target.port);
        let mut head = format!(
            "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: {USER_AGENT}\r\n"
        );
        if let Some(auth) = &proxy.authorization {
            head.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
        }
        head.push_str("\r\n");
        let exchange = async {
            tcp.write_all(head.as_bytes()).await?;
            // Byte by byte: nothing after the head may be consumed (it belongs to TLS).
            let mut answer = Vec::with_capacity(256);
            while !answer.ends_with(b"\r\n\r\n") {
                if answer.len() > 16 * 1024 {
                    return Err(std::io::Error::other("answer head over 16 KiB"));
                }
                answer.push(tcp.read_u8().await?);
            }
            Ok(answer)
        };
        let answer = match timeout(self.read_timeout, exchange).await {
            Err(_) => {
                return Err((
                    Kind::Proxy(None),
                    format!(
                        "proxy {proxy} did not answer CONNECT {authority} within {:?}",
                        self.read_timeout
                    ),
                ))
            }
            Ok(Err(e)) => {
                return Err((
                    Kind::Proxy(None),
                    format!("proxy {proxy} broke off CONNECT {authority}: {e}"),
                ))
            }
            Ok(Ok(a)) => a,
        };
        let text = String::from_utf8_lossy(&answer);
        let line = text.lines().next().unwrap_or("").trim();
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok());
        match status {
            Some(s) if (200..300).contains(&s) => Ok(()),
            Some(s) => Err((
                Kind::Proxy(Some(s)),
                format!("proxy {proxy} refused CONNECT {authority}: {line}"),
            )),
            None => Err((
                Kind::Proxy(None),
                format!("proxy {proxy} sent a malformed answer to CONNECT {authority}: {line:?}"),
            )),
        }
    }
}

impl Response {
    pub fn url(&self) -> String {
        self.url.clone()
    }

    fn error(&self, kind: Kind, detail: String) -> HttpError {
        HttpError {
            method: self.method,
            url: self.url.clone(),
            kind,
            detail,
            attempts: 1,
        }
    }

    /// `Err` for anything but 2xx.
    pub fn success(self) -> Result<Response, HttpError> {
        if (200..300).contains(&self.status) {
            return Ok(self);
        }
        let reason = hyper::StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        Err(self.error(
            Kind::Status(self.status),
            format!("HTTP {} {reason}", self.status)
                .trim_end()
                .to_string(),
        ))
    }

    fn progress(&self) -> String {
        match self.content_length {
            Some(n) => format!("{} of {n} bytes", self.received),
            None => format!("{} bytes", self.received),
        }
    }

    /// The next piece of the body; `None` at its end. Waits at most the read timeout, and fails
    /// when the body has been slower than the minimum rate over the last window.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, HttpError> {
        loop {
            let (rate, window) = self.min_rate;
            let mut wait = self.read_timeout;
            let mut window_ends = false;
            if rate > 0 {
                let now = Instant::now();
                let end = self.window.0 + window;
                if end <= now {
                    let wanted = (rate as f64 * window.as_secs_f64()) as u64;
                    if self.window.1 < wanted {
                        return Err(self.error(
                            Kind::Timeout,
                            format!(
                                "slower than the minimum of {rate} bytes/s: {} bytes in the last {window:?}, after {}",
                                self.window.1,
                                self.progress()
                            ),
                        ));
                    }
                    self.window = (now, 0);
                    continue;
                }
                if end - now < wait {
                    (wait, window_ends) = (end - now, true);
                }
            }
            let frame = match timeout(wait, self.body.frame()).await {
                Err(_) if window_ends => continue,
                Err(_) => {
                    return Err(self.error(
                        Kind::Timeout,
                        format!(
                            "no data for {:?} after {}",
                            self.read_timeout,
                            self.progress()
                        ),
                    ))
                }
                Ok(None) => {
                    if self.content_length.is_some_and(|n| self.received < n) {
                        return Err(self.error(
                            Kind::Interrupted,
                            format!("connection closed after {}", self.progress()),
                        ));
                    }
                    return Ok(None);
                }
                Ok(Some(Err(e))) => {
                    return Err(self.error(
                        Kind::Interrupted,
                        format!("connection lost after {}: {}", self.progress(), chain(&e)),
                    ))
                }
                Ok(Some(Ok(f))) => f,
            };
            if let Ok(data) = frame.into_data() {
                if !data.is_empty() {
                    self.received += data.len() as u64;
                    self.window.1 += data.len() as u64;
                    return Ok(Some(data));
                }
            }
        }
    }

    /// The whole body as text, at most `limit` bytes (small objects: tokens, digests, regions).
    pub async fn text(mut self, limit: usize) -> Result<String, HttpError> {
        let mut out = Vec::new();
        while let Some(data) = self.chunk().await? {
            out.extend_from_slice(&data);
            if out.len() > limit {
                return Err(self.error(Kind::Invalid, format!("answer longer than {limit} bytes")));
            }
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn targets() {
        let t = Target::parse("https://s3.us-east-1.amazonaws.com/b/k.tar?x=1").unwrap();
        assert_eq!(
            t,
            Target {
                https: true,
                host: "s3.us-east-1.amazonaws.com".into(),
                port: 443,
                path: "/b/k.tar?x=1".into()
            }
        );
        assert_eq!(t.host_header(), "s3.us-east-1.amazonaws.com");
        let t = Target::parse("http://[fd00:ec2::254]").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("fd00:ec2::254", 80, "/")
        );
        assert_eq!(t.host_header(), "[fd00:ec2::254]");
        let t = Target::parse("http://127.0.0.1:8080/x").unwrap();
        assert_eq!(t.host_header(), "127.0.0.1:8080");
        assert!(Target::parse("ftp://x/y").is_err());
        assert!(Target::parse("https://u:p@x/y").is_err());
        assert!(Target::parse("/relative").is_err());
    }

    #[test]
    fn retry_classification() {
        let e = |kind| HttpError {
            method: "GET",
            url: "u".into(),
            kind,
            detail: String::new(),
            attempts: 1,
        };
        for k in [
            Kind::Connect,
            Kind::Timeout,
            Kind::Interrupted,
            Kind::Status(500),
            Kind::Status(503),
            Kind::Proxy(None),
            Kind::Proxy(Some(502)),
        ] {
            assert!(e(k).retryable(), "{k:?}");
        }
        for k in [
            Kind::Status(403),
            Kind::Status(404),
            Kind::Tls,
            Kind::Invalid,
            Kind::Proxy(Some(407)),
        ] {
            assert!(!e(k).retryable(), "{k:?}");
        }
    }

    /// What the loopback server does with a connection.
    #[derive(Clone)]
    enum Canned {
        /// Send, then close.
        Send(Vec<u8>),
        /// Send, then keep the connection open without sending more.
        SendAndHold(Vec<u8>),
        /// Send the head, then one byte of the body every 50 ms.
        Trickle(Vec<u8>),
    }

    /// A loopback HTTP server: each connection gets the next canned answer (the last repeats).
    fn server(answers: Vec<Canned>) -> (String, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut conn) = conn else { return };
                let n = h.fetch_add(1, Ordering::SeqCst);
                let answer = answers[n.min(answers.len() - 1)].clone();
                std::thread::spawn(move || {
                    let mut r = BufReader::new(conn.try_clone().unwrap());
                    let mut line = String::new();
                    while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                        line.clear();
                    }
                    match answer {
                        Canned::Send(a) => {
                            let _ = conn.write_all(&a);
                        }
                        Canned::SendAndHold(a) => {
                            let _ = conn.write_all(&a);
                            std::thread::sleep(Duration::from_secs(5));
                        }
                        Canned::Trickle(head) => {
                            let _ = conn.write_all(&head);
                            for _ in 0..200 {
                                std::thread::sleep(Duration::from_millis(50));
                                if conn.write_all(b"x").is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        (format!("http://{addr}"), hits)
    }

    fn client(read: Duration) -> Client {
        Client::new(
            Proxies::default(),
            TrustSettings::default(),
            Duration::from_secs(2),
            read,
        )
    }

    fn ok(body: &str) -> Canned {
        Canned::Send(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    }

    const FAST: Retry = Retry {
        attempts: 3,
        backoff: Duration::from_millis(20),
    };

    /// A loopback server that answers every request of a connection with `hello` (or, on
    /// `/big`, 4 MiB) and keeps the connection; with `one_each`, a connection's second request
    /// is read and then the connection closed without an answer, as when a server's idle
    /// timeout closes a kept connection just as the next request arrives. Counts connections
    /// and requests.
    fn keep_alive_server(one_each: bool) -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (conns, reqs) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (c, r) = (conns.clone(), reqs.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut conn) = conn else { return };
                c.fetch_add(1, Ordering::SeqCst);
                let r = r.clone();
                std::thread::spawn(move || {
                    let mut rd = BufReader::new(conn.try_clone().unwrap());
                    let mut served = 0;
                    loop {
                        let (mut line, mut head) = (String::new(), String::new());
                        while rd.read_line(&mut line).is_ok_and(|n| n > 2) {
                            head.push_str(&line);
                            line.clear();
                        }
                        if head.is_empty() {
                            return;
                        }
                        r.fetch_add(1, Ordering::SeqCst);
                        served += 1;
                        if served > 1 && one_each {
                            return;
                        }
                        let body = match head.starts_with("GET /big ") {
                            true => vec![b'x'; 4 << 20],
                            false => b"hello".to_vec(),
                        };
                        let a =
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                        if conn.write_all(a.as_bytes()).is_err() || conn.write_all(&body).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (format!("http://{addr}"), conns, reqs)
    }

    /// `GET <url>/x` on the kept connection, its body `hello` read to its end.
    async fn hello_to_its_end(c: &Client, slot: &mut Option<Conn>, url: &str) {
        let mut resp = c
            .request_on(slot, Method::GET, &format!("{url}/x"), &[])
            .await
            .unwrap();
        assert_eq!(resp.chunk().await.unwrap().as_deref(), Some(&b"hello"[..]));
        assert!(resp.chunk().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_kept_connection_carries_the_next_request_to_the_same_server() {
        let c = client(Duration::from_secs(2));
        let (url, conns, reqs) = keep_alive_server(false);
        let mut slot = None;
        for _ in 0..3 {
            hello_to_its_end(&c, &mut slot, &url).await;
        }
        assert_eq!(reqs.load(Ordering::SeqCst), 3);
        assert_eq!(
            conns.load(Ordering::SeqCst),
            1,
            "one connection for three requests"
        );
        // A response dropped before its end leaves the connection unusable: a new one.
        let resp = c
            .request_on(&mut slot, Method::GET, &format!("{url}/big"), &[])
            .await
            .unwrap();
        drop(resp);
        let text = c
            .request_on(&mut slot, Method::GET, &format!("{url}/x"), &[])
            .await
            .unwrap()
            .text(100)
            .await
            .unwrap();
        assert_eq!(text, "hello");
        assert_eq!(conns.load(Ordering::SeqCst), 2);
        // Another server: a connection of its own, not the kept one.
        let (other, other_conns, _) = keep_alive_server(false);
        c.request_on(&mut slot, Method::GET, &format!("{other}/y"), &[])
            .await
            .unwrap();
        assert_eq!(other_conns.load(Ordering::SeqCst), 1);
        assert_eq!(conns.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_kept_connection_the_server_closed_is_replaced_without_an_error() {
        let c = client(Duration::from_secs(2));
        let (url, conns, reqs) = keep_alive_server(true);
        let mut slot = None;
        for _ in 0..4 {
            hello_to_its_end(&c, &mut slot, &url).await;
        }
        // Each request after the first was sent on the kept connection, which closed, then
        // on a new one.
        assert_eq!(conns.load(Ordering::SeqCst), 4);
        assert_eq!(reqs.load(Ordering::SeqCst), 7);
    }

    #[tokio::test]
    async fn retries_5xx_and_truncation_then_succeeds() {
        let (url, hits) = server(vec![
            Canned::Send(b"HTTP/1.1 503 Slow Down\r\nContent-Length: 0\r\n\r\n".to_vec()),
            Canned::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec()),
            ok("abcdefghij"),
        ]);
        let (c, url) = (&client(Duration::from_secs(2)), &url);
        let body = with_retries(FAST, "GET", move || async move {
            c.get(&format!("{url}/x")).await?.text(100).await
        })
        .await
        .unwrap();
        assert_eq!(body, "abcdefghij");
        assert_eq!(hits.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn no_retry_on_4xx_and_the_error_names_url_and_status() {
        let (url, hits) = server(vec![Canned::Send(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
        )]);
        let (c, u) = (&client(Duration::from_secs(2)), &url);
        let err = with_retries(FAST, "GET", move || async move {
            c.get(&format!("{u}/k.tar")).await?.text(100).await
        })
        .await
        .unwrap_err();
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        assert_eq!(err.status(), Some(404));
        assert_eq!(
            err.to_string(),
            format!("GET {url}/k.tar: HTTP 404 Not Found")
        );
    }

    #[tokio::test]
    async fn stalls_time_out_clearly() {
        // Head, then part of the body, then nothing.
        let (url, _) = server(vec![Canned::SendAndHold(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789".to_vec(),
        )]);
        let c = client(Duration::from_millis(300));
        let mut resp = c.get(&url).await.unwrap();
        assert_eq!(resp.chunk().await.unwrap().unwrap().len(), 10);
        let err = resp.chunk().await.unwrap_err();
        assert_eq!(err.kind, Kind::Timeout);
        assert!(
            err.to_string()
                .contains("no data for 300ms after 10 of 100 bytes"),
            "{err}"
        );
        // No response head at all.
        let (url, _) = server(vec![Canned::SendAndHold(vec![])]);
        let err = c.get(&url).await.err().unwrap();
        assert_eq!(err.kind, Kind::Timeout);
        assert!(
            err.to_string().contains("no response within 300ms"),
            "{err}"
        );
    }

    /// A peer that sends a byte now and then never trips the read timeout; the minimum rate
    /// ends it, as a retryable timeout.
    #[tokio::test]
    async fn a_trickle_under_the_minimum_rate_fails() {
        let (url, _) = server(vec![Canned::Trickle(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec(),
        )]);
        let mut c = client(Duration::from_secs(2));
        c.min_rate = (1000, Duration::from_millis(300));
        let t0 = std::time::Instant::now();
        let err = c.get(&url).await.unwrap().text(2000).await.unwrap_err();
        assert_eq!(err.kind, Kind::Timeout, "{err}");
        assert!(err.retryable());
        assert!(
            err.to_string()
                .contains("slower than the minimum of 1000 bytes/s"),
            "{err}"
        );
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        // The same trickle passes a minimum it meets (20 bytes/s).
        let (url, _) = server(vec![Canned::Trickle(
            b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n".to_vec(),
        )]);
        c.min_rate = (5, Duration::from_millis(200));
        assert_eq!(
            c.get(&url).await.unwrap().text(100).await.unwrap().len(),
            12
        );
    }

    #[test]
    fn content_ranges() {
        assert_eq!(
            parse_content_range("bytes 0-99/1000"),
            Some((0, 99, Some(1000)))
        );
        assert_eq!(parse_content_range("bytes 5-5/*"), Some((5, 5, None)));
        for bad in [
            "bytes 9-5/10",
            "bytes 0-10/10",
            "items 0-1/2",
            "bytes 0-1",
            "bytes a-1/2",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn truncated_body_is_an_interruption() {
        let (url, _) = server(vec![Canned::Send(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort".to_vec(),
        )]);
        let err = client(Duration::from_secs(2))
            .get(&url)
            .await
            .unwrap()
            .text(1000)
            .await
            .unwrap_err();
        assert_eq!(err.kind, Kind::Interrupted, "{err}");
        assert!(err.to_string().contains("after 5 of 100 bytes"), "{err}");
    }

    #[tokio::test]
    async fn refused_connection_is_retryable_and_named() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let err = client(Duration::from_secs(1))
            .get(&format!("http://{addr}/x"))
            .await
            .err()
            .unwrap();
        assert_eq!(err.kind, Kind::Connect);
        assert!(err.retryable());
        assert!(
            err.to_string()
                .contains(&format!("cannot connect to server {addr}")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn plain_http_through_a_proxy_uses_the_absolute_form() {
        // The "proxy" records the request line and answers itself.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let seen = std::thread::spawn(move || {
            let (mut conn, _) = l.accept().unwrap();
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                if line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .unwrap();
            head
        });
        let mut c = client(Duration::from_secs(2));
        c.proxies.http = Some(ProxyUrl::parse(&format!("http://u:p@{addr}")).unwrap());
        let body = c
            .get("http://metadata.test/latest/x")
            .await
            .unwrap()
            .text(10)
            .await
            .unwrap();
        assert_eq!(body, "ok");
        let head = seen.join().unwrap();
        assert!(
            head.starts_with("GET http://metadata.test/latest/x HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("proxy-authorization: basic dtpw"),
            "{head}"
        );
    }
}
