//! Agent Jobs whose AgentTask is gone: a task deleted with `propagationPolicy: Orphan`, or
//! deleted and re-created under the same name while its old Job lived on. Kubernetes'
//! garbage collector removes Jobs whose owner is gone only while they still name it; these
//! no longer do (or name an owner that was replaced), so the task controller deletes them
//! when a term starts.

use std::collections::HashSet;

use kube::ResourceExt;
use recac_runtime::kinds::CachedJob;

/// A Job that may be an orphan, with what its owner must be for it not to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suspect {
    pub namespace: String,
    pub job: String,
    pub job_uid: String,
    /// The task the Job belongs to (its controller owner, else its `recac.io/task` label).
    pub task: Option<String>,
    /// The uid its controller owner reference names, if any.
    pub owner_uid: Option<String>,
}

/// Jobs (all labelled `app=recac-agent` by the cache's selector) whose controller owner is
/// not a task in `live_task_uids`. Pure: the caller confirms each against the API.
pub fn suspects<J: std::borrow::Borrow<CachedJob>>(
    jobs: impl IntoIterator<Item = J>,
    live_task_uids: &HashSet<String>,
) -> Vec<Suspect> {
    jobs.into_iter()
        .filter_map(|job| {
            let job = job.borrow();
            let owner = job
                .owner_references()
                .iter()
                .find(|o| o.controller == Some(true) && o.kind == "AgentTask");
            if owner.is_some_and(|o| live_task_uids.contains(&o.uid)) {
                return None;
            }
            Some(Suspect {
                namespace: job.namespace().unwrap_or_default(),
                job: job.name_any(),
                job_uid: job.uid().unwrap_or_default(),
                task: owner
                    .map(|o| o.name.clone())
                    .or_else(|| job.task_label.clone()),
                owner_uid: owner.map(|o| o.uid.clone()),
            })
        })
        .collect()
}

/// Whether a suspect is an orphan, given the task of its name as the API has it now
/// (`None`: no such task).
pub fn is_orphan(suspect: &Suspect, task_uid_now: Option<&str>) -> bool {
    match (task_uid_now, &suspect.owner_uid) {
        (None, _) => true,
        (Some(now), Some(owner)) => now != owner,
        // The task exists but the Job names no owner: it cannot be that task's Job.
        (Some(_), None) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn job(name: &str, owner: Option<(&str, &str)>) -> CachedJob {
        CachedJob {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                uid: Some(format!("job-{name}")),
                owner_references: owner.map(|(task, uid)| {
                    vec![OwnerReference {
                        api_version: "recac.io/v1alpha1".into(),
                        kind: "AgentTask".into(),
                        name: task.into(),
                        uid: uid.into(),
                        controller: Some(true),
                        block_owner_deletion: Some(true),
                    }]
                }),
                ..Default::default()
            },
            spec: Default::default(),
            status: None,
            task_label: Some("t".into()),
        }
    }

    #[test]
    fn jobs_of_live_tasks_are_left_alone_and_the_rest_confirmed() {
        let live: HashSet<String> = ["uid-live".to_string()].into_iter().collect();
        let jobs = [
            job("live-a1", Some(("live", "uid-live"))),
            job("gone-a1", Some(("gone", "uid-gone"))),
            job("unowned-a1", None),
        ];
        let found = suspects(&jobs, &live);
        let names: Vec<&str> = found.iter().map(|s| s.job.as_str()).collect();
        assert_eq!(names, ["gone-a1", "unowned-a1"]);
        assert_eq!(found[0].task.as_deref(), Some("gone"));
        assert_eq!(found[1].task.as_deref(), Some("t"), "from the label");

        assert!(is_orphan(&found[0], None), "its task is gone");
        assert!(
            is_orphan(&found[0], Some("uid-new")),
            "its task was re-created"
        );
        assert!(
            !is_orphan(&found[0], Some("uid-gone")),
            "the cache lagged: the task is there"
        );
        assert!(is_orphan(&found[1], Some("uid-any")), "no owner at all");
    }
}
