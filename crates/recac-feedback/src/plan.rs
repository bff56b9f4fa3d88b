//! What to do to the ticket for an outcome, and what a transition attempt means (pure).

use recac_api::AgentTask;
use recac_jira::Transition;

use crate::config::{FeedbackConfig, TicketActions};
use crate::report::{self, ReportKind};

/// The configured transition and labels for an outcome (`None` when nothing is configured).
pub fn ticket_actions(config: &FeedbackConfig, kind: ReportKind) -> Option<&TicketActions> {
    let actions = match kind {
        ReportKind::Planned => &config.planned,
        ReportKind::Succeeded => &config.succeeded,
        ReportKind::Failed => &config.failed,
        ReportKind::Cancelled => &config.cancelled,
        ReportKind::PickedUp | ReportKind::Retrying => return None,
    };
    (!actions.is_empty()).then_some(actions)
}

/// The transition and labels `kind` brings to `task`'s ticket: [`ticket_actions`], but none
/// for the plan of a planning run that was approved or rejected before its plan was told
/// (the review `feedback.planned` starts is over; the ticket may already be on to the next
/// run).
pub fn actions_for<'a>(
    config: &'a FeedbackConfig,
    task: &AgentTask,
    kind: ReportKind,
) -> Option<&'a TicketActions> {
    if kind == ReportKind::Planned && report::plan_settled(task) {
        return None;
    }
    ticket_actions(config, kind)
}

/// What to do about a configured transition, given what the ticket offers now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransitionStep {
    /// Perform the transition with this id.
    Perform { id: String, name: String },
    /// The ticket is already in the wanted status (e.g. a previous try moved it).
    AlreadyThere,
    /// The workflow offers no such transition now: say so, do not retry.
    Missing { available: Vec<String> },
}

/// Resolves `wanted` (id, transition name or target status name) against `available`;
/// `current_status` is the ticket's status name, used when nothing matches.
pub fn transition_step(
    wanted: &str,
    available: &[Transition],
    current_status: Option<&str>,
) -> TransitionStep {
    match recac_jira::transition::resolve(wanted, available) {
        Ok(t) => TransitionStep::Perform {
            id: t.id.clone(),
            name: t.name.clone(),
        },
        Err(_) if current_status.is_some_and(|s| s.trim().eq_ignore_ascii_case(wanted.trim())) => {
            TransitionStep::AlreadyThere
        }
        Err(available) => TransitionStep::Missing { available },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use recac_api::{AgentTaskStatus, TaskPhase};
    use recac_jira::model::TransitionTarget;

    fn t(id: &str, name: &str, to: &str) -> Transition {
        Transition {
            id: id.into(),
            name: name.into(),
            to: Some(TransitionTarget {
                name: to.into(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn outcomes_map_to_their_actions() {
        let mut config = FeedbackConfig::default();
        assert!(ticket_actions(&config, ReportKind::Succeeded).is_none());
        config.failed.add_labels = vec!["recac-failed".into()];
        assert!(ticket_actions(&config, ReportKind::Failed).is_some());
        assert!(ticket_actions(&config, ReportKind::PickedUp).is_none());
    }

    fn planning_task(phase: TaskPhase, reason: Option<(&str, &str)>) -> AgentTask {
        let mut task: AgentTask = serde_saphyr::from_str(
            "apiVersion: recac.io/v1alpha1\nkind: AgentTask\nmetadata: {name: t, namespace: ns, uid: u1}\nspec:\n  prompt: p\n  ticket: {source: jira, key: OPS-1}\n  repository: {url: https://g.example/r.git}\n  approval: plan\n",
        )
        .expect("task");
        task.status = Some(AgentTaskStatus {
            phase: Some(phase),
            attempt: Some(1),
            conditions: reason
                .map(|(type_, reason)| Condition {
                    type_: type_.into(),
                    status: "True".into(),
                    reason: reason.into(),
                    message: String::new(),
                    last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
                    observed_generation: None,
                })
                .into_iter()
                .collect(),
            ..Default::default()
        });
        task
    }

    #[test]
    fn a_plan_brings_its_own_actions_while_it_waits_only() {
        let mut config = FeedbackConfig::default();
        let waiting = planning_task(TaskPhase::AwaitingApproval, None);
        assert!(actions_for(&config, &waiting, ReportKind::Planned).is_none());
        config.planned.transition = Some("Plan Review".into());
        config.succeeded.transition = Some("In Review".into());
        config.failed.add_labels = vec!["recac-failed".into()];
        let actions = actions_for(&config, &waiting, ReportKind::Planned).expect("actions");
        assert_eq!(actions.transition.as_deref(), Some("Plan Review"));
        for decided in [
            planning_task(
                TaskPhase::Succeeded,
                Some(("Succeeded", recac_api::reasons::PLAN_APPROVED)),
            ),
            planning_task(
                TaskPhase::Failed,
                Some(("Failed", recac_api::reasons::PLAN_REJECTED)),
            ),
        ] {
            assert!(actions_for(&config, &decided, ReportKind::Planned).is_none());
        }
        let failed = planning_task(TaskPhase::Failed, Some(("Failed", "NoPlan")));
        assert!(actions_for(&config, &failed, ReportKind::Failed).is_some());
    }

    #[test]
    fn transitions_by_id_name_or_status_and_missing_ones() {
        let list = [
            t("21", "Request Review", "In Review"),
            t("51", "Stop Progress", "To Do"),
        ];
        assert_eq!(
            transition_step("in review", &list, Some("In Progress")),
            TransitionStep::Perform {
                id: "21".into(),
                name: "Request Review".into()
            }
        );
        assert_eq!(
            transition_step("51", &list, None),
            TransitionStep::Perform {
                id: "51".into(),
                name: "Stop Progress".into()
            }
        );
        assert_eq!(
            transition_step("In Review", &[], Some("in review")),
            TransitionStep::AlreadyThere
        );
        match transition_step("Deployed", &list, Some("In Progress")) {
            TransitionStep::Missing { available } => assert_eq!(available.len(), 2),
            other => panic!("{other:?}"),
        }
    }
}
