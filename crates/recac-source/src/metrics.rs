//! The source controller's metrics, registered in the operator's shared registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use recac_runtime::MetricsRegistry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SkipLabels {
    pub source: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StrandedLabels {
    pub source: String,
    /// handBack, rerun, or transition_unavailable (handed back but left in its status).
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

fn seconds_histogram() -> Histogram {
    Histogram::new([
        0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    ])
}

/// Every metric of the source controller and its webhook.
#[derive(Clone)]
pub struct SourceMetrics {
    pub seen: Family<SourceLabel, Counter>,
    pub claimed: Family<SourceLabel, Counter>,
    pub skipped: Family<SkipLabels, Counter>,
    pub conflicts: Family<SourceLabel, Counter>,
    pub poll_errors: Family<SourceLabel, Counter>,
    pub poll_pages: Family<SourceLabel, Counter>,
    pub poll_duration: Family<SourceLabel, Histogram>,
    pub latency: Family<SourceLabel, Histogram>,
    pub webhook: Family<OutcomeLabel, Counter>,
    pub stranded: Family<StrandedLabels, Counter>,
    /// Commands in ticket comments acted on (runs started, stops, replies).
    pub commands: Family<SourceLabel, Counter>,
}

impl SourceMetrics {
    /// Metrics that are not rendered anywhere (previews, tests).
    pub fn unregistered() -> Self {
        Self {
            seen: Family::default(),
            claimed: Family::default(),
            skipped: Family::default(),
            conflicts: Family::default(),
            poll_errors: Family::default(),
            poll_pages: Family::default(),
            poll_duration: Family::new_with_constructor(seconds_histogram),
            latency: Family::new_with_constructor(seconds_histogram),
            webhook: Family::default(),
            stranded: Family::default(),
            commands: Family::default(),
        }
    }

    pub fn register(registry: &MetricsRegistry) -> Self {
        let m = Self::unregistered();
        registry.register(
            "recac_source_tickets_seen",
            "Tickets a source's search returned, per poll.",
            m.seen.clone(),
        );
        registry.register(
            "recac_source_tickets_claimed",
            "Tickets claimed in Jira (each with its AgentTask).",
            m.claimed.clone(),
        );
        registry.register("recac_source_tickets_skipped", "Tickets not taken, by reason (in_flight, already_ran, no_repository, not_allowed, capped, ...).", m.skipped.clone());
        registry.register(
            "recac_source_claim_conflicts",
            "Claims lost to another actor or refused by Jira with 409/400.",
            m.conflicts.clone(),
        );
        registry.register(
            "recac_source_poll_errors",
            "Polls that failed (Jira or Kubernetes errors).",
            m.poll_errors.clone(),
        );
        registry.register(
            "recac_source_poll_pages",
            "Search result pages read.",
            m.poll_pages.clone(),
        );
        registry.register(
            "recac_source_poll_duration_seconds",
            "Time one poll of one source took.",
            m.poll_duration.clone(),
        );
        registry.register("recac_source_ticket_to_task_seconds", "From the ticket becoming ready (its trigger in the changelog) to its AgentTask existing.", m.latency.clone());
        registry.register("recac_source_webhook_deliveries", "Jira webhook deliveries by outcome (accepted, duplicate, ignored, unauthorized, too_large, malformed).", m.webhook.clone());
        registry.register(
            "recac_source_stranded_claims",
            "Claimed tickets found without their AgentTask when a replica started leading, by the action taken.",
            m.stranded.clone(),
        );
        registry.register(
            "recac_source_commands",
            "Commands in ticket comments acted on: runs started, stops asked and replies posted.",
            m.commands.clone(),
        );
        m
    }

    pub fn stranded(&self, source: &str, action: &str) {
        self.stranded
            .get_or_create(&StrandedLabels {
                source: source.into(),
                action: action.into(),
            })
            .inc();
    }

    pub fn source(name: &str) -> SourceLabel {
        SourceLabel {
            source: name.to_string(),
        }
    }

    pub fn skip(&self, source: &str, reason: &str) {
        self.skipped
            .get_or_create(&SkipLabels {
                source: source.into(),
                reason: reason.into(),
            })
            .inc();
    }

    pub fn webhook_outcome(&self, outcome: &str) {
        self.webhook
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .inc();
    }
}
