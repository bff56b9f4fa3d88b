//! The schedule controller as a component of the runtime.
//!
//! Each reconcile reads the schedule and the AgentTasks it owns from the shared caches,
//! asks [`crate::decide`] what to do at the clock's "now", then acts: delete the tasks a
//! `Replace` policy replaces, create the due run's task (an `AlreadyExists` of a task this
//! schedule owns is "created before": adopted), write status under its own field manager
//! (only when it changed, with a resourceVersion precondition), delete finished tasks beyond
//! the history limits and publish the decision's Events. It looks again at the next due
//! time, whenever a schedule or one of its tasks changes, and whenever a hand-set clock
//! jumps.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};
use recac_api::{
    AgentTask, AgentTaskSchedule, AgentTaskScheduleStatus, TaskPhase, schedule_labels,
};
use recac_runtime::cache::reference_to;
use recac_runtime::cache::{CacheSpec, strip_metadata};
use recac_runtime::events::{EventPublisher, EventType};
use recac_runtime::kinds::{controller_of, scoped_apis};
use recac_runtime::runner::{self, Action, Backoff, ReconcileMetrics, RunnerConfig};
use recac_runtime::store::Store;
use recac_runtime::{Cache, Component, ComponentError, Term, status};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::clock::Clock;
use crate::decide::{self, CondState, DeleteWhy, Plan, Run, RunState, ScheduleFacts};
use crate::metrics::ScheduleMetrics;

/// The field manager of this controller's status writes.
pub const FIELD_MANAGER: &str = "recac-schedule-controller";

/// How often a missing AgentTaskSchedule CRD is looked for again.
const CRD_POLL: Duration = Duration::from_secs(10);
/// The longest wait before a schedule is looked at again without a change.
const MAX_REQUEUE: Duration = Duration::from_secs(3600);
/// Events remembered per term (to tell each once); forgotten past this many.
const TOLD_LIMIT: usize = 10_000;

/// Errors of one reconcile, naming the schedule and what failed.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("AgentTaskSchedule {schedule}: {action}: {source}")]
    Kube {
        schedule: String,
        action: String,
        source: kube::Error,
    },
}

impl runner::ErrorReason for ScheduleError {
    fn reason(&self) -> &'static str {
        match self {
            ScheduleError::Kube { .. } => "KubernetesError",
        }
    }
}

/// The shared cache of AgentTaskSchedules. Its watch starts once the CRD is served: an
/// operator installed without the CRD runs every other controller, says once that schedules
/// are off, and starts them when the CRD appears.
#[derive(Clone)]
pub struct ScheduleCache {
    cache: Cache<AgentTaskSchedule>,
    /// `None` until discovery answered; then whether the CRD is served.
    served: watch::Receiver<Option<bool>>,
}

impl ScheduleCache {
    /// The cache, and the future that fills it (run it for the life of the process).
    pub fn new(
        client: &Client,
        namespaces: &[String],
    ) -> (
        Self,
        impl Future<Output = Result<(), String>> + Send + 'static,
    ) {
        let (cache, driver) = Cache::new(CacheSpec {
            name: "agenttaskschedules".into(),
            apis: scoped_apis(client, namespaces),
            namespaces: namespaces.to_vec(),
            watch: recac_runtime::kinds::list_then_watch(),
            strip: strip_schedule,
            hooks: Vec::new(),
        });
        let (served_tx, served) = watch::channel(None);
        let client = client.clone();
        let driver = async move {
            let mut said = false;
            loop {
                match crd_served(&client).await {
                    Ok(true) => break,
                    Ok(false) => {
                        if !said {
                            warn!(
                                "the AgentTaskSchedule CRD is not installed: schedules are off until it is (kubectl apply -f crds/agenttaskschedule.yaml)"
                            );
                            said = true;
                        }
                        served_tx.send_replace(Some(false));
                    }
                    Err(err) => {
                        debug!(error = %err, "cannot look up the AgentTaskSchedule CRD; retrying")
                    }
                }
                tokio::time::sleep(CRD_POLL).await;
            }
            if said {
                info!("the AgentTaskSchedule CRD is installed: schedules start");
            }
            served_tx.send_replace(Some(true));
            driver.await
        };
        (Self { cache, served }, driver)
    }

    pub fn name(&self) -> &str {
        self.cache.name()
    }

