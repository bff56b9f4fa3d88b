//! The AgentTask a ticket becomes, and what decisions read back from existing tasks.
//!
//! Only the source's configuration chooses the namespace, image, Secrets and limits;
//! the ticket contributes its key (checked against the CRD's pattern), its URL, the
//! prompt text and, through [`crate::repo`], the repository.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use kube::api::ObjectMeta;
use recac_api::{
    AgentSpec, AgentTask, AgentTaskSpec, Repository, TaskPhase, TicketRef, TicketSource,
};
use regex::Regex;

use crate::config::SourceConfig;
use crate::decide::{
    CLAIM_ANNOTATION, ClaimState, RUN_LABEL, SOURCE_LABEL, TICKET_LABEL, TRIGGER_ANNOTATION,
    TaskView,
};

/// Whether `key` is a ticket key the CRD accepts (`^[A-Z][A-Z0-9_]+-[0-9]+$`).
pub fn valid_key(key: &str) -> bool {
    static RULE: OnceLock<Regex> = OnceLock::new();
    RULE.get_or_init(|| {
        Regex::new(r"^[A-Z][A-Z0-9_]+-[0-9]+$").unwrap_or_else(|e| panic!("key rule: {e}"))
    })
    .is_match(key)
        && key.len() <= 60
}

/// The task of run `run` of `key`: `<key in lower case>-r<run>` (`_` becomes `-`).
pub fn task_name(key: &str, run: u32) -> String {
    format!("{}-r{run}", key.to_ascii_lowercase().replace('_', "-"))
}

/// Everything a new task is made from.
pub struct NewTask<'a> {
    pub source: &'a SourceConfig,
    pub key: &'a str,
    pub url: &'a str,
    pub run: u32,
    pub trigger: &'a str,
    pub prompt: String,
    pub repository: String,
}

/// The AgentTask for a run, pending its claim.
pub fn build(new: NewTask<'_>) -> AgentTask {
    let s = new.source;
    let t = &s.template;
    let labels = BTreeMap::from([
        (SOURCE_LABEL.to_string(), s.name.clone()),
        (TICKET_LABEL.to_string(), new.key.to_string()),
        (RUN_LABEL.to_string(), new.run.to_string()),
    ]);
    let annotations = BTreeMap::from([
        (
            CLAIM_ANNOTATION.to_string(),
            ClaimState::Pending.as_str().to_string(),
        ),
        (TRIGGER_ANNOTATION.to_string(), new.trigger.to_string()),
    ]);
    let agent = (t.agent != AgentSpec::default()).then(|| Box::new(t.agent.clone()));
    let mut task = AgentTask::new(
        &task_name(new.key, new.run),
        AgentTaskSpec {
            prompt: Some(new.prompt),
            ticket: Some(TicketRef {
                source: TicketSource::Jira,
                key: new.key.to_string(),
                url: Some(new.url.to_string()),
            }),
            repository: Repository {
                url: new.repository,
                base_branch: s.repository.base_branch.clone(),
                branch: None,
            },
            agent,
            max_retries: t.max_retries.unwrap_or(recac_api::DEFAULT_MAX_RETRIES),
            timeout_seconds: t
                .timeout_seconds
                .unwrap_or(recac_api::DEFAULT_TIMEOUT_SECONDS),
            ttl_seconds_after_finished: t.ttl_seconds_after_finished,
            suspend: false,
            approval: (s.approval.mode == crate::config::ApprovalMode::Plan)
                .then_some(recac_api::Approval::Plan),
            budget: t.budget.clone(),
            egress: None,
        },
    );
    task.metadata = ObjectMeta {
        name: task.metadata.name.take(),
        namespace: Some(s.namespace.clone()),
        labels: Some(labels),
        annotations: Some(annotations),
        ..Default::default()
    };
    task
}

/// What decisions read of an existing task; `None` for tasks no source made.
pub fn view(task: &AgentTask) -> Option<TaskView> {
    view_of(
        &task.metadata,
        task.status.as_ref().and_then(|s| s.phase),
        recac_runtime::kinds::task_condition_true(task, recac_api::conditions::CLAIMED),
    )
}

