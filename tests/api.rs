//! The AgentTask API on a real kube-apiserver: the CRD installs, kubectl shows it,
//! the schema rejects bad tasks naming the field, and status round-trips.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use recac_api::{AgentTask, AgentTaskStatus, FeedbackStatus, TaskPhase};
use recac_testenv::ControlPlaneOptions;
use recac_tests::{control_plane, kubectl, kubectl_stdin, repo_root, text};

#[test]
fn crd_file_matches_generated_crd() {
    let files = recac_api::crd_files().expect("CRDs render");
    assert_eq!(files.len(), 2, "every CRD has its file");
    for (file, generated) in files {
        for dir in ["crds", "config/crd"] {
            let path = format!("{dir}/{file}");
            let on_disk = std::fs::read_to_string(repo_root().join(&path))
                .unwrap_or_else(|e| panic!("{path}: {e}"));
            assert!(
                generated == on_disk,
                "{path} is stale: run `make crds` and commit the result"
            );
        }
    }
}

#[tokio::test]
async fn sample_applies_and_kubectl_shows_columns_and_docs() {
    let plane = control_plane(ControlPlaneOptions::default()).await;
    let ns = plane.namespace("api-sample").await.expect("namespace");
    let sample = repo_root().join("examples/agenttask.yaml");
    let sample = sample.to_str().expect("utf-8 path");

    let out = kubectl(
        plane,
        &["apply", "--validate=strict", "-n", &ns, "-f", sample],
    );
    assert!(out.status.success(), "apply failed: {}", text(&out.stderr));

    for resource in ["agenttasks", "at", "recac"] {
        let out = kubectl(plane, &["get", resource, "-n", &ns]);
        assert!(
            out.status.success(),
            "get {resource}: {}",
            text(&out.stderr)
        );
        let stdout = text(&out.stdout);
        let header = stdout.lines().next().unwrap_or_default();
        for column in ["NAME", "PHASE", "TICKET", "RETRIES", "BRANCH", "AGE"] {
            assert!(
                header.contains(column),
                "get {resource}: no {column} in {header:?}"
            );
        }
        assert!(stdout.contains("proj-123-fix-login-timeout"), "{stdout}");
        assert!(stdout.contains("PROJ-123"), "{stdout}");
    }

    let out = kubectl(plane, &["explain", "agenttask.spec.repository"]);
    assert!(out.status.success(), "explain: {}", text(&out.stderr));
    let explain = text(&out.stdout);
    for needle in [
        "The git repository the agent clones",
        "baseBranch",
        "url",
        "Cannot be changed",
    ] {
        assert!(
            explain.contains(needle),
            "explain lacks {needle:?}: {explain}"
        );
    }

    // Defaults come from the schema.
    let api: Api<AgentTask> = Api::namespaced(plane.client().await.expect("client"), &ns);
    let task = api.get("proj-123-fix-login-timeout").await.expect("task");
    assert_eq!(task.spec.max_retries, 2);
    assert!(!task.spec.suspend);
}

const VALID: &str = r#"
apiVersion: recac.io/v1alpha1
kind: AgentTask
metadata:
  name: NAME
spec:
  prompt: do the thing
  repository:
    url: https://git.example.com/org/repo.git
"#;

/// A valid task with `replace` swapped in for one line of `VALID`.
fn task(name: &str, from: &str, to: &str) -> String {
    let yaml = VALID.replace("NAME", name);
    assert!(
        yaml.contains(from),
        "test bug: {from:?} not in the template"
    );
    yaml.replace(from, to)
}

fn assert_rejected(out: std::process::Output, case: &str, needles: &[&str]) {
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "{case}: accepted, but should be rejected"
    );
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{case}: error lacks {needle:?}: {stderr}"
        );
    }
}

