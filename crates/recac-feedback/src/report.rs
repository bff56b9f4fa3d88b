//! Which reports a task is owed, from its spec and status alone (pure).

use recac_api::reasons::{PLAN_APPROVED, PLAN_REJECTED};
use recac_api::{AgentTask, TaskPhase, TicketSource};

/// What a report tells the ticket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReportKind {
    /// The first attempt was dispatched.
    PickedUp,
    /// A later attempt was dispatched.
    Retrying,
    /// A planning run (`spec.approval: plan`) wrote its plan, which waits for approval: the
    /// planning run's outcome. Also told for a plan decided before it was told, so that the
    /// plan still reaches the ticket.
    Planned,
    /// The task ended well.
    Succeeded,
    /// The task ended badly.
    Failed,
    /// The task was deleted, or suspended by a person, while it ran, or stopped on its
    /// ticket.
    Cancelled,
}

impl ReportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportKind::PickedUp => "pickedUp",
            ReportKind::Retrying => "retrying",
            ReportKind::Planned => "planned",
            ReportKind::Succeeded => "succeeded",
            ReportKind::Failed => "failed",
            ReportKind::Cancelled => "cancelled",
        }
    }

    /// Reports that come with the outcome's transition and labels.
    pub fn is_outcome(self) -> bool {
        matches!(
            self,
            ReportKind::Planned
                | ReportKind::Succeeded
                | ReportKind::Failed
                | ReportKind::Cancelled
        )
    }
}

/// Where a planning run's plan is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanState {
    /// Written; it waits for approval (phase `AwaitingApproval`).
    Waiting,
    /// Approved: the task ended `Succeeded` with reason `PlanApproved`.
    Approved,
    /// Rejected: the task ended `Failed` with reason `PlanRejected`.
    Rejected,
}

impl PlanState {
    /// Someone decided on the plan: the planning run is over.
    pub fn is_settled(self) -> bool {
        self != PlanState::Waiting
    }
}

/// One report: a kind about one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Report {
    pub kind: ReportKind,
    pub attempt: i32,
}

impl Report {
    /// How `status.feedback.reported` lists it: `<kind>/<attempt>`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.kind.as_str(), self.attempt)
    }
}

/// What the configuration says about optional reports.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub comment_on_dispatch: bool,
    pub comment_on_retry: bool,
}

/// The Jira ticket key of a task, when its ticket lives in Jira.
pub fn jira_ticket(task: &AgentTask) -> Option<&str> {
    task.spec
        .ticket
        .as_ref()
        .filter(|t| t.source == TicketSource::Jira)
        .map(|t| t.key.as_str())
}

/// Whether a person holds the task (spec.suspend) and the task controller has suspended it.
pub fn suspended(task: &AgentTask) -> bool {
    task.spec.suspend
        && task.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Suspended" && c.status == "True")
        })
}

/// Whether someone stopped the task on its ticket: it ended `Failed` with reason `Stopped`,
/// which is a cancellation, not a failure.
pub fn stopped(task: &AgentTask) -> bool {
    task.status.as_ref().is_some_and(|s| {
        s.phase == Some(TaskPhase::Failed)
            && s.conditions.iter().any(|c| {
                c.type_ == "Failed" && c.status == "True" && c.reason == recac_api::reasons::STOPPED
            })
    })
}

/// Where the task's plan is, when the task is a planning run that wrote one.
pub fn plan_state(task: &AgentTask) -> Option<PlanState> {
    let status = task.status.as_ref()?;
    let ended = |type_: &str, reason: &str| {
        status
            .conditions
            .iter()
            .any(|c| c.type_ == type_ && c.status == "True" && c.reason == reason)
    };
    match status.phase? {
        TaskPhase::AwaitingApproval => Some(PlanState::Waiting),
        TaskPhase::Succeeded if ended("Succeeded", PLAN_APPROVED) => Some(PlanState::Approved),
        TaskPhase::Failed if ended("Failed", PLAN_REJECTED) => Some(PlanState::Rejected),
        _ => None,
    }
}

/// Whether the task is a planning run whose plan was approved or rejected.
pub fn plan_settled(task: &AgentTask) -> bool {
    plan_state(task).is_some_and(PlanState::is_settled)
}

