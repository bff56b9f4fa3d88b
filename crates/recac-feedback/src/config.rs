//! The `feedback:` section of the configuration file.

use std::collections::BTreeMap;

use recac_runtime::config::{InvalidConfig, invalid};
use serde::Deserialize;

use crate::template::Template;

/// The default of `feedback.editIntervalSeconds`: Jira allows about 20 writes per 2 s per
/// issue, shared with the labels, transitions and claims of the same ticket.
pub const DEFAULT_EDIT_INTERVAL_SECONDS: u64 = 2;

/// How a ticket hears of its runs.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum CommentMode {
    /// One comment per ticket, edited in place as its runs progress.
    #[default]
    Live,
    /// A new comment per report (picked up, retrying, each outcome): everyone watching
    /// the ticket is notified of each.
    PerOutcome,
}

/// How the feedback controller reports to Jira.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct FeedbackConfig {
    /// Report at all (only when a `jira:` connection is configured).
    pub enabled: bool,
    /// One live comment per ticket, or a comment per report.
    pub comments: CommentMode,
    /// Live comments: the least time between two writes of one ticket's comment.
    pub edit_interval_seconds: u64,
    /// Post a "picked up" comment when the first attempt's agent starts running (live: make
    /// the ticket's comment then, instead of at the first outcome).
    pub comment_on_dispatch: bool,
    /// Post a short comment when a retry is dispatched (live: the comment shows retries
    /// anyway).
    pub comment_on_retry: bool,
    /// Lines of the agent's log quoted in a failure comment (0 quotes none).
    pub log_tail_lines: usize,
    /// A link to follow a task, with `{namespace}` and `{name}` placeholders.
    pub dashboard_url: Option<String>,
    /// Extra regular expressions whose matches are removed from quoted logs.
    pub redact_patterns: Vec<String>,
    /// Tasks reported in parallel.
    pub workers: usize,
    /// The first wait after a failed delivery; doubles per failure.
    pub retry_seconds: u64,
    /// The longest wait between deliveries of one report.
    pub max_retry_seconds: u64,
    /// What happens to the ticket when a planning run (`spec.approval: plan`) has written its
    /// plan, which waits for approval on the ticket: e.g. a transition to a review status.
    /// Default: nothing. Applied once, with the plan's report; not to a plan that was
    /// approved or rejected before it was reported (its review is over). A decided plan
    /// never gets `succeeded` or `failed`: those are for the run that implements it.
    pub planned: TicketActions,
    /// What happens to the ticket when a task succeeds.
    pub succeeded: TicketActions,
    /// ... when it fails.
    pub failed: TicketActions,
    /// ... when it is deleted or suspended by a person while it runs, or stopped on its
    /// ticket.
    pub cancelled: TicketActions,
    /// The first paragraph of each comment (see [`crate::template::PLACEHOLDERS`]); with a
    /// live comment, the words after the run's number.
    pub templates: Templates,
    /// Templates for the tasks of one source (the task's `recac.io/source` label), by source
    /// name; what a source leaves unset comes from `templates`.
    pub source_templates: BTreeMap<String, Templates>,
}

impl Default for FeedbackConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            comments: CommentMode::Live,
            edit_interval_seconds: DEFAULT_EDIT_INTERVAL_SECONDS,
            comment_on_dispatch: true,
            comment_on_retry: false,
            log_tail_lines: 50,
            dashboard_url: None,
            redact_patterns: Vec::new(),
            workers: 4,
            retry_seconds: 5,
            max_retry_seconds: 300,
            planned: TicketActions::default(),
            succeeded: TicketActions::default(),
            failed: TicketActions::default(),
            cancelled: TicketActions::default(),
            templates: Templates::default(),
            source_templates: BTreeMap::new(),
        }
    }
}

/// A transition and label changes applied to the ticket for one outcome.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct TicketActions {
    /// A transition by id, transition name or target status name.
    pub transition: Option<String>,
    pub add_labels: Vec<String>,
    pub remove_labels: Vec<String>,
}

impl TicketActions {
    pub fn is_empty(&self) -> bool {
        self.transition.is_none() && self.add_labels.is_empty() && self.remove_labels.is_empty()
    }
}

/// Headline templates per report kind; unset ones use the built-in text.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Templates {
    pub picked_up: Option<String>,
    pub retrying: Option<String>,
    /// A planning run's plan waits for approval (built in: "recac wrote a plan for this
    /// ticket and waits for approval."; live: "Run N wrote a plan and waits for approval.").
    /// The plan and how to answer it follow the headline.
    pub planned: Option<String>,
    pub succeeded: Option<String>,
    pub failed: Option<String>,
    pub cancelled: Option<String>,
}

