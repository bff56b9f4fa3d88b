//! Pure decisions: observed state in, what to do out. No I/O here.
//!
//! # Exactly once, whatever crashes in between
//!
//! A ticket becomes work in this order, each step idempotent and each recoverable from
//! what Kubernetes and Jira show (nothing is remembered only in memory):
//!
//! 1. **Read** the ticket's changelog and find its *trigger*: the changelog entry that
//!    made it match (the trigger label added, or the move into the trigger status), or
//!    its creation. The trigger's id identifies this run of the ticket.
//! 2. **Create** the AgentTask `<key>-r<run>` with the annotation `recac.io/claim: pending`
//!    and `recac.io/trigger: <id>`. The name is deterministic, so a create that finds the
//!    task already there adopts it (if its trigger is the same) and never makes a second
//!    one. The task controller does not dispatch a task whose claim is pending.
//! 3. **Transition** the ticket out of the trigger state: this is the claim. A racing
//!    claimer finds the transition unavailable or gets 409.
//! 4. **Assign and label** in one edit (repeating it changes nothing).
//! 5. **Tell** the task controller of this process through the
//!    [`ClaimBoard`](recac_runtime::claims::ClaimBoard): it dispatches at once. Nothing is
//!    written for a successful claim; it becomes durable as the attempt's Job (only ever
//!    created after a claim) and then as the `Claimed` condition in the task's first
//!    status. A lost or unavailable claim is marked on the task (`recac.io/claim: lost`
//!    or `unavailable`, a metadata patch): those tasks never run.
//!
//! Recovery: every poll first resumes each task of the source still `pending` (no
//! `Claimed` condition, not settled in this term), deciding
//! the next step from the ticket's changelog *after the task's trigger* ([`claim_step`]):
//! a status change by the bot there means step 3 happened (never transition twice); a
//! status or assignee change by someone else before it means the ticket was taken
//! (`lost`); the ticket's assignee and labels tell whether step 4 happened. A crash
//! before step 2 leaves nothing behind and the ticket still matches; a crash after it
//! leaves a pending task that recovery finishes. A ticket whose claimed task exists never
//! gets a second task for the same trigger ([`plan_ticket`]); a new trigger (re-labelled,
//! moved back to To Do) after the task ended is a new run.

use recac_jira::{ChangeHistory, User};

/// The annotation that holds a task's claim state.
pub const CLAIM_ANNOTATION: &str = "recac.io/claim";
/// The annotation that names the changelog entry (or `created`) that triggered the run.
pub const TRIGGER_ANNOTATION: &str = "recac.io/trigger";
/// Why a claim was lost, for people.
pub const CLAIM_MESSAGE_ANNOTATION: &str = recac_api::annotations::CLAIM_MESSAGE;
/// Label keys on created tasks.
pub const SOURCE_LABEL: &str = "recac.io/source";
pub const TICKET_LABEL: &str = "recac.io/ticket";
pub const RUN_LABEL: &str = "recac.io/run";
/// The trigger id of a ticket that matched from its creation on.
pub const CREATED: &str = "created";

/// A task's claim state (`recac.io/claim`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimState {
    Pending,
    Claimed,
    Lost,
    /// The ticket is free but no claim transition is offered to the bot.
    Unavailable,
    /// Absent or unknown: not created by a source, or edited by hand; treated as claimed.
    Other,
}

impl ClaimState {
    pub fn parse(value: Option<&str>) -> Self {
        match value {
            Some("pending") => ClaimState::Pending,
            Some("claimed") => ClaimState::Claimed,
            Some("lost") => ClaimState::Lost,
            Some("unavailable") => ClaimState::Unavailable,
            _ => ClaimState::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ClaimState::Pending => "pending",
            ClaimState::Claimed => "claimed",
            ClaimState::Lost => "lost",
            ClaimState::Unavailable => "unavailable",
            ClaimState::Other => "",
        }
    }
}

