//! The `sources:` and `jiraWebhook:` sections of the operator's configuration file.
//!
//! Every key has a documented default; [`SourceConfig::validate`] names the bad key
//! (`sources[0].jql`) so start-up stops with a message that says what to fix.

use std::collections::BTreeMap;

use recac_api::AgentSpec;
use recac_runtime::config::{InvalidConfig, invalid, is_dns_label, is_dns_subdomain};
use serde::{Deserialize, Serialize};

use crate::repo;

/// One Jira source: which tickets it picks up, how it claims them and what it runs.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SourceConfig {
    /// Unique; used in task labels, metrics and logs (a DNS label).
    pub name: String,
    /// A JQL query selecting ready tickets. Either this or `project` + `label`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jql: Option<String>,
    /// The project key whose tickets this source picks up (with `label`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// The label that marks a ticket for the agent (with `project`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The status a ticket must be in; unset: any status of the "To Do" category.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The namespace its AgentTasks are created in.
    pub namespace: String,
    /// What the created AgentTasks run.
    #[serde(default)]
    pub template: TaskTemplate,
    /// How a ticket's repository is found.
    #[serde(default)]
    pub repository: RepositoryRules,
    /// How a ticket is claimed in Jira.
    #[serde(default)]
    pub claim: ClaimConfig,
    /// Jira users (accountId, user name or e-mail) allowed to trigger this source.
    /// With neither this nor `allowedGroups`, anyone who can edit a ticket can.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_users: Vec<String>,
    /// Jira groups whose members may trigger this source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_groups: Vec<String>,
    /// Seconds between polls (the first poll is at start). Default 30.
    #[serde(default = "default_poll_interval")]
    pub poll_interval_seconds: u64,
    /// At most this many new tickets are taken per poll. Default 1000.
    #[serde(default = "default_max_tickets_per_poll")]
    pub max_tickets_per_poll: usize,
    /// At most this many of this source's tasks unfinished at once. Default 1000.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// The prompt's size cap in characters (summary and description). Default 100000.
    #[serde(default = "default_max_prompt_chars")]
    pub max_prompt_chars: usize,
    /// Labels that mark tickets this source skipped (see `docs/jira.md`).
    #[serde(default)]
    pub skip_labels: SkipLabels,
    /// What happens to a ticket this source claimed whose AgentTask is gone.
    #[serde(default)]
    pub stranded_claims: StrandedClaims,
    /// Commands people write in comments on the tickets this source worked on.
    #[serde(default)]
    pub commands: CommandsConfig,
    /// Whether a ticket's work waits for a plan to be approved.
    #[serde(default)]
    pub approval: ApprovalConfig,
    /// The most this source's runs may spend per day and per month (UTC): once a period's
    /// spend reaches it, the source starts no new ticket until the period rolls over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<SourceBudget>,
    /// What this source's tasks may reach on the network: each key set (`mode`, `allow`,
    /// `permit`) replaces `agent.egress`'s for them. Ticket text never changes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<recac_api::egress_policy::SourceEgress>,
}

/// A source's spending limits per period (see `budget` in the README), the same shape as a
/// namespace's (`taskController.namespaceBudgets`).
pub use recac_runtime::spend::{PeriodBudget as SourceBudget, PeriodLimit};

/// A plan to approve before any work is pushed (see `docs/jira.md`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApprovalConfig {
    /// `none` (default): a ticket's first run does the work. `plan`: its first run only
    /// plans (`spec.approval: plan`): the plan is posted to the ticket, and an allowed
    /// user's `/recac approve` starts the run that implements it, `/recac reject <why>` a
    /// new planning run.
    #[serde(default)]
    pub mode: ApprovalMode,
    /// A status (by name) whose reaching approves the waiting plan, like `/recac approve`,
    /// when an allowed user moved the ticket there (for example `Approved`). Unset: only
    /// the comment approves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_status: Option<String>,
}

/// What a ticket's first run does.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum ApprovalMode {
    /// The work, pushed to the ticket's branch.
    #[default]
    None,
    /// A plan, which waits for approval before any work starts.
    Plan,
}

/// Commands in ticket comments: a comment addressed to the bot (a mention of the bot user,
/// or a line starting with `/recac`) by a user allowed to trigger the source, on a ticket
/// this source worked on (see `docs/jira.md`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CommandsConfig {
    /// Whether comments are read for commands. Default true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How far back, in minutes, the first poll after a replica starts leading looks for
    /// tickets with new comments (later polls look back to the previous one). Default 60.
    #[serde(default = "default_lookback_minutes")]
    pub lookback_minutes: u64,
    /// For a `jql` source: the search for the tickets it worked on (for example `project =
    /// OPS AND labels = recac-claimed`); without it such a source reads no commands. A
    /// `project` + `label` source needs none: its search also finds its tickets that changed
    /// since the last poll.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jql: Option<String>,
}

impl Default for CommandsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            lookback_minutes: default_lookback_minutes(),
            jql: None,
        }
    }
}

fn default_lookback_minutes() -> u64 {
    60
}

