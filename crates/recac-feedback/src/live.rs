//! The text of a ticket's live comment, from its runs (pure).
//!
//! One comment per ticket shows every run, newest last, each with where it is; a run whose
//! attempt's pod was read (its outcome is being told now) shows its full results, and the
//! latest failed one of those its log tail. The comment ends with the commands people may
//! write and a marker link whose target names the ticket and the version of the text: the
//! marker finds the comment again after a restart, and the version says whether what is
//! wanted is already written.

use kube::ResourceExt;
use recac_api::AgentTask;
use serde_json::Value;

use crate::comment::{Block, Comment, Inline, marker};
use crate::config::Templates;
use crate::render::{self, Facts};
use crate::report::{Report, ReportKind};
use crate::runs::{RunState, TicketKey};

/// Runs shown in full; older ones are counted, not shown (the comment must fit Jira's limit).
pub const MAX_RUNS_SHOWN: usize = 20;

/// What the comment shows of one run.
#[derive(Clone, Debug, PartialEq)]
pub struct RunView {
    /// The run's number on its ticket.
    pub number: u32,
    pub state: RunState,
    pub facts: Facts,
    /// How the run ended, told or not: its line says so in the outcome's words and links to
    /// the outcome's marker (the one a comment per report would carry).
    pub outcome: Option<Report>,
    /// The attempt's pod was read for the outcome: its results, the agent's summary and
    /// (for a failure) the log are shown.
    pub detailed: bool,
    /// The headline templates of the run's source.
    pub templates: Templates,
}

/// The comment's text and its version (what the marker carries).
#[derive(Clone, Debug, PartialEq)]
pub struct LiveText {
    pub comment: Comment,
    pub version: String,
}

/// The version of the text written last, read from a comment's marker (`prefix` is
/// [`TicketKey::marker_prefix`]); `None` when the body carries no such marker.
pub fn written_version(body: &Value, prefix: &str) -> Option<String> {
    let (text, opening, closing) = match body {
        // Wiki: `[text|href]`.
        Value::String(wiki) => (wiki.clone(), '|', ']'),
        // ADF: the link's href is a whole JSON string.
        Value::Object(_) | Value::Array(_) => (body.to_string(), '"', '"'),
        _ => return None,
    };
    let start = text.find(&format!("{opening}{prefix}"))? + opening.len_utf8() + prefix.len();
    let rest = &text[start..];
    let version = &rest[..rest.find(closing)?];
    (!version.is_empty()).then(|| version.to_string())
}

