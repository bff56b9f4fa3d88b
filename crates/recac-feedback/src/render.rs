//! The text of each report, from what is known about the task (pure).

use std::collections::BTreeMap;
use std::time::Duration;

use recac_api::agent_contract::{AgentResult, Outcome};
use recac_api::{Budget, Spend};

use crate::comment::{Block, Comment, Inline, TEXT_BUDGET, marker};
use crate::config::Templates;
use crate::cut_short;
use crate::logtail;
use crate::report::{PlanState, Report, ReportKind};
use crate::template::Template;

/// Why a task was cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelCause {
    Deleted,
    Suspended,
    /// Someone asked on the ticket to stop (a `Failed` task with reason `Stopped`).
    Stopped,
}

/// The agent's log, as far as it could be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Log {
    /// Not needed for this report.
    NotRead,
    /// The redacted end of the log.
    Read(String),
    /// It could not be read; the reason is said in the comment.
    Unavailable(String),
}

/// Everything a report's text may say.
#[derive(Clone, Debug, PartialEq)]
pub struct Facts {
    pub task: String,
    pub namespace: String,
    pub uid: String,
    pub ticket: String,
    pub attempt: i32,
    pub max_attempts: i32,
    pub branch: Option<String>,
    pub commit: Option<String>,
    pub pull_request_url: Option<String>,
    /// The task's `status.message`.
    pub message: Option<String>,
    /// The reason of the task's `Failed` condition.
    pub failed_reason: Option<String>,
    pub timeout_seconds: i64,
    /// From the first dispatch to the end.
    pub duration: Option<Duration>,
    /// The agent's result from its termination message.
    pub result: Option<AgentResult>,
    pub log: Log,
    pub log_lines: usize,
    pub cancel: Option<CancelCause>,
    /// Who asked on the ticket to stop the task (a display name).
    pub stopped_by: Option<String>,
    /// The id of the ticket comment that asked to stop the task.
    pub stop_comment: Option<String>,
    /// The configured dashboard link, placeholders filled.
    pub dashboard: Option<String>,
    /// A planning run's plan, as the agent wrote it with anything that looks like a
    /// credential removed (as from the log); `None` when it is not to be shown.
    pub plan: Option<String>,
    /// Where a planning run's plan is.
    pub plan_state: Option<PlanState>,
    /// Who approved or rejected the plan (a display name).
    pub approval_by: Option<String>,
    /// The task's `status.partial`: its latest attempt was cut short after it pushed its
    /// work so far to `branch` at `commit`.
    pub partial: bool,
    /// What the task's attempts spent (`status.spend`).
    pub spend: Option<Spend>,
    /// What the egress proxy refused the latest attempt (`status.egress.blocked`).
    pub egress_blocked: Vec<recac_api::egress::BlockedHost>,
    /// The task's `spec.budget`.
    pub budget: Option<Budget>,
    /// The task's model, when its spec names one.
    pub model: Option<String>,
    /// Commands written on the ticket act on the task (a source made it, and reads them).
    pub commands: bool,
}

/// A duration as people write it: `1h 4m`, `3m 20s`, `45s`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m {s}s"),
        (h, m, _) => format!("{h}h {m}m"),
    }
}

/// A count with thousands separators: `51,234`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Why the task failed, in words.
pub fn failure_words(facts: &Facts) -> String {
    let outcome = facts.result.as_ref().map(|r| &r.outcome);
    let tests_failed = outcome == Some(&Outcome::TestsFailed)
        || facts.result.as_ref().and_then(|r| r.tests_passed) == Some(false);
    let message = facts.message.as_deref().unwrap_or("");
    if let Some(stop) = cut_short::cause(facts) {
        return cut_short::words(stop, facts);
    }
    match facts.failed_reason.as_deref() {
        Some("GaveUp") => match outcome {
            Some(Outcome::NoChanges) => "the agent finished without changing anything".into(),
            _ => "the agent gave up (another attempt would fail the same way)".into(),
        },
        _ if message.contains("DeadlineExceeded") => format!(
            "the last attempt ran past its deadline of {}",
            human_duration(Duration::from_secs(facts.timeout_seconds.max(0) as u64))
        ),
        _ if tests_failed => "the tests failed".into(),
        _ if message.contains("JobDeleted") => {
            "the attempt's Job was deleted before it finished".into()
        }
        Some("RetriesExhausted") => "every attempt failed and no retries are left".into(),
        Some(other) if !message.is_empty() => format!("{other}: {message}"),
        _ if !message.is_empty() => message.to_string(),
        _ => "the agent did not succeed".into(),
    }
}

