//! `/v1/plugins`: what serves each service (and what served before), which files were
//! refused; uploads and removals by operators.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::auth::{Operator, Reader};
use super::extract::Path;
use super::{ApiError, AppState};
use crate::outbound::Outbound;
use crate::runtime::{Plugin, Refusal, Registry};
use crate::service::OperationInfo;

/// The largest component accepted by upload.
pub const MAX_UPLOAD_BYTES: usize = 64 << 20;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PluginList {
    pub plugins: Vec<PluginView>,
    pub refused: Vec<Refusal>,
    /// Versions replaced since start-up, all services together.
    pub reloads: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PluginView {
    pub service: String,
    pub digest: String,
    pub size: usize,
    /// Unix ms.
    pub loaded_at: u64,
    #[schema(value_type = u64)]
    pub deadline_ms: u128,
    pub memory_limit_bytes: u64,
    pub operations: Vec<OperationInfo>,
    /// `[topic, operation]` pairs.
    #[schema(value_type = Vec<Vec<String>>)]
    pub subscriptions: Vec<(String, String)>,
    /// The HTTP destinations its manifest declares, each with the operator's grants
    /// that cover it (none: its requests are refused).
    pub destinations: Vec<DestinationView>,
    /// The versions it replaced, newest first.
    pub previous: Vec<PastView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DestinationView {
    /// `scheme://host[:port]/path-prefix`, as declared.
    pub url: String,
    /// Empty for every method.
    pub methods: Vec<String>,
    /// The URLs of the grants (`wasaga serve --outbound`) that cover it.
    pub granted_by: Vec<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PastView {
    pub digest: String,
    pub loaded_at: u64,
    pub replaced_at: u64,
}

fn ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl PluginView {
    fn new(plugin: &Plugin, registry: &Registry, outbound: &Outbound) -> Self {
        let limits = plugin.limits();
        let grants = outbound.grants_of(plugin.service());
        let destinations = plugin
            .manifest()
            .destinations
            .iter()
            .zip(plugin.destinations().iter())
            .map(|(declared, parsed)| DestinationView {
                url: declared.url.clone(),
                methods: declared.methods.clone(),
                granted_by: grants.map_or_else(Vec::new, |g| g.granting(parsed)),
            })
            .collect();
        PluginView {
            service: plugin.service().to_owned(),
            digest: plugin.digest().to_string(),
            size: plugin.size(),
            loaded_at: ms(plugin.loaded_at()),
            deadline_ms: limits.deadline.as_millis(),
            memory_limit_bytes: limits.memory_bytes,
            operations: plugin.manifest().operations.clone(),
            subscriptions: plugin.manifest().subscriptions.clone(),
            destinations,
            previous: registry
                .history(plugin.service())
                .into_iter()
                .map(|p| PastView {
                    digest: p.digest.to_string(),
                    loaded_at: ms(p.loaded_at),
                    replaced_at: ms(p.replaced_at),
                })
                .collect(),
        }
    }
}

/// What serves each service, what served before, and which files were refused.
#[utoipa::path(
    get,
    path = "/v1/plugins",
    operation_id = "listPlugins",
    tag = "plugins",
    responses((status = 200, description = "The plugins", body = PluginList)),
    security((), ("api_token" = []), ("admin_token" = [])),
)]
pub async fn list(_: Reader, State(state): State<AppState>) -> Json<PluginList> {
    let registry = state.invoker.registry();
    let outbound = state.invoker.outbound();
    let plugins = registry.plugins().iter().map(|p| PluginView::new(p, registry, outbound)).collect();
    Json(PluginList { plugins, refused: registry.refused(), reloads: registry.reloads() })
}

/// `PUT /v1/plugins/{service}`: the body is the component. 201 for a new service, 200
/// for a replaced one; the old version keeps serving if anything is wrong.
#[utoipa::path(
    put,
    path = "/v1/plugins/{service}",
    operation_id = "uploadPlugin",
    tag = "plugins",
    params(("service" = String, Path, pattern = "^[a-z][a-z0-9-]{0,63}$",
        description = "The service the component implements (its name must match)")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "A wasm component built against wasaga's WIT (any content type is read as the file)"),
    responses(
        (status = 200, description = "Replaced: the new version serves", body = PluginView),
        (status = 201, description = "A new service serves", body = PluginView),
        (status = 400, description = "A bad service name, or the body is not a wasm component"),
        (status = 409, description = "A saga definition needs an operation it lacks, or a change is under way"),
        (status = 413, description = "The body is over 64 MiB"),
        (status = 422, description = "The component does not load (the reason), or is another service"),
        (status = 500, description = "Keeping the upload failed"),
        (status = 503, description = "The store cannot write"),
    ),
    security(("admin_token" = [])),
)]
pub async fn upload(
    // First: nobody without the admin token makes the server read 64 MiB.
    _: Operator,
    State(state): State<AppState>,
    Path(service): Path<String>,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    crate::service::validate_service_name(&service).map_err(ApiError::bad_request)?;
    let wasm = axum::body::to_bytes(body, MAX_UPLOAD_BYTES).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a plugin may be at most {MAX_UPLOAD_BYTES} bytes"),
        )
    })?;
    let (plugin, created) = state.plugins.upload(&service, wasm.to_vec()).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(PluginView::new(&plugin, state.invoker.registry(), state.invoker.outbound())))
        .into_response())
}

/// `DELETE /v1/plugins/{service}`: 204, or 409 naming what still needs it.
#[utoipa::path(
    delete,
    path = "/v1/plugins/{service}",
    operation_id = "removePlugin",
    tag = "plugins",
    params(("service" = String, Path, description = "A loaded service")),
    responses(
        (status = 204, description = "Removed: it serves no more"),
        (status = 404, description = "No such service"),
        (status = 409, description = "A saga definition or unfinished saga still needs it"),
        (status = 500, description = "Keeping the removal failed"),
        (status = 503, description = "The store cannot write"),
    ),
    security(("admin_token" = [])),
)]
pub async fn remove(
    _: Operator,
    State(state): State<AppState>,
    Path(service): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.plugins.remove(&service).await?;
    Ok(StatusCode::NO_CONTENT)
}
