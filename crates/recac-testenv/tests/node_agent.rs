//! The node agent against a real kube-apiserver and kube-controller-manager.

use std::time::{Duration, Instant};

use futures::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use recac_testenv::{
    ControlPlane, ControlPlaneOptions, NodeAgent, NodeAgentOptions, shared_control_plane,
};

async fn setup(prefix: &str) -> (&'static ControlPlane, Client, String, NodeAgent) {
    let plane = shared_control_plane(ControlPlaneOptions {
        controller_manager: true,
        ..Default::default()
    })
    .await
    .expect("control plane starts");
    let client = plane.client().await.expect("client");
    let namespace = plane.namespace(prefix).await.expect("namespace");
    let agent = NodeAgent::start(
        client.clone(),
        NodeAgentOptions {
            namespaces: vec![namespace.clone()],
            ..Default::default()
        },
    )
    .await
    .expect("node agent starts");
    (plane, client, namespace, agent)
}

fn from_json<T: k8s_openapi::serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("valid object")
}

async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_pod_phase(pods: &Api<Pod>, name: &str, phases: &[&str]) -> Pod {
    wait_for(
        &format!("pod {name} in {phases:?}"),
        Duration::from_secs(20),
        || async {
            let pod = pods.get_opt(name).await.expect("get pod")?;
            let phase = pod.status.as_ref()?.phase.clone()?;
            phases.contains(&phase.as_str()).then_some(pod)
        },
    )
    .await
}

async fn wait_job_condition(jobs: &Api<Job>, name: &str, condition: &str) -> Job {
    wait_for(
        &format!("job {name} {condition}"),
        Duration::from_secs(25),
        || async {
            let job = jobs.get(name).await.expect("get job");
            let done = job
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .any(|c| c.type_ == condition && c.status == "True");
            done.then_some(job)
        },
    )
    .await
}

fn terminated(pod: &Pod) -> k8s_openapi::api::core::v1::ContainerStateTerminated {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.clone())
        .expect("container terminated")
}

fn kubectl(plane: &ControlPlane, args: &[&str]) -> String {
    let output = plane.kubectl().args(args).output().expect("kubectl runs");
    assert!(
        output.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn pod_json(name: &str, script: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "ignored", "command": ["sh", "-c", script]}],
        },
    })
}

fn pod(name: &str, script: &str) -> Pod {
    from_json(pod_json(name, script))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_pod_succeeds_with_termination_message_and_logs() {
    let started = Instant::now();
    let (plane, client, namespace, agent) = setup("na-bare").await;
    let pods: Api<Pod> = Api::namespaced(client, &namespace);
    pods.create(
        &PostParams::default(),
        &pod(
            "hello",
            "echo hello; echo result > /dev/termination-log; exit 0",
        ),
    )
    .await
    .expect("create pod");
    let done = wait_pod_phase(&pods, "hello", &["Succeeded", "Failed"]).await;
    assert_eq!(
        done.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded")
    );
    assert_eq!(
        done.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some(agent.node_name())
    );
    let state = terminated(&done);
    assert_eq!(state.exit_code, 0);
    assert_eq!(state.reason.as_deref(), Some("Completed"));
    assert_eq!(state.message.as_deref().map(str::trim), Some("result"));
    assert!(state.started_at.is_some() && state.finished_at.is_some());
    let logs = kubectl(plane, &["logs", "-n", &namespace, "pod/hello"]);
    assert_eq!(logs, "hello\n");
    agent.shutdown().await.expect("shutdown");
    eprintln!("bare pod test took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_job_fails_with_exit_code() {
    let started = Instant::now();
    let (_plane, client, namespace, agent) = setup("na-jobfail").await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &namespace);
    let job: Job = from_json(serde_json::json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "fails"},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "main", "image": "ignored", "command": ["sh", "-c", "echo failing; exit 3"]}],
            }},
        },
    }));
    jobs.create(&PostParams::default(), &job)
        .await
        .expect("create job");
    wait_job_condition(&jobs, "fails", "Failed").await;
    let pods: Api<Pod> = Api::namespaced(client, &namespace);
    let list = pods
        .list(&ListParams::default().labels("batch.kubernetes.io/job-name=fails"))
        .await
        .expect("list pods");
    assert_eq!(list.items.len(), 1, "one pod (backoffLimit 0)");
    let state = terminated(&list.items[0]);
    assert_eq!(state.exit_code, 3);
    assert_eq!(state.reason.as_deref(), Some("Error"));
    assert_eq!(
        list.items[0]
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref()),
        Some("Failed")
    );
    agent.shutdown().await.expect("shutdown");
    eprintln!("failing job test took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_with_secret_env_and_empty_dir_completes() {
    let started = Instant::now();
    let (plane, client, namespace, agent) = setup("na-jobenv").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let secret: Secret = from_json(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "creds"},
        "stringData": {"token": "abc123", "user": "alice"},
    }));
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("create secret");
    let script = r#"set -e
