//! What a task's runs spent on their models, in words (pure).
//!
//! The task's `status.spend` (summed over its attempts) is what an outcome tells; usage an
//! agent did not report is said to be unknown, never counted as nothing. Costs are shown as
//! the status gives them (decimal strings), never recomputed.

use recac_api::agent_contract::ModelUsage;
use recac_api::{ModelSpend, Spend};

use crate::comment::Inline;
use crate::render::{Facts, field, thousands};

fn count(n: i64) -> String {
    thousands(u64::try_from(n).unwrap_or(0))
}

fn cost_of(cost: Option<&str>, currency: Option<&str>) -> Option<String> {
    let cost = cost.map(str::trim).filter(|c| !c.is_empty())?;
    Some(match currency.map(str::trim).filter(|c| !c.is_empty()) {
        Some(currency) => format!("{cost} {currency}"),
        None => format!("cost {cost}"),
    })
}

/// One model's line: `51,234 input and 2,345 output tokens on claude-sonnet-4-5 (0.19 USD)`.
pub fn model_words(model: &ModelSpend) -> String {
    let cost = cost_of(model.cost.as_deref(), model.currency.as_deref())
        .map(|cost| format!(" ({cost})"))
        .unwrap_or_default();
    format!(
        "{} input and {} output tokens on {}{cost}",
        count(model.input_tokens),
        count(model.output_tokens),
        model.model
    )
}

/// `usage not reported by the agent for 2 attempts`.
pub fn not_reported_words(attempts: i32) -> String {
    let plural = if attempts == 1 { "" } else { "s" };
    format!("usage not reported by the agent for {attempts} attempt{plural}")
}

fn counted(spend: &Spend) -> bool {
    spend.attempts > 0 || !spend.models.is_empty() || spend.not_reported > 0
}

/// The `Spent:` items of an outcome's results, one per model, from the task's
/// `status.spend`; `None` when the status has no spend (the caller then shows the last
/// attempt's tokens, if the agent reported them).
pub fn items(facts: &Facts) -> Option<Vec<Vec<Inline>>> {
    let spend = facts.spend.as_ref().filter(|s| counted(s))?;
    let mut items: Vec<Vec<Inline>> = spend
        .models
        .iter()
        .map(|model| field("Spent", Inline::Text(model_words(model))))
        .collect();
    if spend.not_reported > 0 {
        items.push(field(
            "Spent",
            Inline::Text(not_reported_words(spend.not_reported)),
        ));
    } else if items.is_empty() {
        items.push(field("Spent", Inline::Text("no tokens".into())));
    }
    Some(items)
}

/// What was spent in one phrase, for a run stopped at its budget: `53,579 tokens and 0.19
/// USD spent`. From the task's spend, else (without one in its status) the last attempt's
/// usage or tokens; `None` when no tokens are known.
pub fn spent_words(facts: &Facts) -> Option<String> {
    let from_status = facts.spend.as_ref().filter(|s| counted(s));
    let (tokens, costs) = if let Some(spend) = from_status {
        if spend.models.is_empty() {
            return None;
        }
        totals(spend.models.iter().map(|m| {
            (
                u64::try_from(m.input_tokens).unwrap_or(0)
                    + u64::try_from(m.output_tokens).unwrap_or(0),
                cost_of(m.cost.as_deref(), m.currency.as_deref()),
            )
        }))
    } else if let Some(usage) = facts
        .result
        .as_ref()
        .and_then(|r| r.usage.as_ref())
        .filter(|u| !u.is_empty())
    {
        totals(usage.iter().map(|m: &ModelUsage| {
            (
                m.input_tokens + m.output_tokens,
                cost_of(m.cost.as_deref(), m.currency.as_deref()),
            )
        }))
    } else {
        let tokens = facts.result.as_ref().and_then(|r| r.token_usage.as_ref())?;
        (tokens.input_tokens + tokens.output_tokens, None)
    };
    let mut words = format!("{} tokens", thousands(tokens));
    if let Some(costs) = costs {
        words.push_str(&format!(" and {costs}"));
    }
    words.push_str(" spent");
    if facts.spend.as_ref().is_some_and(|s| s.not_reported > 0) {
        words.push_str(", more not reported");
    }
    Some(words)
}

/// The tokens summed, and the costs as given (joined with `+`) when every model has one.
fn totals(models: impl Iterator<Item = (u64, Option<String>)>) -> (u64, Option<String>) {
    let mut tokens = 0u64;
    let mut costs = Some(Vec::new());
    for (model_tokens, cost) in models {
        tokens = tokens.saturating_add(model_tokens);
        match (costs.as_mut(), cost) {
            (Some(all), Some(cost)) => all.push(cost),
            _ => costs = None,
        }
    }
    (tokens, costs.map(|all| all.join(" + ")))
}

