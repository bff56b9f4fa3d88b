//! Test support for recac: a real Kubernetes control plane (etcd, kube-apiserver and,
//! on request, kube-controller-manager) started on loopback ports with generated
//! certificates, and helpers to use it from tests.
//!
//! [`NodeAgent`] is a small local stand-in for a kubelet: it registers a Node,
//! binds pods to it and runs their containers' commands as local processes.
//!
//! The binaries come from `make envtest`; their folder is found through
//! `KUBEBUILDER_ASSETS`, else the default cache folder.

mod certs;
mod control_plane;
pub mod faults;
mod node_agent;
mod process;

pub use control_plane::binary_folder;
pub use control_plane::{ControlPlane, ControlPlaneOptions, shared_control_plane};
pub use node_agent::{NodeAgent, NodeAgentOptions};
pub use process::ManagedProcess;

/// Errors of the test environment. Each says what failed and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum TestEnvError {
    #[error(
        "control-plane binary {name} not found in {dir}: run `make envtest` and export KUBEBUILDER_ASSETS to the folder it prints"
    )]
    MissingBinary { name: String, dir: String },
    #[error("cannot start {name}: {source}")]
    Spawn {
        name: String,
        source: std::io::Error,
    },
    #[error("{name} exited or did not become ready within {seconds}s; the end of its log:\n{log}")]
    NotReady {
        name: String,
        seconds: u64,
        log: String,
    },
    #[error("generating certificates: {0}")]
    Certificates(#[from] rcgen::Error),
    #[error("io error on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("kube client: {0}")]
    Kube(#[from] kube::Error),
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("node agent: {0}")]
    NodeAgent(String),
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = TestEnvError> = std::result::Result<T, E>;
