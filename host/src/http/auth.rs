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

/// A token, compared in constant time and never printed.
#[derive(Clone)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(token: &str) -> Self {
        Secret(Arc::from(token))
    }

    fn matches(&self, given: &str) -> bool {
        constant_time_eq(given.as_bytes(), self.0.as_bytes())
    }
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
}

/// Who sent a request, by its `Authorization` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Anonymous,
    Client,
    Operator,
}

impl Access {
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

/// Refuses, on a server listening on loopback, a request whose `Host` is not a loopback
/// name: a page on another site that rebinds its own name to 127.0.0.1 must not reach
/// the server. (A request without `Host`, which no browser sends, passes.)
pub async fn loopback_host(State(state): State<AppState>, request: Request, next: Next) -> Response {
    use axum::response::IntoResponse;
    if state.access.loopback_only
        && let Some(host) = request.headers().get(header::HOST)
        && !is_loopback_host(host.to_str().unwrap_or_default())
    {
        return ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "this server listens on a loopback address and answers requests for localhost, \
                 127.0.0.1 or [::1] only (Host: {})",
                host.to_str().unwrap_or("not ASCII")
            ),
        )
        .into_response();
    }
    next.run(request).await
}

fn is_loopback_host(host: &str) -> bool {
    // Host is `name[:port]`, or `[v6]:port`.
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn unauthorized(detail: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, detail).with_header(header::WWW_AUTHENTICATE, "Bearer")
}

/// Compares without stopping at the first difference, so that the time taken says
/// nothing about how much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut difference = a.len() ^ b.len();
    for (i, byte) in a.iter().enumerate() {
        difference |= usize::from(byte ^ b.get(i % b.len().max(1)).copied().unwrap_or(0));
    }
    difference == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_by_every_byte() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secret-and-more", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
        assert!(!constant_time_eq(b"s", b""));
    }

    #[test]
    fn loopback_hosts_are_recognised_with_and_without_ports() {
        for host in
            ["localhost", "localhost:8080", "127.0.0.1:8080", "127.0.0.2", "[::1]:8080", "app.localhost"]
        {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in ["evil.example", "evil.example:8080", "10.0.0.1:80", "[2001:db8::1]:80", "localhost.evil"]
        {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn the_role_follows_the_token() {
        let access = Access {
            admin_token: Some(Secret::new("admin-token-0123456789")),
            api_token: Some(Secret::new("api-token-0123456789")),
            loopback_only: false,
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
