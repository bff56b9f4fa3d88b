//! Spend per period and whether a budget of periods holds new work (pure), shared by the
//! source controller (a source's `budget`) and the task controller (a namespace's budget).
//!
//! The record is a [`Ledger`]: what of each task's spend (its `status.spend`, summed over
//! attempts by the task controller) is already counted, and the totals of each period (the
//! UTC day and the UTC month). A writer adds what a task spent since it was last counted to
//! a period, and writes the ledger in one compare-and-swap ([`crate::spend_ledger`]), so a
//! spend is counted exactly once whatever restarts or failovers come in between, and never
//! recomputed from tasks that are gone.

use std::collections::BTreeMap;

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use crate::config::{InvalidConfig, invalid};

/// Spending limits per UTC period (a source's `budget`, a namespace's budget).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeriodBudget {
    /// Per UTC day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_day: Option<PeriodLimit>,
    /// Per UTC calendar month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_month: Option<PeriodLimit>,
}

/// What a period may spend: tokens (input and output together) and/or a cost.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeriodLimit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<i64>,
    /// A decimal number ("250.00") in `currency`: only costs in that currency count (a
    /// model with no price in `agent.prices` and a CLI that reports none add no cost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<String>,
    /// A 3-letter currency code; required with `cost`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
}

impl PeriodBudget {
    /// Checks the limits; `at` is the budget's full key (`sources[0].budget`).
    pub fn validate(&self, at: &str) -> Result<(), InvalidConfig> {
        if self.per_day.is_none() && self.per_month.is_none() {
            return Err(invalid(at, "sets neither perDay nor perMonth"));
        }
        for (name, limit) in [("perDay", &self.per_day), ("perMonth", &self.per_month)] {
            if let Some(limit) = limit {
                limit.validate(&format!("{at}.{name}"))?;
            }
        }
        Ok(())
    }
}

impl PeriodLimit {
    /// Checks the limit; `at` is its full key (`sources[0].budget.perDay`).
    pub fn validate(&self, at: &str) -> Result<(), InvalidConfig> {
        let field = |name: &str| format!("{at}.{name}");
        if self.tokens.is_none() && self.cost.is_none() {
            return Err(invalid(at, "sets neither tokens nor cost"));
        }
        if self.tokens.is_some_and(|t| t < 1) {
            return Err(invalid(&field("tokens"), "must be at least 1"));
        }
        if let Some(cost) = &self.cost
            && recac_api::money::parse_micros(cost).is_none()
        {
            return Err(invalid(
                &field("cost"),
                format!("{cost:?} is not a decimal number with at most 6 decimals"),
            ));
        }
        match (&self.cost, &self.currency) {
            (Some(_), None) => Err(invalid(&field("currency"), "is required with cost")),
            (_, Some(c)) if !recac_api::money::is_currency_code(c) => Err(invalid(
                &field("currency"),
                format!("{c:?} is not a 3-letter currency code such as USD"),
            )),
            _ => Ok(()),
        }
    }
}

/// Tokens and costs (millionths, per currency).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Amounts {
    #[serde(default)]
    pub tokens: i64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cost_micros: BTreeMap<String, i64>,
}

impl Amounts {
    fn add(&mut self, other: &Amounts) {
        self.tokens += other.tokens;
        for (currency, micros) in &other.cost_micros {
            *self.cost_micros.entry(currency.clone()).or_default() += micros;
        }
    }

    /// What `self` has beyond `counted` (nothing below zero).
    pub fn beyond(&self, counted: &Amounts) -> Amounts {
        Amounts {
            tokens: (self.tokens - counted.tokens).max(0),
            cost_micros: self
                .cost_micros
                .iter()
                .map(|(c, m)| {
                    (
                        c.clone(),
                        (m - counted.cost_micros.get(c).unwrap_or(&0)).max(0),
                    )
                })
                .filter(|(_, m)| *m > 0)
                .collect(),
        }
    }

    pub fn is_zero(&self) -> bool {
        self.tokens == 0 && self.cost_micros.values().all(|m| *m == 0)
    }
}

