//! Helpers shared by the end-to-end tests.

use std::path::PathBuf;
use std::process::Output;

use kube::CustomResourceExt;
use recac_testenv::{ControlPlane, ControlPlaneOptions, shared_control_plane};

/// The repository's root folder.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// The `recac` binary of this build (debug profile), built once per test process so that
/// tests that run it as a subprocess never run a stale one.
pub fn recac_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = std::process::Command::new(cargo)
                .args(["build", "--quiet", "-p", "recac"])
                .current_dir(repo_root())
                .status()
                .expect("cargo runs");
            assert!(status.success(), "cargo build -p recac failed");
            let target = std::env::var("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| repo_root().join("target"));
            target.join("debug/recac")
        })
        .clone()
}

/// The shared control plane with the recac CRDs installed.
pub async fn control_plane(options: ControlPlaneOptions) -> &'static ControlPlane {
    let plane = shared_control_plane(options)
        .await
        .expect("the control plane starts (run `make envtest` first)");
    plane
        .install_crds(&[recac_api::AgentTask::crd()])
        .await
        .expect("the recac CRDs install");
    plane
}

/// Runs kubectl with `args` and returns its output.
pub fn kubectl(plane: &ControlPlane, args: &[&str]) -> Output {
    plane.kubectl().args(args).output().expect("kubectl runs")
}

