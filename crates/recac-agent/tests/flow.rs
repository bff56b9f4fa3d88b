//! End-to-end runs of the agent flow against real git (file:// and smart HTTP with basic auth),
//! a scripted LLM (both API shapes) and a GitHub API simulator.

mod support;

use recac_api::agent_contract::{AgentResult, Outcome};
use recac_gitserver::{GitServer, GitServerOptions};
use serde_json::json;
use support::llm_sim::{LlmSim, Step, call, finish};
use support::*;

const KEY: &str = "sk-sim-key-0123456789abcdefXYZ";

/// The scripted work: look around, fix value.txt, run the tests, finish.
fn fixing_script(value: &'static str) -> Vec<Step> {
    vec![
        call("list_files", json!({})),
        call("read_file", json!({"path": "value.txt"})),
        call("write_file", json!({"path": "value.txt", "content": value})),
        call("run_command", json!({"command": "make test"})),
        finish("Set value to 2\n\nEdited value.txt and ran make test."),
    ]
}

fn openai_vars<'a>(
    sim: &'a LlmSim,
    url: &'a str,
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let base: &'static str = Box::leak(sim.openai_url().into_boxed_str());
    let mut v = vec![
        ("RECAC_REPO_URL", url),
        ("RECAC_PROMPT", "Set the value in value.txt to 2."),
        ("RECAC_TICKET", "PROJ-1"),
        ("RECAC_TASK", "proj-1-task"),
        ("RECAC_PROVIDER", "openai"),
        ("RECAC_MODEL", "sim-model"),
        ("OPENAI_API_KEY", KEY),
        ("OPENAI_BASE_URL", base),
    ];
    v.extend_from_slice(extra);
    v
}

fn parsed(ran: &Ran) -> AgentResult {
    assert!(ran.result_file.len() <= 4096);
    serde_json::from_str(&ran.result_file).expect("result file is JSON")
}

#[tokio::test]
async fn new_branch_is_created_tested_and_pushed() {
    let root = tempfile::tempdir().unwrap();
    let bare = bare_repo(root.path(), "r.git", &[]);
    let sim = LlmSim::start(KEY, fixing_script("value = 2\n")).await;
    let url = file_url(&bare);
    let ran = run_with(root.path(), &openai_vars(&sim, &url, &[])).await;
    let result = parsed(&ran);
    assert_eq!(
        result.outcome,
        Outcome::Succeeded,
        "{:?}\n{}",
        result,
        ran.logs
    );
    assert_eq!(ran.out.exit_code, 0);
    assert_eq!(result.branch.as_deref(), Some("recac/PROJ-1"));
    assert_eq!(result.tests_passed, Some(true));
    let usage = result.token_usage.unwrap();
    assert_eq!((usage.input_tokens, usage.output_tokens), (500, 50));
    let head = remote_head(&bare, "recac/PROJ-1").expect("branch pushed");
    assert_eq!(result.commit.as_deref(), Some(head.as_str()));
    assert_eq!(show(&bare, &head, "value.txt"), "value = 2");
    let message = git(&bare, &["log", "-1", "--format=%an <%ae>%n%B", &head]);
    assert!(
        message.starts_with("recac <recac@users.noreply.github.com>\nPROJ-1: Set value to 2"),
        "{message}"
    );
    // main is untouched
    assert_eq!(show(&bare, "main", "value.txt"), "value = 1");
    // The model saw the tool results, including the test run.
    let requests = sim.requests();
    assert_eq!(requests.len(), 5);
    assert!(requests[4].contains("exit code 0"), "{}", requests[4]);
    println!("new_branch: {:.2}s", ran.seconds);
}

#[tokio::test]
async fn existing_branch_is_continued_with_anthropic() {
    let root = tempfile::tempdir().unwrap();
    let bare = bare_repo(root.path(), "r.git", &[]);
    let earlier = push_branch(root.path(), &bare, "feature/x", "progress.txt", "halfway\n");
    let sim = LlmSim::start(
        KEY,
        vec![
            call("read_file", json!({"path": "progress.txt"})),
            Step::Calls(vec![
                (
                    "write_file",
                    json!({"path": "value.txt", "content": "value = 2\n"}),
                ),
                (
                    "edit_file",
                    json!({"path": "progress.txt", "old_text": "halfway", "new_text": "done"}),
                ),
            ]),
            finish("Finished the work"),
        ],
    )
    .await;
    let url = file_url(&bare);
    let ran = run_with(
        root.path(),
        &[
            ("RECAC_REPO_URL", &url),
            ("RECAC_PROMPT", "Finish it."),
            ("RECAC_BRANCH", "feature/x"),
            ("RECAC_PROVIDER", "anthropic"),
            ("RECAC_MODEL", "claude-sim"),
            ("ANTHROPIC_API_KEY", KEY),
            ("ANTHROPIC_BASE_URL", &sim.anthropic_url()),
        ],
    )
    .await;
    let result = parsed(&ran);
    assert_eq!(
        result.outcome,
        Outcome::Succeeded,
        "{result:?}\n{}",
        ran.logs
    );
    let head = remote_head(&bare, "feature/x").unwrap();
    assert_eq!(
        git(&bare, &["rev-parse", &format!("{head}^")]),
        earlier,
        "continues the earlier attempt"
    );
    assert_eq!(show(&bare, &head, "progress.txt"), "done");
    // The model read the earlier attempt's file.
    assert!(sim.requests()[1].contains("halfway"));
    assert_eq!(result.token_usage.unwrap().input_tokens, 600);
}

#[tokio::test]
async fn failing_tests_are_reported_and_pushed() {
    let root = tempfile::tempdir().unwrap();
    let bare = bare_repo(root.path(), "r.git", &[]);
    let sim = LlmSim::start(KEY, fixing_script("value = 3\n")).await;
    let url = file_url(&bare);
    let ran = run_with(root.path(), &openai_vars(&sim, &url, &[])).await;
    let result = parsed(&ran);
    assert_eq!(result.outcome, Outcome::TestsFailed, "{}", ran.logs);
    assert_eq!(result.tests_passed, Some(false));
    assert_eq!(ran.out.exit_code, 1);
    assert!(remote_head(&bare, "recac/PROJ-1").is_some());
}

#[tokio::test]
async fn configured_test_command_wins() {
    let root = tempfile::tempdir().unwrap();
    let bare = bare_repo(root.path(), "r.git", &[]);
    let sim = LlmSim::start(KEY, fixing_script("value = 3\n")).await;
    let url = file_url(&bare);
    let ran = run_with(
        root.path(),
        &openai_vars(
            &sim,
            &url,
            &[("RECAC_TEST_COMMAND", "grep -q 'value = 3' value.txt")],
        ),
    )
    .await;
    assert_eq!(parsed(&ran).outcome, Outcome::Succeeded, "{}", ran.logs);
}

#[tokio::test]
async fn rejected_push_gives_up() {
    let root = tempfile::tempdir().unwrap();
    let bare = bare_repo(root.path(), "r.git", &[]);
    let hook = bare.join("hooks/pre-receive");
    std::fs::write(&hook, "#!/bin/sh\necho 'branch is protected' >&2\nexit 1\n").unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&hook).unwrap().permissions(),
        0o755,
    );
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let sim = LlmSim::start(KEY, fixing_script("value = 2\n")).await;
    let url = file_url(&bare);
    let ran = run_with(root.path(), &openai_vars(&sim, &url, &[])).await;
    let result = parsed(&ran);
    assert_eq!(result.outcome, Outcome::GaveUp, "{}", ran.logs);
    assert_eq!(ran.out.exit_code, 3);
    assert!(result.summary.unwrap().contains("declined"));
    assert!(remote_head(&bare, "recac/PROJ-1").is_none());
}

#[tokio::test]
async fn no_changes_is_reported() {
    let root = tempfile::tempdir().unwrap();
    let bare = bare_repo(root.path(), "r.git", &[]);
    let sim = LlmSim::start(
        KEY,
        vec![
            call("list_files", json!({})),
            finish("Nothing to do: already 2"),
        ],
    )
    .await;
    let url = file_url(&bare);
    let ran = run_with(root.path(), &openai_vars(&sim, &url, &[])).await;
    let result = parsed(&ran);
    assert_eq!(result.outcome, Outcome::NoChanges);
    assert_eq!(ran.out.exit_code, 3);
    assert_eq!(result.summary.as_deref(), Some("Nothing to do: already 2"));
    assert!(result.commit.is_none());
    assert!(remote_head(&bare, "recac/PROJ-1").is_none());
}

