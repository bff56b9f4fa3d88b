//! Dispatch benchmark: creates N AgentTasks against a real kube-apiserver and measures how
//! fast the operator (the real `recac orchestrate` binary) gives each one its Job.
//!
//! Run with `make bench` (sizes from BENCH_SIZES, default "100 1000"). Prints, per N:
//! seconds until every task has its Job, tasks dispatched per second, API requests the
//! operator made (from its /metrics) and the operator's peak RSS (VmHWM).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, ListParams, PostParams};
use recac_api::{AgentTask, AgentTaskSpec, Repository};
use recac_testenv::{ControlPlaneOptions, shared_control_plane};

fn recac_binary() -> PathBuf {
    if let Ok(path) = std::env::var("RECAC_BIN") {
        return PathBuf::from(path);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("release/recac")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The operator process, killed however the benchmark ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn api_requests(port: u16) -> (u64, String) {
    let (_, body) = recac_tests::http_get(([127, 0, 0, 1], port).into(), "/metrics").await;
    let mut total = 0;
    let mut by_verb = Vec::new();
    for line in body
        .lines()
        .filter(|l| l.starts_with("recac_api_requests_total{"))
    {
        if let Some((label, n)) = line.rsplit_once(' ') {
            let n: u64 = n.parse().unwrap_or(0);
            total += n;
            let verb = label.split('"').nth(1).unwrap_or("?");
            by_verb.push(format!("{verb}={n}"));
        }
    }
    (total, by_verb.join(" "))
}

async fn run(n: usize) {
    let plane = shared_control_plane(ControlPlaneOptions::default())
        .await
        .expect("control plane");
    plane
        .install_crds(&[<AgentTask as kube::CustomResourceExt>::crd()])
        .await
        .expect("crds");
    let ns = plane
        .namespace(&format!("bench-{n}"))
        .await
        .expect("namespace");
    let client = plane.client().await.expect("client");

    let port = free_port();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "operator:\n  namespaces: [{ns}]\n  adminAddress: 127.0.0.1:{port}\ntaskController:\n  maxConcurrentTasks: {}\n  workers: 16\n",
            n + 10
        ),
    )
    .expect("config written");
    let binary = recac_binary();
    let operator = Command::new(&binary)
        .args(["orchestrate", "--config"])
        .arg(&config)
        .env("KUBECONFIG", plane.kubeconfig_path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e} (run `make bench`)", binary.display()));
    let operator = KillOnDrop(operator);

    // Wait for the operator to be ready before the clock starts.
    let ready_deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let probe = recac_tests::try_http_get(([127, 0, 0, 1], port).into(), "/readyz").await;
        if probe.is_some_and(|(code, _)| code == 200) {
            break;
        }
        assert!(Instant::now() < ready_deadline, "operator not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let tasks: Api<AgentTask> = Api::namespaced(client.clone(), &ns);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let start = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let tasks = tasks.clone();
            async move {
                let task = AgentTask::new(
                    &format!("bench-task-{i:05}"),
                    AgentTaskSpec {
                        prompt: Some(format!("benchmark task {i}")),
                        ticket: None,
                        repository: Repository {
                            url: "https://git.example.com/org/repo.git".into(),
                            base_branch: None,
                            branch: None,
                        },
                        agent: None,
                        max_retries: 2,
                        timeout_seconds: 3600,
                        ttl_seconds_after_finished: None,
                        suspend: false,
                    },
                );
                tasks
                    .create(&PostParams::default(), &task)
                    .await
                    .expect("task created");
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let created = start.elapsed();

    loop {
        let count = jobs
            .list_metadata(&ListParams::default().labels("app=recac-agent"))
            .await
            .map(|l| l.items.len())
            .unwrap_or(0);
        if count >= n {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "only {count}/{n} Jobs after 600 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_dispatched = start.elapsed();
    // Let status writes settle before reading the request count.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (requests, by_verb) = api_requests(port).await;
    let rss = peak_rss_kib(operator.0.id()).unwrap_or(0);
    drop(operator);

    println!("N={n}");
    println!(
        "  tasks created in                 {:.2} s",
        created.as_secs_f64()
    );
    println!(
        "  every task has its Job after     {:.2} s",
        all_dispatched.as_secs_f64()
    );
    println!(
        "  dispatch rate                    {:.1} tasks/s",
        n as f64 / all_dispatched.as_secs_f64()
    );
    println!("  API requests by the operator     {requests} ({by_verb}; watches excluded)");
    println!(
        "  operator peak RSS                {:.1} MiB",
        rss as f64 / 1024.0
    );
}

#[tokio::main]
async fn main() {
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| "100 1000".into())
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    for n in sizes {
        run(n).await;
    }
}
