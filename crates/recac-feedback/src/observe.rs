//! What a report says, from the task and its attempt's pod (pure).

use std::time::Duration;

use kube::ResourceExt;
use recac_api::AgentTask;
use recac_api::agent_contract::AgentResult;

use crate::config::FeedbackConfig;
use crate::logtail::LogRedactor;
use crate::render::{CancelCause, Facts, Log};
use crate::report::{self, Report, ReportKind, jira_ticket};

/// The longest plan shown, in bytes: as much as an agent may write.
pub const MAX_PLAN_BYTES: usize = recac_api::agent_contract::MAX_PLAN_BYTES;

/// The facts in the task itself; the result and log come from its pod, and the plan (which
/// is in the task too) from [`plan_text`].
pub fn facts(
    task: &AgentTask,
    report: &Report,
    config: &FeedbackConfig,
    result: Option<AgentResult>,
    log: Log,
    deleted: bool,
) -> Facts {
    let status = task.status.clone().unwrap_or_default();
    let namespace = task.namespace().unwrap_or_default();
    let name = task.name_any();
    let duration = match (&status.start_time, &status.completion_time) {
        (Some(start), Some(end)) => Duration::try_from(start.0.duration_until(end.0)).ok(),
        _ => None,
    };
    let failed_reason = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Failed" && c.status == "True")
        .map(|c| c.reason.clone());
    let stopped = report::stopped(task);
    let cancel = (report.kind == ReportKind::Cancelled).then_some(if stopped {
        CancelCause::Stopped
    } else if deleted {
        CancelCause::Deleted
    } else {
        CancelCause::Suspended
    });
    let stop_annotation = |key: &str| {
        task.annotations()
            .get(key)
            .map(|value| value.trim())
            .filter(|value| stopped && !value.is_empty())
            .map(str::to_string)
    };
    let plan_state = report::plan_state(task);
    let approval_by = task
        .annotations()
        .get(recac_api::annotations::APPROVAL_BY)
        .map(|by| by.trim())
        .filter(|by| plan_state.is_some_and(report::PlanState::is_settled) && !by.is_empty())
        .map(str::to_string);
    let pick = |from_status: Option<String>, from_result: Option<&String>| {
        from_status.or_else(|| from_result.cloned())
    };
    Facts {
        dashboard: config.dashboard_url.as_ref().map(|url| {
            url.replace("{namespace}", &namespace)
                .replace("{name}", &name)
        }),
        task: name,
        namespace,
        uid: task.uid().unwrap_or_default(),
        ticket: jira_ticket(task).unwrap_or_default().to_string(),
        attempt: report.attempt,
        max_attempts: task.spec.max_retries + 1,
        branch: pick(
            status.branch,
            result.as_ref().and_then(|r| r.branch.as_ref()),
        ),
        commit: pick(
            status.commit,
            result.as_ref().and_then(|r| r.commit.as_ref()),
        ),
        pull_request_url: pick(
            status.pull_request_url,
            result.as_ref().and_then(|r| r.pull_request_url.as_ref()),
        ),
        message: status.message,
        failed_reason,
        timeout_seconds: task.spec.timeout_seconds,
        duration,
        result,
        log,
        log_lines: config.log_tail_lines,
        cancel,
        stopped_by: stop_annotation(recac_api::annotations::STOP_BY),
        stop_comment: stop_annotation(recac_api::annotations::STOP),
        plan: None,
        plan_state,
        approval_by,
        partial: status.partial == Some(true),
        egress_blocked: status
            .egress
            .as_ref()
            .map(|e| e.blocked.clone())
            .unwrap_or_default(),
        spend: status.spend,
        budget: task.spec.budget.clone(),
        model: task
            .spec
            .agent
            .as_ref()
            .and_then(|agent| agent.model.clone())
            .filter(|model| !model.trim().is_empty()),
        commands: matches!(
            crate::runs::TicketKey::of(task),
            crate::runs::TicketKey::Labelled { .. }
        ),
    }
}

/// The longest note (what a run cut short did, what is left) shown, in bytes.
pub const MAX_NOTE_BYTES: usize = 1500;

/// The agent's result as a report may show it: its notes on a run cut short (what it did,
/// what is left) are agent output, so anything that looks like a credential is removed as
/// from the log tail, and each is cut to [`MAX_NOTE_BYTES`]; an empty note is dropped.
pub fn clean_result(mut result: AgentResult, redactor: &LogRedactor) -> AgentResult {
    if let Some(partial) = result.partial.as_mut() {
        let clean = |note: Option<String>| {
            note.filter(|n| !n.trim().is_empty())
                .map(|n| cut_note(redactor.redact(n.trim())))
        };
        partial.done = clean(partial.done.take());
        partial.left = clean(partial.left.take());
    }
    result
}

fn cut_note(note: String) -> String {
    if note.len() <= MAX_NOTE_BYTES {
        return note;
    }
    let mut end = MAX_NOTE_BYTES;
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} […]", &note[..end])
}

