//! The task controller's decisions: observed state in, desired status and actions out.
//! Nothing here talks to the API, so every transition is unit-tested.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use recac_api::agent_contract::{AgentResult, CutShort, Outcome};
use recac_api::reasons::{BUDGET_EXHAUSTED, DEADLINE_EXCEEDED};
use recac_api::{AgentTask, AgentTaskStatus, Approval, EgressStatus, ModelSpend, Spend, TaskPhase};

use crate::budget::{self, Pricing};
use crate::namespace_budget::NamespaceHold;
use crate::naming;
use crate::observe::{AttemptState, Failure, Termination};

/// Condition types the controller maintains.
pub mod condition {
    /// Waiting for a free slot under the concurrency cap.
    pub const QUEUED: &str = "Queued";
    /// The current attempt's Job exists.
    pub const DISPATCHED: &str = "Dispatched";
    /// spec.suspend holds the task.
    pub const SUSPENDED: &str = "Suspended";
    pub const SUCCEEDED: &str = "Succeeded";
    pub const FAILED: &str = "Failed";
    /// `Dispatched`'s reason when the apiserver refuses the attempt's Job.
    pub const DISPATCH_FAILED: &str = "DispatchFailed";
    /// The source claimed the task's ticket in Jira.
    pub const CLAIMED: &str = recac_api::conditions::CLAIMED;
    /// A planning run wrote its plan (`status.plan`), which waits for approval.
    pub const PLAN_READY: &str = recac_api::conditions::PLAN_READY;
    /// `PlanReady`'s reason.
    pub const PLAN_WRITTEN: &str = "PlanWritten";
    /// `Failed`'s reason for a planning run whose agent reported no plan.
    pub const NO_PLAN: &str = "NoPlan";
    pub const BUDGET_UNPRICED: &str = recac_api::reasons::BUDGET_UNPRICED;
    /// `Failed`'s reason for a task whose `spec.budget` cannot be read (a cost that is not a
    /// decimal number): it is not run.
    pub const BUDGET_INVALID: &str = "BudgetInvalid";
    pub const EGRESS_NOT_PERMITTED: &str = recac_api::reasons::EGRESS_NOT_PERMITTED;
}

/// What the controller saw of the current attempt's Job.
#[derive(Clone, Debug, PartialEq)]
pub struct AttemptObservation {
    pub job_name: String,
    /// When the Job was created.
    pub created: Option<Timestamp>,
    pub state: AttemptState,
    /// How the agent ended, for finished attempts.
    pub termination: Option<Termination>,
}

/// Everything a decision depends on besides the task itself.
#[derive(Clone, Debug)]
pub struct Observation {
    /// The Job of the current attempt (`status.attempt`); `None` when it does not exist.
    pub attempt: Option<AttemptObservation>,
    /// Whether a slot under the concurrency cap is free for this task now.
    pub admitted: bool,
    /// The source controller of this process settled the task's pending claim (see
    /// [`recac_runtime::claims`]).
    pub claimed: bool,
    /// The name of the unfinished run of the same ticket just before this task (see
    /// [`crate::admission`]): the first attempt waits until it is finished or gone.
    pub previous_run: Option<String>,
    /// The task's namespace has spent its budget, or its spend record cannot be read (see
    /// [`crate::namespace_budget`]): no new attempt starts. Only looked at for a task that
    /// wants a new attempt.
    pub namespace_hold: Option<NamespaceHold>,
    pub now: Timestamp,
}

/// A request made on the task's ticket to stop it (the [`recac_api::annotations::STOP`]
/// annotation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StopRequest {
    /// The id of the ticket comment that asked.
    pub comment: String,
    /// Who asked, for people.
    pub by: Option<String>,
}

impl StopRequest {
    pub fn of(task: &AgentTask) -> Option<StopRequest> {
        use recac_api::annotations::{STOP, STOP_BY};
        let annotations = task.annotations();
        let comment = annotations.get(STOP)?.trim().to_string();
        let by = annotations
            .get(STOP_BY)
            .map(|by| by.trim())
            .filter(|by| !by.is_empty())
            .map(str::to_string);
        Some(StopRequest { comment, by })
    }

    /// "stopped on the ticket by <who> (comment <id>)", leaving out what is not known.
    fn describe(&self) -> String {
        let by = self
            .by
            .as_ref()
            .map(|by| format!(" by {by}"))
            .unwrap_or_default();
        let comment = if self.comment.is_empty() {
            String::new()
        } else {
            format!(" (comment {})", self.comment)
        };
        format!("stopped on the ticket{by}{comment}")
    }
}

/// Retry timing, and the prices the spend of attempts is counted with.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
    /// How often the controller hands out free slots even without an event (a safety net:
    /// a freed slot wakes the next queued task at once).
    pub queue_poll: Duration,
    /// The operator's price table (`agent.prices`) and default model.
    pub pricing: Arc<Pricing>,
    /// What agent pods may reach (`agent.egress`, `sources[].egress`).
    pub egress: Arc<crate::egress::EgressInputs>,
}

