//! Fake AWS endpoints for the agent download: the instance metadata service (plain HTTP), S3
//! (HTTPS, with a CA generated per server; path-style `/<bucket>/<key>`) and an HTTP forward
//! proxy (CONNECT tunnels and absolute-form requests), all on 127.0.0.1, scriptable per request
//! and recording every request they see.
//!
//! Loopback only. The launcher's `pre-start` runs in a network namespace of its own, so the
//! servers must listen in that namespace: [`Netns::run_in`] runs the start-up on a thread that
//! has joined it (`setns(2)` moves only the calling thread; the server threads it spawns inherit
//! its namespace, the rest of the test process stays where it was).
use md5::{Digest, Md5};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub const TOKEN_PATH: &str = "/latest/api/token";
pub const REGION_PATH: &str = "/latest/meta-data/placement/region";
/// A host name only the fake proxy can resolve (to the fake S3): a request that reaches S3 by
/// this name went through the proxy.
pub const PROXY_ONLY_HOST: &str = "s3.test";
/// Real S3 virtual-hosted names the proxy sends to the fake S3 (which has them in its
/// certificate and serves `/<key>` at such a name as `/<bucket>/<key>`): the partition, FIPS and
/// dual-stack host names are tested end to end without leaving loopback.
pub const VIRTUAL_HOSTS: &[&str] = &[
    "amazon-ecs-agent.s3.eusc-de-east-1.amazonaws.eu",
    "amazon-ecs-agent.s3-fips.dualstack.eusc-de-east-1.amazonaws.eu",
    "amazon-ecs-agent-us-west-2.s3-fips.us-west-2.amazonaws.com",
    "amazon-ecs-agent.s3.dualstack.us-east-1.amazonaws.com",
];

/// How the fake instance metadata service behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Imds {
    /// IMDSv2: `PUT` with the TTL header gets a token; `GET` of the region needs it.
    V2 { region: String },
    /// The token call is refused with `refuse`; `GET` answers without a token (IMDSv1).
    V1Only { refuse: u16, region: String },
}

/// A scripted answer of the fake S3 to one request of a path (see [`FakeAws::script`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// This status with an S3-style XML error body.
    Status(u16),
    /// The head with the object's full length, this many body bytes, then a close without TLS
    /// close_notify.
    Truncate(usize),
    /// This many body bytes, then a TCP reset.
    Reset(usize),
    /// The head and this many body bytes, then silence (until the server is dropped).
    Stall(usize),
    /// The whole object with chunked transfer encoding (no Content-Length).
    Chunked,
    /// A chunked body that never ends (pseudo-random bytes, as fast as the client reads).
    Endless,
    /// The head with the object's full length, then one body byte per second.
    Trickle,
    /// The range asked for (a 206, as a normal answer), cut off after this many body bytes
    /// without TLS close_notify: one part of a parallel download breaks.
    PartTruncate(usize),
}

/// One request as a fake server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `imds`, `s3` or `proxy`.
    pub server: &'static str,
    pub method: String,
    /// The request target (path, absolute URL, or `host:port` for CONNECT).
    pub target: String,
    pub headers: Vec<(String, String)>,
    /// Which connection to its server carried it (numbered from 1 in the order S3 accepted
    /// them; 0 on the other servers): S3 keeps a connection for the next request.
    pub conn: usize,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What becomes of an S3 connection after an answer.
enum After {
    /// Kept for the client's next request (a plain object answer, as S3 keeps it).
    Keep,
    /// Closed cleanly (close_notify, then the socket).
    Close,
    /// Already ended (or left hanging) by the answer itself.
    Done,
}

#[derive(Default)]
struct Shared {
    objects: Mutex<HashMap<String, Arc<Vec<u8>>>>,
    scripts: Mutex<HashMap<String, VecDeque<Answer>>>,
    seen: Mutex<Vec<Seen>>,
    tokens: Mutex<Vec<String>>,
    proxy_auth: Mutex<Option<String>>,
    shutdown: AtomicBool,
    token_count: AtomicUsize,
    /// Answer `Range` requests with the whole object (200), as servers without range support.
    ignore_range: AtomicBool,
    /// Bytes per second each S3 connection may send (0: no cap), like S3's per-stream rate.
    rate_cap: std::sync::atomic::AtomicU64,
    /// S3 connections accepted so far.
    s3_conns: AtomicUsize,
}

