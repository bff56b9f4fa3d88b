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
    /// Run the demo on a real node instead: a kubelet with containerd on this machine runs
    /// the agents as pods of the built image, and the operator is deployed into the cluster
    /// with `kubectl apply -k`, as `make e2e` does. Needs root and the repository's hack/
    /// scripts (it builds or finds the node's binaries and the image, then re-runs itself
    /// inside hack/realnode-up.sh, which removes the node when it ends).
    #[arg(long)]
    pub real_node: bool,
}

pub fn run(args: DevArgs) -> ExitCode {
    let binary = match std::env::current_exe() {
        Ok(path) => path,
        Err(e) => {
            eprintln!("error: cannot find the recac binary itself: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.real_node && recac_dev::realnode::Node::from_env().is_none() {
        return start_real_node(&binary);
    }
    let mut options = DevOptions::new(binary);
    options.real_node = args.real_node;
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

/// Re-runs this command inside `hack/dev-real-node.sh`, which builds or finds the node's
/// binaries and the image (with this binary in it) and starts the node.
fn start_real_node(binary: &std::path::Path) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let script = recac_dev::realnode::repo_root().join("hack/dev-real-node.sh");
    if !script.is_file() {
        eprintln!(
            "error: --real-node needs the recac repository's hack/ scripts ({} is missing): run it from a checkout, e.g. `make dev-real-node`",
            script.display()
        );
        return ExitCode::FAILURE;
    }
    if !rustix::process::geteuid().is_root() {
        eprintln!(
            "error: --real-node needs root: it runs a kubelet and containerd on this machine (mounts, cgroups, a network bridge); run it with sudo"
        );
        return ExitCode::FAILURE;
    }
    let args: Vec<std::ffi::OsString> = std::env::args_os()
        .skip_while(|a| a != "dev")
        .skip(1)
        .collect();
    let error = std::process::Command::new("bash")
        .arg(&script)
        .args(&args)
        .env("RECAC_BINARY", binary)
        .exec();
    eprintln!("error: cannot run {}: {error}", script.display());
    ExitCode::FAILURE
}