test "$TOKEN" = abc123
test "$S_user" = alice
test "$POD_NAME" != ""
test "$OUT" = "/workspace/out.txt"
echo "$TOKEN $S_user" > "$OUT"
echo marker > marker
test -f /workspace/marker
test "$(pwd -P)" = "$(cd /workspace && pwd -P)"
cat out.txt
echo "pod=$POD_NAME ns=$NS"
"#;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &namespace);
    let job: Job = from_json(serde_json::json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "env"},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": {
                "restartPolicy": "Never",
                "volumes": [{"name": "work", "emptyDir": {}}],
                "containers": [{
                    "name": "main",
                    "image": "ignored",
                    "command": ["sh", "-c", script],
                    "workingDir": "/workspace",
                    "volumeMounts": [{"name": "work", "mountPath": "/workspace"}],
                    "envFrom": [{"secretRef": {"name": "creds"}, "prefix": "S_"},
                                {"configMapRef": {"name": "missing", "optional": true}}],
                    "env": [
                        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
                        {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "x", "optional": true}}},
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                        {"name": "OUT", "value": "/workspace/out.txt"},
                    ],
                }],
            }},
        },
    }));
    jobs.create(&PostParams::default(), &job)
        .await
        .expect("create job");
    let done = wait_for("job env finished", Duration::from_secs(25), || async {
        let job = jobs.get("env").await.expect("get job");
        let conditions = job.status.as_ref()?.conditions.clone()?;
        conditions
            .iter()
            .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
            .map(|c| c.type_.clone())
    })
    .await;
    let logs = kubectl(plane, &["logs", "-n", &namespace, "job/env"]);
    assert_eq!(done, "Complete", "job failed; logs:\n{logs}");
    assert!(logs.contains("abc123 alice"), "logs: {logs}");
    assert!(logs.contains(&format!("ns={namespace}")), "logs: {logs}");
    agent.shutdown().await.expect("shutdown");
    eprintln!("secret env job test took {:?}", started.elapsed());
}

/// A native sidecar (an init container with `restartPolicy: Always`) starts before the pod's
/// container, sees only its own mounts (a Secret the container does not mount), is reported
/// in `initContainerStatuses`, and gets SIGTERM when the container has ended; the pod's phase
/// follows the container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_start_first_and_stop_after_the_container() {
    let started = Instant::now();
    let (plane, client, namespace, agent) = setup("na-sidecar").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let secret: Secret = from_json(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "only-for-the-sidecar"},
        "stringData": {"token": "sidecar-token"},
    }));
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("create secret");
    let sidecar = r#"trap 'echo "sidecar stopped after: $(cat /shared/main-done)"; exit 0' TERM
cat /secret/token > /shared/from-sidecar
while true; do sleep 0.1; done
"#;
    let main = r#"set -e
