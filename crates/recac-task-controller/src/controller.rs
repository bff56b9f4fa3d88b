//! The task controller as a component of the runtime: each reconcile observes (from the
//! shared caches), decides ([`crate::decide`], pure) and acts (against the API).
//!
//! A term's state (retry counters, the dispatches the caches do not show yet, slot grants)
//! lives in its [`TermContext`] and starts fresh each term; the caches and the admission
//! index outlive terms.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};
use recac_api::{AgentTask, AgentTaskStatus, TaskPhase};
use recac_runtime::claims::ClaimBoard;
use recac_runtime::events::{EventPublisher, EventType as KubeEventType};
use recac_runtime::kinds::{CachedJob, TaskSummary, controller_of};
use recac_runtime::runner::{
    self, Action as RequeueAction, Backoff, ReconcileMetrics, RunnerConfig,
};
use recac_runtime::{Cache, CacheHook, Component, ComponentError, Term, failpoint, status};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::admission::AdmissionQueue;
use crate::budget::{self, Pricing};
use crate::config::{AgentDefaults, TaskControllerConfig};
use crate::decide::{self, Action, AttemptObservation, EventType, Observation, Plan, RetryPolicy};
use crate::job_builder;
use crate::metrics::TaskMetrics;
use crate::naming::TaskIdentity;

mod namespace_spend;

use crate::observe;
use crate::orphans;
pub use namespace_spend::spend_ledger_cache;

/// The field manager of the task controller's status writes.
pub const FIELD_MANAGER: &str = "recac-task-controller";

/// The status conditions this controller owns (other controllers own others).
pub const OWNED_CONDITIONS: [&str; 7] = [
    decide::condition::CLAIMED,
    decide::condition::QUEUED,
    decide::condition::DISPATCHED,
    decide::condition::SUSPENDED,
    decide::condition::SUCCEEDED,
    decide::condition::FAILED,
    decide::condition::PLAN_READY,
];

/// How long a reconcile trusts its own dispatch over a cache that does not show it yet.
const STALE_CACHE_WAIT: Duration = Duration::from_secs(10);

/// Events waiting to be published, per term; more are dropped (and counted).
const EVENT_BACKLOG: usize = 10_000;

/// Errors of one reconcile. Each names the object and says what failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("counting the spend of AgentTask {task} in its namespace's budget: {source}")]
    SpendLedger {
        task: String,
        source: recac_runtime::spend_ledger::LedgerError,
    },
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
    /// An agent Job's network cannot be set up (its pod has no labels to select it by, or
    /// its allow-list annotation does not parse).
    #[error("AgentTask {task}: {message}")]
    Egress { task: String, message: String },
}

impl ReconcileError {
    /// A failure that retrying alone will not fix (a rejected Job, a name taken by another owner).
    fn is_permanent(&self) -> bool {
        match self {
            ReconcileError::ForeignJob { .. } | ReconcileError::Egress { .. } => true,
            ReconcileError::Kube {
                source: kube::Error::Api(status),
                ..
            } => (400..500).contains(&status.code) && ![409, 429].contains(&status.code),
            ReconcileError::Kube { .. } | ReconcileError::SpendLedger { .. } => false,
        }
    }
}

impl runner::ErrorReason for ReconcileError {
    fn reason(&self) -> &'static str {
        match self {
            ReconcileError::Kube { .. } => "KubernetesError",
            ReconcileError::SpendLedger { .. } => "SpendLedgerError",
            ReconcileError::ForeignJob { .. } => "ForeignJob",
            ReconcileError::Egress { .. } => "EgressSetup",
        }
    }
}

/// The status fields this controller owns: everything but `feedback` and the conditions
/// of other controllers.
pub fn owned_status(status: &AgentTaskStatus) -> AgentTaskStatus {
    let mut owned = status.clone();
    owned.feedback = None;
    owned
        .conditions
        .retain(|c| OWNED_CONDITIONS.contains(&c.type_.as_str()));
    owned
}

/// Writes the task controller's status fields (see [`owned_status`]).
pub async fn write_owned_status(
    api: &Api<AgentTask>,
    task: &AgentTask,
    status: &AgentTaskStatus,
) -> Result<(), kube::Error> {
    status::apply_status(
        api,
        &task.name_any(),
        task.resource_version().as_deref(),
        FIELD_MANAGER,
        &owned_status(status),
    )
    .await
}

