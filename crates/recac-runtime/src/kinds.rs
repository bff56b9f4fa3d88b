//! The caches recac's controllers share, and what each keeps of its objects.

use std::sync::Arc;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::batch::v1::{Job, JobSpec, JobStatus};
use kube::api::Api;
use kube::runtime::watcher;
use kube::{Client, Resource};
use recac_api::AgentTask;

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

/// Agent Jobs (`app=recac-agent`), reduced to what decisions read: identity, owner,
/// labels, `spec.suspend` and the status counters and conditions. The pod template, the
/// largest part, is dropped.
pub fn agent_jobs(
    client: &Client,
    namespaces: &[String],
    hooks: Vec<Arc<dyn CacheHook<Job>>>,
) -> CacheSpec<Job> {
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

/// What [`agent_jobs`] keeps of a Job.
pub fn strip_job(job: &mut Job) {
    strip_metadata(&mut job.metadata);
    job.metadata.annotations = None;
    let suspend = job.spec.as_ref().and_then(|s| s.suspend);
    job.spec = Some(JobSpec {
        suspend,
        ..Default::default()
    });
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
