//! A local node agent: a tiny stand-in for a kubelet, so pods (and Jobs) run
//! against a control plane that has no real nodes.
//!
//! [`NodeAgent::start`] registers a Node (Ready, InternalIP 127.0.0.1, the port of
//! its HTTPS server as the kubelet endpoint), watches Pods (all namespaces or the
//! ones listed in [`NodeAgentOptions::namespaces`]), binds unscheduled pods to its
//! node through the `pods/binding` subresource and runs every bound pod.
//!
//! # Commands, not images
//!
//! Each container's `command` + `args` run as a **local process**; the `image` is
//! ignored (it is only echoed in the container status). A container without a
//! `command` cannot be run and is reported as `CreateContainerConfigError`. `$(VAR)`
//! references in `command`, `args` and env values are expanded like Kubernetes
//! does. The process inherits the agent's own environment
//! ([`NodeAgentOptions::inherit_env`]) with the pod's env on top, plus `HOSTNAME`
//! set to the pod name. stdout and stderr go to one log file per container.
//!
//! The env is resolved like the kubelet: `envFrom` (`secretRef`, `configMapRef`,
//! with `prefix`) first, then `env` with plain `value`, `valueFrom.secretKeyRef`,
//! `configMapKeyRef` and `fieldRef` (`metadata.name`, `metadata.namespace`,
//! `metadata.uid`, `metadata.labels['k']`, `metadata.annotations['k']`,
//! `spec.nodeName`, `spec.serviceAccountName`, `status.podIP`, `status.hostIP`).
//! Missing references marked `optional` are skipped; a missing required one
//! leaves the pod Pending with the container waiting with reason
//! `CreateContainerConfigError` (retried every two seconds, like the kubelet).
//!
//! # Volumes and path substitution
//!
//! `emptyDir` volumes become folders under the agent's temporary folder, `secret`
//! and `configMap` volumes become folders holding one file per key (or per
//! `items` entry), and `hostPath` volumes are the host path itself; other volume
//! kinds get an empty folder. A process cannot see a container's mount paths, so
//! the agent **rewrites paths**: wherever a volumeMount's `mountPath` appears as a
//! whole path prefix in the container's env values, `command`, `args` or
//! `workingDir` (at the start of the string or after a character that cannot be
//! part of a path, and followed by the end, `/` or such a character), it is
//! replaced by the volume's folder (joined with `subPath`). The longest mount path
//! wins and each position is rewritten once. A value that is exactly a folder
//! *above* mount paths (`RECAC_SECRETS_DIR=/var/run/recac/secrets` above the mounts
//! `/var/run/recac/secrets/<secret>`) becomes a folder in which each of those mounts
//! is a symbolic link to its volume. The same is done for
//! `terminationMessagePath` (default `/dev/termination-log`), which maps to a
//! per-container file; when the process exits its first 4096 bytes become the
//! termination message (`FallbackToLogsOnError` uses the end of the log when that
//! file is empty and the exit code non-zero). Paths computed at run time inside the
//! process (e.g. `cd /workspace` built from pieces) are not rewritten. The
//! process's working directory is the mapped `workingDir`, else the first mount's
//! folder, else a per-container temporary folder.
//!
//! # Status, deletion and restarts
//!
//! The agent reports status through `pods/status` like a kubelet: phase Running
//! with `startTime`, the PodScheduled, Initialized, ContainersReady and Ready
//! conditions and running container statuses; when every container has exited,
//! Succeeded (all exit codes 0) or Failed with `state.terminated` (exit code,
//! reason `Completed`/`Error`, message, start and finish times, container ID).
//! Containers are **never restarted**: `restartPolicy` OnFailure and Always are
//! treated like Never.
//!
//! Native sidecars (init containers with `restartPolicy: Always`) are started first, in
//! order, then the pod's containers; they are reported in `initContainerStatuses`, and when
//! every container of the pod has exited they get SIGTERM (SIGKILL after the grace period),
//! as a kubelet stops them. The pod's phase follows its containers only (a sidecar's exit
//! code does not count) and turns terminal once the sidecars have stopped too. A sidecar that
//! exits early is not restarted. Init containers that run to completion are not supported
//! (the pod is reported `CreateContainerConfigError`). Each container's process sees the
//! paths of its own volume mounts only; all processes run as the agent's user, so nothing
//! keeps one container's process from another's folders (unlike separate users and mount
//! namespaces on a real node).
//!
//! When a pod gets a `deletionTimestamp` (deleted directly, by the Job controller,
//! by garbage collection), its processes get SIGTERM, then SIGKILL after the pod's
//! grace period capped at [`NodeAgentOptions::max_grace_period`]; the pod is
//! reported terminated (exit code 143 or 137 for a signal) and then deleted with
//! `gracePeriodSeconds=0`, which is how a kubelet finishes a deletion. Finalizers
//! such as the Job controller's `batch.kubernetes.io/job-tracking` are left to their
//! owners. `activeDeadlineSeconds` is honoured the same way (phase Failed, reason
//! `DeadlineExceeded`).
//!
//! Every process leads a process group of its own (signals reach a shell's
//! children too) and is spawned through the supervisor thread of
//! [`crate::process`], so it dies with the test process. The agent does not
//! survive a restart: if it starts and finds a pod already bound to its node that
//! was started before (it has a `startTime`) but has no process here, it marks
//! that pod Failed (exit code 137, message "node agent restarted") instead of
//! running it again. Pods bound to the node but never started are run normally.
//!
//! [`NodeAgent::shutdown`] stops every process, reports the running pods Failed
//! and deletes the Node; dropping the agent stops the processes and removes the
//! temporary folders without touching the API.
//!
//! The HTTPS server (self-signed certificate; the apiserver does not verify the
//! kubelet's certificate without `--kubelet-certificate-authority`) serves
//! `GET /containerLogs/{namespace}/{pod}/{container}` with `follow`, `tailLines`
//! and `limitBytes`, so `kubectl logs` and the `pods/log` API work. `timestamps`,
//! `sinceSeconds` and `previous` are ignored; exec, attach and port-forward are not
//! served.