impl Templates {
    /// These templates, with what they leave unset taken from `fallback`.
    pub fn or(&self, fallback: &Templates) -> Templates {
        let pick = |own: &Option<String>, other: &Option<String>| own.clone().or(other.clone());
        Templates {
            picked_up: pick(&self.picked_up, &fallback.picked_up),
            retrying: pick(&self.retrying, &fallback.retrying),
            planned: pick(&self.planned, &fallback.planned),
            succeeded: pick(&self.succeeded, &fallback.succeeded),
            failed: pick(&self.failed, &fallback.failed),
            cancelled: pick(&self.cancelled, &fallback.cancelled),
        }
    }

    fn entries(&self) -> [(&'static str, &Option<String>); 6] {
        [
            ("pickedUp", &self.picked_up),
            ("retrying", &self.retrying),
            ("planned", &self.planned),
            ("succeeded", &self.succeeded),
            ("failed", &self.failed),
            ("cancelled", &self.cancelled),
        ]
    }
}

impl FeedbackConfig {
    /// The templates for a task made by `source` (`None`: not made by a source).
    pub fn templates_for(&self, source: Option<&str>) -> Templates {
        match source.and_then(|s| self.source_templates.get(s)) {
            Some(own) => own.or(&self.templates),
            None => self.templates.clone(),
        }
    }

    /// Checks every key; `section` is the section's name in the file (`feedback`).
    pub fn validate(&self, section: &str) -> Result<(), InvalidConfig> {
        let key = |k: &str| format!("{section}.{k}");
        if self.log_tail_lines > 1000 {
            return Err(invalid(&key("logTailLines"), "must be between 0 and 1000"));
        }
        if self.edit_interval_seconds == 0 || self.edit_interval_seconds > 3600 {
            return Err(invalid(
                &key("editIntervalSeconds"),
                "must be between 1 and 3600",
            ));
        }
        if self.workers == 0 || self.workers > 64 {
            return Err(invalid(&key("workers"), "must be between 1 and 64"));
        }
        if self.retry_seconds == 0 || self.retry_seconds > 3600 {
            return Err(invalid(&key("retrySeconds"), "must be between 1 and 3600"));
        }
        if self.max_retry_seconds < self.retry_seconds || self.max_retry_seconds > 86_400 {
            return Err(invalid(
                &key("maxRetrySeconds"),
                "must be at least retrySeconds and at most 86400",
            ));
        }
        if let Some(url) = &self.dashboard_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(invalid(
                &key("dashboardUrl"),
                format!("{url:?} is not an http(s):// URL"),
            ));
        }
        if let Err(err) = recac_redact::Redactor::builder()
            .patterns(self.redact_patterns.iter().cloned())
            .build()
        {
            let index = match &err {
                recac_redact::Error::InvalidPattern { index, .. } => *index,
            };
            return Err(invalid(
                &key(&format!("redactPatterns[{index}]")),
                err.to_string(),
            ));
        }
        for (name, actions) in [
            ("planned", &self.planned),
            ("succeeded", &self.succeeded),
            ("failed", &self.failed),
            ("cancelled", &self.cancelled),
        ] {
            if actions
                .transition
                .as_deref()
                .is_some_and(|t| t.trim().is_empty())
            {
                return Err(invalid(
                    &key(&format!("{name}.transition")),
                    "must not be empty",
                ));
            }
            for (list, labels) in [
                ("addLabels", &actions.add_labels),
                ("removeLabels", &actions.remove_labels),
            ] {
                for (i, label) in labels.iter().enumerate() {
                    if label.is_empty() || label.contains(char::is_whitespace) {
                        return Err(invalid(
                            &key(&format!("{name}.{list}[{i}]")),
                            format!("{label:?} is not a Jira label (empty or with whitespace)"),
                        ));
                    }
                }
            }
        }
        let per_source = self
            .source_templates
            .iter()
            .map(|(source, t)| (format!("sourceTemplates.{source}"), t));
        for (prefix, templates) in
            std::iter::once(("templates".to_string(), &self.templates)).chain(per_source)
        {
            for (name, text) in templates.entries() {
                if let Some(text) = text {
                    Template::parse(text).map_err(|message| {
                        invalid(&key(&format!("{prefix}.{name}")), message.to_string())
                    })?;
                }
            }
        }
        Ok(())
    }