/// The reports `task` is owed now and has not had, in posting order. `deleted`: the task is
/// gone (this is the last time it is seen).
pub fn due(task: &AgentTask, deleted: bool, options: &Options) -> Vec<Report> {
    if jira_ticket(task).is_none() {
        return Vec::new();
    }
    let status = task.status.clone().unwrap_or_default();
    let attempt = status.attempt.unwrap_or(0);
    // Nothing ran: nothing to tell (e.g. a claim lost before the first attempt).
    if attempt == 0 {
        return Vec::new();
    }
    let reported: Vec<String> = status.feedback.map(|f| f.reported).unwrap_or_default();
    let done = |r: &Report| reported.contains(&r.key());
    // A told plan is the planning run's outcome: its decision is not told again (the next
    // run of the ticket follows it), nor is its deletion.
    let ended = reported.iter().any(|k| {
        k.starts_with("succeeded/") || k.starts_with("failed/") || k.starts_with("planned/")
    });
    if ended {
        return Vec::new();
    }
    let mut out = Vec::new();
    match status.phase {
        // A decided plan is owed its plan, never a success or a failure.
        _ if plan_settled(task) => out.push(Report {
            kind: ReportKind::Planned,
            attempt,
        }),
        // Deleted while it waits, before it was told: the plan can no longer be answered.
        Some(TaskPhase::AwaitingApproval) if !deleted => out.push(Report {
            kind: ReportKind::Planned,
            attempt,
        }),
        Some(TaskPhase::Succeeded) => out.push(Report {
            kind: ReportKind::Succeeded,
            attempt,
        }),
        Some(TaskPhase::Failed) if stopped(task) => out.push(Report {
            kind: ReportKind::Cancelled,
            attempt,
        }),
        Some(TaskPhase::Failed) => out.push(Report {
            kind: ReportKind::Failed,
            attempt,
        }),
        _ if deleted => out.push(Report {
            kind: ReportKind::Cancelled,
            attempt,
        }),
        _ => {
            // "Picked up" once the first attempt's agent runs, not when its Job is created:
            // a burst of new tickets then costs the apiserver and Jira nothing beyond the
            // claims and the Jobs, and the comment comes when the work has really started.
            // An attempt that ends before it was seen running gets its outcome comment only.
            if attempt == 1
                && options.comment_on_dispatch
                && status.phase == Some(TaskPhase::Running)
            {
                out.push(Report {
                    kind: ReportKind::PickedUp,
                    attempt,
                });
            }
            if attempt > 1 && options.comment_on_retry {
                out.push(Report {
                    kind: ReportKind::Retrying,
                    attempt,
                });
            }
            if suspended(task) {
                out.push(Report {
                    kind: ReportKind::Cancelled,
                    attempt,
                });
            }
        }
    }
    out.retain(|r| !done(r));
    out
}

/// The outcome the task's state stands for, told or not: how it ended (for a planning run:
/// its plan, waiting or decided), or its cancellation while it is deleted or suspended by a
/// person. `None` while it waits or runs, and for a task that never ran.
pub fn outcome(task: &AgentTask, deleted: bool) -> Option<Report> {
    jira_ticket(task)?;
    let status = task.status.as_ref()?;
    let attempt = status.attempt.unwrap_or(0);
    if attempt == 0 {
        return None;
    }
    let kind = match status.phase {
        _ if plan_settled(task) => ReportKind::Planned,
        Some(TaskPhase::AwaitingApproval) if !deleted => ReportKind::Planned,
        Some(TaskPhase::Succeeded) => ReportKind::Succeeded,
        Some(TaskPhase::Failed) if stopped(task) => ReportKind::Cancelled,
        Some(TaskPhase::Failed) => ReportKind::Failed,
        _ if deleted || suspended(task) => ReportKind::Cancelled,
        _ => return None,
    };
    Some(Report { kind, attempt })
}