mod logs;
mod spec;

use std::collections::{HashMap, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::process::{ManagedProcess, forget_folder, remove_at_exit};
use crate::{Result, TestEnvError};

use self::spec::{ConfigError, ProcessSpec};

/// How a [`NodeAgent`] behaves.
#[derive(Clone, Debug)]
pub struct NodeAgentOptions {
    /// The Node's name; default `recac-node-<random>`, unique per agent. Use a fixed
    /// name to take over the pods of a previous agent (they are marked Failed).
    pub node_name: Option<String>,
    /// The namespaces whose pods are bound and run; empty means all namespaces.
    pub namespaces: Vec<String>,
    /// Bind pods that have no `spec.nodeName` to this node (default true).
    pub bind_unscheduled: bool,
    /// The longest grace period between SIGTERM and SIGKILL (default 3 s).
    pub max_grace_period: Duration,
    /// Whether processes inherit the agent's environment (default true); without it
    /// they get only the pod's env, `HOSTNAME` and a default `PATH`.
    pub inherit_env: bool,
    /// The folder under which the agent creates its temporary folder (default: the
    /// system temporary folder).
    pub work_dir: Option<PathBuf>,
    /// Variables every process gets, like a node's own settings (a trusted CA file, a
    /// `PATH` holding the binaries the pods' commands name); the pod's env wins.
    pub node_env: Vec<(String, String)>,
}

impl Default for NodeAgentOptions {
    fn default() -> Self {
        Self {
            node_name: None,
            namespaces: Vec::new(),
            bind_unscheduled: true,
            max_grace_period: Duration::from_secs(3),
            inherit_env: true,
            work_dir: None,
            node_env: Vec::new(),
        }
    }
}

/// A running node agent. Dropping it kills its processes and removes its folders;
/// [`NodeAgent::shutdown`] also reports the pods and deletes the Node.
pub struct NodeAgent {
    shared: Arc<Shared>,
    shutdown_tx: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    port: u16,
    torn_down: bool,
}

struct Shared {
    client: Client,
    node_name: String,
    options: NodeAgentOptions,
    root: PathBuf,
    pods: Mutex<HashMap<String, Arc<PodHandle>>>,
    shutdown: watch::Receiver<bool>,
}

/// One pod this agent runs (or ran): its folder, processes and worker task.
struct PodHandle {
    namespace: String,
    name: String,
    uid: String,
    dir: PathBuf,
    updates: watch::Sender<Pod>,
    containers: Mutex<Vec<Arc<ContainerRun>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

struct ContainerRun {
    name: String,
    log_path: PathBuf,
    process: Mutex<Option<ManagedProcess>>,
    finished: watch::Sender<bool>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unique_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos ^ (std::process::id() << 12))
        .wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9e37))
        & 0xff_ffff
}

fn time(ts: Timestamp) -> Value {
    serde_json::to_value(Time(ts)).unwrap_or(Value::Null)
}

impl NodeAgent {
    /// Registers the Node, starts the HTTPS log server and the pod watchers.
    pub async fn start(client: Client, options: NodeAgentOptions) -> Result<Self> {
        let node_name = options
            .node_name
            .clone()
            .unwrap_or_else(|| format!("recac-node-{:06x}", unique_suffix()));
        let parent = options.work_dir.clone().unwrap_or_else(std::env::temp_dir);
        let root = tempfile::Builder::new()
            .prefix(&format!("{node_name}-"))
            .tempdir_in(&parent)
            .map_err(|source| TestEnvError::Io {
                path: parent.display().to_string(),
                source,
            })?
            .keep();
        remove_at_exit(&root);

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|source| TestEnvError::Io {
                path: "127.0.0.1:0".into(),
                source,
            })?;
        let port = listener
            .local_addr()
            .map_err(|source| TestEnvError::Io {
                path: "127.0.0.1:0".into(),
                source,
            })?
            .port();
        let acceptor = logs::tls_acceptor()?;

