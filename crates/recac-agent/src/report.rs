//! The result: outcome to exit code, the termination message under Kubernetes' limit, writing.

use std::path::Path;

use recac_api::agent_contract::{
    AgentResult, CutShort, Outcome, TERMINATION_MESSAGE_LIMIT, env, exit_code,
};

use crate::environment::FsError;

/// The process exit code for a result: `0` when the work is done and pushed, `3` when
/// another attempt would fail the same way, `1` when another attempt may succeed.
///
/// `TestsFailed` is retryable: the next attempt continues the pushed branch and can fix the
/// tests. `NoChanges` is not: the engine finished without changing anything. `Partial` depends
/// on what cut the work short: the deadline is retryable (the retry continues the pushed
/// branch), the budget is not (a retry would have no budget).
pub fn exit_code_for(result: &AgentResult) -> i32 {
    match result.outcome {
        Outcome::Succeeded | Outcome::Planned => exit_code::SUCCESS,
        Outcome::TestsFailed | Outcome::Failed => exit_code::RETRYABLE,
        Outcome::Partial => match result.partial.as_ref().map(|p| p.cause) {
            Some(CutShort::Budget) => exit_code::GAVE_UP,
            Some(CutShort::Deadline) | None => exit_code::RETRYABLE,
        },
        Outcome::NoChanges | Outcome::GaveUp => exit_code::GAVE_UP,
    }
}

/// The result as JSON of at most `limit` bytes: the summary is shortened first (on a character
/// boundary, marked with `…`), then dropped; then a planning run's plan is shortened the same
/// way, then dropped; then the per-model usage, then the partial result's `done` and `left`
/// texts (its cause stays); then the egress proxy's refusals; then the pull request URL, the commit and the branch are dropped.
/// The output is always valid JSON.
pub fn to_json_within(result: &AgentResult, limit: usize) -> String {
    let full = encode(result);
    if full.len() <= limit {
        return full;
    }
    let set_summary = |r: &mut AgentResult, s: String| r.summary = Some(s);
    let set_plan = |r: &mut AgentResult, s: String| r.plan = Some(s);
    if let Some(summary) = &result.summary
        && let Some(json) = shortened(result, summary, set_summary, limit)
    {
        return json;
    }
    let mut trimmed = result.clone();
    trimmed.summary = None;
    if let Some(plan) = &result.plan {
        let json = encode(&trimmed);
        if json.len() <= limit {
            return json;
        }
        if let Some(json) = shortened(&trimmed, plan, set_plan, limit) {
            return json;
        }
        trimmed.plan = None;
    }
    for step in 0..6 {
        let json = encode(&trimmed);
        if json.len() <= limit {
            return json;
        }
        match step {
            0 => trimmed.usage = None,
            1 => {
                if let Some(p) = &mut trimmed.partial {
                    p.done = None;
                    p.left = None;
                }
            }
            2 => trimmed.egress_blocked.clear(),
            3 => trimmed.pull_request_url = None,
            4 => trimmed.commit = None,
            _ => trimmed.branch = None,
        }
    }
    let json = encode(&trimmed);
    if json.len() <= limit {
        json
    } else {
        // The outcome and what cut it short: what the exit code and a retry depend on.
        let bare = AgentResult {
            outcome: result.outcome.clone(),
            branch: None,
            commit: None,
            pull_request_url: None,
            tests_passed: None,
            summary: None,
            token_usage: None,
            plan: None,
            partial: trimmed.partial.clone(),
            usage: None,
            egress_blocked: Vec::new(),
        };
        let json = encode(&bare);
        if json.len() <= limit {
            json
        } else {
            encode(&AgentResult {
                partial: None,
                ..bare
            })
        }
    }
}

fn encode(r: &AgentResult) -> String {
    serde_json::to_string(r).unwrap_or_else(|_| "{}".to_string())
}

