//! The workspace's git: the real `git` binary with explicit argv.
//!
//! Credentials reach git only through a credential helper configured per URL
//! (`credential.https://<host>.helper`, see gitcredentials(7)): git asks it only for a
//! request to a host in the token's scope, only over HTTPS, and the helper reads the token
//! from git's environment, so it is never in a URL, an argument, the repository config or a
//! log line. For a scope with an organisation the helper also checks the repository's path
//! (git sends it with `useHttpPath`). Redirects to another host are asked about that host,
//! which is out of scope. The machine's own credential helpers are switched off.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use recac_api::repo_host::HostScope;

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
        )
    }
}

/// Classifies git's stderr (pure).
pub fn classify(stderr: &str) -> GitErrorKind {
    let s = stderr.to_ascii_lowercase();
    let any = |needles: &[&str]| needles.iter().any(|n| s.contains(n));
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

/// git for one workspace.
pub struct Git {
    dir: PathBuf,
    env: Vec<(String, String)>,
    config: Vec<String>,
    redactor: Redactor,
    timeout: Duration,
    // Holds the combined CA bundle; removed on drop.
    _scratch: Option<tempfile::TempDir>,
}

impl Git {
    /// git working in `dir`, giving `credential` to the hosts it is scoped to, trusting the
    /// certificate authorities in `ca_bundle` besides the system's.
    pub fn new(
        dir: &Path,
        credential: Option<&GitCredential>,
        ca_bundle: Option<&Path>,
        redactor: Redactor,
    ) -> std::io::Result<Self> {
        let mut env = vec![
            ("GIT_TERMINAL_PROMPT".to_string(), "0".to_string()),
            (
                "GIT_SSH_COMMAND".to_string(),
                std::env::var("GIT_SSH_COMMAND").unwrap_or_else(|_| "ssh -o BatchMode=yes".into()),
            ),
            ("LC_ALL".to_string(), "C".to_string()),
            // No program answers prompts: the credential comes from the helper or not at all.
            ("GIT_ASKPASS".to_string(), String::new()),
            ("SSH_ASKPASS".to_string(), String::new()),
        ];
        if let Some(credential) = credential {
            env.push((USERNAME_VAR.into(), credential.username.clone()));
            env.push((PASSWORD_VAR.into(), credential.token.clone()));
        }
        let scratch = match ca_bundle {
            Some(extra) => {
                let holder = tempfile::Builder::new().prefix("recac-git-").tempdir()?;
                let file = holder.path().join("ca-bundle.pem");
                std::fs::write(&file, combined_ca_bundle(extra)?)?;
                env.push(("GIT_SSL_CAINFO".into(), file.to_string_lossy().into_owned()));
                Some(holder)
            }
            None => None,
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            env,
            config: credential_config(credential),
            redactor,
            timeout: Duration::from_secs(900),
            _scratch: scratch,
        })
    }

    /// The workspace directory.
    pub fn dir(&self) -> &Path {
        &self.dir
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
        let message = if out.timed_out {
            "timed out".to_string()
        } else {
            process::cap(stderr.trim(), 2000)
        };
        GitError {
            op: args.first().copied().unwrap_or("").to_string(),
            kind: if out.timed_out {
                GitErrorKind::Other
            } else {
                classify(&stderr)
            },
            message,
        }
    }

    /// Clones `url` into the workspace directory (which must be absent or empty).
    pub async fn clone_repo(&self, url: &str) -> Result<(), GitError> {
        let parent = self.dir.parent().unwrap_or(Path::new("/")).to_path_buf();
        let target = self.dir.to_string_lossy().into_owned();
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
        self.ok(&["push", "--porcelain", "origin", refspec.as_str()])
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
}
