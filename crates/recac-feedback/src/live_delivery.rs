//! The live comment's delivery (I/O): for a changed task, its ticket's runs are read from
//! the cache, the comment's text is made ([`crate::live`]) and written when
//! [`crate::pacing`] says so; then each outcome it tells gets its transition and labels and
//! is recorded in its task's status, as a comment per report would be.
//!
//! One pass at a time per ticket: a task whose ticket is being written is asked again a
//! moment later instead of waiting, so no worker waits on another ticket's Jira calls. What
//! was written is kept per ticket for the term (the comment's id, the version of its text,
//! when it was written); a new term reads the ticket's comments once, for the marker, the
//! first time the ticket needs its comment. A comment made but not yet recorded is found by
//! that marker: a crash between the two never makes a second comment.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use recac_api::{AgentTask, TaskPhase};
use recac_jira::{Flavor, JiraError};
use recac_runtime::events::EventType;
use recac_runtime::failpoint;
use recac_runtime::runner::Action as Requeue;
use recac_runtime::store::Store;
use tracing::{debug, info};

use crate::controller::{
    FeedbackError, TermContext, facts_for, mark_pending, publish, task_key, update_ticket,
    write_owned,
};
use crate::live::{self, RunView};
use crate::observe;
use crate::pacing::{self, Pacing, Write};
use crate::plan;
use crate::render::{Facts, Log};
use crate::report::{self, Report, ReportKind, jira_ticket};
use crate::runs::{self, RunState, TicketIndex, TicketKey};
use crate::status::{Owned, status_comment_of};

/// How soon a task whose ticket is being written asks again.
const BUSY_RETRY: Duration = Duration::from_millis(200);

/// What a term knows of one ticket's live comment.
#[derive(Debug, Default)]
struct TicketComment {
    /// Forgotten (the ticket went quiet): a pass that still holds it starts over.
    retired: bool,
    /// The ticket's comments were read this term: `comment_id` and `written` are what
    /// Jira has.
    known: bool,
    comment_id: Option<String>,
    /// The version of the text on the ticket.
    written: Option<String>,
    last_write: Option<Instant>,
    /// Since when the wanted text has differed from the written one.
    changed_since: Option<Instant>,
}

/// The term's live comments and the index of the tickets' runs.
#[derive(Default)]
pub(crate) struct LiveState {
    index: Mutex<TicketIndex>,
    tickets: Mutex<HashMap<TicketKey, Arc<tokio::sync::Mutex<TicketComment>>>>,
    /// When forgotten tickets were written last, while that still limits their next write
    /// (a follow-up run may come right after the ticket went quiet).
    last_writes: Mutex<HashMap<TicketKey, Instant>>,
}

/// A task as the index reads it from the cache: its metadata only.
#[derive(serde::Deserialize)]
struct TaskMeta {
    metadata: ObjectMeta,
}

impl LiveState {
    /// Notes every cached task's ticket (once, when a term starts).
    pub(crate) fn index_all(&self, store: &Store<AgentTask>) {
        let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        for task in store.scan::<TaskMeta>() {
            let meta = task.metadata;
            let ticket = meta
                .labels
                .as_ref()
                .and_then(|l| l.get(recac_api::labels::TICKET))
                .map(String::as_str);
            if let (Some(namespace), Some(name)) = (meta.namespace.as_deref(), meta.name.as_deref())
            {
                index.note(namespace, name, ticket);
            }
        }
    }

    pub(crate) fn forget(&self, task: &AgentTask) {
        let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        index.forget(&task.namespace().unwrap_or_default(), &task.name_any());
    }

    fn note(&self, task: &AgentTask) {
        let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        index.note_task(task);
    }

    fn comment_of(&self, ticket: &TicketKey) -> Arc<tokio::sync::Mutex<TicketComment>> {
        let mut tickets = self.tickets.lock().unwrap_or_else(|p| p.into_inner());
        tickets
            .entry(ticket.clone())
            .or_insert_with(|| {
                let last_writes = self.last_writes.lock().unwrap_or_else(|p| p.into_inner());
                Arc::new(tokio::sync::Mutex::new(TicketComment {
                    last_write: last_writes.get(ticket).copied(),
                    ..TicketComment::default()
                }))
            })
            .clone()
    }