/// A spend record (a source's, a namespace's).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ledger {
    /// Per task uid: what of its spend is counted.
    #[serde(default)]
    pub tasks: BTreeMap<String, Amounts>,
    /// Per period ([`day_key`], [`month_key`]): what was counted in it.
    #[serde(default)]
    pub periods: BTreeMap<String, Amounts>,
    /// The last period whose hold was announced (one Event per period).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announced: Option<String>,
}

impl Ledger {
    /// What `task` spent that this ledger has not counted yet.
    pub fn uncounted(&self, task: &TaskSpend) -> Amounts {
        let counted = self.tasks.get(&task.uid).cloned().unwrap_or_default();
        task.amounts.beyond(&counted)
    }
}

/// One task's spend now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskSpend {
    pub uid: String,
    pub amounts: Amounts,
}

/// The spend of `task`'s status: tokens of every model, costs per currency.
pub fn task_spend(uid: &str, spend: &recac_api::Spend) -> TaskSpend {
    let (input, output) = spend.tokens();
    TaskSpend {
        uid: uid.to_string(),
        amounts: Amounts {
            tokens: input.saturating_add(output),
            cost_micros: spend.models.iter().fold(BTreeMap::new(), |mut costs, m| {
                if let (Some(cost), Some(currency)) = (&m.cost, &m.currency)
                    && let Some(micros) = recac_api::money::parse_micros(cost)
                {
                    *costs.entry(currency.clone()).or_default() += micros;
                }
                costs
            }),
        },
    }
}

fn utc_date(now: Timestamp) -> Date {
    now.to_zoned(TimeZone::UTC).date()
}

/// The key of `now`'s UTC day.
pub fn day_key(now: Timestamp) -> String {
    format!("day:{}", utc_date(now))
}

/// The key of `now`'s UTC month.
pub fn month_key(now: Timestamp) -> String {
    let d = utc_date(now);
    format!("month:{:04}-{:02}", d.year(), d.month())
}

/// The periods a ledger keeps at `now`: the current and the previous day and month.
fn kept_periods(now: Timestamp) -> [String; 4] {
    let yesterday = now
        .checked_sub(jiff::SignedDuration::from_hours(24))
        .map(day_key)
        .unwrap_or_default();
    let last_month = utc_date(now)
        .first_of_month()
        .yesterday()
        .map(|d| format!("month:{:04}-{:02}", d.year(), d.month()))
        .unwrap_or_default();
    [day_key(now), yesterday, month_key(now), last_month]
}

fn forget_old_periods(ledger: &mut Ledger, now: Timestamp) {
    let kept = kept_periods(now);
    ledger.periods.retain(|k, _| kept.contains(k));
}

/// Counts what each of `tasks` spent since it was last counted in `now`'s day and month,
/// and forgets tasks that are gone (not in `tasks`) and periods before the previous ones.
/// Returns whether the ledger changed.
pub fn record(ledger: &mut Ledger, tasks: &[TaskSpend], now: Timestamp) -> bool {
    let before = ledger.clone();
    let (day, month) = (day_key(now), month_key(now));
    for task in tasks {
        let new = ledger.uncounted(task);
        if new.is_zero() {
            continue;
        }
        for period in [&day, &month] {
            ledger.periods.entry(period.clone()).or_default().add(&new);
        }
        ledger.tasks.entry(task.uid.clone()).or_default().add(&new);
    }
    ledger
        .tasks
        .retain(|uid, _| tasks.iter().any(|t| &t.uid == uid));
    forget_old_periods(ledger, now);
    *ledger != before
}

/// Counts what one task spent since it was last counted (by its uid, so counting the same
/// total again adds nothing) in the day and month of `spent_at`, when the ledger still
/// keeps those periods at `now` (a spend of an older period is marked counted but added to
/// none), and forgets periods before the previous ones. Returns whether the ledger changed.
pub fn record_task(
    ledger: &mut Ledger,
    task: &TaskSpend,
    spent_at: Timestamp,
    now: Timestamp,
) -> bool {
    let before = ledger.clone();
    let new = ledger.uncounted(task);
    if !new.is_zero() {
        let kept = kept_periods(now);
        for period in [day_key(spent_at), month_key(spent_at)] {
            if kept.contains(&period) {
                ledger.periods.entry(period).or_default().add(&new);
            }
        }
        ledger.tasks.entry(task.uid.clone()).or_default().add(&new);
    }
    forget_old_periods(ledger, now);
    *ledger != before
}

