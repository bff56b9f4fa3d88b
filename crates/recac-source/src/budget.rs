//! A source's spend per period and whether its budget holds new tickets (pure).
//!
//! The record is a [`Ledger`]: what of each task's spend (its `status.spend`, summed over
//! attempts by the task controller) is already counted, and the totals of each period (the
//! UTC day and the UTC month). Each poll adds what a task spent since it was last counted to
//! the current periods, and the ledger is written in one compare-and-swap
//! ([`crate::ledger`]), so a spend is counted exactly once whatever restarts or failovers
//! come in between, and never recomputed from tasks that are gone.

use std::collections::BTreeMap;

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use crate::config::{PeriodLimit, SourceBudget};

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
    fn beyond(&self, counted: &Amounts) -> Amounts {
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

    fn is_zero(&self) -> bool {
        self.tokens == 0 && self.cost_micros.values().all(|m| *m == 0)
    }
}

/// The source's spend record.
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

/// Counts what each of `tasks` spent since it was last counted in `now`'s day and month,
/// and forgets tasks that are gone (not in `tasks`) and periods before the previous ones.
/// Returns whether the ledger changed.
pub fn record(ledger: &mut Ledger, tasks: &[TaskSpend], now: Timestamp) -> bool {
    let before = ledger.clone();
    let (day, month) = (day_key(now), month_key(now));
    for task in tasks {
        let counted = ledger.tasks.get(&task.uid).cloned().unwrap_or_default();
        let new = task.amounts.beyond(&counted);
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
    let yesterday = now
        .checked_sub(jiff::SignedDuration::from_hours(24))
        .map(day_key)
        .unwrap_or_default();
    let last_month = utc_date(now)
        .first_of_month()
        .yesterday()
        .map(|d| format!("month:{:04}-{:02}", d.year(), d.month()))
        .unwrap_or_default();
    ledger
        .periods
        .retain(|k, _| [&day, &yesterday, &month, &last_month].contains(&k));
    *ledger != before
}

/// A spent budget: the period it holds new tickets in and until when.
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
pub fn held(ledger: &Ledger, budget: &SourceBudget, now: Timestamp) -> Option<Held> {
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

    fn daily(tokens: i64) -> SourceBudget {
        SourceBudget {
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

        let monthly = SourceBudget {
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
