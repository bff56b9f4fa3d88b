//! What a schedule needs now: a pure function of the schedule, its runs and the time.
//!
//! It follows CronJob's controller:
//! - the runs that are due are those after `status.lastScheduleTime` (or, before the first
//!   run, the schedule's creation) up to now; only the **latest** of them is created, and
//!   only when it is at most `spec.startingDeadlineSeconds` late. Earlier missed runs are
//!   reported, never created. When more than [`MAX_MISSED`] were missed, counting stops, an
//!   Event says so (set or lower startingDeadlineSeconds, or check the clock) and the latest
//!   run is still created: the decision never loops over an unbounded past;
//! - each run's AgentTask has a name made from the schedule and the due time
//!   ([`run_name`]), so a run found already created (after a restart, or a decision made on a
//!   stale copy) is adopted, never created twice;
//! - `Forbid` holds a due run back while an earlier run's task has not finished (it starts
//!   when that task finishes, if still within the starting deadline); `Replace` deletes the
//!   unfinished tasks first; `Allow` runs them side by side;
//! - suspended, nothing is created (runs due meanwhile count as missed);
//! - finished tasks beyond the history limits are deleted, oldest first, in every state.

use jiff::{SignedDuration, Timestamp};
use recac_api::{AgentTaskScheduleSpec, ConcurrencyPolicy};

use crate::cron::{Schedule, ScheduleError};

/// Missed runs counted before a decision gives up counting (as CronJob's 100).
pub const MAX_MISSED: usize = 100;

/// What a decision reads of the schedule object.
#[derive(Clone, Debug)]
pub struct ScheduleFacts<'a> {
    pub name: &'a str,
    pub spec: &'a AgentTaskScheduleSpec,
    /// When the schedule was created: the start of time for its first run.
    pub created: Timestamp,
    pub last_schedule_time: Option<Timestamp>,
    pub last_successful_time: Option<Timestamp>,
}

/// Where a run's AgentTask is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    Active,
    Succeeded,
    Failed,
}

/// One AgentTask this schedule created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    pub name: String,
    pub state: RunState,
    /// The due time it was created for.
    pub scheduled_at: Option<Timestamp>,
    pub created: Option<Timestamp>,
    pub finished: Option<Timestamp>,
}

impl Run {
    /// Oldest first: by finish, else due time, else creation.
    fn age_key(
        &self,
    ) -> (
        Option<Timestamp>,
        Option<Timestamp>,
        Option<Timestamp>,
        &str,
    ) {
        (self.finished, self.scheduled_at, self.created, &self.name)
    }
}

/// A run to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRun {
    pub name: String,
    pub due: Timestamp,
}

/// Why a task is deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteWhy {
    /// concurrencyPolicy Replace: a new run replaces it.
    Replaced,
    /// Beyond successfulTasksHistoryLimit.
    SucceededHistory,
    /// Beyond failedTasksHistoryLimit.
    FailedHistory,
}

impl DeleteWhy {
    pub fn as_str(self) -> &'static str {
        match self {
            DeleteWhy::Replaced => "Replaced",
            DeleteWhy::SucceededHistory => "SucceededHistory",
            DeleteWhy::FailedHistory => "FailedHistory",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deletion {
    pub name: String,
    pub why: DeleteWhy,
}

/// Something to tell people (an Event). `key` identifies it, so it is told once per term.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
    pub key: String,
}

/// A condition's wanted state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CondState {
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

/// Everything a decision wants done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub create: Option<NewRun>,
    /// The due run, found already created (its status record was lost, or the copy decided
    /// on is stale): adopted, not created again.
    pub adopted: Option<NewRun>,
    pub delete: Vec<Deletion>,
    pub notes: Vec<Note>,
    pub last_schedule_time: Option<Timestamp>,
    pub last_successful_time: Option<Timestamp>,
    pub next_schedule_time: Option<Timestamp>,
    /// The unfinished runs once the plan is carried out.
    pub active: Vec<String>,
    pub ready: CondState,
    /// `None` leaves the Skipped condition as it is.
    pub skipped: Option<CondState>,
    /// When to decide again without any change (the next due time, or a deadline).
    pub requeue_at: Option<Timestamp>,
}

