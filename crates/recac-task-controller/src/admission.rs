//! The concurrency cap: how many tasks may have a live Job at once, and which waiting task
//! gets the next free slot (oldest first; tasks whose dispatch keeps failing last).
//!
//! [`AdmissionQueue`] is an index kept in step with the AgentTask cache (it is a
//! [`CacheHook`]), so a decision never scans the tasks:
//! - `holders` counts the tasks whose current attempt has a Job that is not finished;
//! - `waiting` is an ordered set of the tasks that want a slot;
//! - `grants` are slots handed to waiting tasks that have not dispatched yet (the cache
//!   does not show their new attempt): a granted slot counts as taken until the cache shows
//!   the task holding it, finishing or gone, or until it expires;
//! - `tickets` lines up the unfinished tasks of each ticket (label `recac.io/ticket`) by run:
//!   runs of a ticket share its branch, so a task's first attempt waits (outside `waiting`)
//!   while an earlier run is in its ticket's line.
//!
//! Free slots are handed out by [`AdmissionQueue::fill`]: it pops the oldest waiting tasks
//! (O(log N) each) and wakes them. A task freeing its slot (finished, deleted) fills at once,
//! so the next task in line dispatches without polling; likewise a run leaving its ticket's
//! line wakes the run after it. Grants belong to one term of the controller:
//! [`AdmissionQueue::start_term`] drops those of an earlier term.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use recac_api::labels::{RUN, TICKET};
use recac_api::{AgentTask, TaskPhase};
use recac_runtime::claims::ClaimBoard;
use recac_runtime::{CacheChange, CacheHook};
use tokio::sync::mpsc::UnboundedSender;

use crate::decide::condition;

/// How long a granted slot counts before the cache shows the task's dispatch.
const GRANT_TTL: Duration = Duration::from_secs(60);

fn key(task: &AgentTask) -> String {
    format!(
        "{}/{}",
        task.namespace().unwrap_or_default(),
        task.name_any()
    )
}

fn finished(task: &AgentTask) -> bool {
    task.status
        .as_ref()
        .and_then(|s| s.phase)
        .is_some_and(TaskPhase::is_finished)
}

fn attempt_of(task: &AgentTask) -> i32 {
    task.status.as_ref().and_then(|s| s.attempt).unwrap_or(0)
}

/// The task's last dispatch was rejected (a `DispatchFailed` condition).
fn dispatch_failing(task: &AgentTask) -> bool {
    task.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == condition::DISPATCHED && c.reason == condition::DISPATCH_FAILED)
    })
}

/// The task has a Job that is not finished: it holds a slot.
pub fn holds_slot(task: &AgentTask) -> bool {
    let Some(status) = &task.status else {
        return false;
    };
    status.attempt.unwrap_or(0) > 0
        && status.next_attempt_time.is_none()
        && !finished(task)
        && task.metadata.deletion_timestamp.is_none()
}

/// The task needs a slot now: never dispatched, or its retry is due. `known_claimed`:
/// the task's pending claim is known to be settled (see [`crate::decide::claim_state`]).
pub fn wants_slot(task: &AgentTask, now: Timestamp, known_claimed: bool) -> bool {
    use crate::decide::Claim;
    if finished(task)
        || task.spec.suspend
        || crate::decide::StopRequest::of(task).is_some()
        || task.metadata.deletion_timestamp.is_some()
        || !matches!(
            crate::decide::claim_state(task, known_claimed),
            Claim::None | Claim::Settled
        )
    {
        return false;
    }
    let Some(status) = &task.status else {
        return true;
    };
    if status.attempt.unwrap_or(0) == 0 {
        return true;
    }
    status
        .next_attempt_time
        .as_ref()
        .is_some_and(|due| due.0 <= now)
}

/// A waiting task's place in line: failing dispatches last, then oldest first.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Place {
    failing: bool,
    created: Option<Timestamp>,
    key: String,
}

impl Place {
    fn of(task: &AgentTask) -> Self {
        Self {
            failing: dispatch_failing(task),
            created: task.creation_timestamp().map(|t| t.0),
            key: key(task),
        }
    }
}