        let (shutdown_tx, shutdown) = watch::channel(false);
        let shared = Arc::new(Shared {
            client,
            node_name,
            options,
            root,
            pods: Mutex::new(HashMap::new()),
            shutdown,
        });
        let mut agent = Self {
            shared: shared.clone(),
            shutdown_tx,
            tasks: Vec::new(),
            port,
            torn_down: false,
        };

        let lookup_shared = Arc::downgrade(&shared);
        let lookup: logs::Lookup = Arc::new(move |namespace, pod, container| {
            let shared = lookup_shared.upgrade()?;
            shared.log_source(namespace, pod, container)
        });
        agent
            .tasks
            .push(tokio::spawn(logs::serve(listener, acceptor, lookup)));

        let started = Timestamp::now();
        register_node(&shared, port, started).await?;
        let heartbeat = shared.clone();
        agent.tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(30)).await;
                if let Err(e) = patch_node_status(&heartbeat, port, started).await {
                    tracing::warn!(error = %e, node = %heartbeat.node_name, "node agent heartbeat failed");
                }
            }
        }));

        let scopes: Vec<Option<String>> = if shared.options.namespaces.is_empty() {
            vec![None]
        } else {
            shared
                .options
                .namespaces
                .iter()
                .cloned()
                .map(Some)
                .collect()
        };
        for scope in scopes {
            agent
                .tasks
                .push(tokio::spawn(watch_pods(shared.clone(), scope)));
        }
        Ok(agent)
    }

    /// The Node's name.
    pub fn node_name(&self) -> &str {
        &self.shared.node_name
    }

    /// The port of the HTTPS (kubelet) server on 127.0.0.1.
    pub fn kubelet_port(&self) -> u16 {
        self.port
    }

    /// The agent's temporary folder (pod folders, logs, volumes).
    pub fn work_folder(&self) -> &Path {
        &self.shared.root
    }

    /// Stops every process (SIGTERM, then SIGKILL after the grace period), reports
    /// the pods that were running as Failed, deletes the Node and removes the
    /// temporary folders.
    pub async fn shutdown(mut self) -> Result<()> {
        let _ = self.shutdown_tx.send(true);
        let handles: Vec<Arc<PodHandle>> = lock(&self.shared.pods).values().cloned().collect();
        let wait = self.shared.options.max_grace_period + Duration::from_secs(10);
        for handle in handles {
            let task = lock(&handle.task).take();
            if let Some(mut task) = task
                && tokio::time::timeout(wait, &mut task).await.is_err()
            {
                task.abort();
            }
        }
        let api: Api<Node> = Api::all(self.shared.client.clone());
        let deleted = match api
            .delete(&self.shared.node_name, &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
            Err(e) => Err(TestEnvError::NodeAgent(format!(
                "deleting node {}: {e}",
                self.shared.node_name
            ))),
        };
        self.teardown();
        deleted
    }

    fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        let _ = self.shutdown_tx.send(true);
        for task in &self.tasks {
            task.abort();
        }
        let handles: Vec<Arc<PodHandle>> =
            lock(&self.shared.pods).drain().map(|(_, h)| h).collect();
        for handle in handles {
            handle.teardown();
        }
        let _ = std::fs::remove_dir_all(&self.shared.root);
        forget_folder(&self.shared.root);
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        self.teardown();
    }
}

