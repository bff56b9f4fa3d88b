//! The feedback controller as a component of the runtime: for each task with a Jira ticket it
//! decides which reports are owed ([`crate::report`]), delivers each one (look for its
//! marker, post only when absent, then the outcome's transition and labels) and records it
//! in `status.feedback` under its own field manager.
//!
//! A deleted task is seen once more through the cache's change stream; its "cancelled"
//! report is delivered from that copy (there is no status left to record it in, so the
//! marker alone keeps it single).
//!
//! With `feedback.comments: live` (the default) the reports of a ticket's runs go into one
//! comment per ticket instead ([`crate::live_delivery`]); the outcomes' transitions and
//! labels, the backoff, the pending condition and the deletion queue are the same.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, LogParams};
use kube::{Client, Resource, ResourceExt};
use recac_api::AgentTask;
use recac_jira::{Flavor, JiraClient, JiraError};
use recac_runtime::cache::Notice;
use recac_runtime::events::{EventPublisher, EventType};
use recac_runtime::runner::{
    self, Action as Requeue, Backoff, ReconcileMetrics, RunnerConfig, WorkQueue,
};
use recac_runtime::{Cache, Component, ComponentError, Term, failpoint, status};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::comment::{has_marker, marker};
use crate::config::{CommentMode, FeedbackConfig};
use crate::live_delivery::{self, LiveState};
use crate::logtail::LogRedactor;
use crate::metrics::FeedbackMetrics;
use crate::observe;
use crate::plan::{self, TransitionStep};
use crate::render::{self, Facts, Log};
use crate::report::{self, Options, Report, ReportKind, jira_ticket};
pub use crate::status::condition;
use crate::status::{Owned, TicketUpdate};

/// The field manager of this controller's status writes.
pub const FIELD_MANAGER: &str = "recac-feedback-controller";

/// The agent container's name in every agent pod.
const AGENT_CONTAINER: &str = recac_api::agent_contract::CONTAINER_NAME;

/// The label the source controller puts on the tasks it makes: the source's name.
const SOURCE_LABEL: &str = "recac.io/source";

/// Most bytes of log read from the pod (the lines asked for are usually far fewer).
const LOG_READ_LIMIT: i64 = 1024 * 1024;

/// Errors of one delivery; each names the task and what failed.
#[derive(Debug, thiserror::Error)]
pub enum FeedbackError {
    #[error("reporting {report} of AgentTask {task} on {ticket}: {source}")]
    Jira {
        task: String,
        ticket: String,
        report: String,
        source: Box<JiraError>,
    },
    #[error("{action} for AgentTask {task}: {source}")]
    Kube {
        action: String,
        task: String,
        source: kube::Error,
    },
    #[error("the feedback controller's redaction patterns: {0}")]
    Redactor(#[from] recac_redact::Error),
}

impl runner::ErrorReason for FeedbackError {
    fn reason(&self) -> &'static str {
        FeedbackError::reason(self)
    }
}

impl FeedbackError {
    /// A label for metrics and the pending condition's reason.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            FeedbackError::Jira { source, .. } => match (source.as_ref(), source.status()) {
                (_, Some(429)) => "RateLimited",
                (JiraError::Api { .. } | JiraError::RetriesExhausted { .. }, Some(400..=499)) => {
                    "JiraRejected"
                }
                (JiraError::NoSuchTransition { .. } | JiraError::InvalidInput { .. }, _) => {
                    "JiraRejected"
                }
                _ => "JiraUnavailable",
            },
            FeedbackError::Kube { .. } => "KubernetesError",
            FeedbackError::Redactor(_) => "Config",
        }
    }

    /// How long Jira asked to be left alone, if it did.
    fn retry_after(&self) -> Option<Duration> {
        fn of(e: &JiraError) -> Option<Duration> {
            match e {
                JiraError::Api { retry_after, .. } => *retry_after,
                JiraError::RetriesExhausted { last, .. } => of(last),
                _ => None,
            }
        }
        match self {
            FeedbackError::Jira { source, .. } => of(source),
            _ => None,
        }
    }
}

