//! Runs a program with explicit argv in a directory, with a timeout, a scrubbed environment and
//! bounded output capture. Never goes through a shell unless the caller names `sh` itself.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::settings::SECRET_VARS;

/// Most bytes of each stream kept in memory (the rest is read and dropped).
const CAPTURE_LIMIT: usize = 4 * 1024 * 1024;

/// What to run.
#[derive(Clone, Debug)]
pub struct CommandSpec {
    pub program: String,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    pub timeout: Duration,
    /// Variables set for the child.
    pub env: Vec<(String, String)>,
    /// Variables removed from the child's environment (by default the known credentials,
    /// [`SECRET_VARS`]; [`crate::secrets::ChildEnv`] adds the rest for the commands the model
    /// can influence).
    pub remove_env: Vec<String>,
    pub stdin: Option<Vec<u8>>,
}

impl CommandSpec {
    pub fn new(
        program: impl Into<String>,
        args: &[&str],
        cwd: impl Into<PathBuf>,
        timeout: Duration,
    ) -> Self {
        Self {
            program: program.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            cwd: cwd.into(),
            timeout,
            env: Vec::new(),
            remove_env: SECRET_VARS.iter().map(|v| v.to_string()).collect(),
            stdin: None,
        }
    }

    /// The `PATH` the child gets (the agent's, unless `env` sets or `remove_env` removes it).
    pub fn path_var(&self) -> Option<std::ffi::OsString> {
        crate::toolchain::child_path(
            self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            self.remove_env.iter().map(String::as_str),
        )
    }
}

/// How a command ended.
#[derive(Clone, Debug)]
pub struct CommandOutput {
    /// `None` when killed by a signal or the timeout.
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub duration: Duration,
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }

    /// Exit status, stdout and stderr as one text, at most about `limit` bytes.
    pub fn describe(&self, limit: usize) -> String {
        let status = match (self.timed_out, self.exit_code) {
            (true, _) => format!("timed out after {}s (killed)", self.duration.as_secs()),
            (false, Some(code)) => format!("exit code {code}"),
            (false, None) => "killed by a signal".to_string(),
        };
        let half = limit / 2;
        format!(
            "{status}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            cap(&String::from_utf8_lossy(&self.stdout), half),
            cap(&String::from_utf8_lossy(&self.stderr), half)
        )
    }
}

/// `text` cut to about `limit` bytes, keeping its head and tail (on character boundaries).
pub fn cap(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_string();
    }
    let keep = limit.saturating_sub(64) / 2;
    let mut head_end = keep.min(text.len());
    while !text.is_char_boundary(head_end) {
        head_end -= 1;
    }
    let mut tail_start = text.len().saturating_sub(keep);
    while !text.is_char_boundary(tail_start) {
        tail_start += 1;
    }
    format!(
        "{}\n[... {} bytes omitted ...]\n{}",
        &text[..head_end],
        tail_start - head_end,
        &text[tail_start..]
    )
}

async fn drain(mut reader: impl AsyncRead + Unpin) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = CAPTURE_LIMIT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    kept
}

fn kill_group(pid: u32) {
    // The child leads its own process group: end the whole group, grandchildren included.
    // Signalled from here, not through a `kill` program (slim images have none).
    let group = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    if let Some(group) = group
        && let Err(e) = rustix::process::kill_process_group(group, rustix::process::Signal::KILL)
        && e != rustix::io::Errno::SRCH
    {
        tracing::warn!(pid, error = %e, "cannot end the command's process group");
    }
}

/// Ends a command's process group when dropped while armed.
struct GroupGuard(Option<u32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            kill_group(pid);
        }
    }
}

/// Runs `spec`. Errors only when the program cannot be started.
pub async fn run(spec: &CommandSpec) -> std::io::Result<CommandOutput> {
    let start = Instant::now();
    let mut cmd = tokio::process::Command::new(&spec.program);
    cmd.args(&spec.args)
        .current_dir(&spec.cwd)
        .stdin(if spec.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for var in &spec.remove_env {
        cmd.env_remove(var);
    }
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn()?;
    let pid = child.id();
    // A run that is dropped (the agent stopping) ends the command's whole group.
    let mut group = GroupGuard(pid);
    if let (Some(input), Some(mut stdin)) = (spec.stdin.clone(), child.stdin.take()) {
        tokio::spawn(async move {
            let _ = stdin.write_all(&input).await;
        });
    }
    let out = child.stdout.take().map(|s| tokio::spawn(drain(s)));
    let err = child.stderr.take().map(|s| tokio::spawn(drain(s)));
    let (exit_code, timed_out) = match tokio::time::timeout(spec.timeout, child.wait()).await {
        Ok(status) => (status?.code(), false),
        Err(_) => {
            if let Some(pid) = pid {
                kill_group(pid);
            }
            let _ = child.kill().await;
            (None, true)
        }
    };
    let collect = |h: Option<tokio::task::JoinHandle<Vec<u8>>>| async move {
        match h {
            // A background process that keeps the pipe open must not hang us.
            Some(h) => tokio::time::timeout(Duration::from_secs(5), h)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default(),
            None => Vec::new(),
        }
    };
    group.0 = None;
    let stdout = collect(out).await;
    let stderr = collect(err).await;
    Ok(CommandOutput {
        exit_code,
        timed_out,
        stdout,
        stderr,
        duration: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_keep_head_and_tail() {
        let text = format!("{}{}", "a".repeat(1000), "z".repeat(1000));
        let out = cap(&text, 300);
        assert!(out.len() < 400);
        assert!(out.starts_with('a') && out.ends_with('z') && out.contains("omitted"));
        assert_eq!(cap("short", 300), "short");
        let wide = "漢".repeat(500);
        let _ = cap(&wide, 301);
    }

    #[tokio::test]
    async fn runs_with_timeout_and_scrubbed_env() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = CommandSpec::new(
            "sh",
            &["-c", "echo hi; echo err >&2; exit 7"],
            dir.path(),
            Duration::from_secs(10),
        );
        let out = run(&spec).await.unwrap();
        assert_eq!(out.exit_code, Some(7));
        assert_eq!(out.stdout, b"hi\n");
        assert_eq!(out.stderr, b"err\n");

        spec.args = vec!["-c".into(), "sleep 30 & sleep 30".into()];
        spec.timeout = Duration::from_millis(300);
        let out = run(&spec).await.unwrap();
        assert!(out.timed_out);
        assert!(out.duration < Duration::from_secs(10));
        assert!(out.describe(1000).contains("timed out"));

        // A grandchild in the background ends with the group, signalled without `kill`.
        let pid_file = dir.path().join("grandchild.pid");
        spec.args = vec![
            "-c".into(),
            format!("sleep 60 & echo $! > {}; sleep 60", pid_file.display()),
        ];
        let out = run(&spec).await.unwrap();
        assert!(out.timed_out);
        let grandchild = std::fs::read_to_string(&pid_file).unwrap();
        let proc_dir = std::path::Path::new("/proc").join(grandchild.trim());
        let deadline = Instant::now() + Duration::from_secs(5);
        // Killed processes linger as zombies until reaped by init: check their state.
        while std::fs::read_to_string(proc_dir.join("stat"))
            .is_ok_and(|stat| !stat.contains(") Z "))
        {
            assert!(Instant::now() < deadline, "the grandchild survived");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        spec.args = vec!["-c".into(), "echo \"[$RECAC_GIT_TOKEN]\" \"$X\"".into()];
        spec.timeout = Duration::from_secs(10);
        spec.env = vec![("X".into(), "y".into())];
        let out = run(&spec).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "[] y\n");
    }
}
