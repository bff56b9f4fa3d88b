//! A minimal LLM client for tool use over HTTP, speaking both the OpenAI-compatible Chat
//! Completions API and the Anthropic Messages API. Transient failures (429 honouring
//! Retry-After, 5xx, network errors, malformed replies) are retried with backoff; a refused key
//! fails at once.

use std::time::Duration;

use recac_api::agent_contract::TokenUsage;
use serde_json::{Value, json};

use super::tools::ToolSpec;
use crate::redact::Redactor;
use crate::settings::{LlmSettings, Provider, vars};

/// Longest wait honoured from a Retry-After header.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);
/// Longest backoff between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A tool call the model asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments; a JSON string holding the raw text when the model sent invalid JSON.
    pub arguments: Value,
}

/// One turn of the conversation, independent of the API shape.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    User(String),
    Assistant {
        text: Option<String>,
        calls: Vec<ToolCall>,
    },
    /// Results of the previous turn's tool calls: (call id, output).
    ToolResults(Vec<(String, String)>),
}

/// The model's reply.
#[derive(Clone, Debug, Default)]
pub struct Reply {
    pub text: Option<String>,
    pub calls: Vec<ToolCall>,
    pub usage: TokenUsage,
}

/// Why a model call failed.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error(
        "the {provider} API refused the credentials in {var} (HTTP {status}); check the key: {message}"
    )]
    Auth {
        provider: &'static str,
        var: &'static str,
        status: u16,
        message: String,
    },
    #[error("the {provider} API rejected the request (HTTP {status}): {message}")]
    Rejected {
        provider: &'static str,
        status: u16,
        message: String,
    },
    #[error("the {provider} API kept failing after {attempts} attempts; last error: {last}")]
    Exhausted {
        provider: &'static str,
        attempts: u32,
        last: String,
    },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

impl LlmError {
    /// Whether another attempt would fail the same way.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::Auth { .. } | Self::Rejected { .. } | Self::Client(_)
        )
    }
}

enum Attempt {
    Done(Reply),
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    Fail(LlmError),
}

/// Talks to one model.
pub struct LlmClient {
    http: reqwest::Client,
    settings: LlmSettings,
    redactor: Redactor,
}