/// What decisions read of one existing task of a ticket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskView {
    pub namespace: String,
    pub name: String,
    pub source: String,
    pub run: u32,
    pub claim: ClaimState,
    pub trigger: Option<String>,
    pub finished: bool,
}

/// Who made a ticket match, and which changelog entry did it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trigger {
    /// The changelog entry's id, or [`CREATED`].
    pub id: String,
    /// Who did it (the reporter for [`CREATED`]); `None` when Jira does not say.
    pub actor: Option<User>,
}

/// What makes a ticket match, as far as the changelog can tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Criteria {
    /// The trigger label (`None` for a raw-JQL source: any label change counts).
    pub label: Option<String>,
    /// Whether entering the current status is part of matching.
    pub status: bool,
}

/// The entry that made the ticket match: the latest change that added the trigger label
/// or moved the ticket into its current status, whichever came last; the creation
/// when neither is in the changelog. `histories` is oldest first.
///
/// Changes made by the bot itself (its claims, the feedback controller moving a failed
/// ticket back) never count: only a person can make a ticket ready, so a run can never
/// start the next one.
pub fn trigger(
    histories: &[ChangeHistory],
    criteria: &Criteria,
    reporter: Option<&User>,
    bot: Option<&User>,
) -> Trigger {
    let made_match = |h: &ChangeHistory| {
        let by_bot = matches!((&h.author, bot), (Some(a), Some(b)) if same_user(a, b));
        !by_bot
            && h.items.iter().any(|item| match item.field.as_str() {
                "labels" => match &criteria.label {
                    Some(label) => {
                        item.labels_after().contains(&label.as_str())
                            && !item.labels_before().contains(&label.as_str())
                    }
                    None => true,
                },
                "status" => criteria.status,
                _ => false,
            })
    };
    match histories.iter().rev().find(|h| made_match(h)) {
        Some(h) => Trigger {
            id: h.id.clone(),
            actor: h.author.clone(),
        },
        None => Trigger {
            id: CREATED.into(),
            actor: reporter.cloned(),
        },
    }
}

/// Why a ticket is not taken now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// A task for it is not finished yet.
    InFlight,
    /// Its current trigger already had its run.
    AlreadyRan,
    /// Another source's task holds the name.
    OtherSource,
    /// No repository could be resolved.
    NoRepository,
    /// The repository found was refused.
    RepositoryRejected,
    /// The user who triggered it may not.
    NotAllowed,
    /// The key is not a valid ticket key.
    InvalidKey,
    /// The source's cap on tasks in flight or per poll is reached.
    Capped,
    /// Its updated time has not changed since it was last skipped.
    Unchanged,
    /// Free to take, but its workflow offers the bot no claim transition.
    TransitionUnavailable,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::InFlight => "in_flight",
            SkipReason::AlreadyRan => "already_ran",
            SkipReason::OtherSource => "other_source",
            SkipReason::NoRepository => "no_repository",
            SkipReason::RepositoryRejected => "repository_rejected",
            SkipReason::NotAllowed => "not_allowed",
            SkipReason::InvalidKey => "invalid_key",
            SkipReason::Capped => "capped",
            SkipReason::Unchanged => "unchanged",
            SkipReason::TransitionUnavailable => "transition_unavailable",
        }
    }
}

/// Whether a ticket needs a new run, before reading its changelog: `None` means "read
/// the trigger and ask [`plan_ticket`]".
pub fn precheck(tasks: &[TaskView], source: &str) -> Option<SkipReason> {
    if tasks.iter().any(|t| !t.finished) {
        return Some(SkipReason::InFlight);
    }
    let latest = tasks.iter().max_by_key(|t| t.run)?;
    (latest.source != source).then_some(SkipReason::OtherSource)
}

/// The run to start for `trigger`, or why not.
pub fn plan_ticket(tasks: &[TaskView], source: &str, trigger: &str) -> Result<u32, SkipReason> {
    if let Some(reason) = precheck(tasks, source) {
        return Err(reason);
    }
    match tasks.iter().max_by_key(|t| t.run) {
        None => Ok(1),
        Some(latest) if latest.trigger.as_deref() == Some(trigger) => Err(SkipReason::AlreadyRan),
        Some(latest) => Ok(latest.run + 1),
    }
}

