//! The operator's configuration: one YAML file read into typed sections.
//!
//! Every key is documented in the README's configuration reference. Unknown
//! keys and wrong types are errors that name the full key path.

use std::path::Path;

use serde::Deserialize;

/// The whole configuration file. Each section belongs to the part of the operator that
/// uses it and carries its own defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OperatorConfig {
    /// Process-wide settings (`operator:`): namespaces, the admin server.
    #[serde(default)]
    pub operator: recac_runtime::config::OperatorSettings,
    /// How the task controller runs (`taskController:`).
    #[serde(default)]
    pub task_controller: recac_task_controller::TaskControllerConfig,
    /// Defaults for every agent Job (`agent:`).
    #[serde(default)]
    pub agent: recac_task_controller::AgentDefaults,
    /// The Jira connection (`jira:`); see docs/jira.md.
    #[serde(default)]
    pub jira: Option<recac_jira::JiraConfig>,
    /// What the feedback controller reports on tickets (`feedback:`); it runs when `jira:` is set.
    #[serde(default)]
    pub feedback: recac_feedback::FeedbackConfig,
    /// The Jira sources (`sources:`): which tickets become AgentTasks; needs `jira:`.
    #[serde(default)]
    pub sources: Vec<recac_source::SourceConfig>,
    /// The Jira webhook endpoint (`jiraWebhook:`), served on the admin address.
    #[serde(default)]
    pub jira_webhook: Option<recac_source::WebhookConfig>,
    /// The 0.1 `controller:` section, read for one more release (see [`LegacyController`]).
    #[serde(default)]
    controller: Option<LegacyController>,
    /// Deprecation notices found while reading the file.
    #[serde(skip)]
    pub warnings: Vec<String>,
    /// New key → the deprecated key it was read from, so errors name what the file says.
    #[serde(skip)]
    legacy_keys: Vec<(String, String)>,
}

/// The `controller:` section of 0.1, split since into `operator:` and `taskController:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LegacyController {
    namespaces: Option<Vec<String>>,
    metrics_address: Option<String>,
    max_concurrent_tasks: Option<usize>,
    workers: Option<u16>,
    retry_backoff_seconds: Option<u64>,
    max_retry_backoff_seconds: Option<u64>,
    queue_poll_seconds: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: at `{key}`: {message}")]
    Invalid {
        path: String,
        key: String,
        message: String,
    },
}