/// Forgets the tasks for which `is_live` says no (their spend stays in the periods).
/// Returns whether any was forgotten.
pub fn forget_tasks(ledger: &mut Ledger, is_live: impl Fn(&str) -> bool) -> bool {
    let before = ledger.tasks.len();
    ledger.tasks.retain(|uid, _| is_live(uid));
    ledger.tasks.len() != before
}

/// A spent budget: the period it holds new work in and until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// The period's key (a hold is told once per ticket and announced once per period).
    pub period: String,
    /// The limit that is reached, in words ("daily budget of 1000 tokens").
    pub what: String,
    /// When the period rolls over.
    pub until: Timestamp,
}

/// Whether `budget` is spent in `now`'s day or month, by `ledger`.
pub fn held(ledger: &Ledger, budget: &PeriodBudget, now: Timestamp) -> Option<Held> {
    let date = utc_date(now);
    let midnight = |d: Date| {
        d.to_zoned(TimeZone::UTC)
            .map(|z| z.timestamp())
            .unwrap_or(Timestamp::MAX)
    };
    let periods = [
        (
            &budget.per_day,
            day_key(now),
            "daily",
            date.tomorrow().map(midnight).unwrap_or(Timestamp::MAX),
        ),
        (
            &budget.per_month,
            month_key(now),
            "monthly",
            date.last_of_month()
                .tomorrow()
                .map(midnight)
                .unwrap_or(Timestamp::MAX),
        ),
    ];
    // The longest hold first: a spent month outlasts a spent day.
    periods
        .into_iter()
        .rev()
        .find_map(|(limit, period, word, until)| {
            let limit = limit.as_ref()?;
            let spent = ledger.periods.get(&period).cloned().unwrap_or_default();
            let what = reached(limit, &spent)?;
            Some(Held {
                period,
                what: format!("{word} budget of {what}"),
                until,
            })
        })
}

/// Marks `held`'s period announced; returns whether it was not yet (announce it then).
pub fn announce(ledger: &mut Ledger, held: &Held) -> bool {
    if ledger.announced.as_deref() == Some(held.period.as_str()) {
        return false;
    }
    ledger.announced = Some(held.period.clone());
    true
}

