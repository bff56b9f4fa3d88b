use super::*;
use crate::observe::Termination;
use recac_api::{AgentTaskSpec, Approval, Repository, TicketRef, TicketSource};

fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).expect("valid time")
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        initial: Duration::from_secs(30),
        max: Duration::from_secs(300),
        queue_poll: Duration::from_secs(10),
        pricing: Arc::new(Pricing::default()),
        egress: Arc::default(),
    }
}

fn task(max_retries: i32) -> AgentTask {
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
                base_branch: None,
                branch: None,
            },
            agent: None,
            max_retries,
            timeout_seconds: 600,
            ttl_seconds_after_finished: None,
            suspend: false,
            approval: None,
            budget: None,
            egress: None,
        },
    );
    task.metadata.generation = Some(1);
    task
}

fn observe(attempt: Option<AttemptObservation>, admitted: bool) -> Observation {
    Observation {
        attempt,
        admitted,
        claimed: false,
        previous_run: None,
        namespace_hold: None,
        now: now(),
    }
}

fn job(attempt: i32, state: AttemptState) -> Option<AttemptObservation> {
    Some(AttemptObservation {
        job_name: format!("fix-login-a{attempt}"),
        created: None,
        state,
        termination: None,
    })
}

fn failed(reason: &str, gave_up: bool) -> AttemptState {
    AttemptState::Failed(Failure {
        reason: reason.into(),
        message: format!("because {reason}"),
        gave_up,
    })
}

/// The task after applying a plan's status, as the next reconcile would see it.
fn after(mut task: AgentTask, plan: &Plan) -> AgentTask {
    task.status = Some(plan.status.clone());
    task
}

fn condition<'a>(plan: &'a Plan, type_: &str) -> Option<&'a Condition> {
    plan.status.conditions.iter().find(|c| c.type_ == type_)
}

fn creates(plan: &Plan) -> Vec<i32> {
    plan.actions
        .iter()
        .filter_map(|a| match a {
            Action::CreateJob { attempt, .. } => Some(*attempt),
            _ => None,
        })
        .collect()
}

fn event_reasons(plan: &Plan) -> Vec<String> {
    plan.actions
        .iter()
        .filter_map(|a| match a {
            Action::Event { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_new_task_with_a_free_slot_is_dispatched() {
    let plan = decide(&task(2), &observe(None, true), &policy());
    assert_eq!(
        plan.actions[0],
        Action::CreateJob {
            attempt: 1,
            branch: "recac/PROJ-7".into(),
            suspend: false,
            network: crate::egress::Network::Open,
        }
    );
    let s = &plan.status;
    assert_eq!(s.phase, Some(TaskPhase::Pending));
    assert_eq!(s.attempt, Some(1));
    assert_eq!(s.retries, Some(0));
    assert_eq!(s.job_name.as_deref(), Some("fix-login-a1"));
    assert_eq!(s.branch.as_deref(), Some("recac/PROJ-7"));
    assert_eq!(s.start_time, Some(Time(now())));
    assert_eq!(s.observed_generation, Some(1));
    assert_eq!(
        condition(&plan, "Dispatched").map(|c| c.status.as_str()),
        Some("True")
    );
    assert!(condition(&plan, "Queued").is_none());
    assert!(
        event_reasons(&plan).is_empty(),
        "{:?}",
        event_reasons(&plan)
    );
}

#[test]
fn a_new_task_without_a_slot_is_queued_until_woken() {
    let plan = decide(&task(2), &observe(None, false), &policy());
    assert!(creates(&plan).is_empty());
    assert_eq!(plan.status.phase, Some(TaskPhase::Pending));
    assert_eq!(plan.status.attempt, None);
    let queued = condition(&plan, "Queued").expect("queued");
    assert_eq!(
        (queued.status.as_str(), queued.reason.as_str()),
        ("True", "ConcurrencyLimit")
    );
    // No timer per queued task: the admission queue wakes it.
    assert_eq!(plan.requeue_after, None);

    // Once a slot frees, the queued condition flips and the Job is created.
    let plan = decide(&after(task(2), &plan), &observe(None, true), &policy());
    assert_eq!(creates(&plan), vec![1]);
    assert_eq!(
        condition(&plan, "Queued").map(|c| c.status.as_str()),
        Some("False")
    );
}

#[test]
fn a_suspended_new_task_is_not_dispatched() {
    let mut t = task(2);
    t.spec.suspend = true;
    let plan = decide(&t, &observe(None, true), &policy());
    assert!(plan.actions.is_empty());
    assert_eq!(
        condition(&plan, "Suspended").map(|c| c.status.as_str()),
        Some("True")
    );
    t.spec.suspend = false;
    let plan = decide(&after(t, &plan), &observe(None, true), &policy());
    assert_eq!(creates(&plan), vec![1]);
    assert_eq!(
        condition(&plan, "Suspended").map(|c| c.status.as_str()),
        Some("False")
    );
}

#[test]
fn a_running_pod_makes_the_task_running_and_repeats_cost_nothing() {
    let dispatched = decide(&task(2), &observe(None, true), &policy());
    let t = after(task(2), &dispatched);
    let starting = decide(
        &t,
        &observe(job(1, AttemptState::Starting), true),
        &policy(),
    );
    assert_eq!(starting.status.phase, Some(TaskPhase::Pending));
    assert!(starting.actions.is_empty());
    let t = after(t, &starting);
    let running = decide(&t, &observe(job(1, AttemptState::Running), true), &policy());
    assert_eq!(running.status.phase, Some(TaskPhase::Running));
    assert!(running.actions.is_empty());
    // Idle: the same observation again changes nothing.
    let t = after(t, &running);
    let again = decide(&t, &observe(job(1, AttemptState::Running), true), &policy());
    assert_eq!(Some(&again.status), t.status.as_ref());
    assert!(again.actions.is_empty());
    assert_eq!(again.requeue_after, None);
}

#[test]
fn suspend_and_resume_a_running_job() {
    let t = after(task(2), &decide(&task(2), &observe(None, true), &policy()));
    let mut suspended_task = t.clone();
    suspended_task.spec.suspend = true;
    let plan = decide(
        &suspended_task,
        &observe(job(1, AttemptState::Running), true),
        &policy(),
    );
    assert!(plan.actions.contains(&Action::SuspendJob {
        name: "fix-login-a1".into(),
        suspend: true
    }));
    assert_eq!(plan.status.phase, Some(TaskPhase::Pending));
    // Already suspended: nothing more to do.
    let st = after(suspended_task.clone(), &plan);
    let plan = decide(
        &st,
        &observe(job(1, AttemptState::Suspended), true),
        &policy(),
    );
    assert!(plan.actions.is_empty());
    // Resume.
    let mut resumed = st.clone();
    resumed.spec.suspend = false;
    let plan = decide(
        &resumed,
        &observe(job(1, AttemptState::Suspended), true),
        &policy(),
    );
    assert!(plan.actions.contains(&Action::SuspendJob {
        name: "fix-login-a1".into(),
        suspend: false
    }));
}

#[test]
fn success_copies_the_agents_result() {
    let t = after(task(2), &decide(&task(2), &observe(None, true), &policy()));
    let result: AgentResult = serde_json::from_str(
        r#"{"outcome":"succeeded","branch":"recac/PROJ-7","commit":"abc123","pullRequestUrl":"https://github.com/o/r/pull/9","summary":"made it configurable"}"#,
    )
    .expect("result json");
    let observation = Some(AttemptObservation {
        job_name: "fix-login-a1".into(),
        created: None,
        state: AttemptState::Succeeded,
        termination: Some(Termination {
            exit_code: Some(0),
            result: Some(result),
            raw_message: None,
        }),
    });
    let plan = decide(&t, &observe(observation.clone(), true), &policy());
    let s = &plan.status;
    assert_eq!(s.phase, Some(TaskPhase::Succeeded));
    assert_eq!(s.commit.as_deref(), Some("abc123"));
    assert_eq!(
        s.pull_request_url.as_deref(),
        Some("https://github.com/o/r/pull/9")
    );
    assert_eq!(s.completion_time, Some(Time(now())));
    assert!(
        s.message
            .as_deref()
            .unwrap_or_default()
            .contains("made it configurable")
    );
    assert_eq!(event_reasons(&plan), vec!["Succeeded"]);
    // Finished tasks are left alone.
    let done = after(t, &plan);
    let plan = decide(&done, &observe(observation, true), &policy());
    assert!(plan.actions.is_empty());
    assert_eq!(Some(&plan.status), done.status.as_ref());
}

#[test]
fn failure_with_retries_left_waits_then_dispatches_the_next_attempt() {
    let t = after(task(2), &decide(&task(2), &observe(None, true), &policy()));
    let plan = decide(
        &t,
        &observe(job(1, failed("BackoffLimitExceeded", false)), true),
        &policy(),
    );
    assert!(creates(&plan).is_empty());
    assert_eq!(plan.status.phase, Some(TaskPhase::Pending));
    let due = now()
        .checked_add(SignedDuration::from_secs(30))
        .expect("time");
    assert_eq!(plan.status.next_attempt_time, Some(Time(due)));
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(30)));
    assert_eq!(event_reasons(&plan), vec!["AttemptFailed"]);

    // Before the backoff ends: wait, no action, no status change.
    let waiting = after(t, &plan);
    let early = Observation {
        attempt: job(1, failed("BackoffLimitExceeded", false)),
        admitted: true,
        claimed: false,
        previous_run: None,
        namespace_hold: None,
        now: now()
            .checked_add(SignedDuration::from_secs(10))
            .expect("time"),
    };
    let plan = decide(&waiting, &early, &policy());
    assert!(plan.actions.is_empty());
    assert_eq!(Some(&plan.status), waiting.status.as_ref());
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(20)));

    // After it: attempt 2.
    let late = Observation {
        attempt: None, // the failed Job may be gone (TTL)
        admitted: true,
        claimed: false,
        previous_run: None,
        namespace_hold: None,
        now: due,
    };
    let plan = decide(&waiting, &late, &policy());
    assert_eq!(creates(&plan), vec![2]);
    assert_eq!(plan.status.attempt, Some(2));
    assert_eq!(plan.status.retries, Some(1));
    assert_eq!(plan.status.job_name.as_deref(), Some("fix-login-a2"));
    assert_eq!(plan.status.next_attempt_time, None);
    assert_eq!(event_reasons(&plan), vec!["Retrying"]);
}

