//! `recac orchestrate`: the operator process.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use recac_controller::TaskController;
use tracing::{error, info};

use crate::config::OperatorConfig;

#[derive(Args, Debug)]
pub struct OrchestrateArgs {
    /// The operator's YAML configuration file; without it every setting takes its default.
    #[arg(long, env = "RECAC_CONFIG")]
    pub config: Option<PathBuf>,
    /// Only validate the configuration file, then exit.
    #[arg(long)]
    pub check_config: bool,
    /// Log format: text or json.
    #[arg(long, env = "RECAC_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

pub fn run(args: OrchestrateArgs) -> ExitCode {
    init_logging(&args.log_format);
    let config = match OperatorConfig::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(orchestrate(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!("{err}");
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn orchestrate(config: OperatorConfig) -> Result<(), String> {
    let client = kube::Client::try_default()
        .await
        .map_err(|e| format!("cannot reach Kubernetes (kubeconfig or in-cluster config): {e}"))?;
    let address = config.controller.metrics_address.clone();
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .map_err(|e| format!("cannot listen on controller.metricsAddress {address}: {e}"))?;
    let instance = std::env::var("POD_NAME").ok();
    let controller =
        TaskController::new(client, &config.controller, config.agent.clone(), instance);
    let observed = controller.observed();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    info!(
        address = %address,
        namespaces = ?config.controller.namespaces,
        max_concurrent_tasks = config.controller.max_concurrent_tasks,
        "recac operator starting"
    );
    let server = tokio::spawn(recac_controller::http::serve(listener, observed, stopped()));
    let controller_run = tokio::spawn(controller.run(stopped()));
    shutdown_signal().await;
    info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = controller_run.await;
    match server.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("metrics server: {e}")),
        Err(e) => Err(format!("metrics server task: {e}")),
    }
}