/// The task's budget in one phrase: `50,000 tokens, 0.20 USD` (the cost in the currency of
/// what was spent, when that is one currency); `None` without a budget.
pub fn budget_words(facts: &Facts) -> Option<String> {
    let budget = facts.budget.as_ref()?;
    let mut parts = Vec::new();
    if let Some(n) = budget.tokens {
        parts.push(format!("{} tokens", count(n)));
    }
    if let Some(n) = budget.input_tokens {
        parts.push(format!("{} input tokens", count(n)));
    }
    if let Some(n) = budget.output_tokens {
        parts.push(format!("{} output tokens", count(n)));
    }
    if let Some(cost) = budget
        .cost
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty())
    {
        let currencies: std::collections::BTreeSet<&str> = facts
            .spend
            .iter()
            .flat_map(|s| s.models.iter())
            .filter_map(|m| m.currency.as_deref())
            .collect();
        match currencies.iter().next() {
            Some(currency) if currencies.len() == 1 => parts.push(format!("{cost} {currency}")),
            _ => parts.push(format!("cost {cost}")),
        }
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comment::{Block, Comment};
    use crate::render::tests::{adf_texts, facts};

    fn model(name: &str, input: i64, output: i64, cost: Option<&str>) -> ModelSpend {
        ModelSpend {
            provider: None,
            model: name.into(),
            input_tokens: input,
            output_tokens: output,
            cost: cost.map(str::to_string),
            currency: cost.map(|_| "USD".into()),
        }
    }

    fn shown(facts: &Facts) -> (String, Vec<String>) {
        let mut c = Comment::default();
        c.blocks
            .push(Block::Bullets(items(facts).unwrap_or_default()));
        let mut texts = Vec::new();
        adf_texts(&c.to_adf(), &mut texts);
        (c.to_wiki(), texts.into_iter().map(|(t, _)| t).collect())
    }

    #[test]
    fn each_model_its_tokens_and_cost_and_unknown_usage_is_never_zero() {
        let mut f = facts();
        f.spend = Some(Spend {
            models: vec![
                model("claude-sonnet-4-5", 51234, 2345, Some("0.19")),
                model("gpt_4o*mini", 1_200_000, 0, None),
            ],
            attempts: 3,
            not_reported: 1,
        });
        let (wiki, adf) = shown(&f);
        assert_eq!(
            wiki,
            "* Spent: 51,234 input and 2,345 output tokens on claude-sonnet-4-5 (0.19 USD)\n* Spent: 1,200,000 input and 0 output tokens on gpt\\_4o\\*mini\n* Spent: usage not reported by the agent for 1 attempt"
        );
        assert_eq!(
            adf,
            [
                "Spent: ",
                "51,234 input and 2,345 output tokens on claude-sonnet-4-5 (0.19 USD)",
                "Spent: ",
                "1,200,000 input and 0 output tokens on gpt_4o*mini",
                "Spent: ",
                "usage not reported by the agent for 1 attempt"
            ]
        );

        f.spend = Some(Spend {
            models: Vec::new(),
            attempts: 2,
            not_reported: 2,
        });
        let (wiki, adf) = shown(&f);
        assert_eq!(
            wiki,
            "* Spent: usage not reported by the agent for 2 attempts"
        );
        assert!(!adf.concat().contains("0 tokens"), "{adf:?}");
        assert_eq!(spent_words(&f), None, "unknown, not zero");

        // Reported, and nothing: zero is known.
        f.spend = Some(Spend {
            models: Vec::new(),
            attempts: 1,
            not_reported: 0,
        });
        assert_eq!(shown(&f).0, "* Spent: no tokens");
        // A cost without a currency is still shown as given.
        let mut odd = model("m", 1, 2, Some("0.000001"));
        odd.currency = None;
        assert_eq!(
            model_words(&odd),
            "1 input and 2 output tokens on m (cost 0.000001)"
        );
    }

    #[test]
    fn without_a_spend_in_status_the_last_results_tokens_are_shown() {
        let f = facts();
        assert_eq!(items(&f), None);
        let c = crate::render::render(
            &f,
            &crate::render::tests::report(crate::report::ReportKind::Succeeded, 2),
            &crate::config::Templates::default(),
        );
        let wiki = c.to_wiki();
        assert!(
            wiki.contains("Tokens: 53,579 (51,234 in, 2,345 out)"),
            "{wiki}"
        );
        assert!(!wiki.contains("Spent:"), "{wiki}");
        assert_eq!(spent_words(&f).as_deref(), Some("53,579 tokens spent"));
        let mut with = facts();
        with.spend = Some(Spend {
            models: vec![model("claude-sonnet-4-5", 51234, 2345, Some("0.19"))],
            attempts: 2,
            not_reported: 0,
        });
        let wiki = crate::render::render(
            &with,
            &crate::render::tests::report(crate::report::ReportKind::Succeeded, 2),
            &crate::config::Templates::default(),
        )
        .to_wiki();
        assert!(
            wiki.contains(
                "* Spent: 51,234 input and 2,345 output tokens on claude-sonnet-4-5 (0.19 USD)"
            ),
            "{wiki}"
        );
        assert!(
            !wiki.contains("Tokens:"),
            "the spend over all attempts replaces them: {wiki}"
        );
    }
}