/// What the task controller is built from.
pub struct TaskControllerParts {
    pub client: Client,
    pub tasks: Cache<AgentTask>,
    pub jobs: Cache<CachedJob>,
    /// The namespaces' spend records ([`spend_ledger_cache`]; `None` without namespace
    /// budgets).
    pub spend_ledgers: Option<Cache<ConfigMap>>,
    pub queue: Arc<AdmissionQueue>,
    pub metrics: TaskMetrics,
    /// The process's reconcile metrics (shared by every controller).
    pub reconciles: ReconcileMetrics,
    pub config: TaskControllerConfig,
    pub agent: AgentDefaults,
    /// Names this replica in Events (e.g. the pod name).
    pub instance: String,
    /// The claims the source controller settled in this process.
    pub claims: Arc<ClaimBoard>,
    /// Each source's `egress` section (applied to its tasks).
    pub source_egress: crate::egress::SourceEgresses,
}

/// The task controller: every AgentTask becomes one Job per attempt.
pub struct TaskController {
    client: Client,
    tasks: Cache<AgentTask>,
    jobs: Cache<CachedJob>,
    spend_ledgers: Option<Cache<ConfigMap>>,
    namespace_budgets: crate::namespace_budget::NamespaceBudgets,
    parsed_ledgers: namespace_spend::ParsedLedgers,
    queue: Arc<AdmissionQueue>,
    metrics: TaskMetrics,
    reconciles: ReconcileMetrics,
    config: TaskControllerConfig,
    agent: AgentDefaults,
    events: EventPublisher,
    claims: Arc<ClaimBoard>,
    egress: Arc<crate::egress::EgressInputs>,
}

impl TaskController {
    /// The hooks the AgentTask cache must feed (the admission index).
    pub fn task_hooks(queue: &Arc<AdmissionQueue>) -> Vec<Arc<dyn CacheHook<AgentTask>>> {
        vec![queue.clone()]
    }

    pub fn new(parts: TaskControllerParts) -> Self {
        Self {
            events: EventPublisher::new(parts.client.clone(), "recac", parts.instance),
            client: parts.client,
            tasks: parts.tasks,
            jobs: parts.jobs,
            spend_ledgers: parts.spend_ledgers,
            namespace_budgets: crate::namespace_budget::NamespaceBudgets::from_config(
                &parts.config.namespace_budgets,
            ),
            parsed_ledgers: Default::default(),
            queue: parts.queue,
            metrics: parts.metrics,
            reconciles: parts.reconciles,
            config: parts.config,
            egress: Arc::new(crate::egress::EgressInputs {
                defaults: parts.agent.clone(),
                sources: parts.source_egress,
            }),
            agent: parts.agent,
            claims: parts.claims,
        }
    }

