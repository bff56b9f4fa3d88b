//! Jira source benchmark: the real `recac orchestrate` binary (release build) against a real
//! kube-apiserver and the Jira simulator (in this process). Run with `make bench` or
//! `cargo bench -p recac-tests --bench source`. Prints figures; asserts only correctness.
//!
//! - **burst** (`BENCH_SOURCE_BURST`, default 1000): that many labelled tickets → that many
//!   Jobs, with the feedback controller on (its picked-up comment is part of a ticket's way
//!   to its Job). Seconds until the last Job exists and from the last claim (the last Jira
//!   transition) to it; the apiserver's writes per ticket by verb and resource (from the
//!   apiserver's own `apiserver_request_total`, every client) until the last Job and until
//!   8 s after it (each task's first status waits up to 5 s for a pod, and none runs here)
//!   and its CPU per ticket over the same two spans, beside a bare Job create measured in
//!   the same run (the same number of Jobs created directly, 32 in flight) and each write
//!   of a ticket's way measured alone (create a task, patch its metadata, write its status
//!   by apply, merge patch or replace); Jira requests (reads, writes per ticket); the
//!   operator's peak RSS.
//! - **large** (`BENCH_SOURCE_LARGE`, default 5000): every ticket becomes a task (no page or
//!   result cap); the comment reads that follow (each claim changed its ticket); then, at
//!   rest with every ticket worked on, the Jira requests per poll interval.
//! - **latency** (`BENCH_SOURCE_SAMPLES`, default 30): from a ticket becoming ready to its Job
//!   existing, p50/p99, in webhook mode and in poll mode (interval 2 s).
//!
//! - **stranded** (`BENCH_SOURCE_STRANDED`, default 1000): that many tickets claimed by one
//!   operator whose tasks are then deleted; a second operator starts with one new ready
//!   ticket. Seconds until the new ticket's task exists (the stranded-claims check must not
//!   hold it up) and until every stranded claim is handed back.
//!
//! - **commands** (`BENCH_SOURCE_COMMANDS`, default 30): from a `/recac` follow-up comment
//!   on a ticket whose run finished to the follow-up's Job, p50/p99, by webhook (the
//!   simulator delivers `comment_created`) and by poll (interval 2 s).
//!
//! A size of 0 skips that case. `BENCH_LOG` sets the operator's `RUST_LOG` (default `warn`).
//!
//! In the other cases the feedback controller is switched off, so that the Jira figures are
//! the source's alone. There is no kubelet: Jobs are created but never run.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, ListParams};
use recac_api::AgentTask;
use recac_jira_sim::{IssueSeed, JiraSim, Seed};
use recac_testenv::{ControlPlane, ControlPlaneOptions, shared_control_plane};
use recac_tests::{KillOnDrop, WatchCounter, free_port, release_binary};

const REPO: &str = "https://git.example.com/org/repo.git";
const SECRET: &str = "bench-webhook-secret";
/// How long after the last Job the burst's costs are still counted: a task's first status
/// waits up to 5 s for its pod (none runs here), then it is written.
const SETTLE: Duration = Duration::from_secs(8);

struct Operator {
    process: KillOnDrop,
    port: u16,
    _dir: tempfile::TempDir,
}

async fn start_operator(
    plane: &ControlPlane,
    ns: &str,
    sim: &JiraSim,
    poll: u64,
    cap: usize,
    feedback: bool,
) -> Operator {
    let port = free_port();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "operator:\n  namespaces: [{ns}]\n  adminAddress: 127.0.0.1:{port}\n  leaderElection: {{enabled: false}}\n\
             taskController:\n  maxConcurrentTasks: {cap}\n  workers: 16\n\
             agent:\n  gitCredentialHosts: [git.example.com]\n\
             jira:\n  url: {url}\n  auth: {{type: basic, email: {email}, tokenEnv: BENCH_JIRA_TOKEN}}\n\
             sources:\n  - name: ops\n    project: OPS\n    label: recac-agent\n    namespace: {ns}\n    pollIntervalSeconds: {poll}\n    maxTicketsPerPoll: 100000\n    maxInFlight: 100000\n\
             jiraWebhook:\n  secretEnv: BENCH_WEBHOOK_SECRET\n\
             feedback:\n  enabled: {feedback}\n",
            url = sim.url(),
            email = recac_jira_sim::BOT_EMAIL,
        ),
    )
    .expect("config written");
    let binary = release_binary();
    let process = Command::new(&binary)
        .args(["orchestrate", "--config"])
        .arg(&config)
        .env("KUBECONFIG", plane.kubeconfig_path())
        .env("BENCH_JIRA_TOKEN", recac_jira_sim::BOT_TOKEN)
        .env("BENCH_WEBHOOK_SECRET", SECRET)
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
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Operator {
        process,
        port,
        _dir: dir,
    }
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

