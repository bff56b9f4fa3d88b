//! Deterministic names: the same task and attempt always give the same Job name,
//! so a create that finds the Job already there means "dispatched before: adopt it".

use sha2::{Digest, Sha256};

/// Who a task is, computed once per reconcile: its key, uid and the names derived from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskIdentity {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl TaskIdentity {
    pub fn of(task: &recac_api::AgentTask) -> Self {
        use kube::ResourceExt;
        Self {
            namespace: task.namespace().unwrap_or_default(),
            name: task.name_any(),
            uid: task.uid().unwrap_or_default(),
        }
    }

    /// `namespace/name`, for logs and errors.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The Job of `attempt`.
    pub fn job_name(&self, attempt: i32) -> String {
        job_name(&self.name, attempt)
    }
}

/// Kubernetes label values and the names Jobs put into pod labels are at most 63 characters.
const MAX_LABEL_LEN: usize = 63;

fn short_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// Shortens `name` to at most `max` characters, keeping it unique with a hash of the
/// whole name when it has to be cut.
fn fit(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_string();
    }
    let hash = short_hash(name);
    let keep = max.saturating_sub(hash.len() + 1);
    let prefix: String = name.chars().take(keep).collect();
    format!("{}-{hash}", prefix.trim_end_matches(['-', '.']))
}

/// The Job name of one attempt of one task: `<task>-a<attempt>`, shortened with a hash
/// when the task's name is long.
pub fn job_name(task: &str, attempt: i32) -> String {
    let suffix = format!("-a{attempt}");
    format!("{}{suffix}", fit(task, MAX_LABEL_LEN - suffix.len()))
}

/// Shortens `name` to at most `max` characters, unique by a hash when cut.
pub fn fit_label(name: &str, max: usize) -> String {
    fit(name, max)
}

/// The name of the ConfigMap that carries a task's long prompt.
pub fn prompt_config_map_name(task: &str) -> String {
    format!("{}-prompt", fit(task, 253 - "-prompt".len()))
}

/// The task name as a label value.
pub fn task_label(task: &str) -> String {
    fit(task, MAX_LABEL_LEN)
}

/// The feature branch for a task: the spec's override, else `recac/<ticket key or task name>`,
/// made into a valid git ref name.
pub fn branch_name(override_branch: Option<&str>, ticket_key: Option<&str>, task: &str) -> String {
    match override_branch.map(str::trim).filter(|b| !b.is_empty()) {
        Some(branch) => sanitize_ref(branch),
        None => sanitize_ref(&format!("recac/{}", ticket_key.unwrap_or(task))),
    }
}

/// Makes `raw` a valid git branch name (the rule the agent applies too).
pub fn sanitize_ref(raw: &str) -> String {
    recac_api::git_ref::sanitize_branch(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_are_deterministic_and_short() {
        assert_eq!(job_name("fix-login", 1), "fix-login-a1");
        let long = "x".repeat(120);
        let a = job_name(&long, 3);
        assert!(a.len() <= 63, "{a}");
        assert!(a.ends_with("-a3"));
        assert_eq!(a, job_name(&long, 3));
        assert_ne!(
            job_name(&format!("{long}1"), 3),
            job_name(&format!("{long}2"), 3)
        );
        assert!(task_label(&long).len() <= 63);
    }

    #[test]
    fn branch_defaults_to_ticket_then_task() {
        assert_eq!(branch_name(None, Some("PROJ-12"), "t"), "recac/PROJ-12");
        assert_eq!(branch_name(None, None, "my-task"), "recac/my-task");
        assert_eq!(
            branch_name(Some("feature/x"), Some("PROJ-1"), "t"),
            "feature/x"
        );
        assert_eq!(branch_name(Some("  "), None, "t"), "recac/t");
    }

    #[test]
    fn hostile_branch_text_becomes_a_safe_ref() {
        for raw in [
            "feat/$(rm -rf ~)",
            "a..b",
            "-x/.hidden/y.lock",
            "a b\tc\nd",
            "../../etc/passwd",
            "x@{1}",
            "",
            "///",
        ] {
            let got = sanitize_ref(raw);
            assert!(
                got.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._/-".contains(c)),
                "{raw:?} -> {got:?}"
            );
            assert!(!got.contains(".."), "{raw:?} -> {got:?}");
            assert!(!got.starts_with('-'), "{raw:?} -> {got:?}");
            assert!(!got.is_empty());
        }
        assert_eq!(sanitize_ref("feat/$(rm -rf ~)"), "feat/rm-rf");
        assert_eq!(sanitize_ref("a b\tc\nd"), "a-b-c-d");
        assert_eq!(sanitize_ref("///"), "recac/work");
        assert_eq!(sanitize_ref("a..b"), "a.b");
        assert_eq!(sanitize_ref("-x/.hidden/y.lock"), "x/hidden/y");
        assert_eq!(sanitize_ref("../../etc/passwd"), "etc/passwd");
    }
}