#[test]
fn a_due_retry_without_a_slot_stays_queued() {
    let t = after(task(2), &decide(&task(2), &observe(None, true), &policy()));
    let plan = decide(
        &t,
        &observe(job(1, failed("DeadlineExceeded", false)), true),
        &policy(),
    );
    let waiting = after(t, &plan);
    let late = Observation {
        attempt: None,
        admitted: false,
        claimed: false,
        previous_run: None,
        namespace_hold: None,
        now: now()
            .checked_add(SignedDuration::from_secs(60))
            .expect("time"),
    };
    let plan = decide(&waiting, &late, &policy());
    assert!(creates(&plan).is_empty());
    assert_eq!(
        condition(&plan, "Queued").map(|c| c.status.as_str()),
        Some("True")
    );
}

#[test]
fn exhausted_retries_end_in_failed() {
    let mut t = task(1);
    t.status = Some(AgentTaskStatus {
        phase: Some(TaskPhase::Running),
        attempt: Some(2),
        retries: Some(1),
        job_name: Some("fix-login-a2".into()),
        ..Default::default()
    });
    let plan = decide(
        &t,
        &observe(job(2, failed("BackoffLimitExceeded", false)), true),
        &policy(),
    );
    assert!(creates(&plan).is_empty());
    assert_eq!(plan.status.phase, Some(TaskPhase::Failed));
    assert_eq!(plan.status.retries, Some(1));
    let c = condition(&plan, "Failed").expect("failed condition");
    assert_eq!(c.reason, "RetriesExhausted");
    assert!(
        plan.status
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("BackoffLimitExceeded")
    );
    assert_eq!(plan.status.completion_time, Some(Time(now())));

    // The last attempt stopped by its Job's deadline: the task ends DeadlineExceeded.
    let plan = decide(
        &t,
        &observe(job(2, failed("DeadlineExceeded", false)), true),
        &policy(),
    );
    assert_eq!(plan.status.phase, Some(TaskPhase::Failed));
    let c = condition(&plan, "Failed").expect("failed condition");
    assert_eq!(c.reason, "DeadlineExceeded");
    assert!(c.message.contains("no retries left"), "{}", c.message);
    assert_eq!(event_reasons(&plan), vec!["DeadlineExceeded"]);
    assert_eq!(plan.status.partial, None);
}

#[test]
fn giving_up_fails_without_retry() {
    let t = after(task(5), &decide(&task(5), &observe(None, true), &policy()));
    let plan = decide(
        &t,
        &observe(job(1, failed("PodFailurePolicy", true)), true),
        &policy(),
    );
    assert_eq!(plan.status.phase, Some(TaskPhase::Failed));
    assert_eq!(
        condition(&plan, "Failed").map(|c| c.reason.as_str()),
        Some("GaveUp")
    );

    // The exit code alone also says so.
    let observation = Some(AttemptObservation {
        job_name: "fix-login-a1".into(),
        created: None,
        state: failed("BackoffLimitExceeded", false),
        termination: Some(Termination {
            exit_code: Some(3),
            result: None,
            raw_message: Some("bad repository".into()),
        }),
    });
    let plan = decide(&t, &observe(observation, true), &policy());
    assert_eq!(plan.status.phase, Some(TaskPhase::Failed));
}

#[test]
fn a_job_deleted_from_outside_counts_as_a_failed_attempt() {
    let t = after(task(2), &decide(&task(2), &observe(None, true), &policy()));
    let plan = decide(&t, &observe(None, true), &policy());
    assert!(creates(&plan).is_empty());
    assert_eq!(plan.status.phase, Some(TaskPhase::Pending));
    assert!(plan.status.next_attempt_time.is_some());
    assert!(
        plan.status
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("JobDeleted")
    );

    let mut last = task(0);
    last = after(last, &decide(&task(0), &observe(None, true), &policy()));
    let plan = decide(&last, &observe(None, true), &policy());
    assert_eq!(plan.status.phase, Some(TaskPhase::Failed));
}

#[test]
fn backoff_doubles_and_is_capped() {
    let p = policy();
    assert_eq!(p.backoff(1), Duration::from_secs(30));
    assert_eq!(p.backoff(2), Duration::from_secs(60));
    assert_eq!(p.backoff(3), Duration::from_secs(120));
    assert_eq!(p.backoff(5), Duration::from_secs(300));
    assert_eq!(p.backoff(50), Duration::from_secs(300));
}

#[test]
fn condition_transition_times_change_only_on_flips() {
    let t = after(task(2), &decide(&task(2), &observe(None, false), &policy()));
    let first = condition(&decide(&t, &observe(None, false), &policy()), "Queued")
        .expect("queued")
        .clone();
    let later = Observation {
        attempt: None,
        admitted: false,
        claimed: false,
        previous_run: None,
        namespace_hold: None,
        now: now()
            .checked_add(SignedDuration::from_secs(100))
            .expect("time"),
    };
    let plan = decide(&t, &later, &policy());
    assert_eq!(
        condition(&plan, "Queued").map(|c| c.last_transition_time.clone()),
        Some(first.last_transition_time)
    );
    assert_eq!(Some(&plan.status), t.status.as_ref());
}

