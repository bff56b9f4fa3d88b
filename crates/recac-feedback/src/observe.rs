//! What a report says, from the task and its attempt's pod (pure).

use std::time::Duration;

use kube::ResourceExt;
use recac_api::AgentTask;
use recac_api::agent_contract::AgentResult;

use crate::config::FeedbackConfig;
use crate::render::{CancelCause, Facts, Log};
use crate::report::{Report, ReportKind, jira_ticket};

/// The facts in the task itself; the result and log come from its pod.
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
    let cancel = (report.kind == ReportKind::Cancelled).then_some(if deleted {
        CancelCause::Deleted
    } else {
        CancelCause::Suspended
    });
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
    }
}

/// Whether a report needs the attempt's pod (its result, and for failures its log).
pub fn needs_pod(report: &Report) -> bool {
    matches!(report.kind, ReportKind::Succeeded | ReportKind::Failed)
}
