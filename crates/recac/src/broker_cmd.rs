//! `recac secret-broker`: the `secrets` sidecar of an agent pod. It alone mounts the task's
//! Secrets, reads them at start and hands them to the first connection on its socket (the
//! agent's, at its start), then serves nothing more and waits for SIGTERM. The work lives in
//! `recac_agent::broker`.

use std::path::PathBuf;
use std::process::ExitCode;

use recac_agent::broker::{self, BrokerOptions, Served};
use recac_agent::settings::vars;

/// A required variable's value, or an error naming it.
fn required(name: &str) -> Result<PathBuf, String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| {
            format!("{name} is required: set by the operator on the `secrets` container")
        })
}

/// Runs `recac secret-broker`: exit 0 at SIGTERM, 1 when it cannot set up.
pub fn run() -> ExitCode {
    if let Err(e) = broker::make_undumpable() {
        tracing::warn!(error = %e, "cannot make the broker non-dumpable");
    }
    let options = match (required(vars::SECRETS_DIR), required(vars::SECRETS_SOCKET)) {
        (Ok(secrets_dir), Ok(socket)) => BrokerOptions {
            secrets_dir,
            socket,
        },
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let stop = tokio_util::sync::CancellationToken::new();
        // The kubelet stops sidecars with SIGTERM after the agent's container ends.
        tokio::spawn(crate::signals::cancel_on_signal(
            stop.clone(),
            std::time::Duration::ZERO,
            "the broker ends when killed",
        ));
        match broker::serve(&options, stop).await {
            Ok(served) => {
                let how = match served {
                    Served::Handed { .. } => "after handing the Secrets over",
                    Served::Unasked => "before anything connected",
                    Served::Restarted => "having served nothing (a restart)",
                };
                tracing::info!("the secret broker stops {how}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %e, "the secret broker cannot run");
                ExitCode::FAILURE
            }
        }
    })
}
