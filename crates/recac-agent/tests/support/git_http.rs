//! `git http-backend` (CGI) behind a tiny axum server that demands HTTP basic auth.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use tokio::io::AsyncWriteExt;

const BACKEND: &str = "/usr/lib/git-core/git-http-backend";

#[derive(Clone)]
struct Server {
    root: PathBuf,
    password: String,
    log: Arc<Mutex<Vec<String>>>,
}

pub struct GitHttp {
    /// Base URL; repositories are at `<url>/<name>`.
    pub url: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl GitHttp {
    /// Serves the bare repositories under `root`, accepting any user with `password`.
    pub async fn start(root: PathBuf, password: &str) -> Self {
        let log = Arc::new(Mutex::new(Vec::new()));
        let server = Server {
            root,
            password: password.into(),
            log: log.clone(),
        };
        let app = Router::new().fallback(handle).with_state(server);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, log }
    }

    /// "METHOD uri status" of every request.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

fn unauthorized() -> Response {
    let mut resp = (StatusCode::UNAUTHORIZED, "authentication required\n").into_response();
    resp.headers_mut().insert(
        "www-authenticate",
        HeaderValue::from_static("Basic realm=\"git\""),
    );
    resp
}

fn user_of(server: &Server, req: &Request) -> Option<String> {
    let header = req.headers().get("authorization")?.to_str().ok()?;
    let encoded = header.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    (password == server.password).then(|| user.to_string())
}

async fn handle(State(server): State<Server>, req: Request) -> Response {
    let line = format!("{} {}", req.method(), req.uri());
    let Some(user) = user_of(&server, &req) else {
        server.log.lock().unwrap().push(format!("{line} 401"));
        return unauthorized();
    };
    let (parts, body) = req.into_parts();
    let method = parts.method.to_string();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let content_type = header("content-type");
    let encoding = header("content-encoding");
    let protocol = header("git-protocol");
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let mut child = tokio::process::Command::new(BACKEND)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", &server.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", &path)
        .env("REQUEST_METHOD", &method)
        .env("QUERY_STRING", &query)
        .env("CONTENT_TYPE", &content_type)
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", &encoding)
        .env("GIT_PROTOCOL", &protocol)
        .env("REMOTE_USER", &user)
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("git-http-backend starts");
    let mut stdin = child.stdin.take().unwrap();
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
    });
    let out = child
        .wait_with_output()
        .await
        .expect("git-http-backend runs");
    let _ = writer.await;
    // CGI output: headers, a blank line, the body.
    let raw = out.stdout;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, p + 4))
        .or_else(|| {
            raw.windows(2)
                .position(|w| w == b"\n\n")
                .map(|p| (p, p + 2))
        });
    let Some((head_end, body_start)) = split else {
        server.log.lock().unwrap().push(format!("{line} 500"));
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
            .into_response();
    };
    let headers = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut status = StatusCode::OK;
    let mut builder = Response::builder();
    for h in headers.lines() {
        let Some((name, value)) = h.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value
                .split_whitespace()
                .next()
                .and_then(|c| c.parse().ok())
                .unwrap_or(500);
            status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        } else {
            builder = builder.header(name.trim(), value);
        }
    }
    server
        .log
        .lock()
        .unwrap()
        .push(format!("{line} {}", status.as_u16()));
    builder
        .status(status)
        .body(Body::from(raw[body_start..].to_vec()))
        .unwrap()
}
