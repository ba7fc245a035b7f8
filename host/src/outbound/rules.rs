//! Destinations: what a manifest declares and an operator grants (`scheme://host[:port]
//! /path-prefix` and methods), the target of one request, and whether one admits the
//! other.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn parse(text: &str) -> Option<Scheme> {
        match text.to_ascii_lowercase().as_str() {
            "http" => Some(Scheme::Http),
            "https" => Some(Scheme::Https),
            _ => None,
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// A host as requests name it: a DNS name (lowercase, without a trailing dot) or an IP
/// address literal (only in its canonical spelling: see [`Host::parse`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Name(String),
    Ip(IpAddr),
}

impl Host {
    /// Reads a host as it appears in a URL's authority. IPv4 literals are accepted only
    /// as four dotted decimal numbers without leading zeros: `2130706433`, `0x7f.1` and
    /// `0177.0.0.1` (which resolvers and browsers read as 127.0.0.1) are refused, as
    /// are names whose last label is numeric, the WHATWG URL rule for "this is an
    /// IPv4 address". IPv6 literals are in brackets.
    pub fn parse(text: &str) -> Result<Host, String> {
        if let Some(inner) = text.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or_else(|| format!("`{text}`: an unclosed `[`"))?;
            // A zone (`%eth0`) names an interface of this machine: never a destination.
            return inner
                .parse::<Ipv6Addr>()
                .map(|ip| Host::Ip(IpAddr::V6(ip)))
                .map_err(|_| format!("`{text}` is not an IPv6 address"));
        }
        let name = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
        if name.is_empty() {
            return Err("the host is empty".into());
        }
        if let Ok(ip) = name.parse::<Ipv4Addr>() {
            return Ok(Host::Ip(IpAddr::V4(ip)));
        }
        let last = name.rsplit('.').next().unwrap_or_default();
        let numeric = last.bytes().all(|b| b.is_ascii_digit())
            || last.strip_prefix("0x").is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()));
        if numeric {
            return Err(format!(
                "`{text}` reads as an IP address in a non-canonical spelling (decimal, octal or hex): \
                 write IPv4 addresses as four decimal numbers, e.g. 127.0.0.1"
            ));
        }
        let plain = name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
        if !plain || name.len() > 253 {
            return Err(format!("`{text}` is not a host name"));
        }
        Ok(Host::Name(name))
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
        }
    }
}

/// Where one request goes: scheme, host, port and path (without its query).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub scheme: Scheme,
    pub host: Host,
    pub port: u16,
    pub path: String,
}

impl Target {
    /// The target of a request URI as a plugin built it (`scheme://authority/path?query`).
    /// Paths that could mean two things to two parsers are refused: dot segments
    /// (`/v1/../admin`), encoded slashes, dots and backslashes, backslashes.
    pub fn of(uri: &http::Uri) -> Result<Target, String> {
        let scheme =
            uri.scheme_str().and_then(Scheme::parse).ok_or("the URL's scheme must be http or https")?;
        let authority = uri.authority().ok_or("the URL has no host")?;
        if authority.as_str().contains('@') {
            return Err("the URL carries a user name or password: pass credentials in a header".into());
        }
        let host = Host::parse(authority.host())?;
        let port = authority.port_u16().unwrap_or(scheme.default_port());
        let path = if uri.path().is_empty() { "/" } else { uri.path() };
        check_path(path)?;
        Ok(Target { scheme, host, port, path: path.to_owned() })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.host)?;
        if self.port != self.scheme.default_port() {
            write!(f, ":{}", self.port)?;
        }
        f.write_str(&self.path)
    }
}

fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("the path `{path}` does not start with `/`"));
    }
    let lower = path.to_ascii_lowercase();
    for encoded in ["%2f", "%5c", "%2e"] {
        if lower.contains(encoded) {
            return Err(format!("the path `{path}` has an encoded `/`, `\\` or `.` ({encoded})"));
        }
    }
    if path.contains('\\') {
        return Err(format!("the path `{path}` has a backslash"));
    }
    if path.split('/').any(|segment| segment == "." || segment == "..") {
        return Err(format!("the path `{path}` has a `.` or `..` segment"));
    }
    Ok(())
}

/// A destination: requests to one scheme, host (or `*.` and a domain, for its
/// subdomains) and port, under one path prefix, with some methods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// As written, for people.
    pub url: String,
    /// Upper case; empty admits every method.
    pub methods: Vec<String>,
    scheme: Scheme,
    host: HostPattern,
    /// `None` for `:*`, any port.
    port: Option<u16>,
    /// Without its trailing `/`: `/v1` admits `/v1` and `/v1/…`; empty admits all.
    prefix: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(Host),
    /// `*.example.com`: any name ending in `.example.com`.
    Subdomains(String),
}