/// The feedback controller's settings, checked: the configuration and the Jira client.
#[derive(Clone, Debug)]
pub struct FeedbackSetup {
    pub config: FeedbackConfig,
    pub jira: JiraClient,
    redactor: LogRedactor,
}

impl FeedbackSetup {
    /// Fails when a configured redaction pattern is not a regular expression.
    pub fn new(config: FeedbackConfig, jira: JiraClient) -> Result<Self, FeedbackError> {
        Ok(Self {
            redactor: LogRedactor::new(&config.redact_patterns)?,
            config,
            jira,
        })
    }
}

/// What the feedback controller is built from.
pub struct FeedbackParts {
    pub client: Client,
    /// The operator's shared AgentTask cache.
    pub tasks: Cache<AgentTask>,
    pub setup: FeedbackSetup,
    pub metrics: FeedbackMetrics,
    /// The process's reconcile metrics (shared by every controller).
    pub reconciles: ReconcileMetrics,
    /// Names this replica in Events.
    pub instance: String,
}

/// The feedback controller.
pub struct FeedbackController {
    client: Client,
    pub(crate) tasks: Cache<AgentTask>,
    pub(crate) jira: JiraClient,
    pub(crate) config: FeedbackConfig,
    pub(crate) redactor: LogRedactor,
    pub(crate) metrics: FeedbackMetrics,
    reconciles: ReconcileMetrics,
    events: EventPublisher,
}

impl FeedbackController {
    pub fn new(parts: FeedbackParts) -> Self {
        Self {
            redactor: parts.setup.redactor,
            events: EventPublisher::new(parts.client.clone(), "recac-feedback", parts.instance),
            client: parts.client,
            tasks: parts.tasks,
            jira: parts.setup.jira,
            config: parts.setup.config,
            metrics: parts.metrics,
            reconciles: parts.reconciles,
        }
    }

    fn options(&self) -> Options {
        Options {
            comment_on_dispatch: self.config.comment_on_dispatch,
            comment_on_retry: self.config.comment_on_retry,
        }
    }

    async fn run_term(self: Arc<Self>, term: Term) -> Result<(), ComponentError> {
        let ctx = Arc::new(TermContext {
            controller: self.clone(),
            failures: Mutex::new(HashMap::new()),
            facts: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            slots: tokio::sync::Semaphore::new(self.config.workers),
            live: LiveState::default(),
            term: term.clone(),
        });
        let (deleted_tx, deleted_rx) = mpsc::unbounded_channel::<Arc<AgentTask>>();
        let live = self.config.comments == CommentMode::Live;
        // Deleted tasks go to their own path: a controller only reconciles what the store has.
        let index_ctx = ctx.clone();
        let triggers = self.tasks.subscribe().filter_map(move |notice| {
            futures::future::ready(match notice {
                Notice::Applied(reference) => Some(reference),
                Notice::Deleted(task) => {
                    if live {
                        index_ctx.live.forget(&task);
                    }
                    if jira_ticket(&task).is_some() {
                        let _ = deleted_tx.send(task);
                    }
                    None
                }
            })
        });
        if live {
            // After subscribing: a task made since is reconciled, and noted then.
            ctx.live.index_all(&self.tasks.store());
        }
        let deletions = tokio::spawn(handle_deletions(ctx.clone(), deleted_rx, term.clone()));
        info!(term = term.number, "feedback controller term starts");
        runner::run(
            self.tasks.store(),
            triggers,
            RunnerConfig {
                controller: "feedback-controller",
                concurrency: self.config.workers,
                debounce: Duration::from_millis(100),
                backoff: Backoff {
                    first: Duration::from_secs(self.config.retry_seconds),
                    max: Duration::from_secs(self.config.max_retry_seconds),
                },
                metrics: self.reconciles.clone(),
            },
            term.stop_signal(),
            reconcile,
            error_policy,
            ctx,
        )
        .await;
        deletions.abort();
        self.metrics.clear_pending();
        if term.is_stopped() {
            info!(term = term.number, "feedback controller term ended");
            Ok(())
        } else {
            Err(ComponentError::new(
                "its controller loop ended: the task cache's change stream closed",
            ))
        }
    }
}

