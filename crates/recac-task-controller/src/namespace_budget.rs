//! Namespace budgets (`taskController.namespaceBudgets`): what the tasks of a namespace may
//! spend per UTC day and month, whoever made them (a source, a schedule, kubectl).
//!
//! Each namespace with a budget has a spend record, the ConfigMap
//! [`LEDGER_NAME`] (key `ledger.json`, a [`Ledger`] shared with the source's budgets). After
//! the controller adds an attempt's usage to a task's `status.spend`, it brings the task's
//! entry in the record up to that total ([`count`]): by uid, so a write repeated after a
//! crash, a restart or a failover adds nothing twice, and a write lost between the status
//! and the record is made up at the task's next reconcile (its total is above what the
//! record counted). Before a task's new attempt (its first, or a retry) the record, read
//! from a cache, says whether the namespace's current day or month is spent ([`hold`]): if
//! it is, or the record cannot be read, the attempt waits. Running attempts are not
//! stopped: a task's own `spec.budget` does that.
//!
//! Pure: the controller reads and writes the ConfigMap ([`recac_runtime::spend_ledger`]).

use std::collections::HashMap;
use std::time::Duration;

use jiff::Timestamp;
use recac_api::reasons::{NAMESPACE_BUDGET_SPENT, NAMESPACE_BUDGET_UNKNOWN};
use recac_runtime::spend::{self, Held, Ledger, PeriodBudget, TaskSpend};

use crate::config::NamespaceBudget;

/// The spend record's ConfigMap in each namespace with a budget.
pub const LEDGER_NAME: &str = "recac-spend-namespace";
/// The label (key, value) the record's ConfigMap carries, which the controller's cache
/// watches.
pub const LEDGER_LABEL: (&str, &str) = ("recac.io/spend-ledger", "namespace");
/// [`LEDGER_LABEL`] as a label selector.
pub const LEDGER_SELECTOR: &str = "recac.io/spend-ledger=namespace";

/// The longest a held task waits before it looks again (its period's rollover otherwise).
pub const MAX_HOLD_RECHECK: Duration = Duration::from_secs(3600);
/// How soon a task held by an unreadable record looks again (a repaired record also wakes
/// it at once).
pub const UNREADABLE_RECHECK: Duration = Duration::from_secs(60);

/// The budgets by namespace.
#[derive(Clone, Debug, Default)]
pub struct NamespaceBudgets {
    by_namespace: HashMap<String, PeriodBudget>,
}

impl NamespaceBudgets {
    pub fn from_config(budgets: &[NamespaceBudget]) -> Self {
        Self {
            by_namespace: budgets
                .iter()
                .map(|b| (b.namespace.clone(), b.limits()))
                .collect(),
        }
    }

    pub fn of(&self, namespace: &str) -> Option<&PeriodBudget> {
        self.by_namespace.get(namespace)
    }

    /// The namespaces with a budget, sorted.
    pub fn namespaces(&self) -> Vec<String> {
        let mut namespaces: Vec<String> = self.by_namespace.keys().cloned().collect();
        namespaces.sort();
        namespaces
    }

    pub fn is_empty(&self) -> bool {
        self.by_namespace.is_empty()
    }
}

/// Why a namespace's new attempts wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceHold {
    /// The `Queued` condition's reason ([`NAMESPACE_BUDGET_SPENT`] or
    /// [`NAMESPACE_BUDGET_UNKNOWN`]).
    pub reason: &'static str,
    /// For people: which limit and until when, or why the record cannot be read.
    pub message: String,
    /// When to look again without an event: the rollover, at most [`MAX_HOLD_RECHECK`].
    pub recheck_after: Duration,
    /// The spent period, to announce once (`None`: the record cannot be read).
    pub spent: Option<Held>,
}

/// Whether `namespace`'s new attempts wait: `ledger` is its record (`Err`: why it cannot be
/// read; a namespace that has none yet has spent nothing).
pub fn hold(
    namespace: &str,
    budget: &PeriodBudget,
    ledger: Result<&Ledger, &str>,
    now: Timestamp,
) -> Option<NamespaceHold> {
    let ledger = match ledger {
        Ok(ledger) => ledger,
        Err(why) => {
            return Some(NamespaceHold {
                reason: NAMESPACE_BUDGET_UNKNOWN,
                message: format!(
                    "the spend record of namespace {namespace} (ConfigMap {LEDGER_NAME}) cannot be read: {why}; new runs wait until it can"
                ),
                recheck_after: UNREADABLE_RECHECK,
                spent: None,
            });
        }
    };
    let held = spend::held(ledger, budget, now)?;
    let until_rollover = Duration::try_from(now.duration_until(held.until)).unwrap_or_default();
    Some(NamespaceHold {
        reason: NAMESPACE_BUDGET_SPENT,
        message: format!(
            "namespace {namespace}'s {} is spent; new runs wait until {}",
            held.what, held.until
        ),
        // Just past the rollover, so that the next look is in the new period.
        recheck_after: (until_rollover + Duration::from_secs(1)).min(MAX_HOLD_RECHECK),
        spent: Some(held),
    })
}

/// When a task's latest spend was made: a finished task's completion, else now (its spend
/// is counted as its attempts end).
pub fn spent_at(status: &recac_api::AgentTaskStatus, now: Timestamp) -> Timestamp {
    let finished = status.phase.is_some_and(recac_api::TaskPhase::is_finished);
    match &status.completion_time {
        Some(done) if finished => done.0.min(now),
        _ => now,
    }
}

