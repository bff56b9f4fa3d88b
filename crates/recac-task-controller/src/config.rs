//! The `controller:` and `agent:` sections of the operator's configuration file.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use recac_api::EnvVarPair;
pub use recac_runtime::config::InvalidConfig;
use recac_runtime::config::{invalid, is_dns_label, is_dns_subdomain};
pub use recac_runtime::spend::{PeriodBudget, PeriodLimit};
use serde::Deserialize;

/// How the task controller runs (the `taskController:` section).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct TaskControllerConfig {
    /// Tasks with a live Job at once, across all watched namespaces; the rest wait
    /// in creation order with a `Queued` condition.
    pub max_concurrent_tasks: usize,
    /// Tasks reconciled in parallel.
    pub workers: u16,
    /// Wait before the first retry, in seconds; doubles per failed attempt.
    pub retry_backoff_seconds: u64,
    /// The longest wait between attempts, in seconds.
    pub max_retry_backoff_seconds: u64,
    /// How often a queued task checks for a free slot, in seconds (a safety net: a freed
    /// slot wakes the next task at once).
    pub queue_poll_seconds: u64,
    /// What the tasks of a namespace may spend per UTC day and month: once spent, no new
    /// attempt starts there until the period rolls over (see [`crate::namespace_budget`]).
    pub namespace_budgets: Vec<NamespaceBudget>,
}

/// One entry of `taskController.namespaceBudgets`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NamespaceBudget {
    pub namespace: String,
    /// Per UTC day (the same shape as a source's `budget.perDay`).
    #[serde(default)]
    pub per_day: Option<PeriodLimit>,
    /// Per UTC calendar month.
    #[serde(default)]
    pub per_month: Option<PeriodLimit>,
}

impl NamespaceBudget {
    /// The limits, as the shared spend ledger reads them.
    pub fn limits(&self) -> PeriodBudget {
        PeriodBudget {
            per_day: self.per_day.clone(),
            per_month: self.per_month.clone(),
        }
    }
}

