//! High availability: several `recac orchestrate` processes against a real kube-apiserver
//! (and kube-controller-manager, the node agent and the Jira simulator where Jobs must run),
//! one leader at a time over a `coordination.k8s.io` Lease.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use recac_api::{AgentTask, TaskPhase};
use recac_jira_sim::{BOT_EMAIL, BOT_TOKEN, JiraSim};
use recac_testenv::{ControlPlane, ControlPlaneOptions, NodeAgent, NodeAgentOptions};
use recac_tests::{control_plane, free_port, recac_binary, try_http_get, wait_for};
use tokio::io::AsyncWriteExt;

const LEASE: &str = "recac-ha";
const SUCCEED: &str = r#"if [ "$RECAC_ATTEMPT" = 1 ]; then sleep "${FAKE_SLEEP:-0}"; fi; printf '{"outcome":"succeeded","branch":"%s","summary":"done"}' "$RECAC_BRANCH" > "$RECAC_RESULT_PATH""#;

/// One operator replica: a `recac orchestrate` process with its own admin port.
struct Replica {
    child: Child,
    admin: SocketAddr,
    log: PathBuf,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    async fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = try_http_get(self.admin, "/metrics").await?;
        body.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    }

    /// Writes this replica sent to the API (the fenced client's counter), leases and its
    /// own pod's label excluded.
    async fn controller_writes(&self) -> f64 {
        let (_, body) = try_http_get(self.admin, "/metrics")
            .await
            .expect("metrics answer");
        body.lines()
            .filter(|l| l.starts_with("recac_api_requests_total{"))
            .filter(|l| {
                ["create", "patch", "update", "delete"]
                    .iter()
                    .any(|v| l.contains(&format!("verb=\"{v}\"")))
            })
            .filter(|l| !l.contains("resource=\"leases\"") && !l.contains("resource=\"pods\""))
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .sum()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

struct Cluster<'a> {
    plane: &'a ControlPlane,
    client: Client,
    /// Where the tasks and Jobs live.
    ns: String,
    /// Where the Lease and the replicas' pods live.
    system: String,
    dir: tempfile::TempDir,
    extra_config: String,
    /// Lines added to each replica's `taskController:` section.
    task_controller_extra: String,
    lease: String,
}

impl Cluster<'static> {
    async fn new(prefix: &str, controller_manager: bool) -> Self {
        let plane = control_plane(ControlPlaneOptions {
            controller_manager,
            ..Default::default()
        })
        .await;
        Cluster::on(plane, prefix).await
    }
}

impl<'a> Cluster<'a> {
    async fn on(plane: &'a ControlPlane, prefix: &str) -> Self {
        let ns = plane.namespace(prefix).await.expect("namespace");
        let system = plane
            .namespace(&format!("{prefix}-sys"))
            .await
            .expect("namespace");
        let client = plane.client().await.expect("client");
        Self {
            plane,
            client,
            ns,
            system,
            dir: tempfile::tempdir().expect("temp dir"),
            extra_config: String::new(),
            task_controller_extra: String::new(),
            lease: LEASE.to_string(),
        }
    }

    /// A Pod object standing for a replica's pod (never run: its node does not exist), so
    /// the leader label has somewhere to go.
    async fn pod_object(&self, name: &str) {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.system);
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "recac"}},
            "spec": {"nodeName": "nowhere", "containers": [{"name": "operator", "image": "recac"}]},
        }))
        .expect("pod");
        pods.create(&PostParams::default(), &pod)
            .await
            .expect("pod created");
    }

    async fn leader_label(&self, name: &str) -> Option<String> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.system);
        pods.get(name)
            .await
            .expect("pod")
            .labels()
            .get("recac.io/leader")
            .cloned()
    }

    fn start(&self, name: &str, kubeconfig: &Path, env: &[(&str, String)]) -> Replica {
        let port = free_port();
        let config = self.dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &config,
            format!(
                "operator:\n  namespaces: [{ns}]\n  adminAddress: 127.0.0.1:{port}\n  stopTimeoutSeconds: 5\n  leaderElection:\n    leaseName: {lease}\n    leaseDurationSeconds: 4\n    renewDeadlineSeconds: 3\n    retryPeriodSeconds: 1\ntaskController:\n  maxConcurrentTasks: 50\n  workers: 8\n  retryBackoffSeconds: 1\n  maxRetryBackoffSeconds: 2\n{task_controller_extra}agent:\n  command: {command}\n{extra}",
                ns = self.ns,
                lease = self.lease,
                command = serde_json::to_string(&["sh", "-c", SUCCEED]).expect("json"),
                extra = self.extra_config,
                task_controller_extra = self.task_controller_extra,
            ),
        )
        .expect("config written");
        let log = self
            .dir
            .path()
            .join(format!("{name}.{}.log", rand_suffix()));
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new(recac_binary());
        command
            .args(["orchestrate", "--config"])
            .arg(&config)
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", name)
            .env("POD_NAMESPACE", &self.system)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(stderr);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("recac orchestrate starts");
        Replica {
            child,
            admin: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
        }
    }

    /// The replica named by the Lease's holder identity (`<pod>_<suffix>`), if any.
    async fn holder(&self) -> Option<String> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), &self.system);
        let lease = leases.get_opt(&self.lease).await.ok()??;
        lease.spec?.holder_identity
    }

    async fn leader_pod(&self) -> Option<String> {
        self.holder()
            .await
            .and_then(|h| h.split_once('_').map(|(pod, _)| pod.to_string()))
    }

    async fn wait_leader(&self, among: &[&str]) -> String {
        wait_for("a leader", Duration::from_secs(30), || async {
            self.leader_pod()
                .await
                .filter(|pod| among.contains(&pod.as_str()))
        })
        .await
    }

    async fn create_task(&self, name: &str) {
        self.create_task_with(name, serde_json::json!({"prompt": "say hello"}))
            .await
    }

    /// A task whose first attempt runs for a minute.
    async fn create_slow_task(&self, name: &str) {
        self.create_task_with(
            name,
            serde_json::json!({
                "prompt": "take your time",
                "agent": {"env": [{"name": "FAKE_SLEEP", "value": "60"}]},
            }),
        )
        .await
    }

    /// A task of `spec` (merged over the test repository).
    async fn create_task_with(&self, name: &str, spec: serde_json::Value) {
        let mut full = serde_json::json!({
            "repository": {"url": "https://git.example.com/org/repo.git"},
        });
        if let (Some(full), Some(extra)) = (full.as_object_mut(), spec.as_object()) {
            full.extend(extra.clone());
        }
        let api: Api<AgentTask> = Api::namespaced(self.client.clone(), &self.ns);
        let task: AgentTask = serde_json::from_value(serde_json::json!({
            "apiVersion": "recac.io/v1alpha1",
            "kind": "AgentTask",
            "metadata": {"name": name},
            "spec": full,
        }))
        .expect("task");
        api.create(&PostParams::default(), &task)
            .await
            .expect("task created");
    }

    /// A node agent running this cluster's pods, and a Jira simulator with project OPS.
    async fn with_node_and_jira(&self) -> (NodeAgent, JiraSim) {
        let node = NodeAgent::start(
            self.client.clone(),
            NodeAgentOptions {
                namespaces: vec![self.ns.clone()],
                ..Default::default()
            },
        )
        .await
        .expect("node agent starts");
        let sim = JiraSim::cloud().await.expect("simulator");
        sim.add_project("OPS", "Operations");
        (node, sim)
    }

    async fn jobs_of(&self, task: &str) -> Vec<Job> {
        let api: Api<Job> = Api::namespaced(self.client.clone(), &self.ns);
        api.list(&ListParams::default().labels(&format!("recac.io/task={task}")))
            .await
            .expect("jobs")
            .items
    }

    async fn task(&self, name: &str) -> AgentTask {
        let api: Api<AgentTask> = Api::namespaced(self.client.clone(), &self.ns);
        api.get(name).await.expect("task")
    }
}

