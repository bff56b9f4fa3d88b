//! Performs the decisions of [`crate::decide`] against the Kubernetes API.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{
    Action as RequeueAction, Config as ControllerRunConfig, Controller,
};
use kube::runtime::events::{Event, EventType as KubeEventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use recac_api::{AgentTask, AgentTaskStatus, TaskPhase};
use tracing::{debug, info, warn};

use crate::admission::{Admission, wants_slot};
use crate::config::{AgentDefaults, ControllerConfig};
use crate::decide::{self, Action, AttemptObservation, EventType, Observation, RetryPolicy};
use crate::job_builder::{self, labels};
use crate::metrics::Metrics;
use crate::naming;
use crate::observe;

/// The field manager of the controller's status writes.
pub const FIELD_MANAGER: &str = "recac-task-controller";

/// Errors of one reconcile. Each names the object and says what failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("{action} for AgentTask {task}: {source}")]
    Kube {
        action: String,
        task: String,
        source: kube::Error,
    },
    #[error(
        "Job {job} exists but is not owned by AgentTask {task}; delete or rename that Job so the task can dispatch"
    )]
    ForeignJob { job: String, task: String },
}

impl ReconcileError {
    /// A failure that retrying alone will not fix (a rejected Job, a name taken by another owner).
    fn is_permanent(&self) -> bool {
        match self {
            ReconcileError::ForeignJob { .. } => true,
            ReconcileError::Kube {
                source: kube::Error::Api(status),
                ..
            } => (400..500).contains(&status.code) && ![409, 429].contains(&status.code),
            ReconcileError::Kube { .. } => false,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            ReconcileError::Kube { .. } => "kube",
            ReconcileError::ForeignJob { .. } => "foreign_job",
        }
    }
}

/// Whether the controller's caches are warm (for /readyz).
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
    fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }
}

struct Context {
    client: Client,
    agent: AgentDefaults,
    retry: RetryPolicy,
    admission: Admission,
    metrics: Arc<Metrics>,
    recorder: Recorder,
    failures: Mutex<HashMap<String, u32>>,
    /// The attempt this replica last dispatched per task uid, until the watch shows it:
    /// a reconcile that sees an older status is working from a stale cache.
    dispatched: Mutex<HashMap<String, (i32, std::time::Instant)>>,
}

/// The task controller, ready to run: its watches start when [`TaskController::run`] is called.
pub struct TaskController {
    controllers: Vec<Controller<AgentTask>>,
    stores: Vec<Store<AgentTask>>,
    context: Arc<Context>,
    readiness: Readiness,
}

/// Read access to what the controller watches, for the HTTP server.
#[derive(Clone)]
pub struct Observed {
    stores: Vec<Store<AgentTask>>,
    pub metrics: Arc<Metrics>,
    pub readiness: Readiness,
}

impl Observed {
    /// Watched tasks by phase (a task without status counts as Pending).
    pub fn tasks_by_phase(&self) -> BTreeMap<&'static str, u64> {
        let mut phases = BTreeMap::new();
        for task in self.stores.iter().flat_map(|s| s.state()) {
            let phase = task
                .status
                .as_ref()
                .and_then(|s| s.phase)
                .unwrap_or(TaskPhase::Pending);
            *phases.entry(phase.as_str()).or_default() += 1;
        }
        phases
    }
}

