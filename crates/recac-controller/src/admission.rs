//! The concurrency cap: how many tasks may have a live Job at once, and which waiting
//! task gets the next free slot (oldest first).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::reflector::Store;
use recac_api::{AgentTask, TaskPhase};

use crate::decide::condition;

/// How long a slot reserved at dispatch counts before the watch shows the task's new status.
const RESERVATION_TTL: Duration = Duration::from_secs(60);

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

/// The task's last dispatch was rejected (see `DispatchFailed` in the reconciler).
fn dispatch_failing(task: &AgentTask) -> bool {
    task.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == condition::DISPATCHED && c.reason == condition::DISPATCH_FAILED)
    })
}

/// The task has a Job that is not finished: it holds a slot.
fn holds_slot(task: &AgentTask) -> bool {
    let Some(status) = &task.status else {
        return false;
    };
    status.attempt.unwrap_or(0) > 0 && status.next_attempt_time.is_none() && !finished(task)
}

/// The task needs a slot now: never dispatched, or its retry is due.
pub fn wants_slot(task: &AgentTask, now: Timestamp) -> bool {
    if finished(task) || task.spec.suspend || task.metadata.deletion_timestamp.is_some() {
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

/// Hands out slots under the cap, in creation order.
pub struct Admission {
    cap: usize,
    stores: Vec<Store<AgentTask>>,
    reserved: Mutex<HashMap<String, (i32, Instant)>>,
}

impl Admission {
    pub fn new(cap: usize, stores: Vec<Store<AgentTask>>) -> Self {
        Self {
            cap,
            stores,
            reserved: Mutex::new(HashMap::new()),
        }
    }

    fn tasks(&self) -> Vec<std::sync::Arc<AgentTask>> {
        self.stores.iter().flat_map(|s| s.state()).collect()
    }

    /// Whether `task` may dispatch now. A yes reserves a slot for it until the watch
    /// shows the dispatch (or [`Admission::release`] gives it back).
    pub fn try_admit(&self, task: &AgentTask, now: Timestamp) -> bool {
        let Ok(mut reserved) = self.reserved.lock() else {
            return false;
        };
        let tasks = self.tasks();
        let by_key: HashMap<String, &AgentTask> =
            tasks.iter().map(|t| (key(t), t.as_ref())).collect();
        let attempt_of = |t: &AgentTask| t.status.as_ref().and_then(|s| s.attempt).unwrap_or(0);
        reserved.retain(|k, (attempt, at)| {
            let seen = by_key
                .get(k)
                .is_some_and(|t| attempt_of(t) >= *attempt || finished(t));
            !seen && at.elapsed() < RESERVATION_TTL && by_key.contains_key(k)
        });
        let this = key(task);
        if reserved.contains_key(&this) {
            return true;
        }
        let active = tasks
            .iter()
            .filter(|t| holds_slot(t) && !reserved.contains_key(&key(t)))
            .count()
            + reserved.len();
        let free = self.cap.saturating_sub(active);
        if free == 0 {
            return false;
        }
        // Oldest first; tasks whose dispatch keeps failing go last, so one broken task
        // cannot hold up the queue.
        let order = |t: &AgentTask| {
            (
                dispatch_failing(t),
                t.creation_timestamp().map(|c| c.0),
                key(t),
            )
        };
        let mut waiting: Vec<(bool, Option<Timestamp>, String)> = tasks
            .iter()
            .filter(|t| wants_slot(t, now))
            .map(|t| order(t))
            .filter(|(_, _, k)| !reserved.contains_key(k))
            .collect();
        if !waiting.iter().any(|(_, _, k)| *k == this) {
            // Not in the cache yet (just created): it queues behind the ones that are.
            waiting.push(order(task));
        }
        waiting.sort();
        let position = waiting
            .iter()
            .position(|(_, _, k)| *k == this)
            .unwrap_or(usize::MAX);
        if position < free {
            let next_attempt = attempt_of(task) + 1;
            reserved.insert(this, (next_attempt, Instant::now()));
            true
        } else {
            false
        }
    }

    /// Gives back a slot reserved for a dispatch that did not happen.
    pub fn release(&self, task: &AgentTask) {
        if let Ok(mut reserved) = self.reserved.lock() {
            reserved.remove(&key(task));
        }
    }
}
