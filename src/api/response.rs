//! Answers shared by the routes and the resource handler.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// A JSON answer with an explicit Content-Type.
pub fn json_with_type(status: StatusCode, content_type: &str, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).expect("serialisable");
    (
        status,
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (header::VARY, "Accept".to_string()),
        ],
        bytes,
    )
        .into_response()
}