/// A ticket, within its namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct TicketKey {
    namespace: String,
    ticket: String,
}

/// A task's place in its ticket's line: lower run numbers first; tasks without a parsable
/// run number after the numbered ones. Ties go by creation, then name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct RunPlace {
    run: u64,
    created: Option<Timestamp>,
    name: String,
}

/// The ticket line `task` belongs in: tasks with a ticket label that are unfinished and not
/// being deleted.
fn ticket_place(task: &AgentTask) -> Option<(TicketKey, RunPlace)> {
    if finished(task) || task.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let labels = task.labels();
    let ticket = labels.get(TICKET)?;
    let run = labels
        .get(RUN)
        .and_then(|run| run.trim().parse().ok())
        .unwrap_or(u64::MAX);
    Some((
        TicketKey {
            namespace: task.namespace().unwrap_or_default(),
            ticket: ticket.clone(),
        },
        RunPlace {
            run,
            created: task.creation_timestamp().map(|t| t.0),
            name: task.name_any(),
        },
    ))
}

/// The unfinished tasks of each ticket, in run order.
#[derive(Default)]
struct TicketLines {
    lines: HashMap<TicketKey, BTreeSet<RunPlace>>,
    /// Each lined-up task's line and place, by task key.
    places: HashMap<String, (TicketKey, RunPlace)>,
}

impl TicketLines {
    /// Puts the task `task_key` at `place` (`None`: in no line). Returns the keys of the tasks
    /// whose predecessor in their line changed: each gets a new place in the line's order.
    fn set(&mut self, task_key: &str, place: Option<(TicketKey, RunPlace)>) -> Vec<String> {
        if self.places.get(task_key) == place.as_ref() {
            return Vec::new();
        }
        let mut moved = Vec::new();
        if let Some((ticket, old)) = self.places.remove(task_key)
            && let Some(line) = self.lines.get_mut(&ticket)
        {
            line.remove(&old);
            if let Some(next) = line.range(&old..).next() {
                moved.push(task_key_of(&ticket, next));
            }
            if line.is_empty() {
                self.lines.remove(&ticket);
            }
        }
        if let Some((ticket, new)) = place {
            let line = self.lines.entry(ticket.clone()).or_default();
            if let Some(next) = line.range(&new..).next() {
                moved.push(task_key_of(&ticket, next));
            }
            line.insert(new.clone());
            self.places.insert(task_key.to_string(), (ticket, new));
        }
        moved
    }

    /// The task just before `task_key` in its ticket's line.
    fn previous(&self, task_key: &str) -> Option<&RunPlace> {
        let (ticket, place) = self.places.get(task_key)?;
        self.lines.get(ticket)?.range(..place).next_back()
    }
}

fn task_key_of(ticket: &TicketKey, place: &RunPlace) -> String {
    format!("{}/{}", ticket.namespace, place.name)
}

/// What the index keeps of a task that holds or wants a slot (nothing for the others).
struct Tracked {
    holds: bool,
    waiting: Option<Place>,
    attempt: i32,
}

struct Grant {
    /// The attempt the task dispatches with this slot.
    attempt: i32,
    at: Instant,
}

#[derive(Default)]
struct Inner {
    tracked: HashMap<String, Tracked>,
    holders: usize,
    waiting: BTreeSet<Place>,
    grants: HashMap<String, Grant>,
    /// Grants in the order given, for expiry without a scan.
    grant_order: VecDeque<(String, Instant)>,
    tickets: TicketLines,
    waker: Option<UnboundedSender<ObjectRef<AgentTask>>>,
}

/// Hands out slots under the cap; see the module docs.
pub struct AdmissionQueue {
    cap: usize,
    inner: Mutex<Inner>,
    claims: Arc<ClaimBoard>,
}

/// Figures for metrics and the benchmark.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueFigures {
    pub holding: usize,
    pub waiting: usize,
    pub granted: usize,
}

impl AdmissionQueue {
    /// `claims`: the claims settled in this process, which let a task whose claim
    /// annotation still says `pending` into the line.
    pub fn new(cap: usize, claims: Arc<ClaimBoard>) -> Self {
        Self {
            cap,
            inner: Mutex::new(Inner::default()),
            claims,
        }
    }