/// The AgentTask name of the run due at `due`: `<schedule>-<minutes since 1970>`, as CronJob
/// names its Jobs.
pub fn run_name(schedule: &str, due: Timestamp) -> String {
    format!("{schedule}-{}", due.as_second().div_euclid(60))
}

/// Decides what `schedule` needs at `now`, given the runs it created.
pub fn decide(schedule: &ScheduleFacts<'_>, runs: &[Run], now: Timestamp) -> Plan {
    let spec = schedule.spec;
    let mut plan = Plan {
        create: None,
        adopted: None,
        delete: history(spec, runs),
        notes: Vec::new(),
        last_schedule_time: schedule.last_schedule_time,
        last_successful_time: last_successful(schedule.last_successful_time, runs),
        next_schedule_time: None,
        active: runs
            .iter()
            .filter(|r| r.state == RunState::Active)
            .map(|r| r.name.clone())
            .collect(),
        ready: CondState {
            status: true,
            reason: "Scheduled",
            message: String::new(),
        },
        skipped: None,
        requeue_at: None,
    };

    let parsed = Schedule::parse(&spec.schedule, spec.time_zone.as_deref()).and_then(|s| {
        // A schedule whose dates never come is as wrong as a malformed one.
        match s.next_after(now).or_else(|| s.latest_at_or_before(now)) {
            Some(_) => Ok(s),
            None => Err(ScheduleError::Schedule(crate::cron::CronError(format!(
                "{:?} never matches a date",
                spec.schedule
            )))),
        }
    });
    let cron = match parsed {
        Ok(cron) => cron,
        Err(error) => {
            let reason = match error {
                ScheduleError::Schedule(_) => "InvalidSchedule",
                ScheduleError::TimeZone(_) => "InvalidTimeZone",
            };
            let message = format!("{error}; no run is created until it is fixed");
            plan.notes.push(Note {
                warning: true,
                reason,
                key: format!("{reason}/{message}"),
                message: message.clone(),
            });
            plan.ready = CondState {
                status: false,
                reason,
                message,
            };
            return plan;
        }
    };

    if spec.suspend {
        plan.ready = CondState {
            status: false,
            reason: "Suspended",
            message: "spec.suspend is true: no new run is created".into(),
        };
        return plan;
    }

    let next = cron.next_after(now);
    plan.next_schedule_time = next;
    plan.requeue_at = next;
    plan.ready.message = match next {
        Some(next) => format!(
            "the next run is due at {} ({})",
            next,
            zone_name(&cron, spec.time_zone.as_deref())
        ),
        None => "no further run is due".into(),
    };

    let since = schedule.last_schedule_time.unwrap_or(schedule.created);
    let Some(due) = cron.latest_at_or_before(now).filter(|due| *due > since) else {
        return plan;
    };
    let deadline = spec
        .starting_deadline_seconds
        .map(|s| SignedDuration::from_secs(s.max(0)));
    let too_late = |due: Timestamp| {
        deadline.is_some_and(|d| due.checked_add(d).is_ok_and(|limit| now > limit))
    };
    if too_late(due) {
        let message = format!(
            "the run due at {due} was not created: it is more than spec.startingDeadlineSeconds ({}s) late",
            spec.starting_deadline_seconds.unwrap_or_default()
        );
        plan.notes.push(Note {
            warning: true,
            reason: "MissedDeadline",
            key: format!("MissedDeadline/{due}"),
            message: message.clone(),
        });
        plan.skipped = Some(CondState {
            status: true,
            reason: "DeadlineExceeded",
            message,
        });
        return plan;
    }

    // Runs missed before `due`, counted from the start of the window (bounded).
    let window_start = match deadline.and_then(|d| now.checked_sub(d).ok()) {
        Some(start) if start > since => start,
        _ => since,
    };
    let missed = cron.count_between(window_start, due, MAX_MISSED);
    if missed > MAX_MISSED {
        plan.notes.push(Note {
            warning: true,
            reason: "TooManyMissedRuns",
            key: format!("TooManyMissedRuns/{due}"),
            message: format!(
                "more than {MAX_MISSED} runs were missed since {window_start}; only the latest (due at {due}) is created. Set or lower spec.startingDeadlineSeconds, or check the clock"
            ),
        });
    } else if missed > 1 {
        plan.notes.push(Note {
            warning: false,
            reason: "MissedRuns",
            key: format!("MissedRuns/{due}"),
            message: format!(
                "{} earlier runs were missed since {window_start}; only the latest (due at {due}) is created",
                missed - 1
            ),
        });
    }

    let name = run_name(schedule.name, due);
    if runs.iter().any(|r| r.name == name) {
        // Created before (the status write was lost, or this copy is stale): adopt it.
        plan.last_schedule_time = Some(due);
        plan.skipped = Some(created_condition(&name, due));
        if schedule.last_schedule_time != Some(due) {
            plan.adopted = Some(NewRun { name, due });
        }
        return plan;
    }

    let others: Vec<&Run> = runs
        .iter()
        .filter(|r| r.state == RunState::Active)
        .collect();
    match spec.concurrency_policy {
        ConcurrencyPolicy::Forbid if !others.is_empty() => {
            let running: Vec<&str> = others.iter().map(|r| r.name.as_str()).collect();
            let message = format!(
                "the run due at {due} is held back: {} has not finished (concurrencyPolicy Forbid); it starts when that task finishes{}",
                running.join(", "),
                match spec.starting_deadline_seconds {
                    Some(s) => format!(" within {s}s of its due time"),
                    None => String::new(),
                }
            );
            plan.notes.push(Note {
                warning: false,
                reason: "Skipped",
                key: format!("Skipped/{due}"),
                message: message.clone(),
            });
            plan.skipped = Some(CondState {
                status: true,
                reason: "ConcurrencyForbid",
                message,
            });
            // Look again when the deadline passes, so the condition tells the truth.
            if let Some(limit) = deadline.and_then(|d| due.checked_add(d).ok()) {
                let after = limit
                    .checked_add(SignedDuration::from_secs(1))
                    .unwrap_or(limit);
                plan.requeue_at = Some(plan.requeue_at.map_or(after, |r| r.min(after)));
            }
            return plan;
        }
        ConcurrencyPolicy::Replace if !others.is_empty() => {
            for run in others {
                plan.delete.push(Deletion {
                    name: run.name.clone(),
                    why: DeleteWhy::Replaced,
                });
                plan.notes.push(Note {
                    warning: false,
                    reason: "Replaced",
                    key: format!("Replaced/{}", run.name),
                    message: format!(
                        "deleted the unfinished AgentTask {} to replace it with the run due at {due} (concurrencyPolicy Replace)",
                        run.name
                    ),
                });
            }
            plan.active.clear();
        }
        _ => {}
    }
    plan.active.push(name.clone());
    plan.last_schedule_time = Some(due);
    plan.skipped = Some(created_condition(&name, due));
    plan.create = Some(NewRun { name, due });
    plan
}