    pub fn cache(&self) -> &Cache<AgentTaskSchedule> {
        &self.cache
    }

    /// For `/readyz`: listed once, or known to have nothing to list (no CRD).
    pub fn readiness_probe(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let synced = self.cache.readiness_probe();
        let served = self.served.clone();
        move || synced() || *served.borrow() == Some(false)
    }
}

fn strip_schedule(schedule: &mut AgentTaskSchedule) {
    strip_metadata(&mut schedule.metadata);
}

async fn crd_served(client: &Client) -> Result<bool, kube::Error> {
    let version = AgentTaskSchedule::api_version(&());
    match client.list_api_group_resources(&version).await {
        Ok(list) => Ok(list
            .resources
            .iter()
            .any(|r| r.name == AgentTaskSchedule::plural(&()))),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(err) => Err(err),
    }
}

/// What the schedule controller is built from.
pub struct ScheduleParts {
    pub client: Client,
    pub schedules: ScheduleCache,
    /// The operator's shared AgentTask cache.
    pub tasks: Cache<AgentTask>,
    pub metrics: ScheduleMetrics,
    /// The process's reconcile metrics (shared by every controller).
    pub reconciles: ReconcileMetrics,
    /// Names this replica in Events.
    pub instance: String,
    /// Where "now" comes from.
    pub clock: Arc<dyn Clock>,
}

/// The schedule controller.
pub struct ScheduleController {
    client: Client,
    schedules: ScheduleCache,
    tasks: Cache<AgentTask>,
    metrics: ScheduleMetrics,
    reconciles: ReconcileMetrics,
    events: EventPublisher,
    clock: Arc<dyn Clock>,
}

impl ScheduleController {
    pub fn new(parts: ScheduleParts) -> Self {
        Self {
            events: EventPublisher::new(parts.client.clone(), "recac-schedule", parts.instance),
            client: parts.client,
            schedules: parts.schedules,
            tasks: parts.tasks,
            metrics: parts.metrics,
            reconciles: parts.reconciles,
            clock: parts.clock,
        }
    }

    async fn run_term(self: Arc<Self>, term: Term) -> Result<(), ComponentError> {
        // No decision on a cold cache (it stays cold while the CRD is missing).
        tokio::select! {
            _ = term.stopped() => return Ok(()),
            _ = self.schedules.cache.wait_ready() => {}
        }
        info!(term = term.number, "schedule controller term starts");
        let ctx = Arc::new(TermContext {
            controller: self.clone(),
            told: Mutex::new(HashSet::new()),
        });
        let store = self.schedules.cache.store();
        let owners = store.clone();
        let task_triggers = self
            .tasks
            .triggers()
            .filter_map(move |task| futures::future::ready(owner_of(&owners, &task)));
        let triggers = futures::stream::select(self.schedules.cache.triggers(), task_triggers)
            .map(|schedule| reference_to(schedule.as_ref()));
        // A jump of the clock makes every schedule due for a fresh look.
        let everything = store.clone();
        let jumps = match self.clock.jumps() {
            Some(jumps) => futures::stream::unfold(jumps, |mut jumps| async move {
                jumps.changed().await.ok()?;
                Some(((), jumps))
            })
            .boxed(),
            None => futures::stream::pending().boxed(),
        }
        .flat_map(move |()| futures::stream::iter(everything.refs()));
        runner::run(
            store,
            futures::stream::select(triggers, jumps),
            RunnerConfig {
                controller: "schedule-controller",
                concurrency: 4,
                debounce: Duration::from_millis(50),
                backoff: Backoff {
                    first: Duration::from_secs(1),
                    max: Duration::from_secs(300),
                },
                metrics: self.reconciles.clone(),
            },
            term.stop_signal(),
            reconcile,
            error_policy,
            ctx,
        )
        .await;
        if term.is_stopped() {
            info!(term = term.number, "schedule controller term ended");
            Ok(())
        } else {
            Err(ComponentError::new(
                "its controller loop ended: a cache's change stream closed",
            ))
        }
    }
}

impl Component for ScheduleController {
    fn name(&self) -> &str {
        "schedule-controller"
    }

    fn run(self: Arc<Self>, term: Term) -> BoxFuture<'static, Result<(), ComponentError>> {
        Box::pin(self.run_term(term))
    }
}