impl Component for FeedbackController {
    fn name(&self) -> &str {
        "feedback-controller"
    }

    fn run(self: Arc<Self>, term: Term) -> BoxFuture<'static, Result<(), ComponentError>> {
        Box::pin(self.run_term(term))
    }
}

/// One term's state.
pub(crate) struct TermContext {
    pub(crate) controller: Arc<FeedbackController>,
    /// Consecutive failed deliveries per task uid, and when the next may start.
    failures: Mutex<HashMap<String, (u32, Instant)>>,
    /// What a pending report says, read once (the pod may go before Jira answers again),
    /// by `<uid>/<report>`.
    pub(crate) facts: Mutex<HashMap<String, Facts>>,
    /// One delivery at a time per task (the reconciler and the deletion path).
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// `feedback.workers` delivery slots, shared by live and deleted tasks.
    pub(crate) slots: tokio::sync::Semaphore,
    /// The tickets' live comments (`feedback.comments: live`).
    pub(crate) live: LiveState,
    pub(crate) term: Term,
}

impl TermContext {
    fn lock_for(&self, uid: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(uid.to_string()).or_default().clone()
    }

    /// Counts a failed delivery and returns how long to wait before the next one.
    pub(crate) fn backoff(&self, uid: &str, error: &FeedbackError) -> Duration {
        let c = &self.controller.config;
        let Ok(mut failures) = self.failures.lock() else {
            return Duration::from_secs(c.retry_seconds);
        };
        let entry = failures
            .entry(uid.to_string())
            .or_insert((0, Instant::now()));
        entry.0 = entry.0.saturating_add(1);
        let wait = Duration::from_secs(c.retry_seconds)
            .saturating_mul(2u32.saturating_pow(entry.0.saturating_sub(1).min(16)))
            .min(Duration::from_secs(c.max_retry_seconds))
            .max(error.retry_after().unwrap_or_default());
        entry.1 = Instant::now() + wait;
        wait
    }

    /// How long a task whose delivery failed must still wait: other changes of the task
    /// (its own pending condition, the task controller's writes) do not shorten the backoff.
    pub(crate) fn waiting(&self, uid: &str) -> Option<Duration> {
        let failures = self.failures.lock().ok()?;
        let (_, retry_at) = failures.get(uid)?;
        retry_at
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
    }

    pub(crate) fn delivered(&self, uid: &str) {
        if let Ok(mut f) = self.failures.lock() {
            f.remove(uid);
        }
    }
}

pub(crate) fn task_key(task: &AgentTask) -> String {
    format!(
        "{}/{}",
        task.namespace().unwrap_or_default(),
        task.name_any()
    )
}

async fn reconcile(task: Arc<AgentTask>, ctx: Arc<TermContext>) -> Result<Requeue, FeedbackError> {
    match ctx.controller.config.comments {
        CommentMode::Live => live_delivery::reconcile(task, ctx).await,
        CommentMode::PerOutcome => reconcile_per_report(task, ctx).await,
    }
}

/// A comment per report.
async fn reconcile_per_report(
    task: Arc<AgentTask>,
    ctx: Arc<TermContext>,
) -> Result<Requeue, FeedbackError> {
    let c = &ctx.controller;
    let uid = task.uid().unwrap_or_default();
    let Ok(_slot) = ctx.slots.acquire().await else {
        return Ok(Requeue::await_change());
    };
    let lock = ctx.lock_for(&uid);
    let _guard = lock.lock().await;
    let reports = report::due(&task, false, &c.options());
    if reports.is_empty() {
        ctx.delivered(&uid);
        c.metrics.set_pending(&uid, false);
        return Ok(Requeue::await_change());
    }
    if let Some(left) = ctx.waiting(&uid) {
        return Ok(Requeue::requeue(left));
    }
    // A delivery may wait long on Jira's Retry-After; a term must stop promptly, and a POST
    // cut short is found by its marker next time.
    let result = tokio::select! {
        result = deliver_all(&task, &reports, &ctx) => result,
        _ = ctx.term.stopped() => return Ok(Requeue::await_change()),
    };
    match result {
        Ok(()) => {
            ctx.delivered(&uid);
            c.metrics.set_pending(&uid, false);
            Ok(Requeue::await_change())
        }
        Err(error) => {
            c.metrics.set_pending(&uid, true);
            c.metrics.delivery_failed(error.reason());
            mark_pending(&task, &error, &ctx).await;
            Err(error)
        }
    }
}