    /// Forgets a quiet ticket (a later change reads its comments again), but for when it
    /// was written last while that matters (`interval`).
    fn retire(&self, ticket: &TicketKey, comment: &mut TicketComment, interval: Duration) {
        comment.retired = true;
        let mut last_writes = self.last_writes.lock().unwrap_or_else(|p| p.into_inner());
        last_writes.retain(|_, at| at.elapsed() < interval);
        if let Some(at) = comment.last_write.filter(|at| at.elapsed() < interval) {
            last_writes.insert(ticket.clone(), at);
        }
        drop(last_writes);
        let mut tickets = self.tickets.lock().unwrap_or_else(|p| p.into_inner());
        tickets.remove(ticket);
    }

    /// The ticket's runs as cached, oldest first, with `current` (fresher than the cache,
    /// or as fresh) and `deleted` (gone from the cache) in their places. Each is paired
    /// with whether it is deleted.
    fn runs(
        &self,
        ticket: &TicketKey,
        store: &Store<AgentTask>,
        current: Option<&Arc<AgentTask>>,
        deleted: Option<&Arc<AgentTask>>,
    ) -> Vec<(Arc<AgentTask>, bool)> {
        let same = |a: &AgentTask, b: &AgentTask| {
            a.name_any() == b.name_any() && a.namespace() == b.namespace()
        };
        let mut tasks: Vec<Arc<AgentTask>> = match ticket {
            TicketKey::Labelled { namespace, key } => {
                let names = self
                    .index
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .runs_of(namespace, key);
                names
                    .iter()
                    .filter_map(|name| match current {
                        Some(task) if task.name_any() == *name => Some(task.clone()),
                        _ => store.get_named(Some(namespace), name),
                    })
                    .filter(|task| deleted.is_none_or(|gone| !same(task, gone)))
                    .collect()
            }
            TicketKey::Single { .. } => Vec::new(),
        };
        if let Some(task) = current
            && !tasks.iter().any(|t| same(t, task))
        {
            tasks.push(task.clone());
        }
        if let Some(task) = deleted {
            tasks.push(task.clone());
        }
        runs::in_run_order(&mut tasks);
        tasks
            .into_iter()
            .map(|task| {
                let gone = deleted.is_some_and(|d| same(d, &task));
                (task, gone)
            })
            .collect()
    }
}

/// What a pass over a ticket came to.
enum Pass {
    /// The comment says what it should; every outcome told is recorded.
    Settled,
    /// Another pass has the ticket.
    Busy,
    /// The text changed, but the comment may not be written before this.
    WriteIn(Duration),
}

/// The live counterpart of the per-report reconcile: a pass over the task's ticket.
pub(crate) async fn reconcile(
    task: Arc<AgentTask>,
    ctx: Arc<TermContext>,
) -> Result<Requeue, FeedbackError> {
    let c = &ctx.controller;
    if jira_ticket(&task).is_none() {
        return Ok(Requeue::await_change());
    }
    ctx.live.note(&task);
    let uid = task.uid().unwrap_or_default();
    if let Some(left) = ctx.waiting(&uid) {
        return Ok(Requeue::requeue(left));
    }
    let ticket = TicketKey::of(&task);
    // A pass may wait long on Jira's Retry-After; a term must stop promptly, and a comment
    // made but not recorded is found by its marker next time.
    let result = tokio::select! {
        result = pass(&ctx, &ticket, Some(&task), None) => result,
        _ = ctx.term.stopped() => return Ok(Requeue::await_change()),
    };
    match result {
        Ok(Pass::Settled) => {
            ctx.delivered(&uid);
            c.metrics.set_pending(&uid, false);
            if Owned::of(&task).is_pending() {
                write_owned(&task, &ctx, |owned, generation| {
                    owned.clear_pending(Time(Timestamp::now()), generation);
                })
                .await?;
            }
            Ok(Requeue::await_change())
        }
        Ok(Pass::Busy) => Ok(Requeue::requeue(BUSY_RETRY)),
        Ok(Pass::WriteIn(wait)) => Ok(Requeue::requeue(wait)),
        Err(error) => {
            c.metrics.set_pending(&uid, true);
            c.metrics.delivery_failed(error.reason());
            mark_pending(&task, &error, &ctx).await;
            Err(error)
        }
    }
}

