//! The HTTP side of the API server: the router and its fixed routes (`/version`, discovery,
//! OpenAPI, health); everything under `/api/v1` and `/apis/<g>/<v>` goes to the one generic
//! resource handler in [`super::rest`]. The state they serve is [`super::server::Api`].

use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::discovery;
use super::openapi;
use super::resources::RESOURCES;
use super::response::json_with_type;
use super::server::{Api, Config};
use super::status::ApiError;

/// The router of the whole API.
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route(
            "/version",
            get(|| async { axum::Json(discovery::version()) }),
        )
        .route(
            "/version/",
            get(|| async { axum::Json(discovery::version()) }),
        )
        .route("/healthz", get(health))
        .route("/livez", get(health))
        .route("/readyz", get(health))
        .route("/api", get(core_discovery))
        .route("/api/", get(core_discovery))
        .route("/apis", get(groups_discovery))
        .route("/apis/", get(groups_discovery))
        .route("/openapi/v2", get(openapi_v2))
        .route("/openapi/v3", get(|| async { axum::Json(openapi::root()) }))
        .route("/openapi/v3/{*gv}", get(openapi_document))
        .fallback(super::rest::handle)
        .with_state(api)
}

async fn health() -> &'static str {
    "ok"
}

fn accept(headers: &HeaderMap) -> &str {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

async fn core_discovery(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    match discovery::negotiate_aggregated(accept(&headers)) {
        Some(v) => json_with_type(
            StatusCode::OK,
            &discovery::aggregated_content_type(v),
            &discovery::aggregated(true, v),
        ),
        None => json_with_type(
            StatusCode::OK,
            "application/json",
            &discovery::api_versions(&format!("{}:{}", api.advertise_address(), api.bound.port())),
        ),
    }
}

async fn groups_discovery(headers: HeaderMap) -> Response {
    match discovery::negotiate_aggregated(accept(&headers)) {
        Some(v) => json_with_type(
            StatusCode::OK,
            &discovery::aggregated_content_type(v),
            &discovery::aggregated(false, v),
        ),
        None => json_with_type(
            StatusCode::OK,
            "application/json",
            &discovery::api_group_list(),
        ),
    }
}

async fn openapi_document(Path(gv): Path<String>) -> Response {
    let parts: Vec<&str> = gv.trim_end_matches('/').split('/').collect();
    let doc = match parts.as_slice() {
        ["api", v] => openapi::group_version_document("", v),
        ["apis", g, v] => openapi::group_version_document(g, v),
        _ => None,
    };
    match doc {
        Some(doc) => json_with_type(StatusCode::OK, "application/json", &doc),
        None => ApiError::path_not_found().into_response(),
    }
}

/// `/openapi/v2` exists only in its protobuf form: the JSON form's value to other tools would be
/// its schemas, which kemu does not serve.
async fn openapi_v2(headers: HeaderMap) -> Response {
    let accept = accept(&headers);
    if !(accept.contains("protobuf") || accept.contains("*/*") || accept.is_empty()) {
        return ApiError::not_acceptable(format!(
            "/openapi/v2 is served only as {}",
            openapi::v2::PROTOBUF_CONTENT_TYPE
        ))
        .into_response();
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, openapi::v2::PROTOBUF_CONTENT_TYPE)],
        openapi::v2::protobuf(),
    )
        .into_response()
}

/// Serve until the process ends.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let bound = listener.local_addr()?;
    let secure = match &config.secure {
        Some(secure) => Some(super::secure::bind(secure).await?),
        None => None,
    };
    let secure_bound = match &secure {
        Some((listener, _)) => Some(listener.local_addr()?),
        None => None,
    };
    let api = Arc::new(Api::open(config, bound, secure_bound)?);
    tracing::info!(
        "kemu apiserver listening on http://{bound} ({} objects, resourceVersion {})",
        RESOURCES
            .iter()
            .enumerate()
            .map(|(i, _)| api.registry.list(i, None).0.len())
            .sum::<usize>(),
        api.registry.rv()
    );
    // Tests and `kemu up` wait for this line to know the port.
    println!("listening on http://{bound}");
    if let Some((listener, acceptor)) = secure {
        tracing::info!(
            "secure port listening on https://{}",
            listener.local_addr()?
        );
        tokio::spawn(super::secure::serve(
            listener,
            acceptor,
            router(api.clone()),
        ));
    }
    axum::serve(listener, router(api))
        .await
        .context("serving the API")?;
    Ok(())
}
