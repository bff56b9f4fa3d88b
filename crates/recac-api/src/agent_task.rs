use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Default for `spec.maxRetries`.
pub const DEFAULT_MAX_RETRIES: i32 = 2;
/// Default for `spec.timeoutSeconds`.
pub const DEFAULT_TIMEOUT_SECONDS: i64 = 3600;
/// The longest `spec.prompt` the schema accepts, in characters (at most 4 bytes each, so a
/// prompt always fits the ConfigMap that carries long prompts to the agent).
pub const MAX_PROMPT_CHARS: u32 = 200_000;

/// Annotations other controllers set on a task to steer the task controller.
pub mod annotations {
    /// Set by the source controller on the tasks it creates: `pending` means no Job may be
    /// dispatched before the ticket is claimed in Jira. A successful claim is recorded by the
    /// task controller as the [`CLAIMED`](super::conditions::CLAIMED) condition in status
    /// (the annotation stays `pending`, which saves a write per ticket); `claimed` is what
    /// earlier versions wrote. `lost` when someone else took the ticket first (the task ends
    /// Failed with reason `ClaimLost`, never run); `unavailable` when the ticket is still free
    /// but its workflow offers the bot no claim transition (reason `ClaimUnavailable`, never
    /// run; `recac.io/claim-message` says why).
    pub const CLAIM: &str = "recac.io/claim";
    pub const CLAIM_PENDING: &str = "pending";
    pub const CLAIM_CLAIMED: &str = "claimed";
    pub const CLAIM_LOST: &str = "lost";
    pub const CLAIM_UNAVAILABLE: &str = "unavailable";
    /// Why a claim ended as it did, in words.
    pub const CLAIM_MESSAGE: &str = "recac.io/claim-message";
    /// Set by the source controller on a run that a command in a ticket comment started
    /// (a follow-up or `retry`): the comment's id. A command acts once: a task with its id
    /// exists.
    pub const COMMAND: &str = "recac.io/command";
    /// Set by the source controller when an allowed user asked on the ticket to stop: the
    /// comment's id. The task controller stops the run's Job (its pod gets SIGTERM, so the
    /// agent pushes what it has) and ends the task Failed with reason
    /// [`STOPPED`](super::reasons::STOPPED), without retries.
    pub const STOP: &str = "recac.io/stop";
    /// Who asked to stop, for people (a display name).
    pub const STOP_BY: &str = "recac.io/stop-by";
    /// The decision on a planning run's plan (`spec.approval: plan`), set by the source
    /// controller when an allowed user answers on the ticket, or by a person with
    /// `kubectl annotate`: [`APPROVED`] ends the task `Succeeded` (reason
    /// [`PLAN_APPROVED`](super::reasons::PLAN_APPROVED)), [`REJECTED`] ends it `Failed`
    /// (reason [`PLAN_REJECTED`](super::reasons::PLAN_REJECTED)). Read only while the task
    /// is `AwaitingApproval`.
    pub const APPROVAL: &str = "recac.io/approval";
    pub const APPROVED: &str = "approved";
    pub const REJECTED: &str = "rejected";
    /// Who decided on the plan, for people (a display name).
    pub const APPROVAL_BY: &str = "recac.io/approval-by";
}

