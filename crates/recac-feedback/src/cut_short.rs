//! A run cut short by its deadline or its budget, in words, and how to go on from it
//! (pure). A branch is named only when the task's status says the work so far was pushed
//! there (`status.partial` with a commit). What the agent says it did and what is left is
//! agent output: it comes redacted ([`crate::observe::clean_result`]) and is shown as
//! preformatted text, never as markup.

use std::time::Duration;

use recac_api::agent_contract::CutShort;
use recac_api::reasons::{BUDGET_EXHAUSTED, DEADLINE_EXCEEDED};

use crate::comment::{Block, Inline};
use crate::render::{Facts, human_duration};
use crate::spend;

pub use recac_api::reasons::BUDGET_UNPRICED;

/// What ended a task early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Its deadline (`timeoutSeconds`) cut the run short.
    Deadline,
    /// Its budget is spent.
    Budget,
    /// Its budget has a cost, but its model has no price: it could not be held to it.
    Unpriced,
}

/// What ended the failed task early, if anything did: its `Failed` reason, else (for a
/// last attempt cut short after it pushed) the cause the agent reported.
pub fn cause(facts: &Facts) -> Option<Stop> {
    match facts.failed_reason.as_deref() {
        Some(DEADLINE_EXCEEDED) => Some(Stop::Deadline),
        Some(BUDGET_EXHAUSTED) => Some(Stop::Budget),
        Some(BUDGET_UNPRICED) => Some(Stop::Unpriced),
        _ if facts.partial => {
            let partial = facts.result.as_ref()?.partial.as_ref()?;
            Some(match partial.cause {
                CutShort::Deadline => Stop::Deadline,
                CutShort::Budget => Stop::Budget,
            })
        }
        _ => None,
    }
}

/// Where the work so far is: the branch and the short commit, when the status says it was
/// pushed.
pub fn pushed(facts: &Facts) -> Option<(&str, String)> {
    if !facts.partial {
        return None;
    }
    let branch = facts.branch.as_deref().filter(|b| !b.trim().is_empty())?;
    let commit = facts
        .commit
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty())?;
    Some((branch, commit.chars().take(7).collect()))
}

/// The failure in a few words, for the headline (`recac could not finish this ticket: …`).
pub fn words(stop: Stop, facts: &Facts) -> String {
    match stop {
        Stop::Deadline => format!(
            "the run was cut short by its deadline of {}",
            human_duration(Duration::from_secs(facts.timeout_seconds.max(0) as u64))
        ),
        Stop::Budget => "the run stopped at its budget".into(),
        Stop::Unpriced => unpriced_words(),
    }
}

/// Why a task with an unpriced budget did not run, in words.
pub fn unpriced_words() -> String {
    "its budget has a cost, but its model has no price in the operator's agent.prices".into()
}

fn text(t: impl Into<String>) -> Inline {
    Inline::Text(t.into())
}

fn code(t: impl Into<String>) -> Inline {
    Inline::Code(t.into())
}

/// `; its work so far is pushed to <branch> (<commit>).` or ` before it pushed any work.`
fn where_the_work_is(facts: &Facts, line: &mut Vec<Inline>) {
    match pushed(facts) {
        Some((branch, commit)) => line.extend([
            text("; its work so far is pushed to "),
            code(branch),
            text(" ("),
            code(commit),
            text(")."),
        ]),
        None => line.push(text(" before it pushed any work.")),
    }
}

/// The paragraph that says how the run was cut short and how to go on, then the agent's
/// note on what it did and what is left; nothing when the task was not cut short.
pub fn blocks(facts: &Facts) -> Vec<Block> {
    let Some(stop) = cause(facts) else {
        return Vec::new();
    };
    let mut line = Vec::new();
    match stop {
        Stop::Deadline => {
            line.extend([
                text("The run was cut short by its deadline ("),
                code("timeoutSeconds"),
                text(")"),
            ]);
            where_the_work_is(facts, &mut line);
            match (facts.commands, pushed(facts).is_some()) {
                (true, true) => line.extend([
                    text(" To continue, write "),
                    code("/recac <what to do next>"),
                    text(" on this ticket, or "),
                    code("/recac retry"),
                    text("."),
                ]),
                (true, false) => line.extend([
                    text(" To try again, write "),
                    code("/recac retry"),
                    text(" or "),
                    code("/recac <what to do next>"),
                    text(" on this ticket."),
                ]),
                (false, true) => {
                    line.push(text(" To continue, run a new task on that branch."));
                }
                (false, false) => {}
            }
        }
        Stop::Budget => {
            line.push(text("The run stopped at its budget"));
            let spent = spend::spent_words(facts);
            let budget = spend::budget_words(facts).map(|b| format!("the budget: {b}"));
            let about: Vec<String> = spent.into_iter().chain(budget).collect();
            if !about.is_empty() {
                line.push(text(format!(" ({})", about.join("; "))));
            }
            where_the_work_is(facts, &mut line);
            line.extend([text(" Raise "), code("spec.budget")]);
            if facts.commands {
                line.push(text(" (or the source's budget)"));
            }
            line.push(text(" to continue."));
        }
        Stop::Unpriced => {
            line.extend([
                text("The task's budget has a cost ("),
                code("spec.budget.cost"),
                text("), but its model"),
            ]);
            if let Some(model) = &facts.model {
                line.extend([text(" "), code(model.clone())]);
            }
            line.extend([
                text(" has no price in the operator's "),
                code("agent.prices"),
                text(", so the cost cannot be counted. Add the model's price there, or give the budget in tokens."),
            ]);
        }
    }
    let mut blocks = vec![Block::Paragraph(line)];
    blocks.extend(note(facts));
    blocks
}

