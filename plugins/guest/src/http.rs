//! HTTP requests from a service, through `wasi:http/outgoing-handler`. The host sends
//! them only to destinations the service declares ([`crate::Service::destination`]) and
//! the operator grants; it adds an idempotency key that stays the same when the
//! invocation runs again, and puts secrets where a header names them
//! (`{{secret.NAME}}`), so the service never holds them.
//!
//! ```ignore
//! let charge: Charge = http::Request::post("http://payments.internal:8080/v1/charges")
//!     .header("authorization", "Bearer {{secret.api-key}}")
//!     .json(&ChargeRequest { amount, currency: "eur" })?
//!     .send()?
//!     .ok()?
//!     .json()?;
//! ```
//!
//! A request that fails to get an answer is an [`Error`]; its `Failure` is transient
//! (`?` in an operation retries the step), as the request may be sent again safely with
//! the same idempotency key.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Failure;
use crate::wasi::http::outgoing_handler;
use crate::wasi::http::types::{self, Fields, IncomingBody, OutgoingBody, OutgoingRequest, Scheme};
use crate::wasi::io::streams::StreamError;

/// A request being built.
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

/// An answer, of any status.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// Why a request got no answer: refused by the host's policy, unreachable, too slow,
/// or too large. The text says which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure::Transient(format!("HTTP request failed: {error}"))
    }
}

impl Request {
    pub fn new(method: &str, url: &str) -> Self {
        Request { method: method.into(), url: url.into(), headers: Vec::new(), body: Vec::new() }
    }

    pub fn get(url: &str) -> Self {
        Request::new("GET", url)
    }

    pub fn post(url: &str) -> Self {
        Request::new("POST", url)
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.as_bytes().to_vec()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// A JSON body, with its content type.
    pub fn json<T: Serialize>(self, value: &T) -> Result<Self, Failure> {
        let body = serde_json::to_vec(value)
            .map_err(|e| Failure::Rejected(format!("cannot encode the request: {e}")))?;
        Ok(self.header("content-type", "application/json").body(body))
    }

    /// Sends the request and waits for the whole answer.
    pub fn send(self) -> Result<Response, Error> {
        let (scheme, rest) =
            self.url.split_once("://").ok_or_else(|| Error(format!("`{}` has no scheme", self.url)))?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        let path = if path.starts_with('?') { format!("/{path}") } else { path.to_owned() };
        let headers =
            Fields::from_list(&self.headers).map_err(|e| Error(format!("a header is invalid: {e:?}")))?;
        let request = OutgoingRequest::new(headers);
        let method = match self.method.to_ascii_uppercase().as_str() {
            "GET" => types::Method::Get,
            "HEAD" => types::Method::Head,
            "POST" => types::Method::Post,
            "PUT" => types::Method::Put,
            "DELETE" => types::Method::Delete,
            "PATCH" => types::Method::Patch,
            "OPTIONS" => types::Method::Options,
            other => types::Method::Other(other.to_owned()),
        };
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            other => Scheme::Other(other.to_owned()),
        };
        let invalid = |what: &str| Error(format!("the {what} of `{}` is invalid", self.url));
        request.set_method(&method).map_err(|()| invalid("method"))?;
        request.set_scheme(Some(&scheme)).map_err(|()| invalid("scheme"))?;
        request.set_authority(Some(authority)).map_err(|()| invalid("host"))?;
        request.set_path_with_query(Some(&path)).map_err(|()| invalid("path"))?;
        let body = request.body().map_err(|()| Error("the request's body was taken".into()))?;
        let pending = outgoing_handler::handle(request, None).map_err(|code| Error(describe(&code)))?;
        {
            let stream = body.write().map_err(|()| Error("the request's body cannot be written".into()))?;
            for chunk in self.body.chunks(4096) {
                stream
                    .blocking_write_and_flush(chunk)
                    .map_err(|e| Error(format!("writing the body: {e:?}")))?;
            }
        }
        OutgoingBody::finish(body, None).map_err(|code| Error(describe(&code)))?;

        let response = loop {
            match pending.get() {
                Some(answer) => break answer,
                None => pending.subscribe().block(),
            }
        };
        let response = response
            .map_err(|()| Error("the response was taken twice".into()))?
            .map_err(|code| Error(describe(&code)))?;
        let status = response.status();
        let headers = response.headers().entries();
        let incoming = response.consume().map_err(|()| Error("the response's body was taken".into()))?;
        let mut body = Vec::new();
        {
            let stream =
                incoming.stream().map_err(|()| Error("the response's body cannot be read".into()))?;
            loop {
                match stream.blocking_read(64 << 10) {
                    Ok(bytes) => body.extend_from_slice(&bytes),
                    Err(StreamError::Closed) => break,
                    Err(StreamError::LastOperationFailed(e)) => {
                        return Err(Error(format!("reading the response: {}", e.to_debug_string())));
                    }
                }
            }
        }
        drop(IncomingBody::finish(incoming));
        Ok(Response { status, headers, body })
    }
}

impl Response {
    /// The first value of the header `name` (any case), as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The response if its status is 2xx; else a failure that says the status and the
    /// start of the body: transient for 408, 429 and 5xx (the other side may answer
    /// another time), a rejection for the rest.
    pub fn ok(self) -> Result<Response, Failure> {
        if (200..300).contains(&self.status) {
            return Ok(self);
        }
        let text = String::from_utf8_lossy(&self.body[..self.body.len().min(200)]).into_owned();
        let why = format!("HTTP {}: {text}", self.status);
        Err(match self.status {
            408 | 429 | 500..=599 => Failure::Transient(why),
            _ => Failure::Rejected(why),
        })
    }

    /// The body, parsed as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Failure> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Failure::Rejected(format!("the response is not the JSON expected: {e}")))
    }
}

fn describe(code: &types::ErrorCode) -> String {
    match code {
        types::ErrorCode::HttpRequestDenied => "refused by the host's policy (see the host's log)".into(),
        types::ErrorCode::DestinationIpProhibited => {
            "the destination's address is not granted (see the host's log)".into()
        }
        types::ErrorCode::InternalError(Some(why)) => why.clone(),
        other => format!("{other:?}"),
    }
}
