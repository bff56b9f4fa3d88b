//! What a task's Job and the agent inside it agree on: the environment the
//! operator sets, the exit codes and the result the agent reports.

use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};

/// Environment variable names the operator sets on every agent container.
pub mod env {
    /// The AgentTask's name.
    pub const TASK: &str = "RECAC_TASK";
    /// The attempt number, starting at 1.
    pub const ATTEMPT: &str = "RECAC_ATTEMPT";
    /// The repository to clone.
    pub const REPO_URL: &str = "RECAC_REPO_URL";
    /// The branch new work starts from; empty means the remote's default branch.
    pub const BASE_BRANCH: &str = "RECAC_BASE_BRANCH";
    /// The feature branch decided at dispatch.
    pub const BRANCH: &str = "RECAC_BRANCH";
    /// The ticket key, when the task has a ticket.
    pub const TICKET: &str = "RECAC_TICKET";
    /// What the agent must do.
    pub const PROMPT: &str = "RECAC_PROMPT";
    /// A file holding the prompt (used instead of `RECAC_PROMPT` when set).
    pub const PROMPT_FILE: &str = "RECAC_PROMPT_FILE";
    /// The LLM provider: `openai` or `anthropic`.
    pub const PROVIDER: &str = "RECAC_PROVIDER";
    /// The model name.
    pub const MODEL: &str = "RECAC_MODEL";
    /// When the Job's deadline stops the pod at the earliest (RFC 3339): the task's
    /// `timeoutSeconds` after the Job was created.
    pub const DEADLINE: &str = "RECAC_DEADLINE";
    /// How many seconds before [`DEADLINE`] the agent ends its work, to commit and push what
    /// it has and report a `partial` result (the operator's `agent.deadlineMarginSeconds`).
    pub const DEADLINE_MARGIN_SECONDS: &str = "RECAC_DEADLINE_MARGIN_SECONDS";
    /// What is left of the task's budget (its `spec.budget` less what its earlier attempts
    /// spent): input and output tokens together, input tokens, output tokens, and a cost (a
    /// decimal number in [`BUDGET_CURRENCY`]). Each unset: no such limit. The agent stops at
    /// the first it reaches, pushes its work so far, and reports `partial` with cause `budget`.
    pub const BUDGET_TOKENS: &str = "RECAC_BUDGET_TOKENS";
    pub const BUDGET_INPUT_TOKENS: &str = "RECAC_BUDGET_INPUT_TOKENS";
    pub const BUDGET_OUTPUT_TOKENS: &str = "RECAC_BUDGET_OUTPUT_TOKENS";
    pub const BUDGET_COST: &str = "RECAC_BUDGET_COST";
    pub const BUDGET_CURRENCY: &str = "RECAC_BUDGET_CURRENCY";
    /// The task's model's price from the operator's price table (decimal numbers per million
    /// tokens, in [`BUDGET_CURRENCY`]), so the agent can count its cost as it goes.
    pub const PRICE_INPUT_PER_MILLION: &str = "RECAC_PRICE_INPUT_PER_MILLION";
    pub const PRICE_OUTPUT_PER_MILLION: &str = "RECAC_PRICE_OUTPUT_PER_MILLION";
    /// `plan` for a planning run (`spec.approval: plan`): the agent writes a plan and
    /// changes, commits and pushes nothing; it reports outcome `planned` with the plan.
    /// Unset: the agent does the work.
    pub const MODE: &str = "RECAC_MODE";
    /// Where the result JSON is written.
    pub const RESULT_PATH: &str = "RECAC_RESULT_PATH";
    /// The folder under which each Secret named in `secretRefs` is mounted read-only as
    /// `<folder>/<secret-name>/<key>`. The agent reads every key at start: a key named like an
    /// environment variable becomes a setting, and every value is redacted from all output.
    pub const SECRETS_DIR: &str = "RECAC_SECRETS_DIR";
    /// The unix socket of the pod's secret broker (the `secrets` sidecar, which alone mounts
    /// the task's Secrets): the agent reads the Secrets from it, once, at start, instead of
    /// from `RECAC_SECRETS_DIR`. The broker listens on it (and reads `RECAC_SECRETS_DIR`).
    pub const SECRETS_SOCKET: &str = "RECAC_SECRETS_SOCKET";
    /// Comma-separated names of Secret keys that may be passed to the commands the model runs
    /// (tests, tool commands, an external agent CLI); every other one is withheld. Empty or
    /// unset: none.
    pub const SECRET_ENV_ALLOW: &str = "RECAC_SECRET_ENV_ALLOW";
    /// Comma-separated `host[:port][/organisation]` scopes the git token is for (the
    /// operator's `agent.gitCredentialHosts`): git gets the token only over HTTPS, only for a
    /// repository within one of them; `none`: no host. Unset: the host of the GitHub API's web UI.
    pub const GIT_CREDENTIAL_HOSTS: &str = "RECAC_GIT_CREDENTIAL_HOSTS";
    /// The folder the agent clones into (empty or absent), inside the workspace volume.
    pub const WORKSPACE: &str = "RECAC_WORKSPACE";
    /// A PEM file of extra certificate authorities that git and the model client trust
    /// besides the system's (a private CA of an internal git server or model endpoint).
    pub const CA_BUNDLE: &str = "RECAC_CA_BUNDLE";
    /// A known_hosts file (the operator's `agent.ssh.knownHosts`): the host keys ssh accepts
    /// for `ssh://` and `git@host:path` repositories. ssh never accepts a host key it does
    /// not know.
    pub const SSH_KNOWN_HOSTS: &str = "RECAC_SSH_KNOWN_HOSTS";
    /// The egress proxy the pod's traffic goes through (with the operator's egress
    /// allow-list on; the standard proxy variables carry it too). At its end the agent asks
    /// it what it refused this pod ([`crate::egress::BLOCKED_PATH`]) and reports that.
    pub const EGRESS_PROXY: &str = "RECAC_EGRESS_PROXY";
}