impl PodHandle {
    /// Aborts the worker, kills the processes and removes the pod's folder.
    fn teardown(&self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
        let containers: Vec<Arc<ContainerRun>> = lock(&self.containers).drain(..).collect();
        for container in containers {
            container.kill_now();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl ContainerRun {
    fn kill_now(&self) {
        if let Some(mut process) = lock(&self.process).take() {
            process.signal(libc::SIGKILL);
            process.stop();
        }
        let _ = self.finished.send(true);
    }
}

impl Shared {
    fn log_source(&self, namespace: &str, pod: &str, container: &str) -> Option<logs::LogSource> {
        let pods = lock(&self.pods);
        let handle = pods
            .values()
            .find(|h| h.namespace == namespace && h.name == pod)?;
        let containers = lock(&handle.containers);
        let run = containers.iter().find(|c| c.name == container)?;
        Some(logs::LogSource {
            path: run.log_path.clone(),
            finished: run.finished.subscribe(),
        })
    }

    fn pod_api(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Handles an added or changed pod.
    async fn on_pod(self: &Arc<Self>, pod: Pod) {
        let (Some(uid), Some(namespace), Some(name)) = (
            pod.metadata.uid.clone(),
            pod.metadata.namespace.clone(),
            pod.metadata.name.clone(),
        ) else {
            return;
        };
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        if node.is_empty() {
            if self.options.bind_unscheduled && pod.metadata.deletion_timestamp.is_none() {
                let shared = self.clone();
                tokio::spawn(async move { shared.bind(&namespace, &name, &uid).await });
            }
            return;
        }
        if node != self.node_name {
            return;
        }
        let existing = lock(&self.pods).get(&uid).cloned();
        if let Some(handle) = existing {
            handle.updates.send_replace(pod);
            return;
        }
        let started_before = pod.status.as_ref().is_some_and(|s| {
            s.start_time.is_some() || s.container_statuses.as_ref().is_some_and(|c| !c.is_empty())
        });
        if is_terminal(&pod) || started_before {
            // Not ours to run: finished already, or started by an agent that is gone.
            let shared = self.clone();
            tokio::spawn(async move { shared.settle_orphan(pod).await });
            return;
        }
        let dir = self.root.join(format!("{namespace}_{name}_{uid}"));
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::warn!(error = %e, pod = %name, "node agent: cannot create the pod folder");
            return;
        }
        let (updates, receiver) = watch::channel(pod);
        let handle = Arc::new(PodHandle {
            namespace,
            name,
            uid: uid.clone(),
            dir,
            updates,
            containers: Mutex::new(Vec::new()),
            task: Mutex::new(None),
        });
        lock(&self.pods).insert(uid, handle.clone());
        let task = tokio::spawn(run_pod(self.clone(), handle.clone(), receiver));
        *lock(&handle.task) = Some(task);
    }

    /// Handles a deleted pod: its processes stop and its folder goes.
    fn on_delete(&self, pod: &Pod) {
        let Some(uid) = pod.metadata.uid.as_deref() else {
            return;
        };
        let handle = lock(&self.pods).remove(uid);
        if let Some(handle) = handle {
            handle.teardown();
        }
    }

    /// After a relist, forgets the pods of `scope` that no longer exist.
    fn forget_missing(&self, scope: Option<&str>, seen: &HashSet<String>) {
        let gone: Vec<Arc<PodHandle>> = {
            let mut pods = lock(&self.pods);
            let uids: Vec<String> = pods
                .values()
                .filter(|h| scope.is_none_or(|ns| h.namespace == ns) && !seen.contains(&h.uid))
                .map(|h| h.uid.clone())
                .collect();
            uids.iter().filter_map(|uid| pods.remove(uid)).collect()
        };
        for handle in gone {
            handle.teardown();
        }
    }

    async fn bind(&self, namespace: &str, name: &str, uid: &str) {
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(namespace.to_string()),
                uid: Some(uid.to_string()),
                ..Default::default()
            },
            target: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(self.node_name.clone()),
                ..Default::default()
            },
        };
        // Retried like the scheduler would while the apiserver is unreachable: no later
        // event may come for this pod to try again.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut wait = Duration::from_millis(200);
        loop {
            let result: kube::Result<Value> = self
                .pod_api(namespace)
                .create_subresource("binding", name, &PostParams::default(), &binding)
                .await;
            match result {
                Ok(_) => {
                    tracing::debug!(pod = %name, namespace = %namespace, node = %self.node_name, "bound pod");
                    return;
                }
                Err(kube::Error::Api(status)) if status.code == 409 || status.is_not_found() => {
                    tracing::debug!(pod = %name, "pod was bound or deleted meanwhile");
                    return;
                }
                Err(e) => {
                    let retry = !matches!(&e, kube::Error::Api(status) if status.code < 500);
                    if !retry || std::time::Instant::now() > deadline {
                        tracing::warn!(error = %e, pod = %name, namespace = %namespace, "node agent: binding failed");
                        return;
                    }
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(2));
        }
    }

    /// A pod bound to this node that has no process here: if it was started by an
    /// earlier agent, report it Failed; if it is being deleted, finish the deletion.
    async fn settle_orphan(&self, pod: Pod) {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        if !is_terminal(&pod) {
            let now = Timestamp::now();
            let statuses: Vec<Value> = pod
                .spec
                .iter()
                .flat_map(|s| s.containers.iter())
                .map(|c| {
                    let started = pod
                        .status
                        .as_ref()
                        .and_then(|s| s.container_statuses.as_ref())
                        .and_then(|cs| cs.iter().find(|s| s.name == c.name))
                        .and_then(|s| s.state.as_ref())
                        .and_then(|s| s.running.as_ref())
                        .and_then(|r| r.started_at.clone())
                        .map(|t| t.0)
                        .unwrap_or(now);
                    json!({
                        "name": c.name,
                        "image": c.image.clone().unwrap_or_default(),
                        "imageID": "",
                        "ready": false,
                        "started": false,
                        "restartCount": 0,
                        "state": {"terminated": {
                            "exitCode": 137,
                            "reason": "Error",
                            "message": "node agent restarted: the process of this container was lost",
                            "startedAt": time(started),
                            "finishedAt": time(now),
                        }},
                    })
                })
                .collect();
            let start = pod
                .status
                .as_ref()
                .and_then(|s| s.start_time.clone())
                .map(|t| t.0)
                .unwrap_or(now);
            let patch = json!({"status": {
                "phase": "Failed",
                "reason": "NodeAgentRestarted",
                "message": "node agent restarted: the pod's processes were lost",
                "startTime": time(start),
                "conditions": conditions(false, false, now),
                "containerStatuses": statuses,
            }});
            self.patch_status(&namespace, &name, patch).await;
        }
        if needs_final_delete(&pod) {
            self.delete_now(&pod).await;
        }
    }

    /// Patches a pod's status, retrying (like a kubelet) while the apiserver cannot be
    /// reached or answers 5xx, for up to a minute; a pod's patches are sent in order.
    async fn patch_status(&self, namespace: &str, name: &str, patch: Value) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut wait = Duration::from_millis(200);
        loop {
            let result = self
                .pod_api(namespace)
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await;
            let retry = match &result {
                Ok(_) => return,
                Err(kube::Error::Api(status)) if status.is_not_found() => return,
                Err(kube::Error::Api(status)) => status.code >= 500,
                Err(_) => true,
            };
            if !retry || std::time::Instant::now() > deadline {
                if let Err(e) = result {
                    tracing::warn!(error = %e, pod = %name, namespace = %namespace, "node agent: status update failed");
                }
                return;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(2));
        }
    }

