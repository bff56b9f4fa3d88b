//! Commands people write on a ticket, as pure decisions: which comments are commands, and
//! what each one asks for. Reading the comments and acting is [`crate::conversation`].
//!
//! A comment is a command when it is addressed to the bot (a line starting with `/recac`,
//! or a mention of the bot user), is not the bot's own, and is newer than the start of
//! the ticket's latest run (the comment that started it, or the task's creation). Each
//! command acts once, whatever restarts in between, and the record of that is in
//! Kubernetes or on the ticket, never only in memory:
//! - a follow-up or `retry` is a new AgentTask annotated `recac.io/command: <comment id>`;
//! - `stop` is the annotation `recac.io/stop: <comment id>` on the ticket's unfinished tasks
//!   (or on a plan that waits for approval, which it rejects);
//! - `approve` and `reject` of a plan that waits for approval are the next run, annotated
//!   like a follow-up (the implementation, or a new planning run); the plan's task is then
//!   annotated `recac.io/approval` with the decision;
//! - every other answer is one reply comment carrying [`reply_marker`].
//!
//! A comment whose id is in any of those records is never acted on again. A move of the
//! ticket to the source's `approval.approvedStatus` approves like a comment: its changelog
//! entry is a command with the id [`transition_id`].

use std::collections::HashSet;

use jiff::Timestamp;
use recac_jira::User;

/// The prefix of a command line.
pub const PREFIX: &str = "/recac";

/// What a command comment asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Free text: a new run on the same branch with this request.
    FollowUp(String),
    /// The last run again, same prompt.
    Retry,
    /// Stop the running task.
    Stop,
    Approve,
    Reject(String),
    Help,
    /// A single word that is no command.
    Unknown(String),
}

/// The command in a comment's plain text, if it is addressed to the bot: a line starting
/// with [`PREFIX`] (the command is the rest of it and the lines after it), or, when
/// `mentions_bot`, the whole text with the bot's mentions (`bot_mentions`, as they read in
/// plain text) taken out.
pub fn parse(text: &str, mentions_bot: bool, bot_mentions: &[String]) -> Option<Command> {
    let text = crate::prompt::clean(text);
    let lines: Vec<&str> = text.lines().collect();
    let prefixed = lines.iter().position(|line| {
        let line = line.trim_start();
        line.len() >= PREFIX.len()
            && line[..PREFIX.len()].eq_ignore_ascii_case(PREFIX)
            && line[PREFIX.len()..]
                .chars()
                .next()
                .is_none_or(char::is_whitespace)
    });
    let body = match prefixed {
        Some(at) => {
            let first = lines[at].trim_start()[PREFIX.len()..].to_string();
            std::iter::once(first.as_str())
                .chain(lines[at + 1..].iter().copied())
                .collect::<Vec<_>>()
                .join("\n")
        }
        None if mentions_bot => {
            let mut body = text.clone();
            for mention in bot_mentions.iter().filter(|m| !m.is_empty()) {
                body = body.replace(mention.as_str(), " ");
            }
            body
        }
        None => return None,
    };
    let body = body.trim();
    let mut words = body.split_whitespace();
    let Some(first) = words.next() else {
        return Some(Command::Help);
    };
    let rest = body[first.len()..].trim();
    Some(
        match first.to_ascii_lowercase().trim_end_matches(['.', '!']) {
            "retry" => Command::Retry,
            "stop" | "cancel" => Command::Stop,
            "approve" | "approved" => Command::Approve,
            "reject" => Command::Reject(rest.to_string()),
            "help" => Command::Help,
            _ if words.next().is_none() => Command::Unknown(first.to_string()),
            _ => Command::FollowUp(body.to_string()),
        },
    )
}

/// The marker of recac's reply to the comment `id`: finding it on the ticket means the
/// comment was answered.
pub fn reply_marker(id: &str) -> String {
    format!("[recac:re:{id}]")
}

/// What a decision reads of one comment.
#[derive(Clone, Debug, PartialEq)]
pub struct CommentFacts {
    pub id: String,
    pub author: Option<User>,
    pub created: Option<Timestamp>,
    /// The comment's plain text.
    pub text: String,
    pub by_bot: bool,
    /// Its command, when it is addressed to the bot.
    pub command: Option<Command>,
    /// This is a move of the ticket to the approval status (a changelog entry), not a
    /// comment.
    pub transition: bool,
}

