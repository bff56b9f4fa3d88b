//! The task controller against a real kube-apiserver, kube-controller-manager's job
//! controller and the local node agent, which runs each agent pod's command as a process.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use recac_api::{AgentTask, TaskPhase};
use recac_operator::OperatorSetup;
use recac_runtime::config::OperatorSettings;
use recac_task_controller::{AgentDefaults, TaskControllerConfig};
use recac_testenv::{ControlPlane, ControlPlaneOptions, NodeAgent, NodeAgentOptions};
use recac_tests::{
    RunningOperator, control_plane, http_get, kubectl, operator_service_account_config,
    recac_binary, text, wait_for,
};

/// Stands in for `recac start`: behaves as FAKE_MODE says and reports like the agent.
const FAKE_AGENT: &str = r#"
echo "agent: task=$RECAC_TASK attempt=$RECAC_ATTEMPT branch=$RECAC_BRANCH ticket=$RECAC_TICKET"
case "$FAKE_MODE" in
  fail) echo "attempt $RECAC_ATTEMPT failed"; exit 1 ;;
  fail-first) if [ "$RECAC_ATTEMPT" = 1 ]; then echo "attempt 1 failed"; exit 1; fi ;;
  give-up) printf '{"outcome":"gaveUp","summary":"the repository does not exist"}' > "$RECAC_RESULT_PATH"; exit 3 ;;
  sleep) sleep 300 ;;
  sleep-first) if [ "$RECAC_ATTEMPT" = 1 ]; then sleep 300; fi ;;
  slow) sleep "${FAKE_SLEEP:-5}" ;;
  partial-first)
    if [ "$RECAC_ATTEMPT" = 1 ]; then
      printf '{"outcome":"partial","branch":"%s","commit":"part1","partial":{"cause":"deadline","left":"the rest"},"usage":[{"provider":"openai","model":"gpt-x","inputTokens":1000,"outputTokens":200}]}' "$RECAC_BRANCH" > "$RECAC_RESULT_PATH"
      exit 1
    fi
    sleep 3
    printf '{"outcome":"succeeded","branch":"%s","commit":"whole2","summary":"margin=%s tokens=%s cost=%s %s","usage":[{"provider":"openai","model":"gpt-x","inputTokens":500,"outputTokens":100}]}' "$RECAC_BRANCH" "$RECAC_DEADLINE_MARGIN_SECONDS" "$RECAC_BUDGET_TOKENS" "$RECAC_BUDGET_COST" "$RECAC_BUDGET_CURRENCY" > "$RECAC_RESULT_PATH"
    exit 0 ;;
  budget-partial)
    printf '{"outcome":"partial","branch":"%s","commit":"part1","partial":{"cause":"budget"},"usage":[{"provider":"openai","model":"gpt-x","inputTokens":10,"outputTokens":10}]}' "$RECAC_BRANCH" > "$RECAC_RESULT_PATH"
    exit 3 ;;
  overspend)
    printf '{"outcome":"failed","usage":[{"provider":"openai","model":"gpt-x","inputTokens":900,"outputTokens":300}]}' > "$RECAC_RESULT_PATH"
    exit 1 ;;
  plan)
    if [ "$RECAC_MODE" != plan ]; then echo "not in plan mode"; exit 3; fi
    printf '{"outcome":"planned","branch":"%s","plan":"1. raise the login timeout\\n2. test it"}' "$RECAC_BRANCH" > "$RECAC_RESULT_PATH"
    exit 0 ;;
esac
printf '{"outcome":"succeeded","branch":"%s","commit":"c0ffee%s","summary":"done in attempt %s"}' "$RECAC_BRANCH" "$RECAC_ATTEMPT" "$RECAC_ATTEMPT" > "$RECAC_RESULT_PATH"
"#;

const LONG: Duration = Duration::from_secs(60);

struct Operator;

impl Operator {
    async fn start(config: kube::Config, namespace: &str, cap: usize) -> RunningOperator {
        Self::start_with(
            config,
            namespace,
            cap,
            AgentDefaults {
                command: vec!["sh".into(), "-c".into(), FAKE_AGENT.into()],
                ..Default::default()
            },
        )
        .await
    }

    /// [`Operator::start`] with the given agent defaults.
    async fn start_with(
        config: kube::Config,
        namespace: &str,
        cap: usize,
        agent: AgentDefaults,
    ) -> RunningOperator {
        let setup = OperatorSetup {
            operator: OperatorSettings {
                namespaces: vec![namespace.to_string()],
                ..Default::default()
            },
            task_controller: TaskControllerConfig {
                max_concurrent_tasks: cap,
                retry_backoff_seconds: 1,
                max_retry_backoff_seconds: 2,
                queue_poll_seconds: 1,
                ..Default::default()
            },
            agent,
            instance: "test".into(),
            feedback: None,
            sources: None,
        };
        RunningOperator::start(config, setup, Duration::from_secs(10)).await
    }
}

struct Setup {
    plane: &'static ControlPlane,
    client: Client,
    config: kube::Config,
    ns: String,
    node: NodeAgent,
}

async fn setup(prefix: &str) -> Setup {
    setup_with_env(prefix, Vec::new()).await
}

/// [`setup`] with `node_env` given to every container the node agent runs.
async fn setup_with_env(prefix: &str, node_env: Vec<(String, String)>) -> Setup {
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
            node_env,
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
        node,
    }
}

