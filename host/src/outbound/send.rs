//! Putting one request on the wire: resolve the host, keep the first address the grant
//! allows, connect to that address (never to the name again: what was checked is what
//! is reached), send over HTTP/1.1, read a bounded response. Redirects are not
//! followed: a 3xx goes back to the plugin, whose next request passes the policy anew.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::SendError;
use super::grants::Grant;
use super::rules::{Host, Scheme, Target};

/// The most a response's status line and headers may take.
pub const MAX_HEAD_BYTES: usize = 64 << 10;

/// An answered request.
#[derive(Debug)]
pub struct Answer {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// Sends `request` to `target` within `timeout` (connecting, sending, and reading the
/// whole response).
pub async fn send(
    target: &Target,
    grant: &Grant,
    request: http::Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<Answer, SendError> {
    match tokio::time::timeout(timeout, exchange(target, grant, request)).await {
        Ok(answer) => answer,
        Err(_) => Err(SendError::Timeout(timeout)),
    }
}

async fn exchange(
    target: &Target,
    grant: &Grant,
    request: http::Request<Full<Bytes>>,
) -> Result<Answer, SendError> {
    if target.scheme == Scheme::Https {
        return Err(SendError::Refused(
            "https is not supported yet: this version of wasaga sends plugin requests over plain http only"
                .into(),
        ));
    }
    let address = resolve(target, grant).await?;
    let stream =
        TcpStream::connect(address).await.map_err(|e| SendError::Connect(format!("{address}: {e}")))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(MAX_HEAD_BYTES)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(protocol)?;
    // The connection's task ends with this function, however it ends (a timeout drops
    // the future): a server that keeps it open costs nothing after.
    let connection = AbortOnDrop(tokio::spawn(connection));
    let response = sender.send_request(request).await.map_err(protocol)?;
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, grant.max_response as usize).collect().await.map_err(|e| {
        if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
            SendError::ResponseTooLarge(grant.max_response)
        } else {
            SendError::Protocol(e.to_string())
        }
    })?;
    drop(connection);
    Ok(Answer { status: parts.status, headers: parts.headers, body: body.to_bytes() })
}

/// The address to connect to: the host's (or the literal's) first address that the
/// grant allows. The check is on what the resolver answered, so a name that resolves
/// to a private address (DNS rebinding included) is refused like the literal.
async fn resolve(target: &Target, grant: &Grant) -> Result<SocketAddr, SendError> {
    let candidates: Vec<IpAddr> = match &target.host {
        Host::Ip(ip) => vec![*ip],
        Host::Name(name) => tokio::net::lookup_host((name.as_str(), target.port))
            .await
            .map_err(|e| SendError::Dns(format!("{name}: {e}")))?
            .map(|address| address.ip())
            .collect(),
    };
    let mut refusals = Vec::new();
    for ip in candidates {
        match grant.may_connect(ip) {
            Ok(()) => return Ok(SocketAddr::new(ip, target.port)),
            Err(why) => refusals.push(why),
        }
    }
    if refusals.is_empty() {
        return Err(SendError::Dns(format!("{}: no address", target.host)));
    }
    Err(SendError::AddressProhibited(refusals.join("; ")))
}

fn protocol(error: hyper::Error) -> SendError {
    if error.is_parse_too_large() {
        SendError::HeadersTooLarge(MAX_HEAD_BYTES)
    } else {
        SendError::Protocol(error.to_string())
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