/// Whether `actor` may trigger a source: listed by id, name or e-mail, or in a listed group.
pub fn allowed(
    actor: Option<&User>,
    users: &[String],
    groups: &[String],
    actor_groups: &[String],
) -> bool {
    if users.is_empty() && groups.is_empty() {
        return true;
    }
    let Some(actor) = actor else {
        return false;
    };
    let ids = [
        actor.account_id.as_deref(),
        actor.name.as_deref(),
        actor.key.as_deref(),
        actor.email_address.as_deref(),
    ];
    users
        .iter()
        .any(|u| ids.iter().flatten().any(|id| id.eq_ignore_ascii_case(u)))
        || groups.iter().any(|g| actor_groups.iter().any(|a| a == g))
}

/// What the claim needs next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimStep {
    /// Transition the ticket out of the trigger state.
    Transition,
    /// Assign and/or label (the transition is done).
    Edit { assign: bool },
    /// Nothing left in Jira: mark the task claimed.
    Done,
    /// Someone else took the ticket.
    Lost(String),
}

/// What [`claim_step`] reads.
pub struct ClaimFacts<'a> {
    /// The changelog, oldest first.
    pub histories: &'a [ChangeHistory],
    /// The task's trigger entry id.
    pub trigger: &'a str,
    pub bot: &'a User,
    pub assignee: Option<&'a User>,
    pub labels: &'a [String],
}

/// Whether `a` and `b` are the same Jira user (by accountId, or name on Data Center).
pub fn same_user(a: &User, b: &User) -> bool {
    match (a.id(), b.id()) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// Whether a ticket the bot claimed, now without any AgentTask, was left stranded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stranding {
    /// The changelog shows no claim by the bot: not this operator's to hand back.
    NotClaimedByBot,
    /// A final result was reported after the bot's last claim: the work ended and its task
    /// was cleaned up afterwards.
    Reported,
    /// Stranded. `claim` is the changelog entry of the bot's last claim; it makes the
    /// hand-back comment's marker, so that one stranding gets one comment.
    Stranded { claim: String },
}

/// Where the feedback controller's comments link to (their hidden marker).
pub const FEEDBACK_MARKER: &str = "#recac-feedback/";

/// Decides from the changelog (oldest first) and the comments whether a claimed ticket
/// without a task is stranded: the bot's last claim (it assigned itself or added a claim
/// label) has no final report (`succeeded`, `failed`, `cancelled`) after it. A live status
/// comment is edited as runs go, so its last edit counts, not its creation.
pub fn stranding(
    histories: &[ChangeHistory],
    comments: &[recac_jira::Comment],
    bot: &User,
    claim_labels: &[String],
) -> Stranding {
    let claims_by_bot = |h: &&ChangeHistory| {
        h.author.as_ref().is_some_and(|a| same_user(a, bot))
            && h.items.iter().any(|item| match item.field.as_str() {
                "assignee" => item.to.as_deref().is_some_and(|to| Some(to) == bot.id()),
                "labels" => {
                    let before = item.labels_before();
                    item.labels_after()
                        .iter()
                        .any(|l| claim_labels.iter().any(|c| c == l) && !before.contains(l))
                }
                _ => false,
            })
    };
    let Some(claim) = histories.iter().rev().find(claims_by_bot) else {
        return Stranding::NotClaimedByBot;
    };
    let claimed_at = claim.created.as_deref().unwrap_or("");
    let reported = comments.iter().any(|c| {
        let body = c.body.to_string();
        c.author.as_ref().is_some_and(|a| same_user(a, bot))
            && c.updated.as_deref().or(c.created.as_deref()).unwrap_or("") >= claimed_at
            && body.contains(FEEDBACK_MARKER)
            && ["/succeeded/", "/failed/", "/cancelled/"]
                .iter()
                .any(|kind| body.contains(kind))
    });
    if reported {
        Stranding::Reported
    } else {
        Stranding::Stranded {
            claim: claim.id.clone(),
        }
    }
}