/// [`view`] from a task's metadata, phase and whether its status has the `Claimed`
/// condition (all a sweep of the task cache decodes). A task whose annotation still says
/// `pending` is claimed once its status says so (see [`recac_api::annotations::CLAIM`]).
pub fn view_of(
    meta: &ObjectMeta,
    phase: Option<TaskPhase>,
    claimed_in_status: bool,
) -> Option<TaskView> {
    let labels = meta.labels.as_ref()?;
    let source = labels.get(SOURCE_LABEL)?.clone();
    let run = labels.get(RUN_LABEL)?.parse().ok()?;
    let annotation = |key: &str| meta.annotations.as_ref().and_then(|a| a.get(key));
    Some(TaskView {
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        source,
        run,
        claim: match ClaimState::parse(annotation(CLAIM_ANNOTATION).map(String::as_str)) {
            ClaimState::Pending if claimed_in_status => ClaimState::Claimed,
            claim => claim,
        },
        trigger: annotation(TRIGGER_ANNOTATION).cloned(),
        finished: phase.is_some_and(TaskPhase::is_finished),
    })
}

/// The ticket key of a task a source made.
pub fn ticket_of(task: &AgentTask) -> Option<&str> {
    ticket_in(&task.metadata)
}

/// [`ticket_of`] from a task's metadata.
pub fn ticket_in(meta: &ObjectMeta) -> Option<&str> {
    meta.labels.as_ref()?.get(TICKET_LABEL).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::ResourceExt;

    #[test]
    fn names_and_keys() {
        assert_eq!(task_name("OPS-12", 1), "ops-12-r1");
        assert_eq!(task_name("MY_PROJ-3", 2), "my-proj-3-r2");
        assert!(valid_key("OPS-12"));
        for bad in ["ops-1", "OPS-", "OPS-1; rm", "../OPS-1", "O-1"] {
            assert!(!valid_key(bad), "{bad}");
        }
    }

    #[test]
    fn the_task_takes_only_config_and_ticket_data() {
        let mut source = SourceConfig::for_label("ops", "OPS", "agent", "agents");
        source.template.agent.image = Some("registry/agent:1".into());
        source.template.agent.secret_refs = vec!["creds".into()];
        source.template.agent.ca_bundle = Some(recac_api::CaBundleRef {
            config_map: Some("ops-git-ca".into()),
            secret: None,
            key: "ca.crt".into(),
        });
        source.repository.base_branch = Some("main".into());
        let task = build(NewTask {
            source: &source,
            key: "OPS-7",
            url: "https://jira/browse/OPS-7",
            run: 2,
            trigger: "10001",
            prompt: "p".into(),
            repository: "https://git.example.com/o/r.git".into(),
        });
        assert_eq!(task.name_any(), "ops-7-r2");
        assert_eq!(task.namespace().as_deref(), Some("agents"));
        assert_eq!(task.labels()[SOURCE_LABEL], "ops");
        assert_eq!(task.labels()[TICKET_LABEL], "OPS-7");
        assert_eq!(task.annotations()[CLAIM_ANNOTATION], "pending");
        let agent = task.spec.agent.clone().unwrap_or_default();
        assert_eq!(agent.image.as_deref(), Some("registry/agent:1"));
        assert_eq!(agent.command, None);
        assert_eq!(
            agent
                .ca_bundle
                .as_ref()
                .map(|ca| (ca.config_map.as_deref(), ca.key.as_str())),
            Some((Some("ops-git-ca"), "ca.crt"))
        );
        assert_eq!(task.spec.repository.branch, None);
        let v = view(&task).expect("a source's task");
        assert_eq!(
            (v.run, v.claim, v.trigger.as_deref()),
            (2, ClaimState::Pending, Some("10001"))
        );
        let mut claimed = task.clone();
        claimed.status = Some(recac_api::AgentTaskStatus {
            phase: Some(TaskPhase::Pending),
            conditions: vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: recac_api::conditions::CLAIMED.into(),
                status: "True".into(),
                reason: "TicketClaimed".into(),
                message: String::new(),
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                ),
                observed_generation: None,
            }],
            ..Default::default()
        });
        assert_eq!(
            view(&claimed).map(|v| v.claim),
            Some(ClaimState::Claimed),
            "a pending annotation with the Claimed condition is claimed"
        );
        let mut finished = task.clone();
        finished.status = Some(recac_api::AgentTaskStatus {
            phase: Some(TaskPhase::Succeeded),
            ..Default::default()
        });
        for task in [task, claimed, finished] {
            let json = serde_json::to_vec(&task).expect("encodes");
            let summary: recac_runtime::kinds::TaskSummary =
                serde_json::from_slice(&json).expect("a task reads as a summary");
            let claimed = summary.condition_true(recac_api::conditions::CLAIMED);
            assert_eq!(
                view_of(&summary.metadata, summary.phase(), claimed),
                view(&task)
            );
            assert_eq!(ticket_in(&summary.metadata), Some("OPS-7"));
        }
    }
}