    /// The redactor for quoted logs: token shapes and the configured patterns.
    pub fn redactor(&self) -> Result<recac_redact::Redactor, recac_redact::Error> {
        recac_redact::Redactor::builder()
            .patterns(self.redact_patterns.iter().cloned())
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> FeedbackConfig {
        serde_saphyr::from_str(yaml).expect("parses")
    }

    #[test]
    fn defaults_read_well() {
        let config = parse("{}");
        assert_eq!(config, FeedbackConfig::default());
        assert_eq!(config.comments, CommentMode::Live);
        assert_eq!(config.edit_interval_seconds, 2);
        assert!(config.comment_on_dispatch && !config.comment_on_retry);
        assert_eq!(config.log_tail_lines, 50);
        config.validate("feedback").expect("valid");
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("workers: 0", "feedback.workers"),
            ("logTailLines: 5000", "feedback.logTailLines"),
            ("dashboardUrl: ftp://x", "feedback.dashboardUrl"),
            ("redactPatterns: [ok, '(']", "feedback.redactPatterns[1]"),
            (
                "failed: {addLabels: [ok, 'two words']}",
                "feedback.failed.addLabels[1]",
            ),
            (
                "succeeded: {transition: ' '}",
                "feedback.succeeded.transition",
            ),
            ("planned: {transition: ''}", "feedback.planned.transition"),
            (
                "planned: {removeLabels: [recac-agent, '']}",
                "feedback.planned.removeLabels[1]",
            ),
            (
                "templates: {planned: 'plan of {nope}'}",
                "feedback.templates.planned",
            ),
            (
                "sourceTemplates: {ops: {planned: '{ticket'}}",
                "feedback.sourceTemplates.ops.planned",
            ),
            (
                "templates: {failed: 'x {nope}'}",
                "feedback.templates.failed",
            ),
            (
                "sourceTemplates: {ops: {succeeded: '{branch'}}",
                "feedback.sourceTemplates.ops.succeeded",
            ),
            (
                "retrySeconds: 10\nmaxRetrySeconds: 5",
                "feedback.maxRetrySeconds",
            ),
            ("editIntervalSeconds: 0", "feedback.editIntervalSeconds"),
        ];
        for (yaml, key) in cases {
            let err = parse(yaml).validate("feedback").expect_err(yaml);
            assert_eq!(err.key, key, "{yaml}: {err}");
        }
        let unknown = serde_saphyr::from_str::<FeedbackConfig>("commentOnRetries: true");
        assert!(unknown.is_err());
        for yaml in [
            "planned: {transition: Plan Review, addLabel: [x]}",
            "templates: {plan: 'x'}",
        ] {
            assert!(
                serde_saphyr::from_str::<FeedbackConfig>(yaml).is_err(),
                "{yaml}"
            );
        }
    }

    #[test]
    fn the_comment_mode_is_live_or_per_outcome_and_anything_else_names_the_key() {
        assert_eq!(
            parse("comments: perOutcome").comments,
            CommentMode::PerOutcome
        );
        assert_eq!(parse("comments: live").comments, CommentMode::Live);
        // The operator's loader puts the path in front (`at \`feedback.comments\`: …`;
        // tests/feedback_controller.rs runs it).
        let err =
            serde_json::from_value::<FeedbackConfig>(serde_json::json!({"comments": "chatty"}))
                .expect_err("chatty");
        assert!(
            err.to_string()
                .contains("unknown variant `chatty`, expected `live` or `perOutcome`"),
            "{err}"
        );
    }

    #[test]
    fn a_source_overrides_some_templates() {
        let config = parse(
            "templates: {failed: 'global {reason}', succeeded: 'global ok'}\nsourceTemplates: {ops: {succeeded: 'ops ok'}}",
        );
        let ops = config.templates_for(Some("ops"));
        assert_eq!(ops.succeeded.as_deref(), Some("ops ok"));
        assert_eq!(ops.failed.as_deref(), Some("global {reason}"));
        assert_eq!(
            config.templates_for(Some("other")).succeeded.as_deref(),
            Some("global ok")
        );
        assert_eq!(config.templates_for(None), config.templates);
    }

    #[test]
    fn the_plan_has_its_own_actions_and_template_and_none_by_default() {
        let config = FeedbackConfig::default();
        assert!(config.planned.is_empty());
        assert_eq!(config.templates.planned, None);
        let config = parse(
            "planned: {transition: Plan Review, addLabels: [recac-plan]}\ntemplates: {planned: 'Plan for {ticket} (attempt {attempt})'}\nsourceTemplates: {ops: {succeeded: ops ok}}",
        );
        config.validate("feedback").expect("valid");
        assert_eq!(config.planned.transition.as_deref(), Some("Plan Review"));
        assert_eq!(config.planned.add_labels, ["recac-plan"]);
        assert_eq!(
            config.templates_for(Some("ops")).planned.as_deref(),
            Some("Plan for {ticket} (attempt {attempt})")
        );
    }

    #[test]
    fn outcome_actions_parse() {
        let config = parse(
            "failed: {transition: To Do, addLabels: [recac-failed], removeLabels: [recac-agent]}",
        );
        assert_eq!(config.failed.transition.as_deref(), Some("To Do"));
        assert_eq!(config.failed.add_labels, ["recac-failed"]);
        assert!(config.succeeded.is_empty());
    }
}
