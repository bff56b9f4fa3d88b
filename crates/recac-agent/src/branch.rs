//! Branch naming, sanitising and the continue-or-create decision (pure).

pub use recac_api::git_ref::sanitize_branch as sanitize;

/// The branch to work on when none was given: `recac/<ticket>` or `recac/<first words>`.
pub fn default_branch_name(ticket: Option<&str>, prompt: &str) -> String {
    if let Some(ticket) = ticket.filter(|t| !t.trim().is_empty()) {
        return sanitize(&format!("recac/{}", ticket.trim()));
    }
    let slug: Vec<String> = prompt
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .take(6)
        .map(|w| w.to_ascii_lowercase())
        .collect();
    sanitize(&format!("recac/{}", slug.join("-")))
}

/// Where the work starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BranchPlan {
    /// The branch is on the remote: check it out and continue from it.
    Continue { branch: String },
    /// The branch is new: create it from the base branch.
    Create { branch: String, base: String },
}

/// Continue the remote branch when it exists (a retried attempt continues the last one's
/// work), otherwise create it from `base`.
pub fn plan(branch: &str, base: &str, exists_on_remote: bool) -> BranchPlan {
    if exists_on_remote {
        BranchPlan::Continue {
            branch: branch.to_string(),
        }
    } else {
        BranchPlan::Create {
            branch: branch.to_string(),
            base: base.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitizes() {
        assert_eq!(sanitize("recac/PROJ-12"), "recac/PROJ-12");
        assert_eq!(sanitize("feat/add thing!"), "feat/add-thing");
        assert_eq!(sanitize("a..b//.c.lock/"), "a.b/c");
        assert_eq!(sanitize("-x; rm -rf /"), "x-rm-rf");
        assert_eq!(sanitize("$(evil)`x`"), "evil-x");
        assert_eq!(sanitize(""), "recac/work");
        assert_eq!(sanitize("..."), "recac/work");
        assert!(sanitize(&"x".repeat(300)).len() <= 100);
    }

    #[test]
    fn default_names() {
        assert_eq!(
            default_branch_name(Some("PROJ-7"), "ignored"),
            "recac/PROJ-7"
        );
        assert_eq!(
            default_branch_name(None, "Add a --verbose flag to the CLI, please now"),
            "recac/add-a-verbose-flag-to-the"
        );
        assert_eq!(default_branch_name(None, "!!!"), "recac");
    }

    #[test]
    fn plans() {
        assert_eq!(
            plan("b", "main", true),
            BranchPlan::Continue { branch: "b".into() }
        );
        assert_eq!(
            plan("b", "main", false),
            BranchPlan::Create {
                branch: "b".into(),
                base: "main".into()
            }
        );
    }

    proptest::proptest! {
        #[test]
        fn sanitized_names_are_valid(raw in ".{0,80}") {
            let name = sanitize(&raw);
            proptest::prop_assert!(!name.is_empty());
            proptest::prop_assert!(!name.starts_with('-') && !name.starts_with('/') && !name.ends_with('/'));
            proptest::prop_assert!(!name.contains("..") && !name.contains("//") && !name.ends_with(".lock"));
            proptest::prop_assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || "._/-".contains(c)));
            proptest::prop_assert!(name.split('/').all(|p| !p.starts_with('.')));
        }
    }
}
