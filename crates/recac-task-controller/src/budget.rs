//! A task's budget in numbers: decimal amounts as integer micro-units (millionths of a
//! currency unit, never floats), the operator's price table, what a task's attempts spent
//! and what is left of its `spec.budget`. Pure: the Job builder, the decisions and the
//! metrics share it.

use kube::ResourceExt;
use recac_api::agent_contract::{ModelUsage, env};
use recac_api::{AgentTask, Budget, ModelSpend, Spend};

use crate::config::{AgentDefaults, PriceEntry};

pub use recac_api::money::{MAX_DECIMALS, MICROS_PER_UNIT, format_micros, is_currency_code};

/// A text that is not a decimal amount.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a decimal number such as 12.50 (digits, a point and at most 6 decimal places)"
)]
pub struct NotDecimal(pub String);

/// A non-negative decimal such as `12.50` in micro-units, exactly (at most 6 decimal places).
pub fn parse_micros(text: &str) -> Result<i64, NotDecimal> {
    recac_api::money::parse_micros(text).ok_or_else(|| NotDecimal(text.to_string()))
}

/// A decimal an agent reported, rounded half up to a micro-unit; `None` when it is not one.
pub fn parse_reported_micros(text: &str) -> Option<i64> {
    recac_api::money::parse_micros_rounded(text)
}

/// Micro-units as a float (for metrics only; sums are kept in micro-units).
pub fn micros_as_f64(micros: i64) -> f64 {
    // Exact up to 2^53 micro-units (9 billion units).
    micros as f64 / MICROS_PER_UNIT as f64
}

/// One model's price from the operator's `agent.prices`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Price {
    pub provider: String,
    pub model: String,
    /// Micro-units per million input tokens.
    pub input_per_million: i64,
    /// Micro-units per million output tokens.
    pub output_per_million: i64,
    pub currency: String,
}

impl Price {
    /// The price of a configured entry; the error names the entry's key that is wrong.
    pub fn from_entry(entry: &PriceEntry) -> Result<Price, (&'static str, String)> {
        if entry.provider.trim().is_empty() {
            return Err(("provider", "must not be empty".into()));
        }
        if entry.model.trim().is_empty() {
            return Err(("model", "must not be empty".into()));
        }
        let input_per_million = parse_micros(&entry.input_per_million.0)
            .map_err(|e| ("inputPerMillion", e.to_string()))?;
        let output_per_million = parse_micros(&entry.output_per_million.0)
            .map_err(|e| ("outputPerMillion", e.to_string()))?;
        if !is_currency_code(&entry.currency) {
            return Err((
                "currency",
                format!(
                    "{:?} is not a currency code: three capital letters such as USD",
                    entry.currency
                ),
            ));
        }
        Ok(Price {
            provider: entry.provider.clone(),
            model: entry.model.clone(),
            input_per_million,
            output_per_million,
            currency: entry.currency.clone(),
        })
    }

    /// What `input` and `output` tokens cost, in micro-units, rounded up to a micro-unit.
    pub fn cost(&self, input: i64, output: i64) -> i64 {
        let non_negative = |n: i64| u64::try_from(n).unwrap_or(0);
        recac_api::money::token_cost_micros(
            non_negative(input),
            non_negative(output),
            non_negative(self.input_per_million),
            non_negative(self.output_per_million),
        )
    }
}

/// The price table and the model of a task that names none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pricing {
    pub prices: Vec<Price>,
    /// The operator's `agent.provider`.
    pub default_provider: Option<String>,
    /// The operator's `agent.model`.
    pub default_model: Option<String>,
}

impl Pricing {
    /// The operator's table; an entry that does not parse is left out (start-up refuses a
    /// configuration with one, naming its key).
    pub fn from_defaults(defaults: &AgentDefaults) -> Pricing {
        Pricing {
            prices: defaults
                .prices
                .iter()
                .filter_map(|entry| Price::from_entry(entry).ok())
                .collect(),
            default_provider: defaults.provider.clone(),
            default_model: defaults.model.clone(),
        }
    }

