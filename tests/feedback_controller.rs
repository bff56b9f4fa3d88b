//! The feedback controller against a real kube-apiserver, kube-controller-manager's job
//! controller, the local node agent (which runs each agent pod's command as a process) and
//! the Jira simulator. Comments are counted from the simulator's call log.

use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use recac_api::{AgentTask, AgentTaskStatus, FeedbackStatus, TaskPhase};
use recac_feedback::{CommentMode, FeedbackConfig, FeedbackSetup};
use recac_jira::{Credentials, Flavor, JiraClient, JiraConfig, Secret};
use recac_jira_sim::{
    CallRecord, Category, Fault, IssueSeed, JiraSim, StatusDef, TransitionDef, Workflow,
};
use recac_operator::OperatorSetup;
use recac_runtime::config::OperatorSettings;
use recac_task_controller::{AgentDefaults, TaskControllerConfig};
use recac_testenv::{ControlPlane, ControlPlaneOptions, NodeAgent, NodeAgentOptions};
use recac_tests::{
    RunningOperator, control_plane, http_get, operator_service_account_config, text, token_config,
    wait_for,
};
use serde_json::Value;

/// Stands in for `recac start`: behaves as FAKE_MODE says and reports like the agent. It
/// runs for a second at least, as an agent does, so that the task is seen Running (when the
/// "picked up" comment is owed).
const FAKE_AGENT: &str = r#"
echo "agent: task=$RECAC_TASK attempt=$RECAC_ATTEMPT ticket=$RECAC_TICKET"
sleep 1
case "$FAKE_MODE" in
  fail)
    i=0; while [ $i -lt 70 ]; do echo "step $i: compiling"; i=$((i+1)); done
    echo "error: tests failed in attempt $RECAC_ATTEMPT"
    exit 1 ;;
  leak)
    echo "using token ghp_Z9y8X7w6V5u4T3s2R1q0P9o8N7m6L5k4J3i2"
    echo "anthropic: sk-ant-api03-PLANTEDsecretVALUEabcdefghij0123456789"
    echo "aws: AKIAPLANTEDKEY123456"
    echo "cloning https://bot:planted-url-password-77@git.example.com/org/repo.git"
    printf 'sk-ant-api03-BASE64plantedSECRETvalue0123456789xyz' | base64
    printf 'ghp_FOLDEDplantedTOKENabcdefghijklmnop0123\n' | fold -w 9
    echo "internal id corp-424242"
    echo "error: the build failed"
    exit 1 ;;
  give-up) printf '{"outcome":"gaveUp","summary":"the repository does not exist"}' > "$RECAC_RESULT_PATH"; exit 3 ;;
  flaky)
    if [ "$RECAC_ATTEMPT" -lt 3 ]; then echo "error: flaky attempt $RECAC_ATTEMPT"; exit 1; fi ;;
  slow) sleep 15 ;;
  sleep) sleep 300 ;;
  timed) printf '{"outcome":"succeeded","summary":"agent finished at %s"}' "$(date +%s.%N)" > "$RECAC_RESULT_PATH"; exit 0 ;;
  plan) printf '{"outcome":"planned","summary":"Planned the change.","plan":"1. Make *login.timeout* configurable in {code}config.rs{code}\\n2. See [the docs|http://x] <script>alert(1)</script>\\n3. Push with ghp_Z9y8X7w6V5u4T3s2R1q0P9o8N7m6L5k4J3i2 then test"}' > "$RECAC_RESULT_PATH"; exit 0 ;;
esac
printf '{"outcome":"succeeded","branch":"%s","commit":"c0ffee%s","pullRequestUrl":"https://github.com/org/repo/pull/%s","testsPassed":true,"summary":"Made the login timeout configurable.","tokenUsage":{"inputTokens":51234,"outputTokens":2345},"usage":[{"provider":"anthropic","model":"claude-sonnet-4-5","inputTokens":51234,"outputTokens":2345}]}' "$RECAC_BRANCH" "$RECAC_ATTEMPT" "$RECAC_ATTEMPT" > "$RECAC_RESULT_PATH"
"#;

/// Every planted credential, and each piece a line-based redactor could miss.
const PLANTED: &[&str] = &[
    "ghp_Z9y8X7w6V5u4T3s2R1q0P9o8N7m6L5k4J3i2",
    "PLANTEDsecretVALUE",
    "AKIAPLANTEDKEY123456",
    "planted-url-password-77",
    "BASE64plantedSECRET",
    // `printf sk-ant-api03-BASE64plantedSECRETvalue0123456789xyz | base64`, first 24 chars.
    "c2stYW50LWFwaTAzLUJBU0U2",
    // `fold -w 9` of ghp_FOLDEDplantedTOKENabcdefghijklmnop0123.
    "ghp_FOLDE",
    "DplantedT",
    "OKENabcde",
    "fghijklmn",
    "corp-424242",
];

const LONG: Duration = Duration::from_secs(90);

struct Operator;

impl Operator {
    async fn start(
        config: kube::Config,
        namespace: &str,
        feedback: FeedbackSetup,
    ) -> RunningOperator {
        Self::start_with(config, namespace, Some(feedback)).await
    }

    /// The task controller alone.
    async fn start_tasks_only(config: kube::Config, namespace: &str) -> RunningOperator {
        Self::start_with(config, namespace, None).await
    }

    async fn start_with(
        config: kube::Config,
        namespace: &str,
        feedback: Option<FeedbackSetup>,
    ) -> RunningOperator {
        let setup = OperatorSetup {
            operator: OperatorSettings {
                namespaces: vec![namespace.to_string()],
                ..Default::default()
            },
            task_controller: TaskControllerConfig {
                retry_backoff_seconds: 1,
                max_retry_backoff_seconds: 2,
                queue_poll_seconds: 1,
                ..Default::default()
            },
            agent: AgentDefaults {
                command: vec!["sh".into(), "-c".into(), FAKE_AGENT.into()],
                ..Default::default()
            },
            instance: "test".into(),
            feedback,
            ..Default::default()
        };
        RunningOperator::start(config, setup, Duration::from_secs(15)).await
    }
}

struct Setup {
    plane: &'static ControlPlane,
    client: Client,
    config: kube::Config,
    ns: String,
    _node: NodeAgent,
}

async fn setup(prefix: &str) -> Setup {
    let plane = control_plane(ControlPlaneOptions {
        controller_manager: true,
        ..Default::default()
    })
    .await;
    let ns = plane.namespace(prefix).await.expect("namespace");
    let client = plane.client().await.expect("client");
    let config = plane.config().await.expect("client config");
    let node = NodeAgent::start(
        client.clone(),
        NodeAgentOptions {
            namespaces: vec![ns.clone()],
            ..Default::default()
        },
    )
    .await
    .expect("node agent starts");
    Setup {
        plane,
        client,
        config,
        ns,
        _node: node,
    }
}

fn jira_client(sim: &JiraSim, flavor: Flavor) -> JiraClient {
    let config = JiraConfig {
        url: sim.url().to_string(),
        flavor,
        request_timeout_seconds: 5,
        max_retries: 1,
        max_retry_after_seconds: 5,
        ..JiraConfig::default()
    };
    let credentials = match flavor {
        Flavor::Cloud => Credentials::Basic {
            user: recac_jira_sim::BOT_EMAIL.into(),
            token: Secret::new(recac_jira_sim::BOT_TOKEN),
        },
        Flavor::Datacenter => Credentials::Bearer {
            token: Secret::new(recac_jira_sim::BOT_PAT),
        },
    };
    JiraClient::with_credentials(&config, credentials).expect("jira client")
}

/// A comment per report: the tests that use it are about separate comments. Live comments
/// have [`live_config`].
fn feedback_config() -> FeedbackConfig {
    FeedbackConfig {
        comments: CommentMode::PerOutcome,
        retry_seconds: 1,
        max_retry_seconds: 2,
        redact_patterns: vec!["corp-[0-9]{6}".into()],
        dashboard_url: Some("https://dash.example/tasks/{namespace}/{name}".into()),
        ..FeedbackConfig::default()
    }
}

fn feedback(sim: &JiraSim, flavor: Flavor, config: FeedbackConfig) -> FeedbackSetup {
    FeedbackSetup::new(config, jira_client(sim, flavor)).expect("feedback setup")
}

/// A ticket in progress, labelled as the source controller would find it.
fn ticket(sim: &JiraSim) -> String {
    sim.add_issue(IssueSeed {
        project: "OPS".into(),
        summary: "Make the login timeout configurable".into(),
        labels: vec!["recac-agent".into()],
        status: Some("In Progress".into()),
        ..Default::default()
    })
}

fn task_yaml(
    name: &str,
    ticket: Option<&str>,
    mode: &str,
    max_retries: i32,
    extra: &str,
) -> String {
    let ticket = ticket
        .map(|key| format!("  ticket: {{source: jira, key: {key}}}\n"))
        .unwrap_or_default();
    format!(
        r#"
apiVersion: recac.io/v1alpha1
kind: AgentTask
metadata:
  name: {name}
spec:
  prompt: make the login timeout configurable
{ticket}  repository:
    url: https://git.example.com/org/repo.git
  maxRetries: {max_retries}
  agent:
    env:
      - name: FAKE_MODE
        value: "{mode}"
{extra}"#
    )
}

async fn create_task(s: &Setup, yaml: &str) -> AgentTask {
    let task: AgentTask = serde_saphyr::from_str(yaml).expect("task yaml");
    let api: Api<AgentTask> = Api::namespaced(s.client.clone(), &s.ns);
    api.create(&PostParams::default(), &task)
        .await
        .expect("task created")
}

async fn task_where(
    s: &Setup,
    name: &str,
    what: &str,
    pred: impl Fn(&AgentTask) -> bool,
) -> AgentTask {
    let api: Api<AgentTask> = Api::namespaced(s.client.clone(), &s.ns);
    wait_for(what, LONG, || {
        let api = api.clone();
        let pred = &pred;
        async move {
            let task = api.get(name).await.ok()?;
            pred(&task).then_some(task)
        }
    })
    .await
}