/// One term's state.
struct TermContext {
    controller: Arc<ScheduleController>,
    /// Events already published this term (`<uid>/<key>`).
    told: Mutex<HashSet<String>>,
}

impl TermContext {
    /// Whether `key` of `uid` is new this term (and remembers it).
    fn first_time(&self, uid: &str, key: &str) -> bool {
        let Ok(mut told) = self.told.lock() else {
            return true;
        };
        if told.len() >= TOLD_LIMIT {
            told.clear();
        }
        told.insert(format!("{uid}/{key}"))
    }
}

/// The schedule that controls `task`, when it is in the cache.
fn owner_of(store: &Store<AgentTaskSchedule>, task: &AgentTask) -> Option<Arc<AgentTaskSchedule>> {
    let owner = controller_of::<AgentTaskSchedule>(&task.metadata)?;
    let namespace = task.namespace()?;
    let schedule = store.get(&ObjectRef::new(&owner.name).within(&namespace))?;
    (schedule.uid().as_deref() == Some(owner.uid.as_str())).then_some(schedule)
}

fn owned_by(task: &AgentTask, uid: &str) -> bool {
    task.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

fn run_of(task: &AgentTask) -> Run {
    let status = task.status.as_ref();
    let phase = status.and_then(|s| s.phase);
    let state = match phase {
        Some(TaskPhase::Succeeded) => RunState::Succeeded,
        Some(TaskPhase::Failed) => RunState::Failed,
        // A planning run whose plan waits for approval: its agent succeeded (the plan is
        // written) and no Job runs for it until a person decides, which may take days. As
        // Active it would hold back every later run (Forbid) or be deleted by one (Replace).
        Some(TaskPhase::AwaitingApproval) => RunState::Succeeded,
        _ => RunState::Active,
    };
    // Undecided, it has no completion time: when its plan was written stands in, so the
    // history limit counts it in its turn instead of deleting it first, as the oldest.
    let plan_written = || {
        status?
            .conditions
            .iter()
            .find(|c| c.type_ == recac_api::conditions::PLAN_READY && c.status == "True")
            .map(|c| c.last_transition_time.0)
    };
    let finished = status
        .and_then(|s| s.completion_time.as_ref())
        .map(|t| t.0)
        .or_else(|| {
            (phase == Some(TaskPhase::AwaitingApproval))
                .then(plan_written)
                .flatten()
        });
    Run {
        name: task.name_any(),
        state,
        scheduled_at: task
            .annotations()
            .get(schedule_labels::SCHEDULED_AT)
            .and_then(|t| t.parse().ok()),
        created: task.creation_timestamp().map(|t| t.0),
        finished,
    }
}

fn key(schedule: &AgentTaskSchedule) -> String {
    format!(
        "{}/{}",
        schedule.namespace().unwrap_or_default(),
        schedule.name_any()
    )
}

/// The AgentTask of a run: the template, the schedule's label and due-time annotation, and
/// the schedule as its controlling owner.
pub fn build_task(schedule: &AgentTaskSchedule, name: &str, due: Timestamp) -> AgentTask {
    let template = &schedule.spec.task_template;
    let metadata = template.metadata.clone().unwrap_or_default();
    let mut labels = metadata.labels;
    labels.insert(schedule_labels::SCHEDULE.into(), schedule.name_any());
    let mut annotations = metadata.annotations;
    annotations.insert(schedule_labels::SCHEDULED_AT.into(), due.to_string());
    let mut task = AgentTask::new(name, template.spec.clone());
    task.metadata.namespace = schedule.namespace();
    task.metadata.labels = Some(labels);
    task.metadata.annotations = Some(annotations);
    task.metadata.owner_references = schedule.controller_owner_ref(&()).map(|o| vec![o]);
    task
}

fn task_reference(namespace: &str, name: &str, uid: Option<String>) -> ObjectReference {
    ObjectReference {
        api_version: Some(AgentTask::api_version(&()).into_owned()),
        kind: Some(AgentTask::kind(&()).into_owned()),
        name: Some(name.to_string()),
        namespace: Some(namespace.to_string()),
        uid,
        ..Default::default()
    }
}

/// Sets condition `type_` to `state`, keeping its transition time while its status holds.
fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    state: &CondState,
    now: Timestamp,
    generation: Option<i64>,
) {
    let status = if state.status { "True" } else { "False" };
    let since = conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    let condition = Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: state.reason.to_string(),
        message: state.message.clone(),
        last_transition_time: since,
        observed_generation: generation,
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => *existing = condition,
        None => conditions.push(condition),
    }
}