/// Names of Secret keys the agent reads from the task's Secrets (`secretRefs`).
pub mod secret_keys {
    /// The private key (OpenSSH or PEM, without a passphrase) git uses for `ssh://` and
    /// `git@host:path` repositories on the hosts of `RECAC_GIT_CREDENTIAL_HOSTS`.
    pub const SSH_PRIVATE_KEY: &str = "RECAC_SSH_PRIVATE_KEY";
}

/// Exit codes of `recac start`.
pub mod exit_code {
    /// The work is done and pushed.
    pub const SUCCESS: i32 = 0;
    /// A failure worth another attempt (network trouble, a flaky test run, a rate limit).
    pub const RETRYABLE: i32 = 1;
    /// The agent gave up: another attempt would fail the same way (bad repository, refused
    /// credentials, the model declared the task impossible). The operator does not retry.
    pub const GAVE_UP: i32 = 3;
}

/// The agent container's name in every agent pod.
pub const CONTAINER_NAME: &str = "agent";

/// The secret broker's container (a native sidecar: an init container with
/// `restartPolicy: Always`) in agent pods whose task names Secrets.
pub const BROKER_CONTAINER_NAME: &str = "secrets";

/// Kubernetes keeps at most this many bytes of a container's termination message.
pub const TERMINATION_MESSAGE_LIMIT: usize = 4096;

/// The value of [`env::MODE`] for a planning run.
pub const MODE_PLAN: &str = "plan";

/// The first words of the prompt the agent gives its model in a planning run (a model
/// simulator tells a planning conversation by them).
pub const PLANNING_MARKER: &str = "[recac: planning run]";

/// The longest plan an agent reports, in bytes: the result, plan included, must fit the
/// termination message.
pub const MAX_PLAN_BYTES: usize = 3000;

/// How an agent run ended.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// Work committed and pushed (tests passed or none were found).
    Succeeded,
    /// Work pushed, but the tests failed.
    TestsFailed,
    /// The engine produced no change.
    NoChanges,
    /// A failure worth another attempt.
    Failed,
    /// A failure another attempt would repeat.
    GaveUp,
    /// A planning run wrote its plan (in [`AgentResult::plan`]); nothing was pushed.
    Planned,
    /// The work was cut short ([`AgentResult::partial`] says why and what is left); what it
    /// had done is committed and pushed (`commit`) when there was any.
    Partial,
}

/// What cut a run short.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum CutShort {
    /// The deadline (`RECAC_DEADLINE` less the margin, or SIGTERM at the deadline).
    Deadline,
    /// The budget (`RECAC_BUDGET_*`).
    Budget,
}

/// A partial result: why the run ended early, what it did and what is left.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PartialWork {
    pub cause: CutShort,
    /// What the run did (for people).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done: Option<String>,
    /// What is left (for people).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left: Option<String>,
}

/// What one model cost a run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ModelUsage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// A decimal number in `currency`, when the agent knows it (a price or a CLI's report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
}

/// Tokens the engine spent.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TokenUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// The JSON the agent writes to its termination message and logs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AgentResult {
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tests_passed: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_usage: Option<TokenUsage>,
    /// A planning run's plan (at most [`MAX_PLAN_BYTES`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// Why the run was cut short, with outcome [`Outcome::Partial`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<PartialWork>,
    /// What each model cost the run. `None`: the engine reported no usage (an external
    /// CLI that prints none), which is not zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Vec<ModelUsage>>,
    /// The destinations the egress proxy refused this pod (at most [`MAX_BLOCKED_HOSTS`],
    /// the most refused first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_blocked: Vec<crate::egress::BlockedHost>,
}

/// The most refused destinations a result carries (it must fit the termination message).
pub const MAX_BLOCKED_HOSTS: usize = 20;

/// How the agent container of a finished pod ended.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Termination {
    pub exit_code: Option<i32>,
    /// The agent's result, when its termination message is the result JSON.
    pub result: Option<AgentResult>,
    /// The termination message when it is not a result (e.g. a log tail).
    pub raw_message: Option<String>,
}

/// The agent container's termination in the newest finished pod of a Job.
pub fn termination(pods: &[Pod]) -> Option<Termination> {
    let mut finished: Vec<(&Pod, _)> = pods
        .iter()
        .filter_map(|pod| {
            let status = pod.status.as_ref()?;
            let container = status
                .container_statuses
                .as_ref()?
                .iter()
                .find(|c| c.name == CONTAINER_NAME)?;
            let terminated = container.state.as_ref()?.terminated.as_ref()?;
            Some((pod, terminated))
        })
        .collect();
    finished.sort_by_key(|(_, t)| t.finished_at.as_ref().map(|t| t.0));
    let (_, terminated) = finished.last()?;
    let message = terminated.message.clone().filter(|m| !m.trim().is_empty());
    let result = message
        .as_deref()
        .and_then(|m| serde_json::from_str::<AgentResult>(m.trim()).ok());
    Some(Termination {
        exit_code: Some(terminated.exit_code),
        raw_message: if result.is_none() { message } else { None },
        result,
    })
}

/// Whether a termination says the agent gave up.
pub fn gave_up(termination: &Termination) -> bool {
    termination.exit_code == Some(exit_code::GAVE_UP)
}
