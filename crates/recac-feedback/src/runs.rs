//! A ticket's runs (pure): which tasks share one live comment, in which order, and where each
//! run is.
//!
//! The runs of a ticket are the AgentTasks of one namespace with the same `recac.io/ticket`
//! label, ordered by their `recac.io/run` label. A task without that label (made by a
//! person with `spec.ticket`) is a ticket of its own, with one run.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use recac_api::{AgentTask, TaskPhase};

use crate::comment::MARKER_BASE;
use crate::report::{self, PlanState};

/// What one live comment is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TicketKey {
    /// Every task of `namespace` labelled `recac.io/ticket: <key>`.
    Labelled { namespace: String, key: String },
    /// One task without that label, by its uid.
    Single { uid: String },
}

impl TicketKey {
    pub fn of(task: &AgentTask) -> TicketKey {
        match ticket_label(task) {
            Some(key) => TicketKey::Labelled {
                namespace: task.namespace().unwrap_or_default(),
                key: key.to_string(),
            },
            None => TicketKey::Single {
                uid: task.uid().unwrap_or_default(),
            },
        }
    }

    /// The start of the live comment's marker: the link target that finds the comment on
    /// the ticket. What follows it is the version of the text written last.
    pub fn marker_prefix(&self) -> String {
        match self {
            TicketKey::Labelled { namespace, key } => {
                format!("{MARKER_BASE}/status/ticket/{namespace}/{key}/")
            }
            TicketKey::Single { uid } => format!("{MARKER_BASE}/status/task/{uid}/"),
        }
    }
}

fn ticket_label(task: &AgentTask) -> Option<&str> {
    task.labels()
        .get(recac_api::labels::TICKET)
        .map(String::as_str)
        .filter(|key| !key.is_empty())
}

/// The task's `recac.io/run` label, when it is a number.
pub fn run_number(task: &AgentTask) -> Option<u32> {
    task.labels()
        .get(recac_api::labels::RUN)
        .and_then(|run| run.trim().parse().ok())
}

/// Orders runs oldest first: by run number, then creation, then name (tasks without a run
/// number after those with one).
pub fn in_run_order(runs: &mut [Arc<AgentTask>]) {
    runs.sort_by(|a, b| {
        let key = |t: &AgentTask| {
            (
                run_number(t).unwrap_or(u32::MAX),
                t.metadata.creation_timestamp.as_ref().map(|c| c.0),
                t.name_any(),
            )
        };
        key(a).cmp(&key(b))
    });
}

/// Where a run is, in the words its line in the comment uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunState {
    /// No attempt runs yet: waiting for a slot, an earlier run or its claim.
    Queued {
        why: Option<String>,
    },
    /// An attempt's Job exists; its agent has not started.
    Starting {
        attempt: i32,
    },
    /// An attempt's agent runs, since its Job was made.
    Running {
        attempt: i32,
        since: Option<Timestamp>,
    },
    /// An attempt failed; the next one is due at `next_at`.
    Retrying {
        failed_attempt: i32,
        next_at: Option<Timestamp>,
    },
    /// A person suspended the task (`spec.suspend`).
    Suspended {
        attempt: i32,
    },
    Succeeded {
        attempts: i32,
    },
    Failed {
        attempts: i32,
    },
    /// Stopped on the ticket, or deleted while it ran.
    Cancelled {
        attempt: i32,
    },
    /// Ended before any attempt ran (e.g. the claim was lost).
    NotRun,
    /// A planning run's attempt wrote a plan, which waits for an answer on the ticket.
    AwaitingApproval {
        attempt: i32,
    },
    /// A planning run whose plan was approved (the run that implements it follows).
    PlanApproved {
        attempt: i32,
    },
    /// A planning run whose plan was rejected (a new planning run follows).
    PlanRejected {
        attempt: i32,
    },
}

impl RunState {
    /// Whether nothing runs for the run any more: it ended, or its plan waits for an
    /// answer (which starts another run, or settles this one without running anything).
    /// A ticket whose runs are all finished has nothing to stop and its comment is quiet
    /// until one of them changes or a new run comes.
    pub fn is_finished(&self) -> bool {
        matches!(
            self,
            RunState::Succeeded { .. }
                | RunState::Failed { .. }
                | RunState::Cancelled { .. }
                | RunState::NotRun
                | RunState::AwaitingApproval { .. }
                | RunState::PlanApproved { .. }
                | RunState::PlanRejected { .. }
        )
    }

