//! The secret broker: the one process of an agent pod that can read the task's Secrets.
//!
//! The commands the model runs are children of the agent and share its user, so whatever the
//! agent's container can read, they can read. The pod's restricted security (every capability
//! dropped, `no_new_privs`, the RuntimeDefault seccomp profile) lets the agent neither start a
//! command as another user nor in a mount namespace of its own. What it does allow is another
//! container, under another user: volume mounts are per container. So the operator mounts the
//! task's Secrets only into a native sidecar, `secrets` (an init container with
//! `restartPolicy: Always`, started before the agent's container), which runs
//! `recac secret-broker` ([`serve`]) as its own user:
//!
//! - it reads every key of every Secret under `RECAC_SECRETS_DIR` at start, then listens on
//!   the unix socket `RECAC_SECRETS_SOCKET`, in a small emptyDir that the agent's container
//!   mounts read-only;
//! - it answers the **first** connection only, with every key ([`fetch`] reads it), then
//!   removes the socket, closes the listener, leaves a `.served` marker and sleeps until
//!   SIGTERM. The agent connects at its start, before any command the model influences exists,
//!   so the first connection is the agent's; if something else was first, the agent finds the
//!   marker and gives up ("the secret broker answered someone else first");
//! - it leaves a `.started` marker before reading anything: a broker container that the kubelet
//!   restarts finds it and serves nothing, so a restart cannot hand the Secrets out twice (the
//!   agent's container mounts the folder read-only: nothing there can remove the markers);
//! - it never logs a value, and it makes itself non-dumpable ([`make_undumpable`]).
//!
//! The agent makes itself non-dumpable too: the pod shares its process namespace, and a
//! process of the agent's user could otherwise read the agent's memory and environment
//! (`/proc/<pid>/mem`, `/proc/<pid>/environ`). A non-dumpable process's `/proc/<pid>` entries
//! belong to root and need `CAP_SYS_PTRACE`, which no container of the pod has; the broker's
//! (`/proc/<pid>/root`, through which its Secret mounts could be reached, its environment and
//! memory) are refused to the agent's user anyway, since it is another user.

use std::io::Read as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt as _;
use tokio_util::sync::CancellationToken;

use crate::secrets::{self, SecretEntry};

/// The version of the broker's answer; the broker and the agent run from the same image.
pub const PROTOCOL_VERSION: u32 = 1;
/// How long the agent waits for the broker's socket (the sidecar starts just before the
/// agent's container; the kubelet does not wait for its socket).
pub const CONNECT_WAIT: Duration = Duration::from_secs(10);
/// The largest answer the agent reads (a Secret holds at most 1 MiB).
const MAX_ANSWER: u64 = 64 * 1024 * 1024;
const RETRY: Duration = Duration::from_millis(100);
/// A unix socket's path has room for 108 bytes: a longer one is reached through a descriptor
/// of its folder.
const SUN_PATH_ROOM: usize = 100;

/// Makes this process non-dumpable (`prctl(PR_SET_DUMPABLE, 0)`): its `/proc/<pid>` entries
/// (memory, environment, open files, root) are then refused to other processes of its user
/// that lack `CAP_SYS_PTRACE`, such as the commands the model runs. No core dumps either. The
/// setting holds until the process runs another program (its children are dumpable again, and
/// hold only what they are given).
pub fn make_undumpable() -> std::io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
            .map_err(std::io::Error::from)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        Ok(())
    }
}

/// The marker the broker leaves next to `socket` before it reads the Secrets: a broker that
/// finds it was restarted in the same pod, and serves nothing.
pub fn started_marker(socket: &Path) -> PathBuf {
    with_suffix(socket, ".started")
}

/// The marker the broker leaves next to `socket` when it has answered a connection.
pub fn served_marker(socket: &Path) -> PathBuf {
    with_suffix(socket, ".served")
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut text = path.as_os_str().to_owned();
    text.push(suffix);
    PathBuf::from(text)
}