i=0; while [ ! -s /shared/from-sidecar ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
echo "main read: $(cat /shared/from-sidecar)"
test "$SECRET_DIR" = /secret
echo main > /shared/main-done
"#;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &namespace);
    let job: Job = from_json(serde_json::json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "sidecar"},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": {
                "restartPolicy": "Never",
                "volumes": [
                    {"name": "shared", "emptyDir": {}},
                    {"name": "secret", "secret": {"secretName": "only-for-the-sidecar"}},
                ],
                "initContainers": [{
                    "name": "side",
                    "image": "ignored",
                    "restartPolicy": "Always",
                    "command": ["sh", "-c", sidecar],
                    "volumeMounts": [
                        {"name": "shared", "mountPath": "/shared"},
                        {"name": "secret", "mountPath": "/secret", "readOnly": true},
                    ],
                }],
                "containers": [{
                    "name": "main",
                    "image": "ignored",
                    "command": ["sh", "-c", main],
                    "env": [{"name": "SECRET_DIR", "value": "/secret"}],
                    "volumeMounts": [{"name": "shared", "mountPath": "/shared"}],
                }],
            }},
        },
    }));
    jobs.create(&PostParams::default(), &job)
        .await
        .expect("create job");
    wait_job_condition(&jobs, "sidecar", "Complete").await;
    let pods: Api<Pod> = Api::namespaced(client, &namespace);
    let list = pods
        .list(&ListParams::default().labels("batch.kubernetes.io/job-name=sidecar"))
        .await
        .expect("list pods");
    let pod = &list.items[0];
    let status = pod.status.clone().unwrap_or_default();
    assert_eq!(status.phase.as_deref(), Some("Succeeded"));
    let names = |statuses: Option<Vec<k8s_openapi::api::core::v1::ContainerStatus>>| {
        statuses
            .unwrap_or_default()
            .into_iter()
            .map(|c| {
                let code = c.state.and_then(|s| s.terminated).map(|t| t.exit_code);
                (c.name, code)
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(status.container_statuses),
        vec![("main".to_string(), Some(0))]
    );
    assert_eq!(
        names(status.init_container_statuses),
        vec![("side".to_string(), Some(0))]
    );
    let name = pod.metadata.name.clone().unwrap_or_default();
    let main_log = kubectl(plane, &["logs", "-n", &namespace, &name, "-c", "main"]);
    assert_eq!(main_log, "main read: sidecar-token\n");
    let side_log = kubectl(plane, &["logs", "-n", &namespace, &name, "-c", "side"]);
    // (sh may say that its `sleep` was terminated too: the whole group gets the signal.)
    assert!(
        side_log.ends_with("sidecar stopped after: main\n"),
        "{side_log}"
    );

    // An init container that runs to completion is not supported: the pod waits, saying so.
    let mut once = pod_json("once", "exit 0");
    once["spec"]["initContainers"] =
        serde_json::json!([{"name": "setup", "image": "ignored", "command": ["true"]}]);
    pods.create(&PostParams::default(), &from_json(once))
        .await
        .expect("create pod");
    let waiting = wait_for(
        "the pod's config error",
        Duration::from_secs(20),
        || async {
            let pod = pods.get("once").await.ok()?;
            let state = pod.status?.container_statuses?.first()?.state.clone()?;
            state.waiting?.message
        },
    )
    .await;
    assert!(
        waiting.contains("\"setup\" runs to completion"),
        "{waiting}"
    );
    agent.shutdown().await.expect("shutdown");
    eprintln!("sidecar test took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_pod_is_killed_and_removed() {
    let started = Instant::now();
    let (_plane, client, namespace, agent) = setup("na-delete").await;
    let pods: Api<Pod> = Api::namespaced(client, &namespace);
    pods.create(&PostParams::default(), &pod("sleeper", "sleep 300"))
        .await
        .expect("create pod");
    let running = wait_pod_phase(&pods, "sleeper", &["Running"]).await;
    let container_id = running
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.container_id.clone())
        .expect("container id");
    let pid = container_id
        .rsplit('/')
        .next()
        .expect("pid in container id")
        .to_string();
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "process {pid} runs"
    );
    let deleting = Instant::now();
    pods.delete("sleeper", &DeleteParams::default())
        .await
        .expect("delete pod");
    wait_for("pod sleeper gone", Duration::from_secs(10), || async {
        pods.get_opt("sleeper")
            .await
            .expect("get pod")
            .is_none()
            .then_some(())
    })
    .await;
    let took = deleting.elapsed();
    assert!(took < Duration::from_secs(5), "deletion took {took:?}");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "process {pid} was killed"
    );
    agent.shutdown().await.expect("shutdown");
    eprintln!(
        "deletion test took {:?} (deletion {took:?})",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_streams_logs_over_time() {
    let started = Instant::now();
    let (_plane, client, namespace, agent) = setup("na-follow").await;
    let pods: Api<Pod> = Api::namespaced(client, &namespace);
    pods.create(
        &PostParams::default(),
        &pod("ticker", "for i in 1 2 3; do echo line-$i; sleep 1; done"),
    )
    .await
    .expect("create pod");
    wait_pod_phase(&pods, "ticker", &["Running", "Succeeded"]).await;
    let following = Instant::now();
    let stream = pods
        .log_stream(
            "ticker",
            &LogParams {
                follow: true,
                ..Default::default()
            },
        )
        .await
        .expect("log stream");
    let mut lines = stream.lines();
    let mut seen = Vec::new();
    while let Some(line) = lines.next().await {
        let line = line.expect("log line");
        seen.push((line, following.elapsed()));
    }
    let texts: Vec<&str> = seen.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(texts, ["line-1", "line-2", "line-3"]);
    assert!(
        seen[2].1 - seen[0].1 >= Duration::from_millis(1000),
        "lines arrived over time: {seen:?}"
    );
    wait_pod_phase(&pods, "ticker", &["Succeeded"]).await;
    let tail = pods
        .logs(
            "ticker",
            &LogParams {
                tail_lines: Some(1),
                ..Default::default()
            },
        )
        .await
        .expect("tail logs");
    assert_eq!(tail, "line-3\n");
    let limited = pods
        .logs(
            "ticker",
            &LogParams {
                limit_bytes: Some(4),
                ..Default::default()
            },
        )
        .await
        .expect("limited logs");
    assert_eq!(limited, "line");
    agent.shutdown().await.expect("shutdown");
    eprintln!("follow test took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_agent_fails_orphaned_pods() {
    let started = Instant::now();
    let (_plane, client, namespace, agent) = setup("na-restart").await;
    let node = agent.node_name().to_string();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    pods.create(&PostParams::default(), &pod("orphan", "sleep 300"))
        .await
        .expect("create pod");
    wait_pod_phase(&pods, "orphan", &["Running"]).await;
    // The agent dies without reporting anything (its processes die with it).
    drop(agent);
    let agent = NodeAgent::start(
        client,
        NodeAgentOptions {
            node_name: Some(node),
            namespaces: vec![namespace.clone()],
            ..Default::default()
        },
    )
    .await
    .expect("second agent starts");
    let failed = wait_pod_phase(&pods, "orphan", &["Failed"]).await;
    assert_eq!(terminated(&failed).exit_code, 137);
    agent.shutdown().await.expect("shutdown");
    eprintln!("restart test took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_stop_pods_and_jobs() {
    let started = Instant::now();
    let (_plane, client, namespace, agent) = setup("na-deadline").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let mut slow = pod("slow", "sleep 300");
    if let Some(spec) = slow.spec.as_mut() {
        spec.active_deadline_seconds = Some(1);
    }
    pods.create(&PostParams::default(), &slow)
        .await
        .expect("create pod");
    let jobs: Api<Job> = Api::namespaced(client.clone(), &namespace);
    let job: Job = from_json(serde_json::json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "slow-job"},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": 2,
            "template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "main", "image": "ignored", "command": ["sh", "-c", "sleep 300"]}],
            }},
        },
    }));
    jobs.create(&PostParams::default(), &job)
        .await
        .expect("create job");

    let failed = wait_pod_phase(&pods, "slow", &["Failed", "Succeeded"]).await;
    let status = failed.status.clone().expect("status");
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    assert_eq!(status.reason.as_deref(), Some("DeadlineExceeded"));
    assert!(
        [137, 143].contains(&terminated(&failed).exit_code),
        "killed by a signal: {:?}",
        terminated(&failed)
    );

    wait_job_condition(&jobs, "slow-job", "Failed").await;
    // The Job controller deleted its pod; the agent finished the deletion.
    wait_for("job pods gone", Duration::from_secs(15), || async {
        let list = pods
            .list(&ListParams::default().labels("batch.kubernetes.io/job-name=slow-job"))
            .await
            .expect("list pods");
        list.items.is_empty().then_some(())
    })
    .await;
    agent.shutdown().await.expect("shutdown");
    eprintln!("deadline test took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_secret_waits_then_runs() {
    let started = Instant::now();
    let (_plane, client, namespace, agent) = setup("na-missing").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let mut waiting = pod("needs-secret", "test \"$KEY\" = later");
    if let Some(container) = waiting.spec.as_mut().and_then(|s| s.containers.first_mut()) {
        container.env = Some(vec![from_json(serde_json::json!({
            "name": "KEY",
            "valueFrom": {"secretKeyRef": {"name": "late", "key": "key"}},
        }))]);
    }
    pods.create(&PostParams::default(), &waiting)
        .await
        .expect("create pod");
    wait_for(
        "CreateContainerConfigError",
        Duration::from_secs(10),
        || async {
            let pod = pods.get("needs-secret").await.expect("get pod");
            let status = pod.status?;
            let reason = status
                .container_statuses?
                .first()?
                .state
                .as_ref()?
                .waiting
                .as_ref()?
                .reason
                .clone()?;
            (reason == "CreateContainerConfigError" && status.phase.as_deref() == Some("Pending"))
                .then_some(())
        },
    )
    .await;
    let secrets: Api<Secret> = Api::namespaced(client, &namespace);
    let secret: Secret = from_json(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "late"},
        "stringData": {"key": "later"},
    }));
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("create secret");
    let done = wait_pod_phase(&pods, "needs-secret", &["Succeeded", "Failed"]).await;
    assert_eq!(
        done.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded")
    );
    agent.shutdown().await.expect("shutdown");
    eprintln!("missing secret test took {:?}", started.elapsed());
}