#[tokio::test]
async fn invalid_tasks_are_rejected_naming_the_field() {
    let plane = control_plane(ControlPlaneOptions::default()).await;
    let ns = plane.namespace("api-invalid").await.expect("namespace");

    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "no prompt and no ticket",
            task("no-work", "  prompt: do the thing\n", ""),
            vec!["spec", "spec.prompt or spec.ticket is required"],
        ),
        (
            "bad ticket key",
            task(
                "bad-key",
                "  prompt: do the thing\n",
                "  ticket:\n    source: jira\n    key: proj-12\n",
            ),
            vec!["spec.ticket.key", "should match"],
        ),
        (
            "unknown ticket source",
            task(
                "bad-source",
                "  prompt: do the thing\n",
                "  ticket:\n    source: github\n    key: PROJ-12\n",
            ),
            vec!["spec.ticket.source", "Unsupported value"],
        ),
        (
            "bad repository url",
            task(
                "bad-url",
                "https://git.example.com/org/repo.git",
                "ftp://git.example.com/repo",
            ),
            vec!["spec.repository.url", "should match"],
        ),
        (
            "credentials in the repository url",
            task(
                "url-creds",
                "https://git.example.com/org/repo.git",
                "https://user:token@git.example.com/org/repo.git",
            ),
            vec!["spec.repository.url"],
        ),
        (
            "a NUL character in the prompt",
            task(
                "nul-prompt",
                "  prompt: do the thing\n",
                "  prompt: \"do\\0it\"\n",
            ),
            vec!["spec.prompt", "must not contain a NUL character"],
        ),
        (
            "retries above range",
            task(
                "retries-high",
                "  prompt: do the thing\n",
                "  prompt: x\n  maxRetries: 11\n",
            ),
            vec!["spec.maxRetries", "less than or equal to 10"],
        ),
        (
            "retries below range",
            task(
                "retries-low",
                "  prompt: do the thing\n",
                "  prompt: x\n  maxRetries: -1\n",
            ),
            vec!["spec.maxRetries", "greater than or equal to 0"],
        ),
        (
            "timeout below range",
            task(
                "timeout-low",
                "  prompt: do the thing\n",
                "  prompt: x\n  timeoutSeconds: 5\n",
            ),
            vec!["spec.timeoutSeconds", "greater than or equal to 60"],
        ),
        (
            "timeout above range",
            task(
                "timeout-high",
                "  prompt: do the thing\n",
                "  prompt: x\n  timeoutSeconds: 100000\n",
            ),
            vec!["spec.timeoutSeconds", "less than or equal to 86400"],
        ),
        (
            "finished Jobs kept too briefly to read their result",
            task(
                "ttl-low",
                "  prompt: do the thing\n",
                "  prompt: x\n  ttlSecondsAfterFinished: 0\n",
            ),
            vec![
                "spec.ttlSecondsAfterFinished",
                "greater than or equal to 60",
            ],
        ),
        (
            "wrong type for maxRetries",
            task(
                "wrong-type",
                "  prompt: do the thing\n",
                "  prompt: x\n  maxRetries: two\n",
            ),
            vec!["spec.maxRetries"],
        ),
        (
            "wrong type for suspend",
            task(
                "wrong-bool",
                "  prompt: do the thing\n",
                "  prompt: x\n  suspend: sometimes\n",
            ),
            vec!["spec.suspend"],
        ),
        (
            "unknown field",
            task(
                "unknown",
                "  prompt: do the thing\n",
                "  prompt: x\n  promt: typo\n",
            ),
            vec!["unknown field", "spec.promt"],
        ),
        (
            "missing repository",
            VALID.replace("NAME", "no-repo").replace(
                "  repository:\n    url: https://git.example.com/org/repo.git\n",
                "",
            ),
            vec!["spec.repository", "Required value"],
        ),
    ];
    for (case, yaml, needles) in cases {
        let out = kubectl_stdin(
            plane,
            &["apply", "--validate=strict", "-n", &ns, "-f", "-"],
            &yaml,
        );
        assert_rejected(out, case, &needles);
    }

    // Immutable fields: create a valid task, then try to change them.
    let yaml = task(
        "immutable",
        "  prompt: do the thing\n",
        "  prompt: x\n  ticket:\n    source: jira\n    key: PROJ-1\n",
    );
    let out = kubectl_stdin(plane, &["apply", "-n", &ns, "-f", "-"], &yaml);
    assert!(out.status.success(), "create: {}", text(&out.stderr));
    let moved = yaml.replace(
        "https://git.example.com/org/repo.git",
        "https://git.example.com/org/other.git",
    );
    let out = kubectl_stdin(plane, &["apply", "-n", &ns, "-f", "-"], &moved);
    assert_rejected(
        out,
        "changing repository.url",
        &["spec.repository.url", "repository.url is immutable"],
    );
    let rekeyed = yaml.replace("key: PROJ-1", "key: PROJ-2");
    let out = kubectl_stdin(plane, &["apply", "-n", &ns, "-f", "-"], &rekeyed);
    assert_rejected(
        out,
        "changing ticket.key",
        &["spec.ticket.key", "ticket.key is immutable"],
    );
    // Other fields stay editable.
    let edited = yaml.replace(
        "  prompt: x\n",
        "  prompt: another thing\n  suspend: true\n",
    );
    let out = kubectl_stdin(plane, &["apply", "-n", &ns, "-f", "-"], &edited);
    assert!(out.status.success(), "edit: {}", text(&out.stderr));
}