/// The command id of an approval by a move of the ticket to the approval status: its
/// changelog entry's id, marked so it never meets a comment's id.
pub fn transition_id(history_id: &str) -> String {
    format!("status-{history_id}")
}

/// What a decision reads of one run (AgentTask) of the ticket.
#[derive(Clone, Debug, PartialEq)]
pub struct RunFacts {
    pub name: String,
    pub run: u32,
    pub finished: bool,
    pub created: Option<Timestamp>,
    /// The comment that started it (`recac.io/command`).
    pub command: Option<String>,
    /// The comment that stopped it (`recac.io/stop`).
    pub stop: Option<String>,
    /// A planning run (`spec.approval: plan`).
    pub planning: bool,
    /// Its plan waits for approval: it is `AwaitingApproval` and nobody decided yet.
    pub awaiting_approval: bool,
}

/// What was decided on a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Approved,
    Rejected,
}

impl Decision {
    /// The value of the `recac.io/approval` annotation.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Approved => recac_api::annotations::APPROVED,
            Decision::Rejected => recac_api::annotations::REJECTED,
        }
    }
}

/// What a follow-up or retry runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunRequest {
    FollowUp {
        text: String,
        author: String,
    },
    Retry,
    /// Implement the plan of the task `plan_task`, approved by `author`.
    Implement {
        plan_task: String,
        author: String,
    },
    /// Plan again: the plan of `plan_task` was rejected by `author`, for `why` (if given).
    Replan {
        plan_task: String,
        author: String,
        why: Option<String>,
    },
}

impl RunRequest {
    /// The plan task this run decides on, and how.
    pub fn decides(&self) -> Option<(&str, Decision, &str)> {
        match self {
            RunRequest::Implement { plan_task, author } => {
                Some((plan_task, Decision::Approved, author))
            }
            RunRequest::Replan {
                plan_task, author, ..
            } => Some((plan_task, Decision::Rejected, author)),
            _ => None,
        }
    }
}

/// One thing to do for a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Act {
    /// Create run `run` of the ticket for `comment`.
    Run {
        comment: String,
        run: u32,
        request: RunRequest,
    },
    /// Mark `tasks` to stop, for `comment` by `by`.
    Stop {
        comment: String,
        by: String,
        tasks: Vec<String>,
    },
    /// Answer `comment` (the text ends with its [`reply_marker`]).
    Reply { comment: String, text: String },
    /// Record `decision` on the plan of `task` (the annotation), by `by`; `stop`: the
    /// comment that asked to stop, which rejects a waiting plan.
    Decide {
        task: String,
        decision: Decision,
        by: String,
        stop: Option<String>,
    },
}

/// The commands a user types, for replies.
pub const USAGE: &str = "Write a comment that starts with /recac or mentions the recac bot: free text asks for a follow-up run on the same branch (it runs after the current one); \"retry\" runs the last request again; \"stop\" stops the running task (what it pushed stays on its branch); \"approve\" starts the work on a plan that waits for approval, \"reject <why>\" asks for a new plan (free text or \"retry\" while a plan waits also ask for a new one); \"help\" shows this.";