impl LlmClient {
    pub fn new(settings: LlmSettings, redactor: Redactor) -> Result<Self, LlmError> {
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(600))
            .connect_timeout(Duration::from_secs(30));
        if let Some(path) = &settings.ca_bundle {
            let pem = std::fs::read(path).map_err(|e| {
                LlmError::Client(format!("cannot read the CA bundle {}: {e}", path.display()))
            })?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                LlmError::Client(format!("the CA bundle {} is not PEM: {e}", path.display()))
            })?;
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let http = builder
            .build()
            .map_err(|e| LlmError::Client(e.to_string()))?;
        Ok(Self {
            http,
            settings,
            redactor,
        })
    }

    fn provider_name(&self) -> &'static str {
        match self.settings.provider {
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
        }
    }

    /// The most tokens one reply may have (`RECAC_MAX_OUTPUT_TOKENS`).
    pub fn max_output_tokens(&self) -> u32 {
        self.settings.max_output_tokens
    }

    /// One model turn, retried on transient failures.
    pub async fn complete(
        &self,
        system: &str,
        messages: &[Message],
        tools: &[ToolSpec],
    ) -> Result<Reply, LlmError> {
        self.complete_within(system, messages, tools, self.settings.max_output_tokens)
            .await
    }

    /// [`LlmClient::complete`] with the reply's tokens capped at `max_output_tokens` (never
    /// above `RECAC_MAX_OUTPUT_TOKENS`).
    pub async fn complete_within(
        &self,
        system: &str,
        messages: &[Message],
        tools: &[ToolSpec],
        max_output_tokens: u32,
    ) -> Result<Reply, LlmError> {
        let capped;
        let settings = if max_output_tokens < self.settings.max_output_tokens {
            capped = LlmSettings {
                max_output_tokens: max_output_tokens.max(1),
                ..self.settings.clone()
            };
            &capped
        } else {
            &self.settings
        };
        let body = match settings.provider {
            Provider::OpenAi => openai_request(settings, system, messages, tools),
            Provider::Anthropic => anthropic_request(settings, system, messages, tools),
        };
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let (reason, after) = match self.attempt(&body).await {
                Attempt::Done(reply) => return Ok(reply),
                Attempt::Fail(err) => return Err(err),
                Attempt::Retry { reason, after } => (reason, after),
            };
            if attempt > self.settings.max_retries {
                return Err(LlmError::Exhausted {
                    provider: self.provider_name(),
                    attempts: attempt,
                    last: reason,
                });
            }
            let backoff = self
                .settings
                .retry_base
                .saturating_mul(2u32.saturating_pow(attempt - 1))
                .min(MAX_BACKOFF);
            let wait = after.map_or(backoff, |a| a.min(MAX_RETRY_AFTER));
            tracing::warn!(attempt, wait_ms = wait.as_millis() as u64, %reason, "model call failed; retrying");
            tokio::time::sleep(wait).await;
        }
    }

    async fn attempt(&self, body: &Value) -> Attempt {
        let s = &self.settings;
        let request = match s.provider {
            Provider::OpenAi => {
                let mut r = self.http.post(format!("{}/chat/completions", s.base_url));
                if let Some(key) = &s.api_key {
                    r = r.bearer_auth(key);
                }
                r
            }
            Provider::Anthropic => self
                .http
                .post(format!("{}/v1/messages", s.base_url))
                .header("x-api-key", s.api_key.clone().unwrap_or_default())
                .header("anthropic-version", "2023-06-01"),
        };
        let response = match request.json(body).send().await {
            Ok(r) => r,
            Err(e) => {
                return Attempt::Retry {
                    reason: self.redactor.redact(&format!("request failed: {e}")),
                    after: None,
                };
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
            .map(Duration::from_secs_f64);
        let text = response.text().await.unwrap_or_default();
        let message = self
            .redactor
            .redact(&crate::process::cap(&error_message(&text), 1000));
        match status {
            200..=299 => {
                let parsed =
                    serde_json::from_str::<Value>(&text)
                        .ok()
                        .and_then(|v| match s.provider {
                            Provider::OpenAi => parse_openai(&v),
                            Provider::Anthropic => parse_anthropic(&v),
                        });
                match parsed {
                    Some(reply) => Attempt::Done(reply),
                    None => Attempt::Retry {
                        reason: format!(
                            "malformed reply: {}",
                            self.redactor.redact(&crate::process::cap(&text, 300))
                        ),
                        after: None,
                    },
                }
            }
            401 | 403 => Attempt::Fail(LlmError::Auth {
                provider: self.provider_name(),
                var: match s.provider {
                    Provider::OpenAi => vars::OPENAI_API_KEY,
                    Provider::Anthropic => vars::ANTHROPIC_API_KEY,
                },
                status,
                message,
            }),
            408 | 409 | 429 | 500..=599 => Attempt::Retry {
                reason: format!("HTTP {status}: {message}"),
                after: retry_after,
            },
            _ => Attempt::Fail(LlmError::Rejected {
                provider: self.provider_name(),
                status,
                message,
            }),
        }
    }
}

/// The `error.message` of an API error body, or the body itself.
fn error_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| body.trim().to_string())
}