/// How the replicas reach the simulator as the bot.
const JIRA_ENV: [(&str, &str); 2] = [("HA_JIRA_EMAIL", BOT_EMAIL), ("HA_JIRA_TOKEN", BOT_TOKEN)];

/// The `jira:`, `sources:` and `feedback:` sections for a replica; `jira_extra` and
/// `source_extra` are lines added to the `jira:` section and to the source.
fn jira_config(sim: &JiraSim, ns: &str, jira_extra: &str, source_extra: &str) -> String {
    format!(
        "jira:\n  url: {url}\n{jira_extra}  auth: {{type: basic, emailEnv: HA_JIRA_EMAIL, tokenEnv: HA_JIRA_TOKEN}}\nsources:\n  - name: ops\n    project: OPS\n    label: recac-agent\n    namespace: {ns}\n    pollIntervalSeconds: 1\n    repository: {{default: https://git.example.com/org/repo.git}}\n{source_extra}feedback:\n  commentOnDispatch: false\n  retrySeconds: 1\n  maxRetrySeconds: 2\n",
        url = sim.url(),
    )
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default()
}

/// Writes a kubeconfig that reaches the apiserver at `server` instead (a proxy).
fn kubeconfig_via(plane: &ControlPlane, dir: &Path, server: &str) -> PathBuf {
    let text = std::fs::read_to_string(plane.kubeconfig_path()).expect("kubeconfig");
    assert!(
        text.contains(plane.server()),
        "the kubeconfig names the server"
    );
    let path = dir.join("kubeconfig-via-proxy");
    std::fs::write(&path, text.replace(plane.server(), server)).expect("kubeconfig written");
    path
}

/// A TCP proxy the test can cut: while cut, every connection through it is closed and
/// new ones are closed at once, as a partition that outlasts TCP would leave them.
struct Proxy {
    address: SocketAddr,
    cut: Arc<AtomicBool>,
    generation: tokio::sync::watch::Sender<u64>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let address = listener.local_addr().expect("address");
        let cut = Arc::new(AtomicBool::new(false));
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let (cut_flag, generations) = (cut.clone(), generation.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if cut_flag.load(Ordering::SeqCst) {
                    let _ = inbound.shutdown().await;
                    continue;
                }
                let mut cut_signal = generations.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_signal.changed() => {}
                    }
                });
            }
        });
        Self {
            address,
            cut,
            generation,
        }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