/// Decides what to do with the ticket's comments, given its runs. `allowed` says whether a
/// comment's author may give commands; `who_may` names who may, for the reply to others.
pub fn plan(
    comments: &[CommentFacts],
    runs: &[RunFacts],
    allowed: &dyn Fn(Option<&User>) -> bool,
    who_may: &str,
) -> Vec<Act> {
    let Some(latest) = runs.iter().max_by_key(|r| r.run) else {
        return Vec::new();
    };
    let latest_start = latest
        .command
        .as_ref()
        .and_then(|id| comments.iter().find(|c| &c.id == id))
        .and_then(|c| c.created)
        .or(latest.created);
    let mut done: HashSet<&str> = runs
        .iter()
        .flat_map(|r| [r.command.as_deref(), r.stop.as_deref()])
        .flatten()
        .collect();
    let answered: Vec<&CommentFacts> = comments.iter().filter(|c| c.by_bot).collect();
    let mut pending: Vec<&CommentFacts> = comments
        .iter()
        .filter(|c| !c.by_bot && c.command.is_some())
        .filter(|c| match (c.created, latest_start) {
            (Some(created), Some(start)) => created > start,
            _ => false,
        })
        .filter(|c| {
            let marker = reply_marker(&c.id);
            !answered.iter().any(|a| a.text.contains(&marker))
        })
        .collect();
    pending.sort_by(|a, b| {
        a.created
            .cmp(&b.created)
            .then_with(|| numeric(&a.id).cmp(&numeric(&b.id)))
    });
    let mut next_run = latest.run + 1;
    let mut acts = settle_decided_plans(comments, runs);
    // The plan that waits for an answer, until a command answers it.
    let mut waiting = latest.awaiting_approval.then_some(latest);
    for comment in pending {
        if !done.insert(comment.id.as_str()) {
            continue;
        }
        let reply = |text: String| Act::Reply {
            comment: comment.id.clone(),
            text: format!("{text} {}", reply_marker(&comment.id)),
        };
        let who = comment
            .author
            .as_ref()
            .map(User::label)
            .unwrap_or_else(|| "an unknown user".into());
        let name = comment
            .author
            .as_ref()
            .and_then(|u| u.display_name.clone().or_else(|| u.id().map(String::from)))
            .unwrap_or_else(|| "someone".into());
        if !allowed(comment.author.as_ref()) {
            acts.push(reply(if comment.transition {
                format!(
                    "recac did not take the move of this ticket by {who} as an approval of the plan: only {who_may} may approve recac's plans on this project's tickets."
                )
            } else {
                format!(
                    "recac did not act on the comment by {who}: only {who_may} may give recac commands on this project's tickets."
                )
            }));
            continue;
        }
        let Some(command) = &comment.command else {
            continue;
        };
        if let Some(plan) = waiting {
            let answer = match command {
                Command::Approve => Some(RunRequest::Implement {
                    plan_task: plan.name.clone(),
                    author: name.clone(),
                }),
                Command::Reject(why) | Command::FollowUp(why) => Some(RunRequest::Replan {
                    plan_task: plan.name.clone(),
                    author: name.clone(),
                    why: Some(why.trim().to_string()).filter(|w| !w.is_empty()),
                }),
                Command::Retry => Some(RunRequest::Replan {
                    plan_task: plan.name.clone(),
                    author: name.clone(),
                    why: None,
                }),
                Command::Stop => {
                    acts.push(Act::Decide {
                        task: plan.name.clone(),
                        decision: Decision::Rejected,
                        by: name.clone(),
                        stop: Some(comment.id.clone()),
                    });
                    waiting = None;
                    continue;
                }
                Command::Help | Command::Unknown(_) => None,
            };
            if let Some(request) = answer {
                acts.push(Act::Run {
                    comment: comment.id.clone(),
                    run: next_run,
                    request,
                });
                next_run += 1;
                waiting = None;
                continue;
            }
        }
        match command {
            Command::FollowUp(text) => {
                acts.push(Act::Run {
                    comment: comment.id.clone(),
                    run: next_run,
                    request: RunRequest::FollowUp {
                        text: text.clone(),
                        author: name,
                    },
                });
                next_run += 1;
            }
            Command::Retry => {
                acts.push(Act::Run {
                    comment: comment.id.clone(),
                    run: next_run,
                    request: RunRequest::Retry,
                });
                next_run += 1;
            }
            Command::Stop => {
                let tasks: Vec<String> = runs
                    .iter()
                    .filter(|r| !r.finished && r.stop.is_none())
                    .map(|r| r.name.clone())
                    .collect();
                if tasks.is_empty() {
                    acts.push(reply(
                        "recac has nothing running on this ticket to stop.".into(),
                    ));
                } else {
                    acts.push(Act::Stop {
                        comment: comment.id.clone(),
                        by: name,
                        tasks,
                    });
                }
            }
            Command::Approve | Command::Reject(_) => {
                acts.push(reply(
                    "recac has no plan waiting for approval on this ticket.".into(),
                ));
            }
            Command::Help => acts.push(reply(format!("recac commands: {USAGE}"))),
            Command::Unknown(word) => acts.push(reply(format!(
                "recac does not know the command \"{}\". {USAGE}",
                one_line(word, 40)
            ))),
        }
    }
    acts
}

