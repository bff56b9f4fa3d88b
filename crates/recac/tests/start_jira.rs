//! `recac start --jira KEY` on a developer's machine: the ticket is read from Jira (the
//! simulator) with the operator's config file, and the same flow clones, works and pushes.

use std::path::Path;
use std::process::Command;

use recac_jira_sim::{BOT_EMAIL, BOT_TOKEN, IssueSeed, JiraSim};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A bare repository with one commit on main.
fn remote(root: &Path) -> String {
    let bare = root.join("remote.git");
    let seed = root.join("seed");
    std::fs::create_dir_all(&seed).expect("dir");
    git(
        root,
        &[
            "init",
            "-q",
            "--bare",
            "-b",
            "main",
            bare.to_str().expect("utf-8"),
        ],
    );
    git(&seed, &["init", "-q", "-b", "main"]);
    std::fs::write(seed.join("README.md"), "hello\n").expect("write");
    git(&seed, &["add", "."]);
    git(&seed, &["commit", "-q", "-m", "initial"]);
    git(
        &seed,
        &["push", "-q", bare.to_str().expect("utf-8"), "main"],
    );
    format!("file://{}", bare.display())
}

#[tokio::test]
async fn start_reads_the_ticket_from_jira_with_the_config_file() {
    let sim = JiraSim::cloud().await.expect("simulator starts");
    let key = sim.add_issue(IssueSeed {
        project: "PROJ".into(),
        summary: "Fix the $(rm -rf ~) `login` bug".into(),
        description: Some("The session times out after 30 seconds.".into()),
        ..Default::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let repo = remote(dir.path());
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "jira:\n  url: {}\n  auth:\n    type: basic\n    email: {BOT_EMAIL}\n    tokenEnv: TEST_JIRA_TOKEN\n",
            sim.url()
        ),
    )
    .expect("config");
    let result_path = dir.path().join("result.json");
    let agent_args =
        serde_json::json!(["-c", "cp \"$RECAC_PROMPT_FILE\" prompt-seen.txt"]).to_string();

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_recac"))
        .args(["start", "--jira", &key, "--config"])
        .arg(&config)
        .args(["--repo", &repo])
        .env("TEST_JIRA_TOKEN", BOT_TOKEN)
        .env("RECAC_AGENT_COMMAND", "sh")
        .env("RECAC_AGENT_ARGS", agent_args)
        .env("RECAC_TEST_COMMAND", "none")
        .env("RECAC_PULL_REQUEST", "false")
        .env("RECAC_RESULT_PATH", &result_path)
        .env("RECAC_WORKSPACE", dir.path().join("work"))
        .env_remove("JIRA_URL")
        .output()
        .await
        .expect("recac start runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        !stdout.contains(BOT_TOKEN) && !stderr.contains(BOT_TOKEN),
        "token leaked"
    );

    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&result_path).expect("result"))
            .expect("json");
    assert_eq!(result["outcome"], "succeeded");
    assert_eq!(result["branch"], format!("recac/{key}"));

    // The ticket's text reached the agent as data, unchanged, and the branch was pushed.
    let check = dir.path().join("check");
    git(
        dir.path(),
        &[
            "clone",
            "-q",
            "-b",
            &format!("recac/{key}"),
            &repo,
            check.to_str().expect("utf-8"),
        ],
    );
    let prompt =
        std::fs::read_to_string(check.join("prompt-seen.txt")).expect("prompt file pushed");
    assert!(
        prompt.contains("Fix the $(rm -rf ~) `login` bug"),
        "{prompt}"
    );
    assert!(
        prompt.contains("The session times out after 30 seconds."),
        "{prompt}"
    );
    let log = git(&check, &["log", "-1", "--format=%B"]);
    assert!(log.contains(&key), "{log}");

    // One read of the issue, with its fields named.
    let reads: Vec<_> = sim
        .calls()
        .into_iter()
        .filter(|c| c.method == "GET" && c.path.ends_with(&format!("/issue/{key}")))
        .collect();
    assert_eq!(reads.len(), 1, "{reads:?}");
}