async fn deliver_all(
    task: &AgentTask,
    reports: &[Report],
    ctx: &TermContext,
) -> Result<(), FeedbackError> {
    for report in reports {
        deliver(task, report, false, ctx).await?;
    }
    Ok(())
}

/// Delivers one report: the comment (unless its marker is already on the ticket), then the
/// outcome's ticket update, then (for a live task) the record in status.
async fn deliver(
    task: &AgentTask,
    report: &Report,
    deleted: bool,
    ctx: &TermContext,
) -> Result<(), FeedbackError> {
    let c = &ctx.controller;
    let Some(ticket) = jira_ticket(task) else {
        return Ok(());
    };
    let uid = task.uid().unwrap_or_default();
    let facts = facts_for(task, report, deleted, ctx).await;
    let source = task.labels().get(SOURCE_LABEL).map(String::as_str);
    let comment = render::render(&facts, report, &c.config.templates_for(source));
    let body = match c.jira.flavor() {
        Flavor::Cloud => comment.to_adf(),
        Flavor::Datacenter => serde_json::Value::String(comment.to_wiki()),
    };
    let jira_error = |source| FeedbackError::Jira {
        task: task_key(task),
        ticket: ticket.to_string(),
        report: report.key(),
        source: Box::new(source),
    };
    let wanted = marker(&uid, &report.key());
    let existing = c
        .jira
        .comments(ticket)
        .await
        .map_err(jira_error)?
        .into_iter()
        .find(|comment| has_marker(&comment.body, &wanted));
    let comment_id = match existing {
        Some(found) => {
            c.metrics.found_posted();
            debug!(task = %task_key(task), report = %report.key(), comment = %found.id, "already on the ticket");
            found.id
        }
        None => {
            let posted = c
                .jira
                .add_comment_body(ticket, body)
                .await
                .map_err(jira_error)?;
            failpoint::hit("feedback.after-post");
            c.metrics.posted(report.kind.as_str());
            if report.kind.is_outcome()
                && let Some(done) = task
                    .status
                    .as_ref()
                    .and_then(|s| s.completion_time.as_ref())
                && let Ok(latency) = Duration::try_from(done.0.duration_until(Timestamp::now()))
            {
                c.metrics.observe_latency(latency);
            }
            info!(task = %task_key(task), ticket, report = %report.key(), comment = %posted.id, "reported on the ticket");
            if !deleted {
                let note = format!(
                    "posted the {} comment {} on {ticket}",
                    report.key(),
                    posted.id
                );
                publish(c, task, EventType::Normal, "Reported", &note).await;
            }
            posted.id
        }
    };
    let update = if report.kind.is_outcome() {
        Some(update_ticket(task, report, ctx).await?)
    } else {
        None
    };
    if let Ok(mut facts) = ctx.facts.lock() {
        facts.remove(&format!("{uid}/{}", report.key()));
    }
    if deleted {
        return Ok(());
    }
    record(task, report, Some(comment_id), update, ctx).await
}

/// The facts of a report, read once per term: the pod may be gone when a retry comes.
pub(crate) async fn facts_for(
    task: &AgentTask,
    report: &Report,
    deleted: bool,
    ctx: &TermContext,
) -> Facts {
    let c = &ctx.controller;
    let key = format!("{}/{}", task.uid().unwrap_or_default(), report.key());
    if let Some(facts) = ctx.facts.lock().ok().and_then(|f| f.get(&key).cloned()) {
        return facts;
    }
    let (result, log) = if observe::needs_pod(report) {
        read_attempt(task, report.kind == ReportKind::Failed, ctx).await
    } else {
        (None, Log::NotRead)
    };
    let mut facts = observe::facts(task, report, &c.config, result, log, deleted);
    if report.kind == ReportKind::Planned {
        facts.plan = observe::plan_text(task, &c.redactor);
    }
    if let Ok(mut all) = ctx.facts.lock() {
        all.insert(key, facts.clone());
    }
    facts
}

