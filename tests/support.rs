//! Helpers shared by the end-to-end tests.

use std::path::PathBuf;
use std::process::Output;

use kube::CustomResourceExt;
use recac_testenv::{ControlPlane, ControlPlaneOptions, shared_control_plane};

/// The repository's root folder.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// The shared control plane with the recac CRDs installed.
pub async fn control_plane(options: ControlPlaneOptions) -> &'static ControlPlane {
    let plane = shared_control_plane(options)
        .await
        .expect("the control plane starts (run `make envtest` first)");
    plane
        .install_crds(&[recac_api::AgentTask::crd()])
        .await
        .expect("the recac CRDs install");
    plane
}

/// Runs kubectl with `args` and returns its output.
pub fn kubectl(plane: &ControlPlane, args: &[&str]) -> Output {
    plane.kubectl().args(args).output().expect("kubectl runs")
}

/// Runs kubectl with `args` and the given standard input.
pub fn kubectl_stdin(plane: &ControlPlane, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = plane
        .kubectl()
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(stdin.as_bytes())
        .expect("kubectl reads its input");
    child.wait_with_output().expect("kubectl finishes")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
