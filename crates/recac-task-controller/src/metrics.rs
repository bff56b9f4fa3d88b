//! The task controller's metrics, registered in the process's registry.
//!
//! Names kept from earlier releases: `recac_jobs_created_total`,
//! `recac_event_publish_errors_total`, `recac_tasks{phase}`,
//! `recac_dispatch_latency_seconds`. What agents spent, as each attempt's spend is counted
//! in its task's status: `recac_agent_tokens_total{source,model,direction}` (direction
//! `input` or `output`) and `recac_agent_cost_total{source,model,currency}`, `source` being
//! the task's `recac.io/source` label (empty for a task made by a person). Connections the
//! egress proxy refused agents, as each attempt reports them:
//! `recac_agent_egress_blocked_total{source}` (the hosts are in the task's status, not in
//! labels: a label per host would grow without bound). Reconciles are counted by the runtime's runner for
//! every controller (`recac_reconciles_total{controller}`,
//! `recac_reconcile_errors_total{controller,reason}`), API requests by its client layer
//! (`recac_api_requests_total{verb,resource}`).

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use recac_api::{AgentTask, ModelSpend, TaskPhase};
use recac_runtime::MetricsRegistry;
use recac_runtime::kinds::TaskSummary;
use recac_runtime::store::Store;

const LATENCY_BUCKETS: [f64; 11] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    source: String,
    model: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CostLabels {
    source: String,
    model: String,
    currency: String,
}

/// Counters and gauges of the task controller.
#[derive(Clone)]
pub struct TaskMetrics {
    jobs_created: Counter,
    event_errors: Counter,
    dispatch_latency: Histogram,
    queued: Gauge,
    orphans_deleted: Counter,
    tokens: Family<TokenLabels, Counter>,
    cost: Family<CostLabels, Counter<f64, AtomicU64>>,
    egress_blocked: Family<SourceLabel, Counter>,
}

impl TaskMetrics {
    pub fn register(registry: &MetricsRegistry) -> Self {
        let metrics = Self {
            jobs_created: Counter::default(),
            event_errors: Counter::default(),
            dispatch_latency: Histogram::new(LATENCY_BUCKETS),
            queued: Gauge::default(),
            orphans_deleted: Counter::default(),
            tokens: Family::default(),
            cost: Family::default(),
            egress_blocked: Family::default(),
        };
        registry.register(
            "recac_jobs_created",
            "Agent Jobs created.",
            metrics.jobs_created.clone(),
        );
        registry.register(
            "recac_event_publish_errors",
            "Events that could not be published.",
            metrics.event_errors.clone(),
        );
        registry.register(
            "recac_dispatch_latency_seconds",
            "Time from a task's creation to its first Job.",
            metrics.dispatch_latency.clone(),
        );
        registry.register(
            "recac_tasks_queued",
            "Tasks waiting for a slot under taskController.maxConcurrentTasks.",
            metrics.queued.clone(),
        );
        registry.register(
            "recac_orphan_jobs_deleted",
            "Agent Jobs deleted because their AgentTask was gone (checked when a term starts).",
            metrics.orphans_deleted.clone(),
        );
        registry.register(
            "recac_agent_tokens",
            "Tokens agents reported, by the task's source, the model and the direction (input or output).",
            metrics.tokens.clone(),
        );
        registry.register(
            "recac_agent_cost",
            "What agents' models cost, as reported or priced from agent.prices, by the task's source, the model and the currency.",
            metrics.cost.clone(),
        );
        registry.register(
            "recac_agent_egress_blocked",
            "Connections the egress proxy refused agents (not on their task's allow-list), by the task's source.",
            metrics.egress_blocked.clone(),
        );
        metrics
    }

    /// Adds the connections the egress proxy refused one attempt.
    pub fn count_egress_blocked(&self, source: &str, blocked: &[recac_api::egress::BlockedHost]) {
        let refused: u64 = blocked.iter().map(|b| b.count).sum();
        self.egress_blocked
            .get_or_create(&SourceLabel {
                source: source.to_string(),
            })
            .inc_by(refused);
    }

    /// Adds what one attempt spent (as counted in its task's status); `source` is the task's
    /// `recac.io/source` label or empty.
    pub fn count_spend(&self, source: &str, spent: &[ModelSpend]) {
        for model in spent {
            for (direction, tokens) in [
                ("input", model.input_tokens),
                ("output", model.output_tokens),
            ] {
                self.tokens
                    .get_or_create(&TokenLabels {
                        source: source.to_string(),
                        model: model.model.clone(),
                        direction,
                    })
                    .inc_by(u64::try_from(tokens).unwrap_or(0));
            }
            let Some(micros) = model
                .cost
                .as_deref()
                .and_then(crate::budget::parse_reported_micros)
            else {
                continue;
            };
            self.cost
                .get_or_create(&CostLabels {
                    source: source.to_string(),
                    model: model.model.clone(),
                    currency: model.currency.clone().unwrap_or_default(),
                })
                .inc_by(crate::budget::micros_as_f64(micros));
        }
    }

    pub fn orphan_deleted(&self) {
        self.orphans_deleted.inc();
    }

    /// Registers `recac_tasks{phase}`, counted from `tasks` at each scrape.
    pub fn register_phases(registry: &MetricsRegistry, tasks: Store<AgentTask>) {
        registry.register_collector(Box::new(PhaseCollector { store: tasks }));
    }

    pub fn job_created(&self) {
        self.jobs_created.inc();
    }