/// What the broker answers (JSON): every key of every Secret in the order read, each value
/// in base64; or why the Secrets cannot be read.
#[derive(Serialize, Deserialize)]
struct Answer {
    version: u32,
    #[serde(default)]
    secrets: Vec<WireEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct WireEntry {
    secret: String,
    key: String,
    value: String,
}

fn encode(result: Result<&[SecretEntry], String>) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let answer = match result {
        Ok(entries) => Answer {
            version: PROTOCOL_VERSION,
            secrets: entries
                .iter()
                .map(|e| WireEntry {
                    secret: e.secret.clone(),
                    key: e.key.clone(),
                    value: b64.encode(&e.value),
                })
                .collect(),
            error: None,
        },
        Err(error) => Answer {
            version: PROTOCOL_VERSION,
            secrets: Vec::new(),
            error: Some(error),
        },
    };
    // Strings only: serialising cannot fail (an empty answer would be reported as garbled).
    serde_json::to_vec(&answer).unwrap_or_default()
}

/// A path `bind` and `connect` accept for `path`: itself when short enough, else the socket's
/// name under `/proc/self/fd/<N>`, a descriptor of its folder held open in `_dir`.
struct SocketPath {
    path: PathBuf,
    _dir: Option<std::fs::File>,
}

fn socket_path(path: &Path) -> std::io::Result<SocketPath> {
    if path.as_os_str().len() <= SUN_PATH_ROOM {
        return Ok(SocketPath {
            path: path.to_path_buf(),
            _dir: None,
        });
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a socket path", path.display()),
        ));
    };
    let dir = std::fs::File::open(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    })?;
    use std::os::fd::AsRawFd as _;
    Ok(SocketPath {
        path: Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name),
        _dir: Some(dir),
    })
}

/// Why the agent did not get the task's Secrets from the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(
        "the secret broker did not answer on {} within {} s ({last}): the pod's `secrets` container did not start or cannot read the Secrets (its log says why)",
        .path.display(),
        .waited.as_secs()
    )]
    NoAnswer {
        path: PathBuf,
        waited: Duration,
        last: String,
    },
    #[error(
        "the secret broker answered someone else first: another process in the pod connected to {} before the agent did, so none of the task's Secrets reached the agent; the broker answers once per pod, and a pod where this happens is not trusted with another try",
        .path.display()
    )]
    AnsweredSomeoneElse { path: PathBuf },
    #[error("the secret broker cannot read the task's Secrets: {0}")]
    Unreadable(String),
    #[error("the secret broker's answer on {} is unusable: {reason}", .path.display())]
    Garbled { path: PathBuf, reason: String },
}

impl BrokerError {
    /// Whether another attempt would meet it again (or must not be made).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            BrokerError::AnsweredSomeoneElse { .. } | BrokerError::Unreadable(_)
        )
    }
}

/// The agent's side: connects to the broker's `socket` (retrying for up to `wait` while the
/// sidecar starts) and reads every key of the task's Secrets. Blocking; call it once, at
/// start, before anything the model influences runs: the broker answers one connection.
pub fn fetch(socket: &Path, wait: Duration) -> Result<Vec<SecretEntry>, BrokerError> {
    let deadline = Instant::now() + wait;
    loop {
        let connected = socket_path(socket).and_then(|p| UnixStream::connect(&p.path));
        match connected {
            Ok(stream) => return read_answer(stream, socket, wait),
            Err(e) => {
                if served_marker(socket).exists() {
                    return Err(BrokerError::AnsweredSomeoneElse {
                        path: socket.to_path_buf(),
                    });
                }
                if Instant::now() >= deadline {
                    return Err(BrokerError::NoAnswer {
                        path: socket.to_path_buf(),
                        waited: wait,
                        last: e.to_string(),
                    });
                }
                std::thread::sleep(RETRY);
            }
        }
    }
}