    /// Whether the run is a planning run with its plan written (waiting or decided).
    pub fn has_plan(&self) -> bool {
        matches!(
            self,
            RunState::AwaitingApproval { .. }
                | RunState::PlanApproved { .. }
                | RunState::PlanRejected { .. }
        )
    }
}

fn true_condition<'a>(
    task: &'a AgentTask,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    task.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// Where `task` is; `deleted`: it is gone (seen for the last time).
pub fn state_of(task: &AgentTask, deleted: bool) -> RunState {
    let status = task.status.clone().unwrap_or_default();
    let attempt = status.attempt.unwrap_or(0);
    let phase = status.phase.unwrap_or_default();
    let plan = report::plan_state(task);
    match phase {
        _ if plan == Some(PlanState::Approved) => RunState::PlanApproved { attempt },
        _ if plan == Some(PlanState::Rejected) => RunState::PlanRejected { attempt },
        TaskPhase::Succeeded => RunState::Succeeded {
            attempts: attempt.max(1),
        },
        TaskPhase::Failed if attempt == 0 => RunState::NotRun,
        TaskPhase::Failed if report::stopped(task) => RunState::Cancelled { attempt },
        TaskPhase::Failed => RunState::Failed { attempts: attempt },
        _ if deleted && attempt > 0 => RunState::Cancelled { attempt },
        _ if deleted => RunState::NotRun,
        // Nothing runs while a plan waits, so nothing is suspended either.
        TaskPhase::AwaitingApproval => RunState::AwaitingApproval { attempt },
        _ if report::suspended(task) => RunState::Suspended { attempt },
        TaskPhase::Running => RunState::Running {
            attempt,
            since: true_condition(task, "Dispatched").map(|c| c.last_transition_time.0),
        },
        TaskPhase::Pending => {
            if let Some(queued) = true_condition(task, "Queued") {
                RunState::Queued {
                    why: Some(queued.message.clone()).filter(|m| !m.trim().is_empty()),
                }
            } else if attempt == 0 {
                RunState::Queued { why: None }
            } else if let Some(next) = &status.next_attempt_time {
                RunState::Retrying {
                    failed_attempt: attempt,
                    next_at: Some(next.0),
                }
            } else {
                RunState::Starting { attempt }
            }
        }
    }
}

/// The tasks of each labelled ticket, kept as tasks come and go, so that a ticket's runs are
/// found without reading every cached task.
#[derive(Debug, Default)]
pub struct TicketIndex {
    runs: HashMap<(String, String), BTreeSet<String>>,
    ticket_of: HashMap<(String, String), String>,
}

impl TicketIndex {
    /// Notes the task `namespace/name` and its ticket label (`None`: it has none now).
    pub fn note(&mut self, namespace: &str, name: &str, ticket: Option<&str>) {
        let task = (namespace.to_string(), name.to_string());
        if self.ticket_of.get(&task).map(String::as_str) == ticket {
            return;
        }
        self.forget(namespace, name);
        if let Some(ticket) = ticket {
            self.ticket_of.insert(task, ticket.to_string());
            self.runs
                .entry((namespace.to_string(), ticket.to_string()))
                .or_default()
                .insert(name.to_string());
        }
    }

    pub fn note_task(&mut self, task: &AgentTask) {
        self.note(
            &task.namespace().unwrap_or_default(),
            &task.name_any(),
            ticket_label(task),
        );
    }

    pub fn forget(&mut self, namespace: &str, name: &str) {
        let task = (namespace.to_string(), name.to_string());
        if let Some(ticket) = self.ticket_of.remove(&task) {
            let key = (namespace.to_string(), ticket);
            if let Some(names) = self.runs.get_mut(&key) {
                names.remove(name);
                if names.is_empty() {
                    self.runs.remove(&key);
                }
            }
        }
    }