    async fn run_term(self: Arc<Self>, term: Term) -> Result<(), ComponentError> {
        let (wake_tx, wake_rx) = mpsc::unbounded_channel::<ObjectRef<AgentTask>>();
        let claimed = self.claims.subscribe();
        self.queue
            .start_term(wake_tx, self.first_jobs_without_status());
        let (events_tx, events_rx) = mpsc::channel(EVENT_BACKLOG);
        let events = tokio::spawn(publish_events(
            self.events.clone(),
            events_rx,
            self.metrics.clone(),
            term.clone(),
        ));
        let context = Arc::new(TermContext {
            controller: self.clone(),
            retry: RetryPolicy {
                initial: Duration::from_secs(self.config.retry_backoff_seconds),
                max: Duration::from_secs(self.config.max_retry_backoff_seconds),
                queue_poll: Duration::from_secs(self.config.queue_poll_seconds),
                pricing: Arc::new(Pricing::from_defaults(&self.agent)),
                egress: self.egress.clone(),
            },
            dispatched: Mutex::new(HashMap::new()),
            namespace_spend: Default::default(),
            events: events_tx,
        });
        let ticker = {
            let queue = self.queue.clone();
            let every = Duration::from_secs(self.config.queue_poll_seconds);
            let term = term.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tokio::select! {
                        _ = tick.tick() => queue.fill(),
                        _ = term.stopped() => break,
                    }
                }
            })
        };
        info!(term = term.number, "task controller term starts");
        self.delete_orphaned_jobs().await;
        // Every task is reconciled once as the term starts (it reads the Job cache then), so
        // Jobs only need to wake their task when they change later: replaying every Job at
        // the start would only wake each task a second time.
        let wakes =
            futures::stream::unfold(
                wake_rx,
                |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
            );
        let job_owners = self
            .jobs
            .changes()
            .filter_map(|job| futures::future::ready(owning_task(&job)));
        // A claim the source settled: the task now wants a slot, which its cached copy
        // does not show.
        let claims = {
            let controller = self.clone();
            futures::stream::unfold(
                claimed,
                |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
            )
            .map(move |reference| {
                if let Some(task) = controller.tasks.store().get(&reference) {
                    controller.queue.refresh(&task);
                }
                reference
            })
        };
        let triggers = futures::stream::select(
            futures::stream::select(
                self.tasks.trigger_refs(),
                namespace_spend::released_by_budget(context.clone()),
            ),
            futures::stream::select(job_owners, futures::stream::select(wakes, claims)),
        );
        runner::run(
            self.tasks.store(),
            triggers,
            RunnerConfig {
                controller: "task-controller",
                concurrency: usize::from(self.config.workers),
                debounce: Duration::from_millis(50),
                backoff: Backoff {
                    first: Duration::from_secs(1),
                    max: Duration::from_secs(120),
                },
                metrics: self.reconciles.clone(),
            },
            term.stop_signal(),
            reconcile,
            error_policy,
            context,
        )
        .await;
        self.queue.end_term();
        let _ = ticker.await;
        let _ = events.await;
        if term.is_stopped() {
            info!(term = term.number, "task controller term ended");
            Ok(())
        } else {
            Err(ComponentError::new(
                "its controller loop ended: a cache's change stream closed",
            ))
        }
    }
}

impl TaskController {
    /// The tasks (`namespace/name`) whose first attempt has an unfinished Job that their
    /// status does not show yet (its write waits for the pod): they hold slots.
    fn first_jobs_without_status(&self) -> Vec<String> {
        self.jobs
            .store()
            .iter()
            .filter(|job| !observe::cached_job_finished(job))
            .filter_map(|job| {
                let reference = owning_task(&job)?;
                let task = self.tasks.store().get(&reference)?;
                let unrecorded = task.status.as_ref().and_then(|s| s.attempt).unwrap_or(0) == 0;
                let first = TaskIdentity::of(&task).job_name(1);
                (unrecorded && job.metadata.name.as_deref() == Some(first.as_str()))
                    .then(|| TaskIdentity::of(&task).key())
            })
            .collect()
    }

