//! A scripted LLM server speaking the OpenAI Chat Completions and Anthropic Messages shapes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// One scripted reply.
#[derive(Clone, Debug)]
pub enum Step {
    /// Tool calls: (name, arguments).
    Calls(Vec<(&'static str, Value)>),
    /// Plain text, no tool call.
    Text(&'static str),
    /// An HTTP error status with an optional Retry-After.
    Status(u16, Option<&'static str>),
    /// 200 with a body that is not a valid reply.
    Malformed,
}

pub fn call(name: &'static str, args: Value) -> Step {
    Step::Calls(vec![(name, args)])
}

pub fn finish(summary: &'static str) -> Step {
    call("finish", json!({"status": "done", "summary": summary}))
}

#[derive(Default)]
struct Inner {
    script: VecDeque<Step>,
    /// Replayed forever once the script is used up (default: `list_files`).
    when_done: Option<Step>,
    requests: Vec<String>,
    calls: usize,
}

#[derive(Clone)]
struct Sim {
    key: String,
    inner: Arc<Mutex<Inner>>,
}

/// A running simulator.
pub struct LlmSim {
    pub addr: String,
    inner: Arc<Mutex<Inner>>,
}

impl LlmSim {
    pub async fn start(key: &str, script: Vec<Step>) -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            script: script.into(),
            ..Default::default()
        }));
        let sim = Sim {
            key: key.to_string(),
            inner: inner.clone(),
        };
        let app = Router::new()
            .route("/v1/chat/completions", post(openai))
            .route("/v1/messages", post(anthropic))
            .with_state(sim);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, inner }
    }

    /// OPENAI_BASE_URL for this simulator.
    pub fn openai_url(&self) -> String {
        format!("{}/v1", self.addr)
    }

    /// ANTHROPIC_BASE_URL for this simulator.
    pub fn anthropic_url(&self) -> String {
        self.addr.clone()
    }

    /// Every request body received, in order.
    pub fn requests(&self) -> Vec<String> {
        self.inner.lock().unwrap().requests.clone()
    }

    pub fn set_when_done(&self, step: Step) {
        self.inner.lock().unwrap().when_done = Some(step);
    }
}

fn next(sim: &Sim, body: &str) -> (usize, Step) {
    let mut inner = sim.inner.lock().unwrap();
    inner.requests.push(body.to_string());
    inner.calls += 1;
    let n = inner.calls;
    let step = inner
        .script
        .pop_front()
        .or_else(|| inner.when_done.clone())
        .unwrap_or_else(|| call("list_files", json!({})));
    (n, step)
}

fn error_response(status: u16, retry_after: Option<&str>) -> Response {
    let code = StatusCode::from_u16(status).unwrap();
    let body = json!({"error": {"message": format!("simulated {status}"), "type": "sim"}});
    let mut resp = (code, axum::Json(body)).into_response();
    if let Some(after) = retry_after {
        resp.headers_mut()
            .insert("retry-after", after.parse().unwrap());
    }
    resp
}

async fn openai(State(sim): State<Sim>, headers: HeaderMap, body: String) -> Response {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth != format!("Bearer {}", sim.key) {
        sim.inner.lock().unwrap().requests.push(body);
        return error_response(401, None);
    }
    let (n, step) = next(&sim, &body);
    let message = match step {
        Step::Status(code, after) => return error_response(code, after),
        Step::Malformed => return (StatusCode::OK, "{\"choices\": \"nope\"").into_response(),
        Step::Text(t) => json!({"role": "assistant", "content": t}),
        Step::Calls(calls) => {
            let calls: Vec<Value> = calls
                .iter()
                .enumerate()
                .map(|(i, (name, args))| {
                    json!({"id": format!("call_{n}_{i}"), "type": "function",
                           "function": {"name": name, "arguments": args.to_string()}})
                })
                .collect();
            json!({"role": "assistant", "content": null, "tool_calls": calls})
        }
    };
    axum::Json(json!({
        "id": format!("chatcmpl-{n}"),
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}
    }))
    .into_response()
}

async fn anthropic(State(sim): State<Sim>, headers: HeaderMap, body: String) -> Response {
    let key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let version = headers
        .get("anthropic-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if key != sim.key || version.is_empty() {
        sim.inner.lock().unwrap().requests.push(body);
        return error_response(401, None);
    }
    let (n, step) = next(&sim, &body);
    let content = match step {
        Step::Status(code, after) => return error_response(code, after),
        Step::Malformed => return (StatusCode::OK, "{\"content\": 5}").into_response(),
        Step::Text(t) => json!([{"type": "text", "text": t}]),
        Step::Calls(calls) => calls
            .iter()
            .enumerate()
            .map(|(i, (name, args))| json!({"type": "tool_use", "id": format!("toolu_{n}_{i}"), "name": name, "input": args}))
            .collect(),
    };
    axum::Json(json!({
        "id": format!("msg_{n}"),
        "type": "message",
        "role": "assistant",
        "content": content,
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 200, "output_tokens": 20}
    }))
    .into_response()
}
