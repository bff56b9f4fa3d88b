//! The whole loop on a real node: the operator deployed with `kubectl apply -k` from the built
//! image (two replicas, in-cluster configuration, its ServiceAccount and RBAC), the agents as
//! Jobs in a namespace that enforces the restricted Pod Security Standard, run by a kubelet and
//! containerd from the same image. The Jira simulator, the git server (with its own CA) and
//! the demo model run on this machine, reached by the pods through the node's address. At the
//! end the operator is removed and installed again with the Helm chart, which runs one more
//! ticket.
//!
//! The setup is `recac_dev::realnode`'s, which `recac dev --real-node` shows to a person.
//! `make e2e` runs it inside `hack/realnode-up.sh --run`, which starts the node and exports
//! where it is; without that environment the test is ignored.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};
use recac_api::{AgentTask, TaskPhase};
use recac_dev::demo::{self, Expected};
use recac_dev::realnode::{self, Demo, Node, SYSTEM, TASKS};
use recac_jira_sim::{IssueSeed, JiraSim};
use recac_tests::{repo_root, text, wait_for};

const LOOP_TIMEOUT: Duration = Duration::from_secs(300);

fn say(message: impl std::fmt::Display) {
    eprintln!("e2e: {message}");
}

/// kubectl on the node; panics when it cannot run.
fn kubectl(node: &Node, args: &[&str], stdin: Option<&str>) -> Output {
    node.kubectl(args, stdin).expect("kubectl runs")
}

/// kubectl on the node; panics with its output when it fails.
fn kubectl_ok(node: &Node, args: &[&str], stdin: Option<&str>) -> String {
    node.kubectl_ok(args, stdin)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// How a ticket of this run ends: as a demo ticket does, or failed for good (every attempt's
/// tests fail), which gets the failure comment with the agent's log tail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ends {
    AsDemo(Expected),
    Failed,
}

/// A ticket whose every attempt fails the repository's test (no `!` at the end).
fn failing_ticket(repository_url: &str) -> IssueSeed {
    IssueSeed {
        summary: "Greet Bob".into(),
        description: Some(format!(
            "Add a greeting for Bob.\n\nRepo: {repository_url}\nFile: greetings/bob.txt\nLine: Hello, Bob"
        )),
        ..Default::default()
    }
}

/// The end of the operator replicas' logs, for a failure's message.
fn operator_logs(node: &Node) -> Output {
    kubectl(
        node,
        &[
            "logs",
            "-n",
            SYSTEM,
            "-l",
            "app.kubernetes.io/name=recac",
            "--tail=80",
        ],
        None,
    )
}

/// The helm binary `hack/e2e.sh` exports.
fn helm() -> PathBuf {
    let path = std::env::var("RECAC_HELM")
        .ok()
        .filter(|p| !p.is_empty())
        .expect("RECAC_HELM: run through `make e2e` (hack/e2e.sh builds helm)");
    PathBuf::from(path)
}

/// Whether the ticket has reached what it should end as.
fn ended(sim: &JiraSim, key: &str, ends: Ends) -> bool {
    let Some(issue) = sim.issue(key) else {
        return false;
    };
    let bodies: Vec<String> = issue.comments.iter().map(|c| c.body.to_string()).collect();
    match ends {
        Ends::AsDemo(Expected::Succeeds | Expected::SucceedsOnRetry) => issue.status == "In Review",
        Ends::AsDemo(Expected::NeedsRepository) => bodies
            .iter()
            .any(|b| b.contains("does not say which repository")),
        Ends::Failed => bodies.iter().any(|b| b.contains("/failed/")),
    }
}

async fn agent_pods(client: &Client) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), TASKS)
        .list(&ListParams::default().labels("app=recac-agent"))
        .await
        .expect("agent pods")
        .items
}

