//! Commands people write on a ticket, as pure decisions: which comments are commands, and
//! what each one asks for. Reading the comments and acting is [`crate::conversation`].
//!
//! A comment is a command when it is addressed to the bot (a line starting with `/recac`,
//! or a mention of the bot user), is not the bot's own, and is newer than the start of
//! the ticket's latest run (the comment that started it, or the task's creation). Each
//! command acts once, whatever restarts in between, and the record of that is in
//! Kubernetes or on the ticket, never only in memory:
//! - a follow-up or `retry` is a new AgentTask annotated `recac.io/command: <comment id>`;
//! - `stop` is the annotation `recac.io/stop: <comment id>` on the ticket's unfinished tasks;
//! - every other answer is one reply comment carrying [`reply_marker`].
//!
//! A comment whose id is in any of those records is never acted on again.

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
}

/// What a follow-up or retry runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunRequest {
    FollowUp { text: String, author: String },
    Retry,
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
}

/// The commands a user types, for replies.
pub const USAGE: &str = "Write a comment that starts with /recac or mentions the recac bot: free text asks for a follow-up run on the same branch (it runs after the current one); \"retry\" runs the last request again; \"stop\" stops the running task (what it pushed stays on its branch); \"approve\" or \"reject <why>\" answer a plan that waits for approval; \"help\" shows this.";

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
    let mut acts = Vec::new();
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
            acts.push(reply(format!(
                "recac did not act on the comment by {who}: only {who_may} may give recac commands on this project's tickets."
            )));
            continue;
        }
        let Some(command) = &comment.command else {
            continue;
        };
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
        }
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
