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

/// The `recac` binary of this build (debug profile), built once per test process so that
/// tests that run it as a subprocess never run a stale one.
pub fn recac_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = std::process::Command::new(cargo)
                .args(["build", "--quiet", "-p", "recac"])
                .current_dir(repo_root())
                .status()
                .expect("cargo runs");
            assert!(status.success(), "cargo build -p recac failed");
            let target = std::env::var("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| repo_root().join("target"));
            target.join("debug/recac")
        })
        .clone()
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

/// Polls `check` every 200 ms until it returns `Some`, or panics after `timeout` with `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if std::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A plain HTTP GET on loopback, returning the status code and body.
pub async fn http_get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    try_http_get(address, path)
        .await
        .unwrap_or_else(|| panic!("GET http://{address}{path} failed"))
}

/// Like [`http_get`], but `None` when nothing answers.
pub async fn try_http_get(address: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// An operator (every controller, as `recac orchestrate` assembles them) running in this
/// test process, with its admin server on a free loopback port.
pub struct RunningOperator {
    stop: tokio::sync::watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
    /// The admin server (`/metrics`, `/healthz`, `/readyz`).
    pub http: std::net::SocketAddr,
    stop_within: std::time::Duration,
}

impl RunningOperator {
    /// Builds and starts the operator; [`RunningOperator::stop`] must return within
    /// `stop_within` of its signal.
    pub async fn start(
        config: kube::Config,
        setup: recac_operator::OperatorSetup,
        stop_within: std::time::Duration,
    ) -> Self {
        let operator =
            recac_operator::Operator::build(config, setup, recac_runtime::Leadership::always())
                .expect("builds");
        let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let http = listener.local_addr().expect("address");
        let handle = tokio::spawn(async move {
            let outcome = operator
                .run(listener, async move {
                    let _ = stop_rx.wait_for(|s| *s).await;
                })
                .await;
            assert_eq!(outcome, Ok(()), "the operator stops cleanly");
        });
        Self {
            stop,
            handle,
            http,
            stop_within,
        }
    }

    /// A clean stop, as on shutdown or losing leadership.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let stopped = tokio::time::timeout(self.stop_within, self.handle).await;
        assert!(
            stopped.is_ok(),
            "the operator did not stop within {:?} of its shutdown signal",
            self.stop_within
        );
    }

    /// A crash: everything stops at once, nothing is cleaned up.
    pub async fn kill(self) {
        self.handle.abort();
        let _ = self.handle.await;
    }
}