#[tokio::test]
async fn model_declaring_it_cannot_do_gives_up() {
    let root = tempfile::tempdir().unwrap();
    let bare = bare_repo(root.path(), "r.git", &[]);
    let sim = LlmSim::start(
        KEY,
        vec![call(
            "finish",
            json!({"status": "cannot_do", "summary": "needs a database"}),
        )],
    )
    .await;
    let url = file_url(&bare);
    let ran = run_with(root.path(), &openai_vars(&sim, &url, &[])).await;
    let result = parsed(&ran);
    assert_eq!((result.outcome, ran.out.exit_code), (Outcome::GaveUp, 3));
    assert_eq!(result.summary.as_deref(), Some("needs a database"));
}

#[tokio::test]
async fn external_engine_gets_the_prompt_file() {
    let root = tempfile::tempdir().unwrap();
    let bare = bare_repo(root.path(), "r.git", &[]);
    let url = file_url(&bare);
    // The CLI copies the prompt into a file and fixes value.txt.
    let args = json!(["-c", "cp \"$RECAC_PROMPT_FILE\" prompt-seen.txt && echo 'value = 2' > value.txt && echo 'external agent: fixed value'"]).to_string();
    let ran = run_with(
        root.path(),
        &[
            ("RECAC_REPO_URL", &url),
            (
                "RECAC_PROMPT",
                "Ticket text with $(rm -rf /) and `backticks`; do it",
            ),
            ("RECAC_TICKET", "EXT-9"),
            ("RECAC_AGENT_COMMAND", "sh"),
            ("RECAC_AGENT_ARGS", &args),
        ],
    )
    .await;
    let result = parsed(&ran);
    assert_eq!(
        result.outcome,
        Outcome::Succeeded,
        "{result:?}\n{}",
        ran.logs
    );
    assert_eq!(
        result.summary.as_deref(),
        Some("external agent: fixed value")
    );
    assert!(result.token_usage.is_none());
    let head = remote_head(&bare, "recac/EXT-9").unwrap();
    assert_eq!(
        show(&bare, &head, "prompt-seen.txt"),
        "Ticket text with $(rm -rf /) and `backticks`; do it"
    );
    assert_eq!(result.tests_passed, Some(true));

    // An external agent that exits 3 declares the task impossible.
    let ran = run_with(
        root.path(),
        &[
            ("RECAC_REPO_URL", &url),
            ("RECAC_PROMPT", "x"),
            ("RECAC_AGENT_COMMAND", "sh"),
            ("RECAC_AGENT_ARGS", r#"["-c", "echo cannot; exit 3"]"#),
        ],
    )
    .await;
    assert_eq!(
        (parsed(&ran).outcome, ran.out.exit_code),
        (Outcome::GaveUp, 3)
    );
}

#[tokio::test]
async fn pull_request_is_opened_once_across_attempts() {
    let root = tempfile::tempdir().unwrap();
    let bare = bare_repo(root.path(), "r.git", &[]);
    let url = file_url(&bare);
    let token = "ghp_SimulatedGitHubToken0123456789abcdef";
    let github = support::github_sim::GitHubSim::start(token).await;
    let extra = [
        ("RECAC_GITHUB_API_URL", github.url.as_str()),
        ("RECAC_GITHUB_REPOSITORY", "acme/widgets"),
        ("RECAC_GIT_TOKEN", token),
    ];
    let sim = LlmSim::start(KEY, fixing_script("value = 2\n")).await;
    let first = run_with(root.path(), &openai_vars(&sim, &url, &extra)).await;
    let r1 = parsed(&first);
    assert_eq!(r1.outcome, Outcome::Succeeded, "{}", first.logs);
    assert_eq!(
        r1.pull_request_url.as_deref(),
        Some("https://github.example/acme/widgets/pull/1")
    );

    // A retried attempt: the model has nothing more to do; the branch is already pushed.
    let sim2 = LlmSim::start(KEY, vec![finish("Already done")]).await;
    let second = run_with(root.path(), &openai_vars(&sim2, &url, &extra)).await;
    let r2 = parsed(&second);
    assert_eq!(r2.outcome, Outcome::Succeeded, "{}", second.logs);
    assert_eq!(r2.pull_request_url, r1.pull_request_url);
    assert_eq!(r2.commit, r1.commit);
    assert_eq!(github.creates(), 1);
    let pr = &github.prs()[0];
    assert_eq!(pr["head"]["ref"], "recac/PROJ-1");
    assert_eq!(pr["base"]["ref"], "main");
    assert!(
        pr["title"]
            .as_str()
            .unwrap()
            .starts_with("PROJ-1: Set value to 2")
    );
    assert!(pr["body"].as_str().unwrap().contains("Tests: passed"));
}

#[tokio::test]
async fn transient_llm_errors_are_retried() {
    let root = tempfile::tempdir().unwrap();
    let bare = bare_repo(root.path(), "r.git", &[]);
    let mut script = vec![
        Step::Status(429, Some("0")),
        Step::Status(500, None),
        Step::Malformed,
        Step::Status(503, Some("0.05")),
    ];
    script.extend(fixing_script("value = 2\n"));
    let sim = LlmSim::start(KEY, script).await;
    let url = file_url(&bare);
    let ran = run_with(root.path(), &openai_vars(&sim, &url, &[])).await;
    assert_eq!(parsed(&ran).outcome, Outcome::Succeeded, "{}", ran.logs);
    assert_eq!(sim.requests().len(), 9);
    assert!(ran.logs.contains("retrying"));

    // Anthropic shape, retries exhausted: retryable failure.
    let sim = LlmSim::start(KEY, vec![Step::Status(529, Some("0")); 10]).await;
    let ran = run_with(
        root.path(),
        &[
            ("RECAC_REPO_URL", &url),
            ("RECAC_PROMPT", "x"),
            ("RECAC_PROVIDER", "anthropic"),
            ("RECAC_MODEL", "m"),
            ("ANTHROPIC_API_KEY", KEY),
            ("ANTHROPIC_BASE_URL", &sim.anthropic_url()),
            ("RECAC_LLM_MAX_RETRIES", "2"),
        ],
    )
    .await;
    let result = parsed(&ran);
    assert_eq!((result.outcome, ran.out.exit_code), (Outcome::Failed, 1));
    assert!(result.summary.unwrap().contains("after 3 attempts"));
    assert_eq!(sim.requests().len(), 3);
}

#[tokio::test]
async fn invalid_key_fails_at_once() {
    let root = tempfile::tempdir().unwrap();
    let bare = bare_repo(root.path(), "r.git", &[]);
    let sim = LlmSim::start("the-right-key-123", vec![]).await;
    let url = file_url(&bare);
    let ran = run_with(root.path(), &openai_vars(&sim, &url, &[])).await;
    let result = parsed(&ran);
    assert_eq!(
        (result.outcome.clone(), ran.out.exit_code),
        (Outcome::GaveUp, 3)
    );
    let summary = result.summary.unwrap();
    assert!(
        summary.contains("OPENAI_API_KEY") && summary.contains("401"),
        "{summary}"
    );
    assert_eq!(sim.requests().len(), 1);
    assert!(!ran.logs.contains(KEY) && !ran.result_file.contains(KEY));
}

#[tokio::test]
async fn a_model_that_never_finishes_is_stopped() {
    let root = tempfile::tempdir().unwrap();
    let bare = bare_repo(root.path(), "r.git", &[]);
    // Writes a file, then keeps listing files forever.
    let sim = LlmSim::start(
        KEY,
        vec![
            call(
                "write_file",
                json!({"path": "notes.md", "content": "wip\n"}),
            ),
            Step::Text("thinking"),
        ],
    )
    .await;
    let url = file_url(&bare);
    let ran = run_with(
        root.path(),
        &openai_vars(&sim, &url, &[("RECAC_MAX_ITERATIONS", "4")]),
    )
    .await;
    let result = parsed(&ran);
    assert_eq!(
        (result.outcome.clone(), ran.out.exit_code),
        (Outcome::Failed, 1),
        "{}",
        ran.logs
    );
    assert!(result.summary.as_deref().unwrap().contains("4 iterations"));
    assert_eq!(sim.requests().len(), 4);
    // The work in progress is pushed for the next attempt to continue.
    let head = remote_head(&bare, "recac/PROJ-1").unwrap();
    assert_eq!(show(&bare, &head, "notes.md"), "wip");
    assert!(git(&bare, &["log", "-1", "--format=%s", &head]).starts_with("WIP: PROJ-1"));

    // Token budget.
    let sim = LlmSim::start(KEY, vec![]).await;
    let ran = run_with(
        root.path(),
        &openai_vars(&sim, &url, &[("RECAC_MAX_TOKENS", "250")]),
    )
    .await;
    assert!(parsed(&ran).summary.unwrap().contains("token budget"));
    assert_eq!(sim.requests().len(), 3);
}

#[tokio::test]
async fn a_bad_repository_gives_up() {
    let root = tempfile::tempdir().unwrap();
    let sim = LlmSim::start(KEY, vec![]).await;
    let url = file_url(&root.path().join("missing.git"));
    let ran = run_with(root.path(), &openai_vars(&sim, &url, &[])).await;
    let result = parsed(&ran);
    assert_eq!((result.outcome, ran.out.exit_code), (Outcome::GaveUp, 3));
    assert!(result.summary.unwrap().contains("clone"));
    assert!(sim.requests().is_empty());
}

#[tokio::test]
async fn https_remote_with_basic_auth_and_planted_secrets_never_leak() {
    let root = tempfile::tempdir().unwrap();
    let served = root.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    let git_token = "tokPLANTEDgit0123456789";
    let other_shape = "ghp_PlantedShapeToken000000000000000000000";
    let bare = bare_repo(
        &served,
        "r.git",
        &[(
            "config.env",
            &format!("PASSWORD={git_token}\nOTHER={other_shape}\n"),
        )],
    );
    let https = https_git(root.path(), &served, git_token).await;
    let server = &https.server;
    let github = support::github_sim::GitHubSim::start(git_token).await;
    let url = format!("{}/r.git", server.url());
    let sim = LlmSim::start(
        KEY,
        vec![
            call("read_file", json!({"path": "config.env"})),
            call("run_command", json!({"command": "env; echo \"[$RECAC_GIT_TOKEN][$OPENAI_API_KEY]\"; git remote -v; cat .git/config"})),
            call("write_file", json!({"path": "value.txt", "content": "value = 2\n"})),
            // The model repeats a secret in its summary.
            call("finish", json!({"status": "done", "summary": format!("Done. Found {git_token} and {KEY} in config")})),
        ],
    )
    .await;
    let ran = run_with(
        root.path(),
        &openai_vars(
            &sim,
            &url,
            &[
                ("RECAC_GIT_TOKEN", git_token),
                ("RECAC_GIT_CREDENTIAL_HOSTS", &https.host),
                ("RECAC_CA_BUNDLE", &https.ca_file),
                ("RECAC_GITHUB_API_URL", &github.url),
                ("RECAC_GITHUB_REPOSITORY", "acme/widgets"),
            ],
        ),
    )
    .await;
    let result = parsed(&ran);
    assert_eq!(
        result.outcome,
        Outcome::Succeeded,
        "{result:?}\n{}",
        ran.logs
    );
    let head = remote_head(&bare, "recac/PROJ-1").expect("pushed over HTTP");
    assert_eq!(show(&bare, &head, "value.txt"), "value = 2");
    // Git first asked anonymously (401), then authenticated through the credential helper.
    let log = server.log();
    assert!(log.iter().any(|l| l.ends_with(" 401")), "{log:?}");
    assert!(
        log.iter()
            .any(|l| l.starts_with("POST /r.git/git-receive-pack") && l.ends_with(" 200")),
        "{log:?}"
    );

    let workspace = ran.out.workspace.clone().unwrap();
    let git_config = std::fs::read_to_string(workspace.join(".git/config")).unwrap();
    let commit_message = git(&bare, &["log", "-1", "--format=%B", &head]);
    let everywhere = [
        ("logs", ran.logs.clone()),
        ("result", ran.result_file.clone()),
        ("llm requests", sim.requests().join("\n")),
        ("git config", git_config),
        ("commit message", commit_message),
        ("pull request", github.bodies().join("\n")),
        ("http requests", log.join("\n")),
    ];
    for secret in [git_token, KEY, other_shape] {
        for (place, text) in &everywhere {
            assert!(
                !text.contains(secret),
                "{secret} leaked into {place}:\n{text}"
            );
        }
    }
    assert!(ran.result_file.contains("[REDACTED]"));
    assert_eq!(github.creates(), 1);

    // A refused token gives up.
    let sim = LlmSim::start(KEY, vec![]).await;
    let ran = run_with(
        root.path(),
        &openai_vars(
            &sim,
            &url,
            &[
                ("RECAC_GIT_TOKEN", "wrong-token-value"),
                ("RECAC_GIT_CREDENTIAL_HOSTS", &https.host),
                ("RECAC_CA_BUNDLE", &https.ca_file),
            ],
        ),
    )
    .await;
    let result = parsed(&ran);
    assert_eq!(
        (result.outcome.clone(), ran.out.exit_code),
        (Outcome::GaveUp, 3),
        "{result:?}"
    );
    assert!(result.summary.unwrap().contains("AuthRefused"));
    assert!(!ran.logs.contains("wrong-token-value"));
}

/// The runs below clone `url` with `token` and nothing for the model to do.
async fn clone_only(
    root: &std::path::Path,
    url: &str,
    extra: &[(&str, &str)],
) -> (Ran, AgentResult) {
    let sim = LlmSim::start(KEY, vec![finish("Nothing to change.")]).await;
    let ran = run_with(root, &openai_vars(&sim, url, extra)).await;
    let result = parsed(&ran);
    (ran, result)
}

#[tokio::test]
async fn the_git_token_goes_only_to_its_hosts_and_never_over_http() {
    let root = tempfile::tempdir().unwrap();
    let served = root.path().join("served");
    bare_repo(&served.join("acme"), "r.git", &[]);
    let token = "tokSCOPEDgit0123456789";
    let https = https_git(root.path(), &served, token).await;
    let url = format!("{}/acme/r.git", https.server.url());
    let no_success = |log: &[String]| {
        assert!(!log.is_empty(), "git asked nothing");
        assert!(
            log.iter().all(|l| !l.ends_with(" 200")),
            "the server accepted a credential: {log:?}"
        );
    };

    // A host the token is not for (the default scope is github.com): git asks without it.
    let (ran, result) = clone_only(
        root.path(),
        &url,
        &[
            ("RECAC_GIT_TOKEN", token),
            ("RECAC_CA_BUNDLE", &https.ca_file),
        ],
    )
    .await;
    assert_eq!((result.outcome, ran.out.exit_code), (Outcome::GaveUp, 3));
    let summary = result.summary.unwrap_or_default();
    assert!(
        summary.contains(&format!("the git token is not sent to {}", https.host)),
        "{summary}"
    );
    no_success(&https.server.log());
    assert!(!ran.logs.contains(token));

    // Another organisation on the right host: not sent either.
    let other_org = format!("{}/other", https.host);
    let before = https.server.log().len();
    let (_, result) = clone_only(
        root.path(),
        &url,
        &[
            ("RECAC_GIT_TOKEN", token),
            ("RECAC_CA_BUNDLE", &https.ca_file),
            ("RECAC_GIT_CREDENTIAL_HOSTS", &other_org),
        ],
    )
    .await;
    assert_eq!(result.outcome, Outcome::GaveUp);
    no_success(&https.server.log()[before..]);

    // Its organisation (in any case): the clone is authenticated.
    let own_org = format!("{}/ACME", https.host);
    let (ran, result) = clone_only(
        root.path(),
        &url,
        &[
            ("RECAC_GIT_TOKEN", token),
            ("RECAC_CA_BUNDLE", &https.ca_file),
            ("RECAC_GIT_CREDENTIAL_HOSTS", &own_org),
        ],
    )
    .await;
    assert_eq!(
        result.outcome,
        Outcome::NoChanges,
        "{result:?}\n{}",
        ran.logs
    );

    // Plain http, even to a host in scope: never.
    let plain = GitServer::start(GitServerOptions::plain(&served, token))
        .await
        .expect("git server starts");
    let plain_host = plain.address().to_string();
    let (ran, result) = clone_only(
        root.path(),
        &format!("{}/acme/r.git", plain.url()),
        &[
            ("RECAC_GIT_TOKEN", token),
            ("RECAC_GIT_CREDENTIAL_HOSTS", &plain_host),
        ],
    )
    .await;
    assert_eq!(result.outcome, Outcome::GaveUp);
    assert!(
        result
            .summary
            .unwrap_or_default()
            .contains("never sent over plain http"),
        "{}",
        ran.logs
    );
    no_success(&plain.log());
}

#[tokio::test]
async fn a_secret_written_into_the_work_is_never_pushed() {
    let root = tempfile::tempdir().unwrap();
    let served = root.path().join("served");
    let bare = bare_repo(&served, "r.git", &[]);
    let token = "tokPUSHGUARDgit0123456789";
    let service_token = "svc-TOKEN-8fK2mQ7xW1zP";
    let https = https_git(root.path(), &served, token).await;
    let url = format!("{}/r.git", https.server.url());
    let secrets = root.path().join("secrets");
    mount_secret(&secrets, "team", &[("CUSTOM_SERVICE_TOKEN", service_token)]);
    let secrets_dir = secrets.display().to_string();
    let file = format!("{secrets_dir}/team/CUSTOM_SERVICE_TOKEN");
    let commit = "git -c user.name=m -c user.email=m@example.com commit --quiet";
    let cases = [
        // Written into a file the agent commits.
        (format!("cat {file} > leaked.txt"), "`leaked.txt`"),
        // Base64 of it, committed by the model and removed again: still in the history.
        (
            format!(
                "base64 < {file} > enc.txt && git add enc.txt && {commit} -m add && git rm --quiet enc.txt && {commit} -m remove"
            ),
            "`enc.txt`",
        ),
        // In the message of a commit the model made.
        (
            format!("{commit} --allow-empty -m \"note $(cat {file})\""),
            "the message of commit",
        ),
    ];
    for (command, place) in cases {
        let sim = LlmSim::start(
            KEY,
            vec![
                call("run_command", json!({ "command": command })),
                call(
                    "write_file",
                    json!({"path": "value.txt", "content": "value = 2\n"}),
                ),
                finish("Set value to 2"),
            ],
        )
        .await;
        let ran = run_with(
            root.path(),
            &openai_vars(
                &sim,
                &url,
                &[
                    ("RECAC_GIT_TOKEN", token),
                    ("RECAC_GIT_CREDENTIAL_HOSTS", &https.host),
                    ("RECAC_CA_BUNDLE", &https.ca_file),
                    ("RECAC_SECRETS_DIR", &secrets_dir),
                ],
            ),
        )
        .await;
        let result = parsed(&ran);
        assert_eq!(
            (result.outcome.clone(), ran.out.exit_code),
            (Outcome::GaveUp, 3),
            "{command}: {result:?}\n{}",
            ran.logs
        );
        let summary = result.summary.clone().unwrap_or_default();
        assert!(
            summary.contains("nothing was pushed") && summary.contains(place),
            "{command}: {summary}"
        );
        assert!(
            remote_head(&bare, "recac/PROJ-1").is_none(),
            "{command}: pushed"
        );
        for text in [&ran.logs, &ran.result_file] {
            assert!(!text.contains(service_token), "{command}: {text}");
        }
    }
    let log = https.server.log();
    assert!(
        log.iter()
            .all(|l| !l.starts_with("POST /r.git/git-receive-pack")),
        "{log:?}"
    );
}

/// Cancels `stop` (as SIGTERM does) once `path` exists; returns when it did.
async fn stop_when_exists(
    path: std::path::PathBuf,
    stop: tokio_util::sync::CancellationToken,
) -> std::time::Instant {
    while !path.exists() {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stop.cancel();
    std::time::Instant::now()
}

#[tokio::test]
async fn told_to_stop_it_ends_the_command_and_pushes_the_work_in_progress() {
    let root = tempfile::tempdir().unwrap();
    let bare = bare_repo(root.path(), "r.git", &[]);
    let pid_file = root.path().join("sleeper.pid");
    let sim = LlmSim::start(
        KEY,
        vec![
            call("write_file", json!({"path": "value.txt", "content": "value = 2\n"})),
            call(
                "run_command",
                json!({"command": format!("sleep 120 & echo $! > {}; sleep 120", pid_file.display())}),
            ),
            finish("never reached"),
        ],
    )
    .await;
    let url = file_url(&bare);
    let stop = tokio_util::sync::CancellationToken::new();
    let stopper = stop_when_exists(pid_file.clone(), stop.clone());
    let vars = openai_vars(&sim, &url, &[]);
    let (ran, stopped_at) = tokio::join!(run_stoppable(root.path(), &vars, stop), stopper);
    let took = stopped_at.elapsed();
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");
    let result = parsed(&ran);
    assert_eq!(
        (result.outcome.clone(), ran.out.exit_code),
        (Outcome::Failed, 1),
        "{result:?}\n{}",
        ran.logs
    );
    let summary = result.summary.clone().unwrap_or_default();
    assert!(
        summary.contains("told to stop") && summary.contains("work in progress is pushed"),
        "{summary}"
    );
    let head = remote_head(&bare, "recac/PROJ-1").expect("the work in progress is pushed");
    assert_eq!(result.commit.as_deref(), Some(head.as_str()));
    assert_eq!(show(&bare, &head, "value.txt"), "value = 2");
    let message = git(&bare, &["log", "-1", "--format=%s", &head]);
    assert!(message.starts_with("WIP: PROJ-1"), "{message}");
    // The command's background child ended with it.
    let sleeper = std::fs::read_to_string(&pid_file).unwrap();
    let stat = std::path::Path::new("/proc")
        .join(sleeper.trim())
        .join("stat");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::fs::read_to_string(&stat).is_ok_and(|s| !s.contains(") Z ")) {
        assert!(
            std::time::Instant::now() < deadline,
            "the command's child survived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn told_to_stop_during_the_tests_it_pushes_the_work_without_calling_it_done() {
    let root = tempfile::tempdir().unwrap();
    let bare = bare_repo(root.path(), "r.git", &[]);
    let marker = root.path().join("tests-started");
    let sim = LlmSim::start(
        KEY,
        vec![
            call(
                "write_file",
                json!({"path": "value.txt", "content": "value = 2\n"}),
            ),
            finish("Set value to 2"),
        ],
    )
    .await;
    let url = file_url(&bare);
    let test_command = format!("touch {}; sleep 120", marker.display());
    let vars = openai_vars(&sim, &url, &[("RECAC_TEST_COMMAND", &test_command)]);
    let stop = tokio_util::sync::CancellationToken::new();
    let stopper = stop_when_exists(marker, stop.clone());
    let (ran, stopped_at) = tokio::join!(run_stoppable(root.path(), &vars, stop), stopper);
    assert!(stopped_at.elapsed() < std::time::Duration::from_secs(10));
    let result = parsed(&ran);
    assert_eq!(
        (result.outcome.clone(), ran.out.exit_code),
        (Outcome::Failed, 1),
        "{result:?}\n{}",
        ran.logs
    );
    assert!(
        result
            .summary
            .clone()
            .unwrap_or_default()
            .contains("the tests did not finish"),
        "{result:?}"
    );
    let head = remote_head(&bare, "recac/PROJ-1").expect("the work is pushed");
    assert_eq!(show(&bare, &head, "value.txt"), "value = 2");
}

/// A repository whose tests `cargo test` runs: a Cargo.toml, a Makefile without a test target.
fn cargo_repo(root: &std::path::Path, name: &str) -> std::path::PathBuf {
    bare_repo(
        root,
        name,
        &[
            ("Makefile", "build:\n\ttrue\n"),
            (
                "Cargo.toml",
                "[package]\nname = \"x\"\nversion = \"0.1.0\"\n",
            ),
        ],
    )
}

/// A summary that names the missing `program` and says how to provide it.
fn names_missing_tool(result: &AgentResult, program: &str) -> bool {
    let summary = result.summary.as_deref().unwrap_or("");
    summary.contains(&format!("`{program}`"))
        && summary.contains("not installed")
        && summary.contains("agent.image")
        && summary.contains("toolchains")
}

#[tokio::test]
async fn a_missing_test_tool_gives_up_naming_it() {
    // PATH without cargo (what the agent's image lacks), in a process of its own.
    let Some(root) = in_child("a_missing_test_tool_gives_up_naming_it", |root| {
        vec![("PATH", bin_dir(root, &["git", "sh"]))]
    }) else {
        return;
    };

    // Detected from Cargo.toml before the work: nothing is spent on the model.
    let bare = cargo_repo(&root, "r.git");
    let sim = LlmSim::start(KEY, fixing_script("value = 2\n")).await;
    let url = file_url(&bare);
    let ran = run_with(&root, &openai_vars(&sim, &url, &[])).await;
    let result = parsed(&ran);
    assert_eq!(
        (result.outcome.clone(), ran.out.exit_code),
        (Outcome::GaveUp, 3),
        "{result:?}\n{}",
        ran.logs
    );
    assert!(names_missing_tool(&result, "cargo"), "{result:?}");
    assert!(sim.requests().is_empty(), "the model was called");
    assert!(remote_head(&bare, "recac/PROJ-1").is_none());

    // The work added the Cargo.toml: found when the tests are to run; the work is pushed.
    let bare = bare_repo(&root, "r2.git", &[("Makefile", "build:\n\ttrue\n")]);
    let sim = LlmSim::start(
        KEY,
        vec![
            call(
                "write_file",
                json!({"path": "Cargo.toml", "content": "[package]\nname = \"x\"\n"}),
            ),
            finish("Made it a crate"),
        ],
    )
    .await;
    let url = file_url(&bare);
    let ran = run_with(&root, &openai_vars(&sim, &url, &[])).await;
    let result = parsed(&ran);
    assert_eq!(
        (result.outcome.clone(), ran.out.exit_code),
        (Outcome::GaveUp, 3),
        "{result:?}\n{}",
        ran.logs
    );
    assert!(names_missing_tool(&result, "cargo"), "{result:?}");
    assert_eq!(result.tests_passed, None);
    let head = remote_head(&bare, "recac/PROJ-1").expect("the work is pushed");
    assert_eq!(result.commit.as_deref(), Some(head.as_str()));
}

#[tokio::test]
async fn a_test_command_whose_program_is_missing_gives_up_naming_it() {
    let root = tempfile::tempdir().unwrap();
    let bare = bare_repo(root.path(), "r.git", &[]);
    let url = file_url(&bare);

    // The command's program is checked before the work.
    let sim = LlmSim::start(KEY, fixing_script("value = 2\n")).await;
    let vars = openai_vars(
        &sim,
        &url,
        &[("RECAC_TEST_COMMAND", "recac-no-such-tool --check")],
    );
    let ran = run_with(root.path(), &vars).await;
    let result = parsed(&ran);
    assert_eq!(
        (result.outcome.clone(), ran.out.exit_code),
        (Outcome::GaveUp, 3),
        "{result:?}\n{}",
        ran.logs
    );
    assert!(
        names_missing_tool(&result, "recac-no-such-tool"),
        "{result:?}"
    );
    assert!(sim.requests().is_empty(), "the model was called");
    assert!(remote_head(&bare, "recac/PROJ-1").is_none());

    // Not the command's first word: the shell's report (exit 127, "not found") after the work.
    let sim = LlmSim::start(KEY, fixing_script("value = 2\n")).await;
    let vars = openai_vars(
        &sim,
        &url,
        &[(
            "RECAC_TEST_COMMAND",
            "test -f value.txt && recac-no-such-tool --check",
        )],
    );
    let ran = run_with(root.path(), &vars).await;
    let result = parsed(&ran);
    assert_eq!(
        (result.outcome.clone(), ran.out.exit_code),
        (Outcome::GaveUp, 3),
        "{result:?}\n{}",
        ran.logs
    );
    assert!(
        names_missing_tool(&result, "recac-no-such-tool"),
        "{result:?}"
    );
    assert_eq!(result.tests_passed, None);
    let head = remote_head(&bare, "recac/PROJ-1").expect("the work is pushed");
    assert_eq!(show(&bare, &head, "value.txt"), "value = 2");
}

#[tokio::test]
async fn tests_that_run_and_fail_stay_retryable() {
    let root = tempfile::tempdir().unwrap();
    let bare = bare_repo(root.path(), "r.git", &[]);
    let url = file_url(&bare);
    for command in [
        // Exit 127 without a program reported missing.
        "grep -q 'value = 3' value.txt || exit 127",
        // A program reported missing that is on PATH: not the image's doing.
        "echo 'sh: 1: git: not found' >&2; exit 127",
        // A missing program reported by tests that ran and failed.
        "echo 'sh: 1: recac-no-such-tool: not found' >&2; exit 1",
    ] {
        let sim = LlmSim::start(KEY, fixing_script("value = 2\n")).await;
        let vars = openai_vars(&sim, &url, &[("RECAC_TEST_COMMAND", command)]);
        let ran = run_with(root.path(), &vars).await;
        let result = parsed(&ran);
        assert_eq!(
            (result.outcome.clone(), ran.out.exit_code),
            (Outcome::TestsFailed, 1),
            "{command}: {result:?}\n{}",
            ran.logs
        );
        assert_eq!(result.tests_passed, Some(false));
    }
}

#[tokio::test]
async fn an_unwritable_workspace_gives_up_naming_the_folder() {
    let root = tempfile::tempdir().unwrap();
    let bare = bare_repo(root.path(), "r.git", &[]);
    let url = file_url(&bare);
    // A folder under a file: unwritable for every user, root included.
    let file = root.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let workspace = file.join("repo");
    let workspace = workspace.to_str().unwrap();
    let sim = LlmSim::start(KEY, fixing_script("value = 2\n")).await;
    let vars = openai_vars(&sim, &url, &[("RECAC_WORKSPACE", workspace)]);
    let ran = run_with(root.path(), &vars).await;
    let result = parsed(&ran);
    assert_eq!(
        (result.outcome.clone(), ran.out.exit_code),
        (Outcome::GaveUp, 3),
        "{result:?}\n{}",
        ran.logs
    );
    let summary = result.summary.unwrap();
    for part in ["cannot create", workspace, "RECAC_WORKSPACE", "emptyDir"] {
        assert!(summary.contains(part), "{part}: {summary}");
    }
    assert!(sim.requests().is_empty());
}

#[tokio::test]
async fn an_unwritable_temporary_folder_gives_up_naming_it() {
    // TMPDIR under a file, in a process of its own.
    let Some(root) = in_child(
        "an_unwritable_temporary_folder_gives_up_naming_it",
        |root| {
            std::fs::write(root.join("a-file"), "").unwrap();
            vec![("TMPDIR", root.join("a-file/tmp").into_os_string())]
        },
    ) else {
        return;
    };
    let bare = bare_repo(&root, "r.git", &[]);
    let url = file_url(&bare);
    let sim = LlmSim::start(KEY, fixing_script("value = 2\n")).await;
    // No RECAC_WORKSPACE: the workspace is made under TMPDIR.
    let vars = openai_vars(&sim, &url, &[("RECAC_WORKSPACE", "")]);
    let ran = run_with(&root, &vars).await;
    let result = parsed(&ran);
    assert_eq!(
        (result.outcome.clone(), ran.out.exit_code),
        (Outcome::GaveUp, 3),
        "{result:?}\n{}",
        ran.logs
    );
    let summary = result.summary.unwrap();
    let tmp = root.join("a-file/tmp");
    for part in ["cannot create", tmp.to_str().unwrap(), "TMPDIR"] {
        assert!(summary.contains(part), "{part}: {summary}");
    }
    assert!(sim.requests().is_empty());

    // A workspace of its own, but git's certificate bundle goes to TMPDIR.
    let ca = root.join("ca.pem");
    std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
    let vars = openai_vars(&sim, &url, &[("RECAC_CA_BUNDLE", ca.to_str().unwrap())]);
    let ran = run_with(&root, &vars).await;
    let result = parsed(&ran);
    assert_eq!(
        (result.outcome.clone(), ran.out.exit_code),
        (Outcome::GaveUp, 3),
        "{result:?}\n{}",
        ran.logs
    );
    let summary = result.summary.unwrap();
    for part in [
        "cannot create a temporary folder in",
        tmp.to_str().unwrap(),
        "TMPDIR",
    ] {
        assert!(summary.contains(part), "{part}: {summary}");
    }
    assert!(sim.requests().is_empty());
}

/// What the model's commands can write into the checkout's configuration (a hook, a
/// credential helper, a file-system monitor, a clean filter, a URL rewrite, a push URL) never
/// runs with the git token and never chooses where the work goes: the push still lands on
/// the repository that was cloned, and no planted program saw the token.
#[tokio::test]
async fn programs_the_model_plants_in_the_checkout_never_see_the_git_token() {
    let root = tempfile::tempdir().unwrap();
    let served = root.path().join("served");
    let bare = bare_repo(&served, "r.git", &[]);
    let _decoy = bare_repo(&served, "decoy.git", &[]);
    let token = "tokPLANTEDhooks0123456789";
    let https = https_git(root.path(), &served, token).await;
    let url = format!("{}/r.git", https.server.url());
    let leaks = root.path().join("leaks");
    std::fs::create_dir_all(&leaks).unwrap();
    let spy = root.path().join("spy.sh");
    std::fs::write(
        &spy,
        format!(
            "#!/bin/sh\nenv > {}/$1.$$ 2>/dev/null\ncat\nexit 0\n",
            leaks.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&spy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let spy = spy.display();
    let decoy = format!("{}/decoy.git", https.server.url());
    let plant = [
        format!("printf '#!/bin/sh\\n{spy} hook\\n' > .git/hooks/pre-push && chmod +x .git/hooks/pre-push"),
        format!("git config credential.helper '!{spy} helper'"),
        format!("git config core.fsmonitor '{spy} fsmonitor'"),
        format!("git config filter.spy.clean '{spy} filter' && echo '* filter=spy' > .gitattributes"),
        format!("git config remote.origin.pushurl {decoy}"),
        format!("git config url.{decoy}.insteadOf {url}"),
    ]
    .join(" && ");
    let sim = LlmSim::start(
        KEY,
        vec![
            call("run_command", json!({ "command": plant })),
            call(
                "write_file",
                json!({"path": "value.txt", "content": "value = 2\n"}),
            ),
            finish("Set value to 2"),
        ],
    )
    .await;
    let ran = run_with(
        root.path(),
        &openai_vars(
            &sim,
            &url,
            &[
                ("RECAC_GIT_TOKEN", token),
                ("RECAC_GIT_CREDENTIAL_HOSTS", &https.host),
                ("RECAC_CA_BUNDLE", &https.ca_file),
                ("RECAC_TEST_COMMAND", "none"),
            ],
        ),
    )
    .await;
    let result = parsed(&ran);
    assert_eq!(
        result.outcome,
        Outcome::Succeeded,
        "{result:?}\n{}",
        ran.logs
    );
    assert_eq!(show(&bare, "recac/PROJ-1", "value.txt").trim(), "value = 2");
    for entry in std::fs::read_dir(&leaks).unwrap() {
        let path = entry.unwrap().path();
        let seen = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            !seen.contains(token),
            "{} saw the token",
            path.file_name().unwrap_or_default().to_string_lossy()
        );
    }
}

/// The plan the scripted model writes.
const PLAN: &str = "Files to change: value.txt (the value).\nApproach: set the value to 2.\nTest plan: run make test.";

#[tokio::test]
async fn a_planning_run_reports_the_plan_and_pushes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let bare = bare_repo(root.path(), "r.git", &[]);
    let before = remote_state(&bare);
    // The model changes and even commits a file, against its instructions, and repeats a
    // secret in its plan.
    let commit =
        "git add -A && git -c user.name=m -c user.email=m@example.com commit --quiet -m sneaky";
    let sim = LlmSim::start(
        KEY,
        vec![
            call("read_file", json!({"path": "value.txt"})),
            call(
                "write_file",
                json!({"path": "value.txt", "content": "value = 2\n"}),
            ),
            call("run_command", json!({ "command": commit })),
            call(
                "finish",
                json!({"status": "done", "summary": format!("\n{PLAN}\nKey: {KEY}\n")}),
            ),
        ],
    )
    .await;
    let url = file_url(&bare);
    // A test program the image lacks: not checked, nothing is tested.
    let vars = openai_vars(
        &sim,
        &url,
        &[
            ("RECAC_MODE", "plan"),
            ("RECAC_TEST_COMMAND", "recac-no-such-tool --check"),
        ],
    );
    let ran = run_with(root.path(), &vars).await;
    let result = parsed(&ran);
    assert_eq!(
        (result.outcome.clone(), ran.out.exit_code),
        (Outcome::Planned, 0),
        "{result:?}\n{}",
        ran.logs
    );
    assert_eq!(
        result.plan.as_deref(),
        Some(format!("{PLAN}\nKey: [REDACTED]").as_str())
    );
    assert_eq!(
        result.summary.as_deref(),
        Some("wrote a plan; nothing was committed or pushed")
    );
    assert_eq!(result.branch.as_deref(), Some("recac/PROJ-1"));
    assert_eq!(
        (
            &result.commit,
            &result.pull_request_url,
            result.tests_passed
        ),
        (&None, &None, None)
    );
    assert_eq!(result.token_usage.unwrap().input_tokens, 400);
    assert!(!ran.logs.contains(KEY) && !ran.result_file.contains(KEY));
    // Nothing reached the remote: no branch, no commit.
    assert_eq!(remote_state(&bare), before);
    assert!(remote_head(&bare, "recac/PROJ-1").is_none());
    // The model was asked for a plan, with the task.
    let first: serde_json::Value = serde_json::from_str(&sim.requests()[0]).unwrap();
    let system = first["messages"][0]["content"].as_str().unwrap_or_default();
    let prompt = first["messages"][1]["content"].as_str().unwrap_or_default();
    assert_eq!(system, recac_agent::plan::SYSTEM_PROMPT);
    assert!(
        prompt.starts_with(recac_agent::plan::PLANNING_MARKER)
            && prompt.contains("Set the value in value.txt to 2."),
        "{prompt}"
    );
    // What the model changed stays in the thrown-away workspace.
    let workspace = ran.out.workspace.clone().unwrap();
    assert_eq!(
        std::fs::read_to_string(workspace.join("value.txt")).unwrap(),
        "value = 2\n"
    );
    assert_eq!(git(&workspace, &["log", "-1", "--format=%s"]), "sneaky");
}

#[tokio::test]
async fn a_planning_run_sees_the_existing_branch_and_pushes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let bare = bare_repo(root.path(), "r.git", &[]);
    let earlier = push_branch(root.path(), &bare, "feature/x", "progress.txt", "halfway\n");
    let before = remote_state(&bare);
    let sim = LlmSim::start(
        KEY,
        vec![
            call("read_file", json!({"path": "progress.txt"})),
            call(
                "edit_file",
                json!({"path": "progress.txt", "old_text": "halfway", "new_text": "done"}),
            ),
            finish("Files to change: value.txt, progress.txt (continuing the earlier work)."),
        ],
    )
    .await;
    let url = file_url(&bare);
    let ran = run_with(
        root.path(),
        &openai_vars(
            &sim,
            &url,
            &[("RECAC_BRANCH", "feature/x"), ("RECAC_MODE", "plan")],
        ),
    )
    .await;
    let result = parsed(&ran);
    assert_eq!(
        (result.outcome.clone(), ran.out.exit_code),
        (Outcome::Planned, 0),
        "{result:?}\n{}",
        ran.logs
    );
    assert_eq!(result.branch.as_deref(), Some("feature/x"));
    assert!(result.plan.unwrap().contains("continuing the earlier work"));
    // The model read the earlier run's file: the branch was checked out.
    assert!(sim.requests()[1].contains("halfway"));
    let workspace = ran.out.workspace.clone().unwrap();
    assert_eq!(
        git(&workspace, &["rev-parse", "--abbrev-ref", "HEAD"]),
        "feature/x"
    );
    assert_eq!(git(&workspace, &["rev-parse", "HEAD"]), earlier);
    // The remote is as it was.
    assert_eq!(remote_state(&bare), before);
    assert_eq!(
        remote_head(&bare, "feature/x").as_deref(),
        Some(earlier.as_str())
    );
    assert_eq!(show(&bare, "feature/x", "progress.txt"), "halfway");
}

#[tokio::test]
async fn a_long_plan_is_cut_to_fit_the_result() {
    let root = tempfile::tempdir().unwrap();
    let bare = bare_repo(root.path(), "r.git", &[]);
    let long = "Step: change \"value.txt\" line by line.\n".repeat(200);
    let sim = LlmSim::start(
        KEY,
        vec![call(
            "finish",
            json!({"status": "done", "summary": long.clone()}),
        )],
    )
    .await;
    let url = file_url(&bare);
    let ran = run_with(
        root.path(),
        &openai_vars(&sim, &url, &[("RECAC_MODE", "plan")]),
    )
    .await;
    let result = parsed(&ran);
    assert_eq!(result.outcome, Outcome::Planned, "{}", ran.logs);
    let plan = result.plan.unwrap();
    assert!(plan.len() <= recac_api::agent_contract::MAX_PLAN_BYTES);
    let kept = plan
        .strip_suffix("… (plan cut at 3000 bytes)")
        .expect("the cut is noted");
    assert!(
        long.starts_with(kept) && kept.len() > 2900,
        "{}",
        kept.len()
    );
    assert!(result.summary.is_some() && result.branch.is_some());
}

#[tokio::test]
async fn a_planning_run_without_its_plan_pushes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let bare = bare_repo(root.path(), "r.git", &[]);
    let url = file_url(&bare);
    let before = remote_state(&bare);
    let plan_vars = |sim| openai_vars(sim, &url, &[("RECAC_MODE", "plan")]);

    // An empty plan: retryable.
    let sim = LlmSim::start(
        KEY,
        vec![
            call(
                "write_file",
                json!({"path": "value.txt", "content": "value = 2\n"}),
            ),
            finish("  \n "),
        ],
    )
    .await;
    let ran = run_with(root.path(), &plan_vars(&sim)).await;
    let result = parsed(&ran);
    assert_eq!(
        (result.outcome.clone(), ran.out.exit_code),
        (Outcome::Failed, 1),
        "{result:?}\n{}",
        ran.logs
    );
    assert_eq!(result.summary.as_deref(), Some("the engine wrote no plan"));
    assert_eq!(result.plan, None);

    // The model declares the task impossible: gave up.
    let sim = LlmSim::start(
        KEY,
        vec![call(
            "finish",
            json!({"status": "cannot_do", "summary": "needs a database"}),
        )],
    )
    .await;
    let ran = run_with(root.path(), &plan_vars(&sim)).await;
    let result = parsed(&ran);
    assert_eq!((result.outcome, ran.out.exit_code), (Outcome::GaveUp, 3));
    assert_eq!(result.summary.as_deref(), Some("needs a database"));

    // Told to stop while planning (after changing a file): retryable, nothing pushed.
    let marker = root.path().join("planning");
    let sim = LlmSim::start(
        KEY,
        vec![
            call(
                "write_file",
                json!({"path": "value.txt", "content": "value = 2\n"}),
            ),
            call(
                "run_command",
                json!({"command": format!("touch {}; sleep 120", marker.display())}),
            ),
            finish("never reached"),
        ],
    )
    .await;
    let vars = plan_vars(&sim);
    let stop = tokio_util::sync::CancellationToken::new();
    let stopper = stop_when_exists(marker, stop.clone());
    let (ran, stopped_at) = tokio::join!(run_stoppable(root.path(), &vars, stop), stopper);
    assert!(stopped_at.elapsed() < std::time::Duration::from_secs(10));
    let result = parsed(&ran);
    assert_eq!(
        (result.outcome.clone(), ran.out.exit_code),
        (Outcome::Failed, 1),
        "{result:?}\n{}",
        ran.logs
    );
    let summary = result.summary.unwrap_or_default();
    assert!(
        summary.starts_with("stopped before the plan was written") && summary.contains("SIGTERM"),
        "{summary}"
    );
    assert_eq!((result.commit, result.plan), (None, None));

    assert_eq!(remote_state(&bare), before);
}

#[tokio::test]
async fn an_external_engine_plans_from_the_planning_prompt() {
    let root = tempfile::tempdir().unwrap();
    let bare = bare_repo(root.path(), "r.git", &[]);
    let before = remote_state(&bare);
    let url = file_url(&bare);
    // The CLI sees the planning prompt, changes a file anyway, logs, then prints its plan.
    let script = format!(
        "grep -qF '{}' \"$RECAC_PROMPT_FILE\" || exit 1; echo 'value = 2' > value.txt; echo 'reading the repository...'; printf '%s\\n' 'Files to change: value.txt' 'Approach: set 2' 'Test plan: make test'",
        recac_agent::plan::PLANNING_MARKER
    );
    let args = json!(["-c", script]).to_string();
    let ran = run_with(
        root.path(),
        &[
            ("RECAC_REPO_URL", &url),
            ("RECAC_PROMPT", "Set the value to 2."),
            ("RECAC_TICKET", "EXT-9"),
            ("RECAC_AGENT_COMMAND", "sh"),
            ("RECAC_AGENT_ARGS", &args),
            ("RECAC_MODE", "plan"),
        ],
    )
    .await;
    let result = parsed(&ran);
    assert_eq!(
        (result.outcome.clone(), ran.out.exit_code),
        (Outcome::Planned, 0),
        "{result:?}\n{}",
        ran.logs
    );
    assert_eq!(
        result.plan.as_deref(),
        Some(
            "reading the repository...\nFiles to change: value.txt\nApproach: set 2\nTest plan: make test"
        )
    );
    assert_eq!(result.branch.as_deref(), Some("recac/EXT-9"));
    assert_eq!(remote_state(&bare), before);
}

#[test]
fn an_unknown_mode_is_an_error_naming_the_key() {
    let vars = [
        ("RECAC_REPO_URL", "file:///r.git"),
        ("RECAC_PROMPT", "x"),
        ("RECAC_AGENT_COMMAND", "true"),
        ("RECAC_MODE", "bogus"),
    ];
    let err = recac_agent::Settings::from_lookup(|k| {
        vars.iter()
            .find(|(name, _)| *name == k)
            .map(|(_, v)| v.to_string())
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("RECAC_MODE") && err.contains("bogus") && err.contains("`plan`"),
        "{err}"
    );
}

/// `RECAC_DEADLINE` `seconds` from now (negative: in the past).
fn deadline_in(seconds: i64) -> String {
    (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(seconds)).to_string()
}

#[tokio::test]
async fn the_deadline_pushes_the_work_in_progress_and_a_retry_continues_it() {
    use recac_api::agent_contract::CutShort;
    let root = tempfile::tempdir().unwrap();
    let bare = bare_repo(root.path(), "r.git", &[]);
    let url = file_url(&bare);
    // Writes a file, then keeps running a slow command: still working at the deadline.
    let sim = LlmSim::start(
        KEY,
        vec![call(
            "write_file",
            json!({"path": "progress.txt", "content": "halfway\n"}),
        )],
    )
    .await;
    sim.set_when_done(call("run_command", json!({"command": "sleep 30"})));
    let deadline = deadline_in(4);
    let vars = openai_vars(
        &sim,
        &url,
        &[
            ("RECAC_DEADLINE", &deadline),
            ("RECAC_DEADLINE_MARGIN_SECONDS", "1"),
        ],
    );
    let ran = run_with(root.path(), &vars).await;
    let result = parsed(&ran);
    assert_eq!(
        (result.outcome.clone(), ran.out.exit_code),
        (Outcome::Partial, 1),
        "{result:?}\n{}",
        ran.logs
    );
    assert!(ran.seconds < 10.0, "{}", ran.seconds);
    let partial = result.partial.clone().expect("partial");
    assert_eq!(partial.cause, CutShort::Deadline);
    let head = remote_head(&bare, "recac/PROJ-1").expect("the work in progress is pushed");
    assert_eq!(result.commit.as_deref(), Some(head.as_str()));
    assert_eq!(result.branch.as_deref(), Some("recac/PROJ-1"));
    assert_eq!(show(&bare, &head, "progress.txt"), "halfway");
    assert!(git(&bare, &["log", "-1", "--format=%s", &head]).starts_with("WIP: PROJ-1"));
    let done = partial.done.unwrap();
    assert_eq!(
        done,
        format!("changed 1 file: progress.txt (commit {})", &head[..7])
    );
    let left = partial.left.unwrap();
    assert!(
        left.starts_with("the rest of the task: the work stopped")
            && left.contains("s before the deadline"),
        "{left}"
    );
    assert_eq!(result.tests_passed, None);
    // What the model spent before the deadline is reported.
    let spent = result.token_usage.clone().unwrap();
    assert!(spent.input_tokens >= 200, "{spent:?}");
    let usage = result.usage.clone().unwrap();
    assert_eq!(
        (usage[0].model.as_str(), usage[0].input_tokens),
        ("sim-model", spent.input_tokens)
    );

    // Attempt 2 continues the branch from that commit, told so, and finishes.
    let sim = LlmSim::start(
        KEY,
        vec![
            call("read_file", json!({"path": "progress.txt"})),
            Step::Calls(vec![
                (
                    "write_file",
                    json!({"path": "value.txt", "content": "value = 2\n"}),
                ),
                (
                    "write_file",
                    json!({"path": "progress.txt", "content": "done\n"}),
                ),
            ]),
            finish("Set value to 2"),
        ],
    )
    .await;
    let vars = openai_vars(&sim, &url, &[("RECAC_ATTEMPT", "2")]);
    let ran = run_with(root.path(), &vars).await;
    let result = parsed(&ran);
    assert_eq!(
        (result.outcome.clone(), ran.out.exit_code),
        (Outcome::Succeeded, 0),
        "{result:?}\n{}",
        ran.logs
    );
    let second = remote_head(&bare, "recac/PROJ-1").unwrap();
    assert_eq!(git(&bare, &["rev-parse", &format!("{second}^")]), head);
    assert_eq!(show(&bare, &second, "progress.txt"), "done");
    let requests = sim.requests();
    assert!(
        requests[0].contains("an earlier attempt") && requests[0].contains("do not redo it"),
        "{}",
        requests[0]
    );
    assert!(requests[1].contains("halfway"));
    assert_eq!(result.partial, None);
}

#[tokio::test]
async fn a_deadline_in_the_past_ends_the_work_at_once() {
    use recac_api::agent_contract::CutShort;
    let root = tempfile::tempdir().unwrap();
    let bare = bare_repo(root.path(), "r.git", &[]);
    let url = file_url(&bare);
    let sim = LlmSim::start(KEY, fixing_script("value = 2\n")).await;
    let deadline = deadline_in(-30);
    let vars = openai_vars(&sim, &url, &[("RECAC_DEADLINE", &deadline)]);
    let ran = run_with(root.path(), &vars).await;
    let result = parsed(&ran);
    assert_eq!(
        (result.outcome.clone(), ran.out.exit_code),
        (Outcome::Partial, 1),
        "{result:?}\n{}",
        ran.logs
    );
    let partial = result.partial.unwrap();
    assert_eq!(partial.cause, CutShort::Deadline);
    assert_eq!(partial.done.as_deref(), Some("nothing was committed"));
    assert!(sim.requests().is_empty());
    assert!(remote_head(&bare, "recac/PROJ-1").is_none());
    assert_eq!(result.commit, None);
}

#[tokio::test]
async fn the_deadline_during_the_tests_pushes_the_work_untested() {
    use recac_api::agent_contract::CutShort;
    let root = tempfile::tempdir().unwrap();
    let bare = bare_repo(root.path(), "r.git", &[]);
    let url = file_url(&bare);
    let sim = LlmSim::start(
        KEY,
        vec![
            call(
                "write_file",
                json!({"path": "value.txt", "content": "value = 2\n"}),
            ),
            finish("Set value to 2"),
        ],
    )
    .await;
    let deadline = deadline_in(4);
    let vars = openai_vars(
        &sim,
        &url,
        &[
            ("RECAC_TEST_COMMAND", "sleep 30"),
            ("RECAC_DEADLINE", &deadline),
            ("RECAC_DEADLINE_MARGIN_SECONDS", "1"),
        ],
    );
    let ran = run_with(root.path(), &vars).await;
    let result = parsed(&ran);
    assert_eq!(
        (result.outcome.clone(), ran.out.exit_code),
        (Outcome::Partial, 1),
        "{result:?}\n{}",
        ran.logs
    );
    assert!(ran.seconds < 10.0, "{}", ran.seconds);
    let partial = result.partial.unwrap();
    assert_eq!(partial.cause, CutShort::Deadline);
    assert!(partial.left.unwrap().starts_with("the tests"));
    let head = remote_head(&bare, "recac/PROJ-1").expect("the work is pushed");
    assert_eq!(show(&bare, &head, "value.txt"), "value = 2");
    assert_eq!(result.tests_passed, None);
    assert_eq!(result.pull_request_url, None);
}

#[tokio::test]
async fn a_spent_token_budget_pushes_the_work_and_gives_up() {
    use recac_api::agent_contract::{CutShort, ModelUsage};
    let root = tempfile::tempdir().unwrap();
    let bare = bare_repo(root.path(), "r.git", &[]);
    let url = file_url(&bare);
    // Each turn is 100 input and 10 output tokens: the second reaches 150.
    let sim = LlmSim::start(
        KEY,
        vec![
            call(
                "write_file",
                json!({"path": "notes.md", "content": "wip\n"}),
            ),
            call(
                "write_file",
                json!({"path": "more.md", "content": "more\n"}),
            ),
        ],
    )
    .await;
    let vars = openai_vars(&sim, &url, &[("RECAC_BUDGET_TOKENS", "150")]);
    let ran = run_with(root.path(), &vars).await;
    let result = parsed(&ran);
    assert_eq!(
        (result.outcome.clone(), ran.out.exit_code),
        (Outcome::Partial, 3),
        "{result:?}\n{}",
        ran.logs
    );
    let requests = sim.requests();
    assert_eq!(requests.len(), 2);
    // The second reply was capped at what was left (150 - 110).
    assert!(requests[1].contains("\"max_tokens\":40"), "{}", requests[1]);
    let partial = result.partial.clone().unwrap();
    assert_eq!(partial.cause, CutShort::Budget);
    assert!(
        partial
            .left
            .as_deref()
            .unwrap()
            .contains("token budget (150)"),
        "{partial:?}"
    );
    let head = remote_head(&bare, "recac/PROJ-1").expect("the work so far is pushed");
    // The turn that reached the budget still had its tool call run.
    assert_eq!(show(&bare, &head, "notes.md"), "wip");
    assert_eq!(show(&bare, &head, "more.md"), "more");
    assert_eq!(
        partial.done.as_deref(),
        Some(format!("changed 2 files: more.md, notes.md (commit {})", &head[..7]).as_str())
    );
    assert_eq!(
        result.usage,
        Some(vec![ModelUsage {
            provider: Some("openai".into()),
            model: "sim-model".into(),
            input_tokens: 200,
            output_tokens: 20,
            cost: None,
            currency: None,
        }])
    );
    let spent = result.token_usage.unwrap();
    assert_eq!((spent.input_tokens, spent.output_tokens), (200, 20));
}

#[tokio::test]
async fn a_spent_cost_budget_stops_the_work_likewise() {
    use recac_api::agent_contract::CutShort;
    let root = tempfile::tempdir().unwrap();
    let bare = bare_repo(root.path(), "r.git", &[]);
    let url = file_url(&bare);
    let sim = LlmSim::start(
        KEY,
        vec![call(
            "write_file",
            json!({"path": "notes.md", "content": "wip\n"}),
        )],
    )
    .await;
    // A turn costs 100 * 10 + 10 * 30 per million: 0.0013 EUR; the second reaches 0.002.
    let vars = openai_vars(
        &sim,
        &url,
        &[
            ("RECAC_BUDGET_COST", "0.002"),
            ("RECAC_BUDGET_CURRENCY", "EUR"),
            ("RECAC_PRICE_INPUT_PER_MILLION", "10"),
            ("RECAC_PRICE_OUTPUT_PER_MILLION", "30"),
        ],
    );
    let ran = run_with(root.path(), &vars).await;
    let result = parsed(&ran);
    assert_eq!(
        (result.outcome.clone(), ran.out.exit_code),
        (Outcome::Partial, 3),
        "{result:?}\n{}",
        ran.logs
    );
    let requests = sim.requests();
    assert_eq!(requests.len(), 2);
    // 0.0007 EUR left buys 23 output tokens.
    assert!(requests[1].contains("\"max_tokens\":23"), "{}", requests[1]);
    let partial = result.partial.unwrap();
    assert_eq!(partial.cause, CutShort::Budget);
    assert!(
        partial
            .left
            .unwrap()
            .contains("the cost budget (0.002 EUR) is spent: 0.0026 EUR")
    );
    let usage = result.usage.unwrap();
    assert_eq!(
        (usage[0].cost.as_deref(), usage[0].currency.as_deref()),
        (Some("0.0026"), Some("EUR"))
    );
    let head = remote_head(&bare, "recac/PROJ-1").unwrap();
    assert_eq!(show(&bare, &head, "notes.md"), "wip");

    // Without a budget, the prices still price the work.
    let sim = LlmSim::start(KEY, fixing_script("value = 2\n")).await;
    let vars = openai_vars(
        &sim,
        &url,
        &[
            ("RECAC_BRANCH", "priced"),
            ("RECAC_BUDGET_CURRENCY", "EUR"),
            ("RECAC_PRICE_INPUT_PER_MILLION", "10"),
            ("RECAC_PRICE_OUTPUT_PER_MILLION", "30"),
        ],
    );
    let ran = run_with(root.path(), &vars).await;
    let result = parsed(&ran);
    assert_eq!(result.outcome, Outcome::Succeeded, "{}", ran.logs);
    let usage = result.usage.unwrap();
    assert_eq!(usage[0].cost.as_deref(), Some("0.0065"));
}

#[tokio::test]
async fn an_external_engine_s_reported_usage_is_read() {
    let root = tempfile::tempdir().unwrap();
    let bare = bare_repo(root.path(), "r.git", &[]);
    let url = file_url(&bare);
    let claude_json = r#"{"type":"result","subtype":"success","is_error":false,"num_turns":3,"result":"Set the value to 2","session_id":"abc","total_cost_usd":0.0421,"usage":{"input_tokens":120,"cache_creation_input_tokens":1000,"cache_read_input_tokens":5000,"output_tokens":345}}"#;
    let script = format!("echo 'value = 2' > value.txt && printf '%s\\n' '{claude_json}'");
    let args = json!(["-c", script]).to_string();
    let ran = run_with(
        root.path(),
        &[
            ("RECAC_REPO_URL", &url),
            ("RECAC_PROMPT", "Set the value to 2"),
            ("RECAC_TICKET", "EXT-1"),
            ("RECAC_MODEL", "claude-sonnet-4-5"),
            ("RECAC_AGENT_COMMAND", "sh"),
            ("RECAC_AGENT_ARGS", &args),
        ],
    )
    .await;
    let result = parsed(&ran);
    assert_eq!(
        result.outcome,
        Outcome::Succeeded,
        "{result:?}\n{}",
        ran.logs
    );
    assert_eq!(result.summary.as_deref(), Some("Set the value to 2"));
    let usage = result.usage.unwrap();
    assert_eq!(usage.len(), 1);
    assert_eq!(
        (
            usage[0].model.as_str(),
            usage[0].input_tokens,
            usage[0].output_tokens
        ),
        ("claude-sonnet-4-5", 6120, 345)
    );
    assert_eq!(
        (usage[0].cost.as_deref(), usage[0].currency.as_deref()),
        (Some("0.0421"), Some("USD"))
    );
    let spent = result.token_usage.unwrap();
    assert_eq!((spent.input_tokens, spent.output_tokens), (6120, 345));

    // A CLI that prints no usage reports none (not zero).
    let ran = run_with(
        root.path(),
        &[
            ("RECAC_REPO_URL", &url),
            ("RECAC_PROMPT", "Set the value to 2"),
            ("RECAC_BRANCH", "quiet"),
            ("RECAC_AGENT_COMMAND", "sh"),
            (
                "RECAC_AGENT_ARGS",
                r#"["-c", "echo 'value = 2' > value.txt && echo done"]"#,
            ),
        ],
    )
    .await;
    let result = parsed(&ran);
    assert_eq!(result.outcome, Outcome::Succeeded, "{}", ran.logs);
    assert_eq!((result.usage, result.token_usage), (None, None));
    assert!(!ran.result_file.contains("usage"), "{}", ran.result_file);
}
