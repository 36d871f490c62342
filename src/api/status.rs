//! Kubernetes API errors: every failure the server answers is a `meta/v1 Status` with the HTTP code,
//! `reason` and `message` kubectl prints (`Error from server (<reason>): <message>`).
//! Validation failures carry field-level `causes`, rendered like apimachinery's `field.ErrorList`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// One field-level problem, as in apimachinery's `field.Error`.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    /// JSON path of the field, e.g. `spec.ports[0].port`.
    pub field: String,
    pub kind: FieldErrorKind,
    /// Extra explanation after the value (may be empty).
    pub detail: String,
}

/// The error types of `field.ErrorType`, with the bad value where the type shows one.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldErrorKind {
    Required,
    Invalid(Value),
    /// The value is pre-rendered in Go syntax (for maps and structs).
    InvalidGo(String),
    Duplicate(Value),
    NotSupported(Value, Vec<String>),
    Forbidden,
    /// Longer than the given number of bytes.
    TooLong(usize),
}

impl FieldError {
    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            kind: FieldErrorKind::Required,
            detail: detail.into(),
        }
    }
    pub fn invalid(
        field: impl Into<String>,
        value: impl Into<Value>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            kind: FieldErrorKind::Invalid(value.into()),
            detail: detail.into(),
        }
    }
    pub fn invalid_go(
        field: impl Into<String>,
        value: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            kind: FieldErrorKind::InvalidGo(value.into()),
            detail: detail.into(),
        }
    }
    pub fn duplicate(field: impl Into<String>, value: impl Into<Value>) -> Self {
        Self {
            field: field.into(),
            kind: FieldErrorKind::Duplicate(value.into()),
            detail: String::new(),
        }
    }
    pub fn not_supported(
        field: impl Into<String>,
        value: impl Into<Value>,
        supported: &[&str],
    ) -> Self {
        let supported = supported.iter().map(|s| s.to_string()).collect();
        Self {
            field: field.into(),
            kind: FieldErrorKind::NotSupported(value.into(), supported),
            detail: String::new(),
        }
    }
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            kind: FieldErrorKind::Forbidden,
            detail: detail.into(),
        }
    }
    pub fn too_long(field: impl Into<String>, max_bytes: usize) -> Self {
        Self {
            field: field.into(),
            kind: FieldErrorKind::TooLong(max_bytes),
            detail: String::new(),
        }
    }

    /// `reason` of the Status cause (`FieldValueInvalid`, ...).
    pub fn reason(&self) -> &'static str {
        match self.kind {
            FieldErrorKind::Required => "FieldValueRequired",
            FieldErrorKind::Invalid(_) | FieldErrorKind::InvalidGo(_) => "FieldValueInvalid",
            FieldErrorKind::Duplicate(_) => "FieldValueDuplicate",
            FieldErrorKind::NotSupported(..) => "FieldValueNotSupported",
            FieldErrorKind::Forbidden => "FieldValueForbidden",
            FieldErrorKind::TooLong(_) => "FieldValueTooLong",
        }
    }

    /// The message without the field (apimachinery's `ErrorBody`).
    pub fn body(&self) -> String {
        let mut s = match &self.kind {
            FieldErrorKind::Required => "Required value".to_string(),
            FieldErrorKind::Forbidden => "Forbidden".to_string(),
            FieldErrorKind::TooLong(max) => format!("Too long: may not be more than {max} bytes"),
            FieldErrorKind::Invalid(v) => format!("Invalid value: {}", go_value(v)),
            FieldErrorKind::InvalidGo(v) => format!("Invalid value: {v}"),
            FieldErrorKind::Duplicate(v) => format!("Duplicate value: {}", go_value(v)),
            FieldErrorKind::NotSupported(v, supported) => {
                let mut s = format!("Unsupported value: {}", go_value(v));
                if !supported.is_empty() {
                    let quoted: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
                    s.push_str(&format!(": supported values: {}", quoted.join(", ")));
                }
                s
            }
        };
        if !self.detail.is_empty() {
            s.push_str(": ");
            s.push_str(&self.detail);
        }
        s
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.body())
    }
}

/// A JSON value printed the way Go's `%v`/`%q` prints it in validation messages.
fn go_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

/// An error answered as a `Status` object.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
    /// `metadata.continue` of the Status: the inconsistent continuation an expired list offers.
    pub continue_token: Option<String>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