    pub fn find(&self, provider: &str, model: &str) -> Option<&Price> {
        self.prices
            .iter()
            .find(|p| p.provider == provider && p.model == model)
    }

    /// The task's provider and model: its `spec.agent`'s, else the operator's.
    pub fn task_model<'a>(&'a self, task: &'a AgentTask) -> (Option<&'a str>, Option<&'a str>) {
        let agent = task.spec.agent.as_deref();
        let provider = agent
            .and_then(|a| a.provider.as_deref())
            .or(self.default_provider.as_deref());
        let model = agent
            .and_then(|a| a.model.as_deref())
            .or(self.default_model.as_deref());
        (provider, model)
    }

    /// The price of the task's model, when the table has one.
    pub fn task_price(&self, task: &AgentTask) -> Option<&Price> {
        match self.task_model(task) {
            (Some(provider), Some(model)) => self.find(provider, model),
            _ => None,
        }
    }

    /// The task's model as people read it: `provider/model`, `?` for what is not set.
    pub fn describe_task_model(&self, task: &AgentTask) -> String {
        let (provider, model) = self.task_model(task);
        format!("{}/{}", provider.unwrap_or("?"), model.unwrap_or("?"))
    }
}

/// What the counted attempts spent, summed over models.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// Micro-units of the costs in the currency asked for (and of costs without a currency).
    pub cost: i64,
}

/// The sums of `spend`; costs in another currency than `currency` are not added (they
/// cannot be converted). `currency: None` adds every cost.
pub fn totals(spend: Option<&Spend>, currency: Option<&str>) -> Totals {
    let Some(spend) = spend else {
        return Totals::default();
    };
    let (input_tokens, output_tokens) = spend.tokens();
    Totals {
        input_tokens,
        output_tokens,
        cost: spend.cost_micros(currency),
    }
}

/// What is left of each limit of a budget (`None`: no such limit). Cost in micro-units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Remaining {
    pub tokens: Option<i64>,
    pub input_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    pub cost: Option<i64>,
}

impl Remaining {
    /// The first limit with nothing left, by its `spec.budget` key.
    pub fn exhausted(&self) -> Option<&'static str> {
        [
            (self.tokens, "tokens"),
            (self.input_tokens, "inputTokens"),
            (self.output_tokens, "outputTokens"),
            (self.cost, "cost"),
        ]
        .into_iter()
        .find(|(left, _)| left.is_some_and(|left| left <= 0))
        .map(|(_, key)| key)
    }
}

/// `budget` less what `spend` counts so far; the cost in `price`'s currency (every cost
/// without a price). Errors when `budget.cost` is not a decimal.
pub fn remaining(
    budget: &Budget,
    spend: Option<&Spend>,
    price: Option<&Price>,
) -> Result<Remaining, NotDecimal> {
    let spent = totals(spend, price.map(|p| p.currency.as_str()));
    let cost = budget.cost.as_deref().map(parse_micros).transpose()?;
    Ok(Remaining {
        tokens: budget.tokens.map(|limit| {
            limit
                .saturating_sub(spent.input_tokens)
                .saturating_sub(spent.output_tokens)
        }),
        input_tokens: budget
            .input_tokens
            .map(|limit| limit.saturating_sub(spent.input_tokens)),
        output_tokens: budget
            .output_tokens
            .map(|limit| limit.saturating_sub(spent.output_tokens)),
        cost: cost.map(|limit| limit.saturating_sub(spent.cost)),
    })
}