impl Destination {
    /// Reads `scheme://host[:port][/prefix]` and a list of methods. The port may be `*`
    /// (any port: for a manifest whose destination's port the operator chooses; the
    /// grant names it).
    pub fn parse(url: &str, methods: &[String]) -> Result<Destination, String> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("`{url}`: no `scheme://`"))?;
        let scheme =
            Scheme::parse(scheme).ok_or_else(|| format!("`{url}`: the scheme must be http or https"))?;
        let (authority, prefix) = match rest.find('/') {
            Some(at) => rest.split_at(at),
            None => (rest, "/"),
        };
        if prefix.contains(['?', '#']) {
            return Err(format!("`{url}`: a destination is a path prefix, without a query or fragment"));
        }
        check_path(prefix).map_err(|e| format!("`{url}`: {e}"))?;
        if authority.contains('@') {
            return Err(format!("`{url}`: no user name or password in a destination"));
        }
        let (host, port) = split_port(authority).map_err(|e| format!("`{url}`: {e}"))?;
        let host = match host.strip_prefix("*.") {
            Some(domain) => match Host::parse(domain).map_err(|e| format!("`{url}`: {e}"))? {
                Host::Name(domain) => HostPattern::Subdomains(domain),
                Host::Ip(_) => return Err(format!("`{url}`: `*.` goes with a domain name, not an address")),
            },
            None => HostPattern::Exact(Host::parse(host).map_err(|e| format!("`{url}`: {e}"))?),
        };
        let mut upper = Vec::with_capacity(methods.len());
        for method in methods {
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(format!("`{url}`: `{method}` is not an HTTP method"));
            }
            upper.push(method.to_ascii_uppercase());
        }
        Ok(Destination {
            url: url.to_owned(),
            methods: upper,
            scheme,
            host,
            port: match port {
                Port::Any => None,
                Port::Default => Some(scheme.default_port()),
                Port::Given(port) => Some(port),
            },
            prefix: prefix.trim_end_matches('/').to_owned(),
        })
    }

    /// Whether a request with `method` to `target` falls within this destination.
    pub fn admits(&self, method: &str, target: &Target) -> bool {
        let host = match &self.host {
            HostPattern::Exact(host) => *host == target.host,
            HostPattern::Subdomains(domain) => match &target.host {
                Host::Name(name) => {
                    name.len() > domain.len() + 1
                        && name.ends_with(domain.as_str())
                        && name.as_bytes()[name.len() - domain.len() - 1] == b'.'
                }
                Host::Ip(_) => false,
            },
        };
        let path = target
            .path
            .strip_prefix(self.prefix.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
        let method = self.methods.is_empty() || self.methods.iter().any(|m| m.eq_ignore_ascii_case(method));
        let port = self.port.is_none_or(|port| port == target.port);
        self.scheme == target.scheme && port && host && path && method
    }

    /// Whether some request falls within both this destination and `other`.
    pub fn overlaps(&self, other: &Destination) -> bool {
        let ports = match (self.port, other.port) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        let hosts = match (&self.host, &other.host) {
            (HostPattern::Exact(a), HostPattern::Exact(b)) => a == b,
            (HostPattern::Subdomains(d), HostPattern::Exact(Host::Name(n)))
            | (HostPattern::Exact(Host::Name(n)), HostPattern::Subdomains(d)) => {
                n.ends_with(&format!(".{d}"))
            }
            (HostPattern::Subdomains(a), HostPattern::Subdomains(b)) => {
                a == b || a.ends_with(&format!(".{b}")) || b.ends_with(&format!(".{a}"))
            }
            _ => false,
        };
        let under = |path: &str, prefix: &str| {
            path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        };
        let paths = under(&self.prefix, &other.prefix) || under(&other.prefix, &self.prefix);
        let methods = self.methods.is_empty()
            || other.methods.is_empty()
            || self.methods.iter().any(|m| other.methods.contains(m));
        self.scheme == other.scheme && ports && hosts && paths && methods
    }

    /// The address this destination names, when its host is an IP literal: granting
    /// `http://127.0.0.1:4242/` grants connecting to 127.0.0.1.
    pub fn address(&self) -> Option<IpAddr> {
        match &self.host {
            HostPattern::Exact(Host::Ip(ip)) => Some(*ip),
            _ => None,
        }
    }
}

enum Port {
    Default,
    Any,
    Given(u16),
}