/// The three fake endpoints. Dropping it stops them.
pub struct FakeAws {
    /// `http://127.0.0.1:<port>` (for `AWS_EC2_METADATA_SERVICE_ENDPOINT`).
    pub imds_url: String,
    /// `https://127.0.0.1:<port>` (for `AWS_ENDPOINT_URL_S3`).
    pub s3_url: String,
    pub s3_port: u16,
    /// `127.0.0.1:<port>` of the proxy.
    pub proxy_addr: SocketAddr,
    /// The CA that signed the S3 certificate (for `SSL_CERT_FILE`).
    pub ca_pem: String,
    imds: Arc<Mutex<Imds>>,
    shared: Arc<Shared>,
}

/// The lowercase hex MD5 of `data` (what a `.md5` object holds).
pub fn md5_hex(data: &[u8]) -> String {
    Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Bytes that do not compress (a stand-in for a large object), deterministic per `seed`.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A fresh self-signed CA certificate, PEM (for trust-store tests).
pub fn test_ca_pem(name: &str) -> String {
    let key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, name);
    ca.self_signed(&key).expect("CA certificate").pem()
}

fn tls_config() -> (Arc<rustls::ServerConfig>, String) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "ecs-init test CA");
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let leaf_key = rcgen::KeyPair::generate().expect("server key");
    let mut names = vec![
        "127.0.0.1".to_string(),
        "localhost".to_string(),
        PROXY_ONLY_HOST.to_string(),
    ];
    names.extend(VIRTUAL_HOSTS.iter().map(|h| h.to_string()));
    let mut leaf = rcgen::CertificateParams::new(names).expect("server params");
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "fake s3");
    let leaf_cert = leaf
        .signed_by(&leaf_key, &issuer)
        .expect("server certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![
                CertificateDer::from(leaf_cert.der().to_vec()),
                CertificateDer::from(ca_cert.der().to_vec()),
            ],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .expect("server TLS config");
    (Arc::new(config), ca_cert.pem())
}

/// Read a request head (up to the blank line) byte by byte.
fn read_head(r: &mut impl Read) -> io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if r.read(&mut byte)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
        if head.len() > 64 * 1024 {
            return Err(io::Error::other("request head too long"));
        }
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

fn parse_head(server: &'static str, head: &str) -> Seen {
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split_whitespace();
    let method = first.next().unwrap_or("").to_string();
    let target = first.next().unwrap_or("").to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Seen {
        server,
        method,
        target,
        headers,
        conn: 0,
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn simple(code: u16, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {code} {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        reason(code),
        body.len()
    )
    .into_bytes()
}

/// Set SO_LINGER to 0 so that closing sends a reset.
fn linger_zero(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own with a correctly sized value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Accept connections until shutdown, each on its own thread.
fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    handle: impl Fn(TcpStream) + Send + Sync + 'static,
) {
    listener.set_nonblocking(true).expect("nonblocking");
    let handle = Arc::new(handle);
    thread::spawn(move || {
        while !shared.shutdown.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let h = handle.clone();
                    thread::spawn(move || h(s));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(5))
                }
                Err(_) => thread::sleep(Duration::from_millis(5)),
            }
        }
    });
}

/// Copy both ways until either side closes.
fn pipe(a: TcpStream, b: TcpStream) {
    let (mut a2, mut b2) = (a.try_clone().expect("clone"), b.try_clone().expect("clone"));
    let (mut a, mut b) = (a, b);
    let t = thread::spawn(move || {
        let _ = io::copy(&mut a2, &mut b2);
        let _ = b2.shutdown(Shutdown::Write);
    });
    let _ = io::copy(&mut b, &mut a);
    let _ = a.shutdown(Shutdown::Write);
    let _ = t.join();
}