impl RetryPolicy {
    /// The wait after `failed_attempt` failed: initial × 2^(attempt−1), capped.
    pub fn backoff(&self, failed_attempt: i32) -> Duration {
        let exponent = u32::try_from(failed_attempt.saturating_sub(1))
            .unwrap_or(0)
            .min(20);
        self.initial
            .saturating_mul(2u32.saturating_pow(exponent))
            .min(self.max)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// Something to do against the API.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Create (or adopt) the Job of `attempt`, with the network resolved for it.
    CreateJob {
        attempt: i32,
        branch: String,
        suspend: bool,
        network: crate::egress::Network,
    },
    /// Set `spec.suspend` of a Job.
    SuspendJob { name: String, suspend: bool },
    /// Publish a Kubernetes Event on the task.
    Event {
        type_: EventType,
        reason: String,
        note: String,
    },
}

/// The outcome of one decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The status the task should have; written only when it differs from the current one.
    pub status: AgentTaskStatus,
    pub actions: Vec<Action>,
    /// When to look again without an event.
    pub requeue_after: Option<Duration>,
    /// The status may wait this long before it is written: the first attempt's Job was
    /// created moments ago, and its status goes out with the pod's start (see
    /// [`FIRST_STATUS_GRACE`]).
    pub defer_status: Option<Duration>,
    /// What a finished attempt spent, per model, added to `status.spend` by this plan (for
    /// the metrics, counted once the status is written).
    pub spent: Vec<ModelSpend>,
    /// What the egress proxy refused a finished attempt, recorded in `status.egress` by this
    /// plan (for the metrics, counted once the status is written).
    pub blocked: Vec<recac_api::egress::BlockedHost>,
}

struct Draft<'a> {
    generation: Option<i64>,
    now: &'a Timestamp,
    pricing: &'a Pricing,
    egress: &'a crate::egress::EgressInputs,
    status: AgentTaskStatus,
    actions: Vec<Action>,
    requeue_after: Option<Duration>,
    spent: Vec<ModelSpend>,
    blocked: Vec<recac_api::egress::BlockedHost>,
}

impl Draft<'_> {
    fn set_condition(&mut self, type_: &str, status: bool, reason: &str, message: &str) {
        let now = *self.now;
        self.set_condition_at(type_, status, reason, message, now);
    }

    /// [`Draft::set_condition`] for a change that happened at `at`.
    fn set_condition_at(
        &mut self,
        type_: &str,
        status: bool,
        reason: &str,
        message: &str,
        at: Timestamp,
    ) {
        let status_text = if status { "True" } else { "False" };
        let conditions = &mut self.status.conditions;
        if let Some(existing) = conditions.iter_mut().find(|c| c.type_ == type_) {
            if existing.status != status_text {
                existing.last_transition_time = Time(at);
            }
            existing.status = status_text.into();
            existing.reason = reason.into();
            existing.message = message.into();
            existing.observed_generation = self.generation;
        } else {
            conditions.push(Condition {
                type_: type_.into(),
                status: status_text.into(),
                reason: reason.into(),
                message: message.into(),
                last_transition_time: Time(at),
                observed_generation: self.generation,
            });
        }
    }

    /// Sets a condition to False only if it was ever set: absent conditions stay absent.
    fn clear_condition(&mut self, type_: &str, reason: &str, message: &str) {
        if self.status.conditions.iter().any(|c| c.type_ == type_) {
            self.set_condition(type_, false, reason, message);
        }
    }

    fn mark_suspended(&mut self, suspended: bool) {
        if suspended {
            self.set_condition(
                condition::SUSPENDED,
                true,
                "SpecSuspended",
                "spec.suspend is true",
            );
        } else {
            self.clear_condition(condition::SUSPENDED, "Resumed", "spec.suspend is false");
        }
    }

    fn event(&mut self, type_: EventType, reason: &str, note: String) {
        self.actions.push(Action::Event {
            type_,
            reason: reason.into(),
            note,
        });
    }

    /// Records the current attempt's allow-list in `status.egress.allowed` (what its Job
    /// was built with), keeping what was blocked: the status of a first attempt is written
    /// with its pod's start, not with its dispatch.
    fn note_network(&mut self, task: &AgentTask) {
        // Written at dispatch; resolved again only when that write was lost.
        if self
            .status
            .egress
            .as_ref()
            .is_some_and(|e| !e.allowed.is_empty())
        {
            return;
        }
        let Ok(network) = crate::egress::resolve(task, &self.egress.defaults, &self.egress.sources)
        else {
            return;
        };
        let Some(rules) = network.rules() else {
            return;
        };
        let allowed: Vec<String> = rules.iter().map(ToString::to_string).collect();
        let egress = self.status.egress.get_or_insert_with(EgressStatus::default);
        if egress.allowed != allowed {
            egress.allowed = allowed;
        }
    }

    fn finish(self) -> Plan {
        Plan {
            status: self.status,
            actions: self.actions,
            requeue_after: self.requeue_after,
            defer_status: None,
            spent: self.spent,
            blocked: self.blocked,
        }
    }

    /// Ends the task `Failed` with `reason`, nothing dispatched or retried, with a Warning
    /// Event of the same reason.
    fn fail(&mut self, reason: &str, message: String) {
        self.status.phase = Some(TaskPhase::Failed);
        self.status.completion_time = Some(Time(*self.now));
        self.status.next_attempt_time = None;
        self.status.message = Some(message.clone());
        self.clear_condition(condition::QUEUED, reason, &message);
        self.set_condition(condition::FAILED, true, reason, &message);
        self.event(EventType::Warning, reason, message);
    }
}

/// How long a new task whose ticket is being claimed goes without a status: a claim
/// normally ends within a second (its annotation change wakes the task), so writing
/// `AwaitingClaim` at once would be a status write per ticket that nobody reads.
pub const CLAIM_STATUS_GRACE: Duration = Duration::from_secs(5);

