//! The whole loop on a real node: the operator deployed with `kubectl apply -k` from the built
//! image (two replicas, in-cluster configuration, its ServiceAccount and RBAC), the agents as
//! Jobs in a namespace that enforces the restricted Pod Security Standard, run by a kubelet and
//! containerd from the same image. The Jira simulator, the git server (with its own CA) and
//! the demo model run on this machine, reached by the pods through the node's address.
//!
//! `make e2e` runs it inside `hack/realnode-up.sh --run`, which starts the node and exports
//! where it is; without that environment the test is ignored.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};
use recac_api::{AgentTask, TaskPhase};
use recac_dev::demo::{self, Expected};
use recac_dev::model::DemoModel;
use recac_gitserver::{GitServer, GitServerOptions};
use recac_jira_sim::{IssueSeed, JiraSim};
use recac_tests::{repo_root, text, wait_for};

const SYSTEM: &str = "recac-system";
const TASKS: &str = "recac-demo";
const LOOP_TIMEOUT: Duration = Duration::from_secs(300);

/// What `hack/realnode-up.sh --run` exports.
struct Node {
    ip: IpAddr,
    apiserver_host: String,
    apiserver_port: String,
    kubectl: String,
    image: String,
}

impl Node {
    fn from_env() -> Option<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Some(Self {
            ip: var("REALNODE_NODE_IP")?.parse().ok()?,
            apiserver_host: var("REALNODE_APISERVER_HOST")?,
            apiserver_port: var("REALNODE_APISERVER_PORT")?,
            kubectl: var("REALNODE_KUBECTL")?,
            image: var("REALNODE_IMAGE")?,
        })
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write;
        let mut child = Command::new(&self.kubectl)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        if let Some(input) = stdin
            && let Some(mut pipe) = child.stdin.take()
        {
            pipe.write_all(input.as_bytes()).expect("kubectl stdin");
        }
        child.wait_with_output().expect("kubectl ends")
    }

    /// Runs kubectl and panics with its output when it fails.
    fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }
}

fn say(message: impl std::fmt::Display) {
    eprintln!("e2e: {message}");
}

/// The operator's configuration for this run: the simulator, the git server and the model
/// on the node's address, the agents from the built image.
fn operator_config(node: &Node, jira: SocketAddr, git: SocketAddr, model: SocketAddr) -> String {
    format!(
        r#"operator:
  namespaces: [{TASKS}]
  adminAddress: 0.0.0.0:8080
  leaderElection:
    leaseDurationSeconds: 6
    renewDeadlineSeconds: 4
    retryPeriodSeconds: 1
taskController:
  maxConcurrentTasks: 2
  retryBackoffSeconds: 2
agent:
  image: {image}
  imagePullPolicy: Never
  provider: openai
  model: {model_name}
  secretRefs: [recac-demo-credentials]
  gitCredentialHosts: ["{git}"]
  caBundle: {{configMap: recac-demo-ca}}
  resources:
    requests: {{cpu: 100m, memory: 128Mi}}
    limits: {{memory: 512Mi}}
  env:
    - name: OPENAI_BASE_URL
      value: http://{model}/v1
  ttlSecondsAfterFinished: 3600
jira:
  url: http://{jira}
  allowInsecureHttp: true
sources:
  - name: demo
    project: {project}
    label: {label}
    namespace: {TASKS}
    template: {{maxRetries: 2, timeoutSeconds: 600}}
    repository:
      fromDescription: true
    claim: {{transition: In Progress, assign: true}}
    pollIntervalSeconds: 2
feedback:
  commentOnRetry: true
  retrySeconds: 1
  succeeded: {{transition: In Review}}
  failed: {{transition: To Do}}
"#,
        image = node.image,
        model_name = recac_dev::model::MODEL_NAME,
        project = demo::PROJECT,
        label = demo::TRIGGER_LABEL,
    )
}