/// Brings `task`'s entry in the namespace's `ledger` up to its total (see [`spend::record_task`]),
/// forgets the tasks `is_live` says are gone, and marks a period the count spends announced.
/// Returns whether the ledger changed and the period to announce, if any.
pub fn count(
    ledger: &mut Ledger,
    budget: &PeriodBudget,
    task: &TaskSpend,
    spent_at: Timestamp,
    now: Timestamp,
    is_live: impl Fn(&str) -> bool,
) -> (bool, Option<Held>) {
    let mut changed = spend::record_task(ledger, task, spent_at, now);
    changed |= spend::forget_tasks(ledger, |uid| uid == task.uid || is_live(uid));
    let announce = spend::held(ledger, budget, now).filter(|h| spend::announce(ledger, h));
    (changed || announce.is_some(), announce)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use recac_runtime::spend::{Amounts, PeriodLimit};

    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().expect("time")
    }

    fn daily_tokens(tokens: i64) -> PeriodBudget {
        PeriodBudget {
            per_day: Some(PeriodLimit {
                tokens: Some(tokens),
                ..Default::default()
            }),
            per_month: None,
        }
    }

    fn spent(uid: &str, tokens: i64) -> TaskSpend {
        TaskSpend {
            uid: uid.into(),
            amounts: Amounts {
                tokens,
                cost_micros: BTreeMap::new(),
            },
        }
    }

    #[test]
    fn a_spent_day_holds_until_the_rollover_and_says_which_limit() {
        let noon = at("2026-12-06T12:00:00Z");
        let budget = daily_tokens(100_000);
        let mut ledger = Ledger::default();
        assert_eq!(hold("team-a", &budget, Ok(&ledger), noon), None);
        count(
            &mut ledger,
            &budget,
            &spent("a", 100_000),
            noon,
            noon,
            |_| true,
        );
        let held = hold("team-a", &budget, Ok(&ledger), noon).expect("held");
        assert_eq!(held.reason, "NamespaceBudgetSpent");
        assert_eq!(
            held.message,
            "namespace team-a's daily budget of 100000 tokens is spent; new runs wait until 2026-12-07T00:00:00Z"
        );
        assert_eq!(held.recheck_after, MAX_HOLD_RECHECK, "capped at an hour");
        let late = at("2026-12-06T23:59:00Z");
        assert_eq!(
            hold("team-a", &budget, Ok(&ledger), late).map(|h| h.recheck_after),
            Some(Duration::from_secs(61)),
            "just past the rollover"
        );
        assert_eq!(
            hold("team-a", &budget, Ok(&ledger), at("2026-12-07T00:00:00Z")),
            None
        );
    }

    #[test]
    fn an_unreadable_record_holds_and_says_why() {
        let held = hold(
            "team-a",
            &daily_tokens(1),
            Err("expected value at line 1"),
            at("2026-12-06T12:00:00Z"),
        )
        .expect("held");
        assert_eq!(held.reason, "NamespaceBudgetUnknown");
        assert!(
            held.message.contains("recac-spend-namespace"),
            "{}",
            held.message
        );
        assert!(
            held.message.contains("expected value at line 1"),
            "{}",
            held.message
        );
        assert_eq!(held.recheck_after, UNREADABLE_RECHECK);
        assert_eq!(held.spent, None);
    }

    #[test]
    fn counting_is_idempotent_prunes_gone_tasks_and_announces_once() {
        let noon = at("2026-12-06T12:00:00Z");
        let budget = daily_tokens(1000);
        let mut ledger = Ledger::default();
        assert_eq!(
            count(&mut ledger, &budget, &spent("gone", 10), noon, noon, |_| {
                true
            }),
            (true, None)
        );
        assert_eq!(
            count(
                &mut ledger,
                &budget,
                &spent("a", 600),
                noon,
                noon,
                |uid| uid != "gone"
            ),
            (true, None)
        );
        assert!(!ledger.tasks.contains_key("gone"), "pruned at the write");
        assert_eq!(
            count(&mut ledger, &budget, &spent("a", 600), noon, noon, |_| true),
            (false, None),
            "the same total again adds nothing"
        );
        // Attempt 2 of the task (its total grows): the difference spends the day.
        let (changed, announce) =
            count(&mut ledger, &budget, &spent("a", 1200), noon, noon, |_| {
                true
            });
        assert!(changed);
        assert_eq!(announce.map(|h| h.period), Some("day:2026-12-06".into()));
        assert_eq!(ledger.periods["day:2026-12-06"].tokens, 1210);
        assert_eq!(ledger.tasks["a"].tokens, 1200);
        // Another task's count in the spent day: no second announcement.
        let (changed, announce) = count(&mut ledger, &budget, &spent("b", 5), noon, noon, |_| true);
        assert!(changed);
        assert_eq!(announce, None);
    }

    #[test]
    fn a_finished_tasks_spend_belongs_to_its_completion() {
        let now = at("2026-12-07T00:00:05Z");
        let done = at("2026-12-06T23:59:59Z");
        let mut status = recac_api::AgentTaskStatus {
            completion_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(done)),
            ..Default::default()
        };
        assert_eq!(spent_at(&status, now), now, "not finished");
        status.phase = Some(recac_api::TaskPhase::Failed);
        assert_eq!(spent_at(&status, now), done);
    }
}
