//! Real servers on 127.0.0.1 for the proxy's tests and benchmark: a TLS echo server with a
//! self-signed certificate for `localhost`, a plain TCP echo server, the proxy itself, and a
//! client that speaks CONNECT.
#![allow(dead_code)] // each test binary uses its own part of this

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use recac_api::egress::EgressRule;
use recac_egress::{BlockedLog, Policy, ProxySettings, StaticPolicy};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;

/// How long any single step of a test may take before it is a failure rather than a hang.
pub const STEP: Duration = Duration::from_secs(10);

/// A certificate for `localhost` and the two ends that use it (no session resumption).
pub struct Tls {
    pub acceptor: TlsAcceptor,
    pub connector: TlsConnector,
}

pub fn tls() -> Tls {
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
    let cert: CertificateDer<'static> = generated.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        generated.signing_key.serialize_der(),
    ));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .expect("server config");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).expect("trust the certificate");
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Every connection makes a full handshake, as a first connection does.
    client.resumption = rustls::client::Resumption::disabled();
    Tls {
        acceptor: TlsAcceptor::from(Arc::new(server)),
        connector: TlsConnector::from(Arc::new(client)),
    }
}

/// A TLS server that echoes each line it reads, until the client closes.
pub async fn tls_echo_server(acceptor: TlsAcceptor) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(stream).await {
                    echo_lines(tls).await;
                }
            });
        }
    });
    addr
}

/// A TCP server that echoes each line it reads; with a `banner`, it first sends that.
pub async fn tcp_echo_server(banner: Option<&'static str>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                if let Some(banner) = banner
                    && stream.write_all(banner.as_bytes()).await.is_err()
                {
                    return;
                }
                echo_lines(stream).await;
            });
        }
    });
    addr
}

async fn echo_lines(stream: impl AsyncRead + AsyncWrite + Unpin) {
    let (read, mut write) = tokio::io::split(stream);
    let mut lines = BufReader::new(read);
    let mut line = String::new();
    while matches!(lines.read_line(&mut line).await, Ok(n) if n > 0) {
        if write.write_all(line.as_bytes()).await.is_err() || write.flush().await.is_err() {
            return;
        }
        line.clear();
    }
    let _ = write.shutdown().await;
}

/// A running proxy.
pub struct Proxy {
    pub addr: SocketAddr,
    pub blocked: Arc<BlockedLog>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<std::io::Result<()>>,
}

pub async fn start_proxy(policy: Arc<dyn Policy>, settings: ProxySettings) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let blocked = Arc::new(BlockedLog::default());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(recac_egress::serve(
        listener,
        policy,
        blocked.clone(),
        settings,
        shutdown.clone(),
    ));
    Proxy {
        addr,
        blocked,
        shutdown,
        task,
    }
}

/// A proxy that allows `rules` to every client. The test servers listen on loopback, which a
/// name reaches only with a CIDR entry for it too: `localhost:PORT` brings `127.0.0.1/32:PORT`.
pub async fn proxy_allowing(rules: &[&str], settings: ProxySettings) -> Proxy {
    let loopback = rules.iter().filter_map(|text| {
        let port = text.strip_prefix("localhost:")?;
        Some(format!("127.0.0.1/32:{port}"))
    });
    let rules: Vec<EgressRule> = rules
        .iter()
        .map(|text| text.to_string())
        .chain(loopback.collect::<Vec<_>>())
        .map(|text| text.parse().expect("test rule"))
        .collect();
    start_proxy(Arc::new(StaticPolicy::new("test/agent", rules)), settings).await
}

/// The status line of a CONNECT through `proxy` to `target` and the connection, positioned just
/// after the response head (read byte by byte, so no tunnel byte is consumed).
pub async fn connect_via(proxy: SocketAddr, target: &str) -> (String, TcpStream) {
    let mut stream = TcpStream::connect(proxy)
        .await
        .expect("connect to the proxy");
    stream.set_nodelay(true).expect("nodelay");
    let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send CONNECT");
    let head = read_head(&mut stream).await;
    let status = head.lines().next().unwrap_or_default().to_string();
    (status, stream)
}

/// Reads up to and including the blank line that ends a response head.
pub async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(STEP, stream.read(&mut byte))
            .await
            .expect("response head in time")
            .expect("read the response head");
        assert!(n == 1, "connection closed in the response head: {head:?}");
        head.push(byte[0]);
    }
    String::from_utf8(head).expect("ASCII head")
}

/// A TLS session over `stream` to `server_name`.
pub async fn tls_over(
    connector: &TlsConnector,
    server_name: &str,
    stream: TcpStream,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let name = ServerName::try_from(server_name.to_string()).expect("server name");
    tokio::time::timeout(STEP, connector.connect(name, stream))
        .await
        .expect("handshake in time")
}

/// Writes `line` and reads one line back.
pub async fn echo_round_trip(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    line: &str,
) -> String {
    stream.write_all(line.as_bytes()).await.expect("write");
    stream.flush().await.expect("flush");
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"\n") {
        let n = tokio::time::timeout(STEP, stream.read(&mut byte))
            .await
            .expect("echo in time")
            .expect("read the echo");
        if n == 0 {
            break;
        }
        reply.push(byte[0]);
    }
    String::from_utf8(reply).expect("UTF-8 echo")
}

/// One HTTP/1.1 exchange with `Connection: close`, as raw text: (status line, head, body).
pub async fn http_exchange(addr: SocketAddr, request: &str) -> (String, String, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = Vec::new();
    tokio::time::timeout(STEP, stream.read_to_end(&mut response))
        .await
        .expect("response in time")
        .expect("read the response");
    let text = String::from_utf8(response).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or_default().to_string();
    (status, head.to_string(), body.to_string())
}
