//! The workspace's git: the real `git` binary with explicit argv.
//!
//! Credentials reach git only through a credential helper configured per URL
//! (`credential.https://<host>.helper`, see gitcredentials(7)): git asks it only for a
//! request to a host in the token's scope, only over HTTPS, and the helper reads the token
//! from git's environment, so it is never in a URL, an argument, the repository config or a
//! log line. For a scope with an organisation the helper also checks the repository's path
//! (git sends it with `useHttpPath`). Redirects to another host are asked about that host,
//! which is out of scope. The machine's own credential helpers are switched off.
//!
//! # SSH
//!
//! `ssh://` and `git@host:path` remotes go through `ssh` with `GIT_SSH_COMMAND`, set on git's
//! own commands only (never in the agent's environment, so the commands the model runs do not
//! get it): `BatchMode=yes` (no prompts), `StrictHostKeyChecking=yes` (a host key that is not
//! known is refused, never accepted and remembered) and `UpdateHostKeys=no`; with
//! [`SshSettings::known_hosts`] (`RECAC_SSH_KNOWN_HOSTS`, the operator's `agent.ssh.knownHosts`)
//! that file is the known hosts. An unknown or changed host key is a permanent
//! [`GitErrorKind::HostKey`] error naming the host and that setting.
//!
//! The private key ([`SshSettings::private_key`], the Secret key `RECAC_SSH_PRIVATE_KEY`) is a
//! credential like the git token: it is offered only to a repository within the git token's
//! scopes (`RECAC_GIT_CREDENTIAL_HOSTS`, `agent.gitCredentialHosts`; for `git@host:path` and
//! `ssh://host:port/path` the scope is `host` or `host:port`, with `/organisation` the
//! repository's first path segment), with `IdentitiesOnly=yes` and no agent. ssh reads keys
//! only from a file that only its user can read when its user owns it, wants a final newline
//! (a Secret's value may lack one) and a mounted Secret's file has the mode and owner of the
//! volume (root and the pod's fsGroup in a pod, the agent's own user where a node runs the
//! agent as a process), so the key is copied into a file of mode 0600 in a folder of mode 0700
//! under `TMPDIR` (an emptyDir in a pod) and named with `-i`; the folder is removed when the
//! [`Git`] is dropped (at the end of the run; a killed pod's emptyDir goes with it). The key is never
//! in an argument, an environment variable or a log line: only its file's path is. The
//! commands the model runs share the agent's user and could read that file (as they could the
//! mounted Secret), which is why the key should be a deploy key of the one repository.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use recac_api::repo_host::{HostScope, RepoLocation, Transport, render_list};

use crate::process::{self, CommandOutput, CommandSpec};
use crate::redact::Redactor;

/// Build and tool folders kept out of commits (written to `.git/info/exclude`).
const EXCLUDES: &str =
    "target/\nnode_modules/\n__pycache__/\n.pytest_cache/\n*.pyc\n.venv/\n.mypy_cache/\n";

/// Where git's environment holds the credential the helper answers with.
const USERNAME_VAR: &str = "RECAC_GIT_CREDENTIAL_USERNAME";
const PASSWORD_VAR: &str = "RECAC_GIT_CREDENTIAL_PASSWORD";

/// Where common distributions keep the system's certificate authorities.
const SYSTEM_CA_FILES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// The git token and the hosts it is for.
#[derive(Clone, Debug)]
pub struct GitCredential {
    pub username: String,
    pub token: String,
    pub scopes: Vec<HostScope>,
}

/// A shell `case` pattern matching `org/` and below, letters in either case.
fn org_pattern(org: &str) -> String {
    let mut pattern = String::new();
    for c in org.chars() {
        if c.is_ascii_alphabetic() {
            pattern.push('[');
            pattern.push(c.to_ascii_lowercase());
            pattern.push(c.to_ascii_uppercase());
            pattern.push(']');
        } else {
            // Scopes hold only letters, digits, `.`, `-` and `_`: none is special to `case`.
            pattern.push(c);
        }
    }
    pattern.push_str("/*");
    pattern
}

/// The credential helper for one host: answers `get` (only for a path under one of `orgs`,
/// when given) with the credential from git's environment; ignores `store` and `erase`.
fn helper_script(orgs: Option<&[String]>) -> String {
    let check = match orgs {
        None => String::new(),
        Some(orgs) => format!(
            "case \"$p\" in {}) ;; *) return 0 ;; esac; ",
            orgs.iter()
                .map(|o| org_pattern(o))
                .collect::<Vec<_>>()
                .join("|")
        ),
    };
    format!(
        "!f() {{ test \"$1\" = get || return 0; p=; while IFS= read -r l && test -n \"$l\"; do case \"$l\" in path=*) p=\"${{l#path=}}\" ;; esac; done; {check}printf 'username=%s\\npassword=%s\\n' \"${USERNAME_VAR}\" \"${PASSWORD_VAR}\"; }}; f"
    )
}

/// The `-c` options that give `credential` to git for its scopes only.
pub fn credential_config(credential: Option<&GitCredential>) -> Vec<String> {
    // An empty helper first: git forgets the machine's helpers (which could offer other
    // credentials or store ours).
    let mut args = vec!["-c".to_string(), "credential.helper=".to_string()];
    let Some(credential) = credential else {
        return args;
    };
    // host -> organisations (None: the whole host).
    let mut hosts: BTreeMap<&str, Option<Vec<String>>> = BTreeMap::new();
    for scope in &credential.scopes {
        let entry = hosts
            .entry(scope.host())
            .or_insert_with(|| Some(Vec::new()));
        match (scope.org(), entry.as_mut()) {
            (Some(org), Some(orgs)) => orgs.push(org.to_string()),
            (None, _) => *entry = None,
            (Some(_), None) => {}
        }
    }
    for (host, orgs) in hosts {
        args.push("-c".into());
        args.push(format!(
            "credential.https://{host}.helper={}",
            helper_script(orgs.as_deref())
        ));
        if orgs.is_some() {
            args.push("-c".into());
            args.push(format!("credential.https://{host}.useHttpPath=true"));
        }
    }
    args
}