impl TaskController {
    /// Builds the controller; `instance` names this replica in Events (e.g. the pod name).
    pub fn new(
        client: Client,
        config: &ControllerConfig,
        agent: AgentDefaults,
        instance: Option<String>,
    ) -> Self {
        let job_watch =
            watcher::Config::default().labels(&format!("{}={}", labels::APP, labels::APP_VALUE));
        let task_apis: Vec<Api<AgentTask>> = scoped_apis(&client, &config.namespaces);
        let job_apis: Vec<Api<Job>> = scoped_apis(&client, &config.namespaces);
        let controllers: Vec<Controller<AgentTask>> = task_apis
            .into_iter()
            .zip(job_apis)
            .map(|(tasks, jobs)| {
                Controller::new(tasks, watcher::Config::default().any_semantic())
                    .owns(jobs, job_watch.clone())
                    .with_config(
                        ControllerRunConfig::default()
                            .concurrency(config.workers)
                            .debounce(Duration::from_millis(50)),
                    )
            })
            .collect();
        let stores: Vec<Store<AgentTask>> = controllers.iter().map(|c| c.store()).collect();
        let metrics = Arc::new(Metrics::default());
        let reporter = Reporter {
            controller: "recac".into(),
            instance,
        };
        let context = Arc::new(Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            agent,
            retry: RetryPolicy {
                initial: Duration::from_secs(config.retry_backoff_seconds),
                max: Duration::from_secs(config.max_retry_backoff_seconds),
                queue_poll: Duration::from_secs(config.queue_poll_seconds),
            },
            admission: Admission::new(config.max_concurrent_tasks, stores.clone()),
            metrics,
            failures: Mutex::new(HashMap::new()),
            dispatched: Mutex::new(HashMap::new()),
        });
        Self {
            controllers,
            stores,
            context,
            readiness: Readiness::default(),
        }
    }

    /// What the HTTP server reads.
    pub fn observed(&self) -> Observed {
        Observed {
            stores: self.stores.clone(),
            metrics: self.context.metrics.clone(),
            readiness: self.readiness.clone(),
        }
    }

    /// Runs until `shutdown` completes; then stops its watches and lets in-flight
    /// reconciles finish. Nothing is left running when it returns.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let shutdown = shutdown.shared();
        let readiness = self.readiness.clone();
        let stores = self.stores.clone();
        let ready_watch = {
            let shutdown = shutdown.clone();
            async move {
                let all_ready = async {
                    for store in &stores {
                        let _ = store.wait_until_ready().await;
                    }
                    readiness.set(true);
                    info!("caches synced; the task controller is ready");
                };
                tokio::select! {
                    _ = all_ready => {}
                    _ = shutdown => {}
                }
            }
        };
        let runs = self.controllers.into_iter().map(|controller| {
            let context = self.context.clone();
            let shutdown = shutdown.clone();
            controller
                .graceful_shutdown_on(shutdown)
                .run(reconcile, error_policy, context)
                .for_each(|result| async move {
                    if let Err(err) = result {
                        debug!(error = %err, "controller event");
                    }
                })
        });
        futures::join!(futures::future::join_all(runs), ready_watch);
        self.readiness.set(false);
        info!("the task controller stopped");
    }
}

/// One Api per watched namespace, or one cluster-wide Api when none are named.
fn scoped_apis<K>(client: &Client, namespaces: &[String]) -> Vec<Api<K>>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    if namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect()
    }
}

fn task_key(task: &AgentTask) -> String {
    format!(
        "{}/{}",
        task.namespace().unwrap_or_default(),
        task.name_any()
    )
}

fn kube_error(
    action: impl Into<String>,
    task: &AgentTask,
) -> impl FnOnce(kube::Error) -> ReconcileError {
    let action = action.into();
    let task = task_key(task);
    move |source| ReconcileError::Kube {
        action,
        task,
        source,
    }
}

