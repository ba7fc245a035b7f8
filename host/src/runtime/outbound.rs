//! The plugin's `wasi:http/outgoing-handler`, sent by the host's own client: each
//! request is read whole (bounded), handed to [`outbound::Call::send`] with its place
//! in the invocation, and its answer given back as the incoming response. A call
//! without an invocation (`describe`) may make no request.

use http_body_util::{BodyExt, Full, Limited};
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use crate::outbound::{self, SendError};

/// The hooks of one call's `wasi:http`.
pub(crate) struct HttpHooks {
    pub(crate) call: Option<outbound::Call>,
}

type Sent = Box<dyn Future<Output = Result<(), Error>> + Send>;

impl WasiHttpHooks for HttpHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Sent,
    ) -> Box<dyn Future<Output = Result<(http::Response<WasiBody>, Sent), Error>> + Send> {
        let Some(call) = self.call.clone() else {
            tracing::warn!(target: "wasaga::outbound", "a plugin made an HTTP request outside an invocation");
            return Box::new(async { Err(Error::HttpRequestDenied) });
        };
        // Numbered now, in the order the plugin makes its requests, whatever order
        // their bodies arrive in.
        let position = call.next_position();
        Box::new(async move {
            let (parts, body) = request.into_parts();
            let body = Limited::new(body, outbound::MAX_REQUEST_BODY as usize)
                .collect()
                .await
                .map_err(|_| Error::HttpRequestBodySize(Some(outbound::MAX_REQUEST_BODY)))?
                .to_bytes();
            let request =
                outbound::Request { method: parts.method, uri: parts.uri, headers: parts.headers, body };
            let answer = call.send(position, request).await.map_err(error_code)?;
            let mut response =
                http::Response::new(Full::new(answer.body).map_err(|never| match never {}).boxed_unsync());
            *response.status_mut() = answer.status;
            *response.headers_mut() = answer.headers;
            Ok((response, Box::new(async { Ok(()) }) as Sent))
        })
    }
}

/// The `wasi:http` error code that says what happened (the log has the words).
fn error_code(error: SendError) -> Error {
    match error {
        SendError::Refused(_) | SendError::TooMany(_) => Error::HttpRequestDenied,
        SendError::AddressProhibited(_) => Error::DestinationIpProhibited,
        SendError::Diverged(why) => Error::InternalError(Some(why)),
        SendError::Dns(why) => Error::DnsError { rcode: Some(why), info_code: None },
        SendError::Connect(_) => Error::ConnectionRefused,
        SendError::Timeout(_) => Error::HttpResponseTimeout,
        SendError::ResponseTooLarge(limit) => Error::HttpResponseBodySize(Some(limit)),
        SendError::HeadersTooLarge(limit) => Error::HttpResponseHeaderSectionSize(Some(limit as u32)),
        SendError::Protocol(_) => Error::HttpProtocolError,
    }
}