fn task_yaml(name: &str, mode: &str, max_retries: i32, extra: &str) -> String {
    format!(
        r#"
apiVersion: recac.io/v1alpha1
kind: AgentTask
metadata:
  name: {name}
spec:
  prompt: fix the login timeout
  repository:
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
    timeout: Duration,
    pred: impl Fn(&AgentTask) -> bool,
) -> AgentTask {
    let api: Api<AgentTask> = Api::namespaced(s.client.clone(), &s.ns);
    wait_for(what, timeout, || {
        let api = api.clone();
        let pred = &pred;
        async move {
            let task = api.get(name).await.ok()?;
            pred(&task).then_some(task)
        }
    })
    .await
}

fn phase(task: &AgentTask) -> Option<TaskPhase> {
    task.status.as_ref().and_then(|s| s.phase)
}

fn condition(task: &AgentTask, type_: &str) -> Option<(String, String)> {
    task.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

async fn jobs_of(s: &Setup, task: &str) -> Vec<Job> {
    let api: Api<Job> = Api::namespaced(s.client.clone(), &s.ns);
    api.list(&ListParams::default().labels(&format!("recac.io/task={task}")))
        .await
        .expect("jobs list")
        .items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_runs_to_success_with_its_result_events_logs_and_metrics() {
    let s = setup("tc-success").await;
    let operator = Operator::start(s.config.clone(), &s.ns, 10).await;
    let yaml = task_yaml(
        "fix-login",
        "succeed",
        2,
        "  ticket:\n    source: jira\n    key: PROJ-42\n",
    );
    create_task(&s, &yaml).await;

    let task = task_where(&s, "fix-login", "Succeeded", LONG, |t| {
        phase(t) == Some(TaskPhase::Succeeded)
    })
    .await;
    let status = task.status.clone().expect("status");
    assert_eq!(status.attempt, Some(1));
    assert_eq!(status.retries, Some(0));
    assert_eq!(status.job_name.as_deref(), Some("fix-login-a1"));
    assert_eq!(status.branch.as_deref(), Some("recac/PROJ-42"));
    assert_eq!(status.commit.as_deref(), Some("c0ffee1"));
    assert!(status.start_time.is_some() && status.completion_time.is_some());
    assert_eq!(status.observed_generation, task.metadata.generation);
    assert_eq!(
        condition(&task, "Succeeded").map(|c| c.0),
        Some("True".into())
    );
    assert!(
        status
            .message
            .unwrap_or_default()
            .contains("done in attempt 1")
    );

    // The Job: owned, labelled, hardened.
    let jobs = jobs_of(&s, "fix-login").await;
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    let labels = job.labels();
    assert_eq!(labels.get("app").map(String::as_str), Some("recac-agent"));
    assert_eq!(
        labels.get("recac.io/attempt").map(String::as_str),
        Some("1")
    );
    assert_eq!(
        labels.get("recac.io/ticket").map(String::as_str),
        Some("PROJ-42")
    );
    let owner = &job.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("AgentTask", Some(true))
    );
    assert_eq!(owner.uid, task.uid().unwrap_or_default());
    let pod_spec = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("pod spec");
    assert_eq!(pod_spec.automount_service_account_token, Some(false));

    // kubectl logs through the apiserver and the node agent.
    let out = kubectl(s.plane, &["logs", "-n", &s.ns, "job/fix-login-a1"]);
    assert!(out.status.success(), "kubectl logs: {}", text(&out.stderr));
    assert!(
        text(&out.stdout)
            .contains("agent: task=fix-login attempt=1 branch=recac/PROJ-42 ticket=PROJ-42"),
        "{}",
        text(&out.stdout)
    );

    // Events on the task.
    let events: Api<Event> = Api::namespaced(s.client.clone(), &s.ns);
    let reasons: BTreeSet<String> = wait_for("events", LONG, || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            let reasons: BTreeSet<String> = list
                .items
                .iter()
                .filter(|e| {
                    e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("fix-login")
                })
                .filter_map(|e| e.reason.clone())
                .collect();
            reasons.contains("Succeeded").then_some(reasons)
        }
    })
    .await;
    // The first dispatch is told by the Dispatched condition, not by an Event.
    assert!(!reasons.contains("Dispatched"), "{reasons:?}");
    let dispatched = task
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Dispatched"))
        .map(|c| c.status.clone());
    assert_eq!(dispatched.as_deref(), Some("True"));

    // An idle, finished task costs no writes.
    let version = task.resource_version();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let api: Api<AgentTask> = Api::namespaced(s.client.clone(), &s.ns);
    assert_eq!(
        api.get("fix-login").await.expect("task").resource_version(),
        version
    );

    // Metrics, health and readiness.
    let (code, body) = http_get(operator.http, "/metrics").await;
    assert_eq!(code, 200);
    assert!(body.contains("recac_reconciles_total"), "{body}");
    assert!(body.contains("recac_jobs_created_total 1"), "{body}");
    assert!(
        body.contains("recac_tasks{phase=\"Succeeded\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("recac_dispatch_latency_seconds_count 1"),
        "{body}"
    );
    assert_eq!(http_get(operator.http, "/healthz").await.0, 200);
    assert_eq!(http_get(operator.http, "/readyz").await.0, 200);
    operator.stop().await;
    s.node.shutdown().await.expect("node agent stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attempt_is_retried_with_a_new_job() {
    let s = setup("tc-retry").await;
    let operator = Operator::start(s.config.clone(), &s.ns, 10).await;
    create_task(&s, &task_yaml("flaky", "fail-first", 2, "")).await;
    let task = task_where(&s, "flaky", "Succeeded", LONG, |t| {
        phase(t) == Some(TaskPhase::Succeeded)
    })
    .await;
    let status = task.status.expect("status");
    assert_eq!(status.attempt, Some(2));
    assert_eq!(status.retries, Some(1));
    assert_eq!(status.job_name.as_deref(), Some("flaky-a2"));
    assert_eq!(status.commit.as_deref(), Some("c0ffee2"));
    let names: BTreeSet<String> = jobs_of(&s, "flaky")
        .await
        .iter()
        .map(|j| j.name_any())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["flaky-a1".to_string(), "flaky-a2".to_string()])
    );
    operator.stop().await;
    s.node.shutdown().await.expect("node agent stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_and_giving_up_end_in_failed() {
    let s = setup("tc-fail").await;
    let operator = Operator::start(s.config.clone(), &s.ns, 10).await;
    create_task(&s, &task_yaml("always-fails", "fail", 1, "")).await;
    create_task(&s, &task_yaml("gives-up", "give-up", 3, "")).await;

    let task = task_where(&s, "always-fails", "Failed", LONG, |t| {
        phase(t) == Some(TaskPhase::Failed)
    })
    .await;
    let status = task.status.clone().expect("status");
    assert_eq!(status.attempt, Some(2));
    assert_eq!(status.retries, Some(1));
    assert_eq!(
        condition(&task, "Failed"),
        Some(("True".into(), "RetriesExhausted".into()))
    );
    assert_eq!(jobs_of(&s, "always-fails").await.len(), 2);

    let task = task_where(&s, "gives-up", "Failed", LONG, |t| {
        phase(t) == Some(TaskPhase::Failed)
    })
    .await;
    assert_eq!(task.status.as_ref().and_then(|s| s.attempt), Some(1));
    assert_eq!(
        condition(&task, "Failed"),
        Some(("True".into(), "GaveUp".into()))
    );
    assert!(
        task.status
            .and_then(|s| s.message)
            .unwrap_or_default()
            .contains("PodFailurePolicy")
    );
    assert_eq!(jobs_of(&s, "gives-up").await.len(), 1);
    operator.stop().await;
    s.node.shutdown().await.expect("node agent stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_fails_the_attempt() {
    let s = setup("tc-deadline").await;
    let operator = Operator::start(s.config.clone(), &s.ns, 10).await;
    create_task(
        &s,
        &task_yaml("too-slow", "sleep", 0, "  timeoutSeconds: 60\n"),
    )
    .await;
    let task = task_where(
        &s,
        "too-slow",
        "Failed by deadline",
        Duration::from_secs(120),
        |t| phase(t) == Some(TaskPhase::Failed),
    )
    .await;
    let message = task.status.and_then(|s| s.message).unwrap_or_default();
    assert!(message.contains("DeadlineExceeded"), "{message}");
    operator.stop().await;
    s.node.shutdown().await.expect("node agent stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_deleted_from_outside_counts_as_a_failed_attempt() {
    let s = setup("tc-deleted").await;
    let operator = Operator::start(s.config.clone(), &s.ns, 10).await;
    create_task(&s, &task_yaml("lost-job", "sleep-first", 2, "")).await;
    task_where(&s, "lost-job", "Running", LONG, |t| {
        phase(t) == Some(TaskPhase::Running)
    })
    .await;

    let jobs: Api<Job> = Api::namespaced(s.client.clone(), &s.ns);
    jobs.delete("lost-job-a1", &DeleteParams::background())
        .await
        .expect("job deleted");
    let task = task_where(&s, "lost-job", "Succeeded on attempt 2", LONG, |t| {
        phase(t) == Some(TaskPhase::Succeeded)
    })
    .await;
    assert_eq!(task.status.as_ref().and_then(|s| s.attempt), Some(2));
    assert_eq!(task.status.as_ref().and_then(|s| s.retries), Some(1));
    operator.stop().await;
    s.node.shutdown().await.expect("node agent stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_restart_mid_run_never_makes_a_second_job() {
    let s = setup("tc-restart").await;

    // A crash between creating a Job and recording it: the Job exists, status does not say so.
    let task = create_task(&s, &task_yaml("pre-created", "slow", 2, "")).await;
    let job = recac_task_controller::job_builder::build_job(
        &task,
        1,
        "recac/pre-created",
        &AgentDefaults {
            command: vec!["sh".into(), "-c".into(), FAKE_AGENT.into()],
            ..Default::default()
        },
        false,
    );
    let jobs: Api<Job> = Api::namespaced(s.client.clone(), &s.ns);
    jobs.create(&PostParams::default(), &job)
        .await
        .expect("job");

    let operator = Operator::start(s.config.clone(), &s.ns, 10).await;
    create_task(&s, &task_yaml("restarted", "slow", 2, "")).await;
    task_where(&s, "restarted", "Running", LONG, |t| {
        phase(t) == Some(TaskPhase::Running)
    })
    .await;
    operator.kill().await;

    let operator = Operator::start(s.config.clone(), &s.ns, 10).await;
    for name in ["restarted", "pre-created"] {
        let task = task_where(&s, name, "Succeeded", LONG, |t| {
            phase(t) == Some(TaskPhase::Succeeded)
        })
        .await;
        assert_eq!(
            task.status.as_ref().and_then(|s| s.attempt),
            Some(1),
            "{name}"
        );
        assert_eq!(
            jobs_of(&s, name).await.len(),
            1,
            "{name}: a second Job was made"
        );
    }
    operator.stop().await;
    s.node.shutdown().await.expect("node agent stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_holds_dispatch_and_suspends_a_running_job() {
    let s = setup("tc-suspend").await;
    let operator = Operator::start(s.config.clone(), &s.ns, 10).await;
    let api: Api<AgentTask> = Api::namespaced(s.client.clone(), &s.ns);

    create_task(&s, &task_yaml("held", "succeed", 2, "  suspend: true\n")).await;
    task_where(&s, "held", "Suspended condition", LONG, |t| {
        condition(t, "Suspended").map(|c| c.0) == Some("True".into())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        jobs_of(&s, "held").await.is_empty(),
        "a suspended task was dispatched"
    );
    let resume = serde_json::json!({"spec": {"suspend": false}});
    api.patch("held", &PatchParams::default(), &Patch::Merge(&resume))
        .await
        .expect("resume");
    task_where(&s, "held", "Succeeded after resume", LONG, |t| {
        phase(t) == Some(TaskPhase::Succeeded)
    })
    .await;

    create_task(
        &s,
        &task_yaml(
            "paused",
            "slow",
            2,
            "      - name: FAKE_SLEEP\n        value: \"12\"\n",
        ),
    )
    .await;
    task_where(&s, "paused", "Running", LONG, |t| {
        phase(t) == Some(TaskPhase::Running)
    })
    .await;
    let suspend = serde_json::json!({"spec": {"suspend": true}});
    api.patch("paused", &PatchParams::default(), &Patch::Merge(&suspend))
        .await
        .expect("suspend");
    let jobs: Api<Job> = Api::namespaced(s.client.clone(), &s.ns);
    wait_for("the Job to be suspended", LONG, || {
        let jobs = jobs.clone();
        async move {
            let job = jobs.get("paused-a1").await.ok()?;
            job.spec.and_then(|s| s.suspend).filter(|s| *s)
        }
    })
    .await;
    let task = task_where(&s, "paused", "Pending while suspended", LONG, |t| {
        phase(t) == Some(TaskPhase::Pending)
    })
    .await;
    assert_eq!(
        condition(&task, "Suspended").map(|c| c.0),
        Some("True".into())
    );
    api.patch("paused", &PatchParams::default(), &Patch::Merge(&resume))
        .await
        .expect("resume");
    let task = task_where(&s, "paused", "Succeeded after resume", LONG, |t| {
        phase(t) == Some(TaskPhase::Succeeded)
    })
    .await;
    assert_eq!(task.status.and_then(|s| s.attempt), Some(1));
    operator.stop().await;
    s.node.shutdown().await.expect("node agent stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_cap_queues_tasks_in_creation_order() {
    let s = setup("tc-cap").await;
    let operator = Operator::start(s.config.clone(), &s.ns, 2).await;
    let names = ["q1", "q2", "q3", "q4", "q5"];
    for name in names {
        create_task(
            &s,
            &task_yaml(
                name,
                "slow",
                0,
                "      - name: FAKE_SLEEP\n        value: \"3\"\n",
            ),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let jobs: Api<Job> = Api::namespaced(s.client.clone(), &s.ns);
    let api: Api<AgentTask> = Api::namespaced(s.client.clone(), &s.ns);
    let mut max_live = 0;
    let mut saw_queued = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let list = jobs.list(&ListParams::default()).await.expect("jobs");
        let live = list
            .items
            .iter()
            .filter(|j| {
                !j.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| {
                        c.iter().any(|c| {
                            (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True"
                        })
                    })
            })
            .count();
        max_live = max_live.max(live);
        let tasks = api.list(&ListParams::default()).await.expect("tasks").items;
        saw_queued |= tasks
            .iter()
            .any(|t| condition(t, "Queued").map(|c| c.0) == Some("True".into()));
        if tasks.iter().all(|t| phase(t) == Some(TaskPhase::Succeeded)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "tasks did not all succeed"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(
        max_live <= 2,
        "{max_live} Jobs ran at once under a cap of 2"
    );
    assert!(saw_queued, "no task was ever queued");
    // Dispatch follows creation order.
    let tasks = api.list(&ListParams::default()).await.expect("tasks").items;
    let mut by_start: Vec<(String, String)> = tasks
        .iter()
        .map(|t| {
            let start = t
                .status
                .as_ref()
                .and_then(|s| s.start_time.clone())
                .map(|t| t.0.to_string())
                .unwrap_or_default();
            (start, t.name_any())
        })
        .collect();
    by_start.sort();
    let order: Vec<&str> = by_start.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(order, names, "dispatch order");
    operator.stop().await;
    s.node.shutdown().await.expect("node agent stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_task_removes_its_jobs_and_pods() {
    let s = setup("tc-delete").await;
    let operator = Operator::start(s.config.clone(), &s.ns, 10).await;
    create_task(&s, &task_yaml("doomed", "sleep", 2, "")).await;
    task_where(&s, "doomed", "Running", LONG, |t| {
        phase(t) == Some(TaskPhase::Running)
    })
    .await;
    let api: Api<AgentTask> = Api::namespaced(s.client.clone(), &s.ns);
    api.delete("doomed", &DeleteParams::default())
        .await
        .expect("deleted");
    let jobs: Api<Job> = Api::namespaced(s.client.clone(), &s.ns);
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns);
    wait_for("Jobs and pods to be gone", LONG, || {
        let jobs = jobs.clone();
        let pods = pods.clone();
        async move {
            let j = jobs
                .list(&ListParams::default().labels("recac.io/task=doomed"))
                .await
                .ok()?;
            let p = pods
                .list(&ListParams::default().labels("recac.io/task=doomed"))
                .await
                .ok()?;
            (j.items.is_empty() && p.items.is_empty()).then_some(())
        }
    })
    .await;
    operator.stop().await;
    s.node.shutdown().await.expect("node agent stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_rbac_is_enough_for_the_operator() {
    let s = setup("tc-rbac").await;
    let config = operator_service_account_config(s.plane).await;
    let client = Client::try_from(config.clone()).expect("client");
    // The ServiceAccount may not touch what the operator never needs.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &s.ns);
    assert!(secrets.list(&ListParams::default()).await.is_err());

    let operator = Operator::start(config, &s.ns, 10).await;
    create_task(&s, &task_yaml("least-privilege", "fail-first", 2, "")).await;
    let task = task_where(&s, "least-privilege", "Succeeded", LONG, |t| {
        phase(t) == Some(TaskPhase::Succeeded)
    })
    .await;
    let status = task.status.expect("status");
    assert_eq!(status.attempt, Some(2));
    assert_eq!(status.commit.as_deref(), Some("c0ffee2"));

    // Suspending and resuming a running Job needs the Job patch permission.
    let slow = "      - name: FAKE_SLEEP\n        value: \"8\"\n";
    create_task(&s, &task_yaml("paused", "slow", 0, slow)).await;
    task_where(&s, "paused", "Running", LONG, |t| {
        phase(t) == Some(TaskPhase::Running)
    })
    .await;
    let api: Api<AgentTask> = Api::namespaced(s.client.clone(), &s.ns);
    let jobs: Api<Job> = Api::namespaced(s.client.clone(), &s.ns);
    for suspend in [true, false] {
        let patch = serde_json::json!({"spec": {"suspend": suspend}});
        api.patch("paused", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("suspend toggled");
        wait_for("the Job's suspend to follow the task", LONG, || {
            let jobs = jobs.clone();
            async move {
                let job = jobs.get("paused-a1").await.ok()?;
                (job.spec.and_then(|s| s.suspend) == Some(suspend)).then_some(())
            }
        })
        .await;
    }
    task_where(&s, "paused", "Succeeded", LONG, |t| {
        phase(t) == Some(TaskPhase::Succeeded)
    })
    .await;

    let (_, metrics) = http_get(operator.http, "/metrics").await;
    assert!(
        !metrics.contains("recac_reconcile_errors_total{"),
        "{metrics}"
    );
    assert!(
        metrics.contains("recac_event_publish_errors_total 0"),
        "{metrics}"
    );
    operator.stop().await;
    s.node.shutdown().await.expect("node agent stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_cannot_dispatch_does_not_block_the_queue() {
    let s = setup("tc-blocked").await;
    // A Job with the oldest task's deterministic name that the task does not own.
    let jobs: Api<Job> = Api::namespaced(s.client.clone(), &s.ns);
    let foreign: Job = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "blocked-a1"},
        "spec": {
            "suspend": true,
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "x", "image": "x"}]}}
        }
    }))
    .expect("job json");
    jobs.create(&PostParams::default(), &foreign)
        .await
        .expect("foreign job");

    let operator = Operator::start(s.config.clone(), &s.ns, 1).await;
    create_task(&s, &task_yaml("blocked", "succeed", 0, "")).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    create_task(&s, &task_yaml("healthy", "succeed", 0, "")).await;

    let blocked = task_where(&s, "blocked", "a DispatchFailed condition", LONG, |t| {
        condition(t, "Dispatched").map(|c| c.1) == Some("DispatchFailed".into())
    })
    .await;
    let message = blocked.status.and_then(|s| s.message).unwrap_or_default();
    assert!(message.contains("not owned by AgentTask"), "{message}");
    task_where(
        &s,
        "healthy",
        "Succeeded past the blocked task",
        LONG,
        |t| phase(t) == Some(TaskPhase::Succeeded),
    )
    .await;
    operator.stop().await;
    s.node.shutdown().await.expect("node agent stops");
}

/// `agent.caBundle`, a task's own `spec.agent.caBundle` (what a source's `template.caBundle`
/// sets) and `agent.ssh.knownHosts` reach the agent as read-only files through the Job, and
/// the schema refuses a bundle that names both a ConfigMap and a Secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_bundles_and_known_hosts_are_mounted_for_the_agent() {
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    let s = setup("tc-trust").await;
    let maps: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns);
    for (name, key, value) in [
        ("operator-ca", "ca.crt", "OPERATOR-CA-PEM"),
        ("team-ca", "bundle.pem", "TEAM-CA-PEM"),
    ] {
        let map: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "data": {key: value}
        }))
        .expect("config map json");
        maps.create(&PostParams::default(), &map)
            .await
            .expect("config map");
    }
    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &s.ns);
    let hosts: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "git-hosts"},
        "stringData": {"known_hosts": "KNOWN-HOSTS-LINE"}
    }))
    .expect("secret json");
    secrets
        .create(&PostParams::default(), &hosts)
        .await
        .expect("secret");

    // The agent reports what the files it was pointed at hold.
    let agent = r#"printf '{"outcome":"succeeded","summary":"ca=%s hosts=%s"}' "$(cat "$RECAC_CA_BUNDLE")" "$(cat "$RECAC_SSH_KNOWN_HOSTS")" > "$RECAC_RESULT_PATH""#;
    let setup = OperatorSetup {
        operator: OperatorSettings {
            namespaces: vec![s.ns.clone()],
            ..Default::default()
        },
        task_controller: TaskControllerConfig {
            queue_poll_seconds: 1,
            ..Default::default()
        },
        agent: AgentDefaults {
            command: vec!["sh".into(), "-c".into(), agent.into()],
            ca_bundle: Some(recac_task_controller::CaBundleRef {
                config_map: Some("operator-ca".into()),
                secret: None,
                key: "ca.crt".into(),
            }),
            ssh: recac_task_controller::config::AgentSsh {
                known_hosts: Some(recac_task_controller::config::KnownHostsRef {
                    config_map: None,
                    secret: Some("git-hosts".into()),
                    key: "known_hosts".into(),
                }),
            },
            ..Default::default()
        },
        instance: "test".into(),
        feedback: None,
        sources: None,
    };
    let operator = RunningOperator::start(s.config.clone(), setup, Duration::from_secs(10)).await;
    create_task(&s, &task_yaml("default-ca", "succeed", 0, "")).await;
    create_task(
        &s,
        &task_yaml("own-ca", "succeed", 0, "").replace(
            "  agent:\n",
            "  agent:\n    caBundle: {configMap: team-ca, key: bundle.pem}\n",
        ),
    )
    .await;

    for (name, ca) in [("default-ca", "OPERATOR-CA-PEM"), ("own-ca", "TEAM-CA-PEM")] {
        let task = task_where(&s, name, "Succeeded", LONG, |t| {
            phase(t) == Some(TaskPhase::Succeeded)
        })
        .await;
        let message = task.status.and_then(|s| s.message).unwrap_or_default();
        assert!(
            message.contains(&format!("ca={ca} hosts=KNOWN-HOSTS-LINE")),
            "{name}: {message}"
        );
        let job = jobs_of(&s, name).await.remove(0);
        let pod = job.spec.and_then(|s| s.template.spec).expect("pod spec");
        let read_only: Vec<(String, Option<bool>)> = pod.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .filter(|m| m.mount_path.starts_with("/var/run/recac/"))
            .map(|m| (m.mount_path.clone(), m.read_only))
            .collect();
        for path in ["/var/run/recac/ca", "/var/run/recac/ssh"] {
            assert!(
                read_only.contains(&(path.to_string(), Some(true))),
                "{read_only:?}"
            );
        }
    }

    // Exactly one of configMap and secret.
    let both: AgentTask = serde_saphyr::from_str(&task_yaml("both", "succeed", 0, "").replace(
        "  agent:\n",
        "  agent:\n    caBundle: {configMap: a, secret: b}\n",
    ))
    .expect("task yaml");
    let api: Api<AgentTask> = Api::namespaced(s.client.clone(), &s.ns);
    let err = api
        .create(&PostParams::default(), &both)
        .await
        .expect_err("refused");
    assert!(
        err.to_string()
            .contains("caBundle names exactly one of configMap or secret"),
        "{err}"
    );
    operator.stop().await;
    s.node.shutdown().await.expect("node agent stops");
}