impl OperatorConfig {
    /// Reads and validates the file; `None` gives the documented defaults.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses YAML text; `origin` names the source in error messages.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: origin.to_string(),
            key,
            message,
        };
        // Parse to a generic tree first so that a type or unknown-key error can name its full path.
        let tree: serde_json::Value = if text.trim().is_empty() {
            serde_json::Value::Object(Default::default())
        } else {
            serde_saphyr::from_str(text).map_err(|e| invalid("(document)".into(), e.to_string()))?
        };
        let has_new_sections = ["operator", "taskController"]
            .iter()
            .any(|section| tree.get(section).is_some());
        let mut config: Self = serde_path_to_error::deserialize(tree).map_err(|e| {
            let key = e.path().to_string();
            invalid(key, e.into_inner().to_string())
        })?;
        if let Some(legacy) = config.controller.take() {
            if has_new_sections {
                return Err(invalid(
                    "controller".into(),
                    "the deprecated `controller:` section cannot be combined with `operator:` or `taskController:`; move its keys (see the README's configuration reference)".into(),
                ));
            }
            config.adopt_legacy(legacy);
        }
        config
            .operator
            .validate("operator")
            .and_then(|()| config.task_controller.validate("taskController"))
            .and_then(|()| config.agent.validate())
            .and_then(|()| config.feedback.validate("feedback"))
            .map_err(|e| invalid(config.key_as_written(&e.key), e.message))?;
        let watched = &config.operator.namespaces;
        if let Some((i, budget)) = config
            .task_controller
            .namespace_budgets
            .iter()
            .enumerate()
            .find(|(_, b)| !watched.is_empty() && !watched.contains(&b.namespace))
        {
            return Err(invalid(
                format!("taskController.namespaceBudgets[{i}].namespace"),
                format!(
                    "{:?} is not in operator.namespaces, so no task there is run",
                    budget.namespace
                ),
            ));
        }
        if let Some(jira) = &config.jira {
            jira.validate()
                .map_err(|e| invalid(format!("jira.{}", e.key), e.message))?;
        }
        for source in &mut config.sources {
            source.repository.credential_hosts = config.agent.git_credential_hosts.clone();
        }
        config
            .validate_sources()
            .map_err(|e| invalid(e.key, e.message))?;
        Ok(config)
    }

    /// The `sources:` and `jiraWebhook:` sections, and how they fit the others.
    fn validate_sources(&self) -> Result<(), recac_runtime::config::InvalidConfig> {
        use recac_runtime::config::invalid;
        recac_source::validate_sources(&self.sources, "sources")?;
        if !self.sources.is_empty() && self.jira.is_none() {
            return Err(invalid(
                "sources",
                "sources need the `jira:` connection section",
            ));
        }
        let watched = &self.operator.namespaces;
        for (i, source) in self.sources.iter().enumerate() {
            let allow_list = source
                .egress
                .as_ref()
                .and_then(|e| e.mode)
                .is_some_and(|m| m == recac_api::egress_policy::EgressMode::AllowList);
            if allow_list && let Err(missing) = self.agent.egress.validate_proxy() {
                return Err(invalid(
                    &format!("sources[{i}].egress.mode"),
                    format!(
                        "allowList needs the egress proxy: {}: {} (see the README's egress section)",
                        missing.key, missing.message
                    ),
                ));
            }
            if !watched.is_empty() && !watched.contains(&source.namespace) {
                return Err(invalid(
                    &format!("sources[{i}].namespace"),
                    format!(
                        "{:?} is not in operator.namespaces, so its tasks would never run",
                        source.namespace
                    ),
                ));
            }
        }
        if let Some(webhook) = &self.jira_webhook {
            if self.sources.is_empty() {
                return Err(invalid(
                    "jiraWebhook",
                    "a webhook needs at least one source",
                ));
            }
            webhook.validate("jiraWebhook")?;
        }
        Ok(())
    }

    /// `key` as the file spells it: a value read from a deprecated key is named by that key.
    fn key_as_written(&self, key: &str) -> String {
        for (new, old) in &self.legacy_keys {
            if let Some(rest) = key.strip_prefix(new.as_str())
                && (rest.is_empty() || rest.starts_with('['))
            {
                return format!("{old}{rest} (deprecated; now `{new}`)");
            }
        }
        key.to_string()
    }

    /// Moves the 0.1 `controller:` keys to their new places, with a notice for each.
    fn adopt_legacy(&mut self, legacy: LegacyController) {
        let mut moved = |old: &str, new: &str| {
            self.warnings.push(format!(
                "config key `controller.{old}` is deprecated and will be removed in the next release; use `{new}`"
            ));
            self.legacy_keys
                .push((new.to_string(), format!("controller.{old}")));
        };
        if let Some(v) = legacy.namespaces {
            moved("namespaces", "operator.namespaces");
            self.operator.namespaces = v;
        }
        if let Some(v) = legacy.metrics_address {
            moved("metricsAddress", "operator.adminAddress");
            self.operator.admin_address = v;
        }
        if let Some(v) = legacy.max_concurrent_tasks {
            moved("maxConcurrentTasks", "taskController.maxConcurrentTasks");
            self.task_controller.max_concurrent_tasks = v;
        }
        if let Some(v) = legacy.workers {
            moved("workers", "taskController.workers");
            self.task_controller.workers = v;
        }
        if let Some(v) = legacy.retry_backoff_seconds {
            moved("retryBackoffSeconds", "taskController.retryBackoffSeconds");
            self.task_controller.retry_backoff_seconds = v;
        }
        if let Some(v) = legacy.max_retry_backoff_seconds {
            moved(
                "maxRetryBackoffSeconds",
                "taskController.maxRetryBackoffSeconds",
            );
            self.task_controller.max_retry_backoff_seconds = v;
        }
        if let Some(v) = legacy.queue_poll_seconds {
            moved("queuePollSeconds", "taskController.queuePollSeconds");
            self.task_controller.queue_poll_seconds = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        assert!(OperatorConfig::parse("", "test.yaml").is_ok());
    }

    #[test]
    fn a_namespace_budget_must_name_a_watched_namespace() {
        let budgets = "taskController:\n  namespaceBudgets:\n    - {namespace: team-a, perDay: {tokens: 100}}\n";
        OperatorConfig::parse(budgets, "test.yaml").expect("every namespace is watched");
        OperatorConfig::parse(
            &format!("operator:\n  namespaces: [team-a]\n{budgets}"),
            "test.yaml",
        )
        .expect("watched");
        let err = OperatorConfig::parse(
            &format!("operator:\n  namespaces: [team-b]\n{budgets}"),
            "test.yaml",
        )
        .expect_err("not watched")
        .to_string();
        assert!(
            err.contains("taskController.namespaceBudgets[0].namespace")
                && err.contains("not in operator.namespaces"),
            "{err}"
        );
    }

    #[test]
    fn legacy_controller_keys_still_work_with_a_warning() {
        let config = OperatorConfig::parse(
            "controller:\n  namespaces: [a]\n  maxConcurrentTasks: 3\n  metricsAddress: 127.0.0.1:9000\n",
            "test.yaml",
        )
        .expect("valid");
        assert_eq!(config.operator.namespaces, vec!["a".to_string()]);
        assert_eq!(config.operator.admin_address, "127.0.0.1:9000");
        assert_eq!(config.task_controller.max_concurrent_tasks, 3);
        assert_eq!(config.warnings.len(), 3);
        assert!(config.warnings[0].contains("operator.namespaces"));
        let err = OperatorConfig::parse(
            "controller:\n  workers: 2\noperator:\n  namespaces: [a]\n",
            "test.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`controller`"), "{err}");
    }

    #[test]
    fn every_section_is_validated_naming_the_key() {
        for (text, key) in [
            ("operator:\n  adminAddress: nope\n", "operator.adminAddress"),
            ("taskController:\n  workers: 0\n", "taskController.workers"),
            ("agent:\n  runAsUser: 0\n", "agent.runAsUser"),
            (
                "jira:\n  url: https://x.atlassian.net\n  pageSize: 0\n",
                "jira.pageSize",
            ),
            ("taskController:\n  bogus: 1\n", "taskController"),
            (
                "feedback:\n  failed: {addLabels: [two words]}\n",
                "feedback.failed.addLabels[0]",
            ),
            ("feedback:\n  commentOnRetries: true\n", "feedback"),
            (
                "agent:\n  egress: {mode: allowList}\n",
                "agent.egress.proxy",
            ),
            (
                "agent:\n  egress: {mode: allowList, proxy: \"https://p:1\", proxyPods: {namespace: s}}\n",
                "agent.egress.proxy",
            ),
            (
                "agent:\n  egress: {mode: allowList, proxy: \"http://p:3128\"}\n",
                "agent.egress.proxyPods.namespace",
            ),
            (
                "agent:\n  egress: {allow: [\"exa mple.com\"]}\n",
                "agent.egress.allow[0]",
            ),
            ("agent:\n  egress: {mode: closed}\n", "agent.egress.mode"),
            ("agent:\n  egress: {alow: []}\n", "agent.egress"),
            (
                "agent:\n  egress: {mode: allowList, proxy: \"http://p:3128\", proxyPods: {namespace: s}, dns: {labels: {}}}\n",
                "agent.egress.dns.labels",
            ),
            (
                "agent:\n  egress: {mode: allowList, proxy: \"http://p:3128\", proxyPods: {namespace: s}, dns: {cidrs: [nope]}}\n",
                "agent.egress.dns.cidrs[0]",
            ),
            (
                "agent:\n  runtimeClassName: \"Not A Name\"\n",
                "agent.runtimeClassName",
            ),
        ] {
            let err = OperatorConfig::parse(text, "test.yaml")
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{text:?}: {err}");
        }
    }

    #[test]
    fn sources_are_validated_naming_the_key() {
        let jira = "jira:\n  url: https://x.atlassian.net\n";
        let ok = format!(
            "{jira}sources:\n  - name: ops\n    project: OPS\n    label: recac-agent\n    namespace: agents\n"
        );
        let config = OperatorConfig::parse(&ok, "test.yaml").expect("valid");
        assert_eq!(config.sources.len(), 1);
        for (text, key) in [
            (
                "sources:\n  - name: ops\n    project: OPS\n    label: l\n    namespace: a\n"
                    .to_string(),
                "`sources`",
            ),
            (
                format!("{jira}sources:\n  - name: ops\n    jql: \"\"\n    namespace: a\n"),
                "sources[0].jql",
            ),
            (
                format!(
                    "{jira}sources:\n  - name: ops\n    project: OPS\n    label: l\n    namespace: a\n    bogus: 1\n"
                ),
                "sources[0]",
            ),
            (
                format!("{ok}jiraWebhook:\n  path: /hook\n"),
                "jiraWebhook.secretEnv",
            ),
            (
                format!("{ok}operator:\n  namespaces: [other]\n"),
                "sources[0].namespace",
            ),
            (
                format!("{ok}    egress: {{mode: allowList}}\n"),
                "sources[0].egress.mode",
            ),
            (
                format!("{ok}    egress: {{allow: [\"not a host\"]}}\n"),
                "sources[0].egress.allow[0]",
            ),
        ] {
            let err = OperatorConfig::parse(&text, "test.yaml")
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{text:?}: {err}");
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let err = OperatorConfig::parse("bogus: 1\n", "test.yaml").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("bogus"), "{text}");
        assert!(text.contains("test.yaml"), "{text}");
    }
}