/// A plan that still waits although a later run of the ticket answered it (the run was
/// created, then the operator stopped before it recorded the decision): the decision, from
/// the next run (a planning run rejected it), by the author of the command that started it.
fn settle_decided_plans(comments: &[CommentFacts], runs: &[RunFacts]) -> Vec<Act> {
    let mut ordered: Vec<&RunFacts> = runs.iter().collect();
    ordered.sort_by_key(|r| r.run);
    ordered
        .windows(2)
        .filter(|pair| pair[0].awaiting_approval)
        .map(|pair| {
            let (plan, next) = (pair[0], pair[1]);
            let by = next
                .command
                .as_ref()
                .and_then(|id| comments.iter().find(|c| &c.id == id))
                .and_then(|c| c.author.as_ref())
                .and_then(|u| u.display_name.clone().or_else(|| u.id().map(String::from)))
                .unwrap_or_else(|| "someone".into());
            Act::Decide {
                task: plan.name.clone(),
                decision: if next.planning {
                    Decision::Rejected
                } else {
                    Decision::Approved
                },
                by,
                stop: None,
            }
        })
        .collect()
}

fn numeric(id: &str) -> u64 {
    id.parse().unwrap_or(u64::MAX)
}

fn one_line(text: &str, max: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    flat.chars().take(max).collect()
}

/// One earlier run, for a follow-up's prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EarlierRun {
    pub run: u32,
    /// The follow-up that started it (none for the first run or a retry).
    pub request: Option<String>,
    /// What came of it (the task's status message).
    pub outcome: Option<String>,
}

/// A follow-up's prompt: the original request, the earlier runs (request and outcome),
/// and the follow-up, newest last, at most `max_chars` characters: the oldest runs go
/// first, then the original request is cut; the follow-up is always whole (up to the cap).
pub fn follow_up_prompt(
    original: &str,
    earlier: &[EarlierRun],
    author: &str,
    text: &str,
    max_chars: usize,
) -> String {
    let follow_up = format!(
        "Follow-up request from {author} on the ticket (work on the same branch, which has the earlier runs' commits):\n{}",
        crate::prompt::clean(text).trim()
    );
    let runs: Vec<String> = earlier
        .iter()
        .map(|r| {
            let mut line = format!("- run {}", r.run);
            if let Some(request) = &r.request {
                line.push_str(&format!(" (follow-up: {})", one_line(request, 500)));
            }
            line.push_str(": ");
            line.push_str(&one_line(
                r.outcome.as_deref().unwrap_or("no outcome recorded"),
                1000,
            ));
            line
        })
        .collect();
    let size = |original: &str, runs: &[String]| {
        let mut all = original.chars().count() + follow_up.chars().count() + 4;
        if !runs.is_empty() {
            all += 30 + runs.iter().map(|r| r.chars().count() + 1).sum::<usize>();
        }
        all
    };
    let mut kept = runs.as_slice();
    while !kept.is_empty() && size(original, kept) > max_chars {
        kept = &kept[1..];
    }
    let mut original = original.to_string();
    if size(&original, kept) > max_chars {
        let room = max_chars.saturating_sub(size("", kept));
        original = original.chars().take(room).collect();
    }
    let mut prompt = original.trim_end().to_string();
    if !kept.is_empty() {
        prompt.push_str("\n\nEarlier runs on this ticket:\n");
        prompt.push_str(&kept.join("\n"));
    }
    prompt.push_str("\n\n");
    prompt.push_str(&follow_up);
    prompt.chars().take(max_chars).collect()
}

/// The implementation run's prompt: the original request, then the approved plan, at most
/// `max_chars` characters (the original request is cut first).
pub fn implement_prompt(original: &str, plan: &str, author: &str, max_chars: usize) -> String {
    let tail = format!(
        "\n\nThe plan below was approved on the ticket by {author}. Implement it.\n\nApproved plan:\n{}",
        plan.trim()
    );
    with_original(original, &tail, max_chars)
}

/// A new planning run's prompt after a plan was rejected: the original request, the
/// rejected plan and why, at most `max_chars` characters (the original request is cut
/// first).
pub fn replan_prompt(
    original: &str,
    rejected_plan: Option<&str>,
    author: &str,
    why: Option<&str>,
    max_chars: usize,
) -> String {
    let why = why
        .map(|w| format!(": {}", crate::prompt::clean(w).trim()))
        .unwrap_or_else(|| " (no reason given)".into());
    let mut tail = format!("\n\nAn earlier plan was rejected on the ticket by {author}{why}");
    if let Some(plan) = rejected_plan.map(str::trim).filter(|p| !p.is_empty()) {
        tail.push_str(&format!("\n\nRejected plan:\n{plan}"));
    }
    tail.push_str("\n\nWrite a new plan.");
    with_original(original, &tail, max_chars)
}

