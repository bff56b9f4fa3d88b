//! The feedback controller's metrics.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use recac_runtime::MetricsRegistry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// Counters, the pending gauge and the delivery latency.
#[derive(Clone)]
pub struct FeedbackMetrics {
    comments: Family<KindLabel, Counter>,
    edits: Counter,
    already_posted: Counter,
    errors: Family<ReasonLabel, Counter>,
    pending: Gauge,
    pending_tasks: Arc<Mutex<HashSet<String>>>,
    latency: Histogram,
}

impl FeedbackMetrics {
    pub fn register(registry: &MetricsRegistry) -> Self {
        let metrics = Self {
            comments: Family::default(),
            edits: Counter::default(),
            already_posted: Counter::default(),
            errors: Family::default(),
            pending: Gauge::default(),
            pending_tasks: Arc::default(),
            latency: Histogram::new([0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0]),
        };
        registry.register(
            "recac_feedback_comments",
            "Comments posted on tickets, by kind (pickedUp, retrying, planned, succeeded, failed, cancelled; live for a ticket's live comment)",
            metrics.comments.clone(),
        );
        registry.register(
            "recac_feedback_comment_edits",
            "Edits of tickets' live comments (a text equal to the one written is not sent)",
            metrics.edits.clone(),
        );
        registry.register(
            "recac_feedback_already_posted",
            "Reports found already on the ticket by their marker (not posted again)",
            metrics.already_posted.clone(),
        );
        registry.register(
            "recac_feedback_delivery_errors",
            "Failed deliveries, by reason (RateLimited, JiraUnavailable, JiraRejected, KubernetesError); each is retried",
            metrics.errors.clone(),
        );
        registry.register(
            "recac_feedback_pending",
            "Tasks whose feedback is waiting for Jira",
            metrics.pending.clone(),
        );
        registry.register(
            "recac_feedback_latency_seconds",
            "Seconds from a task finishing to its outcome comment existing on the ticket",
            metrics.latency.clone(),
        );
        metrics
    }

    pub fn posted(&self, kind: &str) {
        self.comments
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    pub fn edited(&self) {
        self.edits.inc();
    }

    pub fn found_posted(&self) {
        self.already_posted.inc();
    }

    pub fn delivery_failed(&self, reason: &str) {
        self.errors
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn observe_latency(&self, latency: Duration) {
        self.latency.observe(latency.as_secs_f64());
    }

    /// Marks the task's feedback as waiting (or not) for Jira.
    pub fn set_pending(&self, uid: &str, pending: bool) {
        if let Ok(mut tasks) = self.pending_tasks.lock() {
            let changed = if pending {
                tasks.insert(uid.to_string())
            } else {
                tasks.remove(uid)
            };
            if changed {
                self.pending.set(tasks.len() as i64);
            }
        }
    }

    /// Forgets every pending task (a term ended: the next term, here or elsewhere, finds them).
    pub fn clear_pending(&self) {
        if let Ok(mut tasks) = self.pending_tasks.lock() {
            tasks.clear();
            self.pending.set(0);
        }
    }

    pub fn pending_count(&self) -> usize {
        self.pending_tasks.lock().map(|t| t.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pending_gauge_counts_tasks_once_and_renders() {
        let registry = MetricsRegistry::default();
        let metrics = FeedbackMetrics::register(&registry);
        metrics.set_pending("a", true);
        metrics.set_pending("a", true);
        metrics.set_pending("b", true);
        metrics.set_pending("a", false);
        metrics.posted("failed");
        metrics.found_posted();
        metrics.edited();
        metrics.delivery_failed("RateLimited");
        metrics.observe_latency(Duration::from_millis(1500));
        let text = registry.encode();
        for line in [
            "recac_feedback_pending 1",
            "recac_feedback_comments_total{kind=\"failed\"} 1",
            "recac_feedback_already_posted_total 1",
            "recac_feedback_comment_edits_total 1",
            "recac_feedback_delivery_errors_total{reason=\"RateLimited\"} 1",
            "recac_feedback_latency_seconds_count 1",
        ] {
            assert!(text.contains(line), "{line} missing in {text}");
        }
        metrics.clear_pending();
        assert_eq!(metrics.pending_count(), 0);
        assert!(registry.encode().contains("recac_feedback_pending 0"));
    }
}