/// One attempt at a deleted task's ticket; how long to wait before the next, if one is
/// needed.
pub(crate) async fn deliver_deleted(
    ctx: &Arc<TermContext>,
    task: &Arc<AgentTask>,
) -> Option<Duration> {
    let c = &ctx.controller;
    let uid = task.uid().unwrap_or_default();
    match pass(ctx, &TicketKey::of(task), None, Some(task)).await {
        Ok(Pass::Settled) => {
            ctx.delivered(&uid);
            c.metrics.set_pending(&uid, false);
            None
        }
        Ok(Pass::Busy) => Some(BUSY_RETRY),
        Ok(Pass::WriteIn(wait)) => Some(wait),
        Err(error) => {
            c.metrics.set_pending(&uid, true);
            c.metrics.delivery_failed(error.reason());
            let wait = ctx.backoff(&uid, &error);
            tracing::warn!(task = %task_key(task), error = %error, retry_in = ?wait, "feedback for a deleted task failed");
            Some(wait)
        }
    }
}

/// An outcome the comment tells now: its run, whether the run is deleted, the report.
struct Telling {
    task: Arc<AgentTask>,
    deleted: bool,
    report: Report,
}

fn facts_key(task: &AgentTask, report: &Report) -> String {
    format!("{}/{}", task.uid().unwrap_or_default(), report.key())
}

