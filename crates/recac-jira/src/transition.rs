//! Picking a transition by id, transition name or target status name.

use crate::model::Transition;

/// Finds the transition `wanted` names, in this order: exact id, transition
/// name (case-insensitive), target status name (case-insensitive). Surrounding
/// whitespace is ignored. `Err` carries the descriptions of what is available.
pub fn resolve<'a>(
    wanted: &str,
    available: &'a [Transition],
) -> Result<&'a Transition, Vec<String>> {
    let w = wanted.trim();
    let found = available
        .iter()
        .find(|t| t.id == w)
        .or_else(|| {
            available
                .iter()
                .find(|t| t.name.trim().eq_ignore_ascii_case(w) || unicode_eq(&t.name, w))
        })
        .or_else(|| {
            available.iter().find(|t| {
                t.to.as_ref().is_some_and(|to| {
                    to.name.trim().eq_ignore_ascii_case(w) || unicode_eq(&to.name, w)
                })
            })
        });
    found.ok_or_else(|| available.iter().map(Transition::describe).collect())
}

fn unicode_eq(a: &str, b: &str) -> bool {
    a.trim().to_lowercase() == b.trim().to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TransitionTarget;

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
    fn by_id_name_and_status() {
        let list = vec![
            t("11", "Start work", "In Progress"),
            t("21", "Resolve", "Done"),
            t("31", "Über", "Größe"),
        ];
        assert_eq!(resolve("21", &list).unwrap().id, "21");
        assert_eq!(resolve("start WORK", &list).unwrap().id, "11");
        assert_eq!(resolve(" done ", &list).unwrap().id, "21");
        assert_eq!(resolve("in progress", &list).unwrap().id, "11");
        assert_eq!(resolve("über", &list).unwrap().id, "31");
        assert_eq!(resolve("GRÖSSE", &list).map(|t| t.id.as_str()).ok(), None);
        let err = resolve("Closed", &list).unwrap_err();
        assert_eq!(err.len(), 3);
        assert!(
            err[0].contains("Start work") && err[0].contains("In Progress"),
            "{err:?}"
        );
    }

    #[test]
    fn name_beats_status() {
        // A transition named like another one's target status wins by name.
        let list = vec![t("1", "Reopen", "Done"), t("2", "Done", "Closed")];
        assert_eq!(resolve("done", &list).unwrap().id, "2");
        assert!(resolve("x", &[]).unwrap_err().is_empty());
    }
}