fn placeholder_values(facts: &Facts, report: &Report) -> BTreeMap<&'static str, String> {
    let mut v = BTreeMap::new();
    v.insert("task", facts.task.clone());
    v.insert("namespace", facts.namespace.clone());
    v.insert("ticket", facts.ticket.clone());
    v.insert("attempt", report.attempt.to_string());
    v.insert("attempts", facts.max_attempts.to_string());
    v.insert("outcome", report.kind.as_str().to_string());
    if report.kind == ReportKind::Failed {
        v.insert("reason", failure_words(facts));
    }
    if let Some(branch) = &facts.branch {
        v.insert("branch", branch.clone());
    }
    if let Some(pr) = &facts.pull_request_url {
        v.insert("pullRequest", pr.clone());
    }
    if let Some(d) = facts.duration {
        v.insert("duration", human_duration(d));
    }
    v
}

fn default_headline(facts: &Facts, report: &Report) -> String {
    let attempt = report.attempt;
    let of = facts.max_attempts;
    match report.kind {
        ReportKind::PickedUp => format!(
            "recac picked up this ticket: an AI coding agent is working on it (attempt {attempt} of at most {of})."
        ),
        ReportKind::Retrying => {
            format!("recac is trying again: attempt {attempt} of at most {of} has started.")
        }
        ReportKind::Planned => match facts.plan_state {
            Some(PlanState::Approved) => format!(
                "recac wrote a plan for this ticket; it was approved{}.",
                by(facts)
            ),
            Some(PlanState::Rejected) => format!(
                "recac wrote a plan for this ticket; it was rejected{}.",
                by(facts)
            ),
            _ => "recac wrote a plan for this ticket and waits for approval.".into(),
        },
        ReportKind::Succeeded => {
            let took = facts
                .duration
                .map(|d| format!(" in {}", human_duration(d)))
                .unwrap_or_default();
            let attempts = if attempt == 1 {
                "1 attempt".to_string()
            } else {
                format!("{attempt} attempts")
            };
            format!("recac finished this ticket{took} ({attempts}).")
        }
        ReportKind::Failed => format!(
            "recac could not finish this ticket: {}.",
            failure_words(facts)
        ),
        ReportKind::Cancelled => match facts.cancel {
            Some(CancelCause::Stopped) => stopped_headline(facts, attempt),
            Some(CancelCause::Suspended) => format!(
                "recac stopped working on this ticket: its task was suspended during attempt {attempt}. It continues if the task is resumed."
            ),
            _ => format!(
                "recac stopped working on this ticket: its task was deleted during attempt {attempt}."
            ),
        },
    }
}

/// " by <who>" of a plan's decision, when known.
fn by(facts: &Facts) -> String {
    facts
        .approval_by
        .as_ref()
        .map(|who| format!(" by {who}"))
        .unwrap_or_default()
}

fn stopped_headline(facts: &Facts, attempt: i32) -> String {
    let who = match &facts.stopped_by {
        Some(by) => format!("as {by} asked"),
        None => "as asked on the ticket".to_string(),
    };
    let comment = facts
        .stop_comment
        .as_ref()
        .map(|id| format!(" (comment {id})"))
        .unwrap_or_default();
    let pushed = facts
        .branch
        .as_ref()
        .map(|branch| format!(" What was pushed is on branch {branch}."))
        .unwrap_or_default();
    format!(
        "recac stopped working on this ticket during attempt {attempt}, {who}{comment}.{pushed}"
    )
}

