//! Claims the source controller settled in this process, told to the task controller.
//!
//! A task created by a source carries `recac.io/claim: pending` until its ticket is
//! claimed in Jira. Writing the successful claim onto the task would cost the apiserver a
//! write per ticket on the way to its Job; instead the source records it here and the task
//! controller dispatches at once. The claim then becomes durable in Kubernetes without a
//! write of its own: first as the attempt's Job (created only after a claim), then as the
//! `Claimed` condition in the task's first status write. A process that restarts before
//! either exists forgets the claim; the source then resumes it from the ticket's changelog
//! (no second transition), and records it here again.
//!
//! Only the leader's source and task controller use the board, and they share one process.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use recac_api::AgentTask;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

/// How long a settled claim is remembered. The task controller writes it into status
/// within seconds; an entry outlives that only when its task went away first.
const REMEMBER_FOR: Duration = Duration::from_secs(3600);

#[derive(Default)]
struct Inner {
    /// Claimed tasks by uid, with when they were recorded.
    claimed: HashMap<String, Instant>,
    listener: Option<UnboundedSender<ObjectRef<AgentTask>>>,
}

/// See the module docs.
#[derive(Default)]
pub struct ClaimBoard {
    inner: Mutex<Inner>,
}

impl ClaimBoard {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `task`'s ticket is claimed, and tells the listener.
    pub fn record_claimed(&self, task: &AgentTask) {
        let Some(uid) = task.uid() else {
            return;
        };
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let now = Instant::now();
        inner
            .claimed
            .retain(|_, at| now.duration_since(*at) < REMEMBER_FOR);
        inner.claimed.insert(uid, now);
        if let Some(listener) = &inner.listener {
            let reference =
                ObjectRef::new(&task.name_any()).within(&task.namespace().unwrap_or_default());
            if listener.send(reference).is_err() {
                inner.listener = None;
            }
        }
    }

    /// Whether the task with `uid` was recorded as claimed.
    pub fn is_claimed(&self, uid: &str) -> bool {
        self.inner
            .lock()
            .is_ok_and(|inner| inner.claimed.contains_key(uid))
    }

    /// Forgets a claim that Kubernetes now records (the task's status says it).
    pub fn forget(&self, uid: &str) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.claimed.remove(uid);
        }
    }

    /// The tasks recorded from now on, until the next call (one listener at a time: the
    /// task controller's current term).
    pub fn subscribe(&self) -> UnboundedReceiver<ObjectRef<AgentTask>> {
        let (sender, receiver) = unbounded_channel();
        if let Ok(mut inner) = self.inner.lock() {
            inner.listener = Some(sender);
        }
        receiver
    }

    /// How many claims are remembered (for tests and metrics).
    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.claimed.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> recac_api::AgentTaskSpec {
        serde_json::from_value(serde_json::json!({"prompt": "p", "repository": {"url": "https://git.example.com/o/r.git"}}))
            .expect("a spec")
    }

    fn task(name: &str, uid: &str) -> AgentTask {
        let mut task = AgentTask::new(name, spec());
        task.metadata.namespace = Some("ns".into());
        task.metadata.uid = Some(uid.into());
        task
    }

    #[tokio::test]
    async fn a_recorded_claim_is_remembered_and_told_once() {
        let board = ClaimBoard::new();
        let mut told = board.subscribe();
        board.record_claimed(&task("a-r1", "u1"));
        assert!(board.is_claimed("u1"));
        assert!(!board.is_claimed("u2"));
        let reference = told.recv().await.expect("told");
        assert_eq!(reference.name, "a-r1");
        assert_eq!(reference.namespace.as_deref(), Some("ns"));
        board.forget("u1");
        assert!(!board.is_claimed("u1"));
        assert!(board.is_empty());
    }

    #[test]
    fn a_task_without_uid_is_not_recorded_and_a_gone_listener_is_dropped() {
        let board = ClaimBoard::new();
        drop(board.subscribe());
        board.record_claimed(&AgentTask::new("x", spec()));
        assert!(board.is_empty());
        board.record_claimed(&task("b-r1", "u2"));
        assert!(board.is_claimed("u2"));
    }
}
