//! `recac dev`: the whole loop on one machine (see the `recac-dev` crate).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use recac_dev::DevOptions;

#[derive(Args, Debug)]
pub struct DevArgs {
    /// The operator configuration; default: the built-in config/dev/config.yaml.
    #[arg(long, env = "RECAC_DEV_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the run keeps its state (control plane data, logs, git repositories);
    /// default: $XDG_STATE_HOME/recac/dev or ~/.local/state/recac/dev.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Keep the state folder after the run.
    #[arg(long)]
    pub keep: bool,
    /// Exit when every ticket has finished with its comment: 0 when all did, 1 otherwise.
    #[arg(long)]
    pub once: bool,
    /// With --once: how long to wait, in seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// How many operator replicas to run (one of them leads).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=5))]
    pub replicas: u16,
    /// A real Jira instead of the simulator (credentials from the variables the
    /// configuration's `jira.auth` names, e.g. JIRA_EMAIL and JIRA_API_TOKEN).
    #[arg(long, env = "JIRA_URL")]
    pub jira_url: Option<String>,
    /// The git server's port on 127.0.0.1.
    #[arg(long, default_value_t = 18083)]
    pub git_port: u16,
}

pub fn run(args: DevArgs) -> ExitCode {
    let binary = match std::env::current_exe() {
        Ok(path) => path,
        Err(e) => {
            eprintln!("error: cannot find the recac binary itself: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut options = DevOptions::new(binary);
    options.config = args.config;
    if let Some(dir) = args.state_dir {
        options.state_dir = dir;
    }
    options.keep = args.keep;
    options.once = args.once;
    options.timeout = Duration::from_secs(args.timeout);
    options.replicas = args.replicas;
    options.jira_url = args.jira_url.filter(|u| !u.is_empty());
    options.git_address = SocketAddr::from(([127, 0, 0, 1], args.git_port));
    let once = options.once;
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(recac_dev::run(options)) {
        Ok(outcome) if once && !outcome.all_finished => {
            eprintln!("error: not every ticket finished");
            ExitCode::FAILURE
        }
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