/// How long the first attempt's status waits for its pod: a pod that starts within it makes
/// dispatch and start one status write (`Running`), and in a burst of new tickets the
/// status writes come after the Jobs instead of between them. A pod that takes longer gets
/// the `Pending` status at the grace's end.
pub const FIRST_STATUS_GRACE: Duration = Duration::from_secs(5);

/// How much of `grace` is left for something that began at `since` (`None`: none).
fn grace_left(since: Timestamp, grace: Duration, now: Timestamp) -> Option<Duration> {
    let age = now.duration_since(since);
    let grace = SignedDuration::try_from(grace).ok()?;
    let left = grace.checked_sub(age)?;
    if left > SignedDuration::ZERO {
        Duration::try_from(left).ok()
    } else {
        None
    }
}

/// How much of the claim grace is left for a task created at `created` (`None`: none).
fn claim_grace_left(task: &AgentTask, now: Timestamp) -> Option<Duration> {
    let created = task.metadata.creation_timestamp.as_ref()?.0;
    grace_left(created, CLAIM_STATUS_GRACE, now)
}

/// Decides what to do with `task` given what was observed.
pub fn decide(task: &AgentTask, observed: &Observation, retry: &RetryPolicy) -> Plan {
    let current = task.status.clone().unwrap_or_default();
    let mut draft = Draft {
        generation: task.metadata.generation,
        now: &observed.now,
        pricing: &retry.pricing,
        egress: &retry.egress,
        status: current.clone(),
        actions: Vec::new(),
        requeue_after: None,
        spent: Vec::new(),
        blocked: Vec::new(),
    };
    draft.status.observed_generation = task.metadata.generation;

    // No Job runs for a plan that waits for approval (nor does a stop have anything to
    // stop): only the decision on the plan changes it.
    if current.phase == Some(TaskPhase::AwaitingApproval) {
        await_approval(&mut draft, task);
        return draft.finish();
    }
    if current.phase.is_some_and(TaskPhase::is_finished) {
        return draft.finish();
    }
    // An attempt that succeeded before the stop was seen ends the task as the success it is.
    if let Some(request) = StopRequest::of(task)
        && !observed
            .attempt
            .as_ref()
            .is_some_and(|a| a.state == AttemptState::Succeeded)
    {
        stop(&mut draft, task, observed, &request);
        return draft.finish();
    }

    let mut attempt = current.attempt.unwrap_or(0);
    // The first attempt's Job, when it exists before the status says so.
    let mut first = None;
    if attempt == 0 {
        // A Job is only ever created after the claim, so one that exists settles it.
        match claim_state(task, observed.claimed || observed.attempt.is_some()) {
            Claim::Pending => {
                if current == AgentTaskStatus::default()
                    && let Some(left) = claim_grace_left(task, observed.now)
                {
                    // Look again when the grace ends, unless the claim ends first.
                    return Plan {
                        status: current,
                        actions: Vec::new(),
                        requeue_after: Some(left),
                        defer_status: None,
                        spent: Vec::new(),
                        blocked: Vec::new(),
                    };
                }
                draft.status.phase = Some(TaskPhase::Pending);
                draft.status.message = Some(
                    "waiting for the ticket to be claimed in Jira before the first attempt".into(),
                );
                draft.set_condition(
                    condition::DISPATCHED,
                    false,
                    "AwaitingClaim",
                    "the source controller has not claimed the ticket yet",
                );
                return draft.finish();
            }
            Claim::Lost => {
                draft.status.phase = Some(TaskPhase::Failed);
                draft.status.completion_time = Some(Time(observed.now));
                let message = "the ticket was taken by someone else before it could be claimed; the task was not run";
                draft.status.message = Some(message.into());
                draft.set_condition(condition::FAILED, true, "ClaimLost", message);
                draft.event(EventType::Warning, "ClaimLost", message.into());
                return draft.finish();
            }
            Claim::Unavailable => {
                draft.status.phase = Some(TaskPhase::Failed);
                draft.status.completion_time = Some(Time(observed.now));
                let message = task
                    .annotations()
                    .get(recac_api::annotations::CLAIM_MESSAGE)
                    .cloned()
                    .unwrap_or_else(|| {
                        "the ticket's workflow offers the bot no claim transition".into()
                    });
                let message = format!("{message}; the task was not run");
                draft.status.message = Some(message.clone());
                draft.set_condition(condition::FAILED, true, "ClaimUnavailable", &message);
                draft.event(EventType::Warning, "ClaimUnavailable", message);
                return draft.finish();
            }
            Claim::Settled => draft.set_condition(
                condition::CLAIMED,
                true,
                "TicketClaimed",
                "the source claimed the ticket in Jira",
            ),
            Claim::None => {}
        }
        let branch = feature_branch(task);
        draft.status.branch = Some(branch.clone());
        match &observed.attempt {
            None => {
                dispatch(&mut draft, task, observed, 1, branch);
                let created = draft
                    .actions
                    .iter()
                    .any(|a| matches!(a, Action::CreateJob { .. }));
                let mut plan = draft.finish();
                if created {
                    plan.defer_status = Some(FIRST_STATUS_GRACE);
                    plan.requeue_after = Some(FIRST_STATUS_GRACE);
                }
                return plan;
            }
            Some(observation) => {
                adopt_first_attempt(&mut draft, observation);
                attempt = 1;
                first = Some(observation);
            }
        }
    }

    let job_name = naming::job_name(&task.name_any(), attempt);
    match &observed.attempt {
        // Waiting out the backoff after a failed attempt (its Job may be gone by now).
        _ if current.next_attempt_time.is_some() => {
            retry_when_due(&mut draft, task, observed, attempt);
        }
        None => {
            let failure = Failure {
                reason: "JobDeleted".into(),
                message: format!("Job {job_name} was deleted before it finished"),
                gave_up: false,
            };
            count_spend(&mut draft, task, attempt, None);
            attempt_failed(&mut draft, task, retry, attempt, &failure, None);
        }
        Some(observation) => match &observation.state {
            AttemptState::Starting | AttemptState::Running | AttemptState::Suspended => {
                in_progress(&mut draft, task, observation, attempt);
            }
            AttemptState::Succeeded if task.spec.approval == Some(Approval::Plan) => {
                count_spend(&mut draft, task, attempt, result_of(observation));
                plan_attempt_succeeded(&mut draft, observation, attempt);
            }
            AttemptState::Succeeded => {
                count_spend(&mut draft, task, attempt, result_of(observation));
                attempt_succeeded(&mut draft, observation, attempt);
            }
            AttemptState::Failed(failure) => {
                let mut failure = failure.clone();
                if let Some(termination) = &observation.termination
                    && crate::observe::gave_up(termination)
                {
                    failure.gave_up = true;
                }
                let result = result_of(observation);
                count_spend(&mut draft, task, attempt, result);
                attempt_failed(&mut draft, task, retry, attempt, &failure, result);
            }
        },
    }
    let mut plan = draft.finish();
    if let Some(first) = first
        && first.state == AttemptState::Starting
        && plan.actions.is_empty()
        && let Some(left) = grace_left(
            first.created.unwrap_or(observed.now),
            FIRST_STATUS_GRACE,
            observed.now,
        )
    {
        plan.defer_status = Some(left);
        plan.requeue_after = Some(left);
    }
    plan
}

