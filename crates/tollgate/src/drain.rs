//! Serving until SIGTERM or SIGINT, then draining: the listener stops accepting, idle
//! keep-alive connections are closed, and calls in flight finish and are answered, within the
//! drain timeout.

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Serves `app` on `listener` until a stop signal, then waits up to `timeout` for the calls in
/// flight. Returns whether they all finished (`false`: the timeout cut them off).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    timeout: Duration,
) -> anyhow::Result<bool> {
    let signalled = Arc::new(Notify::new());
    let server = axum::serve(listener, app)
        .with_graceful_shutdown({
            let signalled = signalled.clone();
            async move {
                let name = stop_signal().await;
                tracing::info!(
                    drain_timeout_s = timeout.as_secs(),
                    "{name}: no longer accepting; finishing the calls in flight"
                );
                signalled.notify_one();
            }
        })
        .into_future();
    let deadline = async {
        signalled.notified().await;
        tokio::time::sleep(timeout).await;
    };
    tokio::select! {
        served = server => {
            served?;
            Ok(true)
        }
        () = deadline => Ok(false),
    }
}

/// Waits for SIGTERM or SIGINT (Ctrl-C); returns its name.
async fn stop_signal() -> &'static str {
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
