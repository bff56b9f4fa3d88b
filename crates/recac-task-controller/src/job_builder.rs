//! Builds the Job of one attempt: pure, from the task, the attempt, the defaults and the
//! time the controller creates it.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement,
    PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvVar,
    KeyToPath, PodSecurityContext, PodSpec, PodTemplateSpec, SeccompProfile, SecretVolumeSource,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::jiff::Timestamp;
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};
use recac_api::agent_contract::{MODE_PLAN, env, exit_code};
use recac_api::{AgentSpec, AgentTask, Approval};

use crate::budget::{self, Pricing};
use crate::config::{AgentDefaults, CaBundleRef};
use crate::naming;

pub use recac_api::agent_contract::{BROKER_CONTAINER_NAME, CONTAINER_NAME};
/// Where the workspace volume is mounted (also the agent's HOME).
pub const WORKSPACE_PATH: &str = "/workspace";
/// Where the agent clones the repository, inside the workspace volume.
pub const CHECKOUT_PATH: &str = "/workspace/repo";
/// Where the scratch volume is mounted (TMPDIR): the root filesystem is read-only.
pub const SCRATCH_PATH: &str = "/tmp";
/// Where the agent writes its result; Kubernetes copies it into the pod status.
pub const TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";
/// Where each referenced Secret is mounted, as `<dir>/<secret-name>/<key>`.
pub const SECRETS_PATH: &str = "/var/run/recac/secrets";
/// Where the secret broker's folder (an emptyDir: its socket and markers) is mounted, read-write
/// in the broker's container and read-only in the agent's.
pub const BROKER_PATH: &str = "/var/run/recac/broker";
/// The secret broker's socket (`RECAC_SECRETS_SOCKET`).
pub const BROKER_SOCKET: &str = "/var/run/recac/broker/secrets.sock";
/// The broker folder's volume (Secret volumes are all `secret-...`).
const BROKER_VOLUME: &str = "broker";
/// Where a long prompt is mounted from the task's prompt ConfigMap.
pub const PROMPT_PATH: &str = "/var/run/recac/prompt";
/// Where the agent's extra certificate authorities (`agent.caBundle`, or the task's
/// `spec.agent.caBundle`) are mounted.
pub const CA_BUNDLE_PATH: &str = "/var/run/recac/ca";
/// Where the agent's SSH known hosts (`agent.ssh.knownHosts`) are mounted.
pub const SSH_PATH: &str = "/var/run/recac/ssh";
/// The key of the prompt in the prompt ConfigMap.
pub const PROMPT_KEY: &str = "prompt";
/// Prompts longer than this (in bytes) reach the agent as a file, not an environment
/// variable: Linux refuses to start a process with a single environment string over 128 KiB.
pub const PROMPT_ENV_LIMIT: usize = 32 * 1024;

/// Label keys on every Job and pod.
pub mod labels {
    pub const APP: &str = "app";
    pub const APP_VALUE: &str = "recac-agent";
    pub const TASK: &str = recac_runtime::kinds::TASK_LABEL;
    pub const ATTEMPT: &str = "recac.io/attempt";
    pub const TICKET: &str = "recac.io/ticket";
}

/// Variables the operator owns: a task's `spec.agent.env` cannot override them.
const RESERVED_ENV: &[&str] = &[
    env::TASK,
    env::ATTEMPT,
    env::REPO_URL,
    env::BASE_BRANCH,
    env::BRANCH,
    env::TICKET,
    env::RESULT_PATH,
    env::PROMPT,
    env::PROMPT_FILE,
    env::SECRETS_DIR,
    env::SECRETS_SOCKET,
    env::SECRET_ENV_ALLOW,
    env::GIT_CREDENTIAL_HOSTS,
    env::WORKSPACE,
    env::CA_BUNDLE,
    env::SSH_KNOWN_HOSTS,
    env::MODE,
    env::DEADLINE,
    env::DEADLINE_MARGIN_SECONDS,
    env::BUDGET_TOKENS,
    env::BUDGET_INPUT_TOKENS,
    env::BUDGET_OUTPUT_TOKENS,
    env::BUDGET_COST,
    env::BUDGET_CURRENCY,
    env::PRICE_INPUT_PER_MILLION,
    env::PRICE_OUTPUT_PER_MILLION,
];

/// The margin a task's agent gets before its deadline: the operator's
/// `agent.deadlineMarginSeconds`, at most a quarter of the task's `timeoutSeconds`.
pub fn deadline_margin_seconds(defaults: &AgentDefaults, timeout_seconds: i64) -> i64 {
    defaults
        .deadline_margin_seconds
        .min(timeout_seconds / 4)
        .max(0)
}

/// The deadline of a Job created at `created` (whole seconds, RFC 3339): when its
/// `activeDeadlineSeconds` stops the pod at the earliest.
pub fn deadline(created: Timestamp, timeout_seconds: i64) -> String {
    let at = created
        .as_second()
        .checked_add(timeout_seconds)
        .and_then(|second| Timestamp::from_second(second).ok())
        .unwrap_or(Timestamp::MAX);
    at.to_string()
}

/// The task's CA bundle (its `spec.agent.caBundle`, set by a person or its source), else the
/// operator's `agent.caBundle`.
pub fn ca_bundle(agent: &AgentSpec, defaults: &AgentDefaults) -> Option<CaBundleRef> {
    agent
        .ca_bundle
        .as_ref()
        .map(CaBundleRef::from)
        .or_else(|| defaults.ca_bundle.clone())
}

/// The labels of one attempt's Job and pods.
pub fn job_labels(task: &AgentTask, attempt: i32) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (labels::APP.to_string(), labels::APP_VALUE.to_string()),
        (
            labels::TASK.to_string(),
            naming::task_label(&task.name_any()),
        ),
        (labels::ATTEMPT.to_string(), attempt.to_string()),
    ]);
    if let Some(ticket) = &task.spec.ticket {
        labels.insert(labels::TICKET.to_string(), ticket.key.clone());
    }
    labels
}