/// A private key for ssh. Its text is never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SshKey(String);

impl SshKey {
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The key as ssh reads it from a file: LF line ends and a final newline (OpenSSH
    /// refuses a key whose last line has none).
    fn file_text(&self) -> String {
        let mut text = self.0.replace("\r\n", "\n").trim().to_string();
        text.push('\n');
        text
    }
}

impl std::fmt::Debug for SshKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SshKey(..)")
    }
}

/// How git reaches `ssh://` and `git@host:path` remotes (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SshSettings {
    /// The known_hosts file (`RECAC_SSH_KNOWN_HOSTS`); unset: ssh's own files
    /// (`~/.ssh/known_hosts`, none in a pod).
    pub known_hosts: Option<PathBuf>,
    /// The private key (`RECAC_SSH_PRIVATE_KEY`); unset: ssh's own identities (none in a pod).
    pub private_key: Option<SshKey>,
    /// The hosts (and organisations) the key is offered to: the git token's scopes.
    pub key_scopes: Vec<HostScope>,
    /// ssh's `ProxyCommand` (with the egress allow-list on, a tunnel through the egress
    /// proxy: see [`crate::egress::ssh_proxy_command`]); unset: ssh connects directly.
    pub proxy_command: Option<String>,
}

/// Whether the SSH key goes to a remote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyOffer {
    /// The remote is not reached over ssh.
    NotSsh,
    /// No key is configured: ssh uses its own identities, if any.
    NoKey,
    /// The key is offered (the remote is within its scopes).
    Offered,
    /// A key is configured but the remote is outside its scopes: not offered.
    OutOfScope { host: String },
}

/// Whether the SSH key goes to `url` (pure).
pub fn key_offer(url: &str, key_configured: bool, scopes: &[HostScope]) -> KeyOffer {
    match RepoLocation::of(url) {
        Some(location) if location.transport == Transport::Ssh => {
            if !key_configured {
                KeyOffer::NoKey
            } else if location.in_scope(scopes) {
                KeyOffer::Offered
            } else {
                KeyOffer::OutOfScope {
                    host: location.host,
                }
            }
        }
        _ => KeyOffer::NotSsh,
    }
}

/// The git commands that reach the remote: the only ones given the token.
const NETWORK_COMMANDS: [&str; 4] = ["clone", "fetch", "push", "ls-remote"];

/// Set on every git command: no hooks, no file-system monitor, no `ext::` transport (each runs
/// a program the repository's configuration names, and the model's commands can write that
/// configuration), certificates always verified.
const HARDENING: [&str; 4] = [
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "protocol.ext.allow=never",
    "http.sslVerify=true",
];

/// The keys of a repository's own configuration that survive [`Git::own_local_config`]: what
/// a clone writes and the agent's branches need. Everything else (credential helpers, URL
/// rewrites, proxies, per-URL TLS settings, filters, includes, `sshCommand`, push URLs) is
/// dropped before git talks to the remote.
fn kept_local_key(key: &str) -> bool {
    const EXACT: [&str; 8] = [
        "core.repositoryformatversion",
        "core.filemode",
        "core.bare",
        "core.logallrefupdates",
        "core.ignorecase",
        "core.precomposeunicode",
        "remote.origin.fetch",
        "init.defaultbranch",
    ];
    EXACT.contains(&key)
        || key.starts_with("extensions.")
        || (key.starts_with("branch.") && (key.ends_with(".remote") || key.ends_with(".merge")))
}

/// `text` quoted for `sh` (git runs `GIT_SSH_COMMAND` through the shell).
pub(crate) fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// The `GIT_SSH_COMMAND` for these files (pure): no prompts, no unknown host keys accepted,
/// `known_hosts` as the known hosts when given, only `key_file` as the identity when given,
/// and `proxy_command` as ssh's `ProxyCommand` when given. Only paths are in it, never a key.
pub fn ssh_command(
    known_hosts: Option<&Path>,
    key_file: Option<&Path>,
    proxy_command: Option<&str>,
) -> String {
    // -F /dev/null: no ssh_config of the agent's home (a writable emptyDir the model's
    // commands share) can add a ProxyCommand or LocalCommand.
    let mut command =
        "ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=yes -o UpdateHostKeys=no"
            .to_string();
    if let Some(file) = known_hosts {
        command.push_str(" -o ");
        command.push_str(&shell_quote(&format!(
            "UserKnownHostsFile={}",
            file.display()
        )));
    }
    if let Some(key) = key_file {
        command.push_str(" -o IdentitiesOnly=yes -o IdentityAgent=none -i ");
        command.push_str(&shell_quote(&key.display().to_string()));
    }
    if let Some(proxy) = proxy_command {
        command.push_str(" -o ");
        command.push_str(&shell_quote(&format!("ProxyCommand={proxy}")));
    }
    command
}

/// What was wrong with the host key, in words that say what to do (pure). `host` is the
/// remote's `host[:port]`; `known_hosts` the configured file, if any.
pub fn host_key_message(stderr: &str, host: &str, known_hosts: Option<&Path>) -> String {
    let s = stderr.to_ascii_lowercase();
    let setting = match known_hosts {
        Some(file) => format!(
            "the operator's agent.ssh.knownHosts ({} is {})",
            recac_api::agent_contract::env::SSH_KNOWN_HOSTS,
            file.display()
        ),
        None => format!(
            "the operator's agent.ssh.knownHosts ({} is not set)",
            recac_api::agent_contract::env::SSH_KNOWN_HOSTS
        ),
    };
    if s.contains("remote host identification has changed")
        || s.contains("has changed and you have requested strict checking")
    {
        format!(
            "the SSH host key of {host} does not match the one in the known hosts (REMOTE HOST IDENTIFICATION HAS CHANGED): the server's key changed, or something is in between; check the key with the server's owner, then replace the host's line in {setting}"
        )
    } else if s.contains("no matching host key type") {
        format!(
            "{host} offers no SSH host key type ssh accepts (no matching host key type found): the server needs a modern host key (ed25519, ecdsa or rsa-sha2); {setting} cannot change that"
        )
    } else {
        format!(
            "the SSH host key of {host} is not known, and ssh never accepts an unknown host key: add the host's key to the known_hosts of {setting} (`ssh-keyscan` prints it; check it against what the server's owner publishes)"
        )
    }
}