fn server_address(plane: &ControlPlane) -> SocketAddr {
    let server = plane.server();
    let host_port = server.trim_start_matches("https://").trim_end_matches('/');
    host_port.parse().expect("the server is host:port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_writes_and_sigterm_hands_over_in_about_a_second() {
    let c = Cluster::new("ha-term", false).await;
    for pod in ["replica-a", "replica-b"] {
        c.pod_object(pod).await;
    }
    let kubeconfig = c.plane.kubeconfig_path().to_path_buf();
    let mut replicas: BTreeMap<String, Replica> = ["replica-a", "replica-b"]
        .into_iter()
        .map(|name| (name.to_string(), c.start(name, &kubeconfig, &[])))
        .collect();

    let leader = c.wait_leader(&["replica-a", "replica-b"]).await;
    let standby = if leader == "replica-a" {
        "replica-b"
    } else {
        "replica-a"
    };
    wait_for(
        "the leader's pod labelled",
        Duration::from_secs(10),
        || async { (c.leader_label(&leader).await.as_deref() == Some("true")).then_some(()) },
    )
    .await;
    assert_eq!(
        c.leader_label(standby).await,
        None,
        "the standby is unlabelled"
    );
    wait_for("recac_leader on both", Duration::from_secs(10), || async {
        let on_leader = replicas[&leader].metric("recac_leader").await;
        let on_standby = replicas[standby].metric("recac_leader").await;
        (on_leader == Some(1.0) && on_standby == Some(0.0)).then_some(())
    })
    .await;

    c.create_task("before-handover").await;
    wait_for("a Job from the leader", Duration::from_secs(30), || async {
        (!c.jobs_of("before-handover").await.is_empty()).then_some(())
    })
    .await;
    let standby_writes = replicas[standby].controller_writes().await;
    assert_eq!(standby_writes, 0.0, "the standby writes nothing");

    let terminated = Instant::now();
    replicas[&leader].signal("-TERM");
    let holder = wait_for(
        "the standby to take over",
        Duration::from_secs(20),
        || async { c.leader_pod().await.filter(|pod| pod == standby) },
    )
    .await;
    let handover = terminated.elapsed();
    println!(
        "SIGTERM handover: {:.2}s (lease duration 4s)",
        handover.as_secs_f64()
    );
    assert_eq!(holder, standby);
    assert!(
        handover < Duration::from_secs(3),
        "the released lease is taken at once, not after it expires: {handover:?}\n{}",
        replicas[standby].log_tail()
    );
    let old = replicas.get_mut(&leader).expect("replica");
    let status = wait_for("the old leader to exit", Duration::from_secs(15), || {
        let status = old.child.try_wait().ok().flatten();
        async move { status }
    })
    .await;
    assert!(status.success(), "a clean exit on SIGTERM");
    assert_eq!(c.leader_label(&leader).await, None, "its label is removed");
    wait_for(
        "the new leader's pod labelled",
        Duration::from_secs(10),
        || async { (c.leader_label(standby).await.as_deref() == Some("true")).then_some(()) },
    )
    .await;

    c.create_task("after-handover").await;
    wait_for(
        "a Job from the new leader",
        Duration::from_secs(30),
        || async { (!c.jobs_of("after-handover").await.is_empty()).then_some(()) },
    )
    .await;
    assert_eq!(c.jobs_of("before-handover").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_taken_by_a_foreign_holder_stops_every_write() {
    let c = Cluster::new("ha-foreign", false).await;
    let kubeconfig = c.plane.kubeconfig_path().to_path_buf();
    let replicas: Vec<Replica> = ["replica-a", "replica-b"]
        .into_iter()
        .map(|name| c.start(name, &kubeconfig, &[]))
        .collect();
    c.wait_leader(&["replica-a", "replica-b"]).await;
    wait_for("a replica to lead", Duration::from_secs(10), || async {
        let mut leading = 0.0;
        for replica in &replicas {
            leading += replica.metric("recac_leader").await.unwrap_or_default();
        }
        (leading == 1.0).then_some(())
    })
    .await;

    // Another controller takes the Lease and, as a holder does, keeps renewing it.
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), &c.system);
    let take = || {
        let now = k8s_openapi::jiff::Timestamp::now();
        serde_json::json!({"spec": {
            "holderIdentity": "another-controller",
            "acquireTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(now),
            "renewTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(now),
            "leaseDurationSeconds": 3600,
        }})
    };
    leases
        .patch(&c.lease, &PatchParams::default(), &Patch::Merge(&take()))
        .await
        .expect("lease taken");
    let foreign_renews = {
        let leases = leases.clone();
        let lease = c.lease.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = leases
                    .patch(&lease, &PatchParams::default(), &Patch::Merge(&take()))
                    .await;
            }
        })
    };
    let taken = Instant::now();
    wait_for(
        "every replica to stop leading",
        Duration::from_secs(10),
        || async {
            let mut all = true;
            for replica in &replicas {
                all &= replica.metric("recac_leader").await == Some(0.0);
            }
            all.then_some(())
        },
    )
    .await;
    println!(
        "foreign holder: every replica stopped leading within {} ms",
        taken.elapsed().as_millis()
    );
    let writes_before: f64 = {
        let mut sum = 0.0;
        for replica in &replicas {
            sum += replica.controller_writes().await;
        }
        sum
    };

    c.create_task("while-foreign").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        c.jobs_of("while-foreign").await.is_empty(),
        "no Job while another holds the lease"
    );
    assert!(
        c.task("while-foreign").await.status.is_none(),
        "no status write"
    );
    let mut writes_after = 0.0;
    for replica in &replicas {
        writes_after += replica.controller_writes().await;
    }
    assert_eq!(writes_before, writes_after, "no replica wrote anything");

    foreign_renews.abort();
    let _ = foreign_renews.await;
    let release = serde_json::json!({"spec": {
        "holderIdentity": null, "acquireTime": null, "renewTime": null, "leaseDurationSeconds": null,
    }});
    leases
        .patch(&c.lease, &PatchParams::default(), &Patch::Merge(&release))
        .await
        .expect("lease released");
    let released = Instant::now();
    wait_for(
        "a replica to lead again and run the task",
        Duration::from_secs(20),
        || async { (!c.jobs_of("while-foreign").await.is_empty()).then_some(()) },
    )
    .await;
    println!(
        "foreign holder released: a replica took over and created the Job in {:.2}s",
        released.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_steps_down_in_time_and_writes_nothing_when_it_returns() {
    let c = Cluster::new("ha-part", false).await;
    let proxy = Proxy::start(server_address(c.plane)).await;
    let via_proxy = kubeconfig_via(c.plane, c.dir.path(), &format!("https://{}", proxy.address));
    let partitioned = c.start("replica-a", &via_proxy, &[]);
    c.wait_leader(&["replica-a"]).await;
    let kubeconfig = c.plane.kubeconfig_path().to_path_buf();
    let other = c.start("replica-b", &kubeconfig, &[]);
    wait_for(
        "the standby's admin server",
        Duration::from_secs(20),
        || async { other.metric("recac_leader").await.filter(|v| *v == 0.0) },
    )
    .await;
    c.create_task("before-partition").await;
    // The task's first status follows its Job (when the pod runs, or 5 s later: no pod
    // runs here): the leader is done with the task once the status records the attempt.
    wait_for(
        "a Job and its recorded attempt before the partition",
        Duration::from_secs(30),
        || async {
            let recorded = c
                .task("before-partition")
                .await
                .status
                .and_then(|s| s.job_name)
                .is_some();
            (recorded && !c.jobs_of("before-partition").await.is_empty()).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes_before = partitioned.controller_writes().await;

    proxy.cut();
    let cut = Instant::now();
    let stepped_down = wait_for(
        "the partitioned leader to step down",
        Duration::from_secs(10),
        || async {
            partitioned
                .metric("recac_leader")
                .await
                .filter(|v| *v == 0.0)
                .map(|_| cut.elapsed())
        },
    )
    .await;
    println!(
        "partitioned leader stopped writing {:.2}s after the cut (renew deadline 3s, lease 4s)",
        stepped_down.as_secs_f64()
    );
    assert!(
        stepped_down < Duration::from_millis(3500),
        "it steps down by its renew deadline, before its lease can expire: {stepped_down:?}"
    );
    let took_over = wait_for(
        "the other replica to take over",
        Duration::from_secs(20),
        || async {
            c.leader_pod()
                .await
                .filter(|p| p == "replica-b")
                .map(|_| cut.elapsed())
        },
    )
    .await;
    println!(
        "the other replica led {:.2}s after the cut",
        took_over.as_secs_f64()
    );
    assert!(took_over > stepped_down, "never two leaders at once");
    c.create_task("during-partition").await;
    wait_for("the new leader's Job", Duration::from_secs(30), || async {
        (!c.jobs_of("during-partition").await.is_empty()).then_some(())
    })
    .await;

    proxy.heal();
    // The old leader's watches resume and it sees the new task; it must not act on it.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(partitioned.metric("recac_leader").await, Some(0.0));
    assert_eq!(
        partitioned.controller_writes().await,
        writes_before,
        "the returning replica wrote nothing\n{}",
        partitioned.log_tail()
    );
    assert_eq!(c.jobs_of("during-partition").await.len(), 1);
    assert_eq!(c.leader_pod().await.as_deref(), Some("replica-b"));
}

/// 200 tickets from the Jira simulator and three replicas; the leader SIGKILLed `kills`
/// times during the burst (and started again), Jira failing a share of calls when
/// `jira_faults`. Every ticket ends with one task, one claim, Jobs only for its attempts
/// and one feedback comment.
async fn burst(c: &mut Cluster<'_>, kills: usize, jira_faults: bool, restart_apiserver: bool) {
    const TICKETS: usize = 200;
    let (_node, sim) = c.with_node_and_jira().await;
    let keys = sim.add_issues("OPS", "burst", &["recac-agent"], TICKETS);
    if jira_faults {
        use recac_jira_sim::Fault;
        // About one call in five fails: rate limits, server errors, timeouts (the client
        // gives up after 2 s), dropped connections and cut-short bodies of handled calls.
        for fault in [
            Fault::rate_limited(1).sometimes(0.05),
            Fault::status(503).sometimes(0.03),
            Fault::status(500).sometimes(0.03),
            Fault::delay(Duration::from_secs(3)).sometimes(0.03),
            Fault::drop_connection().sometimes(0.03),
            Fault::malformed_json().sometimes(0.03),
        ] {
            sim.inject(fault.always());
        }
    }
    c.extra_config = jira_config(&sim, &c.ns, "  requestTimeoutSeconds: 2\n", "");
    let env = JIRA_ENV.map(|(k, v)| (k, v.to_string()));
    let kubeconfig = c.plane.kubeconfig_path().to_path_buf();
    let names = ["replica-a", "replica-b", "replica-c"];
    let mut replicas: BTreeMap<String, Replica> = names
        .iter()
        .map(|name| (name.to_string(), c.start(name, &kubeconfig, &env)))
        .collect();

    let tasks: Api<AgentTask> = Api::namespaced(c.client.clone(), &c.ns);
    if restart_apiserver {
        c.wait_leader(&names).await;
        wait_for("the burst to be under way", Duration::from_secs(60), || {
            let tasks = tasks.clone();
            async move {
                let n = tasks.list(&ListParams::default()).await.ok()?.items.len();
                (n >= 40).then_some(())
            }
        })
        .await;
        let down = Instant::now();
        c.plane
            .restart_apiserver(Duration::from_secs(5))
            .await
            .expect("the apiserver starts again");
        println!(
            "the apiserver was away for {:.1}s mid-burst",
            down.elapsed().as_secs_f64()
        );
        c.plane
            .start_controller_manager()
            .await
            .expect("the controller-manager runs");
        for (name, replica) in replicas.iter_mut() {
            assert!(
                replica.child.try_wait().ok().flatten().is_none(),
                "{name} exited while the apiserver was away:\n{}",
                replica.log_tail()
            );
        }
    }
    let mut failovers = Vec::new();
    for kill in 0..kills {
        let leader = c.wait_leader(&names).await;
        // Kill while work is in flight: after a few more tickets have become tasks.
        let seen = tasks
            .list(&ListParams::default())
            .await
            .expect("tasks")
            .items
            .len();
        let _ = wait_for("progress before the kill", Duration::from_secs(30), || {
            let tasks = tasks.clone();
            async move {
                let n = tasks.list(&ListParams::default()).await.ok()?.items.len();
                (n >= (seen + 15).min(TICKETS)).then_some(())
            }
        })
        .await;
        let old_holder = c.holder().await;
        let killed_at = Instant::now();
        {
            let replica = replicas.get_mut(&leader).expect("leader");
            let _ = replica.child.kill();
            let _ = replica.child.wait();
        }
        let new_leader = wait_for("a new leader", Duration::from_secs(30), || async {
            c.holder().await.filter(|h| Some(h) != old_holder.as_ref())
        })
        .await;
        let failover = killed_at.elapsed();
        println!(
            "kill {}: {leader} SIGKILLed; {} leads after {:.2}s",
            kill + 1,
            new_leader.split('_').next().unwrap_or_default(),
            failover.as_secs_f64()
        );
        failovers.push(failover);
        replicas.insert(leader.clone(), c.start(&leader, &kubeconfig, &env));
    }

    let progress = {
        let tasks = tasks.clone();
        let pods: Api<Pod> = Api::namespaced(c.client.clone(), &c.ns);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(30)).await;
                let mut phases: BTreeMap<String, usize> = BTreeMap::new();
                for t in tasks
                    .list(&ListParams::default())
                    .await
                    .map(|l| l.items)
                    .unwrap_or_default()
                {
                    let phase = t
                        .status
                        .and_then(|s| s.phase)
                        .map(|p| p.as_str().to_string())
                        .unwrap_or_else(|| "-".into());
                    *phases.entry(phase).or_default() += 1;
                }
                let mut pod_phases: BTreeMap<String, usize> = BTreeMap::new();
                for p in pods
                    .list(&ListParams::default())
                    .await
                    .map(|l| l.items)
                    .unwrap_or_default()
                {
                    let phase = p.status.and_then(|s| s.phase).unwrap_or_else(|| "-".into());
                    *pod_phases.entry(phase).or_default() += 1;
                }
                println!("progress: tasks {phases:?}, pods {pod_phases:?}");
            }
        })
    };
    let all_done = wait_for(
        "every ticket's task to end with its comment",
        Duration::from_secs(300),
        || {
            let tasks = tasks.clone();
            let sim = &sim;
            let keys = &keys;
            async move {
                let list = tasks.list(&ListParams::default()).await.ok()?.items;
                let finished = list
                    .iter()
                    .filter(|t| {
                        t.status
                            .as_ref()
                            .is_some_and(|s| s.phase.is_some_and(|p| p.is_finished()))
                    })
                    .count();
                let commented = keys
                    .iter()
                    .filter(|k| sim.issue(k).is_some_and(|i| !i.comments.is_empty()))
                    .count();
                (finished == TICKETS && commented == TICKETS).then_some(list)
            }
        },
    )
    .await;

    progress.abort();
    let mut per_ticket: BTreeMap<String, usize> = BTreeMap::new();
    for task in &all_done {
        let key = task
            .labels()
            .get("recac.io/ticket")
            .cloned()
            .unwrap_or_default();
        *per_ticket.entry(key).or_default() += 1;
    }
    assert_eq!(per_ticket.len(), TICKETS, "every ticket has a task");
    assert!(per_ticket.values().all(|n| *n == 1), "one task per ticket");
    let jobs: Api<Job> = Api::namespaced(c.client.clone(), &c.ns);
    let jobs = jobs.list(&ListParams::default()).await.expect("jobs").items;
    let mut per_task: BTreeMap<String, usize> = BTreeMap::new();
    for job in &jobs {
        let task = job
            .labels()
            .get("recac.io/task")
            .cloned()
            .unwrap_or_default();
        *per_task.entry(task).or_default() += 1;
    }
    for task in &all_done {
        let attempts = task.status.as_ref().and_then(|s| s.retries).unwrap_or(0) as usize + 1;
        let jobs = per_task.get(&task.name_any()).copied().unwrap_or(0);
        assert!(
            jobs >= 1 && jobs <= attempts,
            "{}: {jobs} Jobs for {attempts} attempts",
            task.name_any()
        );
    }
    for key in &keys {
        let issue = sim.issue(key).expect("issue");
        assert_eq!(
            issue.comments.len(),
            1,
            "{key}: exactly one feedback comment"
        );
        let assignments = issue
            .history
            .iter()
            .flat_map(|h| &h.items)
            .filter(|item| item.field == "assignee")
            .count();
        assert_eq!(assignments, 1, "{key}: claimed exactly once");
    }
    failovers.sort();
    if let Some(max) = failovers.last() {
        println!(
            "failover over {kills} SIGKILLs (kill to the new leader holding the lease; lease 4s): p50 {:.2}s, max {:.2}s",
            failovers[failovers.len() / 2].as_secs_f64(),
            max.as_secs_f64()
        );
    }
    if jira_faults {
        let calls = sim.calls();
        let failed = calls
            .iter()
            .filter(|c| c.status == 0 || c.status >= 429)
            .count();
        println!(
            "Jira calls: {} of which {failed} failed ({:.0}%)",
            calls.len(),
            100.0 * failed as f64 / calls.len().max(1) as f64
        );
    }
    for replica in replicas.values() {
        replica.signal("-TERM");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_five_times_during_a_burst_loses_and_duplicates_nothing() {
    burst(&mut Cluster::new("ha-burst", true).await, 5, false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jira_failing_a_fifth_of_calls_during_a_burst_loses_and_duplicates_nothing() {
    burst(&mut Cluster::new("ha-faults", true).await, 0, true, false).await;
}

/// On a control plane of its own: the apiserver goes away for 5 s mid-burst (etcd keeps
/// the data). Watches resume, no replica exits, nothing is lost or done twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_apiserver_restart_mid_burst_loses_and_duplicates_nothing() {
    let plane = ControlPlane::start(ControlPlaneOptions {
        controller_manager: true,
        ..Default::default()
    })
    .await
    .expect("a control plane of its own");
    use kube::CustomResourceExt;
    plane
        .install_crds(&[
            recac_api::AgentTask::crd(),
            recac_api::AgentTaskSchedule::crd(),
        ])
        .await
        .expect("CRDs installed");
    burst(&mut Cluster::on(&plane, "ha-restart").await, 0, false, true).await;
}

/// A replica authenticated as the shipped ServiceAccount (`config/rbac`) leads, labels its
/// pod and runs a task; the ServiceAccount cannot touch Leases outside its namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_rbac_is_enough_for_leader_election_and_no_more() {
    let mut c = Cluster::new("ha-rbac", false).await;
    let account = recac_tests::operator_service_account(c.plane);
    c.system = "recac-system".into();
    c.lease = format!("rbac-{}", rand_suffix());
    let pod = format!("replica-rbac-{}", rand_suffix());
    c.pod_object(&pod).await;

    let sa_kubeconfig = c.dir.path().join("kubeconfig-sa");
    std::fs::write(
        &sa_kubeconfig,
        recac_tests::token_kubeconfig(c.plane, &account, "recac-system"),
    )
    .expect("kubeconfig written");

    let replica = c.start(&pod, &sa_kubeconfig, &[]);
    c.wait_leader(&[pod.as_str()]).await;
    wait_for("the leader label", Duration::from_secs(10), || async {
        (c.leader_label(&pod).await.as_deref() == Some("true")).then_some(())
    })
    .await;
    c.create_task("rbac-task").await;
    wait_for("a Job", Duration::from_secs(30), || async {
        (!c.jobs_of("rbac-task").await.is_empty()).then_some(())
    })
    .await;
    assert!(
        !replica.log_tail().contains("forbidden"),
        "no request was forbidden:\n{}",
        replica.log_tail()
    );

    let config = recac_tests::token_config(c.plane, &account, "recac-system").await;
    let sa = Client::try_from(config).expect("client");
    let elsewhere: Api<Lease> = Api::namespaced(sa.clone(), &c.ns);
    assert!(
        elsewhere.list(&ListParams::default()).await.is_err(),
        "no Leases elsewhere"
    );
    let pods_elsewhere: Api<Pod> = Api::namespaced(sa, &c.ns);
    assert!(
        pods_elsewhere
            .patch(
                "anything",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({}))
            )
            .await
            .is_err_and(|e| e.to_string().contains("forbidden")),
        "no pod patches outside the operator's namespace"
    );
}