fn read_answer(
    mut stream: UnixStream,
    socket: &Path,
    wait: Duration,
) -> Result<Vec<SecretEntry>, BrokerError> {
    let garbled = |reason: String| BrokerError::Garbled {
        path: socket.to_path_buf(),
        reason,
    };
    stream
        .set_read_timeout(Some(wait.max(Duration::from_secs(1))))
        .map_err(|e| garbled(e.to_string()))?;
    let mut bytes = Vec::new();
    (&mut stream)
        .take(MAX_ANSWER + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| garbled(format!("reading it failed: {e}")))?;
    if bytes.is_empty() {
        return Err(garbled(
            "the broker closed the connection without an answer".into(),
        ));
    }
    if bytes.len() as u64 > MAX_ANSWER {
        return Err(garbled("it is larger than 64 MiB".into()));
    }
    // serde_json's errors name a position, never the text.
    let answer: Answer = serde_json::from_slice(&bytes)
        .map_err(|e| garbled(format!("it is not the broker's JSON: {e}")))?;
    if answer.version != PROTOCOL_VERSION {
        return Err(garbled(format!(
            "it speaks version {} and the agent {PROTOCOL_VERSION}: the broker and the agent must run the same image",
            answer.version
        )));
    }
    if let Some(error) = answer.error {
        return Err(BrokerError::Unreadable(error));
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    answer
        .secrets
        .into_iter()
        .map(|e| {
            let value = b64.decode(e.value.as_bytes()).map_err(|_| {
                garbled(format!("the value of {}/{} is not base64", e.secret, e.key))
            })?;
            Ok(SecretEntry {
                secret: e.secret,
                key: e.key,
                value,
            })
        })
        .collect()
}

/// Where the broker reads the Secrets and where it listens.
#[derive(Clone, Debug)]
pub struct BrokerOptions {
    /// The folder of the Secrets (`RECAC_SECRETS_DIR`, as the agent would read it).
    pub secrets_dir: PathBuf,
    /// The socket the agent connects to (`RECAC_SECRETS_SOCKET`).
    pub socket: PathBuf,
}

/// How a broker's run ended (at `stop`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Served {
    /// It answered the first connection: that process's id and user, when the socket told.
    Handed { pid: Option<i32>, uid: Option<u32> },
    /// It was told to stop before anything connected.
    Unasked,
    /// It found its `.started` marker (its container was restarted in the same pod) and
    /// served nothing.
    Restarted,
}

/// The broker's side: reads the Secrets, answers the first connection on the socket, removes
/// the socket and waits for `stop` (SIGTERM). Errors only when it cannot set up: its marker or
/// its socket cannot be created. A Secret that cannot be read is reported to the agent, which
/// names it.
pub async fn serve(options: &BrokerOptions, stop: CancellationToken) -> std::io::Result<Served> {
    let socket = &options.socket;
    let context = |what: String| {
        move |e: std::io::Error| std::io::Error::new(e.kind(), format!("{what}: {e}"))
    };
    let started = started_marker(socket);
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&started)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            tracing::warn!(
                marker = %started.display(),
                "the broker ran before in this pod (its container was restarted): it hands the Secrets out once per pod, so it serves nothing now"
            );
            stop.cancelled().await;
            return Ok(Served::Restarted);
        }
        Err(e) => return Err(context(format!("cannot create {}", started.display()))(e)),
    }
    let mut answer = match secrets::read_entries(&options.secrets_dir) {
        Ok(entries) => {
            let mut names: Vec<&str> = entries.iter().map(|e| e.secret.as_str()).collect();
            names.dedup();
            tracing::info!(
                keys = entries.len(),
                secrets = names.len(),
                "read the task's Secrets"
            );
            encode(Ok(&entries))
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot read the task's Secrets: the agent is told so");
            encode(Err(e.to_string()))
        }
    };
    let listener =
        listen(socket).map_err(context(format!("cannot listen on {}", socket.display())))?;
    tracing::info!(socket = %socket.display(), "waiting for the agent");
    let accepted = tokio::select! {
        accepted = listener.accept() => accepted,
        () = stop.cancelled() => {
            drop(listener);
            let _ = std::fs::remove_file(socket);
            tracing::info!("stopped before the agent connected");
            return Ok(Served::Unasked);
        }
    };
    let (mut stream, _) =
        accepted.map_err(context("cannot accept the agent's connection".into()))?;
    let peer = stream.peer_cred().ok();
    let pid = peer.as_ref().and_then(|c| c.pid());
    let uid = peer.as_ref().map(|c| c.uid());
    // The marker first (so that a later connection attempt knows), then no socket at all.
    let served = served_marker(socket);
    if let Err(e) = std::fs::write(&served, format!("pid {pid:?} uid {uid:?}\n")) {
        tracing::warn!(error = %e, marker = %served.display(), "cannot leave the served marker");
    }
    if let Err(e) = std::fs::remove_file(socket) {
        tracing::warn!(error = %e, socket = %socket.display(), "cannot remove the socket");
    }
    drop(listener);
    let written = async {
        stream.write_all(&answer).await?;
        stream.shutdown().await
    }
    .await;
    answer.fill(0);
    drop(answer);
    match written {
        Ok(()) => tracing::info!(
            pid,
            uid,
            "handed the Secrets to the first connection; the socket is gone and nothing more is served"
        ),
        Err(e) => tracing::warn!(
            pid,
            uid,
            error = %e,
            "the first connection went away before the whole answer; nothing more is served"
        ),
    }
    stop.cancelled().await;
    Ok(Served::Handed { pid, uid })
}

