//! Which reports a task is owed, from its spec and status alone (pure).

use recac_api::{AgentTask, TaskPhase, TicketSource};

/// What a report tells the ticket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReportKind {
    /// The first attempt was dispatched.
    PickedUp,
    /// A later attempt was dispatched.
    Retrying,
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
            ReportKind::Succeeded => "succeeded",
            ReportKind::Failed => "failed",
            ReportKind::Cancelled => "cancelled",
        }
    }

    /// Reports that come with the outcome's transition and labels.
    pub fn is_outcome(self) -> bool {
        matches!(
            self,
            ReportKind::Succeeded | ReportKind::Failed | ReportKind::Cancelled
        )
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
    let ended = reported
        .iter()
        .any(|k| k.starts_with("succeeded/") || k.starts_with("failed/"));
    if ended {
        return Vec::new();
    }
    let mut out = Vec::new();
    match status.phase {
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

/// The outcome the task's state stands for, told or not: how it ended, or its cancellation
/// while it is deleted or suspended by a person. `None` while it waits or runs, and for a
/// task that never ran.
pub fn outcome(task: &AgentTask, deleted: bool) -> Option<Report> {
    jira_ticket(task)?;
    let status = task.status.as_ref()?;
    let attempt = status.attempt.unwrap_or(0);
    if attempt == 0 {
        return None;
    }
    let kind = match status.phase {
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
}