/// Adds one attempt's reported `usage` to `spend`, each model's cost as the agent reported
/// it, else from the price table; returns what was added, per reported model. A model the
/// task has used before is summed into its entry (its cost only in the same currency: a
/// known cost is kept rather than mixed with another currency). Does not touch
/// `spend.attempts`.
pub fn add_usage(
    spend: &mut Spend,
    usage: &[ModelUsage],
    pricing: &Pricing,
    task_provider: Option<&str>,
) -> Vec<ModelSpend> {
    let mut added = Vec::with_capacity(usage.len());
    for used in usage {
        let provider = used.provider.as_deref().or(task_provider);
        let input = i64::try_from(used.input_tokens).unwrap_or(i64::MAX);
        let output = i64::try_from(used.output_tokens).unwrap_or(i64::MAX);
        let price = provider.and_then(|p| pricing.find(p, &used.model));
        let reported = used.cost.as_deref().and_then(parse_reported_micros);
        let (cost, currency) = match (reported, price) {
            (Some(cost), _) => (
                Some(cost),
                used.currency
                    .clone()
                    .or_else(|| price.map(|p| p.currency.clone())),
            ),
            (None, Some(price)) => (
                Some(price.cost(input, output)),
                Some(price.currency.clone()),
            ),
            (None, None) => (None, None),
        };
        let counted = ModelSpend {
            provider: provider.map(str::to_string),
            model: used.model.clone(),
            input_tokens: input,
            output_tokens: output,
            cost: cost.map(format_micros),
            currency,
        };
        merge(&mut spend.models, &counted);
        added.push(counted);
    }
    added
}

fn merge(models: &mut Vec<ModelSpend>, counted: &ModelSpend) {
    let Some(entry) = models
        .iter_mut()
        .find(|m| m.provider == counted.provider && m.model == counted.model)
    else {
        models.push(counted.clone());
        return;
    };
    entry.input_tokens = entry.input_tokens.saturating_add(counted.input_tokens);
    entry.output_tokens = entry.output_tokens.saturating_add(counted.output_tokens);
    let known = entry.cost.as_deref().and_then(parse_reported_micros);
    let new = counted.cost.as_deref().and_then(parse_reported_micros);
    match (known, new) {
        (None, Some(_)) => {
            entry.cost = counted.cost.clone();
            entry.currency = counted.currency.clone();
        }
        (Some(known), Some(new)) if entry.currency == counted.currency => {
            entry.cost = Some(format_micros(known.saturating_add(new)));
        }
        _ => {}
    }
}

/// The budget and price variables of the agent of a Job of `task`: the price of its model
/// (with the currency) when the table has one, and what is left of `spec.budget` (never
/// below 0) when it has one.
pub fn agent_env(task: &AgentTask, pricing: &Pricing) -> Vec<(&'static str, String)> {
    let mut vars = Vec::new();
    let price = pricing.task_price(task);
    if let Some(price) = price {
        vars.push((env::BUDGET_CURRENCY, price.currency.clone()));
        vars.push((
            env::PRICE_INPUT_PER_MILLION,
            format_micros(price.input_per_million),
        ));
        vars.push((
            env::PRICE_OUTPUT_PER_MILLION,
            format_micros(price.output_per_million),
        ));
    }
    let Some(budget) = &task.spec.budget else {
        return vars;
    };
    let spend = task.status.as_ref().and_then(|s| s.spend.as_ref());
    let Ok(left) = remaining(budget, spend, price) else {
        return vars;
    };
    let tokens = [
        (env::BUDGET_TOKENS, left.tokens),
        (env::BUDGET_INPUT_TOKENS, left.input_tokens),
        (env::BUDGET_OUTPUT_TOKENS, left.output_tokens),
    ];
    for (name, left) in tokens {
        if let Some(left) = left {
            vars.push((name, left.max(0).to_string()));
        }
    }
    // A cost limit means nothing to an agent that cannot price its tokens.
    if price.is_some()
        && let Some(cost) = left.cost
    {
        vars.push((env::BUDGET_COST, format_micros(cost.max(0))));
    }
    vars
}

/// The `recac.io/source` label of a task (the source that created it), or empty.
pub fn source_of(task: &AgentTask) -> String {
    task.labels().get(SOURCE_LABEL).cloned().unwrap_or_default()
}