/// The Chat Completions request body.
pub fn openai_request(
    s: &LlmSettings,
    system: &str,
    messages: &[Message],
    tools: &[ToolSpec],
) -> Value {
    let mut out = vec![json!({"role": "system", "content": system})];
    for m in messages {
        match m {
            Message::User(text) => out.push(json!({"role": "user", "content": text})),
            Message::Assistant { text, calls } => {
                let mut msg = json!({"role": "assistant", "content": text});
                if !calls.is_empty() {
                    msg["tool_calls"] = calls
                        .iter()
                        .map(|c| {
                            let args = match &c.arguments {
                                Value::String(raw) => raw.clone(),
                                other => other.to_string(),
                            };
                            json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": args}})
                        })
                        .collect();
                }
                out.push(msg);
            }
            Message::ToolResults(results) => {
                for (id, content) in results {
                    out.push(json!({"role": "tool", "tool_call_id": id, "content": content}));
                }
            }
        }
    }
    let tools: Vec<Value> = tools
        .iter()
        .map(|t| json!({"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}))
        .collect();
    let mut body = json!({"model": s.model, "messages": out, "tools": tools});
    // OpenAI's own API wants max_completion_tokens; compatible servers know max_tokens.
    let key = if s.base_url.contains("api.openai.com") {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    body[key] = json!(s.max_output_tokens);
    body
}

/// The Messages request body.
pub fn anthropic_request(
    s: &LlmSettings,
    system: &str,
    messages: &[Message],
    tools: &[ToolSpec],
) -> Value {
    let mut out = Vec::new();
    for m in messages {
        match m {
            Message::User(text) => {
                out.push(json!({"role": "user", "content": [{"type": "text", "text": text}]}))
            }
            Message::Assistant { text, calls } => {
                let mut content = Vec::new();
                if let Some(t) = text.as_deref().filter(|t| !t.trim().is_empty()) {
                    content.push(json!({"type": "text", "text": t}));
                }
                for c in calls {
                    let input = if c.arguments.is_object() {
                        c.arguments.clone()
                    } else {
                        json!({})
                    };
                    content.push(
                        json!({"type": "tool_use", "id": c.id, "name": c.name, "input": input}),
                    );
                }
                if content.is_empty() {
                    content.push(json!({"type": "text", "text": "(no reply)"}));
                }
                out.push(json!({"role": "assistant", "content": content}));
            }
            Message::ToolResults(results) => {
                let content: Vec<Value> = results
                    .iter()
                    .map(|(id, c)| json!({"type": "tool_result", "tool_use_id": id, "content": c}))
                    .collect();
                out.push(json!({"role": "user", "content": content}));
            }
        }
    }
    let tools: Vec<Value> = tools
        .iter()
        .map(
            |t| json!({"name": t.name, "description": t.description, "input_schema": t.parameters}),
        )
        .collect();
    json!({"model": s.model, "max_tokens": s.max_output_tokens, "system": system, "messages": out, "tools": tools})
}

/// A Chat Completions reply, or `None` when it is malformed.
pub fn parse_openai(v: &Value) -> Option<Reply> {
    let msg = v.pointer("/choices/0/message")?;
    let text = msg
        .get("content")
        .and_then(Value::as_str)
        .map(str::to_string);
    let mut calls = Vec::new();
    if let Some(list) = msg.get("tool_calls").filter(|t| !t.is_null()) {
        for (i, c) in list.as_array()?.iter().enumerate() {
            let name = c.pointer("/function/name")?.as_str()?.to_string();
            let raw = c
                .pointer("/function/arguments")
                .cloned()
                .unwrap_or(json!("{}"));
            let arguments = match raw {
                Value::String(s) if s.trim().is_empty() => json!({}),
                Value::String(s) => serde_json::from_str(&s).unwrap_or(Value::String(s)),
                other => other,
            };
            let id = c
                .get("id")
                .and_then(Value::as_str)
                .map_or_else(|| format!("call_{i}"), str::to_string);
            calls.push(ToolCall {
                id,
                name,
                arguments,
            });
        }
    }
    let usage = TokenUsage {
        input_tokens: v
            .pointer("/usage/prompt_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        output_tokens: v
            .pointer("/usage/completion_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
    };
    Some(Reply { text, calls, usage })
}

/// A Messages reply, or `None` when it is malformed.
pub fn parse_anthropic(v: &Value) -> Option<Reply> {
    let blocks = v.get("content")?.as_array()?;
    let mut text: Option<String> = None;
    let mut calls = Vec::new();
    for b in blocks {
        match b.get("type")?.as_str()? {
            "text" => {
                let t = b.get("text")?.as_str()?;
                text = Some(match text {
                    Some(prev) => format!("{prev}\n{t}"),
                    None => t.to_string(),
                });
            }
            "tool_use" => calls.push(ToolCall {
                id: b.get("id")?.as_str()?.to_string(),
                name: b.get("name")?.as_str()?.to_string(),
                arguments: b.get("input").cloned().unwrap_or(json!({})),
            }),
            _ => {}
        }
    }
    let usage = TokenUsage {
        input_tokens: v
            .pointer("/usage/input_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        output_tokens: v
            .pointer("/usage/output_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
    };
    Some(Reply { text, calls, usage })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(provider: Provider) -> LlmSettings {
        LlmSettings {
            provider,
            model: "m".into(),
            api_key: Some("k".into()),
            base_url: "http://127.0.0.1:1".into(),
            max_output_tokens: 100,
            max_retries: 0,
            retry_base: Duration::from_millis(1),
            ca_bundle: None,
        }
    }

    fn conversation() -> Vec<Message> {
        vec![
            Message::User("do".into()),
            Message::Assistant {
                text: None,
                calls: vec![ToolCall {
                    id: "c1".into(),
                    name: "read_file".into(),
                    arguments: json!({"path": "a"}),
                }],
            },
            Message::ToolResults(vec![("c1".into(), "content".into())]),
        ]
    }

    #[test]
    fn openai_shape() {
        let body = openai_request(
            &settings(Provider::OpenAi),
            "sys",
            &conversation(),
            &super::super::tools::specs(),
        );
        assert_eq!(body["messages"][0]["role"], "system");
        assert_eq!(
            body["messages"][2]["tool_calls"][0]["function"]["arguments"],
            "{\"path\":\"a\"}"
        );
        assert_eq!(body["messages"][3]["role"], "tool");
        assert_eq!(body["max_tokens"], 100);
        assert_eq!(body["tools"][0]["type"], "function");
        let reply = parse_openai(&json!({
            "choices": [{"message": {"content": null, "tool_calls": [
                {"id": "x", "type": "function", "function": {"name": "finish", "arguments": "{\"summary\":\"s\"}"}},
                {"id": "y", "type": "function", "function": {"name": "finish", "arguments": "{oops"}}
            ]}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4}
        }))
        .unwrap();
        assert_eq!(reply.calls[0].arguments, json!({"summary": "s"}));
        assert_eq!(reply.calls[1].arguments, json!("{oops"));
        assert_eq!(reply.usage.output_tokens, 4);
        assert!(parse_openai(&json!({"choices": []})).is_none());
    }

    #[test]
    fn anthropic_shape() {
        let body = anthropic_request(
            &settings(Provider::Anthropic),
            "sys",
            &conversation(),
            &super::super::tools::specs(),
        );
        assert_eq!(body["system"], "sys");
        assert_eq!(body["messages"][1]["content"][0]["type"], "tool_use");
        assert_eq!(body["messages"][2]["content"][0]["tool_use_id"], "c1");
        assert!(body["tools"][0]["input_schema"].is_object());
        let reply = parse_anthropic(&json!({
            "content": [{"type": "text", "text": "hi"}, {"type": "tool_use", "id": "t", "name": "list_files", "input": {}}],
            "usage": {"input_tokens": 5, "output_tokens": 6}
        }))
        .unwrap();
        assert_eq!(reply.text.as_deref(), Some("hi"));
        assert_eq!(reply.calls[0].name, "list_files");
        assert!(parse_anthropic(&json!({"type": "error"})).is_none());
    }
}