fn plain(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// [`build_job_at`] for a Job created now (for Jobs made outside the controller: tests and
/// benchmarks).
pub fn build_job(
    task: &AgentTask,
    attempt: i32,
    branch: &str,
    defaults: &AgentDefaults,
    suspend: bool,
) -> Job {
    build_job_at(
        task,
        attempt,
        branch,
        defaults,
        suspend,
        Timestamp::now(),
        &crate::egress::Network::Open,
    )
}

/// The Job for `attempt` of `task`, pushing to `branch`, created at `now` (the agent's
/// deadline counts from it), built from the parts below. The task's status counts what its
/// earlier attempts spent: the agent gets what is left of its budget.
///
/// Nothing compares a built Job with one that exists (an existing Job of the attempt's
/// name is adopted as it is), so its deadline, which depends on `now`, never makes an
/// adopted Job look different. With an allow-list (`network`), the pod carries it for the
/// egress proxy and its agent gets the proxy variables.
pub fn build_job_at(
    task: &AgentTask,
    attempt: i32,
    branch: &str,
    defaults: &AgentDefaults,
    suspend: bool,
    now: Timestamp,
    network: &crate::egress::Network,
) -> Job {
    let agent = task.spec.agent.as_deref().cloned().unwrap_or_default();
    let labels = job_labels(task, attempt);
    let mut annotations = BTreeMap::from([(
        // `kubectl logs` shows the agent, not the broker.
        "kubectl.kubernetes.io/default-container".to_string(),
        CONTAINER_NAME.to_string(),
    )]);
    let mut agent_container = agent_container(task, &agent, attempt, branch, defaults, now);
    if let (Some(rules), Some(proxy)) = (network.rules(), defaults.egress.proxy.as_deref()) {
        let (key, value) = crate::egress::pod_annotation(rules);
        annotations.insert(key, value);
        agent_container
            .env
            .get_or_insert_with(Vec::new)
            .extend(crate::egress::proxy_env(proxy));
    }
    let pod = PodSpec {
        restart_policy: Some("Never".into()),
        // The pod's pause process is PID 1 and reaps what the agent's commands leave behind;
        // the agent handles SIGTERM itself and pushes its work within the grace period.
        share_process_namespace: Some(true),
        termination_grace_period_seconds: Some(defaults.termination_grace_period_seconds),
        automount_service_account_token: Some(defaults.automount_service_account_token),
        service_account_name: defaults.service_account_name.clone(),
        enable_service_links: Some(false),
        security_context: Some(pod_security(defaults)),
        init_containers: broker_on(&agent, defaults)
            .then(|| vec![broker_container(&agent, defaults)]),
        containers: vec![agent_container],
        volumes: Some(volumes(task, &agent, defaults)),
        runtime_class_name: agent
            .runtime_class_name
            .clone()
            .or_else(|| defaults.runtime_class_name.clone()),
        ..Default::default()
    };
    Job {
        metadata: ObjectMeta {
            name: Some(naming::job_name(&task.name_any(), attempt)),
            namespace: task.namespace(),
            labels: Some(labels.clone()),
            owner_references: task.controller_owner_ref(&()).map(|owner| vec![owner]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            completions: Some(1),
            parallelism: Some(1),
            active_deadline_seconds: Some(task.spec.timeout_seconds),
            ttl_seconds_after_finished: Some(
                task.spec
                    .ttl_seconds_after_finished
                    .unwrap_or(defaults.ttl_seconds_after_finished),
            ),
            suspend: Some(suspend),
            pod_failure_policy: Some(pod_failure_policy()),
            pod_replacement_policy: Some("Failed".into()),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(annotations),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// Non-root, no privilege escalation, RuntimeDefault seccomp.
fn pod_security(defaults: &AgentDefaults) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(defaults.run_as_user),
        run_as_group: Some(defaults.run_as_user),
        fs_group: Some(defaults.run_as_user),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Every capability dropped, nothing privileged.
fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        run_as_non_root: Some(true),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The agent container: image and command from the task or the defaults, the contract's
/// environment, Secrets by reference, the workspace and the termination message.
fn agent_container(
    task: &AgentTask,
    agent: &AgentSpec,
    attempt: i32,
    branch: &str,
    defaults: &AgentDefaults,
    now: Timestamp,
) -> Container {
    let mut mounts = vec![
        VolumeMount {
            name: "workspace".into(),
            mount_path: WORKSPACE_PATH.into(),
            ..Default::default()
        },
        VolumeMount {
            name: "scratch".into(),
            mount_path: SCRATCH_PATH.into(),
            ..Default::default()
        },
    ];
    if prompt_needs_file(task) {
        mounts.push(VolumeMount {
            name: "prompt".into(),
            mount_path: PROMPT_PATH.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    if ca_bundle(agent, defaults).is_some() {
        mounts.push(VolumeMount {
            name: "ca-bundle".into(),
            mount_path: CA_BUNDLE_PATH.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    if defaults.ssh.known_hosts.is_some() {
        mounts.push(VolumeMount {
            name: "ssh-known-hosts".into(),
            mount_path: SSH_PATH.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    if broker_on(agent, defaults) {
        // The socket only; the agent's container never mounts the Secrets.
        mounts.push(VolumeMount {
            name: BROKER_VOLUME.into(),
            mount_path: BROKER_PATH.into(),
            read_only: Some(true),
            ..Default::default()
        });
    } else {
        mounts.extend(secret_mounts(agent, defaults));
    }
    Container {
        name: CONTAINER_NAME.to_string(),
        image: Some(
            agent
                .image
                .clone()
                .unwrap_or_else(|| defaults.image.clone()),
        ),
        image_pull_policy: defaults.image_pull_policy.clone(),
        command: Some(
            agent
                .command
                .clone()
                .unwrap_or_else(|| defaults.command.clone()),
        ),
        args: Some(agent.args.clone().unwrap_or_else(|| defaults.args.clone())),
        env: Some(agent_env(task, agent, attempt, branch, defaults, now)),
        resources: Some(
            agent
                .resources
                .clone()
                .unwrap_or_else(|| defaults.resources.clone()),
        ),
        working_dir: Some(WORKSPACE_PATH.to_string()),
        volume_mounts: Some(mounts),
        termination_message_path: Some(TERMINATION_MESSAGE_PATH.into()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(container_security()),
        ..Default::default()
    }
}

/// Each Secret, read-only, at `SECRETS_PATH/<secret>`.
fn secret_mounts(agent: &AgentSpec, defaults: &AgentDefaults) -> Vec<VolumeMount> {
    secret_names(agent, defaults)
        .into_iter()
        .map(|secret| VolumeMount {
            name: secret_volume_name(secret),
            mount_path: format!("{SECRETS_PATH}/{secret}"),
            read_only: Some(true),
            ..Default::default()
        })
        .collect()
}

/// Whether the pod has the secret broker: it is on and the task names Secrets.
pub fn broker_on(agent: &AgentSpec, defaults: &AgentDefaults) -> bool {
    defaults.secret_broker.enabled && !secret_names(agent, defaults).is_empty()
}

/// The broker's command: `recac secret-broker`, with the agent's program when it is `recac`
/// named by its path (the broker runs from the agent's image: the same `recac`, so the two
/// speak the same protocol).
fn broker_command(agent_command: &[String]) -> Vec<String> {
    let program = agent_command
        .first()
        .filter(|p| std::path::Path::new(p).file_name() == Some("recac".as_ref()))
        .cloned()
        .unwrap_or_else(|| "recac".into());
    vec![program, "secret-broker".into()]
}

/// The secret broker: a native sidecar (an init container with `restartPolicy: Always`,
/// started before the agent's container and stopped after it), from the agent's image, as
/// another non-root user in the pod's group (the Secret files are root's, mode 0440, group
/// `fsGroup`), with the same restricted security. It alone mounts the Secrets; it hands them
/// to the agent over a socket in the broker emptyDir once (see `recac_agent::broker`).
fn broker_container(agent: &AgentSpec, defaults: &AgentDefaults) -> Container {
    let command = agent
        .command
        .clone()
        .unwrap_or_else(|| defaults.command.clone());
    let mut mounts = vec![VolumeMount {
        name: BROKER_VOLUME.into(),
        mount_path: BROKER_PATH.into(),
        ..Default::default()
    }];
    mounts.extend(secret_mounts(agent, defaults));
    Container {
        name: BROKER_CONTAINER_NAME.to_string(),
        image: Some(
            agent
                .image
                .clone()
                .unwrap_or_else(|| defaults.image.clone()),
        ),
        image_pull_policy: defaults.image_pull_policy.clone(),
        command: Some(broker_command(&command)),
        restart_policy: Some("Always".into()),
        env: Some(vec![
            plain(env::SECRETS_DIR, SECRETS_PATH),
            plain(env::SECRETS_SOCKET, BROKER_SOCKET),
        ]),
        resources: Some(defaults.secret_broker.resources.clone()),
        volume_mounts: Some(mounts),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(SecurityContext {
            run_as_user: Some(defaults.secret_broker.run_as_user),
            run_as_group: Some(defaults.run_as_user),
            ..container_security()
        }),
        ..Default::default()
    }
}

/// The contract's variables, then the defaults' and the task's plain variables (which
/// cannot replace the operator's own).
fn agent_env(
    task: &AgentTask,
    agent: &AgentSpec,
    attempt: i32,
    branch: &str,
    defaults: &AgentDefaults,
    now: Timestamp,
) -> Vec<EnvVar> {
    let spec = &task.spec;
    let mut env_vars = vec![
        plain(env::TASK, task.name_any()),
        plain(env::ATTEMPT, attempt.to_string()),
        plain(env::REPO_URL, spec.repository.url.clone()),
        plain(
            env::BASE_BRANCH,
            spec.repository.base_branch.clone().unwrap_or_default(),
        ),
        plain(env::BRANCH, branch),
        plain(env::RESULT_PATH, TERMINATION_MESSAGE_PATH),
        plain(env::WORKSPACE, CHECKOUT_PATH),
        // Every file the agent and its tools write lands in an emptyDir.
        plain("HOME", WORKSPACE_PATH),
        plain("TMPDIR", SCRATCH_PATH),
    ];
    if let Some(ticket) = &spec.ticket {
        env_vars.push(plain(env::TICKET, ticket.key.clone()));
    }
    // A planning run only plans: the agent changes and pushes nothing. Reserved above, so
    // no task's env can turn a planning run into one that pushes, or the other way round.
    if spec.approval == Some(Approval::Plan) {
        env_vars.push(plain(env::MODE, MODE_PLAN));
    }
    if let Some(prompt) = &spec.prompt {
        if prompt_needs_file(task) {
            env_vars.push(plain(
                env::PROMPT_FILE,
                format!("{PROMPT_PATH}/{PROMPT_KEY}"),
            ));
        } else {
            env_vars.push(plain(env::PROMPT, prompt.clone()));
        }
    }
    if broker_on(agent, defaults) {
        env_vars.push(plain(env::SECRETS_SOCKET, BROKER_SOCKET));
    } else if !secret_names(agent, defaults).is_empty() {
        env_vars.push(plain(env::SECRETS_DIR, SECRETS_PATH));
    }
    let credential_hosts = if defaults.git_credential_hosts.is_empty() {
        "none".to_string()
    } else {
        defaults.git_credential_hosts.join(",")
    };
    env_vars.push(plain(env::GIT_CREDENTIAL_HOSTS, credential_hosts));
    if let Some(ca) = ca_bundle(agent, defaults) {
        env_vars.push(plain(
            env::CA_BUNDLE,
            format!("{CA_BUNDLE_PATH}/{}", ca.key),
        ));
    }
    if let Some(hosts) = &defaults.ssh.known_hosts {
        env_vars.push(plain(
            env::SSH_KNOWN_HOSTS,
            format!("{SSH_PATH}/{}", hosts.key),
        ));
    }
    if !defaults.secret_env_allow.is_empty() {
        env_vars.push(plain(
            env::SECRET_ENV_ALLOW,
            defaults.secret_env_allow.join(","),
        ));
    }
    if let Some(provider) = agent.provider.as_ref().or(defaults.provider.as_ref()) {
        env_vars.push(plain(env::PROVIDER, provider.clone()));
    }
    if let Some(model) = agent.model.as_ref().or(defaults.model.as_ref()) {
        env_vars.push(plain(env::MODEL, model.clone()));
    }
    env_vars.push(plain(env::DEADLINE, deadline(now, spec.timeout_seconds)));
    env_vars.push(plain(
        env::DEADLINE_MARGIN_SECONDS,
        deadline_margin_seconds(defaults, spec.timeout_seconds).to_string(),
    ));
    for (name, value) in budget::agent_env(task, &Pricing::from_defaults(defaults)) {
        env_vars.push(plain(name, value));
    }
    // Defaults first, then the task's own; a later entry replaces an earlier one by name.
    for var in defaults.env.iter().chain(agent.env.iter()) {
        if RESERVED_ENV.contains(&var.name.as_str()) {
            continue;
        }
        env_vars.retain(|existing| existing.name != var.name);
        env_vars.push(plain(&var.name, var.value.clone()));
    }
    env_vars
}

/// The defaults' and the task's Secrets, each once.
fn secret_names<'a>(agent: &'a AgentSpec, defaults: &'a AgentDefaults) -> Vec<&'a String> {
    let mut names: Vec<&String> = Vec::new();
    for name in defaults.secret_refs.iter().chain(agent.secret_refs.iter()) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// A volume name for a Secret (volume names are DNS labels; Secret names may be longer).
fn secret_volume_name(secret: &str) -> String {
    format!("secret-{}", naming::fit_label(secret, 63 - "secret-".len()))
}

/// Whether the task's prompt reaches the agent as a file from its prompt ConfigMap.
pub fn prompt_needs_file(task: &AgentTask) -> bool {
    task.spec
        .prompt
        .as_ref()
        .is_some_and(|p| p.len() > PROMPT_ENV_LIMIT)
}

/// The ConfigMap that carries a long prompt, owned by the task (deleted with it).
pub fn prompt_config_map(task: &AgentTask) -> Option<ConfigMap> {
    if !prompt_needs_file(task) {
        return None;
    }
    Some(ConfigMap {
        metadata: ObjectMeta {
            name: Some(naming::prompt_config_map_name(&task.name_any())),
            namespace: task.namespace(),
            labels: Some(BTreeMap::from([
                (labels::APP.to_string(), labels::APP_VALUE.to_string()),
                (
                    labels::TASK.to_string(),
                    naming::task_label(&task.name_any()),
                ),
            ])),
            owner_references: task.controller_owner_ref(&()).map(|owner| vec![owner]),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            PROMPT_KEY.to_string(),
            task.spec.prompt.clone().unwrap_or_default(),
        )])),
        ..Default::default()
    })
}

/// The workspace, the prompt file when the prompt is long, and each Secret, read-only (with
/// the broker's folder when the broker has them). Secrets are mounted, not put in the
/// environment, so that the agent knows every value that came from a Secret and can keep each
/// one out of what it prints and reports.
fn volumes(task: &AgentTask, agent: &AgentSpec, defaults: &AgentDefaults) -> Vec<Volume> {
    let mut volumes = vec![
        Volume {
            name: "workspace".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: defaults.workspace_size_limit.clone().map(Quantity),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "scratch".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
    ];
    if prompt_needs_file(task) {
        volumes.push(Volume {
            name: "prompt".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: naming::prompt_config_map_name(&task.name_any()),
                default_mode: Some(0o444),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    if let Some(ca) = ca_bundle(agent, defaults) {
        volumes.push(one_key_volume(
            "ca-bundle",
            ca.config_map.as_deref(),
            ca.secret.as_deref(),
            &ca.key,
        ));
    }
    if let Some(hosts) = &defaults.ssh.known_hosts {
        volumes.push(one_key_volume(
            "ssh-known-hosts",
            hosts.config_map.as_deref(),
            hosts.secret.as_deref(),
            &hosts.key,
        ));
    }
    if broker_on(agent, defaults) {
        volumes.push(Volume {
            name: BROKER_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity("1Mi".into())),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    for secret in secret_names(agent, defaults) {
        volumes.push(Volume {
            name: secret_volume_name(secret),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                default_mode: Some(0o440),
                optional: Some(false),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    volumes
}

/// A volume holding one key of a ConfigMap or a Secret (neither secret nor writable: mode
/// 0444; a missing object or key keeps the pod from starting, which names it).
fn one_key_volume(name: &str, config_map: Option<&str>, secret: Option<&str>, key: &str) -> Volume {
    let items = Some(vec![KeyToPath {
        key: key.to_string(),
        path: key.to_string(),
        ..Default::default()
    }]);
    Volume {
        name: name.into(),
        config_map: config_map.map(|name| ConfigMapVolumeSource {
            name: name.to_string(),
            items: items.clone(),
            default_mode: Some(0o444),
            optional: Some(false),
            ..Default::default()
        }),
        secret: secret.map(|name| SecretVolumeSource {
            secret_name: Some(name.to_string()),
            items: items.clone(),
            default_mode: Some(0o444),
            optional: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Disruptions do not burn the attempt; the agent giving up fails the Job at once.
fn pod_failure_policy() -> PodFailurePolicy {
    PodFailurePolicy {
        rules: vec![
            PodFailurePolicyRule {
                action: "Ignore".into(),
                on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                    type_: "DisruptionTarget".into(),
                    status: Some("True".into()),
                }]),
                ..Default::default()
            },
            PodFailurePolicyRule {
                action: "FailJob".into(),
                on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                    container_name: Some(CONTAINER_NAME.into()),
                    operator: "In".into(),
                    values: vec![exit_code::GAVE_UP],
                }),
                ..Default::default()
            },
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use recac_api::{AgentSpec, AgentTaskSpec, EnvVarPair, Repository, TicketRef, TicketSource};

    fn task() -> AgentTask {
        let mut task = AgentTask::new(
            "fix-login",
            AgentTaskSpec {
                prompt: Some("fix it".into()),
                ticket: Some(TicketRef {
                    source: TicketSource::Jira,
                    key: "PROJ-7".into(),
                    url: None,
                }),
                repository: Repository {
                    url: "https://git.example.com/org/repo.git".into(),
                    base_branch: Some("main".into()),
                    branch: None,
                },
                agent: Some(Box::new(AgentSpec {
                    env: vec![
                        EnvVarPair {
                            name: "RECAC_TEST_COMMAND".into(),
                            value: "make test".into(),
                        },
                        EnvVarPair {
                            name: "RECAC_BRANCH".into(),
                            value: "hijack".into(),
                        },
                    ],
                    secret_refs: vec!["llm-keys".into()],
                    ..Default::default()
                })),
                max_retries: 2,
                timeout_seconds: 600,
                ttl_seconds_after_finished: None,
                suspend: false,
                approval: None,
                budget: None,
                egress: None,
            },
        );
        task.metadata.namespace = Some("team-a".into());
        task.metadata.uid = Some("uid-1".into());
        task
    }

    fn env_value(job: &Job, name: &str) -> Option<String> {
        job.spec.as_ref()?.template.spec.as_ref()?.containers[0]
            .env
            .as_ref()?
            .iter()
            .find(|e| e.name == name)?
            .value
            .clone()
    }

    #[test]
    fn job_carries_names_labels_owner_and_limits() {
        let defaults = AgentDefaults {
            secret_refs: vec!["git-token".into()],
            ..Default::default()
        };
        let job = build_job(&task(), 2, "recac/PROJ-7", &defaults, false);
        assert_eq!(job.metadata.name.as_deref(), Some("fix-login-a2"));
        assert_eq!(job.metadata.namespace.as_deref(), Some("team-a"));
        let labels = job.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels["app"], "recac-agent");
        assert_eq!(labels["recac.io/task"], "fix-login");
        assert_eq!(labels["recac.io/attempt"], "2");
        assert_eq!(labels["recac.io/ticket"], "PROJ-7");
        let owner = &job.metadata.owner_references.clone().unwrap_or_default()[0];
        assert_eq!(owner.kind, "AgentTask");
        assert_eq!(owner.controller, Some(true));

        let spec = job.spec.clone().unwrap_or_default();
        assert_eq!(spec.backoff_limit, Some(0));
        assert_eq!(spec.active_deadline_seconds, Some(600));
        assert_eq!(spec.ttl_seconds_after_finished, Some(86_400));
        let rules = spec.pod_failure_policy.clone().unwrap_or_default().rules;
        assert_eq!(rules[0].action, "Ignore");
        assert_eq!(rules[1].action, "FailJob");
        assert_eq!(
            rules[1].on_exit_codes.as_ref().map(|c| c.values.clone()),
            Some(vec![3])
        );

        let pod = spec.template.spec.clone().unwrap_or_default();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.automount_service_account_token, Some(false));
        let psc = pod.security_context.clone().unwrap_or_default();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(
            psc.seccomp_profile.map(|p| p.type_).as_deref(),
            Some("RuntimeDefault")
        );
        let container = &pod.containers[0];
        let csc = container.security_context.clone().unwrap_or_default();
        assert_eq!(csc.allow_privilege_escalation, Some(false));
        assert_eq!(
            csc.capabilities.and_then(|c| c.drop),
            Some(vec!["ALL".to_string()])
        );
        assert_eq!(
            container.command,
            Some(vec!["recac".into(), "start".into()])
        );
    }

    #[test]
    fn env_has_the_contract_and_secrets_only_by_reference() {
        // Without the broker, the agent's container mounts the Secrets itself.
        let defaults = AgentDefaults {
            secret_refs: vec!["git-token".into()],
            secret_broker: crate::config::SecretBroker {
                enabled: false,
                ..Default::default()
            },
            ..Default::default()
        };
        let job = build_job(&task(), 1, "recac/PROJ-7", &defaults, false);
        assert_eq!(env_value(&job, "RECAC_TASK").as_deref(), Some("fix-login"));
        assert_eq!(env_value(&job, "RECAC_ATTEMPT").as_deref(), Some("1"));
        assert_eq!(
            env_value(&job, "RECAC_REPO_URL").as_deref(),
            Some("https://git.example.com/org/repo.git")
        );
        assert_eq!(
            env_value(&job, "RECAC_BASE_BRANCH").as_deref(),
            Some("main")
        );
        // The operator's branch wins over a task's attempt to override it.
        assert_eq!(
            env_value(&job, "RECAC_BRANCH").as_deref(),
            Some("recac/PROJ-7")
        );
        assert_eq!(env_value(&job, "RECAC_TICKET").as_deref(), Some("PROJ-7"));
        assert_eq!(env_value(&job, "RECAC_PROMPT").as_deref(), Some("fix it"));
        assert_eq!(
            env_value(&job, "RECAC_TEST_COMMAND").as_deref(),
            Some("make test")
        );
        let container = &job
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .map(|p| p.containers[0].clone())
            .unwrap_or_default();
        // Secrets reach the pod only by reference, as read-only volumes the agent reads (so
        // it knows every secret value to redact); no variable carries or references a value.
        assert!(container.env_from.is_none());
        assert!(
            container
                .env
                .iter()
                .flatten()
                .all(|e| e.value_from.is_none())
        );
        assert_eq!(
            env_value(&job, "RECAC_SECRETS_DIR").as_deref(),
            Some(SECRETS_PATH)
        );
        let pod = job
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.clone())
            .unwrap_or_default();
        let secrets: Vec<String> = pod
            .volumes
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| v.secret.and_then(|s| s.secret_name))
            .collect();
        assert_eq!(
            secrets,
            vec!["git-token".to_string(), "llm-keys".to_string()]
        );
        let mounts: Vec<(String, Option<bool>)> = container
            .volume_mounts
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|m| m.mount_path.starts_with(SECRETS_PATH))
            .map(|m| (m.mount_path, m.read_only))
            .collect();
        assert_eq!(
            mounts,
            vec![
                (format!("{SECRETS_PATH}/git-token"), Some(true)),
                (format!("{SECRETS_PATH}/llm-keys"), Some(true)),
            ]
        );
        assert!(env_value(&job, "RECAC_SECRET_ENV_ALLOW").is_none());
        assert_eq!(
            env_value(&job, "RECAC_GIT_CREDENTIAL_HOSTS").as_deref(),
            Some("github.com")
        );
    }

    fn mounts_of(container: &Container) -> Vec<(String, String, Option<bool>)> {
        container
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.name.clone(), m.mount_path.clone(), m.read_only))
            .collect()
    }

    #[test]
    fn only_the_secret_broker_mounts_the_secrets() {
        let defaults = AgentDefaults {
            secret_refs: vec!["git-token".into()],
            command: vec!["/usr/local/bin/recac".into(), "start".into()],
            ..Default::default()
        };
        let job = build_job(&task(), 1, "recac/PROJ-7", &defaults, false);
        let pod = job
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.clone())
            .unwrap_or_default();
        let agent = &pod.containers[0];
        let sidecars = pod.init_containers.clone().unwrap_or_default();
        assert_eq!(sidecars.len(), 1);
        let broker = &sidecars[0];
        assert_eq!(broker.name, "secrets");
        // A native sidecar: started before the agent, stopped after it.
        assert_eq!(broker.restart_policy.as_deref(), Some("Always"));
        assert_eq!(broker.image, agent.image);
        assert_eq!(
            broker.command,
            Some(vec![
                "/usr/local/bin/recac".to_string(),
                "secret-broker".to_string()
            ])
        );

        // Only the broker mounts the Secrets; both mount the socket's folder, the agent
        // read-only.
        let broker_mounts = mounts_of(broker);
        let agent_mounts = mounts_of(agent);
        for secret in ["git-token", "llm-keys"] {
            assert!(
                broker_mounts.contains(&(
                    format!("secret-{secret}"),
                    format!("{SECRETS_PATH}/{secret}"),
                    Some(true)
                )),
                "{broker_mounts:?}"
            );
        }
        assert!(
            !agent_mounts.iter().any(
                |(name, path, _)| name.starts_with("secret-") || path.starts_with(SECRETS_PATH)
            ),
            "{agent_mounts:?}"
        );
        assert!(broker_mounts.contains(&("broker".into(), BROKER_PATH.into(), None)));
        assert!(agent_mounts.contains(&("broker".into(), BROKER_PATH.into(), Some(true))));
        let broker_volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "broker")
            .and_then(|v| v.empty_dir.clone())
            .expect("the broker's emptyDir");
        assert_eq!(broker_volume.size_limit, Some(Quantity("1Mi".into())));

        // The agent reads the socket, not the folder; the broker the folder.
        assert_eq!(
            env_value(&job, "RECAC_SECRETS_SOCKET").as_deref(),
            Some(BROKER_SOCKET)
        );
        assert_eq!(env_value(&job, "RECAC_SECRETS_DIR"), None);
        let broker_env: Vec<(String, Option<String>)> = broker
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect();
        assert_eq!(
            broker_env,
            vec![
                ("RECAC_SECRETS_DIR".into(), Some(SECRETS_PATH.into())),
                ("RECAC_SECRETS_SOCKET".into(), Some(BROKER_SOCKET.into())),
            ]
        );

        // Another user in the pod's group, with the agent's restricted security.
        let psc = pod.security_context.clone().unwrap_or_default();
        let bsc = broker.security_context.clone().unwrap_or_default();
        assert_eq!(psc.run_as_user, Some(65_532));
        assert_eq!(psc.fs_group, Some(65_532));
        assert_eq!(bsc.run_as_user, Some(65_533));
        assert_eq!(bsc.run_as_group, Some(65_532));
        assert_eq!(bsc.run_as_non_root, Some(true));
        assert_eq!(bsc.allow_privilege_escalation, Some(false));
        assert_eq!(bsc.read_only_root_filesystem, Some(true));
        assert_eq!(
            bsc.capabilities.and_then(|c| c.drop),
            Some(vec!["ALL".to_string()])
        );
        let requests = broker
            .resources
            .clone()
            .and_then(|r| r.requests)
            .unwrap_or_default();
        assert_eq!(requests.get("cpu"), Some(&Quantity("10m".into())));
        let annotations = job
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.clone())
            .and_then(|m| m.annotations)
            .unwrap_or_default();
        assert_eq!(
            annotations
                .get("kubectl.kubernetes.io/default-container")
                .map(String::as_str),
            Some("agent")
        );

        // A task cannot point the agent elsewhere; an agent command that is not `recac` itself
        // leaves the broker to the image's `recac`.
        let mut t = task();
        if let Some(agent) = t.spec.agent.as_mut() {
            agent.env.push(EnvVarPair {
                name: "RECAC_SECRETS_SOCKET".into(),
                value: "/workspace/fake.sock".into(),
            });
            agent.command = Some(vec!["sh".into(), "-c".into(), "exec recac start".into()]);
        }
        let job = build_job(&t, 1, "b", &defaults, false);
        assert_eq!(
            env_value(&job, "RECAC_SECRETS_SOCKET").as_deref(),
            Some(BROKER_SOCKET)
        );
        let pod = job.spec.and_then(|s| s.template.spec).unwrap_or_default();
        assert_eq!(
            pod.init_containers.unwrap_or_default()[0].command,
            Some(vec!["recac".to_string(), "secret-broker".to_string()])
        );

        // No Secrets, no broker.
        let job = build_job(&task(), 1, "b", &AgentDefaults::default(), false);
        let mut no_secrets = task();
        if let Some(agent) = no_secrets.spec.agent.as_mut() {
            agent.secret_refs.clear();
        }
        let bare = build_job(&no_secrets, 1, "b", &AgentDefaults::default(), false);
        assert!(
            job.spec
                .and_then(|s| s.template.spec)
                .is_some_and(|p| p.init_containers.is_some())
        );
        let pod = bare.spec.and_then(|s| s.template.spec).unwrap_or_default();
        assert!(pod.init_containers.is_none());
        assert!(!pod.volumes.iter().flatten().any(|v| v.name == "broker"));
    }

    #[test]
    fn the_pod_writes_only_to_its_volumes_and_can_stop_in_time() {
        let defaults = AgentDefaults {
            ca_bundle: Some(crate::CaBundleRef {
                config_map: Some("internal-ca".into()),
                secret: None,
                key: "ca.pem".into(),
            }),
            ..Default::default()
        };
        let job = build_job(&task(), 1, "recac/PROJ-7", &defaults, false);
        let pod = job
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.clone())
            .unwrap_or_default();
        let container = &pod.containers[0];
        let security = container.security_context.clone().unwrap_or_default();
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(pod.share_process_namespace, Some(true));
        assert_eq!(pod.termination_grace_period_seconds, Some(60));
        let mounts: Vec<(String, String)> = container
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.name.clone(), m.mount_path.clone()))
            .collect();
        for (name, path) in [
            ("workspace", WORKSPACE_PATH),
            ("scratch", SCRATCH_PATH),
            ("ca-bundle", CA_BUNDLE_PATH),
        ] {
            assert!(
                mounts.contains(&(name.to_string(), path.to_string())),
                "{mounts:?}"
            );
        }
        for (var, value) in [
            ("RECAC_WORKSPACE", CHECKOUT_PATH.to_string()),
            ("HOME", WORKSPACE_PATH.to_string()),
            ("TMPDIR", SCRATCH_PATH.to_string()),
            ("RECAC_CA_BUNDLE", format!("{CA_BUNDLE_PATH}/ca.pem")),
        ] {
            assert_eq!(env_value(&job, var), Some(value), "{var}");
        }
        let ca = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "ca-bundle")
            .and_then(|v| v.config_map.clone())
            .expect("the CA bundle's ConfigMap");
        assert_eq!(ca.name, "internal-ca");
        assert_eq!(ca.items.unwrap_or_default()[0].key, "ca.pem");
    }

    #[test]
    fn ssh_known_hosts_and_the_tasks_ca_bundle_are_mounted_read_only() {
        let defaults = AgentDefaults {
            ca_bundle: Some(crate::CaBundleRef {
                config_map: Some("operator-ca".into()),
                secret: None,
                key: "ca.crt".into(),
            }),
            ssh: crate::config::AgentSsh {
                known_hosts: Some(crate::config::KnownHostsRef {
                    config_map: None,
                    secret: Some("git-hosts".into()),
                    key: "known_hosts".into(),
                }),
            },
            ..Default::default()
        };
        let mut t = task();
        if let Some(agent) = t.spec.agent.as_mut() {
            agent.ca_bundle = Some(recac_api::CaBundleRef {
                config_map: None,
                secret: Some("team-ca".into()),
                key: "bundle.pem".into(),
            });
            agent.env.push(EnvVarPair {
                name: "RECAC_SSH_KNOWN_HOSTS".into(),
                value: "/elsewhere".into(),
            });
        }
        let job = build_job(&t, 1, "b", &defaults, false);
        let pod = job
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.clone())
            .unwrap_or_default();
        let mounts: Vec<(String, String, Option<bool>)> = pod.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.name.clone(), m.mount_path.clone(), m.read_only))
            .collect();
        for (name, path) in [("ca-bundle", CA_BUNDLE_PATH), ("ssh-known-hosts", SSH_PATH)] {
            assert!(
                mounts.contains(&(name.to_string(), path.to_string(), Some(true))),
                "{mounts:?}"
            );
        }
        // The task's own bundle replaces the operator's; the known hosts are the operator's
        // (a task's env cannot point elsewhere).
        assert_eq!(
            env_value(&job, "RECAC_CA_BUNDLE"),
            Some(format!("{CA_BUNDLE_PATH}/bundle.pem"))
        );
        assert_eq!(
            env_value(&job, "RECAC_SSH_KNOWN_HOSTS"),
            Some(format!("{SSH_PATH}/known_hosts"))
        );
        let volume = |name: &str| {
            pod.volumes
                .iter()
                .flatten()
                .find(|v| v.name == name)
                .cloned()
                .unwrap_or_else(|| panic!("volume {name}"))
        };
        let ca = volume("ca-bundle").secret.expect("the task's CA Secret");
        assert_eq!(ca.secret_name.as_deref(), Some("team-ca"));
        assert_eq!(ca.items.unwrap_or_default()[0].key, "bundle.pem");
        let hosts = volume("ssh-known-hosts")
            .secret
            .expect("the known hosts' Secret");
        assert_eq!(hosts.secret_name.as_deref(), Some("git-hosts"));
        assert_eq!(hosts.default_mode, Some(0o444));
        assert_eq!(hosts.items.unwrap_or_default()[0].path, "known_hosts");

        // Without a task bundle the operator's is used; without ssh settings nothing is mounted.
        let plain_defaults = AgentDefaults {
            ssh: Default::default(),
            ..defaults
        };
        let job = build_job(&task(), 1, "b", &plain_defaults, false);
        assert_eq!(
            env_value(&job, "RECAC_CA_BUNDLE"),
            Some(format!("{CA_BUNDLE_PATH}/ca.crt"))
        );
        assert_eq!(env_value(&job, "RECAC_SSH_KNOWN_HOSTS"), None);
        let pod = job.spec.and_then(|s| s.template.spec).unwrap_or_default();
        assert!(
            !pod.volumes
                .iter()
                .flatten()
                .any(|v| v.name == "ssh-known-hosts")
        );
    }

    #[test]
    fn a_long_prompt_travels_as_a_file_from_a_config_map() {
        let mut t = task();
        t.spec.prompt = Some("x".repeat(PROMPT_ENV_LIMIT + 1));
        let defaults = AgentDefaults {
            secret_env_allow: vec!["PUBLIC_TOKEN".into()],
            ..Default::default()
        };
        let job = build_job(&t, 1, "b", &defaults, false);
        assert!(env_value(&job, "RECAC_PROMPT").is_none());
        assert_eq!(
            env_value(&job, "RECAC_PROMPT_FILE").as_deref(),
            Some("/var/run/recac/prompt/prompt")
        );
        assert_eq!(
            env_value(&job, "RECAC_SECRET_ENV_ALLOW").as_deref(),
            Some("PUBLIC_TOKEN")
        );
        let cm = prompt_config_map(&t).expect("a ConfigMap for a long prompt");
        assert_eq!(cm.metadata.name.as_deref(), Some("fix-login-prompt"));
        assert_eq!(
            cm.data
                .as_ref()
                .and_then(|d| d.get(PROMPT_KEY))
                .map(String::len),
            Some(PROMPT_ENV_LIMIT + 1)
        );
        assert!(prompt_config_map(&task()).is_none());
    }

    #[test]
    fn a_planning_task_runs_its_agent_in_plan_mode() {
        let defaults = AgentDefaults {
            env: vec![EnvVarPair {
                name: "RECAC_MODE".into(),
                value: "work".into(),
            }],
            ..Default::default()
        };
        let mut planning = task();
        planning.spec.approval = Some(recac_api::Approval::Plan);
        let job = build_job(&planning, 1, "recac/PROJ-7", &defaults, false);
        assert_eq!(env_value(&job, "RECAC_MODE").as_deref(), Some("plan"));
        let container = job
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .map(|p| p.containers[0].clone())
            .unwrap_or_default();
        let modes: Vec<&EnvVar> = container
            .env
            .iter()
            .flatten()
            .filter(|e| e.name == "RECAC_MODE")
            .collect();
        assert_eq!(modes.len(), 1, "{modes:?}");
        assert!(modes[0].value_from.is_none());

        // A task that does the work has no mode, and no env of the task or the operator
        // gives it one.
        let mut working = task();
        if let Some(agent) = working.spec.agent.as_mut() {
            agent.env.push(EnvVarPair {
                name: "RECAC_MODE".into(),
                value: "plan".into(),
            });
        }
        let job = build_job(&working, 1, "recac/PROJ-7", &defaults, false);
        assert_eq!(env_value(&job, "RECAC_MODE"), None);
    }

    #[test]
    fn suspend_and_ttl_follow_spec() {
        let mut t = task();
        t.spec.ttl_seconds_after_finished = Some(60);
        let job = build_job(&t, 1, "b", &AgentDefaults::default(), true);
        let spec = job.spec.unwrap_or_default();
        assert_eq!(spec.suspend, Some(true));
        assert_eq!(spec.ttl_seconds_after_finished, Some(60));
    }

    #[test]
    fn the_agent_gets_its_deadline_margin_and_what_is_left_of_its_budget() {
        let now = Timestamp::from_second(1_800_000_000).expect("time");
        let defaults = AgentDefaults {
            model: Some("gpt-x".into()),
            provider: Some("openai".into()),
            prices: vec![crate::config::PriceEntry {
                provider: "openai".into(),
                model: "gpt-x".into(),
                input_per_million: crate::config::Decimal("2".into()),
                output_per_million: crate::config::Decimal("8".into()),
                currency: "USD".into(),
            }],
            ..Default::default()
        };
        let mut t = task();
        // The task's env cannot set what the operator owns.
        if let Some(agent) = t.spec.agent.as_mut() {
            for name in [
                env::DEADLINE,
                env::BUDGET_TOKENS,
                env::PRICE_INPUT_PER_MILLION,
            ] {
                agent.env.push(EnvVarPair {
                    name: name.into(),
                    value: "forged".into(),
                });
            }
        }
        let job = build_job_at(
            &t,
            1,
            "recac/PROJ-7",
            &defaults,
            false,
            now,
            &crate::egress::Network::Open,
        );
        // 600 s after the Job's creation; the margin is at most a quarter of that.
        assert_eq!(
            env_value(&job, env::DEADLINE).as_deref(),
            Some("2027-01-15T08:10:00Z")
        );
        assert_eq!(
            env_value(&job, env::DEADLINE_MARGIN_SECONDS).as_deref(),
            Some("120")
        );
        assert_eq!(
            env_value(&job, env::PRICE_INPUT_PER_MILLION).as_deref(),
            Some("2")
        );
        assert_eq!(
            env_value(&job, env::PRICE_OUTPUT_PER_MILLION).as_deref(),
            Some("8")
        );
        assert_eq!(
            env_value(&job, env::BUDGET_CURRENCY).as_deref(),
            Some("USD")
        );
        assert_eq!(env_value(&job, env::BUDGET_TOKENS), None);

        t.spec.timeout_seconds = 300;
        t.spec.budget = Some(recac_api::Budget {
            tokens: Some(10_000),
            input_tokens: None,
            output_tokens: Some(3_000),
            cost: Some("1.50".into()),
        });
        t.status = Some(recac_api::AgentTaskStatus {
            spend: Some(recac_api::Spend {
                models: vec![recac_api::ModelSpend {
                    provider: Some("openai".into()),
                    model: "gpt-x".into(),
                    input_tokens: 4_000,
                    output_tokens: 1_000,
                    cost: Some("0.25".into()),
                    currency: Some("USD".into()),
                }],
                attempts: 1,
                not_reported: 0,
            }),
            ..Default::default()
        });
        let job = build_job_at(
            &t,
            2,
            "recac/PROJ-7",
            &defaults,
            false,
            now,
            &crate::egress::Network::Open,
        );
        assert_eq!(
            env_value(&job, env::DEADLINE).as_deref(),
            Some("2027-01-15T08:05:00Z")
        );
        assert_eq!(
            env_value(&job, env::DEADLINE_MARGIN_SECONDS).as_deref(),
            Some("75")
        );
        assert_eq!(env_value(&job, env::BUDGET_TOKENS).as_deref(), Some("5000"));
        assert_eq!(env_value(&job, env::BUDGET_INPUT_TOKENS), None);
        assert_eq!(
            env_value(&job, env::BUDGET_OUTPUT_TOKENS).as_deref(),
            Some("2000")
        );
        assert_eq!(env_value(&job, env::BUDGET_COST).as_deref(), Some("1.25"));
        let container = &job
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod")
            .containers[0];
        for name in [
            env::DEADLINE,
            env::BUDGET_TOKENS,
            env::PRICE_INPUT_PER_MILLION,
        ] {
            let values: Vec<_> = container
                .env
                .iter()
                .flatten()
                .filter(|e| e.name == name)
                .collect();
            assert_eq!(values.len(), 1, "{name}");
            assert_ne!(values[0].value.as_deref(), Some("forged"), "{name}");
        }
        // A margin of 0 is kept; a small task's margin is its quarter.
        let none = AgentDefaults {
            deadline_margin_seconds: 0,
            ..Default::default()
        };
        assert_eq!(deadline_margin_seconds(&none, 600), 0);
        assert_eq!(deadline_margin_seconds(&AgentDefaults::default(), 60), 15);
        assert_eq!(
            deadline_margin_seconds(&AgentDefaults::default(), 3600),
            120
        );
    }
}
