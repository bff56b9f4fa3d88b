//! Assembly: what the operator needs to run the source controller.

use std::sync::Arc;

use recac_api::AgentTask;
use recac_jira::JiraClient;
use recac_runtime::claims::ClaimBoard;
use recac_runtime::{Cache, MetricsRegistry};

use crate::config::SourceConfig;
use crate::controller::{PollTriggers, SourceController, SourceParts, StepHook};
use crate::metrics::SourceMetrics;
use crate::webhook::{self, WebhookSetup};

/// The sources, their Jira connection and the webhook endpoint (when configured).
#[derive(Clone)]
pub struct SourcesSetup {
    pub jira: JiraClient,
    pub sources: Vec<SourceConfig>,
    pub webhook: Option<WebhookSetup>,
    /// Test-only: called at each step of taking a ticket.
    pub hook: Option<StepHook>,
}

impl std::fmt::Debug for SourcesSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourcesSetup")
            .field("jira", &self.jira)
            .field("sources", &self.sources)
            .field("webhook", &self.webhook)
            .finish()
    }
}

/// The component and, with a webhook, the route to merge into the admin server.
pub fn assemble(
    setup: SourcesSetup,
    client: kube::Client,
    tasks: Cache<AgentTask>,
    registry: &MetricsRegistry,
    instance: &str,
    claims: Arc<ClaimBoard>,
) -> (Arc<SourceController>, Option<axum::Router>) {
    let metrics = SourceMetrics::register(registry);
    let triggers = PollTriggers::new(&setup.sources);
    let router = setup
        .webhook
        .clone()
        .map(|w| webhook::router(w, &setup.sources, triggers.clone(), metrics.clone()));
    let controller = Arc::new(SourceController::new(SourceParts {
        client,
        tasks,
        jira: setup.jira,
        sources: setup.sources,
        metrics,
        triggers,
        instance: instance.to_string(),
        hook: setup.hook,
        claims,
    }));
    (controller, router)
}
