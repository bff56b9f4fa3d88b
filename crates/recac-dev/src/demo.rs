//! The demo: a small repository and a few tickets of different kinds.
//!
//! The repository holds greetings, one per file under `greetings/`, and a test
//! (`make test`) that every greeting ends with `!`. Each ticket asks for one greeting
//! with two lines the demo model reads: `File:` (where) and `Line:` (what).

use recac_jira_sim::IssueSeed;

/// The simulator's project for the demo tickets.
pub const PROJECT: &str = "DEMO";
/// The label that makes a ticket ready for the agent (the source's `label`).
pub const TRIGGER_LABEL: &str = "recac";
/// The demo repository's name on the git server.
pub const REPOSITORY: &str = "demo.git";
/// Its default branch.
pub const BASE_BRANCH: &str = "main";
/// The description line that makes the demo model get its first attempt wrong.
pub const FIRST_ATTEMPT_FAILS: &str = "Demo: the first attempt forgets the punctuation";

const TEST_SCRIPT: &str = r#"#!/bin/sh
# Every greeting ends with an exclamation mark.
status=0
for file in greetings/*.txt; do
  case "$(tail -n 1 "$file")" in
    *!) echo "ok   $file" ;;
    *)  echo "FAIL $file: a greeting must end with '!'"; status=1 ;;
  esac
done
exit $status
"#;

/// The files of the demo repository's first commit.
pub fn repository_files() -> Vec<(&'static str, &'static str)> {
    vec![
        (
            "README.md",
            "# demo\n\nGreetings, one per file under `greetings/`. `make test` checks them.\n",
        ),
        ("Makefile", "test:\n\tsh ./test.sh\n"),
        ("test.sh", TEST_SCRIPT),
        ("greetings/world.txt", "Hello, world!\n"),
    ]
}

/// How a demo ticket is expected to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    /// Succeeds on its first attempt.
    Succeeds,
    /// Its tests fail on the first attempt; the retry succeeds.
    SucceedsOnRetry,
    /// Names no repository: the source comments and labels it, nothing runs.
    NeedsRepository,
}

/// The demo tickets, in creation order, for a repository at `repository_url`.
pub fn tickets(repository_url: &str) -> Vec<(IssueSeed, Expected)> {
    let ticket = |summary: &str, description: String| IssueSeed {
        project: PROJECT.into(),
        summary: summary.into(),
        description: Some(description),
        labels: vec![TRIGGER_LABEL.into()],
        ..Default::default()
    };
    vec![
        (
            ticket(
                "Greet Ada",
                format!(
                    "Add a greeting for Ada to the greetings folder.\n\nRepo: {repository_url}\nFile: greetings/ada.txt\nLine: Hello, Ada!"
                ),
            ),
            Expected::Succeeds,
        ),
        (
            ticket(
                "Say goodbye",
                format!(
                    "Add a farewell to the greetings folder.\n\nRepo: {repository_url}\nFile: greetings/goodbye.txt\nLine: Goodbye, and thanks for all the fish!\n{FIRST_ATTEMPT_FAILS}"
                ),
            ),
            Expected::SucceedsOnRetry,
        ),
        (
            ticket(
                "Greet Grace",
                "Add a greeting for Grace.\n\nFile: greetings/grace.txt\nLine: Hello, Grace!\n(This ticket names no repository: the operator asks for one.)"
                    .to_string(),
            ),
            Expected::NeedsRepository,
        ),
    ]
}

/// Who files the demo tickets.
pub const REPORTER_EMAIL: &str = "dev@example.com";

/// The simulator's users (the bot and the reporter) and the demo project.
pub fn sim_seed() -> recac_jira_sim::Seed {
    let reporter = recac_jira_sim::UserDef {
        account_id: "5b10a2844c20165700ede21g".into(),
        name: "dev".into(),
        display_name: "Dev User".into(),
        email: REPORTER_EMAIL.into(),
        token: None,
        pat: None,
        permissions: None,
    };
    recac_jira_sim::Seed {
        users: vec![recac_jira_sim::bot_user(), reporter],
        projects: vec![recac_jira_sim::ProjectDef {
            key: PROJECT.into(),
            name: Some("recac demo".into()),
        }],
        ..recac_jira_sim::Seed::default()
    }
}