    pub fn event_failed(&self) {
        self.event_errors.inc();
    }

    pub fn observe_dispatch_latency(&self, latency: Duration) {
        self.dispatch_latency.observe(latency.as_secs_f64());
    }

    pub fn set_queued(&self, queued: usize) {
        self.queued.set(i64::try_from(queued).unwrap_or(i64::MAX));
    }
}

/// `recac_tasks{phase}`, counted from the task cache at each scrape (no per-task state).
struct PhaseCollector {
    store: Store<AgentTask>,
}

impl std::fmt::Debug for PhaseCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PhaseCollector")
    }
}

impl Collector for PhaseCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let phases = [
            TaskPhase::Pending,
            TaskPhase::Running,
            TaskPhase::Succeeded,
            TaskPhase::Failed,
            TaskPhase::AwaitingApproval,
        ];
        let mut counts = [0i64; 5];
        for task in self.store.scan::<TaskSummary>() {
            let phase = task.phase().unwrap_or(TaskPhase::Pending);
            if let Some(i) = phases.iter().position(|p| *p == phase) {
                counts[i] += 1;
            }
        }
        let family = Family::<PhaseLabel, Gauge>::default();
        for (phase, count) in phases.iter().zip(counts) {
            family
                .get_or_create(&PhaseLabel {
                    phase: phase.as_str().into(),
                })
                .set(count);
        }
        let metric = encoder.encode_descriptor(
            "recac_tasks",
            "AgentTasks watched, by phase.",
            None,
            family.metric_type(),
        )?;
        family.encode(metric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_names_users_scrape() {
        let registry = MetricsRegistry::default();
        let m = TaskMetrics::register(&registry);
        m.job_created();
        m.observe_dispatch_latency(Duration::from_millis(300));
        let store: Store<AgentTask> = Store::default();
        TaskMetrics::register_phases(&registry, store.clone());
        let mut task = AgentTask::new(
            "t",
            recac_api::AgentTaskSpec {
                prompt: Some("p".into()),
                ticket: None,
                repository: recac_api::Repository {
                    url: "https://git.example.com/o/r.git".into(),
                    base_branch: None,
                    branch: None,
                },
                agent: None,
                max_retries: 0,
                timeout_seconds: 60,
                ttl_seconds_after_finished: None,
                suspend: false,
                approval: None,
                budget: None,
                egress: None,
            },
        );
        task.metadata.namespace = Some("ns".into());
        store.upsert(&task);
        let mut planned = task.clone();
        planned.metadata.name = Some("planned".into());
        planned.status = Some(recac_api::AgentTaskStatus {
            phase: Some(TaskPhase::AwaitingApproval),
            ..Default::default()
        });
        store.upsert(&planned);
        let text = registry.encode();
        assert!(text.contains("recac_jobs_created_total 1"));
        assert!(text.contains("recac_tasks{phase=\"Pending\"} 1"));
        assert!(text.contains("recac_tasks{phase=\"Failed\"} 0"));
        assert!(text.contains("recac_tasks{phase=\"AwaitingApproval\"} 1"));
        assert!(text.contains("recac_dispatch_latency_seconds_bucket{le=\"0.25\"} 0"));
        assert!(text.contains("recac_dispatch_latency_seconds_bucket{le=\"0.5\"} 1"));
        assert!(text.contains("recac_dispatch_latency_seconds_count 1"));
        m.count_spend(
            "jira",
            &[
                ModelSpend {
                    provider: Some("openai".into()),
                    model: "gpt-x".into(),
                    input_tokens: 1200,
                    output_tokens: 300,
                    cost: Some("0.25".into()),
                    currency: Some("USD".into()),
                },
                ModelSpend {
                    provider: None,
                    model: "local".into(),
                    input_tokens: 5,
                    output_tokens: 0,
                    cost: None,
                    currency: None,
                },
            ],
        );
        m.count_spend(
            "",
            &[ModelSpend {
                provider: Some("openai".into()),
                model: "gpt-x".into(),
                input_tokens: 10,
                output_tokens: 20,
                cost: Some("0.5".into()),
                currency: Some("USD".into()),
            }],
        );
        m.count_spend(
            "jira",
            &[ModelSpend {
                provider: Some("openai".into()),
                model: "gpt-x".into(),
                input_tokens: 800,
                output_tokens: 0,
                cost: Some("0.125".into()),
                currency: Some("USD".into()),
            }],
        );
        let text = registry.encode();
        for line in [
            "recac_agent_tokens_total{source=\"jira\",model=\"gpt-x\",direction=\"input\"} 2000",
            "recac_agent_tokens_total{source=\"jira\",model=\"gpt-x\",direction=\"output\"} 300",
            "recac_agent_tokens_total{source=\"jira\",model=\"local\",direction=\"input\"} 5",
            "recac_agent_tokens_total{source=\"\",model=\"gpt-x\",direction=\"output\"} 20",
            "recac_agent_cost_total{source=\"jira\",model=\"gpt-x\",currency=\"USD\"} 0.375",
            "recac_agent_cost_total{source=\"\",model=\"gpt-x\",currency=\"USD\"} 0.5",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        // A model without a known cost has no cost series.
        assert!(!text.contains("recac_agent_cost_total{source=\"jira\",model=\"local\""));
        store.remove(&kube::runtime::reflector::ObjectRef::from_obj(&task));
        assert!(
            registry
                .encode()
                .contains("recac_tasks{phase=\"Pending\"} 0")
        );
    }
}