/// git in `dir`; panics with its output when it fails.
fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

/// The real agent (`recac start`) in a pod with the secret broker (on by default): only the
/// `secrets` sidecar mounts the task's Secret; the agent gets every key through the broker's
/// socket, or it could not run at all (the Secret names its engine), and passes the one
/// `secretEnvAllow` lets through to its command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_gets_its_secrets_from_the_secret_broker() {
    use k8s_openapi::api::core::v1::Secret;
    // `recac` from the node's PATH, as an image has it: a command path under /tmp would be
    // mapped into the pod's /tmp emptyDir by the node agent (a checkout under /tmp).
    let recac = recac_binary();
    let bin = recac
        .parent()
        .expect("the binary's folder")
        .display()
        .to_string();
    let path = format!("{bin}:{}", std::env::var("PATH").unwrap_or_default());
    let s = setup_with_env("tc-broker", vec![("PATH".into(), path)]).await;

    // A repository to clone and push to.
    let work = tempfile::tempdir().expect("temp dir");
    let origin = work.path().join("origin.git");
    let seed = work.path().join("seed");
    std::fs::create_dir_all(&seed).expect("seed folder");
    git(
        work.path(),
        &[
            "init",
            "--quiet",
            "--bare",
            "--initial-branch=main",
            "origin.git",
        ],
    );
    git(&seed, &["init", "--quiet", "--initial-branch=main"]);
    std::fs::write(seed.join("README.md"), "seed\n").expect("readme");
    git(&seed, &["add", "README.md"]);
    git(&seed, &["commit", "--quiet", "-m", "seed"]);
    git(
        &seed,
        &["push", "--quiet", origin.to_str().expect("path"), "main"],
    );

    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &s.ns);
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "agent-creds"},
        "stringData": {
            "RECAC_AGENT_COMMAND": "sh",
            "RECAC_AGENT_ARGS": r#"["-c", "if [ -n \"$DB_PASSWORD\" ]; then echo has-the-password; else echo no-password; fi > from-agent.txt"]"#,
            "DB_PASSWORD": "broker-db-password-value",
        }
    }))
    .expect("secret json");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret");
    let setup = OperatorSetup {
        operator: OperatorSettings {
            namespaces: vec![s.ns.clone()],
            ..Default::default()
        },
        task_controller: TaskControllerConfig {
            queue_poll_seconds: 1,
            ..Default::default()
        },
        agent: AgentDefaults {
            command: vec!["recac".into(), "start".into()],
            secret_refs: vec!["agent-creds".into()],
            secret_env_allow: vec!["DB_PASSWORD".into()],
            env: vec![
                recac_api::EnvVarPair {
                    name: "RECAC_TEST_COMMAND".into(),
                    value: "none".into(),
                },
                recac_api::EnvVarPair {
                    name: "RECAC_PULL_REQUEST".into(),
                    value: "false".into(),
                },
            ],
            ..Default::default()
        },
        instance: "test".into(),
        feedback: None,
        sources: None,
    };
    let operator = RunningOperator::start(s.config.clone(), setup, Duration::from_secs(10)).await;
    let yaml = format!(
        r#"
apiVersion: recac.io/v1alpha1
kind: AgentTask
metadata:
  name: brokered
spec:
  prompt: write from-agent.txt
  repository:
    url: "file://{}"
    baseBranch: main
  maxRetries: 0
"#,
        origin.display()
    );
    create_task(&s, &yaml).await;
    let task = task_where(&s, "brokered", "finished", LONG, |t| {
        matches!(phase(t), Some(TaskPhase::Succeeded | TaskPhase::Failed))
    })
    .await;
    let status = task.status.clone().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &s.ns);
    let pod = pods
        .list(&ListParams::default().labels("recac.io/task=brokered"))
        .await
        .expect("pods")
        .items
        .remove(0);
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let logs = |container: &str| {
        let out = kubectl(s.plane, &["logs", "-n", &s.ns, &pod_name, "-c", container]);
        text(&out.stdout)
    };
    let (agent_log, broker_log) = (logs("agent"), logs("secrets"));
    assert_eq!(
        status.phase,
        Some(TaskPhase::Succeeded),
        "{status:?}\nagent:\n{agent_log}\nbroker:\n{broker_log}"
    );

    // The work used the Secret's settings and the allowed key; nothing printed a value.
    let branch = status.branch.clone().expect("branch");
    let file = git(&origin, &["show", &format!("{branch}:from-agent.txt")]);
    assert_eq!(file.trim(), "has-the-password");
    for log in [&agent_log, &broker_log] {
        assert!(!log.contains("broker-db-password-value"), "{log}");
    }
    assert!(
        broker_log.contains("handed the Secrets to the first connection"),
        "{broker_log}"
    );

    // The pod: the sidecar alone mounts the Secret, and stopped after the agent.
    let spec = pod.spec.clone().unwrap_or_default();
    let broker = &spec.init_containers.clone().unwrap_or_default()[0];
    assert_eq!(broker.name, "secrets");
    assert_eq!(
        broker.command,
        Some(vec!["recac".to_string(), "secret-broker".into()])
    );
    let mounts = |c: &k8s_openapi::api::core::v1::Container| -> Vec<String> {
        c.volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.clone())
            .collect()
    };
    assert!(mounts(broker).contains(&"/var/run/recac/secrets/agent-creds".to_string()));
    assert!(
        !mounts(&spec.containers[0])
            .iter()
            .any(|p| p.starts_with("/var/run/recac/secrets")),
        "{:?}",
        mounts(&spec.containers[0])
    );
    let env: Vec<String> = spec.containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| e.name.clone())
        .collect();
    assert!(
        env.contains(&"RECAC_SECRETS_SOCKET".to_string())
            && !env.contains(&"RECAC_SECRETS_DIR".to_string())
    );
    let sidecar_exit = pod
        .status
        .and_then(|s| s.init_container_statuses)
        .and_then(|s| s.into_iter().next())
        .and_then(|s| s.state)
        .and_then(|s| s.terminated)
        .map(|t| t.exit_code);
    assert_eq!(sidecar_exit, Some(0), "the broker ends with 0 at SIGTERM");
    operator.stop().await;
    s.node.shutdown().await.expect("node agent stops");
}