/// A planning run's plan as a report may show it: agent output, so anything that looks like
/// a credential is removed as from the log tail, and at most [`MAX_PLAN_BYTES`] of it are
/// kept. `None` when the task has no plan.
pub fn plan_text(task: &AgentTask, redactor: &LogRedactor) -> Option<String> {
    let plan = task.status.as_ref()?.plan.as_deref()?;
    if plan.trim().is_empty() {
        return None;
    }
    let clean = redactor.redact(plan.trim_end());
    if clean.len() <= MAX_PLAN_BYTES {
        return Some(clean);
    }
    let mut end = MAX_PLAN_BYTES;
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    Some(format!(
        "{}\n[… the rest of the plan is cut]",
        &clean[..end]
    ))
}

/// Whether a report needs the attempt's pod (its result, and for failures its log). A
/// plan's report does not: the plan is in the task's status.
pub fn needs_pod(report: &Report) -> bool {
    matches!(report.kind, ReportKind::Succeeded | ReportKind::Failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use recac_api::{AgentTaskStatus, TaskPhase};

    fn task(reason: &str, annotations: &[(&str, &str)]) -> AgentTask {
        let mut task: AgentTask = serde_saphyr::from_str(
            "apiVersion: recac.io/v1alpha1\nkind: AgentTask\nmetadata: {name: t, namespace: ns, uid: u1}\nspec:\n  prompt: p\n  ticket: {source: jira, key: OPS-1}\n  repository: {url: https://g.example/r.git}\n",
        )
        .expect("task");
        task.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        task.status = Some(AgentTaskStatus {
            phase: Some(TaskPhase::Failed),
            attempt: Some(1),
            branch: Some("recac/OPS-1".into()),
            conditions: vec![Condition {
                type_: "Failed".into(),
                status: "True".into(),
                reason: reason.into(),
                message: String::new(),
                last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
                observed_generation: None,
            }],
            ..Default::default()
        });
        task
    }

    fn cancel_facts(task: &AgentTask, deleted: bool) -> Facts {
        let report = Report {
            kind: ReportKind::Cancelled,
            attempt: 1,
        };
        facts(
            task,
            &report,
            &FeedbackConfig::default(),
            None,
            Log::NotRead,
            deleted,
        )
    }

    #[test]
    fn a_stop_names_who_asked_and_the_comment_even_once_deleted() {
        use recac_api::annotations::{STOP, STOP_BY};
        let stopped = task("Stopped", &[(STOP, "10042"), (STOP_BY, " Ada ")]);
        for deleted in [false, true] {
            let f = cancel_facts(&stopped, deleted);
            assert_eq!(f.cancel, Some(CancelCause::Stopped));
            assert_eq!(f.stopped_by.as_deref(), Some("Ada"));
            assert_eq!(f.stop_comment.as_deref(), Some("10042"));
            assert_eq!(f.branch.as_deref(), Some("recac/OPS-1"));
        }
        // A stop annotation on a task that ended otherwise is not the cause.
        let deleted = cancel_facts(&task("RetriesExhausted", &[(STOP, "10042")]), true);
        assert_eq!(deleted.cancel, Some(CancelCause::Deleted));
        assert_eq!(deleted.stopped_by, None);
        assert_eq!(deleted.stop_comment, None);
    }

    fn planning(phase: TaskPhase, reason: &str, plan: &str) -> AgentTask {
        let mut t = task(
            reason,
            &[
                (recac_api::annotations::APPROVAL, "approved"),
                (recac_api::annotations::APPROVAL_BY, " Ada "),
            ],
        );
        if let Some(status) = t.status.as_mut() {
            status.phase = Some(phase);
            status.plan = Some(plan.into());
            status.conditions[0].type_ = if phase == TaskPhase::Succeeded {
                "Succeeded".into()
            } else {
                "Failed".into()
            };
        }
        t
    }

    fn planned_facts(task: &AgentTask) -> Facts {
        let report = Report {
            kind: ReportKind::Planned,
            attempt: 1,
        };
        facts(
            task,
            &report,
            &FeedbackConfig::default(),
            None,
            Log::NotRead,
            false,
        )
    }

    #[test]
    fn the_plan_is_cleaned_like_the_log_and_cut_to_what_an_agent_may_write() {
        let redactor = LogRedactor::new(&["corp-[0-9]{6}".into()]).expect("redactor");
        let token = "ghp_Z9y8X7w6V5u4T3s2R1q0P9o8N7m6L5k4J3i2";
        let plan = format!("1. Use {token} to push\n2. Ask corp-424242\n3. Test it\n\n");
        let waiting = planning(TaskPhase::AwaitingApproval, "", &plan);
        let shown = plan_text(&waiting, &redactor).expect("a plan");
        assert!(
            !shown.contains(token) && !shown.contains("corp-424242"),
            "{shown}"
        );
        assert!(
            shown.starts_with("1. Use [REDACTED] to push\n2. Ask "),
            "{shown}"
        );
        assert!(shown.ends_with("3. Test it"), "{shown}");

        let long = "é".repeat(MAX_PLAN_BYTES);
        let cut = plan_text(&planning(TaskPhase::AwaitingApproval, "", &long), &redactor)
            .expect("a plan");
        let (kept, note) = cut.split_once('\n').expect("a note");
        assert!(kept.len() <= MAX_PLAN_BYTES && kept.len() > MAX_PLAN_BYTES - 2);
        assert_eq!(note, "[… the rest of the plan is cut]");

        assert_eq!(
            plan_text(&planning(TaskPhase::AwaitingApproval, "", " \n"), &redactor),
            None
        );
        assert_eq!(plan_text(&task("Stopped", &[]), &redactor), None);
    }

    #[test]
    fn a_cut_short_tasks_facts_and_the_agents_notes_are_cleaned() {
        let mut t = task(recac_api::reasons::DEADLINE_EXCEEDED, &[]);
        t.metadata.labels = Some(
            [(recac_api::labels::TICKET.to_string(), "OPS-1".to_string())]
                .into_iter()
                .collect(),
        );
        t.spec.budget = Some(recac_api::Budget {
            tokens: Some(1000),
            ..Default::default()
        });
        t.spec.agent = Some(Box::new(recac_api::AgentSpec {
            model: Some("claude-sonnet-4-5".into()),
            ..Default::default()
        }));
        if let Some(status) = t.status.as_mut() {
            status.partial = Some(true);
            status.commit = Some("c0ffee1".into());
            status.spend = Some(recac_api::Spend {
                attempts: 1,
                not_reported: 1,
                ..Default::default()
            });
        }
        let report = Report {
            kind: ReportKind::Failed,
            attempt: 1,
        };
        let f = facts(
            &t,
            &report,
            &FeedbackConfig::default(),
            None,
            Log::NotRead,
            false,
        );
        assert!(f.partial && f.commands);
        assert_eq!(f.spend.as_ref().map(|s| s.not_reported), Some(1));
        assert_eq!(f.budget.as_ref().and_then(|b| b.tokens), Some(1000));
        assert_eq!(f.model.as_deref(), Some("claude-sonnet-4-5"));
        t.metadata.labels = None;
        if let Some(status) = t.status.as_mut() {
            status.partial = Some(false);
        }
        let f = facts(
            &t,
            &report,
            &FeedbackConfig::default(),
            None,
            Log::NotRead,
            false,
        );
        assert!(!f.partial && !f.commands);

        let redactor = LogRedactor::new(&["corp-[0-9]{6}".into()]).expect("redactor");
        let token = "ghp_Z9y8X7w6V5u4T3s2R1q0P9o8N7m6L5k4J3i2";
        let result: AgentResult = serde_json::from_value(serde_json::json!({
            "outcome": "partial",
            "partial": {
                "cause": "deadline",
                "done": format!("  pushed with {token}\n"),
                "left": format!("ask corp-424242 {}", "é".repeat(MAX_NOTE_BYTES)),
            },
        }))
        .expect("a result");
        let clean = clean_result(result, &redactor);
        let partial = clean.partial.expect("partial");
        assert_eq!(partial.done.as_deref(), Some("pushed with [REDACTED]"));
        let left = partial.left.expect("left");
        assert!(
            !left.contains("corp-424242") && left.ends_with(" […]"),
            "{left}"
        );
        assert!(
            left.len() <= MAX_NOTE_BYTES + " […]".len(),
            "{}",
            left.len()
        );
        let empty: AgentResult = serde_json::from_value(serde_json::json!({
            "outcome": "partial",
            "partial": {"cause": "budget", "done": " \n", "left": ""},
        }))
        .expect("a result");
        let partial = clean_result(empty, &redactor).partial.expect("partial");
        assert_eq!((partial.done, partial.left), (None, None));
    }

    #[test]
    fn who_decided_is_told_only_once_the_plan_is_decided() {
        let waiting = planned_facts(&planning(TaskPhase::AwaitingApproval, "", "p"));
        assert_eq!(waiting.plan_state, Some(report::PlanState::Waiting));
        assert_eq!(waiting.approval_by, None);
        assert_eq!(waiting.plan, None, "the plan comes cleaned, from plan_text");
        let approved = planned_facts(&planning(
            TaskPhase::Succeeded,
            recac_api::reasons::PLAN_APPROVED,
            "p",
        ));
        assert_eq!(approved.plan_state, Some(report::PlanState::Approved));
        assert_eq!(approved.approval_by.as_deref(), Some("Ada"));
        let rejected = planned_facts(&planning(
            TaskPhase::Failed,
            recac_api::reasons::PLAN_REJECTED,
            "p",
        ));
        assert_eq!(rejected.plan_state, Some(report::PlanState::Rejected));
        assert_eq!(rejected.approval_by.as_deref(), Some("Ada"));
    }
}