/// The ticket's comment made to say where its runs are, and the outcomes it tells handed on.
async fn pass(
    ctx: &TermContext,
    ticket: &TicketKey,
    current: Option<&Arc<AgentTask>>,
    deleted: Option<&Arc<AgentTask>>,
) -> Result<Pass, FeedbackError> {
    let c = &ctx.controller;
    let comment = ctx.live.comment_of(ticket);
    let Ok(mut state) = comment.try_lock() else {
        return Ok(Pass::Busy);
    };
    if state.retired {
        return Ok(Pass::Busy);
    }
    let Ok(_slot) = ctx.slots.acquire().await else {
        return Ok(Pass::Settled);
    };
    let runs = ctx.live.runs(ticket, &c.tasks.store(), current, deleted);
    let Some(jira_key) = runs
        .iter()
        .find_map(|(task, _)| jira_ticket(task).map(str::to_string))
    else {
        return Ok(Pass::Settled);
    };
    let telling: Vec<Telling> = runs
        .iter()
        .filter_map(|(task, deleted)| {
            report::outcome_due(task, *deleted).map(|report| Telling {
                task: task.clone(),
                deleted: *deleted,
                report,
            })
        })
        .collect();
    let states: Vec<RunState> = runs
        .iter()
        .map(|(task, deleted)| runs::state_of(task, *deleted))
        .collect();
    let unfinished = states.iter().any(|s| !s.is_finished());
    let written_this_term = state.known && state.comment_id.is_some();
    if telling.is_empty() && !unfinished && !written_this_term {
        // Quiet: everything told; nothing to read or write.
        forget_ticket(ctx, ticket, &mut state, &runs);
        return Ok(Pass::Settled);
    }
    // The comment is made when there is something to tell: the first outcome, or (with
    // `commentOnDispatch`) the first agent running.
    let worth_a_comment = !telling.is_empty()
        || (c.config.comment_on_dispatch
            && runs.iter().any(|(task, deleted)| {
                !deleted && task.status.as_ref().and_then(|s| s.phase) == Some(TaskPhase::Running)
            }));
    let recorded = runs.iter().find_map(|(task, _)| status_comment_of(task));
    if !state.known && recorded.is_none() && !worth_a_comment {
        // Nothing to show yet, and nothing learnt worth keeping.
        forget_ticket(ctx, ticket, &mut state, &[]);
        return Ok(Pass::Settled);
    }
    for told in &telling {
        // A plan told now is read (and cleaned) once, and shown while the ticket is busy.
        if observe::needs_pod(&told.report) || told.report.kind == ReportKind::Planned {
            facts_for(&told.task, &told.report, told.deleted, ctx).await;
        }
    }
    let views = views(ctx, &runs, states);
    let text = live::render(ticket, &views);
    let jira_error = |what: &str| {
        let task = current.or(deleted).map(|t| task_key(t)).unwrap_or_default();
        let report = what.to_string();
        let ticket = jira_key.clone();
        move |source: JiraError| FeedbackError::Jira {
            task,
            ticket,
            report,
            source: Box::new(source),
        }
    };
    if !state.known {
        let comments = c
            .jira
            .comments(&jira_key)
            .await
            .map_err(jira_error("the live comment"))?;
        let prefix = ticket.marker_prefix();
        let found = recorded
            .as_ref()
            .and_then(|id| comments.iter().find(|comment| &comment.id == id))
            .or_else(|| {
                comments
                    .iter()
                    .find(|comment| live::written_version(&comment.body, &prefix).is_some())
            });
        if found.is_some() && recorded.is_none() {
            c.metrics.found_posted();
        }
        state.comment_id = found.map(|comment| comment.id.clone());
        state.written = found.and_then(|comment| live::written_version(&comment.body, &prefix));
        state.known = true;
    }
    if state.comment_id.is_none() && !worth_a_comment {
        return Ok(Pass::Settled);
    }
    let now = Instant::now();
    let changed_since = *state.changed_since.get_or_insert(now);
    let pacing = Pacing::every(Duration::from_secs(c.config.edit_interval_seconds));
    match pacing::decide(
        state.written.as_deref(),
        &text.version,
        state.last_write,
        changed_since,
        now,
        pacing,
    ) {
        Write::Unchanged => state.changed_since = None,
        Write::At(at) => return Ok(Pass::WriteIn(at.saturating_duration_since(now))),
        Write::Now => {
            let body = match c.jira.flavor() {
                Flavor::Cloud => text.comment.to_adf(),
                Flavor::Datacenter => serde_json::Value::String(text.comment.to_wiki()),
            };
            match state.comment_id.clone() {
                Some(id) => match c.jira.edit_comment_body(&jira_key, &id, body).await {
                    Ok(_) => c.metrics.edited(),
                    Err(err) => {
                        if err.status() == Some(404) {
                            // Deleted by someone: the next pass looks again, and makes one.
                            state.known = false;
                            state.comment_id = None;
                        }
                        return Err(jira_error("the live comment")(err));
                    }
                },
                None => match c.jira.add_comment_body(&jira_key, body).await {
                    Ok(posted) => {
                        failpoint::hit("feedback.after-post");
                        c.metrics.posted("live");
                        info!(ticket = %jira_key, comment = %posted.id, "made the ticket's live comment");
                        state.comment_id = Some(posted.id);
                    }
                    Err(err) => {
                        // Jira may have made it before the reply was lost: look first.
                        state.known = false;
                        return Err(jira_error("the live comment")(err));
                    }
                },
            }
            debug!(ticket = %jira_key, version = %text.version, "wrote the live comment");
            state.written = Some(text.version.clone());
            state.last_write = Some(now);
            state.changed_since = None;
        }
    }
    let Some(comment_id) = state.comment_id.clone() else {
        return Ok(Pass::Settled);
    };
    for told in &telling {
        tell_outcome(ctx, told, &comment_id, &jira_key).await?;
    }
    if let Some(task) = current
        && recorded.as_deref() != Some(comment_id.as_str())
        && !telling.iter().any(|told| told.task.uid() == task.uid())
    {
        write_owned(task, ctx, |owned, _| {
            owned.record_status_comment(&comment_id)
        })
        .await?;
    }
    if !unfinished {
        forget_ticket(ctx, ticket, &mut state, &runs);
    }
    Ok(Pass::Settled)
}

