//! The `controller:` and `agent:` sections of the operator's configuration file.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use recac_api::EnvVarPair;
use serde::Deserialize;

/// How the task controller runs.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ControllerConfig {
    /// Namespaces to watch; empty watches every namespace.
    pub namespaces: Vec<String>,
    /// Tasks with a live Job at once, across all watched namespaces; the rest wait
    /// in creation order with a `Queued` condition.
    pub max_concurrent_tasks: usize,
    /// Tasks reconciled in parallel.
    pub workers: u16,
    /// Wait before the first retry, in seconds; doubles per failed attempt.
    pub retry_backoff_seconds: u64,
    /// The longest wait between attempts, in seconds.
    pub max_retry_backoff_seconds: u64,
    /// How often a queued task checks for a free slot, in seconds.
    pub queue_poll_seconds: u64,
    /// Address of the HTTP server with /metrics, /healthz and /readyz.
    pub metrics_address: String,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            namespaces: Vec::new(),
            max_concurrent_tasks: 10,
            workers: 4,
            retry_backoff_seconds: 30,
            max_retry_backoff_seconds: 900,
            queue_poll_seconds: 10,
            metrics_address: "0.0.0.0:8080".into(),
        }
    }
}

/// Defaults for every agent Job; a task's `spec.agent` overrides them field by field.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct AgentDefaults {
    /// The container image that runs the agent.
    pub image: String,
    /// The image pull policy: Always, IfNotPresent or Never.
    pub image_pull_policy: Option<String>,
    /// The container's command.
    pub command: Vec<String>,
    /// The container's arguments.
    pub args: Vec<String>,
    /// The LLM provider: openai or anthropic.
    pub provider: Option<String>,
    /// The model name.
    pub model: Option<String>,
    /// Plain environment variables for every agent.
    pub env: Vec<EnvVarPair>,
    /// Secrets (in the task's namespace) whose keys become environment variables of every agent.
    pub secret_refs: Vec<String>,
    /// CPU and memory for the agent container.
    pub resources: ResourceRequirements,
    /// Seconds a finished Job is kept before Kubernetes deletes it.
    pub ttl_seconds_after_finished: i32,
    /// The ServiceAccount agent pods run as (default: the namespace's `default`).
    pub service_account_name: Option<String>,
    /// Whether agent pods get a Kubernetes API token. Off: the agent needs no API access.
    pub automount_service_account_token: bool,
    /// The numeric user the agent runs as (the pod runs as non-root).
    pub run_as_user: i64,
    /// Size limit of the emptyDir workspace, e.g. 10Gi.
    pub workspace_size_limit: Option<String>,
}

impl Default for AgentDefaults {
    fn default() -> Self {
        let quantity = |q: &str| Quantity(q.to_string());
        Self {
            image: format!("ghcr.io/recac-io/recac:{}", env!("CARGO_PKG_VERSION")),
            image_pull_policy: None,
            command: vec!["recac".into(), "start".into()],
            args: Vec::new(),
            provider: None,
            model: None,
            env: Vec::new(),
            secret_refs: Vec::new(),
            resources: ResourceRequirements {
                requests: Some(BTreeMap::from([
                    ("cpu".to_string(), quantity("500m")),
                    ("memory".to_string(), quantity("512Mi")),
                ])),
                limits: Some(BTreeMap::from([("memory".to_string(), quantity("2Gi"))])),
                ..Default::default()
            },
            ttl_seconds_after_finished: 86_400,
            service_account_name: None,
            automount_service_account_token: false,
            run_as_user: 65_532,
            workspace_size_limit: None,
        }
    }
}

/// The shortest time a finished Job is kept: the operator reads its result first.
pub const MIN_JOB_TTL_SECONDS: i32 = 60;

/// A DNS-1123 label: what namespace names must be.
fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// A DNS-1123 subdomain: what Secret and ServiceAccount names must be.
fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

/// A configuration value that cannot work, named by its key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: `{key}`: {message}")]
pub struct InvalidConfig {
    pub key: String,
    pub message: String,
}

fn invalid(key: &str, message: impl Into<String>) -> InvalidConfig {
    InvalidConfig {
        key: key.into(),
        message: message.into(),
    }
}

impl ControllerConfig {
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if self.max_concurrent_tasks == 0 {
            return Err(invalid(
                "controller.maxConcurrentTasks",
                "must be at least 1",
            ));
        }
        if self.workers == 0 {
            return Err(invalid("controller.workers", "must be at least 1"));
        }
        if self.retry_backoff_seconds == 0 {
            return Err(invalid(
                "controller.retryBackoffSeconds",
                "must be at least 1",
            ));
        }
        if self.max_retry_backoff_seconds < self.retry_backoff_seconds {
            return Err(invalid(
                "controller.maxRetryBackoffSeconds",
                "must be at least controller.retryBackoffSeconds",
            ));
        }
        if self.queue_poll_seconds == 0 {
            return Err(invalid("controller.queuePollSeconds", "must be at least 1"));
        }
        if self
            .metrics_address
            .parse::<std::net::SocketAddr>()
            .is_err()
        {
            return Err(invalid(
                "controller.metricsAddress",
                format!("{:?} is not a host:port address", self.metrics_address),
            ));
        }
        for (i, ns) in self.namespaces.iter().enumerate() {
            if !is_dns_label(ns) {
                return Err(invalid(
                    &format!("controller.namespaces[{i}]"),
                    format!("{ns:?} is not a namespace name"),
                ));
            }
            if self.namespaces[..i].contains(ns) {
                return Err(invalid(
                    &format!("controller.namespaces[{i}]"),
                    format!("{ns:?} is listed twice"),
                ));
            }
        }
        Ok(())
    }
}

impl AgentDefaults {
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if self.image.trim().is_empty() {
            return Err(invalid("agent.image", "must not be empty"));
        }
        if self.command.is_empty() {
            return Err(invalid("agent.command", "must not be empty"));
        }
        if let Some(policy) = &self.image_pull_policy
            && !["Always", "IfNotPresent", "Never"].contains(&policy.as_str())
        {
            return Err(invalid(
                "agent.imagePullPolicy",
                "must be Always, IfNotPresent or Never",
            ));
        }
        if let Some(provider) = &self.provider
            && !["openai", "anthropic"].contains(&provider.as_str())
        {
            return Err(invalid("agent.provider", "must be openai or anthropic"));
        }
        if self.ttl_seconds_after_finished < MIN_JOB_TTL_SECONDS {
            return Err(invalid(
                "agent.ttlSecondsAfterFinished",
                format!(
                    "must be at least {MIN_JOB_TTL_SECONDS}: the operator reads each finished Job's result before it is deleted"
                ),
            ));
        }
        for (i, name) in self.secret_refs.iter().enumerate() {
            if !is_dns_subdomain(name) {
                return Err(invalid(
                    &format!("agent.secretRefs[{i}]"),
                    format!("{name:?} is not a Secret name"),
                ));
            }
        }
        if let Some(name) = &self.service_account_name
            && !is_dns_subdomain(name)
        {
            return Err(invalid(
                "agent.serviceAccountName",
                format!("{name:?} is not a ServiceAccount name"),
            ));
        }
        if self.run_as_user <= 0 {
            return Err(invalid(
                "agent.runAsUser",
                "must be a non-root user id (1 or more)",
            ));
        }
        for (i, var) in self.env.iter().enumerate() {
            let valid = var
                .name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && var
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(invalid(
                    &format!("agent.env[{i}].name"),
                    format!("{:?} is not an environment variable name", var.name),
                ));
            }
        }
        Ok(())
    }
}
