//! This controller's part of a task's status, and how each delivery changes it (pure).
//!
//! It owns `status.feedback` and its own condition types, written under its own field
//! manager; the task controller's fields are never sent.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use recac_api::{AgentTask, FeedbackStatus};

use crate::report::Report;

/// The condition types this controller owns.
pub mod condition {
    /// True while a report waits for Jira (an outage, a rate limit, a refusal).
    pub const PENDING: &str = "FeedbackPending";
    /// The outcome's transition and labels: True when applied, False when impossible.
    pub const TICKET_UPDATED: &str = "TicketUpdated";
    pub const OWNED: [&str; 2] = [PENDING, TICKET_UPDATED];
}

/// How `status.feedback.reported` names the ticket's live comment: `statusComment/<id>`.
/// It says that `commentId` is that comment (a comment per report records its id too), so
/// a change of `feedback.comments` never edits a comment made for one report.
pub const STATUS_COMMENT: &str = "statusComment/";

/// The id of the ticket's live comment, as this task recorded it.
pub fn status_comment_of(task: &AgentTask) -> Option<String> {
    task.status
        .as_ref()?
        .feedback
        .as_ref()?
        .reported
        .iter()
        .find_map(|key| key.strip_prefix(STATUS_COMMENT))
        .filter(|id| !id.is_empty())
        .map(str::to_string)
}

/// How the outcome's ticket update went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TicketUpdate {
    /// Done (or nothing to do); says what.
    Done(String),
    /// The configured transition does not exist for the ticket now; says why.
    Impossible(String),
}

/// The status fields this controller writes.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Owned {
    pub feedback: FeedbackStatus,
    pub conditions: Vec<Condition>,
}

impl Owned {
    /// This controller's fields as the task has them now.
    pub fn of(task: &AgentTask) -> Owned {
        let status = task.status.clone().unwrap_or_default();
        Owned {
            feedback: status.feedback.unwrap_or_default(),
            conditions: status
                .conditions
                .into_iter()
                .filter(|c| condition::OWNED.contains(&c.type_.as_str()))
                .collect(),
        }
    }

    pub fn is_pending(&self) -> bool {
        self.conditions
            .iter()
            .any(|c| c.type_ == condition::PENDING && c.status == "True")
    }

    fn set_condition(
        &mut self,
        type_: &str,
        status: bool,
        reason: &str,
        message: &str,
        now: &Time,
        generation: Option<i64>,
    ) {
        let text = if status { "True" } else { "False" };
        match self.conditions.iter_mut().find(|c| c.type_ == type_) {
            Some(existing) => {
                if existing.status != text {
                    existing.last_transition_time = now.clone();
                }
                existing.status = text.into();
                existing.reason = reason.into();
                existing.message = message.into();
                existing.observed_generation = generation;
            }
            None => self.conditions.push(Condition {
                type_: type_.into(),
                status: text.into(),
                reason: reason.into(),
                message: message.into(),
                last_transition_time: now.clone(),
                observed_generation: generation,
            }),
        }
    }

    /// A delivered report: listed as reported; an outcome's comment and ticket update noted;
    /// a pending condition cleared.
    pub fn record_delivery(
        &mut self,
        report: &Report,
        comment_id: Option<&str>,
        update: Option<&TicketUpdate>,
        has_ticket_actions: bool,
        now: Time,
        generation: Option<i64>,
    ) {
        let key = report.key();
        let fb = &mut self.feedback;
        if !fb.reported.contains(&key) {
            fb.reported.push(key.clone());
        }
        if let Some(id) = comment_id.filter(|_| report.kind.is_outcome()) {
            fb.comment_id = Some(id.to_string());
            fb.reported_attempt = Some(report.attempt);
            fb.reported_at = Some(now.clone());
        }
        if self
            .conditions
            .iter()
            .any(|c| c.type_ == condition::PENDING)
        {
            self.set_condition(
                condition::PENDING,
                false,
                "Delivered",
                &format!("{key} is on the ticket"),
                &now,
                generation,
            );
        }
        match update {
            Some(TicketUpdate::Done(what)) => {
                self.feedback.ticket_updated = Some(key);
                if has_ticket_actions {
                    self.set_condition(
                        condition::TICKET_UPDATED,
                        true,
                        "Updated",
                        what,
                        &now,
                        generation,
                    );
                }
            }
            Some(TicketUpdate::Impossible(why)) => {
                self.feedback.ticket_updated = Some(key);
                self.set_condition(
                    condition::TICKET_UPDATED,
                    false,
                    "TransitionUnavailable",
                    why,
                    &now,
                    generation,
                );
            }
            None => {}
        }
    }

