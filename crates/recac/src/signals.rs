//! SIGTERM and SIGINT for the commands that run until they are told to stop.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Cancels `stop` at SIGINT, or `drain` after SIGTERM (a signal in between ends the wait).
/// `unhandled` says what follows when the signals cannot be caught.
pub async fn cancel_on_signal(stop: CancellationToken, drain: Duration, unhandled: &str) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot handle SIGTERM: {unhandled}");
        return;
    };
    tokio::select! {
        _ = term.recv() => {
            tracing::warn!("SIGTERM received");
            if !drain.is_zero() {
                tracing::info!(seconds = drain.as_secs(), "serving on while the cluster stops sending new connections");
                tokio::select! {
                    () = tokio::time::sleep(drain) => {}
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
        }
        _ = int.recv() => tracing::warn!("SIGINT received"),
    }
    stop.cancel();
}