    /// The names of the tasks labelled with `ticket` in `namespace`.
    pub fn runs_of(&self, namespace: &str, ticket: &str) -> Vec<String> {
        self.runs
            .get(&(namespace.to_string(), ticket.to_string()))
            .map(|names| names.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use recac_api::AgentTaskStatus;

    fn task(name: &str, labels: &[(&str, &str)], status: AgentTaskStatus) -> AgentTask {
        let mut task: AgentTask = serde_saphyr::from_str(&format!(
            "apiVersion: recac.io/v1alpha1\nkind: AgentTask\nmetadata: {{name: {name}, namespace: ns, uid: uid-{name}}}\nspec:\n  prompt: p\n  ticket: {{source: jira, key: OPS-1}}\n  repository: {{url: https://g.example/r.git}}\n"
        ))
        .expect("task");
        task.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        task.status = Some(status);
        task
    }

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap_or(Timestamp::UNIX_EPOCH))
    }

    fn condition(type_: &str, reason: &str, message: &str, since: i64) -> Condition {
        Condition {
            type_: type_.into(),
            status: "True".into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: at(since),
            observed_generation: None,
        }
    }

    fn status(phase: TaskPhase, attempt: i32) -> AgentTaskStatus {
        AgentTaskStatus {
            phase: Some(phase),
            attempt: Some(attempt),
            ..Default::default()
        }
    }

    #[test]
    fn labelled_tasks_share_a_ticket_and_others_are_their_own() {
        let labelled = task(
            "ops-1-r2",
            &[
                (recac_api::labels::TICKET, "OPS-1"),
                (recac_api::labels::RUN, "2"),
            ],
            AgentTaskStatus::default(),
        );
        let key = TicketKey::of(&labelled);
        assert_eq!(
            key,
            TicketKey::Labelled {
                namespace: "ns".into(),
                key: "OPS-1".into()
            }
        );
        assert!(
            key.marker_prefix()
                .ends_with("#recac-feedback/status/ticket/ns/OPS-1/")
        );
        let by_hand = task("mine", &[], AgentTaskStatus::default());
        assert_eq!(
            TicketKey::of(&by_hand),
            TicketKey::Single {
                uid: "uid-mine".into()
            }
        );
        assert_eq!(run_number(&labelled), Some(2));
        assert_eq!(run_number(&by_hand), None);
    }

    #[test]
    fn runs_are_ordered_by_their_number_not_their_name() {
        let run = |name: &str, number: &str| {
            Arc::new(task(
                name,
                &[
                    (recac_api::labels::TICKET, "OPS-1"),
                    (recac_api::labels::RUN, number),
                ],
                AgentTaskStatus::default(),
            ))
        };
        let mut runs = vec![run("b-r10", "10"), run("a-r2", "2"), run("c-r1", "1")];
        in_run_order(&mut runs);
        let names: Vec<String> = runs.iter().map(|t| t.name_any()).collect();
        assert_eq!(names, ["c-r1", "a-r2", "b-r10"]);
    }

    #[test]
    fn each_phase_has_its_state() {
        let mut running = status(TaskPhase::Running, 2);
        running.conditions = vec![condition("Dispatched", "JobCreated", "", 100)];
        assert_eq!(
            state_of(&task("t", &[], running), false),
            RunState::Running {
                attempt: 2,
                since: Some(at(100).0)
            }
        );
        let mut retrying = status(TaskPhase::Pending, 1);
        retrying.next_attempt_time = Some(at(200));
        assert_eq!(
            state_of(&task("t", &[], retrying), false),
            RunState::Retrying {
                failed_attempt: 1,
                next_at: Some(at(200).0)
            }
        );
        let mut queued = status(TaskPhase::Pending, 0);
        queued.conditions = vec![condition(
            "Queued",
            "PreviousRunActive",
            "waiting for r1",
            5,
        )];
        assert_eq!(
            state_of(&task("t", &[], queued), false),
            RunState::Queued {
                why: Some("waiting for r1".into())
            }
        );
        assert_eq!(
            state_of(&task("t", &[], status(TaskPhase::Pending, 1)), false),
            RunState::Starting { attempt: 1 }
        );
        assert_eq!(
            state_of(&task("t", &[], status(TaskPhase::Running, 1)), true),
            RunState::Cancelled { attempt: 1 }
        );
        assert_eq!(
            state_of(&task("t", &[], status(TaskPhase::Failed, 0)), false),
            RunState::NotRun
        );
        let mut stopped = status(TaskPhase::Failed, 2);
        stopped.conditions = vec![condition("Failed", recac_api::reasons::STOPPED, "", 9)];
        assert_eq!(
            state_of(&task("t", &[], stopped), false),
            RunState::Cancelled { attempt: 2 }
        );
        assert_eq!(
            state_of(&task("t", &[], status(TaskPhase::Succeeded, 3)), false),
            RunState::Succeeded { attempts: 3 }
        );
        let mut held = task("t", &[], status(TaskPhase::Pending, 1));
        held.spec.suspend = true;
        if let Some(s) = held.status.as_mut() {
            s.conditions = vec![condition("Suspended", "SpecSuspended", "", 1)];
        }
        assert_eq!(state_of(&held, false), RunState::Suspended { attempt: 1 });
        assert!(!state_of(&held, false).is_finished());
    }

