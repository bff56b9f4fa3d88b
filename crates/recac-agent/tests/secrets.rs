//! Secrets mounted as files (`RECAC_SECRETS_DIR`): they configure the agent, never reach its
//! output, the model or the result in any shape, and stay out of the commands the model runs
//! unless allowed.

mod support;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use recac_api::agent_contract::{AgentResult, Outcome};
use serde_json::json;
use support::llm_sim::{LlmSim, call};
use support::*;

const KEY: &str = "sk-sim-file-key-5tW8qZ2nB7xK";
const GIT_TOKEN: &str = "gitTOKENfromFILE-3mV9cR1d";
const DB_PASSWORD: &str = "Db-pa55/w0rd+Q=z9xLk";
const SECOND_TOKEN: &str = "second-TOKEN-7hK2pQ9vX4mR";
const ODD_KEY: &str = "odd-key-value-W3nB8cZ1yT";
const ALLOWED: &str = "allowed-value-J5tY2uI8oP";
const PLANTED: [&str; 6] = [KEY, GIT_TOKEN, DB_PASSWORD, SECOND_TOKEN, ODD_KEY, ALLOWED];

/// Lays out two Secrets as the kubelet mounts them.
fn secrets_dir(root: &std::path::Path) -> std::path::PathBuf {
    let dir = root.join("secrets");
    mount_secret(
        &dir,
        "agent-credentials",
        &[
            ("OPENAI_API_KEY", &format!("{KEY}\n")),
            ("RECAC_GIT_TOKEN", GIT_TOKEN),
        ],
    );
    mount_secret(
        &dir,
        "app-db",
        &[
            ("DB_PASSWORD", DB_PASSWORD),
            ("SECOND_TOKEN", SECOND_TOKEN),
            ("tls.key", ODD_KEY),
            ("PUBLIC_READ_TOKEN", ALLOWED),
        ],
    );
    dir
}

/// A shell script printing each secret file in many shapes, then which credentials its
/// environment holds.
fn printing_script(dir: &std::path::Path) -> String {
    let d = dir.display();
    format!(
        r#"for f in {d}/agent-credentials/OPENAI_API_KEY {d}/agent-credentials/RECAC_GIT_TOKEN {d}/app-db/DB_PASSWORD {d}/app-db/SECOND_TOKEN {d}/app-db/tls.key {d}/app-db/PUBLIC_READ_TOKEN; do
  v=$(cat "$f")
  echo "plain: $v"
  printf '%s' "$v" | base64
  echo "$v" | base64
  printf 'x-access-token:%s' "$v" | base64
  printf 'A=1\nKEY=%s\nB=2\n' "$v" | base64
  echo "url: postgres://app:$v@db.internal:5432/app"
  echo "encoded: https://app:$(printf '%s' "$v" | sed 's#/#%2F#g; s/+/%2B/g; s/=/%3D/g')@db.internal/x"
  printf '%s' "$v" | od -An -tx1 | tr -d ' \n'; echo
  echo "split: $(printf '%s' "$v" | cut -c1-6)"
  printf '%s\n' "$v" | cut -c7-
  printf '%s' "$v" | fold -w 5; echo
  printf 'crlf: %s\r\n%s\r\n' "$(printf '%s' "$v" | cut -c1-9)" "$(printf '%s' "$v" | cut -c10-)"
done
echo "env: DB_PASSWORD=[${{DB_PASSWORD:+present}}] SECOND_TOKEN=[${{SECOND_TOKEN:+present}}] OPENAI_API_KEY=[${{OPENAI_API_KEY:+present}}] RECAC_GIT_TOKEN=[${{RECAC_GIT_TOKEN:+present}}] PUBLIC_READ_TOKEN=[${{PUBLIC_READ_TOKEN:+present}}]"
"#
    )
}

/// `text` with whitespace and escaped line breaks removed: a split value would show joined.
fn joined(text: &str) -> String {
    text.replace("\\n", "")
        .replace("\\r", "")
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect()
}