/// A run of a ticket as the source makes it: the ticket and run labels, the ticket's branch.
fn ticket_run_yaml(name: &str, ticket: &str, run: u32, mode: &str, extra_env: &str) -> String {
    format!(
        r#"
apiVersion: recac.io/v1alpha1
kind: AgentTask
metadata:
  name: {name}
  labels:
    recac.io/ticket: {ticket}
    recac.io/run: "{run}"
spec:
  prompt: fix the login timeout
  ticket:
    source: jira
    key: {ticket}
  repository:
    url: https://git.example.com/org/repo.git
  maxRetries: 2
  agent:
    env:
      - name: FAKE_MODE
        value: "{mode}"
{extra_env}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_of_a_ticket_run_one_after_another() {
    let s = setup("tc-runs").await;
    let operator = Operator::start(s.config.clone(), &s.ns, 10).await;
    create_task(
        &s,
        &ticket_run_yaml(
            "ops-7-1",
            "OPS-7",
            1,
            "slow",
            "      - name: FAKE_SLEEP\n        value: \"8\"\n",
        ),
    )
    .await;
    task_where(&s, "ops-7-1", "run 1 Running", LONG, |t| {
        phase(t) == Some(TaskPhase::Running)
    })
    .await;
    create_task(&s, &ticket_run_yaml("ops-7-2", "OPS-7", 2, "succeed", "")).await;

    // Run 2 says at once that it waits for run 1, and makes no Job while run 1 runs.
    let waiting = task_where(&s, "ops-7-2", "run 2 queued behind run 1", LONG, |t| {
        condition(t, "Queued") == Some(("True".into(), "PreviousRunActive".into()))
    })
    .await;
    assert_eq!(phase(&waiting), Some(TaskPhase::Pending));
    let message = waiting
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Queued"))
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(message.contains("ops-7-1"), "{message}");
    let api: Api<AgentTask> = Api::namespaced(s.client.clone(), &s.ns);
    loop {
        let first = api.get("ops-7-1").await.expect("run 1");
        if phase(&first) != Some(TaskPhase::Running) {
            break;
        }
        assert!(
            jobs_of(&s, "ops-7-2").await.is_empty(),
            "run 2 got a Job while run 1 runs"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Run 1 finishes: run 2 gets its Job and runs.
    let first = task_where(&s, "ops-7-1", "run 1 Succeeded", LONG, |t| {
        phase(t) == Some(TaskPhase::Succeeded)
    })
    .await;
    let second = task_where(&s, "ops-7-2", "run 2 Succeeded", LONG, |t| {
        phase(t) == Some(TaskPhase::Succeeded)
    })
    .await;
    let finished = first.status.and_then(|s| s.completion_time).expect("done");
    let started = second
        .status
        .as_ref()
        .and_then(|s| s.start_time.clone())
        .expect("started");
    assert!(started.0 >= finished.0, "run 2 started before run 1 ended");
    assert_eq!(
        second.status.and_then(|s| s.branch).as_deref(),
        Some("recac/OPS-7")
    );
    assert_eq!(jobs_of(&s, "ops-7-2").await.len(), 1);
    operator.stop().await;
    s.node.shutdown().await.expect("node agent stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_on_the_ticket_suspends_the_job_and_ends_the_task_without_retry() {
    let s = setup("tc-stop").await;
    let operator = Operator::start(s.config.clone(), &s.ns, 10).await;
    create_task(&s, &ticket_run_yaml("ops-8-1", "OPS-8", 1, "sleep", "")).await;
    task_where(&s, "ops-8-1", "Running", LONG, |t| {
        phase(t) == Some(TaskPhase::Running)
    })
    .await;

    let api: Api<AgentTask> = Api::namespaced(s.client.clone(), &s.ns);
    let stop = serde_json::json!({"metadata": {"annotations": {
        "recac.io/stop": "10042",
        "recac.io/stop-by": "Ada Lovelace",
    }}});
    api.patch("ops-8-1", &PatchParams::default(), &Patch::Merge(&stop))
        .await
        .expect("stop annotation");

    let jobs: Api<Job> = Api::namespaced(s.client.clone(), &s.ns);
    wait_for("the Job to be suspended", LONG, || {
        let jobs = jobs.clone();
        async move {
            let job = jobs.get("ops-8-1-a1").await.ok()?;
            job.spec.and_then(|s| s.suspend).filter(|s| *s)
        }
    })
    .await;
    let task = task_where(&s, "ops-8-1", "Failed as stopped", LONG, |t| {
        phase(t) == Some(TaskPhase::Failed)
    })
    .await;
    assert_eq!(
        condition(&task, "Failed"),
        Some(("True".into(), "Stopped".into()))
    );
    let status = task.status.clone().expect("status");
    assert!(status.completion_time.is_some());
    assert_eq!(status.next_attempt_time, None);
    let message = status.message.unwrap_or_default();
    assert!(
        message.contains("by Ada Lovelace (comment 10042)"),
        "{message}"
    );

    let events: Api<Event> = Api::namespaced(s.client.clone(), &s.ns);
    wait_for("the Stopped event", LONG, || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items
                .iter()
                .any(|e| {
                    e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("ops-8-1")
                        && e.reason.as_deref() == Some("Stopped")
                })
                .then_some(())
        }
    })
    .await;

    // No second attempt, and nothing changes on a second look.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let later = api.get("ops-8-1").await.expect("task");
    assert_eq!(later.resource_version(), task.resource_version());
    assert_eq!(jobs_of(&s, "ops-8-1").await.len(), 1);
    operator.stop().await;
    s.node.shutdown().await.expect("node agent stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_waits_for_approval_and_the_decision_ends_the_task() {
    let s = setup("tc-plan").await;
    let operator = Operator::start(s.config.clone(), &s.ns, 10).await;
    for name in ["plan-ok", "plan-no"] {
        create_task(&s, &task_yaml(name, "plan", 2, "  approval: plan\n")).await;
    }

    let api: Api<AgentTask> = Api::namespaced(s.client.clone(), &s.ns);
    for name in ["plan-ok", "plan-no"] {
        let task = task_where(&s, name, "AwaitingApproval", LONG, |t| {
            phase(t) == Some(TaskPhase::AwaitingApproval)
        })
        .await;
        let status = task.status.clone().expect("status");
        assert_eq!(
            status.plan.as_deref(),
            Some("1. raise the login timeout\n2. test it"),
            "{name}"
        );
        assert_eq!(status.completion_time, None, "{name}");
        assert_eq!(
            status.branch.as_deref(),
            Some(format!("recac/{name}").as_str())
        );
        assert_eq!(
            condition(&task, "PlanReady"),
            Some(("True".into(), "PlanWritten".into())),
            "{name}"
        );
        let jobs = jobs_of(&s, name).await;
        assert_eq!(jobs.len(), 1, "{name}");
        let mode = jobs[0]
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.containers[0].env.clone())
            .unwrap_or_default()
            .into_iter()
            .find(|e| e.name == "RECAC_MODE")
            .and_then(|e| e.value);
        assert_eq!(mode.as_deref(), Some("plan"), "{name}");
    }

    // Undecided, the plan waits and costs no writes.
    let before = api.get("plan-ok").await.expect("task");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        api.get("plan-ok").await.expect("task").resource_version(),
        before.resource_version()
    );

    let decide = |decision: &str, by: &str| {
        serde_json::json!({"metadata": {"annotations": {
            "recac.io/approval": decision,
            "recac.io/approval-by": by,
        }}})
    };
    api.patch(
        "plan-ok",
        &PatchParams::default(),
        &Patch::Merge(&decide("approved", "Ada Lovelace")),
    )
    .await
    .expect("approve");
    api.patch(
        "plan-no",
        &PatchParams::default(),
        &Patch::Merge(&decide("rejected", "Grace Hopper")),
    )
    .await
    .expect("reject");

    let approved = task_where(&s, "plan-ok", "Succeeded", LONG, |t| {
        phase(t) == Some(TaskPhase::Succeeded)
    })
    .await;
    assert_eq!(
        condition(&approved, "Succeeded"),
        Some(("True".into(), "PlanApproved".into()))
    );
    let status = approved.status.clone().expect("status");
    assert!(status.completion_time.is_some());
    assert_eq!(
        status.message.as_deref(),
        Some("the plan was approved by Ada Lovelace")
    );
    assert!(status.plan.is_some());

    let rejected = task_where(&s, "plan-no", "Failed", LONG, |t| {
        phase(t) == Some(TaskPhase::Failed)
    })
    .await;
    assert_eq!(
        condition(&rejected, "Failed"),
        Some(("True".into(), "PlanRejected".into()))
    );
    assert_eq!(
        rejected.status.as_ref().and_then(|s| s.message.as_deref()),
        Some("the plan was rejected by Grace Hopper")
    );

    let events: Api<Event> = Api::namespaced(s.client.clone(), &s.ns);
    wait_for("the plan's events", LONG, || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            let seen = |task: &str, reason: &str| {
                list.items.iter().any(|e| {
                    e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(task)
                        && e.reason.as_deref() == Some(reason)
                })
            };
            (seen("plan-ok", "PlanReady")
                && seen("plan-ok", "PlanApproved")
                && seen("plan-no", "PlanRejected"))
            .then_some(())
        }
    })
    .await;

    // Nothing more runs for either.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for name in ["plan-ok", "plan-no"] {
        assert_eq!(
            jobs_of(&s, name).await.len(),
            1,
            "{name}: another Job was made"
        );
    }
    operator.stop().await;
    s.node.shutdown().await.expect("node agent stops");
}