/// What a new leader finds and fixes, with the operator down in between: a Job created
/// before its task's status was written (adopted, not duplicated), a Running task whose
/// Job was deleted (retried), a Job whose task was deleted with `propagationPolicy: Orphan`
/// (deleted), and a claimed ticket whose task was deleted (handed back with one comment).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_recovers_what_the_old_one_left() {
    let mut c = Cluster::new("ha-orphans", true).await;
    let (_node, sim) = c.with_node_and_jira().await;
    c.extra_config = jira_config(&sim, &c.ns, "", "    template: {timeoutSeconds: 600}\n");
    let env = JIRA_ENV.map(|(k, v)| (k, v.to_string())).to_vec();
    let kubeconfig = c.plane.kubeconfig_path().to_path_buf();
    let tasks: Api<AgentTask> = Api::namespaced(c.client.clone(), &c.ns);
    let jobs: Api<Job> = Api::namespaced(c.client.clone(), &c.ns);

    // 1. The first replica dies right after creating a Job, before writing the status.
    let mut with_failpoint = env.clone();
    with_failpoint.push((
        "RECAC_FAILPOINTS",
        "task-controller.after-create-job=exit".into(),
    ));
    let mut first = c.start("replica-a", &kubeconfig, &with_failpoint);
    c.create_task("adopt-me").await;
    let exited = wait_for(
        "the failpoint to end the replica",
        Duration::from_secs(60),
        || {
            let status = first.child.try_wait().ok().flatten();
            async move { status }
        },
    )
    .await;
    assert_eq!(exited.code(), Some(86), "{}", first.log_tail());
    assert!(c.task("adopt-me").await.status.is_none(), "no status yet");
    assert_eq!(c.jobs_of("adopt-me").await.len(), 1);

    // 2. The next one adopts it, and runs a slow task and a ticket.
    let second = c.start("replica-b", &kubeconfig, &env);
    wait_for(
        "adopt-me to succeed with its one Job",
        Duration::from_secs(60),
        || async {
            let task = c.task("adopt-me").await;
            task.status
                .filter(|s| s.phase == Some(TaskPhase::Succeeded))
                .map(|s| s.attempt)
        },
    )
    .await;
    assert_eq!(
        c.jobs_of("adopt-me").await.len(),
        1,
        "adopted, not re-created"
    );
    c.create_slow_task("loses-job").await;
    c.create_slow_task("orphaned").await;
    let key = sim.add_issue(recac_jira_sim::IssueSeed {
        project: "OPS".into(),
        summary: "stranded".into(),
        labels: vec!["recac-agent".into()],
        ..Default::default()
    });
    wait_for(
        "the slow tasks to run and the ticket to be claimed",
        Duration::from_secs(60),
        || async {
            let mut running = 0;
            for name in ["loses-job", "orphaned"] {
                if c.task(name)
                    .await
                    .status
                    .is_some_and(|s| s.phase == Some(TaskPhase::Running))
                {
                    running += 1;
                }
            }
            let claimed = sim
                .issue(&key)
                .is_some_and(|i| i.status == "In Progress" && i.assignee.is_some());
            let ticket_tasks = tasks
                .list(&ListParams::default().labels(&format!("recac.io/ticket={key}")))
                .await
                .map(|l| l.items.len())
                .unwrap_or(0);
            (running == 2 && claimed && ticket_tasks == 1).then_some(())
        },
    )
    .await;
    drop(second); // SIGKILL

    // 3. While no operator runs.
    jobs.delete("loses-job-a1", &kube::api::DeleteParams::background())
        .await
        .expect("Job deleted");
    tasks
        .delete("orphaned", &kube::api::DeleteParams::orphan())
        .await
        .expect("task deleted, its Job orphaned");
    let ticket_task = tasks
        .list(&ListParams::default().labels(&format!("recac.io/ticket={key}")))
        .await
        .expect("list")
        .items
        .remove(0)
        .name_any();
    tasks
        .delete(&ticket_task, &kube::api::DeleteParams::background())
        .await
        .expect("ticket's task deleted");
    wait_for(
        "the orphaned task to be gone, its Job kept",
        Duration::from_secs(30),
        || async {
            let gone = tasks.get_opt("orphaned").await.ok()?.is_none();
            let job = jobs.get_opt("orphaned-a1").await.ok()??;
            (gone && job.metadata.owner_references.unwrap_or_default().is_empty()).then_some(())
        },
    )
    .await;

    // 4. A new leader recovers each.
    let third = c.start("replica-c", &kubeconfig, &env);
    wait_for(
        "the orphaned Job deleted",
        Duration::from_secs(60),
        || async {
            jobs.get_opt("orphaned-a1")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
    let retried = wait_for("loses-job retried", Duration::from_secs(90), || async {
        c.task("loses-job")
            .await
            .status
            .filter(|s| s.phase == Some(TaskPhase::Succeeded))
    })
    .await;
    assert_eq!(retried.attempt, Some(2), "a new Job for a new attempt");
    assert_eq!(retried.retries, Some(1));
    wait_for(
        "the ticket handed back",
        Duration::from_secs(60),
        || async {
            let issue = sim.issue(&key)?;
            (issue.status == "To Do"
                && issue.assignee.is_none()
                && !issue.labels.iter().any(|l| l == "recac-agent")
                && issue.comments.len() == 1)
                .then_some(())
        },
    )
    .await;
    assert!(
        sim.issue(&key).expect("issue").comments[0]
            .body
            .to_string()
            .contains("[recac:stranded:"),
        "the comment carries its marker"
    );
    // orphaned-a1, and the ticket task's Job if the garbage collector had not got to it yet.
    let deleted = third
        .metric("recac_orphan_jobs_deleted_total")
        .await
        .unwrap_or_default();
    assert!((1.0..=2.0).contains(&deleted), "{deleted}");
    let metrics = try_http_get(third.admin, "/metrics")
        .await
        .expect("metrics")
        .1;
    assert!(
        metrics
            .contains("recac_source_stranded_claims_total{source=\"ops\",action=\"handBack\"} 1"),
        "{metrics}"
    );

    // 5. Another takeover changes nothing more.
    third.signal("-TERM");
    let fourth = c.start("replica-d", &kubeconfig, &env);
    c.wait_leader(&["replica-d"]).await;
    wait_for(
        "the new leader to start writing",
        Duration::from_secs(20),
        || async { fourth.metric("recac_leader").await.filter(|v| *v == 1.0) },
    )
    .await;
    // Its terms start, look for strandings and orphans, and poll a few times.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        sim.issue(&key).expect("issue").comments.len(),
        1,
        "one comment"
    );
    assert_eq!(c.jobs_of("adopt-me").await.len(), 1);
    assert_eq!(
        c.jobs_of("loses-job").await.len(),
        1,
        "a2 only: a1 was deleted"
    );
}