/// The log's messages without the timestamp and level prefix of each line, so that a value
/// split over several log lines would show when joined.
fn messages(logs: &str) -> String {
    logs.lines()
        .map(|l| l.split_once(": ").map_or(l, |(_, m)| m))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every shape the script prints a value in.
fn shapes(v: &str) -> Vec<String> {
    vec![
        v.to_string(),
        STANDARD.encode(v),
        STANDARD.encode(format!("{v}\n")),
        STANDARD.encode(format!("x-access-token:{v}")),
        v.bytes().map(|b| format!("{b:02x}")).collect(),
        v.replace('/', "%2F")
            .replace('+', "%2B")
            .replace('=', "%3D"),
    ]
}

fn assert_nothing_leaked(place: &str, text: &str) {
    let flat = joined(text);
    for value in PLANTED {
        for shape in shapes(value) {
            assert!(
                !text.contains(&shape) && !flat.contains(&shape),
                "{value} leaked into {place} as {shape}:\n{text}"
            );
        }
        // Base64 of a longer text holding the value.
        let embedded = STANDARD.encode(format!("A=1\nKEY={value}\nB=2\n"));
        assert!(
            !flat.contains(&embedded[8..24]),
            "{value} leaked into {place}"
        );
    }
}

#[tokio::test]
async fn secrets_from_files_configure_the_agent_and_never_leak() {
    let root = tempfile::tempdir().unwrap();
    let dir = secrets_dir(root.path());
    let served = root.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    let bare = bare_repo(&served, "r.git", &[]);
    // Only the token from the Secret file opens this remote.
    let https = https_git(root.path(), &served, GIT_TOKEN).await;
    let server = &https.server;
    let url = format!("{}/r.git", server.url());
    let script = printing_script(&dir);
    let summary = format!("Done. The database password is {DB_PASSWORD} and {SECOND_TOKEN}.");
    // The sim accepts only the key from the Secret file: the run works only if it was read.
    let sim = LlmSim::start(
        KEY,
        vec![
            call("run_command", json!({ "command": script })),
            call(
                "write_file",
                json!({"path": "value.txt", "content": "value = 2\n"}),
            ),
            call(
                "finish",
                json!({"status": "done", "summary": summary.clone()}),
            ),
        ],
    )
    .await;
    let base = sim.openai_url();
    let dir_text = dir.display().to_string();
    let test_command = format!("{script}\ngrep -q 'value = 2' value.txt");
    let ran = run_with(
        root.path(),
        &[
            ("RECAC_REPO_URL", &url),
            ("RECAC_PROMPT", "Set the value in value.txt to 2."),
            ("RECAC_TICKET", "SEC-1"),
            ("RECAC_PROVIDER", "openai"),
            ("RECAC_MODEL", "sim-model"),
            ("OPENAI_BASE_URL", &base),
            ("RECAC_SECRETS_DIR", &dir_text),
            ("RECAC_SECRET_ENV_ALLOW", "PUBLIC_READ_TOKEN"),
            ("RECAC_TEST_COMMAND", &test_command),
            ("RECAC_COMMAND_OUTPUT_LIMIT", "200000"),
            ("RECAC_PULL_REQUEST", "false"),
            ("RECAC_GIT_CREDENTIAL_HOSTS", &https.host),
            ("RECAC_CA_BUNDLE", &https.ca_file),
        ],
    )
    .await;
    let result: AgentResult = serde_json::from_str(&ran.result_file).expect("result JSON");
    assert_eq!(
        result.outcome,
        Outcome::Succeeded,
        "{result:?}\n{}",
        ran.logs
    );
    assert_eq!(result.tests_passed, Some(true));

    // git authenticated with the token from the Secret file, through its credential helper.
    let head = remote_head(&bare, "recac/SEC-1").expect("pushed over HTTPS");
    assert_eq!(show(&bare, &head, "value.txt"), "value = 2");
    let log = server.log();
    assert!(
        log.iter()
            .any(|l| l.starts_with("POST /r.git/git-receive-pack") && l.ends_with(" 200")),
        "{log:?}"
    );

    // The script ran and its output came back, masked.
    let requests = sim.requests().join("\n");
    assert!(requests.contains("plain: [REDACTED]"), "{requests}");
    assert!(ran.logs.contains("plain: [REDACTED]"), "{}", ran.logs);
    // Only the allowed Secret key reached the commands' environment.
    let env_line = "env: DB_PASSWORD=[] SECOND_TOKEN=[] OPENAI_API_KEY=[] RECAC_GIT_TOKEN=[] PUBLIC_READ_TOKEN=[present]";
    assert!(requests.contains(env_line), "tool command env:\n{requests}");
    assert!(
        ran.logs.contains(env_line),
        "test command env:\n{}",
        ran.logs
    );

    let commit_message = git(&bare, &["log", "-1", "--format=%B", &head]);
    assert!(result.summary.as_deref().unwrap().contains("[REDACTED]"));
    for (place, text) in [
        ("logs", ran.logs.clone()),
        ("log messages", messages(&ran.logs)),
        ("result", ran.result_file.clone()),
        ("llm requests", requests.clone()),
        ("commit message", commit_message),
        ("http requests", log.join("\n")),
    ] {
        assert_nothing_leaked(place, &text);
    }

    // The external engine gets its LLM key from the Secret file, and nothing else but the
    // allowed key; what it prints is masked too.
    let bare2 = bare_repo(root.path(), "ext.git", &[]);
    let url2 = file_url(&bare2);
    let agent = format!(
        "{script}\necho 'value = 2' > value.txt\necho \"finished with {SECOND_TOKEN} and $(cat {dir_text}/app-db/DB_PASSWORD)\""
    );
    let args = json!(["-c", agent]).to_string();
    let ran = run_with(
        root.path(),
        &[
            ("RECAC_REPO_URL", &url2),
            ("RECAC_PROMPT", "x"),
            ("RECAC_TICKET", "SEC-2"),
            ("RECAC_AGENT_COMMAND", "sh"),
            ("RECAC_AGENT_ARGS", &args),
            ("RECAC_SECRETS_DIR", &dir_text),
            ("RECAC_SECRET_ENV_ALLOW", "PUBLIC_READ_TOKEN"),
            ("RECAC_TEST_COMMAND", "none"),
            ("RECAC_PULL_REQUEST", "false"),
        ],
    )
    .await;
    let result: AgentResult = serde_json::from_str(&ran.result_file).expect("result JSON");
    assert_eq!(result.outcome, Outcome::Succeeded, "{}", ran.logs);
    let summary = result.summary.unwrap_or_default();
    assert!(
        summary.ends_with("\nfinished with [REDACTED] and [REDACTED]"),
        "{summary}"
    );
    assert!(
        ran.logs.contains(
            "env: DB_PASSWORD=[] SECOND_TOKEN=[] OPENAI_API_KEY=[present] RECAC_GIT_TOKEN=[] PUBLIC_READ_TOKEN=[present]"
        ),
        "{}",
        ran.logs
    );
    for (place, text) in [
        ("external logs", ran.logs.clone()),
        ("external log messages", messages(&ran.logs)),
        ("external result", ran.result_file.clone()),
    ] {
        assert_nothing_leaked(place, &text);
    }
}

#[tokio::test]
async fn an_unreadable_secret_file_gives_up_naming_it() {
    let root = tempfile::tempdir().unwrap();
    let dir = secrets_dir(root.path());
    std::os::unix::fs::symlink("..data/MISSING", dir.join("app-db/BROKEN")).unwrap();
    let lookup = |k: &str| match k {
        "RECAC_REPO_URL" => Some("file:///nowhere".to_string()),
        "RECAC_PROMPT" => Some("x".to_string()),
        "RECAC_SECRETS_DIR" => Some(dir.display().to_string()),
        _ => None,
    };
    let err = recac_agent::Settings::from_lookup(lookup).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("app-db/BROKEN"), "{text}");
    // The values that could be read are still redacted by the early redactor.
    let early = recac_agent::settings::secrets_from_lookup(lookup);
    assert!(early.iter().any(|v| v == DB_PASSWORD));
}
