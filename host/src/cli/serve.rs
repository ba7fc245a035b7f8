//! `wasaga serve`: the server.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::RuntimeArgs;
use crate::http::{AppState, router};
use crate::runtime::{Registry, Runtime};

/// Serve the plugins of a directory over HTTP.
///
/// Every `*.wasm` in the plugins directory is compiled, checked against the
/// wasaga:plugin world and described; a file that fails is reported (log and
/// `GET /v1/plugins`) and the others still serve. Prints `listening on http://ADDR`
/// on stdout once ready.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Directory of plugin components (`<name>.wasm`, optional `<name>.toml` limits).
    #[arg(long, env = "WASAGA_PLUGINS")]
    plugins: PathBuf,

    /// Directory for wasaga's data (created if missing).
    #[arg(long, env = "WASAGA_DATA")]
    data: PathBuf,

    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "WASAGA_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    #[command(flatten)]
    runtime: RuntimeArgs,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<std::process::ExitCode> {
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("creating the data directory {}", args.data.display()))?;
    let runtime = Runtime::new(args.runtime.options())?;
    let registry = Registry::new(runtime);
    registry
        .load_dir(&args.plugins, &args.runtime.settings())
        .await
        .with_context(|| format!("reading the plugins directory {}", args.plugins.display()))?;

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    tracing::info!(%addr, plugins = registry.plugins().len(), refused = registry.refused().len(), "serving");

    axum::serve(listener, router(AppState { registry })).with_graceful_shutdown(shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(std::process::ExitCode::SUCCESS)
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
