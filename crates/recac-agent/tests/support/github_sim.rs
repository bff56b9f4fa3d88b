//! A GitHub REST API simulator for pull requests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

#[derive(Default)]
struct Inner {
    prs: Vec<Value>,
    creates: usize,
    bodies: Vec<String>,
}

#[derive(Clone)]
struct Sim {
    token: String,
    inner: Arc<Mutex<Inner>>,
}

pub struct GitHubSim {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
}

impl GitHubSim {
    pub async fn start(token: &str) -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let sim = Sim {
            token: token.into(),
            inner: inner.clone(),
        };
        let app = Router::new()
            .route("/repos/{owner}/{repo}/pulls", get(list).post(create))
            .with_state(sim);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, inner }
    }

    /// How many pull requests were created.
    pub fn creates(&self) -> usize {
        self.inner.lock().unwrap().creates
    }

    /// The bodies of every request received.
    pub fn bodies(&self) -> Vec<String> {
        self.inner.lock().unwrap().bodies.clone()
    }

    pub fn prs(&self) -> Vec<Value> {
        self.inner.lock().unwrap().prs.clone()
    }
}

fn authorized(sim: &Sim, headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {}", sim.token))
}

async fn list(
    State(sim): State<Sim>,
    Path((owner, _repo)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&sim, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"message": "Bad credentials"})),
        )
            .into_response();
    }
    let inner = sim.inner.lock().unwrap();
    let head = q.get("head").cloned().unwrap_or_default();
    let found: Vec<Value> = inner
        .prs
        .iter()
        .filter(|pr| format!("{owner}:{}", pr["head"]["ref"].as_str().unwrap_or("")) == head)
        .cloned()
        .collect();
    axum::Json(Value::Array(found)).into_response()
}

async fn create(
    State(sim): State<Sim>,
    Path((owner, repo)): Path<(String, String)>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if !authorized(&sim, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"message": "Bad credentials"})),
        )
            .into_response();
    }
    let mut inner = sim.inner.lock().unwrap();
    inner.bodies.push(body.clone());
    let req: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let head = req["head"].as_str().unwrap_or("").to_string();
    if inner
        .prs
        .iter()
        .any(|pr| pr["head"]["ref"] == head.as_str())
    {
        return (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(json!({"message": "Validation Failed", "errors": [{"message": "A pull request already exists"}]}))).into_response();
    }
    inner.creates += 1;
    let number = inner.prs.len() + 1;
    let pr = json!({
        "number": number,
        "state": "open",
        "html_url": format!("https://github.example/{owner}/{repo}/pull/{number}"),
        "title": req["title"],
        "body": req["body"],
        "head": {"ref": head},
        "base": {"ref": req["base"]},
    });
    inner.prs.push(pr.clone());
    (StatusCode::CREATED, axum::Json(pr)).into_response()
}