/// What the agent says it did and what is left, as it wrote it (redacted), preformatted.
fn note(facts: &Facts) -> Vec<Block> {
    let Some(partial) = facts.result.as_ref().and_then(|r| r.partial.as_ref()) else {
        return Vec::new();
    };
    let parts: Vec<String> = [("Done", &partial.done), ("Left", &partial.left)]
        .into_iter()
        .filter_map(|(name, n)| {
            let n = n.as_deref().map(str::trim).filter(|n| !n.is_empty())?;
            Some(format!("{name}: {n}"))
        })
        .collect();
    if parts.is_empty() {
        return Vec::new();
    }
    vec![
        Block::Paragraph(vec![Inline::Strong(
            "The agent's note on its work so far:".into(),
        )]),
        Block::CodeBlock(parts.join("\n\n")),
    ]
}

/// The words of a run whose attempt was cut short by its deadline and is retried from what
/// it pushed: `attempt 1 was cut short by its deadline; attempt 2 continues from the branch`;
/// `None` when the failed attempt was not such a one.
pub fn retrying_words(failed_attempt: i32, facts: &Facts) -> Option<String> {
    pushed(facts)?;
    let message = facts.message.as_deref().unwrap_or("");
    if message.contains("Budget") {
        return None;
    }
    Some(format!(
        "attempt {failed_attempt} was cut short by its deadline; attempt {} continues from the branch",
        failed_attempt + 1
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Templates;
    use crate::render::tests::{adf_code_blocks, adf_texts, facts, report};
    use crate::render::{self, Log};
    use crate::report::ReportKind;
    use recac_api::agent_contract::{AgentResult, Outcome, PartialWork};
    use recac_api::{Budget, ModelSpend, Spend};
    use serde_json::Value;

    /// Agent notes full of what wiki markup and ADF-minded renderers would interpret.
    const DONE: &str =
        "Made *login.timeout* configurable in {code}config.rs{code}\nh1. not a heading";
    const LEFT: &str = "-tests- for [the docs|http://x] <script>alert(1)</script> {noformat}";

    fn sonnet(input: i64, output: i64, cost: Option<&str>) -> ModelSpend {
        ModelSpend {
            provider: Some("anthropic".into()),
            model: "claude-sonnet-4-5".into(),
            input_tokens: input,
            output_tokens: output,
            cost: cost.map(str::to_string),
            currency: cost.map(|_| "USD".into()),
        }
    }

    fn cut(reason: &str, cause: CutShort, commit: Option<&str>) -> Facts {
        let mut f = facts();
        f.failed_reason = Some(reason.into());
        f.message = Some(format!(
            "attempt 2 failed ({reason}: the run was cut short)"
        ));
        f.pull_request_url = None;
        f.partial = commit.is_some();
        f.commit = commit.map(str::to_string);
        f.result = Some(AgentResult {
            outcome: Outcome::Partial,
            branch: Some("recac/OPS-1".into()),
            commit: commit.map(str::to_string),
            pull_request_url: None,
            tests_passed: None,
            summary: None,
            token_usage: None,
            plan: None,
            partial: Some(PartialWork {
                cause,
                done: Some(DONE.into()),
                left: Some(LEFT.into()),
            }),
            usage: None,
            egress_blocked: Vec::new(),
        });
        f.spend = Some(Spend {
            models: vec![sonnet(51234, 2345, Some("0.19"))],
            attempts: 2,
            not_reported: 0,
        });
        f
    }

    fn failed(f: &Facts) -> crate::comment::Comment {
        render::render(f, &report(ReportKind::Failed, 2), &Templates::default())
    }

    /// The text of the ADF paragraph at `index` of the document, its nodes joined.
    fn adf_paragraph(adf: &Value, index: usize) -> String {
        let mut texts = Vec::new();
        adf_texts(&adf["content"][index], &mut texts);
        texts.into_iter().map(|(t, _)| t).collect()
    }

    fn adf_codes(adf: &Value) -> Vec<String> {
        let mut texts = Vec::new();
        adf_texts(adf, &mut texts);
        texts
            .into_iter()
            .filter(|(_, marks)| marks.contains("\"code\""))
            .map(|(t, _)| t)
            .collect()
    }

    #[test]
    fn a_deadline_cut_says_where_the_work_is_and_how_to_continue_in_both_flavours() {
        let f = cut(
            DEADLINE_EXCEEDED,
            CutShort::Deadline,
            Some("c0ffee1234567890"),
        );
        let c = failed(&f);
        let wiki = c.to_wiki();
        let said = "The run was cut short by its deadline ({{timeoutSeconds}}); its work so far is pushed to {{recac/OPS-1}} ({{c0ffee1}}). To continue, write {{/recac <what to do next>}} on this ticket, or {{/recac retry}}.";
        assert!(
            wiki.starts_with(&format!(
                "recac could not finish this ticket: the run was cut short by its deadline of 1h 0m.\n\n{said}\n\n"
            )),
            "{wiki}"
        );
        let note = format!("Done: {DONE}\n\nLeft: {LEFT}");
        let block = crate::render::tests::wiki_block(&note);
        assert!(
            wiki.contains(&format!(
                "*The agent's note on its work so far:*\n\n{block}"
            )),
            "{wiki}"
        );
        let outside = wiki.replace(&block, "");
        for markup in ["*login", "{code}", "[the docs|http://x]", "h1.", "<script>"] {
            assert!(
                !outside.contains(markup),
                "{markup} outside the block: {wiki}"
            );
        }
        assert!(
            wiki.contains(
                "* Spent: 51,234 input and 2,345 output tokens on claude-sonnet-4-5 (0.19 USD)"
            ),
            "{wiki}"
        );
        assert!(!wiki.contains("Tokens:"), "{wiki}");

        let adf = c.to_adf();
        assert_eq!(
            adf_paragraph(&adf, 1),
            "The run was cut short by its deadline (timeoutSeconds); its work so far is pushed to recac/OPS-1 (c0ffee1). To continue, write /recac <what to do next> on this ticket, or /recac retry."
        );
        assert_eq!(adf_code_blocks(&adf), [note]);
        assert_eq!(
            adf_codes(&adf)[..5],
            [
                "timeoutSeconds",
                "recac/OPS-1",
                "c0ffee1",
                "/recac <what to do next>",
                "/recac retry"
            ]
        );
        let mut texts = Vec::new();
        adf_texts(&adf, &mut texts);
        assert!(
            texts.iter().any(|(t, _)| t
                == "51,234 input and 2,345 output tokens on claude-sonnet-4-5 (0.19 USD)"),
            "{adf}"
        );
        assert!(!adf.to_string().contains(r#""href":"http://x""#), "{adf}");
    }

    #[test]
    fn a_deadline_cut_that_pushed_nothing_names_no_branch() {
        let mut f = cut(DEADLINE_EXCEEDED, CutShort::Deadline, None);
        // The branch decided at dispatch is known, but nothing was pushed to it.
        f.branch = Some("recac/OPS-1".into());
        let c = failed(&f);
        let wiki = c.to_wiki();
        assert!(
            wiki.contains("The run was cut short by its deadline ({{timeoutSeconds}}) before it pushed any work. To try again, write {{/recac retry}} or {{/recac <what to do next>}} on this ticket."),
            "{wiki}"
        );
        assert!(!wiki.contains("pushed to"), "{wiki}");
        assert!(
            adf_paragraph(&c.to_adf(), 1).ends_with("before it pushed any work. To try again, write /recac retry or /recac <what to do next> on this ticket."),
        );
        // Partial without a commit, or a commit without partial: nothing pushed is claimed.
        f.commit = Some("c0ffee1".into());
        assert_eq!(pushed(&f), None);
        f.partial = true;
        f.commit = None;
        assert_eq!(pushed(&f), None);
        // A task made by hand: no commands on the ticket act on it.
        let mut by_hand = cut(DEADLINE_EXCEEDED, CutShort::Deadline, Some("abc"));
        by_hand.commands = false;
        let wiki = failed(&by_hand).to_wiki();
        assert!(
            wiki.contains(
                "pushed to {{recac/OPS-1}} ({{abc}}). To continue, run a new task on that branch."
            ),
            "{wiki}"
        );
        assert!(!wiki.contains("{{/recac"), "{wiki}");
    }

    #[test]
    fn a_budget_stop_says_what_was_spent_and_how_to_raise_it() {
        let mut f = cut(BUDGET_EXHAUSTED, CutShort::Budget, Some("c0ffee1"));
        f.budget = Some(Budget {
            tokens: Some(50_000),
            cost: Some("0.20".into()),
            ..Default::default()
        });
        let c = failed(&f);
        let wiki = c.to_wiki();
        let said = "The run stopped at its budget (53,579 tokens and 0.19 USD spent; the budget: 50,000 tokens, 0.20 USD); its work so far is pushed to {{recac/OPS-1}} ({{c0ffee1}}). Raise {{spec.budget}} (or the source's budget) to continue.";
        assert!(
            wiki.starts_with(&format!(
                "recac could not finish this ticket: the run stopped at its budget.\n\n{said}"
            )),
            "{wiki}"
        );
        assert_eq!(
            adf_paragraph(&c.to_adf(), 1),
            "The run stopped at its budget (53,579 tokens and 0.19 USD spent; the budget: 50,000 tokens, 0.20 USD); its work so far is pushed to recac/OPS-1 (c0ffee1). Raise spec.budget (or the source's budget) to continue."
        );
        assert!(wiki.contains("Left: -tests-"), "the note: {wiki}");

        // Nothing pushed, nothing known of the spend, a task made by hand.
        f.partial = false;
        f.spend = None;
        f.budget = None;
        f.commands = false;
        let wiki = failed(&f).to_wiki();
        assert!(
            wiki.contains("The run stopped at its budget before it pushed any work. Raise {{spec.budget}} to continue."),
            "{wiki}"
        );
        // Several models, one without a cost: the tokens summed, no partial cost.
        f.spend = Some(Spend {
            models: vec![
                sonnet(1000, 200, Some("0.01")),
                ModelSpend {
                    model: "gpt-4o".into(),
                    input_tokens: 3000,
                    output_tokens: 1_000_000,
                    ..Default::default()
                },
            ],
            attempts: 2,
            not_reported: 1,
        });
        assert_eq!(
            spend::spent_words(&f).as_deref(),
            Some("1,004,200 tokens spent, more not reported")
        );
        if let Some(s) = f.spend.as_mut() {
            s.models[1].cost = Some("2.5".into());
            s.models[1].currency = Some("EUR".into());
        }
        assert_eq!(
            spend::spent_words(&f).as_deref(),
            Some("1,004,200 tokens and 0.01 USD + 2.5 EUR spent, more not reported")
        );
    }

    #[test]
    fn an_unpriced_budget_says_the_model_has_no_price() {
        let mut f = facts();
        f.failed_reason = Some(BUDGET_UNPRICED.into());
        f.result = None;
        f.model = Some("claude-opus-9".into());
        let c = failed(&f);
        let wiki = c.to_wiki();
        assert!(
            wiki.starts_with("recac could not finish this ticket: its budget has a cost, but its model has no price in the operator's agent.prices.\n\nThe task's budget has a cost ({{spec.budget.cost}}), but its model {{claude-opus-9}} has no price in the operator's {{agent.prices}}, so the cost cannot be counted. Add the model's price there, or give the budget in tokens."),
            "{wiki}"
        );
        assert!(
            adf_paragraph(&c.to_adf(), 1).starts_with(
                "The task's budget has a cost (spec.budget.cost), but its model claude-opus-9 has no price in the operator's agent.prices"
            )
        );
    }

    #[test]
    fn other_failures_say_nothing_of_a_cut() {
        let mut f = facts();
        f.failed_reason = Some("RetriesExhausted".into());
        assert_eq!(cause(&f), None);
        assert!(blocks(&f).is_empty());
        // The last attempt was cut short after it pushed: the agent's cause is told.
        f.partial = true;
        f.result = cut(DEADLINE_EXCEEDED, CutShort::Budget, Some("c")).result;
        assert_eq!(cause(&f), Some(Stop::Budget));
        let mut log = cut(DEADLINE_EXCEEDED, CutShort::Deadline, Some("c0ffee1"));
        log.log = Log::Read("line one\n".into());
        let wiki = failed(&log).to_wiki();
        assert!(
            wiki.find("To continue").unwrap_or(usize::MAX) < wiki.find("line one").unwrap_or(0),
            "{wiki}"
        );
    }

    #[test]
    fn a_retry_after_a_deadline_cut_continues_from_the_branch() {
        let mut f = cut(DEADLINE_EXCEEDED, CutShort::Deadline, Some("c0ffee1"));
        f.message = Some("attempt 1 failed (DeadlineExceeded: cut short); attempt 2 in 60s".into());
        assert_eq!(
            retrying_words(1, &f).as_deref(),
            Some("attempt 1 was cut short by its deadline; attempt 2 continues from the branch")
        );
        f.partial = false;
        assert_eq!(retrying_words(1, &f), None);
    }
}