/// The system's certificate authorities followed by `extra`, as one PEM text.
fn combined_ca_bundle(extra: &Path) -> std::io::Result<String> {
    let mut pem = SYSTEM_CA_FILES
        .iter()
        .find_map(|f| std::fs::read_to_string(f).ok())
        .unwrap_or_default();
    if !pem.is_empty() && !pem.ends_with('\n') {
        pem.push('\n');
    }
    pem.push_str(&std::fs::read_to_string(extra)?);
    Ok(pem)
}

/// What kind of git failure it was, from git's message (decides retry or give up).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GitErrorKind {
    /// Credentials missing or refused.
    AuthRefused,
    /// The repository or a branch does not exist.
    NotFound,
    /// The push lost a race (non-fast-forward): worth another attempt.
    NonFastForward,
    /// The remote declined the push (hook, protected branch): another attempt would repeat it.
    Declined,
    /// What the push would send holds a known secret value: nothing was pushed.
    SecretInOutgoing,
    /// The agent's own environment failed git (a read-only or unwritable folder, a missing
    /// program): fixable by whoever runs the agent, not by another attempt.
    Environment,
    /// ssh refused the server's host key (unknown, changed, or no common key type): fixable
    /// in the known hosts (`agent.ssh.knownHosts`), not by another attempt.
    HostKey,
    /// Anything else (network trouble included).
    Other,
}

impl GitErrorKind {
    /// Whether another attempt would fail the same way.
    pub fn is_permanent(self) -> bool {
        matches!(
            self,
            Self::AuthRefused
                | Self::NotFound
                | Self::Declined
                | Self::SecretInOutgoing
                | Self::Environment
                | Self::HostKey
        )
    }
}

/// Classifies git's stderr (pure).
pub fn classify(stderr: &str) -> GitErrorKind {
    let s = stderr.to_ascii_lowercase();
    let any = |needles: &[&str]| needles.iter().any(|n| s.contains(n));
    // ssh refusing the server's host key (before anything else: its message can mention a
    // folder it could not create).
    if any(&[
        "host key verification failed",
        "remote host identification has changed",
        "no matching host key type found",
    ]) {
        return GitErrorKind::HostKey;
    }
    // What failed on this side first: the filesystem or a program, not the remote.
    if !any(&[
        "permission denied (publickey",
        "permission denied, please try again",
    ]) && any(&[
        "read-only file system",
        "could not create work tree dir",
        "could not create leading directories",
        "unable to create temporary file",
        "no space left on device",
        "cannot run ",
        "no such file or directory",
        "permission denied",
    ]) {
        return GitErrorKind::Environment;
    }
    if any(&[
        "authentication failed",
        "could not read username",
        "could not read password",
        "terminal prompts disabled",
        "permission denied",
        "returned error: 401",
        "returned error: 403",
        "invalid username or password",
        "access denied",
    ]) {
        GitErrorKind::AuthRefused
    } else if any(&[
        "non-fast-forward",
        "fetch first",
        "[rejected]",
        "stale info",
        "cannot lock ref",
    ]) && !any(&["hook declined", "protected branch"])
    {
        GitErrorKind::NonFastForward
    } else if any(&[
        "hook declined",
        "protected branch",
        "[remote rejected]",
        "pre-receive hook",
    ]) {
        GitErrorKind::Declined
    } else if any(&[
        "not found",
        "does not appear to be a git repository",
        "does not exist",
        "couldn't find remote ref",
        "not a valid",
    ]) {
        GitErrorKind::NotFound
    } else {
        GitErrorKind::Other
    }
}

/// A failed git command.
#[derive(Debug, thiserror::Error)]
#[error("git {op} failed ({kind:?}): {message}")]
pub struct GitError {
    pub op: String,
    pub kind: GitErrorKind,
    /// git's message, redacted.
    pub message: String,
}

/// The commit identity.
#[derive(Clone, Debug)]
pub struct Identity {
    pub name: String,
    pub email: String,
}

/// The SSH key's private copy (mode 0600, in a folder only the agent's user enters), removed
/// when dropped: it exists only while a git command reaches the remote, so the commands the
/// model runs (the same user) find it only if one of them is running then.
struct KeyCopy(PathBuf);

impl KeyCopy {
    fn write(file: &Path, text: &str) -> std::io::Result<Self> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let _ = std::fs::remove_file(file);
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(file)?;
        let copy = Self(file.to_path_buf());
        out.write_all(text.as_bytes())?;
        Ok(copy)
    }
}

impl Drop for KeyCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// How git's ssh is set up for one [`Git`].
struct SshSetup {
    known_hosts: Option<PathBuf>,
    /// Where the private copy of the key (mode 0600) is written while a command reaches the
    /// remote, when a key is configured; absent the rest of the time (see
    /// [`KeyCopy`]).
    key_file: Option<PathBuf>,
    /// The key's file text, for that copy.
    key_text: Option<String>,
    key_scopes: Vec<HostScope>,
    /// The machine's own `GIT_SSH_COMMAND`, kept when nothing is configured (a developer's
    /// machine).
    inherited: Option<String>,
    proxy_command: Option<String>,
}