/// The fake agent with a model of the operator's and its price: 2 per million input
/// tokens, 10 per million output tokens, in USD.
fn priced_agent() -> AgentDefaults {
    AgentDefaults {
        command: vec!["sh".into(), "-c".into(), FAKE_AGENT.into()],
        provider: Some("openai".into()),
        model: Some("gpt-x".into()),
        prices: vec![recac_task_controller::config::PriceEntry {
            provider: "openai".into(),
            model: "gpt-x".into(),
            input_per_million: recac_task_controller::config::Decimal("2".into()),
            output_per_million: recac_task_controller::config::Decimal("10".into()),
            currency: "USD".into(),
        }],
        ..Default::default()
    }
}

fn spend(task: &AgentTask) -> recac_api::Spend {
    task.status
        .as_ref()
        .and_then(|s| s.spend.clone())
        .unwrap_or_default()
}

fn job_env(job: &Job, name: &str) -> Option<String> {
    job.spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .first()?
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)?
        .value
        .clone()
}

async fn event_reasons(s: &Setup, task: &str) -> BTreeSet<String> {
    let events: Api<Event> = Api::namespaced(s.client.clone(), &s.ns);
    events
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(task))
        .filter_map(|e| e.reason)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_partial_is_retried_and_each_attempts_spend_is_counted_once() {
    let s = setup("tc-partial").await;
    let operator = Operator::start_with(s.config.clone(), &s.ns, 10, priced_agent()).await;
    create_task(
        &s,
        &task_yaml(
            "partial",
            "partial-first",
            2,
            "  budget:\n    tokens: 100000\n    cost: \"1.00\"\n",
        ),
    )
    .await;

    // Attempt 1 was cut short by its deadline: its spend is counted, its work is partial.
    let task = task_where(&s, "partial", "attempt 1 counted", LONG, |t| {
        spend(t).attempts >= 1
    })
    .await;
    let counted = spend(&task);
    assert_eq!(counted.models.len(), 1, "{counted:?}");
    assert_eq!(
        (
            counted.models[0].input_tokens,
            counted.models[0].output_tokens
        ),
        (1000, 200)
    );
    if counted.attempts == 1 {
        let status = task.status.clone().expect("status");
        assert_eq!(status.partial, Some(true));
        assert_eq!(status.commit.as_deref(), Some("part1"));
        assert_eq!(counted.models[0].cost.as_deref(), Some("0.004"));
    }
    // A restart between the attempts counts nothing again.
    operator.kill().await;
    let operator = Operator::start_with(s.config.clone(), &s.ns, 10, priced_agent()).await;

    let task = task_where(&s, "partial", "Succeeded", LONG, |t| {
        phase(t) == Some(TaskPhase::Succeeded)
    })
    .await;
    let status = task.status.clone().expect("status");
    assert_eq!(status.attempt, Some(2));
    assert_eq!(status.partial, None, "a success clears partial");
    assert_eq!(status.commit.as_deref(), Some("whole2"));
    let total = spend(&task);
    assert_eq!(total.attempts, 2);
    assert_eq!(total.not_reported, 0);
    assert_eq!(total.models.len(), 1, "{total:?}");
    let gpt = &total.models[0];
    assert_eq!(gpt.provider.as_deref(), Some("openai"));
    assert_eq!((gpt.input_tokens, gpt.output_tokens), (1500, 300));
    // 0.004 for attempt 1, 0.002 for attempt 2, priced by the operator.
    assert_eq!(gpt.cost.as_deref(), Some("0.006"));
    assert_eq!(gpt.currency.as_deref(), Some("USD"));

    // Attempt 2's Job: its deadline, its margin and what was left of the budget.
    let jobs = jobs_of(&s, "partial").await;
    assert_eq!(jobs.len(), 2);
    let second = jobs
        .iter()
        .find(|j| j.name_any() == "partial-a2")
        .expect("attempt 2's Job");
    let deadline: k8s_openapi::jiff::Timestamp = job_env(second, "RECAC_DEADLINE")
        .expect("RECAC_DEADLINE")
        .parse()
        .expect("RFC 3339");
    let created = second
        .metadata
        .creation_timestamp
        .as_ref()
        .expect("created")
        .0;
    let after_creation = created.duration_until(deadline).as_secs();
    assert!(
        (3595..=3600).contains(&after_creation),
        "deadline {deadline} is {after_creation}s after {created}"
    );
    assert_eq!(
        job_env(second, "RECAC_DEADLINE_MARGIN_SECONDS").as_deref(),
        Some("120")
    );
    assert_eq!(
        job_env(second, "RECAC_BUDGET_TOKENS").as_deref(),
        Some("98800")
    );
    assert_eq!(
        job_env(second, "RECAC_BUDGET_COST").as_deref(),
        Some("0.996")
    );
    assert_eq!(
        job_env(second, "RECAC_BUDGET_CURRENCY").as_deref(),
        Some("USD")
    );
    assert_eq!(
        job_env(second, "RECAC_PRICE_OUTPUT_PER_MILLION").as_deref(),
        Some("10")
    );
    let message = status.message.unwrap_or_default();
    assert!(
        message.contains("margin=120 tokens=98800 cost=0.996 USD"),
        "{message}"
    );

    // This process counted attempt 2 only (attempt 1 was counted before the restart).
    let (_, body) = http_get(operator.http, "/metrics").await;
    assert!(
        body.contains(
            "recac_agent_tokens_total{source=\"\",model=\"gpt-x\",direction=\"input\"} 500"
        ),
        "{body}"
    );
    assert!(
        body.contains("recac_agent_cost_total{source=\"\",model=\"gpt-x\",currency=\"USD\"} 0.002"),
        "{body}"
    );
    operator.stop().await;
    s.node.shutdown().await.expect("node agent stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_partial_ends_the_task_without_a_retry() {
    let s = setup("tc-budget-partial").await;
    let operator = Operator::start_with(s.config.clone(), &s.ns, 10, priced_agent()).await;
    create_task(
        &s,
        &task_yaml(
            "stopped-by-budget",
            "budget-partial",
            2,
            "  budget:\n    tokens: 20\n",
        ),
    )
    .await;
    let task = task_where(&s, "stopped-by-budget", "Failed", LONG, |t| {
        phase(t) == Some(TaskPhase::Failed)
    })
    .await;
    assert_eq!(
        condition(&task, "Failed"),
        Some(("True".into(), "BudgetExhausted".into()))
    );
    let status = task.status.clone().expect("status");
    assert_eq!(status.attempt, Some(1));
    assert_eq!(status.partial, Some(true));
    assert_eq!(status.commit.as_deref(), Some("part1"));
    assert_eq!(spend(&task).attempts, 1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(jobs_of(&s, "stopped-by-budget").await.len(), 1);
    wait_for("the BudgetExhausted event", LONG, || async {
        event_reasons(&s, "stopped-by-budget")
            .await
            .contains("BudgetExhausted")
            .then_some(())
    })
    .await;
    operator.stop().await;
    s.node.shutdown().await.expect("node agent stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_budget_gets_no_further_attempt() {
    let s = setup("tc-overspent").await;
    let operator = Operator::start_with(s.config.clone(), &s.ns, 10, priced_agent()).await;
    create_task(
        &s,
        &task_yaml("overspent", "overspend", 2, "  budget:\n    tokens: 1000\n"),
    )
    .await;
    let task = task_where(&s, "overspent", "Failed", LONG, |t| {
        phase(t) == Some(TaskPhase::Failed)
    })
    .await;
    assert_eq!(
        condition(&task, "Failed"),
        Some(("True".into(), "BudgetExhausted".into()))
    );
    assert_eq!(task.status.as_ref().and_then(|s| s.attempt), Some(1));
    let counted = spend(&task);
    assert_eq!(counted.attempts, 1);
    assert_eq!(
        (
            counted.models[0].input_tokens,
            counted.models[0].output_tokens
        ),
        (900, 300)
    );
    // Longer than the retry backoff: still no attempt 2.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let names: Vec<String> = jobs_of(&s, "overspent")
        .await
        .iter()
        .map(|j| j.name_any())
        .collect();
    assert_eq!(names, vec!["overspent-a1".to_string()]);
    operator.stop().await;
    s.node.shutdown().await.expect("node agent stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cost_budget_without_a_price_is_refused_before_any_job() {
    let s = setup("tc-unpriced").await;
    // The operator's table prices no model of this task.
    let operator = Operator::start(s.config.clone(), &s.ns, 10).await;
    create_task(
        &s,
        &task_yaml("unpriced", "succeed", 2, "  budget:\n    cost: \"5\"\n").replace(
            "  agent:\n",
            "  agent:\n    provider: openai\n    model: gpt-x\n",
        ),
    )
    .await;
    let task = task_where(&s, "unpriced", "Failed", LONG, |t| {
        phase(t) == Some(TaskPhase::Failed)
    })
    .await;
    assert_eq!(
        condition(&task, "Failed"),
        Some(("True".into(), "BudgetUnpriced".into()))
    );
    let message = task
        .status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains("openai/gpt-x") && message.contains("agent.prices"),
        "{message}"
    );
    assert_eq!(task.status.as_ref().and_then(|s| s.attempt), None);
    assert!(jobs_of(&s, "unpriced").await.is_empty());
    wait_for("the BudgetUnpriced event", LONG, || async {
        event_reasons(&s, "unpriced")
            .await
            .contains("BudgetUnpriced")
            .then_some(())
    })
    .await;
    operator.stop().await;
    s.node.shutdown().await.expect("node agent stops");
}

/// The operator with a daily budget of `tokens` for `namespace`'s tasks.
async fn start_with_namespace_budget(
    config: kube::Config,
    namespace: &str,
    tokens: i64,
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
            namespace_budgets: vec![recac_task_controller::config::NamespaceBudget {
                namespace: namespace.to_string(),
                per_day: Some(recac_task_controller::config::PeriodLimit {
                    tokens: Some(tokens),
                    ..Default::default()
                }),
                per_month: None,
            }],
            ..Default::default()
        },
        agent: priced_agent(),
        instance: "test".into(),
        feedback: None,
        sources: None,
    };
    RunningOperator::start(config, setup, Duration::from_secs(10)).await
}

/// The namespace's spend record, as the API has it.
async fn namespace_ledger(s: &Setup) -> Option<recac_runtime::spend::Ledger> {
    let maps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(s.client.clone(), &s.ns);
    let map = maps.get_opt("recac-spend-namespace").await.expect("get")?;
    assert_eq!(
        map.labels()
            .get("recac.io/spend-ledger")
            .map(String::as_str),
        Some("namespace"),
        "labelled for the operator's cache"
    );
    recac_runtime::spend_ledger::parse(&map).expect("a ledger")
}

async fn budget_spent_events(s: &Setup) -> usize {
    let events: Api<Event> = Api::namespaced(s.client.clone(), &s.ns);
    events
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("BudgetSpent"))
        .filter(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("recac-spend-namespace")
        })
        .count()
}