/// Shorthand for handler results.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
            continue_token: None,
        }
    }
    fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// `pods "p1" not found` (the resource is the plural, optionally `plural.group`).
    pub fn not_found(resource: &str, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{resource} \"{name}\" not found")).with_details(
            json!({"name": name, "kind": short_resource(resource), "group": group_of(resource)}),
        )
    }
    /// A path the server does not serve.
    pub fn path_not_found() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details(json!({}))
    }
    pub fn already_exists(resource: &str, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{resource} \"{name}\" already exists"),
        )
        .with_details(
            json!({"name": name, "kind": short_resource(resource), "group": group_of(resource)}),
        )
    }
    /// Optimistic-concurrency failure (stale resourceVersion or failed precondition).
    pub fn conflict(resource: &str, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {resource} \"{name}\": {why}"),
        )
        .with_details(
            json!({"name": name, "kind": short_resource(resource), "group": group_of(resource)}),
        )
    }
    /// 409 of a server-side apply over fields other managers own (`errors.NewApplyConflict`).
    pub fn apply_conflict(message: impl Into<String>, causes: Vec<Value>) -> Self {
        Self::new(409, "Conflict", message).with_details(json!({"causes": causes}))
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }
    /// A body in a media type the request does not take; `accepted` lists the ones it does.
    pub fn unsupported_media_type(accepted: &[&str]) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: {}",
                accepted.join(", ")
            ),
        )
    }
    /// A request body kemu cannot read, with what to send instead.
    pub fn unsupported_body(message: impl Into<String>) -> Self {
        Self::new(415, "UnsupportedMediaType", message)
    }
    /// A body over the server's limit (`errors.NewRequestEntityTooLargeError`).
    pub fn request_entity_too_large(message: impl Into<String>) -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            format!("Request entity too large: {}", message.into()),
        )
    }
    /// A read asked for a resourceVersion the server has not reached
    /// (`storage.NewTooLargeResourceVersionError`): 504 with a hint to retry.
    pub fn too_large_resource_version(
        requested: u64,
        current: u64,
        retry_after_seconds: u64,
    ) -> Self {
        Self::new(
            504,
            "Timeout",
            format!("Timeout: Too large resource version: {requested}, current: {current}"),
        )
        .with_details(json!({
            "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
            "retryAfterSeconds": retry_after_seconds,
        }))
    }
    pub fn not_acceptable(message: impl Into<String>) -> Self {
        Self::new(406, "NotAcceptable", message)
    }
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {}", message.into()),
        )
    }
    pub fn service_unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", message)
    }
    /// The namespace of a namespaced create is missing or terminating.
    pub fn forbidden(resource: &str, name: &str, why: &str) -> Self {
        Self::new(
            403,
            "Forbidden",
            format!("{resource} \"{name}\" is forbidden: {why}"),
        )
        .with_details(json!({"name": name, "kind": short_resource(resource)}))
    }

    /// 401 for a request whose credentials are not valid.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    /// 403 with a message already worded (authorization, impersonation).
    pub fn forbidden_plain(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message).with_details(json!({}))
    }

    /// `details.{name, kind, group}` naming the refused resource.
    pub fn with_resource_details(mut self, name: &str, resource: &str, group: &str) -> Self {
        let details = self.details.get_or_insert_with(|| json!({}));
        if !name.is_empty() {
            details["name"] = json!(name);
        }
        details["kind"] = json!(resource);
        if !group.is_empty() {
            details["group"] = json!(group);
        }
        self
    }

    /// 429 (`errors.NewTooManyRequests`), without a retry hint.
    pub fn too_many_requests(message: impl Into<String>) -> Self {
        Self::new(429, "TooManyRequests", message).with_details(json!({}))
    }

    /// The same error with one more `details.causes` entry (`type` is written `reason`).
    pub fn with_cause(mut self, reason: &str, message: &str, field: Option<&str>) -> Self {
        let mut cause = json!({"reason": reason, "message": message});
        if let Some(f) = field {
            cause["field"] = json!(f);
        }
        let details = self.details.get_or_insert_with(|| json!({}));
        match details.get_mut("causes").and_then(Value::as_array_mut) {
            Some(causes) => causes.push(cause),
            None => details["causes"] = json!([cause]),
        }
        self
    }

    /// 422 Invalid with the field errors, formatted like `errors.NewInvalid`.
    pub fn invalid(kind: &str, group: &str, name: &str, errors: &[FieldError]) -> Self {
        let list = match errors {
            [one] => one.to_string(),
            many => format!(
                "[{}]",
                many.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let causes: Vec<Value> = errors
            .iter()
            .map(|e| json!({"reason": e.reason(), "message": e.body(), "field": e.field}))
            .collect();
        Self::new(
            422,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {list}"),
        )
        .with_details(json!({"name": name, "group": group, "kind": kind, "causes": causes}))
    }

    /// `details.retryAfterSeconds`, when set and positive.
    pub fn retry_after_seconds(&self) -> Option<u64> {
        self.details
            .as_ref()
            .and_then(|d| d.get("retryAfterSeconds"))
            .and_then(Value::as_u64)
            .filter(|s| *s > 0)
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        if let Some(token) = &self.continue_token {
            status["metadata"]["continue"] = json!(token);
        }
        status
    }
}

fn short_resource(resource: &str) -> &str {
    resource.split('.').next().unwrap_or(resource)
}

fn group_of(resource: &str) -> &str {
    resource.split_once('.').map(|(_, g)| g).unwrap_or("")
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self.to_status()).unwrap_or_default();
        let mut response = (
            code,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        // As `responsewriters.ErrorNegotiated`: a Status that says when to retry says it in
        // the header too.
        if let Some(seconds) = self.retry_after_seconds() {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

/// A `Status{status: Success}` (answer of deletecollection-like calls).
pub fn success_status(details: Value) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_single_and_many() {
        let one = ApiError::invalid(
            "Service",
            "",
            "x",
            &[FieldError::invalid(
                "spec.ports[0].port",
                70000,
                "must be between 1 and 65535, inclusive",
            )],
        );
        let many = ApiError::invalid(
            "Deployment",
            "apps",
            "web",
            &[
                FieldError::required("spec.selector", ""),
                FieldError::duplicate("spec.template.spec.containers[1].name", "a"),
                FieldError::not_supported("spec.type", "Foo", &["ClusterIP", "NodePort"]),
            ],
        );
        let text = format!(
            "{}\n{}\n{}",
            one.message,
            many.message,
            serde_json::to_string_pretty(&many.to_status()).unwrap()
        );
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(text));
    }
}