fn with_original(original: &str, tail: &str, max_chars: usize) -> String {
    let room = max_chars.saturating_sub(tail.chars().count());
    let original: String = original.trim_end().chars().take(room).collect();
    format!("{original}{tail}")
        .chars()
        .take(max_chars)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> User {
        User {
            account_id: Some(id.into()),
            display_name: Some(id.into()),
            ..Default::default()
        }
    }

    fn at(second: i64) -> Option<Timestamp> {
        Some(Timestamp::from_second(1_800_000_000 + second).expect("time"))
    }

    fn comment(id: &str, who: &str, second: i64, text: &str) -> CommentFacts {
        CommentFacts {
            id: id.into(),
            author: Some(user(who)),
            created: at(second),
            text: text.into(),
            by_bot: who == "bot",
            command: parse(text, false, &[]),
            transition: false,
        }
    }

    fn run(run: u32, finished: bool, second: i64, command: Option<&str>) -> RunFacts {
        RunFacts {
            name: format!("ops-1-r{run}"),
            run,
            finished,
            created: at(second),
            command: command.map(String::from),
            stop: None,
            planning: false,
            awaiting_approval: false,
        }
    }

    fn plan_run(run: u32, second: i64, command: Option<&str>, awaiting: bool) -> RunFacts {
        RunFacts {
            planning: true,
            awaiting_approval: awaiting,
            ..super::tests::run(run, true, second, command)
        }
    }

    fn names(acts: &[Act]) -> Vec<String> {
        acts.iter()
            .map(|a| match a {
                Act::Run {
                    comment,
                    run,
                    request,
                } => format!("run {run} for {comment}: {request:?}"),
                Act::Stop { comment, .. } => format!("stop for {comment}"),
                Act::Reply { comment, .. } => format!("reply to {comment}"),
                Act::Decide {
                    task,
                    decision,
                    by,
                    stop,
                } => format!("{task} {} by {by} stop {stop:?}", decision.as_str()),
            })
            .collect()
    }

    #[test]
    fn a_waiting_plan_is_answered_by_approve_reject_and_the_other_commands() {
        let runs = [plan_run(1, 0, None, true)];
        let approve = comment("10", "alice", 5, "/recac approve");
        assert_eq!(
            names(&plan(
                std::slice::from_ref(&approve),
                &runs,
                &anyone,
                "anyone"
            )),
            ["run 2 for 10: Implement { plan_task: \"ops-1-r1\", author: \"alice\" }"]
        );
        let reject = comment("11", "alice", 5, "/recac reject too risky, keep the API");
        assert_eq!(
            names(&plan(&[reject], &runs, &anyone, "anyone")),
            [
                "run 2 for 11: Replan { plan_task: \"ops-1-r1\", author: \"alice\", why: Some(\"too risky, keep the API\") }"
            ]
        );
        let bare = comment("12", "alice", 5, "/recac reject");
        assert!(names(&plan(&[bare], &runs, &anyone, "anyone"))[0].contains("why: None"));
        let revise = comment("13", "alice", 5, "/recac also cover the CLI");
        assert!(
            names(&plan(&[revise], &runs, &anyone, "anyone"))[0]
                .contains("Replan { plan_task: \"ops-1-r1\", author: \"alice\", why: Some(\"also cover the CLI\") }")
        );
        let stop = comment("14", "alice", 5, "/recac stop");
        assert_eq!(
            names(&plan(&[stop], &runs, &anyone, "anyone")),
            ["ops-1-r1 rejected by alice stop Some(\"14\")"]
        );
        // Only the first answer counts; a second approve finds no plan waiting.
        let again = comment("15", "alice", 6, "/recac approve");
        let acts = plan(&[approve, again], &runs, &anyone, "anyone");
        assert_eq!(names(&acts)[1], "reply to 15");
        let Act::Reply { text, .. } = &acts[1] else {
            panic!("{acts:?}")
        };
        assert!(text.contains("no plan waiting"), "{text}");
    }

    #[test]
    fn an_approval_by_transition_needs_an_allowed_user() {
        let runs = [plan_run(1, 0, None, true)];
        let moved = CommentFacts {
            id: transition_id("777"),
            author: Some(user("mallory")),
            created: at(5),
            text: String::new(),
            by_bot: false,
            command: Some(Command::Approve),
            transition: true,
        };
        let only_alice = |u: Option<&User>| u.and_then(User::id) == Some("alice");
        let acts = plan(std::slice::from_ref(&moved), &runs, &only_alice, "alice");
        let Act::Reply { comment, text } = &acts[0] else {
            panic!("{acts:?}")
        };
        assert_eq!(comment, "status-777");
        assert!(
            text.contains("did not take the move of this ticket by mallory"),
            "{text}"
        );
        let by_alice = CommentFacts {
            author: Some(user("alice")),
            ..moved
        };
        assert!(
            names(&plan(&[by_alice], &runs, &only_alice, "alice"))[0]
                .starts_with("run 2 for status-777: Implement")
        );
    }

    #[test]
    fn a_plan_answered_before_a_restart_is_settled_from_the_next_run() {
        let approve = comment("10", "alice", 5, "/recac approve");
        let approved = [plan_run(1, 0, None, true), run(2, false, 6, Some("10"))];
        assert_eq!(
            names(&plan(
                std::slice::from_ref(&approve),
                &approved,
                &anyone,
                "anyone"
            )),
            ["ops-1-r1 approved by alice stop None"]
        );
        let reject = comment("11", "bob", 5, "/recac reject no");
        let rejected = [
            plan_run(1, 0, None, true),
            plan_run(2, 6, Some("11"), false),
        ];
        assert_eq!(
            names(&plan(&[reject], &rejected, &anyone, "anyone")),
            ["ops-1-r1 rejected by bob stop None"]
        );
        // Once decided, nothing more.
        let decided = [plan_run(1, 0, None, false), run(2, false, 6, Some("10"))];
        assert!(plan(&[approve], &decided, &anyone, "anyone").is_empty());
    }

    #[test]
    fn plan_prompts_carry_the_plan_and_fit_the_cap() {
        let p = implement_prompt(
            "Fix the parser.",
            "1. edit parse.rs\n2. test",
            "Alice",
            1000,
        );
        assert!(
            p.starts_with("Fix the parser.\n\nThe plan below was approved on the ticket by Alice."),
            "{p}"
        );
        assert!(
            p.ends_with("Approved plan:\n1. edit parse.rs\n2. test"),
            "{p}"
        );
        let long = "x".repeat(5000);
        let p = implement_prompt(&long, "the plan", "Alice", 300);
        assert_eq!(p.chars().count(), 300);
        assert!(p.ends_with("the plan"), "the plan survives the cap");
        let p = replan_prompt("Fix it.", Some("old plan"), "Bob", Some("too big"), 1000);
        assert!(p.contains("rejected on the ticket by Bob: too big"), "{p}");
        assert!(p.contains("Rejected plan:\nold plan"), "{p}");
        assert!(p.ends_with("Write a new plan."), "{p}");
        let p = replan_prompt("Fix it.", None, "Bob", None, 1000);
        assert!(p.contains("by Bob (no reason given)"), "{p}");
    }

    fn anyone(_: Option<&User>) -> bool {
        true
    }

    #[test]
    fn commands_are_lines_starting_with_the_prefix_or_mentions() {
        assert_eq!(parse("/recac retry", false, &[]), Some(Command::Retry));
        assert_eq!(parse("  /RECAC   stop  ", false, &[]), Some(Command::Stop));
        assert_eq!(
            parse(
                "Thanks!\n/recac also handle the empty list\nand nulls",
                false,
                &[]
            ),
            Some(Command::FollowUp(
                "also handle the empty list\nand nulls".into()
            ))
        );
        assert_eq!(parse("/recac", false, &[]), Some(Command::Help));
        assert_eq!(
            parse("/recac frobnicate", false, &[]),
            Some(Command::Unknown("frobnicate".into()))
        );
        assert_eq!(
            parse("/recac reject too risky", false, &[]),
            Some(Command::Reject("too risky".into()))
        );
        assert_eq!(parse("/recacx retry", false, &[]), None);
        assert_eq!(parse("please /recac retry", false, &[]), None);
        assert_eq!(parse("looks good to me", false, &[]), None);
        let mentions = vec!["@recac bot".to_string(), "[~recac-bot]".to_string()];
        assert_eq!(
            parse("@recac bot also cover the error path", true, &mentions),
            Some(Command::FollowUp("also cover the error path".into()))
        );
        assert_eq!(
            parse("[~recac-bot] retry", true, &mentions),
            Some(Command::Retry)
        );
    }

    #[test]
    fn only_new_unanswered_comments_by_allowed_users_act_once() {
        let runs = [run(1, true, 100, None)];
        let comments = [
            comment("10", "alice", 50, "/recac retry"),
            comment("11", "bot", 101, "recac finished this ticket"),
            comment("12", "alice", 200, "/recac also handle the empty list"),
            comment("13", "mallory", 210, "/recac retry"),
            comment("14", "alice", 220, "/recac retry"),
            comment("15", "alice", 230, "/recac nonsense"),
            comment("16", "alice", 240, "just a remark"),
        ];
        let only_alice =
            |u: Option<&User>| u.is_some_and(|u| u.account_id.as_deref() == Some("alice"));
        let acts = plan(&comments, &runs, &only_alice, "alice");
        assert_eq!(acts.len(), 4, "{acts:?}");
        assert!(
            matches!(&acts[0], Act::Run { comment, run: 2, request: RunRequest::FollowUp { text, .. } } if comment == "12" && text == "also handle the empty list")
        );
        assert!(
            matches!(&acts[1], Act::Reply { comment, text } if comment == "13" && text.contains("only alice") && text.ends_with("[recac:re:13]"))
        );
        assert!(
            matches!(&acts[2], Act::Run { comment, run: 3, request: RunRequest::Retry } if comment == "14")
        );
        assert!(
            matches!(&acts[3], Act::Reply { comment, text } if comment == "15" && text.contains("\"nonsense\""))
        );

        // Acted on: run 2 carries comment 12 and started then; the replies are on the ticket.
        let runs = [run(1, true, 100, None), run(2, false, 205, Some("12"))];
        let mut comments = comments.to_vec();
        comments.push(comment("17", "bot", 250, "recac did not act [recac:re:13]"));
        let acts = plan(&comments, &runs, &only_alice, "alice");
        assert_eq!(acts.len(), 2, "{acts:?}");
        assert!(matches!(&acts[0], Act::Run { comment, run: 3, .. } if comment == "14"));
        assert!(matches!(&acts[1], Act::Reply { comment, .. } if comment == "15"));
    }

    #[test]
    fn stop_names_the_unfinished_runs_or_says_there_is_none() {
        let comments = [comment("20", "alice", 300, "/recac stop")];
        let runs = [run(1, true, 100, None), run(2, false, 250, None)];
        assert_eq!(
            plan(&comments, &runs, &anyone, "anyone"),
            vec![Act::Stop {
                comment: "20".into(),
                by: "alice".into(),
                tasks: vec!["ops-1-r2".into()],
            }]
        );
        let runs = [run(1, true, 100, None)];
        let acts = plan(&comments, &runs, &anyone, "anyone");
        assert!(matches!(&acts[0], Act::Reply { text, .. } if text.contains("nothing running")));
        assert!(
            plan(&comments, &[], &anyone, "anyone").is_empty(),
            "no run, no conversation"
        );
    }

    #[test]
    fn a_follow_up_prompt_keeps_the_newest_and_fits_the_cap() {
        let earlier = [
            EarlierRun {
                run: 1,
                request: None,
                outcome: Some("attempt 1 succeeded: added the parser".into()),
            },
            EarlierRun {
                run: 2,
                request: Some("also handle the empty list".into()),
                outcome: Some("attempt 1 succeeded: handled it".into()),
            },
        ];
        let prompt = follow_up_prompt(
            "Jira ticket OPS-1: parse it",
            &earlier,
            "alice",
            "and nulls",
            10_000,
        );
        let original = prompt.find("parse it").expect("original");
        let run2 = prompt
            .find("- run 2 (follow-up: also handle the empty list)")
            .expect("run 2");
        let follow_up = prompt.find("and nulls").expect("follow-up");
        assert!(original < run2 && run2 < follow_up, "{prompt}");
        let small = follow_up_prompt(&"x".repeat(500), &earlier, "alice", "and nulls", 300);
        assert!(small.chars().count() <= 300);
        assert!(small.ends_with("and nulls"), "{small}");
        assert!(
            !small.contains("- run 1"),
            "the oldest run goes first: {small}"
        );
    }
}