    #[test]
    fn a_planning_run_waits_then_is_approved_or_rejected_and_nothing_runs_meanwhile() {
        let waiting = task("t", &[], status(TaskPhase::AwaitingApproval, 1));
        assert_eq!(
            state_of(&waiting, false),
            RunState::AwaitingApproval { attempt: 1 }
        );
        let mut held = waiting.clone();
        held.spec.suspend = true;
        if let Some(s) = held.status.as_mut() {
            s.conditions = vec![condition("Suspended", "SpecSuspended", "", 1)];
        }
        assert_eq!(
            state_of(&held, false),
            RunState::AwaitingApproval { attempt: 1 }
        );
        // Deleted while it waits: the plan can no longer be answered.
        assert_eq!(state_of(&waiting, true), RunState::Cancelled { attempt: 1 });
        let mut approved = status(TaskPhase::Succeeded, 1);
        approved.conditions = vec![condition(
            "Succeeded",
            recac_api::reasons::PLAN_APPROVED,
            "the plan was approved by Ada",
            7,
        )];
        let approved = task("t", &[], approved);
        for deleted in [false, true] {
            assert_eq!(
                state_of(&approved, deleted),
                RunState::PlanApproved { attempt: 1 }
            );
        }
        let mut rejected = status(TaskPhase::Failed, 2);
        rejected.conditions = vec![condition(
            "Failed",
            recac_api::reasons::PLAN_REJECTED,
            "the plan was rejected by Ada",
            7,
        )];
        assert_eq!(
            state_of(&task("t", &[], rejected), false),
            RunState::PlanRejected { attempt: 2 }
        );
        let mut no_plan = status(TaskPhase::Failed, 1);
        no_plan.conditions = vec![condition("Failed", "NoPlan", "", 7)];
        assert_eq!(
            state_of(&task("t", &[], no_plan), false),
            RunState::Failed { attempts: 1 }
        );
        for state in [
            RunState::AwaitingApproval { attempt: 1 },
            RunState::PlanApproved { attempt: 1 },
            RunState::PlanRejected { attempt: 1 },
        ] {
            assert!(state.is_finished() && state.has_plan(), "{state:?}");
        }
        assert!(!RunState::Succeeded { attempts: 1 }.has_plan());
    }

    #[test]
    fn the_index_follows_labels_as_they_come_change_and_go() {
        let mut index = TicketIndex::default();
        index.note("ns", "ops-1", Some("OPS-1"));
        index.note("ns", "ops-1-r2", Some("OPS-1"));
        index.note("other", "ops-1", Some("OPS-1"));
        assert_eq!(index.runs_of("ns", "OPS-1"), ["ops-1", "ops-1-r2"]);
        index.note("ns", "ops-1-r2", Some("OPS-2"));
        assert_eq!(index.runs_of("ns", "OPS-1"), ["ops-1"]);
        assert_eq!(index.runs_of("ns", "OPS-2"), ["ops-1-r2"]);
        index.forget("ns", "ops-1");
        assert!(index.runs_of("ns", "OPS-1").is_empty());
        index.note("ns", "ops-1-r2", None);
        assert!(index.runs_of("ns", "OPS-2").is_empty());
        assert_eq!(index.runs_of("other", "OPS-1"), ["ops-1"]);
    }
}