impl Default for TaskControllerConfig {
    fn default() -> Self {
        Self {
            max_concurrent_tasks: 10,
            workers: 4,
            retry_backoff_seconds: 30,
            max_retry_backoff_seconds: 900,
            queue_poll_seconds: 60,
            namespace_budgets: Vec::new(),
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
    /// Secrets (in the task's namespace) mounted read-only into every agent; the agent reads
    /// each key as a setting and redacts every value.
    pub secret_refs: Vec<String>,
    /// Secret keys that may be passed to the commands the model runs (tests, tools); every
    /// other Secret key is withheld from them.
    pub secret_env_allow: Vec<String>,
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
    /// The hosts (`host[:port]`) or organisations (`host/org`) the agent's git token is for:
    /// git sends it only over HTTPS to a repository within one of them. Sources without
    /// `repository.allowed` accept repositories from ticket text only on these hosts.
    pub git_credential_hosts: Vec<String>,
    /// Seconds an agent pod has between SIGTERM (suspend, delete, deadline) and SIGKILL: the
    /// agent stops its work, commits and pushes what it has and writes its result in it.
    pub termination_grace_period_seconds: i64,
    /// Extra certificate authorities (a private CA of an internal git server or model
    /// endpoint) that git and the model client trust besides the image's: a key of a
    /// ConfigMap or Secret in the task's namespace, mounted read-only. A task's (or its
    /// source's) `spec.agent.caBundle` replaces it for that task.
    pub ca_bundle: Option<CaBundleRef>,
    /// How the agent's git reaches `ssh://` and `git@host:path` repositories.
    pub ssh: AgentSsh,
    /// Whether the task's Secrets are mounted only into a sidecar, the secret broker, which
    /// runs as another user and hands them to the agent once, so that the commands the model
    /// runs (the agent's children, of its user) cannot read the Secret files.
    pub secret_broker: SecretBroker,
    /// Seconds before a task's deadline (`RECAC_DEADLINE`: its Job's creation plus the
    /// task's `timeoutSeconds`) at which the agent stops its work to commit, push and report
    /// what it has (`RECAC_DEADLINE_MARGIN_SECONDS`), so that an attempt cut short by its
    /// deadline leaves its work on the branch for the retry. 0 to 3600, default 120; a task
    /// gets at most a quarter of its `timeoutSeconds`.
    pub deadline_margin_seconds: i64,
    /// The price table: what a provider's model costs per million input and output tokens,
    /// one entry per provider and model: `{provider, model, inputPerMillion,
    /// outputPerMillion, currency}`, the prices decimal numbers (at most 6 decimal places,
    /// such as "2.50") and the currency a code of three capital letters (such as USD). The
    /// agent gets its model's price (`RECAC_PRICE_*`, `RECAC_BUDGET_CURRENCY`) to count its
    /// cost, the operator prices the usage agents report without a cost, and a task with
    /// `spec.budget.cost` needs a price for its model (else it fails, reason
    /// `BudgetUnpriced`, before it runs). Default: empty.
    pub prices: Vec<PriceEntry>,
    /// What agent pods may reach on the network (`agent.egress`).
    pub egress: AgentEgress,
    /// The RuntimeClass of agent pods (a sandboxed runtime such as gVisor or Kata that the
    /// cluster offers); a task's `spec.agent.runtimeClassName` replaces it. Default: unset
    /// (the cluster's default runtime).
    pub runtime_class_name: Option<String>,
}

/// The `agent.egress:` section: the network of agent pods.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct AgentEgress {
    /// `open` (no proxy, no NetworkPolicy) or `allowList` (agents reach only the hosts of
    /// their allow-list, by name, through the egress proxy; a NetworkPolicy per agent pod
    /// denies all other egress and all ingress). Default when the key is absent: `open`, so
    /// that a configuration written before it keeps its behaviour; the shipped manifests and
    /// the Helm chart set `allowList`.
    pub mode: recac_api::egress_policy::EgressMode,
    /// The egress proxy's URL as agent pods reach it, `http://host:port` (for example
    /// `http://recac-egress.recac-system.svc:3128`). Required with `allowList`.
    pub proxy: Option<String>,
    /// Where the proxy's pods run: the agent pods' NetworkPolicy allows egress to them only.
    /// Required with `allowList`.
    pub proxy_pods: ProxyPods,
    /// The cluster's DNS, the only other destination (port 53) the agent pods'
    /// NetworkPolicy allows.
    pub dns: DnsPeers,
    /// What every task may reach: host names (`github.com`), wildcards (`*.pypi.org`, any
    /// subdomain), with ports (`host:443`, `host:80,443`; none means 80 and 443), and CIDRs
    /// (`10.0.0.0/8:5432`). The task's repository host and its model's endpoint are always
    /// allowed, and DNS.
    pub allow: Vec<recac_api::egress::EgressRule>,
    /// What a task's `spec.egress.allow` may ask for beyond `allow`.
    pub permit: Vec<recac_api::egress::EgressRule>,
}

impl Default for AgentEgress {
    fn default() -> Self {
        Self {
            mode: recac_api::egress_policy::EgressMode::Open,
            proxy: None,
            proxy_pods: ProxyPods::default(),
            dns: DnsPeers::default(),
            allow: Vec::new(),
            permit: Vec::new(),
        }
    }
}

/// `agent.egress.proxyPods`: the egress proxy's pods.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ProxyPods {
    /// Their namespace.
    pub namespace: Option<String>,
    /// Their labels. Default: `app.kubernetes.io/name: recac-egress`.
    pub labels: BTreeMap<String, String>,
}

impl Default for ProxyPods {
    fn default() -> Self {
        Self {
            namespace: None,
            labels: BTreeMap::from([(
                "app.kubernetes.io/name".to_string(),
                "recac-egress".to_string(),
            )]),
        }
    }
}

