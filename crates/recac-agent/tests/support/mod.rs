//! Test support: git fixtures and simulators (an LLM speaking both API shapes, the GitHub pull
//! request API, and `git http-backend` behind basic auth). Only the tests use this.
#![allow(dead_code)]

pub mod github_sim;
pub mod llm_sim;

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use recac_agent::RunOutput;
use recac_agent::redact::{RedactingBuffer, Redactor};
use recac_agent::settings::{Settings, secrets_from_lookup};

/// Runs git synchronously for fixtures; panics on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "fixture")
        .env("GIT_AUTHOR_EMAIL", "fixture@example.com")
        .env("GIT_COMMITTER_NAME", "fixture")
        .env("GIT_COMMITTER_EMAIL", "fixture@example.com")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A bare repository `<root>/<name>` whose `main` holds `value.txt` ("value = 1") and a
/// Makefile whose `test` target passes when value.txt says "value = 2".
pub fn bare_repo(root: &Path, name: &str, extra: &[(&str, &str)]) -> PathBuf {
    let bare = root.join(name);
    std::fs::create_dir_all(&bare).unwrap();
    git(
        &bare,
        &["init", "--quiet", "--bare", "--initial-branch=main"],
    );
    let seed = root.join(format!("{name}-seed"));
    std::fs::create_dir_all(&seed).unwrap();
    git(&seed, &["init", "--quiet", "--initial-branch=main"]);
    std::fs::write(seed.join("value.txt"), "value = 1\n").unwrap();
    std::fs::write(
        seed.join("Makefile"),
        "test:\n\tgrep -q 'value = 2' value.txt\n",
    )
    .unwrap();
    for (path, content) in extra {
        std::fs::write(seed.join(path), content).unwrap();
    }
    git(&seed, &["add", "-A"]);
    git(&seed, &["commit", "--quiet", "-m", "initial"]);
    git(&seed, &["push", "--quiet", bare.to_str().unwrap(), "main"]);
    bare
}

/// Adds a commit on `branch` (created from main) of the bare repository.
pub fn push_branch(root: &Path, bare: &Path, branch: &str, file: &str, content: &str) -> String {
    let work = root.join(format!("branch-{}", branch.replace('/', "-")));
    git(
        root,
        &[
            "clone",
            "--quiet",
            bare.to_str().unwrap(),
            work.to_str().unwrap(),
        ],
    );
    git(&work, &["checkout", "--quiet", "-b", branch]);
    std::fs::write(work.join(file), content).unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "--quiet", "-m", "earlier attempt"]);
    git(&work, &["push", "--quiet", "origin", branch]);
    git(&work, &["rev-parse", "HEAD"])
}