/// Commands posted on tickets while the leader dies: the new leader acts on each once (a
/// follow-up is one new run, a `retry` one more, an unknown command one reply), whether or
/// not the old leader got to them before it died.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_posted_during_a_failover_act_once() {
    let c = &mut Cluster::new("ha-commands", true).await;
    let (_node, sim) = c.with_node_and_jira().await;
    sim.add_user(recac_tests::sim_user("alice"));
    let keys = sim.add_issues("OPS", "talk", &["recac-agent"], 3);
    c.extra_config = jira_config(&sim, &c.ns, "", "");
    let env = JIRA_ENV.map(|(k, v)| (k, v.to_string()));
    let kubeconfig = c.plane.kubeconfig_path().to_path_buf();
    let names = ["replica-a", "replica-b"];
    let mut replicas: BTreeMap<String, Replica> = names
        .iter()
        .map(|name| (name.to_string(), c.start(name, &kubeconfig, &env)))
        .collect();
    let tasks: Api<AgentTask> = Api::namespaced(c.client.clone(), &c.ns);
    let finished = |name: String| {
        let tasks = tasks.clone();
        async move {
            tasks.get_opt(&name).await.ok().flatten().filter(|t| {
                t.status
                    .as_ref()
                    .and_then(|s| s.phase)
                    .is_some_and(recac_api::TaskPhase::is_finished)
            })
        }
    };
    for key in &keys {
        let first = recac_source::task::task_name(key, 1);
        wait_for(
            &format!("{first} finished"),
            Duration::from_secs(60),
            || finished(first.clone()),
        )
        .await;
    }
    let follow_up = sim.comment_as(&keys[0], "alice", "/recac also log the result");
    assert!(!follow_up.is_empty(), "the comment was posted");
    let retry = sim.comment_as(&keys[1], "alice", "/recac retry");
    let unknown = sim.comment_as(&keys[2], "alice", "/recac frobnicate");
    let leader = c.wait_leader(&names).await;
    {
        let replica = replicas.get_mut(&leader).expect("leader");
        let _ = replica.child.kill();
        let _ = replica.child.wait();
    }
    replicas.insert(leader.clone(), c.start(&leader, &kubeconfig, &env));
    for (key, comment) in [(&keys[0], &follow_up), (&keys[1], &retry)] {
        let second = recac_source::task::task_name(key, 2);
        let task = wait_for(
            &format!("{second} finished"),
            Duration::from_secs(60),
            || finished(second.clone()),
        )
        .await;
        assert_eq!(task.annotations().get("recac.io/command"), Some(comment));
    }
    let marker = recac_source::commands::reply_marker(&unknown);
    let replies = || {
        sim.issue(&keys[2])
            .map(|i| {
                i.comments
                    .iter()
                    .filter(|c| c.body.to_string().contains(&marker))
                    .count()
            })
            .unwrap_or(0)
    };
    wait_for(
        "the reply to the unknown command",
        Duration::from_secs(60),
        || async { (replies() > 0).then_some(()) },
    )
    .await;
    // Both replicas go on polling (one leads): nothing more happens.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for key in &keys {
        let runs = tasks
            .list(&ListParams::default().labels(&format!("recac.io/ticket={key}")))
            .await
            .expect("tasks")
            .items
            .len();
        let expected = if key == &keys[2] { 1 } else { 2 };
        assert_eq!(runs, expected, "{key}: one run per command");
    }
    assert_eq!(replies(), 1, "one reply to the unknown command");
    drop(replicas);
}