/// `agent.egress.dns`: where agent pods may send DNS queries (port 53, UDP and TCP).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct DnsPeers {
    /// The DNS pods' namespace. Default: `kube-system`.
    pub namespace: String,
    /// The DNS pods' labels. Default: `k8s-app: kube-dns` (CoreDNS and kube-dns both carry it).
    pub labels: BTreeMap<String, String>,
    /// Addresses of other resolvers the pods use, such as NodeLocal DNSCache's
    /// `169.254.20.10/32`. Default: none.
    pub cidrs: Vec<String>,
}

impl Default for DnsPeers {
    fn default() -> Self {
        Self {
            namespace: "kube-system".into(),
            labels: BTreeMap::from([("k8s-app".to_string(), "kube-dns".to_string())]),
            cidrs: Vec::new(),
        }
    }
}

impl AgentEgress {
    /// The proxy's host and port, from `proxy` (`None` when unset or not an http URL with a host).
    pub fn proxy_address(&self) -> Option<(String, u16)> {
        let url = url::Url::parse(self.proxy.as_deref()?).ok()?;
        if url.scheme() != "http" {
            return None;
        }
        Some((url.host_str()?.to_string(), url.port_or_known_default()?))
    }

    fn validate(&self) -> Result<(), InvalidConfig> {
        if self.mode != recac_api::egress_policy::EgressMode::AllowList {
            return Ok(());
        }
        self.validate_proxy()
    }

    /// The keys an allow-list needs (also checked when only a source uses `allowList`).
    pub fn validate_proxy(&self) -> Result<(), InvalidConfig> {
        if !is_dns_subdomain(&self.dns.namespace) {
            return Err(invalid(
                "agent.egress.dns.namespace",
                format!("{:?} is not a namespace name", self.dns.namespace),
            ));
        }
        if self.dns.labels.is_empty() {
            return Err(invalid(
                "agent.egress.dns.labels",
                "must not be empty: an empty selector would allow every pod of the namespace on port 53",
            ));
        }
        for (i, cidr) in self.dns.cidrs.iter().enumerate() {
            if cidr.parse::<ipnet::IpNet>().is_err() {
                return Err(invalid(
                    &format!("agent.egress.dns.cidrs[{i}]"),
                    format!("{cidr:?} is not a CIDR such as 169.254.20.10/32"),
                ));
            }
        }
        let Some(proxy) = &self.proxy else {
            return Err(invalid(
                "agent.egress.proxy",
                "is required with mode allowList: the egress proxy's URL as agent pods reach it, such as http://recac-egress.recac-system.svc:3128",
            ));
        };
        if self.proxy_address().is_none() {
            return Err(invalid(
                "agent.egress.proxy",
                format!("{proxy:?} is not an http://host:port URL"),
            ));
        }
        match &self.proxy_pods.namespace {
            None => {
                return Err(invalid(
                    "agent.egress.proxyPods.namespace",
                    "is required with mode allowList: the namespace of the egress proxy's pods",
                ));
            }
            Some(ns) if !is_dns_subdomain(ns) => {
                return Err(invalid(
                    "agent.egress.proxyPods.namespace",
                    format!("{ns:?} is not a namespace name"),
                ));
            }
            Some(_) => {}
        }
        if self.proxy_pods.labels.is_empty() {
            return Err(invalid(
                "agent.egress.proxyPods.labels",
                "must not be empty: an empty selector would allow every pod of the namespace",
            ));
        }
        Ok(())
    }
}

/// One entry of `agent.prices`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PriceEntry {
    /// The provider, as tasks name it (`openai`, `anthropic`).
    pub provider: String,
    /// The model, as the provider spells it.
    pub model: String,
    /// The price of a million input (prompt) tokens, a decimal number in `currency`.
    pub input_per_million: Decimal,
    /// The price of a million output (completion) tokens, a decimal number in `currency`.
    pub output_per_million: Decimal,
    /// The currency: three capital letters, such as USD or EUR.
    pub currency: String,
}