/// A ticket the bot claimed (assigned, labelled, moved on) whose AgentTask no longer exists
/// and whose result was never reported: the task was deleted before it finished, or lost
/// while no operator ran. Looked for each time a replica starts leading.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StrandedClaims {
    /// `handBack` (default), `rerun` or `ignore`.
    #[serde(default)]
    pub action: StrandedAction,
    /// The transition that hands the ticket back: id, name or target status. Default "To Do".
    #[serde(default = "default_hand_back_transition")]
    pub transition: String,
    /// The search that finds this source's claimed tickets. Default: the source's project
    /// and label, every claim mark (assignee, claim labels) and a status not Done. Required
    /// for a `jql` source unless `action` is `ignore`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jql: Option<String>,
}

/// What to do with a stranded claim. Every action posts one comment saying what happened.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum StrandedAction {
    /// Unassign, remove the claim labels and the trigger label, transition back: people
    /// decide what happens next.
    #[default]
    HandBack,
    /// Unassign, remove the claim labels, transition back, keep the trigger label: the next
    /// poll takes the ticket again as a new run.
    Rerun,
    /// Leave the ticket as it is.
    Ignore,
}

impl StrandedAction {
    pub fn as_str(self) -> &'static str {
        match self {
            StrandedAction::HandBack => "handBack",
            StrandedAction::Rerun => "rerun",
            StrandedAction::Ignore => "ignore",
        }
    }
}

fn default_hand_back_transition() -> String {
    "To Do".into()
}

impl Default for StrandedClaims {
    fn default() -> Self {
        Self {
            action: StrandedAction::default(),
            transition: default_hand_back_transition(),
            jql: None,
        }
    }
}

fn default_poll_interval() -> u64 {
    30
}
fn default_max_tickets_per_poll() -> usize {
    1000
}
fn default_max_in_flight() -> usize {
    1000
}
fn default_max_prompt_chars() -> usize {
    100_000
}

/// The AgentTask fields a source sets; unset fields take the operator's `agent:` defaults.
///
/// The agent's fields are the AgentTask's own `spec.agent` ([`AgentSpec`]), written flat
/// beside `maxRetries`, `timeoutSeconds` and `ttlSecondsAfterFinished`, so a field added to
/// the API is a template key at once and the two cannot drift. serde's `deny_unknown_fields`
/// does not work with `flatten`, so the keys are checked against the API's JSON schema
/// instead ([`unknown_key`]): an unknown or misspelt key, at any depth, is still an error
/// naming it.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TaskTemplate {
    #[serde(flatten)]
    pub agent: AgentSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds_after_finished: Option<i32>,
    /// The tasks' `spec.budget`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<recac_api::Budget>,
}

/// The keys of a template that are not the agent's.
const TEMPLATE_OWN_KEYS: [&str; 4] = [
    "maxRetries",
    "timeoutSeconds",
    "ttlSecondsAfterFinished",
    "budget",
];

impl<'de> Deserialize<'de> for TaskTemplate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;

        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Fields {
            #[serde(flatten)]
            agent: AgentSpec,
            #[serde(default)]
            max_retries: Option<i32>,
            #[serde(default)]
            timeout_seconds: Option<i64>,
            #[serde(default)]
            ttl_seconds_after_finished: Option<i32>,
            #[serde(default)]
            budget: Option<recac_api::Budget>,
        }

        let value = serde_json::Value::deserialize(deserializer)?;
        let serde_json::Value::Object(map) = &value else {
            return Err(D::Error::custom("expected a mapping of the task's fields"));
        };
        let schema = schemars::schema_for!(AgentSpec);
        let schema = schema.as_value();
        for (key, field) in map {
            if key == "budget" {
                let budget = schemars::schema_for!(recac_api::Budget);
                let budget = budget.as_value();
                if let Some((path, expected)) = unknown_key(field, budget, budget) {
                    return Err(D::Error::custom(format!(
                        "unknown field `budget{path}`, expected one of {}",
                        expected.join(", ")
                    )));
                }
            }
            if TEMPLATE_OWN_KEYS.contains(&key.as_str()) {
                continue;
            }
            let known = schema.get("properties").and_then(|p| p.get(key));
            match known {
                None => {
                    let mut expected = property_names(schema);
                    expected.extend(TEMPLATE_OWN_KEYS.iter().map(|k| k.to_string()));
                    expected.sort();
                    return Err(D::Error::custom(format!(
                        "unknown field `{key}`, expected one of {}",
                        expected.join(", ")
                    )));
                }
                Some(field_schema) => {
                    if let Some((path, expected)) = unknown_key(field, field_schema, schema) {
                        return Err(D::Error::custom(format!(
                            "unknown field `{key}{path}`, expected one of {}",
                            expected.join(", ")
                        )));
                    }
                }
            }
        }
        let fields: Fields = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            D::Error::custom(format!("{path}: {}", e.into_inner()))
        })?;
        Ok(TaskTemplate {
            agent: fields.agent,
            max_retries: fields.max_retries,
            timeout_seconds: fields.timeout_seconds,
            ttl_seconds_after_finished: fields.ttl_seconds_after_finished,
            budget: fields.budget,
        })
    }
}