/// A kustomize overlay of `config/default`: the built image (never pulled), this run's
/// configuration, and the apiserver's address (the node has no kube-proxy for the
/// `kubernetes` Service).
fn write_overlay(dir: &Path, node: &Node, config: &str) {
    // kustomize takes bases by relative path only.
    let root = repo_root().canonicalize().expect("repository root");
    let below = dir
        .canonicalize()
        .expect("overlay folder")
        .strip_prefix(&root)
        .expect("the overlay lies inside the repository")
        .components()
        .count();
    let base = format!("{}config/default", "../".repeat(below));
    let (name, tag) = node
        .image
        .rsplit_once(':')
        .unwrap_or((&node.image, "latest"));
    std::fs::write(dir.join("config.yaml"), config).expect("config written");
    std::fs::write(
        dir.join("kustomization.yaml"),
        format!(
            r#"apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {base}
images:
  - name: ghcr.io/recac-io/recac
    newName: {name}
    newTag: "{tag}"
configMapGenerator:
  - name: recac-config
    namespace: {SYSTEM}
    behavior: replace
    files:
      - config.yaml
patches:
  - target: {{kind: Deployment, name: recac-orchestrator}}
    patch: |
      apiVersion: apps/v1
      kind: Deployment
      metadata:
        name: recac-orchestrator
        namespace: {SYSTEM}
      spec:
        template:
          spec:
            containers:
              - name: operator
                imagePullPolicy: Never
                env:
                  - name: KUBERNETES_SERVICE_HOST
                    value: "{host}"
                  - name: KUBERNETES_SERVICE_PORT
                    value: "{port}"
                  - name: RUST_LOG
                    value: info,recac=debug
"#,
            host = node.apiserver_host,
            port = node.apiserver_port,
        ),
    )
    .expect("kustomization written");
}

/// The demo ticket keys with what each should end as, and the simulator.
/// How a ticket of this run ends: as a demo ticket does, or failed for good (every attempt's
/// tests fail), which gets the failure comment with the agent's log tail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ends {
    AsDemo(Expected),
    Failed,
}