/// A decimal number as written in the configuration file: quoted (`"2.50"`), or a plain
/// YAML number, kept as text and checked (and turned into micro-units) by the validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decimal(pub String);

impl<'de> Deserialize<'de> for Decimal {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Text(String),
            Whole(u64),
            Fraction(f64),
        }
        Ok(Decimal(match Written::deserialize(deserializer)? {
            Written::Text(text) => text,
            Written::Whole(n) => n.to_string(),
            // The shortest text that reads back as the same float: what was written.
            Written::Fraction(x) => x.to_string(),
        }))
    }
}

/// The `agent.secretBroker:` section: the `secrets` sidecar of agent pods whose task names
/// Secrets.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct SecretBroker {
    /// On: the Secrets are mounted only into the broker (a native sidecar, `recac
    /// secret-broker`), which hands them to the agent over a unix socket once. Off: they are
    /// mounted into the agent's container, where the commands the model runs can read them.
    pub enabled: bool,
    /// The non-root user the broker runs as; not `agent.runAsUser`, so that the agent's user
    /// (and so the commands the model runs) can neither read its files nor its memory.
    pub run_as_user: i64,
    /// CPU and memory for the broker's container.
    pub resources: ResourceRequirements,
}

impl Default for SecretBroker {
    fn default() -> Self {
        let quantity = |q: &str| Quantity(q.to_string());
        Self {
            enabled: true,
            run_as_user: 65_533,
            resources: ResourceRequirements {
                requests: Some(BTreeMap::from([
                    ("cpu".to_string(), quantity("10m")),
                    ("memory".to_string(), quantity("16Mi")),
                ])),
                limits: Some(BTreeMap::from([("memory".to_string(), quantity("128Mi"))])),
                ..Default::default()
            },
        }
    }
}

/// The `agent.ssh:` section.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AgentSsh {
    /// The SSH host keys the agent accepts (a known_hosts file): one key of a ConfigMap or
    /// Secret in the task's namespace, mounted read-only. Unset: the agent knows no host key,
    /// so every ssh repository fails with a host key error.
    #[serde(default)]
    pub known_hosts: Option<KnownHostsRef>,
}

/// Where the agent's known_hosts file is: one key of a ConfigMap or a Secret.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KnownHostsRef {
    /// The ConfigMap holding the known_hosts lines.
    #[serde(default)]
    pub config_map: Option<String>,
    /// The Secret holding the known_hosts lines.
    #[serde(default)]
    pub secret: Option<String>,
    /// The key holding the known_hosts lines.
    #[serde(default = "default_known_hosts_key")]
    pub key: String,
}

fn default_known_hosts_key() -> String {
    "known_hosts".into()
}

impl From<&recac_api::CaBundleRef> for CaBundleRef {
    fn from(r: &recac_api::CaBundleRef) -> Self {
        Self {
            config_map: r.config_map.clone(),
            secret: r.secret.clone(),
            key: r.key.clone(),
        }
    }
}

/// Where the agent's extra certificate authorities are: one key of a ConfigMap or a Secret.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CaBundleRef {
    /// The ConfigMap holding the PEM bundle.
    #[serde(default)]
    pub config_map: Option<String>,
    /// The Secret holding the PEM bundle.
    #[serde(default)]
    pub secret: Option<String>,
    /// The key holding the PEM bundle.
    #[serde(default = "default_ca_key")]
    pub key: String,
}

fn default_ca_key() -> String {
    "ca.crt".into()
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
            secret_env_allow: Vec::new(),
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
            git_credential_hosts: vec!["github.com".into()],
            termination_grace_period_seconds: 60,
            ca_bundle: None,
            ssh: AgentSsh::default(),
            secret_broker: SecretBroker::default(),
            deadline_margin_seconds: DEFAULT_DEADLINE_MARGIN_SECONDS,
            prices: Vec::new(),
            egress: AgentEgress::default(),
            runtime_class_name: None,
        }
    }
}