/// A namespace whose daily budget a task spent starts no new attempt there (the next task
/// stays Pending with a `Queued` condition saying which limit and until when, and gets no
/// Job), counts the spend once across a restart, announces the period once, and starts the
/// task the next day (the operator's clock moved forward). Tasks of other tests never have
/// a namespace budget, so the moved clock touches nothing of theirs. The operator runs as
/// the shipped ServiceAccount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_namespace_budget_holds_new_tasks_until_the_next_day() {
    let s = setup("tc-ns-budget").await;
    // As the shipped ServiceAccount: its RBAC must let the operator watch and write the
    // record.
    let account = operator_service_account_config(s.plane).await;
    let operator = start_with_namespace_budget(account.clone(), &s.ns, 1000).await;
    let spender = create_task(&s, &task_yaml("spender", "overspend", 0, "")).await;
    let uid = spender.uid().expect("uid");
    task_where(&s, "spender", "Failed with its spend", LONG, |t| {
        phase(t) == Some(TaskPhase::Failed) && spend(t).attempts == 1
    })
    .await;
    let day = recac_runtime::spend::day_key(recac_runtime::clock::now());
    let ledger = wait_for("the spend in the namespace's record", LONG, || async {
        namespace_ledger(&s)
            .await
            .filter(|l| l.tasks.get(&uid).is_some_and(|a| a.tokens == 1200))
    })
    .await;
    assert_eq!(ledger.periods[&day].tokens, 1200, "{ledger:?}");

    create_task(&s, &task_yaml("waiter", "succeed", 0, "")).await;
    let waiting = task_where(&s, "waiter", "held by the namespace budget", LONG, |t| {
        condition(t, "Queued") == Some(("True".into(), "NamespaceBudgetSpent".into()))
    })
    .await;
    assert_eq!(phase(&waiting), Some(TaskPhase::Pending));
    let queued = waiting
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Queued"))
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        queued.contains(&format!(
            "namespace {}'s daily budget of 1000 tokens is spent; new runs wait until",
            s.ns
        )),
        "{queued}"
    );
    assert!(jobs_of(&s, "waiter").await.is_empty(), "no Job while spent");
    wait_for("the BudgetSpent Event", LONG, || async {
        (budget_spent_events(&s).await == 1).then_some(())
    })
    .await;

    // A restart counts nothing again and announces nothing again.
    operator.kill().await;
    let operator = start_with_namespace_budget(account, &s.ns, 1000).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ledger = namespace_ledger(&s).await.expect("the record");
    assert_eq!(ledger.periods[&day].tokens, 1200, "{ledger:?}");
    assert_eq!(ledger.tasks[&uid].tokens, 1200);
    assert!(jobs_of(&s, "waiter").await.is_empty(), "still held");
    assert_eq!(budget_spent_events(&s).await, 1, "one Event per period");

    // The next day the task starts (its timer would wake it at midnight; a change wakes
    // it now).
    recac_runtime::clock::shift_for_tests(jiff::SignedDuration::from_hours(24));
    let api: Api<AgentTask> = Api::namespaced(s.client.clone(), &s.ns);
    let nudge = serde_json::json!({"metadata": {"annotations": {"test/nudge": "1"}}});
    api.patch("waiter", &PatchParams::default(), &Patch::Merge(&nudge))
        .await
        .expect("annotated");
    let done = task_where(&s, "waiter", "Succeeded the next day", LONG, |t| {
        phase(t) == Some(TaskPhase::Succeeded)
    })
    .await;
    recac_runtime::clock::shift_for_tests(jiff::SignedDuration::ZERO);
    assert_eq!(
        condition(&done, "Queued").map(|c| c.0),
        Some("False".into())
    );
    assert_eq!(jobs_of(&s, "waiter").await.len(), 1);
    operator.stop().await;
    s.node.shutdown().await.expect("node agent stops");
}