fn template_for(templates: &Templates, kind: ReportKind) -> Option<&String> {
    match kind {
        ReportKind::PickedUp => templates.picked_up.as_ref(),
        ReportKind::Retrying => templates.retrying.as_ref(),
        ReportKind::Planned => templates.planned.as_ref(),
        ReportKind::Succeeded => templates.succeeded.as_ref(),
        ReportKind::Failed => templates.failed.as_ref(),
        ReportKind::Cancelled => templates.cancelled.as_ref(),
    }
}

/// "Follow it:" with the task's `kubectl` command and the dashboard link, if configured.
pub fn follow(facts: &Facts) -> Vec<Inline> {
    follow_linked(facts, "the dashboard")
}

/// [`follow`] with `link_text` as the dashboard link's words.
pub fn follow_linked(facts: &Facts, link_text: &str) -> Vec<Inline> {
    let mut line = vec![
        Inline::Text("Follow it: ".into()),
        Inline::Code(format!(
            "kubectl get at {} -n {}",
            facts.task, facts.namespace
        )),
    ];
    if let Some(link) = &facts.dashboard {
        line.push(Inline::Text(" or ".into()));
        line.push(Inline::Link {
            text: link_text.into(),
            href: link.clone(),
        });
    }
    line
}

/// A `name: value` list item.
pub fn field(name: &str, value: Inline) -> Vec<Inline> {
    vec![Inline::Text(format!("{name}: ")), value]
}

/// The list of an outcome's results: pull request, branch, commit, tests, attempts, duration
/// and what was spent (the task's spend over its attempts, else the last attempt's tokens),
/// as far as they are known.
pub fn results(facts: &Facts, report: &Report) -> Vec<Vec<Inline>> {
    let mut items = Vec::new();
    if let Some(pr) = &facts.pull_request_url {
        items.push(field(
            "Pull request",
            Inline::Link {
                text: pr.clone(),
                href: pr.clone(),
            },
        ));
    }
    if let Some(branch) = &facts.branch {
        items.push(field("Branch", Inline::Code(branch.clone())));
    }
    if let Some(commit) = &facts.commit {
        items.push(field("Commit", Inline::Code(commit.clone())));
    }
    let tests = facts.result.as_ref().and_then(|r| r.tests_passed);
    let tests = match (tests, facts.result.as_ref().map(|r| &r.outcome)) {
        (Some(true), _) => Some("passed"),
        (Some(false), _) | (None, Some(Outcome::TestsFailed)) => Some("failed"),
        (None, Some(Outcome::Succeeded)) => Some("none found"),
        _ => None,
    };
    if let Some(tests) = tests {
        items.push(field("Tests", Inline::Text(tests.into())));
    }
    items.push(field(
        "Attempts",
        Inline::Text(format!(
            "{} of at most {}",
            report.attempt, facts.max_attempts
        )),
    ));
    if let Some(d) = facts.duration {
        items.push(field("Duration", Inline::Text(human_duration(d))));
    }
    items.extend(blocked_items(facts));
    if let Some(spent) = crate::spend::items(facts) {
        items.extend(spent);
    } else if let Some(tokens) = facts.result.as_ref().and_then(|r| r.token_usage.as_ref()) {
        items.push(field(
            "Tokens",
            Inline::Text(format!(
                "{} ({} in, {} out)",
                thousands(tokens.input_tokens + tokens.output_tokens),
                thousands(tokens.input_tokens),
                thousands(tokens.output_tokens)
            )),
        ));
    }
    items
}

