//! `recac dev`: the whole product on one machine, on loopback.
//!
//! It starts, in this order, and stops in the reverse order:
//! - a git server (real git over HTTPS, a token as the password) with a demo repository;
//! - the Jira simulator, seeded with the demo project and its tickets ([`demo`]), unless
//!   a real Jira is named;
//! - the demo model ([`model`]), unless a provider key is set;
//! - a control plane (etcd, kube-apiserver, kube-controller-manager) from the cached
//!   binaries, building them first when absent, with the CRDs, the namespaces and the
//!   agents' Secret;
//! - the node agent, which runs each agent pod's command (`recac start`) as a process;
//! - the operator replicas (`recac orchestrate`), reading the configuration
//!   ([`config`]), one of which takes the Lease.
//!
//! With `--real-node` the same demo runs on a real node instead ([`realnode`]): a kubelet
//! with containerd runs the agents from the built image and the operator is deployed into
//! the cluster as the README deploys it.
//!
//! While they run it shows one line per ticket ([`progress`]). It ends on Ctrl-C or
//! SIGTERM, when any part dies (saying which, with the end of its log) and, with
//! `--once`, when every ticket has finished with its comment.

pub mod config;
pub mod demo;
pub mod model;
pub mod progress;
pub mod realnode;
pub mod state;

mod stack;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use stack::{Outcome, run};

/// Errors of `recac dev`; each names the cause and the fix.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(
        "{what} cannot listen on {address}: {source}. Stop what uses the port (`ss -ltnp 'sport = :{port}'` shows it), or choose another port: copy config/dev/config.yaml, change it there and pass --config (the git server's port: --git-port)",
        port = address.port()
    )]
    PortInUse {
        what: String,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "the state folder {path} is in use by another `recac dev` (pid {pid}): stop it first, or pass --state-dir to run a second one"
    )]
    StateInUse { path: String, pid: u32 },
    #[error(
        "the state folder {path} was kept by an earlier `recac dev --keep`: remove it (`rm -rf {path}`) or pass another --state-dir"
    )]
    StateKept { path: String },
    #[error(
        "{path} exists and is not a `recac dev` state folder: pass --state-dir with a new or empty folder"
    )]
    StateNotOurs { path: String },
    #[error(
        "the control plane's binaries are not in {folder} and Go is not installed to build them: install Go 1.25+ (https://go.dev/dl/) and run again, or set KUBEBUILDER_ASSETS to a folder holding etcd, kube-apiserver and kube-controller-manager"
    )]
    NoGo { folder: String },
    #[error("building the control plane failed ({0}); its output is above")]
    Build(String),
    #[error("git is required: {0}")]
    NoGit(String),
    #[error("{part} did not start: {message}")]
    Start { part: String, message: String },
    #[error("{part} stopped unexpectedly ({status}); the end of its log ({log}):\n{tail}")]
    PartDied {
        part: String,
        status: String,
        log: String,
        tail: String,
    },
    #[error("not every ticket finished within {seconds} s; the state is in {state}:\n{table}")]
    Timeout {
        seconds: u64,
        state: String,
        table: String,
    },
    #[error("interrupted before every ticket finished")]
    Interrupted,
    #[error("stopped by a signal before everything had started")]
    StoppedWhileStarting,
    #[error("io error on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl DevError {
    pub(crate) fn port(what: &str, address: SocketAddr, source: std::io::Error) -> Self {
        DevError::PortInUse {
            what: what.to_string(),
            address,
            source,
        }
    }

    pub(crate) fn start(part: &str, message: impl std::fmt::Display) -> Self {
        DevError::Start {
            part: part.to_string(),
            message: message.to_string(),
        }
    }
}

/// What `recac dev` runs.
#[derive(Clone, Debug)]
pub struct DevOptions {
    /// The operator configuration; `None`: the built-in `config/dev/config.yaml`.
    pub config: Option<PathBuf>,
    /// The state folder.
    pub state_dir: PathBuf,
    /// Keep the state folder after the run.
    pub keep: bool,
    /// End when every ticket has finished (exit status says whether all did).
    pub once: bool,
    /// With `once`: how long to wait.
    pub timeout: Duration,
    /// Operator replicas.
    pub replicas: u16,
    /// A real Jira instead of the simulator.
    pub jira_url: Option<String>,
    /// The git server's address.
    pub git_address: SocketAddr,
    /// The `recac` binary the operators and agents run.
    pub recac_binary: PathBuf,
    /// `hack/envtest.sh`, which builds the control plane when its binaries are absent.
    pub envtest_script: PathBuf,
    /// Redraw the progress table in place (a terminal) or print changed lines.
    pub tty: bool,
    /// Run on the real node `hack/realnode-up.sh` started ([`realnode`]) instead of the
    /// local control plane and node agent.
    pub real_node: bool,
}

impl DevOptions {
    /// The defaults for `recac_binary`: state in [`state::default_path`], two replicas,
    /// the git server on 127.0.0.1:18083, ten minutes for `--once`.
    pub fn new(recac_binary: PathBuf) -> Self {
        Self {
            config: None,
            state_dir: state::default_path(),
            keep: false,
            once: false,
            timeout: Duration::from_secs(600),
            replicas: 2,
            jira_url: None,
            git_address: SocketAddr::from(([127, 0, 0, 1], 18083)),
            recac_binary,
            envtest_script: PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../hack/envtest.sh"
            )),
            tty: std::io::stdout().is_terminal(),
            real_node: false,
        }
    }
}