#[test]
fn suspending_a_queued_task_clears_its_queued_condition() {
    let queued = after(task(2), &decide(&task(2), &observe(None, false), &policy()));
    let mut suspended = queued.clone();
    suspended.spec.suspend = true;
    let plan = decide(&suspended, &observe(None, false), &policy());
    assert!(plan.actions.is_empty());
    assert_eq!(
        condition(&plan, "Queued").map(|c| c.status.as_str()),
        Some("False")
    );
    assert_eq!(
        condition(&plan, "Suspended").map(|c| c.status.as_str()),
        Some("True")
    );
}

#[test]
fn a_refused_dispatch_is_recorded_once() {
    let t = task(2);
    let status = dispatch_failed(&t, "Job fix-login-a1 exists but is not owned", now());
    assert_eq!(status.phase, Some(TaskPhase::Pending));
    let c = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Dispatched")
        .expect("condition");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "DispatchFailed")
    );
    // The same failure again changes nothing, so nothing is written.
    let mut again = t.clone();
    again.status = Some(status.clone());
    let later = now()
        .checked_add(SignedDuration::from_secs(60))
        .expect("time");
    assert_eq!(
        dispatch_failed(&again, "Job fix-login-a1 exists but is not owned", later),
        status
    );
}

#[test]
fn a_pending_claim_holds_dispatch_and_a_lost_claim_fails_without_running() {
    let mut pending = task(2);
    pending.metadata.annotations = Some(
        [(
            recac_api::annotations::CLAIM.to_string(),
            recac_api::annotations::CLAIM_PENDING.to_string(),
        )]
        .into(),
    );
    let plan = decide(&pending, &observe(None, true), &policy());
    assert!(creates(&plan).is_empty());
    assert_eq!(plan.status.phase, Some(TaskPhase::Pending));
    assert_eq!(
        condition(&plan, condition::DISPATCHED).map(|c| c.reason.as_str()),
        Some("AwaitingClaim")
    );
    assert!(!crate::admission::wants_slot(&pending, now(), false));
    assert!(crate::admission::wants_slot(&pending, now(), true));

    // A task created a moment ago gets no status while its claim is in progress: the
    // claim's annotation wakes it, and if the claim takes longer, the grace's end does.
    let mut young = pending.clone();
    young.metadata.creation_timestamp = Some(Time(
        now()
            .checked_sub(SignedDuration::from_secs(2))
            .expect("time"),
    ));
    let plan = decide(&young, &observe(None, true), &policy());
    assert_eq!(plan.status, AgentTaskStatus::default(), "no status write");
    assert!(plan.actions.is_empty());
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(3)));
    let mut old = young.clone();
    old.metadata.creation_timestamp = Some(Time(
        now()
            .checked_sub(SignedDuration::from_secs(6))
            .expect("time"),
    ));
    let plan = decide(&old, &observe(None, true), &policy());
    assert_eq!(
        condition(&plan, condition::DISPATCHED).map(|c| c.reason.as_str()),
        Some("AwaitingClaim")
    );

    let mut claimed = pending.clone();
    if let Some(a) = claimed.metadata.annotations.as_mut() {
        a.insert(
            recac_api::annotations::CLAIM.into(),
            recac_api::annotations::CLAIM_CLAIMED.into(),
        );
    }
    assert_eq!(
        creates(&decide(&claimed, &observe(None, true), &policy())),
        vec![1]
    );

    let mut unavailable = pending.clone();
    let mut lost = pending;
    if let Some(a) = lost.metadata.annotations.as_mut() {
        a.insert(
            recac_api::annotations::CLAIM.into(),
            recac_api::annotations::CLAIM_LOST.into(),
        );
    }
    let plan = decide(&lost, &observe(None, true), &policy());
    assert!(creates(&plan).is_empty());
    assert_eq!(plan.status.phase, Some(TaskPhase::Failed));
    assert_eq!(
        condition(&plan, condition::FAILED).map(|c| c.reason.as_str()),
        Some("ClaimLost")
    );

    // Free, but no claim transition offered: not run, and not called lost.
    if let Some(a) = unavailable.metadata.annotations.as_mut() {
        a.insert(
            recac_api::annotations::CLAIM.into(),
            recac_api::annotations::CLAIM_UNAVAILABLE.into(),
        );
        a.insert(
            recac_api::annotations::CLAIM_MESSAGE.into(),
            "no transition In Progress from To Do".into(),
        );
    }
    let plan = decide(&unavailable, &observe(None, true), &policy());
    assert!(creates(&plan).is_empty());
    assert_eq!(plan.status.phase, Some(TaskPhase::Failed));
    let failed = condition(&plan, condition::FAILED).expect("Failed");
    assert_eq!(failed.reason, "ClaimUnavailable");
    assert!(
        failed
            .message
            .starts_with("no transition In Progress from To Do")
    );
}

fn at(seconds_before_now: i64) -> Timestamp {
    now()
        .checked_sub(SignedDuration::from_secs(seconds_before_now))
        .expect("time")
}

fn first_job(state: AttemptState, created_seconds_ago: i64) -> Option<AttemptObservation> {
    Some(AttemptObservation {
        job_name: "fix-login-a1".into(),
        created: Some(at(created_seconds_ago)),
        state,
        termination: None,
    })
}

#[test]
fn the_first_dispatch_writes_no_status_until_the_pod_runs_or_the_grace_ends() {
    let plan = decide(&task(2), &observe(None, true), &policy());
    assert_eq!(creates(&plan), vec![1]);
    assert_eq!(plan.defer_status, Some(FIRST_STATUS_GRACE));
    assert_eq!(plan.requeue_after, Some(FIRST_STATUS_GRACE));

    // The Job shows in the cache while the status still has no attempt: nothing to write
    // until the grace ends, and no second create.
    let plan = decide(
        &task(2),
        &observe(first_job(AttemptState::Starting, 2), false),
        &policy(),
    );
    assert!(plan.actions.is_empty());
    assert_eq!(plan.defer_status, Some(Duration::from_secs(3)));
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(3)));

    // The grace is over: the dispatch is recorded as of the Job's creation.
    let plan = decide(
        &task(2),
        &observe(first_job(AttemptState::Starting, 6), false),
        &policy(),
    );
    assert!(plan.actions.is_empty());
    assert_eq!(plan.defer_status, None);
    let s = &plan.status;
    assert_eq!(s.phase, Some(TaskPhase::Pending));
    assert_eq!(
        (s.attempt, s.retries, s.job_name.as_deref()),
        (Some(1), Some(0), Some("fix-login-a1"))
    );
    assert_eq!(s.start_time, Some(Time(at(6))));
    let dispatched = condition(&plan, condition::DISPATCHED).expect("Dispatched");
    assert_eq!(dispatched.status, "True");
    assert_eq!(dispatched.last_transition_time, Time(at(6)));

    // A pod that runs within the grace: dispatch and start are one write.
    let plan = decide(
        &task(2),
        &observe(first_job(AttemptState::Running, 1), false),
        &policy(),
    );
    assert_eq!(plan.defer_status, None);
    assert_eq!(plan.status.phase, Some(TaskPhase::Running));
    assert_eq!(plan.status.attempt, Some(1));

    // Recorded: the next look is the ordinary one.
    let t = after(task(2), &plan);
    let again = decide(
        &t,
        &observe(job(1, AttemptState::Running), false),
        &policy(),
    );
    assert_eq!(Some(&again.status), t.status.as_ref());
    assert_eq!(again.defer_status, None);
}