fn when(t: k8s_openapi::jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// Where an unfinished run is, in words.
fn progress_words(state: &RunState, facts: &Facts) -> String {
    let most = facts.max_attempts;
    match state {
        RunState::Queued { why: Some(why) } => format!("queued: {why}"),
        RunState::Queued { why: None } => "waiting to start".into(),
        RunState::Starting { attempt } => {
            format!("attempt {attempt} of at most {most} is starting")
        }
        RunState::Running { attempt, since } => format!(
            "running attempt {attempt} of at most {most}{}",
            since
                .map(|t| format!(" since {}", when(t)))
                .unwrap_or_default()
        ),
        RunState::Retrying {
            failed_attempt,
            next_at,
        } => format!(
            "attempt {failed_attempt} of at most {most} failed; attempt {} starts {}",
            failed_attempt + 1,
            next_at
                .map(|t| format!("at {}", when(t)))
                .unwrap_or_else(|| "soon".into())
        ),
        RunState::Suspended { attempt } => {
            format!("suspended during attempt {attempt}; it goes on when the task is resumed")
        }
        RunState::NotRun => match facts.message.as_deref().filter(|m| !m.is_empty()) {
            Some(message) => format!("ended before it ran: {message}"),
            None => "ended before it ran".into(),
        },
        // A finished run is told in its outcome's words when it has one (see `run_blocks`).
        RunState::Succeeded { .. } => "succeeded".into(),
        RunState::Failed { .. } => "failed".into(),
        RunState::Cancelled { .. } => "cancelled".into(),
    }
}

/// The agent's short summary of a finished run: from its result when the pod was read,
/// else from the task's status message (the task controller puts it there).
fn short_summary(facts: &Facts) -> Option<String> {
    let from_result = facts.result.as_ref().and_then(|r| r.summary.clone());
    let from_status = facts
        .message
        .as_deref()
        .and_then(|m| m.split_once(" succeeded: "))
        .map(|(_, summary)| summary.to_string());
    from_result
        .or(from_status)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn where_it_is(facts: &Facts) -> Vec<Vec<Inline>> {
    let mut items = Vec::new();
    if let Some(pr) = &facts.pull_request_url {
        items.push(render::field(
            "Pull request",
            Inline::Link {
                text: pr.clone(),
                href: pr.clone(),
            },
        ));
    }
    if let Some(branch) = &facts.branch {
        items.push(render::field("Branch", Inline::Code(branch.clone())));
    }
    if let Some(commit) = &facts.commit {
        items.push(render::field("Commit", Inline::Code(commit.clone())));
    }
    items
}

/// One run's blocks: a title line, then what is known of it.
fn run_blocks(run: &RunView) -> Vec<Block> {
    let title = format!("Run {}", run.number);
    let facts = &run.facts;
    let mut line = match &run.outcome {
        Some(outcome) => vec![Inline::Link {
            text: title,
            href: marker(&facts.uid, &outcome.key()),
        }],
        None => vec![Inline::Strong(title)],
    };
    let words = match &run.outcome {
        Some(outcome) => render::headline(facts, outcome, &run.templates),
        None => progress_words(&run.state, facts),
    };
    line.push(Inline::Text(format!(": {words}")));
    let mut blocks = vec![Block::Paragraph(line)];
    match &run.outcome {
        Some(outcome) if run.detailed || outcome.kind == ReportKind::Cancelled => {
            blocks.extend(render::details(facts, outcome));
        }
        Some(_) => {
            let mut items = where_it_is(facts);
            if matches!(run.state, RunState::Succeeded { .. })
                && let Some(summary) = short_summary(facts)
            {
                items.push(render::field("Summary", Inline::Text(summary)));
            }
            if !items.is_empty() {
                blocks.push(Block::Bullets(items));
            }
        }
        None => {
            let mut items = where_it_is(facts);
            if matches!(run.state, RunState::Retrying { .. })
                && let Some(message) = facts.message.as_deref().filter(|m| !m.is_empty())
            {
                items.push(render::field("Last", Inline::Text(message.to_string())));
            }
            items.push(crate::render::follow_linked(facts, "its logs"));
            blocks.push(Block::Bullets(items));
        }
    }
    blocks
}

fn commands(any_unfinished: bool) -> Vec<Inline> {
    let mut line = vec![
        Inline::Text("Ask recac in a comment: ".into()),
        Inline::Code("/recac <what else to do>".into()),
        Inline::Text(" for a follow-up run on the same branch, ".into()),
        Inline::Code("/recac retry".into()),
        Inline::Text(" to run the latest request again".into()),
    ];
    if any_unfinished {
        line.push(Inline::Text(", ".into()));
        line.push(Inline::Code("/recac stop".into()));
        line.push(Inline::Text(" to stop what is not finished".into()));
    }
    line.push(Inline::Text(".".into()));
    line
}

/// A fingerprint of the comment's text (64-bit FNV-1a of its wiki markup): the same on every
/// replica and version, which the standard library's hasher does not promise.
fn version_of(comment: &Comment) -> String {
    let hash = comment
        .to_wiki()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
    format!("{hash:016x}")
}

/// The live comment of `ticket` for its `runs` (oldest first), within Jira's size limit.
pub fn render(ticket: &TicketKey, runs: &[RunView]) -> LiveText {
    let mut c = Comment::default();
    c.paragraph(vec![Inline::Text(
        "recac's runs on this ticket, newest last. This comment is updated as they go.".into(),
    )]);
    let hidden = runs.len().saturating_sub(MAX_RUNS_SHOWN);
    if hidden > 0
        && let TicketKey::Labelled { namespace, key } = ticket
    {
        c.paragraph(vec![
            Inline::Text(format!("{hidden} earlier runs are not shown: ")),
            Inline::Code(format!(
                "kubectl get at -l {}={key} -n {namespace}",
                recac_api::labels::TICKET
            )),
        ]);
    }
    let shown = &runs[hidden..];
    // The log is quoted once: for the newest run whose failure is being told in full.
    let quoted = shown
        .iter()
        .rposition(|run| run.detailed && run.outcome.is_some_and(|o| o.kind == ReportKind::Failed));
    let mut log_at = None;
    for (i, run) in shown.iter().enumerate() {
        c.blocks.extend(run_blocks(run));
        if quoted == Some(i) {
            log_at = Some(c.blocks.len());
        }
    }
    if let TicketKey::Labelled { .. } = ticket {
        let any_unfinished = runs.iter().any(|run| !run.state.is_finished());
        c.paragraph(commands(any_unfinished));
    }
    let about = match (ticket, runs.first()) {
        (TicketKey::Labelled { namespace, key }, _) => {
            format!(" · ticket {key} in namespace {namespace}")
        }
        (TicketKey::Single { .. }, Some(run)) => {
            format!(" · AgentTask {}/{}", run.facts.namespace, run.facts.task)
        }
        (TicketKey::Single { .. }, None) => String::new(),
    };
    if let (Some(at), Some(i)) = (log_at, quoted) {
        // Room for the log: what is left once everything else, the footer included, is in.
        let mut without_log = c.clone();
        without_log.paragraph(vec![
            Inline::Text(format!("recac{}", "0".repeat(16))),
            Inline::Text(about.clone()),
        ]);
        let log = render::log_blocks(&shown[i].facts, render::log_room(&without_log));
        c.blocks.splice(at..at, log);
    }
    let version = version_of(&c);
    c.paragraph(vec![
        Inline::Link {
            text: "recac".into(),
            href: format!("{}{version}", ticket.marker_prefix()),
        },
        Inline::Text(about),
    ]);
    LiveText {
        comment: c,
        version,
    }
}

/// The run number a task shows: its `recac.io/run` label, else its place among the runs.
pub fn shown_number(task: &AgentTask, place: usize) -> u32 {
    crate::runs::run_number(task).unwrap_or(u32::try_from(place + 1).unwrap_or(u32::MAX))
}

/// The source a task was made by (`recac.io/source`), for its templates.
pub fn source_of(task: &AgentTask) -> Option<&str> {
    task.labels().get("recac.io/source").map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{CancelCause, Log};
    use k8s_openapi::jiff::Timestamp;
    use recac_api::agent_contract::{AgentResult, Outcome};
    use std::time::Duration;

    fn facts(task: &str) -> Facts {
        Facts {
            task: task.into(),
            namespace: "team".into(),
            uid: format!("uid-{task}"),
            ticket: "OPS-1".into(),
            attempt: 1,
            max_attempts: 3,
            branch: Some("recac/OPS-1".into()),
            commit: None,
            pull_request_url: None,
            message: None,
            failed_reason: None,
            timeout_seconds: 3600,
            duration: None,
            result: None,
            log: Log::NotRead,
            log_lines: 50,
            cancel: None,
            stopped_by: None,
            stop_comment: None,
            dashboard: Some(format!("https://dash.example/team/{task}")),
        }
    }

    fn ticket() -> TicketKey {
        TicketKey::Labelled {
            namespace: "team".into(),
            key: "OPS-1".into(),
        }
    }

    fn running(number: u32, task: &str) -> RunView {
        RunView {
            number,
            state: RunState::Running {
                attempt: 2,
                since: Timestamp::from_second(1_700_000_000).ok(),
            },
            facts: facts(task),
            outcome: None,
            detailed: false,
            templates: Templates::default(),
        }
    }

    fn succeeded(number: u32, task: &str, detailed: bool) -> RunView {
        let mut f = facts(task);
        f.attempt = 3;
        f.pull_request_url = Some("https://github.com/o/r/pull/7".into());
        f.commit = Some("c0ffee3".into());
        f.duration = Some(Duration::from_secs(200));
        f.message = Some("attempt 3 succeeded: Made the timeout configurable.".into());
        if detailed {
            f.result = Some(AgentResult {
                outcome: Outcome::Succeeded,
                branch: None,
                commit: None,
                pull_request_url: None,
                tests_passed: Some(true),
                summary: Some("Made the timeout configurable, with tests.".into()),
                token_usage: None,
            });
        }
        RunView {
            number,
            state: RunState::Succeeded { attempts: 3 },
            facts: f,
            outcome: Some(Report {
                kind: ReportKind::Succeeded,
                attempt: 3,
            }),
            detailed,
            templates: Templates::default(),
        }
    }

    fn failed(number: u32, task: &str, log: &str) -> RunView {
        let mut f = facts(task);
        f.failed_reason = Some("RetriesExhausted".into());
        f.message = Some("attempt 3 failed (BackoffLimitExceeded: x); no retries left".into());
        f.log = Log::Read(log.into());
        RunView {
            number,
            state: RunState::Failed { attempts: 3 },
            facts: f,
            outcome: Some(Report {
                kind: ReportKind::Failed,
                attempt: 3,
            }),
            detailed: true,
            templates: Templates::default(),
        }
    }

    #[test]
    fn a_running_run_says_its_attempt_since_when_and_links_its_logs() {
        let text = render(&ticket(), &[running(1, "ops-1")]);
        let wiki = text.comment.to_wiki();
        assert!(
            wiki.contains("*Run 1*: running attempt 2 of at most 3 since 2023-11-14 22:13:20 UTC"),
            "{wiki}"
        );
        assert!(
            wiki.contains(
                "{{kubectl get at ops-1 -n team}} or [its logs|https://dash.example/team/ops-1]"
            ),
            "{wiki}"
        );
        assert!(wiki.contains("{{/recac stop}}"), "{wiki}");
        assert!(
            wiki.contains(&format!(
                "[recac|https://github.com/recac-io/recac#recac-feedback/status/ticket/team/OPS-1/{}]",
                text.version
            )),
            "{wiki}"
        );
        let body = Value::String(wiki);
        assert_eq!(
            written_version(&body, &ticket().marker_prefix()),
            Some(text.version.clone())
        );
        let adf = text.comment.to_adf();
        assert_eq!(
            written_version(&adf, &ticket().marker_prefix()),
            Some(text.version)
        );
        let other = TicketKey::Labelled {
            namespace: "team".into(),
            key: "OPS-10".into(),
        };
        assert_eq!(written_version(&adf, &other.marker_prefix()), None);
    }

    #[test]
    fn an_outcome_told_now_is_in_full_and_later_in_one_line_each_with_its_marker() {
        let full = render(&ticket(), &[succeeded(1, "ops-1", true)]);
        let wiki = full.comment.to_wiki();
        for part in [
            "[Run 1|https://github.com/recac-io/recac#recac-feedback/uid-ops-1/succeeded/3]: recac finished this ticket in 3m 20s (3 attempts).",
            "* Pull request: [https://github.com/o/r/pull/7|https://github.com/o/r/pull/7]",
            "* Branch: {{recac/OPS-1}}",
            "* Tests: passed",
            "*The agent's summary:* Made the timeout configurable, with tests.",
            "{{/recac retry}}",
        ] {
            assert!(wiki.contains(part), "{part} missing in {wiki}");
        }
        assert!(
            !wiki.contains("/recac stop"),
            "nothing left to stop: {wiki}"
        );

        let short = render(
            &ticket(),
            &[succeeded(1, "ops-1", false), running(2, "ops-1-r2")],
        );
        let wiki = short.comment.to_wiki();
        assert!(
            wiki.contains("* Summary: Made the timeout configurable."),
            "{wiki}"
        );
        assert!(!wiki.contains("Tests: passed"), "{wiki}");
        assert!(
            wiki.find("Run 1").unwrap_or(usize::MAX) < wiki.find("Run 2").unwrap_or(0),
            "newest last: {wiki}"
        );
        assert_ne!(full.version, short.version);
    }

    #[test]
    fn the_version_is_a_stable_fingerprint() {
        let mut c = Comment::default();
        c.paragraph(vec![Inline::Text("a".into())]);
        // FNV-1a 64 of "a": a fixed value, so replicas and upgrades agree on it.
        assert_eq!(version_of(&c), "af63dc4c8601ec8c");
    }

    #[test]
    fn the_same_runs_give_the_same_version_and_any_change_another() {
        let a = render(&ticket(), &[running(1, "ops-1")]);
        let b = render(&ticket(), &[running(1, "ops-1")]);
        assert_eq!(a, b);
        let mut later = running(1, "ops-1");
        later.state = RunState::Retrying {
            failed_attempt: 2,
            next_at: None,
        };
        assert_ne!(render(&ticket(), &[later]).version, a.version);
    }

    #[test]
    fn only_the_newest_failure_told_in_full_quotes_its_log_within_the_limit() {
        let long_line = "z".repeat(2000);
        let big_log: String = (0..40).map(|i| format!("{i} {long_line}\n")).collect();
        let runs = [
            failed(1, "ops-1", "first run's log line"),
            failed(2, "ops-1-r2", &big_log),
        ];
        let text = render(&ticket(), &runs);
        assert!(
            text.comment.text_len() <= crate::comment::TEXT_BUDGET,
            "{}",
            text.comment.text_len()
        );
        let wiki = text.comment.to_wiki();
        assert!(!wiki.contains("first run's log line"), "one log only");
        assert!(wiki.contains(&format!("39 {long_line}")));
        assert!(wiki.contains("earlier lines cut to fit Jira's comment limit"));
        let log_at = wiki.find("{noformat}").unwrap_or(0);
        assert!(wiki.find("Run 2").unwrap_or(usize::MAX) < log_at, "{wiki}");
        assert!(log_at < wiki.find("/recac retry").unwrap_or(0), "{wiki}");
    }

    #[test]
    fn waiting_retrying_stopped_and_a_task_of_its_own() {
        let mut queued = running(2, "ops-1-r2");
        queued.state = RunState::Queued {
            why: Some("waiting for the earlier run ops-1 of ticket OPS-1 to finish".into()),
        };
        let mut retrying = running(1, "ops-1");
        retrying.state = RunState::Retrying {
            failed_attempt: 1,
            next_at: Timestamp::from_second(1_700_000_060).ok(),
        };
        retrying.facts.message =
            Some("attempt 1 failed (BackoffLimitExceeded: x); attempt 2 in 60s".into());
        let wiki = render(&ticket(), &[retrying, queued]).comment.to_wiki();
        assert!(
            wiki.contains("*Run 1*: attempt 1 of at most 3 failed; attempt 2 starts at 2023-11-14 22:14:20 UTC"),
            "{wiki}"
        );
        assert!(
            wiki.contains("* Last: attempt 1 failed (BackoffLimitExceeded: x)"),
            "{wiki}"
        );
        assert!(
            wiki.contains("*Run 2*: queued: waiting for the earlier run ops-1"),
            "{wiki}"
        );

        let mut stopped = running(1, "mine");
        stopped.state = RunState::Cancelled { attempt: 2 };
        stopped.outcome = Some(Report {
            kind: ReportKind::Cancelled,
            attempt: 2,
        });
        stopped.facts.cancel = Some(CancelCause::Stopped);
        stopped.facts.stopped_by = Some("Ada".into());
        let single = TicketKey::Single {
            uid: "uid-mine".into(),
        };
        let wiki = render(&single, &[stopped]).comment.to_wiki();
        assert!(
            wiki.contains("recac stopped working on this ticket during attempt 2, as Ada asked."),
            "{wiki}"
        );
        assert!(wiki.contains("Branch (work so far)"), "{wiki}");
        assert!(
            !wiki.contains("{{/recac"),
            "no commands for a task of its own: {wiki}"
        );
        assert!(
            wiki.contains("#recac-feedback/status/task/uid-mine/")
                && wiki.ends_with(" · AgentTask team/mine"),
            "{wiki}"
        );
    }

    #[test]
    fn many_runs_show_the_newest() {
        let runs: Vec<RunView> = (1..=25)
            .map(|n| succeeded(n, &format!("ops-1-r{n}"), false))
            .collect();
        let wiki = render(&ticket(), &runs).comment.to_wiki();
        assert!(wiki.contains("5 earlier runs are not shown"), "{wiki}");
        assert!(!wiki.contains("[Run 5|"), "{wiki}");
        assert!(wiki.contains("[Run 6|"), "{wiki}");
    }
}
