//! Builds the Job of one attempt: pure, from the task, the attempt and the defaults.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement,
    PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvFromSource, EnvVar, PodSecurityContext,
    PodSpec, PodTemplateSpec, SeccompProfile, SecretEnvSource, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};
use recac_api::AgentTask;
use recac_api::agent_contract::{env, exit_code};

use crate::config::AgentDefaults;
use crate::naming;

/// The agent container's name.
pub const CONTAINER_NAME: &str = "agent";
/// Where the workspace volume is mounted.
pub const WORKSPACE_PATH: &str = "/workspace";
/// Where the agent writes its result; Kubernetes copies it into the pod status.
pub const TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";

/// Label keys on every Job and pod.
pub mod labels {
    pub const APP: &str = "app";
    pub const APP_VALUE: &str = "recac-agent";
    pub const TASK: &str = "recac.io/task";
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
];

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

/// The Job for `attempt` of `task`, pushing to `branch`.
pub fn build_job(
    task: &AgentTask,
    attempt: i32,
    branch: &str,
    defaults: &AgentDefaults,
    suspend: bool,
) -> Job {
    let spec = &task.spec;
    let agent = spec.agent.clone().unwrap_or_default();
    let labels = job_labels(task, attempt);

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
    ];
    if let Some(ticket) = &spec.ticket {
        env_vars.push(plain(env::TICKET, ticket.key.clone()));
    }
    if let Some(prompt) = &spec.prompt {
        env_vars.push(plain(env::PROMPT, prompt.clone()));
    }
    if let Some(provider) = agent.provider.as_ref().or(defaults.provider.as_ref()) {
        env_vars.push(plain(env::PROVIDER, provider.clone()));
    }
    if let Some(model) = agent.model.as_ref().or(defaults.model.as_ref()) {
        env_vars.push(plain(env::MODEL, model.clone()));
    }
    // Defaults first, then the task's own; a later entry replaces an earlier one by name.
    for var in defaults.env.iter().chain(agent.env.iter()) {
        if RESERVED_ENV.contains(&var.name.as_str()) {
            continue;
        }
        env_vars.retain(|existing| existing.name != var.name);
        env_vars.push(plain(&var.name, var.value.clone()));
    }

    let mut secret_names: Vec<String> = Vec::new();
    for name in defaults.secret_refs.iter().chain(agent.secret_refs.iter()) {
        if !secret_names.contains(name) {
            secret_names.push(name.clone());
        }
    }
    let env_from: Vec<EnvFromSource> = secret_names
        .into_iter()
        .map(|name| EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name,
                optional: Some(false),
            }),
            ..Default::default()
        })
        .collect();

    let container = Container {
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
        env: Some(env_vars),
        env_from: (!env_from.is_empty()).then_some(env_from),
        resources: Some(
            agent
                .resources
                .clone()
                .unwrap_or_else(|| defaults.resources.clone()),
        ),
        working_dir: Some(WORKSPACE_PATH.to_string()),
        volume_mounts: Some(vec![VolumeMount {
            name: "workspace".into(),
            mount_path: WORKSPACE_PATH.into(),
            ..Default::default()
        }]),
        termination_message_path: Some(TERMINATION_MESSAGE_PATH.into()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };

    let pod_spec = PodSpec {
        restart_policy: Some("Never".into()),
        automount_service_account_token: Some(defaults.automount_service_account_token),
        service_account_name: defaults.service_account_name.clone(),
        enable_service_links: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(defaults.run_as_user),
            run_as_group: Some(defaults.run_as_user),
            fs_group: Some(defaults.run_as_user),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        containers: vec![container],
        volumes: Some(vec![Volume {
            name: "workspace".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: defaults.workspace_size_limit.clone().map(Quantity),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ..Default::default()
    };

    let pod_failure_policy = PodFailurePolicy {
        rules: vec![
            // Evictions, preemption and node drains do not burn the attempt.
            PodFailurePolicyRule {
                action: "Ignore".into(),
                on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                    type_: "DisruptionTarget".into(),
                    status: Some("True".into()),
                }]),
                ..Default::default()
            },
            // The agent gave up: fail at once, the operator does not retry.
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
    };

    let ttl = spec
        .ttl_seconds_after_finished
        .unwrap_or(defaults.ttl_seconds_after_finished);

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
            active_deadline_seconds: Some(spec.timeout_seconds),
            ttl_seconds_after_finished: Some(ttl),
            suspend: Some(suspend),
            pod_failure_policy: Some(pod_failure_policy),
            pod_replacement_policy: Some("Failed".into()),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(pod_spec),
            },
            ..Default::default()
        }),
        status: None,
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
                agent: Some(AgentSpec {
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
                }),
                max_retries: 2,
                timeout_seconds: 600,
                ttl_seconds_after_finished: None,
                suspend: false,
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
        let defaults = AgentDefaults {
            secret_refs: vec!["git-token".into()],
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
        let from: Vec<String> = container
            .env_from
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|e| e.secret_ref.map(|s| s.name))
            .collect();
        assert_eq!(from, vec!["git-token".to_string(), "llm-keys".to_string()]);
        // Secrets reach the pod only by reference: no variable reads a value from anywhere
        // but the spec, and every envFrom names a Secret, never inlines it.
        assert!(
            container
                .env
                .iter()
                .flatten()
                .all(|e| e.value_from.is_none())
        );
        assert!(
            container
                .env_from
                .iter()
                .flatten()
                .all(|e| e.secret_ref.is_some() && e.config_map_ref.is_none())
        );
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
}