/// Runs kubectl with `args` and the given standard input.
pub fn kubectl_stdin(plane: &ControlPlane, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = plane
        .kubectl()
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(stdin.as_bytes())
        .expect("kubectl reads its input");
    child.wait_with_output().expect("kubectl finishes")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The plane's kubeconfig (YAML) with its user replaced by a fresh token of ServiceAccount
/// `account` in `namespace`.
pub fn token_kubeconfig(plane: &ControlPlane, account: &str, namespace: &str) -> String {
    let out = kubectl(plane, &["create", "token", account, "-n", namespace]);
    assert!(out.status.success(), "create token: {}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_string();
    let admin = std::fs::read_to_string(plane.kubeconfig_path()).expect("kubeconfig");
    let mut kubeconfig: serde_json::Value = serde_saphyr::from_str(&admin).expect("yaml");
    kubeconfig["users"][0]["user"] = serde_json::json!({ "token": token });
    serde_json::to_string(&kubeconfig).expect("JSON is YAML")
}

/// A client config that authenticates as ServiceAccount `account` in `namespace`.
pub async fn token_config(plane: &ControlPlane, account: &str, namespace: &str) -> kube::Config {
    let yaml = token_kubeconfig(plane, account, namespace);
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&yaml).expect("kubeconfig");
    kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config")
}

/// The operator's ServiceAccount (named by `config/rbac/service_account.yaml`), after
/// applying the shipped RBAC (`config/rbac`), so that a test proves those permissions enough.
pub fn operator_service_account(plane: &ControlPlane) -> String {
    let _ = kubectl(plane, &["create", "namespace", "recac-system"]);
    let rbac = repo_root().join("config/rbac");
    let out = kubectl(plane, &["apply", "-k", rbac.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "apply rbac: {}", text(&out.stderr));
    let account: serde_json::Value = serde_saphyr::from_str(
        &std::fs::read_to_string(rbac.join("service_account.yaml")).expect("service account"),
    )
    .expect("yaml");
    account["metadata"]["name"]
        .as_str()
        .expect("the ServiceAccount has a name")
        .to_string()
}

/// A client config for the operator's ServiceAccount, bound by the shipped RBAC.
pub async fn operator_service_account_config(plane: &ControlPlane) -> kube::Config {
    let account = operator_service_account(plane);
    token_config(plane, &account, "recac-system").await
}

/// Polls `check` every 200 ms until it returns `Some`, or panics after `timeout` with `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if std::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A plain HTTP GET on loopback, returning the status code and body.
pub async fn http_get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    try_http_get(address, path)
        .await
        .unwrap_or_else(|| panic!("GET http://{address}{path} failed"))
}

/// Like [`http_get`], but `None` when nothing answers.
pub async fn try_http_get(address: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// An operator (every controller, as `recac orchestrate` assembles them) running in this
/// test process, with its admin server on a free loopback port.
pub struct RunningOperator {
    stop: tokio::sync::watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
    /// The admin server (`/metrics`, `/healthz`, `/readyz`).
    pub http: std::net::SocketAddr,
    stop_within: std::time::Duration,
}

impl RunningOperator {
    /// Builds and starts the operator; [`RunningOperator::stop`] must return within
    /// `stop_within` of its signal.
    pub async fn start(
        config: kube::Config,
        setup: recac_operator::OperatorSetup,
        stop_within: std::time::Duration,
    ) -> Self {
        let operator =
            recac_operator::Operator::build(config, setup, recac_runtime::Leadership::always())
                .expect("builds");
        Self::run(operator, stop_within).await
    }

    /// Starts an operator built by the caller (a clock or leadership of its own).
    pub async fn run(operator: recac_operator::Operator, stop_within: std::time::Duration) -> Self {
        let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let http = listener.local_addr().expect("address");
        let handle = tokio::spawn(async move {
            let outcome = operator
                .run(listener, async move {
                    let _ = stop_rx.wait_for(|s| *s).await;
                })
                .await;
            assert_eq!(outcome, Ok(()), "the operator stops cleanly");
        });
        Self {
            stop,
            handle,
            http,
            stop_within,
        }
    }

    /// A clean stop, as on shutdown or losing leadership.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let stopped = tokio::time::timeout(self.stop_within, self.handle).await;
        assert!(
            stopped.is_ok(),
            "the operator did not stop within {:?} of its shutdown signal",
            self.stop_within
        );
    }

    /// A crash: everything stops at once, nothing is cleaned up.
    pub async fn kill(self) {
        self.handle.abort();
        let _ = self.handle.await;
    }
}

/// Counts the objects of one kind a label selector matches in a namespace, as one watch
/// delivers them. A benchmark reads its progress from it instead of listing every object
/// again and again, which would load the apiserver it measures.
pub struct WatchCounter {
    seen: tokio::sync::watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl WatchCounter {
    /// Starts counting the distinct names of `K` in `namespace` that match `labels`.
    pub fn start<K>(client: kube::Client, namespace: &str, labels: &str) -> Self
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + Send
            + 'static,
    {
        use futures::StreamExt;
        let api: kube::Api<kube::core::PartialObjectMeta<K>> =
            kube::Api::namespaced(client, namespace);
        let config = kube::runtime::watcher::Config::default().labels(labels);
        let (tx, seen) = tokio::sync::watch::channel(0);
        let task = tokio::spawn(async move {
            let mut names = std::collections::HashSet::new();
            let mut events = std::pin::pin!(kube::runtime::watcher(api, config));
            while let Some(event) = events.next().await {
                if let Ok(
                    kube::runtime::watcher::Event::Apply(object)
                    | kube::runtime::watcher::Event::InitApply(object),
                ) = event
                    && let Some(name) = object.metadata.name
                    && names.insert(name)
                {
                    let _ = tx.send(names.len());
                }
            }
        });
        Self { seen, task }
    }

    /// How many distinct objects the watch has shown so far.
    pub fn count(&self) -> usize {
        *self.seen.borrow()
    }

    /// Waits until at least `n` objects were seen; `Err(seen)` after `timeout`.
    pub async fn wait_for(&mut self, n: usize, timeout: std::time::Duration) -> Result<(), usize> {
        let reached = tokio::time::timeout(timeout, self.seen.wait_for(|seen| *seen >= n))
            .await
            .is_ok_and(|r| r.is_ok());
        if reached { Ok(()) } else { Err(self.count()) }
    }
}

impl Drop for WatchCounter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An operator's metrics on 127.0.0.1:`port`: `recac_api_requests_total` by "verb resource", and the reconciles.
pub async fn scrape_metrics(port: u16) -> (std::collections::BTreeMap<String, u64>, u64) {
    let (_, body) = http_get(([127, 0, 0, 1], port).into(), "/metrics").await;
    let mut requests = std::collections::BTreeMap::new();
    let mut reconciles = 0;
    for line in body.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value: u64 = value.parse().unwrap_or(0);
        if let Some(labels) = series.strip_prefix("recac_api_requests_total{") {
            let mut verb = "?";
            let mut resource = "?";
            for pair in labels.trim_end_matches('}').split(',') {
                if let Some((k, v)) = pair.split_once('=') {
                    match k {
                        "verb" => verb = v.trim_matches('"'),
                        "resource" => resource = v.trim_matches('"'),
                        _ => {}
                    }
                }
            }
            requests.insert(format!("{verb} {resource}"), value);
        } else if series == "recac_reconciles_total{controller=\"task-controller\"}" {
            reconciles = value;
        }
    }
    (requests, reconciles)
}

/// A memory field of `/proc/<pid>/status` (`VmHWM`, `VmRSS`, `RssAnon`, …) in MiB; 0 when
/// the process or the field is gone.
pub fn process_memory_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|kib| kib.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// The release `recac` binary a benchmark runs: `RECAC_BIN`, else `target/release/recac`
/// (built by `make bench`).
pub fn release_binary() -> PathBuf {
    if let Ok(path) = std::env::var("RECAC_BIN") {
        return path.into();
    }
    std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target"))
        .join("release/recac")
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A child process killed (and reaped) however the test or benchmark ends.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The CPU time (user and system, every thread) a process has used, in seconds: utime and
/// stime of `/proc/<pid>/stat`, counted in USER_HZ, which Linux fixes at 100 for userspace.
/// 0 when the process is gone.
pub fn process_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces) start at the state.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the state.
    (ticks(11) + ticks(12)) / 100.0
}