    /// Whether `task` wants a slot now (see [`wants_slot`]): not while its first attempt
    /// waits for an earlier run of its ticket.
    pub fn wants_slot(&self, task: &AgentTask, now: Timestamp) -> bool {
        let claimed = task.uid().is_some_and(|uid| self.claims.is_claimed(&uid));
        let waits = self
            .inner
            .lock()
            .is_ok_and(|inner| inner.waits_for_previous_run(&key(task), attempt_of(task)));
        !waits && wants_slot(task, now, claimed)
    }

    /// The name of the unfinished run of the same ticket just before `task`, if any.
    pub fn previous_run(&self, task: &AgentTask) -> Option<String> {
        let inner = self.inner.lock().ok()?;
        inner
            .tickets
            .previous(&key(task))
            .map(|place| place.name.clone())
    }

    /// Re-reads `task` (its claim was settled, which the cache does not show).
    pub fn refresh(&self, task: &AgentTask) {
        self.upsert(task);
    }

    /// `task`'s first attempt has a Job that its status does not show yet: it holds a slot
    /// (counted as a grant, until the cache shows it) whatever the cap says.
    pub fn hold(&self, task: &AgentTask) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.hold(key(task));
        }
    }

    pub fn figures(&self) -> QueueFigures {
        self.inner
            .lock()
            .map(|inner| QueueFigures {
                holding: inner.holders,
                waiting: inner.waiting.len(),
                granted: inner.grants.len(),
            })
            .unwrap_or_default()
    }

    /// A new term: grants of an earlier term are void; woken tasks go to `waker`. `held`
    /// are the keys (`namespace/name`) of tasks whose first attempt has a Job that their
    /// status does not show yet: they hold their slots before any is handed out.
    pub fn start_term(&self, waker: UnboundedSender<ObjectRef<AgentTask>>, held: Vec<String>) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.grants.clear();
            inner.grant_order.clear();
            for key in held {
                inner.hold(key);
            }
            inner.waker = Some(waker);
            inner.fill(self.cap);
        }
    }

    /// The term ended: nobody is woken until the next one.
    pub fn end_term(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.waker = None;
            inner.grants.clear();
            inner.grant_order.clear();
        }
    }

    /// Whether `task` (which wants a slot now) may dispatch. A yes keeps the slot granted
    /// until the cache shows the dispatch, or [`AdmissionQueue::release`] gives it back.
    pub fn try_admit(&self, task: &AgentTask) -> bool {
        let Ok(mut inner) = self.inner.lock() else {
            return false;
        };
        let inner = &mut *inner;
        inner.expire_grants();
        let key = key(task);
        if inner.grants.contains_key(&key) {
            return true;
        }
        // A retry that became due since the task's last change joins the line now.
        let tracked = inner.tracked.entry(key.clone()).or_insert(Tracked {
            holds: false,
            waiting: None,
            attempt: attempt_of(task),
        });
        if tracked.waiting.is_none() && !tracked.holds {
            let place = Place::of(task);
            tracked.waiting = Some(place.clone());
            inner.waiting.insert(place);
        }
        inner.fill(self.cap);
        inner.grants.contains_key(&key)
    }

    /// Gives back a slot granted to `task` for a dispatch that did not happen. The task
    /// leaves the line until its next decision.
    pub fn release(&self, task: &AgentTask) {
        if let Ok(mut inner) = self.inner.lock() {
            let key = key(task);
            inner.grants.remove(&key);
            if let Some(tracked) = inner.tracked.get_mut(&key)
                && let Some(place) = tracked.waiting.take()
            {
                inner.waiting.remove(&place);
            }
            inner.fill(self.cap);
        }
    }

    /// Hands free slots to the oldest waiting tasks and wakes them.
    pub fn fill(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.fill(self.cap);
        }
    }

    fn upsert(&self, task: &AgentTask) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let inner = &mut *inner;
        let key = key(task);
        let holds = holds_slot(task);
        let attempt = attempt_of(task);
        let moved = inner.tickets.set(&key, ticket_place(task));
        let claimed = task.uid().is_some_and(|uid| self.claims.is_claimed(&uid));
        let wants = !holds
            && !inner.waits_for_previous_run(&key, attempt)
            && wants_slot(task, Timestamp::now(), claimed);
        let (held_before, place_before) = match inner.tracked.remove(&key) {
            Some(t) => (t.holds, t.waiting),
            None => (false, None),
        };
        if let Some(place) = &place_before {
            inner.waiting.remove(place);
        }
        if let Some(grant) = inner.grants.get(&key)
            && (attempt >= grant.attempt || finished(task) || !wants && !holds)
        {
            inner.grants.remove(&key);
        }
        let place = (wants && !inner.grants.contains_key(&key)).then(|| Place::of(task));
        if let Some(place) = &place {
            inner.waiting.insert(place.clone());
        }
        match (held_before, holds) {
            (false, true) => inner.holders += 1,
            (true, false) => inner.holders = inner.holders.saturating_sub(1),
            _ => {}
        }
        if holds || place.is_some() || inner.grants.contains_key(&key) {
            inner.tracked.insert(
                key,
                Tracked {
                    holds,
                    waiting: place,
                    attempt,
                },
            );
        }
        inner.runs_moved(moved);
        inner.fill(self.cap);
    }

    fn delete(&self, task: &AgentTask) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let key = key(task);
        if let Some(tracked) = inner.tracked.remove(&key) {
            if tracked.holds {
                inner.holders = inner.holders.saturating_sub(1);
            }
            if let Some(place) = tracked.waiting {
                inner.waiting.remove(&place);
            }
        }
        inner.grants.remove(&key);
        let moved = inner.tickets.set(&key, None);
        inner.runs_moved(moved);
        inner.fill(self.cap);
    }
}

