//! Who may do what over HTTP (docs/security.md has the table of every route).
//!
//! - **Operators** hold the admin token: record writes, retries, redeliveries, plugin
//!   changes, internal operations: everything that goes around a plugin's own rules.
//!   Without an admin token configured, operator actions are refused, not open.
//! - **Clients** make public calls and read; when the server has an API token they
//!   must send it (the admin token works too), otherwise anyone may.
//! - Health checks and the dashboard's page (which holds no data) are open.
//!
//! Tokens travel only in `Authorization: Bearer`, never in a cookie, so a browser
//! never attaches them by itself: a page on another site cannot make a browser act as
//! an operator. Every state change over HTTP also needs a header a plain HTML form
//! cannot send (`Authorization`, or `Idempotency-Key` for calls and saga starts), and
//! a cross-site script that adds one is stopped by the browser's CORS preflight, which
//! this server never grants. A server on a loopback address also refuses requests whose
//! `Host` is not a loopback name, so that a site cannot reach it through DNS rebinding.

use std::fmt;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use super::{ApiError, AppState};

/// A token, kept as its SHA-256 digest, compared in constant time and never printed.
/// Digests first: both sides of the comparison are then 32 bytes whatever was sent, so
/// neither the time taken nor an early length check says anything of the token.
#[derive(Clone)]
pub struct Secret(Arc<[u8; 32]>);

impl Secret {
    pub fn new(token: &str) -> Self {
        Secret(Arc::new(digest(token)))
    }

    fn matches(&self, given: &str) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(digest(given).ct_eq(&*self.0))
    }
}

fn digest(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// What a server checks requests against.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Operator actions; `None` turns them off.
    pub admin_token: Option<Secret>,
    /// Public calls and reads; `None` leaves them open.
    pub api_token: Option<Secret>,
    /// The server listens on a loopback address: only requests for a loopback host
    /// name are answered.
    pub loopback_only: bool,
    /// Host names answered besides those [`Access::host_allowed`] allows by itself
    /// (`--allow-host`).
    pub allowed_hosts: Vec<String>,
}

/// Who sent a request, by its `Authorization` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Anonymous,
    Client,
    Operator,
}

impl Access {
    /// Whether the request carries the admin token.
    pub(super) fn is_operator(&self, headers: &HeaderMap) -> bool {
        matches!(self.role(headers), Ok(Role::Operator))
    }

    fn role(&self, headers: &HeaderMap) -> Result<Role, ApiError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else { return Ok(Role::Anonymous) };
        let token = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
        let Some(token) = token else {
            return Err(unauthorized("send the token as `Authorization: Bearer <token>`"));
        };
        if self.admin_token.as_ref().is_some_and(|t| t.matches(token)) {
            return Ok(Role::Operator);
        }
        if self.api_token.as_ref().is_some_and(|t| t.matches(token)) {
            return Ok(Role::Client);
        }
        Err(unauthorized("the token is neither this server's admin token nor its API token"))
    }
}

/// The extractor of routes that read or make public calls: the request carries the API
/// token or the admin token, or the server requires none. Knows whether an operator
/// sent it (an operator may also call internal operations).
#[derive(Debug, Clone, Copy)]
pub struct Reader {
    pub operator: bool,
}

impl FromRequestParts<AppState> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let access = &state.access;
        match access.role(&parts.headers)? {
            Role::Operator => Ok(Reader { operator: true }),
            Role::Client => Ok(Reader { operator: false }),
            Role::Anonymous if access.api_token.is_none() => Ok(Reader { operator: false }),
            Role::Anonymous => Err(unauthorized(
                "this server requires its API token: send `Authorization: Bearer <API token>`",
            )),
        }
    }
}

/// The extractor of operator actions: the request carries the admin token. Extracted
/// before the body, so that nobody without the token makes the server read it.
#[derive(Debug, Clone, Copy)]
pub struct Operator;

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let access = &state.access;
        if access.admin_token.is_none() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "operator actions are off on this server: start it with the admin token in \
                 WASAGA_ADMIN_TOKEN or --admin-token-file",
            ));
        }
        match access.role(&parts.headers)? {
            Role::Operator => Ok(Operator),
            Role::Anonymous => {
                Err(unauthorized("this is an operator action: send `Authorization: Bearer <admin token>`"))
            }
            Role::Client => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "this is an operator action: the API token does not allow it, the admin token does",
            )),
        }
    }
}