/// The first attempt's Job exists but the status does not say so yet (its write waits for
/// the pod, see [`FIRST_STATUS_GRACE`]): records the dispatch as of the Job's creation.
fn adopt_first_attempt(draft: &mut Draft, first: &AttemptObservation) {
    let at = first.created.unwrap_or(*draft.now);
    draft.status.attempt = Some(1);
    draft.status.retries = Some(0);
    draft.status.job_name = Some(first.job_name.clone());
    draft.status.next_attempt_time = None;
    if draft.status.start_time.is_none() {
        draft.status.start_time = Some(Time(at));
    }
    draft.clear_condition(condition::QUEUED, "Dispatched", "a slot was free");
    draft.set_condition_at(
        condition::DISPATCHED,
        true,
        "JobCreated",
        &format!("attempt 1 runs as Job {}", first.job_name),
        at,
    );
}

/// The status recording that the apiserver refused the task's Job (`message` says why);
/// such a task queues behind healthy ones.
pub fn dispatch_failed(task: &AgentTask, message: &str, now: Timestamp) -> AgentTaskStatus {
    let pricing = Pricing::default();
    let egress = crate::egress::EgressInputs::default();
    let mut draft = Draft {
        generation: task.metadata.generation,
        now: &now,
        pricing: &pricing,
        egress: &egress,
        status: task.status.clone().unwrap_or_default(),
        actions: Vec::new(),
        requeue_after: None,
        spent: Vec::new(),
        blocked: Vec::new(),
    };
    draft.status.phase = Some(draft.status.phase.unwrap_or(TaskPhase::Pending));
    draft.status.message = Some(format!("cannot dispatch: {message}"));
    draft.set_condition(
        condition::DISPATCHED,
        false,
        condition::DISPATCH_FAILED,
        message,
    );
    draft.status
}

/// Where a source controller's claim of the task's ticket stands (see
/// [`recac_api::annotations::CLAIM`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// No claim is involved (a task made by a person), or the annotation says `claimed`.
    None,
    Pending,
    /// The annotation says `pending`, but the claim is settled: the status has the
    /// `Claimed` condition, or the caller knows it (the source told this process, or the
    /// first attempt's Job exists).
    Settled,
    Lost,
    /// The ticket is free but no claim transition is offered to the bot.
    Unavailable,
}

/// Reads the claim annotation; `known_claimed` says the caller knows a pending claim is
/// settled.
pub fn claim_state(task: &AgentTask, known_claimed: bool) -> Claim {
    use recac_api::annotations::{CLAIM, CLAIM_LOST, CLAIM_PENDING, CLAIM_UNAVAILABLE};
    match task.annotations().get(CLAIM).map(String::as_str) {
        Some(CLAIM_PENDING)
            if known_claimed
                || recac_runtime::kinds::task_condition_true(task, condition::CLAIMED) =>
        {
            Claim::Settled
        }
        Some(CLAIM_PENDING) => Claim::Pending,
        Some(CLAIM_LOST) => Claim::Lost,
        Some(CLAIM_UNAVAILABLE) => Claim::Unavailable,
        _ => Claim::None,
    }
}

/// The branch the task's agent pushes to.
fn feature_branch(task: &AgentTask) -> String {
    naming::branch_name(
        task.spec.repository.branch.as_deref(),
        task.spec.ticket.as_ref().map(|t| t.key.as_str()),
        &task.name_any(),
    )
}