fn reported(task: &AgentTask) -> Vec<String> {
    task.status
        .as_ref()
        .and_then(|s| s.feedback.as_ref())
        .map(|f| f.reported.clone())
        .unwrap_or_default()
}

fn has_reported(task: &AgentTask, key: &str) -> bool {
    reported(task).iter().any(|k| k == key)
}

fn condition(task: &AgentTask, type_: &str) -> Option<(String, String, String)> {
    task.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Comments created on `key`, from the call log (status 201).
fn comment_posts(sim: &JiraSim, key: &str) -> Vec<CallRecord> {
    sim.calls()
        .into_iter()
        .filter(|c| {
            c.method == "POST"
                && c.status == 201
                && c.path.ends_with(&format!("/issue/{key}/comment"))
        })
        .collect()
}

/// Edits of comments on `key`, from the call log (status 200).
fn comment_edits(sim: &JiraSim, key: &str) -> Vec<CallRecord> {
    sim.calls()
        .into_iter()
        .filter(|c| {
            c.method == "PUT"
                && c.status == 200
                && c.path.contains(&format!("/issue/{key}/comment/"))
        })
        .collect()
}

/// Every write of a comment on `key` (made or edited), oldest first.
fn comment_writes(sim: &JiraSim, key: &str) -> Vec<CallRecord> {
    let mut writes = comment_posts(sim, key);
    writes.extend(comment_edits(sim, key));
    writes.sort_by_key(|c| c.at);
    writes
}

/// One live comment per ticket (the default).
fn live_config() -> FeedbackConfig {
    FeedbackConfig {
        comments: CommentMode::Live,
        ..feedback_config()
    }
}

/// Run `run` of ticket `key`, labelled as the source controller labels a ticket's runs: its
/// name and its YAML.
fn run_yaml(key: &str, run: u32, mode: &str, max_retries: i32) -> (String, String) {
    let base = key.to_lowercase();
    let name = if run == 1 {
        base
    } else {
        format!("{base}-r{run}")
    };
    let yaml = task_yaml(&name, Some(key), mode, max_retries, "").replace(
        &format!("  name: {name}\n"),
        &format!("  name: {name}\n  labels: {{recac.io/ticket: {key}, recac.io/run: \"{run}\"}}\n"),
    );
    (name, yaml)
}

fn feedback_of(task: &AgentTask) -> FeedbackStatus {
    task.status
        .clone()
        .and_then(|s| s.feedback)
        .unwrap_or_default()
}

/// The comment bodies on `key` as text (ADF as its JSON, wiki as is).
fn bodies(sim: &JiraSim, key: &str) -> Vec<String> {
    sim.issue(key)
        .expect("issue")
        .comments
        .iter()
        .map(|c| match &c.body {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect()
}

async fn wait_comments(sim: &JiraSim, key: &str, n: usize) -> Vec<String> {
    wait_for(&format!("{n} comments on {key}"), LONG, || async {
        let b = bodies(sim, key);
        (b.len() >= n).then_some(b)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_is_reported_once_with_its_pull_request_link_and_moves_the_ticket() {
    let s = setup("fb-success").await;
    let sim = JiraSim::cloud().await.expect("sim");
    let key = ticket(&sim);
    let mut config = feedback_config();
    config.succeeded.transition = Some("In Review".into());
    config.succeeded.remove_labels = vec!["recac-agent".into()];
    config.succeeded.add_labels = vec!["recac-done".into()];
    let operator = Operator::start(
        s.config.clone(),
        &s.ns,
        feedback(&sim, Flavor::Cloud, config),
    )
    .await;
    create_task(&s, &task_yaml("ok", Some(&key), "succeed", 2, "")).await;

    let task = task_where(&s, "ok", "the outcome recorded", |t| {
        has_reported(t, "succeeded/1")
    })
    .await;
    assert_eq!(reported(&task), ["pickedUp/1", "succeeded/1"]);
    let fb = task
        .status
        .clone()
        .and_then(|s| s.feedback)
        .expect("feedback");
    assert_eq!(fb.reported_attempt, Some(1));
    assert!(fb.comment_id.is_some() && fb.reported_at.is_some());
    assert_eq!(fb.ticket_updated.as_deref(), Some("succeeded/1"));
    assert_eq!(
        condition(&task, "TicketUpdated").map(|c| c.0),
        Some("True".into())
    );

    let bodies = bodies(&sim, &key);
    assert_eq!(bodies.len(), 2, "{bodies:#?}");
    assert!(bodies[0].contains("picked up this ticket"), "{}", bodies[0]);
    assert!(bodies[0].contains("kubectl get at ok -n"), "{}", bodies[0]);
    assert!(
        bodies[0].contains(&format!(
            "\"href\":\"https://dash.example/tasks/{}/ok\"",
            s.ns
        )),
        "{}",
        bodies[0]
    );
    let done = &bodies[1];
    for part in [
        "recac finished this ticket",
        r#""href":"https://github.com/org/repo/pull/1""#,
        "recac/OPS-1",
        "c0ffee1",
        "passed",
        "Made the login timeout configurable.",
    ] {
        assert!(done.contains(part), "{part} missing in {done}");
    }
    // What the task spent, from its status (or, without one there, the result's tokens).
    assert!(
        done.contains("51,234 input and 2,345 output tokens on claude-sonnet-4-5")
            || done.contains("53,579 (51,234 in, 2,345 out)"),
        "{done}"
    );
    let issue = sim.issue(&key).expect("issue");
    assert_eq!(issue.status, "In Review");
    assert_eq!(issue.labels, ["recac-done"]);
    let events: Api<Event> = Api::namespaced(s.client.clone(), &s.ns);
    wait_for("a Reported event per comment", LONG, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        let reported = list
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some("Reported"))
            .count();
        (reported == 2).then_some(())
    })
    .await;

    assert!(
        comment_edits(&sim, &key).is_empty(),
        "perOutcome edits nothing"
    );

    // Nothing more is posted: restarts find everything recorded.
    operator.stop().await;
    let operator = Operator::start(
        s.config.clone(),
        &s.ns,
        feedback(&sim, Flavor::Cloud, feedback_config()),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(comment_posts(&sim, &key).len(), 2);
    let (code, metrics) = http_get(operator.http, "/metrics").await;
    assert_eq!(code, 200);
    assert!(metrics.contains("recac_feedback_pending 0"), "{metrics}");
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_quotes_the_log_tail_without_any_planted_secret() {
    let s = setup("fb-failure").await;
    let sim = JiraSim::cloud().await.expect("sim");
    let key = ticket(&sim);
    let mut config = feedback_config();
    config.failed.transition = Some("To Do".into());
    config.failed.add_labels = vec!["recac-failed".into()];
    config.failed.remove_labels = vec!["recac-agent".into()];
    config.log_tail_lines = 30;
    // The shipped RBAC (pods/log included) is enough.
    let sa = operator_service_account_config(s.plane).await;
    let operator = Operator::start(sa, &s.ns, feedback(&sim, Flavor::Cloud, config)).await;
    create_task(&s, &task_yaml("leaky", Some(&key), "leak", 0, "")).await;
    let long_key = ticket(&sim);
    create_task(&s, &task_yaml("long", Some(&long_key), "fail", 1, "")).await;

    task_where(&s, "leaky", "the failure recorded", |t| {
        has_reported(t, "failed/1")
    })
    .await;
    let bodies = bodies(&sim, &key);
    assert_eq!(bodies.len(), 2, "{bodies:#?}");
    let failed = &bodies[1];
    assert!(
        failed.contains("recac could not finish this ticket: every attempt failed"),
        "{failed}"
    );
    assert!(
        failed.contains("lines of the agent's log (credentials removed)"),
        "{failed}"
    );
    assert!(failed.contains("\"codeBlock\""), "{failed}");
    assert!(failed.contains("error: the build failed"), "{failed}");
    assert!(failed.contains("[REDACTED]"), "{failed}");
    // No planted secret in any comment, nor in any request the operator sent to Jira.
    let everything: String = sim
        .calls()
        .iter()
        .map(|c| format!("{} {} {:?}\n", c.path, c.query, c.body))
        .collect();
    for planted in PLANTED {
        assert!(
            !everything.contains(planted),
            "{planted} reached Jira:\n{failed}"
        );
    }
    let issue = sim.issue(&key).expect("issue");
    assert_eq!(issue.status, "To Do");
    assert_eq!(issue.labels, ["recac-failed"]);

    // Two attempts of 71 lines: the comment quotes the last 30 of the last attempt.
    let task = task_where(&s, "long", "the failure recorded", |t| {
        has_reported(t, "failed/2")
    })
    .await;
    assert_eq!(reported(&task), ["pickedUp/1", "failed/2"]);
    let bodies = bodies_of(&sim, &long_key, 2).await;
    let failed = &bodies[1];
    assert!(failed.contains("The last 30 lines"), "{failed}");
    assert!(
        failed.contains("step 69: compiling") && !failed.contains("step 40: compiling"),
        "{failed}"
    );
    assert!(
        failed.contains("error: tests failed in attempt 2"),
        "{failed}"
    );
    assert!(failed.contains("Attempts: "), "{failed}");
    operator.stop().await;
}

async fn bodies_of(sim: &JiraSim, key: &str, n: usize) -> Vec<String> {
    let b = wait_comments(sim, key, n).await;
    assert_eq!(b.len(), n, "{b:#?}");
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn giving_up_and_the_deadline_are_said_in_words() {
    let s = setup("fb-words").await;
    let sim = JiraSim::cloud().await.expect("sim");
    let gave_up = ticket(&sim);
    let deadline = ticket(&sim);
    let mut config = feedback_config();
    config.comment_on_dispatch = false;
    let operator = Operator::start(
        s.config.clone(),
        &s.ns,
        feedback(&sim, Flavor::Cloud, config),
    )
    .await;
    create_task(&s, &task_yaml("gives-up", Some(&gave_up), "give-up", 2, "")).await;
    create_task(
        &s,
        &task_yaml(
            "too-slow",
            Some(&deadline),
            "sleep",
            0,
            "  timeoutSeconds: 60\n",
        ),
    )
    .await;

    task_where(&s, "gives-up", "reported", |t| has_reported(t, "failed/1")).await;
    let b = bodies_of(&sim, &gave_up, 1).await;
    assert!(b[0].contains("the agent gave up"), "{}", b[0]);
    assert!(b[0].contains("the repository does not exist"), "{}", b[0]);

    let api: Api<AgentTask> = Api::namespaced(s.client.clone(), &s.ns);
    wait_for("the deadline report", Duration::from_secs(150), || async {
        let t = api.get("too-slow").await.ok()?;
        has_reported(&t, "failed/1").then_some(())
    })
    .await;
    let b = bodies_of(&sim, &deadline, 1).await;
    // Told as a run past its deadline, or (once the task controller reads the deadline as
    // cutting the run short) as a run cut short by it.
    assert!(
        b[0].contains("ran past its deadline of 1m 0s")
            || b[0].contains("cut short by its deadline of 1m 0s"),
        "{}",
        b[0]
    );
    operator.stop().await;
}

/// What the agent of a run cut short wrote, with a planted token in its note.
fn cut_short_result(cause: &str, commit: &str) -> String {
    serde_json::json!({
        "outcome": "partial",
        "branch": "recac/OPS-1",
        "commit": commit,
        "summary": "Cut short.",
        "partial": {
            "cause": cause,
            "done": "Made *login.timeout* configurable; pushed with ghp_Z9y8X7w6V5u4T3s2R1q0P9o8N7m6L5k4J3i2",
            "left": "Tests for [the settings page|http://x]",
        },
        "usage": [{"provider": "anthropic", "model": "claude-sonnet-4-5", "inputTokens": 1000, "outputTokens": 100, "cost": "0.01", "currency": "USD"}],
    })
    .to_string()
}

/// Ends `name` as the task controller ends a run cut short: a finished pod of its Job whose
/// agent reported `result`, then the task `Failed` with `reason`, its work so far pushed
/// and what its attempts spent. The task waits for a claim that never comes, so the task
/// controller runs nothing for it and leaves it alone once it is finished.
async fn end_cut_short(client: &Client, ns: &str, name: &str, reason: &str, result: &str) {
    use k8s_openapi::api::core::v1::Pod;
    let job = format!("{name}-a1");
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("{job}-x"), "labels": {"batch.kubernetes.io/job-name": job}},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "containers": [{"name": "agent", "image": "recac:test"}],
        },
    }))
    .expect("pod");
    wait_for("the attempt's pod made", LONG, || async {
        match pods.create(&PostParams::default(), &pod).await {
            Ok(_) => Some(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Some(()),
            Err(_) => None,
        }
    })
    .await;
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let status = serde_json::json!({"status": {
        "phase": "Failed",
        "containerStatuses": [{
            "name": "agent",
            "image": "recac:test",
            "imageID": "",
            "ready": false,
            "restartCount": 0,
            "state": {"terminated": {
                "exitCode": 1,
                "reason": "Error",
                "message": result,
                "startedAt": now,
                "finishedAt": now,
            }},
        }],
    }});
    pods.patch_status(
        &format!("{job}-x"),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .expect("the pod's status written");

    let api: Api<AgentTask> = Api::namespaced(client.clone(), ns);
    let spend = recac_api::Spend {
        models: vec![recac_api::ModelSpend {
            provider: Some("anthropic".into()),
            model: "claude-sonnet-4-5".into(),
            input_tokens: 51234,
            output_tokens: 2345,
            cost: Some("0.19".into()),
            currency: Some("USD".into()),
        }],
        attempts: 1,
        not_reported: 0,
    };
    let ended = AgentTaskStatus {
        phase: Some(TaskPhase::Failed),
        attempt: Some(1),
        retries: Some(0),
        job_name: Some(job),
        branch: Some("recac/OPS-1".into()),
        commit: Some("c0ffee1234567890".into()),
        partial: Some(true),
        spend: Some(spend),
        message: Some(format!(
            "attempt 1 was cut short ({reason}); its work so far is pushed"
        )),
        start_time: Some(now.clone()),
        completion_time: Some(now.clone()),
        conditions: vec![Condition {
            type_: "Failed".into(),
            status: "True".into(),
            reason: reason.into(),
            message: "cut short".into(),
            last_transition_time: now,
            observed_generation: None,
        }],
        ..Default::default()
    };
    wait_for("the task ended cut short", LONG, || async {
        let task = api.get(name).await.ok()?;
        recac_task_controller::controller::write_owned_status(&api, &task, &ended)
            .await
            .ok()
    })
    .await;
}

/// A run cut short by its deadline, and one stopped at its budget, each with its work so far
/// pushed: one outcome on the ticket names the branch, the commit, how to go on and what was
/// spent, with the agent's note redacted and as text. On Cloud with a comment per outcome,
/// on Data Center in the live comment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_cut_short_says_where_its_work_is_how_to_go_on_and_what_it_spent() {
    let plane = control_plane(ControlPlaneOptions {
        controller_manager: true,
        ..Default::default()
    })
    .await;
    let client = plane.client().await.expect("client");
    let config = plane.config().await.expect("client config");
    for (flavor, mode) in [
        (Flavor::Cloud, CommentMode::PerOutcome),
        (Flavor::Datacenter, CommentMode::Live),
    ] {
        let ns = plane.namespace("fb-cut").await.expect("namespace");
        let sim = match flavor {
            Flavor::Cloud => JiraSim::cloud().await,
            Flavor::Datacenter => JiraSim::datacenter().await,
        }
        .expect("sim");
        let operator = Operator::start(
            config.clone(),
            &ns,
            feedback(
                &sim,
                flavor,
                FeedbackConfig {
                    comments: mode,
                    ..feedback_config()
                },
            ),
        )
        .await;
        let deadline = ticket(&sim);
        let budget = ticket(&sim);
        let mut names = Vec::new();
        for (key, extra) in [
            (&deadline, ""),
            (&budget, "  budget: {tokens: 50000, cost: \"0.20\"}\n"),
        ] {
            let (name, yaml) = run_yaml(key, 1, "sleep", 0);
            let yaml = format!("{yaml}{extra}").replace(
                &format!("  name: {name}\n"),
                &format!("  name: {name}\n  annotations: {{recac.io/claim: pending}}\n"),
            );
            let task: AgentTask = serde_saphyr::from_str(&yaml).expect("task yaml");
            let api: Api<AgentTask> = Api::namespaced(client.clone(), &ns);
            api.create(&PostParams::default(), &task)
                .await
                .expect("task created");
            names.push(name);
        }
        end_cut_short(
            &client,
            &ns,
            &names[0],
            recac_api::reasons::DEADLINE_EXCEEDED,
            &cut_short_result("deadline", "c0ffee1234567890"),
        )
        .await;
        end_cut_short(
            &client,
            &ns,
            &names[1],
            recac_api::reasons::BUDGET_EXHAUSTED,
            &cut_short_result("budget", "c0ffee1234567890"),
        )
        .await;

        let (deadline_said, budget_said, spent) = match flavor {
            Flavor::Cloud => (
                "The run was cut short by its deadline (timeoutSeconds); its work so far is pushed to recac/OPS-1 (c0ffee1). To continue, write /recac <what to do next> on this ticket, or /recac retry.",
                "The run stopped at its budget (53,579 tokens and 0.19 USD spent; the budget: 50,000 tokens, 0.20 USD); its work so far is pushed to recac/OPS-1 (c0ffee1). Raise spec.budget (or the source's budget) to continue.",
                "51,234 input and 2,345 output tokens on claude-sonnet-4-5 (0.19 USD)",
            ),
            Flavor::Datacenter => (
                "The run was cut short by its deadline ({{timeoutSeconds}}); its work so far is pushed to {{recac/OPS-1}} ({{c0ffee1}}). To continue, write {{/recac <what to do next>}} on this ticket, or {{/recac retry}}.",
                "The run stopped at its budget (53,579 tokens and 0.19 USD spent; the budget: 50,000 tokens, 0.20 USD); its work so far is pushed to {{recac/OPS-1}} ({{c0ffee1}}). Raise {{spec.budget}} (or the source's budget) to continue.",
                "* Spent: 51,234 input and 2,345 output tokens on claude-sonnet-4-5 (0.19 USD)",
            ),
        };
        for (key, said, headline) in [
            (
                &deadline,
                deadline_said,
                "the run was cut short by its deadline of 1h 0m",
            ),
            (&budget, budget_said, "the run stopped at its budget"),
        ] {
            // ADF's text as one string: the paragraph's nodes joined.
            let plain = |body: &str| -> String {
                match flavor {
                    Flavor::Datacenter => body.to_string(),
                    Flavor::Cloud => {
                        let adf: Value = serde_json::from_str(body).unwrap_or_default();
                        let mut out = String::new();
                        adf_text(&adf, &mut out);
                        out
                    }
                }
            };
            let body = wait_for(&format!("the outcome on {key}"), LONG, || async {
                let b = bodies(&sim, key);
                b.iter()
                    .any(|b| plain(b).contains(said))
                    .then(|| b.concat())
            })
            .await;
            assert_eq!(comment_posts(&sim, key).len(), 1, "one comment: {body}");
            let text = plain(&body);
            for part in [
                headline,
                spent,
                "The agent's note on its work so far:",
                "Done: Made *login.timeout* configurable; pushed with [REDACTED]",
                "Left: Tests for [the settings page|http://x]",
            ] {
                assert!(text.contains(part), "{part} missing in {text}");
            }
            assert!(
                !body.contains("ghp_Z9y8X7w6V5u4T3s2R1q0P9o8N7m6L5k4J3i2"),
                "{body}"
            );
            assert!(!body.contains("Tokens:"), "{body}");
            match flavor {
                Flavor::Cloud => {
                    assert!(body.contains("\"codeBlock\""), "{body}");
                    assert!(!body.contains(r#""href":"http://x""#), "{body}");
                }
                Flavor::Datacenter => {
                    assert!(
                        body.contains("{noformat}\nDone: Made *login.timeout* configurable"),
                        "{body}"
                    );
                }
            }
        }
        let api: Api<AgentTask> = Api::namespaced(client.clone(), &ns);
        for name in &names {
            task_where_in(&api, name, |t| has_reported(t, "failed/1")).await;
        }
        operator.stop().await;
    }
}

/// Every text node of an ADF document, in order.
fn adf_text(node: &Value, out: &mut String) {
    if let Some(text) = node["text"].as_str() {
        out.push_str(text);
    }
    if node["type"] == "hardBreak" {
        out.push('\n');
    }
    if let Some(content) = node["content"].as_array() {
        for child in content {
            adf_text(child, out);
        }
    }
}

async fn task_where_in(api: &Api<AgentTask>, name: &str, pred: impl Fn(&AgentTask) -> bool) {
    wait_for(&format!("{name} recorded"), LONG, || async {
        let task = api.get(name).await.ok()?;
        pred(&task).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_or_suspending_a_running_task_says_cancelled_once() {
    let s = setup("fb-cancel").await;
    let sim = JiraSim::cloud().await.expect("sim");
    let deleted = ticket(&sim);
    let suspended = ticket(&sim);
    let mut config = feedback_config();
    config.cancelled.add_labels = vec!["recac-cancelled".into()];
    let operator = Operator::start(
        s.config.clone(),
        &s.ns,
        feedback(&sim, Flavor::Cloud, config),
    )
    .await;
    create_task(&s, &task_yaml("gone", Some(&deleted), "sleep", 0, "")).await;
    create_task(&s, &task_yaml("held", Some(&suspended), "sleep", 0, "")).await;
    let api: Api<AgentTask> = Api::namespaced(s.client.clone(), &s.ns);
    for name in ["gone", "held"] {
        task_where(&s, name, "running and announced", |t| {
            t.status.as_ref().and_then(|s| s.phase) == Some(TaskPhase::Running)
                && has_reported(t, "pickedUp/1")
        })
        .await;
    }
    api.delete("gone", &DeleteParams::default())
        .await
        .expect("deleted");
    api.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"suspend": true}})),
    )
    .await
    .expect("suspended");

    let b = bodies_of(&sim, &deleted, 2).await;
    assert!(
        b[1].contains("its task was deleted during attempt 1"),
        "{}",
        b[1]
    );
    wait_for("the cancelled label", LONG, || async {
        let labels = sim.issue(&deleted)?.labels;
        (labels == ["recac-agent", "recac-cancelled"]).then_some(())
    })
    .await;
    task_where(&s, "held", "the suspension reported", |t| {
        has_reported(t, "cancelled/1")
    })
    .await;
    let b = bodies_of(&sim, &suspended, 2).await;
    assert!(
        b[1].contains("its task was suspended during attempt 1"),
        "{}",
        b[1]
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(comment_posts(&sim, &deleted).len(), 2);
    assert_eq!(comment_posts(&sim, &suspended).len(), 2);
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_tasks_are_reported_within_feedback_workers_and_retried_in_a_queue() {
    const TASKS: usize = 6;
    let s = setup("fb-deleted").await;
    let sim = JiraSim::cloud().await.expect("sim");
    let tickets: Vec<String> = (0..TASKS).map(|_| ticket(&sim)).collect();
    let config = FeedbackConfig {
        workers: 2,
        ..feedback_config()
    };
    let operator = Operator::start(
        s.config.clone(),
        &s.ns,
        feedback(&sim, Flavor::Cloud, config),
    )
    .await;
    for (i, key) in tickets.iter().enumerate() {
        create_task(&s, &task_yaml(&format!("d{i}"), Some(key), "sleep", 0, "")).await;
    }
    for i in 0..TASKS {
        task_where(&s, &format!("d{i}"), "running and announced", |t| {
            t.status.as_ref().and_then(|s| s.phase) == Some(TaskPhase::Running)
                && has_reported(t, "pickedUp/1")
        })
        .await;
    }
    // Every deletion's first comment fails; the next ones are slow.
    sim.inject(
        Fault::status(503)
            .times(u32::try_from(TASKS).unwrap_or(u32::MAX))
            .on_method("POST")
            .on_path("/comment"),
    );
    sim.inject(
        Fault::delay(Duration::from_millis(300))
            .always()
            .on_path("/comment"),
    );
    let api: Api<AgentTask> = Api::namespaced(s.client.clone(), &s.ns);
    for i in 0..TASKS {
        api.delete(&format!("d{i}"), &DeleteParams::default())
            .await
            .expect("deleted");
    }
    for key in &tickets {
        let b = bodies_of(&sim, key, 2).await;
        assert!(b[1].contains("its task was deleted"), "{}", b[1]);
    }
    assert!(
        sim.most_calls_at_once() <= 2,
        "at most feedback.workers (2) Jira calls at once, saw {}",
        sim.most_calls_at_once()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    for key in &tickets {
        assert_eq!(
            comment_posts(&sim, key).len(),
            2,
            "{key}: one pickedUp, one cancelled"
        );
    }
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jira_errors_and_rate_limits_delay_feedback_without_duplicates() {
    let s = setup("fb-outage").await;
    let sim = JiraSim::cloud().await.expect("sim");
    let key = ticket(&sim);
    // Jira is down for comments: the report waits, visibly.
    sim.inject(
        Fault::status(503)
            .on_method("POST")
            .on_path("/comment")
            .always(),
    );
    let mut config = feedback_config();
    config.comment_on_dispatch = false;
    let operator = Operator::start(
        s.config.clone(),
        &s.ns,
        feedback(&sim, Flavor::Cloud, config),
    )
    .await;
    create_task(&s, &task_yaml("patient", Some(&key), "succeed", 0, "")).await;
    let task = task_where(&s, "patient", "feedback pending", |t| {
        condition(t, "FeedbackPending").is_some_and(|c| c.0 == "True")
    })
    .await;
    let (_, _, message) = condition(&task, "FeedbackPending").expect("condition");
    assert!(message.contains("503"), "{message}");
    let (_, metrics) = http_get(operator.http, "/metrics").await;
    assert!(metrics.contains("recac_feedback_pending 1"), "{metrics}");
    let events: Api<Event> = Api::namespaced(s.client.clone(), &s.ns);
    wait_for("a FeedbackDelayed event", LONG, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("FeedbackDelayed"))
            .then_some(())
    })
    .await;

    // Back up, but a 500, rate limits and a reply lost after the comment was made (an
    // ambiguous POST) on the way: each report still lands once.
    sim.clear_faults();
    sim.inject(Fault::status(500).on_method("POST").on_path("/comment"));
    sim.inject(
        Fault::rate_limited(1)
            .on_method("POST")
            .on_path("/comment")
            .times(3),
    );
    sim.inject(
        Fault::malformed_json()
            .on_method("POST")
            .on_path("/comment"),
    );
    let task = task_where(&s, "patient", "delivered", |t| {
        has_reported(t, "succeeded/1")
    })
    .await;
    assert_eq!(
        condition(&task, "FeedbackPending").map(|c| (c.0, c.1)),
        Some(("False".into(), "Delivered".into()))
    );
    let bodies = bodies(&sim, &key);
    assert_eq!(bodies.len(), 1, "{bodies:#?}");
    assert!(
        bodies[0].contains("recac finished this ticket"),
        "{}",
        bodies[0]
    );
    // The gauge drops once the delivery returns, a moment after the status write the
    // wait above saw.
    let metrics = wait_for("recac_feedback_pending 0", LONG, || async {
        let (_, metrics) = http_get(operator.http, "/metrics").await;
        metrics
            .contains("recac_feedback_pending 0")
            .then_some(metrics)
    })
    .await;
    assert!(
        metrics.contains("recac_feedback_already_posted_total 1"),
        "{metrics}"
    );
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_that_cannot_be_recorded_is_never_posted_twice() {
    let s = setup("fb-crash").await;
    let sim = JiraSim::cloud().await.expect("sim");
    let key = ticket(&sim);
    let mut config = feedback_config();
    config.comment_on_dispatch = false;
    // The operator's status writes are refused, so the first operator posts and cannot
    // record (as if killed right after posting); then it is killed.
    let blind = no_status_writes_config(&s).await;
    let operator =
        Operator::start(blind, &s.ns, feedback(&sim, Flavor::Cloud, config.clone())).await;
    let task_operator = Operator::start_tasks_only(s.config.clone(), &s.ns).await;
    create_task(&s, &task_yaml("crashy", Some(&key), "succeed", 0, "")).await;
    wait_comments(&sim, &key, 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    operator.kill().await;
    let api: Api<AgentTask> = Api::namespaced(s.client.clone(), &s.ns);
    let task = api.get("crashy").await.expect("task");
    assert!(
        reported(&task).is_empty(),
        "the first operator recorded nothing"
    );

    task_operator.stop().await;
    let operator = Operator::start(
        s.config.clone(),
        &s.ns,
        feedback(&sim, Flavor::Cloud, config),
    )
    .await;
    task_where(&s, "crashy", "recorded", |t| has_reported(t, "succeeded/1")).await;
    assert_eq!(comment_posts(&sim, &key).len(), 1);
    operator.stop().await;
}

/// A client for a ServiceAccount that may read everything the operator reads but not write
/// AgentTask status.
async fn no_status_writes_config(s: &Setup) -> kube::Config {
    let manifest = format!(
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {{name: no-status, namespace: {ns}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: no-status, namespace: {ns}}}
rules:
  - {{apiGroups: [recac.io], resources: [agenttasks], verbs: [get, list, watch]}}
  - {{apiGroups: [batch], resources: [jobs], verbs: [get, list, watch]}}
  - {{apiGroups: [""], resources: [pods, pods/log], verbs: [get, list]}}
  - {{apiGroups: [events.k8s.io], resources: [events], verbs: [create]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: no-status, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: no-status}}
subjects: [{{kind: ServiceAccount, name: no-status, namespace: {ns}}}]
"#,
        ns = s.ns
    );
    let out = recac_tests::kubectl_stdin(s.plane, &["apply", "-f", "-"], &manifest);
    assert!(out.status.success(), "apply: {}", text(&out.stderr));
    token_config(s.plane, "no-status", &s.ns).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_transition_is_an_event_and_a_condition_not_a_retry_storm() {
    let s = setup("fb-transition").await;
    let sim = JiraSim::cloud().await.expect("sim");
    let key = ticket(&sim);
    let mut config = feedback_config();
    config.comment_on_dispatch = false;
    config.succeeded.transition = Some("Deployed".into());
    let operator = Operator::start(
        s.config.clone(),
        &s.ns,
        feedback(&sim, Flavor::Cloud, config),
    )
    .await;
    create_task(&s, &task_yaml("nowhere", Some(&key), "succeed", 0, "")).await;
    let task = task_where(&s, "nowhere", "reported", |t| {
        has_reported(t, "succeeded/1")
    })
    .await;
    let (status, reason, message) = condition(&task, "TicketUpdated").expect("condition");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "TransitionUnavailable")
    );
    assert!(
        message.contains("\"Deployed\"") && message.contains("Request Review"),
        "{message}"
    );
    let events: Api<Event> = Api::namespaced(s.client.clone(), &s.ns);
    wait_for("a TransitionUnavailable event", LONG, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("TransitionUnavailable"))
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let transition_reads = sim
        .calls()
        .iter()
        .filter(|c| c.method == "GET" && c.path.ends_with("/transitions"))
        .count();
    assert_eq!(transition_reads, 1, "looked once, not again and again");
    assert_eq!(comment_posts(&sim, &key).len(), 1);
    assert_eq!(sim.issue(&key).expect("issue").status, "In Progress");
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_center_gets_wiki_markup_with_real_links() {
    let s = setup("fb-dc").await;
    let sim = JiraSim::datacenter().await.expect("sim");
    let key = ticket(&sim);
    let mut config = feedback_config();
    config.succeeded.transition = Some("Request Review".into());
    config.comment_on_dispatch = false;
    // Tasks of the source "ops" get their own headline.
    config.source_templates.insert(
        "ops".into(),
        recac_feedback::config::Templates {
            succeeded: Some("Done on {ticket}: {pullRequest} ({attempt} of {attempts})".into()),
            ..Default::default()
        },
    );
    // The comment's reply is lost after Jira made it: its wiki marker is found.
    sim.inject(
        Fault::malformed_json()
            .on_method("POST")
            .on_path("/comment"),
    );
    let operator = Operator::start(
        s.config.clone(),
        &s.ns,
        feedback(&sim, Flavor::Datacenter, config),
    )
    .await;
    let yaml = task_yaml("dc", Some(&key), "succeed", 0, "").replace(
        "  name: dc\n",
        "  name: dc\n  labels: {recac.io/source: ops}\n",
    );
    create_task(&s, &yaml).await;
    task_where(&s, "dc", "reported", |t| has_reported(t, "succeeded/1")).await;
    let b = bodies_of(&sim, &key, 1).await;
    assert!(
        b[0].starts_with("Done on OPS-1: https://github.com/org/repo/pull/1 (1 of 1)"),
        "{}",
        b[0]
    );
    assert!(
        b[0].contains("[https://github.com/org/repo/pull/1|https://github.com/org/repo/pull/1]"),
        "{}",
        b[0]
    );
    assert!(b[0].contains("{{recac/OPS-1}}"), "{}", b[0]);
    assert!(
        comment_posts(&sim, &key)
            .iter()
            .all(|c| c.path.starts_with("/rest/api/2/"))
    );
    assert_eq!(sim.issue(&key).expect("issue").status, "In Review");
    let (_, metrics) = http_get(operator.http, "/metrics").await;
    assert!(
        metrics.contains("recac_feedback_already_posted_total 1"),
        "{metrics}"
    );
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_without_a_ticket_gets_nothing_posted() {
    let s = setup("fb-noticket").await;
    let sim = JiraSim::cloud().await.expect("sim");
    let operator = Operator::start(
        s.config.clone(),
        &s.ns,
        feedback(&sim, Flavor::Cloud, feedback_config()),
    )
    .await;
    create_task(&s, &task_yaml("plain", None, "succeed", 0, "")).await;
    task_where(&s, "plain", "succeeded", |t| {
        t.status.as_ref().and_then(|s| s.phase) == Some(TaskPhase::Succeeded)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(sim.calls().is_empty(), "{:#?}", sim.calls());
    let task = Api::<AgentTask>::namespaced(s.client.clone(), &s.ns)
        .get("plain")
        .await
        .expect("task");
    assert!(task.status.and_then(|s| s.feedback).is_none());
    operator.stop().await;
}

/// The task controller and the feedback controller write the same task's status at once,
/// each under its own field manager: neither loses the other's fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_status_writes_of_both_controllers_lose_nothing() {
    let plane = control_plane(ControlPlaneOptions {
        controller_manager: false,
        ..Default::default()
    })
    .await;
    let ns = plane.namespace("fb-ssa").await.expect("namespace");
    let client = plane.client().await.expect("client");
    let api: Api<AgentTask> = Api::namespaced(client.clone(), &ns);
    let yaml = task_yaml("shared", Some("OPS-9"), "succeed", 0, "");
    let task: AgentTask = serde_saphyr::from_str(&yaml).expect("yaml");
    let task = api
        .create(&PostParams::default(), &task)
        .await
        .expect("created");
    let mut unversioned = task.clone();
    unversioned.metadata.resource_version = None;
    const ROUNDS: i32 = 40;
    let tasks_side = {
        let api = api.clone();
        let task = unversioned.clone();
        tokio::spawn(async move {
            for attempt in 1..=ROUNDS {
                let status = AgentTaskStatus {
                    phase: Some(TaskPhase::Running),
                    attempt: Some(attempt),
                    message: Some(format!("attempt {attempt}")),
                    conditions: vec![cond("Dispatched", attempt)],
                    ..Default::default()
                };
                recac_task_controller::controller::write_owned_status(&api, &task, &status)
                    .await
                    .expect("task controller writes");
            }
        })
    };
    let feedback_side = {
        let api = api.clone();
        tokio::spawn(async move {
            for attempt in 1..=ROUNDS {
                let feedback = FeedbackStatus {
                    reported: (1..=attempt).map(|a| format!("retrying/{a}")).collect(),
                    ..Default::default()
                };
                let owned = serde_json::json!({
                    "feedback": feedback,
                    "conditions": [cond("FeedbackPending", attempt)],
                });
                recac_runtime::status::apply_status(
                    &api,
                    "shared",
                    None,
                    recac_feedback::FIELD_MANAGER,
                    &owned,
                )
                .await
                .expect("feedback controller writes");
            }
        })
    };
    tasks_side.await.expect("joins");
    feedback_side.await.expect("joins");
    let status = api
        .get("shared")
        .await
        .expect("task")
        .status
        .expect("status");
    assert_eq!(status.attempt, Some(ROUNDS));
    assert_eq!(
        status.message.as_deref(),
        Some(format!("attempt {ROUNDS}").as_str())
    );
    assert_eq!(
        status.feedback.expect("feedback").reported.len(),
        ROUNDS as usize
    );
    let mut types: Vec<&str> = status.conditions.iter().map(|c| c.type_.as_str()).collect();
    types.sort();
    assert_eq!(types, ["Dispatched", "FeedbackPending"]);
    assert!(
        status
            .conditions
            .iter()
            .all(|c| c.message == format!("round {ROUNDS}"))
    );
}

fn cond(type_: &str, round: i32) -> Condition {
    Condition {
        type_: type_.into(),
        status: "True".into(),
        reason: "Test".into(),
        message: format!("round {round}"),
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
        observed_generation: None,
    }
}

/// The `recac` binary next to this test's target folder, built if needed.
fn recac_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test path");
    // target/<profile>/deps/<test> → target/<profile>/recac
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target folder");
    let target_dir = profile_dir.parent().expect("target root");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = std::process::Command::new(cargo);
    build
        .args(["build", "-q", "-p", "recac"])
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(recac_tests::repo_root());
    if profile_dir.file_name().and_then(|n| n.to_str()) == Some("release") {
        build.arg("--release");
    }
    let status = build.status().expect("cargo runs");
    assert!(status.success(), "building the recac binary failed");
    profile_dir.join("recac")
}

/// `feedback.comments` takes `live` or `perOutcome`: anything else stops the operator at
/// start-up naming the key, as does an edit interval out of range.
#[test]
fn a_wrong_comment_mode_or_edit_interval_is_refused_naming_the_key() {
    let binary = recac_binary();
    let folder = tempfile::tempdir().expect("temp folder");
    for (feedback, key) in [
        ("comments: chatty", "feedback.comments"),
        ("editIntervalSeconds: 0", "feedback.editIntervalSeconds"),
    ] {
        let path = folder.path().join("config.yaml");
        std::fs::write(&path, format!("feedback:\n  {feedback}\n")).expect("config written");
        let out = std::process::Command::new(&binary)
            .args(["orchestrate", "--config"])
            .arg(&path)
            .output()
            .expect("recac runs");
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{feedback}: {stderr}");
        assert!(stderr.contains(&format!("`{key}`")), "{feedback}: {stderr}");
    }
}

/// `recac orchestrate` killed by a failpoint right after posting (before recording) posts
/// nothing more when it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_operator_killed_right_after_posting_posts_once() {
    let s = setup("fb-kill").await;
    let sim = JiraSim::cloud().await.expect("sim");
    let key = ticket(&sim);
    let folder = tempfile::tempdir().expect("temp folder");
    let config_path = folder.path().join("config.yaml");
    let agent_command = serde_json::to_string(&["sh", "-c", FAKE_AGENT]).expect("json");
    std::fs::write(
        &config_path,
        format!(
            r#"operator:
  namespaces: [{ns}]
  adminAddress: 127.0.0.1:0
  leaderElection: {{enabled: false}}
taskController:
  retryBackoffSeconds: 1
  maxRetryBackoffSeconds: 2
agent:
  command: {agent_command}
jira:
  url: {url}
  auth: {{type: basic, emailEnv: FB_JIRA_EMAIL, tokenEnv: FB_JIRA_TOKEN}}
feedback:
  commentOnDispatch: false
  retrySeconds: 1
  maxRetrySeconds: 2
"#,
            ns = s.ns,
            url = sim.url(),
        ),
    )
    .expect("config written");
    let binary = recac_binary();
    let run = |failpoints: &str| {
        std::process::Command::new(&binary)
            .args(["orchestrate", "--config"])
            .arg(&config_path)
            .env("KUBECONFIG", s.plane.kubeconfig_path())
            .env("FB_JIRA_EMAIL", recac_jira_sim::BOT_EMAIL)
            .env("FB_JIRA_TOKEN", recac_jira_sim::BOT_TOKEN)
            .env("RECAC_FAILPOINTS", failpoints)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("recac orchestrate starts")
    };
    let mut first = run("feedback.after-post=exit");
    create_task(&s, &task_yaml("killed", Some(&key), "succeed", 0, "")).await;
    let exited = wait_for("the failpoint to end the operator", LONG, || {
        let status = first.try_wait().ok().flatten();
        async move { status }
    })
    .await;
    assert_eq!(exited.code(), Some(86), "exited through the failpoint");
    assert_eq!(comment_posts(&sim, &key).len(), 1);
    let api: Api<AgentTask> = Api::namespaced(s.client.clone(), &s.ns);
    let task = api.get("killed").await.expect("task");
    assert!(reported(&task).is_empty(), "killed before recording");

    let mut second = run("");
    let recorded = wait_for("the report recorded", LONG, || {
        let api = api.clone();
        async move {
            let t = api.get("killed").await.ok()?;
            has_reported(&t, "succeeded/1").then_some(t)
        }
    })
    .await;
    let _ = second.kill();
    let _ = second.wait();
    assert_eq!(
        comment_posts(&sim, &key).len(),
        1,
        "the restart found the marker"
    );
    let comment_id = recorded
        .status
        .and_then(|s| s.feedback)
        .and_then(|f| f.comment_id);
    assert_eq!(
        comment_id,
        sim.issue(&key)
            .expect("issue")
            .comments
            .first()
            .map(|c| c.id.clone())
    );
}

/// A run that fails twice and then succeeds is told in one comment, edited as it goes and
/// never more often than `editIntervalSeconds`; a second run of the ticket joins the same
/// comment. Each outcome moves the ticket once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_comment_follows_retries_and_a_second_run_of_the_ticket() {
    let s = setup("fb-live").await;
    let sim = JiraSim::cloud().await.expect("sim");
    let key = ticket(&sim);
    let mut config = live_config();
    config.succeeded.transition = Some("In Review".into());
    config.succeeded.add_labels = vec!["recac-done".into()];
    let operator = Operator::start(
        s.config.clone(),
        &s.ns,
        feedback(&sim, Flavor::Cloud, config),
    )
    .await;
    let (first, yaml) = run_yaml(&key, 1, "flaky", 2);
    create_task(&s, &yaml).await;
    let task = task_where(&s, &first, "the outcome recorded", |t| {
        has_reported(t, "succeeded/3")
    })
    .await;

    assert_eq!(comment_posts(&sim, &key).len(), 1, "one comment");
    let issue = sim.issue(&key).expect("issue");
    assert_eq!(issue.comments.len(), 1);
    let comment_id = issue.comments[0].id.clone();
    let fb = feedback_of(&task);
    assert_eq!(fb.comment_id.as_deref(), Some(comment_id.as_str()));
    assert!(
        fb.reported.contains(&format!("statusComment/{comment_id}")),
        "{fb:?}"
    );
    assert_eq!(fb.ticket_updated.as_deref(), Some("succeeded/3"));
    let writes = comment_writes(&sim, &key);
    assert!(
        writes.len() >= 3,
        "made, then edited as the attempts went: {} writes",
        writes.len()
    );
    let first_text = writes[0]
        .body
        .as_ref()
        .map(|b| b.to_string())
        .unwrap_or_default();
    assert!(
        first_text.contains("attempt 1 of at most 3"),
        "made when the first agent ran: {first_text}"
    );
    for pair in writes.windows(2) {
        let apart = pair[1].at.duration_since(pair[0].at);
        assert!(
            apart >= Duration::from_millis(1900),
            "two writes {apart:?} apart (editIntervalSeconds is 2)"
        );
    }
    let done = &bodies(&sim, &key)[0];
    for part in [
        "recac finished this ticket",
        "(3 attempts)",
        "recac/OPS-1",
        r#""href":"https://github.com/org/repo/pull/3""#,
        "Made the login timeout configurable.",
        "/recac <what else to do>",
        "/recac retry",
        &format!("#recac-feedback/status/ticket/{}/{key}/", s.ns),
        &format!(
            "#recac-feedback/{}/succeeded/3",
            task.metadata.uid.clone().unwrap_or_default()
        ),
    ] {
        assert!(done.contains(part), "{part} missing in {done}");
    }
    assert!(!done.contains("/recac stop"), "nothing runs: {done}");
    let issue = sim.issue(&key).expect("issue");
    assert_eq!(issue.status, "In Review");
    assert_eq!(issue.labels, ["recac-agent", "recac-done"]);
    let transitions = |sim: &JiraSim| {
        sim.calls()
            .iter()
            .filter(|c| c.method == "POST" && c.path.ends_with("/transitions"))
            .count()
    };
    assert_eq!(transitions(&sim), 1, "the outcome moved the ticket once");

    // A follow-up run of the same ticket joins the comment, newest last.
    let (second, yaml) = run_yaml(&key, 2, "succeed", 0);
    create_task(&s, &yaml).await;
    let task = task_where(&s, &second, "the second outcome recorded", |t| {
        has_reported(t, "succeeded/1")
    })
    .await;
    assert_eq!(
        feedback_of(&task).comment_id.as_deref(),
        Some(comment_id.as_str())
    );
    assert_eq!(comment_posts(&sim, &key).len(), 1, "still one comment");
    let both = &bodies(&sim, &key)[0];
    let run = |n: u32| both.find(&format!("Run {n}")).unwrap_or(usize::MAX);
    assert!(run(1) < run(2) && run(2) < usize::MAX, "{both}");
    // The first run in one line (its pod was read in an earlier pass), the second in full.
    assert!(
        both.contains("Summary: ") && both.contains("The agent's summary:"),
        "{both}"
    );
    assert!(
        both.contains(r#""href":"https://github.com/org/repo/pull/1""#),
        "{both}"
    );
    let writes = comment_writes(&sim, &key);
    for pair in writes.windows(2) {
        let apart = pair[1].at.duration_since(pair[0].at);
        assert!(
            apart >= Duration::from_millis(1900),
            "two writes {apart:?} apart, also when the second run came right after the first"
        );
    }
    // Settled: nothing more is written.
    let writes = writes.len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(comment_writes(&sim, &key).len(), writes);
    operator.stop().await;
}

/// The operator that made the ticket's comment could not record it (its status writes are
/// refused, as if it died right after) and is killed mid-run; the next one finds the
/// comment by its marker, records it and edits it to the end. Data Center: wiki markup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_run_finds_the_live_comment_and_makes_no_second_one() {
    let s = setup("fb-live-restart").await;
    let sim = JiraSim::datacenter().await.expect("sim");
    let key = ticket(&sim);
    let blind = no_status_writes_config(&s).await;
    let task_operator = Operator::start_tasks_only(s.config.clone(), &s.ns).await;
    let operator = Operator::start(
        blind,
        &s.ns,
        feedback(&sim, Flavor::Datacenter, live_config()),
    )
    .await;
    let (name, yaml) = run_yaml(&key, 1, "slow", 0);
    create_task(&s, &yaml).await;
    wait_for("the live comment saying it runs", LONG, || async {
        let b = bodies(&sim, &key);
        b.first()
            .filter(|b| b.contains("running attempt 1 of at most 1"))
            .cloned()
    })
    .await;
    operator.kill().await;
    let api: Api<AgentTask> = Api::namespaced(s.client.clone(), &s.ns);
    let task = api.get(&name).await.expect("task");
    assert!(reported(&task).is_empty(), "nothing recorded");
    assert_eq!(
        task.status.as_ref().and_then(|s| s.phase),
        Some(TaskPhase::Running),
        "killed mid-run"
    );

    task_operator.stop().await;
    let operator = Operator::start(
        s.config.clone(),
        &s.ns,
        feedback(&sim, Flavor::Datacenter, live_config()),
    )
    .await;
    let task = task_where(&s, &name, "the outcome recorded", |t| {
        has_reported(t, "succeeded/1")
    })
    .await;
    assert_eq!(comment_posts(&sim, &key).len(), 1, "the marker was found");
    let issue = sim.issue(&key).expect("issue");
    assert_eq!(issue.comments.len(), 1);
    assert_eq!(
        feedback_of(&task).comment_id.as_deref(),
        Some(issue.comments[0].id.as_str())
    );
    let done = &bodies(&sim, &key)[0];
    assert!(
        done.contains("recac finished this ticket")
            && done.contains("{{recac/OPS-1}}")
            && done.contains(&format!(
                "[recac|https://github.com/recac-io/recac#recac-feedback/status/ticket/{}/{key}/",
                s.ns
            )),
        "{done}"
    );
    assert!(
        sim.calls()
            .iter()
            .filter(|c| c.path.contains("/comment"))
            .all(|c| c.path.starts_with("/rest/api/2/"))
    );
    let (_, metrics) = http_get(operator.http, "/metrics").await;
    assert!(
        metrics.contains("recac_feedback_already_posted_total 1"),
        "{metrics}"
    );
    operator.stop().await;
}

/// Jira made the live comment but its reply was lost, then refuses two edits: the comment
/// is found by its marker, not made again, and the outcome still lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_comment_survives_a_lost_reply_and_refused_edits() {
    let s = setup("fb-live-outage").await;
    let sim = JiraSim::cloud().await.expect("sim");
    let key = ticket(&sim);
    sim.inject(
        Fault::malformed_json()
            .on_method("POST")
            .on_path("/comment"),
    );
    sim.inject(
        Fault::status(503)
            .on_method("PUT")
            .on_path("/comment/")
            .times(2),
    );
    let operator = Operator::start(
        s.config.clone(),
        &s.ns,
        feedback(&sim, Flavor::Cloud, live_config()),
    )
    .await;
    let (name, yaml) = run_yaml(&key, 1, "succeed", 0);
    create_task(&s, &yaml).await;
    let task = task_where(&s, &name, "the outcome recorded", |t| {
        has_reported(t, "succeeded/1")
    })
    .await;
    let posts = sim
        .calls()
        .iter()
        .filter(|c| c.method == "POST" && c.path.ends_with("/comment"))
        .count();
    assert_eq!(posts, 1, "found, not made again");
    let bodies = bodies(&sim, &key);
    assert_eq!(bodies.len(), 1);
    let done = &bodies[0];
    assert!(done.contains("recac finished this ticket"), "{done}");
    assert_ne!(
        condition(&task, "FeedbackPending").map(|c| c.0),
        Some("True".into())
    );
    let metrics = wait_for("recac_feedback_pending 0", LONG, || async {
        let (_, metrics) = http_get(operator.http, "/metrics").await;
        metrics
            .contains("recac_feedback_pending 0")
            .then_some(metrics)
    })
    .await;
    assert!(
        metrics.contains("recac_feedback_already_posted_total 1"),
        "{metrics}"
    );
    operator.stop().await;
}

/// A run deleted while it runs is told in the ticket's live comment as cancelled, with the
/// cancelled labels, from the deleted task's last copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_comment_tells_a_deleted_run_as_cancelled() {
    let s = setup("fb-live-cancel").await;
    let sim = JiraSim::cloud().await.expect("sim");
    let key = ticket(&sim);
    let mut config = live_config();
    config.cancelled.add_labels = vec!["recac-cancelled".into()];
    let operator = Operator::start(
        s.config.clone(),
        &s.ns,
        feedback(&sim, Flavor::Cloud, config),
    )
    .await;
    let (name, yaml) = run_yaml(&key, 1, "sleep", 0);
    create_task(&s, &yaml).await;
    wait_for("the live comment saying it runs", LONG, || async {
        let b = bodies(&sim, &key);
        b.first()
            .filter(|b| b.contains("running attempt 1"))
            .cloned()
    })
    .await;
    let api: Api<AgentTask> = Api::namespaced(s.client.clone(), &s.ns);
    api.delete(&name, &DeleteParams::default())
        .await
        .expect("deleted");
    wait_for("the cancellation in the comment", LONG, || async {
        let b = bodies(&sim, &key);
        b.first()
            .filter(|b| b.contains("its task was deleted during attempt 1"))
            .cloned()
    })
    .await;
    wait_for("the cancelled label", LONG, || async {
        let labels = sim.issue(&key)?.labels;
        (labels == ["recac-agent", "recac-cancelled"]).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(comment_posts(&sim, &key).len(), 1);
    operator.stop().await;
}

/// The plan FAKE_MODE=plan writes, as a ticket must show it: as written, its planted token
/// removed.
const SHOWN_PLAN: &str = "1. Make *login.timeout* configurable in {code}config.rs{code}\n2. See [the docs|http://x] <script>alert(1)</script>\n3. Push with [REDACTED] then test";

/// The default workflow with a status where plans wait for review.
fn plan_review_workflow() -> Workflow {
    let mut workflow = Workflow::default();
    workflow.statuses.push(StatusDef {
        id: "10003".into(),
        name: "Plan Review".into(),
        category: Category::Indeterminate,
    });
    let transition = |id: &str, name: &str, from: &[&str], to: &str| TransitionDef {
        id: id.into(),
        name: name.into(),
        from: from.iter().map(|f| f.to_string()).collect(),
        to: to.into(),
    };
    workflow.transitions.push(transition(
        "61",
        "Review Plan",
        &["In Progress"],
        "Plan Review",
    ));
    workflow.transitions.push(transition(
        "71",
        "Request Review",
        &["Plan Review"],
        "In Review",
    ));
    workflow
}

/// A planning run of ticket `key` (run `run`): its name and its YAML.
fn planning_yaml(key: &str, run: u32) -> (String, String) {
    let (name, yaml) = run_yaml(key, run, "plan", 0);
    (name, format!("{yaml}  approval: plan\n"))
}

fn transitions_done(sim: &JiraSim) -> usize {
    sim.calls()
        .iter()
        .filter(|c| c.method == "POST" && c.status == 204 && c.path.ends_with("/transitions"))
        .count()
}

/// Decides on the plan of `name` as the source controller does when someone answers on the
/// ticket.
async fn decide_plan(s: &Setup, name: &str, decision: &str, by: &str) {
    let api: Api<AgentTask> = Api::namespaced(s.client.clone(), &s.ns);
    let patch = serde_json::json!({"metadata": {"annotations": {
        recac_api::annotations::APPROVAL: decision,
        recac_api::annotations::APPROVAL_BY: by,
    }}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("annotated");
}

fn phase(task: &AgentTask) -> Option<TaskPhase> {
    task.status.as_ref().and_then(|s| s.phase)
}

/// A planning run's plan reaches the ticket once, in its live comment, with how to answer
/// it, and moves the ticket to plan review once; once approved, the comment says so without
/// the plan, the implementing run follows it, and only that run moves the ticket on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_comment_shows_a_plan_once_then_its_approval_and_the_run_that_implements_it() {
    let s = setup("fb-live-plan").await;
    let sim = JiraSim::cloud().await.expect("sim");
    sim.set_workflow(plan_review_workflow());
    let key = ticket(&sim);
    let mut config = live_config();
    config.planned.transition = Some("Plan Review".into());
    config.succeeded.transition = Some("In Review".into());
    config.failed.add_labels = vec!["recac-failed".into()];
    let operator = Operator::start(
        s.config.clone(),
        &s.ns,
        feedback(&sim, Flavor::Cloud, config),
    )
    .await;
    let (planner, yaml) = planning_yaml(&key, 1);
    create_task(&s, &yaml).await;
    let task = task_where(&s, &planner, "the plan recorded", |t| {
        has_reported(t, "planned/1")
    })
    .await;
    assert_eq!(phase(&task), Some(TaskPhase::AwaitingApproval));
    let fb = feedback_of(&task);
    assert_eq!(fb.ticket_updated.as_deref(), Some("planned/1"));
    assert_eq!(
        condition(&task, "TicketUpdated").map(|c| c.0),
        Some("True".into())
    );
    assert_eq!(comment_posts(&sim, &key).len(), 1, "one comment");
    let waiting = &bodies(&sim, &key)[0];
    let plan_json = serde_json::to_string(SHOWN_PLAN).expect("json");
    for part in [
        r#""text":"Run 1""#,
        r#""text":" wrote a plan and waits for approval.""#,
        &format!(r#""content":[{{"text":{plan_json},"type":"text"}}],"type":"codeBlock""#),
        r#""text":"/recac approve""#,
        r#""text":" to implement it, or ""#,
        r#""text":"/recac reject <why>""#,
        r#""text":" for a new plan.""#,
        &format!(
            "#recac-feedback/{}/planned/1",
            task.metadata.uid.clone().unwrap_or_default()
        ),
    ] {
        assert!(waiting.contains(part), "{part} missing in {waiting}");
    }
    assert_eq!(waiting.matches("alert(1)").count(), 1, "{waiting}");
    assert!(!waiting.contains("ghp_Z9y8X7w6V5u4T3s2R1q0P9o8N7m6L5k4J3i2"));
    assert!(!waiting.contains(r#""href":"http://x""#), "{waiting}");
    assert!(!waiting.contains("/recac stop"), "nothing runs: {waiting}");
    let issue = sim.issue(&key).expect("issue");
    assert_eq!(issue.status, "Plan Review");
    assert_eq!(transitions_done(&sim), 1);
    // Quiet while the plan waits: nothing more is written.
    let writes = comment_writes(&sim, &key).len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(comment_writes(&sim, &key).len(), writes);

    decide_plan(&s, &planner, "approved", "Ada Lovelace").await;
    task_where(&s, &planner, "the plan approved", |t| {
        phase(t) == Some(TaskPhase::Succeeded)
            && condition(t, "Succeeded").map(|c| c.1)
                == Some(recac_api::reasons::PLAN_APPROVED.into())
    })
    .await;
    let (implementer, yaml) = run_yaml(&key, 2, "succeed", 0);
    create_task(&s, &yaml).await;
    let done = task_where(&s, &implementer, "the implementation recorded", |t| {
        has_reported(t, "succeeded/1")
    })
    .await;
    assert_eq!(
        feedback_of(&done).ticket_updated.as_deref(),
        Some("succeeded/1")
    );
    let body = wait_for("the implementation in the comment", LONG, || async {
        bodies(&sim, &key)
            .first()
            .filter(|b| b.contains("recac finished this ticket"))
            .cloned()
    })
    .await;
    assert_eq!(comment_posts(&sim, &key).len(), 1, "still one comment");
    for part in [
        r#""text":"Run 1""#,
        r#""text":"'s plan was approved by Ada Lovelace.""#,
        r#""text":"Run 2""#,
        r#""href":"https://github.com/org/repo/pull/1""#,
    ] {
        assert!(body.contains(part), "{part} missing in {body}");
    }
    assert!(
        body.find("Run 1").unwrap_or(usize::MAX) < body.find("Run 2").unwrap_or(0),
        "{body}"
    );
    for absent in [
        "codeBlock",
        "alert(1)",
        "/recac approve",
        "waits for approval",
        "recac-failed",
    ] {
        assert!(!body.contains(absent), "{absent} in {body}");
    }
    let planner_task = Api::<AgentTask>::namespaced(s.client.clone(), &s.ns)
        .get(&planner)
        .await
        .expect("task");
    let fb = feedback_of(&planner_task);
    assert!(
        fb.reported.iter().all(|k| !k.starts_with("succeeded/")),
        "{fb:?}"
    );
    assert_eq!(fb.ticket_updated.as_deref(), Some("planned/1"));
    let issue = sim.issue(&key).expect("issue");
    assert_eq!(issue.status, "In Review");
    assert_eq!(issue.labels, ["recac-agent"]);
    assert_eq!(
        transitions_done(&sim),
        2,
        "the plan moved the ticket once, the implementation once"
    );
    operator.stop().await;
}

/// With a comment per report the plan is one comment (Data Center: wiki markup, the plan in a
/// noformat block), with the plan's transition; its rejection is no failure: no comment and
/// no failed actions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_is_one_comment_and_its_rejection_is_not_a_failure() {
    let s = setup("fb-plan").await;
    let sim = JiraSim::datacenter().await.expect("sim");
    sim.set_workflow(plan_review_workflow());
    let key = ticket(&sim);
    let mut config = feedback_config();
    config.comment_on_dispatch = false;
    config.planned.transition = Some("Review Plan".into());
    config.planned.add_labels = vec!["recac-plan".into()];
    config.failed.transition = Some("Stop Progress".into());
    config.failed.add_labels = vec!["recac-failed".into()];
    let operator = Operator::start(
        s.config.clone(),
        &s.ns,
        feedback(&sim, Flavor::Datacenter, config),
    )
    .await;
    let (planner, yaml) = planning_yaml(&key, 1);
    create_task(&s, &yaml).await;
    let task = task_where(&s, &planner, "the plan recorded", |t| {
        has_reported(t, "planned/1")
    })
    .await;
    assert_eq!(reported(&task), ["planned/1"]);
    let fb = feedback_of(&task);
    assert_eq!(fb.ticket_updated.as_deref(), Some("planned/1"));
    assert_eq!(fb.reported_attempt, Some(1));
    let b = bodies(&sim, &key);
    assert_eq!(b.len(), 1, "{b:#?}");
    let wiki = &b[0];
    let block = format!("{{noformat}}\n{SHOWN_PLAN}\n{{noformat}}");
    assert!(
        wiki.starts_with(&format!(
            "recac wrote a plan for this ticket and waits for approval.\n\n{block}\n\nReply {{{{/recac approve}}}} to implement it, or {{{{/recac reject <why>}}}} for a new plan.\n\n[recac|https://github.com/recac-io/recac#recac-feedback/"
        )),
        "{wiki}"
    );
    assert!(
        wiki.ends_with(&format!("/planned/1] · AgentTask {}/{planner}", s.ns)),
        "{wiki}"
    );
    assert!(
        comment_posts(&sim, &key)
            .iter()
            .all(|c| c.path.starts_with("/rest/api/2/"))
    );
    let issue = sim.issue(&key).expect("issue");
    assert_eq!(issue.status, "Plan Review");
    assert_eq!(issue.labels, ["recac-agent", "recac-plan"]);
    assert_eq!(transitions_done(&sim), 1);

    decide_plan(&s, &planner, "rejected", "Ada").await;
    task_where(&s, &planner, "the plan rejected", |t| {
        phase(t) == Some(TaskPhase::Failed)
            && condition(t, "Failed").map(|c| c.1) == Some(recac_api::reasons::PLAN_REJECTED.into())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        comment_posts(&sim, &key).len(),
        1,
        "the rejection is no report"
    );
    let task = Api::<AgentTask>::namespaced(s.client.clone(), &s.ns)
        .get(&planner)
        .await
        .expect("task");
    assert_eq!(reported(&task), ["planned/1"]);
    assert_eq!(
        feedback_of(&task).ticket_updated.as_deref(),
        Some("planned/1")
    );
    let issue = sim.issue(&key).expect("issue");
    assert_eq!(issue.status, "Plan Review");
    assert_eq!(issue.labels, ["recac-agent", "recac-plan"]);
    assert_eq!(transitions_done(&sim), 1);
    operator.stop().await;
}

/// Figures for the README: seconds from the agent finishing to its outcome comment existing
/// (p50/p99 over 100 tasks) and Jira requests per finished task. Run with
/// `cargo test -p recac-tests --test feedback_controller -- --ignored --nocapture figures`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement (about a minute), not a check"]
async fn figures_for_100_tasks() {
    const TASKS: usize = 100;
    let s = setup("fb-figures").await;
    let sim = JiraSim::cloud().await.expect("sim");
    let operator = Operator::start(
        s.config.clone(),
        &s.ns,
        feedback(&sim, Flavor::Cloud, feedback_config()),
    )
    .await;
    let started = std::time::Instant::now();
    let mut keys = Vec::new();
    for i in 0..TASKS {
        let key = ticket(&sim);
        create_task(&s, &task_yaml(&format!("t{i}"), Some(&key), "timed", 0, "")).await;
        keys.push(key);
    }
    let mut latencies: Vec<f64> = Vec::new();
    for key in &keys {
        let bodies = wait_for(
            &format!("the outcome on {key}"),
            Duration::from_secs(600),
            || async {
                let issue = sim.issue(key)?;
                let done = issue
                    .comments
                    .iter()
                    .find(|c| c.body.to_string().contains("agent finished at"))?;
                Some((done.body.to_string(), done.created))
            },
        )
        .await;
        let (body, created) = bodies;
        let finished: f64 = body
            .split("agent finished at ")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .and_then(|t| t.trim().parse().ok())
            .expect("the agent's finishing time");
        latencies.push(created.as_millisecond() as f64 / 1000.0 - finished);
    }
    let elapsed = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1)];
    let requests = sim.calls().len();
    let posts = sim.calls().iter().filter(|c| c.method == "POST").count();
    println!(
        "feedback figures: {TASKS} tasks in {:.1}s; agent finished -> outcome comment: p50 {:.2}s, p99 {:.2}s, max {:.2}s; Jira requests {requests} ({:.2} per finished task, {posts} POSTs)",
        elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        latencies.last().copied().unwrap_or_default(),
        requests as f64 / TASKS as f64,
    );
    // The outcome's comment, and the "picked up" one when the agent was seen running (a
    // quick agent may finish before its task's status says it runs).
    for key in &keys {
        let posts = comment_posts(&sim, key).len();
        assert!((1..=2).contains(&posts), "{key}: {posts} comments");
    }
    operator.stop().await;
}

/// Figures for the README, live comments: the Jira writes of one ticket whose run fails
/// twice and then succeeds, and for 100 quick tasks the Jira requests per finished task and
/// the seconds from the agent finishing to the comment telling it. Run with
/// `cargo test -p recac-tests --test feedback_controller -- --ignored --nocapture figures`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement (about a minute), not a check"]
async fn figures_for_live_comments() {
    const TASKS: usize = 100;
    let s = setup("fb-figures-live").await;
    let sim = JiraSim::cloud().await.expect("sim");
    let operator = Operator::start(
        s.config.clone(),
        &s.ns,
        feedback(&sim, Flavor::Cloud, live_config()),
    )
    .await;

    let key = ticket(&sim);
    let (name, yaml) = run_yaml(&key, 1, "flaky", 2);
    create_task(&s, &yaml).await;
    task_where(&s, &name, "the outcome recorded", |t| {
        has_reported(t, "succeeded/3")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let on_ticket = |c: &CallRecord| {
        c.path.ends_with(&format!("/issue/{key}")) || c.path.contains(&format!("/issue/{key}/"))
    };
    let requests = sim.calls().iter().filter(|c| on_ticket(c)).count();
    println!(
        "live figures: a run with two retries (3 attempts): {} comment made, {} edits of it, {requests} Jira requests for the ticket",
        comment_posts(&sim, &key).len(),
        comment_edits(&sim, &key).len(),
    );
    sim.clear_calls();

    let started = std::time::Instant::now();
    let mut keys = Vec::new();
    for i in 0..TASKS {
        let key = ticket(&sim);
        let yaml = task_yaml(&format!("t{i}"), Some(&key), "timed", 0, "").replace(
            &format!("  name: t{i}\n"),
            &format!("  name: t{i}\n  labels: {{recac.io/ticket: {key}, recac.io/run: \"1\"}}\n"),
        );
        create_task(&s, &yaml).await;
        keys.push(key);
    }
    let mut latencies: Vec<f64> = Vec::new();
    for key in &keys {
        let (body, updated) = wait_for(
            &format!("the outcome on {key}"),
            Duration::from_secs(600),
            || async {
                let issue = sim.issue(key)?;
                let comment = issue.comments.first()?;
                let body = comment.body.to_string();
                body.contains("agent finished at")
                    .then_some((body, comment.updated))
            },
        )
        .await;
        let finished: f64 = body
            .split("agent finished at ")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .and_then(|t| t.trim().parse().ok())
            .expect("the agent's finishing time");
        latencies.push(updated.as_millisecond() as f64 / 1000.0 - finished);
    }
    let elapsed = started.elapsed();
    let api: Api<AgentTask> = Api::namespaced(s.client.clone(), &s.ns);
    wait_for("every outcome recorded", LONG, || async {
        let list = api.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .filter(|t| {
                t.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with('t'))
            })
            .all(|t| has_reported(t, "succeeded/1"))
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1)];
    let calls = sim.calls();
    let count = |method: &str| calls.iter().filter(|c| c.method == method).count();
    println!(
        "live figures: {TASKS} tasks in {:.1}s; agent finished -> comment telling it: p50 {:.2}s, p99 {:.2}s, max {:.2}s; Jira requests {} ({:.2} per finished task: {} GET, {} POST, {} PUT)",
        elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        latencies.last().copied().unwrap_or_default(),
        calls.len(),
        calls.len() as f64 / TASKS as f64,
        count("GET"),
        count("POST"),
        count("PUT"),
    );
    for key in &keys {
        assert_eq!(comment_posts(&sim, key).len(), 1, "{key}");
    }
    operator.stop().await;
}