async fn lease_holder(client: &Client) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), SYSTEM)
        .get_opt("recac-operator")
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs a real node: run `make e2e`"]
async fn the_demo_loop_runs_in_real_pods() {
    let node = Node::from_env()
        .expect("REALNODE_* variables: run through `make e2e` (hack/realnode-up.sh --run)");
    let begun = Instant::now();
    let client = Client::try_default().await.expect("KUBECONFIG");
    let work = tempfile::tempdir().expect("temp dir");

    // The services the pods reach through the node's address, the demo tickets and one
    // that always fails.
    let demo = Demo::start(&node, work.path())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut tickets: Vec<(String, Ends)> = demo
        .tickets
        .iter()
        .map(|(key, expected)| (key.clone(), Ends::AsDemo(*expected)))
        .collect();
    let failing = demo.add_ticket(failing_ticket(&demo.repository_url));
    tickets.push((failing.clone(), Ends::Failed));
    // A ticket whose model runs a command that reaches for a host not on the allow-list.
    let egress_ticket = demo.add_ticket(IssueSeed {
        summary: "Greet Eve".into(),
        description: Some(format!(
            "Add a greeting for Eve.\n\nRepo: {}\nFile: greetings/eve.txt\nLine: Hello, Eve!\nRun: git ls-remote https://files.example.com/probe.git",
            demo.repository_url
        )),
        ..Default::default()
    });
    tickets.push((egress_ticket.clone(), Ends::AsDemo(Expected::Succeeds)));
    let sim = &demo.sim;
    let repository_url = demo.repository_url.clone();
    let git_root = demo.git_root.clone();
    say(format!(
        "Jira simulator {}, git {repository_url}, model {}",
        sim.url(),
        demo.model.address()
    ));

    // Namespaces, the agents' Secret and CA, the operator's Jira credentials; then the
    // operator as the README deploys it (the overlay inside the repository: kustomize
    // reads bases by relative path).
    demo.install_prerequisites(&node)
        .unwrap_or_else(|e| panic!("{e}"));
    let target = repo_root().join("target");
    std::fs::create_dir_all(&target).expect("target folder");
    let overlay_holder = tempfile::Builder::new()
        .prefix("e2e-overlay-")
        .tempdir_in(&target)
        .expect("overlay folder");
    let overlay = overlay_holder.path().to_path_buf();
    // The egress proxy first: the node has no cluster DNS and no kube-proxy, so the agents
    // reach it by its pod's address, which the operator's configuration names.
    let proxy = realnode::deploy_egress_proxy(&node, &overlay).unwrap_or_else(|e| panic!("{e}"));
    say(format!("egress proxy at {proxy}"));
    let config = demo.operator_config(&node, Some(&proxy));
    realnode::write_overlay(&overlay, &node, &config).unwrap_or_else(|e| panic!("{e}"));
    let rolled = realnode::deploy_with_kustomize(&node, &overlay).unwrap_or_else(|e| panic!("{e}"));
    say(format!(
        "operator rolled out in {:.1} s",
        rolled.as_secs_f64()
    ));

    // Each demo ticket ends as in `recac dev`.
    let loop_started = Instant::now();
    let deadline = Instant::now() + LOOP_TIMEOUT;
    while !tickets.iter().all(|(key, e)| ended(sim, key, *e)) {
        if Instant::now() > deadline {
            let at = kubectl(
                &node,
                &["get", "at,jobs,pods", "-n", TASKS, "-o", "wide"],
                None,
            );
            let logs = operator_logs(&node);
            let states: Vec<String> = tickets
                .iter()
                .map(|(k, _)| {
                    format!(
                        "{k}: {:?}",
                        sim.issue(k).map(|i| (i.status, i.comments.len()))
                    )
                })
                .collect();
            panic!(
                "the demo tickets did not end in {LOOP_TIMEOUT:?}: {states:?}\n{}\n{}",
                text(&at.stdout),
                text(&logs.stdout)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let loop_seconds = loop_started.elapsed().as_secs_f64();
    say(format!(
        "every demo ticket ended {loop_seconds:.1} s after the rollout"
    ));

    // The results came through the real termination message.
    let tasks = Api::<AgentTask>::namespaced(client.clone(), TASKS)
        .list(&ListParams::default())
        .await
        .expect("tasks")
        .items;
    for (key, ends) in &tickets {
        let (phase, attempts) = match ends {
            Ends::AsDemo(Expected::NeedsRepository) => continue,
            Ends::AsDemo(Expected::Succeeds) => (TaskPhase::Succeeded, 1),
            Ends::AsDemo(Expected::SucceedsOnRetry) => (TaskPhase::Succeeded, 2),
            Ends::Failed => (TaskPhase::Failed, 3),
        };
        let task = tasks
            .iter()
            .find(|t| t.spec.ticket.as_ref().is_some_and(|r| &r.key == key))
            .unwrap_or_else(|| panic!("{key}'s task"));
        let status = task.status.clone().unwrap_or_default();
        assert_eq!(status.phase, Some(phase), "{key}: {status:?}");
        assert!(
            status.commit.is_some(),
            "{key}: the result's commit: {status:?}"
        );
        assert_eq!(status.attempt, Some(attempts), "{key}: {status:?}");
    }
    // The failure comment carries the log tail the operator read through the kubelet
    // (pods/log): the repository's test output.
    let failed = failing.clone();
    let comments: Vec<String> = sim
        .issue(&failed)
        .map(|i| i.comments.into_iter().map(|c| c.body.to_string()).collect())
        .unwrap_or_default();
    assert!(
        comments
            .iter()
            .any(|c| c.contains("/failed/") && c.contains("FAIL greetings/bob.txt")),
        "{failed}'s failure comment lacks the test's log lines: {comments:#?}"
    );

    // Every agent reached git and the model through the egress proxy; the command that reached
    // for files.example.com was refused there, and the ticket says so.
    let egress_comments: Vec<String> = sim
        .issue(&egress_ticket)
        .map(|i| i.comments.into_iter().map(|c| c.body.to_string()).collect())
        .unwrap_or_default();
    let blocked_comment = egress_comments
        .iter()
        .find(|c| c.contains("files.example.com:443") && c.contains("allow-list"))
        .unwrap_or_else(|| {
            panic!("{egress_ticket}'s comment does not name the refused host: {egress_comments:#?}")
        })
        .clone();
    let egress_task = tasks
        .iter()
        .find(|t| {
            t.spec
                .ticket
                .as_ref()
                .is_some_and(|r| r.key == egress_ticket)
        })
        .expect("the egress ticket's task");
    let egress = egress_task
        .status
        .as_ref()
        .and_then(|s| s.egress.clone())
        .expect("status.egress");
    assert!(
        egress
            .blocked
            .iter()
            .any(|b| b.host == "files.example.com" && b.port == 443),
        "{egress:?}"
    );
    assert!(
        egress.allowed.len() >= 2,
        "the git server and the model are allowed implicitly: {egress:?}"
    );
    let policies = kubectl_ok(
        &node,
        &[
            "get",
            "networkpolicies",
            "-n",
            TASKS,
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.metadata.ownerReferences[0].kind}{\"\\n\"}{end}",
        ],
        None,
    );
    let owned_by_jobs = policies.lines().filter(|l| l.ends_with(" Job")).count();
    assert!(
        owned_by_jobs >= tasks.len(),
        "one NetworkPolicy per agent Job, owned by it: {policies}"
    );

    // Every agent pod ran the built image in containerd.
    let pods = agent_pods(&client).await;
    assert!(pods.len() >= 6, "{} agent pods", pods.len());
    let mut lines = BTreeMap::new();
    for pod in &pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let status = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .cloned()
            .unwrap_or_else(|| panic!("{name} has no container status"));
        let container_id = status.container_id.clone().unwrap_or_default();
        assert!(
            container_id.starts_with("containerd://"),
            "{name}: {container_id}"
        );
        assert!(!status.image_id.is_empty(), "{name}: no image ID");
        assert!(
            status.image.ends_with(&node.image) || status.image.contains(&node.image),
            "{name}: image {}",
            status.image
        );
        // The task's Secrets were mounted only into the secret broker, a sidecar that ran
        // from the same image.
        let broker = pod
            .status
            .as_ref()
            .and_then(|s| s.init_container_statuses.as_ref())
            .and_then(|c| c.iter().find(|c| c.name == "secrets"));
        assert!(
            broker.is_some_and(|b| b
                .container_id
                .as_deref()
                .is_some_and(|id| id.starts_with("containerd://"))
                && b.image_id == status.image_id),
            "{name}: no secret broker ran beside the agent: {broker:?}"
        );
        lines.insert(name, format!("{} {}", status.image_id, container_id));
    }

    // The commands the model runs cannot read the task's Secrets: the Secret files are in
    // the broker's container only (mounted for another user), and neither the broker's nor the
    // agent's `/proc` entries (root, environment, memory) open to them. The task's test
    // command tries, and fails the tests (and the task) if any read succeeds.
    let probe_task = "e2e-secret-probe";
    let probe = r#"n=0 hits=0 procs=0
try() { n=$((n+1)); if "$@" >/dev/null 2>&1; then hits=$((hits+1)); echo "secret-probe: READ $*"; fi; }
for f in /var/run/recac/secrets/*/* /proc/[0-9]*/root/var/run/recac/secrets/*/*; do try cat "$f"; done
for p in /proc/[0-9]*; do
  case "$(tr '\000' ' ' < "$p/cmdline" 2>/dev/null)" in
    "recac start"*|"recac secret-broker"*)
      procs=$((procs+1))
      try cat "$p/environ"; try ls "$p/root/"; try sh -c ': < "$1"' sh "$p/mem" ;;
  esac
done
echo "secret-probe: $hits of $n reads succeeded, $procs recac processes probed"
[ "$hits" = 0 ]"#;
    let manifest = serde_json::json!({
        "apiVersion": "recac.io/v1alpha1",
        "kind": "AgentTask",
        "metadata": {"name": probe_task, "namespace": TASKS},
        "spec": {
            "prompt": "Add a greeting for Pat.\nFile: greetings/pat.txt\nLine: Hello, Pat!\n",
            "repository": {"url": repository_url, "baseBranch": "main"},
            "maxRetries": 0,
            "agent": {"env": [{"name": "RECAC_TEST_COMMAND", "value": probe}]},
        },
    });
    kubectl_ok(&node, &["apply", "-f", "-"], Some(&manifest.to_string()));
    // A planning run beside it: the agent in a real pod writes a plan and pushes nothing.
    let plan_task = "e2e-plan";
    let plan_manifest = serde_json::json!({
        "apiVersion": "recac.io/v1alpha1",
        "kind": "AgentTask",
        "metadata": {"name": plan_task, "namespace": TASKS},
        "spec": {
            "prompt": "Add a greeting for Quinn.\nFile: greetings/quinn.txt\nLine: Hello, Quinn!\n",
            "repository": {"url": repository_url, "baseBranch": "main"},
            "approval": "plan",
            "maxRetries": 0,
        },
    });
    kubectl_ok(
        &node,
        &["apply", "-f", "-"],
        Some(&plan_manifest.to_string()),
    );
    // A task whose tests outlast its deadline: the agent stops before it (the margin is a
    // quarter of 60 s), pushes its work and reports it partial.
    let deadline_task = "e2e-deadline";
    let deadline_manifest = serde_json::json!({
        "apiVersion": "recac.io/v1alpha1",
        "kind": "AgentTask",
        "metadata": {"name": deadline_task, "namespace": TASKS},
        "spec": {
            "prompt": "Add a greeting for Dee.\nFile: greetings/dee.txt\nLine: Hello, Dee!\n",
            "repository": {"url": repository_url, "baseBranch": "main"},
            "maxRetries": 0,
            "timeoutSeconds": 60,
            "agent": {"env": [{"name": "RECAC_TEST_COMMAND", "value": "sleep 600"}]},
        },
    });
    kubectl_ok(
        &node,
        &["apply", "-f", "-"],
        Some(&deadline_manifest.to_string()),
    );
    let tasks_api: Api<AgentTask> = Api::namespaced(client.clone(), TASKS);
    let probed = wait_for(
        "the secret probe's task to end",
        Duration::from_secs(120),
        || {
            let tasks_api = tasks_api.clone();
            async move {
                let task = tasks_api.get_opt(probe_task).await.ok()??;
                let status = task.status.clone()?;
                matches!(status.phase, Some(TaskPhase::Succeeded | TaskPhase::Failed))
                    .then_some(status)
            }
        },
    )
    .await;
    let probe_log = text(
        &kubectl(
            &node,
            &[
                "logs",
                "-n",
                TASKS,
                "-l",
                &format!("recac.io/task={probe_task}"),
                "-c",
                "agent",
                "--tail=-1",
            ],
            None,
        )
        .stdout,
    );
    let probe_ok = probed.phase == Some(TaskPhase::Succeeded)
        && probe_log.contains("secret-probe: 0 of ")
        && probe_log.contains(", 2 recac processes probed");
    if !probe_ok {
        let selector = format!("recac.io/task={probe_task}");
        let pods = kubectl(
            &node,
            &["describe", "pods", "-n", TASKS, "-l", &selector],
            None,
        );
        let broker = kubectl(
            &node,
            &[
                "logs",
                "-n",
                TASKS,
                "-l",
                &selector,
                "-c",
                "secrets",
                "--tail=-1",
            ],
            None,
        );
        panic!(
            "a command the model runs read the task's Secrets (or the probe did not run): {probed:?}\n{probe_log}\n{}\n{}{}",
            text(&pods.stdout),
            text(&broker.stdout),
            text(&broker.stderr)
        );
    }
    let probe_summary = probe_log
        .lines()
        .filter_map(|l| l.find("secret-probe: ").map(|at| &l[at..]))
        // The summary the probe printed (a digit), not the command's text in the log.
        .find(|l| {
            l.contains(" reads succeeded")
                && l["secret-probe: ".len()..].starts_with(|c: char| c.is_ascii_digit())
        })
        .unwrap_or_default()
        .to_string();

    // The planning run waits with its plan, its branch never pushed; an approval by
    // annotation settles it.
    let planned = wait_for(
        "the planning run to wait for approval",
        Duration::from_secs(120),
        || {
            let tasks_api = tasks_api.clone();
            async move {
                let task = tasks_api.get_opt(plan_task).await.ok()??;
                let status = task.status.clone()?;
                (status.phase? == TaskPhase::AwaitingApproval).then_some(status)
            }
        },
    )
    .await;
    let plan_text = planned.plan.clone().unwrap_or_default();
    assert!(
        plan_text.starts_with("[demo model] plan:") && plan_text.contains("greetings/quinn.txt"),
        "the plan: {planned:?}"
    );
    let plan_branch = Command::new("git")
        .args(["--git-dir"])
        .arg(git_root.join(demo::REPOSITORY))
        .args(["show-ref", &format!("refs/heads/recac/{plan_task}")])
        .output()
        .expect("git runs");
    assert!(
        text(&plan_branch.stdout).trim().is_empty(),
        "a planning run pushed its branch: {}",
        text(&plan_branch.stdout)
    );
    kubectl_ok(
        &node,
        &[
            "annotate",
            "agenttask",
            plan_task,
            "-n",
            TASKS,
            "recac.io/approval=approved",
            "recac.io/approval-by=e2e",
        ],
        None,
    );
    let approved = wait_for(
        "the approved plan to settle",
        Duration::from_secs(60),
        || {
            let tasks_api = tasks_api.clone();
            async move {
                let status = tasks_api.get_opt(plan_task).await.ok()??.status?;
                (status.phase? == TaskPhase::Succeeded).then_some(status)
            }
        },
    )
    .await;
    assert!(
        approved
            .conditions
            .iter()
            .any(|c| c.type_ == "Succeeded" && c.reason == "PlanApproved"),
        "{approved:?}"
    );

    // A suspended task's pod stops well within its grace period, its work pushed: the agent
    // handles SIGTERM in a real container.
    let suspended_task = "e2e-suspend";
    kubectl_ok(
        &node,
        &["apply", "-f", "-"],
        Some(&format!(
            r#"apiVersion: recac.io/v1alpha1
kind: AgentTask
metadata: {{name: {suspended_task}, namespace: {TASKS}}}
spec:
  prompt: |
    Add a greeting for Zoe.
    File: greetings/zoe.txt
    Line: Hello, Zoe!
  repository: {{url: "{repository_url}", baseBranch: main}}
  agent:
    env: [{{name: RECAC_TEST_COMMAND, value: "sleep 600"}}]
"#
        )),
    );
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), TASKS);
    let selector = format!("recac.io/task={suspended_task}");
    let started_deadline = Instant::now() + Duration::from_secs(90);
    let pod_name = loop {
        let pods = pods_api
            .list(&ListParams::default().labels(&selector))
            .await
            .expect("pods");
        let name = pods.items.first().and_then(|p| p.metadata.name.clone());
        let logs = name
            .as_deref()
            .map(|n| text(&kubectl(&node, &["logs", "-n", TASKS, n], None).stdout))
            .unwrap_or_default();
        if let Some(name) = name.filter(|_| logs.contains("running tests")) {
            break name;
        }
        if Instant::now() > started_deadline {
            let state = kubectl(
                &node,
                &["get", "at", suspended_task, "-n", TASKS, "-o", "yaml"],
                None,
            );
            panic!(
                "the suspended task's tests did not start in 90 s:\n{}\n{logs}",
                text(&state.stdout)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let suspended_at = Instant::now();
    kubectl_ok(
        &node,
        &[
            "patch",
            "agenttask",
            suspended_task,
            "-n",
            TASKS,
            "--type=merge",
            "-p",
            r#"{"spec":{"suspend":true}}"#,
        ],
        None,
    );
    wait_for(
        "the suspended task's pod to end",
        Duration::from_secs(60),
        || {
            let pods_api = pods_api.clone();
            let pod_name = pod_name.clone();
            async move {
                pods_api
                    .get_opt(&pod_name)
                    .await
                    .ok()?
                    .is_none()
                    .then_some(())
            }
        },
    )
    .await;
    let stop_seconds = suspended_at.elapsed().as_secs_f64();
    assert!(
        stop_seconds < 30.0,
        "the pod took {stop_seconds:.1} s to stop (grace period 60 s)"
    );
    let branch = format!("recac/{suspended_task}");
    let pushed = Command::new("git")
        .args(["--git-dir"])
        .arg(git_root.join(demo::REPOSITORY))
        .args(["show", &format!("{branch}:greetings/zoe.txt")])
        .output()
        .expect("git runs");
    assert_eq!(
        text(&pushed.stdout).trim(),
        "Hello, Zoe!",
        "the stopped agent pushed its work: {}",
        text(&pushed.stderr)
    );

    // The task whose deadline came first ended with its work pushed.
    let cut = wait_for("the deadline task to end", Duration::from_secs(150), || {
        let tasks_api = tasks_api.clone();
        async move {
            let status = tasks_api.get_opt(deadline_task).await.ok()??.status?;
            (status.phase? == TaskPhase::Failed).then_some(status)
        }
    })
    .await;
    assert!(
        cut.partial == Some(true)
            && cut.commit.is_some()
            && cut
                .conditions
                .iter()
                .any(|c| c.type_ == "Failed" && c.reason == "DeadlineExceeded"),
        "the deadline task: {cut:?}"
    );
    let kept = Command::new("git")
        .args(["--git-dir"])
        .arg(git_root.join(demo::REPOSITORY))
        .args(["show", &format!("recac/{deadline_task}:greetings/dee.txt")])
        .output()
        .expect("git runs");
    assert_eq!(
        text(&kept.stdout).trim(),
        "Hello, Dee!",
        "the work before the deadline is on the branch: {}",
        text(&kept.stderr)
    );
    let cut_message = cut.message.clone().unwrap_or_default();

    // Killing the leader's pod hands over to the other replica.
    let holder = lease_holder(&client).await.expect("a leader");
    let leader_pod = holder.split('_').next().unwrap_or_default().to_string();
    let killed = Instant::now();
    kubectl_ok(
        &node,
        &[
            "delete",
            "pod",
            &leader_pod,
            "-n",
            SYSTEM,
            "--grace-period=0",
            "--force",
            "--wait=false",
        ],
        None,
    );
    let new_holder = wait_for("another replica to lead", Duration::from_secs(60), || {
        let client = client.clone();
        let leader_pod = leader_pod.clone();
        async move {
            lease_holder(&client)
                .await
                .filter(|h| !h.starts_with(&format!("{leader_pod}_")))
        }
    })
    .await;
    let handover = killed.elapsed().as_secs_f64();

    // Installed once with the Helm chart: the kustomize install removed (its namespace and
    // the CRDs with it), the chart installed into the same namespace with the same
    // configuration, and one more ticket through the whole loop. The failing ticket went
    // back to To Do with its trigger label; its reporter takes the label off, as a person
    // would, so that the new operator has only the new ticket to run.
    sim.relabel_as(&failing, demo::REPORTER_EMAIL, &[], &[demo::TRIGGER_LABEL]);
    let removed = realnode::remove_kustomize(&node, &overlay).unwrap_or_else(|e| panic!("{e}"));
    say(format!(
        "the kustomize install removed in {:.1} s",
        removed.as_secs_f64()
    ));
    // The chart deploys its own proxy (rolled out below); its pod's address is new, so the
    // agents under the chart run with the network open.
    let helm_config = demo.operator_config(&node, None);
    let installed = realnode::deploy_with_helm(&node, &helm(), work.path(), &helm_config)
        .unwrap_or_else(|e| panic!("{e}"));
    kubectl_ok(
        &node,
        &[
            "rollout",
            "status",
            "deployment/recac-egress",
            "-n",
            SYSTEM,
            "--timeout=120s",
        ],
        None,
    );
    say(format!(
        "`helm install` rolled out in {:.1} s",
        installed.as_secs_f64()
    ));
    let helm_ticket = demo.add_ticket(IssueSeed {
        summary: "Greet Helm".into(),
        description: Some(format!(
            "Add a greeting for Helm.\n\nRepo: {repository_url}\nFile: greetings/helm.txt\nLine: Hello, Helm!"
        )),
        ..Default::default()
    });
    let helm_started = Instant::now();
    let helm_deadline = helm_started + Duration::from_secs(180);
    while !ended(sim, &helm_ticket, Ends::AsDemo(Expected::Succeeds)) {
        if Instant::now() > helm_deadline {
            let at = kubectl(&node, &["get", "at,jobs,pods", "-A", "-o", "wide"], None);
            let logs = operator_logs(&node);
            panic!(
                "{helm_ticket} did not end under the Helm install in 180 s: {:?}\n{}\n{}",
                sim.issue(&helm_ticket)
                    .map(|i| (i.status, i.comments.len())),
                text(&at.stdout),
                text(&logs.stdout)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let helm_seconds = helm_started.elapsed().as_secs_f64();
    let releases = Command::new(helm())
        .args(["list", "--namespace", SYSTEM])
        .output()
        .expect("helm runs");

    say("node:");
    eprintln!(
        "{}",
        kubectl_ok(&node, &["get", "node", "-o", "wide"], None)
    );
    say("agent pods (image ID, container ID):");
    for (name, line) in &lines {
        eprintln!("  {name}: {line}");
    }
    say(format!(
        "the task's Secrets from a command the model runs, in a real pod: {probe_summary}"
    ));
    say(format!(
        "planning run in a real pod: {} bytes of plan, nothing pushed, approved by annotation",
        plan_text.len()
    ));
    say(format!("deadline task in a real pod: {cut_message}"));
    say(format!(
        "egress allow-list in real pods: git and the model through the proxy, {} NetworkPolicies owned by Jobs; {egress_ticket}'s task was refused {:?} and its comment ({} bytes) names files.example.com:443",
        owned_by_jobs,
        egress.blocked,
        blocked_comment.len()
    ));
    say(format!(
        "suspended task: its pod ended {stop_seconds:.1} s after the suspend, its work pushed to {branch}"
    ));
    say(format!(
        "leader {holder} killed; {new_holder} leads after {handover:.1} s"
    ));
    say(format!(
        "installed with Helm: {helm_ticket} ended {helm_seconds:.1} s after it was filed"
    ));
    eprintln!("{}", text(&releases.stdout));
    say(format!(
        "the loop took {loop_seconds:.1} s; the whole test {:.1} s",
        begun.elapsed().as_secs_f64()
    ));
    drop(demo);
}