/// Dispatches `attempt` when not suspended and a slot is free; otherwise explains the wait.
fn dispatch(
    draft: &mut Draft,
    task: &AgentTask,
    observed: &Observation,
    attempt: i32,
    branch: String,
) {
    if budget_stops_dispatch(draft, task, attempt) {
        return;
    }
    let network = match crate::egress::resolve(task, &draft.egress.defaults, &draft.egress.sources)
    {
        Err(err) => {
            let not_run = if attempt == 1 {
                "the task was not run".to_string()
            } else {
                format!("attempt {attempt} is not dispatched")
            };
            draft.fail(condition::EGRESS_NOT_PERMITTED, format!("{err}; {not_run}"));
            return;
        }
        Ok(network) => {
            draft.status.egress = network.rules().map(|rules| EgressStatus {
                allowed: rules.iter().map(ToString::to_string).collect(),
                blocked: Vec::new(),
            });
            network
        }
    };
    draft.status.phase = Some(TaskPhase::Pending);
    if task.spec.suspend {
        draft.status.message = Some(format!(
            "suspended: attempt {attempt} is not dispatched while spec.suspend is true"
        ));
        draft.clear_condition(condition::QUEUED, "Suspended", "spec.suspend is true");
        draft.mark_suspended(true);
        return;
    }
    draft.mark_suspended(false);
    if let Some(hold) = &observed.namespace_hold {
        draft.status.message = Some(format!(
            "queued: attempt {attempt} is not started: {}",
            hold.message
        ));
        draft.set_condition(condition::QUEUED, true, hold.reason, &hold.message);
        draft.requeue_after = Some(hold.recheck_after);
        return;
    }
    if attempt == 1
        && let Some(previous) = &observed.previous_run
    {
        let ticket = task
            .labels()
            .get(recac_api::labels::TICKET)
            .map(String::as_str)
            .unwrap_or_default();
        draft.status.message = Some(format!(
            "queued: attempt 1 waits for {previous}, an earlier run of ticket {ticket}, to finish (runs of a ticket share its branch)"
        ));
        draft.set_condition(
            condition::QUEUED,
            true,
            recac_api::reasons::PREVIOUS_RUN,
            &format!("waiting for the earlier run {previous} of ticket {ticket} to finish"),
        );
        // No timer: the admission queue wakes the task when the earlier run leaves its line.
        return;
    }
    if !observed.admitted {
        draft.status.message = Some(format!(
            "queued: attempt {attempt} waits for a free slot (the operator's maxConcurrentTasks is reached)"
        ));
        draft.set_condition(
            condition::QUEUED,
            true,
            "ConcurrencyLimit",
            "waiting for a free slot under maxConcurrentTasks",
        );
        // No timer per queued task: the admission queue wakes it when a slot is its.
        return;
    }
    let job_name = naming::job_name(&task.name_any(), attempt);
    draft.actions.push(Action::CreateJob {
        attempt,
        branch,
        suspend: false,
        network,
    });
    draft.status.attempt = Some(attempt);
    draft.status.retries = Some(attempt - 1);
    draft.status.job_name = Some(job_name.clone());
    draft.status.next_attempt_time = None;
    if draft.status.start_time.is_none() {
        draft.status.start_time = Some(Time(*draft.now));
    }
    draft.status.message = Some(starting_message(attempt, &job_name));
    draft.clear_condition(condition::QUEUED, "Dispatched", "a slot was free");
    draft.set_condition(
        condition::DISPATCHED,
        true,
        "JobCreated",
        &format!("attempt {attempt} runs as Job {job_name}"),
    );
    // The first dispatch has no Event: the Dispatched condition (with its time) says it, and
    // an Event per task in a burst of new tasks would compete with the Jobs for the
    // apiserver. A retry is rarer and worth its line in `kubectl describe`'s Events.
    if attempt > 1 {
        draft.event(
            EventType::Normal,
            "Retrying",
            format!("created Job {job_name} for attempt {attempt}"),
        );
    }
}

/// Ends the task as its ticket asked: the current attempt's unfinished Job is suspended (its
/// pod gets SIGTERM, so the agent pushes what it has) and nothing is dispatched or retried.
fn stop(draft: &mut Draft, task: &AgentTask, observed: &Observation, request: &StopRequest) {
    let mut attempt = draft.status.attempt.unwrap_or(0);
    if attempt == 0
        && let Some(first) = &observed.attempt
    {
        adopt_first_attempt(draft, first);
        attempt = 1;
    }
    if attempt > 0 && draft.status.branch.is_none() {
        draft.status.branch = Some(feature_branch(task));
    }
    if let Some(job) = &observed.attempt
        && matches!(job.state, AttemptState::Failed(_))
        && attempt > 0
    {
        count_spend(draft, task, attempt, result_of(job));
    }
    let stopped = request.describe();
    let mut note = stopped.clone();
    if let Some(job) = &observed.attempt
        && matches!(job.state, AttemptState::Starting | AttemptState::Running)
    {
        draft.actions.push(Action::SuspendJob {
            name: job.job_name.clone(),
            suspend: true,
        });
        note.push_str(&format!(
            "; suspended Job {} so its agent pushes its work",
            job.job_name
        ));
    }
    let when = if attempt > 0 {
        format!("during attempt {attempt}")
    } else {
        "before its first attempt".to_string()
    };
    draft.status.phase = Some(TaskPhase::Failed);
    draft.status.completion_time = Some(Time(*draft.now));
    draft.status.next_attempt_time = None;
    draft.status.message = Some(format!("{stopped} {when}; it is not retried"));
    draft.clear_condition(condition::QUEUED, recac_api::reasons::STOPPED, &stopped);
    draft.set_condition(
        condition::FAILED,
        true,
        recac_api::reasons::STOPPED,
        &stopped,
    );
    draft.event(EventType::Normal, recac_api::reasons::STOPPED, note);
}

