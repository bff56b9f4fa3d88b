//! The caches recac's controllers share, and what each keeps of its objects.

use std::borrow::Cow;
use std::sync::Arc;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobSpec, JobStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ObjectMeta};
use kube::runtime::watcher;
use kube::{Client, Resource};
use recac_api::{AgentTask, TaskPhase};
use serde::{Deserialize, Serialize};

use crate::cache::{CacheHook, CacheSpec, strip_metadata};

/// The label every agent Job carries (`app=recac-agent`).
pub const AGENT_JOB_SELECTOR: &str = "app=recac-agent";

/// One Api per watched namespace, or one cluster-wide Api when none are named.
pub fn scoped_apis<K>(client: &Client, namespaces: &[String]) -> Vec<Api<K>>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    if namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect()
    }
}

/// How every cache starts: a list in pages of [`LIST_PAGE_SIZE`] objects, so a cache of ten
/// thousand objects never holds a whole list response in memory at once, then a watch.
///
/// Not a streaming list (`sendInitialEvents`): the bookmark that ends one came up to a
/// second after the last object in our measurements (the apiserver sends bookmarks on its
/// own schedule), so a cache took up to a second longer to sync, and every term of every
/// controller started that much later. A paged list syncs in milliseconds.
pub fn list_then_watch() -> watcher::Config {
    watcher::Config::default().page_size(LIST_PAGE_SIZE)
}

/// Objects per page of a cache's list.
pub const LIST_PAGE_SIZE: u32 = 500;

/// AgentTasks, whole but for managed fields and kubectl's last-applied copy (filled as
/// [`list_then_watch`] says).
pub fn agent_tasks(
    client: &Client,
    namespaces: &[String],
    hooks: Vec<Arc<dyn CacheHook<AgentTask>>>,
) -> CacheSpec<AgentTask> {
    CacheSpec {
        name: "agenttasks".into(),
        apis: scoped_apis(client, namespaces),
        namespaces: namespaces.to_vec(),
        watch: list_then_watch(),
        strip: strip_task,
        hooks,
    }
}

/// What sweeps over every cached task read: its metadata, phase and condition states.
/// Read from the task cache with [`crate::store::Store::scan`], it skips decoding the spec
/// and the rest of the status.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct TaskSummary {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub status: Option<TaskSummaryStatus>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct TaskSummaryStatus {
    #[serde(default)]
    pub phase: Option<TaskPhase>,
    #[serde(default)]
    pub conditions: Vec<ConditionSummary>,
}

/// A condition's type and state, nothing else.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ConditionSummary {
    #[serde(rename = "type", default)]
    pub type_: String,
    #[serde(default)]
    pub status: String,
}

impl TaskSummary {
    pub fn phase(&self) -> Option<TaskPhase> {
        self.status.as_ref().and_then(|s| s.phase)
    }

    /// Whether the condition `type_` is True.
    pub fn condition_true(&self, type_: &str) -> bool {
        self.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == type_ && c.status == "True")
        })
    }
}

/// Whether `task`'s status has the condition `type_` True.
pub fn task_condition_true(task: &AgentTask, type_: &str) -> bool {
    task.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == type_ && c.status == "True")
    })
}

/// The owner reference of `meta` that controls it, when that owner is of kind `O`.
pub fn controller_of<O: Resource<DynamicType = ()>>(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references.as_deref()?.iter().find(|o| {
        o.controller == Some(true) && o.kind == O::kind(&()) && o.api_version == O::api_version(&())
    })
}

/// The label naming an agent Job's task (`recac.io/task`).
pub const TASK_LABEL: &str = "recac.io/task";

/// An agent Job as the caches keep it: identity, owner, the `recac.io/task` label,
/// `spec.suspend` and the status counters and true conditions. Deserializing into this type
/// never allocates the pod template or the fields of `JobStatus` nobody reads, and the
/// labels are reduced to the one that is read: with ten thousand Jobs, every byte kept per
/// Job is ten kilobytes.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct CachedJob {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: CachedJobSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<CachedJobStatus>,
    /// The value of the Job's `recac.io/task` label (its labels are not kept).
    #[serde(default, rename = "taskLabel", skip_serializing_if = "Option::is_none")]
    pub task_label: Option<String>,
}

/// The part of a Job's spec decisions read.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct CachedJobSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,
}

/// The part of a Job's status decisions read: the pod counters and the conditions.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedJobStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succeeded: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<JobCondition>>,
}

