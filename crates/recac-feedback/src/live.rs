//! The text of a ticket's live comment, from its runs (pure).
//!
//! One comment per ticket shows every run, newest last, each with where it is; a run whose
//! attempt's pod was read (its outcome is being told now) shows its full results, and the
//! latest failed one of those its log tail. A planning run whose plan waits shows the plan
//! (as text, never as markup) and how to answer it; once it is decided, who decided, and the
//! run that follows has its own entry. The comment ends with the commands people may
//! write and a marker link whose target names the ticket and the version of the text: the
//! marker finds the comment again after a restart, and the version says whether what is
//! wanted is already written.

use kube::ResourceExt;
use recac_api::AgentTask;
use serde_json::Value;

use crate::comment::{Block, Comment, Inline, marker};
use crate::config::Templates;
use crate::cut_short;
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
    // The last one: the footer's (quoted agent output above it may hold look-alikes).
    let start = text.rfind(&format!("{opening}{prefix}"))? + opening.len_utf8() + prefix.len();
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
        } => {
            let at = next_at
                .map(|t| format!("at {}", when(t)))
                .unwrap_or_else(|| "soon".into());
            match cut_short::retrying_words(*failed_attempt, facts) {
                Some(words) => format!("{words} ({at}, at most {most} attempts)"),
                None => format!(
                    "attempt {failed_attempt} of at most {most} failed; attempt {} starts {at}",
                    failed_attempt + 1,
                ),
            }
        }
        RunState::Suspended { attempt } => {
            format!("suspended during attempt {attempt}; it goes on when the task is resumed")
        }
        RunState::NotRun if facts.failed_reason.as_deref() == Some(cut_short::BUDGET_UNPRICED) => {
            format!("ended before it ran: {}", cut_short::unpriced_words())
        }
        RunState::NotRun => match facts.message.as_deref().filter(|m| !m.is_empty()) {
            Some(message) => format!("ended before it ran: {message}"),
            None => "ended before it ran".into(),
        },
        // A finished run is told in its outcome's words when it has one (see `run_blocks`).
        RunState::AwaitingApproval { .. } => "wrote a plan; it waits for approval".into(),
        RunState::PlanApproved { .. } => "its plan was approved".into(),
        RunState::PlanRejected { .. } => "its plan was rejected".into(),
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

/// The run's number, linked to its outcome's marker when it has one.
fn title(run: &RunView) -> Inline {
    let title = format!("Run {}", run.number);
    match &run.outcome {
        Some(outcome) => Inline::Link {
            text: title,
            href: marker(&run.facts.uid, &outcome.key()),
        },
        None => Inline::Strong(title),
    }
}

/// A planning run's blocks: that its plan waits, then the plan and how to answer it; or who
/// decided on it (the run that follows it has its own entry). `show_plan`: the plan's text
/// is shown here (it is for the newest plan only, so that the comment fits).
fn plan_run_blocks(run: &RunView, show_plan: bool) -> Vec<Block> {
    let facts = &run.facts;
    let mut line = vec![title(run)];
    let decided = |verdict: &str| {
        let by = facts
            .approval_by
            .as_ref()
            .map(|who| format!(" by {who}"))
            .unwrap_or_default();
        Inline::Text(format!("'s plan was {verdict}{by}."))
    };
    match &run.state {
        RunState::PlanApproved { .. } => line.push(decided("approved")),
        RunState::PlanRejected { .. } => line.push(decided("rejected")),
        _ => match run
            .outcome
            .and_then(|o| render::configured_headline(facts, &o, &run.templates))
        {
            Some(words) => line.push(Inline::Text(format!(": {words}"))),
            None => line.push(Inline::Text(" wrote a plan and waits for approval.".into())),
        },
    }
    let mut blocks = vec![Block::Paragraph(line)];
    if show_plan {
        blocks.extend(render::plan_blocks(facts));
    }
    blocks
}