/// The apiserver's write requests so far (every client's), by `VERB resource` or
/// `VERB resource/subresource`, from its own `apiserver_request_total`; reads (GET, LIST,
/// WATCH) are left out.
pub async fn apiserver_writes(client: &kube::Client) -> std::collections::BTreeMap<String, f64> {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("a request");
    let body = client
        .request_text(request)
        .await
        .expect("the apiserver's /metrics");
    let mut writes = std::collections::BTreeMap::new();
    for line in body.lines() {
        let Some(labels) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = labels.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .filter_map(|pair| pair.split_once('='))
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.trim_matches('"').to_string())
                .unwrap_or_default()
        };
        let verb = label("verb");
        if !["POST", "PUT", "PATCH", "DELETE", "APPLY"].contains(&verb.as_str()) {
            continue;
        }
        let (resource, subresource) = (label("resource"), label("subresource"));
        let key = if subresource.is_empty() {
            format!("{verb} {resource}")
        } else {
            format!("{verb} {resource}/{subresource}")
        };
        *writes.entry(key).or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
    }
    writes
}

/// What changed between two [`apiserver_writes`] readings, per `per` objects, as
/// "VERB resource: n.nn" (the changes only) and their sum.
pub fn writes_per(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
    per: usize,
) -> (Vec<String>, f64) {
    let mut lines = Vec::new();
    let mut total = 0.0;
    for (key, value) in after {
        let delta = value - before.get(key).copied().unwrap_or(0.0);
        if delta > 0.0 {
            let each = delta / per as f64;
            total += each;
            lines.push(format!("{key}: {each:.2}"));
        }
    }
    (lines, total)
}

