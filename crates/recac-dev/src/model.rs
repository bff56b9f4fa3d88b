//! The demo model: a scripted stand-in for an LLM, speaking the OpenAI Chat Completions
//! API, so the agent's real tool-use loop runs without a provider key.
//!
//! It is not a language model. It reads two lines of the ticket (`File:` and `Line:`),
//! looks at the file through the agent's `read_file` tool, writes the line with
//! `write_file` and calls `finish`. A ticket with a `Run:` line has that command run first
//! (`run_command`), whatever it returns, as a model that tries something does. A ticket carrying [`crate::demo::FIRST_ATTEMPT_FAILS`]
//! gets the line without its final punctuation the first time (the file does not exist
//! yet), so the repository's test fails and the task's retry, which finds the file,
//! fixes it. Every summary it writes starts with `[demo model]`.
//!
//! In a planning run (the agent's planning prompt, which opens with [`PLANNING_MARKER`]) it
//! reads the file and calls `finish` with a plan instead, starting with `[demo model] plan:`,
//! that names the file and the line it would write; it writes nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::DevError;
use crate::demo::FIRST_ATTEMPT_FAILS;

/// The model name the demo configuration uses.
pub const MODEL_NAME: &str = "recac-demo-model";

pub use recac_api::agent_contract::PLANNING_MARKER;

/// One reply of the demo model: a tool call.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub name: &'static str,
    pub arguments: Value,
}

fn call(name: &'static str, arguments: Value) -> ToolCall {
    ToolCall { name, arguments }
}

/// What the ticket asks for, read from its `File:` and `Line:` lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub path: String,
    pub line: String,
    pub first_attempt_fails: bool,
    /// A command to run before the work (`Run:`).
    pub run: Option<String>,
}

/// Reads the request from the prompt; `None` when it has no `File:` or `Line:` line.
pub fn parse_request(prompt: &str) -> Option<Request> {
    let value = |prefix: &str| {
        prompt
            .lines()
            .find_map(|line| line.trim().strip_prefix(prefix).map(str::trim))
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    Some(Request {
        path: value("File:")?,
        line: value("Line:")?,
        first_attempt_fails: prompt.contains(FIRST_ATTEMPT_FAILS),
        run: value("Run:"),
    })
}

fn text_of(message: &Value) -> String {
    match message.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The last tool the conversation called, with what the tool answered.
fn last_tool_exchange(messages: &[Value]) -> Option<(String, String)> {
    let answer = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("tool"))?;
    let called = messages
        .iter()
        .rev()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("assistant"))
        .find_map(|m| {
            m.get("tool_calls")?
                .as_array()?
                .last()?
                .pointer("/function/name")?
                .as_str()
                .map(str::to_string)
        })?;
    Some((called, text_of(answer)))
}

/// The content of the conversation's last `write_file` call.
fn last_written(messages: &[Value]) -> Option<String> {
    messages.iter().rev().find_map(|m| {
        let call =
            m.get("tool_calls")?.as_array()?.iter().rev().find(|c| {
                c.pointer("/function/name").and_then(Value::as_str) == Some("write_file")
            })?;
        let arguments: Value =
            serde_json::from_str(call.pointer("/function/arguments")?.as_str()?).ok()?;
        arguments.get("content")?.as_str().map(str::to_string)
    })
}

/// The next step of the conversation `messages` (pure).
pub fn next_step(messages: &[Value]) -> ToolCall {
    let prompt = messages
        .iter()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .map(text_of)
        .unwrap_or_default();
    let Some(request) = parse_request(&prompt) else {
        return call(
            "finish",
            json!({"status": "cannot_do", "summary": "[demo model] the ticket has no `File:` and `Line:` lines; the demo model only writes a line into a file"}),
        );
    };
    if prompt.contains(PLANNING_MARKER) {
        return plan_step(&request, last_tool_exchange(messages));
    }
    match last_tool_exchange(messages) {
        None => match &request.run {
            Some(command) => call("run_command", json!({"command": command})),
            None => call("read_file", json!({"path": request.path})),
        },
        Some((tool, _)) if tool == "run_command" => {
            call("read_file", json!({"path": request.path}))
        }
        Some((tool, answer)) if tool == "read_file" => {
            let missing = answer.starts_with("error:");
            if !missing && answer.trim_end() == request.line {
                return call(
                    "finish",
                    json!({"status": "done", "summary": format!("[demo model] {} already says {:?}", request.path, request.line)}),
                );
            }
            let content = if missing && request.first_attempt_fails {
                request.line.trim_end_matches(['!', '.', '?']).to_string()
            } else {
                request.line.clone()
            };
            call(
                "write_file",
                json!({"path": request.path, "content": format!("{content}\n")}),
            )
        }
        Some((tool, answer)) if tool == "write_file" && !answer.starts_with("error:") => {
            let written = last_written(messages).unwrap_or_default();
            call(
                "finish",
                json!({"status": "done", "summary": format!("[demo model] wrote {:?} to {}", written.trim_end(), request.path)}),
            )
        }
        Some((tool, answer)) => call(
            "finish",
            json!({"status": "cannot_do", "summary": format!("[demo model] {tool} failed: {answer}")}),
        ),
    }
}

