//! Dispatch and admission benchmark against a real kube-apiserver, with the real
//! `recac orchestrate` binary (release build) as the operator.
//!
//! Run with `make bench`. Two cases:
//! - **dispatch** (sizes from `BENCH_SIZES`, default "100 1000"): N AgentTasks, created before
//!   the operator starts, under a cap above N. Prints seconds from the operator's start until
//!   every task has its Job, the dispatch rate, and that rate
//!   as a fraction of a raw Job-create rate measured in the same run on the same apiserver
//!   (the same number of Jobs created directly, 32 in flight); API requests per dispatched
//!   task by verb and resource (from the operator's own `recac_api_requests_total`, watches
//!   and the start-up lists left out); the apiserver's CPU time per dispatched task and per
//!   raw Job create (their ratio bounds the dispatch rate when the apiserver is the limit);
//!   the operator's peak RSS.
//! - **admission** (`BENCH_QUEUE`, default 10000): that many tasks under a cap of 10, so
//!   all but 10 queue. Prints admission decisions per second (reconciles until every task
//!   shows `Queued` or has its Job), and the operator's RSS with every task cached.
//!
//! - **high availability** (`BENCH_HA`, default 10000): that many tasks and two replicas with
//!   leader election; once every Job exists, each replica's RSS, and the API requests of a
//!   quiet minute by verb and resource (writes other than the Lease's, and Lease requests).
//!
//! There is no kubelet: Jobs are created but never run, so they all stay live. Progress is
//! read from a watch of the Jobs (listing them again and again would load the apiserver
//! being measured). `BENCH_WORKERS` sets the operator's `taskController.workers` (default
//! 16); `BENCH_LOG` its `RUST_LOG` (default `warn`).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, ListParams, PostParams};
use recac_api::AgentTask;
use recac_testenv::{ControlPlane, ControlPlaneOptions, shared_control_plane};
use recac_tests::{KillOnDrop, WatchCounter, free_port, release_binary};

/// (peak, current) resident set of a process, in MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    (
        recac_tests::process_memory_mib(pid, "VmHWM"),
        recac_tests::process_memory_mib(pid, "VmRSS"),
    )
}

/// CPU seconds a process has used so far (user and system).
/// The resident set split into anonymous memory (the heap among it) and mapped files (the
/// binary's pages): "anonymous A MiB, files F MiB".
fn rss_split(pid: u32) -> String {
    let mib = |field| recac_tests::process_memory_mib(pid, field);
    format!(
        "anonymous {:.1} MiB, files {:.1} MiB",
        mib("RssAnon"),
        mib("RssFile") + mib("RssShmem")
    )
}

async fn plane() -> &'static ControlPlane {
    let plane = shared_control_plane(ControlPlaneOptions::default())
        .await
        .expect("control plane");
    plane
        .install_crds(&[
            <AgentTask as kube::CustomResourceExt>::crd(),
            <recac_api::AgentTaskSchedule as kube::CustomResourceExt>::crd(),
        ])
        .await
        .expect("crds");
    plane
}

struct Running {
    process: KillOnDrop,
    port: u16,
    _dir: tempfile::TempDir,
}

async fn start_operator(plane: &ControlPlane, ns: &str, cap: usize) -> Running {
    start_replica(plane, ns, cap, "{enabled: false}").await
}

async fn start_replica(plane: &ControlPlane, ns: &str, cap: usize, election: &str) -> Running {
    let port = free_port();
    let workers = std::env::var("BENCH_WORKERS").unwrap_or_else(|_| "16".into());
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "operator:\n  namespaces: [{ns}]\n  adminAddress: 127.0.0.1:{port}\n  leaderElection: {election}\ntaskController:\n  maxConcurrentTasks: {cap}\n  workers: {workers}\n"
        ),
    )
    .expect("config written");
    let binary = release_binary();
    let process = Command::new(&binary)
        .args(["orchestrate", "--config"])
        .arg(&config)
        .env("KUBECONFIG", plane.kubeconfig_path())
        .env(
            "RUST_LOG",
            std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e} (run `make bench`)", binary.display()));
    let process = KillOnDrop(process);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let probe = recac_tests::try_http_get(([127, 0, 0, 1], port).into(), "/readyz").await;
        if probe.is_some_and(|(code, _)| code == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "operator not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Running {
        process,
        port,
        _dir: dir,
    }
}

async fn create_tasks(api: &Api<AgentTask>, n: usize) {
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                let task = AgentTask::new(
                    &format!("bench-task-{i:05}"),
                    recac_tests::bench_task_spec(i),
                );
                api.create(&PostParams::default(), &task)
                    .await
                    .expect("task created");
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
}