impl Inner {
    /// A grant for attempt 1 that no cap check gave: the Job exists already.
    fn hold(&mut self, key: String) {
        if let Some(tracked) = self.tracked.get_mut(&key)
            && let Some(place) = tracked.waiting.take()
        {
            self.waiting.remove(&place);
        }
        if self.grants.contains_key(&key) {
            return;
        }
        let now = Instant::now();
        self.grant_order.push_back((key.clone(), now));
        self.grants.insert(
            key,
            Grant {
                attempt: 1,
                at: now,
            },
        );
    }

    /// Whether the task `key` (at `attempt`) waits for an earlier run of its ticket: only its
    /// first attempt does; retries keep the branch they already have.
    fn waits_for_previous_run(&self, key: &str, attempt: i32) -> bool {
        attempt == 0 && self.tickets.previous(key).is_some()
    }

    /// The tasks `keys` got a new predecessor in their ticket's line: one that now waits for
    /// an earlier run gives up its place and slot (a Job it made meanwhile holds one again
    /// when its reconcile sees it), and each is woken (it may dispatch now, or its status
    /// names another run).
    fn runs_moved(&mut self, keys: Vec<String>) {
        for key in keys {
            let waits = self
                .tracked
                .get(&key)
                .is_some_and(|t| self.waits_for_previous_run(&key, t.attempt));
            // A first attempt holds no slot, so nothing of the task stays tracked.
            if waits && let Some(tracked) = self.tracked.remove(&key) {
                if let Some(place) = tracked.waiting {
                    self.waiting.remove(&place);
                }
                self.grants.remove(&key);
            }
            self.wake(&key);
        }
    }

    fn wake(&self, key: &str) {
        if let Some(waker) = &self.waker
            && let Some((namespace, name)) = key.split_once('/')
        {
            let _ = waker.send(ObjectRef::new(name).within(namespace));
        }
    }

    fn expire_grants(&mut self) {
        while let Some((key, at)) = self.grant_order.front() {
            if at.elapsed() < GRANT_TTL {
                break;
            }
            if self.grants.get(key).is_some_and(|g| g.at == *at) {
                self.grants.remove(key);
            }
            self.grant_order.pop_front();
        }
    }