impl SshSetup {
    /// The `GIT_SSH_COMMAND` for a remote at `url` (unknown: no key offered).
    fn command(&self, url: Option<&str>) -> String {
        let offer = url.map(|u| key_offer(u, self.key_file.is_some(), &self.key_scopes));
        let key = match offer {
            Some(KeyOffer::Offered) => self.key_file.as_deref(),
            _ => None,
        };
        if self.known_hosts.is_none()
            && self.key_file.is_none()
            && self.proxy_command.is_none()
            && let Some(inherited) = &self.inherited
        {
            return inherited.clone();
        }
        ssh_command(
            self.known_hosts.as_deref(),
            key,
            self.proxy_command.as_deref(),
        )
    }
}

/// git for one workspace.
pub struct Git {
    dir: PathBuf,
    env: Vec<(String, String)>,
    config: Vec<String>,
    redactor: Redactor,
    timeout: Duration,
    ssh: SshSetup,
    /// The remote's URL (set by the clone, else read once from the checkout).
    remote: OnceLock<String>,
    /// The token's variables, for [`NETWORK_COMMANDS`] only.
    credential_env: Vec<(String, String)>,
    // Holds the combined CA bundle and the private copy of the SSH key; removed on drop.
    _scratch: Option<tempfile::TempDir>,
}

impl Git {
    /// git working in `dir`, giving `credential` to the hosts it is scoped to, trusting the
    /// certificate authorities in `ca_bundle` besides the system's, and reaching `ssh://`
    /// remotes with `ssh` ([`crate::Settings::ssh`]).
    pub fn new(
        dir: &Path,
        credential: Option<&GitCredential>,
        ca_bundle: Option<&Path>,
        ssh: &SshSettings,
        redactor: Redactor,
    ) -> std::io::Result<Self> {
        let mut env = vec![
            ("GIT_TERMINAL_PROMPT".to_string(), "0".to_string()),
            ("LC_ALL".to_string(), "C".to_string()),
            // No program answers prompts: the credential comes from the helper or not at all.
            ("GIT_ASKPASS".to_string(), String::new()),
            ("SSH_ASKPASS".to_string(), String::new()),
        ];
        // The token is given only to the commands that talk to the remote (see
        // [`NETWORK_COMMANDS`]), never to the others, which a repository's configuration could
        // make run programs of the model's choosing.
        let credential_env = credential
            .map(|c| {
                vec![
                    (USERNAME_VAR.to_string(), c.username.clone()),
                    (PASSWORD_VAR.to_string(), c.token.clone()),
                ]
            })
            .unwrap_or_default();
        let scratch = if ca_bundle.is_some() || ssh.private_key.is_some() {
            let holder = tempfile::Builder::new().prefix("recac-git-").tempdir()?;
            // Only the agent's user enters it.
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(holder.path(), std::fs::Permissions::from_mode(0o700))?;
            Some(holder)
        } else {
            None
        };
        if let (Some(extra), Some(holder)) = (ca_bundle, &scratch) {
            let file = holder.path().join("ca-bundle.pem");
            std::fs::write(&file, combined_ca_bundle(extra)?)?;
            env.push(("GIT_SSL_CAINFO".into(), file.to_string_lossy().into_owned()));
        }
        let (key_file, key_text) = match (&ssh.private_key, &scratch) {
            (Some(key), Some(holder)) => {
                let file = holder.path().join("ssh-key");
                // Written once to find a folder that cannot hold it now, not mid-run.
                drop(KeyCopy::write(&file, &key.file_text())?);
                (Some(file), Some(key.file_text()))
            }
            _ => (None, None),
        };
        let mut config = credential_config(credential);
        config.extend(
            HARDENING
                .iter()
                .flat_map(|c| ["-c".to_string(), c.to_string()]),
        );
        Ok(Self {
            dir: dir.to_path_buf(),
            env,
            credential_env,
            config,
            redactor,
            timeout: Duration::from_secs(900),
            ssh: SshSetup {
                known_hosts: ssh.known_hosts.clone(),
                key_file,
                key_text,
                key_scopes: ssh.key_scopes.clone(),
                inherited: std::env::var("GIT_SSH_COMMAND")
                    .ok()
                    .filter(|c| !c.trim().is_empty()),
                proxy_command: ssh.proxy_command.clone(),
            },
            remote: OnceLock::new(),
            _scratch: scratch,
        })
    }