/// The next step of a planning run: read the file, then finish with the plan.
fn plan_step(request: &Request, last: Option<(String, String)>) -> ToolCall {
    let Some((_, answer)) = last else {
        return call("read_file", json!({"path": request.path}));
    };
    let now = if answer.starts_with("error:") {
        "does not exist yet: add it".to_string()
    } else if answer.trim_end() == request.line {
        "already holds the line: nothing to change".to_string()
    } else {
        format!("has {} line(s): replace them", answer.lines().count())
    };
    let plan = format!(
        "[demo model] plan: write {line:?} to {path}.\n\
         Files to change: {path} ({now}).\n\
         Approach: write the file with the single line {line:?}.\n\
         Test plan: run the repository's tests (`make test`) and see them pass.",
        line = request.line,
        path = request.path,
    );
    call("finish", json!({"status": "done", "summary": plan}))
}

#[derive(Clone)]
struct Served {
    key: Arc<String>,
    replies: Arc<AtomicU64>,
}

/// The running demo model; dropping it stops serving.
pub struct DemoModel {
    address: SocketAddr,
    replies: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl DemoModel {
    /// Serves on `address`, accepting requests that carry `key` as their bearer token.
    pub async fn start(address: SocketAddr, key: &str) -> Result<Self, DevError> {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| DevError::port("the demo model", address, source))?;
        let address = listener
            .local_addr()
            .map_err(|source| DevError::port("the demo model", address, source))?;
        let replies = Arc::new(AtomicU64::new(0));
        let app = Router::new()
            .route("/v1/chat/completions", post(chat_completions))
            .with_state(Served {
                key: Arc::new(key.to_string()),
                replies: replies.clone(),
            });
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "demo model stopped serving");
            }
        });
        Ok(Self {
            address,
            replies,
            task,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// How many replies it has given.
    pub fn replies(&self) -> u64 {
        self.replies.load(Ordering::Relaxed)
    }
}

impl Drop for DemoModel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"message": message, "type": "demo_model"}})),
    )
        .into_response()
}

async fn chat_completions(
    State(served): State<Served>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|key| key == served.key.as_str());
    if !authorized {
        return error(StatusCode::UNAUTHORIZED, "the demo model's key is wrong");
    }
    let Ok(request) = serde_json::from_str::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "the body is not JSON");
    };
    let Some(messages) = request.get("messages").and_then(Value::as_array) else {
        return error(StatusCode::BAD_REQUEST, "`messages` is missing");
    };
    let step = next_step(messages);
    let usage = usage_of(&request, &step);
    let n = served.replies.fetch_add(1, Ordering::Relaxed) + 1;
    axum::Json(json!({
        "id": format!("demo-{n}"),
        "object": "chat.completion",
        "model": MODEL_NAME,
        "choices": [{
            "index": 0,
            "message": {
                "role": "assistant",
                "content": null,
                "tool_calls": [{
                    "id": format!("call_demo_{n}"),
                    "type": "function",
                    "function": {"name": step.name, "arguments": step.arguments.to_string()}
                }]
            },
            "finish_reason": "tool_calls"
        }],
        "usage": usage
    }))
    .into_response()
}