/// The agent's result and (for failures) its redacted log tail, from the attempt's pod.
async fn read_attempt(
    task: &AgentTask,
    want_log: bool,
    ctx: &TermContext,
) -> (Option<recac_api::agent_contract::AgentResult>, Log) {
    let c = &ctx.controller;
    let want_log = want_log && c.config.log_tail_lines > 0;
    let not_read = |why: String| {
        if want_log {
            Log::Unavailable(why)
        } else {
            Log::NotRead
        }
    };
    let Some(job) = task.status.as_ref().and_then(|s| s.job_name.clone()) else {
        return (None, not_read("the task has no Job".into()));
    };
    let namespace = task.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), &namespace);
    let list = match pods
        .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
        .await
    {
        Ok(list) => list.items,
        Err(err) => {
            warn!(task = %task_key(task), error = %err, "cannot list the attempt's pods");
            return (
                None,
                not_read(format!("listing the pods of Job {job} failed: {err}")),
            );
        }
    };
    let result = recac_api::agent_contract::termination(&list)
        .and_then(|t| t.result)
        .map(|result| observe::clean_result(result, &c.redactor));
    if !want_log {
        return (result, Log::NotRead);
    }
    let newest = list
        .iter()
        .max_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let Some(pod) = newest else {
        return (
            result,
            Log::Unavailable(format!(
                "the pod of Job {job} no longer exists (removed with its Job before the log was read)"
            )),
        );
    };
    let params = LogParams {
        container: Some(AGENT_CONTAINER.into()),
        tail_lines: Some(c.config.log_tail_lines as i64),
        limit_bytes: Some(LOG_READ_LIMIT),
        ..Default::default()
    };
    match pods.logs(&pod.name_any(), &params).await {
        Ok(text) => (result, Log::Read(c.redactor.redact(&text))),
        Err(err) => {
            warn!(task = %task_key(task), error = %err, "cannot read the agent's log");
            (
                result,
                Log::Unavailable(format!(
                    "reading the log of pod {} failed: {err}",
                    pod.name_any()
                )),
            )
        }
    }
}

/// Applies the outcome's labels and transition. A transition the workflow does not offer is
/// an Event and a condition, never a retry.
pub(crate) async fn update_ticket(
    task: &AgentTask,
    report: &Report,
    ctx: &TermContext,
) -> Result<TicketUpdate, FeedbackError> {
    let c = &ctx.controller;
    if report.kind == ReportKind::Planned
        && let Some(decided) = report::plan_state(task).filter(|p| p.is_settled())
    {
        let verdict = if decided == report::PlanState::Approved {
            "approved"
        } else {
            "rejected"
        };
        return Ok(TicketUpdate::Done(format!(
            "the plan was {verdict} before it was reported: feedback.planned is not applied"
        )));
    }
    let (Some(ticket), Some(actions)) = (
        jira_ticket(task),
        plan::actions_for(&c.config, task, report.kind),
    ) else {
        return Ok(TicketUpdate::Done("nothing configured".into()));
    };
    let jira_error = |source| FeedbackError::Jira {
        task: task_key(task),
        ticket: ticket.to_string(),
        report: report.key(),
        source: Box::new(source),
    };
    let add: Vec<&str> = actions.add_labels.iter().map(String::as_str).collect();
    let remove: Vec<&str> = actions.remove_labels.iter().map(String::as_str).collect();
    c.jira
        .update_labels(ticket, &add, &remove)
        .await
        .map_err(jira_error)?;
    let Some(wanted) = &actions.transition else {
        return Ok(TicketUpdate::Done("labels updated".into()));
    };
    let available = c.jira.transitions(ticket).await.map_err(jira_error)?;
    let mut step = plan::transition_step(wanted, &available, None);
    if matches!(step, TransitionStep::Missing { .. }) {
        let issue = c
            .jira
            .get_issue(ticket, &["status"])
            .await
            .map_err(jira_error)?;
        step = plan::transition_step(wanted, &available, issue.status_name());
    }
    match step {
        TransitionStep::Perform { id, name } => {
            c.jira
                .transition_by_id(ticket, &id)
                .await
                .map_err(jira_error)?;
            Ok(TicketUpdate::Done(format!("transition {name:?} done")))
        }
        TransitionStep::AlreadyThere => Ok(TicketUpdate::Done(format!(
            "the ticket is already in {wanted:?}"
        ))),
        TransitionStep::Missing { available } => {
            let why = format!(
                "{ticket} offers no transition matching {wanted:?} (feedback.{}.transition); available: {}",
                report.kind.as_str(),
                if available.is_empty() {
                    "none".to_string()
                } else {
                    available.join(", ")
                }
            );
            warn!(task = %task_key(task), "{why}");
            publish(c, task, EventType::Warning, "TransitionUnavailable", &why).await;
            Ok(TicketUpdate::Impossible(why))
        }
    }
}