/// The hidden marker of the comment that hands back the stranding of `claim`.
pub fn stranded_marker(claim: &str) -> String {
    format!("[recac:stranded:{claim}]")
}

/// The claim's next step, from the changelog after the trigger (see the module docs).
pub fn claim_step(
    facts: &ClaimFacts<'_>,
    assign: bool,
    add: &[String],
    remove: &[String],
) -> ClaimStep {
    let start = match facts.histories.iter().position(|h| h.id == facts.trigger) {
        Some(i) => i + 1,
        None if facts.trigger == CREATED => 0,
        // The trigger entry fell out of the changelog window: look at what remains.
        None => 0,
    };
    let mut ours = false;
    let mut foreign_assignee_after = false;
    for h in &facts.histories[start..] {
        let by_bot = h.author.as_ref().is_some_and(|a| same_user(a, facts.bot));
        for item in &h.items {
            match item.field.as_str() {
                "status" if by_bot => ours = true,
                "status" if !ours => {
                    let who = h
                        .author
                        .as_ref()
                        .map(User::label)
                        .unwrap_or_else(|| "someone".into());
                    let to = item.to_string.clone().unwrap_or_default();
                    return ClaimStep::Lost(format!(
                        "{who} moved the ticket to {to:?} before recac claimed it"
                    ));
                }
                "assignee" if !by_bot && !ours && assign && item.to.is_some() => {
                    let who = h
                        .author
                        .as_ref()
                        .map(User::label)
                        .unwrap_or_else(|| "someone".into());
                    let to = item
                        .to_string
                        .clone()
                        .or(item.to.clone())
                        .unwrap_or_default();
                    return ClaimStep::Lost(format!(
                        "{who} assigned the ticket to {to} before recac claimed it"
                    ));
                }
                "assignee" if !by_bot && ours => foreign_assignee_after = true,
                _ => {}
            }
        }
    }
    if !ours {
        return ClaimStep::Transition;
    }
    let needs_assign = assign
        && !foreign_assignee_after
        && !facts.assignee.is_some_and(|a| same_user(a, facts.bot));
    let labels_done = add.iter().all(|l| facts.labels.contains(l))
        && remove.iter().all(|l| !facts.labels.contains(l));
    if needs_assign || !labels_done {
        ClaimStep::Edit {
            assign: needs_assign,
        }
    } else {
        ClaimStep::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use recac_jira::ChangeItem;

    fn user(id: &str) -> User {
        User {
            account_id: Some(id.into()),
            display_name: Some(id.into()),
            ..Default::default()
        }
    }

    fn h(id: &str, who: &str, field: &str, from: &str, to: &str) -> ChangeHistory {
        ChangeHistory {
            id: id.into(),
            author: Some(user(who)),
            created: Some(format!(
                "2026-01-01T00:00:{:02}.000+0000",
                id.parse::<u32>().unwrap_or(0)
            )),
            items: vec![ChangeItem {
                field: field.into(),
                from_string: Some(from.into()),
                to_string: Some(to.into()),
                to: (field == "assignee").then(|| to.to_string()),
                ..Default::default()
            }],
        }
    }

    fn view(run: u32, trigger: &str, finished: bool) -> TaskView {
        TaskView {
            namespace: "ns".into(),
            name: format!("ops-1-r{run}"),
            source: "ops".into(),
            run,
            claim: ClaimState::Claimed,
            trigger: Some(trigger.into()),
            finished,
        }
    }

    #[test]
    fn the_trigger_is_the_last_change_that_made_the_ticket_match() {
        let c = Criteria {
            label: Some("agent".into()),
            status: true,
        };
        let reporter = user("reporter");
        assert_eq!(trigger(&[], &c, Some(&reporter), None).id, CREATED);
        assert_eq!(
            trigger(&[], &c, Some(&reporter), None).actor,
            Some(reporter.clone())
        );
        let log = vec![
            h("1", "alice", "labels", "", "agent"),
            h("2", "bob", "labels", "agent", "agent other"),
            h("3", "bot", "status", "To Do", "In Progress"),
            h("4", "carol", "status", "In Progress", "To Do"),
        ];
        let t = trigger(&log[..2], &c, None, None);
        assert_eq!(
            (t.id.as_str(), t.actor.and_then(|a| a.account_id)),
            ("1", Some("alice".into()))
        );
        assert_eq!(trigger(&log, &c, None, None).id, "4");
        // The bot's own moves never start a run.
        let mut by_bot = log.clone();
        by_bot.push(h("5", "bot", "status", "In Review", "To Do"));
        assert_eq!(trigger(&by_bot, &c, None, Some(&user("bot"))).id, "4");
        let labels_only = Criteria {
            label: Some("agent".into()),
            status: false,
        };
        assert_eq!(trigger(&log, &labels_only, None, None).id, "1");
    }

    #[test]
    fn runs_follow_triggers() {
        assert_eq!(plan_ticket(&[], "ops", "created"), Ok(1));
        assert_eq!(
            plan_ticket(&[view(1, "created", false)], "ops", "9"),
            Err(SkipReason::InFlight)
        );
        assert_eq!(
            plan_ticket(&[view(1, "created", true)], "ops", "created"),
            Err(SkipReason::AlreadyRan)
        );
        assert_eq!(
            plan_ticket(&[view(1, "created", true), view(2, "7", true)], "ops", "9"),
            Ok(3)
        );
        let mut other = view(1, "created", true);
        other.source = "web".into();
        assert_eq!(
            plan_ticket(&[other], "ops", "9"),
            Err(SkipReason::OtherSource)
        );
    }

    #[test]
    fn who_may_trigger() {
        let alice = User {
            account_id: Some("a1".into()),
            email_address: Some("alice@x".into()),
            ..Default::default()
        };
        assert!(allowed(None, &[], &[], &[]));
        assert!(allowed(Some(&alice), &["ALICE@x".into()], &[], &[]));
        assert!(!allowed(Some(&alice), &["bob".into()], &[], &[]));
        assert!(allowed(
            Some(&alice),
            &[],
            &["devs".into()],
            &["devs".into()]
        ));
        assert!(!allowed(None, &["a1".into()], &[], &[]));
    }

    #[test]
    fn claim_steps_resume_from_the_changelog() {
        let bot = user("bot");
        let add = vec!["claimed".to_string()];
        let facts = |log: &'static [ChangeHistory],
                     assignee: Option<&'static User>,
                     labels: &'static [String]| ClaimFacts {
            histories: log,
            trigger: "1",
            bot: Box::leak(Box::new(user("bot"))),
            assignee,
            labels,
        };
        let _ = &bot;
        let log: &'static [ChangeHistory] =
            Box::leak(Box::new([h("1", "alice", "labels", "", "agent")]));
        assert_eq!(
            claim_step(&facts(log, None, &[]), true, &add, &[]),
            ClaimStep::Transition
        );
        let log: &'static [ChangeHistory] = Box::leak(Box::new([
            h("1", "alice", "labels", "", "agent"),
            h("2", "bot", "status", "To Do", "In Progress"),
        ]));
        assert_eq!(
            claim_step(&facts(log, None, &[]), true, &add, &[]),
            ClaimStep::Edit { assign: true }
        );
        let bot_ref: &'static User = Box::leak(Box::new(user("bot")));
        let labels: &'static [String] = Box::leak(Box::new(["claimed".to_string()]));
        assert_eq!(
            claim_step(&facts(log, Some(bot_ref), labels), true, &add, &[]),
            ClaimStep::Done
        );
        assert_eq!(
            claim_step(&facts(log, Some(bot_ref), &[]), true, &add, &[]),
            ClaimStep::Edit { assign: false }
        );
        let log: &'static [ChangeHistory] = Box::leak(Box::new([
            h("1", "alice", "labels", "", "agent"),
            h("2", "carol", "status", "To Do", "In Progress"),
        ]));
        assert!(
            matches!(claim_step(&facts(log, None, &[]), true, &add, &[]), ClaimStep::Lost(m) if m.contains("carol"))
        );
        let log: &'static [ChangeHistory] = Box::leak(Box::new([
            h("1", "alice", "labels", "", "agent"),
            h("2", "dave", "assignee", "", "dave"),
        ]));
        assert!(
            matches!(claim_step(&facts(log, None, &[]), true, &add, &[]), ClaimStep::Lost(m) if m.contains("dave"))
        );
        assert_eq!(
            claim_step(&facts(log, None, &[]), false, &[], &[]),
            ClaimStep::Transition
        );
        // Changes before the trigger are history of earlier runs.
        let log: &'static [ChangeHistory] = Box::leak(Box::new([
            h("0", "carol", "status", "To Do", "Done"),
            h("1", "alice", "labels", "", "agent"),
        ]));
        assert_eq!(
            claim_step(&facts(log, None, &[]), true, &add, &[]),
            ClaimStep::Transition
        );
    }

    fn comment(who: &str, at_second: u32, body: &str) -> recac_jira::Comment {
        recac_jira::Comment {
            id: format!("c{at_second}"),
            body: serde_json::Value::String(body.into()),
            author: Some(user(who)),
            created: Some(format!("2026-01-01T00:00:{at_second:02}.000+0000")),
            updated: None,
        }
    }

    #[test]
    fn a_claim_without_a_later_report_is_stranded() {
        let bot = user("bot");
        let claim_labels = vec!["recac-claimed".to_string()];
        let log = vec![
            h("1", "alice", "labels", "", "recac-agent"),
            h("2", "bot", "status", "To Do", "In Progress"),
            h("3", "bot", "assignee", "", "bot"),
        ];
        assert_eq!(
            stranding(&log, &[], &bot, &claim_labels),
            Stranding::Stranded { claim: "3".into() }
        );
        let reported =
            format!("[done|https://github.com/recac-io/recac{FEEDBACK_MARKER}uid/succeeded/1]");
        assert_eq!(
            stranding(&log, &[comment("bot", 9, &reported)], &bot, &claim_labels),
            Stranding::Reported
        );
        // A report from an earlier run does not cover a later claim.
        assert_eq!(
            stranding(&log, &[comment("bot", 2, &reported)], &bot, &claim_labels),
            Stranding::Stranded { claim: "3".into() }
        );
        // A live status comment made for an earlier run and edited with this run's outcome
        // does.
        let mut live = comment("bot", 2, &reported);
        live.updated = Some("2026-01-01T00:00:09.000+0000".into());
        assert_eq!(
            stranding(&log, &[live], &bot, &claim_labels),
            Stranding::Reported
        );
        // Neither does a report-like comment by someone else.
        assert_eq!(
            stranding(
                &log,
                &[comment("mallory", 9, &reported)],
                &bot,
                &claim_labels
            ),
            Stranding::Stranded { claim: "3".into() }
        );
        // A claim label added by the bot counts as a claim too.
        let labelled = vec![h(
            "4",
            "bot",
            "labels",
            "recac-agent",
            "recac-agent recac-claimed",
        )];
        assert_eq!(
            stranding(&labelled, &[], &bot, &claim_labels),
            Stranding::Stranded { claim: "4".into() }
        );
        // Assigned to the bot by a person: not this operator's claim.
        let by_person = vec![h("5", "alice", "assignee", "", "bot")];
        assert_eq!(
            stranding(&by_person, &[], &bot, &claim_labels),
            Stranding::NotClaimedByBot
        );
        assert_eq!(stranded_marker("3"), "[recac:stranded:3]");
    }
}
