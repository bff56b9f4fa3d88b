//! What an external agent CLI reports it spent, read from its output (pure).
//!
//! - Claude Code (`claude -p --output-format json`, or the last line of `stream-json`) ends
//!   with a result object: `{"type": "result", "result": "...", "total_cost_usd": 0.12,
//!   "usage": {"input_tokens", "output_tokens", "cache_creation_input_tokens",
//!   "cache_read_input_tokens"}, "modelUsage": {"<model>": {"inputTokens", "outputTokens",
//!   "cacheReadInputTokens", "cacheCreationInputTokens", "costUSD"}}}`. Its input tokens are
//!   the uncached ones: cache reads and writes are added to them here.
//! - Codex (`codex exec --json`) prints JSON lines, one `{"type": "turn.completed", "usage":
//!   {"input_tokens", "cached_input_tokens", "output_tokens"}}` per turn; its cached input
//!   tokens are part of its input tokens.
//!
//! Output that holds neither reports nothing (`None`), which is not zero.

use recac_api::agent_contract::{ModelUsage, TokenUsage};
use serde_json::{Map, Value};

use crate::budget;

/// The currency Claude Code reports its cost in.
const USD: &str = "USD";

/// What `stdout` of an agent CLI reports it spent, per model; `fallback_model` names the model
/// when the output does not.
pub fn reported(stdout: &str, fallback_model: &str) -> Option<Vec<ModelUsage>> {
    let objects = json_objects(stdout);
    if let Some(result) = objects.iter().rev().find(|o| is_claude_result(o)) {
        return claude(result, fallback_model);
    }
    codex(&objects, fallback_model)
}