/// The commit `branch` points at in the bare repository, if it exists.
pub fn remote_head(bare: &Path, branch: &str) -> Option<String> {
    let out = Command::new("git")
        .args([
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("refs/heads/{branch}"),
        ])
        .current_dir(bare)
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Every ref of the bare repository with its commit, and every commit it holds: what a push
/// would change.
pub fn remote_state(bare: &Path) -> (String, String) {
    (
        git(bare, &["for-each-ref", "--format=%(objectname) %(refname)"]),
        git(bare, &["rev-list", "--all"]),
    )
}

/// A file's content at `rev` of the bare repository.
pub fn show(bare: &Path, rev: &str, path: &str) -> String {
    git(bare, &["show", &format!("{rev}:{path}")])
}

pub fn file_url(path: &Path) -> String {
    format!("file://{}", path.display())
}

/// Mounts a Secret under `dir` as the kubelet does: each key a symlink into `..data`, itself a
/// symlink to a timestamped folder holding the files.
pub fn mount_secret(dir: &Path, secret: &str, keys: &[(&str, &str)]) {
    use std::os::unix::fs::symlink;
    let folder = dir.join(secret);
    let stamp = "..2026_01_01_00_00_00.000000001";
    std::fs::create_dir_all(folder.join(stamp)).unwrap();
    for (key, value) in keys {
        std::fs::write(folder.join(stamp).join(key), value).unwrap();
        symlink(format!("..data/{key}"), folder.join(key)).unwrap();
    }
    symlink(stamp, folder.join("..data")).unwrap();
}

/// A run's output and everything it logged (through the redactor, as `recac start` logs).
pub struct Ran {
    pub out: RunOutput,
    pub logs: String,
    pub result_file: String,
    pub seconds: f64,
}

/// Runs the flow with these variables (and a result path and workspace under `root`).
pub async fn run_with(root: &Path, vars: &[(&str, &str)]) -> Ran {
    run_stoppable(root, vars, tokio_util::sync::CancellationToken::new()).await
}

/// [`run_with`], told to stop (as SIGTERM does) when `stop` is cancelled.
pub async fn run_stoppable(
    root: &Path,
    vars: &[(&str, &str)],
    stop: tokio_util::sync::CancellationToken,
) -> Ran {
    let mut map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let n = std::fs::read_dir(root).map(|d| d.count()).unwrap_or(0);
    let result_path = root.join(format!("termination-log-{n}"));
    map.entry("RECAC_RESULT_PATH".into())
        .or_insert_with(|| result_path.display().to_string());
    map.entry("RECAC_WORKSPACE".into())
        .or_insert_with(|| root.join(format!("ws-{n}")).display().to_string());
    map.entry("RECAC_LLM_RETRY_BASE_MS".into())
        .or_insert_with(|| "10".into());
    let lookup = |k: &str| map.get(k).cloned();
    let redactor = Redactor::new(secrets_from_lookup(lookup));
    let buffer = RedactingBuffer::new(redactor.clone());
    let subscriber = tracing_subscriber::fmt()
        .with_writer(buffer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let start = std::time::Instant::now();
    let settings = Settings::from_lookup(lookup).expect("valid settings");
    let out = recac_agent::run_until(&settings, &redactor, stop).await;
    recac_agent::report::write_result(&settings.result_path, &out.result).unwrap();
    let result_json = recac_agent::report::termination_message(&out.result);
    tracing::info!(result = %result_json, "result");
    let seconds = start.elapsed().as_secs_f64();
    let result_file = std::fs::read_to_string(&settings.result_path).unwrap();
    Ran {
        out,
        logs: buffer.contents(),
        result_file,
        seconds,
    }
}

/// A git server over HTTPS that accepts `token`, serving the bare repositories under
/// `served`; its CA is written to `<root>/git-ca.pem`.
pub struct HttpsGit {
    pub server: recac_gitserver::GitServer,
    /// The CA's file, for `RECAC_CA_BUNDLE`.
    pub ca_file: String,
    /// `127.0.0.1:<port>`, for `RECAC_GIT_CREDENTIAL_HOSTS`.
    pub host: String,
}

pub async fn https_git(root: &Path, served: &Path, token: &str) -> HttpsGit {
    let server = recac_gitserver::GitServer::start(recac_gitserver::GitServerOptions {
        tls: true,
        ..recac_gitserver::GitServerOptions::plain(served, token)
    })
    .await
    .expect("git server starts");
    let ca = root.join("git-ca.pem");
    std::fs::write(&ca, server.ca_pem().expect("a CA with TLS")).unwrap();
    let host = server.address().to_string();
    HttpsGit {
        server,
        ca_file: ca.display().to_string(),
        host,
    }
}

/// Set in the child process [`in_child`] starts: the folder the child's test works in.
const CHILD_ROOT: &str = "RECAC_FLOW_TEST_CHILD_ROOT";

/// For a test that needs a process-wide setting of its own (`PATH`, `TMPDIR`), which the other
/// tests of this process must not see. In the test process: makes a folder, runs this test
/// binary again with only the test `name` and the variables `env` returns (given that folder),
/// asserts that the test passed there, and returns `None`. In that child process: returns the
/// folder, and the test runs its body.
pub fn in_child(
    name: &str,
    env: impl FnOnce(&Path) -> Vec<(&'static str, OsString)>,
) -> Option<PathBuf> {
    if let Some(root) = std::env::var_os(CHILD_ROOT) {
        return Some(PathBuf::from(root));
    }
    let root = tempfile::tempdir().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ROOT, root.path())
        .envs(env(root.path()))
        .output()
        .expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{name} in a child process:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    None
}

/// A folder `<root>/bin` holding links to `programs` (found on this process's PATH), to be
/// a whole `PATH` of its own.
pub fn bin_dir(root: &Path, programs: &[&str]) -> OsString {
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let path = std::env::var_os("PATH").unwrap_or_default();
    for program in programs {
        let found = std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("{program} is not on PATH"));
        std::os::unix::fs::symlink(&found, bin.join(program)).unwrap();
    }
    bin.into_os_string()
}