pub(crate) async fn publish(
    c: &FeedbackController,
    task: &AgentTask,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let reference = task.object_ref(&());
    if let Err(err) = c.events.publish(&reference, type_, reason, note).await {
        // Events are best effort.
        warn!(task = %task_key(task), error = %err, "cannot publish event");
    }
}

/// Applies `change` to this controller's status fields and writes them if they changed. A
/// conflict re-reads the task, so nothing recorded meanwhile is lost.
pub(crate) async fn write_owned(
    task: &AgentTask,
    ctx: &TermContext,
    change: impl Fn(&mut Owned, Option<i64>),
) -> Result<(), FeedbackError> {
    let c = &ctx.controller;
    let namespace = task.namespace().unwrap_or_default();
    let api: Api<AgentTask> = Api::namespaced(c.client.clone(), &namespace);
    let kube_error = |action: &str| {
        let action = action.to_string();
        let task = task_key(task);
        move |source| FeedbackError::Kube {
            action,
            task,
            source,
        }
    };
    let mut current = task.clone();
    for _ in 0..5 {
        let before = Owned::of(&current);
        let mut after = before.clone();
        change(&mut after, current.metadata.generation);
        if after == before {
            return Ok(());
        }
        match status::apply_status(
            &api,
            &current.name_any(),
            current.resource_version().as_deref(),
            FIELD_MANAGER,
            &after,
        )
        .await
        {
            Ok(()) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                current = api
                    .get(&current.name_any())
                    .await
                    .map_err(kube_error("re-reading the task after a conflict"))?;
            }
            Err(source) => return Err(kube_error("writing status.feedback")(source)),
        }
    }
    Err(FeedbackError::Kube {
        action: "writing status.feedback (the task kept changing)".into(),
        task: task_key(task),
        source: kube::Error::Service("too many conflicts".into()),
    })
}

/// Records a delivered report (and its ticket update) in status.
async fn record(
    task: &AgentTask,
    report: &Report,
    comment_id: Option<String>,
    update: Option<TicketUpdate>,
    ctx: &TermContext,
) -> Result<(), FeedbackError> {
    let has_actions = plan::actions_for(&ctx.controller.config, task, report.kind).is_some();
    write_owned(task, ctx, |owned, generation| {
        owned.record_delivery(
            report,
            comment_id.as_deref(),
            update.as_ref(),
            has_actions,
            Time(Timestamp::now()),
            generation,
        );
    })
    .await
}

/// Makes a delivery that keeps failing visible: condition FeedbackPending=True.
pub(crate) async fn mark_pending(task: &AgentTask, error: &FeedbackError, ctx: &TermContext) {
    let message: String = error.to_string().chars().take(600).collect();
    let reason = error.reason();
    let was_pending = Owned::of(task).is_pending();
    let written = write_owned(task, ctx, |owned, generation| {
        owned.mark_pending(reason, &message, Time(Timestamp::now()), generation);
    })
    .await;
    if let Err(err) = written {
        warn!(task = %task_key(task), error = %err, "cannot record pending feedback");
    }
    if !was_pending {
        publish(
            &ctx.controller,
            task,
            EventType::Warning,
            "FeedbackDelayed",
            &format!("{message}; retrying"),
        )
        .await;
    }
}