/// One item per destination the egress proxy refused: `Blocked: files.example.com:443 (3
/// times); add it to the source's allow-list if the task needs it`.
fn blocked_items(facts: &Facts) -> Vec<Vec<Inline>> {
    facts
        .egress_blocked
        .iter()
        .map(|blocked| {
            let times = if blocked.count == 1 {
                "once".to_string()
            } else {
                format!("{} times", thousands(blocked.count))
            };
            vec![
                Inline::Text("Blocked: ".into()),
                Inline::Code(format!("{}:{}", blocked.host, blocked.port)),
                Inline::Text(format!(
                    " ({times}); add it to the source's allow-list if the task needs it"
                )),
            ]
        })
        .collect()
}

/// The first paragraph of `report`'s text: the configured template, else the built-in words.
pub fn headline(facts: &Facts, report: &Report, templates: &Templates) -> String {
    configured_headline(facts, report, templates).unwrap_or_else(|| default_headline(facts, report))
}

/// The first paragraph of `report`'s text from its configured template, if there is one.
pub fn configured_headline(
    facts: &Facts,
    report: &Report,
    templates: &Templates,
) -> Option<String> {
    template_for(templates, report.kind)
        .and_then(|t| Template::parse(t).ok())
        .map(|t| t.render(&placeholder_values(facts, report)))
}

/// How to answer a plan that waits for approval.
pub fn answer_plan() -> Vec<Inline> {
    vec![
        Inline::Text("Reply ".into()),
        Inline::Code("/recac approve".into()),
        Inline::Text(" to implement it, or ".into()),
        Inline::Code("/recac reject <why>".into()),
        Inline::Text(" for a new plan.".into()),
    ]
}

/// A planning run's plan, shown as the agent wrote it: a preformatted block, so that nothing
/// in it is read as markup and its lines stay; then, while it waits, how to answer it.
pub fn plan_blocks(facts: &Facts) -> Vec<Block> {
    let mut blocks = match &facts.plan {
        Some(plan) => vec![Block::CodeBlock(plan.clone())],
        None => vec![Block::Paragraph(vec![
            Inline::Text("The plan is in the task's status: ".into()),
            Inline::Code(format!(
                "kubectl get at {} -n {} -o jsonpath='{{.status.plan}}'",
                facts.task, facts.namespace
            )),
        ])],
    };
    if !facts.plan_state.is_some_and(PlanState::is_settled) {
        blocks.push(Block::Paragraph(answer_plan()));
    }
    blocks
}

/// What `report`'s text says below its headline: how to follow the task, or its results
/// and the agent's summary, after how to go on from a run cut short (the log of a failure
/// is [`log_blocks`]).
pub fn details(facts: &Facts, report: &Report) -> Vec<Block> {
    match report.kind {
        ReportKind::PickedUp | ReportKind::Retrying => vec![Block::Bullets(vec![follow(facts)])],
        ReportKind::Planned => plan_blocks(facts),
        ReportKind::Cancelled => {
            let mut items = vec![follow(facts)];
            if let Some(branch) = &facts.branch {
                items.insert(
                    0,
                    field("Branch (work so far)", Inline::Code(branch.clone())),
                );
            }
            vec![Block::Bullets(items)]
        }
        ReportKind::Succeeded | ReportKind::Failed => {
            let mut blocks = if report.kind == ReportKind::Failed {
                cut_short::blocks(facts)
            } else {
                Vec::new()
            };
            blocks.push(Block::Bullets(results(facts, report)));
            if let Some(summary) = facts.result.as_ref().and_then(|r| r.summary.as_deref())
                && !summary.trim().is_empty()
            {
                blocks.push(Block::Paragraph(vec![
                    Inline::Strong("The agent's summary:".into()),
                    Inline::Text(format!(" {}", summary.trim())),
                ]));
            }
            blocks
        }
    }
}