/// Binds the socket under a temporary name, opens it to the pod's group (the agent runs as
/// another user in the pod's `fsGroup`; connecting takes write permission on the socket) and
/// only then moves it into place, so the agent never finds a socket it may not use.
fn listen(socket: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    let fresh = with_suffix(socket, ".new");
    let _ = std::fs::remove_file(&fresh);
    let bindable = socket_path(&fresh)?;
    let listener = std::os::unix::net::UnixListener::bind(&bindable.path)?;
    std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o660))?;
    std::fs::rename(&fresh, socket)?;
    listener.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::SecretFiles;

    fn secrets_folder(root: &Path) -> PathBuf {
        let dir = root.join("secrets");
        for (secret, key, value) in [
            ("creds", "RECAC_GIT_TOKEN", "git-token-value\n"),
            ("creds", "tls.key", "KEY-DATA"),
            ("db", "DB_PASSWORD", "db-password-value"),
        ] {
            std::fs::create_dir_all(dir.join(secret)).unwrap();
            std::fs::write(dir.join(secret).join(key), value).unwrap();
        }
        dir
    }

    async fn fetch_async(socket: &Path, wait: Duration) -> Result<Vec<SecretEntry>, BrokerError> {
        let socket = socket.to_path_buf();
        tokio::task::spawn_blocking(move || fetch(&socket, wait))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn hands_the_secrets_to_the_first_connection_only() {
        let root = tempfile::tempdir().unwrap();
        // Longer than a socket path may be: reached through the folder's descriptor.
        let run = root.path().join("a-folder-name-long-enough-".repeat(4));
        std::fs::create_dir_all(&run).unwrap();
        let options = BrokerOptions {
            secrets_dir: secrets_folder(root.path()),
            socket: run.join("secrets.sock"),
        };
        assert!(options.socket.as_os_str().len() > 108);
        let stop = CancellationToken::new();
        let broker = tokio::spawn({
            let (options, stop) = (options.clone(), stop.clone());
            async move { serve(&options, stop).await }
        });

        let entries = fetch_async(&options.socket, CONNECT_WAIT).await.unwrap();
        let files = SecretFiles::from_entries(&entries);
        assert_eq!(files.get("RECAC_GIT_TOKEN"), Some("git-token-value"));
        assert_eq!(files.get("DB_PASSWORD"), Some("db-password-value"));
        assert!(files.values().contains(&b"KEY-DATA".to_vec()));
        assert!(!format!("{entries:?}").contains("db-password-value"));

        // The socket is gone; the next one to ask learns that someone was first.
        assert!(!options.socket.exists());
        assert!(served_marker(&options.socket).exists());
        let err = fetch_async(&options.socket, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(
            matches!(err, BrokerError::AnsweredSomeoneElse { .. }),
            "{err}"
        );
        assert!(err.is_permanent());
        assert!(err.to_string().contains("answered someone else first"));

        // It keeps running (a sidecar that exits is restarted) until told to stop.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!broker.is_finished());
        stop.cancel();
        let served = tokio::time::timeout(Duration::from_secs(5), broker)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(
            matches!(served, Served::Handed { uid: Some(_), .. }),
            "{served:?}"
        );

        // Restarted in the same pod, it serves nothing.
        std::fs::remove_file(served_marker(&options.socket)).unwrap();
        let stop = CancellationToken::new();
        let again = tokio::spawn({
            let (options, stop) = (options.clone(), stop.clone());
            async move { serve(&options, stop).await }
        });
        let err = fetch_async(&options.socket, Duration::from_millis(500))
            .await
            .unwrap_err();
        assert!(matches!(err, BrokerError::NoAnswer { .. }), "{err}");
        assert!(!err.is_permanent());
        stop.cancel();
        assert_eq!(again.await.unwrap().unwrap(), Served::Restarted);
    }

    #[tokio::test]
    async fn an_unreadable_secret_is_named_to_the_agent() {
        let root = tempfile::tempdir().unwrap();
        let dir = secrets_folder(root.path());
        std::os::unix::fs::symlink("..data/GONE", dir.join("db/GONE")).unwrap();
        let options = BrokerOptions {
            secrets_dir: dir,
            socket: root.path().join("s.sock"),
        };
        let stop = CancellationToken::new();
        let broker = tokio::spawn({
            let (options, stop) = (options.clone(), stop.clone());
            async move { serve(&options, stop).await }
        });
        let err = fetch_async(&options.socket, CONNECT_WAIT)
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, BrokerError::Unreadable(_)) && text.contains("db/GONE"),
            "{text}"
        );
        assert!(err.is_permanent());
        stop.cancel();
        broker.await.unwrap().unwrap();

        // Nothing listening: the agent stops waiting.
        let err = fetch(&root.path().join("none.sock"), Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, BrokerError::NoAnswer { .. }), "{err}");
        assert!(err.to_string().contains("`secrets` container"), "{err}");
    }

    #[test]
    fn garbled_answers_are_refused_without_their_text() {
        let root = tempfile::tempdir().unwrap();
        let socket = root.path().join("g.sock");
        for (answer, says) in [
            (&b""[..], "without an answer"),
            (b"secret-ish garbage", "not the broker's JSON"),
            (br#"{"version":9}"#, "version 9"),
            (
                br#"{"version":1,"secrets":[{"secret":"s","key":"k","value":"%%"}]}"#,
                "s/k is not base64",
            ),
        ] {
            let _ = std::fs::remove_file(&socket);
            let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
            let server = std::thread::spawn(move || {
                use std::io::Write as _;
                let (mut stream, _) = listener.accept().unwrap();
                stream.write_all(answer).unwrap();
            });
            let err = fetch(&socket, Duration::from_secs(2)).unwrap_err();
            server.join().unwrap();
            let text = err.to_string();
            assert!(text.contains(says), "{text}");
            assert!(!text.contains("garbage"), "{text}");
            assert!(!err.is_permanent());
        }
    }

    /// Not a test on its own: [`the_broker_process_is_closed_to_its_own_user`] runs this test
    /// binary again with `RECAC_TEST_BROKER_CHILD` set, to have a broker in a process of its own.
    #[test]
    fn broker_child_process() {
        let Some(socket) = std::env::var_os("RECAC_TEST_BROKER_CHILD") else {
            return;
        };
        let secrets_dir = std::env::var_os("RECAC_TEST_BROKER_SECRETS").unwrap();
        make_undumpable().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let stop = CancellationToken::new();
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
            tokio::spawn({
                let stop = stop.clone();
                async move {
                    term.recv().await;
                    stop.cancel();
                }
            });
            let options = BrokerOptions {
                secrets_dir: secrets_dir.into(),
                socket: socket.into(),
            };
            serve(&options, stop).await.unwrap();
        });
    }

    /// Runs `cat` or `ls` on `path` as `user` (when set: the tests run as root here, and root
    /// reads any process's `/proc` entries); whether it read anything.
    fn can_read(program: &str, path: &Path, user: Option<u32>) -> bool {
        use std::os::unix::process::CommandExt as _;
        let mut command = std::process::Command::new(program);
        command.arg(path);
        if let Some(uid) = user {
            command.uid(uid).gid(uid);
        }
        let out = command.output().unwrap();
        out.status.success() && !out.stdout.is_empty()
    }

    /// The broker in a process of its own, as in its container: it answers once, removes its
    /// socket, keeps running, ends at SIGTERM with 0; and being non-dumpable, even a process of
    /// its own user cannot read its environment or reach its files through `/proc/<pid>/root`
    /// (the agent's user is another user in a pod, which the kernel refuses anyway; a process of
    /// the same user is what the agent itself meets). A dumpable process of that user is
    /// readable, which shows the check can fail.
    #[test]
    fn the_broker_process_is_closed_to_its_own_user() {
        use std::os::unix::fs::PermissionsExt as _;
        use std::os::unix::process::CommandExt as _;
        let root = tempfile::tempdir().unwrap();
        let secrets_dir = secrets_folder(root.path());
        // Run as `nobody` when root: root passes every check this test makes.
        let user = rustix::process::getuid().is_root().then_some(65534u32);
        for dir in [root.path(), &secrets_dir] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        for secret in ["creds", "db"] {
            std::fs::set_permissions(
                secrets_dir.join(secret),
                std::fs::Permissions::from_mode(0o755),
            )
            .unwrap();
        }
        let socket = root.path().join("broker.sock");
        let mut command = std::process::Command::new(std::env::current_exe().unwrap());
        command
            .args([
                "--exact",
                "broker::tests::broker_child_process",
                "--nocapture",
            ])
            .env("RECAC_TEST_BROKER_CHILD", &socket)
            .env("RECAC_TEST_BROKER_SECRETS", &secrets_dir)
            .env("RECAC_TEST_ENVIRON_MARK", "in-the-environment")
            .stdout(std::process::Stdio::null());
        if let Some(uid) = user {
            command.uid(uid).gid(uid);
        }
        /// Kills the broker when the test fails half-way.
        struct Reap(std::process::Child);
        impl Drop for Reap {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let mut child = Reap(command.spawn().unwrap());
        let pid = child.0.id();

        let entries = fetch(&socket, CONNECT_WAIT).unwrap();
        assert_eq!(
            SecretFiles::from_entries(&entries).get("DB_PASSWORD"),
            Some("db-password-value")
        );
        assert!(!socket.exists());
        assert!(UnixStream::connect(&socket).is_err());
        std::thread::sleep(Duration::from_millis(200));
        assert!(child.0.try_wait().unwrap().is_none(), "the broker exited");

        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        assert!(
            !can_read("cat", &proc_dir.join("environ"), user),
            "the broker's environment is readable by its own user"
        );
        assert!(
            !can_read("ls", &proc_dir.join("root/"), user),
            "the broker's files are reachable through /proc/{pid}/root by its own user"
        );
        // The control: the same reads of a dumpable process of that user succeed.
        let mut sleeper = std::process::Command::new("sleep");
        sleeper.arg("30");
        if let Some(uid) = user {
            sleeper.uid(uid).gid(uid);
        }
        let mut sleeper = sleeper.spawn().unwrap();
        let sleeper_dir = PathBuf::from(format!("/proc/{}", sleeper.id()));
        std::thread::sleep(Duration::from_millis(100));
        let control = can_read("cat", &sleeper_dir.join("environ"), user)
            && can_read("ls", &sleeper_dir.join("root/"), user);
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        assert!(
            control,
            "a dumpable process of the same user was not readable"
        );

        let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            if let Some(status) = child.0.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the broker ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{status}");
    }
}