/// Each run as the comment shows it.
fn views(
    ctx: &TermContext,
    runs: &[(Arc<AgentTask>, bool)],
    states: Vec<RunState>,
) -> Vec<RunView> {
    let config = &ctx.controller.config;
    let read_from_pod = |task: &AgentTask, outcome: &Report| {
        let facts = ctx.facts.lock().ok()?;
        facts.get(&facts_key(task, outcome)).cloned()
    };
    runs.iter()
        .zip(states)
        .enumerate()
        .map(|(place, ((task, deleted), state))| {
            let outcome = report::outcome(task, *deleted);
            let read = outcome.and_then(|o| read_from_pod(task, &o));
            let detailed = read.is_some() && outcome.is_some_and(|o| observe::needs_pod(&o));
            let as_of = outcome.unwrap_or(Report {
                kind: ReportKind::PickedUp,
                attempt: task.status.as_ref().and_then(|s| s.attempt).unwrap_or(0),
            });
            let facts = match read {
                // A plan told in this pass or an earlier one while the ticket was busy: its
                // text as read then, where it is now as the task says.
                Some(told) if as_of.kind == ReportKind::Planned => Facts {
                    plan: told.plan,
                    ..observe::facts(task, &as_of, config, None, Log::NotRead, *deleted)
                },
                Some(read) => read,
                None => {
                    let mut facts =
                        observe::facts(task, &as_of, config, None, Log::NotRead, *deleted);
                    // A waiting plan is always shown (a decided one only when told now).
                    if matches!(state, RunState::AwaitingApproval { .. }) {
                        facts.plan = observe::plan_text(task, &ctx.controller.redactor);
                    }
                    facts
                }
            };
            RunView {
                number: live::shown_number(task, place),
                state,
                facts,
                outcome,
                detailed,
                templates: config.templates_for(live::source_of(task)),
            }
        })
        .collect()
}

/// An outcome the comment now says: its transition and labels, then (for a live task) its
/// record, with the comment's id.
async fn tell_outcome(
    ctx: &TermContext,
    told: &Telling,
    comment_id: &str,
    jira_key: &str,
) -> Result<(), FeedbackError> {
    let c = &ctx.controller;
    let update = update_ticket(&told.task, &told.report, ctx).await?;
    if let Some(done) = told
        .task
        .status
        .as_ref()
        .and_then(|s| s.completion_time.as_ref())
        && let Ok(latency) = Duration::try_from(done.0.duration_until(Timestamp::now()))
    {
        c.metrics.observe_latency(latency);
    }
    if told.deleted {
        return Ok(());
    }
    let report = told.report;
    let has_actions = plan::actions_for(&c.config, &told.task, report.kind).is_some();
    write_owned(&told.task, ctx, |owned, generation| {
        owned.record_delivery(
            &report,
            Some(comment_id),
            Some(&update),
            has_actions,
            Time(Timestamp::now()),
            generation,
        );
        owned.record_status_comment(comment_id);
    })
    .await?;
    let note = format!(
        "told {} in the live comment {comment_id} on {jira_key}",
        report.key()
    );
    publish(c, &told.task, EventType::Normal, "Reported", &note).await;
    Ok(())
}

/// Forgets a quiet ticket and what its runs' pods said.
fn forget_ticket(
    ctx: &TermContext,
    ticket: &TicketKey,
    state: &mut TicketComment,
    runs: &[(Arc<AgentTask>, bool)],
) {
    let interval = Duration::from_secs(ctx.controller.config.edit_interval_seconds);
    ctx.live.retire(ticket, state, interval);
    if let Ok(mut facts) = ctx.facts.lock() {
        for (task, _) in runs {
            let prefix = format!("{}/", task.uid().unwrap_or_default());
            facts.retain(|key, _| !key.starts_with(&prefix));
        }
    }
}
