//! The `recac` command: the operator, the agent and the tools around them.

mod broker_cmd;
mod config;
mod dev_cmd;
mod egress_cmd;
mod jira_cmd;
mod orchestrate_cmd;
mod signals;
mod start_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use recac_runtime::logging::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "recac",
    version,
    about = "Turns tickets into AI coding-agent Jobs on Kubernetes"
)]
struct Cli {
    /// Log format: `text`, or `json` (one JSON object per line, for clusters).
    #[arg(long, global = true, env = "RECAC_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print every CustomResourceDefinition recac serves, as YAML.
    Crd,
    /// Run the operator: watch AgentTasks and run each as agent Jobs.
    Orchestrate(orchestrate_cmd::OrchestrateArgs),
    /// Print the version of this build.
    Version,
    /// Run the agent: clone, work on the ticket, test, push and report (what a task's Job runs).
    Start(Box<start_cmd::StartArgs>),
    /// Jira tools: check the connection, search, list transitions, run the simulator.
    Jira(jira_cmd::JiraArgs),
    /// Run the whole loop on this machine: a local control plane, the Jira simulator with
    /// demo tickets, a git server, the demo model, a node agent and two operator replicas.
    Dev(dev_cmd::DevArgs),
    /// The secret broker of an agent pod (its `secrets` sidecar): reads the task's Secrets
    /// from RECAC_SECRETS_DIR and hands them to the first connection on the unix socket
    /// RECAC_SECRETS_SOCKET (the agent's), then waits for SIGTERM.
    #[command(hide = true)]
    SecretBroker,
    /// The egress proxy agent pods reach the network through (agent.egress.mode allowList):
    /// CONNECT and plain HTTP, allowed by host name per pod, never decrypting TLS.
    EgressProxy(egress_cmd::EgressProxyArgs),
    /// ssh's ProxyCommand behind the egress proxy: a CONNECT tunnel to HOST:PORT through
    /// --proxy, relayed over standard input and output.
    #[command(hide = true)]
    EgressConnect(egress_cmd::EgressConnectArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = if cli.log_format == "json" {
        LogFormat::Json
    } else {
        LogFormat::Text
    };
    match cli.command {
        Command::Orchestrate(args) => {
            logging::init(log_format, "info", std::io::stderr);
            orchestrate_cmd::run(args)
        }
        Command::Start(args) => start_cmd::run(*args, log_format),
        Command::SecretBroker => {
            logging::init(log_format, "info", std::io::stderr);
            broker_cmd::run()
        }
        Command::EgressProxy(args) => {
            logging::init(log_format, "info", std::io::stderr);
            egress_cmd::run(args)
        }
        Command::EgressConnect(args) => {
            logging::init(log_format, "warn", std::io::stderr);
            egress_cmd::connect(args)
        }
        Command::Dev(args) => {
            // The control plane is polled while it starts; its refusals are expected.
            logging::init(log_format, "warn,kube_client=off", std::io::stderr);
            dev_cmd::run(args)
        }
        Command::Jira(args) => {
            logging::init(log_format, "warn", std::io::stderr);
            jira_cmd::run(args)
        }
        Command::Crd => match recac_api::crds_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::FAILURE
            }
        },
        Command::Version => {
            println!("recac {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
    }
}