async fn count_jobs(jobs: &Api<Job>) -> usize {
    jobs.list_metadata(&ListParams::default().labels("app=recac-agent"))
        .await
        .map(|l| l.items.len())
        .unwrap_or(0)
}

async fn dispatch(n: usize) {
    let plane = plane().await;
    let ns = plane
        .namespace(&format!("bench-{n}"))
        .await
        .expect("namespace");
    let client = plane.client().await.expect("client");
    let tasks: Api<AgentTask> = Api::namespaced(client.clone(), &ns);
    // The tasks exist before the operator starts, so the clock measures the operator alone
    // (its start, cache sync and every dispatch), not how fast this client creates tasks.
    let created_at = Instant::now();
    create_tasks(&tasks, n).await;
    let created = created_at.elapsed();

    let mut counter = WatchCounter::start::<Job>(client.clone(), &ns, "app=recac-agent");
    let apiserver = plane.component_pid("kube-apiserver").unwrap_or(0);
    let apiserver_cpu_before = recac_tests::process_cpu_seconds(apiserver);
    let start = Instant::now();
    let operator = start_operator(plane, &ns, n + 10).await;
    let ready_after = start.elapsed();
    if let Err(seen) = counter.wait_for(n, Duration::from_secs(900)).await {
        panic!("only {seen}/{n} Jobs after 900 s");
    }
    let all_dispatched = start.elapsed();
    // Let status writes and Events settle before reading the request count: a task's first
    // status waits up to 5 s for its pod, and no pod runs here.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (after, _) = recac_tests::scrape_metrics(operator.port).await;
    let apiserver_cpu = recac_tests::process_cpu_seconds(apiserver) - apiserver_cpu_before;
    let (peak, current) = rss_mib(operator.process.0.id());
    let split = rss_split(operator.process.0.id());
    drop(operator);
    let raw_jobs = n.min(2000);
    let (raw_rate, raw_cpu_per_job) = recac_tests::bare_job_creates(plane, raw_jobs).await;

    let mut per_task = Vec::new();
    let mut total = 0;
    for (series, value) in &after {
        // Watches, and the two lists that fill the caches at start, are not per task.
        if series.starts_with("watch ") || series.starts_with("list ") {
            continue;
        }
        let delta = *value;
        if delta > 0 {
            total += delta;
            per_task.push(format!("{series}: {:.2}", delta as f64 / n as f64));
        }
    }
    let rate = n as f64 / all_dispatched.as_secs_f64();
    println!("dispatch N={n}");
    println!(
        "  tasks created (before the operator starts) in {:.2} s",
        created.as_secs_f64()
    );
    println!(
        "  operator start to every Job      {:.2} s (ready after {:.2} s)",
        all_dispatched.as_secs_f64(),
        ready_after.as_secs_f64()
    );
    println!("  dispatch rate                    {rate:.1} tasks/s");
    println!(
        "  raw Job-create rate (same run)   {raw_rate:.1} Jobs/s; dispatch is {:.0}% of it",
        100.0 * rate / raw_rate
    );
    println!(
        "  apiserver CPU                    {:.2} ms per dispatched task (its start-up lists and watches included), {:.2} ms per raw Job create",
        apiserver_cpu * 1000.0 / n as f64,
        raw_cpu_per_job * 1000.0
    );
    println!(
        "  API requests per dispatched task {:.2} ({})",
        total as f64 / n as f64,
        per_task.join(", ")
    );
    println!(
        "  operator RSS                     peak {:.1} MiB, at the end {:.1} MiB ({split})",
        peak, current
    );
}