    /// Deletes agent Jobs whose task is gone (see [`crate::orphans`]); each suspect from
    /// the caches is confirmed against the API first. Failures are logged; the next term
    /// looks again.
    async fn delete_orphaned_jobs(&self) {
        let live: HashSet<String> = self
            .tasks
            .store()
            .scan::<TaskSummary>()
            .filter_map(|t| t.metadata.uid)
            .collect();
        for suspect in orphans::suspects(self.jobs.store().iter(), &live) {
            let tasks: Api<AgentTask> = Api::namespaced(self.client.clone(), &suspect.namespace);
            let now = match &suspect.task {
                Some(name) => match tasks.get_opt(name).await {
                    Ok(task) => task.and_then(|t| t.uid()),
                    Err(err) => {
                        warn!(job = %suspect.job, error = %err, "cannot read the task of a possibly orphaned Job");
                        continue;
                    }
                },
                None => None,
            };
            if !orphans::is_orphan(&suspect, now.as_deref()) {
                continue;
            }
            let jobs: Api<Job> = Api::namespaced(self.client.clone(), &suspect.namespace);
            let params = DeleteParams {
                propagation_policy: Some(kube::api::PropagationPolicy::Background),
                preconditions: Some(kube::api::Preconditions {
                    uid: Some(suspect.job_uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match jobs.delete(&suspect.job, &params).await {
                Ok(_) => {
                    self.metrics.orphan_deleted();
                    warn!(
                        namespace = %suspect.namespace,
                        job = %suspect.job,
                        task = suspect.task.as_deref().unwrap_or("?"),
                        "deleted an agent Job whose AgentTask is gone"
                    );
                }
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(err) => {
                    warn!(job = %suspect.job, error = %err, "cannot delete an orphaned agent Job")
                }
            }
        }
    }
}

impl Component for TaskController {
    fn name(&self) -> &str {
        "task-controller"
    }

    fn run(self: Arc<Self>, term: Term) -> BoxFuture<'static, Result<(), ComponentError>> {
        Box::pin(self.run_term(term))
    }
}

/// One term's state.
struct TermContext {
    controller: Arc<TaskController>,
    retry: RetryPolicy,
    /// The attempt this term last dispatched per task uid, until the caches show it.
    dispatched: Mutex<HashMap<String, (i32, Instant)>>,
    events: mpsc::Sender<PendingEvent>,
    namespace_spend: namespace_spend::NamespaceSpendState,
}

struct PendingEvent {
    regarding: k8s_openapi::api::core::v1::ObjectReference,
    task: String,
    type_: EventType,
    reason: String,
    note: String,
}

impl TermContext {
    /// Whether this term dispatched `attempt` (or a later one) of the task recently.
    fn recently_dispatched(&self, uid: &str, attempt: i32) -> bool {
        self.dispatched.lock().is_ok_and(|d| {
            d.get(uid)
                .is_some_and(|(a, at)| *a >= attempt && at.elapsed() < STALE_CACHE_WAIT)
        })
    }

    /// Whether this term dispatched a newer attempt than the cached task shows.
    fn task_cache_is_behind(&self, id: &TaskIdentity, status: &AgentTaskStatus) -> bool {
        let Ok(mut dispatched) = self.dispatched.lock() else {
            return false;
        };
        match dispatched.get(&id.uid) {
            // The first attempt's status is written later on purpose: [`observe`] looks
            // for its Job instead.
            Some((attempt, at))
                if *attempt > 1
                    && status.attempt.unwrap_or(0) < *attempt
                    && at.elapsed() < STALE_CACHE_WAIT =>
            {
                true
            }
            Some((attempt, at))
                if status.attempt.unwrap_or(0) >= *attempt || at.elapsed() >= STALE_CACHE_WAIT =>
            {
                // Keep the entry while the Job cache may still lag; drop it once stale.
                if at.elapsed() >= STALE_CACHE_WAIT {
                    dispatched.remove(&id.uid);
                }
                false
            }
            _ => false,
        }
    }

    fn record_dispatch(&self, uid: &str, attempt: i32) {
        if let Ok(mut dispatched) = self.dispatched.lock() {
            dispatched.retain(|_, (_, at)| at.elapsed() < STALE_CACHE_WAIT);
            dispatched.insert(uid.to_string(), (attempt, Instant::now()));
        }
    }
}

fn kube_error(
    action: impl Into<String>,
    id: &TaskIdentity,
) -> impl FnOnce(kube::Error) -> ReconcileError {
    let action = action.into();
    let task = id.key();
    move |source| ReconcileError::Kube {
        action,
        task,
        source,
    }
}

/// The task that controls `job`, from its owner references.
fn owning_task(job: &CachedJob) -> Option<ObjectRef<AgentTask>> {
    let owner = controller_of::<AgentTask>(&job.metadata)?;
    Some(ObjectRef::new(&owner.name).within(job.metadata.namespace.as_deref()?))
}

fn owned_by(job: &Job, uid: &str) -> bool {
    job.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

/// What a reconcile saw.
enum Seen {
    /// The caches do not show this term's own latest dispatch yet: look again shortly.
    CacheBehind,
    /// The current attempt's Job (`None`: none, or none that matters now).
    Attempt(Option<Box<AttemptObservation>>),
}

/// Observe: the current attempt's Job from the Job cache (a live read only when the cache
/// does not have it), and, for a finished Job, how its agent ended.
async fn observe(
    task: &AgentTask,
    id: &TaskIdentity,
    ctx: &TermContext,
) -> Result<Seen, ReconcileError> {
    let status = task.status.clone().unwrap_or_default();
    if ctx.task_cache_is_behind(id, &status) {
        return Ok(Seen::CacheBehind);
    }
    let attempt = status.attempt.unwrap_or(0);
    let finished = status.phase.is_some_and(TaskPhase::is_finished);
    // While a retry waits out its backoff, the failed attempt's Job no longer matters.
    if finished || status.next_attempt_time.is_some() {
        return Ok(Seen::Attempt(None));
    }
    let c = &ctx.controller;
    // Before its status is written, the first attempt may already have its Job (the status
    // waits for the pod): the cache says whether it does; create-or-adopt covers a lag.
    let unrecorded = attempt == 0;
    let attempt = attempt.max(1);
    let job_name = id.job_name(attempt);
    let cached = c
        .jobs
        .store()
        .get(&ObjectRef::new(&job_name).within(&id.namespace));
    let job = match cached {
        Some(job) => Some(Arc::new(job.to_job())),
        None if ctx.recently_dispatched(&id.uid, attempt) => return Ok(Seen::CacheBehind),
        None if unrecorded => None,
        None => {
            // Not cached: make sure before concluding it was deleted.
            let jobs: Api<Job> = Api::namespaced(c.client.clone(), &id.namespace);
            jobs.get_opt(&job_name)
                .await
                .map_err(kube_error(format!("reading Job {job_name}"), id))?
                .map(Arc::new)
        }
    };
    let Some(job) = job else {
        return Ok(Seen::Attempt(None));
    };
    if !owned_by(&job, &id.uid) {
        return Err(ReconcileError::ForeignJob {
            job: job_name,
            task: id.key(),
        });
    }
    // A Job created suspended behind its NetworkPolicy and resumed by this term moments ago:
    // the cache may still show it suspended; deciding on that would resume it again.
    if job.spec.as_ref().and_then(|s| s.suspend) == Some(true)
        && !task.spec.suspend
        && ctx.recently_dispatched(&id.uid, attempt)
    {
        return Ok(Seen::CacheBehind);
    }
    let state = observe::attempt_state(&job);
    let termination = match state {
        observe::AttemptState::Succeeded | observe::AttemptState::Failed(_) => {
            let pods: Api<Pod> = Api::namespaced(c.client.clone(), &id.namespace);
            let list = pods
                .list(
                    &ListParams::default()
                        .labels(&format!("batch.kubernetes.io/job-name={job_name}")),
                )
                .await
                .map_err(kube_error(format!("listing pods of Job {job_name}"), id))?;
            observe::termination(&list.items)
        }
        _ => None,
    };
    Ok(Seen::Attempt(Some(Box::new(AttemptObservation {
        job_name,
        created: job.metadata.creation_timestamp.as_ref().map(|t| t.0),
        state,
        termination,
    }))))
}

async fn reconcile(
    task: Arc<AgentTask>,
    ctx: Arc<TermContext>,
) -> Result<RequeueAction, ReconcileError> {
    failpoint::hit("task-controller.reconcile");
    let c = &ctx.controller;
    if task.metadata.deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove the Jobs and pods.
        return Ok(RequeueAction::await_change());
    }
    let id = TaskIdentity::of(&task);
    let now = Timestamp::now();
    let attempt = match observe(&task, &id, &ctx).await? {
        Seen::CacheBehind => return Ok(RequeueAction::requeue(Duration::from_millis(300))),
        Seen::Attempt(attempt) => attempt,
    };
    let unrecorded_first =
        attempt.is_some() && task.status.as_ref().and_then(|s| s.attempt).unwrap_or(0) == 0;
    // Only a task that wants a new attempt reads its namespace's budget.
    let namespace_hold = if !unrecorded_first && c.queue.wants_slot(&task, now) {
        ctx.namespace_hold(&id).await
    } else {
        None
    };
    let admitted = if unrecorded_first {
        // Its Job exists: the task holds a slot until its status shows it.
        c.queue.hold(&task);
        false
    } else if namespace_hold.is_some() {
        // Out of the line (a slot handed to it would only come back): its timer, or a
        // change of the namespace's record, wakes it.
        c.queue.release(&task);
        false
    } else {
        c.queue.wants_slot(&task, now) && c.queue.try_admit(&task)
    };
    c.metrics.set_queued(c.queue.figures().waiting);
    let claimed = c.claims.is_claimed(&id.uid);
    let plan = decide::decide(
        &task,
        &Observation {
            attempt: attempt.map(|a| *a),
            admitted,
            claimed,
            previous_run: c.queue.previous_run(&task),
            namespace_hold,
            now,
        },
        &ctx.retry,
    );
    let result = act(&task, &id, &plan, &ctx).await;
    if admitted
        && !plan
            .actions
            .iter()
            .any(|a| matches!(a, Action::CreateJob { .. }))
    {
        c.queue.release(&task);
    }
    result
}

/// Act: create or adopt the Job, (un)suspend it, write the owned status if it changed, then
/// queue the Events (published off the critical path, after the status they describe).
async fn act(
    task: &AgentTask,
    id: &TaskIdentity,
    plan: &Plan,
    ctx: &TermContext,
) -> Result<RequeueAction, ReconcileError> {
    let c = &ctx.controller;
    let current = task.status.clone().unwrap_or_default();
    // The Job is built from the status the plan writes: what the task has spent so far.
    let planned = plan
        .actions
        .iter()
        .any(|a| matches!(a, Action::CreateJob { .. }))
        .then(|| {
            let mut planned = task.clone();
            planned.status = Some(plan.status.clone());
            planned
        });
    for action in &plan.actions {
        match action {
            Action::CreateJob {
                attempt,
                branch,
                suspend,
                network,
            } => {
                let job_task = planned.as_ref().unwrap_or(task);
                if let Err(err) =
                    create_or_adopt_job(job_task, id, *attempt, branch, *suspend, network, ctx)
                        .await
                {
                    c.queue.release(task);
                    if err.is_permanent() {
                        record_dispatch_failure(task, id, &current, &err, ctx).await;
                    }
                    return Err(err);
                }
                ctx.record_dispatch(&id.uid, *attempt);
            }
            Action::SuspendJob { name, suspend } => {
                if !suspend {
                    ensure_network_policy_of_cached_job(task, id, name, ctx).await?;
                }
                let jobs: Api<Job> = Api::namespaced(c.client.clone(), &id.namespace);
                let patch = serde_json::json!({ "spec": { "suspend": suspend } });
                jobs.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(kube_error(
                        format!("setting suspend={suspend} on Job {name}"),
                        id,
                    ))?;
            }
            Action::Event { .. } => {}
        }
    }
    if plan.defer_status.is_none() && owned_status(&plan.status) != owned_status(&current) {
        let api: Api<AgentTask> = Api::namespaced(c.client.clone(), &id.namespace);
        match write_owned_status(&api, task, &plan.status).await {
            Ok(()) => {
                // Counted once the spend is in status: a write that fails is decided again
                // (and counted then), never twice.
                if !plan.spent.is_empty() {
                    c.metrics.count_spend(&budget::source_of(task), &plan.spent);
                }
                if !plan.blocked.is_empty() {
                    c.metrics
                        .count_egress_blocked(&budget::source_of(task), &plan.blocked);
                }
                if plan
                    .status
                    .conditions
                    .iter()
                    .any(|c| c.type_ == decide::condition::CLAIMED)
                {
                    c.claims.forget(&id.uid);
                }
            }
            // Decided on a stale copy of the task: decide again on the fresh one.
            Err(kube::Error::Api(status)) if status.code == 409 => {
                debug!(task = %id.key(), "status changed meanwhile; reconciling again");
                return Ok(RequeueAction::requeue(Duration::from_millis(200)));
            }
            Err(source) => {
                return Err(ReconcileError::Kube {
                    action: "writing status".into(),
                    task: id.key(),
                    source,
                });
            }
        }
    }
    for action in &plan.actions {
        if let Action::Event {
            type_,
            reason,
            note,
        } = action
        {
            let event = PendingEvent {
                regarding: task.object_ref(&()),
                task: id.key(),
                type_: *type_,
                reason: reason.clone(),
                note: note.clone(),
            };
            if ctx.events.try_send(event).is_err() {
                c.metrics.event_failed();
                warn!(task = %id.key(), reason = %reason, "event backlog full; event dropped");
            }
        }
    }
    // The spend the status shows now (as written, or unchanged), counted in the namespace's
    // budget once; a count lost to a crash after the status write is made up here.
    let shown = if plan.defer_status.is_none() {
        &plan.status
    } else {
        &current
    };
    ctx.sync_namespace_spend(id, shown).await?;
    Ok(match plan.requeue_after {
        Some(after) => RequeueAction::requeue(after),
        None => RequeueAction::await_change(),
    })
}

async fn create_or_adopt_job(
    task: &AgentTask,
    id: &TaskIdentity,
    attempt: i32,
    branch: &str,
    suspend: bool,
    network: &crate::egress::Network,
    ctx: &TermContext,
) -> Result<(), ReconcileError> {
    let c = &ctx.controller;
    let jobs: Api<Job> = Api::namespaced(c.client.clone(), &id.namespace);
    if let Some(prompt) = job_builder::prompt_config_map(task) {
        ensure_prompt_config_map(&c.client, id, &prompt).await?;
    }
    // With an allow-list the Job is created suspended, so that no pod of it exists before
    // its NetworkPolicy (which it owns), and resumed once the policy is there.
    let guarded = network.rules().is_some();
    let job = job_builder::build_job_at(
        task,
        attempt,
        branch,
        &c.agent,
        suspend || guarded,
        Timestamp::now(),
        network,
    );
    let name = id.job_name(attempt);
    failpoint::hit("task-controller.before-create-job");
    match jobs.create(&PostParams::default(), &job).await {
        Ok(created) => {
            if let Some(rules) = network.rules() {
                ensure_network_policy(task, id, &created, rules, ctx).await?;
                if !suspend {
                    let patch = serde_json::json!({ "spec": { "suspend": false } });
                    jobs.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map_err(kube_error(format!("resuming Job {name}"), id))?;
                }
            }
            c.metrics.job_created();
            if attempt == 1
                && let Some(created) = task.creation_timestamp()
                && let Ok(latency) = Duration::try_from(created.0.duration_until(Timestamp::now()))
            {
                c.metrics.observe_dispatch_latency(latency);
            }
            failpoint::hit("task-controller.after-create-job");
            info!(task = %id.key(), job = %name, attempt, "created Job");
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.reason == "AlreadyExists" => {
            // Deterministic name: it exists because this attempt was dispatched before.
            let existing = jobs
                .get(&name)
                .await
                .map_err(kube_error(format!("reading existing Job {name}"), id))?;
            if existing.metadata.deletion_timestamp.is_some() {
                // Going away (TTL or someone's delete): wait for it, then create it anew.
                return Err(ReconcileError::Kube {
                    action: format!(
                        "creating Job {name} (an older Job of that name is being deleted)"
                    ),
                    task: id.key(),
                    source: kube::Error::Api(status),
                });
            }
            if owned_by(&existing, &id.uid) {
                if let Some(rules) = network.rules() {
                    // Its policy may not have been made yet; a suspended Job is resumed by
                    // the next decision, which makes sure of the policy first.
                    ensure_network_policy(task, id, &existing, rules, ctx).await?;
                }
                info!(task = %id.key(), job = %name, attempt, "adopted existing Job");
                Ok(())
            } else {
                Err(ReconcileError::ForeignJob {
                    job: name,
                    task: id.key(),
                })
            }
        }
        Err(source) => Err(ReconcileError::Kube {
            action: format!("creating Job {name}"),
            task: id.key(),
            source,
        }),
    }
}

/// Creates the NetworkPolicy of `job`'s pod (named after it, owned by it) unless it exists.
async fn ensure_network_policy(
    task: &AgentTask,
    id: &TaskIdentity,
    job: &Job,
    rules: &[recac_api::egress::EgressRule],
    ctx: &TermContext,
) -> Result<(), ReconcileError> {
    let c = &ctx.controller;
    let name = job.name_any();
    let Some(owner) = job.controller_owner_ref(&()) else {
        return Ok(());
    };
    let labels = job
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    if labels.is_empty() {
        return Err(ReconcileError::Egress {
            task: id.key(),
            message: format!("Job {name} has no pod labels to select its pod by"),
        });
    }
    let policy = crate::egress::network_policy(task, &name, &labels, owner, rules, &c.agent);
    let api: Api<NetworkPolicy> = Api::namespaced(c.client.clone(), &id.namespace);
    match api.create(&PostParams::default(), &policy).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.reason == "AlreadyExists" => Ok(()),
        Err(source) => Err(ReconcileError::Kube {
            action: format!("creating NetworkPolicy {name}"),
            task: id.key(),
            source,
        }),
    }
}

/// [`ensure_network_policy`] before a suspended Job is resumed, for a task with an
/// allow-list (the Job as the API has it: the cache keeps no pod template).
async fn ensure_network_policy_of_cached_job(
    task: &AgentTask,
    id: &TaskIdentity,
    name: &str,
    ctx: &TermContext,
) -> Result<(), ReconcileError> {
    let c = &ctx.controller;
    let jobs: Api<Job> = Api::namespaced(c.client.clone(), &id.namespace);
    let job = jobs
        .get(name)
        .await
        .map_err(kube_error(format!("reading Job {name}"), id))?;
    // The Job's own list (what its pod is given), not one resolved again: the configuration
    // or the task may have changed since it was built.
    let Some(annotation) = job
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(recac_api::egress::ALLOW_ANNOTATION))
    else {
        return Ok(());
    };
    let rules = recac_api::egress::parse_allow_annotation(annotation).map_err(|err| {
        ReconcileError::Egress {
            task: id.key(),
            message: format!("Job {name}'s allow-list annotation: {err}"),
        }
    })?;
    ensure_network_policy(task, id, &job, &rules, ctx).await
}

/// Creates the ConfigMap that carries a long prompt, or brings an existing one up to date
/// (the prompt may have changed since an earlier attempt).
async fn ensure_prompt_config_map(
    client: &Client,
    id: &TaskIdentity,
    desired: &ConfigMap,
) -> Result<(), ReconcileError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &id.namespace);
    let name = desired.name_any();
    match api.create(&PostParams::default(), desired).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.reason == "AlreadyExists" => {
            let existing = api
                .get(&name)
                .await
                .map_err(kube_error(format!("reading prompt ConfigMap {name}"), id))?;
            if existing.data == desired.data {
                return Ok(());
            }
            let mut replacement = desired.clone();
            replacement.metadata.resource_version = existing.resource_version();
            api.replace(&name, &PostParams::default(), &replacement)
                .await
                .map_err(kube_error(format!("updating prompt ConfigMap {name}"), id))?;
            Ok(())
        }
        Err(source) => Err(ReconcileError::Kube {
            action: format!("creating prompt ConfigMap {name}"),
            task: id.key(),
            source,
        }),
    }
}

