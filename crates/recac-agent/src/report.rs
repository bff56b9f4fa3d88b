//! The result: outcome to exit code, the termination message under Kubernetes' limit, writing.

use std::path::Path;

use recac_api::agent_contract::{AgentResult, Outcome, TERMINATION_MESSAGE_LIMIT, env, exit_code};

use crate::environment::FsError;

/// The process exit code for an outcome: `0` when the work is done and pushed, `3` when
/// another attempt would fail the same way, `1` when another attempt may succeed.
///
/// `TestsFailed` is retryable: the next attempt continues the pushed branch and can fix the
/// tests. `NoChanges` is not: the engine finished without changing anything.
pub fn exit_code_for(outcome: &Outcome) -> i32 {
    match outcome {
        Outcome::Succeeded => exit_code::SUCCESS,
        Outcome::TestsFailed | Outcome::Failed => exit_code::RETRYABLE,
        Outcome::NoChanges | Outcome::GaveUp => exit_code::GAVE_UP,
    }
}

/// The result as JSON of at most `limit` bytes: the summary is shortened first (on a character
/// boundary, marked with `…`), then dropped, then the pull request URL and commit. The output
/// is always valid JSON.
pub fn to_json_within(result: &AgentResult, limit: usize) -> String {
    let encode = |r: &AgentResult| serde_json::to_string(r).unwrap_or_else(|_| "{}".to_string());
    let full = encode(result);
    if full.len() <= limit {
        return full;
    }
    let mut trimmed = result.clone();
    if let Some(summary) = &result.summary {
        // Binary search on the number of characters kept.
        let chars: Vec<char> = summary.chars().collect();
        let (mut lo, mut hi) = (0usize, chars.len());
        let with = |n: usize| {
            let mut r = result.clone();
            let mut s: String = chars[..n].iter().collect();
            s.push('…');
            r.summary = Some(s);
            r
        };
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if encode(&with(mid)).len() <= limit {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        let candidate = with(lo);
        if encode(&candidate).len() <= limit {
            return encode(&candidate);
        }
        trimmed.summary = None;
    }
    for step in 0..3 {
        let json = encode(&trimmed);
        if json.len() <= limit {
            return json;
        }
        match step {
            0 => trimmed.pull_request_url = None,
            1 => trimmed.commit = None,
            _ => trimmed.branch = None,
        }
    }
    let json = encode(&trimmed);
    if json.len() <= limit {
        json
    } else {
        encode(&AgentResult {
            outcome: result.outcome.clone(),
            branch: None,
            commit: None,
            pull_request_url: None,
            tests_passed: None,
            summary: None,
            token_usage: None,
        })
    }
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
    use recac_api::agent_contract::TokenUsage;

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
        }
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code_for(&Outcome::Succeeded), 0);
        assert_eq!(exit_code_for(&Outcome::Failed), 1);
        assert_eq!(exit_code_for(&Outcome::TestsFailed), 1);
        assert_eq!(exit_code_for(&Outcome::GaveUp), 3);
        assert_eq!(exit_code_for(&Outcome::NoChanges), 3);
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
    }
}
