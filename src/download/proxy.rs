//! Proxy selection with the Go tool's rules (Go's `net/http.ProxyFromEnvironment`), from explicit
//! settings: the caller reads `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`, this module never reads the
//! environment.
//!
//! * `https://` requests use the HTTPS proxy, `http://` requests (the instance metadata service)
//!   the HTTP proxy; there is no fallback from one to the other.
//! * `localhost` and loopback addresses are never proxied.
//! * `NO_PROXY`: comma-separated; `*` disables proxying; `1.2.3.4`, `1.2.3.0/24`, `[::1]`,
//!   `fd00::/8`; `example.com` matches it and its subdomains, `.example.com` and `*.example.com`
//!   only the subdomains; any entry may end in `:port` to match that port only.
//! * A proxy value without `scheme://` means `http://`; the default port is 80.
use base64::Engine as _;
use std::fmt;
use std::net::IpAddr;

/// A forward proxy: `http://[user[:password]@]host[:port]`.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    pub host: String,
    pub port: u16,
    /// `Basic …` for `Proxy-Authorization`, when the URL has credentials.
    pub authorization: Option<String>,
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// Credentials are never shown (logs, `plan`, errors).
impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let creds = if self.authorization.is_some() {
            "<credentials>@"
        } else {
            ""
        };
        write!(f, "http://{creds}{}:{}", bracket(&self.host), self.port)
    }
}

/// `host` as it appears in an authority (`[v6]`).
pub fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Split `host[:port]` / `[v6][:port]`; the port is `None` when absent.
pub fn split_host_port(authority: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("unclosed '[' in {authority:?}"))?;
        match after {
            "" => (h, None),
            p => (
                h,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("junk after ']' in {authority:?}"))?,
                ),
            ),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            Some(_) => return Err(format!("IPv6 address without brackets in {authority:?}")),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("no host in {authority:?}"));
    }
    let port = match port {
        None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .map_err(|_| format!("bad port {p:?} in {authority:?}"))?,
        ),
    };
    Ok((host.to_string(), port))
}

impl ProxyUrl {
    /// Parse a proxy setting the way Go does (a value without `scheme://` is `http://…`).
    /// Only `http` proxies are supported (the CONNECT tunnel then carries TLS end to end).
    pub fn parse(value: &str) -> Result<ProxyUrl, String> {
        let value = value.trim();
        let (scheme, rest) = match value.split_once("://") {
            Some((s, r)) => (s.to_ascii_lowercase(), r),
            None => ("http".to_string(), value),
        };
        if scheme != "http" {
            return Err(format!(
                "proxy scheme {scheme}:// is not supported (use an http:// proxy; HTTPS requests are tunnelled through it with CONNECT)"
            ));
        }
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (host, port) = split_host_port(hostport)?;
        let authorization = userinfo.map(|u| {
            let (user, pass) = u.split_once(':').unwrap_or((u, ""));
            let plain = format!("{}:{}", percent_decode(user), percent_decode(pass));
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(plain)
            )
        });
        Ok(ProxyUrl {
            host,
            port: port.unwrap_or(80),
            authorization,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Cidr(IpAddr, u8),
    Ip(IpAddr, Option<u16>),
    /// `.suffix`; `exact` also matches the suffix without its dot.
    Domain {
        suffix: String,
        exact: bool,
        port: Option<u16>,
    },
}

/// A parsed `NO_PROXY`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoProxy {
    all: bool,
    entries: Vec<Entry>,
}

fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, bits) = s.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let bits: u8 = bits.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (bits <= max).then_some((ip, bits))
}

fn in_cidr(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
        let (full, rest) = ((bits / 8) as usize, bits % 8);
        if a[..full] != b[..full] {
            return false;
        }
        rest == 0 || (a[full] ^ b[full]) >> (8 - rest) == 0
    }
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => prefix_eq(&a.octets(), &b.octets(), bits),
        (IpAddr::V6(a), IpAddr::V6(b)) => prefix_eq(&a.octets(), &b.octets(), bits),
        _ => false,
    }
}

impl NoProxy {
    pub fn parse(value: &str) -> NoProxy {
        let mut np = NoProxy::default();
        for raw in value.split(',') {
            let p = raw.trim().to_ascii_lowercase();
            if p.is_empty() {
                continue;
            }
            if p == "*" {
                return NoProxy {
                    all: true,
                    entries: vec![],
                };
            }
            if let Some((ip, bits)) = parse_cidr(&p) {
                np.entries.push(Entry::Cidr(ip, bits));
                continue;
            }
            let (host, port) = match split_host_port(&p) {
                Ok((h, port)) => (h, port),
                // Not host:port (e.g. a bare IPv6 address): the whole entry is the host.
                Err(_) => (p.clone(), None),
            };
            if let Ok(ip) = host.parse::<IpAddr>() {
                np.entries.push(Entry::Ip(ip, port));
                continue;
            }
            let host = host.strip_prefix('*').unwrap_or(&host);
            let (suffix, exact) = match host.strip_prefix('.') {
                Some(_) => (host.to_string(), false),
                None => (format!(".{host}"), true),
            };
            if suffix.len() > 1 {
                np.entries.push(Entry::Domain {
                    suffix,
                    exact,
                    port,
                });
            }
        }
        np
    }