#[test]
fn a_claim_settled_in_this_process_or_shown_by_a_job_dispatches_and_is_recorded() {
    let mut pending = task(2);
    pending.metadata.annotations = Some(
        [(
            recac_api::annotations::CLAIM.to_string(),
            recac_api::annotations::CLAIM_PENDING.to_string(),
        )]
        .into(),
    );
    let told = Observation {
        attempt: None,
        admitted: true,
        claimed: true,
        previous_run: None,
        namespace_hold: None,
        now: now(),
    };
    let plan = decide(&pending, &told, &policy());
    assert_eq!(creates(&plan), vec![1]);
    let claimed = condition(&plan, condition::CLAIMED).expect("Claimed");
    assert_eq!(
        (claimed.status.as_str(), claimed.reason.as_str()),
        ("True", "TicketClaimed")
    );

    // Not admitted: the queued status records the claim at once.
    let queued = decide(
        &pending,
        &Observation {
            admitted: false,
            ..told.clone()
        },
        &policy(),
    );
    assert!(creates(&queued).is_empty());
    assert_eq!(queued.defer_status, None);
    assert!(condition(&queued, condition::CLAIMED).is_some());
    // Once written, the status alone settles it (after a restart, nobody tells it again).
    let recorded = after(pending.clone(), &queued);
    assert_eq!(claim_state(&recorded, false), Claim::Settled);
    assert!(crate::admission::wants_slot(&recorded, now(), false));

    // After a restart the Job alone settles it: a Job is only created after a claim.
    let plan = decide(
        &pending,
        &observe(first_job(AttemptState::Starting, 9), false),
        &policy(),
    );
    assert!(plan.actions.is_empty());
    assert!(condition(&plan, condition::CLAIMED).is_some());
    assert_eq!(plan.status.attempt, Some(1));
}

fn later_run() -> AgentTask {
    let mut t = task(2);
    t.metadata.labels = Some(
        [
            (recac_api::labels::TICKET.to_string(), "PROJ-7".to_string()),
            (recac_api::labels::RUN.to_string(), "2".to_string()),
        ]
        .into(),
    );
    t
}

fn behind(previous: &str, admitted: bool) -> Observation {
    Observation {
        previous_run: Some(previous.into()),
        namespace_hold: None,
        ..observe(None, admitted)
    }
}

#[test]
fn a_later_run_waits_for_the_previous_one_and_says_so_at_once() {
    let plan = decide(&later_run(), &behind("proj-7-1", true), &policy());
    assert!(plan.actions.is_empty());
    assert_eq!(plan.defer_status, None, "waiting is not a dispatch");
    assert_eq!(plan.requeue_after, None, "the admission queue wakes it");
    assert_eq!(plan.status.phase, Some(TaskPhase::Pending));
    assert_eq!(plan.status.attempt, None);
    let queued = condition(&plan, condition::QUEUED).expect("Queued");
    assert_eq!(
        (queued.status.as_str(), queued.reason.as_str()),
        ("True", recac_api::reasons::PREVIOUS_RUN)
    );
    assert!(queued.message.contains("proj-7-1"), "{}", queued.message);
    assert!(
        plan.status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("proj-7-1") && m.contains("PROJ-7")),
        "{:?}",
        plan.status.message
    );

    // A second look changes nothing.
    let waiting = after(later_run(), &plan);
    let again = decide(&waiting, &behind("proj-7-1", false), &policy());
    assert_eq!(Some(&again.status), waiting.status.as_ref());
    assert!(again.actions.is_empty());

    // The previous run is over: the first attempt dispatches and the wait is cleared.
    let plan = decide(&waiting, &observe(None, true), &policy());
    assert_eq!(creates(&plan), vec![1]);
    let queued = condition(&plan, condition::QUEUED).expect("Queued");
    assert_eq!(queued.status, "False");
}

#[test]
fn a_retry_does_not_wait_for_another_run_of_its_ticket() {
    let t = after(
        later_run(),
        &decide(&later_run(), &observe(None, true), &policy()),
    );
    let plan = decide(
        &t,
        &observe(job(1, failed("BackoffLimitExceeded", false)), true),
        &policy(),
    );
    let waiting = after(t, &plan);
    let due = Observation {
        now: now()
            .checked_add(SignedDuration::from_secs(60))
            .expect("time"),
        ..behind("proj-7-1", true)
    };
    let plan = decide(&waiting, &due, &policy());
    assert_eq!(creates(&plan), vec![2]);
}

fn stop_requested(mut t: AgentTask, by: Option<&str>) -> AgentTask {
    let mut annotations = std::collections::BTreeMap::from([(
        recac_api::annotations::STOP.to_string(),
        "10042".to_string(),
    )]);
    if let Some(by) = by {
        annotations.insert(recac_api::annotations::STOP_BY.to_string(), by.to_string());
    }
    t.metadata.annotations = Some(annotations);
    t
}

/// Asserts `plan` ends the task as stopped, and returns the task after it.
fn assert_stopped(t: AgentTask, plan: &Plan) -> AgentTask {
    let s = &plan.status;
    assert_eq!(s.phase, Some(TaskPhase::Failed));
    assert_eq!(s.completion_time, Some(Time(now())));
    assert_eq!(s.next_attempt_time, None);
    let failed = condition(plan, condition::FAILED).expect("Failed");
    assert_eq!(
        (failed.status.as_str(), failed.reason.as_str()),
        ("True", recac_api::reasons::STOPPED)
    );
    assert!(creates(plan).is_empty());
    assert_eq!(event_reasons(plan), vec![recac_api::reasons::STOPPED]);
    let stopped = after(t, plan);
    // Idempotent: a second look changes nothing and does nothing.
    let again = decide(&stopped, &observe(None, true), &policy());
    assert_eq!(Some(&again.status), stopped.status.as_ref());
    assert!(again.actions.is_empty());
    stopped
}

#[test]
fn stopping_a_running_task_suspends_its_job_and_fails_it_without_retry() {
    let t = after(task(2), &decide(&task(2), &observe(None, true), &policy()));
    let t = after(
        t.clone(),
        &decide(&t, &observe(job(1, AttemptState::Running), true), &policy()),
    );
    let stop = stop_requested(t, Some("Ada Lovelace"));
    let plan = decide(
        &stop,
        &observe(job(1, AttemptState::Running), true),
        &policy(),
    );
    assert_eq!(
        plan.actions.first(),
        Some(&Action::SuspendJob {
            name: "fix-login-a1".into(),
            suspend: true
        })
    );
    let failed = condition(&plan, condition::FAILED).expect("Failed");
    assert_eq!(
        failed.message,
        "stopped on the ticket by Ada Lovelace (comment 10042)"
    );
    assert!(
        plan.status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("during attempt 1")),
        "{:?}",
        plan.status.message
    );
    let stopped = assert_stopped(stop, &plan);
    // Its Job, suspended now, is not resumed.
    let plan = decide(
        &stopped,
        &observe(job(1, AttemptState::Suspended), true),
        &policy(),
    );
    assert!(plan.actions.is_empty());
}

#[test]
fn stopping_a_task_that_has_not_run_ends_it_without_a_job() {
    // Queued for a slot, or behind a previous run.
    for observed in [observe(None, false), behind("proj-7-1", true)] {
        let queued = after(later_run(), &decide(&later_run(), &observed, &policy()));
        let stop = stop_requested(queued, None);
        let plan = decide(&stop, &observed, &policy());
        assert!(
            plan.actions
                .iter()
                .all(|a| matches!(a, Action::Event { .. }))
        );
        assert_eq!(plan.status.attempt, None);
        assert_eq!(
            condition(&plan, condition::QUEUED).map(|c| c.status.as_str()),
            Some("False")
        );
        assert!(
            plan.status
                .message
                .as_deref()
                .is_some_and(|m| m.starts_with("stopped on the ticket (comment 10042) before")),
            "{:?}",
            plan.status.message
        );
        assert_stopped(stop, &plan);
    }

    // Waiting for its claim, still within the grace that writes no status.
    let mut pending = stop_requested(task(2), Some("Ada"));
    if let Some(annotations) = pending.metadata.annotations.as_mut() {
        annotations.insert(
            recac_api::annotations::CLAIM.to_string(),
            recac_api::annotations::CLAIM_PENDING.to_string(),
        );
    }
    pending.metadata.creation_timestamp = Some(Time(now()));
    let plan = decide(&pending, &observe(None, true), &policy());
    assert_stopped(pending, &plan);
}