/// Condition reasons that more than one controller reads.
pub mod reasons {
    /// `Failed`'s reason for a task stopped by a command on its ticket.
    pub const STOPPED: &str = "Stopped";
    /// `Queued`'s reason while an earlier run of the same ticket is unfinished: runs of a
    /// ticket share its branch, so they run one after another.
    pub const PREVIOUS_RUN: &str = "PreviousRunActive";
    /// `Failed`'s reason when the last attempt was cut short by its deadline (its work so far
    /// pushed when the agent could: `status.partial`).
    pub const DEADLINE_EXCEEDED: &str = "DeadlineExceeded";
    /// `Failed`'s reason when the task's budget is spent (its work so far pushed:
    /// `status.partial`).
    pub const BUDGET_EXHAUSTED: &str = "BudgetExhausted";
    /// `Queued`'s reason while the task's namespace has spent its daily or monthly budget
    /// (`taskController.namespaceBudgets`): no new attempt starts until the period rolls over.
    pub const NAMESPACE_BUDGET_SPENT: &str = "NamespaceBudgetSpent";
    /// `Queued`'s reason while the spend record of the task's namespace cannot be read: no
    /// new attempt starts there until it can.
    pub const NAMESPACE_BUDGET_UNKNOWN: &str = "NamespaceBudgetUnknown";
    /// `Failed`'s reason for a task with `spec.budget.cost` whose model has no price in the
    /// operator's `agent.prices`: it is not run.
    pub const BUDGET_UNPRICED: &str = "BudgetUnpriced";
    /// `Succeeded`'s reason for a planning run whose plan was approved.
    pub const PLAN_APPROVED: &str = "PlanApproved";
    /// `Failed`'s reason for a planning run whose plan was rejected.
    pub const PLAN_REJECTED: &str = "PlanRejected";
    /// `Failed`'s reason for a task whose `spec.egress` asks for a destination that the
    /// operator neither allows nor permits for it (or that is not an allow-list entry).
    pub const EGRESS_NOT_PERMITTED: &str = "EgressNotPermitted";
}

/// Labels that more than one controller reads.
pub mod labels {
    /// The ticket a task works on (set by the source on the tasks it creates).
    pub const TICKET: &str = "recac.io/ticket";
    /// The run number of the task within its ticket.
    pub const RUN: &str = "recac.io/run";
}

/// Condition types that more than one controller reads.
pub mod conditions {
    /// The task's ticket was claimed in Jira by the source that created it (True), written
    /// by the task controller with the task's first status.
    pub const CLAIMED: &str = "Claimed";
    /// A planning run (`spec.approval: plan`) wrote its plan (True, reason `PlanWritten`):
    /// the plan is in `status.plan`.
    pub const PLAN_READY: &str = "PlanReady";
}

/// One AI coding-agent run for one ticket or prompt: the operator turns it into a Job per
/// attempt and records the outcome in status.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "recac.io",
    version = "v1alpha1",
    kind = "AgentTask",
    namespaced,
    shortname = "at",
    category = "recac",
    status = "AgentTaskStatus",
    derive = "PartialEq",
    doc = "One AI coding-agent run for one ticket or prompt. The operator runs it as a Job per attempt and reports in status.",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase","description":"Where the task is in its life"}"#,
    printcolumn = r#"{"name":"Ticket","type":"string","jsonPath":".spec.ticket.key","description":"The ticket the task works on"}"#,
    printcolumn = r#"{"name":"Retries","type":"integer","jsonPath":".status.retries","description":"Failed attempts so far"}"#,
    printcolumn = r#"{"name":"Branch","type":"string","jsonPath":".status.branch","description":"The feature branch"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = kube::core::Rule::new("has(self.prompt) || has(self.ticket)").message("spec.prompt or spec.ticket is required: a task needs something to work on"))]
#[serde(rename_all = "camelCase")]
pub struct AgentTaskSpec {
    /// What the agent must do, in plain language (at most 200000 characters). For tasks created
    /// from a Jira ticket this is the ticket's summary and description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 200000))]
    #[x_kube(validation = kube::core::Rule::new("!self.contains('\\u0000')").message("spec.prompt must not contain a NUL character: the agent gets the prompt through its environment, which cannot carry one"))]
    pub prompt: Option<String>,

    /// The ticket this task works on, when it came from a ticket system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<TicketRef>,

    /// The git repository the agent clones, and the branches it uses.
    pub repository: Repository,

    /// How to run the agent. Every field left out takes the operator's configured default.
    // Boxed: most tasks leave it out, and a task cached ten thousand times over should not
    // carry its inline size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<Box<AgentSpec>>,

    /// How many times a failed attempt is retried with a new Job (0 to 10).
    #[serde(default = "default_max_retries")]
    #[schemars(range(min = 0, max = 10))]
    pub max_retries: i32,

