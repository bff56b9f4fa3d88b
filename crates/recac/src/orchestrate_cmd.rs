//! `recac orchestrate`: the operator process. Builds the shared caches and the components
//! from the configuration and hands them to the runtime's supervisor.

use clap::Args;
use recac_operator::{Operator, OperatorSetup};
use std::path::PathBuf;
use std::process::ExitCode;
use tracing::{error, info, warn};

use crate::config::OperatorConfig;

#[derive(Args, Debug)]
pub struct OrchestrateArgs {
    /// The operator's YAML configuration file; without it every setting takes its default.
    #[arg(long, env = "RECAC_CONFIG")]
    pub config: Option<PathBuf>,
    /// Only validate the configuration file, then exit.
    #[arg(long)]
    pub check_config: bool,
    /// Show which tickets the sources would claim, with the resolved repository and the
    /// AgentTask that would be created (YAML), then exit; writes nothing to Jira or Kubernetes.
    #[arg(long)]
    pub dry_run: bool,
    /// Serve `/metrics`, `/healthz` and `/readyz` on this address instead of
    /// `operator.adminAddress` (e.g. a second replica on the same machine).
    #[arg(long, env = "RECAC_ADMIN_ADDRESS", value_name = "HOST:PORT")]
    pub admin_address: Option<std::net::SocketAddr>,
}

pub fn run(args: OrchestrateArgs) -> ExitCode {
    let config = match OperatorConfig::load(args.config.as_deref()) {
        Ok(mut config) => {
            if let Some(address) = args.admin_address {
                config.operator.admin_address = address.to_string();
            }
            config
        }
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    if !args.check_config {
        for warning in &config.warnings {
            warn!("{warning}");
        }
    }
    if args.check_config {
        for warning in &config.warnings {
            eprintln!("warning: {warning}");
        }
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    if args.dry_run {
        let preview = tokio::runtime::Runtime::new()
            .map_err(|e| format!("cannot start the async runtime: {e}"))
            .and_then(|rt| rt.block_on(crate::jira_cmd::preview_sources(&config, None)));
        return match preview {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::FAILURE
            }
        };
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

/// The feedback controller's setup: only with a `jira:` connection and `feedback.enabled`.
fn feedback_setup(
    config: &OperatorConfig,
) -> Result<Option<recac_feedback::FeedbackSetup>, String> {
    let Some(jira) = config.jira.as_ref().filter(|_| config.feedback.enabled) else {
        return Ok(None);
    };
    let client = recac_jira::JiraClient::new(jira)
        .map_err(|e| format!("cannot build the Jira client for the feedback controller: {e}"))?;
    recac_feedback::FeedbackSetup::new(config.feedback.clone(), client)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// The source controller's setup: only with `sources:` (validation requires `jira:` then).
fn sources_setup(config: &OperatorConfig) -> Result<Option<recac_source::SourcesSetup>, String> {
    let Some(jira) = config.jira.as_ref().filter(|_| !config.sources.is_empty()) else {
        return Ok(None);
    };
    let client = recac_jira::JiraClient::new(jira)
        .map_err(|e| format!("cannot build the Jira client for the sources: {e}"))?;
    let webhook = match &config.jira_webhook {
        None => None,
        Some(w) => Some(recac_source::WebhookSetup {
            path: w.path.clone(),
            secret: w.secret().map_err(|e| e.to_string())?,
            max_body_bytes: w.max_body_bytes,
        }),
    };
    Ok(Some(recac_source::SourcesSetup {
        jira: client,
        sources: config.sources.clone(),
        webhook,
        hook: None,
    }))
}

async fn orchestrate(config: OperatorConfig) -> Result<(), String> {
    let kube_config = kube::Config::infer()
        .await
        .map_err(|e| format!("cannot reach Kubernetes (kubeconfig or in-cluster config): {e}"))?;
    let address = config.operator.admin_address.clone();
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .map_err(|e| format!("cannot listen on operator.adminAddress {address}: {e}"))?;
    let setup = OperatorSetup {
        operator: config.operator.clone(),
        task_controller: config.task_controller.clone(),
        agent: config.agent.clone(),
        instance: std::env::var("POD_NAME").unwrap_or_else(|_| "recac".into()),
        feedback: feedback_setup(&config)?,
        sources: sources_setup(&config)?,
    };
    let operator = Operator::from_config(kube_config, setup)
        .map_err(|e| format!("cannot build the Kubernetes client: {e}"))?;
    info!(
        address = %address,
        namespaces = ?config.operator.namespaces,
        max_concurrent_tasks = config.task_controller.max_concurrent_tasks,
        leader_election = config.operator.leader_election.enabled,
        "recac operator starting"
    );
    operator
        .run(listener, shutdown_signal())
        .await
        .map_err(|fatal| format!("{fatal}; exiting so that Kubernetes restarts the operator"))
}