/// The default of `agent.deadlineMarginSeconds`.
pub const DEFAULT_DEADLINE_MARGIN_SECONDS: i64 = 120;
/// The largest `agent.deadlineMarginSeconds`.
pub const MAX_DEADLINE_MARGIN_SECONDS: i64 = 3600;

/// The shortest time a finished Job is kept: the operator reads its result first.
pub const MIN_JOB_TTL_SECONDS: i32 = 60;

impl TaskControllerConfig {
    /// Checks every key; `section` is the section's name in the file.
    pub fn validate(&self, section: &str) -> Result<(), InvalidConfig> {
        let key = |name: &str| format!("{section}.{name}");
        if self.max_concurrent_tasks == 0 {
            return Err(invalid(&key("maxConcurrentTasks"), "must be at least 1"));
        }
        if self.workers == 0 {
            return Err(invalid(&key("workers"), "must be at least 1"));
        }
        if self.retry_backoff_seconds == 0 {
            return Err(invalid(&key("retryBackoffSeconds"), "must be at least 1"));
        }
        if self.max_retry_backoff_seconds < self.retry_backoff_seconds {
            return Err(invalid(
                &key("maxRetryBackoffSeconds"),
                format!("must be at least {}", key("retryBackoffSeconds")),
            ));
        }
        if self.queue_poll_seconds == 0 {
            return Err(invalid(&key("queuePollSeconds"), "must be at least 1"));
        }
        for (i, budget) in self.namespace_budgets.iter().enumerate() {
            let at = key(&format!("namespaceBudgets[{i}]"));
            let namespace = &budget.namespace;
            if !is_dns_label(namespace) {
                return Err(invalid(
                    &format!("{at}.namespace"),
                    format!("{namespace:?} is not a namespace name"),
                ));
            }
            if let Some(first) = self.namespace_budgets[..i]
                .iter()
                .position(|b| &b.namespace == namespace)
            {
                return Err(invalid(
                    &format!("{at}.namespace"),
                    format!(
                        "{namespace:?} has a budget already ({}): one budget per namespace",
                        key(&format!("namespaceBudgets[{first}]"))
                    ),
                ));
            }
            budget.limits().validate(&at)?;
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
        if self.secret_broker.run_as_user <= 0 {
            return Err(invalid(
                "agent.secretBroker.runAsUser",
                "must be a non-root user id (1 or more)",
            ));
        }
        if self.secret_broker.enabled && self.secret_broker.run_as_user == self.run_as_user {
            return Err(invalid(
                "agent.secretBroker.runAsUser",
                format!(
                    "must differ from agent.runAsUser ({}): the agent's user, which the commands the model runs share, must not be the broker's",
                    self.run_as_user
                ),
            ));
        }
        if let Some(ca) = &self.ca_bundle {
            validate_file_ref(
                "agent.caBundle",
                ca.config_map.as_deref(),
                ca.secret.as_deref(),
                &ca.key,
            )?;
        }
        if let Some(hosts) = &self.ssh.known_hosts {
            validate_file_ref(
                "agent.ssh.knownHosts",
                hosts.config_map.as_deref(),
                hosts.secret.as_deref(),
                &hosts.key,
            )?;
        }
        if !(10..=3600).contains(&self.termination_grace_period_seconds) {
            return Err(invalid(
                "agent.terminationGracePeriodSeconds",
                "must be between 10 and 3600: the agent needs a few seconds to push its work",
            ));
        }
        for (i, entry) in self.git_credential_hosts.iter().enumerate() {
            recac_api::repo_host::HostScope::parse(entry)
                .map_err(|e| invalid(&format!("agent.gitCredentialHosts[{i}]"), e.to_string()))?;
        }
        for (i, name) in self.secret_env_allow.iter().enumerate() {
            if !is_env_name(name) {
                return Err(invalid(
                    &format!("agent.secretEnvAllow[{i}]"),
                    format!("{name:?} is not an environment variable name"),
                ));
            }
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
        if !(0..=MAX_DEADLINE_MARGIN_SECONDS).contains(&self.deadline_margin_seconds) {
            return Err(invalid(
                "agent.deadlineMarginSeconds",
                format!("must be between 0 and {MAX_DEADLINE_MARGIN_SECONDS}"),
            ));
        }
        let mut priced: Vec<(usize, crate::budget::Price)> = Vec::new();
        for (i, entry) in self.prices.iter().enumerate() {
            let price = crate::budget::Price::from_entry(entry)
                .map_err(|(key, message)| invalid(&format!("agent.prices[{i}].{key}"), message))?;
            if let Some((first, _)) = priced
                .iter()
                .find(|(_, p)| p.provider == price.provider && p.model == price.model)
            {
                return Err(invalid(
                    &format!("agent.prices[{i}]"),
                    format!(
                        "prices {}/{} again (agent.prices[{first}] already does): one price per provider and model",
                        price.provider, price.model
                    ),
                ));
            }
            priced.push((i, price));
        }
        if let Some(class) = &self.runtime_class_name
            && !is_dns_subdomain(class)
        {
            return Err(invalid(
                "agent.runtimeClassName",
                format!("{class:?} is not a RuntimeClass name"),
            ));
        }
        self.egress.validate()
    }
}

/// Checks a reference to one key of a ConfigMap or a Secret; `at` is its key path.
pub fn validate_file_ref(
    at: &str,
    config_map: Option<&str>,
    secret: Option<&str>,
    key: &str,
) -> Result<(), InvalidConfig> {
    match (config_map, secret) {
        (Some(name), None) | (None, Some(name)) if is_dns_subdomain(name) => {}
        (Some(_), Some(_)) | (None, None) => {
            return Err(invalid(at, "name exactly one of configMap or secret"));
        }
        (Some(name), None) | (None, Some(name)) => {
            return Err(invalid(
                at,
                format!("{name:?} is not a ConfigMap or Secret name"),
            ));
        }
    }
    let key_ok = !key.is_empty()
        && key.len() <= 253
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !key_ok {
        return Err(invalid(
            &format!("{at}.key"),
            format!("{key:?} is not a ConfigMap or Secret key"),
        ));
    }
    Ok(())
}

fn is_env_name(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(yaml: &str) -> Result<AgentDefaults, String> {
        let agent: AgentDefaults = serde_saphyr::from_str(yaml).map_err(|e| e.to_string())?;
        agent.validate().map_err(|e| e.to_string())?;
        Ok(agent)
    }

    fn task_controller(yaml: &str) -> Result<TaskControllerConfig, String> {
        let config: TaskControllerConfig =
            serde_saphyr::from_str(yaml).map_err(|e| e.to_string())?;
        config
            .validate("taskController")
            .map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn namespace_budgets_are_checked_by_key() {
        let ok = task_controller(
            "namespaceBudgets:\n  - {namespace: team-a, perDay: {tokens: 100000}}\n  - namespace: team-b\n    perMonth: {cost: \"250.00\", currency: EUR}\n",
        )
        .expect("valid");
        assert_eq!(ok.namespace_budgets.len(), 2);
        assert_eq!(
            ok.namespace_budgets[0].limits().per_day,
            Some(PeriodLimit {
                tokens: Some(100_000),
                ..Default::default()
            })
        );
        assert!(
            task_controller("{}\n")
                .expect("valid")
                .namespace_budgets
                .is_empty()
        );
        for (yaml, at, says) in [
            (
                "namespaceBudgets:\n  - {namespace: team-a, perDay: {tokens: 1}}\n  - {namespace: team-a, perMonth: {tokens: 5}}\n",
                "`taskController.namespaceBudgets[1].namespace`",
                "taskController.namespaceBudgets[0]",
            ),
            (
                "namespaceBudgets:\n  - {namespace: Team_A, perDay: {tokens: 1}}\n",
                "`taskController.namespaceBudgets[0].namespace`",
                "not a namespace name",
            ),
            (
                "namespaceBudgets:\n  - {namespace: team-a}\n",
                "`taskController.namespaceBudgets[0]`",
                "neither perDay nor perMonth",
            ),
            (
                "namespaceBudgets:\n  - {namespace: team-a, perDay: {}}\n",
                "`taskController.namespaceBudgets[0].perDay`",
                "neither tokens nor cost",
            ),
            (
                "namespaceBudgets:\n  - {namespace: team-a, perMonth: {cost: \"1.5\"}}\n",
                "`taskController.namespaceBudgets[0].perMonth.currency`",
                "required with cost",
            ),
            (
                "namespaceBudgets:\n  - {namespace: team-a, perDay: {tokens: 0}}\n",
                "`taskController.namespaceBudgets[0].perDay.tokens`",
                "at least 1",
            ),
        ] {
            let err = task_controller(yaml).expect_err(yaml);
            assert!(err.contains(at) && err.contains(says), "{yaml}: {err}");
        }
        let err = task_controller("namespaceBudgets:\n  - {namespace: a, perWeek: {tokens: 1}}\n")
            .expect_err("unknown key");
        assert!(err.contains("perWeek"), "{err}");
    }

    #[test]
    fn ssh_known_hosts_and_ca_bundles_are_checked_by_key() {
        let ok = agent("ssh:\n  knownHosts: {configMap: git-hosts}\n").expect("valid");
        assert_eq!(
            ok.ssh.known_hosts,
            Some(KnownHostsRef {
                config_map: Some("git-hosts".into()),
                secret: None,
                key: "known_hosts".into(),
            })
        );
        let ok = agent("ssh:\n  knownHosts: {secret: hosts, key: hosts.txt}\n").expect("valid");
        assert_eq!(
            ok.ssh.known_hosts.map(|k| (k.secret, k.key)),
            Some((Some("hosts".into()), "hosts.txt".into()))
        );
        for (yaml, at) in [
            ("ssh:\n  knownHosts: {key: k}\n", "agent.ssh.knownHosts"),
            (
                "ssh:\n  knownHosts: {configMap: a, secret: b}\n",
                "agent.ssh.knownHosts",
            ),
            (
                "ssh:\n  knownHosts: {configMap: Bad_Name}\n",
                "agent.ssh.knownHosts",
            ),
            (
                "ssh:\n  knownHosts: {configMap: a, key: 'a/b'}\n",
                "agent.ssh.knownHosts.key",
            ),
            ("caBundle: {secret: ca, key: ''}\n", "agent.caBundle.key"),
            ("caBundle: {}\n", "agent.caBundle"),
        ] {
            let err = agent(yaml).expect_err(yaml);
            assert!(err.contains(at), "{yaml}: {err}");
        }
        // Unknown keys stop start-up too.
        let err = agent("ssh:\n  knownHost: {configMap: a}\n").expect_err("typo");
        assert!(err.contains("knownHost"), "{err}");
    }

    #[test]
    fn the_secret_broker_is_on_by_default_under_its_own_user() {
        let defaults = agent("{}\n").expect("valid");
        assert!(defaults.secret_broker.enabled);
        assert_eq!(defaults.secret_broker.run_as_user, 65_533);
        assert_ne!(defaults.secret_broker.run_as_user, defaults.run_as_user);
        let off = agent("secretBroker: {enabled: false}\n").expect("valid");
        assert!(!off.secret_broker.enabled);
        assert_eq!(off.secret_broker.run_as_user, 65_533);
        let own = agent("runAsUser: 1000\nsecretBroker:\n  runAsUser: 1001\n  resources: {limits: {memory: 32Mi}}\n")
            .expect("valid");
        assert_eq!(own.secret_broker.run_as_user, 1001);
        for (yaml, says) in [
            (
                "runAsUser: 65533\n",
                "must differ from agent.runAsUser (65533)",
            ),
            ("secretBroker: {runAsUser: 0}\n", "non-root"),
        ] {
            let err = agent(yaml).expect_err(yaml);
            assert!(
                err.contains("agent.secretBroker.runAsUser") && err.contains(says),
                "{yaml}: {err}"
            );
        }
        let err = agent("secretBroker: {enable: true}\n").expect_err("typo");
        assert!(err.contains("enable"), "{err}");
        // Off, the broker's user is not checked against the agent's.
        agent("runAsUser: 65533\nsecretBroker: {enabled: false}\n").expect("valid");
    }

    #[test]
    fn deadline_margin_and_prices_are_checked_by_key() {
        let defaults = agent("{}\n").expect("valid");
        assert_eq!(defaults.deadline_margin_seconds, 120);
        assert!(defaults.prices.is_empty());
        let ok = agent(
            "deadlineMarginSeconds: 0\nprices:\n  - {provider: openai, model: gpt-x, inputPerMillion: \"2.50\", outputPerMillion: 10, currency: USD}\n  - {provider: anthropic, model: gpt-x, inputPerMillion: 0.15, outputPerMillion: \"0.6\", currency: EUR}\n",
        )
        .expect("valid");
        assert_eq!(ok.deadline_margin_seconds, 0);
        assert_eq!(ok.prices[0].input_per_million, Decimal("2.50".into()));
        assert_eq!(ok.prices[0].output_per_million, Decimal("10".into()));
        assert_eq!(ok.prices[1].input_per_million, Decimal("0.15".into()));
        let pricing = crate::budget::Pricing::from_defaults(&ok);
        assert_eq!(
            pricing
                .find("anthropic", "gpt-x")
                .map(|p| (p.input_per_million, p.output_per_million)),
            Some((150_000, 600_000))
        );
        agent("deadlineMarginSeconds: 3600\n").expect("valid");
        let price = |input: &str, currency: &str| {
            format!(
                "  - {{provider: openai, model: m, inputPerMillion: {input}, outputPerMillion: \"1\", currency: {currency}}}\n"
            )
        };
        for (yaml, at) in [
            ("deadlineMarginSeconds: 3601\n".to_string(), "agent.deadlineMarginSeconds"),
            ("deadlineMarginSeconds: -1\n".to_string(), "agent.deadlineMarginSeconds"),
            (
                format!("prices:\n{}", price("\"1.2345678\"", "USD")),
                "agent.prices[0].inputPerMillion",
            ),
            (
                format!("prices:\n{}", price("\"-1\"", "USD")),
                "agent.prices[0].inputPerMillion",
            ),
            (
                format!("prices:\n{}", price("\"cheap\"", "USD")),
                "agent.prices[0].inputPerMillion",
            ),
            (
                format!("prices:\n{}", price("\"1\"", "dollars")),
                "agent.prices[0].currency",
            ),
            (
                format!("prices:\n{}{}", price("\"1\"", "USD"), price("\"2\"", "EUR")),
                "agent.prices[1]",
            ),
            (
                "prices:\n  - {provider: '', model: m, inputPerMillion: 1, outputPerMillion: 1, currency: USD}\n".to_string(),
                "agent.prices[0].provider",
            ),
        ] {
            let err = agent(&yaml).expect_err(&yaml);
            assert!(err.contains(at), "{yaml}: {err}");
        }
        let err = agent(
            "prices:\n  - {provider: openai, model: m, inputPerMillion: 1, outputPerMillion: 1, currency: USD, cachedPerMillion: 1}\n",
        )
        .expect_err("unknown key");
        assert!(err.contains("cachedPerMillion"), "{err}");
        let err =
            agent("prices:\n  - {provider: openai, model: m, inputPerMillion: 1, currency: USD}\n")
                .expect_err("missing key");
        assert!(err.contains("outputPerMillion"), "{err}");
    }
}