fn retry_when_due(draft: &mut Draft, task: &AgentTask, observed: &Observation, attempt: i32) {
    let due = draft
        .status
        .next_attempt_time
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(observed.now);
    if observed.now < due {
        let wait = observed.now.duration_until(due);
        draft.requeue_after = Some(
            Duration::try_from(wait)
                .unwrap_or(Duration::ZERO)
                .max(Duration::from_millis(100)),
        );
        return;
    }
    let branch = draft
        .status
        .branch
        .clone()
        .unwrap_or_else(|| feature_branch(task));
    dispatch(draft, task, observed, attempt + 1, branch);
}

fn in_progress(
    draft: &mut Draft,
    task: &AgentTask,
    observation: &AttemptObservation,
    attempt: i32,
) {
    let job_name = &observation.job_name;
    draft.note_network(task);
    let suspended = observation.state == AttemptState::Suspended;
    if task.spec.suspend {
        if !suspended {
            draft.actions.push(Action::SuspendJob {
                name: job_name.clone(),
                suspend: true,
            });
            draft.event(
                EventType::Normal,
                "Suspended",
                format!("suspended Job {job_name}"),
            );
        }
        draft.status.phase = Some(TaskPhase::Pending);
        draft.status.message = Some(format!(
            "suspended: Job {job_name} of attempt {attempt} is suspended while spec.suspend is true"
        ));
        draft.mark_suspended(true);
        return;
    }
    draft.mark_suspended(false);
    if suspended {
        draft.actions.push(Action::SuspendJob {
            name: job_name.clone(),
            suspend: false,
        });
        draft.event(
            EventType::Normal,
            "Resumed",
            format!("resumed Job {job_name}"),
        );
        draft.status.phase = Some(TaskPhase::Pending);
        draft.status.message = Some(format!("attempt {attempt}: Job {job_name} resumed"));
        return;
    }
    if observation.state == AttemptState::Running {
        draft.status.phase = Some(TaskPhase::Running);
        draft.status.message = Some(format!("attempt {attempt} is running in Job {job_name}"));
    } else {
        draft.status.phase = Some(TaskPhase::Pending);
        draft.status.message = Some(starting_message(attempt, job_name));
    }
}

/// The message from dispatch until the pod runs (one text, so no extra status write).
fn starting_message(attempt: i32, job_name: &str) -> String {
    format!("attempt {attempt} dispatched as Job {job_name}; waiting for its pod to start")
}

fn copy_result(status: &mut AgentTaskStatus, result: &AgentResult) {
    if let Some(branch) = &result.branch {
        status.branch = Some(branch.clone());
    }
    if let Some(commit) = &result.commit {
        status.commit = Some(commit.clone());
    }
    if let Some(url) = &result.pull_request_url {
        status.pull_request_url = Some(url.clone());
    }
}

/// A successful attempt of a task that does the work. Its result's outcome is not read: a
/// `planned` outcome (an agent that planned although the task does not ask for a plan)
/// counts as the success the Job says it is, and its plan is not kept.
fn attempt_succeeded(draft: &mut Draft, observation: &AttemptObservation, attempt: i32) {
    let result = observation
        .termination
        .as_ref()
        .and_then(|t| t.result.clone());
    if let Some(result) = &result {
        copy_result(&mut draft.status, result);
    }
    // A success ends what an earlier attempt left partial.
    draft.status.partial = cut_short(result.as_ref()).map(|_| true);
    let summary = result
        .as_ref()
        .and_then(|r| r.summary.clone())
        .map(|s| format!(": {}", one_line(&s, 300)))
        .unwrap_or_default();
    draft.status.phase = Some(TaskPhase::Succeeded);
    draft.status.completion_time = Some(Time(*draft.now));
    draft.status.message = Some(format!("attempt {attempt} succeeded{summary}"));
    draft.set_condition(
        condition::SUCCEEDED,
        true,
        "AgentSucceeded",
        &format!("attempt {attempt} succeeded"),
    );
    draft.event(
        EventType::Normal,
        "Succeeded",
        format!("attempt {attempt} (Job {}) succeeded", observation.job_name),
    );
}

/// A planning run's successful attempt: its plan waits for approval (`AwaitingApproval`,
/// not complete: the decision on the plan ends the task). An agent that reports no plan is
/// not a planning agent, so another attempt would not write one either: the task fails.
fn plan_attempt_succeeded(draft: &mut Draft, observation: &AttemptObservation, attempt: i32) {
    let result = observation
        .termination
        .as_ref()
        .and_then(|t| t.result.as_ref());
    if let Some(result) = result {
        copy_result(&mut draft.status, result);
    }
    draft.status.partial = None;
    let plan = result
        .filter(|r| r.outcome == Outcome::Planned)
        .and_then(|r| r.plan.as_ref())
        .filter(|plan| !plan.trim().is_empty());
    if let Some(plan) = plan {
        draft.status.plan = Some(plan.clone());
        draft.status.phase = Some(TaskPhase::AwaitingApproval);
        draft.status.next_attempt_time = None;
        draft.status.message = Some(plan_waiting_message(attempt));
        draft.set_condition(
            condition::PLAN_READY,
            true,
            condition::PLAN_WRITTEN,
            &format!(
                "attempt {attempt} wrote a plan (status.plan); set the {} annotation to {} or {}",
                recac_api::annotations::APPROVAL,
                recac_api::annotations::APPROVED,
                recac_api::annotations::REJECTED
            ),
        );
        draft.event(
            EventType::Normal,
            condition::PLAN_READY,
            format!(
                "attempt {attempt} (Job {}) wrote a plan; it waits for approval",
                observation.job_name
            ),
        );
        return;
    }
    let reported = match result {
        None => "no result".to_string(),
        Some(r) if r.outcome == Outcome::Planned => "an empty plan".to_string(),
        Some(r) => format!("outcome {}", outcome_name(&r.outcome)),
    };
    let message = format!(
        "attempt {attempt} succeeded, but the agent reported no plan ({reported}): a planning task needs an agent that writes a plan in plan mode, so it is not retried"
    );
    draft.status.phase = Some(TaskPhase::Failed);
    draft.status.completion_time = Some(Time(*draft.now));
    draft.status.next_attempt_time = None;
    draft.status.message = Some(message.clone());
    draft.set_condition(condition::FAILED, true, condition::NO_PLAN, &message);
    draft.event(EventType::Warning, condition::NO_PLAN, message);
}

