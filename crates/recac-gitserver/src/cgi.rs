//! The HTTP side: authentication, then `git http-backend` as a CGI program.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, WWW_AUTHENTICATE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::{GitServerError, Result};

/// The largest request body (a push) the server reads.
const MAX_BODY_BYTES: usize = 256 * 1024 * 1024;

pub struct Backend {
    pub program: PathBuf,
    pub root: PathBuf,
    pub token: String,
    pub log: Arc<Mutex<Vec<String>>>,
}

/// `<git --exec-path>/git-http-backend`.
pub fn backend_path() -> Result<PathBuf> {
    let output = std::process::Command::new("git")
        .arg("--exec-path")
        .output()
        .map_err(|e| GitServerError::Backend(format!("cannot run: {e}")))?;
    if !output.status.success() {
        return Err(GitServerError::Backend(format!(
            "failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let path =
        PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()).join("git-http-backend");
    if path.is_file() {
        Ok(path)
    } else {
        Err(GitServerError::Backend(format!(
            "names no {}",
            path.display()
        )))
    }
}

pub async fn serve(listener: TcpListener, acceptor: Option<TlsAcceptor>, backend: Arc<Backend>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "git server: accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let backend = backend.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let backend = backend.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&backend, request).await) }
            });
            let http = hyper::server::conn::http1::Builder::new();
            let served = match acceptor {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(tls) => http.serve_connection(TokioIo::new(tls), service).await,
                    Err(e) => {
                        tracing::debug!(error = %e, "git server: TLS handshake failed");
                        return;
                    }
                },
                None => http.serve_connection(TokioIo::new(stream), service).await,
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "git server: connection ended with an error");
            }
        });
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
}

/// Compares without stopping at the first difference, so timing tells nothing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The user name of a request whose basic-auth password is the token.
fn authenticated_user(backend: &Backend, request: &Request<Incoming>) -> Option<String> {
    let header = request.headers().get("authorization")?.to_str().ok()?;
    let encoded = header.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    constant_time_eq(password.as_bytes(), backend.token.as_bytes()).then(|| user.to_string())
}

fn record(backend: &Backend, line: String) {
    if let Ok(mut log) = backend.log.lock() {
        log.push(line);
    }
}

async fn handle(backend: &Backend, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let line = format!("{} {}", request.method(), request.uri().path());
    let Some(user) = authenticated_user(backend, &request) else {
        record(backend, format!("{line} 401"));
        let mut response = text(StatusCode::UNAUTHORIZED, "authentication required\n");
        response.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"git\""),
        );
        return response;
    };
    let response = match run_backend(backend, &user, request).await {
        Ok(response) => response,
        Err(message) => {
            tracing::warn!(%message, "git server: request failed");
            text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{message}\n"))
        }
    };
    record(backend, format!("{line} {}", response.status().as_u16()));
    response
}

async fn run_backend(
    backend: &Backend,
    user: &str,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, String> {
    let (parts, body) = request.into_parts();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let body = Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading the request body: {e}"))?
        .to_bytes();
    let mut child = tokio::process::Command::new(&backend.program)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", &backend.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("PATH_INFO", parts.uri.path())
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("GIT_PROTOCOL", header("git-protocol"))
        .env("REMOTE_USER", user)
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start git http-backend: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("git http-backend has no stdin")?;
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
    });
    let output = child
        .wait_with_output()
        .await
        .map_err(|e| format!("git http-backend: {e}"))?;
    let _ = writer.await;
    parse_cgi(&output.stdout).ok_or_else(|| {
        format!(
            "git http-backend answered no headers: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )
    })
}

/// A CGI reply: header lines (`Status:` sets the status), a blank line, the body.
fn parse_cgi(raw: &[u8]) -> Option<Response<Full<Bytes>>> {
    let (head_end, body_start) = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, p + 4))
        .or_else(|| {
            raw.windows(2)
                .position(|w| w == b"\n\n")
                .map(|p| (p, p + 2))
        })?;
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let mut builder = Response::builder();
    let mut status = StatusCode::OK;
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            status = value
                .split_whitespace()
                .next()
                .and_then(|code| code.parse().ok())
                .and_then(|code| StatusCode::from_u16(code).ok())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        } else {
            builder = builder.header(name.trim(), value);
        }
    }
    builder
        .status(status)
        .body(Full::new(Bytes::copy_from_slice(&raw[body_start..])))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgi_status_and_headers() {
        let response = parse_cgi(b"Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nnope")
            .expect("parsed");
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()["content-type"], "text/plain");
        let ok = parse_cgi(b"Content-Type: x\n\nbody").expect("parsed");
        assert_eq!(ok.status(), StatusCode::OK);
        assert!(parse_cgi(b"no blank line").is_none());
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
