//! The HTTP API (axum). [`router`] builds it over an [`AppState`], so tests can drive
//! it in-process as well as over a real socket. Errors are RFC 9457 problem+json
//! ([`ApiError`]).

mod error;
mod plugins;

use axum::Router;
use axum::routing::get;

pub use error::ApiError;

use crate::runtime::Registry;

/// What every handler shares. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    pub registry: Registry,
}

/// All routes of the API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/plugins", get(plugins::list))
        .fallback(not_found)
        .with_state(state)
}

/// Liveness: the process answers.
async fn healthz() -> &'static str {
    "ok\n"
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}