/// Creates `n` Jobs shaped like an agent's directly (32 in flight, one client) in a new
/// namespace; (Jobs per second, the apiserver's CPU seconds per Job). The yardstick for the
/// operator's cost: nothing it does per task can be cheaper than this.
pub async fn bare_job_creates(plane: &ControlPlane, n: usize) -> (f64, f64) {
    use futures::StreamExt;
    let ns = plane
        .namespace(&format!("bench-bare-{n}"))
        .await
        .expect("namespace");
    let client = plane.client().await.expect("client");
    let jobs: kube::Api<k8s_openapi::api::batch::v1::Job> = kube::Api::namespaced(client, &ns);
    let defaults = recac_task_controller::AgentDefaults::default();
    let mut task = recac_api::AgentTask::new("bare", bench_task_spec(0));
    task.metadata.namespace = Some(ns.clone());
    task.metadata.uid = Some("00000000-0000-0000-0000-000000000000".into());
    let template = recac_task_controller::job_builder::build_job(&task, 1, "b", &defaults, true);
    let apiserver = plane.component_pid("kube-apiserver").unwrap_or(0);
    let cpu_before = process_cpu_seconds(apiserver);
    let start = std::time::Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let jobs = jobs.clone();
            let mut job = template.clone();
            job.metadata.name = Some(format!("bare-{i:05}"));
            job.metadata.owner_references = None;
            async move {
                jobs.create(&kube::api::PostParams::default(), &job)
                    .await
                    .expect("bare job created");
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds(apiserver) - cpu_before;
    (rate, cpu / n as f64)
}

/// The apiserver's CPU per write of each kind on the way from a ticket to its Job, each
/// measured alone on `n` AgentTasks made here (32 in flight): create the task, patch its
/// metadata (a JSON merge patch of one annotation), and write its dispatch status three
/// ways, each on tasks that have no status yet: server-side apply under the task
/// controller's field manager, a JSON merge patch, and a replace (PUT) of the status
/// subresource. Seconds per write, in that order.
pub async fn bare_task_writes(plane: &ControlPlane, n: usize) -> [(&'static str, f64); 5] {
    use futures::StreamExt;
    use kube::api::{Patch, PatchParams, PostParams};
    let ns = plane
        .namespace(&format!("bench-task-writes-{n}"))
        .await
        .expect("namespace");
    let client = plane.client().await.expect("client");
    let api: kube::Api<recac_api::AgentTask> = kube::Api::namespaced(client, &ns);
    let apiserver = plane.component_pid("kube-apiserver").unwrap_or(0);
    let names: Vec<String> = (0..3 * n).map(|i| format!("ops-{i}-r1")).collect();
    let (applied, rest) = names.split_at(n);
    let (merged, replaced) = rest.split_at(n);
    let per_write = |cpu_before: f64, writes: usize| {
        (process_cpu_seconds(apiserver) - cpu_before) / writes as f64
    };
    let dispatch_status = |name: &str| {
        serde_json::json!({
            "phase": "Pending",
            "attempt": 1,
            "retries": 0,
            "jobName": format!("{name}-a1"),
            "branch": "recac/OPS-1",
            "startTime": "2026-12-06T10:00:00Z",
            "message": format!("attempt 1 starting as Job {name}-a1"),
            "observedGeneration": 1,
            "conditions": [{
                "type": "Dispatched", "status": "True", "reason": "JobCreated",
                "message": format!("attempt 1 runs as Job {name}-a1"),
                "lastTransitionTime": "2026-12-06T10:00:00Z", "observedGeneration": 1,
            }],
        })
    };

    let before = process_cpu_seconds(apiserver);
    let created: Vec<recac_api::AgentTask> = futures::stream::iter(names.iter())
        .map(|name| {
            let api = api.clone();
            let task: recac_api::AgentTask = serde_json::from_value(serde_json::json!({
                "apiVersion": "recac.io/v1alpha1",
                "kind": "AgentTask",
                "metadata": {
                    "name": name,
                    "labels": {"recac.io/source": "ops", "recac.io/ticket": "OPS-1", "recac.io/run": "1"},
                    "annotations": {"recac.io/claim": "pending", "recac.io/trigger": "created"},
                },
                "spec": {
                    "prompt": "Jira ticket OPS-1: bench ticket\n\nRepo: https://git.example.com/org/repo.git\n",
                    "ticket": {"source": "jira", "key": "OPS-1", "url": "https://jira.example.com/browse/OPS-1"},
                    "repository": {"url": "https://git.example.com/org/repo.git"},
                },
            }))
            .expect("a task");
            async move {
                api.create(&PostParams::default(), &task)
                    .await
                    .expect("task created")
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let create = per_write(before, names.len());

    let before = process_cpu_seconds(apiserver);
    futures::stream::iter(applied.iter())
        .map(|name| {
            let api = api.clone();
            async move {
                let patch =
                    serde_json::json!({"metadata": {"annotations": {"recac.io/claim": "claimed"}}});
                api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .expect("task patched");
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let patch = per_write(before, n);

    let before = process_cpu_seconds(apiserver);
    futures::stream::iter(applied.iter())
        .map(|name| {
            let api = api.clone();
            let status = dispatch_status(name);
            async move {
                recac_runtime::status::apply_status(
                    &api,
                    name,
                    None,
                    recac_task_controller::controller::FIELD_MANAGER,
                    &status,
                )
                .await
                .expect("status applied");
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let apply = per_write(before, n);

    let before = process_cpu_seconds(apiserver);
    futures::stream::iter(merged.iter())
        .map(|name| {
            let api = api.clone();
            let patch = serde_json::json!({ "status": dispatch_status(name) });
            async move {
                api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .expect("status merge-patched");
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let merge = per_write(before, n);

    let replace_from: std::collections::HashMap<String, recac_api::AgentTask> = created
        .into_iter()
        .filter_map(|t| t.metadata.name.clone().map(|name| (name, t)))
        .collect();
    let before = process_cpu_seconds(apiserver);
    futures::stream::iter(replaced.iter())
        .map(|name| {
            let api = api.clone();
            let mut task = replace_from.get(name).cloned().expect("created task");
            task.metadata.managed_fields = None;
            task.status = Some(serde_json::from_value(dispatch_status(name)).expect("a status"));
            async move {
                api.replace_status(name, &PostParams::default(), &task)
                    .await
                    .expect("status replaced");
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let replace = per_write(before, n);
    [
        ("create the task", create),
        ("patch its metadata", patch),
        ("apply its status", apply),
        ("merge-patch its status", merge),
        ("replace its status", replace),
    ]
}

/// The spec of the benchmarks' `i`th AgentTask: a prompt, a repository, the defaults.
pub fn bench_task_spec(i: usize) -> recac_api::AgentTaskSpec {
    recac_api::AgentTaskSpec {
        prompt: Some(format!("benchmark task {i}")),
        ticket: None,
        repository: recac_api::Repository {
            url: "https://git.example.com/org/repo.git".into(),
            base_branch: None,
            branch: None,
        },
        agent: None,
        max_retries: 2,
        timeout_seconds: 3600,
        ttl_seconds_after_finished: None,
        suspend: false,
        approval: None,
        budget: None,
        egress: None,
    }
}

/// A Jira user of the simulator named `name`: account id `acc-<name>`, e-mail
/// `<name>@example.com`, every permission, no credentials.
pub fn sim_user(name: &str) -> recac_jira_sim::UserDef {
    recac_jira_sim::UserDef {
        account_id: format!("acc-{name}"),
        name: name.into(),
        display_name: name.into(),
        email: format!("{name}@example.com"),
        token: None,
        pat: None,
        permissions: None,
    }
}
