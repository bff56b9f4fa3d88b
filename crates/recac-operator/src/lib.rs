//! The operator process, assembled: the shared caches, every controller and the admin
//! server, run by the runtime's supervisor. `recac orchestrate` and the end-to-end tests
//! build the operator the same way, through [`Operator::build`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use recac_runtime::admin::{self, AdminState, Readiness};
use recac_runtime::config::OperatorSettings;
use recac_runtime::metrics::ApiRequestCounter;
use recac_runtime::{Cache, Fatal, Health, Leadership, MetricsRegistry, Supervisor, kinds};
use recac_task_controller::admission::AdmissionQueue;
use recac_task_controller::metrics::TaskMetrics;
use recac_task_controller::{
    AgentDefaults, TaskController, TaskControllerConfig, TaskControllerParts,
};
use tracing::info;

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
}

impl Operator {
    /// Builds every part. `kube_config` is used for one shared client whose requests are
    /// counted in `recac_api_requests_total`.
    pub fn build(
        kube_config: kube::Config,
        setup: OperatorSetup,
        leadership: Leadership,
    ) -> Result<Self, kube::Error> {
        let registry = MetricsRegistry::default();
        let requests = ApiRequestCounter::register(&registry);
        let client = recac_runtime::client::counted_client(kube_config, requests)?;
        let namespaces = &setup.operator.namespaces;

        let queue = Arc::new(AdmissionQueue::new(
            setup.task_controller.max_concurrent_tasks,
        ));
        let task_metrics = TaskMetrics::register(&registry);
        let (tasks, tasks_driver) = Cache::new(kinds::agent_tasks(
            &client,
            namespaces,
            TaskController::task_hooks(&queue),
        ));
        TaskMetrics::register_phases(&registry, tasks.store());
        let (jobs, jobs_driver) = Cache::new(kinds::agent_jobs(&client, namespaces, Vec::new()));

        let readiness = Readiness::default();
        readiness.add(format!("cache {}", tasks.name()), tasks.readiness_probe());
        readiness.add(format!("cache {}", jobs.name()), jobs.readiness_probe());
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
            )
        });
        let task_controller = Arc::new(TaskController::new(TaskControllerParts {
            client,
            tasks: tasks.clone(),
            jobs: jobs.clone(),
            queue,
            metrics: task_metrics,
            config: setup.task_controller.clone(),
            agent: setup.agent.clone(),
            instance: setup.instance.clone(),
        }));

        let mut supervisor = Supervisor::new(
            leadership,
            health.clone(),
            Duration::from_secs(setup.operator.stop_timeout_seconds),
        );
        supervisor.background(format!("cache {}", tasks.name()), tasks_driver);
        supervisor.background(format!("cache {}", jobs.name()), jobs_driver);
        // No term decides on a cold cache.
        supervisor.start_terms_after(async move {
            tasks.wait_ready().await;
            jobs.wait_ready().await;
        });
        supervisor.component(task_controller);
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
        })
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
        info!(admin = ?address, "recac operator running");
        supervisor.run(shutdown).await
    }
}
