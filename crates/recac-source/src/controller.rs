//! The source controller as a component of the runtime.
//!
//! Each source polls on its own interval (the first poll at the start of a term) and
//! whenever a webhook pokes it ([`PollTriggers`]). A poll first resumes the claims of the
//! source's pending tasks (crash recovery, see [`crate::decide`]), then reads every page of
//! the search and acts on each ticket's [`Verdict`]. Everything a term remembers (the
//! bot user, which skipped tickets were already handled at which `updated` time, claims
//! finished while the cache lags) lives in the term and starts fresh each term.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use recac_api::AgentTask;
use recac_jira::{ChangeHistory, Issue, JiraClient, JiraError, Transition, User};
use recac_runtime::claims::ClaimBoard;
use recac_runtime::events::{EventPublisher, EventType};
use recac_runtime::kinds::TaskSummary;
use recac_runtime::{Cache, Component, ComponentError, Term, failpoint};
use serde_json::json;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::config::{SourceConfig, StrandedAction};
use crate::decide::{
    self, CLAIM_ANNOTATION, CLAIM_MESSAGE_ANNOTATION, ClaimFacts, ClaimState, ClaimStep,
    SkipReason, TaskView,
};
use crate::metrics::SourceMetrics;
use crate::plan::{self, Verdict};
use crate::task;

/// Tickets taken at once within one poll.
const CONCURRENCY: usize = 64;

/// A test hook called at each step of taking a ticket (`after-create`,
/// `after-transition`, `after-edit`, `after-claim`); it may panic to simulate a crash.
pub type StepHook = Arc<dyn Fn(&str) + Send + Sync>;

/// Pokes sources to poll now (the webhook's way in).
#[derive(Clone, Default)]
pub struct PollTriggers {
    by_source: Arc<HashMap<String, Arc<Notify>>>,
}

impl PollTriggers {
    pub fn new(sources: &[SourceConfig]) -> Self {
        Self {
            by_source: Arc::new(
                sources
                    .iter()
                    .map(|s| (s.name.clone(), Arc::new(Notify::new())))
                    .collect(),
            ),
        }
    }

    /// Asks `source` to poll as soon as it can (coalesced: many pokes, one poll).
    pub fn poke(&self, source: &str) {
        if let Some(n) = self.by_source.get(source) {
            n.notify_one();
        }
    }

    fn notify(&self, source: &str) -> Arc<Notify> {
        self.by_source
            .get(source)
            .cloned()
            .unwrap_or_else(|| Arc::new(Notify::new()))
    }
}

/// Errors of one step, naming the ticket or task.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source {source_name}: {action}: {error}")]
    Jira {
        source_name: String,
        action: String,
        error: JiraError,
    },
    #[error("source {source_name}: {action} AgentTask {task}: {error}")]
    Kube {
        source_name: String,
        action: String,
        task: String,
        error: kube::Error,
    },
}

/// What the controller is built from.
pub struct SourceParts {
    pub client: Client,
    pub tasks: Cache<AgentTask>,
    pub jira: JiraClient,
    pub sources: Vec<SourceConfig>,
    pub metrics: SourceMetrics,
    pub triggers: PollTriggers,
    /// Names this replica in Events.
    pub instance: String,
    pub hook: Option<StepHook>,
    /// Where a successful claim is told to the task controller (see [`ClaimBoard`]).
    pub claims: Arc<ClaimBoard>,
}

/// The Jira source controller.
pub struct SourceController {
    client: Client,
    tasks: Cache<AgentTask>,
    jira: JiraClient,
    sources: Vec<SourceConfig>,
    metrics: SourceMetrics,
    triggers: PollTriggers,
    events: EventPublisher,
    hook: Option<StepHook>,
    claims: Arc<ClaimBoard>,
}

/// One term's memory.
#[derive(Default)]
struct TermState {
    /// Skipped tickets and the `updated` time they were skipped at, per source.
    handled: Mutex<HashMap<String, HashMap<String, String>>>,
    /// Tasks whose claim this term finished (the cache may still show them pending).
    settled: Mutex<HashSet<String>>,
    /// When each source's previous poll started (its search looks back to it for
    /// tickets with new comments).
    polled: Mutex<HashMap<String, Instant>>,
    /// Tickets whose comments were read, and the `updated` time they were read at, per
    /// source.
    read: Mutex<HashMap<String, HashMap<String, String>>>,
    /// Tickets whose comments could not be read, per source: read again at every poll until
    /// they are, even once they fall out of the search's look-back.
    unread: Mutex<HashMap<String, HashSet<String>>>,
    /// Tickets told that a spent budget holds them, with the period (each once per period).
    held_told: Mutex<HashSet<(String, String)>>,
}

/// Why a poll starts no new ticket: the source's budget is spent, or its spend record
/// cannot be read (then nothing new starts until it can: nothing spends past a budget).
pub(crate) enum Hold {
    Spent(crate::budget::Held),
    Unknown,
}

impl SourceController {
    pub fn new(parts: SourceParts) -> Self {
        Self {
            events: EventPublisher::new(parts.client.clone(), "recac-source", parts.instance),
            client: parts.client,
            tasks: parts.tasks,
            jira: parts.jira,
            sources: parts.sources,
            metrics: parts.metrics,
            triggers: parts.triggers,
            hook: parts.hook,
            claims: parts.claims,
        }
    }

