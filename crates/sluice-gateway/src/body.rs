//! The body types the gateway sends and forwards: bytes it wrote itself, or a body streamed
//! through from the other side untouched.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use sluice_contract::ErrorCode;
use sluice_service::Rejection;

use crate::coding;
use crate::pool::UpstreamBody;

/// A response body: one the gateway wrote (`Left`) or the upstream's, streamed through
/// (`Right`).
pub type Body = Either<Full<Bytes>, UpstreamBody>;

/// A request body sent upstream: one the gateway read (`Left`) or the client's, streamed
/// through (`Right`).
pub(crate) type Outgoing = Either<Full<Bytes>, Incoming>;

/// A body of `bytes`.
pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Either::Left(Full::new(bytes.into()))
}

/// A response carrying `rejection`: its status, headers and envelope body.
pub(crate) fn rejection_response(rejection: Rejection) -> Response<Body> {
    rendered(rejection).map(Either::Left)
}

/// `rejection` as a response of its own body type. The refusal of a body coded in a way the
/// gateway cannot decode names the codings it can (RFC 9110, 12.5.3).
pub(crate) fn rendered(rejection: Rejection) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(rejection.body)));
    *response.status_mut() = rejection.status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(rejection.content_type),
    );
    if rejection.code == ErrorCode::UnsupportedEncoding {
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static(coding::ACCEPTED),
        );
    }
    for (name, value) in rejection.headers {
        headers.append(name, value);
    }
    response
}

/// A small response with a JSON body.
pub(crate) fn json_response(status: StatusCode, json: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(full(json));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