fn add_tickets(sim: &JiraSim, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            sim.add_issue(IssueSeed {
                project: "OPS".into(),
                summary: format!("bench ticket {i}"),
                description: Some(format!("Repo: {REPO}")),
                labels: vec!["recac-agent".into()],
                ..Default::default()
            })
        })
        .collect()
}

fn job_name(key: &str) -> String {
    format!("{}-a1", recac_source::task::task_name(key, 1))
}

/// Tasks whose status records their claim (the `Claimed` condition).
async fn claimed_tasks(api: &Api<AgentTask>) -> usize {
    api.list(&ListParams::default().labels("recac.io/source=ops"))
        .await
        .map(|l| {
            l.items
                .iter()
                .filter(|t| {
                    t.status.as_ref().is_some_and(|s| {
                        s.conditions
                            .iter()
                            .any(|c| c.type_ == "Claimed" && c.status == "True")
                    })
                })
                .count()
        })
        .unwrap_or(0)
}

fn is_write(c: &recac_jira_sim::CallRecord) -> bool {
    !(c.method == "GET" || (c.method == "POST" && c.path.contains("/search")))
}

async fn burst(plane: &ControlPlane, n: usize) {
    let ns = plane
        .namespace(&format!("bench-src-{n}"))
        .await
        .expect("namespace");
    let client = plane.client().await.expect("client");
    let sim = JiraSim::start(Seed::default()).await.expect("sim");
    sim.set_write_limits(None);
    add_tickets(&sim, n);
    let mut jobs = WatchCounter::start::<Job>(client.clone(), &ns, "app=recac-agent");
    let apiserver = plane.component_pid("kube-apiserver").unwrap_or(0);
    let writes_before = recac_tests::apiserver_writes(&client).await;
    let cpu_before = recac_tests::process_cpu_seconds(apiserver);
    let started = Instant::now();
    let op = start_operator(plane, &ns, &sim, 30, n + 10, true).await;
    if let Err(seen) = jobs.wait_for(n, Duration::from_secs(300)).await {
        panic!("only {seen}/{n} tickets got their Job");
    }
    let last_job = Instant::now();
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_to_last_job = recac_tests::process_cpu_seconds(apiserver) - cpu_before;
    let writes_at_last_job = recac_tests::apiserver_writes(&client).await;
    // What the burst leaves to do after the last Job is part of each ticket's cost: the
    // first status of each task (it waits up to 5 s for a pod, and no pod runs here), the
    // picked-up comments' records.
    tokio::time::sleep(SETTLE).await;
    let writes_after = recac_tests::apiserver_writes(&client).await;
    let cpu_settled = recac_tests::process_cpu_seconds(apiserver) - cpu_before;
    let recorded = claimed_tasks(&Api::<AgentTask>::namespaced(client.clone(), &ns)).await;
    assert_eq!(
        recorded, n,
        "every task's status records its claim once settled"
    );
    let calls = sim.calls();
    let last_claim = calls
        .iter()
        .filter(|c| c.method == "POST" && c.path.ends_with("/transitions") && c.status == 204)
        .map(|c| c.at)
        .max();
    let writes = calls.iter().filter(|c| is_write(c)).count();
    let reads = calls.len() - writes;
    let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
    for c in &calls {
        let tail = c.path.rsplit('/').next().unwrap_or("");
        let what = if tail.starts_with("OPS-") {
            "issue"
        } else {
            tail
        };
        *kinds
            .entry(format!("{} {what} {}", c.method, c.status))
            .or_default() += 1;
    }
    let (api, _) = recac_tests::scrape_metrics(op.port).await;
    let per_ticket: Vec<String> = api
        .iter()
        .filter(|(series, _)| !series.starts_with("watch ") && !series.starts_with("list "))
        .map(|(series, count)| format!("{series}: {:.2}", *count as f64 / n as f64))
        .collect();
    let peak = recac_tests::process_memory_mib(op.process.0.id(), "VmHWM");
    drop(op);
    let bare_jobs = n.min(2000);
    let (bare_rate, bare_cpu) = recac_tests::bare_job_creates(plane, bare_jobs).await;
    let task_writes = recac_tests::bare_task_writes(plane, bare_jobs).await;
    let (writes_by_kind, writes_total) = recac_tests::writes_per(&writes_before, &writes_after, n);
    let (burst_by_kind, burst_total) =
        recac_tests::writes_per(&writes_before, &writes_at_last_job, n);
    let claim_to_job = last_claim
        .map(|at| {
            format!(
                "{:.2} s",
                last_job.saturating_duration_since(at).as_secs_f64()
            )
        })
        .unwrap_or_else(|| "- (no claim seen)".into());
    println!("burst {n}: Jira requests by method, resource and status: {kinds:?}");
    println!(
        "burst {n}: the operator's API requests per ticket (watches and lists left out): {}",
        per_ticket.join(", ")
    );
    println!(
        "burst {n}: apiserver writes per ticket (every client) until the last Job: {burst_total:.2} ({})",
        burst_by_kind.join(", ")
    );
    println!(
        "burst {n}: apiserver writes per ticket (every client) until {} s after it: {writes_total:.2} ({})",
        SETTLE.as_secs(),
        writes_by_kind.join(", ")
    );
    println!(
        "burst {n}: apiserver CPU per ticket {:.2} ms to the last Job, {:.2} ms with what follows it (every task's first status); a bare Job create {:.2} ms ({bare_rate:.0} Jobs/s, {bare_jobs} Jobs): {:.1}x and {:.1}x",
        cpu_to_last_job * 1000.0 / n as f64,
        cpu_settled * 1000.0 / n as f64,
        bare_cpu * 1000.0,
        cpu_to_last_job / n as f64 / bare_cpu.max(1e-9),
        cpu_settled / n as f64 / bare_cpu.max(1e-9),
    );
    println!(
        "burst {n}: apiserver CPU per write, each alone ({bare_jobs} of each, 32 in flight): create a Job {:.2} ms, {}",
        bare_cpu * 1000.0,
        task_writes
            .iter()
            .map(|(what, cpu)| format!("{what} {:.2} ms", cpu * 1000.0))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "burst {n}: last Job after {elapsed:.2} s (from operator start), {claim_to_job} after the last claim; Jira requests: {reads} reads, {writes} writes ({:.2} writes per ticket, {:.2} reads per ticket); operator peak RSS {peak:.1} MiB",
        writes as f64 / n as f64,
        reads as f64 / n as f64,
    );
}