/// About how many tokens `text` is (four characters a token, as for English text and code).
fn tokens_in(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// A plausible `usage` for the reply `step` to `request`: its prompt (the messages and the
/// tools) and the tool call counted as a real model's tokenizer roughly would, so that a demo
/// run shows what it spends.
pub fn usage_of(request: &Value, step: &ToolCall) -> Value {
    let prompt = ["messages", "tools"]
        .iter()
        .filter_map(|key| request.get(*key))
        .map(|v| tokens_in(&v.to_string()))
        .sum::<u64>();
    // The call's name and arguments, and the few tokens that frame a tool call.
    let completion = tokens_in(step.name) + tokens_in(&step.arguments.to_string()) + 8;
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(text: &str) -> Value {
        json!({"role": "user", "content": text})
    }

    fn exchange(tool: &str, answer: &str) -> [Value; 2] {
        [
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": tool, "arguments": "{}"}}]}),
            json!({"role": "tool", "tool_call_id": "c", "content": answer}),
        ]
    }

    const PROMPT: &str = "Jira ticket DEMO-2: Say goodbye\n\nFile: greetings/bye.txt\nLine: Bye!";

    #[test]
    fn replies_report_plausible_usage() {
        let short = json!({"messages": [user(PROMPT)], "tools": [{"type": "function"}]});
        let mut long = short.clone();
        long["messages"]
            .as_array_mut()
            .unwrap()
            .extend(exchange("read_file", &"x".repeat(4000)));
        let step = next_step(&[user(PROMPT)]);
        let usage = usage_of(&short, &step);
        let prompt = usage["prompt_tokens"].as_u64().unwrap();
        let completion = usage["completion_tokens"].as_u64().unwrap();
        assert!(prompt > 10 && completion > 8, "{usage}");
        assert_eq!(usage["total_tokens"].as_u64(), Some(prompt + completion));
        // A longer conversation costs more prompt tokens: about a token per four characters.
        let longer = usage_of(&long, &step)["prompt_tokens"].as_u64().unwrap();
        assert!(longer >= prompt + 1000, "{longer} vs {prompt}");
    }

    #[test]
    fn reads_then_writes_then_finishes() {
        let mut messages = vec![json!({"role": "system", "content": "s"}), user(PROMPT)];
        assert_eq!(next_step(&messages).name, "read_file");
        messages.extend(exchange("read_file", "error: cannot read: No such file"));
        let write = next_step(&messages);
        assert_eq!(write.name, "write_file");
        assert_eq!(write.arguments["content"], "Bye!\n");
        messages.push(json!({"role": "assistant", "content": null, "tool_calls": [{"id": "w", "type": "function", "function": {"name": "write_file", "arguments": write.arguments.to_string()}}]}));
        messages.push(
            json!({"role": "tool", "tool_call_id": "w", "content": "wrote greetings/bye.txt"}),
        );
        let finish = next_step(&messages);
        assert_eq!(finish.name, "finish");
        assert_eq!(finish.arguments["status"], "done");
        assert!(
            finish.arguments["summary"]
                .as_str()
                .is_some_and(|s| s.starts_with("[demo model] wrote \"Bye!\""))
        );
    }

    #[test]
    fn a_run_line_is_run_first_whatever_it_returns() {
        let prompt = format!("{PROMPT}\nRun: git ls-remote https://files.example.com/x.git");
        let mut messages = vec![user(&prompt)];
        let run = next_step(&messages);
        assert_eq!(run.name, "run_command");
        assert_eq!(
            run.arguments["command"],
            "git ls-remote https://files.example.com/x.git"
        );
        messages.extend(exchange(
            "run_command",
            "exit 128: Received HTTP code 403 from proxy",
        ));
        assert_eq!(next_step(&messages).name, "read_file");
    }

    #[test]
    fn the_flawed_first_attempt_is_fixed_by_the_retry() {
        let prompt = format!("{PROMPT}\n{FIRST_ATTEMPT_FAILS}");
        let mut first = vec![user(&prompt)];
        first.extend(exchange("read_file", "error: cannot read: No such file"));
        assert_eq!(next_step(&first).arguments["content"], "Bye\n");
        let mut retry = vec![user(&prompt)];
        retry.extend(exchange("read_file", "Bye\n"));
        assert_eq!(next_step(&retry).arguments["content"], "Bye!\n");
        let mut done = vec![user(&prompt)];
        done.extend(exchange("read_file", "Bye!\n"));
        assert_eq!(next_step(&done).name, "finish");
    }

    #[test]
    fn a_planning_run_reads_then_finishes_with_a_plan() {
        let prompt = format!(
            "{PLANNING_MARKER} Write a plan for the task below.\n\nThe task:\n\n{PROMPT}\n{FIRST_ATTEMPT_FAILS}"
        );
        let mut messages = vec![json!({"role": "system", "content": "s"}), user(&prompt)];
        let read = next_step(&messages);
        assert_eq!(
            (read.name, &read.arguments),
            ("read_file", &json!({"path": "greetings/bye.txt"}))
        );
        for (answer, says) in [
            ("error: cannot read: No such file", "does not exist yet"),
            ("Hello\n", "has 1 line(s)"),
            ("Bye!\n", "already holds the line"),
        ] {
            let mut run = messages.clone();
            run.extend(exchange("read_file", answer));
            let finish = next_step(&run);
            assert_eq!(finish.name, "finish");
            assert_eq!(finish.arguments["status"], "done");
            let plan = finish.arguments["summary"].as_str().unwrap_or_default();
            assert!(
                plan.starts_with("[demo model] plan: write \"Bye!\" to greetings/bye.txt"),
                "{plan}"
            );
            assert!(plan.contains(says) && plan.contains("Test plan"), "{plan}");
        }
        // Nothing is ever written in a planning run.
        messages.extend(exchange("list_files", "greetings/world.txt"));
        assert_eq!(next_step(&messages).name, "finish");
    }

    #[test]
    fn a_ticket_without_the_lines_cannot_be_done() {
        let step = next_step(&[user("Jira ticket X-1: do something clever")]);
        assert_eq!(step.name, "finish");
        assert_eq!(step.arguments["status"], "cannot_do");
    }
}
