//! The stop signal: SIGTERM or SIGINT ends serving, and `http_server` drains the connections
//! (stops accepting, closes idle ones, lets calls in flight answer) within the drain timeout.

use std::time::Duration;

/// Resolves at SIGTERM or SIGINT, saying so and how long the drain may take.
pub async fn stop_signal(timeout: Duration) {
    let name = signal().await;
    tracing::info!(
        drain_timeout_s = timeout.as_secs(),
        "{name}: no longer accepting; finishing the calls in flight"
    );
}

/// Waits for SIGTERM or SIGINT (Ctrl-C); returns its name.
async fn signal() -> &'static str {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = ctrl_c => "SIGINT",
                _ = term.recv() => "SIGTERM",
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot handle SIGTERM; only SIGINT stops the server");
                let _ = ctrl_c.await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
        "SIGINT"
    }
}