/// The status `plan` leads to, from the current one.
fn status_of(
    schedule: &AgentTaskSchedule,
    plan: &Plan,
    uids: &BTreeMap<String, Option<String>>,
    now: Timestamp,
) -> AgentTaskScheduleStatus {
    let current = schedule.status.clone().unwrap_or_default();
    let namespace = schedule.namespace().unwrap_or_default();
    let generation = schedule.metadata.generation;
    let mut conditions = current.conditions.clone();
    set_condition(&mut conditions, "Ready", &plan.ready, now, generation);
    if let Some(skipped) = &plan.skipped {
        set_condition(&mut conditions, "Skipped", skipped, now, generation);
    }
    let active: Vec<ObjectReference> = plan
        .active
        .iter()
        .map(|name| task_reference(&namespace, name, uids.get(name).cloned().flatten()))
        .collect();
    AgentTaskScheduleStatus {
        last_schedule_time: plan.last_schedule_time.map(Time),
        last_successful_time: plan.last_successful_time.map(Time),
        next_schedule_time: plan.next_schedule_time.map(Time),
        active_count: Some(active.len() as i32),
        active,
        observed_generation: generation,
        conditions,
    }
}

async fn reconcile(
    schedule: Arc<AgentTaskSchedule>,
    ctx: Arc<TermContext>,
) -> Result<Action, ScheduleError> {
    let c = &ctx.controller;
    let now = c.clock.now();
    let namespace = schedule.namespace().unwrap_or_default();
    let name = schedule.name_any();
    let uid = schedule.uid().unwrap_or_default();
    let kube_error = |action: String| {
        let schedule = key(&schedule);
        move |source| ScheduleError::Kube {
            schedule,
            action,
            source,
        }
    };

    let owned: Vec<Arc<AgentTask>> = c
        .tasks
        .store()
        .state()
        .into_iter()
        .filter(|t| t.namespace().as_deref() == Some(namespace.as_str()) && owned_by(t, &uid))
        .collect();
    let runs: Vec<Run> = owned.iter().map(|t| run_of(t)).collect();
    let mut uids: BTreeMap<String, Option<String>> =
        owned.iter().map(|t| (t.name_any(), t.uid())).collect();
    let status = schedule.status.as_ref();
    let facts = ScheduleFacts {
        name: &name,
        spec: &schedule.spec,
        created: schedule.creation_timestamp().map(|t| t.0).unwrap_or(now),
        last_schedule_time: status
            .and_then(|s| s.last_schedule_time.as_ref())
            .map(|t| t.0),
        last_successful_time: status
            .and_then(|s| s.last_successful_time.as_ref())
            .map(|t| t.0),
    };
    let mut plan = decide::decide(&facts, &runs, now);
    let tasks: Api<AgentTask> = Api::namespaced(c.client.clone(), &namespace);

    // 1. What a Replace policy replaces goes first.
    for deletion in plan.delete.iter().filter(|d| d.why == DeleteWhy::Replaced) {
        delete_task(&tasks, &deletion.name, deletion.why, c)
            .await
            .map_err(kube_error(format!("deleting AgentTask {}", deletion.name)))?;
    }

    // 2. The due run.
    if let Some(adopted) = &plan.adopted
        && ctx.first_time(&uid, &format!("adopted/{}", adopted.name))
    {
        c.metrics.adopted();
        info!(schedule = %key(&schedule), task = %adopted.name, "run created before: adopted");
    }
    if let Some(new) = plan.create.clone() {
        let task = build_task(&schedule, &new.name, new.due);
        match tasks.create(&PostParams::default(), &task).await {
            Ok(created) => {
                c.metrics.created();
                info!(schedule = %key(&schedule), task = %new.name, due = %new.due, "run created");
                uids.insert(new.name.clone(), created.uid());
                plan.notes.push(decide::Note {
                    warning: false,
                    reason: "Created",
                    key: format!("Created/{}", new.name),
                    message: format!(
                        "created AgentTask {} for the run due at {}",
                        new.name, new.due
                    ),
                });
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let existing = tasks
                    .get(&new.name)
                    .await
                    .map_err(kube_error(format!("reading AgentTask {}", new.name)))?;
                if owned_by(&existing, &uid) {
                    c.metrics.adopted();
                    debug!(schedule = %key(&schedule), task = %new.name, "run created before: adopted");
                    uids.insert(new.name.clone(), existing.uid());
                } else {
                    // Someone else's task holds the name: this run cannot happen.
                    c.metrics.skipped("NameTaken");
                    plan.active.retain(|n| n != &new.name);
                    let message = format!(
                        "the run due at {} was not created: an AgentTask named {} exists and is not owned by this schedule",
                        new.due, new.name
                    );
                    plan.notes.push(decide::Note {
                        warning: true,
                        reason: "NameTaken",
                        key: format!("NameTaken/{}", new.name),
                        message: message.clone(),
                    });
                    plan.skipped = Some(CondState {
                        status: true,
                        reason: "NameTaken",
                        message,
                    });
                }
            }
            Err(source) => {
                return Err(kube_error(format!("creating AgentTask {}", new.name))(
                    source,
                ));
            }
        }
    }
    if let Some(skipped) = plan.skipped.as_ref().filter(|s| s.status)
        && ctx.first_time(&uid, &format!("metric/{}", skipped.message))
    {
        c.metrics.skipped(skipped.reason);
    }

    // 3. Status, when it changed.
    let wanted = status_of(&schedule, &plan, &uids, now);
    if schedule.status.as_ref() != Some(&wanted) {
        let api: Api<AgentTaskSchedule> = Api::namespaced(c.client.clone(), &namespace);
        match status::apply_status(
            &api,
            &name,
            schedule.resource_version().as_deref(),
            FIELD_MANAGER,
            &wanted,
        )
        .await
        {
            Ok(()) => {}
            // Decided on a stale copy: decide again on the fresh one (a run created above is
            // adopted by its name).
            Err(kube::Error::Api(s)) if s.code == 409 => {
                return Ok(Action::requeue(Duration::from_millis(200)));
            }
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Action::await_change()),
            Err(source) => {
                return Err(kube_error("writing status".into())(source));
            }
        }
    }

    // 4. History.
    for deletion in plan.delete.iter().filter(|d| d.why != DeleteWhy::Replaced) {
        delete_task(&tasks, &deletion.name, deletion.why, c)
            .await
            .map_err(kube_error(format!("deleting AgentTask {}", deletion.name)))?;
        let limit = match deletion.why {
            DeleteWhy::SucceededHistory => format!(
                "successfulTasksHistoryLimit {}",
                schedule.spec.successful_tasks_history_limit
            ),
            _ => format!(
                "failedTasksHistoryLimit {}",
                schedule.spec.failed_tasks_history_limit
            ),
        };
        plan.notes.push(decide::Note {
            warning: false,
            reason: "Deleted",
            key: format!("Deleted/{}", deletion.name),
            message: format!(
                "deleted the finished AgentTask {} and its Jobs ({limit})",
                deletion.name
            ),
        });
    }

    // 5. Events.
    let reference = schedule.object_ref(&());
    for note in &plan.notes {
        if !ctx.first_time(&uid, &note.key) {
            continue;
        }
        let type_ = if note.warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        if note.warning {
            warn!(schedule = %key(&schedule), reason = note.reason, "{}", note.message);
        }
        if let Err(err) = c
            .events
            .publish(&reference, type_, note.reason, &note.message)
            .await
        {
            // Events are best effort.
            warn!(schedule = %key(&schedule), error = %err, "cannot publish event");
        }
    }

    Ok(match plan.requeue_at {
        Some(at) => {
            let wait = Duration::try_from(now.duration_until(at))
                .unwrap_or_default()
                .clamp(Duration::from_millis(50), MAX_REQUEUE);
            Action::requeue(wait)
        }
        None => Action::await_change(),
    })
}