    /// Wall-clock limit of one attempt in seconds (60 to 86400); the Job's activeDeadlineSeconds.
    #[serde(default = "default_timeout_seconds")]
    #[schemars(range(min = 60, max = 86400))]
    pub timeout_seconds: i64,

    /// Seconds a finished Job is kept before Kubernetes deletes it (at least 60, so the operator
    /// can read the agent's result first). Unset takes the operator's configured default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 60))]
    pub ttl_seconds_after_finished: Option<i32>,

    /// When true, no new attempt is dispatched and a running Job is suspended.
    #[serde(default)]
    pub suspend: bool,

    /// `plan` makes this task a planning run: the agent reads the repository and writes a
    /// plan (files to change, approach, test plan) without changing or pushing anything; the
    /// plan lands in `status.plan` and the task waits in phase `AwaitingApproval` until the
    /// `recac.io/approval` annotation says `approved` or `rejected`. The implementation is
    /// another task (the source controller creates it when the plan is approved on the
    /// ticket). Unset: the agent does the work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,

    /// The most the task may spend on its model, over all its attempts. The agent gets what
    /// is left and stops at it as at a deadline: its work so far is pushed and the task ends
    /// `Failed` with reason `BudgetExhausted`. Unset: no limit beyond the deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,

    /// The hosts the agent may reach, when the operator runs agents behind its egress
    /// allow-list (`agent.egress.mode: allowList`). Set, the task gets exactly these (plus its
    /// repository's host, its model's endpoint and DNS, always allowed); each entry must be
    /// within what the operator allows or permits for the task's source, or the task fails
    /// with reason `EgressNotPermitted` before any Job. Unset: what the operator allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<TaskEgress>,
}

/// The network destinations a task asks for.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskEgress {
    /// Allow-list entries: `host`, `*.domain` (any subdomain), `host:443`, `host:80,443`,
    /// a CIDR such as `10.0.0.0/8` or `10.0.0.0/8:5432`. No port list means 80 and 443.
    #[serde(default)]
    #[schemars(
        length(max = 64),
        inner(
            length(min = 1, max = 300),
            regex(pattern = r"^[A-Za-z0-9*.:/\[\],-]+$")
        )
    )]
    pub allow: Vec<String>,
}

/// Limits on what a task spends on its model. Each one set is enforced; the first reached
/// ends the work.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[x_kube(validation = kube::core::Rule::new("has(self.tokens) || has(self.inputTokens) || has(self.outputTokens) || has(self.cost)").message("budget sets none of tokens, inputTokens, outputTokens, cost"))]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    /// Input and output tokens together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub tokens: Option<i64>,
    /// Input (prompt) tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub input_tokens: Option<i64>,
    /// Output (completion) tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub output_tokens: Option<i64>,
    /// A cost, as a decimal number in the currency of the operator's price table for the
    /// task's model (`agent.prices`), such as "12.50". A task whose model has no price in
    /// the table cannot be held to a cost: it is refused before it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{1,9}(\.[0-9]{1,6})?$"))]
    pub cost: Option<String>,
}

/// What must be approved before a task's work is pushed.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Approval {
    /// A plan: the task only plans, and waits for its plan to be approved.
    Plan,
}

fn default_max_retries() -> i32 {
    DEFAULT_MAX_RETRIES
}

fn default_timeout_seconds() -> i64 {
    DEFAULT_TIMEOUT_SECONDS
}

/// The ticket system a ticket lives in.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TicketSource {
    /// Atlassian Jira (Cloud or Data Center).
    Jira,
}

/// A reference to the ticket a task works on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TicketRef {
    /// The ticket system.
    pub source: TicketSource,

    /// The ticket's key, such as PROJ-123. Cannot be changed after the task is created.
    #[schemars(regex(pattern = r"^[A-Z][A-Z0-9_]+-[0-9]+$"))]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("ticket.key is immutable"))]
    pub key: String,

    /// A link to the ticket for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// The git repository the agent works in.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[x_kube(validation = kube::core::Rule::new("!has(self.branch) || !has(self.baseBranch) || self.branch != self.baseBranch").message("repository.branch must differ from repository.baseBranch: the agent pushes its work to a feature branch, never to the base branch"))]