    fn step(&self, name: &str) {
        failpoint::hit(&format!("source.{name}"));
        if let Some(hook) = &self.hook {
            hook(name);
        }
    }

    async fn run_term(self: Arc<Self>, term: Term) -> Result<(), ComponentError> {
        info!(
            term = term.number,
            sources = self.sources.len(),
            "source controller term starts"
        );
        let bot = tokio::select! {
            _ = term.stopped() => return Ok(()),
            bot = self.bot_user(&term) => bot,
        };
        let state = Arc::new(TermState::default());
        let loops = self
            .sources
            .iter()
            .map(|source| self.source_loop(source, &bot, &state, &term));
        futures::future::join_all(loops).await;
        info!(term = term.number, "source controller term ended");
        Ok(())
    }

    /// The bot user, retried until Jira answers (a term cannot claim without it).
    async fn bot_user(&self, term: &Term) -> User {
        let mut wait = Duration::from_millis(500);
        loop {
            match self.jira.myself().await {
                Ok(user) => return user,
                Err(e) => {
                    warn!(error = %e, "cannot read the Jira bot user; retrying");
                    tokio::select! {
                        _ = term.stopped() => return User::default(),
                        _ = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    async fn source_loop(&self, source: &SourceConfig, bot: &User, state: &TermState, term: &Term) {
        let notify = self.triggers.notify(&source.name);
        let interval = Duration::from_secs(source.poll_interval_seconds);
        let label = SourceMetrics::source(&source.name);
        // A new leader also looks for claims whose task was lost before it took over, beside
        // the polls: new work does not wait for that check.
        let recovery = async {
            let started = Instant::now();
            tokio::select! {
                _ = term.stopped() => {}
                outcome = self.recover_stranded(source, bot) => match outcome {
                    Ok(checked) => info!(
                        source = %source.name,
                        checked,
                        seconds = started.elapsed().as_secs_f64(),
                        "stranded claims checked"
                    ),
                    Err(e) => warn!(source = %source.name, error = %e, "looking for stranded claims failed; the next term looks again"),
                }
            }
        };
        futures::future::join(
            recovery,
            self.poll_loop(source, bot, state, term, notify, interval, &label),
        )
        .await;
    }

    #[allow(clippy::too_many_arguments)]
    async fn poll_loop(
        &self,
        source: &SourceConfig,
        bot: &User,
        state: &TermState,
        term: &Term,
        notify: Arc<tokio::sync::Notify>,
        interval: Duration,
        label: &crate::metrics::SourceLabel,
    ) {
        loop {
            if term.is_stopped() {
                return;
            }
            let started = Instant::now();
            let outcome = tokio::select! {
                _ = term.stopped() => return,
                outcome = self.poll(source, bot, state) => outcome,
            };
            self.metrics
                .poll_duration
                .get_or_create(label)
                .observe(started.elapsed().as_secs_f64());
            if let Err(e) = outcome {
                self.metrics.poll_errors.get_or_create(label).inc();
                warn!(error = %e, "poll failed; the next poll retries");
            }
            tokio::select! {
                _ = term.stopped() => return,
                _ = notify.notified() => debug!(source = %source.name, "poked"),
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }

    fn jira_err(
        source: &SourceConfig,
        action: impl Into<String>,
    ) -> impl FnOnce(JiraError) -> SourceError {
        let source_name = source.name.clone();
        let action = action.into();
        move |error| SourceError::Jira {
            source_name,
            action,
            error,
        }
    }

    /// The source's tasks (and any task of a ticket, whatever the source) by ticket key.
    fn index(&self) -> HashMap<String, Vec<TaskView>> {
        let mut index: HashMap<String, Vec<TaskView>> = HashMap::new();
        for t in self.tasks.store().scan::<TaskSummary>() {
            let meta = &t.metadata;
            let claimed = t.condition_true(recac_api::conditions::CLAIMED);
            if let (Some(view), Some(key)) = (
                task::view_of(meta, t.phase(), claimed),
                task::ticket_in(meta),
            ) {
                index.entry(key.to_string()).or_default().push(view);
            }
        }
        index
    }

    /// One poll: resume pending claims, then read the search and act on each ticket.
    async fn poll(
        &self,
        source: &SourceConfig,
        bot: &User,
        state: &TermState,
    ) -> Result<(), SourceError> {
        let label = SourceMetrics::source(&source.name);
        let started = Instant::now();
        let index = self.index();
        // Resume claims a crash interrupted.
        for (key, views) in &index {
            for view in views {
                if view.source != source.name
                    || view.claim != ClaimState::Pending
                    || view.finished
                    || state
                        .settled
                        .lock()
                        .is_ok_and(|s| s.contains(&task_id(view)))
                {
                    continue;
                }
                let Some(task) = self
                    .tasks
                    .store()
                    .get_named(Some(&view.namespace), &view.name)
                else {
                    continue;
                };
                if let Err(e) = self.resume_claim(source, bot, key, &task, state).await {
                    warn!(error = %e, task = %view.name, "claim not finished; the next poll resumes it");
                }
            }
        }
        // Tickets that changed since the previous poll (or, first in a term, within the
        // look-back) come back too, for the commands in their comments.
        let changed_within = state
            .polled
            .lock()
            .ok()
            .and_then(|polled| polled.get(&source.name).copied())
            // Jira evaluates `-Nm` on its own clock, as it stamps `updated`: only the time
            // between the two searches (and a little for the requests) has to fit.
            .map(|previous| (previous.elapsed().as_secs() + 10).div_ceil(60))
            .unwrap_or(source.commands.lookback_minutes)
            .max(1);
        let jql = crate::query::search_jql(source, Some(changed_within));
        let fields = plan::search_fields(source);
        let mut in_flight = index
            .values()
            .flatten()
            .filter(|v| v.source == source.name && !v.finished)
            .count();
        // Every page is read before any ticket is taken: a claim moves its ticket out of
        // the search's results, which would shift the later pages under a reader still
        // paging through them and hide tickets until the next poll.
        let mut issues: Vec<Issue> = Vec::new();
        let mut pages = std::pin::pin!(self.jira.search_pages(&jql, &fields));
        while let Some(page) = pages
            .try_next()
            .await
            .map_err(Self::jira_err(source, "search"))?
        {
            self.metrics.poll_pages.get_or_create(&label).inc();
            issues.extend(page);
        }
        debug!(
            source = %source.name,
            tickets = issues.len(),
            seconds = started.elapsed().as_secs_f64(),
            "search read"
        );
        self.metrics
            .seen
            .get_or_create(&label)
            .inc_by(issues.len() as u64);
        // Each ticket's status as the searches read it: a move to the approval status
        // approves a waiting plan.
        let mut status_of: HashMap<String, String> = issues
            .iter()
            .filter_map(|i| Some((i.key.clone(), i.fields.status.as_ref()?.name.clone())))
            .collect();
        if let Some(changed) = crate::query::changed_jql(source, changed_within) {
            let more = self
                .jira
                .search_all(&changed, &fields)
                .await
                .map_err(Self::jira_err(source, "search changed tickets"))?;
            let known: HashSet<String> = issues.iter().map(|i| i.key.clone()).collect();
            issues.extend(
                more.into_iter()
                    .filter(|i| !known.contains(&i.key))
                    .map(|mut i| {
                        // Only for its comments: never taken as a new ticket.
                        if let Some(status) = i.fields.status.take() {
                            status_of.insert(i.key.clone(), status.name);
                        }
                        i
                    }),
            );
        }
        // The next poll looks back to this one only once this one has read its search.
        if let Ok(mut polled) = state.polled.lock() {
            polled.insert(source.name.clone(), started);
        }
        let conversations =
            self.conversations(source, &issues, &index, changed_within, state, &status_of);
        issues.retain(|i| crate::query::is_ready(source, i.fields.status.as_ref()));
        let mut handled = state
            .handled
            .lock()
            .map(|mut h| h.remove(&source.name).unwrap_or_default())
            .unwrap_or_default();
        let seen: HashSet<String> = issues.iter().map(|i| i.key.clone()).collect();
        handled.retain(|key, _| seen.contains(key));
        let hold = match &source.budget {
            Some(budget) => self.budget_hold(source, budget, &index).await,
            None => None,
        };
        let mut candidates = Vec::new();
        for issue in issues {
            let views: Vec<TaskView> = index.get(&issue.key).cloned().unwrap_or_default();
            if let Some(reason) = decide::precheck(&views, &source.name) {
                self.metrics.skip(&source.name, reason.as_str());
                continue;
            }
            if let Some(hold) = &hold {
                self.metrics.skip(&source.name, "budget_spent");
                if let Hold::Spent(held) = hold
                    && let Err(e) = self
                        .tell_held(source, &issue.key, held, state, HeldWork::Ticket)
                        .await
                {
                    warn!(error = %e, ticket = %issue.key, "could not tell the ticket that the budget holds it; the next poll tries again");
                }
                continue;
            }
            let updated = issue.fields.updated.clone().unwrap_or_default();
            if handled.get(&issue.key) == Some(&updated) {
                self.metrics
                    .skip(&source.name, SkipReason::Unchanged.as_str());
                continue;
            }
            if candidates.len() >= source.max_tickets_per_poll || in_flight >= source.max_in_flight
            {
                self.metrics.skip(&source.name, SkipReason::Capped.as_str());
                continue;
            }
            in_flight += 1;
            candidates.push((issue, views));
        }
        let results: Vec<(String, Option<String>)> = futures::stream::iter(candidates)
            .map(|(issue, views)| async move {
                let key = issue.key.clone();
                let updated = issue.fields.updated.clone();
                match self.take(source, bot, &issue, &views, state).await {
                    Ok(Some(_)) => (key, updated),
                    Ok(None) => (key, None),
                    Err(e) => {
                        warn!(error = %e, ticket = %key, "ticket not taken; the next poll retries");
                        (key, None)
                    }
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for (key, updated) in results {
            if let Some(updated) = updated {
                handled.insert(key, updated);
            }
        }
        if let Ok(mut h) = state.handled.lock() {
            h.insert(source.name.clone(), handled);
        }
        self.converse(source, bot, conversations, state, hold.as_ref())
            .await;
        Ok(())
    }

    /// The tickets of `issues` whose comments may hold new commands: this source worked
    /// on them, they changed within the window, and not since their comments were read.
    fn conversations(
        &self,
        source: &SourceConfig,
        issues: &[Issue],
        index: &HashMap<String, Vec<TaskView>>,
        changed_within: u64,
        state: &TermState,
        status_of: &HashMap<String, String>,
    ) -> Vec<Conversing> {
        if !source.commands.enabled {
            return Vec::new();
        }
        let read = state
            .read
            .lock()
            .map(|r| r.get(&source.name).cloned().unwrap_or_default())
            .unwrap_or_default();
        let unread = state
            .unread
            .lock()
            .map(|u| u.get(&source.name).cloned().unwrap_or_default())
            .unwrap_or_default();
        let window = jiff::SignedDuration::from_mins(
            i64::try_from(changed_within).unwrap_or(i64::MAX / 120),
        );
        let since = jiff::Timestamp::now()
            .checked_sub(window)
            .unwrap_or(jiff::Timestamp::MIN);
        let views_of = |key: &str| {
            index
                .get(key)
                .filter(|views| views.iter().any(|v| v.source == source.name))
        };
        let mut tickets: Vec<Conversing> = issues
            .iter()
            .filter_map(|i| {
                let views = views_of(&i.key)?;
                let updated = i.fields.updated.clone()?;
                let recent = plan::jira_time(&updated).is_none_or(|at| at >= since);
                (unread.contains(&i.key) || recent && read.get(&i.key) != Some(&updated)).then(
                    || Conversing {
                        key: i.key.clone(),
                        updated,
                        views: views.clone(),
                        status: status_of.get(&i.key).cloned(),
                    },
                )
            })
            .collect();
        let listed: HashSet<String> = tickets.iter().map(|t| t.key.clone()).collect();
        for key in unread.iter().filter(|k| !listed.contains(*k)) {
            if let Some(views) = views_of(key) {
                tickets.push(Conversing {
                    key: key.clone(),
                    updated: String::new(),
                    views: views.clone(),
                    status: status_of.get(key).cloned(),
                });
            }
        }
        tickets
    }

    /// Reads each ticket's comments and acts on its commands.
    async fn converse(
        &self,
        source: &SourceConfig,
        bot: &User,
        tickets: Vec<Conversing>,
        state: &TermState,
        hold: Option<&Hold>,
    ) {
        if tickets.is_empty() {
            return;
        }
        let conversation = crate::conversation::Conversation {
            client: &self.client,
            jira: &self.jira,
            tasks: &self.tasks,
            source,
            bot,
            holds_runs: hold.is_some(),
        };
        let outcomes: Vec<(String, String, bool)> = futures::stream::iter(tickets)
            .map(|Conversing { key, updated, views, status }| {
                let conversation = &conversation;
                async move {
                    match conversation.handle(&key, &views, status.as_deref()).await {
                        Ok(handled) => {
                            self.metrics
                                .commands
                                .get_or_create(&SourceMetrics::source(&source.name))
                                .inc_by(handled.acts as u64);
                            if !handled.held_runs {
                                return (key, updated, true);
                            }
                            // Read again at every poll until the budget lets the run start.
                            if let Some(Hold::Spent(held)) = hold
                                && let Err(e) = self
                                    .tell_held(source, &key, held, state, HeldWork::Command)
                                    .await
                            {
                                warn!(error = %e, ticket = %key, "could not tell the ticket that the budget holds its command; the next poll tries again");
                            }
                            (key, updated, false)
                        }
                        Err(e) => {
                            warn!(error = %e, ticket = %key, "comments not read; the next poll retries");
                            (key, updated, false)
                        }
                    }
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        if let (Ok(mut read), Ok(mut unread)) = (state.read.lock(), state.unread.lock()) {
            let read = read.entry(source.name.clone()).or_default();
            let unread = unread.entry(source.name.clone()).or_default();
            for (key, updated, ok) in outcomes {
                if ok {
                    unread.remove(&key);
                    read.insert(key, updated);
                } else {
                    unread.insert(key);
                }
            }
        }
    }

    /// Acts on one ticket's verdict. `Ok(Some(reason))` when it was skipped in a way that
    /// holds until the ticket changes.
    async fn take(
        &self,
        source: &SourceConfig,
        bot: &User,
        issue: &Issue,
        views: &[TaskView],
        state: &TermState,
    ) -> Result<Option<SkipReason>, SourceError> {
        let verdict = plan::evaluate(&self.jira, source, issue, views, bot)
            .await
            .map_err(Self::jira_err(source, format!("read ticket {}", issue.key)))?;
        match verdict {
            Verdict::Skip(reason) => {
                self.metrics.skip(&source.name, reason.as_str());
                Ok(
                    matches!(reason, SkipReason::AlreadyRan | SkipReason::InvalidKey)
                        .then_some(reason),
                )
            }
            Verdict::Tell {
                reason,
                label,
                text,
            } => {
                self.metrics.skip(&source.name, reason.as_str());
                self.tell(source, issue, reason, &label, &text).await?;
                Ok(Some(reason))
            }
            Verdict::Take(take) => {
                let api: Api<AgentTask> = Api::namespaced(self.client.clone(), &source.namespace);
                let name = take.task.name_any();
                let kube_err = |action: &str| {
                    let (source_name, action, task) =
                        (source.name.clone(), action.to_string(), name.clone());
                    move |error| SourceError::Kube {
                        source_name,
                        action,
                        task,
                        error,
                    }
                };
                let created = match api.create(&PostParams::default(), &take.task).await {
                    Ok(created) => {
                        if let Some(at) = take.triggered_at.as_deref().and_then(plan::jira_time) {
                            let secs = (jiff::Timestamp::now().as_millisecond()
                                - at.as_millisecond())
                                as f64
                                / 1000.0;
                            self.metrics
                                .latency
                                .get_or_create(&SourceMetrics::source(&source.name))
                                .observe(secs.max(0.0));
                        }
                        created
                    }
                    Err(kube::Error::Api(status)) if status.code == 409 => {
                        // The deterministic name exists: adopt it only if it is this run.
                        let existing = api.get(&name).await.map_err(kube_err("read"))?;
                        let same = task::view(&existing).is_some_and(|v| {
                            v.source == source.name
                                && v.trigger.as_deref() == Some(take.trigger.id.as_str())
                        });
                        if !same {
                            self.metrics
                                .skip(&source.name, SkipReason::InFlight.as_str());
                            return Ok(None);
                        }
                        if task::view(&existing).is_some_and(|v| v.claim != ClaimState::Pending) {
                            return Ok(None);
                        }
                        existing
                    }
                    Err(e) => return Err(kube_err("create")(e)),
                };
                self.step("after-create");
                self.claim(
                    source,
                    bot,
                    &issue.key,
                    &created,
                    take.issue,
                    take.histories,
                    take.transitions,
                    state,
                )
                .await?;
                Ok(None)
            }
        }
    }

    /// Counts the spend of the source's tasks in its ledger and says whether its budget holds
    /// new tickets; the first hold of a period is announced in an Event on the ledger.
    async fn budget_hold(
        &self,
        source: &SourceConfig,
        budget: &crate::config::SourceBudget,
        index: &HashMap<String, Vec<TaskView>>,
    ) -> Option<Hold> {
        let now = recac_runtime::clock::now();
        let store = self.tasks.store();
        let spends: Vec<crate::budget::TaskSpend> = index
            .values()
            .flatten()
            .filter(|v| v.source == source.name)
            .filter_map(|v| store.get_named(Some(&v.namespace), &v.name))
            .filter_map(|t| {
                let uid = t.uid()?;
                let spend = t.status.as_ref()?.spend.as_ref()?;
                Some(crate::budget::task_spend(&uid, spend))
            })
            .collect();
        let mut held = None;
        let mut announce = false;
        let outcome =
            crate::ledger::update(&self.client, &source.namespace, &source.name, |ledger| {
                let mut changed = crate::budget::record(ledger, &spends, now);
                held = crate::budget::held(ledger, budget, now);
                announce = false;
                if let Some(h) = &held
                    && ledger.announced.as_deref() != Some(h.period.as_str())
                {
                    ledger.announced = Some(h.period.clone());
                    announce = true;
                    changed = true;
                }
                changed
            })
            .await;
        if let Err(e) = outcome {
            warn!(source = %source.name, error = %e, "the spend record cannot be read or written; no new ticket starts until it can");
            return Some(Hold::Unknown);
        }
        let held = held?;
        if announce {
            let regarding = k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("ConfigMap".into()),
                namespace: Some(source.namespace.clone()),
                name: Some(crate::ledger::name(&source.name)),
                ..Default::default()
            };
            let note = format!(
                "source {}: the {} is spent; no new ticket starts until {}",
                source.name, held.what, held.until
            );
            info!(source = %source.name, period = %held.period, "{note}");
            if let Err(e) = self
                .events
                .publish(&regarding, EventType::Warning, "BudgetSpent", &note)
                .await
            {
                warn!(error = %e, "the budget Event was not published");
            }
        }
        Some(Hold::Spent(held))
    }

    /// Tells `key`, once per period, that the source's spent budget holds its new ticket or
    /// the run a command on it asks for.
    async fn tell_held(
        &self,
        source: &SourceConfig,
        key: &str,
        held: &crate::budget::Held,
        state: &TermState,
        work: HeldWork,
    ) -> Result<(), SourceError> {
        let told = (key.to_string(), held.period.clone());
        if state.held_told.lock().is_ok_and(|t| t.contains(&told)) {
            return Ok(());
        }
        let marker = format!("[recac:held:{}:{}]", source.name, held.period);
        let (what, it) = match work {
            HeldWork::Ticket => ("started work on this ticket", "It starts"),
            HeldWork::Command => ("started the run asked for on this ticket", "The run starts"),
        };
        let text = format!(
            "recac has not {what}: the {} of source {} is spent. {it} after {} (UTC), or sooner if the budget is raised. {marker}",
            held.what, source.name, held.until
        );
        self.comment_once(source, key, &marker, &text).await?;
        if let Ok(mut t) = state.held_told.lock() {
            t.insert(told);
        }
        Ok(())
    }

    /// One comment (unless one with the marker exists) and the skip label.
    async fn tell(
        &self,
        source: &SourceConfig,
        issue: &Issue,
        reason: SkipReason,
        label: &str,
        text: &str,
    ) -> Result<(), SourceError> {
        if issue.fields.labels.iter().any(|l| l == label) {
            return Ok(());
        }
        let key = issue.key.as_str();
        let marker = plan::marker(reason);
        let marker = if reason == SkipReason::RepositoryRejected {
            plan::marker(SkipReason::NoRepository)
        } else {
            marker
        };
        self.comment_once(source, key, &marker, text).await?;
        self.jira
            .add_labels(key, &[label])
            .await
            .map_err(Self::jira_err(source, format!("label {key}")))?;
        info!(
            ticket = key,
            reason = reason.as_str(),
            "ticket skipped with a comment"
        );
        Ok(())
    }

    async fn resume_claim(
        &self,
        source: &SourceConfig,
        bot: &User,
        key: &str,
        task: &AgentTask,
        state: &TermState,
    ) -> Result<(), SourceError> {
        let read = self
            .jira
            .issue_for_claim(key, plan::CLAIM_FIELDS)
            .await
            .map_err(Self::jira_err(source, format!("read ticket {key}")))?;
        self.claim(
            source,
            bot,
            key,
            task,
            read.issue,
            read.histories,
            read.transitions,
            state,
        )
        .await
    }

    /// Drives the claim to its end from the ticket as last read.
    #[allow(clippy::too_many_arguments)]
    async fn claim(
        &self,
        source: &SourceConfig,
        bot: &User,
        key: &str,
        task: &AgentTask,
        mut issue: Issue,
        mut histories: Vec<ChangeHistory>,
        mut offered: Option<Vec<Transition>>,
        state: &TermState,
    ) -> Result<(), SourceError> {
        let trigger = task
            .annotations()
            .get(decide::TRIGGER_ANNOTATION)
            .cloned()
            .unwrap_or_else(|| decide::CREATED.into());
        let mut remove: Vec<String> = source.claim.remove_labels.clone();
        for skip in [
            &source.skip_labels.no_repository,
            &source.skip_labels.not_allowed,
        ] {
            if issue.fields.labels.contains(skip) && !remove.contains(skip) {
                remove.push(skip.clone());
            }
        }
        let label = SourceMetrics::source(&source.name);
        let mut transitioned = false;
        let mut rereads = 0;
        loop {
            let facts = ClaimFacts {
                histories: &histories,
                trigger: &trigger,
                bot,
                assignee: issue.fields.assignee.as_ref(),
                labels: &issue.fields.labels,
            };
            let mut step = decide::claim_step(
                &facts,
                source.claim.assign,
                &source.claim.add_labels,
                &remove,
            );
            if transitioned && step == ClaimStep::Transition {
                // Our transition succeeded but this copy of the ticket predates it.
                step = ClaimStep::Edit {
                    assign: source.claim.assign
                        && issue
                            .fields
                            .assignee
                            .as_ref()
                            .is_none_or(|a| a.id() != bot.id()),
                };
            }
            match step {
                ClaimStep::Transition => {
                    // The transitions read with this copy of the ticket, else (not read, or not
                    // expanded by this Jira) a fresh list from the transitions endpoint.
                    let available = match offered.take() {
                        Some(list) => list,
                        None => self.jira.transitions(key).await.map_err(Self::jira_err(
                            source,
                            format!("list transitions of {key}"),
                        ))?,
                    };
                    let chosen =
                        match recac_jira::transition::resolve(&source.claim.transition, &available)
                        {
                            Ok(t) => t.id.clone(),
                            Err(_) if rereads < 2 => {
                                // The ticket changed since it was read: decide on a fresh copy,
                                // which names who took it.
                                rereads += 1;
                                let read = self
                                    .jira
                                    .issue_for_claim(key, plan::CLAIM_FIELDS)
                                    .await
                                    .map_err(Self::jira_err(
                                        source,
                                        format!("re-read ticket {key}"),
                                    ))?;
                                (issue, histories, offered) =
                                    (read.issue, read.histories, read.transitions);
                                continue;
                            }
                            Err(list) => {
                                // The fresh read still shows the ticket free: nobody took it, the
                                // bot is just offered no claim transition.
                                return self
                                    .settle_unavailable(source, task, &issue, &list, state)
                                    .await;
                            }
                        };
                    match self.jira.transition_by_id(key, &chosen).await {
                        Ok(()) => {
                            transitioned = true;
                            self.step("after-transition");
                        }
                        Err(e) if matches!(e.status(), Some(400 | 409)) && rereads < 2 => {
                            self.metrics.conflicts.get_or_create(&label).inc();
                            rereads += 1;
                            let read = self
                                .jira
                                .issue_for_claim(key, plan::CLAIM_FIELDS)
                                .await
                                .map_err(Self::jira_err(source, format!("re-read ticket {key}")))?;
                            (issue, histories, offered) =
                                (read.issue, read.histories, read.transitions);
                            continue;
                        }
                        Err(e) => {
                            return Err(Self::jira_err(source, format!("transition {key}"))(e));
                        }
                    }
                }
                ClaimStep::Edit { assign } => {
                    let add: Vec<&str> =
                        source.claim.add_labels.iter().map(String::as_str).collect();
                    let rm: Vec<&str> = remove.iter().map(String::as_str).collect();
                    self.jira
                        .assign_and_label(key, assign.then_some(bot), &add, &rm)
                        .await
                        .map_err(Self::jira_err(source, format!("assign and label {key}")))?;
                    self.step("after-edit");
                    return self.settle_claimed(source, task, key, state).await;
                }
                ClaimStep::Done => return self.settle_claimed(source, task, key, state).await,
                ClaimStep::Lost(why) => return self.settle_lost(source, task, &why, state).await,
            }
        }
    }

    /// Records how the claim ended on the task, and that this term settled it.
    async fn settle(
        &self,
        source: &SourceConfig,
        task: &AgentTask,
        claim: ClaimState,
        message: Option<&str>,
        state: &TermState,
    ) -> Result<(), SourceError> {
        self.mark(source, task, claim, message).await?;
        Self::settled_in_term(task, state);
        Ok(())
    }

    fn settled_in_term(task: &AgentTask, state: &TermState) {
        if let Ok(mut s) = state.settled.lock() {
            s.insert(format!(
                "{}/{}",
                task.namespace().unwrap_or_default(),
                task.name_any()
            ));
        }
    }

    /// Posts `text` on the ticket unless a comment with `marker` is there already.
    async fn comment_once(
        &self,
        source: &SourceConfig,
        key: &str,
        marker: &str,
        text: &str,
    ) -> Result<(), SourceError> {
        let existing = self
            .jira
            .find_comment(key, marker)
            .await
            .map_err(Self::jira_err(source, format!("read comments of {key}")))?;
        if existing.is_none() {
            self.jira
                .add_comment(key, text)
                .await
                .map_err(Self::jira_err(source, format!("comment on {key}")))?;
        }
        Ok(())
    }

    async fn mark(
        &self,
        source: &SourceConfig,
        task: &AgentTask,
        claim: ClaimState,
        message: Option<&str>,
    ) -> Result<(), SourceError> {
        let ns = task.namespace().unwrap_or_else(|| source.namespace.clone());
        let api: Api<AgentTask> = Api::namespaced(self.client.clone(), &ns);
        let mut annotations = json!({ CLAIM_ANNOTATION: claim.as_str() });
        if let Some(m) = message {
            annotations[CLAIM_MESSAGE_ANNOTATION] = json!(m);
        }
        api.patch(
            &task.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": annotations}})),
        )
        .await
        .map_err(|error| SourceError::Kube {
            source_name: source.name.clone(),
            action: format!("mark {}", claim.as_str()),
            task: task.name_any(),
            error,
        })?;
        Ok(())
    }

    async fn settle_claimed(
        &self,
        source: &SourceConfig,
        task: &AgentTask,
        key: &str,
        state: &TermState,
    ) -> Result<(), SourceError> {
        // Nothing is written to the task: the task controller learns of the claim from the
        // board and records it with the task's first status (see `recac_runtime::claims`).
        // Nor is there an Event: the `Claimed` condition says it, and an Event per ticket
        // would compete with the Jobs for the apiserver in a burst.
        self.claims.record_claimed(task);
        Self::settled_in_term(task, state);
        self.metrics
            .claimed
            .get_or_create(&SourceMetrics::source(&source.name))
            .inc();
        self.step("after-claim");
        info!(ticket = key, task = %task.name_any(), "ticket claimed");
        Ok(())
    }

    /// The ticket is free, but its workflow offers the bot no claim transition (the workflow
    /// has none from this status, or the bot lacks the Transition Issues permission): the task
    /// ends without running and the ticket gets one comment saying what to fix. The comment
    /// goes first and is found again by its marker, so a crash in between never doubles it.
    async fn settle_unavailable(
        &self,
        source: &SourceConfig,
        task: &AgentTask,
        issue: &Issue,
        offered: &[String],
        state: &TermState,
    ) -> Result<(), SourceError> {
        let key = issue.key.as_str();
        let why = format!(
            "the claim transition {:?} is not offered to the bot on {key} in status {:?} (offered: {}): the project's workflow has no such transition from this status, or the bot lacks the Transition Issues permission",
            source.claim.transition,
            issue.status_name().unwrap_or("?"),
            if offered.is_empty() {
                "none".to_string()
            } else {
                offered.join("; ")
            }
        );
        let marker = plan::marker(SkipReason::TransitionUnavailable);
        let text = format!(
            "recac cannot start work on this ticket: {why}. Ask a Jira administrator to fix the workflow or the bot's permission (or change the source's `claim.transition`), then trigger the ticket again. {marker}"
        );
        self.comment_once(source, key, &marker, &text).await?;
        self.settle(source, task, ClaimState::Unavailable, Some(&why), state)
            .await?;
        self.metrics
            .skip(&source.name, SkipReason::TransitionUnavailable.as_str());
        self.publish(
            task,
            EventType::Warning,
            "ClaimUnavailable",
            &format!("the task will not run: {why}"),
        );
        warn!(task = %task.name_any(), why, "claim transition unavailable");
        Ok(())
    }

    async fn settle_lost(
        &self,
        source: &SourceConfig,
        task: &AgentTask,
        why: &str,
        state: &TermState,
    ) -> Result<(), SourceError> {
        self.settle(source, task, ClaimState::Lost, Some(why), state)
            .await?;
        self.metrics
            .conflicts
            .get_or_create(&SourceMetrics::source(&source.name))
            .inc();
        self.publish(
            task,
            EventType::Warning,
            "ClaimLost",
            &format!("the task will not run: {why}"),
        );
        warn!(task = %task.name_any(), why, "claim lost");
        Ok(())
    }

    /// Finds this source's claimed tickets that have no AgentTask and no reported result, and
    /// acts on each as `strandedClaims.action` says: one comment (found again by its marker,
    /// so a crash never posts it twice), then unassign, unlabel and transition back.
    /// Returns how many claimed tickets without a task it checked.
    async fn recover_stranded(
        &self,
        source: &SourceConfig,
        bot: &User,
    ) -> Result<usize, SourceError> {
        let action = source.stranded_claims.action;
        if action == StrandedAction::Ignore {
            return Ok(0);
        }
        let Some(jql) = crate::query::claimed_jql(source) else {
            return Ok(0);
        };
        let claimed = self
            .jira
            .search_all(&jql, plan::CLAIM_FIELDS)
            .await
            .map_err(Self::jira_err(source, "search claimed tickets"))?;
        if claimed.is_empty() {
            return Ok(0);
        }
        let index = self.index();
        // The cache may lag a task created moments ago: one list from the API, before acting.
        let tasks: Api<AgentTask> = Api::namespaced(self.client.clone(), &source.namespace);
        let live: HashSet<String> = tasks
            .list_metadata(&kube::api::ListParams::default().labels(decide::TICKET_LABEL))
            .await
            .map_err(|error| SourceError::Kube {
                source_name: source.name.clone(),
                action: "list the tasks of claimed tickets".into(),
                task: String::new(),
                error,
            })?
            .items
            .into_iter()
            .filter_map(|t| t.metadata.labels?.remove(decide::TICKET_LABEL))
            .collect();
        let candidates: Vec<String> = claimed
            .into_iter()
            .map(|issue| issue.key)
            .filter(|key| !index.contains_key(key) && !live.contains(key))
            .collect();
        let checked = candidates.len();
        futures::stream::iter(candidates)
            .for_each_concurrent(CONCURRENCY, |key| async move {
                if let Err(e) = self.hand_back(source, bot, &key).await {
                    warn!(ticket = %key, error = %e, "stranded claim not handed back; the next term retries");
                }
            })
            .await;
        Ok(checked)
    }

    async fn hand_back(
        &self,
        source: &SourceConfig,
        bot: &User,
        key: &str,
    ) -> Result<(), SourceError> {
        let settings = &source.stranded_claims;
        let (issue, histories) = self
            .jira
            .issue_with_changelog(key, plan::CLAIM_FIELDS)
            .await
            .map_err(Self::jira_err(source, format!("read ticket {key}")))?;
        let comments = self
            .jira
            .comments(key)
            .await
            .map_err(Self::jira_err(source, format!("read comments of {key}")))?;
        let claim = match decide::stranding(&histories, &comments, bot, &source.claim.add_labels) {
            decide::Stranding::Stranded { claim } => claim,
            other => {
                debug!(ticket = key, verdict = ?other, "claimed ticket without a task is not stranded");
                return Ok(());
            }
        };
        let marker = decide::stranded_marker(&claim);
        if !comments.iter().any(|c| c.text().contains(&marker)) {
            let next = match settings.action {
                StrandedAction::Rerun => "It goes back to the queue and runs again as a new task.",
                _ => {
                    "It is handed back: assign it or add the label again to have the agent work on it."
                }
            };
            let text = format!(
                "recac claimed this ticket, but its AgentTask no longer exists and no result was reported (the task was deleted before it finished, or lost while no operator ran). {next} {marker}"
            );
            self.jira
                .add_comment(key, &text)
                .await
                .map_err(Self::jira_err(source, format!("comment on {key}")))?;
        }
        let mut remove: Vec<&str> = source.claim.add_labels.iter().map(String::as_str).collect();
        if settings.action == StrandedAction::HandBack
            && let Some(label) = &source.label
        {
            remove.push(label);
        }
        remove.retain(|l| issue.fields.labels.iter().any(|have| have == l));
        if !remove.is_empty() {
            self.jira
                .remove_labels(key, &remove)
                .await
                .map_err(Self::jira_err(source, format!("unlabel {key}")))?;
        }
        if issue
            .fields
            .assignee
            .as_ref()
            .is_some_and(|a| a.id().is_some() && a.id() == bot.id())
        {
            self.jira
                .assign(key, None)
                .await
                .map_err(Self::jira_err(source, format!("unassign {key}")))?;
        }
        let outcome = match self.jira.transition(key, &settings.transition).await {
            Ok(_) => settings.action.as_str(),
            Err(JiraError::NoSuchTransition { .. }) => "transition_unavailable",
            Err(e) => return Err(Self::jira_err(source, format!("transition {key} back"))(e)),
        };
        self.metrics.stranded(&source.name, outcome);
        warn!(
            ticket = key,
            action = settings.action.as_str(),
            outcome,
            "a claimed ticket had lost its AgentTask; handed back with a comment"
        );
        Ok(())
    }

    /// Publishes an Event in the background: a claim does not wait for it (the client's
    /// write fence still stops it once leadership is lost).
    fn publish(&self, task: &AgentTask, type_: EventType, reason: &str, note: &str) {
        let reference = task.object_ref(&());
        let events = self.events.clone();
        let (reason, note) = (reason.to_string(), note.to_string());
        tokio::spawn(async move {
            if let Err(e) = events.publish(&reference, type_, &reason, &note).await {
                debug!(error = %e, "event not published");
            }
        });
    }
}

fn task_id(view: &TaskView) -> String {
    format!("{}/{}", view.namespace, view.name)
}

impl Component for SourceController {
    fn name(&self) -> &str {
        "source-controller"
    }

    fn run(self: Arc<Self>, term: Term) -> BoxFuture<'static, Result<(), ComponentError>> {
        Box::pin(self.run_term(term))
    }
}

/// What a spent budget holds on a ticket.
#[derive(Clone, Copy)]
enum HeldWork {
    /// The ticket's first run.
    Ticket,
    /// A run a command asks for (a follow-up, retry or approval).
    Command,
}

/// A ticket whose comments are to be read: its `updated` as the search read it, its
/// tasks, and its status (when a search read it).
struct Conversing {
    key: String,
    updated: String,
    views: Vec<TaskView>,
    status: Option<String>,
}
