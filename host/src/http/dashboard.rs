//! `GET /`: the dashboard, one self-contained page (no external scripts, styles or
//! fonts, so it works without a network). It polls the JSON API.

use axum::http::header;
use axum::response::IntoResponse;

const PAGE: &str = include_str!("dashboard.html");

/// The dashboard.
#[utoipa::path(
    get,
    path = "/",
    operation_id = "dashboard",
    tag = "operations",
    responses((status = 200, description = "The dashboard's page (it holds no data)", content_type = "text/html", body = String)),
)]
pub async fn page() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], PAGE)
}
