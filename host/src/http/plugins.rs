//! `GET /v1/plugins`: what serves each service, and which files were refused.

use std::time::UNIX_EPOCH;

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use super::AppState;
use crate::runtime::{Plugin, Refusal};
use crate::service::OperationInfo;

#[derive(Debug, Serialize)]
pub struct PluginList {
    pub plugins: Vec<PluginView>,
    pub refused: Vec<Refusal>,
}

#[derive(Debug, Serialize)]
pub struct PluginView {
    pub service: String,
    pub digest: String,
    pub size: usize,
    /// Seconds since the Unix epoch.
    pub loaded_at: u64,
    pub deadline_ms: u128,
    pub memory_limit_bytes: u64,
    pub operations: Vec<OperationInfo>,
    pub subscriptions: Vec<(String, String)>,
}

impl From<&Plugin> for PluginView {
    fn from(plugin: &Plugin) -> Self {
        let limits = plugin.limits();
        PluginView {
            service: plugin.service().to_owned(),
            digest: plugin.digest().to_string(),
            size: plugin.size(),
            loaded_at: plugin.loaded_at().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            deadline_ms: limits.deadline.as_millis(),
            memory_limit_bytes: limits.memory_bytes,
            operations: plugin.manifest().operations.clone(),
            subscriptions: plugin.manifest().subscriptions.clone(),
        }
    }
}

pub async fn list(State(state): State<AppState>) -> Json<PluginList> {
    let plugins = state.invoker.registry().plugins().iter().map(|p| PluginView::from(&**p)).collect();
    Json(PluginList { plugins, refused: state.invoker.registry().refused() })
}