/// The failed attempt's log as read, in at most `room` characters (nothing when no lines
/// are wanted or the log was not needed).
pub fn log_blocks(facts: &Facts, room: usize) -> Vec<Block> {
    match &facts.log {
        Log::Read(log) if facts.log_lines > 0 => {
            let tail = logtail::tail(log, facts.log_lines, room);
            let shown = tail.text.lines().count();
            let text = if tail.cut_lines > 0 {
                format!(
                    "[… {} earlier lines cut to fit Jira's comment limit]\n{}",
                    tail.cut_lines, tail.text
                )
            } else {
                tail.text
            };
            vec![
                Block::Paragraph(vec![Inline::Text(format!(
                    "The last {shown} lines of the agent's log (credentials removed):"
                ))]),
                Block::CodeBlock(text),
            ]
        }
        Log::Unavailable(why) if facts.log_lines > 0 => {
            vec![Block::Paragraph(vec![Inline::Text(format!(
                "The agent's log could not be read: {why}"
            ))])]
        }
        _ => Vec::new(),
    }
}

/// Room left for a quoted log in `comment`, keeping a margin for the markup around it.
pub fn log_room(comment: &Comment) -> usize {
    TEXT_BUDGET.saturating_sub(comment.text_len() + 200)
}

/// The comment for `report`, with its marker, within Jira's size limit.
pub fn render(facts: &Facts, report: &Report, templates: &Templates) -> Comment {
    let mut c = Comment::default();
    c.paragraph(vec![Inline::Text(headline(facts, report, templates))]);
    c.blocks.extend(details(facts, report));
    let footer = vec![
        Inline::Link {
            text: "recac".into(),
            href: marker(&facts.uid, &report.key()),
        },
        Inline::Text(format!(" · AgentTask {}/{}", facts.namespace, facts.task)),
    ];
    if report.kind == ReportKind::Failed {
        let mut without_log = c.clone();
        without_log.paragraph(footer.clone());
        c.blocks.extend(log_blocks(facts, log_room(&without_log)));
    }
    c.paragraph(footer);
    c
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use recac_api::agent_contract::TokenUsage;

    pub(crate) fn facts() -> Facts {
        Facts {
            task: "ops-1".into(),
            namespace: "team".into(),
            uid: "uid-1".into(),
            ticket: "OPS-1".into(),
            attempt: 2,
            max_attempts: 3,
            branch: Some("recac/OPS-1".into()),
            commit: Some("c0ffee".into()),
            pull_request_url: Some("https://github.com/o/r/pull/7".into()),
            message: None,
            failed_reason: None,
            timeout_seconds: 3600,
            duration: Some(Duration::from_secs(200)),
            result: Some(AgentResult {
                outcome: Outcome::Succeeded,
                branch: None,
                commit: None,
                pull_request_url: None,
                tests_passed: Some(true),
                summary: Some("Made the timeout configurable.".into()),
                token_usage: Some(TokenUsage {
                    input_tokens: 51234,
                    output_tokens: 2345,
                }),
                plan: None,
                partial: None,
                usage: None,
                egress_blocked: Vec::new(),
            }),
            log: Log::NotRead,
            log_lines: 50,
            cancel: None,
            stopped_by: None,
            stop_comment: None,
            dashboard: Some("https://dash.example/at/team/ops-1".into()),
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

    pub(crate) fn report(kind: ReportKind, attempt: i32) -> Report {
        Report { kind, attempt }
    }

    #[test]
    fn what_the_egress_proxy_refused_is_named_with_what_to_do() {
        let mut f = facts();
        f.egress_blocked = vec![
            recac_api::egress::BlockedHost {
                host: "files.example.com".into(),
                port: 443,
                count: 3,
            },
            recac_api::egress::BlockedHost {
                host: "10.1.2.3".into(),
                port: 5432,
                count: 1,
            },
        ];
        for kind in [ReportKind::Succeeded, ReportKind::Failed] {
            let c = render(&f, &report(kind, 2), &Templates::default());
            let wiki = c.to_wiki();
            assert!(
                wiki.contains("Blocked: {{files.example.com:443}} (3 times); add it to the source's allow-list if the task needs it"),
                "{wiki}"
            );
            assert!(wiki.contains("Blocked: {{10.1.2.3:5432}} (once)"), "{wiki}");
            let adf = c.to_adf().to_string();
            assert!(adf.contains("files.example.com:443"), "{adf}");
        }
    }

    #[test]
    fn success_says_everything_with_a_real_link() {
        let c = render(
            &facts(),
            &report(ReportKind::Succeeded, 2),
            &Templates::default(),
        );
        let wiki = c.to_wiki();
        assert!(
            wiki.starts_with("recac finished this ticket in 3m 20s (2 attempts)."),
            "{wiki}"
        );
        for part in [
            "[https://github.com/o/r/pull/7|https://github.com/o/r/pull/7]",
            "{{recac/OPS-1}}",
            "{{c0ffee}}",
            "Tests: passed",
            "Attempts: 2 of at most 3",
            "Tokens: 53,579 (51,234 in, 2,345 out)",
            "Made the timeout configurable.",
            "[recac|https://github.com/recac-io/recac#recac-feedback/uid-1/succeeded/2]",
        ] {
            assert!(wiki.contains(part), "{part} missing in {wiki}");
        }
        let adf = c.to_adf().to_string();
        assert!(
            adf.contains(r#""href":"https://github.com/o/r/pull/7""#),
            "{adf}"
        );
    }

    #[test]
    fn failure_words_cover_each_cause() {
        let mut f = facts();
        f.result = None;
        f.failed_reason = Some("GaveUp".into());
        assert!(failure_words(&f).contains("gave up"));
        f.failed_reason = Some("RetriesExhausted".into());
        f.message = Some("attempt 3 failed (DeadlineExceeded: Job was active longer than specified deadline); no retries left".into());
        assert_eq!(
            failure_words(&f),
            "the last attempt ran past its deadline of 1h 0m"
        );
        f.message = Some("attempt 3 failed (BackoffLimitExceeded: x); no retries left".into());
        assert_eq!(
            failure_words(&f),
            "every attempt failed and no retries are left"
        );
        f.result = Some(AgentResult {
            outcome: Outcome::TestsFailed,
            branch: None,
            commit: None,
            pull_request_url: None,
            tests_passed: Some(false),
            summary: None,
            token_usage: None,
            plan: None,
            partial: None,
            usage: None,
            egress_blocked: Vec::new(),
        });
        assert_eq!(failure_words(&f), "the tests failed");
    }

    #[test]
    fn failure_quotes_the_log_and_cuts_it_visibly() {
        let mut f = facts();
        f.failed_reason = Some("RetriesExhausted".into());
        f.result = None;
        let long_line = "y".repeat(2000);
        let log: String = (0..60).map(|i| format!("{i} {long_line}\n")).collect();
        f.log = Log::Read(log);
        let c = render(&f, &report(ReportKind::Failed, 3), &Templates::default());
        assert!(c.text_len() <= TEXT_BUDGET, "{}", c.text_len());
        let wiki = c.to_wiki();
        assert!(
            wiki.contains("earlier lines cut to fit Jira's comment limit]"),
            "cut marker"
        );
        assert!(wiki.contains(&format!("59 {long_line}")));
        assert!(wiki.contains("{noformat}"));
        f.log = Log::Unavailable("pod ops-1-a3-x is gone".into());
        let wiki = render(&f, &report(ReportKind::Failed, 3), &Templates::default()).to_wiki();
        assert!(wiki.contains("The agent's log could not be read: pod ops-1-a3-x is gone"));
    }

    #[test]
    fn picked_up_and_cancelled_say_how_to_follow() {
        let f = facts();
        let wiki = render(&f, &report(ReportKind::PickedUp, 1), &Templates::default()).to_wiki();
        assert!(wiki.contains("{{kubectl get at ops-1 -n team}} or [the dashboard|https://dash.example/at/team/ops-1]"), "{wiki}");
        let mut f = facts();
        f.cancel = Some(CancelCause::Deleted);
        let wiki = render(&f, &report(ReportKind::Cancelled, 2), &Templates::default()).to_wiki();
        assert!(wiki.contains("deleted during attempt 2"), "{wiki}");
    }

    #[test]
    fn a_stop_says_who_asked_in_which_comment_and_where_the_work_is() {
        let mut f = facts();
        f.cancel = Some(CancelCause::Stopped);
        f.stopped_by = Some("Ada Lovelace".into());
        f.stop_comment = Some("10042".into());
        let wiki = render(&f, &report(ReportKind::Cancelled, 2), &Templates::default()).to_wiki();
        assert!(
            wiki.starts_with(
                "recac stopped working on this ticket during attempt 2, as Ada Lovelace asked (comment 10042). What was pushed is on branch recac/OPS-1."
            ),
            "{wiki}"
        );
        assert!(wiki.contains("recac-feedback/uid-1/cancelled/2"), "{wiki}");
        f.stopped_by = None;
        f.stop_comment = None;
        f.branch = None;
        let wiki = render(&f, &report(ReportKind::Cancelled, 1), &Templates::default()).to_wiki();
        assert!(
            wiki.starts_with(
                "recac stopped working on this ticket during attempt 1, as asked on the ticket."
            ),
            "{wiki}"
        );
        assert!(!wiki.contains("What was pushed"), "{wiki}");
    }

    #[test]
    fn templates_replace_the_headline() {
        let templates = Templates {
            succeeded: Some(
                "Done: {ticket} on {branch} after {attempt} attempt(s), see {pullRequest}".into(),
            ),
            ..Default::default()
        };
        let wiki = render(&facts(), &report(ReportKind::Succeeded, 2), &templates).to_wiki();
        assert!(
            wiki.starts_with(
                "Done: OPS-1 on recac/OPS-1 after 2 attempt(s), see https://github.com/o/r/pull/7"
            ),
            "{wiki}"
        );
    }

    /// A plan full of what wiki markup, ADF-minded renderers and browsers would interpret.
    pub(crate) const MARKUP_PLAN: &str = "1. Change {code}fn main(){code} in *bold* src/main.rs\n2. See [link|http://x] and <script>alert(1)</script>\n{noformat}\nh1. not a heading\n- not a list\n3. Test it | _done_ !img.png!";

    /// The plan as wiki markup must carry it: in a noformat block, the closing tag defused.
    pub(crate) fn wiki_block(plan: &str) -> String {
        format!(
            "{{noformat}}\n{}\n{{noformat}}",
            plan.replace("{noformat}", "{ noformat}")
        )
    }

    /// The text of every ADF text node, with the marks it has, in order.
    pub(crate) fn adf_texts(node: &serde_json::Value, out: &mut Vec<(String, String)>) {
        if let Some(text) = node["text"].as_str() {
            let parent = node["marks"].to_string();
            out.push((text.to_string(), parent));
        }
        if let Some(content) = node["content"].as_array() {
            for child in content {
                adf_texts(child, out);
            }
        }
    }

    /// The ADF code blocks' texts.
    pub(crate) fn adf_code_blocks(adf: &serde_json::Value) -> Vec<String> {
        adf["content"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| n["type"] == "codeBlock")
            .map(|n| {
                assert!(n["marks"].is_null(), "{n}");
                n["content"][0]["text"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    }

    fn planned_facts() -> Facts {
        let mut f = facts();
        f.attempt = 1;
        f.commit = None;
        f.pull_request_url = None;
        f.duration = None;
        f.result = None;
        f.plan = Some(MARKUP_PLAN.into());
        f.plan_state = Some(PlanState::Waiting);
        f
    }

    #[test]
    fn a_plan_is_one_comment_with_the_plan_as_text_and_how_to_answer_it() {
        let c = render(
            &planned_facts(),
            &report(ReportKind::Planned, 1),
            &Templates::default(),
        );
        let wiki = c.to_wiki();
        assert!(
            wiki.starts_with("recac wrote a plan for this ticket and waits for approval.\n\n"),
            "{wiki}"
        );
        let block = wiki_block(MARKUP_PLAN);
        assert!(wiki.contains(&block), "{wiki}");
        // Nothing of the plan is outside its block: no link, no bold, no macro.
        let outside = wiki.replace(&block, "");
        for markup in ["[link|http://x]", "*bold*", "{code}", "<script>", "h1."] {
            assert!(
                !outside.contains(markup),
                "{markup} outside the block: {wiki}"
            );
        }
        assert!(
            wiki.contains(
                "Reply {{/recac approve}} to implement it, or {{/recac reject <why>}} for a new plan."
            ),
            "{wiki}"
        );
        assert!(
            wiki.find(&block).unwrap_or(usize::MAX) < wiki.find("Reply ").unwrap_or(0),
            "{wiki}"
        );
        assert!(
            wiki.ends_with(
                "[recac|https://github.com/recac-io/recac#recac-feedback/uid-1/planned/1] · AgentTask team/ops-1"
            ),
            "{wiki}"
        );
        assert!(!wiki.contains("Follow it"), "{wiki}");

        let adf = c.to_adf();
        assert_eq!(adf_code_blocks(&adf), [MARKUP_PLAN]);
        let mut texts = Vec::new();
        adf_texts(&adf, &mut texts);
        let links: Vec<&(String, String)> = texts
            .iter()
            .filter(|(_, marks)| marks.contains("link"))
            .collect();
        assert_eq!(links.len(), 1, "the marker only: {links:?}");
        assert!(links[0].1.contains("/uid-1/planned/1"), "{links:?}");
        assert!(
            texts
                .iter()
                .filter(|(text, _)| text.contains("<script>"))
                .all(|(text, _)| text == MARKUP_PLAN),
            "{texts:?}"
        );
        let codes: Vec<&str> = texts
            .iter()
            .filter(|(_, marks)| marks.contains("code"))
            .map(|(text, _)| text.as_str())
            .collect();
        assert_eq!(codes, ["/recac approve", "/recac reject <why>"]);
    }

    #[test]
    fn a_plan_decided_before_it_was_told_says_by_whom_and_asks_nothing() {
        let mut f = planned_facts();
        f.plan_state = Some(PlanState::Approved);
        f.approval_by = Some("Ada Lovelace".into());
        let planned = report(ReportKind::Planned, 1);
        let wiki = render(&f, &planned, &Templates::default()).to_wiki();
        assert!(
            wiki.starts_with(
                "recac wrote a plan for this ticket; it was approved by Ada Lovelace.\n\n"
            ),
            "{wiki}"
        );
        assert!(wiki.contains(&wiki_block(MARKUP_PLAN)), "{wiki}");
        assert!(!wiki.contains("/recac approve"), "{wiki}");
        f.plan_state = Some(PlanState::Rejected);
        f.approval_by = None;
        f.plan = None;
        let wiki = render(&f, &planned, &Templates::default()).to_wiki();
        assert!(
            wiki.starts_with("recac wrote a plan for this ticket; it was rejected.\n\n"),
            "{wiki}"
        );
        assert!(
            wiki.contains("{{kubectl get at ops-1 -n team -o jsonpath='\\{.status.plan\\}'}}"),
            "no plan in the status: where to read it: {wiki}"
        );
        let templates = Templates {
            planned: Some("Plan for {ticket} ({outcome}, attempt {attempt} of {attempts})".into()),
            ..Default::default()
        };
        let wiki = render(&planned_facts(), &planned, &templates).to_wiki();
        assert!(
            wiki.starts_with("Plan for OPS-1 (planned, attempt 1 of 3)\n\n"),
            "{wiki}"
        );
        assert!(wiki.contains("{{/recac approve}}"), "{wiki}");
    }
}
