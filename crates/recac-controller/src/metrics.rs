//! Prometheus metrics in the text exposition format, with no dependencies.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use recac_api::TaskPhase;

const LATENCY_BUCKETS: [f64; 11] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// Counters the task controller keeps.
#[derive(Default)]
pub struct Metrics {
    reconciles: AtomicU64,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    api_requests: Mutex<BTreeMap<&'static str, u64>>,
    jobs_created: AtomicU64,
    event_errors: AtomicU64,
    dispatch_latency: Mutex<Histogram>,
}

#[derive(Default)]
struct Histogram {
    counts: [u64; LATENCY_BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Metrics {
    pub fn reconciled(&self) {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
    }

    pub fn reconcile_failed(&self, kind: &'static str) {
        if let Ok(mut errors) = self.errors.lock() {
            *errors.entry(kind).or_default() += 1;
        }
    }

    /// Counts one request the controller makes to the API (watches excluded).
    pub fn api_request(&self, verb: &'static str) {
        if let Ok(mut requests) = self.api_requests.lock() {
            *requests.entry(verb).or_default() += 1;
        }
    }

    /// An Event that could not be published (they are best effort).
    pub fn event_failed(&self) {
        self.event_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn job_created(&self) {
        self.jobs_created.fetch_add(1, Ordering::Relaxed);
    }

    /// Time from a task's creation to its first Job.
    pub fn observe_dispatch_latency(&self, latency: Duration) {
        let seconds = latency.as_secs_f64();
        if let Ok(mut histogram) = self.dispatch_latency.lock() {
            for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
                if seconds <= *bound {
                    histogram.counts[i] += 1;
                }
            }
            histogram.sum += seconds;
            histogram.count += 1;
        }
    }

    pub fn reconciles(&self) -> u64 {
        self.reconciles.load(Ordering::Relaxed)
    }

    pub fn jobs_created(&self) -> u64 {
        self.jobs_created.load(Ordering::Relaxed)
    }

    /// Requests made so far, by verb.
    pub fn api_requests(&self) -> BTreeMap<&'static str, u64> {
        self.api_requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Renders every metric; `phases` counts the watched tasks by phase.
    pub fn render(&self, phases: &BTreeMap<&'static str, u64>) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP recac_reconciles_total AgentTask reconciles run."
        );
        let _ = writeln!(out, "# TYPE recac_reconciles_total counter");
        let _ = writeln!(out, "recac_reconciles_total {}", self.reconciles());
        let _ = writeln!(
            out,
            "# HELP recac_reconcile_errors_total Failed reconciles by error kind."
        );
        let _ = writeln!(out, "# TYPE recac_reconcile_errors_total counter");
        if let Ok(errors) = self.errors.lock() {
            for (kind, n) in errors.iter() {
                let _ = writeln!(out, "recac_reconcile_errors_total{{kind=\"{kind}\"}} {n}");
            }
        }
        let _ = writeln!(
            out,
            "# HELP recac_api_requests_total Kubernetes API requests made by reconciles, by verb (watches excluded)."
        );
        let _ = writeln!(out, "# TYPE recac_api_requests_total counter");
        for (verb, n) in self.api_requests() {
            let _ = writeln!(out, "recac_api_requests_total{{verb=\"{verb}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP recac_jobs_created_total Agent Jobs created.");
        let _ = writeln!(out, "# TYPE recac_jobs_created_total counter");
        let _ = writeln!(out, "recac_jobs_created_total {}", self.jobs_created());
        let _ = writeln!(
            out,
            "# HELP recac_event_publish_errors_total Events that could not be published."
        );
        let _ = writeln!(out, "# TYPE recac_event_publish_errors_total counter");
        let _ = writeln!(
            out,
            "recac_event_publish_errors_total {}",
            self.event_errors.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# HELP recac_tasks AgentTasks watched, by phase.");
        let _ = writeln!(out, "# TYPE recac_tasks gauge");
        for phase in [
            TaskPhase::Pending,
            TaskPhase::Running,
            TaskPhase::Succeeded,
            TaskPhase::Failed,
        ] {
            let n = phases.get(phase.as_str()).copied().unwrap_or(0);
            let _ = writeln!(out, "recac_tasks{{phase=\"{}\"}} {n}", phase.as_str());
        }
        let _ = writeln!(
            out,
            "# HELP recac_dispatch_latency_seconds Time from a task's creation to its first Job."
        );
        let _ = writeln!(out, "# TYPE recac_dispatch_latency_seconds histogram");
        if let Ok(h) = self.dispatch_latency.lock() {
            for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "recac_dispatch_latency_seconds_bucket{{le=\"{bound}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "recac_dispatch_latency_seconds_bucket{{le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(out, "recac_dispatch_latency_seconds_sum {}", h.sum);
            let _ = writeln!(out, "recac_dispatch_latency_seconds_count {}", h.count);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histogram() {
        let m = Metrics::default();
        m.reconciled();
        m.reconciled();
        m.reconcile_failed("kube");
        m.api_request("create");
        m.job_created();
        m.observe_dispatch_latency(Duration::from_millis(300));
        let text = m.render(&BTreeMap::from([("Running", 3)]));
        assert!(text.contains("recac_reconciles_total 2"));
        assert!(text.contains("recac_reconcile_errors_total{kind=\"kube\"} 1"));
        assert!(text.contains("recac_api_requests_total{verb=\"create\"} 1"));
        assert!(text.contains("recac_tasks{phase=\"Running\"} 3"));
        assert!(text.contains("recac_tasks{phase=\"Failed\"} 0"));
        assert!(text.contains("recac_dispatch_latency_seconds_bucket{le=\"0.25\"} 0"));
        assert!(text.contains("recac_dispatch_latency_seconds_bucket{le=\"0.5\"} 1"));
        assert!(text.contains("recac_dispatch_latency_seconds_count 1"));
    }
}