fn split_port(authority: &str) -> Result<(&str, Port), String> {
    let colon = match authority.rfind(':') {
        // `[::1]` has colons of its own; its port comes after the `]`.
        Some(at) if !authority[at..].contains(']') => at,
        _ => return Ok((authority, Port::Default)),
    };
    let port = match &authority[colon + 1..] {
        "*" => Port::Any,
        port => Port::Given(
            port.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| format!("`{port}` is not a port"))?,
        ),
    };
    Ok((&authority[..colon], port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> Result<Target, String> {
        Target::of(&url.parse::<http::Uri>().map_err(|e| e.to_string())?)
    }

    fn dest(url: &str, methods: &[&str]) -> Destination {
        Destination::parse(url, &methods.iter().map(|m| m.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn a_destination_admits_its_scheme_host_port_methods_and_whole_path_segments() {
        let d = dest("https://api.example.com/v1/", &["post"]);
        assert!(d.admits("POST", &target("https://api.example.com/v1/charges?x=1").unwrap()));
        assert!(d.admits("POST", &target("https://API.example.com.:443/v1").unwrap()));
        assert!(!d.admits("GET", &target("https://api.example.com/v1/charges").unwrap()), "method");
        assert!(!d.admits("POST", &target("http://api.example.com/v1/charges").unwrap()), "scheme");
        assert!(!d.admits("POST", &target("https://api.example.com:8443/v1/charges").unwrap()), "port");
        assert!(!d.admits("POST", &target("https://api.example.com/v10").unwrap()), "segment");
        assert!(!d.admits("POST", &target("https://api.example.com/").unwrap()), "prefix");
        assert!(!d.admits("POST", &target("https://evil.com/v1/").unwrap()), "host");
        assert!(!d.admits("POST", &target("https://api.example.com.evil.com/v1/").unwrap()), "suffix host");

        let any = dest("http://127.0.0.1:4242", &[]);
        assert!(any.admits("DELETE", &target("http://127.0.0.1:4242/anything").unwrap()));
        assert_eq!(any.address(), Some("127.0.0.1".parse().unwrap()));

        let any_port = dest("http://localhost:*/", &[]);
        assert!(any_port.admits("GET", &target("http://localhost:9/x").unwrap()));
        assert!(any_port.admits("GET", &target("http://localhost/x").unwrap()));
        assert!(!any_port.admits("GET", &target("https://localhost/x").unwrap()));
    }

    #[test]
    fn destinations_overlap_when_some_request_falls_within_both() {
        let declared = dest("http://localhost:*/v1/", &["POST"]);
        assert!(dest("http://localhost:8080/", &[]).overlaps(&declared));
        assert!(dest("http://localhost:8080/v1/charges", &["post"]).overlaps(&declared));
        assert!(!dest("http://localhost:8080/v2/", &[]).overlaps(&declared), "path");
        assert!(!dest("http://localhost:8080/", &["GET"]).overlaps(&declared), "method");
        assert!(!dest("https://localhost:8080/", &[]).overlaps(&declared), "scheme");
        assert!(dest("https://*.example.com/", &[]).overlaps(&dest("https://api.example.com/", &[])));
        assert!(!dest("https://*.example.com/", &[]).overlaps(&dest("https://example.com/", &[])));
    }

    #[test]
    fn subdomains_are_admitted_by_a_star_and_the_domain_itself_is_not() {
        let d = dest("https://*.example.com/", &[]);
        assert!(d.admits("GET", &target("https://a.b.example.com/").unwrap()));
        assert!(!d.admits("GET", &target("https://example.com/").unwrap()));
        assert!(!d.admits("GET", &target("https://badexample.com/").unwrap()));
    }

    #[test]
    fn ip_literals_are_read_only_in_their_canonical_spelling() {
        for spelling in
            ["2130706433", "0x7f000001", "0177.0.0.1", "127.1", "0x7f.0.0.1", "017700000001", "1.2.3.04"]
        {
            let err = Host::parse(spelling).unwrap_err();
            assert!(err.contains("non-canonical"), "{spelling}: {err}");
        }
        assert_eq!(Host::parse("127.0.0.1").unwrap(), Host::Ip("127.0.0.1".parse().unwrap()));
        assert_eq!(Host::parse("[::ffff:127.0.0.1]").unwrap(), Host::Ip("::ffff:127.0.0.1".parse().unwrap()));
        assert!(Host::parse("[fe80::1%25eth0]").is_err(), "a zone is refused");
        assert_eq!(Host::parse("Example.COM.").unwrap(), Host::Name("example.com".into()));
        assert!(Host::parse("a b").is_err());
    }

    #[test]
    fn paths_that_two_parsers_could_read_differently_are_refused() {
        for path in
            ["/v1/../admin", "/v1/./x", "/v1/%2e%2e/admin", "/v1%2Fadmin", "/v1/%5cadmin", "/v1\\admin"]
        {
            let url = format!("https://api.example.com{path}");
            assert!(target(&url).is_err(), "{path} should be refused");
        }
        assert!(target("https://user:pw@api.example.com/").unwrap_err().contains("password"));
        assert!(target("ftp://api.example.com/").is_err());
    }

    #[test]
    fn a_malformed_destination_is_an_error_that_names_it() {
        for (url, says) in [
            ("api.example.com/v1", "scheme://"),
            ("gopher://x.com/", "http or https"),
            ("https://x.com/v1?a=b", "query"),
            ("https://x.com:0/", "port"),
            ("https://*.1.2.3.4/", "domain name"),
            ("https://x.com/../", ".."),
        ] {
            let err = Destination::parse(url, &[]).unwrap_err();
            assert!(err.contains(says), "{url}: {err}");
        }
        assert!(Destination::parse("https://x.com/", &["PO ST".into()]).is_err());
    }
}
