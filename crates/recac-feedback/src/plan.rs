//! What to do to the ticket for an outcome, and what a transition attempt means (pure).

use recac_jira::Transition;

use crate::config::{FeedbackConfig, TicketActions};
use crate::report::ReportKind;

/// The configured transition and labels for an outcome (`None` when nothing is configured).
pub fn ticket_actions(config: &FeedbackConfig, kind: ReportKind) -> Option<&TicketActions> {
    let actions = match kind {
        ReportKind::Succeeded => &config.succeeded,
        ReportKind::Failed => &config.failed,
        ReportKind::Cancelled => &config.cancelled,
        ReportKind::PickedUp | ReportKind::Retrying => return None,
    };
    (!actions.is_empty()).then_some(actions)
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