/// The property names of an object schema, sorted.
fn property_names(schema: &serde_json::Value) -> Vec<String> {
    let mut names: Vec<String> = schema
        .get("properties")
        .and_then(serde_json::Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// The first key in `value` that `schema` does not declare, as a path below `value`
/// (`.caBundle.keys`, `[0].nmae`), with the keys declared there. Objects whose schema
/// declares no properties (maps, such as resource quantities) take any key. `$ref`s are
/// resolved in `root`'s `$defs`; of `anyOf`/`oneOf`/`allOf` (an `Option` is `anyOf` with
/// null) the subschema that declares properties counts.
pub fn unknown_key(
    value: &serde_json::Value,
    schema: &serde_json::Value,
    root: &serde_json::Value,
) -> Option<(String, Vec<String>)> {
    let schema = object_schema(schema, root, 0)?;
    match value {
        serde_json::Value::Object(map) => {
            let properties = schema.get("properties")?.as_object()?;
            for (key, field) in map {
                let Some(field_schema) = properties.get(key) else {
                    return Some((format!(".{key}"), property_names(schema)));
                };
                if let Some((path, expected)) = unknown_key(field, field_schema, root) {
                    return Some((format!(".{key}{path}"), expected));
                }
            }
            None
        }
        serde_json::Value::Array(items) => {
            let item_schema = schema.get("items")?;
            items.iter().enumerate().find_map(|(i, item)| {
                unknown_key(item, item_schema, root).map(|(path, e)| (format!("[{i}]{path}"), e))
            })
        }
        _ => None,
    }
}

/// `schema` with `$ref`s resolved and, of `anyOf`/`oneOf`/`allOf`, the branch that
/// declares properties or items.
fn object_schema<'a>(
    schema: &'a serde_json::Value,
    root: &'a serde_json::Value,
    depth: usize,
) -> Option<&'a serde_json::Value> {
    if depth > 16 {
        return None;
    }
    if let Some(reference) = schema.get("$ref").and_then(serde_json::Value::as_str) {
        let name = reference.rsplit('/').next()?;
        let target = root
            .get("$defs")
            .or_else(|| root.get("definitions"))?
            .get(name)?;
        return object_schema(target, root, depth + 1);
    }
    for combinator in ["anyOf", "oneOf", "allOf"] {
        if let Some(branches) = schema.get(combinator).and_then(serde_json::Value::as_array) {
            return branches
                .iter()
                .filter_map(|b| object_schema(b, root, depth + 1))
                .find(|b| b.get("properties").is_some() || b.get("items").is_some());
        }
    }
    Some(schema)
}

/// Repository resolution, first match wins: description line, custom field,
/// component map, project map, default.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RepositoryRules {
    /// Read a `Repo: <url>` line from the description. Default true.
    #[serde(default = "default_true")]
    pub from_description: bool,
    /// A custom field id (`customfield_10050`) holding the URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_field: Option<String>,
    /// Component name → URL.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_component: BTreeMap<String, String>,
    /// Project key → URL.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_project: BTreeMap<String, String>,
    /// The URL when nothing else matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// The branch work starts from; unset: the remote's default branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_branch: Option<String>,
    /// When set, only URLs on these hosts (`github.com`) or organisations
    /// (`github.com/example-org`) are accepted. Unset: URLs from ticket text must be on a
    /// host of [`RepositoryRules::credential_hosts`]; the configuration's own are trusted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed: Vec<String>,
    /// The scopes of the agent's git token (`agent.gitCredentialHosts`), filled in when the
    /// configuration file is read.
    #[serde(skip)]
    pub credential_hosts: Vec<String>,
}

impl RepositoryRules {
    /// The hosts a URL must be on: `allowed` when set; otherwise the credential hosts for
    /// URLs from ticket text and any host for the configuration's own (`None`).
    pub fn hosts_for(&self, trusted: bool) -> Option<&[String]> {
        if !self.allowed.is_empty() {
            Some(&self.allowed)
        } else if trusted {
            None
        } else {
            Some(&self.credential_hosts)
        }
    }
}

fn default_true() -> bool {
    true
}

impl Default for RepositoryRules {
    fn default() -> Self {
        Self {
            from_description: true,
            custom_field: None,
            by_component: BTreeMap::new(),
            by_project: BTreeMap::new(),
            default: None,
            base_branch: None,
            allowed: Vec::new(),
            credential_hosts: Vec::new(),
        }
    }
}

/// How a ticket is claimed.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClaimConfig {
    /// The transition: its id, its name or its target status. Default "In Progress".
    #[serde(default = "default_transition")]
    pub transition: String,
    /// Assign the ticket to the bot user. Default true.
    #[serde(default = "default_true")]
    pub assign: bool,
    /// Labels added on claim.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add_labels: Vec<String>,
    /// Labels removed on claim.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_labels: Vec<String>,
}