/// The outcome a live comment must still tell (with its transition and labels): what
/// [`due`] owes when no optional report is configured.
pub fn outcome_due(task: &AgentTask, deleted: bool) -> Option<Report> {
    let quiet = Options {
        comment_on_dispatch: false,
        comment_on_retry: false,
    };
    due(task, deleted, &quiet).into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use recac_api::{AgentTaskStatus, FeedbackStatus};

    const OPTIONS: Options = Options {
        comment_on_dispatch: true,
        comment_on_retry: false,
    };

    fn task(ticket: bool, phase: TaskPhase, attempt: i32, reported: &[&str]) -> AgentTask {
        let ticket = if ticket {
            "  ticket: {source: jira, key: OPS-1}\n"
        } else {
            ""
        };
        let mut task: AgentTask = serde_saphyr::from_str(&format!(
            "apiVersion: recac.io/v1alpha1\nkind: AgentTask\nmetadata: {{name: t, namespace: ns, uid: u1}}\nspec:\n  prompt: p\n{ticket}  repository: {{url: https://g.example/r.git}}\n"
        ))
        .expect("task");
        task.status = Some(AgentTaskStatus {
            phase: Some(phase),
            attempt: Some(attempt),
            feedback: Some(FeedbackStatus {
                reported: reported.iter().map(|r| r.to_string()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        });
        task
    }

    fn keys(reports: Vec<Report>) -> Vec<String> {
        reports.iter().map(Report::key).collect()
    }

    #[test]
    fn a_task_without_a_jira_ticket_is_owed_nothing() {
        assert!(due(&task(false, TaskPhase::Succeeded, 1, &[]), false, &OPTIONS).is_empty());
    }

    #[test]
    fn dispatch_then_outcome_each_once() {
        assert!(due(&task(true, TaskPhase::Pending, 0, &[]), false, &OPTIONS).is_empty());
        // A created Job whose agent has not started yet is owed nothing.
        assert!(due(&task(true, TaskPhase::Pending, 1, &[]), false, &OPTIONS).is_empty());
        assert_eq!(
            keys(due(
                &task(true, TaskPhase::Running, 1, &[]),
                false,
                &OPTIONS
            )),
            ["pickedUp/1"]
        );
        assert!(
            due(
                &task(true, TaskPhase::Running, 1, &["pickedUp/1"]),
                false,
                &OPTIONS
            )
            .is_empty()
        );
        assert_eq!(
            keys(due(
                &task(true, TaskPhase::Succeeded, 1, &["pickedUp/1"]),
                false,
                &OPTIONS
            )),
            ["succeeded/1"]
        );
        assert!(
            due(
                &task(
                    true,
                    TaskPhase::Succeeded,
                    1,
                    &["pickedUp/1", "succeeded/1"]
                ),
                true,
                &OPTIONS
            )
            .is_empty()
        );
        let quiet = Options {
            comment_on_dispatch: false,
            comment_on_retry: false,
        };
        assert!(due(&task(true, TaskPhase::Running, 1, &[]), false, &quiet).is_empty());
    }

    #[test]
    fn retries_are_quiet_unless_configured() {
        let t = task(true, TaskPhase::Running, 2, &["pickedUp/1"]);
        assert!(due(&t, false, &OPTIONS).is_empty());
        let chatty = Options {
            comment_on_dispatch: true,
            comment_on_retry: true,
        };
        assert_eq!(keys(due(&t, false, &chatty)), ["retrying/2"]);
        // A late operator does not announce an attempt that is already over.
        assert_eq!(
            keys(due(&task(true, TaskPhase::Failed, 3, &[]), false, &chatty)),
            ["failed/3"]
        );
    }

    #[test]
    fn a_stop_is_reported_once_as_a_cancellation_never_as_a_failure() {
        let mut t = task(true, TaskPhase::Failed, 2, &["pickedUp/1"]);
        assert_eq!(keys(due(&t, false, &OPTIONS)), ["failed/2"], "not stopped");
        if let Some(status) = t.status.as_mut() {
            status.conditions.push(Condition {
                type_: "Failed".into(),
                status: "True".into(),
                reason: recac_api::reasons::STOPPED.into(),
                message: "stopped on the ticket by Ada (comment 10042)".into(),
                last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
                observed_generation: None,
            });
        }
        assert!(stopped(&t));
        let reports = due(&t, false, &OPTIONS);
        assert_eq!(keys(reports.clone()), ["cancelled/2"]);
        let mut config = crate::config::FeedbackConfig::default();
        config.failed.add_labels = vec!["recac-failed".into()];
        config.cancelled.add_labels = vec!["recac-stopped".into()];
        let actions = crate::plan::ticket_actions(&config, reports[0].kind).expect("actions");
        assert_eq!(actions.add_labels, ["recac-stopped"]);
        // Deleted before it was reported: still the cancellation.
        assert_eq!(keys(due(&t, true, &OPTIONS)), ["cancelled/2"]);
        if let Some(feedback) = t.status.as_mut().and_then(|s| s.feedback.as_mut()) {
            feedback.reported.push("cancelled/2".into());
        }
        assert!(due(&t, false, &OPTIONS).is_empty());
        assert!(due(&t, true, &OPTIONS).is_empty());
    }

    #[test]
    fn the_outcome_is_known_whether_or_not_it_was_told() {
        let told = task(true, TaskPhase::Failed, 3, &["pickedUp/1", "failed/3"]);
        assert_eq!(
            outcome(&told, false).map(|r| r.key()),
            Some("failed/3".into())
        );
        assert_eq!(outcome_due(&told, false), None);
        let untold = task(true, TaskPhase::Succeeded, 2, &["pickedUp/1"]);
        assert_eq!(outcome(&untold, false), outcome_due(&untold, false));
        assert_eq!(
            outcome_due(&untold, false).map(|r| r.key()),
            Some("succeeded/2".into())
        );
        let running = task(true, TaskPhase::Running, 1, &[]);
        assert_eq!(outcome(&running, false), None);
        assert_eq!(
            outcome(&running, true).map(|r| r.key()),
            Some("cancelled/1".into())
        );
        assert_eq!(outcome(&task(true, TaskPhase::Failed, 0, &[]), false), None);
        assert_eq!(
            outcome(&task(false, TaskPhase::Failed, 1, &[]), false),
            None
        );
    }

    #[test]
    fn deletion_or_suspension_while_running_cancels_once() {
        let t = task(true, TaskPhase::Running, 2, &["pickedUp/1"]);
        assert_eq!(keys(due(&t, true, &OPTIONS)), ["cancelled/2"]);
        let mut held = task(true, TaskPhase::Pending, 1, &["pickedUp/1"]);
        held.spec.suspend = true;
        assert!(due(&held, false, &OPTIONS).is_empty(), "not suspended yet");
        if let Some(status) = held.status.as_mut() {
            status.conditions.push(Condition {
                type_: "Suspended".into(),
                status: "True".into(),
                reason: "SpecSuspended".into(),
                message: String::new(),
                last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
                observed_generation: None,
            });
        }
        assert_eq!(keys(due(&held, false, &OPTIONS)), ["cancelled/1"]);
        if let Some(feedback) = held.status.as_mut().and_then(|s| s.feedback.as_mut()) {
            feedback.reported.push("cancelled/1".into());
        }
        assert!(due(&held, false, &OPTIONS).is_empty());
        // Resumed and finished later: the outcome is still reported.
        let finished = task(
            true,
            TaskPhase::Succeeded,
            1,
            &["pickedUp/1", "cancelled/1"],
        );
        assert_eq!(keys(due(&finished, false, &OPTIONS)), ["succeeded/1"]);
    }

    fn ended_with(mut task: AgentTask, type_: &str, reason: &str) -> AgentTask {
        if let Some(status) = task.status.as_mut() {
            status.conditions.push(Condition {
                type_: type_.into(),
                status: "True".into(),
                reason: reason.into(),
                message: String::new(),
                last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
                observed_generation: None,
            });
        }
        task
    }

    fn approved(reported: &[&str]) -> AgentTask {
        ended_with(
            task(true, TaskPhase::Succeeded, 1, reported),
            "Succeeded",
            recac_api::reasons::PLAN_APPROVED,
        )
    }

    fn rejected(reported: &[&str]) -> AgentTask {
        ended_with(
            task(true, TaskPhase::Failed, 1, reported),
            "Failed",
            recac_api::reasons::PLAN_REJECTED,
        )
    }

    #[test]
    fn a_waiting_plan_is_owed_once_as_the_planning_runs_outcome() {
        let waiting = task(true, TaskPhase::AwaitingApproval, 1, &["pickedUp/1"]);
        assert_eq!(plan_state(&waiting), Some(PlanState::Waiting));
        assert_eq!(keys(due(&waiting, false, &OPTIONS)), ["planned/1"]);
        assert_eq!(
            outcome_due(&waiting, false).map(|r| r.key()),
            Some("planned/1".into())
        );
        assert_eq!(
            outcome(&waiting, false).map(|r| r.key()),
            Some("planned/1".into())
        );
        assert!(ReportKind::Planned.is_outcome());
        // Not picked up first when the attempt ended before it was seen running.
        let chatty = Options {
            comment_on_dispatch: true,
            comment_on_retry: true,
        };
        assert_eq!(
            keys(due(
                &task(true, TaskPhase::AwaitingApproval, 2, &[]),
                false,
                &chatty
            )),
            ["planned/2"]
        );
        let told = task(
            true,
            TaskPhase::AwaitingApproval,
            1,
            &["pickedUp/1", "planned/1"],
        );
        assert!(due(&told, false, &OPTIONS).is_empty());
        assert_eq!(outcome_due(&told, false), None);
        assert_eq!(
            outcome(&told, false).map(|r| r.key()),
            Some("planned/1".into())
        );
        // Deleted once told: nothing more (the plan was its outcome).
        assert!(due(&told, true, &OPTIONS).is_empty());
        // Deleted before it was told: the plan can no longer be answered; the run is over.
        assert_eq!(keys(due(&waiting, true, &OPTIONS)), ["cancelled/1"]);
        assert_eq!(
            outcome(&waiting, true).map(|r| r.key()),
            Some("cancelled/1".into())
        );
    }

    #[test]
    fn a_decided_plan_is_owed_its_plan_once_and_never_a_success_or_failure() {
        for (decided, state) in [
            (approved as fn(&[&str]) -> AgentTask, PlanState::Approved),
            (rejected, PlanState::Rejected),
        ] {
            let told = decided(&["pickedUp/1", "planned/1"]);
            assert_eq!(plan_state(&told), Some(state));
            assert!(plan_settled(&told));
            for deleted in [false, true] {
                assert!(due(&told, deleted, &OPTIONS).is_empty(), "{state:?}");
                assert_eq!(outcome_due(&told, deleted), None, "{state:?}");
            }
            assert_eq!(
                outcome(&told, false).map(|r| r.key()),
                Some("planned/1".into())
            );
            // Decided before the plan was told: the plan is still owed, once.
            let untold = decided(&["pickedUp/1"]);
            for deleted in [false, true] {
                assert_eq!(
                    keys(due(&untold, deleted, &OPTIONS)),
                    ["planned/1"],
                    "{state:?}"
                );
            }
            assert_eq!(
                outcome_due(&untold, false).map(|r| r.key()),
                Some("planned/1".into())
            );
        }
    }

    #[test]
    fn a_planning_run_that_fails_before_its_plan_is_a_failure_and_others_are_no_plans() {
        let mut failed = ended_with(
            task(true, TaskPhase::Failed, 3, &["pickedUp/1"]),
            "Failed",
            "RetriesExhausted",
        );
        failed.spec.approval = Some(recac_api::Approval::Plan);
        assert_eq!(plan_state(&failed), None);
        assert_eq!(keys(due(&failed, false, &OPTIONS)), ["failed/3"]);
        let stopped = ended_with(
            task(true, TaskPhase::Failed, 1, &[]),
            "Failed",
            recac_api::reasons::STOPPED,
        );
        assert_eq!(keys(due(&stopped, false, &OPTIONS)), ["cancelled/1"]);
        let done = ended_with(
            task(true, TaskPhase::Succeeded, 1, &[]),
            "Succeeded",
            "AgentSucceeded",
        );
        assert_eq!(plan_state(&done), None);
        assert_eq!(keys(due(&done, false, &OPTIONS)), ["succeeded/1"]);
        // A reason on a condition that is not True decides nothing.
        let mut unsure = approved(&[]);
        if let Some(status) = unsure.status.as_mut() {
            status.conditions[0].status = "False".into();
        }
        assert_eq!(plan_state(&unsure), None);
        assert_eq!(keys(due(&unsure, false, &OPTIONS)), ["succeeded/1"]);
    }
}