/// The message of a task whose plan waits for approval.
fn plan_waiting_message(attempt: i32) -> String {
    format!("attempt {attempt} wrote a plan; it waits for approval")
}

/// An outcome as the agent's result spells it.
fn outcome_name(outcome: &Outcome) -> String {
    serde_json::to_value(outcome)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{outcome:?}"))
}

/// A task whose plan waits for approval: the [`recac_api::annotations::APPROVAL`]
/// annotation ends it `Succeeded` (approved) or `Failed` (rejected). Without it nothing
/// changes; a value it does not understand is named in the message, and the plan waits on.
fn await_approval(draft: &mut Draft, task: &AgentTask) {
    use recac_api::annotations::{APPROVAL, APPROVAL_BY, APPROVED, REJECTED};
    use recac_api::reasons::{PLAN_APPROVED, PLAN_REJECTED};
    let annotations = task.annotations();
    let Some(decision) = annotations.get(APPROVAL).map(|d| d.trim()) else {
        // The message as the plan was written (a value not understood may have replaced it).
        if let Some(attempt) = draft.status.attempt {
            draft.status.message = Some(plan_waiting_message(attempt));
        }
        return;
    };
    let by = annotations
        .get(APPROVAL_BY)
        .map(|by| by.trim())
        .filter(|by| !by.is_empty())
        .unwrap_or("someone");
    let (phase, type_, reason, verdict) = match decision {
        APPROVED => (
            TaskPhase::Succeeded,
            condition::SUCCEEDED,
            PLAN_APPROVED,
            "approved",
        ),
        REJECTED => (
            TaskPhase::Failed,
            condition::FAILED,
            PLAN_REJECTED,
            "rejected",
        ),
        other => {
            draft.status.message = Some(format!(
                "the plan waits for approval: {APPROVAL}={:?} is not understood (set it to {APPROVED} or {REJECTED})",
                one_line(other, 100)
            ));
            return;
        }
    };
    let message = format!("the plan was {verdict} by {by}");
    draft.status.phase = Some(phase);
    draft.status.completion_time = Some(Time(*draft.now));
    draft.status.message = Some(message.clone());
    draft.set_condition(type_, true, reason, &message);
    draft.event(EventType::Normal, reason, message);
}

fn attempt_failed(
    draft: &mut Draft,
    task: &AgentTask,
    retry: &RetryPolicy,
    attempt: i32,
    failure: &Failure,
    result: Option<&AgentResult>,
) {
    if let Some(result) = result {
        copy_result(&mut draft.status, result);
    }
    let cut = cut_short(result);
    if cut.is_some() {
        draft.status.partial = Some(true);
    }
    let work = work_so_far(&draft.status);
    if cut == Some(CutShort::Budget) {
        let left = result
            .and_then(|r| r.partial.as_ref())
            .and_then(|p| p.left.as_deref())
            .map(|left| format!(" (left to do: {})", one_line(left, 200)))
            .unwrap_or_default();
        draft.fail(
            BUDGET_EXHAUSTED,
            format!(
                "attempt {attempt} stopped at the task's budget (spec.budget){left}; {work}; it is not retried"
            ),
        );
        return;
    }
    let deadline = cut == Some(CutShort::Deadline) || failure.reason == DEADLINE_EXCEEDED;
    let detail = if cut == Some(CutShort::Deadline) {
        format!("cut short by its deadline; {work}")
    } else if failure.message.is_empty() {
        failure.reason.clone()
    } else {
        format!("{}: {}", failure.reason, one_line(&failure.message, 300))
    };
    let retries_used = attempt - 1;
    if !failure.gave_up && retries_used < task.spec.max_retries {
        if let Some(limit) = budget_spent(draft, task) {
            draft.fail(
                BUDGET_EXHAUSTED,
                format!(
                    "attempt {attempt} failed ({detail}), and the task's budget is spent (spec.budget.{limit}); it is not retried"
                ),
            );
            return;
        }
        let wait = retry.backoff(attempt);
        let due = draft
            .now
            .checked_add(SignedDuration::try_from(wait).unwrap_or(SignedDuration::ZERO))
            .unwrap_or(*draft.now);
        draft.status.phase = Some(TaskPhase::Pending);
        draft.status.next_attempt_time = Some(Time(due));
        draft.status.message = Some(format!(
            "attempt {attempt} failed ({detail}); attempt {} in {}s",
            attempt + 1,
            wait.as_secs()
        ));
        draft.set_condition(
            condition::DISPATCHED,
            false,
            "AttemptFailed",
            &format!("attempt {attempt} failed: {}", failure.reason),
        );
        draft.event(
            EventType::Warning,
            "AttemptFailed",
            format!(
                "attempt {attempt} failed ({detail}); retrying in {}s",
                wait.as_secs()
            ),
        );
        draft.requeue_after = Some(wait);
        return;
    }
    if deadline && !failure.gave_up {
        let message = if cut.is_some() {
            format!("attempt {attempt} was {detail}; no retries left")
        } else {
            format!("attempt {attempt} failed ({detail}); no retries left")
        };
        draft.fail(DEADLINE_EXCEEDED, message);
        return;
    }
    let (reason, why) = if failure.gave_up {
        ("GaveUp", "the agent gave up, so it is not retried")
    } else {
        ("RetriesExhausted", "no retries left")
    };
    draft.status.phase = Some(TaskPhase::Failed);
    draft.status.completion_time = Some(Time(*draft.now));
    draft.status.next_attempt_time = None;
    draft.status.message = Some(format!("attempt {attempt} failed ({detail}); {why}"));
    draft.set_condition(
        condition::FAILED,
        true,
        reason,
        &format!("attempt {attempt} failed: {}; {why}", failure.reason),
    );
    draft.event(
        EventType::Warning,
        "Failed",
        format!("attempt {attempt} failed ({detail}); {why}"),
    );
}

