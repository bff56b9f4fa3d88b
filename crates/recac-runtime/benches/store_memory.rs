//! Heap held by 10,000 AgentTasks and their 10,000 Jobs (as the caches keep them), in
//! recac's compressed [`Store`] and decoded (`Arc<K>` per object, as kube-runtime's
//! reflector store keeps them), counted by a counting allocator. Run with `make bench`;
//! `BENCH_OBJECTS` sets the count (default 10000).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};

use kube::runtime::reflector::ObjectRef;
use recac_api::AgentTask;
use recac_runtime::cache::reference_to;
use recac_runtime::kinds::{CachedJob, strip_job};
use recac_runtime::store::Store;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter is kept.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: ptr was allocated by System with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn task(i: usize) -> AgentTask {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "recac.io/v1alpha1",
        "kind": "AgentTask",
        "metadata": {
            "name": format!("proj-{i}"),
            "namespace": "agents",
            "uid": format!("6f1c2b9e-0000-4000-8000-{i:012}"),
            "resourceVersion": format!("{}", 100_000 + i),
            "generation": 1,
            "creationTimestamp": "2026-12-06T10:00:00Z",
            "labels": {"recac.io/source": "jira", "recac.io/ticket": format!("PROJ-{i}")},
            "annotations": {"recac.io/claim": "claimed", "recac.io/ticket-url": format!("https://example.atlassian.net/browse/PROJ-{i}")},
        },
        "spec": {
            "prompt": format!("Fix the flaky retry in the billing exporter (ticket PROJ-{i}): the exporter retries forever when the upstream answers 503."),
            "ticket": {"source": "jira", "key": format!("PROJ-{i}"), "url": format!("https://example.atlassian.net/browse/PROJ-{i}")},
            "repository": {"url": "https://github.com/example/billing.git", "baseBranch": "main", "branch": format!("agent/proj-{i}")},
            "maxRetries": 2,
            "timeoutSeconds": 3600,
            "suspend": false,
        },
        "status": {
            "phase": "Running",
            "attempt": 1,
            "retries": 0,
            "jobName": format!("proj-{i}-a1"),
            "branch": format!("agent/proj-{i}"),
            "message": format!("Job proj-{i}-a1 is running"),
            "startTime": "2026-12-06T10:00:01Z",
            "conditions": [
                {"type": "Dispatched", "status": "True", "reason": "JobCreated", "message": format!("created Job proj-{i}-a1 for attempt 1"), "lastTransitionTime": "2026-12-06T10:00:01Z", "observedGeneration": 1},
                {"type": "Running", "status": "True", "reason": "PodRunning", "message": "the agent pod is running", "lastTransitionTime": "2026-12-06T10:00:05Z", "observedGeneration": 1},
            ],
        },
    }))
    .expect("an AgentTask")
}

fn job(i: usize) -> CachedJob {
    let mut job: CachedJob = serde_json::from_value(serde_json::json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": format!("proj-{i}-a1"),
            "namespace": "agents",
            "uid": format!("0b9d7a51-0000-4000-8000-{i:012}"),
            "resourceVersion": format!("{}", 200_000 + i),
            "creationTimestamp": "2026-12-06T10:00:01Z",
            "labels": {"app": "recac-agent", "recac.io/task": format!("proj-{i}"), "recac.io/attempt": "1"},
            "ownerReferences": [{"apiVersion": "recac.io/v1alpha1", "kind": "AgentTask", "name": format!("proj-{i}"), "uid": format!("6f1c2b9e-0000-4000-8000-{i:012}"), "controller": true, "blockOwnerDeletion": true}],
        },
        "spec": {"suspend": false},
        "status": {"active": 1, "ready": 1, "startTime": "2026-12-06T10:00:02Z"},
    }))
    .expect("a Job");
    strip_job(&mut job);
    job
}

fn mib(bytes: isize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() {
    let n: usize = std::env::var("BENCH_OBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);

    let before = live();
    let tasks: Store<AgentTask> = Store::default();
    let jobs: Store<CachedJob> = Store::default();
    for i in 0..n {
        tasks.upsert(&task(i));
        jobs.upsert(&job(i));
    }
    let compressed = live() - before;

    let before = live();
    let mut decoded_tasks: HashMap<ObjectRef<AgentTask>, Arc<AgentTask>> = HashMap::new();
    let mut decoded_jobs: HashMap<ObjectRef<CachedJob>, Arc<CachedJob>> = HashMap::new();
    for i in 0..n {
        let t = task(i);
        decoded_tasks.insert(reference_to(&t), Arc::new(t));
        let j = job(i);
        decoded_jobs.insert(reference_to(&j), Arc::new(j));
    }
    let decoded = live() - before;

    let started = std::time::Instant::now();
    let mut read = 0;
    for reference in tasks.refs() {
        read += usize::from(tasks.get(&reference).is_some());
    }
    let per_read = started.elapsed() / u32::try_from(read.max(1)).unwrap_or(u32::MAX);

    println!("store memory: {n} AgentTasks and {n} Jobs (as cached)");
    println!(
        "  compressed store (recac)        {:.1} MiB ({} bytes per task and Job)",
        mib(compressed),
        compressed / n as isize
    );
    println!(
        "  decoded, one Arc per object     {:.1} MiB ({} bytes per task and Job)",
        mib(decoded),
        decoded / n as isize
    );
    println!("  a read from the compressed store decodes in {per_read:?} per task");
    drop((decoded_tasks, decoded_jobs));
}
