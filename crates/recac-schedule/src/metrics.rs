//! The schedule controller's metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use recac_runtime::MetricsRegistry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// Runs created, skipped and deleted; failed reconciles.
#[derive(Clone)]
pub struct ScheduleMetrics {
    created: Counter,
    adopted: Counter,
    skipped: Family<ReasonLabel, Counter>,
    deleted: Family<ReasonLabel, Counter>,
    errors: Family<ReasonLabel, Counter>,
}

impl ScheduleMetrics {
    pub fn register(registry: &MetricsRegistry) -> Self {
        let metrics = Self {
            created: Counter::default(),
            adopted: Counter::default(),
            skipped: Family::default(),
            deleted: Family::default(),
            errors: Family::default(),
        };
        registry.register(
            "recac_schedule_runs_created",
            "AgentTasks created by schedules, one per due time",
            metrics.created.clone(),
        );
        registry.register(
            "recac_schedule_runs_adopted",
            "Runs found already created (after a restart or a stale read) and not created again",
            metrics.adopted.clone(),
        );
        registry.register(
            "recac_schedule_runs_skipped",
            "Due runs not created, by reason (ConcurrencyForbid, DeadlineExceeded, NameTaken)",
            metrics.skipped.clone(),
        );
        registry.register(
            "recac_schedule_tasks_deleted",
            "AgentTasks deleted by schedules, by reason (Replaced, SucceededHistory, FailedHistory)",
            metrics.deleted.clone(),
        );
        registry.register(
            "recac_schedule_errors",
            "Failed schedule reconciles, by reason (KubernetesError); each is retried",
            metrics.errors.clone(),
        );
        metrics
    }

    pub fn created(&self) {
        self.created.inc();
    }

    pub fn adopted(&self) {
        self.adopted.inc();
    }

    pub fn skipped(&self, reason: &str) {
        self.skipped
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn deleted(&self, reason: &str) {
        self.deleted
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn error(&self, reason: &str) {
        self.errors
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counters_render_with_their_names() {
        let registry = MetricsRegistry::default();
        let metrics = ScheduleMetrics::register(&registry);
        metrics.created();
        metrics.adopted();
        metrics.skipped("ConcurrencyForbid");
        metrics.deleted("SucceededHistory");
        metrics.error("KubernetesError");
        let text = registry.encode();
        for line in [
            "recac_schedule_runs_created_total 1",
            "recac_schedule_runs_adopted_total 1",
            "recac_schedule_runs_skipped_total{reason=\"ConcurrencyForbid\"} 1",
            "recac_schedule_tasks_deleted_total{reason=\"SucceededHistory\"} 1",
            "recac_schedule_errors_total{reason=\"KubernetesError\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing in {text}");
        }
    }
}