/// The agent's result of a finished attempt.
fn result_of(observation: &AttemptObservation) -> Option<&AgentResult> {
    observation
        .termination
        .as_ref()
        .and_then(|t| t.result.as_ref())
}

/// What cut a run short, for a result with outcome `partial` (one that does not say: its
/// deadline).
fn cut_short(result: Option<&AgentResult>) -> Option<CutShort> {
    let result = result.filter(|r| r.outcome == Outcome::Partial)?;
    Some(
        result
            .partial
            .as_ref()
            .map_or(CutShort::Deadline, |p| p.cause),
    )
}

/// Where a partial attempt's work is, for people.
fn work_so_far(status: &AgentTaskStatus) -> String {
    match (&status.branch, &status.commit) {
        (Some(branch), Some(commit)) => {
            format!("its work so far is on branch {branch} at commit {commit}")
        }
        (Some(branch), None) => format!("its work so far is on branch {branch}"),
        _ => "it pushed no work".to_string(),
    }
}

/// Counts the finished `attempt`'s spend in `status.spend`, once: only an attempt after the
/// last one counted (`spend.attempts`) is added, so a decision made again (a status write
/// that failed, a restart) adds nothing twice. An attempt whose agent reported no usage,
/// or that left no result, is counted as not reported (as is one skipped before it).
fn count_spend(draft: &mut Draft, task: &AgentTask, attempt: i32, result: Option<&AgentResult>) {
    let counted = draft.status.spend.as_ref().map_or(0, |s| s.attempts);
    if attempt <= counted {
        return;
    }
    draft.note_network(task);
    if let Some(result) = result
        && !result.egress_blocked.is_empty()
    {
        let egress = draft
            .status
            .egress
            .get_or_insert_with(EgressStatus::default);
        egress.blocked = result.egress_blocked.clone();
        draft.blocked = result.egress_blocked.clone();
    }
    let pricing = draft.pricing;
    let (provider, _) = pricing.task_model(task);
    let spend = draft.status.spend.get_or_insert_with(Spend::default);
    spend.not_reported = spend
        .not_reported
        .saturating_add(attempt.saturating_sub(counted).saturating_sub(1));
    spend.attempts = attempt;
    match result.and_then(|r| r.usage.as_deref()) {
        Some(usage) => {
            let added = budget::add_usage(spend, usage, pricing, provider);
            draft.spent.extend(added);
        }
        None => spend.not_reported = spend.not_reported.saturating_add(1),
    }
}

/// The `spec.budget` key of a limit the task's counted spend has used up.
fn budget_spent(draft: &Draft, task: &AgentTask) -> Option<&'static str> {
    let budget = task.spec.budget.as_ref()?;
    let price = draft.pricing.task_price(task);
    budget::remaining(budget, draft.status.spend.as_ref(), price)
        .ok()?
        .exhausted()
}

/// Before `attempt` is dispatched: a task held to a cost its model has no price for, or
/// whose budget is spent, ends `Failed` instead (true).
fn budget_stops_dispatch(draft: &mut Draft, task: &AgentTask, attempt: i32) -> bool {
    let Some(budget) = &task.spec.budget else {
        return false;
    };
    let not_run = if attempt == 1 {
        "the task was not run".to_string()
    } else {
        format!("attempt {attempt} is not dispatched")
    };
    let price = draft.pricing.task_price(task);
    if budget.cost.is_some() && price.is_none() {
        let model = draft.pricing.describe_task_model(task);
        draft.fail(
            condition::BUDGET_UNPRICED,
            format!(
                "spec.budget.cost needs a price for the task's model {model}, and the operator's agent.prices has none; {not_run}"
            ),
        );
        return true;
    }
    match budget::remaining(budget, draft.status.spend.as_ref(), price) {
        Err(err) => {
            draft.fail(
                condition::BUDGET_INVALID,
                format!("spec.budget.cost: {err}; {not_run}"),
            );
            true
        }
        Ok(left) => match left.exhausted() {
            Some(limit) => {
                draft.fail(
                    BUDGET_EXHAUSTED,
                    format!(
                        "the task's budget is spent (spec.budget.{limit}, by its attempts so far); {not_run}"
                    ),
                );
                true
            }
            None => false,
        },
    }
}

/// `text` on one line, cut to at most `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        flat
    } else {
        let cut: String = flat.chars().take(max).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests;