impl Resource for CachedJob {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Job::kind(&())
    }

    fn group(_: &()) -> Cow<'_, str> {
        Job::group(&())
    }

    fn version(_: &()) -> Cow<'_, str> {
        Job::version(&())
    }

    fn plural(_: &()) -> Cow<'_, str> {
        Job::plural(&())
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl CachedJob {
    /// The Job with what the cache keeps (for code that reads `Job`).
    pub fn to_job(&self) -> Job {
        let mut metadata = self.metadata.clone();
        if let Some(task) = &self.task_label {
            metadata.labels = Some([(TASK_LABEL.to_string(), task.clone())].into());
        }
        Job {
            metadata,
            spec: Some(JobSpec {
                suspend: self.spec.suspend,
                ..Default::default()
            }),
            status: self.status.as_ref().map(|status| JobStatus {
                active: status.active,
                ready: status.ready,
                succeeded: status.succeeded,
                failed: status.failed,
                conditions: status.conditions.clone(),
                ..Default::default()
            }),
        }
    }
}

/// Agent Jobs (`app=recac-agent`), as [`CachedJob`]s.
pub fn agent_jobs(
    client: &Client,
    namespaces: &[String],
    hooks: Vec<Arc<dyn CacheHook<CachedJob>>>,
) -> CacheSpec<CachedJob> {
    CacheSpec {
        name: "jobs".into(),
        apis: scoped_apis(client, namespaces),
        namespaces: namespaces.to_vec(),
        watch: list_then_watch().labels(AGENT_JOB_SELECTOR),
        strip: strip_job,
        hooks,
    }
}

fn strip_task(task: &mut AgentTask) {
    strip_metadata(&mut task.metadata);
}

/// What [`agent_jobs`] keeps of a Job's metadata and status: no annotations, no resource
/// version (the watch keeps its own), of the labels only `recac.io/task`, of the conditions
/// only the true ones.
pub fn strip_job(job: &mut CachedJob) {
    strip_metadata(&mut job.metadata);
    job.metadata.annotations = None;
    job.metadata.resource_version = None;
    if let Some(mut labels) = job.metadata.labels.take() {
        job.task_label = labels.remove(TASK_LABEL);
    }
    if let Some(status) = &mut job.status
        && let Some(conditions) = &mut status.conditions
    {
        conditions.retain(|c| c.status == "True");
        for condition in conditions.iter_mut() {
            condition.last_probe_time = None;
        }
        conditions.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_job_keeps_what_decisions_read_from_the_api_json() {
        let json = serde_json::json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": "t-a1",
                "namespace": "ns",
                "uid": "u1",
                "resourceVersion": "42",
                "labels": {"app": "recac-agent", "recac.io/task": "t", "recac.io/attempt": "1"},
                "ownerReferences": [{"apiVersion": "recac.io/v1alpha1", "kind": "AgentTask", "name": "t", "uid": "t1", "controller": true}],
                "managedFields": [{"manager": "x"}]
            },
            "spec": {"suspend": true, "backoffLimit": 0, "template": {"spec": {"containers": [{"name": "agent", "image": "i"}]}}},
            "status": {"ready": 1, "conditions": [{"type": "Complete", "status": "True"}, {"type": "Suspended", "status": "False"}]}
        });
        let mut job: CachedJob = serde_json::from_value(json).expect("a Job reads as a CachedJob");
        strip_job(&mut job);
        assert!(job.metadata.managed_fields.is_none());
        assert_eq!(job.spec.suspend, Some(true));
        let full = job.to_job();
        assert_eq!(full.metadata.owner_references.map(|o| o.len()), Some(1));
        let conditions = full.status.and_then(|s| s.conditions).unwrap_or_default();
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].type_, "Complete");
        assert_eq!(
            full.metadata
                .labels
                .map(|l| l.into_iter().collect::<Vec<_>>()),
            Some(vec![(TASK_LABEL.to_string(), "t".to_string())])
        );
        assert_eq!(job.metadata.labels, None);
        let kept: CachedJob =
            serde_json::from_slice(&serde_json::to_vec(&job).expect("encodes")).expect("decodes");
        assert_eq!(
            kept.task_label.as_deref(),
            Some("t"),
            "the cache's encoding keeps the label"
        );
        assert_eq!(job.metadata.resource_version, None);
        assert!(std::mem::size_of::<CachedJob>() * 3 < std::mem::size_of::<Job>());
    }
}