#[serde(rename_all = "camelCase")]
pub struct Repository {
    /// The clone URL: https://, ssh://, file:// or git@host:path. Cannot be changed after the
    /// task is created. Credentials never go in the URL: give them through agent.secretRefs.
    #[schemars(regex(
        pattern = r"^(https://[^\s@/]+/\S+|ssh://\S+|file:///\S*|[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:\S+)$"
    ))]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("repository.url is immutable"))]
    pub url: String,

    /// The branch new work starts from. Unset means the remote's default branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_branch: Option<String>,

    /// The feature branch to push to. Unset means recac/<ticket key or task name>.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
}

/// How the agent runs. Unset fields take the operator's configured defaults.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentSpec {
    /// The container image that runs the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// The LLM provider: openai (any OpenAI-compatible API) or anthropic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,

    /// The model name, as the provider spells it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,

    /// The container's command. Unset runs `recac start`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,

    /// Arguments to the command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,

    /// Extra environment variables with plain values. Never put credentials here: use secretRefs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVarPair>,

    /// Names of Secrets in the task's namespace whose keys become the agent's environment
    /// variables (for example OPENAI_API_KEY, RECAC_GIT_TOKEN).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_refs: Vec<String>,

    /// CPU and memory for the agent container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Extra certificate authorities (PEM) that git and the model client trust besides the
    /// image's, for a git server or model endpoint with a private CA: one key of a ConfigMap
    /// or Secret in the task's namespace. Replaces the operator's agent.caBundle for this task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<CaBundleRef>,

    /// The RuntimeClass of the agent's pod, for a sandboxed runtime (gVisor, Kata) the
    /// cluster offers. Unset: the operator's agent.runtimeClassName, else the cluster's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub runtime_class_name: Option<String>,
}

/// One key of a ConfigMap or a Secret in the task's namespace holding PEM certificates.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[x_kube(validation = kube::core::Rule::new("has(self.configMap) != has(self.secret)").message("caBundle names exactly one of configMap or secret"))]
#[serde(rename_all = "camelCase")]
pub struct CaBundleRef {
    /// The ConfigMap holding the bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub config_map: Option<String>,

    /// The Secret holding the bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub secret: Option<String>,

    /// The key holding the bundle (default ca.crt).
    #[serde(default = "default_ca_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// The key of a CA bundle when none is named.
pub const DEFAULT_CA_KEY: &str = "ca.crt";

fn default_ca_key() -> String {
    DEFAULT_CA_KEY.into()
}

/// An environment variable with a plain, non-secret value.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvVarPair {
    /// The variable's name.
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$"))]
    pub name: String,
    /// The variable's value.
    #[serde(default)]
    pub value: String,
}

/// Where a task is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum TaskPhase {
    /// Waiting to be dispatched, queued, or waiting for its Job's pod to start.
    #[default]
    Pending,
    /// The agent's pod is running.
    Running,
    /// The agent finished its work.
    Succeeded,
    /// The last attempt failed and no retries are left, or the agent gave up.
    Failed,
    /// A planning run (`spec.approval: plan`) wrote its plan (`status.plan`), which waits for
    /// approval. No Job runs for it; the `recac.io/approval` annotation ends it.
    AwaitingApproval,
}

impl TaskPhase {
    /// No Job runs for the task any more: Succeeded and Failed are final, and a plan that
    /// waits for approval is the planning run's end (its decision only settles the phase).
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            TaskPhase::Succeeded | TaskPhase::Failed | TaskPhase::AwaitingApproval
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskPhase::Pending => "Pending",
            TaskPhase::Running => "Running",
            TaskPhase::Succeeded => "Succeeded",
            TaskPhase::Failed => "Failed",
            TaskPhase::AwaitingApproval => "AwaitingApproval",
        }
    }
}