/// Attempt 1 reports 120 tokens and fails; attempt 2 runs for a while, then reports 60
/// tokens and succeeds.
const SPEND_TWICE: &str = r#"if [ "$RECAC_ATTEMPT" = 1 ]; then printf '{"outcome":"failed","usage":[{"provider":"openai","model":"gpt-x","inputTokens":100,"outputTokens":20}]}' > "$RECAC_RESULT_PATH"; exit 1; fi; sleep 8; printf '{"outcome":"succeeded","branch":"%s","summary":"done","usage":[{"provider":"openai","model":"gpt-x","inputTokens":50,"outputTokens":10}]}' "$RECAC_BRANCH" > "$RECAC_RESULT_PATH""#;

/// A namespace budget's record across failovers: the leader counts attempt 1 (status and
/// record) and is killed; the next leader counts attempt 2 in the status and dies before
/// its record write (a failpoint); the third makes up the lost write. The status and the
/// record show each attempt exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_budget_counts_each_attempt_once_across_failovers() {
    let mut c = Cluster::new("ha-ns-budget", true).await;
    let _node = NodeAgent::start(
        c.client.clone(),
        NodeAgentOptions {
            namespaces: vec![c.ns.clone()],
            ..Default::default()
        },
    )
    .await
    .expect("node agent starts");
    c.task_controller_extra = format!(
        "  namespaceBudgets:\n    - {{namespace: {}, perDay: {{tokens: 1000000}}}}\n",
        c.ns
    );
    let kubeconfig = c.plane.kubeconfig_path().to_path_buf();
    let maps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(c.client.clone(), &c.ns);
    let ledger = || async {
        let map = maps.get_opt("recac-spend-namespace").await.ok()??;
        recac_runtime::spend_ledger::parse(&map).ok()?
    };

    let mut first = c.start("replica-a", &kubeconfig, &[]);
    c.wait_leader(&["replica-a"]).await;
    let dies_before_record = [(
        "RECAC_FAILPOINTS",
        "task-controller.before-namespace-spend=exit".to_string(),
    )];
    let mut second = c.start("replica-b", &kubeconfig, &dies_before_record);
    c.create_task_with(
        "spends-twice",
        serde_json::json!({
            "prompt": "spend",
            "maxRetries": 1,
            "agent": {"command": ["sh", "-c", SPEND_TWICE]},
        }),
    )
    .await;
    let uid = c.task("spends-twice").await.uid().expect("uid");

    // 1. The leader counts attempt 1 in the status and the record, and is killed.
    wait_for(
        "attempt 1 in the record",
        Duration::from_secs(60),
        || async {
            ledger()
                .await
                .filter(|l| l.tasks.get(&uid).is_some_and(|a| a.tokens == 120))
        },
    )
    .await;
    let _ = first.child.kill();
    let _ = first.child.wait();

    // 2. The standby takes over, writes attempt 2's spend into the status and dies before
    //    the record.
    let exited = wait_for(
        "replica-b to die at its first record write",
        Duration::from_secs(60),
        || {
            let status = second.child.try_wait().ok().flatten();
            async move { status }
        },
    )
    .await;
    assert_eq!(exited.code(), Some(86), "{}", second.log_tail());
    let task = c.task("spends-twice").await;
    let spend = task.status.and_then(|s| s.spend).expect("spend");
    assert_eq!((spend.attempts, spend.tokens()), (2, (150, 30)));
    let before = ledger().await.expect("the record");
    assert_eq!(before.tasks[&uid].tokens, 120, "attempt 2 not counted yet");

    // 3. The next leader makes up the lost write, once.
    let third = c.start("replica-c", &kubeconfig, &[]);
    c.wait_leader(&["replica-c"]).await;
    let after = wait_for(
        "attempt 2 in the record",
        Duration::from_secs(60),
        || async {
            ledger()
                .await
                .filter(|l| l.tasks.get(&uid).is_some_and(|a| a.tokens == 180))
        },
    )
    .await;
    let day = recac_runtime::spend::day_key(recac_runtime::clock::now());
    assert_eq!(after.periods[&day].tokens, 180, "{after:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settled = ledger().await.expect("the record");
    assert_eq!(settled.periods[&day].tokens, 180, "{settled:?}");
    let task = c.task("spends-twice").await;
    let status = task.status.expect("status");
    assert_eq!(status.phase, Some(TaskPhase::Succeeded));
    let spend = status.spend.expect("spend");
    assert_eq!((spend.attempts, spend.tokens()), (2, (150, 30)));
    assert_eq!(c.jobs_of("spends-twice").await.len(), 2);
    drop(third);
}