/// The JSON of `base` with `text`, shortened to as many characters as fit `limit` and marked
/// with `…`, put in place by `set`; `None` when not even `…` fits.
fn shortened(
    base: &AgentResult,
    text: &str,
    set: impl Fn(&mut AgentResult, String),
    limit: usize,
) -> Option<String> {
    let chars: Vec<char> = text.chars().collect();
    let with = |n: usize| {
        let mut r = base.clone();
        let mut s: String = chars[..n].iter().collect();
        s.push('…');
        set(&mut r, s);
        encode(&r)
    };
    // Binary search on the number of characters kept.
    let (mut lo, mut hi) = (0usize, chars.len());
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if with(mid).len() <= limit {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let json = with(lo);
    (json.len() <= limit).then_some(json)
}

/// The termination message: the result within [`TERMINATION_MESSAGE_LIMIT`].
pub fn termination_message(result: &AgentResult) -> String {
    to_json_within(result, TERMINATION_MESSAGE_LIMIT)
}

/// Writes the termination message to `path` (`RECAC_RESULT_PATH`). The error names the path
/// and, when the environment refuses it (a read-only filesystem, a permission), how to fix it.
pub fn write_result(path: &Path, result: &AgentResult) -> Result<(), FsError> {
    std::fs::write(path, termination_message(result))
        .map_err(|e| FsError::new("write the result to", path, Some(env::RESULT_PATH), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use recac_api::agent_contract::{ModelUsage, PartialWork, TokenUsage};

    fn result(summary: &str) -> AgentResult {
        AgentResult {
            outcome: Outcome::Succeeded,
            branch: Some("recac/x-1".into()),
            commit: Some("a".repeat(40)),
            pull_request_url: Some("https://github.com/o/r/pull/1".into()),
            tests_passed: Some(true),
            summary: Some(summary.into()),
            token_usage: Some(TokenUsage {
                input_tokens: 10,
                output_tokens: 5,
            }),
            plan: None,
            partial: None,
            usage: None,
            egress_blocked: Vec::new(),
        }
    }

    fn planned(summary: &str, plan: &str) -> AgentResult {
        AgentResult {
            outcome: Outcome::Planned,
            branch: Some("recac/x-1".into()),
            commit: None,
            pull_request_url: None,
            tests_passed: None,
            summary: Some(summary.into()),
            token_usage: Some(TokenUsage {
                input_tokens: 10,
                output_tokens: 5,
            }),
            plan: Some(plan.into()),
            partial: None,
            usage: None,
            egress_blocked: Vec::new(),
        }
    }

    fn partial(cause: CutShort, text: &str) -> AgentResult {
        AgentResult {
            outcome: Outcome::Partial,
            tests_passed: None,
            pull_request_url: None,
            partial: Some(PartialWork {
                cause,
                done: Some(format!("changed 3 files: {text} (commit abc1234)")),
                left: Some(format!("the rest of the task: {text}")),
            }),
            usage: Some(vec![ModelUsage {
                provider: Some("openai".into()),
                model: format!("model-{text}"),
                input_tokens: 200,
                output_tokens: 20,
                cost: Some("0.0026".into()),
                currency: Some("EUR".into()),
            }]),
            ..result("stopped: the deadline is near")
        }
    }

    #[test]
    fn exit_codes() {
        let with = |outcome| AgentResult {
            outcome,
            ..result("x")
        };
        assert_eq!(exit_code_for(&with(Outcome::Succeeded)), 0);
        assert_eq!(exit_code_for(&with(Outcome::Planned)), 0);
        assert_eq!(exit_code_for(&with(Outcome::Failed)), 1);
        assert_eq!(exit_code_for(&with(Outcome::TestsFailed)), 1);
        assert_eq!(exit_code_for(&with(Outcome::GaveUp)), 3);
        assert_eq!(exit_code_for(&with(Outcome::NoChanges)), 3);
        // A partial result: the deadline is retried, the budget is not.
        assert_eq!(exit_code_for(&partial(CutShort::Deadline, "a")), 1);
        assert_eq!(exit_code_for(&partial(CutShort::Budget, "a")), 3);
        assert_eq!(exit_code_for(&with(Outcome::Partial)), 1);
    }

    #[test]
    fn partial_results_drop_usage_and_texts_before_the_commit() {
        let r = partial(CutShort::Budget, &"x".repeat(600));
        let full = serde_json::to_string(&r).unwrap();
        let back = |limit| -> AgentResult {
            let json = to_json_within(&r, limit);
            assert!(json.len() <= limit, "{limit}: {}", json.len());
            serde_json::from_str(&json).unwrap()
        };
        assert_eq!(back(full.len()), r);

        // Without the summary the rest fits: only the summary goes.
        let no_summary = AgentResult {
            summary: None,
            ..r.clone()
        };
        let limit = serde_json::to_string(&no_summary).unwrap().len();
        assert_eq!(back(limit), no_summary);

        // Then the per-model usage.
        let no_usage = AgentResult {
            usage: None,
            ..no_summary.clone()
        };
        let limit = serde_json::to_string(&no_usage).unwrap().len();
        assert_eq!(back(limit), no_usage);

        // Then the texts; the cause, the commit and the branch stay.
        let got = back(limit - 1);
        assert_eq!(
            got.partial,
            Some(PartialWork {
                cause: CutShort::Budget,
                done: None,
                left: None
            })
        );
        assert_eq!(
            (got.commit, got.branch),
            (r.commit.clone(), r.branch.clone())
        );
        assert_eq!(got.token_usage, r.token_usage);

        // With room for nearly nothing, the outcome and the cause stay, so the exit code does.
        let tiny = back(60);
        assert_eq!(tiny.outcome, Outcome::Partial);
        assert_eq!(exit_code_for(&tiny), 3);
        assert_eq!(
            serde_json::from_str::<AgentResult>(&to_json_within(&r, 25))
                .unwrap()
                .outcome,
            Outcome::Partial
        );
    }

    #[test]
    fn small_results_are_untouched() {
        let r = result("fine");
        assert_eq!(termination_message(&r), serde_json::to_string(&r).unwrap());
    }

    #[test]
    fn long_summaries_are_cut_to_fit() {
        for s in ["x".repeat(10_000), "\"\\\u{1}é漢".repeat(2000)] {
            let json = termination_message(&result(&s));
            assert!(json.len() <= TERMINATION_MESSAGE_LIMIT, "{}", json.len());
            let back: AgentResult = serde_json::from_str(&json).unwrap();
            assert!(back.summary.unwrap().ends_with('…'));
            assert_eq!(back.commit.unwrap().len(), 40);
            assert!(json.len() > TERMINATION_MESSAGE_LIMIT - 20);
        }
        let json = to_json_within(&result("abc"), 60);
        assert!(json.len() <= 60, "{json}");
        let back: AgentResult = serde_json::from_str(&json).unwrap();
        assert_eq!(back.outcome, Outcome::Succeeded);
    }

    #[test]
    fn long_plans_are_cut_after_the_summary() {
        use recac_api::agent_contract::MAX_PLAN_BYTES;
        // A plan within MAX_PLAN_BYTES whose JSON is far longer (escapes), and a long summary.
        let plan = "\u{1}\"\n".repeat(MAX_PLAN_BYTES / 3);
        assert!(plan.len() <= MAX_PLAN_BYTES);
        let r = planned(&"s".repeat(2000), &plan);
        let json = termination_message(&r);
        assert!(json.len() <= TERMINATION_MESSAGE_LIMIT, "{}", json.len());
        let back: AgentResult = serde_json::from_str(&json).unwrap();
        assert_eq!(back.outcome, Outcome::Planned);
        assert_eq!(back.branch.as_deref(), Some("recac/x-1"));
        // The summary went first; the plan keeps as much as fits.
        assert_eq!(back.summary, None);
        let kept = back.plan.unwrap();
        let kept = kept.strip_suffix('…').expect("marked as cut");
        assert!(
            plan.starts_with(kept) && kept.len() > 1000,
            "{}",
            kept.len()
        );
        assert!(json.len() > TERMINATION_MESSAGE_LIMIT - 20);

        // Too little room for any of the plan: dropped, then the branch.
        let json = to_json_within(&r, 60);
        let back: AgentResult = serde_json::from_str(&json).unwrap();
        assert_eq!((back.outcome, back.plan), (Outcome::Planned, None));

        // Room for the whole plan once the summary is dropped: kept whole.
        let r = planned("wrote a plan", &"p".repeat(100));
        let without_summary = AgentResult {
            summary: None,
            ..r.clone()
        };
        let limit = serde_json::to_string(&without_summary).unwrap().len() + 5;
        let back: AgentResult = serde_json::from_str(&to_json_within(&r, limit)).unwrap();
        assert_eq!((back.summary, back.plan), (None, r.plan.clone()));

        // Room for the whole plan: only the summary is shortened.
        let r = planned(&"s".repeat(4000), "Files to change: a.txt");
        let back: AgentResult = serde_json::from_str(&termination_message(&r)).unwrap();
        assert_eq!(back.plan.as_deref(), Some("Files to change: a.txt"));
        assert!(back.summary.unwrap().ends_with('…'));

        // A plan at MAX_PLAN_BYTES of plain text always fits with its summary.
        let r = planned("wrote a plan", &"é".repeat(MAX_PLAN_BYTES / 2));
        assert_eq!(termination_message(&r), serde_json::to_string(&r).unwrap());
    }

    #[test]
    fn unwritable_result_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, "").unwrap();
        let e = write_result(&file.join("result"), &result("x")).unwrap_err();
        assert!(e.is_environment());
        let text = e.to_string();
        assert!(
            text.contains("cannot write the result to") && text.contains("(RECAC_RESULT_PATH)"),
            "{text}"
        );
        write_result(&dir.path().join("result"), &result("x")).unwrap();
    }

    proptest::proptest! {
        #[test]
        fn always_valid_and_within(summary in ".{0,3000}", limit in 40usize..5000) {
            let json = to_json_within(&result(&summary), limit);
            proptest::prop_assert!(json.len() <= limit);
            let back: AgentResult = serde_json::from_str(&json).unwrap();
            proptest::prop_assert_eq!(back.outcome, Outcome::Succeeded);
        }

        #[test]
        fn partial_results_are_valid_and_within(text in ".{0,1500}", limit in 40usize..5000) {
            let r = partial(CutShort::Deadline, &text);
            let json = to_json_within(&r, limit);
            proptest::prop_assert!(json.len() <= limit);
            let back: AgentResult = serde_json::from_str(&json).unwrap();
            proptest::prop_assert_eq!(back.outcome, Outcome::Partial);
        }

        #[test]
        fn planned_results_are_valid_and_within(
            summary in ".{0,200}",
            plan in ".{0,3000}",
            limit in 40usize..5000,
        ) {
            let json = to_json_within(&planned(&summary, &plan), limit);
            proptest::prop_assert!(json.len() <= limit);
            let back: AgentResult = serde_json::from_str(&json).unwrap();
            proptest::prop_assert_eq!(back.outcome, Outcome::Planned);
            if let Some(kept) = back.plan {
                let kept = kept.strip_suffix('…').unwrap_or(&kept);
                proptest::prop_assert!(plan.starts_with(kept));
            }
        }
    }
}
