//! The operator runtime against a real kube-apiserver: supervision (a dead component ends
//! the process), health and readiness, and status fields shared by two field managers.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use recac_api::{AgentTask, AgentTaskStatus, FeedbackStatus, TaskPhase};
use recac_runtime::status::apply_status;
use recac_task_controller::controller::write_owned_status;
use recac_testenv::{ControlPlane, ControlPlaneOptions};
use recac_tests::{
    control_plane, free_port, kubectl, recac_binary, text, token_kubeconfig, try_http_get,
};

fn task(name: &str) -> AgentTask {
    serde_saphyr::from_str(&format!(
        "apiVersion: recac.io/v1alpha1\nkind: AgentTask\nmetadata:\n  name: {name}\nspec:\n  prompt: p\n  repository:\n    url: https://git.example.com/org/repo.git\n"
    ))
    .expect("task yaml")
}

/// The operator binary as a subprocess, killed however the test ends.
struct OperatorProcess(std::process::Child);

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_operator(
    plane: &ControlPlane,
    kubeconfig: &std::path::Path,
    namespace: &str,
    port: u16,
    failpoints: &str,
) -> OperatorProcess {
    let dir = std::env::temp_dir().join(format!("recac-runtime-{namespace}"));
    std::fs::create_dir_all(&dir).expect("config dir");
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "operator:\n  namespaces: [{namespace}]\n  adminAddress: 127.0.0.1:{port}\n  stopTimeoutSeconds: 5\n  leaderElection: {{enabled: false}}\nagent:\n  command: [sh, -c, 'exit 0']\n"
        ),
    )
    .expect("config written");
    let _ = plane;
    let child = Command::new(recac_binary())
        .args(["orchestrate", "--config"])
        .arg(&config)
        .env("KUBECONFIG", kubeconfig)
        .env("RECAC_FAILPOINTS", failpoints)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("recac orchestrate starts");
    OperatorProcess(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_that_panics_ends_the_process_with_a_message() {
    let plane = control_plane(ControlPlaneOptions::default()).await;
    let ns = plane.namespace("rt-panic").await.expect("namespace");
    let client = plane.client().await.expect("client");
    let api: Api<AgentTask> = Api::namespaced(client, &ns);
    api.create(&PostParams::default(), &task("boom"))
        .await
        .expect("task created");

    let port = free_port();
    let mut operator = start_operator(
        plane,
        plane.kubeconfig_path(),
        &ns,
        port,
        "task-controller.reconcile=panic",
    );
    // Read stderr while the process runs: a panic's backtrace (RUST_BACKTRACE=1) can
    // outgrow the pipe's buffer and block the process on its write.
    let reader = operator.0.stderr.take().map(|mut pipe| {
        std::thread::spawn(move || {
            use std::io::Read;
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = operator.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the operator kept running with a dead component"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stderr = reader.and_then(|r| r.join().ok()).unwrap_or_default();
    assert_eq!(status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: component task-controller panicked")
            && last.contains("failpoint task-controller.reconcile fired"),
        "{stderr}"
    );
    assert!(
        stderr.contains("exiting so that Kubernetes restarts the operator"),
        "{stderr}"
    );
}

/// A kubeconfig for a ServiceAccount with no permissions at all.
async fn powerless_kubeconfig(plane: &ControlPlane, ns: &str) -> tempfile::NamedTempFile {
    let out = kubectl(plane, &["create", "serviceaccount", "nobody", "-n", ns]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), token_kubeconfig(plane, "nobody", ns)).expect("kubeconfig written");
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_the_caches_that_cannot_sync_while_healthz_stays_ok() {
    let plane = control_plane(ControlPlaneOptions::default()).await;
    let ns = plane.namespace("rt-ready").await.expect("namespace");
    let kubeconfig = powerless_kubeconfig(plane, &ns).await;
    let port = free_port();
    let mut operator = start_operator(plane, kubeconfig.path(), &ns, port, "");
    let address = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (code, body) = loop {
        if let Some(answer) = try_http_get(address, "/readyz").await {
            break answer;
        }
        assert!(Instant::now() < deadline, "the admin server never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Forbidden to list anything: the caches never sync, the process stays up and healthy
    // (it retries with backoff), and readiness says which caches wait.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (code_later, body_later) = try_http_get(address, "/readyz").await.expect("answers");
    assert_eq!((code, code_later), (503, 503), "{body} / {body_later}");
    assert!(body_later.contains("cache agenttasks"), "{body_later}");
    assert!(body_later.contains("cache jobs"), "{body_later}");
    let (health, health_body) = try_http_get(address, "/healthz").await.expect("answers");
    assert_eq!(health, 200, "{health_body}");
    assert!(
        health_body.contains("component task-controller: standby"),
        "no term starts on cold caches: {health_body}"
    );
    assert!(operator.0.try_wait().expect("wait").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_controllers_writing_their_status_fields_at_once_lose_nothing() {
    let plane = control_plane(ControlPlaneOptions::default()).await;
    let ns = plane.namespace("rt-owners").await.expect("namespace");
    let client = plane.client().await.expect("client");
    let api: Api<AgentTask> = Api::namespaced(client.clone(), &ns);
    api.create(&PostParams::default(), &task("shared"))
        .await
        .expect("task created");

    const ROUNDS: i32 = 25;
    let task_writer = {
        let api = api.clone();
        tokio::spawn(async move {
            for round in 1..=ROUNDS {
                // Read, decide, write with the resourceVersion precondition; on 409 read again.
                loop {
                    let current = api.get("shared").await.expect("task");
                    let mut status = current.status.clone().unwrap_or_default();
                    status.phase = Some(TaskPhase::Running);
                    status.attempt = Some(round);
                    status.message = Some(format!("round {round}"));
                    set_condition(&mut status.conditions, "Dispatched", round);
                    match write_owned_status(&api, &current, &status).await {
                        Ok(()) => break,
                        Err(kube::Error::Api(e)) if e.code == 409 => continue,
                        Err(e) => panic!("task controller write: {e}"),
                    }
                }
            }
        })
    };
    let feedback_writer = {
        let api = api.clone();
        tokio::spawn(async move {
            for round in 1..=ROUNDS {
                let mut conditions = Vec::new();
                set_condition(&mut conditions, "Reported", round);
                let status = serde_json::json!({
                    "feedback": FeedbackStatus {
                        reported_attempt: Some(round),
                        comment_id: Some(format!("c{round}")),
                        ..Default::default()
                    },
                    "conditions": conditions,
                });
                apply_status(&api, "shared", None, "recac-feedback-controller", &status)
                    .await
                    .expect("feedback write");
            }
        })
    };
    task_writer.await.expect("task writer");
    feedback_writer.await.expect("feedback writer");

    let task = api.get("shared").await.expect("task");
    let status = task.status.clone().unwrap_or_default();
    assert_eq!(status.attempt, Some(ROUNDS));
    assert_eq!(status.message.as_deref(), Some("round 25"));
    let feedback = status.feedback.clone().unwrap_or_default();
    assert_eq!(feedback.reported_attempt, Some(ROUNDS));
    assert_eq!(feedback.comment_id.as_deref(), Some("c25"));
    let types: Vec<&str> = status.conditions.iter().map(|c| c.type_.as_str()).collect();
    assert!(types.contains(&"Dispatched"), "{types:?}");
    assert!(types.contains(&"Reported"), "{types:?}");
    let managers: Vec<String> = task
        .managed_fields()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        managers.contains(&"recac-task-controller".to_string()),
        "{managers:?}"
    );
    assert!(
        managers.contains(&"recac-feedback-controller".to_string()),
        "{managers:?}"
    );

    // One more task-controller write (from a status that lacks feedback) keeps feedback.
    let mut without_feedback: AgentTaskStatus = status.clone();
    without_feedback.feedback = None;
    without_feedback
        .conditions
        .retain(|c| c.type_ != "Reported");
    without_feedback.message = Some("final".into());
    write_owned_status(&api, &task, &without_feedback)
        .await
        .expect("final write");
    let after = api
        .get("shared")
        .await
        .expect("task")
        .status
        .unwrap_or_default();
    assert_eq!(after.message.as_deref(), Some("final"));
    assert_eq!(
        after.feedback.and_then(|f| f.comment_id).as_deref(),
        Some("c25")
    );
    assert!(after.conditions.iter().any(|c| c.type_ == "Reported"));
    let _ = Client::try_from(plane.config().await.expect("config"));
}

fn set_condition(conditions: &mut Vec<Condition>, type_: &str, round: i32) {
    conditions.retain(|c| c.type_ != type_);
    conditions.push(Condition {
        type_: type_.into(),
        status: "True".into(),
        reason: format!("Round{round}"),
        message: format!("round {round}"),
        last_transition_time: Time(Timestamp::now()),
        observed_generation: None,
    });
}
