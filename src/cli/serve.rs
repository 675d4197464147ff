//! `fleetledger serve`: the service until SIGINT or SIGTERM, then a graceful shutdown.

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::Config;
use crate::server;

/// Serves until a signal, then stops accepting, drains and writes a last checkpoint.
pub(crate) async fn serve(config: Config) -> anyhow::Result<()> {
    let token = CancellationToken::new();
    let running = server::start(config, token.clone())
        .await
        .context("starting the server")?;
    println!("fleetledger listening on http://{}", running.addr);
    let signals = tokio::spawn(shutdown_signal(token.clone()));
    let result = running.wait().await;
    token.cancel();
    let _ = signals.await;
    result
}

/// Cancels `token` on SIGINT or SIGTERM (or returns when it is cancelled otherwise).
pub(crate) async fn shutdown_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
        _ = token.cancelled() => return,
    }
    tracing::info!("shutdown requested");
    token.cancel();
}