#[test]
fn stopping_a_task_that_waits_for_its_retry_cancels_the_retry() {
    let t = after(task(2), &decide(&task(2), &observe(None, true), &policy()));
    let plan = decide(
        &t,
        &observe(job(1, failed("BackoffLimitExceeded", false)), true),
        &policy(),
    );
    let waiting = after(t, &plan);
    assert!(
        waiting
            .status
            .as_ref()
            .is_some_and(|s| s.next_attempt_time.is_some())
    );
    let stop = stop_requested(waiting, Some("Ada"));
    let plan = decide(&stop, &observe(None, true), &policy());
    assert!(
        plan.actions
            .iter()
            .all(|a| matches!(a, Action::Event { .. }))
    );
    assert_eq!(plan.status.attempt, Some(1));
    assert_stopped(stop, &plan);
}

#[test]
fn stopping_a_first_job_whose_dispatch_is_unrecorded_records_and_suspends_it() {
    let stop = stop_requested(task(2), Some("Ada"));
    let plan = decide(
        &stop,
        &observe(first_job(AttemptState::Starting, 1), false),
        &policy(),
    );
    assert_eq!(plan.defer_status, None);
    assert!(plan.actions.contains(&Action::SuspendJob {
        name: "fix-login-a1".into(),
        suspend: true
    }));
    assert_eq!(plan.status.attempt, Some(1));
    assert_eq!(plan.status.branch.as_deref(), Some("recac/PROJ-7"));
    assert_stopped(stop, &plan);
}

#[test]
fn a_finished_task_or_a_succeeded_attempt_ignores_a_stop() {
    let t = after(task(2), &decide(&task(2), &observe(None, true), &policy()));
    let plan = decide(
        &stop_requested(t.clone(), Some("Ada")),
        &observe(job(1, AttemptState::Succeeded), true),
        &policy(),
    );
    assert_eq!(plan.status.phase, Some(TaskPhase::Succeeded));
    let done = stop_requested(after(t, &plan), Some("Ada"));
    let again = decide(&done, &observe(None, true), &policy());
    assert_eq!(Some(&again.status), done.status.as_ref());
    assert!(again.actions.is_empty());
}

fn planning(max_retries: i32) -> AgentTask {
    let mut t = task(max_retries);
    t.spec.approval = Some(Approval::Plan);
    t
}

/// The task after its first attempt was dispatched.
fn dispatched_task(t: AgentTask) -> AgentTask {
    let plan = decide(&t, &observe(None, true), &policy());
    after(t, &plan)
}

/// The first attempt's Job succeeded, its agent reporting `result` (a result JSON).
fn succeeded_with(result: Option<&str>) -> Option<AttemptObservation> {
    Some(AttemptObservation {
        job_name: "fix-login-a1".into(),
        created: None,
        state: AttemptState::Succeeded,
        termination: Some(Termination {
            exit_code: Some(0),
            result: result.map(|r| serde_json::from_str(r).expect("result json")),
            raw_message: None,
        }),
    })
}

const PLANNED: &str = r#"{"outcome":"planned","branch":"recac/PROJ-7","plan":"1. raise the login timeout\n2. test it"}"#;

/// A planning task whose plan waits for approval.
fn awaiting() -> AgentTask {
    let t = dispatched_task(planning(2));
    let plan = decide(&t, &observe(succeeded_with(Some(PLANNED)), true), &policy());
    assert_eq!(plan.status.phase, Some(TaskPhase::AwaitingApproval));
    after(t, &plan)
}

fn annotated(mut t: AgentTask, pairs: &[(&str, &str)]) -> AgentTask {
    let annotations = t.metadata.annotations.get_or_insert_with(Default::default);
    for (key, value) in pairs {
        annotations.insert((*key).to_string(), (*value).to_string());
    }
    t
}

#[test]
fn a_planning_attempt_that_writes_a_plan_waits_for_approval() {
    let t = dispatched_task(planning(2));
    let plan = decide(&t, &observe(succeeded_with(Some(PLANNED)), true), &policy());
    let s = &plan.status;
    assert_eq!(s.phase, Some(TaskPhase::AwaitingApproval));
    assert_eq!(
        s.plan.as_deref(),
        Some("1. raise the login timeout\n2. test it")
    );
    assert_eq!(s.branch.as_deref(), Some("recac/PROJ-7"));
    assert_eq!(s.completion_time, None, "the task is not done");
    assert_eq!(s.next_attempt_time, None);
    assert_eq!(
        s.message.as_deref(),
        Some("attempt 1 wrote a plan; it waits for approval")
    );
    let ready = condition(&plan, condition::PLAN_READY).expect("PlanReady");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "PlanWritten")
    );
    assert!(condition(&plan, condition::SUCCEEDED).is_none());
    assert!(condition(&plan, condition::FAILED).is_none());
    assert_eq!(event_reasons(&plan), vec!["PlanReady"]);
    assert!(creates(&plan).is_empty());
    assert_eq!(plan.requeue_after, None);
}