/// The final text of a Claude Code result object in `stdout`, if there is one.
pub fn result_text(stdout: &str) -> Option<String> {
    json_objects(stdout)
        .iter()
        .rev()
        .find(|o| is_claude_result(o))
        .and_then(|o| o.get("result"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// Token totals over `models`.
pub fn totals(models: &[ModelUsage]) -> TokenUsage {
    models
        .iter()
        .fold(TokenUsage::default(), |t, m| TokenUsage {
            input_tokens: t.input_tokens.saturating_add(m.input_tokens),
            output_tokens: t.output_tokens.saturating_add(m.output_tokens),
        })
}

/// The JSON objects in `stdout`: the whole of it when it is one, else each line that is one.
fn json_objects(stdout: &str) -> Vec<Map<String, Value>> {
    if let Ok(Value::Object(o)) = serde_json::from_str::<Value>(stdout.trim()) {
        return vec![o];
    }
    stdout
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| match serde_json::from_str::<Value>(l) {
            Ok(Value::Object(o)) => Some(o),
            _ => None,
        })
        .collect()
}

fn is_claude_result(o: &Map<String, Value>) -> bool {
    o.get("type").and_then(Value::as_str) == Some("result")
        && (o.contains_key("usage")
            || o.contains_key("modelUsage")
            || o.contains_key("total_cost_usd"))
}

fn count(v: &Value, keys: &[&str]) -> u64 {
    keys.iter()
        .filter_map(|k| v.get(*k).and_then(Value::as_u64))
        .fold(0u64, u64::saturating_add)
}

/// A cost the CLI reported (a JSON number of US dollars) as a decimal string.
fn dollars(v: Option<&Value>) -> Option<String> {
    let Value::Number(n) = v? else {
        return None;
    };
    budget::parse_json_number(&n.to_string()).map(budget::format_micros)
}

fn claude(result: &Map<String, Value>, fallback_model: &str) -> Option<Vec<ModelUsage>> {
    if let Some(Value::Object(models)) = result.get("modelUsage")
        && !models.is_empty()
    {
        return Some(
            models
                .iter()
                .map(|(model, u)| {
                    let cost = dollars(u.get("costUSD"));
                    ModelUsage {
                        provider: None,
                        model: model.clone(),
                        input_tokens: count(
                            u,
                            &[
                                "inputTokens",
                                "cacheReadInputTokens",
                                "cacheCreationInputTokens",
                            ],
                        ),
                        output_tokens: count(u, &["outputTokens"]),
                        currency: cost.as_ref().map(|_| USD.to_string()),
                        cost,
                    }
                })
                .collect(),
        );
    }
    let usage = result.get("usage").filter(|u| u.is_object());
    let cost = dollars(result.get("total_cost_usd"));
    if usage.is_none() && cost.is_none() {
        return None;
    }
    let tokens = |keys: &[&str]| usage.map_or(0, |u| count(u, keys));
    Some(vec![ModelUsage {
        provider: None,
        model: fallback_model.to_string(),
        input_tokens: tokens(&[
            "input_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
        ]),
        output_tokens: tokens(&["output_tokens"]),
        currency: cost.as_ref().map(|_| USD.to_string()),
        cost,
    }])
}

fn codex(objects: &[Map<String, Value>], fallback_model: &str) -> Option<Vec<ModelUsage>> {
    let turns: Vec<&Value> = objects
        .iter()
        .filter(|o| o.get("type").and_then(Value::as_str) == Some("turn.completed"))
        .filter_map(|o| o.get("usage").filter(|u| u.is_object()))
        .collect();
    if turns.is_empty() {
        return None;
    }
    Some(vec![ModelUsage {
        provider: None,
        model: fallback_model.to_string(),
        input_tokens: turns
            .iter()
            .map(|u| count(u, &["input_tokens"]))
            .fold(0, u64::saturating_add),
        output_tokens: turns
            .iter()
            .map(|u| count(u, &["output_tokens"]))
            .fold(0, u64::saturating_add),
        cost: None,
        currency: None,
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLAUDE: &str = r#"{"type":"result","subtype":"success","is_error":false,"duration_ms":1998,"num_turns":4,"result":"Set value to 2","session_id":"s","total_cost_usd":0.0079825,"usage":{"input_tokens":3,"cache_creation_input_tokens":100,"cache_read_input_tokens":15635,"output_tokens":6}}"#;

    #[test]
    fn claude_code_json_is_read() {
        let models = reported(CLAUDE, "claude").unwrap();
        assert_eq!(
            models,
            vec![ModelUsage {
                provider: None,
                model: "claude".into(),
                input_tokens: 15_738,
                output_tokens: 6,
                cost: Some("0.007983".into()),
                currency: Some("USD".into()),
            }]
        );
        assert_eq!(result_text(CLAUDE).as_deref(), Some("Set value to 2"));
        // Pretty-printed, or after other lines (stream-json's last line).
        let pretty =
            serde_json::to_string_pretty(&serde_json::from_str::<Value>(CLAUDE).unwrap()).unwrap();
        assert_eq!(reported(&pretty, "claude"), Some(models.clone()));
        let stream = format!("{{\"type\":\"system\"}}\nsome text\n{CLAUDE}\n");
        assert_eq!(reported(&stream, "claude"), Some(models));
    }

    #[test]
    fn claude_code_model_usage_is_per_model() {
        let out = r#"{"type":"result","result":"ok","total_cost_usd":0.5,
            "usage":{"input_tokens":1,"output_tokens":1},
            "modelUsage":{
              "claude-sonnet-4-5":{"inputTokens":10,"outputTokens":20,"cacheReadInputTokens":5,"cacheCreationInputTokens":1,"costUSD":0.45},
              "claude-haiku-4-5":{"inputTokens":7,"outputTokens":3,"costUSD":0.05}}}"#;
        let mut models = reported(out, "claude").unwrap();
        models.sort_by(|a, b| a.model.cmp(&b.model));
        assert_eq!(models.len(), 2);
        assert_eq!(
            (
                models[1].model.as_str(),
                models[1].input_tokens,
                models[1].output_tokens
            ),
            ("claude-sonnet-4-5", 16, 20)
        );
        assert_eq!(models[1].cost.as_deref(), Some("0.45"));
        assert_eq!(models[0].cost.as_deref(), Some("0.05"));
        assert_eq!(
            totals(&models),
            TokenUsage {
                input_tokens: 23,
                output_tokens: 23
            }
        );
    }

    #[test]
    fn codex_turns_are_summed() {
        let out = "{\"type\":\"thread.started\",\"thread_id\":\"t\"}\n\
            {\"type\":\"turn.started\"}\n\
            {\"type\":\"item.completed\",\"item\":{\"id\":\"i\",\"type\":\"agent_message\",\"text\":\"done\"}}\n\
            {\"type\":\"turn.completed\",\"usage\":{\"input_tokens\":26549,\"cached_input_tokens\":22272,\"output_tokens\":1590}}\n\
            {\"type\":\"turn.completed\",\"usage\":{\"input_tokens\":1000,\"cached_input_tokens\":0,\"output_tokens\":10}}\n";
        let models = reported(out, "gpt-5-codex").unwrap();
        assert_eq!(
            models,
            vec![ModelUsage {
                provider: None,
                model: "gpt-5-codex".into(),
                input_tokens: 27_549,
                output_tokens: 1_600,
                cost: None,
                currency: None,
            }]
        );
        assert_eq!(result_text(out), None);
    }

    #[test]
    fn output_without_usage_reports_nothing() {
        for out in [
            "",
            "fixed the value\n",
            "{\"type\":\"result\"}",
            "{\"usage\": 5}",
            "[1, 2]",
            "{\"type\":\"turn.completed\"}",
        ] {
            assert_eq!(reported(out, "x"), None, "{out}");
        }
    }
}