    /// Whether `host:port` must be reached directly (Go's `useProxy` negated).
    pub fn bypass(&self, host: &str, port: u16) -> bool {
        let host = host
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let ip = host.parse::<IpAddr>().ok();
        if host == "localhost" || ip.is_some_and(|ip| ip.is_loopback()) {
            return true;
        }
        if self.all {
            return true;
        }
        let port_ok = |p: &Option<u16>| p.is_none_or(|p| p == port);
        self.entries.iter().any(|e| match e {
            Entry::Cidr(net, bits) => ip.is_some_and(|ip| in_cidr(ip, *net, *bits)),
            Entry::Ip(a, p) => ip == Some(*a) && port_ok(p),
            Entry::Domain {
                suffix,
                exact,
                port: p,
            } => (host.ends_with(suffix.as_str()) || (*exact && host == suffix[1..])) && port_ok(p),
        })
    }
}

/// The proxies for this run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Proxies {
    pub http: Option<ProxyUrl>,
    pub https: Option<ProxyUrl>,
    pub no_proxy: NoProxy,
}

impl Proxies {
    /// The proxy for a request, if any.
    pub fn for_target(&self, https: bool, host: &str, port: u16) -> Option<&ProxyUrl> {
        let proxy = if https {
            self.https.as_ref()
        } else {
            self.http.as_ref()
        }?;
        (!self.no_proxy.bypass(host, port)).then_some(proxy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls_like_go() {
        let p = ProxyUrl::parse("proxy.corp:3128").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("proxy.corp", 3128));
        assert_eq!(p.authorization, None);
        let p = ProxyUrl::parse("http://proxy.corp").unwrap();
        assert_eq!(p.port, 80, "Go's default for http:// proxies");
        let p = ProxyUrl::parse("HTTP://us%40r:p%3Ass@[fd00::1]:8080/").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("fd00::1", 8080));
        // base64("us@r:p:ss")
        assert_eq!(p.authorization.as_deref(), Some("Basic dXNAcjpwOnNz"));
        assert_eq!(p.to_string(), "http://<credentials>@[fd00::1]:8080");
        assert!(!format!("{p:?}").contains("dXN"), "Debug hides credentials");
        let err = ProxyUrl::parse("socks5://127.0.0.1:1080").unwrap_err();
        assert!(err.contains("socks5"), "{err}");
        assert!(ProxyUrl::parse("http://:80").is_err());
        assert!(ProxyUrl::parse("http://h:99999").is_err());
    }

    #[test]
    fn no_proxy_rules_like_go() {
        let np = NoProxy::parse(
            " 169.254.169.254, 169.254.170.2 ,10.0.0.0/8, Example.COM, .only-sub.org, *.star.net, port.io:8443, [fd00::1]:443, fe80::/10",
        );
        let b = |h: &str, p: u16| np.bypass(h, p);
        assert!(b("169.254.169.254", 80));
        assert!(b("169.254.170.2", 80));
        assert!(!b("169.254.169.253", 80));
        assert!(b("10.1.2.3", 443) && !b("11.1.2.3", 443));
        assert!(b("example.com", 443) && b("s3.EXAMPLE.com", 443));
        assert!(!b("notexample.com", 443), "suffix must start at a dot");
        assert!(b("a.only-sub.org", 443) && !b("only-sub.org", 443));
        assert!(b("x.star.net", 443) && !b("star.net", 443));
        assert!(b("port.io", 8443) && !b("port.io", 443));
        assert!(b("[fd00::1]", 443) && !b("fd00::1", 80));
        assert!(b("fe80::1234", 443));
        // Loopback is never proxied, whatever NO_PROXY says.
        let empty = NoProxy::parse("");
        assert!(empty.bypass("localhost", 80) && empty.bypass("127.0.0.1", 443));
        assert!(empty.bypass("[::1]", 443));
        assert!(!empty.bypass("s3.amazonaws.com", 443));
        assert!(NoProxy::parse("a.com,*").bypass("anything.org", 443));
    }

    #[test]
    fn scheme_picks_the_proxy() {
        let proxies = Proxies {
            http: Some(ProxyUrl::parse("http://h:1").unwrap()),
            https: Some(ProxyUrl::parse("http://s:2").unwrap()),
            no_proxy: NoProxy::parse("169.254.169.254"),
        };
        assert_eq!(
            proxies
                .for_target(true, "s3.amazonaws.com", 443)
                .unwrap()
                .host,
            "s"
        );
        assert_eq!(
            proxies.for_target(false, "example.com", 80).unwrap().host,
            "h"
        );
        assert!(proxies.for_target(false, "169.254.169.254", 80).is_none());
        let only_http = Proxies {
            https: None,
            ..proxies
        };
        assert!(
            only_http
                .for_target(true, "s3.amazonaws.com", 443)
                .is_none(),
            "HTTPS requests never fall back to HTTP_PROXY"
        );
    }

    #[test]
    fn cidr_math() {
        let n = |s| parse_cidr(s).unwrap();
        let (net, bits) = n("192.168.0.0/17");
        assert!(in_cidr("192.168.127.255".parse().unwrap(), net, bits));
        assert!(!in_cidr("192.168.128.0".parse().unwrap(), net, bits));
        let (net, bits) = n("0.0.0.0/0");
        assert!(in_cidr("8.8.8.8".parse().unwrap(), net, bits));
        assert!(parse_cidr("1.2.3.4/33").is_none());
        let (net, bits) = n("fd00::/8");
        assert!(!in_cidr("1.2.3.4".parse().unwrap(), net, bits));
    }
}