    fn fill(&mut self, cap: usize) {
        // Slots are handed out only during a term: at its start every task the cache holds
        // is in line, so the oldest win even if the cache listed them in another order.
        if self.waker.is_none() {
            return;
        }
        self.expire_grants();
        while self.holders + self.grants.len() < cap {
            let Some(place) = self.waiting.pop_first() else {
                break;
            };
            let now = Instant::now();
            let attempt = match self.tracked.get_mut(&place.key) {
                Some(tracked) => {
                    tracked.waiting = None;
                    tracked.attempt + 1
                }
                None => 1,
            };
            self.grant_order.push_back((place.key.clone(), now));
            self.wake(&place.key);
            self.grants.insert(place.key, Grant { attempt, at: now });
        }
    }
}

impl CacheHook<AgentTask> for AdmissionQueue {
    fn apply(&self, change: CacheChange<'_, AgentTask>) {
        match change {
            CacheChange::Upsert(task) => self.upsert(task),
            CacheChange::Delete(task) => self.delete(task),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use recac_api::{AgentTaskSpec, AgentTaskStatus, Repository};

    fn task(name: &str, created_second: i64) -> AgentTask {
        let mut task = AgentTask::new(
            name,
            AgentTaskSpec {
                prompt: Some("p".into()),
                ticket: None,
                repository: Repository {
                    url: "https://git.example.com/o/r.git".into(),
                    base_branch: None,
                    branch: None,
                },
                agent: None,
                max_retries: 2,
                timeout_seconds: 600,
                ttl_seconds_after_finished: None,
                suspend: false,
                approval: None,
                budget: None,
                egress: None,
            },
        );
        task.metadata.namespace = Some("ns".into());
        task.metadata.creation_timestamp = Some(Time(
            Timestamp::from_second(1_800_000_000 + created_second).expect("time"),
        ));
        task
    }

    fn dispatched(mut task: AgentTask, attempt: i32) -> AgentTask {
        task.status = Some(AgentTaskStatus {
            phase: Some(TaskPhase::Pending),
            attempt: Some(attempt),
            ..Default::default()
        });
        task
    }

    fn finished_task(mut task: AgentTask) -> AgentTask {
        task.status = Some(AgentTaskStatus {
            phase: Some(TaskPhase::Succeeded),
            attempt: Some(1),
            ..Default::default()
        });
        task
    }

    fn woken(rx: &mut tokio::sync::mpsc::UnboundedReceiver<ObjectRef<AgentTask>>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(r) = rx.try_recv() {
            out.push(r.name);
        }
        out
    }

    #[test]
    fn the_oldest_waiting_tasks_get_the_slots_and_a_freed_slot_wakes_the_next() {
        let queue = AdmissionQueue::new(2, Default::default());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let tasks: Vec<AgentTask> = (0..4).map(|i| task(&format!("t{i}"), 10 - i)).collect();
        // Listed by the cache newest first; the oldest (t3, t2) still win.
        for t in &tasks {
            queue.apply(CacheChange::Upsert(t));
        }
        queue.start_term(tx, Vec::new());
        let granted = woken(&mut rx);
        assert_eq!(granted.len(), 2);
        assert!(queue.try_admit(&tasks[3]), "t3 is oldest");
        assert!(queue.try_admit(&tasks[2]));
        assert!(!queue.try_admit(&tasks[1]), "cap reached");
        assert!(!queue.try_admit(&tasks[0]));
        // t3 and t2 dispatch: the cache shows them holding; the grants turn into holds.
        queue.apply(CacheChange::Upsert(&dispatched(tasks[3].clone(), 1)));
        queue.apply(CacheChange::Upsert(&dispatched(tasks[2].clone(), 1)));
        assert_eq!(
            queue.figures(),
            QueueFigures {
                holding: 2,
                waiting: 2,
                granted: 0
            }
        );
        assert!(!queue.try_admit(&tasks[1]));
        // t3 finishes: t1 (next oldest) is woken at once, without polling.
        queue.apply(CacheChange::Upsert(&finished_task(tasks[3].clone())));
        assert_eq!(woken(&mut rx), vec!["t1".to_string()]);
        assert!(queue.try_admit(&tasks[1]));
        assert!(!queue.try_admit(&tasks[0]));
        // t2 is deleted: t0 is woken.
        queue.apply(CacheChange::Delete(&dispatched(tasks[2].clone(), 1)));
        assert_eq!(woken(&mut rx), vec!["t0".to_string()]);
    }

    #[test]
    fn a_released_slot_goes_to_the_next_and_failing_tasks_queue_last() {
        let queue = AdmissionQueue::new(1, Default::default());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let old = task("old", 0);
        let new = task("new", 5);
        queue.apply(CacheChange::Upsert(&new));
        queue.apply(CacheChange::Upsert(&old));
        queue.start_term(tx, Vec::new());
        assert_eq!(woken(&mut rx), vec!["old".to_string()]);
        assert!(queue.try_admit(&old));
        // Its Job is refused: the slot goes back and the next task gets it.
        queue.release(&old);
        assert_eq!(woken(&mut rx), vec!["new".to_string()]);
        assert!(queue.try_admit(&new));
        assert!(!queue.try_admit(&old));
    }

    #[test]
    fn a_new_term_voids_old_grants_and_memory_follows_live_tasks_only() {
        let queue = AdmissionQueue::new(1, Default::default());
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        queue.start_term(tx, Vec::new());
        let a = task("a", 0);
        queue.apply(CacheChange::Upsert(&a));
        assert!(queue.try_admit(&a));
        let (tx, _rx2) = tokio::sync::mpsc::unbounded_channel();
        queue.start_term(tx, Vec::new());
        assert_eq!(queue.figures().granted, 0);
        assert!(queue.try_admit(&a));
        queue.apply(CacheChange::Upsert(&finished_task(a.clone())));
        queue.apply(CacheChange::Delete(&finished_task(a)));
        let tracked = queue.inner.lock().map(|i| i.tracked.len()).unwrap_or(1);
        assert_eq!(tracked, 0, "finished and deleted tasks leave no trace");
    }

    #[test]
    fn a_first_job_without_status_holds_its_slot_from_the_terms_start() {
        let queue = AdmissionQueue::new(1, Default::default());
        let running = task("running", 0);
        let waiting = task("waiting", 1);
        queue.apply(CacheChange::Upsert(&running));
        queue.apply(CacheChange::Upsert(&waiting));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        queue.start_term(tx, vec!["ns/running".into()]);
        assert!(woken(&mut rx).is_empty(), "the held slot is the only one");
        assert!(!queue.try_admit(&waiting));
        // Its status shows attempt 1: the hold becomes an ordinary holder.
        queue.apply(CacheChange::Upsert(&dispatched(running.clone(), 1)));
        assert_eq!(queue.figures().holding, 1);
        assert_eq!(queue.figures().granted, 0);
        assert!(!queue.try_admit(&waiting));
        queue.apply(CacheChange::Upsert(&finished_task(running)));
        assert_eq!(woken(&mut rx), vec!["waiting".to_string()]);
    }

    #[test]
    fn a_pending_claim_waits_outside_the_line_until_the_board_settles_it() {
        let board = Arc::new(ClaimBoard::new());
        let queue = AdmissionQueue::new(1, board.clone());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        queue.start_term(tx, Vec::new());
        let mut pending = task("pending", 0);
        pending.metadata.uid = Some("uid-p".into());
        pending.metadata.annotations = Some(
            [(
                recac_api::annotations::CLAIM.to_string(),
                recac_api::annotations::CLAIM_PENDING.to_string(),
            )]
            .into(),
        );
        queue.apply(CacheChange::Upsert(&pending));
        assert!(woken(&mut rx).is_empty());
        assert!(!queue.wants_slot(&pending, Timestamp::now()));
        board.record_claimed(&pending);
        queue.refresh(&pending);
        assert_eq!(woken(&mut rx), vec!["pending".to_string()]);
        assert!(queue.try_admit(&pending));
    }

    fn run_of(ticket: &str, run: &str, created_second: i64) -> AgentTask {
        let mut t = task(&format!("{}-{run}", ticket.to_lowercase()), created_second);
        t.metadata.labels = Some(
            [
                (TICKET.to_string(), ticket.to_string()),
                (RUN.to_string(), run.to_string()),
            ]
            .into(),
        );
        t
    }

    #[test]
    fn runs_of_a_ticket_dispatch_one_after_another() {
        let queue = AdmissionQueue::new(10, Default::default());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let first = run_of("OPS-1", "1", 0);
        let second = run_of("OPS-1", "2", 1);
        let unrelated = task("unrelated", 2);
        for t in [&second, &first, &unrelated] {
            queue.apply(CacheChange::Upsert(t));
        }
        queue.start_term(tx, Vec::new());
        let mut granted = woken(&mut rx);
        granted.sort();
        assert_eq!(granted, ["ops-1-1", "unrelated"]);
        assert!(!queue.wants_slot(&second, Timestamp::now()));
        assert_eq!(queue.previous_run(&second).as_deref(), Some("ops-1-1"));
        assert_eq!(queue.previous_run(&first), None);
        assert_eq!(queue.previous_run(&unrelated), None);
        assert_eq!(queue.figures().waiting, 0, "run 2 is not in the slot line");

        // Run 1 runs: run 2 still waits, and is not woken by run 1's changes.
        assert!(queue.try_admit(&first));
        queue.apply(CacheChange::Upsert(&dispatched(first.clone(), 1)));
        assert!(woken(&mut rx).is_empty());
        assert!(!queue.wants_slot(&second, Timestamp::now()));

        // Run 1 finishes: run 2 is woken at once and may dispatch.
        queue.apply(CacheChange::Upsert(&finished_task(first)));
        assert_eq!(woken(&mut rx), ["ops-1-2"]);
        assert!(queue.wants_slot(&second, Timestamp::now()));
        assert_eq!(queue.previous_run(&second), None);
        assert!(queue.try_admit(&second));
        queue.apply(CacheChange::Upsert(&finished_task(second)));
        let lined_up = queue
            .inner
            .lock()
            .map(|i| i.tickets.places.len())
            .unwrap_or(1);
        assert_eq!(lined_up, 0, "finished runs leave their ticket's line");
    }

    #[test]
    fn a_plan_waiting_for_approval_holds_no_slot_and_does_not_hold_back_the_next_run() {
        let queue = AdmissionQueue::new(1, Default::default());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        queue.start_term(tx, Vec::new());
        let planning = run_of("OPS-1", "1", 0);
        let second = run_of("OPS-1", "2", 1);
        queue.apply(CacheChange::Upsert(&dispatched(planning.clone(), 1)));
        queue.apply(CacheChange::Upsert(&second));
        assert_eq!(queue.previous_run(&second).as_deref(), Some("ops-1-1"));
        assert!(!queue.wants_slot(&second, Timestamp::now()));
        assert!(woken(&mut rx).is_empty());

        // The planning run wrote its plan, which waits for approval: no Job runs for it.
        let mut awaiting = dispatched(planning, 1);
        if let Some(status) = awaiting.status.as_mut() {
            status.phase = Some(TaskPhase::AwaitingApproval);
        }
        assert!(!holds_slot(&awaiting));
        assert!(!wants_slot(&awaiting, Timestamp::now(), false));
        queue.apply(CacheChange::Upsert(&awaiting));
        assert_eq!(woken(&mut rx), ["ops-1-2"]);
        assert_eq!(queue.previous_run(&second), None);
        assert!(queue.wants_slot(&second, Timestamp::now()));
        assert_eq!(queue.figures().holding, 0);
        assert!(queue.try_admit(&second), "the only slot is free");
    }

    #[test]
    fn a_deleted_earlier_run_wakes_the_next_and_an_earlier_arrival_sends_it_back() {
        let queue = AdmissionQueue::new(10, Default::default());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        queue.start_term(tx, Vec::new());
        // Run 2 shows first and lines up for a slot ...
        let second = run_of("OPS-1", "2", 1);
        queue.apply(CacheChange::Upsert(&second));
        assert_eq!(woken(&mut rx), ["ops-1-2"]);
        // ... then run 1 shows: run 2 gives up its slot and is woken to say it waits.
        let first = run_of("OPS-1", "1", 0);
        queue.apply(CacheChange::Upsert(&first));
        let mut seen = woken(&mut rx);
        seen.sort();
        assert_eq!(seen, ["ops-1-1", "ops-1-2"]);
        assert_eq!(queue.figures().granted, 1, "only run 1 holds a grant");
        assert!(!queue.wants_slot(&second, Timestamp::now()));
        // Run 1 is deleted: run 2 goes ahead.
        queue.apply(CacheChange::Delete(&first));
        assert_eq!(woken(&mut rx), ["ops-1-2"]);
        assert!(queue.wants_slot(&second, Timestamp::now()));
        assert!(queue.try_admit(&second));
    }

    #[test]
    fn a_tickets_line_goes_by_run_number_then_creation_and_stays_within_the_ticket() {
        let queue = AdmissionQueue::new(10, Default::default());
        let ninth = run_of("OPS-1", "9", 5);
        let tenth = run_of("OPS-1", "10", 1);
        let unnumbered = run_of("OPS-1", "x", 0);
        let other_ticket = run_of("OPS-2", "10", 0);
        let mut elsewhere = run_of("OPS-1", "1", 0);
        elsewhere.metadata.name = Some("elsewhere".into());
        elsewhere.metadata.namespace = Some("other".into());
        for t in [&unnumbered, &tenth, &ninth, &other_ticket, &elsewhere] {
            queue.apply(CacheChange::Upsert(t));
        }
        assert_eq!(queue.previous_run(&ninth), None);
        assert_eq!(queue.previous_run(&tenth).as_deref(), Some("ops-1-9"));
        assert_eq!(queue.previous_run(&unnumbered).as_deref(), Some("ops-1-10"));
        assert_eq!(queue.previous_run(&other_ticket), None);
        assert_eq!(queue.previous_run(&elsewhere), None);

        // Without run numbers: by creation, then name.
        let unnumbered = |name: &str, created_second: i64| {
            let mut t = run_of("OPS-3", "", created_second);
            t.metadata.name = Some(name.into());
            t
        };
        let (older, a, b) = (unnumbered("z", 1), unnumbered("a", 3), unnumbered("b", 3));
        for t in [&b, &a, &older] {
            queue.apply(CacheChange::Upsert(t));
        }
        assert_eq!(queue.previous_run(&a).as_deref(), Some("z"));
        assert_eq!(queue.previous_run(&b).as_deref(), Some("a"));
    }

    #[test]
    fn a_retry_does_not_wait_for_an_earlier_run_and_a_stopped_task_wants_nothing() {
        let queue = AdmissionQueue::new(10, Default::default());
        let first = run_of("OPS-1", "1", 5);
        let mut retrying = dispatched(run_of("OPS-1", "2", 0), 1);
        if let Some(status) = retrying.status.as_mut() {
            status.next_attempt_time = Some(Time(Timestamp::from_second(1).expect("time")));
        }
        queue.apply(CacheChange::Upsert(&first));
        queue.apply(CacheChange::Upsert(&retrying));
        assert!(queue.previous_run(&retrying).is_some());
        assert!(queue.wants_slot(&retrying, Timestamp::now()));

        let mut stopped = task("stopped", 0);
        stopped.metadata.annotations =
            Some([(recac_api::annotations::STOP.to_string(), "1".to_string())].into());
        assert!(!queue.wants_slot(&stopped, Timestamp::now()));
    }

    #[test]
    fn ten_thousand_queued_tasks_decide_fast() {
        let queue = AdmissionQueue::new(10, Default::default());
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        queue.start_term(tx, Vec::new());
        let tasks: Vec<AgentTask> = (0..10_000).map(|i| task(&format!("t{i}"), i)).collect();
        for t in &tasks {
            queue.apply(CacheChange::Upsert(t));
        }
        let admitted = tasks.iter().filter(|t| queue.try_admit(t)).count();
        assert_eq!(admitted, 10);
        assert_eq!(queue.figures().waiting, 9_990);
    }
}
