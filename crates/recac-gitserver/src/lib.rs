//! A git server for `recac dev` and tests: real git over smart HTTP (or HTTPS), served
//! by git's own `git http-backend` (CGI) behind a small hyper server that demands HTTP
//! basic authentication, the way git hosts take a token as the password.
//!
//! Every repository under [`GitServerOptions::root`] is served at
//! `<url>/<path relative to root>` (e.g. `<url>/demo.git`); clone, fetch and push work.
//! With [`GitServerOptions::tls`] the server generates a CA and a serving certificate
//! for `127.0.0.1` and `localhost`; clients trust it through [`GitServer::ca_pem`]
//! (git reads it from `GIT_SSL_CAINFO`).

mod cgi;
mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Errors of the git server; each names what failed.
#[derive(Debug, thiserror::Error)]
pub enum GitServerError {
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("git http-backend not found: `git --exec-path` {0}; install git")]
    Backend(String),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("io error on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("`git {command}` failed: {message}")]
    Git { command: String, message: String },
}

pub type Result<T, E = GitServerError> = std::result::Result<T, E>;

/// How to run a [`GitServer`].
#[derive(Clone, Debug)]
pub struct GitServerOptions {
    /// The folder holding the bare repositories.
    pub root: PathBuf,
    /// The password every request must carry (any user name is accepted).
    pub token: String,
    /// Serve HTTPS with a generated certificate instead of plain HTTP.
    pub tls: bool,
    /// Where to listen; port 0 picks a free port.
    pub address: SocketAddr,
}

impl GitServerOptions {
    /// Plain HTTP on a free loopback port.
    pub fn plain(root: impl Into<PathBuf>, token: &str) -> Self {
        Self {
            root: root.into(),
            token: token.to_string(),
            tls: false,
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }
}

/// A running git server; dropping it stops serving.
pub struct GitServer {
    url: String,
    address: SocketAddr,
    ca_pem: Option<String>,
    log: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl GitServer {
    /// Binds the address and serves until dropped.
    pub async fn start(options: GitServerOptions) -> Result<Self> {
        let backend = cgi::backend_path()?;
        let listener =
            TcpListener::bind(options.address)
                .await
                .map_err(|source| GitServerError::Bind {
                    address: options.address,
                    source,
                })?;
        let address = listener
            .local_addr()
            .map_err(|source| GitServerError::Bind {
                address: options.address,
                source,
            })?;
        let (acceptor, ca_pem) = if options.tls {
            let generated = tls::generate(address.ip())?;
            (Some(generated.acceptor), Some(generated.ca_pem))
        } else {
            (None, None)
        };
        let scheme = if options.tls { "https" } else { "http" };
        let url = format!("{scheme}://{address}");
        let log = Arc::new(Mutex::new(Vec::new()));
        let backend = Arc::new(cgi::Backend {
            program: backend,
            root: options.root,
            token: options.token,
            log: log.clone(),
        });
        let task = tokio::spawn(cgi::serve(listener, acceptor, backend));
        Ok(Self {
            url,
            address,
            ca_pem,
            log,
            task,
        })
    }

    /// The base URL; a repository is at `<url>/<name>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The CA certificate (PEM) that signed the server's certificate, with TLS.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// "METHOD path status" of every request, in order.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().map(|log| log.clone()).unwrap_or_default()
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Creates the bare repository `root/name` whose branch `branch` holds one commit with
/// `files` (path, contents); a file whose path ends in `.sh` is made executable.
pub fn create_repository(
    root: &Path,
    name: &str,
    branch: &str,
    files: &[(&str, &str)],
    message: &str,
) -> Result<PathBuf> {
    let bare = root.join(name);
    let work = root.join(format!(".{name}.work"));
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| GitServerError::Io { path, source }
    };
    std::fs::create_dir_all(&work).map_err(io(&work))?;
    git(root, &["init", "--quiet", "--bare", "-b", branch, name])?;
    git(&work, &["init", "--quiet", "-b", branch])?;
    for (path, contents) in files {
        let file = work.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&file, contents).map_err(io(&file))?;
        if path.ends_with(".sh") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755))
                .map_err(io(&file))?;
        }
    }
    git(&work, &["add", "--all"])?;
    git(
        &work,
        &[
            "-c",
            "user.name=recac",
            "-c",
            "user.email=recac@localhost",
            "commit",
            "--quiet",
            "-m",
            message,
        ],
    )?;
    let bare_text = bare.display().to_string();
    git(&work, &["push", "--quiet", &bare_text, branch])?;
    std::fs::remove_dir_all(&work).map_err(io(&work))?;
    Ok(bare)
}

/// Runs `git args...` in `dir` without any global or system configuration.
pub fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .map_err(|e| GitServerError::Git {
            command: args.join(" "),
            message: e.to_string(),
        })?;
    if !output.status.success() {
        return Err(GitServerError::Git {
            command: args.join(" "),
            message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}