/// One run's blocks: a title line, then what is known of it.
fn run_blocks(run: &RunView, show_plan: bool) -> Vec<Block> {
    if run.state.has_plan() {
        return plan_run_blocks(run, show_plan);
    }
    let facts = &run.facts;
    let mut line = vec![title(run)];
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
    // One plan is shown, with how to answer it while it waits: the newest there is to show
    // (a waiting plan; a decided one only while its report is being told).
    let plan_shown = shown.iter().rposition(|run| {
        matches!(run.state, RunState::AwaitingApproval { .. })
            || (run.state.has_plan() && run.facts.plan.is_some())
    });
    let mut log_at = None;
    for (i, run) in shown.iter().enumerate() {
        c.blocks.extend(run_blocks(run, plan_shown == Some(i)));
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
    use crate::render::tests::{MARKUP_PLAN, adf_code_blocks, adf_texts, wiki_block};
    use crate::render::{CancelCause, Log};
    use crate::report::PlanState;
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
            plan: None,
            plan_state: None,
            approval_by: None,
            partial: false,
            spend: None,
            budget: None,
            model: None,
            commands: true,
            egress_blocked: Vec::new(),
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
                plan: None,
                partial: None,
                usage: None,
                egress_blocked: Vec::new(),
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
    fn a_retry_after_a_deadline_cut_and_a_cut_told_in_full() {
        let mut retrying = running(1, "ops-1");
        retrying.state = RunState::Retrying {
            failed_attempt: 1,
            next_at: Timestamp::from_second(1_700_000_060).ok(),
        };
        retrying.facts.partial = true;
        retrying.facts.commit = Some("c0ffee1234".into());
        retrying.facts.message = Some(
            "attempt 1 failed (DeadlineExceeded: cut short at its deadline); attempt 2 in 60s"
                .into(),
        );
        let text = render(&ticket(), &[retrying.clone()]);
        let wiki = text.comment.to_wiki();
        let line = "attempt 1 was cut short by its deadline; attempt 2 continues from the branch (at 2023-11-14 22:14:20 UTC, at most 3 attempts)";
        assert!(wiki.contains(&format!("*Run 1*: {line}")), "{wiki}");
        assert!(wiki.contains("* Commit: {{c0ffee1234}}"), "{wiki}");
        let mut texts = Vec::new();
        adf_texts(&text.comment.to_adf(), &mut texts);
        assert!(
            texts.iter().any(|(t, _)| t == &format!(": {line}")),
            "{texts:?}"
        );
        // Nothing pushed: an ordinary retry.
        retrying.facts.partial = false;
        let wiki = render(&ticket(), &[retrying]).comment.to_wiki();
        assert!(
            wiki.contains("*Run 1*: attempt 1 of at most 3 failed; attempt 2 starts at"),
            "{wiki}"
        );

        let mut cut = failed(1, "ops-1", "the log");
        cut.facts.failed_reason = Some(recac_api::reasons::DEADLINE_EXCEEDED.into());
        cut.facts.partial = true;
        cut.facts.commit = Some("c0ffee1234".into());
        cut.facts.spend = Some(recac_api::Spend {
            models: vec![recac_api::ModelSpend {
                provider: Some("anthropic".into()),
                model: "claude-sonnet-4-5".into(),
                input_tokens: 51234,
                output_tokens: 2345,
                cost: Some("0.19".into()),
                currency: Some("USD".into()),
            }],
            attempts: 3,
            not_reported: 1,
        });
        let wiki = render(&ticket(), &[cut.clone()]).comment.to_wiki();
        for part in [
            "/uid-ops-1/failed/3]: recac could not finish this ticket: the run was cut short by its deadline of 1h 0m.",
            "The run was cut short by its deadline ({{timeoutSeconds}}); its work so far is pushed to {{recac/OPS-1}} ({{c0ffee1}}). To continue, write {{/recac <what to do next>}} on this ticket, or {{/recac retry}}.",
            "* Spent: 51,234 input and 2,345 output tokens on claude-sonnet-4-5 (0.19 USD)",
            "* Spent: usage not reported by the agent for 1 attempt",
            "{noformat}\nthe log",
        ] {
            assert!(wiki.contains(part), "{part} missing in {wiki}");
        }
        // Told earlier: one line in the outcome's words, with where the work is.
        cut.detailed = false;
        let wiki = render(&ticket(), &[cut]).comment.to_wiki();
        assert!(wiki.contains("cut short by its deadline of 1h 0m.\n\n* Branch: {{recac/OPS-1}}\n* Commit: {{c0ffee1234}}"), "{wiki}");
        assert!(!wiki.contains("Spent"), "{wiki}");
    }

    #[test]
    fn an_unpriced_budget_is_a_run_that_never_ran_and_says_why() {
        let mut run = running(1, "ops-1");
        run.state = RunState::NotRun;
        run.facts.failed_reason = Some(crate::cut_short::BUDGET_UNPRICED.into());
        run.facts.message = Some("budget.cost is set but model m has no price".into());
        let wiki = render(&ticket(), &[run]).comment.to_wiki();
        assert!(
            wiki.contains("*Run 1*: ended before it ran: its budget has a cost, but its model has no price in the operator's agent.prices"),
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

    fn planning(number: u32, task: &str, state: RunState) -> RunView {
        let mut f = facts(task);
        f.plan_state = Some(match state {
            RunState::PlanApproved { .. } => PlanState::Approved,
            RunState::PlanRejected { .. } => PlanState::Rejected,
            _ => PlanState::Waiting,
        });
        if matches!(state, RunState::AwaitingApproval { .. }) {
            f.plan = Some(MARKUP_PLAN.into());
        }
        RunView {
            number,
            state,
            facts: f,
            outcome: Some(Report {
                kind: ReportKind::Planned,
                attempt: 1,
            }),
            detailed: false,
            templates: Templates::default(),
        }
    }

    #[test]
    fn a_waiting_plan_shows_its_text_as_is_and_how_to_answer_it() {
        let text = render(
            &ticket(),
            &[planning(
                1,
                "ops-1",
                RunState::AwaitingApproval { attempt: 1 },
            )],
        );
        let wiki = text.comment.to_wiki();
        let line = "[Run 1|https://github.com/recac-io/recac#recac-feedback/uid-ops-1/planned/1] wrote a plan and waits for approval.";
        let block = wiki_block(MARKUP_PLAN);
        let answer =
            "Reply {{/recac approve}} to implement it, or {{/recac reject <why>}} for a new plan.";
        for part in [line, &block, answer] {
            assert!(wiki.contains(part), "{part} missing in {wiki}");
        }
        let at = |part: &str| wiki.find(part).unwrap_or(usize::MAX);
        assert!(at(line) < at(&block) && at(&block) < at(answer), "{wiki}");
        assert!(at(answer) < at("{{/recac retry}}"), "{wiki}");
        let outside = wiki.replace(&block, "");
        for markup in ["[link|http://x]", "*bold*", "{code}", "<script>"] {
            assert!(
                !outside.contains(markup),
                "{markup} outside the block: {wiki}"
            );
        }
        assert!(!wiki.contains("/recac stop"), "nothing runs: {wiki}");

        let adf = text.comment.to_adf();
        assert_eq!(adf_code_blocks(&adf), [MARKUP_PLAN]);
        let mut texts = Vec::new();
        adf_texts(&adf, &mut texts);
        let hrefs: Vec<&str> = texts
            .iter()
            .filter(|(_, marks)| marks.contains("\"link\""))
            .map(|(_, marks)| marks.as_str())
            .collect();
        assert_eq!(hrefs.len(), 2, "the run's and the footer's: {hrefs:?}");
        assert!(!adf.to_string().contains(r#""href":"http://x""#), "{adf}");
        assert_eq!(
            written_version(&adf, &ticket().marker_prefix()),
            Some(text.version)
        );
    }

    #[test]
    fn a_decided_plan_says_by_whom_without_its_text_and_the_next_run_follows() {
        let mut first = planning(1, "ops-1", RunState::PlanApproved { attempt: 1 });
        first.facts.approval_by = Some("Ada".into());
        let wiki = render(&ticket(), &[first.clone(), succeeded(2, "ops-1-r2", true)])
            .comment
            .to_wiki();
        assert!(
            wiki.contains("[Run 1|https://github.com/recac-io/recac#recac-feedback/uid-ops-1/planned/1]'s plan was approved by Ada."),
            "{wiki}"
        );
        assert!(
            wiki.contains("[Run 2|https://github.com/recac-io/recac#recac-feedback/uid-ops-1-r2/succeeded/3]: recac finished this ticket"),
            "{wiki}"
        );
        assert!(
            wiki.find("Run 1").unwrap_or(usize::MAX) < wiki.find("Run 2").unwrap_or(0),
            "{wiki}"
        );
        for absent in [
            "{noformat}",
            "/recac approve",
            "/recac stop",
            "waits for approval",
        ] {
            assert!(!wiki.contains(absent), "{absent} in {wiki}");
        }

        let mut rejected = planning(1, "ops-1", RunState::PlanRejected { attempt: 1 });
        rejected.facts.approval_by = None;
        let again = planning(2, "ops-1-r2", RunState::AwaitingApproval { attempt: 1 });
        let wiki = render(&ticket(), &[rejected, again]).comment.to_wiki();
        assert!(wiki.contains("]'s plan was rejected.\n\n[Run 2|"), "{wiki}");
        assert_eq!(wiki.matches("{noformat}").count(), 2, "one plan: {wiki}");
        assert!(
            wiki.find("Run 2").unwrap_or(usize::MAX) < wiki.find("{noformat}").unwrap_or(0),
            "{wiki}"
        );

        // A decided plan told now (it never reached the ticket) shows its text, without the
        // question.
        first.facts.plan = Some("Change the timeout.".into());
        let wiki = render(&ticket(), &[first]).comment.to_wiki();
        assert!(
            wiki.contains(
                "'s plan was approved by Ada.\n\n{noformat}\nChange the timeout.\n{noformat}"
            ),
            "{wiki}"
        );
        assert!(!wiki.contains("/recac approve"), "{wiki}");
    }

    #[test]
    fn only_the_newest_waiting_plan_is_shown_and_a_template_replaces_the_words() {
        let mut older = planning(1, "ops-1", RunState::AwaitingApproval { attempt: 1 });
        older.facts.plan = Some("the older plan".into());
        let mut newer = planning(2, "ops-1-r2", RunState::AwaitingApproval { attempt: 1 });
        newer.templates.planned = Some("a plan for {ticket} waits (attempt {attempt})".into());
        newer.facts.plan = None;
        let wiki = render(&ticket(), &[older, newer]).comment.to_wiki();
        assert!(!wiki.contains("the older plan"), "{wiki}");
        assert!(
            wiki.contains("/uid-ops-1-r2/planned/1]: a plan for OPS-1 waits (attempt 1)"),
            "{wiki}"
        );
        assert!(
            wiki.contains("The plan is in the task's status: {{kubectl get at ops-1-r2 -n team"),
            "{wiki}"
        );
        assert_eq!(wiki.matches("{{/recac approve}}").count(), 1, "{wiki}");
    }

    #[test]
    fn a_marker_look_alike_in_quoted_text_is_not_taken_for_the_footer() {
        let mut run = planning(1, "ops-1", RunState::AwaitingApproval { attempt: 1 });
        run.facts.plan = Some(format!(
            "see [x|{}0123456789abcdef] and \"{}0123456789abcdef\"",
            ticket().marker_prefix(),
            ticket().marker_prefix()
        ));
        let text = render(&ticket(), &[run]);
        let prefix = ticket().marker_prefix();
        assert_eq!(
            written_version(&Value::String(text.comment.to_wiki()), &prefix),
            Some(text.version.clone())
        );
        assert_eq!(
            written_version(&text.comment.to_adf(), &prefix),
            Some(text.version)
        );
    }
}