async fn large(plane: &ControlPlane, n: usize) {
    if n == 0 {
        return;
    }
    let ns = plane
        .namespace(&format!("bench-src-large-{n}"))
        .await
        .expect("namespace");
    let client = plane.client().await.expect("client");
    let sim = JiraSim::start(Seed::default()).await.expect("sim");
    sim.set_write_limits(None);
    add_tickets(&sim, n);
    let started = Instant::now();
    let op = start_operator(plane, &ns, &sim, 2, 10, false).await;
    let tasks: Api<AgentTask> = Api::namespaced(client, &ns);
    let deadline = Instant::now() + Duration::from_secs(600);
    while claimed_tasks(&tasks).await < n {
        assert!(Instant::now() < deadline, "not every ticket became a task");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Each claim changed its ticket, so the next polls read each ticket's comments once
    // (for commands); then the source is at rest.
    let settle_deadline = Instant::now() + Duration::from_secs(300);
    let mut seen = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let calls = sim.calls();
        let quiet = calls[seen.min(calls.len())..]
            .iter()
            .all(|c| c.path.contains("/search"));
        seen = calls.len();
        if quiet {
            break;
        }
        assert!(
            Instant::now() < settle_deadline,
            "the source never came to rest"
        );
    }
    let comment_reads = sim
        .calls()
        .iter()
        .filter(|c| c.method == "GET" && c.path.ends_with("/comment"))
        .count();
    let idle = Duration::from_secs(10);
    let at_rest = |label: &'static str| {
        let sim = &sim;
        async move {
            sim.clear_calls();
            tokio::time::sleep(idle).await;
            let calls = sim.calls();
            let searches = calls.iter().filter(|c| c.path.contains("/search")).count();
            let others = calls.len() - searches;
            println!(
                "large {n}: {label}, {}s with a 2 s interval: {searches} search requests, {others} other Jira requests",
                idle.as_secs()
            );
            others
        }
    };
    // The tickets changed by their claims come back from each search (pages of them) while
    // they are within its look-back (a minute); then only the one search per poll is left.
    let within = at_rest("within a minute of the claims").await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let after = at_rest("at rest with every ticket worked on").await;
    println!(
        "large {n}: every ticket a claimed task after {elapsed:.1} s; {comment_reads} comment reads followed (each claimed ticket's, once, for commands); operator peak RSS {:.1} MiB",
        recac_tests::process_memory_mib(op.process.0.id(), "VmHWM"),
    );
    assert_eq!(
        within + after,
        0,
        "a source at rest makes no request but its search"
    );
}