    /// Finishes a deletion like a kubelet: delete with grace period 0.
    async fn delete_now(&self, pod: &Pod) {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match self.pod_api(&namespace).delete(&name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_not_found() || status.code == 409 => {}
            Err(e) => {
                tracing::warn!(error = %e, pod = %name, namespace = %namespace, "node agent: final pod deletion failed");
            }
        }
    }
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn is_deleting(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// Being deleted with a grace period the agent still has to cut short.
fn needs_final_delete(pod: &Pod) -> bool {
    is_deleting(pod) && pod.metadata.deletion_grace_period_seconds != Some(0)
}

async fn watch_pods(shared: Arc<Shared>, scope: Option<String>) {
    let api: Api<Pod> = match &scope {
        Some(namespace) => Api::namespaced(shared.client.clone(), namespace),
        None => Api::all(shared.client.clone()),
    };
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut seen: Option<HashSet<String>> = None;
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => seen = Some(HashSet::new()),
            Ok(Event::InitApply(pod)) => {
                if let (Some(seen), Some(uid)) = (seen.as_mut(), pod.metadata.uid.clone()) {
                    seen.insert(uid);
                }
                shared.on_pod(pod).await;
            }
            Ok(Event::InitDone) => {
                if let Some(seen) = seen.take() {
                    shared.forget_missing(scope.as_deref(), &seen);
                }
            }
            Ok(Event::Apply(pod)) => shared.on_pod(pod).await,
            Ok(Event::Delete(pod)) => shared.on_delete(&pod),
            Err(e) => tracing::warn!(error = %e, "node agent: pod watch error"),
        }
    }
}

fn memory_capacity() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map(|kib| format!("{kib}Ki"))
        .unwrap_or_else(|| "8Gi".into())
}