fn created_condition(name: &str, due: Timestamp) -> CondState {
    CondState {
        status: false,
        reason: "Created",
        message: format!("the run due at {due} is AgentTask {name}"),
    }
}

fn zone_name(cron: &Schedule, configured: Option<&str>) -> String {
    cron.zone()
        .iana_name()
        .or(configured)
        .unwrap_or("UTC")
        .to_string()
}

/// The latest finish of a succeeded run, never moving back.
fn last_successful(previous: Option<Timestamp>, runs: &[Run]) -> Option<Timestamp> {
    runs.iter()
        .filter(|r| r.state == RunState::Succeeded)
        .filter_map(|r| r.finished)
        .chain(previous)
        .max()
}

/// Finished runs beyond the history limits, oldest first.
fn history(spec: &AgentTaskScheduleSpec, runs: &[Run]) -> Vec<Deletion> {
    let mut out = Vec::new();
    for (state, limit, why) in [
        (
            RunState::Succeeded,
            spec.successful_tasks_history_limit,
            DeleteWhy::SucceededHistory,
        ),
        (
            RunState::Failed,
            spec.failed_tasks_history_limit,
            DeleteWhy::FailedHistory,
        ),
    ] {
        let mut finished: Vec<&Run> = runs.iter().filter(|r| r.state == state).collect();
        let keep = usize::try_from(limit.max(0)).unwrap_or(0);
        if finished.len() <= keep {
            continue;
        }
        finished.sort_by(|a, b| a.age_key().cmp(&b.age_key()));
        let excess = finished.len() - keep;
        out.extend(finished.into_iter().take(excess).map(|r| Deletion {
            name: r.name.clone(),
            why,
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use recac_api::{AgentTaskSpec, AgentTaskTemplate, Repository};

    fn at(text: &str) -> Timestamp {
        text.parse().expect("timestamp")
    }

    fn spec(schedule: &str) -> AgentTaskScheduleSpec {
        AgentTaskScheduleSpec {
            schedule: schedule.into(),
            time_zone: None,
            suspend: false,
            concurrency_policy: ConcurrencyPolicy::Allow,
            starting_deadline_seconds: None,
            successful_tasks_history_limit: 3,
            failed_tasks_history_limit: 1,
            task_template: AgentTaskTemplate {
                metadata: None,
                spec: AgentTaskSpec {
                    prompt: Some("bump the dependencies".into()),
                    ticket: None,
                    repository: Repository {
                        url: "https://git.example.com/o/r.git".into(),
                        base_branch: None,
                        branch: None,
                    },
                    agent: None,
                    max_retries: 0,
                    timeout_seconds: 3600,
                    ttl_seconds_after_finished: None,
                    suspend: false,
                    approval: None,
                    budget: None,
                    egress: None,
                },
            },
        }
    }

    fn facts<'a>(spec: &'a AgentTaskScheduleSpec, last: Option<&str>) -> ScheduleFacts<'a> {
        ScheduleFacts {
            name: "nightly",
            spec,
            created: at("2026-01-01T00:00:30Z"),
            last_schedule_time: last.map(at),
            last_successful_time: None,
        }
    }

    fn run(name: &str, state: RunState, finished: Option<&str>) -> Run {
        Run {
            name: name.into(),
            state,
            scheduled_at: None,
            created: None,
            finished: finished.map(at),
        }
    }

    fn created(plan: &Plan) -> Option<(String, String)> {
        plan.create
            .as_ref()
            .map(|c| (c.name.clone(), c.due.to_string()))
    }

    #[test]
    fn names_are_the_schedule_and_the_due_minute() {
        assert_eq!(
            run_name("nightly", at("2026-01-01T00:01:00Z")),
            format!("nightly-{}", 1_767_225_660 / 60)
        );
    }

    #[test]
    fn one_run_per_due_time_and_nothing_before_it() {
        let s = spec("*/5 * * * *");
        let plan = decide(&facts(&s, None), &[], at("2026-01-01T00:04:59Z"));
        assert_eq!(plan.create, None);
        assert_eq!(plan.requeue_at, Some(at("2026-01-01T00:05:00Z")));
        assert_eq!(plan.next_schedule_time, Some(at("2026-01-01T00:05:00Z")));
        assert!(plan.ready.status);

        let plan = decide(&facts(&s, None), &[], at("2026-01-01T00:05:00Z"));
        let name = run_name("nightly", at("2026-01-01T00:05:00Z"));
        assert_eq!(
            created(&plan),
            Some((name.clone(), "2026-01-01T00:05:00Z".into()))
        );
        assert_eq!(plan.last_schedule_time, Some(at("2026-01-01T00:05:00Z")));
        assert_eq!(plan.active, vec![name.clone()]);
        assert_eq!(plan.requeue_at, Some(at("2026-01-01T00:10:00Z")));
        assert_eq!(plan.skipped.as_ref().map(|c| c.reason), Some("Created"));

        // Once recorded, the same due time creates nothing.
        let runs = [run(&name, RunState::Active, None)];
        let plan = decide(
            &facts(&s, Some("2026-01-01T00:05:00Z")),
            &runs,
            at("2026-01-01T00:07:00Z"),
        );
        assert_eq!(plan.create, None);
        assert_eq!(plan.active, vec![name]);
    }

    #[test]
    fn a_run_created_before_a_crash_is_adopted_not_created_again() {
        let s = spec("*/5 * * * *");
        let name = run_name("nightly", at("2026-01-01T00:05:00Z"));
        // The task exists, but lastScheduleTime was never written.
        let runs = [run(&name, RunState::Active, None)];
        let plan = decide(&facts(&s, None), &runs, at("2026-01-01T00:06:00Z"));
        assert_eq!(plan.create, None);
        assert_eq!(plan.last_schedule_time, Some(at("2026-01-01T00:05:00Z")));
        assert_eq!(plan.adopted.map(|a| a.name), Some(name));
    }

    #[test]
    fn runs_missed_while_down_create_only_the_latest_within_the_deadline() {
        let mut s = spec("0 * * * *");
        // Down from 01:30 to 05:10: 02:00, 03:00, 04:00 and 05:00 were missed.
        let plan = decide(
            &facts(&s, Some("2026-01-01T01:00:00Z")),
            &[],
            at("2026-01-01T05:10:00Z"),
        );
        assert_eq!(
            created(&plan).map(|c| c.1),
            Some("2026-01-01T05:00:00Z".into())
        );
        let note = plan.notes.iter().find(|n| n.reason == "MissedRuns");
        assert!(
            note.is_some_and(|n| n.message.starts_with("3 earlier runs were missed")),
            "{:?}",
            plan.notes
        );

        // With a 5-minute deadline, 05:00 is too late at 05:10: nothing is created.
        s.starting_deadline_seconds = Some(300);
        let plan = decide(
            &facts(&s, Some("2026-01-01T01:00:00Z")),
            &[],
            at("2026-01-01T05:10:00Z"),
        );
        assert_eq!(plan.create, None);
        assert_eq!(
            plan.skipped.as_ref().map(|c| c.reason),
            Some("DeadlineExceeded")
        );
        assert!(plan.notes.iter().any(|n| n.reason == "MissedDeadline"));
        assert_eq!(plan.last_schedule_time, Some(at("2026-01-01T01:00:00Z")));
        // ... and at 05:04 it is still in time.
        let plan = decide(
            &facts(&s, Some("2026-01-01T01:00:00Z")),
            &[],
            at("2026-01-01T05:04:00Z"),
        );
        assert_eq!(
            created(&plan).map(|c| c.1),
            Some("2026-01-01T05:00:00Z".into())
        );
        assert!(
            plan.notes.iter().all(|n| n.reason != "MissedRuns"),
            "runs older than the deadline are not counted: {:?}",
            plan.notes
        );
    }

    #[test]
    fn too_many_missed_runs_are_counted_once_and_the_latest_still_runs() {
        let s = spec("* * * * *");
        // A year without a run: half a million missed minutes, counted no further than 101.
        let started = std::time::Instant::now();
        let plan = decide(
            &facts(&s, Some("2025-01-01T00:00:00Z")),
            &[],
            at("2026-01-01T00:00:30Z"),
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(
            created(&plan).map(|c| c.1),
            Some("2026-01-01T00:00:00Z".into())
        );
        let warning = plan
            .notes
            .iter()
            .find(|n| n.reason == "TooManyMissedRuns")
            .expect("a warning");
        assert!(warning.warning);
        assert!(warning.message.contains("startingDeadlineSeconds"));
        // The next decision (status recorded) is calm.
        let runs = [run(
            &created(&plan).expect("created").0,
            RunState::Active,
            None,
        )];
        let plan = decide(
            &facts(&s, Some("2026-01-01T00:00:00Z")),
            &runs,
            at("2026-01-01T00:00:40Z"),
        );
        assert!(plan.notes.is_empty(), "{:?}", plan.notes);
        assert_eq!(plan.create, None);
    }

    #[test]
    fn forbid_holds_a_run_back_while_one_is_active_and_says_so() {
        let mut s = spec("*/5 * * * *");
        s.concurrency_policy = ConcurrencyPolicy::Forbid;
        let runs = [run("nightly-1", RunState::Active, None)];
        let plan = decide(
            &facts(&s, Some("2026-01-01T00:00:00Z")),
            &runs,
            at("2026-01-01T00:05:00Z"),
        );
        assert_eq!(plan.create, None);
        assert_eq!(plan.last_schedule_time, Some(at("2026-01-01T00:00:00Z")));
        let skipped = plan.skipped.expect("a Skipped condition");
        assert!(skipped.status);
        assert_eq!(skipped.reason, "ConcurrencyForbid");
        assert!(skipped.message.contains("nightly-1"), "{}", skipped.message);
        assert!(plan.notes.iter().any(|n| n.reason == "Skipped"));
        // Once it finished, the held-back run starts.
        let runs = [run(
            "nightly-1",
            RunState::Succeeded,
            Some("2026-01-01T00:06:00Z"),
        )];
        let plan = decide(
            &facts(&s, Some("2026-01-01T00:00:00Z")),
            &runs,
            at("2026-01-01T00:06:00Z"),
        );
        assert_eq!(
            created(&plan).map(|c| c.1),
            Some("2026-01-01T00:05:00Z".into())
        );
        assert_eq!(plan.last_successful_time, Some(at("2026-01-01T00:06:00Z")));
        // With a deadline, a decision is due when it passes.
        s.starting_deadline_seconds = Some(60);
        let runs = [run("nightly-1", RunState::Active, None)];
        let plan = decide(
            &facts(&s, Some("2026-01-01T00:00:00Z")),
            &runs,
            at("2026-01-01T00:05:00Z"),
        );
        assert_eq!(plan.requeue_at, Some(at("2026-01-01T00:06:01Z")));
    }

    #[test]
    fn replace_deletes_the_active_runs_then_creates() {
        let mut s = spec("*/5 * * * *");
        s.concurrency_policy = ConcurrencyPolicy::Replace;
        let runs = [
            run("nightly-1", RunState::Active, None),
            run(
                "nightly-0",
                RunState::Succeeded,
                Some("2026-01-01T00:01:00Z"),
            ),
        ];
        let plan = decide(
            &facts(&s, Some("2026-01-01T00:00:00Z")),
            &runs,
            at("2026-01-01T00:05:00Z"),
        );
        assert_eq!(
            plan.delete,
            vec![Deletion {
                name: "nightly-1".into(),
                why: DeleteWhy::Replaced
            }]
        );
        let name = created(&plan).expect("created").0;
        assert_eq!(plan.active, vec![name]);
        // Allow keeps both.
        s.concurrency_policy = ConcurrencyPolicy::Allow;
        let plan = decide(
            &facts(&s, Some("2026-01-01T00:00:00Z")),
            &runs,
            at("2026-01-01T00:05:00Z"),
        );
        assert!(plan.delete.is_empty());
        assert_eq!(plan.active.len(), 2);
    }

    #[test]
    fn suspended_creates_nothing_and_resumed_runs_the_latest_missed() {
        let mut s = spec("*/5 * * * *");
        s.suspend = true;
        let plan = decide(
            &facts(&s, Some("2026-01-01T00:00:00Z")),
            &[],
            at("2026-01-01T00:12:00Z"),
        );
        assert_eq!(plan.create, None);
        assert_eq!(plan.requeue_at, None);
        assert_eq!(plan.next_schedule_time, None);
        assert_eq!((plan.ready.status, plan.ready.reason), (false, "Suspended"));
        s.suspend = false;
        let plan = decide(
            &facts(&s, Some("2026-01-01T00:00:00Z")),
            &[],
            at("2026-01-01T00:12:00Z"),
        );
        assert_eq!(
            created(&plan).map(|c| c.1),
            Some("2026-01-01T00:10:00Z".into())
        );
    }

    #[test]
    fn history_limits_delete_the_oldest_finished_runs() {
        let mut s = spec("@hourly");
        s.successful_tasks_history_limit = 2;
        s.failed_tasks_history_limit = 0;
        let runs = [
            run("s3", RunState::Succeeded, Some("2026-01-01T03:00:00Z")),
            run("s1", RunState::Succeeded, Some("2026-01-01T01:00:00Z")),
            run("s2", RunState::Succeeded, Some("2026-01-01T02:00:00Z")),
            run("s0", RunState::Succeeded, Some("2026-01-01T00:30:00Z")),
            run("f1", RunState::Failed, Some("2026-01-01T01:30:00Z")),
            run("a1", RunState::Active, None),
        ];
        let plan = decide(
            &facts(&s, Some("2026-01-01T03:00:00Z")),
            &runs,
            at("2026-01-01T03:10:00Z"),
        );
        let deleted: Vec<(&str, DeleteWhy)> = plan
            .delete
            .iter()
            .map(|d| (d.name.as_str(), d.why))
            .collect();
        assert_eq!(
            deleted,
            [
                ("s0", DeleteWhy::SucceededHistory),
                ("s1", DeleteWhy::SucceededHistory),
                ("f1", DeleteWhy::FailedHistory)
            ]
        );
        assert_eq!(plan.last_successful_time, Some(at("2026-01-01T03:00:00Z")));
        // Also while suspended or invalid.
        s.suspend = true;
        let plan = decide(
            &facts(&s, Some("2026-01-01T03:00:00Z")),
            &runs,
            at("2026-01-01T03:10:00Z"),
        );
        assert_eq!(plan.delete.len(), 3);
    }

    #[test]
    fn invalid_schedule_or_zone_creates_nothing_and_names_the_field() {
        for (schedule, zone, reason, field) in [
            (
                "5-3 * * * *",
                None,
                "InvalidSchedule",
                "spec.schedule: minute field",
            ),
            ("0 0 30 2 *", None, "InvalidSchedule", "never matches"),
            (
                "* * * * *",
                Some("Mars/Olympus_Mons"),
                "InvalidTimeZone",
                "spec.timeZone: \"Mars/Olympus_Mons\"",
            ),
        ] {
            let mut s = spec(schedule);
            s.time_zone = zone.map(String::from);
            let plan = decide(&facts(&s, None), &[], at("2026-01-01T05:00:00Z"));
            assert_eq!(plan.create, None);
            assert_eq!(plan.requeue_at, None);
            assert_eq!((plan.ready.status, plan.ready.reason), (false, reason));
            assert!(plan.ready.message.contains(field), "{}", plan.ready.message);
            assert!(plan.notes.iter().any(|n| n.warning && n.reason == reason));
        }
    }

    /// Drives a schedule through a span of time, one decision per due time, as the controller
    /// does; returns the due times created (UTC).
    fn drive(s: &AgentTaskScheduleSpec, from: &str, until: &str) -> Vec<String> {
        let mut last = Some(at(from));
        let mut runs: Vec<Run> = Vec::new();
        let mut now = at(from);
        let mut created = Vec::new();
        let until = at(until);
        loop {
            let plan = decide(
                &ScheduleFacts {
                    name: "tz",
                    spec: s,
                    created: at(from),
                    last_schedule_time: last,
                    last_successful_time: None,
                },
                &runs,
                now,
            );
            if let Some(new) = &plan.create {
                created.push(new.due.to_string());
                runs.push(run(&new.name, RunState::Succeeded, None));
            }
            last = plan.last_schedule_time;
            match plan.requeue_at {
                Some(next) if next <= until => now = next,
                _ => return created,
            }
        }
    }

    #[test]
    fn across_spring_forward_each_wall_clock_time_runs_once() {
        let mut s = spec("30 2 * * *");
        s.time_zone = Some("America/New_York".into());
        s.successful_tasks_history_limit = 100;
        assert_eq!(
            drive(&s, "2026-03-06T12:00:00Z", "2026-03-10T12:00:00Z"),
            [
                "2026-03-07T07:30:00Z",
                "2026-03-08T07:30:00Z", // 02:30 does not exist: 03:30 EDT
                "2026-03-09T06:30:00Z",
                "2026-03-10T06:30:00Z"
            ]
        );
    }

    #[test]
    fn across_fall_back_a_repeated_hour_runs_once() {
        let mut s = spec("0 1,2 * * *");
        s.time_zone = Some("America/New_York".into());
        s.successful_tasks_history_limit = 100;
        assert_eq!(
            drive(&s, "2026-10-31T12:00:00Z", "2026-11-02T12:00:00Z"),
            [
                "2026-11-01T05:00:00Z", // 01:00 EDT (the first 01:00)
                "2026-11-01T07:00:00Z", // 02:00 EST
                "2026-11-02T06:00:00Z", // 01:00 EST
                "2026-11-02T07:00:00Z"  // 02:00 EST
            ]
        );
    }
}
