//! The caches recac's controllers share, and what each keeps of its objects.

use std::borrow::Cow;
use std::sync::Arc;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::batch::v1::{Job, JobSpec, JobStatus};
use kube::api::{Api, ObjectMeta};
use kube::runtime::watcher;
use kube::{Client, Resource};
use recac_api::AgentTask;
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

/// AgentTasks, whole but for managed fields and kubectl's last-applied copy.
///
/// Every cache starts with a streaming list (the objects arrive one by one as watch events),
/// so a cache of ten thousand objects never holds a whole list response in memory at once.
pub fn agent_tasks(
    client: &Client,
    namespaces: &[String],
    hooks: Vec<Arc<dyn CacheHook<AgentTask>>>,
) -> CacheSpec<AgentTask> {
    CacheSpec {
        name: "agenttasks".into(),
        apis: scoped_apis(client, namespaces),
        namespaces: namespaces.to_vec(),
        watch: watcher::Config::default().streaming_lists(),
        strip: strip_task,
        hooks,
    }
}

/// An agent Job as the caches keep it: identity, owner, labels, `spec.suspend` and the
/// status counters and conditions. Deserializing into this type never allocates the pod
/// template, and its inline size is a fraction of `Job`'s (whose `JobSpec` holds a whole
/// `PodSpec`), which is what an operator with ten thousand Jobs pays per Job.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct CachedJob {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: CachedJobSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<JobStatus>,
}

/// The part of a Job's spec decisions read.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct CachedJobSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,
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
        Job {
            metadata: self.metadata.clone(),
            spec: Some(JobSpec {
                suspend: self.spec.suspend,
                ..Default::default()
            }),
            status: self.status.clone(),
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
        watch: watcher::Config::default()
            .labels(AGENT_JOB_SELECTOR)
            .streaming_lists(),
        strip: strip_job,
        hooks,
    }
}

fn strip_task(task: &mut AgentTask) {
    strip_metadata(&mut task.metadata);
}

/// What [`agent_jobs`] keeps of a Job's metadata and status.
pub fn strip_job(job: &mut CachedJob) {
    strip_metadata(&mut job.metadata);
    job.metadata.annotations = None;
    if let Some(status) = job.status.take() {
        job.status = Some(JobStatus {
            active: status.active,
            ready: status.ready,
            succeeded: status.succeeded,
            failed: status.failed,
            conditions: status.conditions.map(|conditions| {
                conditions
                    .into_iter()
                    .filter(|c| c.status == "True")
                    .map(|mut c| {
                        c.last_probe_time = None;
                        c
                    })
                    .collect()
            }),
            ..Default::default()
        });
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
                "labels": {"app": "recac-agent"},
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
        assert!(std::mem::size_of::<CachedJob>() * 3 < std::mem::size_of::<Job>());
    }
}
