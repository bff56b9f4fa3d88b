//! The workspace's git: the real `git` binary with explicit argv. Credentials reach git only
//! through `GIT_ASKPASS` (a script that reads them from its environment), never through a URL,
//! an argument, the repository config or a log line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::process::{self, CommandOutput, CommandSpec};
use crate::redact::Redactor;

/// Build and tool folders kept out of commits (written to `.git/info/exclude`).
const EXCLUDES: &str =
    "target/\nnode_modules/\n__pycache__/\n.pytest_cache/\n*.pyc\n.venv/\n.mypy_cache/\n";

/// The askpass script: it prints the user name or the token that git's environment holds.
const ASKPASS: &str = "#!/bin/sh\ncase \"$1\" in\n  [Uu]sername*) printf '%s\\n' \"$RECAC_ASKPASS_USERNAME\" ;;\n  *) printf '%s\\n' \"$RECAC_ASKPASS_PASSWORD\" ;;\nesac\n";

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
    /// Anything else (network trouble included).
    Other,
}

impl GitErrorKind {
    /// Whether another attempt would fail the same way.
    pub fn is_permanent(self) -> bool {
        matches!(self, Self::AuthRefused | Self::NotFound | Self::Declined)
    }
}

/// Classifies git's stderr (pure).
pub fn classify(stderr: &str) -> GitErrorKind {
    let s = stderr.to_ascii_lowercase();
    let any = |needles: &[&str]| needles.iter().any(|n| s.contains(n));
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
        "no such file or directory",
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
    uses_token: bool,
    redactor: Redactor,
    timeout: Duration,
    // Holds the askpass script; removed on drop.
    _askpass: Option<tempfile::TempDir>,
}

impl Git {
    /// git working in `dir`, authenticating with `token` (sent as `username`) when given.
    pub fn new(
        dir: &Path,
        token: Option<&str>,
        username: &str,
        redactor: Redactor,
    ) -> std::io::Result<Self> {
        let mut env = vec![
            ("GIT_TERMINAL_PROMPT".to_string(), "0".to_string()),
            (
                "GIT_SSH_COMMAND".to_string(),
                std::env::var("GIT_SSH_COMMAND").unwrap_or_else(|_| "ssh -o BatchMode=yes".into()),
            ),
            ("LC_ALL".to_string(), "C".to_string()),
        ];
        let askpass = match token {
            Some(token) => {
                use std::os::unix::fs::PermissionsExt;
                let holder = tempfile::Builder::new()
                    .prefix("recac-askpass-")
                    .tempdir()?;
                let script = holder.path().join("askpass.sh");
                std::fs::write(&script, ASKPASS)?;
                std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700))?;
                env.push(("GIT_ASKPASS".into(), script.to_string_lossy().into_owned()));
                env.push(("RECAC_ASKPASS_USERNAME".into(), username.to_string()));
                env.push(("RECAC_ASKPASS_PASSWORD".into(), token.to_string()));
                Some(holder)
            }
            None => None,
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            env,
            uses_token: token.is_some(),
            redactor,
            timeout: Duration::from_secs(900),
            _askpass: askpass,
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
        let mut argv: Vec<&str> = Vec::new();
        if self.uses_token {
            // Ignore the machine's credential helpers: they could offer other credentials or
            // store ours.
            argv.extend(["-c", "credential.helper="]);
        }
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

    /// Pushes HEAD to `branch` on the remote (never forced).
    pub async fn push(&self, branch: &str) -> Result<(), GitError> {
        let refspec = format!("HEAD:refs/heads/{branch}");
        self.ok(&["push", "--porcelain", "origin", refspec.as_str()])
            .await
            .map(drop)
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
        assert!(Declined.is_permanent() && !NonFastForward.is_permanent() && !Other.is_permanent());
    }
}