    /// The ticket's live comment is `id`: `commentId`, and the one `statusComment/` entry.
    pub fn record_status_comment(&mut self, id: &str) {
        let entry = format!("{STATUS_COMMENT}{id}");
        let fb = &mut self.feedback;
        fb.reported
            .retain(|key| !key.starts_with(STATUS_COMMENT) || *key == entry);
        if !fb.reported.contains(&entry) {
            fb.reported.push(entry);
        }
        fb.comment_id = Some(id.to_string());
    }

    /// What was pending reached the ticket (with nothing to record besides).
    pub fn clear_pending(&mut self, now: Time, generation: Option<i64>) {
        if self.is_pending() {
            self.set_condition(
                condition::PENDING,
                false,
                "Delivered",
                "the ticket's comment is up to date",
                &now,
                generation,
            );
        }
    }

    /// A delivery that failed: `FeedbackPending=True` with why.
    pub fn mark_pending(
        &mut self,
        reason: &str,
        message: &str,
        now: Time,
        generation: Option<i64>,
    ) {
        self.set_condition(condition::PENDING, true, reason, message, &now, generation);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::ReportKind;
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap_or(Timestamp::UNIX_EPOCH))
    }

    fn empty() -> Owned {
        Owned {
            feedback: FeedbackStatus::default(),
            conditions: Vec::new(),
        }
    }

    #[test]
    fn only_outcomes_fill_the_comment_fields() {
        let mut owned = empty();
        let picked = Report {
            kind: ReportKind::PickedUp,
            attempt: 1,
        };
        owned.record_delivery(&picked, Some("10"), None, false, at(1), Some(1));
        owned.record_delivery(&picked, Some("10"), None, false, at(1), Some(1));
        assert_eq!(owned.feedback.reported, ["pickedUp/1"]);
        assert_eq!(owned.feedback.comment_id, None);
        assert!(
            owned.conditions.is_empty(),
            "no condition until one is needed"
        );

        let done = Report {
            kind: ReportKind::Succeeded,
            attempt: 2,
        };
        owned.record_delivery(
            &done,
            Some("11"),
            Some(&TicketUpdate::Done("transition done".into())),
            true,
            at(2),
            Some(1),
        );
        assert_eq!(owned.feedback.reported, ["pickedUp/1", "succeeded/2"]);
        assert_eq!(owned.feedback.comment_id.as_deref(), Some("11"));
        assert_eq!(owned.feedback.reported_attempt, Some(2));
        assert_eq!(
            owned.feedback.ticket_updated.as_deref(),
            Some("succeeded/2")
        );
        assert_eq!(owned.conditions[0].type_, condition::TICKET_UPDATED);
        assert_eq!(owned.conditions[0].status, "True");
    }

    #[test]
    fn the_live_comment_is_recorded_once_and_replaced_when_it_changes() {
        let mut owned = empty();
        owned.feedback.reported = vec!["pickedUp/1".into()];
        owned.record_status_comment("10");
        owned.record_status_comment("10");
        assert_eq!(owned.feedback.reported, ["pickedUp/1", "statusComment/10"]);
        assert_eq!(owned.feedback.comment_id.as_deref(), Some("10"));
        owned.record_status_comment("12");
        assert_eq!(owned.feedback.reported, ["pickedUp/1", "statusComment/12"]);
        owned.mark_pending("JiraUnavailable", "HTTP 503", at(1), None);
        owned.clear_pending(at(2), None);
        assert!(!owned.is_pending());
        assert_eq!(owned.conditions[0].reason, "Delivered");
    }

    #[test]
    fn pending_then_delivered_and_an_impossible_transition() {
        let mut owned = empty();
        owned.mark_pending("RateLimited", "HTTP 429", at(5), None);
        assert!(owned.is_pending());
        owned.mark_pending("JiraUnavailable", "HTTP 503", at(9), None);
        assert_eq!(owned.conditions[0].last_transition_time, at(5));
        assert_eq!(owned.conditions[0].reason, "JiraUnavailable");
        let failed = Report {
            kind: ReportKind::Failed,
            attempt: 1,
        };
        owned.record_delivery(
            &failed,
            Some("12"),
            Some(&TicketUpdate::Impossible("no transition".into())),
            true,
            at(10),
            None,
        );
        assert!(!owned.is_pending());
        let pending = &owned.conditions[0];
        assert_eq!(
            (pending.status.as_str(), pending.reason.as_str()),
            ("False", "Delivered")
        );
        assert_eq!(pending.last_transition_time, at(10));
        let ticket = &owned.conditions[1];
        assert_eq!(
            (ticket.status.as_str(), ticket.reason.as_str()),
            ("False", "TransitionUnavailable")
        );
    }
}