fn default_transition() -> String {
    "In Progress".into()
}

impl Default for ClaimConfig {
    fn default() -> Self {
        Self {
            transition: default_transition(),
            assign: true,
            add_labels: Vec::new(),
            remove_labels: Vec::new(),
        }
    }
}

/// Labels put on tickets that were skipped with a comment.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SkipLabels {
    /// No repository could be resolved (or it was rejected). Default `recac-needs-repository`.
    #[serde(default = "default_no_repo_label")]
    pub no_repository: String,
    /// The user who triggered it may not. Default `recac-not-allowed`.
    #[serde(default = "default_not_allowed_label")]
    pub not_allowed: String,
}

fn default_no_repo_label() -> String {
    "recac-needs-repository".into()
}
fn default_not_allowed_label() -> String {
    "recac-not-allowed".into()
}

impl Default for SkipLabels {
    fn default() -> Self {
        Self {
            no_repository: default_no_repo_label(),
            not_allowed: default_not_allowed_label(),
        }
    }
}

/// The `jiraWebhook:` section: the endpoint Jira's webhooks call.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WebhookConfig {
    /// The path on the admin server. Default `/webhooks/jira`.
    #[serde(default = "default_webhook_path")]
    pub path: String,
    /// The environment variable holding the shared secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    /// A file holding the shared secret (a mounted Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<String>,
    /// Larger bodies are refused with 413. Default 1 MiB.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
}

fn default_webhook_path() -> String {
    "/webhooks/jira".into()
}
fn default_max_body() -> usize {
    1024 * 1024
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            path: default_webhook_path(),
            secret_env: None,
            secret_file: None,
            max_body_bytes: default_max_body(),
        }
    }
}

impl WebhookConfig {
    /// Checks every key; `section` names the section (`jiraWebhook`).
    pub fn validate(&self, section: &str) -> Result<(), InvalidConfig> {
        let key = |k: &str| format!("{section}.{k}");
        if !self.path.starts_with('/') || self.path.len() < 2 {
            return Err(invalid(
                &key("path"),
                "must be an absolute path like /webhooks/jira",
            ));
        }
        if ["/metrics", "/healthz", "/readyz"].contains(&self.path.as_str()) {
            return Err(invalid(&key("path"), "is taken by the admin server"));
        }
        match (&self.secret_env, &self.secret_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    &key("secretEnv"),
                    "give secretEnv or secretFile, not both",
                ));
            }
            (None, None) => {
                return Err(invalid(
                    &key("secretEnv"),
                    "a secret is required (secretEnv or secretFile): unsigned deliveries are refused",
                ));
            }
            _ => {}
        }
        if self.max_body_bytes < 1024 || self.max_body_bytes > 16 * 1024 * 1024 {
            return Err(invalid(
                &key("maxBodyBytes"),
                "must be between 1024 and 16777216",
            ));
        }
        Ok(())
    }

    /// Reads the secret from where it is referenced (surrounding whitespace removed).
    pub fn secret(&self) -> Result<Vec<u8>, InvalidConfig> {
        let (key, value) = match (&self.secret_env, &self.secret_file) {
            (Some(var), _) => (
                "jiraWebhook.secretEnv",
                std::env::var(var).map_err(|_| {
                    invalid(
                        "jiraWebhook.secretEnv",
                        format!("environment variable {var} is not set"),
                    )
                })?,
            ),
            (None, Some(file)) => (
                "jiraWebhook.secretFile",
                std::fs::read_to_string(file).map_err(|e| {
                    invalid("jiraWebhook.secretFile", format!("cannot read {file}: {e}"))
                })?,
            ),
            (None, None) => return Err(invalid("jiraWebhook.secretEnv", "no secret configured")),
        };
        let value = value.trim();
        if value.is_empty() {
            return Err(invalid(key, "the secret is empty"));
        }
        Ok(value.as_bytes().to_vec())
    }
}

/// A Jira project key.
fn is_project_key(key: &str) -> bool {
    let mut chars = key.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase())
        && key.len() >= 2
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

fn is_label(label: &str) -> bool {
    !label.is_empty() && label.chars().count() <= 255 && !label.contains(char::is_whitespace)
}

impl SourceConfig {
    /// A source picking up `label` in `project`, with every other key at its default.
    pub fn for_label(name: &str, project: &str, label: &str, namespace: &str) -> Self {
        Self {
            name: name.into(),
            jql: None,
            project: Some(project.into()),
            label: Some(label.into()),
            status: None,
            namespace: namespace.into(),
            template: TaskTemplate::default(),
            repository: RepositoryRules::default(),
            claim: ClaimConfig::default(),
            allowed_users: Vec::new(),
            allowed_groups: Vec::new(),
            poll_interval_seconds: default_poll_interval(),
            max_tickets_per_poll: default_max_tickets_per_poll(),
            max_in_flight: default_max_in_flight(),
            max_prompt_chars: default_max_prompt_chars(),
            skip_labels: SkipLabels::default(),
            stranded_claims: StrandedClaims::default(),
            commands: CommandsConfig::default(),
            approval: ApprovalConfig::default(),
            budget: None,
            egress: None,
        }
    }