#[tokio::test]
async fn status_round_trips_through_the_status_subresource() {
    let plane = control_plane(ControlPlaneOptions::default()).await;
    let ns = plane.namespace("api-status").await.expect("namespace");
    let client = plane.client().await.expect("client");
    let api: Api<AgentTask> = Api::namespaced(client, &ns);

    let task: AgentTask = serde_saphyr::from_str(&VALID.replace("NAME", "status")).expect("yaml");
    let created = api
        .create(&PostParams::default(), &task)
        .await
        .expect("create");
    assert!(created.status.is_none());

    let now = Time(k8s_openapi::jiff::Timestamp::from_second(1_790_000_000).expect("time"));
    let status = AgentTaskStatus {
        phase: Some(TaskPhase::Failed),
        attempt: Some(3),
        retries: Some(2),
        job_name: Some("status-a3".into()),
        branch: Some("recac/status".into()),
        commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
        pull_request_url: Some("https://github.com/org/repo/pull/7".into()),
        plan: None,
        message: Some("attempt 3 failed: DeadlineExceeded".into()),
        start_time: Some(now.clone()),
        completion_time: Some(now.clone()),
        next_attempt_time: Some(now.clone()),
        observed_generation: Some(1),
        conditions: vec![
            Condition {
                type_: "Ready".into(),
                status: "False".into(),
                reason: "RetriesExhausted".into(),
                message: "no retries left".into(),
                last_transition_time: now.clone(),
                observed_generation: Some(1),
            },
            Condition {
                type_: "Failed".into(),
                status: "True".into(),
                reason: "DeadlineExceeded".into(),
                message: "the Job ran past its deadline".into(),
                last_transition_time: now.clone(),
                observed_generation: Some(1),
            },
        ],
        feedback: Some(FeedbackStatus {
            reported_attempt: Some(3),
            reported_at: Some(now.clone()),
            comment_id: Some("10042".into()),
            ..Default::default()
        }),
        partial: None,
        spend: None,
        egress: None,
    };
    let patch = serde_json::json!({
        "apiVersion": "recac.io/v1alpha1",
        "kind": "AgentTask",
        "status": status,
    });
    api.patch_status(
        "status",
        &PatchParams::apply("recac-test").force(),
        &Patch::Apply(&patch),
    )
    .await
    .expect("status patch");
    let read = api.get("status").await.expect("get");
    assert_eq!(read.status.as_ref(), Some(&status));
    // The status subresource never changes spec.
    assert_eq!(read.spec, created.spec);

    // A status write through the main resource is ignored.
    let mut spec_write = read.clone();
    spec_write.status = Some(AgentTaskStatus::default());
    let replaced = api
        .replace("status", &PostParams::default(), &spec_write)
        .await
        .expect("replace");
    assert_eq!(replaced.status.as_ref(), Some(&status));
}