impl FakeAws {
    /// Start the three servers on 127.0.0.1 in the calling thread's network namespace.
    pub fn start(imds: Imds) -> FakeAws {
        let shared = Arc::new(Shared::default());
        let imds = Arc::new(Mutex::new(imds));
        let bind = || TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let (imds_l, s3_l, proxy_l) = (bind(), bind(), bind());
        let imds_addr = imds_l.local_addr().unwrap();
        let s3_addr = s3_l.local_addr().unwrap();
        let proxy_addr = proxy_l.local_addr().unwrap();
        let (tls, ca_pem) = tls_config();

        let (sh, im) = (shared.clone(), imds.clone());
        serve(imds_l, shared.clone(), move |s| {
            let _ = Self::imds_conn(&sh, &im, s);
        });
        let sh = shared.clone();
        serve(s3_l, shared.clone(), move |s| {
            let _ = Self::s3_conn(&sh, tls.clone(), s);
        });
        let sh = shared.clone();
        serve(proxy_l, shared.clone(), move |s| {
            let _ = Self::proxy_conn(&sh, s3_addr, s);
        });
        FakeAws {
            imds_url: format!("http://{imds_addr}"),
            s3_url: format!("https://{s3_addr}"),
            s3_port: s3_addr.port(),
            proxy_addr,
            ca_pem,
            imds,
            shared,
        }
    }

    /// Start the servers inside `netns`.
    pub fn start_in(netns: &Netns, imds: Imds) -> FakeAws {
        netns.run_in(move || FakeAws::start(imds))
    }

    /// Serve `body` at `/<bucket>/<key>`.
    pub fn put(&self, bucket: &str, key: &str, body: Vec<u8>) {
        self.shared
            .objects
            .lock()
            .unwrap()
            .insert(format!("/{bucket}/{key}"), Arc::new(body));
    }

    /// Serve an agent tarball and its `.md5` in `bucket`.
    pub fn put_agent(&self, bucket: &str, object: &str, tarball: Vec<u8>) {
        let md5 = format!("{}\n", md5_hex(&tarball));
        self.put(bucket, object, tarball);
        self.put(bucket, &format!("{object}.md5"), md5.into_bytes());
    }

    /// Answer the next requests of `/<bucket>/<key>` with `answers`, in order, before serving
    /// normally again.
    pub fn script(&self, bucket: &str, key: &str, answers: Vec<Answer>) {
        self.shared
            .scripts
            .lock()
            .unwrap()
            .entry(format!("/{bucket}/{key}"))
            .or_default()
            .extend(answers);
    }

    /// Answer `Range` requests with the whole object (200 OK), as a server without range
    /// support does.
    pub fn ignore_range(&self, on: bool) {
        self.shared.ignore_range.store(on, Ordering::SeqCst);
    }

    /// Cap each S3 connection at `bytes_per_second` (0: no cap).
    pub fn cap_rate(&self, bytes_per_second: u64) {
        self.shared
            .rate_cap
            .store(bytes_per_second, Ordering::SeqCst);
    }

    /// Make the proxy demand this `Proxy-Authorization` value (407 otherwise).
    pub fn require_proxy_auth(&self, value: &str) {
        *self.shared.proxy_auth.lock().unwrap() = Some(value.to_string());
    }

    pub fn set_imds(&self, imds: Imds) {
        *self.imds.lock().unwrap() = imds;
    }