    /// Whether the source restricts who may trigger it.
    pub fn restricts_triggers(&self) -> bool {
        !self.allowed_users.is_empty() || !self.allowed_groups.is_empty()
    }

    /// Checks every key; `at` is the source's path in the file (`sources[0]`).
    pub fn validate(&self, at: &str) -> Result<(), InvalidConfig> {
        let key = |k: &str| format!("{at}.{k}");
        if !is_dns_label(&self.name) || self.name.len() > 40 {
            return Err(invalid(
                &key("name"),
                format!(
                    "{:?} must be a DNS label of at most 40 characters",
                    self.name
                ),
            ));
        }
        match (&self.jql, &self.project, &self.label) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err(invalid(
                    &key("jql"),
                    "give jql, or project and label, not both",
                ));
            }
            (Some(jql), None, None) => {
                if jql.trim().is_empty() {
                    return Err(invalid(&key("jql"), "is empty"));
                }
                if self.status.is_some() {
                    return Err(invalid(
                        &key("status"),
                        "only applies with project and label",
                    ));
                }
            }
            (None, None, _) => {
                return Err(invalid(&key("project"), "give jql, or project and label"));
            }
            (None, Some(_), None) => {
                return Err(invalid(&key("label"), "required with project"));
            }
            (None, Some(project), Some(label)) => {
                if !is_project_key(project) {
                    return Err(invalid(
                        &key("project"),
                        format!("{project:?} is not a project key"),
                    ));
                }
                if !is_label(label) {
                    return Err(invalid(
                        &key("label"),
                        format!("{label:?} is not a Jira label"),
                    ));
                }
                if self.status.as_deref().is_some_and(|s| s.trim().is_empty()) {
                    return Err(invalid(&key("status"), "is empty"));
                }
            }
        }
        let stranded = &self.stranded_claims;
        if stranded.action != StrandedAction::Ignore {
            if stranded.transition.trim().is_empty() {
                return Err(invalid(&key("strandedClaims.transition"), "is empty"));
            }
            if stranded.jql.as_deref().is_some_and(|q| q.trim().is_empty()) {
                return Err(invalid(&key("strandedClaims.jql"), "is empty"));
            }
            if self.jql.is_some() && stranded.jql.is_none() {
                return Err(invalid(
                    &key("strandedClaims.jql"),
                    "required for a source with `jql` (or set strandedClaims.action: ignore): the search for this source's claimed tickets cannot be derived from a free-form query",
                ));
            }
            if stranded.jql.is_none() && !self.claim.assign && self.claim.add_labels.is_empty() {
                return Err(invalid(
                    &key("strandedClaims.action"),
                    "claims leave no mark to search by (claim.assign is false and claim.addLabels is empty): set strandedClaims.jql, or action: ignore",
                ));
            }
        }
        let commands = &self.commands;
        if commands.jql.as_deref().is_some_and(|q| q.trim().is_empty()) {
            return Err(invalid(&key("commands.jql"), "is empty"));
        }
        if commands.jql.is_some() && self.jql.is_none() {
            return Err(invalid(
                &key("commands.jql"),
                "only applies to a source with `jql`: a project and label source finds its tickets itself",
            ));
        }
        if commands.lookback_minutes == 0 || commands.lookback_minutes > 7 * 24 * 60 {
            return Err(invalid(
                &key("commands.lookbackMinutes"),
                "must be between 1 and 10080 (a week)",
            ));
        }
        if let Some(status) = &self.approval.approved_status {
            if status.trim().is_empty() {
                return Err(invalid(&key("approval.approvedStatus"), "is empty"));
            }
            if self.approval.mode != ApprovalMode::Plan {
                return Err(invalid(
                    &key("approval.approvedStatus"),
                    "only applies with approval.mode: plan",
                ));
            }
            if !self.commands.enabled {
                return Err(invalid(
                    &key("approval.approvedStatus"),
                    "needs commands.enabled: the move is read with the ticket's comments",
                ));
            }
        }
        if self.approval.mode == ApprovalMode::Plan && !self.commands.enabled {
            return Err(invalid(
                &key("approval.mode"),
                "plan needs commands.enabled: a plan is approved with a command on the ticket",
            ));
        }
        if let Some(budget) = &self.budget {
            budget.validate(&key("budget"))?;
        }
        if let Some(budget) = &self.template.budget {
            if budget.tokens.is_none()
                && budget.input_tokens.is_none()
                && budget.output_tokens.is_none()
                && budget.cost.is_none()
            {
                return Err(invalid(
                    &key("template.budget"),
                    "sets none of tokens, inputTokens, outputTokens, cost",
                ));
            }
            for (field, value) in [
                ("tokens", budget.tokens),
                ("inputTokens", budget.input_tokens),
                ("outputTokens", budget.output_tokens),
            ] {
                if value.is_some_and(|v| v < 1) {
                    return Err(invalid(
                        &key(&format!("template.budget.{field}")),
                        "must be at least 1",
                    ));
                }
            }
            if let Some(cost) = &budget.cost
                && recac_api::money::parse_micros(cost).is_none()
            {
                return Err(invalid(
                    &key("template.budget.cost"),
                    format!("{cost:?} is not a decimal number with at most 6 decimals"),
                ));
            }
        }
        if !is_dns_label(&self.namespace) {
            return Err(invalid(
                &key("namespace"),
                format!("{:?} is not a namespace name", self.namespace),
            ));
        }
        let t = &self.template;
        if t.agent
            .image
            .as_deref()
            .is_some_and(|i| i.trim().is_empty() || i.contains(char::is_whitespace))
        {
            return Err(invalid(&key("template.image"), "is not an image reference"));
        }
        if let Some(p) = &t.agent.provider
            && !["openai", "anthropic"].contains(&p.as_str())
        {
            return Err(invalid(
                &key("template.provider"),
                "must be openai or anthropic",
            ));
        }
        for (i, s) in t.agent.secret_refs.iter().enumerate() {
            if !is_dns_subdomain(s) {
                return Err(invalid(
                    &key(&format!("template.secretRefs[{i}]")),
                    format!("{s:?} is not a Secret name"),
                ));
            }
        }
        if t.max_retries.is_some_and(|r| !(0..=10).contains(&r)) {
            return Err(invalid(
                &key("template.maxRetries"),
                "must be between 0 and 10",
            ));
        }
        if t.timeout_seconds
            .is_some_and(|s| !(60..=86_400).contains(&s))
        {
            return Err(invalid(
                &key("template.timeoutSeconds"),
                "must be between 60 and 86400",
            ));
        }
        if t.ttl_seconds_after_finished.is_some_and(|s| s < 60) {
            return Err(invalid(
                &key("template.ttlSecondsAfterFinished"),
                "must be at least 60",
            ));
        }
        if let Some(ca) = &t.agent.ca_bundle {
            match (&ca.config_map, &ca.secret) {
                (Some(name), None) | (None, Some(name)) if is_dns_subdomain(name) => {}
                (Some(_), Some(_)) | (None, None) => {
                    return Err(invalid(
                        &key("template.caBundle"),
                        "name exactly one of configMap or secret",
                    ));
                }
                (Some(name), None) | (None, Some(name)) => {
                    return Err(invalid(
                        &key("template.caBundle"),
                        format!("{name:?} is not a ConfigMap or Secret name"),
                    ));
                }
            }
            let key_ok = !ca.key.is_empty()
                && ca.key.len() <= 253
                && ca
                    .key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !key_ok {
                return Err(invalid(
                    &key("template.caBundle.key"),
                    format!("{:?} is not a ConfigMap or Secret key", ca.key),
                ));
            }
        }
        let r = &self.repository;
        for (i, entry) in r.allowed.iter().enumerate() {
            if let Err(e) = recac_api::repo_host::HostScope::parse(entry) {
                return Err(invalid(
                    &key(&format!("repository.allowed[{i}]")),
                    format!("{e}: a host (github.com) or host/organisation"),
                ));
            }
        }
        let check_url = |k: String, url: &str| -> Result<(), InvalidConfig> {
            repo::check_url(url, r.hosts_for(true), true).map_err(|why| invalid(&k, why))
        };
        for (component, url) in &r.by_component {
            check_url(key(&format!("repository.byComponent.{component}")), url)?;
        }
        for (project, url) in &r.by_project {
            check_url(key(&format!("repository.byProject.{project}")), url)?;
        }
        if let Some(url) = &r.default {
            check_url(key("repository.default"), url)?;
        }
        if let Some(field) = &r.custom_field
            && !field.starts_with("customfield_")
        {
            return Err(invalid(
                &key("repository.customField"),
                "must be a field id like customfield_10050",
            ));
        }
        if let Some(b) = &r.base_branch
            && recac_api::git_ref::sanitize_branch(b) != *b
        {
            return Err(invalid(
                &key("repository.baseBranch"),
                format!("{b:?} is not a valid branch name"),
            ));
        }
        if self.claim.transition.trim().is_empty() {
            return Err(invalid(&key("claim.transition"), "is empty"));
        }
        for (list, name) in [
            (&self.claim.add_labels, "addLabels"),
            (&self.claim.remove_labels, "removeLabels"),
        ] {
            for (i, l) in list.iter().enumerate() {
                if !is_label(l) {
                    return Err(invalid(
                        &key(&format!("claim.{name}[{i}]")),
                        format!("{l:?} is not a Jira label"),
                    ));
                }
            }
        }
        for (label, name) in [
            (&self.skip_labels.no_repository, "noRepository"),
            (&self.skip_labels.not_allowed, "notAllowed"),
        ] {
            if !is_label(label) {
                return Err(invalid(
                    &key(&format!("skipLabels.{name}")),
                    format!("{label:?} is not a Jira label"),
                ));
            }
        }
        if self.poll_interval_seconds == 0 || self.poll_interval_seconds > 86_400 {
            return Err(invalid(
                &key("pollIntervalSeconds"),
                "must be between 1 and 86400",
            ));
        }
        if self.max_tickets_per_poll == 0 {
            return Err(invalid(&key("maxTicketsPerPoll"), "must be at least 1"));
        }
        if self.max_in_flight == 0 {
            return Err(invalid(&key("maxInFlight"), "must be at least 1"));
        }
        if !(1_000..=200_000).contains(&self.max_prompt_chars) {
            return Err(invalid(
                &key("maxPromptChars"),
                "must be between 1000 and 200000",
            ));
        }
        Ok(())
    }
}

