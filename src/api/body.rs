//! Request bodies, as kube-apiserver reads them: every verb that reads one (create, update,
//! patch, delete options, and the `status`, `scale` and `binding` subresources) goes through
//! [`read`], which refuses more than [`MAX_BODY_BYTES`] of raw bytes before anything is decoded;
//! then the Content-Type picks the decoder, and an unknown one is a 415.

use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, header};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use serde_json::Value;

use super::patch::{self, PatchType};
use super::protobuf;
use super::status::{ApiError, ApiResult};

/// kube-apiserver's `MaxRequestBodyBytes`: etcd's recommended 1.5 MiB request, doubled for
/// JSON's size over protobuf.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// After a 413, how much more of the body is read and thrown away, and how long a pause in it
/// ends that ([`discard_rest`]).
const DISCARD_MAX_BYTES: usize = 64 << 20;
const DISCARD_IDLE: Duration = Duration::from_secs(1);

fn too_large(body: Body) -> ApiError {
    discard_rest(body);
    ApiError::request_entity_too_large(format!("limit is {MAX_BODY_BYTES}"))
}

/// The raw body, at most [`MAX_BODY_BYTES`]. A larger declared length is refused before a byte
/// is read, and a chunked body as soon as it passes the limit: the server never holds more.
pub async fn read(headers: &HeaderMap, mut body: Body) -> ApiResult<Bytes> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large(body));
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0) as usize);
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
        if let Some(data) = frame.data_ref() {
            if buf.len() + data.len() > MAX_BODY_BYTES {
                return Err(too_large(body));
            }
            buf.extend_from_slice(data);
        }
    }
    Ok(buf.freeze())
}

/// Read and drop, in the background, what the client still sends of a refused body, so that it
/// gets to read the 413: a connection closed with unread data is reset, and a client still
/// writing (kubectl, for one) then reports the reset instead of the answer. Go's server, and so
/// kube-apiserver, avoids the reset too, by pausing before it closes (`rstAvoidanceDelay`).
/// Bounded by [`DISCARD_MAX_BYTES`] and by [`DISCARD_IDLE`] without data (a client that
/// stalls); then the connection is closed.
fn discard_rest(mut body: Body) {
    tokio::spawn(async move {
        let mut left = DISCARD_MAX_BYTES;
        while let Ok(Some(Ok(frame))) = tokio::time::timeout(DISCARD_IDLE, body.frame()).await {
            let n = frame.data_ref().map_or(0, |d| d.len());
            if n >= left {
                break;
            }
            left -= n;
        }
    });
}

/// The Content-Type without its parameters, lower-cased (`application/json; charset=utf-8` is
/// `application/json`).
fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// The encodings of whole objects (create, update, delete options), in kube-apiserver's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectFormat {
    Json,
    Yaml,
    Protobuf,
}

const OBJECT_MEDIA_TYPES: [(&str, ObjectFormat); 3] = [
    ("application/json", ObjectFormat::Json),
    ("application/yaml", ObjectFormat::Yaml),
    (
        "application/vnd.kubernetes.protobuf",
        ObjectFormat::Protobuf,
    ),
];

impl ObjectFormat {
    /// The format a Content-Type names; none at all means JSON, as for kube-apiserver.
    pub fn of(headers: &HeaderMap) -> ApiResult<ObjectFormat> {
        let media = media_type(headers);
        if media.is_empty() {
            return Ok(ObjectFormat::Json);
        }
        OBJECT_MEDIA_TYPES
            .iter()
            .find(|(m, _)| *m == media)
            .map(|(_, f)| *f)
            .ok_or_else(|| ApiError::unsupported_media_type(&OBJECT_MEDIA_TYPES.map(|(m, _)| m)))
    }

    pub fn decode(self, bytes: &[u8]) -> ApiResult<Value> {
        match self {
            ObjectFormat::Json => serde_json::from_slice(bytes).map_err(|e| {
                ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
            }),
            ObjectFormat::Yaml => {
                let text = std::str::from_utf8(bytes).map_err(|e| {
                    ApiError::bad_request(format!(
                        "error decoding YAML: the body is not UTF-8: {e}"
                    ))
                })?;
                serde_saphyr::from_str(text)
                    .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
            }
            ObjectFormat::Protobuf => protobuf::decode_body(bytes),
        }
    }
}

/// The object of a create or update (and of `binding`): read, then decoded by its Content-Type.
pub async fn object(req: Request) -> ApiResult<Value> {
    let (parts, body) = req.into_parts();
    let bytes = read(&parts.headers, body).await?;
    ObjectFormat::of(&parts.headers)?.decode(&bytes)
}

/// DeleteOptions, when a DELETE has a body.
pub async fn optional_object(req: Request) -> ApiResult<Option<Value>> {
    let (parts, body) = req.into_parts();
    let bytes = read(&parts.headers, body).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    ObjectFormat::of(&parts.headers)?.decode(&bytes).map(Some)
}

/// A PATCH: its type from the Content-Type (checked before the body is read, as kube-apiserver
/// does) and its body.
pub async fn patch(req: Request) -> ApiResult<(PatchType, Value)> {
    let (parts, body) = req.into_parts();
    let ty = PatchType::from_media_type(&media_type(&parts.headers))?;
    let bytes = read(&parts.headers, body).await?;
    Ok((ty, patch::parse_body(&bytes)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k, v.parse().unwrap());
        }
        h
    }

    #[tokio::test]
    async fn the_limit_is_on_raw_bytes() {
        let at_limit = vec![b' '; MAX_BODY_BYTES];
        let got = read(&HeaderMap::new(), Body::from(at_limit)).await.unwrap();
        assert_eq!(got.len(), MAX_BODY_BYTES);

        let over = vec![b' '; MAX_BODY_BYTES + 1];
        let err = read(&HeaderMap::new(), Body::from(over)).await.unwrap_err();
        assert_eq!(
            (err.code, err.reason, err.message.as_str()),
            (
                413,
                "RequestEntityTooLarge",
                "Request entity too large: limit is 3145728"
            )
        );

        // A declared length over the limit is refused without reading anything.
        let declared = headers(&[(header::CONTENT_LENGTH, "52428800")]);
        assert_eq!(read(&declared, Body::empty()).await.unwrap_err().code, 413);
    }

    #[test]
    fn media_types() {
        let of = |ct: &str| ObjectFormat::of(&headers(&[(header::CONTENT_TYPE, ct)]));
        assert_eq!(ObjectFormat::of(&HeaderMap::new()), Ok(ObjectFormat::Json));
        assert_eq!(of("application/json"), Ok(ObjectFormat::Json));
        assert_eq!(
            of("Application/JSON; charset=utf-8"),
            Ok(ObjectFormat::Json)
        );
        assert_eq!(of("application/yaml"), Ok(ObjectFormat::Yaml));
        assert_eq!(
            of("application/vnd.kubernetes.protobuf"),
            Ok(ObjectFormat::Protobuf)
        );
        for refused in [
            "text/plain",
            "application/cbor",
            "application/x-www-form-urlencoded",
        ] {
            let e = of(refused).unwrap_err();
            assert_eq!(
                (e.code, e.reason, e.message.as_str()),
                (
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf"
                ),
                "{refused}"
            );
        }
        // JSON means JSON: YAML sent as JSON is a decoding error, not read as YAML.
        assert_eq!(
            ObjectFormat::Json.decode(b"kind: Pod\n").unwrap_err().code,
            400
        );
        assert_eq!(
            ObjectFormat::Yaml.decode(b"kind: Pod\n").unwrap(),
            serde_json::json!({"kind": "Pod"})
        );
    }
}