/// What the operator observed of a task. Written only by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentTaskStatus {
    /// Where the task is in its life: Pending, Running, Succeeded, Failed or AwaitingApproval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<TaskPhase>,

    /// The current attempt, starting at 1; each attempt is one Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<i32>,

    /// Failed attempts so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<i32>,

    /// The Job of the current attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,

    /// The feature branch the agent pushes to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,

    /// The commit the agent pushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,

    /// The pull request the agent opened or reused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request_url: Option<String>,

    /// The plan a planning run (`spec.approval: plan`) wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,

    /// True when the latest attempt was cut short (its deadline or the budget) after it
    /// pushed its work so far to `branch` at `commit`: a retry or a follow-up continues it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<bool>,

    /// What the task's attempts spent on their models, each attempt counted once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend: Option<Spend>,

    /// The network the latest attempt was given and what it was refused (with the
    /// operator's egress allow-list on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<EgressStatus>,

    /// A human-readable account of the latest transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// When the first attempt was dispatched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,

    /// When the task reached Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,

    /// When a failed attempt's retry may be dispatched (exponential backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_time: Option<Time>,

    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Standard conditions: Ready, Queued, Dispatched, Succeeded, Failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// What was reported back to the ticket system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback: Option<FeedbackStatus>,
}

/// A task's network: what its agent may reach and what the egress proxy refused it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EgressStatus {
    /// Every allow-list entry of the latest attempt, the implicit ones (the repository's
    /// host, the model's endpoint) included; DNS is always allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed: Vec<String>,
    /// The destinations the egress proxy refused in the latest attempt, with how often.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocked: Vec<crate::egress::BlockedHost>,
}

/// What a task's attempts spent, as their agents reported it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Spend {
    /// Per model, summed over the counted attempts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelSpend>,
    /// The attempts counted so far (attempts 1 to `attempts` are in the sums).
    #[serde(default)]
    pub attempts: i32,
    /// Counted attempts whose agent reported no usage (an external agent CLI that prints
    /// none): their spend is not known, which is not zero.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub not_reported: i32,
}

impl Spend {
    /// Input and output tokens over every model.
    pub fn tokens(&self) -> (i64, i64) {
        self.models.iter().fold((0, 0), |(input, output), m| {
            (
                input.saturating_add(m.input_tokens.max(0)),
                output.saturating_add(m.output_tokens.max(0)),
            )
        })
    }

    /// The costs in `currency`, in millionths (`None`: every cost; a cost without a
    /// currency counts in any). Costs in other currencies cannot be converted and are left out.
    pub fn cost_micros(&self, currency: Option<&str>) -> i64 {
        self.models
            .iter()
            .filter(|m| match (currency, m.currency.as_deref()) {
                (Some(wanted), Some(its)) => wanted == its,
                _ => true,
            })
            .filter_map(|m| {
                m.cost
                    .as_deref()
                    .and_then(crate::money::parse_micros_rounded)
            })
            .fold(0i64, i64::saturating_add)
    }
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// What one model cost a task.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpend {
    /// The provider, as the agent was configured (`openai`, `anthropic`, or the CLI's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The model, as the provider spells it.
    pub model: String,
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// The cost, a decimal number in `currency`: from the operator's price table, or as the
    /// agent CLI reported it. Unset when neither knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
}

/// The record of the result reported to the ticket.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeedbackStatus {
    /// The attempt whose result was reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_attempt: Option<i32>,

    /// When it was reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_at: Option<Time>,

    /// The id of the comment posted on the ticket (with live comments: the ticket's status
    /// comment, edited in place).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment_id: Option<String>,

    /// Every report delivered to the ticket, as `<kind>/<attempt>` (kinds: pickedUp, retrying,
    /// suspended, succeeded, failed, cancelled), and `statusComment/<id>` once the ticket's
    /// live status comment is recorded. A report listed here is never posted again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub reported: Vec<String>,

    /// The final report (`<kind>/<attempt>`) whose configured transition and labels were
    /// applied to the ticket (or found impossible; see the TicketUpdated condition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket_updated: Option<String>,
}