/// Validates the whole list: each source, and unique names.
pub fn validate_sources(sources: &[SourceConfig], section: &str) -> Result<(), InvalidConfig> {
    for (i, source) in sources.iter().enumerate() {
        let at = format!("{section}[{i}]");
        source.validate(&at)?;
        if sources[..i].iter().any(|s| s.name == source.name) {
            return Err(invalid(
                &format!("{at}.name"),
                format!("{:?} is used by another source", source.name),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> SourceConfig {
        serde_saphyr::from_str(yaml).expect("parses")
    }

    #[test]
    fn defaults_are_documented_values() {
        let s = parse("name: ops\nproject: OPS\nlabel: recac-agent\nnamespace: agents\n");
        assert_eq!(s.poll_interval_seconds, 30);
        assert_eq!(s.claim.transition, "In Progress");
        assert!(s.claim.assign);
        assert!(s.repository.from_description);
        assert_eq!(s.validate("sources[0]"), Ok(()));
    }

    #[test]
    fn bad_values_name_their_key() {
        let base = "name: ops\nnamespace: agents\n";
        for (extra, key) in [
            ("project: OPS\n", "sources[0].label"),
            ("jql: \"\"\n", "sources[0].jql"),
            ("jql: x\nproject: OPS\nlabel: l\n", "sources[0].jql"),
            ("project: ops\nlabel: l\n", "sources[0].project"),
            ("project: OPS\nlabel: \"a b\"\n", "sources[0].label"),
            (
                "project: OPS\nlabel: l\npollIntervalSeconds: 0\n",
                "sources[0].pollIntervalSeconds",
            ),
            (
                "project: OPS\nlabel: l\nrepository:\n  default: http://x/y\n",
                "sources[0].repository.default",
            ),
            (
                "project: OPS\nlabel: l\nrepository:\n  allowed: [\"\"]\n",
                "sources[0].repository.allowed[0]",
            ),
            (
                "project: OPS\nlabel: l\ntemplate:\n  maxRetries: 11\n",
                "sources[0].template.maxRetries",
            ),
            (
                "project: OPS\nlabel: l\ntemplate:\n  secretRefs: [Bad_Name]\n",
                "sources[0].template.secretRefs[0]",
            ),
            (
                "project: OPS\nlabel: l\nclaim:\n  addLabels: [\"x y\"]\n",
                "sources[0].claim.addLabels[0]",
            ),
            ("project: OPS\nlabel: l\nbudget: {}\n", "sources[0].budget"),
            (
                "project: OPS\nlabel: l\ntemplate:\n  budget: {cost: \"1.2345678\"}\n",
                "sources[0].template.budget.cost",
            ),
            (
                "project: OPS\nlabel: l\ntemplate:\n  budget: {}\n",
                "sources[0].template.budget",
            ),
            (
                "project: OPS\nlabel: l\nbudget: {perDay: {cost: \"1.5\"}}\n",
                "sources[0].budget.perDay.currency",
            ),
            (
                "project: OPS\nlabel: l\nbudget: {perMonth: {cost: \"ten\", currency: USD}}\n",
                "sources[0].budget.perMonth.cost",
            ),
            (
                "project: OPS\nlabel: l\nbudget: {perDay: {tokens: 0}}\n",
                "sources[0].budget.perDay.tokens",
            ),
            (
                "project: OPS\nlabel: l\napproval: {approvedStatus: Approved}\n",
                "sources[0].approval.approvedStatus",
            ),
            (
                "project: OPS\nlabel: l\napproval: {mode: plan, approvedStatus: \" \"}\n",
                "sources[0].approval.approvedStatus",
            ),
            (
                "project: OPS\nlabel: l\napproval: {mode: plan}\ncommands: {enabled: false}\n",
                "sources[0].approval.mode",
            ),
            (
                "project: OPS\nlabel: l\ntemplate:\n  caBundle: {key: ca.crt}\n",
                "sources[0].template.caBundle",
            ),
            (
                "project: OPS\nlabel: l\ntemplate:\n  caBundle: {configMap: a, secret: b}\n",
                "sources[0].template.caBundle",
            ),
            (
                "project: OPS\nlabel: l\ntemplate:\n  caBundle: {secret: Bad_Name}\n",
                "sources[0].template.caBundle",
            ),
            (
                "project: OPS\nlabel: l\ntemplate:\n  caBundle: {configMap: ca, key: a/b}\n",
                "sources[0].template.caBundle.key",
            ),
        ] {
            let s = parse(&format!("{base}{extra}"));
            let err = s.validate("sources[0]").expect_err(extra);
            assert_eq!(err.key, key, "{extra}: {err}");
        }
        let a = parse("name: ops\nnamespace: a\nproject: OPS\nlabel: l\n");
        let err = validate_sources(&[a.clone(), a], "sources").unwrap_err();
        assert_eq!(err.key, "sources[1].name");
    }

    #[test]
    fn a_template_takes_every_field_of_the_agent_spec_and_no_other() {
        let s = parse(
            "name: ops\nnamespace: agents\nproject: OPS\nlabel: l\ntemplate:\n  image: registry/agent:2\n  provider: anthropic\n  model: m\n  command: [recac, start]\n  args: [--verbose]\n  env: [{name: RECAC_TEST_COMMAND, value: make check}]\n  secretRefs: [creds]\n  resources: {limits: {memory: 1Gi}}\n  caBundle: {secret: ops-ca, key: bundle.pem}\n  runtimeClassName: gvisor\n  maxRetries: 1\n",
        );
        s.validate("sources[0]").expect("valid");
        let agent = &s.template.agent;
        assert_eq!(
            agent.command.as_deref(),
            Some(&["recac".to_string(), "start".to_string()][..])
        );
        assert_eq!(agent.env[0].value, "make check");
        assert!(agent.resources.is_some());
        assert_eq!(
            agent.ca_bundle.as_ref().map(|c| c.key.as_str()),
            Some("bundle.pem")
        );
        assert_eq!(s.template.max_retries, Some(1));
        assert_eq!(agent.runtime_class_name.as_deref(), Some("gvisor"));
        let budgeted = parse(
            "name: ops\nnamespace: agents\nproject: OPS\nlabel: l\ntemplate:\n  budget: {tokens: 200000, cost: \"2.50\"}\n",
        );
        budgeted.validate("sources[0]").expect("valid");
        assert_eq!(
            budgeted.template.budget.as_ref().and_then(|b| b.tokens),
            Some(200_000)
        );
        // Every field of the API's AgentSpec is a template key: none can be added to one
        // and forgotten in the other.
        let schema = schemars::schema_for!(AgentSpec);
        let encoded = serde_json::to_value(&s.template).expect("encodes");
        for field in property_names(schema.as_value()) {
            assert!(
                encoded.get(&field).is_some(),
                "template lacks {field}: {encoded}"
            );
        }

        for (template, unknown) in [
            ("  imagee: x\n", "`imagee`"),
            ("  caBundle: {secret: a, keys: b}\n", "`caBundle.keys`"),
            ("  env: [{name: A, vaule: b}]\n", "`env[0].vaule`"),
            ("  resources: {limit: {memory: 1Gi}}\n", "`resources.limit`"),
            ("  budget: {tokenz: 5}\n", "`budget.tokenz`"),
        ] {
            let text =
                format!("name: ops\nnamespace: a\nproject: OPS\nlabel: l\ntemplate:\n{template}");
            let tree: serde_json::Value = serde_saphyr::from_str(&text).expect("yaml");
            let err =
                serde_path_to_error::deserialize::<_, SourceConfig>(tree).expect_err(template);
            assert_eq!(err.path().to_string(), "template", "{template}");
            assert!(
                err.inner().to_string().contains(unknown),
                "{template}: {err}"
            );
        }
    }

    #[test]
    fn approval_takes_a_mode_and_a_status() {
        let s = parse(
            "name: ops\nnamespace: a\nproject: OPS\nlabel: l\napproval: {mode: plan, approvedStatus: Approved}\n",
        );
        s.validate("sources[0]").expect("valid");
        assert_eq!(s.approval.mode, ApprovalMode::Plan);
        assert_eq!(s.approval.approved_status.as_deref(), Some("Approved"));
        let plain = parse("name: ops\nnamespace: a\nproject: OPS\nlabel: l\n");
        assert_eq!(plain.approval.mode, ApprovalMode::None);
        for bad in ["approval: {mode: always}\n", "approval: {mod: plan}\n"] {
            let text = format!("name: ops\nnamespace: a\nproject: OPS\nlabel: l\n{bad}");
            let tree: serde_json::Value = serde_saphyr::from_str(&text).expect("yaml");
            let err = serde_path_to_error::deserialize::<_, SourceConfig>(tree).expect_err(bad);
            assert!(
                err.path().to_string().starts_with("approval"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn webhook_needs_a_secret() {
        let w = WebhookConfig::default();
        assert_eq!(
            w.validate("jiraWebhook").unwrap_err().key,
            "jiraWebhook.secretEnv"
        );
        let w = WebhookConfig {
            secret_env: Some("X".into()),
            path: "/metrics".into(),
            ..Default::default()
        };
        assert_eq!(
            w.validate("jiraWebhook").unwrap_err().key,
            "jiraWebhook.path"
        );
    }
}