    /// Every request seen so far, in order.
    pub fn requests(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// The requests one server saw.
    pub fn requests_to(&self, server: &str) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|r| r.server == server)
            .collect()
    }

    /// How many times S3 saw `GET /<bucket>/<key>`.
    pub fn gets(&self, bucket: &str, key: &str) -> usize {
        let path = format!("/{bucket}/{key}");
        self.requests_to("s3")
            .iter()
            .filter(|r| r.method == "GET" && r.target == path)
            .count()
    }

    fn record(shared: &Shared, seen: Seen) -> Seen {
        shared.seen.lock().unwrap().push(seen.clone());
        seen
    }

    fn imds_conn(shared: &Shared, imds: &Mutex<Imds>, mut s: TcpStream) -> io::Result<()> {
        let req = Self::record(shared, parse_head("imds", &read_head(&mut s)?));
        let mode = imds.lock().unwrap().clone();
        let answer = match (req.method.as_str(), req.target.as_str(), &mode) {
            ("PUT", TOKEN_PATH, Imds::V2 { .. }) => {
                if req.header("x-aws-ec2-metadata-token-ttl-seconds").is_none() {
                    simple(400, "missing TTL header")
                } else {
                    let n = shared.token_count.fetch_add(1, Ordering::SeqCst);
                    let token = format!("AQAEfake-token-{n}==");
                    shared.tokens.lock().unwrap().push(token.clone());
                    simple(200, &token)
                }
            }
            ("PUT", TOKEN_PATH, Imds::V1Only { refuse, .. }) => simple(*refuse, ""),
            ("GET", REGION_PATH, Imds::V2 { region }) => {
                let ok = req
                    .header("x-aws-ec2-metadata-token")
                    .is_some_and(|t| shared.tokens.lock().unwrap().iter().any(|x| x == t));
                if ok {
                    simple(200, region)
                } else {
                    simple(401, "")
                }
            }
            ("GET", REGION_PATH, Imds::V1Only { region, .. }) => simple(200, region),
            _ => simple(404, ""),
        };
        s.write_all(&answer)?;
        s.flush()
    }

    fn s3_conn(shared: &Shared, tls: Arc<rustls::ServerConfig>, s: TcpStream) -> io::Result<()> {
        let raw = s.try_clone()?;
        raw.set_read_timeout(Some(Duration::from_secs(30)))?;
        // A kept connection's next answer must not wait (Nagle) for the ACK of the last one's
        // final bytes, which the client delays (~40 ms): servers that keep connections set this.
        raw.set_nodelay(true)?;
        let conn = rustls::ServerConnection::new(tls).map_err(io::Error::other)?;
        let mut tls = rustls::StreamOwned::new(conn, s);
        // A plain answer (the object, whole or a range) keeps the connection for the next
        // request, as S3 does; every scripted answer and error closes it.
        let mut served = 0;
        let conn_no = shared.s3_conns.fetch_add(1, Ordering::SeqCst) + 1;
        loop {
            let head = match read_head(&mut tls) {
                Ok(head) => head,
                // The client closed (or left) a kept connection.
                Err(_) if served > 0 => return Ok(()),
                Err(e) => return Err(e),
            };
            served += 1;
            let mut req = parse_head("s3", &head);
            req.conn = conn_no;
            let req = Self::record(shared, req);
            match Self::s3_answer(shared, &mut tls, &raw, &req)? {
                After::Keep => {}
                After::Done => return Ok(()),
                After::Close => {
                    tls.flush()?;
                    tls.conn.send_close_notify();
                    tls.flush()?;
                    let _ = raw.shutdown(Shutdown::Write);
                    // Let the client read to the end before the socket closes.
                    let _ = tls.sock.read(&mut [0u8; 16]);
                    return Ok(());
                }
            }
        }
    }

    /// Answer one S3 request; what then becomes of the connection.
    fn s3_answer(
        shared: &Shared,
        tls: &mut rustls::StreamOwned<rustls::ServerConnection, TcpStream>,
        raw: &TcpStream,
        req: &Seen,
    ) -> io::Result<After> {
        let mut path = req.target.split('?').next().unwrap_or("").to_string();
        // A virtual-hosted name (`<bucket>.s3….`): the bucket is in the host.
        let host = req.header("host").unwrap_or("").to_string();
        if let Some(name) = VIRTUAL_HOSTS
            .iter()
            .find(|h| host.split(':').next() == Some(h))
        {
            let bucket = name.split(".s3").next().unwrap_or("");
            path = format!("/{bucket}{path}");
        }
        let answer = shared
            .scripts
            .lock()
            .unwrap()
            .get_mut(&path)
            .and_then(|q| q.pop_front());
        let object = shared.objects.lock().unwrap().get(&path).cloned();
        let not_found = || {
            simple(
            404,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message></Error>",
        )
        };
        // `Connection: close` on every answer but a plain object's (which keeps the connection).
        let connection = |keep: bool| if keep { "" } else { "Connection: close\r\n" };
        let head_200 = |len: usize, keep: bool| {
            format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\nETag: \"fake\"\r\n{}\r\n",
            connection(keep)
        )
        };
        let full_head = |len: usize| head_200(len, false);
        let cap = shared.rate_cap.load(Ordering::SeqCst);
        let write_body = |tls: &mut rustls::StreamOwned<rustls::ServerConnection, TcpStream>,
                          body: &[u8]|
         -> io::Result<()> {
            // At most `cap` bytes per second: each piece waits for its share of the time.
            let started = Instant::now();
            let mut sent = 0u64;
            let piece_len = if cap > 0 { 16 * 1024 } else { 64 * 1024 };
            for piece in body.chunks(piece_len) {
                if cap > 0 {
                    let due = Duration::from_secs_f64(sent as f64 / cap as f64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        thread::sleep(wait);
                    }
                }
                tls.write_all(piece)?;
                sent += piece.len() as u64;
            }
            tls.flush()
        };
        // `Range: bytes=<first>-[<last>]` (one range, as the launcher asks).
        let range = |len: usize| -> Option<(usize, usize)> {
            if shared.ignore_range.load(Ordering::SeqCst) || len == 0 {
                return None;
            }
            let spec = req.header("range")?.strip_prefix("bytes=")?;
            let (first, last) = spec.split_once('-')?;
            let first: usize = first.trim().parse().ok()?;
            let last = match last.trim() {
                "" => len - 1,
                l => l.parse::<usize>().ok()?.min(len - 1),
            };
            (first <= last).then_some((first, last))
        };
        let head_206 = |first: usize, last: usize, len: usize, keep: bool| {
            format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {first}-{last}/{len}\r\nContent-Type: application/octet-stream\r\nETag: \"fake\"\r\n{}\r\n",
            last - first + 1,
            connection(keep)
        )
        };
        match (answer, object) {
            (Some(Answer::Status(code)), _) => {
                tls.write_all(&simple(
                    code,
                    &format!("<Error><Code>Scripted{code}</Code></Error>"),
                ))?;
            }
            (_, None) => tls.write_all(&not_found())?,
            (None, Some(obj)) => {
                match range(obj.len()) {
                    Some((first, last)) => {
                        tls.write_all(head_206(first, last, obj.len(), true).as_bytes())?;
                        write_body(tls, &obj[first..=last])?;
                    }
                    None => {
                        tls.write_all(head_200(obj.len(), true).as_bytes())?;
                        write_body(tls, &obj)?;
                    }
                }
                return Ok(After::Keep);
            }
            (Some(Answer::PartTruncate(n)), Some(obj)) => {
                let (first, last) = range(obj.len()).unwrap_or((0, obj.len() - 1));
                tls.write_all(head_206(first, last, obj.len(), false).as_bytes())?;
                write_body(tls, &obj[first..=(first + n).min(last)])?;
                return raw.shutdown(Shutdown::Both).map(|()| After::Done);
            }
            (Some(Answer::Endless), Some(_)) => {
                tls.write_all(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
                )?;
                let piece = pseudo_random(64 * 1024, 7);
                while !shared.shutdown.load(Ordering::SeqCst) {
                    tls.write_all(format!("{:x}\r\n", piece.len()).as_bytes())?;
                    tls.write_all(&piece)?;
                    tls.write_all(b"\r\n")?;
                }
                return Ok(After::Done);
            }
            (Some(Answer::Trickle), Some(obj)) => {
                tls.write_all(full_head(obj.len()).as_bytes())?;
                tls.flush()?;
                for byte in obj.iter() {
                    if shared.shutdown.load(Ordering::SeqCst) {
                        break;
                    }
                    thread::sleep(Duration::from_secs(1));
                    tls.write_all(&[*byte])?;
                    tls.flush()?;
                }
                return Ok(After::Done);
            }
            (Some(Answer::Chunked), Some(obj)) => {
                tls.write_all(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
                )?;
                for piece in obj.chunks(64 * 1024) {
                    tls.write_all(format!("{:x}\r\n", piece.len()).as_bytes())?;
                    tls.write_all(piece)?;
                    tls.write_all(b"\r\n")?;
                }
                tls.write_all(b"0\r\n\r\n")?;
            }
            (Some(Answer::Truncate(n)), Some(obj)) => {
                tls.write_all(full_head(obj.len()).as_bytes())?;
                write_body(tls, &obj[..n.min(obj.len())])?;
                // No close_notify: the client sees the connection end mid-body.
                return raw.shutdown(Shutdown::Both).map(|()| After::Done);
            }
            (Some(Answer::Reset(n)), Some(obj)) => {
                tls.write_all(full_head(obj.len()).as_bytes())?;
                write_body(tls, &obj[..n.min(obj.len())])?;
                thread::sleep(Duration::from_millis(50));
                linger_zero(raw);
                return Ok(After::Done);
            }
            (Some(Answer::Stall(n)), Some(obj)) => {
                tls.write_all(full_head(obj.len()).as_bytes())?;
                write_body(tls, &obj[..n.min(obj.len())])?;
                let until = Instant::now() + Duration::from_secs(120);
                while !shared.shutdown.load(Ordering::SeqCst) && Instant::now() < until {
                    thread::sleep(Duration::from_millis(20));
                }
                return Ok(After::Done);
            }
        }
        Ok(After::Close)
    }

    fn proxy_conn(shared: &Shared, s3: SocketAddr, mut s: TcpStream) -> io::Result<()> {
        let head = read_head(&mut s)?;
        let req = Self::record(shared, parse_head("proxy", &head));
        let wanted = shared.proxy_auth.lock().unwrap().clone();
        if wanted.is_some() && req.header("proxy-authorization") != wanted.as_deref() {
            return s.write_all(&simple(407, ""));
        }
        // Where to: CONNECT host:port, or the authority of an absolute-form URL.
        let authority = if req.method == "CONNECT" {
            req.target.clone()
        } else {
            let rest = req
                .target
                .strip_prefix("http://")
                .ok_or_else(|| io::Error::other("not an absolute http:// URL"))?;
            rest.split('/').next().unwrap_or("").to_string()
        };
        let (host, port) = authority
            .rsplit_once(':')
            .map(|(h, p)| (h.to_string(), p.parse::<u16>().unwrap_or(80)))
            .unwrap_or((authority.clone(), 80));
        let addr: SocketAddr = match host.as_str() {
            PROXY_ONLY_HOST => SocketAddr::new(s3.ip(), port),
            h if VIRTUAL_HOSTS.contains(&h) => s3,
            h => match format!("{h}:{port}").parse() {
                Ok(a) => a,
                Err(_) => return s.write_all(&simple(502, "unknown host")),
            },
        };
        let upstream = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(u) => u,
            Err(_) => return s.write_all(&simple(502, "cannot connect")),
        };
        if req.method == "CONNECT" {
            s.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
        } else {
            // Forward with the origin form.
            let path = req.target["http://".len() + authority.len()..].to_string();
            let path = if path.is_empty() { "/".into() } else { path };
            let rewritten = head.replacen(&req.target, &path, 1);
            (&upstream).write_all(rewritten.as_bytes())?;
        }
        pipe(s, upstream);
        Ok(())
    }
}

impl Drop for FakeAws {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
    }
}

/// A named network namespace with `lo` up, removed on drop.
pub struct Netns {
    name: String,
}

impl Default for Netns {
    fn default() -> Self {
        Self::new()
    }
}

impl Netns {
    pub fn new() -> Netns {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "ecs-dl-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let run = |args: &[&str]| {
            let st = Command::new("ip")
                .args(args)
                .status()
                .unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
            assert!(st.success(), "ip {args:?}: {st}");
        };
        run(&["netns", "add", &name]);
        let ns = Netns { name };
        run(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `program` run inside the namespace (`nsenter --net=…`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        c
    }

    /// Run `f` on a new thread that has joined the namespace; threads `f` spawns stay in it.
    pub fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        thread::spawn(move || {
            let ns = File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
            // SAFETY: setns(2) with a namespace fd we own; affects this thread only.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", io::Error::last_os_error());
            f()
        })
        .join()
        .expect("netns thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