async fn admission(n: usize) {
    let plane = plane().await;
    let ns = plane
        .namespace(&format!("bench-queue-{n}"))
        .await
        .expect("namespace");
    let client = plane.client().await.expect("client");
    let operator = start_operator(plane, &ns, 10).await;
    let (_, reconciles_before) = recac_tests::scrape_metrics(operator.port).await;
    let tasks: Api<AgentTask> = Api::namespaced(client.clone(), &ns);
    let start = Instant::now();
    create_tasks(&tasks, n).await;
    let created = start.elapsed();
    // Every task decided: it either has its Job (status.attempt) or says it is queued.
    loop {
        let decided = tasks
            .list(&ListParams::default())
            .await
            .map(|l| {
                l.items
                    .iter()
                    .filter(|t| {
                        t.status.as_ref().is_some_and(|s| {
                            s.attempt.is_some()
                                || s.conditions
                                    .iter()
                                    .any(|c| c.type_ == "Queued" && c.status == "True")
                        })
                    })
                    .count()
            })
            .unwrap_or(0);
        if decided >= n {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(900),
            "only {decided}/{n} tasks decided after 900 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let all_decided = start.elapsed();
    let (_, reconciles_after) = recac_tests::scrape_metrics(operator.port).await;
    let (peak, current) = rss_mib(operator.process.0.id());
    let jobs: Api<Job> = Api::namespaced(client, &ns);
    let live_jobs = count_jobs(&jobs).await;
    let decisions = reconciles_after - reconciles_before;
    println!("admission N={n} (cap 10)");
    println!(
        "  tasks created in                 {:.2} s",
        created.as_secs_f64()
    );
    println!(
        "  every task decided after         {:.2} s ({live_jobs} Jobs, the rest Queued)",
        all_decided.as_secs_f64()
    );
    println!(
        "  admission decisions              {decisions} reconciles, {:.0} per second",
        decisions as f64 / all_decided.as_secs_f64()
    );
    println!(
        "  operator RSS                     peak {:.1} MiB, with every task cached {:.1} MiB",
        peak, current
    );
}

/// Two elected replicas with `n` tasks and their Jobs cached: RSS of each, and the API
/// requests an idle cluster costs.
async fn high_availability(n: usize) {
    let plane = plane().await;
    let ns = plane
        .namespace(&format!("bench-ha-{n}"))
        .await
        .expect("namespace");
    let client = plane.client().await.expect("client");
    let tasks: Api<AgentTask> = Api::namespaced(client.clone(), &ns);
    create_tasks(&tasks, n).await;
    let mut counter = WatchCounter::start::<Job>(client.clone(), &ns, "app=recac-agent");
    let election = format!("{{leaseNamespace: {ns}, leaseName: bench}}");
    let replicas = [
        start_replica(plane, &ns, n + 10, &election).await,
        start_replica(plane, &ns, n + 10, &election).await,
    ];
    if let Err(seen) = counter.wait_for(n, Duration::from_secs(900)).await {
        panic!("only {seen}/{n} Jobs after 900 s");
    }
    // Let the last status writes (a first status waits up to 5 s for a pod) and Events
    // settle, then measure a quiet minute.
    tokio::time::sleep(Duration::from_secs(8)).await;
    const IDLE: Duration = Duration::from_secs(60);
    let mut before = Vec::new();
    for r in &replicas {
        before.push(recac_tests::scrape_metrics(r.port).await.0);
    }
    tokio::time::sleep(IDLE).await;
    println!("high availability: 2 elected replicas, N={n} tasks and Jobs cached");
    for (i, r) in replicas.iter().enumerate() {
        let (after, _) = recac_tests::scrape_metrics(r.port).await;
        let (_, body) = recac_tests::http_get(([127, 0, 0, 1], r.port).into(), "/metrics").await;
        let leader = body
            .lines()
            .find(|l| l.starts_with("recac_leader "))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?")
            .to_string();
        let mut idle: Vec<String> = Vec::new();
        let (mut writes, mut lease, mut all) = (0u64, 0u64, 0u64);
        for (series, value) in &after {
            let delta = value - before[i].get(series).copied().unwrap_or(0);
            if delta == 0 {
                continue;
            }
            all += delta;
            if series.ends_with(" leases") {
                lease += delta;
            } else if ["create ", "update ", "patch ", "delete "]
                .iter()
                .any(|v| series.starts_with(v))
            {
                writes += delta;
            }
            idle.push(format!("{series}: {delta}"));
        }
        let (peak, current) = rss_mib(r.process.0.id());
        let split = rss_split(r.process.0.id());
        let secs = IDLE.as_secs_f64();
        println!(
            "  replica {} (recac_leader {leader}): RSS {:.1} MiB ({split}; peak {:.1} MiB); idle {:.0} s: {:.2} requests/s, {} writes other than the Lease, {:.2} Lease requests/s [{}]",
            i + 1,
            current,
            peak,
            secs,
            all as f64 / secs,
            writes,
            lease as f64 / secs,
            idle.join(", ")
        );
    }
}

#[tokio::main]
async fn main() {
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| "100 1000".into())
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    for n in sizes {
        dispatch(n).await;
    }
    let queue: usize = std::env::var("BENCH_QUEUE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    if queue > 0 {
        admission(queue).await;
    }
    let ha: usize = std::env::var("BENCH_HA")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    if ha > 0 {
        high_availability(ha).await;
    }
}