async fn delete_task(
    tasks: &Api<AgentTask>,
    name: &str,
    why: DeleteWhy,
    c: &ScheduleController,
) -> Result<(), kube::Error> {
    match tasks.delete(name, &DeleteParams::background()).await {
        Ok(_) => {
            c.metrics.deleted(why.as_str());
            info!(task = %name, reason = why.as_str(), "task deleted");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(err) => Err(err),
    }
}

fn error_policy(
    schedule: Arc<AgentTaskSchedule>,
    error: &ScheduleError,
    ctx: Arc<TermContext>,
) -> Action {
    ctx.controller
        .metrics
        .error(runner::ErrorReason::reason(error));
    warn!(schedule = %key(&schedule), error = %error, "schedule reconcile failed; retrying after a backoff");
    Action::await_change()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> AgentTaskSchedule {
        serde_saphyr::from_str(
            r#"
apiVersion: recac.io/v1alpha1
kind: AgentTaskSchedule
metadata: {name: weekly-deps, namespace: agents, uid: s-1}
spec:
  schedule: "0 6 * * 1"
  taskTemplate:
    metadata:
      labels: {team: platform}
      annotations: {note: weekly}
    spec:
      prompt: bump the dependencies
      repository: {url: "https://git.example.com/o/r.git"}
"#,
        )
        .expect("schedule yaml")
    }

    #[test]
    fn a_run_task_carries_the_template_its_owner_and_due_time() {
        let schedule = schedule();
        let due: Timestamp = "2026-01-05T06:00:00Z".parse().expect("time");
        let name = decide::run_name("weekly-deps", due);
        let task = build_task(&schedule, &name, due);
        assert_eq!(task.name_any(), name);
        assert_eq!(task.namespace().as_deref(), Some("agents"));
        assert_eq!(task.labels()["team"], "platform");
        assert_eq!(task.labels()[schedule_labels::SCHEDULE], "weekly-deps");
        assert_eq!(task.annotations()["note"], "weekly");
        assert_eq!(
            task.annotations()[schedule_labels::SCHEDULED_AT],
            "2026-01-05T06:00:00Z"
        );
        assert!(owned_by(&task, "s-1"));
        assert_eq!(task.spec.prompt.as_deref(), Some("bump the dependencies"));
        let run = run_of(&task);
        assert_eq!(run.state, RunState::Active);
        assert_eq!(run.scheduled_at, Some(due));
    }

    #[test]
    fn a_run_whose_plan_waits_for_approval_is_finished_as_of_its_plan() {
        let schedule = schedule();
        let due: Timestamp = "2026-01-05T06:00:00Z".parse().expect("time");
        let written: Timestamp = "2026-01-05T06:10:00Z".parse().expect("time");
        let mut task = build_task(&schedule, &decide::run_name("weekly-deps", due), due);
        task.status = Some(recac_api::AgentTaskStatus {
            phase: Some(TaskPhase::AwaitingApproval),
            conditions: vec![Condition {
                type_: recac_api::conditions::PLAN_READY.into(),
                status: "True".into(),
                reason: "PlanWritten".into(),
                message: String::new(),
                last_transition_time: Time(written),
                observed_generation: None,
            }],
            ..Default::default()
        });
        let run = run_of(&task);
        assert_eq!(run.state, RunState::Succeeded);
        assert_eq!(run.finished, Some(written));

        // Once decided, its completion time counts.
        let approved: Timestamp = "2026-01-07T09:00:00Z".parse().expect("time");
        if let Some(status) = task.status.as_mut() {
            status.phase = Some(TaskPhase::Succeeded);
            status.completion_time = Some(Time(approved));
        }
        assert_eq!(run_of(&task).finished, Some(approved));
    }

    #[test]
    fn conditions_keep_their_transition_time_while_their_status_holds() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().expect("time");
        let t1: Timestamp = "2026-01-01T01:00:00Z".parse().expect("time");
        let mut conditions = Vec::new();
        let ready = |message: &str| CondState {
            status: true,
            reason: "Scheduled",
            message: message.into(),
        };
        set_condition(&mut conditions, "Ready", &ready("a"), t0, Some(1));
        set_condition(&mut conditions, "Ready", &ready("b"), t1, Some(1));
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].last_transition_time, Time(t0));
        assert_eq!(conditions[0].message, "b");
        let not_ready = CondState {
            status: false,
            reason: "Suspended",
            message: "s".into(),
        };
        set_condition(&mut conditions, "Ready", &not_ready, t1, Some(2));
        assert_eq!(conditions[0].last_transition_time, Time(t1));
    }
}