impl Access {
    /// Whether a request for `host` (its `Host` header) is answered. A page on another
    /// site can rebind its own name to this server's address; the browser then counts
    /// the server as that page's own origin, and nothing stops the page from calling
    /// it (DNS rebinding). So: loopback names always; names `--allow-host` gives; on a
    /// loopback address nothing else; elsewhere, with an API token any name (a page
    /// cannot know the token), without one an address written as such (an IP) only,
    /// which no DNS answer changes.
    pub(super) fn host_allowed(&self, host: &str) -> bool {
        // Host is `name[:port]`, or `[v6]:port`.
        let name = match host.strip_prefix('[') {
            Some(rest) => rest.split(']').next().unwrap_or_default(),
            None => host.rsplit_once(':').map_or(host, |(name, _)| name),
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let ip = name.parse::<std::net::IpAddr>();
        if name == "localhost" || name.ends_with(".localhost") || ip.as_ref().is_ok_and(|ip| ip.is_loopback())
        {
            return true;
        }
        if self.allowed_hosts.iter().any(|allowed| allowed.eq_ignore_ascii_case(&name)) {
            return true;
        }
        !self.loopback_only && (self.api_token.is_some() || ip.is_ok())
    }
}

/// Refuses a request whose `Host` the server does not answer ([`Access::host_allowed`]):
/// 421. (A request without `Host`, which no browser sends, passes.)
pub async fn loopback_host(State(state): State<AppState>, request: Request, next: Next) -> Response {
    use axum::response::IntoResponse;
    if let Some(host) = request.headers().get(header::HOST)
        && !state.access.host_allowed(host.to_str().unwrap_or_default())
    {
        let detail = if state.access.loopback_only {
            "this server listens on a loopback address and answers requests for localhost, 127.0.0.1 or \
             [::1] only"
        } else {
            "this server has no API token, so it answers requests for its address (an IP), localhost, \
             or a name given with --allow-host only (a page on another site could point any other name at it)"
        };
        return ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            format!("{detail} (Host: {})", host.to_str().unwrap_or("not ASCII")),
        )
        .into_response();
    }
    next.run(request).await
}

fn unauthorized(detail: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, detail).with_header(header::WWW_AUTHENTICATE, "Bearer")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_by_every_byte() {
        let secret = Secret::new("secret");
        assert!(secret.matches("secret"));
        for wrong in ["secreT", "secret-and-more", "", "s"] {
            assert!(!secret.matches(wrong), "{wrong}");
        }
    }

    /// Which `Host` a server answers: on loopback, loopback names only; elsewhere
    /// without an API token, also its addresses written as such and the names allowed,
    /// never another name (DNS rebinding); with an API token, any.
    #[test]
    fn the_hosts_answered_follow_the_address_and_the_token() {
        let on_loopback = Access { loopback_only: true, ..Access::default() };
        let open = Access { allowed_hosts: vec!["wasaga.internal".into()], ..Access::default() };
        let guarded = Access { api_token: Some(Secret::new("api-token-0123456789")), ..Access::default() };
        let loopback =
            ["localhost", "localhost:8080", "127.0.0.1:8080", "127.0.0.2", "[::1]:8080", "app.localhost"];
        for host in loopback {
            for access in [&on_loopback, &open, &guarded] {
                assert!(access.host_allowed(host), "{host}");
            }
        }
        for host in ["evil.example", "evil.example:8080", "10.0.0.1:80", "[2001:db8::1]:80", "localhost.evil"]
        {
            assert!(!on_loopback.host_allowed(host), "{host}");
            assert!(guarded.host_allowed(host), "{host}");
        }
        for (host, answered) in [
            ("10.0.0.1:80", true),
            ("[2001:db8::1]:80", true),
            ("WASAGA.internal:8080", true),
            ("evil.example", false),
            ("localhost.evil", false),
        ] {
            assert_eq!(open.host_allowed(host), answered, "{host}");
        }
    }

    #[test]
    fn the_role_follows_the_token() {
        let access = Access {
            admin_token: Some(Secret::new("admin-token-0123456789")),
            api_token: Some(Secret::new("api-token-0123456789")),
            loopback_only: false,
            allowed_hosts: Vec::new(),
        };
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            access.role(&headers)
        };
        assert_eq!(access.role(&HeaderMap::new()).unwrap(), Role::Anonymous);
        assert_eq!(with("Bearer admin-token-0123456789").unwrap(), Role::Operator);
        assert_eq!(with("Bearer api-token-0123456789").unwrap(), Role::Client);
        assert_eq!(with("Bearer guess").unwrap_err().status, StatusCode::UNAUTHORIZED);
        assert_eq!(with("Basic YWRtaW46YWRtaW4=").unwrap_err().status, StatusCode::UNAUTHORIZED);
    }
}