/// The label a source controller sets on the tasks it creates.
pub const SOURCE_LABEL: &str = "recac.io/source";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Decimal;
    use recac_api::{AgentSpec, AgentTaskSpec, Repository};

    fn entry(provider: &str, model: &str, input: &str, output: &str, currency: &str) -> PriceEntry {
        PriceEntry {
            provider: provider.into(),
            model: model.into(),
            input_per_million: Decimal(input.into()),
            output_per_million: Decimal(output.into()),
            currency: currency.into(),
        }
    }

    fn pricing() -> Pricing {
        Pricing {
            prices: vec![
                Price::from_entry(&entry("openai", "gpt-x", "2.50", "10", "USD")).expect("price"),
                Price::from_entry(&entry("anthropic", "claude-y", "3", "15", "EUR"))
                    .expect("price"),
            ],
            default_provider: Some("openai".into()),
            default_model: Some("gpt-x".into()),
        }
    }

    fn task(budget: Option<Budget>, spend: Option<Spend>) -> AgentTask {
        let mut task = AgentTask::new(
            "t",
            AgentTaskSpec {
                prompt: Some("p".into()),
                ticket: None,
                repository: Repository {
                    url: "https://git.example.com/o/r.git".into(),
                    base_branch: None,
                    branch: None,
                },
                agent: None,
                max_retries: 2,
                timeout_seconds: 600,
                ttl_seconds_after_finished: None,
                suspend: false,
                approval: None,
                budget,
                egress: None,
            },
        );
        task.status = spend.map(|spend| recac_api::AgentTaskStatus {
            spend: Some(spend),
            ..Default::default()
        });
        task
    }

    fn usage(provider: Option<&str>, model: &str, input: u64, output: u64) -> ModelUsage {
        ModelUsage {
            provider: provider.map(str::to_string),
            model: model.into(),
            input_tokens: input,
            output_tokens: output,
            cost: None,
            currency: None,
        }
    }

    #[test]
    fn decimals_are_exact_micro_units() {
        assert_eq!(parse_micros("12.50"), Ok(12_500_000));
        assert_eq!(parse_micros("0.000001"), Ok(1));
        assert_eq!(parse_micros("7"), Ok(7_000_000));
        assert_eq!(parse_micros("123456789012"), Ok(123_456_789_012_000_000));
        for bad in [
            "",
            ".5",
            "5.",
            "-1",
            "1e3",
            "1.2345678",
            "1,5",
            " 1",
            "0x10",
            "1234567890123",
        ] {
            assert!(parse_micros(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_reported_micros(" 0.0000015 "), Some(2));
        assert_eq!(parse_reported_micros("0.0000014"), Some(1));
        assert_eq!(parse_reported_micros("abc"), None);
        assert_eq!(format_micros(12_500_000), "12.5");
        assert_eq!(format_micros(3_000_000), "3");
        assert_eq!(format_micros(1), "0.000001");
        assert_eq!(format_micros(-2_250_000), "-2.25");
        assert_eq!(format_micros(0), "0");
        for micros in [0, 1, 999_999, 1_000_001, 42_420_000] {
            assert_eq!(parse_micros(&format_micros(micros)), Ok(micros));
        }
        assert!((micros_as_f64(1_500_000) - 1.5).abs() < f64::EPSILON);
        assert!(is_currency_code("USD"));
        for bad in ["usd", "US", "USDT", "U$D"] {
            assert!(!is_currency_code(bad), "{bad}");
        }
    }

    #[test]
    fn prices_cost_tokens_rounded_up_to_a_micro_unit() {
        let p = pricing();
        let gpt = p.find("openai", "gpt-x").expect("price");
        // 1M input at 2.50 + 200k output at 10 = 2.50 + 2.00.
        assert_eq!(gpt.cost(1_000_000, 200_000), 4_500_000);
        // One input token costs 2.5 micro-units: rounded up.
        assert_eq!(gpt.cost(1, 0), 3);
        assert_eq!(gpt.cost(0, 0), 0);
        assert_eq!(gpt.cost(i64::MAX, i64::MAX), i64::MAX);
        assert!(p.find("openai", "claude-y").is_none());
        for (bad, key) in [
            (entry("", "m", "1", "1", "USD"), "provider"),
            (entry("p", " ", "1", "1", "USD"), "model"),
            (entry("p", "m", "1.1234567", "1", "USD"), "inputPerMillion"),
            (entry("p", "m", "1", "-1", "USD"), "outputPerMillion"),
            (entry("p", "m", "1", "1", "usd"), "currency"),
        ] {
            assert_eq!(Price::from_entry(&bad).map_err(|e| e.0), Err(key));
        }
    }

    #[test]
    fn the_tasks_model_is_its_own_else_the_operators() {
        let p = pricing();
        let mut t = task(None, None);
        assert_eq!(p.task_model(&t), (Some("openai"), Some("gpt-x")));
        assert_eq!(p.task_price(&t).map(|p| p.currency.as_str()), Some("USD"));
        t.spec.agent = Some(Box::new(AgentSpec {
            provider: Some("anthropic".into()),
            model: Some("claude-y".into()),
            ..Default::default()
        }));
        assert_eq!(p.task_price(&t).map(|p| p.currency.as_str()), Some("EUR"));
        t.spec.agent = Some(Box::new(AgentSpec {
            model: Some("gpt-unpriced".into()),
            ..Default::default()
        }));
        assert!(p.task_price(&t).is_none());
        assert_eq!(p.describe_task_model(&t), "openai/gpt-unpriced");
        assert_eq!(Pricing::default().describe_task_model(&t), "?/gpt-unpriced");
    }

    #[test]
    fn usage_is_summed_per_model_with_costs_from_the_agent_or_the_table() {
        let p = pricing();
        let mut spend = Spend::default();
        let added = add_usage(
            &mut spend,
            &[
                usage(Some("openai"), "gpt-x", 1_000_000, 100_000),
                ModelUsage {
                    cost: Some("0.75".into()),
                    currency: Some("EUR".into()),
                    ..usage(Some("anthropic"), "claude-y", 10, 10)
                },
                usage(None, "local-model", 5, 6),
            ],
            &p,
            Some("openai"),
        );
        assert_eq!(added.len(), 3);
        assert_eq!(added[0].cost.as_deref(), Some("3.5"));
        assert_eq!(added[0].currency.as_deref(), Some("USD"));
        assert_eq!(added[1].cost.as_deref(), Some("0.75"));
        assert_eq!(added[2].provider.as_deref(), Some("openai"));
        assert_eq!(
            (added[2].cost.as_deref(), added[2].currency.as_deref()),
            (None, None)
        );

        // A second attempt on the same model sums into its entry.
        add_usage(
            &mut spend,
            &[usage(Some("openai"), "gpt-x", 0, 100_000)],
            &p,
            Some("openai"),
        );
        assert_eq!(spend.models.len(), 3);
        let gpt = &spend.models[0];
        assert_eq!((gpt.input_tokens, gpt.output_tokens), (1_000_000, 200_000));
        assert_eq!(gpt.cost.as_deref(), Some("4.5"));
        // A cost in another currency is not mixed in.
        add_usage(
            &mut spend,
            &[ModelUsage {
                cost: Some("1".into()),
                currency: Some("GBP".into()),
                ..usage(Some("openai"), "gpt-x", 1, 1)
            }],
            &p,
            None,
        );
        assert_eq!(spend.models[0].cost.as_deref(), Some("4.5"));
        assert_eq!(spend.models[0].input_tokens, 1_000_001);

        let t = totals(Some(&spend), Some("USD"));
        assert_eq!(t.input_tokens, 1_000_001 + 10 + 5);
        assert_eq!(t.output_tokens, 200_001 + 10 + 6);
        assert_eq!(t.cost, 4_500_000);
        assert_eq!(totals(Some(&spend), None).cost, 5_250_000);
        assert_eq!(totals(None, None), Totals::default());
    }

    #[test]
    fn what_is_left_is_the_budget_less_the_spend_and_any_limit_can_run_out() {
        let budget = Budget {
            tokens: Some(1_000),
            input_tokens: Some(800),
            output_tokens: None,
            cost: Some("1.00".into()),
        };
        let spend = Spend {
            models: vec![ModelSpend {
                provider: Some("openai".into()),
                model: "gpt-x".into(),
                input_tokens: 300,
                output_tokens: 200,
                cost: Some("0.25".into()),
                currency: Some("USD".into()),
            }],
            attempts: 1,
            not_reported: 0,
        };
        let p = pricing();
        let price = p.find("openai", "gpt-x");
        let left = remaining(&budget, Some(&spend), price).expect("decimal");
        assert_eq!(
            left,
            Remaining {
                tokens: Some(500),
                input_tokens: Some(500),
                output_tokens: None,
                cost: Some(750_000),
            }
        );
        assert_eq!(left.exhausted(), None);
        let fresh = remaining(&budget, None, price).expect("decimal");
        assert_eq!(fresh.tokens, Some(1_000));
        assert_eq!(fresh.cost, Some(1_000_000));

        let tight = Budget {
            input_tokens: Some(300),
            ..budget.clone()
        };
        let left = remaining(&tight, Some(&spend), price).expect("decimal");
        assert_eq!(left.exhausted(), Some("inputTokens"));
        let cheap = Budget {
            tokens: None,
            input_tokens: None,
            cost: Some("0.2".into()),
            ..budget.clone()
        };
        let left = remaining(&cheap, Some(&spend), price).expect("decimal");
        assert_eq!(left.cost, Some(-50_000));
        assert_eq!(left.exhausted(), Some("cost"));
        let bad = Budget {
            cost: Some("lots".into()),
            ..budget
        };
        assert!(remaining(&bad, None, price).is_err());
    }

    #[test]
    fn the_agent_gets_its_price_and_what_is_left_never_below_zero() {
        let p = pricing();
        // No budget: the price alone, so the agent can report its cost.
        let vars = agent_env(&task(None, None), &p);
        assert_eq!(
            vars,
            vec![
                (env::BUDGET_CURRENCY, "USD".to_string()),
                (env::PRICE_INPUT_PER_MILLION, "2.5".to_string()),
                (env::PRICE_OUTPUT_PER_MILLION, "10".to_string()),
            ]
        );
        let spend = Spend {
            models: vec![ModelSpend {
                provider: Some("openai".into()),
                model: "gpt-x".into(),
                input_tokens: 700,
                output_tokens: 400,
                cost: Some("2.5".into()),
                currency: Some("USD".into()),
            }],
            attempts: 1,
            not_reported: 0,
        };
        let budget = Budget {
            tokens: Some(1_000),
            input_tokens: None,
            output_tokens: Some(1_000),
            cost: Some("10".into()),
        };
        let vars = agent_env(&task(Some(budget.clone()), Some(spend)), &p);
        let get = |name: &str| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get(env::BUDGET_TOKENS), Some("0"));
        assert_eq!(get(env::BUDGET_INPUT_TOKENS), None);
        assert_eq!(get(env::BUDGET_OUTPUT_TOKENS), Some("600"));
        assert_eq!(get(env::BUDGET_COST), Some("7.5"));
        assert_eq!(get(env::BUDGET_CURRENCY), Some("USD"));
        // Without a price there is no currency, so no cost limit the agent could keep.
        let vars = agent_env(&task(Some(budget), None), &Pricing::default());
        assert_eq!(
            vars,
            vec![
                (env::BUDGET_TOKENS, "1000".to_string()),
                (env::BUDGET_OUTPUT_TOKENS, "1000".to_string())
            ]
        );
    }
}