#[test]
fn a_planning_attempt_without_a_plan_fails_without_retry() {
    for (result, says) in [
        (None, "no result"),
        (
            Some(r#"{"outcome":"succeeded","commit":"abc123"}"#),
            "outcome succeeded",
        ),
        (Some(r#"{"outcome":"noChanges"}"#), "outcome noChanges"),
        (Some(r#"{"outcome":"planned"}"#), "an empty plan"),
        (
            Some(r#"{"outcome":"planned","plan":"  \n "}"#),
            "an empty plan",
        ),
    ] {
        let t = dispatched_task(planning(5));
        let plan = decide(&t, &observe(succeeded_with(result), true), &policy());
        let s = &plan.status;
        assert_eq!(s.phase, Some(TaskPhase::Failed), "{result:?}");
        assert_eq!(s.completion_time, Some(Time(now())));
        assert_eq!(s.next_attempt_time, None);
        assert_eq!(s.plan, None);
        let message = s.message.as_deref().unwrap_or_default();
        assert!(
            message.contains("the agent reported no plan") && message.contains(says),
            "{message}"
        );
        let failed = condition(&plan, condition::FAILED).expect("Failed");
        assert_eq!(
            (failed.status.as_str(), failed.reason.as_str()),
            ("True", "NoPlan")
        );
        assert!(condition(&plan, condition::PLAN_READY).is_none());
        assert_eq!(event_reasons(&plan), vec!["NoPlan"]);
        assert!(creates(&plan).is_empty());
        assert_eq!(plan.requeue_after, None);
    }
}

#[test]
fn a_task_that_does_the_work_and_reports_a_plan_simply_succeeds() {
    let t = dispatched_task(task(2));
    let plan = decide(&t, &observe(succeeded_with(Some(PLANNED)), true), &policy());
    assert_eq!(plan.status.phase, Some(TaskPhase::Succeeded));
    assert_eq!(plan.status.completion_time, Some(Time(now())));
    assert_eq!(plan.status.plan, None);
    assert!(condition(&plan, condition::PLAN_READY).is_none());
    assert_eq!(event_reasons(&plan), vec!["Succeeded"]);
}

#[test]
fn an_undecided_plan_costs_nothing_and_ignores_a_stop() {
    let waiting = awaiting();
    let plan = decide(&waiting, &observe(None, true), &policy());
    assert_eq!(Some(&plan.status), waiting.status.as_ref());
    assert!(plan.actions.is_empty());
    assert_eq!(plan.requeue_after, None);
    assert_eq!(plan.defer_status, None);

    // Nothing runs, so a stop has nothing to stop: the plan still waits for its decision.
    let stop = stop_requested(waiting, Some("Ada"));
    let plan = decide(&stop, &observe(None, true), &policy());
    assert_eq!(Some(&plan.status), stop.status.as_ref());
    assert!(plan.actions.is_empty());
    assert_eq!(plan.requeue_after, None);
}

#[test]
fn an_approved_plan_ends_the_task_succeeded() {
    let approved = annotated(
        awaiting(),
        &[
            (recac_api::annotations::APPROVAL, "approved"),
            (recac_api::annotations::APPROVAL_BY, "Ada Lovelace"),
        ],
    );
    let plan = decide(&approved, &observe(None, true), &policy());
    let s = &plan.status;
    assert_eq!(s.phase, Some(TaskPhase::Succeeded));
    assert_eq!(s.completion_time, Some(Time(now())));
    assert_eq!(
        s.message.as_deref(),
        Some("the plan was approved by Ada Lovelace")
    );
    assert!(s.plan.is_some(), "the plan stays in status");
    let succeeded = condition(&plan, condition::SUCCEEDED).expect("Succeeded");
    assert_eq!(
        (succeeded.status.as_str(), succeeded.reason.as_str()),
        ("True", recac_api::reasons::PLAN_APPROVED)
    );
    assert_eq!(succeeded.message, "the plan was approved by Ada Lovelace");
    assert_eq!(
        event_reasons(&plan),
        vec![recac_api::reasons::PLAN_APPROVED]
    );
    assert!(creates(&plan).is_empty());
    assert_eq!(plan.requeue_after, None);

    // Finished: the annotation is not read again.
    let done = after(approved, &plan);
    let again = decide(&done, &observe(None, true), &policy());
    assert_eq!(Some(&again.status), done.status.as_ref());
    assert!(again.actions.is_empty());

    // Without a name, by someone.
    let anonymous = annotated(
        awaiting(),
        &[(recac_api::annotations::APPROVAL, " approved ")],
    );
    let plan = decide(&anonymous, &observe(None, true), &policy());
    assert_eq!(plan.status.phase, Some(TaskPhase::Succeeded));
    assert_eq!(
        plan.status.message.as_deref(),
        Some("the plan was approved by someone")
    );
}

#[test]
fn a_rejected_plan_ends_the_task_failed() {
    let rejected = annotated(
        awaiting(),
        &[
            (recac_api::annotations::APPROVAL, "rejected"),
            (recac_api::annotations::APPROVAL_BY, "Grace Hopper"),
        ],
    );
    let plan = decide(&rejected, &observe(None, true), &policy());
    let s = &plan.status;
    assert_eq!(s.phase, Some(TaskPhase::Failed));
    assert_eq!(s.completion_time, Some(Time(now())));
    assert_eq!(
        s.message.as_deref(),
        Some("the plan was rejected by Grace Hopper")
    );
    let failed = condition(&plan, condition::FAILED).expect("Failed");
    assert_eq!(
        (failed.status.as_str(), failed.reason.as_str()),
        ("True", recac_api::reasons::PLAN_REJECTED)
    );
    assert!(condition(&plan, condition::SUCCEEDED).is_none());
    assert_eq!(
        event_reasons(&plan),
        vec![recac_api::reasons::PLAN_REJECTED]
    );
    assert!(creates(&plan).is_empty());
    let done = after(rejected, &plan);
    let again = decide(&done, &observe(None, true), &policy());
    assert_eq!(Some(&again.status), done.status.as_ref());
    assert!(again.actions.is_empty());
}

#[test]
fn an_approval_value_not_understood_is_named_and_the_plan_waits_on() {
    let waiting = awaiting();
    let unclear = annotated(
        waiting.clone(),
        &[(recac_api::annotations::APPROVAL, "lgtm")],
    );
    let plan = decide(&unclear, &observe(None, true), &policy());
    let s = &plan.status;
    assert_eq!(s.phase, Some(TaskPhase::AwaitingApproval));
    assert_eq!(s.completion_time, None);
    let message = s.message.as_deref().unwrap_or_default();
    assert!(
        message.contains("\"lgtm\" is not understood") && message.contains("approved or rejected"),
        "{message}"
    );
    assert_eq!(
        s.conditions,
        waiting.status.clone().unwrap_or_default().conditions
    );
    assert!(plan.actions.is_empty());
    assert_eq!(plan.requeue_after, None);

    // Said once: a second look writes nothing.
    let told = after(unclear, &plan);
    let again = decide(&told, &observe(None, true), &policy());
    assert_eq!(Some(&again.status), told.status.as_ref());

    // The annotation is removed: the plan waits as it did.
    let mut cleared = told;
    cleared.metadata.annotations = None;
    let plan = decide(&cleared, &observe(None, true), &policy());
    assert_eq!(Some(&plan.status), waiting.status.as_ref());
}

// Budgets, spend and partial results.

fn priced() -> RetryPolicy {
    RetryPolicy {
        pricing: Arc::new(Pricing {
            prices: vec![crate::budget::Price {
                provider: "openai".into(),
                model: "gpt-x".into(),
                input_per_million: 2_000_000,
                output_per_million: 10_000_000,
                currency: "USD".into(),
            }],
            default_provider: Some("openai".into()),
            default_model: Some("gpt-x".into()),
        }),
        ..policy()
    }
}

fn budgeted(max_retries: i32, budget: recac_api::Budget) -> AgentTask {
    let mut t = task(max_retries);
    t.spec.budget = Some(budget);
    t
}

fn tokens(limit: i64) -> recac_api::Budget {
    recac_api::Budget {
        tokens: Some(limit),
        ..Default::default()
    }
}

/// The task at `attempt`, its Job just created.
fn at_attempt(mut t: AgentTask, attempt: i32, spend: Option<Spend>) -> AgentTask {
    t.status = Some(AgentTaskStatus {
        phase: Some(TaskPhase::Running),
        attempt: Some(attempt),
        retries: Some(attempt - 1),
        job_name: Some(format!("fix-login-a{attempt}")),
        branch: Some("recac/PROJ-7".into()),
        spend,
        ..Default::default()
    });
    t
}

fn ended(attempt: i32, state: AttemptState, exit: i32, result: &str) -> Option<AttemptObservation> {
    Some(AttemptObservation {
        job_name: format!("fix-login-a{attempt}"),
        created: None,
        state,
        termination: Some(Termination {
            exit_code: Some(exit),
            result: Some(serde_json::from_str(result).expect("result json")),
            raw_message: None,
        }),
    })
}

const DEADLINE_PARTIAL: &str = r#"{"outcome":"partial","branch":"recac/PROJ-7","commit":"half1","partial":{"cause":"deadline","done":"the parser","left":"the tests"},"usage":[{"provider":"openai","model":"gpt-x","inputTokens":1000,"outputTokens":200}]}"#;

fn spend_of(plan: &Plan) -> Spend {
    plan.status.spend.clone().unwrap_or_default()
}

#[test]
fn each_attempts_usage_is_counted_once_with_costs_from_the_price_table() {
    let t = at_attempt(task(2), 1, None);
    let obs = observe(
        ended(
            1,
            failed("BackoffLimitExceeded", false),
            1,
            DEADLINE_PARTIAL,
        ),
        true,
    );
    let plan = decide(&t, &obs, &priced());
    let spend = spend_of(&plan);
    assert_eq!(spend.attempts, 1);
    assert_eq!(spend.not_reported, 0);
    assert_eq!(spend.models.len(), 1);
    let gpt = &spend.models[0];
    assert_eq!((gpt.input_tokens, gpt.output_tokens), (1000, 200));
    // 1000 × 2/M + 200 × 10/M = 0.002 + 0.002.
    assert_eq!(gpt.cost.as_deref(), Some("0.004"));
    assert_eq!(gpt.currency.as_deref(), Some("USD"));
    assert_eq!(plan.spent, spend.models);

    // The same attempt decided again (say the status write failed, and a newer status
    // already counts it): nothing is added twice.
    let counted = at_attempt(task(2), 1, Some(spend.clone()));
    let again = decide(&counted, &obs, &priced());
    assert_eq!(spend_of(&again), spend);
    assert!(again.spent.is_empty());

    // Attempt 2 succeeds with its own usage, and a cost the agent reported itself.
    let t = at_attempt(task(2), 2, Some(spend));
    let plan = decide(
        &t,
        &observe(
            ended(
                2,
                AttemptState::Succeeded,
                0,
                r#"{"outcome":"succeeded","usage":[{"provider":"openai","model":"gpt-x","inputTokens":500,"outputTokens":100,"cost":"0.01","currency":"USD"}]}"#,
            ),
            true,
        ),
        &priced(),
    );
    let spend = spend_of(&plan);
    assert_eq!(spend.attempts, 2);
    assert_eq!(
        (spend.models[0].input_tokens, spend.models[0].output_tokens),
        (1500, 300)
    );
    assert_eq!(spend.models[0].cost.as_deref(), Some("0.014"));
    assert_eq!(plan.spent.len(), 1);
    assert_eq!(plan.spent[0].input_tokens, 500);

    // An agent that reports no usage, or no result at all: counted, as not reported.
    let t = at_attempt(task(2), 1, None);
    let plan = decide(
        &t,
        &observe(
            ended(1, AttemptState::Succeeded, 0, r#"{"outcome":"succeeded"}"#),
            true,
        ),
        &priced(),
    );
    assert_eq!(
        spend_of(&plan),
        Spend {
            models: Vec::new(),
            attempts: 1,
            not_reported: 1
        }
    );
    assert!(plan.spent.is_empty());
    let t = at_attempt(task(2), 3, Some(spend_of(&plan)));
    let plan = decide(&t, &observe(None, true), &priced());
    // Attempt 2 was never counted, attempt 3's Job is gone: both unknown.
    assert_eq!(spend_of(&plan).attempts, 3);
    assert_eq!(spend_of(&plan).not_reported, 3);
}

#[test]
fn a_deadline_partial_is_retried_and_a_later_success_clears_partial() {
    let t = at_attempt(task(2), 1, None);
    let plan = decide(
        &t,
        &observe(
            ended(
                1,
                failed("BackoffLimitExceeded", false),
                1,
                DEADLINE_PARTIAL,
            ),
            true,
        ),
        &policy(),
    );
    assert_eq!(plan.status.phase, Some(TaskPhase::Pending));
    assert_eq!(plan.status.partial, Some(true));
    assert_eq!(plan.status.commit.as_deref(), Some("half1"));
    assert!(plan.status.next_attempt_time.is_some());
    let message = plan.status.message.clone().unwrap_or_default();
    assert!(
        message.contains("cut short by its deadline")
            && message.contains("branch recac/PROJ-7 at commit half1"),
        "{message}"
    );
    assert_eq!(event_reasons(&plan), vec!["AttemptFailed"]);

    let t = after(t, &plan);
    let later = Observation {
        now: now()
            .checked_add(SignedDuration::from_secs(60))
            .expect("time"),
        ..observe(None, true)
    };
    let plan = decide(&t, &later, &policy());
    assert_eq!(creates(&plan), vec![2]);
    // Still partial until an attempt finishes the work.
    assert_eq!(plan.status.partial, Some(true));
    let t = after(t, &plan);
    let plan = decide(
        &t,
        &observe(
            ended(
                2,
                AttemptState::Succeeded,
                0,
                r#"{"outcome":"succeeded","commit":"done2"}"#,
            ),
            true,
        ),
        &policy(),
    );
    assert_eq!(plan.status.phase, Some(TaskPhase::Succeeded));
    assert_eq!(plan.status.partial, None);
    assert_eq!(plan.status.commit.as_deref(), Some("done2"));
    assert_eq!(spend_of(&plan).attempts, 2);
    assert_eq!(spend_of(&plan).not_reported, 1);
}

#[test]
fn a_deadline_partial_without_retries_left_ends_deadline_exceeded() {
    let t = at_attempt(task(1), 2, None);
    let plan = decide(
        &t,
        &observe(
            ended(
                2,
                failed("BackoffLimitExceeded", false),
                1,
                &DEADLINE_PARTIAL.replace("half1", "half2"),
            ),
            true,
        ),
        &policy(),
    );
    assert_eq!(plan.status.phase, Some(TaskPhase::Failed));
    assert_eq!(plan.status.partial, Some(true));
    let c = condition(&plan, "Failed").expect("failed condition");
    assert_eq!(c.reason, "DeadlineExceeded");
    assert!(
        c.message
            .contains("its work so far is on branch recac/PROJ-7 at commit half2")
            && c.message.contains("no retries left"),
        "{}",
        c.message
    );
    assert_eq!(event_reasons(&plan), vec!["DeadlineExceeded"]);
    assert!(creates(&plan).is_empty());
}

#[test]
fn a_budget_partial_ends_the_task_at_once() {
    let t = at_attempt(task(3), 1, None);
    let plan = decide(
        &t,
        &observe(
            ended(
                1,
                failed("PodFailurePolicy", true),
                3,
                r#"{"outcome":"partial","branch":"recac/PROJ-7","commit":"b1","partial":{"cause":"budget","left":"the docs"},"usage":[{"model":"gpt-x","inputTokens":10,"outputTokens":10}]}"#,
            ),
            true,
        ),
        &policy(),
    );
    assert!(creates(&plan).is_empty());
    assert_eq!(plan.status.phase, Some(TaskPhase::Failed));
    assert_eq!(plan.status.next_attempt_time, None);
    assert_eq!(plan.status.partial, Some(true));
    assert_eq!(plan.status.commit.as_deref(), Some("b1"));
    let c = condition(&plan, "Failed").expect("failed condition");
    assert_eq!(c.reason, "BudgetExhausted");
    assert!(
        c.message.contains("the docs") && c.message.contains("commit b1"),
        "{}",
        c.message
    );
    assert_eq!(event_reasons(&plan), vec!["BudgetExhausted"]);
    assert_eq!(spend_of(&plan).attempts, 1);
    // The provider the agent left out is the task's.
    assert_eq!(spend_of(&plan).models[0].provider, None);
    let plan = decide(
        &t,
        &observe(
            ended(
                1,
                failed("PodFailurePolicy", true),
                3,
                r#"{"outcome":"partial","partial":{"cause":"budget"},"usage":[{"model":"gpt-x","inputTokens":10,"outputTokens":10}]}"#,
            ),
            true,
        ),
        &priced(),
    );
    assert_eq!(
        spend_of(&plan).models[0].provider.as_deref(),
        Some("openai")
    );
    let message = plan.status.message.unwrap_or_default();
    assert!(
        message.contains("its work so far is on branch recac/PROJ-7;"),
        "{message}"
    );
}

#[test]
fn a_spent_budget_stops_the_retry() {
    // Attempt 1 used more than the budget and failed: no attempt 2.
    let t = at_attempt(budgeted(2, tokens(1000)), 1, None);
    let plan = decide(
        &t,
        &observe(
            ended(
                1,
                failed("BackoffLimitExceeded", false),
                1,
                r#"{"outcome":"failed","usage":[{"provider":"openai","model":"gpt-x","inputTokens":900,"outputTokens":300}]}"#,
            ),
            true,
        ),
        &policy(),
    );
    assert_eq!(plan.status.phase, Some(TaskPhase::Failed));
    assert_eq!(plan.status.next_attempt_time, None);
    let c = condition(&plan, "Failed").expect("failed condition");
    assert_eq!(c.reason, "BudgetExhausted");
    assert!(c.message.contains("spec.budget.tokens"), "{}", c.message);
    assert_eq!(event_reasons(&plan), vec!["BudgetExhausted"]);

    // Under the budget: retried as usual.
    let t = at_attempt(budgeted(2, tokens(2000)), 1, None);
    let plan = decide(
        &t,
        &observe(
            ended(
                1,
                failed("BackoffLimitExceeded", false),
                1,
                r#"{"outcome":"failed","usage":[{"provider":"openai","model":"gpt-x","inputTokens":900,"outputTokens":300}]}"#,
            ),
            true,
        ),
        &policy(),
    );
    assert_eq!(plan.status.phase, Some(TaskPhase::Pending));
    assert!(plan.status.next_attempt_time.is_some());

    // A due retry of a task whose budget is spent (an earlier operator let it wait): no
    // Job, Failed.
    let mut waiting = plan.status.clone();
    waiting.spend = Some(Spend {
        models: vec![ModelSpend {
            model: "gpt-x".into(),
            input_tokens: 1500,
            output_tokens: 500,
            ..Default::default()
        }],
        attempts: 1,
        not_reported: 0,
    });
    let mut t = budgeted(2, tokens(2000));
    t.status = Some(waiting);
    let due = Observation {
        now: now()
            .checked_add(SignedDuration::from_secs(600))
            .expect("time"),
        ..observe(None, true)
    };
    let plan = decide(&t, &due, &policy());
    assert!(creates(&plan).is_empty());
    assert_eq!(plan.status.phase, Some(TaskPhase::Failed));
    let c = condition(&plan, "Failed").expect("failed condition");
    assert_eq!(c.reason, "BudgetExhausted");
    assert!(
        c.message.contains("attempt 2 is not dispatched"),
        "{}",
        c.message
    );
}

#[test]
fn a_cost_budget_is_spent_by_priced_usage() {
    let budget = recac_api::Budget {
        cost: Some("0.01".into()),
        ..Default::default()
    };
    // 2000 input tokens at 2/M and 600 output at 10/M: 0.004 + 0.006 = the whole budget.
    let t = at_attempt(budgeted(2, budget), 1, None);
    let plan = decide(
        &t,
        &observe(
            ended(
                1,
                failed("BackoffLimitExceeded", false),
                1,
                r#"{"outcome":"failed","usage":[{"provider":"openai","model":"gpt-x","inputTokens":2000,"outputTokens":600}]}"#,
            ),
            true,
        ),
        &priced(),
    );
    assert_eq!(spend_of(&plan).models[0].cost.as_deref(), Some("0.01"));
    let c = condition(&plan, "Failed").expect("failed condition");
    assert_eq!(c.reason, "BudgetExhausted");
    assert!(c.message.contains("spec.budget.cost"), "{}", c.message);
}

#[test]
fn a_cost_budget_without_a_price_is_refused_before_any_job() {
    let budget = recac_api::Budget {
        cost: Some("5".into()),
        ..Default::default()
    };
    let mut t = budgeted(2, budget.clone());
    t.spec.agent = Some(Box::new(recac_api::AgentSpec {
        model: Some("gpt-unpriced".into()),
        ..Default::default()
    }));
    let plan = decide(&t, &observe(None, true), &priced());
    assert!(creates(&plan).is_empty());
    assert_eq!(plan.status.phase, Some(TaskPhase::Failed));
    assert_eq!(plan.status.attempt, None);
    let c = condition(&plan, "Failed").expect("failed condition");
    assert_eq!(c.reason, "BudgetUnpriced");
    assert!(
        c.message.contains("openai/gpt-unpriced")
            && c.message.contains("agent.prices")
            && c.message.contains("the task was not run"),
        "{}",
        c.message
    );
    assert_eq!(event_reasons(&plan), vec!["BudgetUnpriced"]);
    // Nothing more happens to it.
    let plan = decide(&after(t, &plan), &observe(None, true), &priced());
    assert!(plan.actions.is_empty());

    // Priced (the operator's default model), or held to tokens only: dispatched.
    let plan = decide(&budgeted(2, budget), &observe(None, true), &priced());
    assert_eq!(creates(&plan), vec![1]);
    let plan = decide(&budgeted(2, tokens(10)), &observe(None, true), &policy());
    assert_eq!(creates(&plan), vec![1]);
    // A queued task fails as well: it needs no slot for that.
    let mut unpriced = budgeted(
        2,
        recac_api::Budget {
            cost: Some("5".into()),
            ..Default::default()
        },
    );
    unpriced.spec.suspend = true;
    let plan = decide(&unpriced, &observe(None, false), &policy());
    assert_eq!(
        condition(&plan, "Failed").map(|c| c.reason.clone()),
        Some("BudgetUnpriced".to_string())
    );
}

fn namespace_spent() -> crate::namespace_budget::NamespaceHold {
    crate::namespace_budget::NamespaceHold {
        reason: recac_api::reasons::NAMESPACE_BUDGET_SPENT,
        message: "namespace team-a's daily budget of 100 tokens is spent; new runs wait until 2027-01-16T00:00:00Z".into(),
        recheck_after: Duration::from_secs(3600),
        spent: None,
    }
}

#[test]
fn a_spent_namespace_budget_holds_new_attempts_without_a_hot_loop() {
    let held = Observation {
        namespace_hold: Some(namespace_spent()),
        ..observe(None, true)
    };
    let plan = decide(&task(2), &held, &policy());
    assert!(
        creates(&plan).is_empty(),
        "no Job while the namespace is spent"
    );
    assert_eq!(plan.status.phase, Some(TaskPhase::Pending));
    let queued = condition(&plan, condition::QUEUED).expect("Queued");
    assert_eq!(
        (queued.status.as_str(), queued.reason.as_str()),
        ("True", "NamespaceBudgetSpent")
    );
    assert!(queued.message.contains("daily budget of 100 tokens"));
    assert!(
        plan.status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("new runs wait until 2027-01-16T00:00:00Z")),
        "{:?}",
        plan.status.message
    );
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(3600)));
    // Looked at again while still held: the same status, so nothing is written.
    let waiting = after(task(2), &plan);
    let again = decide(&waiting, &held, &policy());
    assert_eq!(Some(&again.status), waiting.status.as_ref());
    assert!(again.actions.is_empty());
    // The period rolled over: the first attempt starts and the wait is over.
    let plan = decide(&waiting, &observe(None, true), &policy());
    assert_eq!(creates(&plan), vec![1]);
    let queued = condition(&plan, condition::QUEUED).expect("Queued");
    assert_eq!(queued.status, "False");
}

#[test]
fn a_spent_namespace_budget_holds_a_due_retry_but_not_a_running_attempt() {
    let t = task(2);
    let plan = decide(
        &t,
        &observe(job(1, failed("BackoffLimitExceeded", false)), true),
        &policy(),
    );
    let waiting = after(t.clone(), &plan);
    let due = Observation {
        now: now()
            .checked_add(SignedDuration::from_secs(60))
            .expect("time"),
        namespace_hold: Some(namespace_spent()),
        ..observe(None, true)
    };
    let plan = decide(&waiting, &due, &policy());
    assert!(creates(&plan).is_empty(), "the retry waits");
    assert_eq!(
        condition(&plan, condition::QUEUED).map(|c| c.reason.as_str()),
        Some("NamespaceBudgetSpent")
    );
    assert_eq!(plan.status.attempt, Some(1));

    // A running attempt goes on (its own spec.budget is what stops it).
    let dispatched = after(t.clone(), &decide(&t, &observe(None, true), &policy()));
    let running = Observation {
        namespace_hold: Some(namespace_spent()),
        ..observe(job(1, AttemptState::Running), false)
    };
    let plan = decide(&dispatched, &running, &policy());
    assert!(
        plan.actions
            .iter()
            .all(|a| !matches!(a, Action::SuspendJob { .. }))
    );
    assert_eq!(plan.status.phase, Some(TaskPhase::Running));
}