fn owned_by(job: &Job, task: &AgentTask) -> bool {
    let uid = task.uid().unwrap_or_default();
    job.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

async fn observe_attempt(
    task: &AgentTask,
    attempt: i32,
    ctx: &Context,
) -> Result<Option<AttemptObservation>, ReconcileError> {
    let namespace = task.namespace().unwrap_or_default();
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    let job_name = naming::job_name(&task.name_any(), attempt);
    ctx.metrics.api_request("get");
    let Some(job) = jobs
        .get_opt(&job_name)
        .await
        .map_err(kube_error(format!("reading Job {job_name}"), task))?
    else {
        return Ok(None);
    };
    if !owned_by(&job, task) {
        return Err(ReconcileError::ForeignJob {
            job: job_name,
            task: task_key(task),
        });
    }
    let state = observe::attempt_state(&job);
    let termination = match state {
        observe::AttemptState::Succeeded | observe::AttemptState::Failed(_) => {
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
            ctx.metrics.api_request("list");
            let list = pods
                .list(
                    &ListParams::default()
                        .labels(&format!("batch.kubernetes.io/job-name={job_name}")),
                )
                .await
                .map_err(kube_error(format!("listing pods of Job {job_name}"), task))?;
            observe::termination(&list.items)
        }
        _ => None,
    };
    Ok(Some(AttemptObservation {
        job_name,
        state,
        termination,
    }))
}

async fn create_or_adopt_job(
    task: &AgentTask,
    attempt: i32,
    branch: &str,
    suspend: bool,
    ctx: &Context,
) -> Result<(), ReconcileError> {
    let namespace = task.namespace().unwrap_or_default();
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    let job = job_builder::build_job(task, attempt, branch, &ctx.agent, suspend);
    let name = job.name_any();
    ctx.metrics.api_request("create");
    match jobs.create(&PostParams::default(), &job).await {
        Ok(_) => {
            ctx.metrics.job_created();
            if attempt == 1
                && let Some(created) = task.creation_timestamp()
            {
                let latency = created.0.duration_until(Timestamp::now());
                if let Ok(latency) = Duration::try_from(latency) {
                    ctx.metrics.observe_dispatch_latency(latency);
                }
            }
            info!(task = %task_key(task), job = %name, attempt, "created Job");
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.reason == "AlreadyExists" => {
            // Deterministic name: it exists because this attempt was dispatched before.
            ctx.metrics.api_request("get");
            let existing = jobs
                .get(&name)
                .await
                .map_err(kube_error(format!("reading existing Job {name}"), task))?;
            if existing.metadata.deletion_timestamp.is_some() {
                // Going away (TTL or someone's delete): wait for it, then create it anew.
                return Err(ReconcileError::Kube {
                    action: format!(
                        "creating Job {name} (an older Job of that name is being deleted)"
                    ),
                    task: task_key(task),
                    source: kube::Error::Api(status),
                });
            }
            if owned_by(&existing, task) {
                info!(task = %task_key(task), job = %name, attempt, "adopted existing Job");
                Ok(())
            } else {
                Err(ReconcileError::ForeignJob {
                    job: name,
                    task: task_key(task),
                })
            }
        }
        Err(source) => Err(ReconcileError::Kube {
            action: format!("creating Job {name}"),
            task: task_key(task),
            source,
        }),
    }
}

async fn publish_event(
    task: &AgentTask,
    ctx: &Context,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let event = Event {
        type_: match type_ {
            EventType::Normal => KubeEventType::Normal,
            EventType::Warning => KubeEventType::Warning,
        },
        reason: reason.to_string(),
        note: Some(note.chars().take(1000).collect()),
        action: reason.to_string(),
        secondary: None,
    };
    ctx.metrics.api_request("event");
    if let Err(err) = ctx.recorder.publish(&event, &task.object_ref(&())).await {
        // Events are best effort: losing one must not fail the reconcile.
        ctx.metrics.event_failed();
        warn!(task = %task_key(task), error = %err, "cannot publish event");
    }
}

async fn reconcile(
    task: Arc<AgentTask>,
    ctx: Arc<Context>,
) -> Result<RequeueAction, ReconcileError> {
    ctx.metrics.reconciled();
    if task.metadata.deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove the Jobs and pods.
        return Ok(RequeueAction::await_change());
    }
    let now = Timestamp::now();
    let current = task.status.clone().unwrap_or_default();
    if cache_is_behind(&task, &current, &ctx) {
        return Ok(RequeueAction::requeue(Duration::from_millis(500)));
    }
    let finished = current.phase.is_some_and(TaskPhase::is_finished);
    let attempt = current.attempt.unwrap_or(0);
    // While a retry waits out its backoff, the failed attempt's Job no longer matters.
    let observation = if attempt > 0 && !finished && current.next_attempt_time.is_none() {
        observe_attempt(&task, attempt, &ctx).await?
    } else {
        None
    };
    let admitted = wants_slot(&task, now) && ctx.admission.try_admit(&task, now);
    let plan = decide::decide(
        &task,
        &Observation {
            attempt: observation,
            admitted,
            now,
        },
        &ctx.retry,
    );
    let dispatches = plan
        .actions
        .iter()
        .any(|a| matches!(a, Action::CreateJob { .. }));
    if admitted && !dispatches {
        ctx.admission.release(&task);
    }

    let mut events = Vec::new();
    for action in &plan.actions {
        match action {
            Action::CreateJob {
                attempt,
                branch,
                suspend,
            } => {
                if let Err(err) = create_or_adopt_job(&task, *attempt, branch, *suspend, &ctx).await
                {
                    ctx.admission.release(&task);
                    if err.is_permanent() {
                        record_dispatch_failure(&task, &current, &err, &ctx).await;
                    }
                    return Err(err);
                }
                if let Ok(mut dispatched) = ctx.dispatched.lock() {
                    dispatched.retain(|_, (_, at)| at.elapsed() < STALE_CACHE_WAIT);
                    dispatched.insert(
                        task.uid().unwrap_or_default(),
                        (*attempt, std::time::Instant::now()),
                    );
                }
            }
            Action::SuspendJob { name, suspend } => {
                let jobs: Api<Job> =
                    Api::namespaced(ctx.client.clone(), &task.namespace().unwrap_or_default());
                let patch = serde_json::json!({ "spec": { "suspend": suspend } });
                ctx.metrics.api_request("patch");
                jobs.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(kube_error(
                        format!("setting suspend={suspend} on Job {name}"),
                        &task,
                    ))?;
            }
            Action::Event { .. } => events.push(action),
        }
    }

    if plan.status != current {
        match write_status(&task, &plan.status, &ctx).await {
            Ok(()) => {}
            // Decided on a stale copy of the task: decide again on the fresh one.
            Err(ReconcileError::Kube {
                source: kube::Error::Api(status),
                ..
            }) if status.code == 409 => {
                debug!(task = %task_key(&task), "status changed meanwhile; reconciling again");
                return Ok(RequeueAction::requeue(Duration::from_millis(200)));
            }
            Err(err) => return Err(err),
        }
    }
    // Events only once the transition they describe is recorded, so a retried
    // reconcile does not announce it twice.
    for event in events {
        if let Action::Event {
            type_,
            reason,
            note,
        } = event
        {
            publish_event(&task, &ctx, *type_, reason, note).await;
        }
    }
    if let Ok(mut failures) = ctx.failures.lock() {
        failures.remove(&task.uid().unwrap_or_default());
    }
    Ok(match plan.requeue_after {
        Some(after) => RequeueAction::requeue(after),
        None => RequeueAction::await_change(),
    })
}

/// Makes a dispatch that keeps failing visible in status, and lets the queue pass the task.
async fn record_dispatch_failure(
    task: &AgentTask,
    current: &AgentTaskStatus,
    error: &ReconcileError,
    ctx: &Context,
) {
    let status = decide::dispatch_failed(task, &error.to_string(), Timestamp::now());
    if status == *current {
        return;
    }
    if let Err(err) = write_status(task, &status, ctx).await {
        warn!(task = %task_key(task), error = %err, "cannot record the dispatch failure");
    }
}

/// How long a reconcile waits for the watch to show this replica's own dispatch.
const STALE_CACHE_WAIT: Duration = Duration::from_secs(10);

/// Whether this replica dispatched a newer attempt than the cached task shows.
fn cache_is_behind(task: &AgentTask, current: &AgentTaskStatus, ctx: &Context) -> bool {
    let Ok(mut dispatched) = ctx.dispatched.lock() else {
        return false;
    };
    let uid = task.uid().unwrap_or_default();
    match dispatched.get(&uid) {
        // Bounded: if the status write was lost, decide again (create finds the Job and adopts it).
        Some((attempt, at))
            if current.attempt.unwrap_or(0) < *attempt && at.elapsed() < STALE_CACHE_WAIT =>
        {
            true
        }
        Some(_) => {
            dispatched.remove(&uid);
            false
        }
        None => false,
    }
}

async fn write_status(
    task: &AgentTask,
    status: &AgentTaskStatus,
    ctx: &Context,
) -> Result<(), ReconcileError> {
    let api: Api<AgentTask> =
        Api::namespaced(ctx.client.clone(), &task.namespace().unwrap_or_default());
    // The resourceVersion makes the apply a precondition: a decision made on a stale copy
    // of the task fails with 409 instead of overwriting newer status.
    let patch = serde_json::json!({
        "apiVersion": AgentTask::api_version(&()),
        "kind": AgentTask::kind(&()),
        "metadata": { "resourceVersion": task.resource_version() },
        "status": status,
    });
    ctx.metrics.api_request("patch_status");
    api.patch_status(
        &task.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(kube_error("writing status", task))?;
    Ok(())
}

fn error_policy(task: Arc<AgentTask>, error: &ReconcileError, ctx: Arc<Context>) -> RequeueAction {
    ctx.metrics.reconcile_failed(error.kind());
    let failures = ctx
        .failures
        .lock()
        .map(|mut f| {
            let n = f.entry(task.uid().unwrap_or_default()).or_default();
            *n = n.saturating_add(1);
            *n
        })
        .unwrap_or(1);
    let wait = Duration::from_millis(500)
        .saturating_mul(2u32.saturating_pow(failures.min(8)))
        .min(Duration::from_secs(120));
    warn!(task = %task_key(&task), error = %error, retry_in = ?wait, "reconcile failed");
    RequeueAction::requeue(wait)
}