async fn register_node(shared: &Shared, port: u16, started: Timestamp) -> Result<()> {
    let api: Api<Node> = Api::all(shared.client.clone());
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let node = Node {
        metadata: ObjectMeta {
            name: Some(shared.node_name.clone()),
            labels: Some(
                [
                    ("kubernetes.io/hostname", shared.node_name.as_str()),
                    ("kubernetes.io/os", "linux"),
                    ("kubernetes.io/arch", arch),
                    ("recac.io/node-agent", "true"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(e) => {
            return Err(TestEnvError::NodeAgent(format!(
                "registering node {}: {e}",
                shared.node_name
            )));
        }
    }
    patch_node_status(shared, port, started).await
}

async fn patch_node_status(shared: &Shared, port: u16, started: Timestamp) -> Result<()> {
    let api: Api<Node> = Api::all(shared.client.clone());
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let resources = json!({"cpu": cpus.to_string(), "memory": memory_capacity(), "pods": "110"});
    let patch = json!({"status": {
        "capacity": resources,
        "allocatable": resources,
        "conditions": [{
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "recac node agent is posting ready status",
            "lastHeartbeatTime": time(Timestamp::now()),
            "lastTransitionTime": time(started),
        }],
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
        "nodeInfo": {
            "architecture": match std::env::consts::ARCH { "x86_64" => "amd64", "aarch64" => "arm64", other => other },
            "bootID": "",
            "containerRuntimeVersion": "recac-node-agent://0.1.0",
            "kernelVersion": "",
            "kubeProxyVersion": "",
            "kubeletVersion": "v1.37.2-recac-node-agent",
            "machineID": "",
            "operatingSystem": "linux",
            "osImage": "recac node agent (local processes)",
            "systemUUID": "",
        },
    }});
    api.patch_status(
        &shared.node_name,
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(|e| {
        TestEnvError::NodeAgent(format!(
            "updating the status of node {}: {e}",
            shared.node_name
        ))
    })?;
    Ok(())
}

/// What a container is doing, for its status.
#[derive(Clone, Debug)]
enum State {
    Waiting {
        reason: String,
        message: String,
    },
    Running {
        started_at: Timestamp,
    },
    Terminated {
        exit_code: i32,
        signal: Option<i32>,
        reason: String,
        message: String,
        started_at: Timestamp,
        finished_at: Timestamp,
    },
}

#[derive(Clone, Debug)]
struct ContainerInfo {
    name: String,
    image: String,
    container_id: String,
    termination_log: PathBuf,
    log_path: PathBuf,
    fallback_to_logs: bool,
    /// A native sidecar (an init container with `restartPolicy: Always`).
    sidecar: bool,
    state: State,
}

fn conditions(initialized: bool, ready: bool, now: Timestamp) -> Value {
    let status = |b: bool| if b { "True" } else { "False" };
    json!([
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": time(now)},
        {"type": "Initialized", "status": status(initialized), "lastTransitionTime": time(now)},
        {"type": "ContainersReady", "status": status(ready), "lastTransitionTime": time(now)},
        {"type": "Ready", "status": status(ready), "lastTransitionTime": time(now)},
    ])
}

fn container_status(info: &ContainerInfo) -> Value {
    let (state, ready, started) = match &info.state {
        State::Waiting { reason, message } => (
            json!({"waiting": {"reason": reason, "message": message}}),
            false,
            false,
        ),
        State::Running { started_at } => (
            json!({"running": {"startedAt": time(*started_at)}}),
            true,
            true,
        ),
        State::Terminated {
            exit_code,
            signal,
            reason,
            message,
            started_at,
            finished_at,
        } => {
            let mut terminated = json!({
                "exitCode": exit_code,
                "reason": reason,
                "startedAt": time(*started_at),
                "finishedAt": time(*finished_at),
                "containerID": info.container_id,
            });
            if !message.is_empty() {
                terminated["message"] = json!(message);
            }
            if let Some(signal) = signal {
                terminated["signal"] = json!(signal);
            }
            (json!({"terminated": terminated}), false, false)
        }
    };
    let mut status = json!({
        "name": info.name,
        "image": info.image,
        "imageID": "",
        "ready": ready,
        "started": started,
        "restartCount": 0,
        "state": state,
    });
    if !info.container_id.is_empty() {
        status["containerID"] = json!(info.container_id);
    }
    status
}

/// The `pods/status` merge patch for the containers' current states.
fn status_patch(
    start_time: Timestamp,
    containers: &[ContainerInfo],
    pod_reason: Option<(&str, &str)>,
) -> Value {
    let now = Timestamp::now();
    let (sidecars, main): (Vec<&ContainerInfo>, Vec<&ContainerInfo>) =
        containers.iter().partition(|c| c.sidecar);
    // Terminal only once the sidecars have stopped too; their exit codes do not count.
    let all_terminated = containers
        .iter()
        .all(|c| matches!(c.state, State::Terminated { .. }));
    let any_waiting = containers
        .iter()
        .any(|c| matches!(c.state, State::Waiting { .. }));
    let all_running = containers
        .iter()
        .all(|c| matches!(c.state, State::Running { .. }));
    let phase = if any_waiting {
        "Pending"
    } else if all_terminated {
        let all_zero = main
            .iter()
            .all(|c| matches!(c.state, State::Terminated { exit_code: 0, .. }));
        if all_zero && pod_reason.is_none() {
            "Succeeded"
        } else {
            "Failed"
        }
    } else {
        "Running"
    };
    let mut status = json!({
        "phase": phase,
        "hostIP": "127.0.0.1",
        "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": "127.0.0.1",
        "podIPs": [{"ip": "127.0.0.1"}],
        "startTime": time(start_time),
        "conditions": conditions(true, all_running, now),
        "containerStatuses": main.iter().map(|c| container_status(c)).collect::<Vec<_>>(),
    });
    if !sidecars.is_empty() {
        status["initContainerStatuses"] = sidecars
            .iter()
            .map(|c| container_status(c))
            .collect::<Vec<_>>()
            .into();
    }
    if let Some((reason, message)) = pod_reason {
        status["reason"] = json!(reason);
        status["message"] = json!(message);
    }
    json!({ "status": status })
}

/// Why the agent stopped a pod's processes before they exited on their own.
enum Stop {
    Deleted,
    Deadline,
    Shutdown,
}

async fn run_pod(shared: Arc<Shared>, handle: Arc<PodHandle>, mut updates: watch::Receiver<Pod>) {
    let mut shutdown = shared.shutdown.clone();
    let start_time = Timestamp::now();

    // Prepare (env, volumes), retrying while a referenced object is missing.
    let mut last_error: Option<String> = None;
    let specs: Vec<ProcessSpec> = loop {
        let pod = updates.borrow_and_update().clone();
        if is_deleting(&pod) {
            shared.delete_now(&pod).await;
            return;
        }
        if *shutdown.borrow() {
            return;
        }
        match spec::prepare(&shared.client, &pod, &handle.dir).await {
            Ok(specs) => break specs,
            Err(ConfigError(message)) => {
                if last_error.as_deref() != Some(message.as_str()) {
                    tracing::info!(pod = %handle.name, namespace = %handle.namespace, %message, "node agent: cannot start pod yet");
                    let infos: Vec<ContainerInfo> = pod
                        .spec
                        .iter()
                        .flat_map(|s| s.containers.iter())
                        .map(|c| ContainerInfo {
                            name: c.name.clone(),
                            image: c.image.clone().unwrap_or_default(),
                            container_id: String::new(),
                            termination_log: PathBuf::new(),
                            log_path: PathBuf::new(),
                            fallback_to_logs: false,
                            sidecar: false,
                            state: State::Waiting {
                                reason: "CreateContainerConfigError".into(),
                                message: message.clone(),
                            },
                        })
                        .collect();
                    shared
                        .patch_status(
                            &handle.namespace,
                            &handle.name,
                            status_patch(start_time, &infos, None),
                        )
                        .await;
                    last_error = Some(message);
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    changed = updates.changed() => if changed.is_err() { return; },
                    _ = shutdown.changed() => {}
                }
            }
        }
    };

    // Start every container.
    let mut infos = Vec::new();
    for spec in specs {
        let (finished, _) = watch::channel(false);
        let run = Arc::new(ContainerRun {
            name: spec.container.clone(),
            log_path: spec.log_path.clone(),
            process: Mutex::new(None),
            finished,
        });
        let mut command = Command::new(&spec.program);
        command.args(&spec.args).current_dir(&spec.cwd);
        if !shared.options.inherit_env {
            command.env_clear().env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            );
        }
        command.envs(shared.options.node_env.iter().map(|(k, v)| (k, v)));
        command.env("HOSTNAME", &handle.name);
        command.envs(spec.env.iter().map(|(k, v)| (k, v)));
        let label = format!("{}/{}/{}", handle.namespace, handle.name, spec.container);
        let started_at = Timestamp::now();
        let (state, container_id) =
            match ManagedProcess::spawn_command(&label, command, &spec.log_path, true) {
                Ok(process) => {
                    let id = format!("recac-node-agent://{}", process.pid());
                    *lock(&run.process) = Some(process);
                    (State::Running { started_at }, id)
                }
                Err(e) => {
                    let _ = run.finished.send(true);
                    let message = format!("cannot start {:?}: {e}", spec.program);
                    let _ = std::fs::write(&spec.log_path, format!("{message}\n"));
                    (
                        State::Terminated {
                            exit_code: 128,
                            signal: None,
                            reason: "StartError".into(),
                            message,
                            started_at,
                            finished_at: started_at,
                        },
                        String::new(),
                    )
                }
            };
        lock(&handle.containers).push(run);
        infos.push(ContainerInfo {
            name: spec.container,
            image: spec.image,
            container_id,
            termination_log: spec.termination_log,
            log_path: spec.log_path,
            fallback_to_logs: spec.fallback_to_logs,
            sidecar: spec.sidecar,
            state,
        });
    }
    shared
        .patch_status(
            &handle.namespace,
            &handle.name,
            status_patch(start_time, &infos, None),
        )
        .await;

    // Wait for the processes, a deletion, the deadline or the agent's shutdown.
    let deadline = updates
        .borrow()
        .spec
        .as_ref()
        .and_then(|s| s.active_deadline_seconds)
        .and_then(|s| u64::try_from(s).ok())
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    let stop = loop {
        tokio::select! {
            _ = ticker.tick() => {}
            changed = updates.changed() => if changed.is_err() { return; },
            _ = shutdown.changed() => {}
        }
        let changed = poll_exits(&handle, &mut infos);
        if infos
            .iter()
            .filter(|c| !c.sidecar)
            .all(|c| matches!(c.state, State::Terminated { .. }))
        {
            break None;
        }
        if changed {
            shared
                .patch_status(
                    &handle.namespace,
                    &handle.name,
                    status_patch(start_time, &infos, None),
                )
                .await;
        }
        if is_deleting(&updates.borrow()) {
            break Some(Stop::Deleted);
        }
        if *shutdown.borrow() {
            break Some(Stop::Shutdown);
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break Some(Stop::Deadline);
        }
    };
    let grace = {
        let pod = updates.borrow();
        let requested = pod
            .metadata
            .deletion_grace_period_seconds
            .or(pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds))
            .unwrap_or(30);
        Duration::from_secs(u64::try_from(requested).unwrap_or(0))
            .min(shared.options.max_grace_period)
    };
    // The pod's containers first, then its sidecars (also when the containers ended on their
    // own), as a kubelet stops them.
    if stop.is_some() {
        terminate(&handle, &mut infos, grace, false).await;
    }
    if infos
        .iter()
        .any(|c| c.sidecar && matches!(c.state, State::Running { .. }))
    {
        terminate(&handle, &mut infos, grace, true).await;
    }
    let reason = match stop {
        Some(Stop::Deadline) => Some((
            "DeadlineExceeded",
            "Pod was active on the node longer than the specified deadline",
        )),
        Some(Stop::Shutdown) => Some(("Terminated", "the recac node agent shut down")),
        _ => None,
    };
    shared
        .patch_status(
            &handle.namespace,
            &handle.name,
            status_patch(start_time, &infos, reason),
        )
        .await;

    // Finish a deletion now or whenever it comes; stop when the agent shuts down.
    loop {
        let pod = updates.borrow_and_update().clone();
        if needs_final_delete(&pod) {
            shared.delete_now(&pod).await;
            return;
        }
        if *shutdown.borrow() {
            return;
        }
        tokio::select! {
            changed = updates.changed() => if changed.is_err() { return; },
            _ = shutdown.changed() => {}
        }
    }
}

/// Records the containers whose process exited; true when any did.
fn poll_exits(handle: &PodHandle, infos: &mut [ContainerInfo]) -> bool {
    let runs: Vec<Arc<ContainerRun>> = lock(&handle.containers).clone();
    let mut changed = false;
    for (info, run) in infos.iter_mut().zip(runs.iter()) {
        let State::Running { started_at } = info.state else {
            continue;
        };
        let exited = {
            let mut process = lock(&run.process);
            match process.as_mut() {
                Some(p) => {
                    let status = p.exited();
                    if status.is_some() {
                        // Kills what the process left behind in its group.
                        p.stop();
                    }
                    status
                }
                None => None,
            }
        };
        let Some(status) = exited else {
            continue;
        };
        let signal = status.signal();
        let exit_code = status.code().or(signal.map(|s| 128 + s)).unwrap_or(1);
        let mut message = read_prefix(&info.termination_log, 4096);
        if message.is_empty() && exit_code != 0 && info.fallback_to_logs {
            message = log_tail(&info.log_path, 80, 2048);
        }
        info.state = State::Terminated {
            exit_code,
            signal,
            reason: if exit_code == 0 { "Completed" } else { "Error" }.into(),
            message,
            started_at,
            finished_at: Timestamp::now(),
        };
        let _ = run.finished.send(true);
        changed = true;
    }
    changed
}

/// SIGTERM to every running process of the pod's containers (`sidecars` false) or of its
/// sidecars, SIGKILL after `grace`, then records the exits.
async fn terminate(
    handle: &PodHandle,
    infos: &mut [ContainerInfo],
    grace: Duration,
    sidecars: bool,
) {
    let runs: Vec<Arc<ContainerRun>> = lock(&handle.containers).clone();
    let chosen: Vec<bool> = infos.iter().map(|c| c.sidecar == sidecars).collect();
    let signal_all = |sig: libc::c_int| {
        for (run, chosen) in runs.iter().zip(&chosen) {
            if !chosen {
                continue;
            }
            if let Some(process) = lock(&run.process).as_mut() {
                process.signal(sig);
            }
        }
    };
    let running = |infos: &[ContainerInfo]| {
        infos
            .iter()
            .any(|c| c.sidecar == sidecars && matches!(c.state, State::Running { .. }))
    };
    signal_all(libc::SIGTERM);
    let deadline = tokio::time::Instant::now() + grace;
    while running(infos) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        poll_exits(handle, infos);
    }
    if running(infos) {
        signal_all(libc::SIGKILL);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while running(infos) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            poll_exits(handle, infos);
        }
    }
    // Anything still unaccounted for (should not happen) counts as killed.
    for (info, run) in infos.iter_mut().zip(runs.iter()) {
        if info.sidecar != sidecars {
            continue;
        }
        if let State::Running { started_at } = info.state {
            run.kill_now();
            info.state = State::Terminated {
                exit_code: 137,
                signal: Some(libc::SIGKILL),
                reason: "Error".into(),
                message: String::new(),
                started_at,
                finished_at: Timestamp::now(),
            };
        }
    }
}

fn read_prefix(path: &Path, max: u64) -> String {
    use std::io::Read;
    let mut text = Vec::new();
    if let Ok(file) = std::fs::File::open(path) {
        let _ = file.take(max).read_to_end(&mut text);
    }
    String::from_utf8_lossy(&text).into_owned()
}

fn log_tail(path: &Path, lines: usize, max: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    let start = tail.len().saturating_sub(max);
    let start = (start..tail.len())
        .find(|i| tail.is_char_boundary(*i))
        .unwrap_or(tail.len());
    tail[start..].to_string()
}