    /// The remote's URL as the checkout has it, read once.
    async fn remote_for_ssh(&self) -> Option<String> {
        if let Some(url) = self.remote.get() {
            return Some(url.clone());
        }
        if !self.dir.join(".git").exists() {
            return None;
        }
        let spec = CommandSpec::new(
            "git",
            &["config", "--get", "remote.origin.url"],
            &self.dir,
            Duration::from_secs(30),
        );
        let out = process::run(&spec).await.ok().filter(|o| o.success())?;
        let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!url.is_empty()).then(|| self.remote.get_or_init(|| url).clone())
    }

    /// Rewrites the checkout's own configuration (`.git/config`) to what the agent needs
    /// before git talks to the remote: the keys [`kept_local_key`] allows, and `origin` at
    /// the URL that was cloned. The model's commands can write that file; a credential
    /// helper, a URL rewrite or a proxy there must not see the token or choose the remote.
    async fn own_local_config(&self) -> Result<(), GitError> {
        let config = self.dir.join(".git").join("config");
        if !config.exists() {
            return Ok(());
        }
        let failed = |e: &dyn std::fmt::Display| GitError {
            op: "config".into(),
            kind: GitErrorKind::Other,
            message: format!("cannot rewrite {}: {e}", config.display()),
        };
        let list = CommandSpec::new(
            "git",
            &["config", "--file", ".git/config", "--list", "--null"],
            &self.dir,
            Duration::from_secs(30),
        );
        let out = process::run(&list).await.map_err(|e| failed(&e))?;
        if !out.success() {
            return Err(failed(&String::from_utf8_lossy(&out.stderr).trim()));
        }
        let fresh = self.dir.join(".git").join("config.recac");
        let _ = std::fs::remove_file(&fresh);
        let mut entries: Vec<(String, String)> = out
            .stdout
            .split(|b| *b == 0)
            .filter_map(|entry| {
                let entry = String::from_utf8_lossy(entry);
                let (key, value) = entry.split_once('\n').unwrap_or((&entry, ""));
                kept_local_key(&key.to_ascii_lowercase())
                    .then(|| (key.to_string(), value.to_string()))
            })
            .collect();
        if let Some(url) = self.remote.get() {
            entries.push(("remote.origin.url".into(), url.clone()));
        }
        for (key, value) in &entries {
            let fresh_path = fresh.display().to_string();
            let add = CommandSpec::new(
                "git",
                &["config", "--file", &fresh_path, "--add", key, value],
                &self.dir,
                Duration::from_secs(30),
            );
            let out = process::run(&add).await.map_err(|e| failed(&e))?;
            if !out.success() {
                return Err(failed(&String::from_utf8_lossy(&out.stderr).trim()));
            }
        }
        std::fs::rename(&fresh, &config).map_err(|e| failed(&e))
    }

    /// The workspace directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the private copy of the SSH key (mode 0600) is written while a git command
    /// reaches the remote.
    pub fn ssh_key_file(&self) -> Option<&Path> {
        self.ssh.key_file.as_deref()
    }

    async fn raw(
        &self,
        cwd: &Path,
        args: &[&str],
        stdin: Option<Vec<u8>>,
        extra_env: &[(String, String)],
    ) -> Result<CommandOutput, GitError> {
        let mut argv: Vec<&str> = self.config.iter().map(String::as_str).collect();
        argv.extend(args);
        let mut spec = CommandSpec::new("git", &argv, cwd, self.timeout);
        spec.env = self.env.clone();
        let subcommand = args.first().copied().unwrap_or("");
        // The SSH key's copy exists only while a command reaches the remote.
        let mut _key_copy = None;
        if NETWORK_COMMANDS.contains(&subcommand) {
            if subcommand != "clone" {
                self.own_local_config().await?;
            }
            spec.env.extend(self.credential_env.iter().cloned());
            if let (Some(file), Some(text)) = (&self.ssh.key_file, &self.ssh.key_text) {
                _key_copy = Some(KeyCopy::write(file, text).map_err(|e| GitError {
                    op: subcommand.to_string(),
                    kind: GitErrorKind::Environment,
                    message: format!(
                        "cannot write the SSH key's private copy {}: {e}",
                        file.display()
                    ),
                })?);
            }
        }
        let remote = self.remote_for_ssh().await;
        spec.env.push((
            "GIT_SSH_COMMAND".into(),
            self.ssh.command(remote.as_deref()),
        ));
        spec.env.extend(extra_env.iter().cloned());
        spec.stdin = stdin;
        let op = args.first().copied().unwrap_or("").to_string();
        tracing::debug!(command = %format!("git {}", args.join(" ")), "running git");
        process::run(&spec).await.map_err(|e| GitError {
            op: op.clone(),
            kind: GitErrorKind::Other,
            message: format!("cannot run git: {e}"),
        })
    }

    async fn ok(&self, args: &[&str]) -> Result<String, GitError> {
        self.ok_with(args, None, &[]).await
    }

    async fn ok_with(
        &self,
        args: &[&str],
        stdin: Option<Vec<u8>>,
        env: &[(String, String)],
    ) -> Result<String, GitError> {
        let out = self.raw(&self.dir, args, stdin, env).await?;
        if out.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(self.error(args, &out))
        }
    }

    fn error(&self, args: &[&str], out: &CommandOutput) -> GitError {
        // `push --porcelain` reports rejections on stdout.
        let stderr = format!(
            "{}\n{}",
            self.redactor.redact_bytes(&out.stderr).trim(),
            self.redactor.redact_bytes(&out.stdout).trim()
        );
        let kind = if out.timed_out {
            GitErrorKind::Other
        } else {
            classify(&stderr)
        };
        let said = process::cap(stderr.trim(), 2000);
        let message = match (kind, self.remote.get()) {
            _ if out.timed_out => "timed out".to_string(),
            (GitErrorKind::HostKey, remote) => {
                let host = remote
                    .and_then(|u| RepoLocation::of(u))
                    .map(|l| l.host)
                    .unwrap_or_else(|| "the remote".into());
                format!(
                    "{}; ssh said: {said}",
                    host_key_message(&stderr, &host, self.ssh.known_hosts.as_deref())
                )
            }
            (GitErrorKind::AuthRefused, Some(url)) => match self.ssh_key_hint(url) {
                Some(hint) => format!("{said}; {hint}"),
                None => said,
            },
            _ => said,
        };
        GitError {
            op: args.first().copied().unwrap_or("").to_string(),
            kind,
            message,
        }
    }

    /// Why ssh had no key the server accepted, for a refusal at `url`.
    fn ssh_key_hint(&self, url: &str) -> Option<String> {
        let key = recac_api::agent_contract::secret_keys::SSH_PRIVATE_KEY;
        match key_offer(url, self.ssh.key_file.is_some(), &self.ssh.key_scopes) {
            KeyOffer::NotSsh => None,
            KeyOffer::NoKey => Some(format!(
                "no SSH key is configured: put the private key in one of the task's Secrets (secretRefs) under the key {key}"
            )),
            KeyOffer::Offered => Some(format!(
                "the server refused the SSH key in {key} (is its public key a deploy key of this repository, with write access?)"
            )),
            KeyOffer::OutOfScope { host } => Some(format!(
                "the SSH key in {key} is not offered to {host} (it is for: {}; set {} (agent.gitCredentialHosts) to add a host)",
                if self.ssh.key_scopes.is_empty() {
                    "none".to_string()
                } else {
                    render_list(&self.ssh.key_scopes)
                },
                recac_api::agent_contract::env::GIT_CREDENTIAL_HOSTS
            )),
        }
    }

    /// Clones `url` into the workspace directory (which must be absent or empty).
    pub async fn clone_repo(&self, url: &str) -> Result<(), GitError> {
        let parent = self.dir.parent().unwrap_or(Path::new("/")).to_path_buf();
        let target = self.dir.to_string_lossy().into_owned();
        // ssh's settings (which key, which hosts) follow the remote.
        let _ = self.remote.set(url.to_string());
        let args = ["clone", "--no-tags", "--", url, target.as_str()];
        let out = self.raw(&parent, &args, None, &[]).await?;
        if !out.success() {
            return Err(self.error(&args, &out));
        }
        let exclude = self.dir.join(".git/info/exclude");
        if let Some(parent) = exclude.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let mut text = std::fs::read_to_string(&exclude).unwrap_or_default();
        text.push_str(EXCLUDES);
        let _ = std::fs::write(&exclude, text);
        Ok(())
    }

    /// The remote's default branch, when it has one.
    pub async fn default_branch(&self) -> Result<Option<String>, GitError> {
        if let Ok(head) = self
            .ok(&[
                "symbolic-ref",
                "--quiet",
                "--short",
                "refs/remotes/origin/HEAD",
            ])
            .await
        {
            return Ok(head
                .strip_prefix("origin/")
                .map(str::to_string)
                .or(Some(head)));
        }
        let out = self
            .ok(&["ls-remote", "--symref", "origin", "HEAD"])
            .await?;
        Ok(out.lines().find_map(|l| {
            l.strip_prefix("ref: refs/heads/")
                .and_then(|r| r.split_whitespace().next())
                .map(str::to_string)
        }))
    }

    /// Whether `branch` exists on the remote.
    pub async fn remote_branch_exists(&self, branch: &str) -> Result<bool, GitError> {
        let refname = format!("refs/heads/{branch}");
        let args = [
            "ls-remote",
            "--exit-code",
            "--heads",
            "origin",
            refname.as_str(),
        ];
        let out = self.raw(&self.dir, &args, None, &[]).await?;
        match out.exit_code {
            Some(0) => Ok(true),
            Some(2) => Ok(false),
            _ => Err(self.error(&args, &out)),
        }
    }

    /// Fetches `branch` from the remote into `refs/remotes/origin/<branch>`.
    pub async fn fetch_branch(&self, branch: &str) -> Result<(), GitError> {
        let spec = format!("+refs/heads/{branch}:refs/remotes/origin/{branch}");
        self.ok(&["fetch", "--no-tags", "origin", spec.as_str()])
            .await
            .map(drop)
    }

    /// Checks out `branch` at `origin/<start>`.
    pub async fn checkout(&self, branch: &str, start: &str) -> Result<(), GitError> {
        let start_ref = format!("refs/remotes/origin/{start}");
        let verify = format!("{start_ref}^{{commit}}");
        self.ok(&["rev-parse", "--verify", "--quiet", verify.as_str()])
            .await
            .map_err(|mut e| {
                e.kind = GitErrorKind::NotFound;
                e.message = format!("branch `{start}` not found on the remote");
                e
            })?;
        self.ok(&["checkout", "--quiet", "-B", branch, start_ref.as_str()])
            .await
            .map(drop)
    }

    /// The commit a revision names.
    pub async fn rev_parse(&self, rev: &str) -> Result<String, GitError> {
        let rev = format!("{rev}^{{commit}}");
        self.ok(&["rev-parse", "--verify", rev.as_str()]).await
    }

    /// How many commits `to` has that `from` has not.
    pub async fn commits_between(&self, from: &str, to: &str) -> Result<u64, GitError> {
        let range = format!("{from}..{to}");
        let n = self.ok(&["rev-list", "--count", range.as_str()]).await?;
        Ok(n.parse().unwrap_or(0))
    }

    /// The paths the commit `rev` changed (against its first parent).
    pub async fn changed_files(&self, rev: &str) -> Result<Vec<String>, GitError> {
        let out = self
            .ok(&[
                "diff-tree",
                "--root",
                "--no-commit-id",
                "--name-only",
                "-r",
                "-z",
                rev,
            ])
            .await?;
        Ok(out
            .split('\0')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// Stages everything and commits it with `message`; `false` when there was nothing to commit.
    pub async fn commit_all(&self, message: &str, who: &Identity) -> Result<bool, GitError> {
        self.ok(&["add", "--all"]).await?;
        let out = self
            .raw(&self.dir, &["diff", "--cached", "--quiet"], None, &[])
            .await?;
        match out.exit_code {
            Some(0) => return Ok(false),
            Some(1) => {}
            _ => return Err(self.error(&["diff"], &out)),
        }
        let env: Vec<(String, String)> = [
            ("GIT_AUTHOR_NAME", &who.name),
            ("GIT_AUTHOR_EMAIL", &who.email),
            ("GIT_COMMITTER_NAME", &who.name),
            ("GIT_COMMITTER_EMAIL", &who.email),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        // The message goes through stdin: ticket text never becomes an argument.
        self.ok_with(
            &[
                "-c",
                "commit.gpgsign=false",
                "commit",
                "--quiet",
                "--no-verify",
                "--file=-",
            ],
            Some(message.as_bytes().to_vec()),
            &env,
        )
        .await?;
        Ok(true)
    }

    /// Pushes HEAD to `branch` on the remote (never forced), after checking that nothing it
    /// would send holds a known secret value (see [`Git::outgoing_secrets`]).
    pub async fn push(&self, branch: &str) -> Result<(), GitError> {
        let found = self.outgoing_secrets().await?;
        if !found.is_empty() {
            return Err(GitError {
                op: "push".into(),
                kind: GitErrorKind::SecretInOutgoing,
                message: format!(
                    "nothing was pushed: {} {} a secret value of this task (one of its credentials or Secret keys); remove it from the work and the commits",
                    found.join(", "),
                    if found.len() == 1 { "holds" } else { "hold" },
                ),
            });
        }
        let refspec = format!("HEAD:refs/heads/{branch}");
        self.ok(&[
            "push",
            "--porcelain",
            "--no-verify",
            "origin",
            refspec.as_str(),
        ])
        .await
        .map(drop)
    }

    /// Where a known secret value sits in what a push of HEAD would send: every object HEAD
    /// has that no remote-tracking branch has (files, file names, commit messages, the
    /// model's own commits included), read whole. Names the places, never the values.
    pub async fn outgoing_secrets(&self) -> Result<Vec<String>, GitError> {
        let listing = self
            .ok(&["rev-list", "--objects", "HEAD", "--not", "--remotes=origin"])
            .await?;
        let mut names: BTreeMap<String, String> = BTreeMap::new();
        let mut ids = String::new();
        for line in listing.lines() {
            let (id, path) = line.split_once(' ').unwrap_or((line, ""));
            names.insert(id.to_string(), path.to_string());
            ids.push_str(id);
            ids.push('\n');
        }
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let scan_error = |message: String| GitError {
            op: "cat-file".into(),
            kind: GitErrorKind::Other,
            message,
        };
        let mut cmd = tokio::process::Command::new("git");
        cmd.args(&self.config)
            .args(["cat-file", "--batch"])
            .current_dir(&self.dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| scan_error(format!("cannot run git: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            use tokio::io::AsyncWriteExt;
            tokio::spawn(async move {
                let _ = stdin.write_all(ids.as_bytes()).await;
            });
        }
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| scan_error("no output from git cat-file".into()))?;
        let mut reader = tokio::io::BufReader::new(stdout);
        let mut found = Vec::new();
        let mut header = String::new();
        loop {
            use tokio::io::{AsyncBufReadExt, AsyncReadExt};
            header.clear();
            let n = reader
                .read_line(&mut header)
                .await
                .map_err(|e| scan_error(format!("cannot read git cat-file: {e}")))?;
            if n == 0 {
                break;
            }
            let mut fields = header.split_whitespace();
            let (Some(id), Some(kind), Some(size)) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(scan_error(format!(
                    "unexpected git cat-file line {header:?}"
                )));
            };
            let size: usize = size
                .parse()
                .map_err(|_| scan_error(format!("unexpected git cat-file line {header:?}")))?;
            let mut content = vec![0; size + 1];
            reader
                .read_exact(&mut content)
                .await
                .map_err(|e| scan_error(format!("cannot read git cat-file: {e}")))?;
            content.pop();
            if self
                .redactor
                .contains_secret(&String::from_utf8_lossy(&content))
            {
                let path = names.get(id).map(String::as_str).unwrap_or("");
                let short = id.get(..12).unwrap_or(id);
                found.push(match (kind, path) {
                    ("commit", _) => format!("the message of commit {short}"),
                    ("tree", "") => format!("a file name at the top of commit tree {short}"),
                    ("tree", dir) => format!("a file name in `{dir}/`"),
                    (_, "") => format!("object {short}"),
                    (_, file) => format!("`{file}`"),
                });
            }
        }
        let _ = child.wait().await;
        // One file changed in several commits is one place.
        found.sort();
        found.dedup();
        Ok(found)
    }

    /// The remote's URL as configured (no credentials are ever put there).
    pub async fn remote_url(&self) -> Result<String, GitError> {
        self.ok(&["remote", "get-url", "origin"]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies() {
        use GitErrorKind::*;
        assert_eq!(
            classify("fatal: Authentication failed for 'http://x/'"),
            AuthRefused
        );
        assert_eq!(
            classify(
                "fatal: could not read Username for 'https://github.com': terminal prompts disabled"
            ),
            AuthRefused
        );
        assert_eq!(
            classify("The requested URL returned error: 403"),
            AuthRefused
        );
        assert_eq!(
            classify(" ! [rejected] HEAD -> b (fetch first)\nerror: failed to push"),
            NonFastForward
        );
        assert_eq!(
            classify(" ! [remote rejected] HEAD -> b (pre-receive hook declined)"),
            Declined
        );
        assert_eq!(
            classify("fatal: '/nope' does not appear to be a git repository"),
            NotFound
        );
        assert_eq!(
            classify("fatal: repository 'https://x/y/' not found"),
            NotFound
        );
        assert_eq!(
            classify("fatal: unable to access: Could not resolve host: x"),
            Other
        );
        // The filesystem or a missing program, not the remote.
        for stderr in [
            "fatal: could not create work tree dir '/repo': Read-only file system",
            "fatal: could not create work tree dir 'x': Permission denied",
            "error: cannot run ssh: No such file or directory",
            "fatal: Unable to create '/w/.git/index.lock': Permission denied",
            "fatal: unable to create temporary file: No space left on device",
        ] {
            assert_eq!(classify(stderr), Environment, "{stderr}");
        }
        assert_eq!(
            classify(
                "git@github.com: Permission denied (publickey).\nfatal: Could not read from remote repository."
            ),
            AuthRefused
        );
        assert!(Declined.is_permanent() && !NonFastForward.is_permanent() && !Other.is_permanent());
        assert!(Environment.is_permanent());
    }

    #[test]
    fn host_key_refusals_are_permanent_and_say_what_to_set() {
        let unknown = "No ED25519 host key is known for [127.0.0.1]:2222 and you have requested strict checking.\r\nHost key verification failed.\r\nfatal: Could not read from remote repository.\n\nPlease make sure you have the correct access rights\nand the repository exists.";
        let changed = "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\nIT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\nOffending ED25519 key in /var/run/recac/ssh/known_hosts:1\nHost key for [127.0.0.1]:2222 has changed and you have requested strict checking.\nHost key verification failed.\nfatal: Could not read from remote repository.";
        let no_type = "Unable to negotiate with 10.0.0.1 port 22: no matching host key type found. Their offer: ssh-dss\nfatal: Could not read from remote repository.";
        // A HOME ssh cannot write to does not make it an environment problem.
        let no_home = "Could not create directory '/nonexistent/.ssh' (No such file or directory).\r\nHost key verification failed.\r\nfatal: Could not read from remote repository.";
        for stderr in [unknown, changed, no_type, no_home] {
            assert_eq!(classify(stderr), GitErrorKind::HostKey, "{stderr}");
        }
        assert!(GitErrorKind::HostKey.is_permanent());
        let file = Path::new("/var/run/recac/ssh/known_hosts");
        let m = host_key_message(unknown, "127.0.0.1:2222", Some(file));
        assert!(
            m.contains("SSH host key of 127.0.0.1:2222 is not known")
                && m.contains("agent.ssh.knownHosts")
                && m.contains("RECAC_SSH_KNOWN_HOSTS is /var/run/recac/ssh/known_hosts"),
            "{m}"
        );
        let m = host_key_message(unknown, "github.com", None);
        assert!(m.contains("RECAC_SSH_KNOWN_HOSTS is not set"), "{m}");
        let m = host_key_message(changed, "127.0.0.1:2222", Some(file));
        assert!(
            m.contains("does not match") && m.contains("agent.ssh.knownHosts"),
            "{m}"
        );
        let m = host_key_message(no_type, "10.0.0.1", None);
        assert!(m.contains("no matching host key type"), "{m}");
    }

    #[test]
    fn the_key_copy_is_private_and_gone_when_dropped() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ssh-key");
        let copy = KeyCopy::write(&file, "KEY\n").unwrap();
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "KEY\n");
        // A copy left behind (a crash) is replaced, not appended to.
        std::mem::forget(copy);
        let copy = KeyCopy::write(&file, "KEY2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "KEY2\n");
        drop(copy);
        assert!(!file.exists());
    }

    #[test]
    fn the_ssh_command_names_files_never_keys() {
        assert_eq!(
            ssh_command(None, None, None),
            "ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=yes -o UpdateHostKeys=no"
        );
        let command = ssh_command(
            Some(Path::new("/var/run/recac/ssh/known_hosts")),
            Some(Path::new("/tmp/recac-git-x/it's key")),
            None,
        );
        assert_eq!(
            command,
            "ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=yes -o UpdateHostKeys=no -o 'UserKnownHostsFile=/var/run/recac/ssh/known_hosts' -o IdentitiesOnly=yes -o IdentityAgent=none -i '/tmp/recac-git-x/it'\\''s key'"
        );
        assert!(!command.contains("accept-new") && !command.contains("=no -o Strict"));
        // What the shell makes of it: the arguments ssh gets.
        let out = std::process::Command::new("sh")
            .args([
                "-c",
                &format!("set -- {command}; printf '%s\\n' \"$@\""),
                "sh",
            ])
            .output()
            .expect("sh runs");
        let args = String::from_utf8_lossy(&out.stdout);
        assert!(
            args.lines().any(|l| l == "/tmp/recac-git-x/it's key"),
            "{args}"
        );
        assert!(
            args.lines()
                .any(|l| l == "UserKnownHostsFile=/var/run/recac/ssh/known_hosts"),
            "{args}"
        );
    }

    #[test]
    fn the_ssh_key_goes_only_to_its_scopes() {
        let scopes = HostScope::parse_list("github.com/acme,git.example.com:2222").unwrap();
        assert_eq!(
            key_offer("git@github.com:acme/widgets.git", true, &scopes),
            KeyOffer::Offered
        );
        assert_eq!(
            key_offer("ssh://git@git.example.com:2222/team/r.git", true, &scopes),
            KeyOffer::Offered
        );
        assert_eq!(
            key_offer("git@github.com:other/widgets.git", true, &scopes),
            KeyOffer::OutOfScope {
                host: "github.com".into()
            }
        );
        assert_eq!(
            key_offer("ssh://git@git.example.com/team/r.git", true, &scopes),
            KeyOffer::OutOfScope {
                host: "git.example.com".into()
            }
        );
        assert_eq!(
            key_offer("git@evil.example:acme/x.git", true, &scopes),
            KeyOffer::OutOfScope {
                host: "evil.example".into()
            }
        );
        assert_eq!(
            key_offer("git@github.com:acme/widgets.git", false, &scopes),
            KeyOffer::NoKey
        );
        assert_eq!(
            key_offer("https://github.com/acme/w.git", true, &scopes),
            KeyOffer::NotSsh
        );
        assert_eq!(
            key_offer("file:///srv/r.git", true, &scopes),
            KeyOffer::NotSsh
        );
        let setup = SshSetup {
            known_hosts: None,
            key_file: Some(PathBuf::from("/tmp/k")),
            key_text: None,
            key_scopes: scopes,
            inherited: Some("ssh -o StrictHostKeyChecking=no".into()),
            proxy_command: None,
        };
        assert!(
            setup
                .command(Some("git@github.com:acme/w.git"))
                .ends_with("-i '/tmp/k'")
        );
        for url in [Some("git@evil.example:acme/x.git"), None] {
            let command = setup.command(url);
            assert!(!command.contains("/tmp/k"), "{command}");
            // A configured key never falls back to the machine's own ssh command.
            assert!(command.contains("StrictHostKeyChecking=yes"), "{command}");
        }
        assert!(!format!("{:?}", SshKey::new("-----BEGIN x")).contains("BEGIN"));
    }
}