fn error_policy(task: Arc<AgentTask>, error: &FeedbackError, ctx: Arc<TermContext>) -> Requeue {
    let wait = ctx.backoff(&task.uid().unwrap_or_default(), error);
    warn!(task = %task_key(&task), error = %error, retry_in = ?wait, "feedback delivery failed");
    Requeue::requeue(wait)
}

/// Delivers the reports of deleted tasks: at most `feedback.workers` deliveries run at
/// once (the slots are shared with the live tasks' reconciles), and a failed one waits out
/// the task's backoff in a queue, holding no slot, until it is delivered or the term ends.
async fn handle_deletions(
    ctx: Arc<TermContext>,
    mut deleted: mpsc::UnboundedReceiver<Arc<AgentTask>>,
    term: Term,
) {
    let workers = ctx.controller.config.workers;
    let mut queue: WorkQueue<String> = WorkQueue::default();
    let mut tasks: HashMap<String, Arc<AgentTask>> = HashMap::new();
    let mut running = tokio::task::JoinSet::new();
    loop {
        while let Some(uid) = queue.start_next(workers) {
            let Some(task) = tasks.get(&uid).cloned() else {
                queue.finish(&uid, None);
                continue;
            };
            let ctx = ctx.clone();
            running.spawn(async move {
                let retry_in = deliver_deleted(&ctx, &task).await;
                (uid, retry_in)
            });
        }
        let next_due = queue.next_due();
        tokio::select! {
            biased;
            _ = term.stopped() => break,
            Some(done) = running.join_next(), if !running.is_empty() => {
                if let Ok((uid, retry_in)) = done {
                    match retry_in {
                        Some(wait) => queue.finish(&uid, Some(tokio::time::Instant::now() + wait)),
                        None => {
                            tasks.remove(&uid);
                            queue.finish(&uid, None);
                        }
                    }
                }
            }
            task = deleted.recv() => {
                let Some(task) = task else { break };
                let owed = match ctx.controller.config.comments {
                    CommentMode::Live => report::outcome_due(&task, true).is_some(),
                    CommentMode::PerOutcome => {
                        !report::due(&task, true, &ctx.controller.options()).is_empty()
                    }
                };
                if !owed {
                    continue;
                }
                let uid = task.uid().unwrap_or_default();
                tasks.insert(uid.clone(), task);
                queue.schedule(uid, tokio::time::Instant::now());
            }
            () = runner::sleep_until(next_due), if next_due.is_some() => {
                queue.release_due(tokio::time::Instant::now());
            }
        }
    }
    running.abort_all();
}

/// One attempt at the reports of a deleted task; how long to wait before the next, if
/// one is needed.
async fn deliver_deleted(ctx: &Arc<TermContext>, task: &Arc<AgentTask>) -> Option<Duration> {
    if ctx.controller.config.comments == CommentMode::Live {
        return live_delivery::deliver_deleted(ctx, task).await;
    }
    let c = &ctx.controller;
    let uid = task.uid().unwrap_or_default();
    let reports = report::due(task, true, &c.options());
    let _slot = ctx.slots.acquire().await.ok()?;
    let lock = ctx.lock_for(&uid);
    let _guard = lock.lock().await;
    let mut outcome = Ok(());
    for report in &reports {
        outcome = deliver(task, report, true, ctx).await;
        if outcome.is_err() {
            break;
        }
    }
    match outcome {
        Ok(()) => {
            ctx.delivered(&uid);
            c.metrics.set_pending(&uid, false);
            None
        }
        Err(error) => {
            c.metrics.set_pending(&uid, true);
            c.metrics.delivery_failed(error.reason());
            let wait = ctx.backoff(&uid, &error);
            warn!(task = %task_key(task), error = %error, retry_in = ?wait, "feedback for a deleted task failed");
            Some(wait)
        }
    }
}
