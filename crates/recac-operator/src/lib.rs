//! The operator process, assembled: the shared caches, every controller and the admin
//! server, run by the runtime's supervisor. `recac orchestrate` and the end-to-end tests
//! build the operator the same way, through [`Operator::build`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use recac_runtime::admin::{self, AdminState, Readiness};
use recac_runtime::config::OperatorSettings;
use recac_runtime::election::{LeaderElection, OwnPod, process_identity};
use recac_runtime::metrics::ApiRequestCounter;
use recac_runtime::runner::ReconcileMetrics;
use recac_runtime::{Cache, Fatal, Health, Leadership, MetricsRegistry, Supervisor, kinds};
use recac_task_controller::admission::AdmissionQueue;
use recac_task_controller::metrics::TaskMetrics;
use recac_task_controller::{
    AgentDefaults, TaskController, TaskControllerConfig, TaskControllerParts,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// What the operator is built from (the configuration file's sections).
#[derive(Clone, Debug, Default)]
pub struct OperatorSetup {
    pub operator: OperatorSettings,
    pub task_controller: TaskControllerConfig,
    pub agent: AgentDefaults,
    /// Names this replica in Events (the pod name in a cluster).
    pub instance: String,
    /// The Jira source controller (`sources:` with a `jira:` connection); `None` runs
    /// without it. Its webhook route, when configured, is served by the admin server.
    pub sources: Option<recac_source::SourcesSetup>,
    /// The feedback controller (`feedback:` with a `jira:` connection); `None` runs without it.
    pub feedback: Option<recac_feedback::FeedbackSetup>,
}

/// The operator, built and ready to run.
pub struct Operator {
    supervisor: Supervisor,
    admin: axum::Router,
    /// The registry `/metrics` renders.
    pub metrics: MetricsRegistry,
    /// Every part's state (`/healthz`).
    pub health: Health,
    /// Every cache's state (`/readyz`).
    pub readiness: Readiness,
    /// Whether this replica may write (always, or while it holds the leader Lease).
    pub leadership: Leadership,
    election: Option<LeaderElection>,
    /// The schedule controller's clock: the system's, unless a test sets its own.
    schedule_clock: recac_schedule::ClockCell,
}

impl Operator {
    /// Builds every part, writing whenever `leadership` allows. `kube_config` is used for
    /// one shared client whose requests are counted in `recac_api_requests_total` and whose
    /// writes (and the Jira clients' writes) are refused while `leadership` does not allow them.
    pub fn build(
        kube_config: kube::Config,
        setup: OperatorSetup,
        leadership: Leadership,
    ) -> Result<Self, kube::Error> {
        let registry = MetricsRegistry::default();
        let requests = ApiRequestCounter::register(&registry);
        Self::assemble(kube_config, setup, registry, requests, leadership, None)
    }

    /// Builds every part as the configuration says: with `operator.leaderElection.enabled`,
    /// this replica competes for the leader Lease and writes only while it holds it;
    /// otherwise it always writes.
    pub fn from_config(
        kube_config: kube::Config,
        setup: OperatorSetup,
    ) -> Result<Self, kube::Error> {
        let settings = setup.operator.leader_election.clone();
        if !settings.enabled {
            return Self::build(kube_config, setup, Leadership::always());
        }
        let registry = MetricsRegistry::default();
        let requests = ApiRequestCounter::register(&registry);
        // The Lease is written while following, so its client is not fenced.
        let lease_client =
            recac_runtime::client::counted_client(kube_config.clone(), requests.clone())?;
        let election = LeaderElection::new(
            lease_client,
            settings,
            process_identity(&setup.instance),
            OwnPod::from_env(),
            &registry,
        );
        let leadership = election.leadership();
        Self::assemble(
            kube_config,
            setup,
            registry,
            requests,
            leadership,
            Some(election),
        )
    }

    fn assemble(
        kube_config: kube::Config,
        mut setup: OperatorSetup,
        registry: MetricsRegistry,
        requests: ApiRequestCounter,
        leadership: Leadership,
        election: Option<LeaderElection>,
    ) -> Result<Self, kube::Error> {
        let client =
            recac_runtime::client::fenced_client(kube_config, requests, leadership.clone())?;
        let gate_leadership = leadership.clone();
        let gate: recac_jira::WriteGate = Arc::new(move || gate_leadership.is_allowed());
        if let Some(feedback) = setup.feedback.as_mut() {
            feedback.jira = feedback.jira.clone().with_write_gate(gate.clone());
        }
        if let Some(sources) = setup.sources.as_mut() {
            sources.jira = sources.jira.clone().with_write_gate(gate);
        }
        let namespaces = &setup.operator.namespaces;

        let claims = Arc::new(recac_runtime::claims::ClaimBoard::new());
        let queue = Arc::new(AdmissionQueue::new(
            setup.task_controller.max_concurrent_tasks,
            claims.clone(),
        ));
        let task_metrics = TaskMetrics::register(&registry);
        let reconciles = ReconcileMetrics::register(&registry);
        let (tasks, tasks_driver) = Cache::new(kinds::agent_tasks(
            &client,
            namespaces,
            TaskController::task_hooks(&queue),
        ));
        TaskMetrics::register_phases(&registry, tasks.store());
        let (jobs, jobs_driver) = Cache::new(kinds::agent_jobs(&client, namespaces, Vec::new()));
        let (spend_ledgers, spend_ledgers_driver) =
            recac_task_controller::controller::spend_ledger_cache(
                &client,
                &setup.task_controller.namespace_budgets,
            )
            .map(Cache::new)
            .unzip();

        let readiness = Readiness::default();
        readiness.add(format!("cache {}", tasks.name()), tasks.readiness_probe());
        readiness.add(format!("cache {}", jobs.name()), jobs.readiness_probe());
        if let Some(ledgers) = &spend_ledgers {
            readiness.add(
                format!("cache {}", ledgers.name()),
                ledgers.readiness_probe(),
            );
        }
        let health = Health::default();

        let feedback = setup
            .feedback
            .clone()
            .filter(|feedback| feedback.config.enabled)
            .map(|feedback| {
                Arc::new(recac_feedback::FeedbackController::new(
                    recac_feedback::FeedbackParts {
                        client: client.clone(),
                        tasks: tasks.clone(),
                        setup: feedback,
                        metrics: recac_feedback::FeedbackMetrics::register(&registry),
                        reconciles: reconciles.clone(),
                        instance: setup.instance.clone(),
                    },
                ))
            });
        let sources = setup.sources.clone().map(|sources| {
            recac_source::assemble(
                sources,
                client.clone(),
                tasks.clone(),
                &registry,
                &setup.instance,
                claims.clone(),
            )
        });
        // Schedules: their cache starts once the AgentTaskSchedule CRD is served.
        let (schedules, schedules_driver) = recac_schedule::ScheduleCache::new(&client, namespaces);
        readiness.add(
            format!("cache {}", schedules.name()),
            schedules.readiness_probe(),
        );
        let schedule_clock = recac_schedule::ClockCell::system();
        let schedule_controller = Arc::new(recac_schedule::ScheduleController::new(
            recac_schedule::ScheduleParts {
                client: client.clone(),
                schedules: schedules.clone(),
                tasks: tasks.clone(),
                metrics: recac_schedule::ScheduleMetrics::register(&registry),
                reconciles: reconciles.clone(),
                instance: setup.instance.clone(),
                clock: Arc::new(schedule_clock.clone()),
            },
        ));
        let task_controller = Arc::new(TaskController::new(TaskControllerParts {
            client,
            tasks: tasks.clone(),
            jobs: jobs.clone(),
            spend_ledgers: spend_ledgers.clone(),
            queue,
            metrics: task_metrics,
            reconciles,
            config: setup.task_controller.clone(),
            agent: setup.agent.clone(),
            instance: setup.instance.clone(),
            claims,
            source_egress: setup
                .sources
                .iter()
                .flat_map(|s| s.sources.iter())
                .filter_map(|s| {
                    let egress = s.egress.clone()?;
                    Some((s.name.clone(), (s.namespace.clone(), egress)))
                })
                .collect(),
        }));

        let mut supervisor = Supervisor::new(
            leadership.clone(),
            health.clone(),
            Duration::from_secs(setup.operator.stop_timeout_seconds),
        );
        supervisor.background(format!("cache {}", tasks.name()), tasks_driver);
        supervisor.background(format!("cache {}", jobs.name()), jobs_driver);
        if let (Some(ledgers), Some(driver)) = (&spend_ledgers, spend_ledgers_driver) {
            supervisor.background(format!("cache {}", ledgers.name()), driver);
        }
        supervisor.background(format!("cache {}", schedules.name()), schedules_driver);
        recac_runtime::memory::tune_allocator();
        supervisor.background(
            "memory release",
            recac_runtime::memory::release_periodically(recac_runtime::memory::RELEASE_INTERVAL),
        );
        // No term decides on a cold cache.
        supervisor.start_terms_after(async move {
            tasks.wait_ready().await;
            jobs.wait_ready().await;
            if let Some(ledgers) = spend_ledgers {
                ledgers.wait_ready().await;
            }
        });
        supervisor.component(task_controller);
        // Its terms wait for the schedule cache themselves (it stays cold without the CRD).
        supervisor.component(schedule_controller);
        if let Some(feedback) = feedback {
            supervisor.component(feedback);
        }
        let mut admin = admin::router(AdminState {
            metrics: registry.clone(),
            health: health.clone(),
            readiness: readiness.clone(),
        });
        if let Some((source_controller, webhook)) = sources {
            supervisor.component(source_controller);
            if let Some(webhook) = webhook {
                admin = admin.merge(webhook);
            }
        }
        Ok(Self {
            supervisor,
            admin,
            metrics: registry,
            health,
            readiness,
            leadership,
            election,
            schedule_clock,
        })
    }

    /// Makes the schedule controller read `clock` instead of the system clock (tests move a
    /// [`recac_schedule::ManualClock`] by hand). Call before [`Operator::run`].
    pub fn with_schedule_clock(self, clock: Arc<dyn recac_schedule::Clock>) -> Self {
        self.schedule_clock.set(clock);
        self
    }

    /// Runs until `shutdown` completes, serving the admin endpoints on `admin_listener`.
    /// Returns the reason when a part ended unexpectedly.
    pub async fn run(
        self,
        admin_listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), Fatal> {
        let mut supervisor = self.supervisor;
        let router = self.admin;
        let address = admin_listener.local_addr().ok();
        supervisor.background("admin server", async move {
            admin::serve(admin_listener, router, std::future::pending())
                .await
                .map_err(|e| e.to_string())
        });
        let release = CancellationToken::new();
        let election = match self.election {
            Some(election) => {
                let (ended_tx, ended_rx) = tokio::sync::oneshot::channel::<()>();
                let run = election.run(release.clone());
                let task = tokio::spawn(async move {
                    run.await;
                    drop(ended_tx);
                });
                supervisor.background("leader election", async move {
                    let _ = ended_rx.await;
                    Err("the leader election stopped".to_string())
                });
                Some(task)
            }
            None => None,
        };
        info!(admin = ?address, "recac operator running");
        // Components stop (and stop writing) before the Lease is released.
        let outcome = supervisor.run(shutdown).await;
        release.cancel();
        if let Some(task) = election
            && tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .is_err()
        {
            warn!("the leader election did not end within 10s");
        }
        outcome
    }
}
