//! Reading what Kubernetes reports about an attempt's Job and pod: pure functions.

use k8s_openapi::api::batch::v1::Job;
pub use recac_api::agent_contract::{Termination, gave_up, termination};

/// Where one attempt's Job is.
#[derive(Clone, Debug, PartialEq)]
pub enum AttemptState {
    /// Created; its pod is not running yet.
    Starting,
    /// Its pod is running.
    Running,
    /// Suspended: no pod runs.
    Suspended,
    Succeeded,
    Failed(Failure),
}

/// Why an attempt failed.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    /// A CamelCase reason: DeadlineExceeded, PodFailurePolicy, BackoffLimitExceeded, JobDeleted...
    pub reason: String,
    pub message: String,
    /// The agent gave up: another attempt would fail the same way.
    pub gave_up: bool,
}

fn condition_true<'a>(
    job: &'a Job,
    type_: &str,
) -> Option<&'a k8s_openapi::api::batch::v1::JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// The state of a Job, from its conditions and counters.
pub fn attempt_state(job: &Job) -> AttemptState {
    if condition_true(job, "Complete").is_some() {
        return AttemptState::Succeeded;
    }
    if let Some(failed) = condition_true(job, "Failed") {
        let reason = failed.reason.clone().unwrap_or_else(|| "Failed".into());
        return AttemptState::Failed(Failure {
            gave_up: reason == "PodFailurePolicy",
            message: failed.message.clone().unwrap_or_default(),
            reason,
        });
    }
    let suspended = job.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false);
    if suspended {
        return AttemptState::Suspended;
    }
    let status = job.status.as_ref();
    let ready = status.and_then(|s| s.ready).unwrap_or(0);
    if ready > 0 {
        AttemptState::Running
    } else {
        AttemptState::Starting
    }
}

/// Whether a cached Job has finished (a true `Complete` or `Failed` condition).
pub fn cached_job_finished(job: &recac_runtime::kinds::CachedJob) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::{JobCondition, JobSpec, JobStatus};
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStatus, Pod, PodStatus,
    };

    fn job(conditions: &[(&str, &str)], ready: i32, suspend: bool) -> Job {
        Job {
            spec: Some(JobSpec {
                suspend: Some(suspend),
                ..Default::default()
            }),
            status: Some(JobStatus {
                ready: Some(ready),
                conditions: Some(
                    conditions
                        .iter()
                        .map(|(t, reason)| JobCondition {
                            type_: (*t).into(),
                            status: "True".into(),
                            reason: Some((*reason).into()),
                            message: Some(format!("{t} because {reason}")),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn job_states() {
        assert_eq!(attempt_state(&job(&[], 0, false)), AttemptState::Starting);
        assert_eq!(attempt_state(&job(&[], 1, false)), AttemptState::Running);
        assert_eq!(attempt_state(&job(&[], 0, true)), AttemptState::Suspended);
        assert_eq!(
            attempt_state(&job(
                &[("SuccessCriteriaMet", "x"), ("Complete", "x")],
                0,
                false
            )),
            AttemptState::Succeeded
        );
        match attempt_state(&job(&[("Failed", "DeadlineExceeded")], 0, false)) {
            AttemptState::Failed(f) => {
                assert_eq!(f.reason, "DeadlineExceeded");
                assert!(!f.gave_up);
            }
            other => panic!("{other:?}"),
        }
        match attempt_state(&job(&[("Failed", "PodFailurePolicy")], 0, false)) {
            AttemptState::Failed(f) => assert!(f.gave_up),
            other => panic!("{other:?}"),
        }
    }

    fn pod(exit: i32, message: &str) -> Pod {
        Pod {
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    name: "agent".into(),
                    state: Some(ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            exit_code: exit,
                            message: Some(message.into()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn termination_parses_the_result_or_keeps_the_text() {
        let t = termination(&[pod(
            0,
            r#"{"outcome":"succeeded","branch":"recac/X-1","commit":"abc","pullRequestUrl":"https://x/pr/1"}"#,
        )])
        .expect("terminated");
        assert_eq!(t.exit_code, Some(0));
        let result = t.result.expect("result");
        assert_eq!(result.commit.as_deref(), Some("abc"));
        assert_eq!(result.pull_request_url.as_deref(), Some("https://x/pr/1"));

        let t = termination(&[pod(3, "panic: something")]).expect("terminated");
        assert!(t.result.is_none());
        assert_eq!(t.raw_message.as_deref(), Some("panic: something"));
        assert!(gave_up(&t));
        assert!(termination(&[]).is_none());
    }
}