async fn start_jira(node: &Node, repository_url: &str) -> (JiraSim, Vec<(String, Ends)>) {
    let seed = demo::sim_seed();
    let sim = JiraSim::bind(SocketAddr::new(node.ip, 0), seed)
        .await
        .expect("the Jira simulator listens on the node's address");
    let mut tickets: Vec<(IssueSeed, Ends)> = demo::tickets(repository_url)
        .into_iter()
        .map(|(ticket, expected)| (ticket, Ends::AsDemo(expected)))
        .collect();
    tickets.push((
        IssueSeed {
            project: demo::PROJECT.into(),
            summary: "Greet Bob".into(),
            description: Some(format!(
                "Add a greeting for Bob.\n\nRepo: {repository_url}\nFile: greetings/bob.txt\nLine: Hello, Bob"
            )),
            labels: vec![demo::TRIGGER_LABEL.into()],
            ..Default::default()
        },
        Ends::Failed,
    ));
    let tickets = tickets
        .into_iter()
        .map(|(ticket, ends)| {
            let key = sim.add_issue(IssueSeed {
                reporter: Some(demo::REPORTER_EMAIL.into()),
                ..ticket
            });
            (key, ends)
        })
        .collect();
    (sim, tickets)
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

    // The services the pods reach through the node's address.
    let git_token = format!("e2e-git-{}", std::process::id());
    let git_root = work.path().join("git");
    std::fs::create_dir_all(&git_root).expect("git root");
    recac_gitserver::create_repository(
        &git_root,
        demo::REPOSITORY,
        demo::BASE_BRANCH,
        &demo::repository_files(),
        "Greetings, with a test",
    )
    .expect("demo repository");
    let git = GitServer::start(GitServerOptions {
        root: git_root.clone(),
        token: git_token.clone(),
        tls: true,
        address: SocketAddr::new(node.ip, 0),
    })
    .await
    .expect("git server");
    let repository_url = format!("{}/{}", git.url(), demo::REPOSITORY);
    let model_key = format!("e2e-model-{}", std::process::id());
    let model = DemoModel::start(SocketAddr::new(node.ip, 0), &model_key)
        .await
        .expect("demo model");
    let (sim, tickets) = start_jira(&node, &repository_url).await;
    say(format!(
        "Jira simulator {}, git {repository_url}, model {}",
        sim.url(),
        model.address()
    ));

    // Namespaces, the agents' Secret and CA, the operator's Jira credentials.
    node.ok(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {TASKS}\n  labels:\n    pod-security.kubernetes.io/enforce: restricted\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {SYSTEM}\n  labels:\n    pod-security.kubernetes.io/enforce: restricted\n"
        )),
    );
    let ca_file = work.path().join("git-ca.pem");
    std::fs::write(&ca_file, git.ca_pem().expect("TLS")).expect("CA written");
    let ca_arg = format!("--from-file=ca.crt={}", ca_file.display());
    node.ok(
        &["create", "configmap", "recac-demo-ca", "-n", TASKS, &ca_arg],
        None,
    );
    let git_arg = format!("--from-literal=RECAC_GIT_TOKEN={git_token}");
    let model_arg = format!("--from-literal=OPENAI_API_KEY={model_key}");
    node.ok(
        &[
            "create",
            "secret",
            "generic",
            "recac-demo-credentials",
            "-n",
            TASKS,
            &git_arg,
            &model_arg,
        ],
        None,
    );
    let email_arg = format!("--from-literal=email={}", recac_jira_sim::BOT_EMAIL);
    let token_arg = format!("--from-literal=token={}", recac_jira_sim::BOT_TOKEN);
    node.ok(
        &[
            "create",
            "secret",
            "generic",
            "recac-jira",
            "-n",
            SYSTEM,
            &email_arg,
            &token_arg,
        ],
        None,
    );

    // The operator, as the README deploys it (the overlay inside the repository: kustomize
    // reads bases by relative path).
    let target = repo_root().join("target");
    std::fs::create_dir_all(&target).expect("target folder");
    let overlay_holder = tempfile::Builder::new()
        .prefix("e2e-overlay-")
        .tempdir_in(&target)
        .expect("overlay folder");
    let overlay = overlay_holder.path().to_path_buf();
    write_overlay(
        &overlay,
        &node,
        &operator_config(&node, sim.addr(), git.address(), model.address()),
    );
    let applied = Instant::now();
    node.ok(&["apply", "-k", &overlay.display().to_string()], None);
    let rollout = node.kubectl(
        &[
            "rollout",
            "status",
            "deployment/recac-orchestrator",
            "-n",
            SYSTEM,
            "--timeout=180s",
        ],
        None,
    );
    if !rollout.status.success() {
        let pods = node.kubectl(&["describe", "pods", "-n", SYSTEM], None);
        let logs = node.kubectl(
            &[
                "logs",
                "-n",
                SYSTEM,
                "-l",
                "app.kubernetes.io/name=recac",
                "--tail=50",
            ],
            None,
        );
        panic!(
            "the operator did not roll out: {}\n{}\n{}",
            text(&rollout.stderr),
            text(&pods.stdout),
            text(&logs.stdout)
        );
    }
    say(format!(
        "operator rolled out in {:.1} s",
        applied.elapsed().as_secs_f64()
    ));

    // Each demo ticket ends as in `recac dev`.
    let loop_started = Instant::now();
    let deadline = Instant::now() + LOOP_TIMEOUT;
    while !tickets.iter().all(|(key, e)| ended(&sim, key, *e)) {
        if Instant::now() > deadline {
            let at = node.kubectl(&["get", "at,jobs,pods", "-n", TASKS, "-o", "wide"], None);
            let logs = node.kubectl(
                &[
                    "logs",
                    "-n",
                    SYSTEM,
                    "-l",
                    "app.kubernetes.io/name=recac",
                    "--tail=80",
                ],
                None,
            );
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
    let failed = tickets
        .iter()
        .find(|(_, e)| *e == Ends::Failed)
        .map(|(k, _)| k.clone())
        .expect("a failing ticket");
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
        lines.insert(name, format!("{} {}", status.image_id, container_id));
    }

    // A suspended task's pod stops well within its grace period, its work pushed: the agent
    // handles SIGTERM in a real container.
    let suspended_task = "e2e-suspend";
    node.ok(
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
            .map(|n| text(&node.kubectl(&["logs", "-n", TASKS, n], None).stdout))
            .unwrap_or_default();
        if let Some(name) = name.filter(|_| logs.contains("running tests")) {
            break name;
        }
        if Instant::now() > started_deadline {
            let state = node.kubectl(
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
    node.ok(
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

    // Killing the leader's pod hands over to the other replica.
    let holder = lease_holder(&client).await.expect("a leader");
    let leader_pod = holder.split('_').next().unwrap_or_default().to_string();
    let killed = Instant::now();
    node.ok(
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

    say("node:");
    eprintln!("{}", node.ok(&["get", "node", "-o", "wide"], None));
    say("agent pods (image ID, container ID):");
    for (name, line) in &lines {
        eprintln!("  {name}: {line}");
    }
    say(format!(
        "suspended task: its pod ended {stop_seconds:.1} s after the suspend, its work pushed to {branch}"
    ));
    say(format!(
        "leader {holder} killed; {new_holder} leads after {handover:.1} s"
    ));
    say(format!(
        "the loop took {loop_seconds:.1} s; the whole test {:.1} s",
        begun.elapsed().as_secs_f64()
    ));
    drop((git, model, sim));
}