/// Makes a dispatch that keeps failing visible in status, and lets the queue pass the task.
async fn record_dispatch_failure(
    task: &AgentTask,
    id: &TaskIdentity,
    current: &AgentTaskStatus,
    error: &ReconcileError,
    ctx: &TermContext,
) {
    let status = decide::dispatch_failed(task, &error.to_string(), Timestamp::now());
    if owned_status(&status) == owned_status(current) {
        return;
    }
    let api: Api<AgentTask> = Api::namespaced(ctx.controller.client.clone(), &id.namespace);
    if let Err(err) = write_owned_status(&api, task, &status).await {
        warn!(task = %id.key(), error = %err, "cannot record the dispatch failure");
    }
}

/// Logs a failed reconcile; the runner retries it after the task's backoff.
fn error_policy(
    task: Arc<AgentTask>,
    error: &ReconcileError,
    _ctx: Arc<TermContext>,
) -> RequeueAction {
    warn!(task = %TaskIdentity::of(&task).key(), error = %error, "reconcile failed; retrying after a backoff");
    RequeueAction::await_change()
}

/// Publishes a term's Events, a few at a time, until the term stops.
async fn publish_events(
    publisher: EventPublisher,
    events: mpsc::Receiver<PendingEvent>,
    metrics: TaskMetrics,
    term: Term,
) {
    let stream =
        futures::stream::unfold(
            events,
            |mut rx| async move { rx.recv().await.map(|e| (e, rx)) },
        );
    let publish = stream
        .map(|event| {
            let publisher = publisher.clone();
            let metrics = metrics.clone();
            async move {
                let type_ = match event.type_ {
                    EventType::Normal => KubeEventType::Normal,
                    EventType::Warning => KubeEventType::Warning,
                };
                if let Err(err) = publisher
                    .publish(&event.regarding, type_, &event.reason, &event.note)
                    .await
                {
                    // Events are best effort: losing one must not fail anything.
                    metrics.event_failed();
                    warn!(task = %event.task, error = %err, "cannot publish event");
                }
            }
        })
        .buffer_unordered(8)
        .for_each(|()| async {});
    tokio::select! {
        _ = publish => {}
        _ = term.stopped() => {}
    }
}