/// From a `/recac` follow-up comment on a ticket whose run finished to the follow-up's
/// Job, p50/p99, in webhook mode (the simulator delivers `comment_created`) and in poll
/// mode (interval 2 s).
async fn commands(plane: &ControlPlane, samples: usize, webhook: bool) {
    let mode = if webhook { "webhook" } else { "poll" };
    let interval = if webhook { 3600 } else { 2 };
    let ns = plane
        .namespace(&format!("bench-src-cmd-{mode}"))
        .await
        .expect("namespace");
    let client = plane.client().await.expect("client");
    let sim = JiraSim::start(Seed::default()).await.expect("sim");
    sim.set_write_limits(None);
    sim.add_user(recac_tests::sim_user("alice"));
    let keys = add_tickets(&sim, samples);
    let op = start_operator(plane, &ns, &sim, interval, 2 * samples + 10, false).await;
    if webhook {
        sim.set_webhook(
            &format!("http://127.0.0.1:{}/webhooks/jira", op.port),
            Some(SECRET.as_bytes().to_vec()),
        );
    }
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let tasks: Api<AgentTask> = Api::namespaced(client, &ns);
    let wait_job = |name: String| {
        let jobs = jobs.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            while jobs.get_metadata_opt(&name).await.ok().flatten().is_none() {
                assert!(Instant::now() < deadline, "no Job {name}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    // There is no kubelet: each first run is marked finished as its agent would leave it.
    for key in &keys {
        wait_job(job_name(key)).await;
        let name = recac_source::task::task_name(key, 1);
        let status = serde_json::json!({"status": {
            "phase": "Succeeded", "attempt": 1, "message": "attempt 1 succeeded: done",
        }});
        tasks
            .patch_status(
                &name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&status),
            )
            .await
            .expect("run 1 marked finished");
    }
    // Let the polls read the claims' changes first.
    tokio::time::sleep(Duration::from_secs(if webhook { 1 } else { 6 })).await;
    let mut seconds = Vec::new();
    for key in &keys {
        tokio::time::sleep(Duration::from_millis(if webhook { 50 } else { 370 })).await;
        let asked = Instant::now();
        sim.comment_as(key, "alice", "/recac also handle the empty list");
        wait_job(format!("{}-a1", recac_source::task::task_name(key, 2))).await;
        seconds.push(asked.elapsed().as_secs_f64());
    }
    seconds.sort_by(f64::total_cmp);
    println!(
        "commands ({mode}): follow-up comment to its Job over {samples} tickets: p50 {:.3} s, p99 {:.3} s",
        percentile(&seconds, 0.5),
        percentile(&seconds, 0.99),
    );
    drop(op);
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(f64::NAN)
}

async fn post_webhook(port: u16, key: &str, id: usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = format!(
        r#"{{"webhookEvent":"jira:issue_updated","issue":{{"key":"{key}","fields":{{"project":{{"key":"OPS"}}}}}}}}"#
    );
    let signature = recac_source::webhook::sign(SECRET.as_bytes(), body.as_bytes());
    let request = format!(
        "POST /webhooks/jira HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nX-Hub-Signature: {signature}\r\nX-Atlassian-Webhook-Identifier: bench-{id}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
        let _ = stream.write_all(request.as_bytes()).await;
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink).await;
    }
}

async fn latency(plane: &ControlPlane, samples: usize, webhook: bool) {
    if samples == 0 {
        return;
    }
    let mode = if webhook { "webhook" } else { "poll" };
    let interval = if webhook { 3600 } else { 2 };
    let ns = plane
        .namespace(&format!("bench-src-lat-{mode}"))
        .await
        .expect("namespace");
    let client = plane.client().await.expect("client");
    let sim = JiraSim::start(Seed::default()).await.expect("sim");
    sim.add_project("OPS", "Operations");
    let op = start_operator(plane, &ns, &sim, interval, samples + 10, false).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let jobs: Api<Job> = Api::namespaced(client, &ns);
    let mut seconds = Vec::new();
    for i in 0..samples {
        // Spread the tickets over the poll interval.
        tokio::time::sleep(Duration::from_millis(if webhook { 50 } else { 370 })).await;
        let key = add_tickets(&sim, 1).remove(0);
        let ready = Instant::now();
        if webhook {
            post_webhook(op.port, &key, i).await;
        }
        let name = job_name(&key);
        let deadline = Instant::now() + Duration::from_secs(60);
        while jobs.get_metadata_opt(&name).await.ok().flatten().is_none() {
            assert!(Instant::now() < deadline, "no Job for {key}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        seconds.push(ready.elapsed().as_secs_f64());
    }
    seconds.sort_by(f64::total_cmp);
    println!(
        "latency {mode} (interval {interval} s, {samples} tickets): ticket ready → Job exists p50 {:.3} s, p99 {:.3} s, max {:.3} s",
        percentile(&seconds, 0.5),
        percentile(&seconds, 0.99),
        seconds.last().copied().unwrap_or(f64::NAN),
    );
}

fn comments_posted(sim: &JiraSim) -> usize {
    sim.calls()
        .iter()
        .filter(|c| c.method == "POST" && c.path.ends_with("/comment") && c.status == 201)
        .count()
}

async fn stranded(plane: &ControlPlane, n: usize) {
    let ns = plane
        .namespace(&format!("bench-stranded-{n}"))
        .await
        .expect("namespace");
    let client = plane.client().await.expect("client");
    let tasks: Api<AgentTask> = Api::namespaced(client.clone(), &ns);
    let sim = JiraSim::start(Seed::default()).await.expect("sim");
    sim.set_write_limits(None);
    add_tickets(&sim, n);
    // One operator claims every ticket, then their tasks go while no operator runs.
    let first = start_operator(plane, &ns, &sim, 30, n + 10, false).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    while claimed_tasks(&tasks).await < n {
        assert!(
            Instant::now() < deadline,
            "the tickets were not all claimed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(first);
    tasks
        .delete_collection(&Default::default(), &ListParams::default())
        .await
        .expect("tasks deleted");
    while !tasks
        .list_metadata(&ListParams::default())
        .await
        .expect("tasks")
        .items
        .is_empty()
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let fresh = add_tickets(&sim, 1).remove(0);
    let fresh_task = recac_source::task::task_name(&fresh, 1);
    let before = comments_posted(&sim);
    let started = Instant::now();
    let _second = start_operator(plane, &ns, &sim, 30, n + 10, false).await;
    let mut new_ticket = None;
    let mut all_back = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    while new_ticket.is_none() || all_back.is_none() {
        assert!(
            Instant::now() < deadline,
            "stranded {n}: not done in 600 s ({} handed back)",
            comments_posted(&sim) - before
        );
        if new_ticket.is_none() && tasks.get_opt(&fresh_task).await.ok().flatten().is_some() {
            new_ticket = Some(started.elapsed().as_secs_f64());
        }
        if all_back.is_none() && comments_posted(&sim) - before >= n {
            all_back = Some(started.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (new_ticket, all_back) = (new_ticket.unwrap_or_default(), all_back.unwrap_or_default());
    println!(
        "stranded {n}: the new ticket's task after {new_ticket:.2} s; every stranded claim handed back after {all_back:.2} s ({:.0} per second) (from operator start)",
        n as f64 / all_back.max(0.001)
    );
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let plane = plane().await;
    // A size of 0 skips that case.
    let burst_size = env_usize("BENCH_SOURCE_BURST", 1000);
    if burst_size > 0 {
        burst(plane, burst_size).await;
    }
    let large_size = env_usize("BENCH_SOURCE_LARGE", 5000);
    if large_size > 0 {
        large(plane, large_size).await;
    }
    let samples = env_usize("BENCH_SOURCE_SAMPLES", 30);
    if samples > 0 {
        latency(plane, samples, true).await;
        latency(plane, samples, false).await;
    }
    let command_samples = env_usize("BENCH_SOURCE_COMMANDS", 30);
    if command_samples > 0 {
        commands(plane, command_samples, true).await;
        commands(plane, command_samples, false).await;
    }
    let stranded_size = env_usize("BENCH_SOURCE_STRANDED", 1000);
    if stranded_size > 0 {
        stranded(plane, stranded_size).await;
    }
}
