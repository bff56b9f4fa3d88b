//! The node agent's HTTPS server: the kubelet's `GET /containerLogs/{ns}/{pod}/{container}`.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Bytes, Frame};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::{Result, TestEnvError};

/// Where one container's combined output is, and whether its process has exited.
#[derive(Clone)]
pub struct LogSource {
    pub path: PathBuf,
    pub finished: watch::Receiver<bool>,
}

/// Finds a container's log by namespace, pod and container name.
pub type Lookup = Arc<dyn Fn(&str, &str, &str) -> Option<LogSource> + Send + Sync>;

type Body = BoxBody<Bytes, Infallible>;

/// A TLS acceptor with a fresh self-signed certificate for 127.0.0.1 and localhost.
pub fn tls_acceptor() -> Result<TlsAcceptor> {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
    let cert = certified.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TestEnvError::NodeAgent(format!("TLS protocol versions: {e}")))?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(|e| TestEnvError::NodeAgent(format!("TLS server certificate: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves connections until the task is aborted.
pub async fn serve(listener: TcpListener, acceptor: TlsAcceptor, lookup: Lookup) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "node agent: accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let lookup = lookup.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(stream).await {
                Ok(tls) => tls,
                Err(e) => {
                    tracing::debug!(error = %e, "node agent: TLS handshake failed");
                    return;
                }
            };
            let service = service_fn(move |request| {
                let lookup = lookup.clone();
                async move { Ok::<_, Infallible>(handle(request, lookup).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(error = %e, "node agent: connection ended with an error");
            }
        });
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
    *response.status_mut() = status;
    response
}

#[derive(Default)]
struct LogQuery {
    follow: bool,
    tail_lines: Option<usize>,
    limit_bytes: Option<u64>,
}

fn parse_query(query: Option<&str>) -> LogQuery {
    let mut parsed = LogQuery::default();
    for pair in query.unwrap_or_default().split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "follow" => parsed.follow = value == "true" || value == "1",
            "tailLines" => parsed.tail_lines = value.parse().ok(),
            "limitBytes" => parsed.limit_bytes = value.parse().ok().filter(|n| *n > 0),
            _ => {}
        }
    }
    parsed
}

async fn handle(request: Request<hyper::body::Incoming>, lookup: Lookup) -> Response<Body> {
    if request.method() != hyper::Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is served\n".into(),
        );
    }
    let path = request.uri().path().to_string();
    let Some(rest) = path.strip_prefix("/containerLogs/") else {
        return text(
            StatusCode::NOT_FOUND,
            format!("the recac node agent serves /containerLogs only, not {path}\n"),
        );
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let [namespace, pod, container] = parts.as_slice() else {
        return text(
            StatusCode::BAD_REQUEST,
            "expected /containerLogs/{namespace}/{pod}/{container}\n".into(),
        );
    };
    let Some(source) = lookup(namespace, pod, container) else {
        return text(
            StatusCode::NOT_FOUND,
            format!(
                "container {container:?} of pod {namespace}/{pod} is not known to this node agent\n"
            ),
        );
    };
    let query = parse_query(request.uri().query());
    let start = match tail_offset(&source, query.tail_lines).await {
        Ok(start) => start,
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading {}: {e}\n", source.path.display()),
            );
        }
    };
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        if let Err(e) = stream_log(source, start, query, tx).await {
            tracing::debug!(error = %e, "node agent: streaming a log ended early");
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(Frame::data(chunk)), rx))
    });
    let mut response = Response::new(StreamBody::new(stream).boxed());
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    response
}

/// The byte offset where the last `tail` lines of the log start.
async fn tail_offset(source: &LogSource, tail: Option<usize>) -> std::io::Result<u64> {
    let Some(tail) = tail else {
        return Ok(0);
    };
    let bytes = tokio::fs::read(&source.path).await?;
    let mut end = bytes.len();
    if bytes.last() == Some(&b'\n') {
        end -= 1;
    }
    let mut found = 0;
    let mut start = 0;
    for index in (0..end).rev() {
        if bytes[index] == b'\n' {
            found += 1;
            if found == tail {
                start = index + 1;
                break;
            }
        }
    }
    if tail == 0 {
        start = bytes.len();
    }
    Ok(start as u64)
}

async fn stream_log(
    mut source: LogSource,
    start: u64,
    query: LogQuery,
    tx: mpsc::Sender<Bytes>,
) -> std::io::Result<()> {
    let mut file = tokio::fs::File::open(&source.path).await?;
    file.seek(std::io::SeekFrom::Start(start)).await?;
    let mut remaining = query.limit_bytes.unwrap_or(u64::MAX);
    let mut buffer = vec![0u8; 32 * 1024];
    let mut agent_gone = false;
    loop {
        // Read whether the process finished *before* reading, so output written
        // just before the exit is never lost.
        let finished = *source.finished.borrow_and_update() || agent_gone;
        loop {
            let want = usize::try_from(remaining.min(buffer.len() as u64)).unwrap_or(buffer.len());
            if want == 0 {
                return Ok(());
            }
            let read = file.read(&mut buffer[..want]).await?;
            if read == 0 {
                break;
            }
            remaining = remaining.saturating_sub(read as u64);
            if tx
                .send(Bytes::copy_from_slice(&buffer[..read]))
                .await
                .is_err()
            {
                return Ok(());
            }
        }
        if !query.follow || finished {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            changed = source.finished.changed() => agent_gone = changed.is_err(),
            _ = tx.closed() => return Ok(()),
        }
    }
}