/// The limit `spent` reaches, in words.
fn reached(limit: &PeriodLimit, spent: &Amounts) -> Option<String> {
    if let Some(tokens) = limit.tokens
        && spent.tokens >= tokens
    {
        return Some(format!("{tokens} tokens"));
    }
    let (cost, currency) = (limit.cost.as_deref()?, limit.currency.as_deref()?);
    let max = recac_api::money::parse_micros(cost)?;
    (spent.cost_micros.get(currency).copied().unwrap_or(0) >= max)
        .then(|| format!("{} {currency}", recac_api::money::format_micros(max)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().expect("time")
    }

    fn spend(uid: &str, tokens: i64, usd_micros: i64) -> TaskSpend {
        TaskSpend {
            uid: uid.into(),
            amounts: Amounts {
                tokens,
                cost_micros: if usd_micros > 0 {
                    BTreeMap::from([("USD".to_string(), usd_micros)])
                } else {
                    BTreeMap::new()
                },
            },
        }
    }

    fn daily(tokens: i64) -> PeriodBudget {
        PeriodBudget {
            per_day: Some(PeriodLimit {
                tokens: Some(tokens),
                ..Default::default()
            }),
            per_month: None,
        }
    }

    #[test]
    fn each_spend_is_counted_once_in_the_period_it_is_seen() {
        let mut ledger = Ledger::default();
        let noon = at("2026-12-06T12:00:00Z");
        assert!(record(&mut ledger, &[spend("a", 100, 0)], noon));
        assert!(
            !record(&mut ledger, &[spend("a", 100, 0)], noon),
            "counted once"
        );
        assert!(record(
            &mut ledger,
            &[spend("a", 250, 0), spend("b", 50, 0)],
            noon
        ));
        assert_eq!(ledger.periods["day:2026-12-06"].tokens, 300);
        assert_eq!(ledger.periods["month:2026-12"].tokens, 300);
        // The next day: only what was spent since counts for it.
        let next = at("2026-12-07T01:00:00Z");
        assert!(record(
            &mut ledger,
            &[spend("a", 260, 0), spend("b", 50, 0)],
            next
        ));
        assert_eq!(ledger.periods["day:2026-12-07"].tokens, 10);
        assert_eq!(ledger.periods["month:2026-12"].tokens, 310);
        // A task that is gone is forgotten; its spend stays in the periods.
        assert!(record(&mut ledger, &[spend("b", 50, 0)], next));
        assert!(!ledger.tasks.contains_key("a"));
        assert_eq!(ledger.periods["day:2026-12-07"].tokens, 10);
        // Old periods go.
        record(&mut ledger, &[], at("2027-02-10T00:00:00Z"));
        assert!(
            ledger.periods.keys().all(|k| k.contains("2027-0")),
            "{:?}",
            ledger.periods
        );
    }

    #[test]
    fn one_tasks_total_is_counted_once_by_uid_and_others_are_kept() {
        let mut ledger = Ledger::default();
        let noon = at("2026-12-06T12:00:00Z");
        assert!(record_task(&mut ledger, &spend("a", 100, 5), noon, noon));
        assert!(record_task(&mut ledger, &spend("b", 40, 0), noon, noon));
        // The same total again (a retried write, another replica): nothing more.
        assert!(!record_task(&mut ledger, &spend("a", 100, 5), noon, noon));
        // A later attempt: only the difference.
        assert!(record_task(&mut ledger, &spend("a", 130, 5), noon, noon));
        assert_eq!(ledger.periods["day:2026-12-06"].tokens, 170);
        assert_eq!(ledger.periods["month:2026-12"].cost_micros["USD"], 5);
        // Unlike `record`, counting one task forgets no other.
        assert_eq!(ledger.tasks["b"].tokens, 40);
        assert_eq!(ledger.tasks["a"].tokens, 130);
        // A lower total (never written by the controller) counts nothing back.
        assert!(!record_task(&mut ledger, &spend("a", 10, 0), noon, noon));
        assert_eq!(ledger.periods["day:2026-12-06"].tokens, 170);
    }

    #[test]
    fn a_spend_counted_late_goes_to_the_period_it_was_made_in_while_kept() {
        let mut ledger = Ledger::default();
        let now = at("2026-12-07T00:00:05Z");
        // Spent before midnight, counted after (a crash in between): yesterday's.
        assert!(record_task(
            &mut ledger,
            &spend("a", 100, 0),
            at("2026-12-06T23:59:59Z"),
            now
        ));
        assert_eq!(ledger.periods["day:2026-12-06"].tokens, 100);
        assert!(!ledger.periods.contains_key("day:2026-12-07"));
        // Spent in a period the ledger no longer keeps: counted, in no period.
        assert!(record_task(
            &mut ledger,
            &spend("old", 500, 0),
            at("2026-09-01T00:00:00Z"),
            now
        ));
        assert_eq!(ledger.tasks["old"].tokens, 500);
        assert_eq!(ledger.periods.values().map(|p| p.tokens).sum::<i64>(), 200);
    }

    #[test]
    fn tasks_that_are_gone_are_forgotten_and_their_spend_stays() {
        let mut ledger = Ledger::default();
        let noon = at("2026-12-06T12:00:00Z");
        record_task(&mut ledger, &spend("a", 100, 0), noon, noon);
        record_task(&mut ledger, &spend("b", 50, 0), noon, noon);
        assert!(forget_tasks(&mut ledger, |uid| uid == "b"));
        assert!(!forget_tasks(&mut ledger, |uid| uid == "b"), "nothing left");
        assert_eq!(ledger.tasks.keys().collect::<Vec<_>>(), vec!["b"]);
        assert_eq!(ledger.periods["day:2026-12-06"].tokens, 150);
    }

    #[test]
    fn a_spent_period_holds_until_it_rolls_over() {
        let mut ledger = Ledger::default();
        let noon = at("2026-12-06T12:00:00Z");
        record(&mut ledger, &[spend("a", 999, 0)], noon);
        assert_eq!(held(&ledger, &daily(1000), noon), None);
        record(&mut ledger, &[spend("a", 1000, 0)], noon);
        let hold = held(&ledger, &daily(1000), noon).expect("held");
        assert_eq!(hold.period, "day:2026-12-06");
        assert_eq!(hold.what, "daily budget of 1000 tokens");
        assert_eq!(hold.until, at("2026-12-07T00:00:00Z"));
        assert_eq!(
            held(&ledger, &daily(1000), at("2026-12-07T00:00:01Z")),
            None
        );
        assert!(announce(&mut ledger, &hold));
        assert!(!announce(&mut ledger, &hold), "once per period");

        let monthly = PeriodBudget {
            per_day: Some(PeriodLimit {
                tokens: Some(10),
                ..Default::default()
            }),
            per_month: Some(PeriodLimit {
                cost: Some("2.50".into()),
                currency: Some("USD".into()),
                ..Default::default()
            }),
        };
        let mut ledger = Ledger::default();
        record(&mut ledger, &[spend("a", 50, 2_500_000)], noon);
        let hold = held(&ledger, &monthly, noon).expect("held");
        assert_eq!(
            hold.what, "monthly budget of 2.5 USD",
            "the longer hold wins"
        );
        assert_eq!(hold.until, at("2027-01-01T00:00:00Z"));
    }

    #[test]
    fn limits_are_checked_by_key() {
        let limit = |tokens: Option<i64>, cost: Option<&str>, currency: Option<&str>| PeriodLimit {
            tokens,
            cost: cost.map(Into::into),
            currency: currency.map(Into::into),
        };
        let budget = |per_day| PeriodBudget {
            per_day,
            per_month: None,
        };
        budget(Some(limit(Some(1), Some("2.5"), Some("EUR"))))
            .validate("b")
            .expect("valid");
        for (budget, key, says) in [
            (budget(None), "b", "neither perDay nor perMonth"),
            (
                budget(Some(limit(None, None, None))),
                "b.perDay",
                "neither tokens nor cost",
            ),
            (
                budget(Some(limit(Some(0), None, None))),
                "b.perDay.tokens",
                "at least 1",
            ),
            (
                budget(Some(limit(None, Some("ten"), Some("USD")))),
                "b.perDay.cost",
                "decimal",
            ),
            (
                budget(Some(limit(None, Some("1"), None))),
                "b.perDay.currency",
                "required",
            ),
            (
                budget(Some(limit(None, Some("1"), Some("usd")))),
                "b.perDay.currency",
                "3-letter",
            ),
        ] {
            let err = budget.validate("b").expect_err(key);
            assert_eq!(err.key, key, "{err}");
            assert!(err.message.contains(says), "{err}");
        }
    }

    #[test]
    fn a_status_spend_sums_models_and_costs_per_currency() {
        let status = recac_api::Spend {
            models: vec![
                recac_api::ModelSpend {
                    model: "m1".into(),
                    input_tokens: 10,
                    output_tokens: 5,
                    cost: Some("0.25".into()),
                    currency: Some("USD".into()),
                    ..Default::default()
                },
                recac_api::ModelSpend {
                    model: "m2".into(),
                    input_tokens: 1,
                    output_tokens: 1,
                    ..Default::default()
                },
            ],
            attempts: 2,
            not_reported: 0,
        };
        let s = task_spend("u", &status);
        assert_eq!(s.amounts.tokens, 17);
        assert_eq!(s.amounts.cost_micros["USD"], 250_000);
    }
}
