//! The proxy over real sockets on 127.0.0.1: CONNECT tunnels carrying real TLS, plain HTTP
//! forwarding, refusals and their counts, the SNI check, and what the tunnel carries.

mod support;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use recac_api::egress::BlockedHost;
use recac_egress::{Client, Policy, ProxySettings};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn quick_peek() -> ProxySettings {
    ProxySettings {
        sni_peek_timeout: Duration::from_millis(200),
        ..ProxySettings::default()
    }
}

async fn blocked_list(proxy: SocketAddr) -> Vec<BlockedHost> {
    let (status, head, body) = http_exchange(
        proxy,
        "GET /blocked HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    serde_json::from_str(&body).expect("a JSON array of BlockedHost")
}

fn blocked(host: &str, port: u16, count: u64) -> BlockedHost {
    BlockedHost {
        host: host.to_string(),
        port,
        count,
    }
}

/// Whether the peer closes `stream` (EOF or reset) within a few seconds, whatever it sends
/// before.
async fn closed_by_peer(stream: &mut (impl AsyncReadExt + Unpin)) -> bool {
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
        .await
        .is_ok()
}

#[tokio::test]
async fn connect_to_an_allowed_host_carries_a_tls_session() {
    let tls = tls();
    let server = tls_echo_server(tls.acceptor.clone()).await;
    let proxy = proxy_allowing(&[&format!("localhost:{}", server.port())], quick_peek()).await;

    let (status, stream) = connect_via(proxy.addr, &format!("localhost:{}", server.port())).await;
    assert_eq!(status, "HTTP/1.1 200 Connection Established");
    let mut session = tls_over(&tls.connector, "localhost", stream)
        .await
        .expect("TLS handshake through the tunnel");
    assert_eq!(echo_round_trip(&mut session, "hello\n").await, "hello\n");
    assert_eq!(echo_round_trip(&mut session, "again\n").await, "again\n");
    assert!(blocked_list(proxy.addr).await.is_empty());
    assert_eq!(proxy.blocked.total(), 0);
}

#[tokio::test]
async fn refused_connects_are_403_and_counted_for_the_caller() {
    let proxy = proxy_allowing(&["github.com"], quick_peek()).await;
    for _ in 0..3 {
        let (status, head, body) = http_exchange(
            proxy.addr,
            "CONNECT denied.example:443 HTTP/1.1\r\nHost: denied.example:443\r\n\r\n",
        )
        .await;
        assert_eq!(status, "HTTP/1.1 403 Forbidden");
        assert!(
            head.to_ascii_lowercase()
                .contains("x-recac-egress: blocked"),
            "{head}"
        );
        assert_eq!(
            body,
            "recac egress: denied.example:443 is not on this task's allow-list\n"
        );
    }
    let (status, _, _) = http_exchange(
        proxy.addr,
        "CONNECT github.com:22 HTTP/1.1\r\nHost: github.com:22\r\n\r\n",
    )
    .await;
    assert_eq!(status, "HTTP/1.1 403 Forbidden");
    assert_eq!(
        blocked_list(proxy.addr).await,
        [
            blocked("denied.example", 443, 3),
            blocked("github.com", 22, 1)
        ]
    );
    assert_eq!(proxy.blocked.total(), 4);
    let other_client: IpAddr = "10.9.9.9".parse().expect("address");
    assert!(proxy.blocked.for_client(other_client).is_empty());
}

#[tokio::test]
async fn unreachable_upstream_is_502_and_not_a_refusal() {
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = closed.local_addr().expect("address").port();
    drop(closed);
    let proxy = proxy_allowing(&[&format!("127.0.0.1/32:{port}")], quick_peek()).await;
    let (status, _, body) = http_exchange(
        proxy.addr,
        &format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"),
    )
    .await;
    assert_eq!(status, "HTTP/1.1 502 Bad Gateway");
    assert!(
        body.contains(&format!("connecting to 127.0.0.1:{port} failed")),
        "{body}"
    );
    assert!(blocked_list(proxy.addr).await.is_empty());
}

/// An origin that answers with what it received.
async fn http_origin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |request: Request<hyper::body::Incoming>| async move {
                        let (parts, body) = request.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let header = |name: &str| {
                            parts
                                .headers
                                .get(name)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-")
                                .to_string()
                        };
                        let text = format!(
                            "{} {} host={} proxy-authorization={} x-hop={} body={}",
                            parts.method,
                            parts.uri,
                            header("host"),
                            header("proxy-authorization"),
                            header("x-hop"),
                            String::from_utf8_lossy(&body)
                        );
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn plain_http_is_forwarded_in_origin_form_when_allowed() {
    let origin = http_origin().await;
    let port = origin.port();
    let proxy = proxy_allowing(&[&format!("localhost:{port}")], quick_peek()).await;

    let (status, _, body) = http_exchange(
        proxy.addr,
        &format!(
            "GET http://LOCALHOST:{port}/hello?x=1 HTTP/1.1\r\nHost: elsewhere.example\r\n\
             Proxy-Authorization: Basic c2VjcmV0\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(
        body,
        format!("GET /hello?x=1 host=LOCALHOST:{port} proxy-authorization=- x-hop=- body=")
    );

    let (status, _, body) = http_exchange(
        proxy.addr,
        &format!(
            "POST http://localhost:{port}/upload HTTP/1.1\r\nHost: localhost:{port}\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
             5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        body.ends_with(
            "POST /upload host=localhost:{port} proxy-authorization=- x-hop=- body=hello world"
                .replace("{port}", &port.to_string())
                .as_str()
        ),
        "{body}"
    );

    let (status, head, body) = http_exchange(
        proxy.addr,
        "GET http://denied.example/path?token=abc HTTP/1.1\r\nHost: denied.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, "HTTP/1.1 403 Forbidden");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-recac-egress: blocked"),
        "{head}"
    );
    assert_eq!(
        body,
        "recac egress: denied.example:80 is not on this task's allow-list\n"
    );

    let (status, _, _) = http_exchange(
        proxy.addr,
        &format!(
            "GET https://localhost:{port}/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
    assert_eq!(
        blocked_list(proxy.addr).await,
        [blocked("denied.example", 80, 1)]
    );
}

#[tokio::test]
async fn own_endpoints_answer_origin_form_requests() {
    let proxy = proxy_allowing(&[], quick_peek()).await;
    let (status, _, body) = http_exchange(
        proxy.addr,
        "GET /healthz HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", "ok"));
    let (status, _, _) = http_exchange(
        proxy.addr,
        "GET /metrics HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    assert!(blocked_list(proxy.addr).await.is_empty());
}

#[tokio::test]
async fn a_client_hello_for_another_name_is_cut_and_recorded() {
    let tls = tls();
    let server = tls_echo_server(tls.acceptor.clone()).await;
    let target = format!("localhost:{}", server.port());
    let proxy = proxy_allowing(&[&target], quick_peek()).await;

    let (status, stream) = connect_via(proxy.addr, &target).await;
    assert_eq!(status, "HTTP/1.1 200 Connection Established");
    let fronted = tls_over(&tls.connector, "evil.example", stream)
        .await
        .expect_err("the handshake for another name must fail");
    // Cut by the proxy before any certificate came back, not refused by the client's
    // certificate check (which rustls reports as InvalidData).
    assert_ne!(fronted.kind(), std::io::ErrorKind::InvalidData, "{fronted}");

    // Waiting out the peek timeout before the ClientHello does not get it past the check.
    let (_, mut stream) = connect_via(proxy.addr, &target).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut first = Vec::new();
    {
        // A real ClientHello for another name, captured from rustls through a local pipe.
        let (client_end, mut capture_end) = tokio::io::duplex(64 * 1024);
        let connector = tls.connector.clone();
        let handshake = tokio::spawn(async move {
            let name = rustls::pki_types::ServerName::try_from("late.example").expect("name");
            connector.connect(name, client_end).await
        });
        let mut buffer = vec![0u8; 64 * 1024];
        let n = capture_end.read(&mut buffer).await.expect("ClientHello");
        first.extend_from_slice(&buffer[..n]);
        handshake.abort();
    }
    stream
        .write_all(&first)
        .await
        .expect("send the ClientHello");
    assert!(closed_by_peer(&mut stream).await, "the tunnel must be cut");

    assert_eq!(
        blocked_list(proxy.addr).await,
        [
            blocked("evil.example", server.port(), 1),
            blocked("late.example", server.port(), 1)
        ]
    );
}

/// Copies `from` to `to`, keeping a copy of every byte in `log`.
async fn relay_recording(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    log: Arc<Mutex<Vec<u8>>>,
) {
    let mut buffer = [0u8; 4096];
    while let Ok(n) = from.read(&mut buffer).await {
        if n == 0 {
            break;
        }
        log.lock().expect("log").extend_from_slice(&buffer[..n]);
        if to.write_all(&buffer[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// A relay in front of `upstream` that keeps every byte it moves, both ways.
async fn recording_relay(upstream: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let recorded = Arc::new(Mutex::new(Vec::new()));
    let log = recorded.clone();
    tokio::spawn(async move {
        while let Ok((downstream, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let Ok(upstream) = TcpStream::connect(upstream).await else {
                    return;
                };
                let (down_read, down_write) = downstream.into_split();
                let (up_read, up_write) = upstream.into_split();
                tokio::join!(
                    relay_recording(down_read, up_write, log.clone()),
                    relay_recording(up_read, down_write, log),
                );
            });
        }
    });
    (addr, recorded)
}

#[tokio::test]
async fn the_tunnel_only_ever_carries_ciphertext() {
    const SECRET: &str = "recac-secret-7f3a9c-do-not-leak";
    let tls = tls();
    let server = tls_echo_server(tls.acceptor.clone()).await;
    let (relay, recorded) = recording_relay(server).await;
    let target = format!("localhost:{}", relay.port());
    let proxy = proxy_allowing(&[&target], quick_peek()).await;

    let (status, stream) = connect_via(proxy.addr, &target).await;
    assert_eq!(status, "HTTP/1.1 200 Connection Established");
    let mut session = tls_over(&tls.connector, "localhost", stream)
        .await
        .expect("TLS handshake through the proxy and the relay");
    for _ in 0..3 {
        let line = format!("{SECRET}\n");
        assert_eq!(echo_round_trip(&mut session, &line).await, line);
    }
    session.shutdown().await.expect("close_notify");

    let bytes = recorded.lock().expect("log").clone();
    assert!(
        bytes.len() > 1000,
        "the relay saw the TLS exchange ({} bytes)",
        bytes.len()
    );
    let secret = SECRET.as_bytes();
    assert!(
        !bytes.windows(secret.len()).any(|window| window == secret),
        "plaintext crossed the proxy's tunnel"
    );
    assert!(
        bytes.windows(b"localhost".len()).any(|w| w == b"localhost"),
        "the relay sees the ClientHello's SNI (plaintext by design of TLS), so it records for real"
    );
}

#[tokio::test]
async fn non_tls_tunnels_work_whenever_the_client_speaks() {
    let echo = tcp_echo_server(None).await;
    let target = format!("localhost:{}", echo.port());
    let proxy = proxy_allowing(&[&target], quick_peek()).await;

    let (status, mut stream) = connect_via(proxy.addr, &target).await;
    assert_eq!(status, "HTTP/1.1 200 Connection Established");
    assert_eq!(
        echo_round_trip(&mut stream, "plain text\n").await,
        "plain text\n"
    );

    let (_, mut late) = connect_via(proxy.addr, &target).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        echo_round_trip(&mut late, "after the peek timeout\n").await,
        "after the peek timeout\n"
    );
    assert_eq!(
        echo_round_trip(&mut late, "and again\n").await,
        "and again\n"
    );

    // A server that speaks first is heard before the client says anything.
    let banner = tcp_echo_server(Some("220 ready\r\n")).await;
    let target = format!("127.0.0.1:{}", banner.port());
    let proxy = proxy_allowing(
        &[&format!("127.0.0.1/32:{}", banner.port())],
        ProxySettings::default(),
    )
    .await;
    let (status, mut stream) = connect_via(proxy.addr, &target).await;
    assert_eq!(status, "HTTP/1.1 200 Connection Established");
    let mut greeting = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut greeting))
        .await
        .expect("the banner without waiting for the SNI check")
        .expect("read the banner");
    assert_eq!(&greeting, b"220 ready\r\n");
    assert_eq!(echo_round_trip(&mut stream, "EHLO me\n").await, "EHLO me\n");
    assert!(blocked_list(proxy.addr).await.is_empty());
}

#[tokio::test]
async fn a_client_hello_that_never_completes_is_cut() {
    let echo = tcp_echo_server(None).await;
    let target = format!("localhost:{}", echo.port());
    let proxy = proxy_allowing(&[&target], quick_peek()).await;
    let (_, mut stream) = connect_via(proxy.addr, &target).await;
    // A handshake record header announcing 512 bytes, then nothing more.
    stream
        .write_all(&[22, 3, 1, 2, 0, 1, 0])
        .await
        .expect("write");
    assert!(
        closed_by_peer(&mut stream).await,
        "a stalled ClientHello must be cut"
    );
}

/// A policy that knows nobody.
struct NoClients;

impl Policy for NoClients {
    fn lookup(&self, _client: IpAddr) -> Option<Client> {
        None
    }
}

#[tokio::test]
async fn unknown_clients_are_refused_everything() {
    let settings = ProxySettings {
        unknown_client_wait: Duration::from_millis(300),
        ..quick_peek()
    };
    let asked = std::time::Instant::now();
    let proxy = start_proxy(Arc::new(NoClients), settings).await;
    let (status, _, body) = http_exchange(
        proxy.addr,
        "CONNECT github.com:443 HTTP/1.1\r\nHost: github.com:443\r\n\r\n",
    )
    .await;
    assert_eq!(status, "HTTP/1.1 403 Forbidden");
    assert!(
        asked.elapsed() >= Duration::from_millis(300),
        "an unknown address is given time to become known"
    );
    assert!(body.contains("not a known agent pod"), "{body}");
    assert_eq!(
        blocked_list(proxy.addr).await,
        [blocked("github.com", 443, 1)]
    );
}

#[tokio::test]
async fn a_broken_connection_does_not_stop_the_listener_and_shutdown_ends_serve() {
    let proxy = proxy_allowing(&[], quick_peek()).await;
    let mut garbage = TcpStream::connect(proxy.addr).await.expect("connect");
    garbage
        .write_all(b"\x00\x01\x02 this is not HTTP\r\n\r\n")
        .await
        .expect("write");
    assert!(closed_by_peer(&mut garbage).await);
    let (status, _, _) = http_exchange(
        proxy.addr,
        "GET /healthz HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, "HTTP/1.1 200 OK");

    let open = TcpStream::connect(proxy.addr)
        .await
        .expect("an idle connection");
    proxy.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), proxy.task)
        .await
        .expect("serve returns after shutdown")
        .expect("the serve task")
        .expect("serve's result");
    drop(open);
}

/// A policy that learns its one client only after being asked a few times, as a pod's first
/// connection can come before the proxy's watch has delivered the pod's address.
struct LateClient {
    asked: std::sync::atomic::AtomicUsize,
}

impl Policy for LateClient {
    fn lookup(&self, _client: IpAddr) -> Option<Client> {
        let asked = self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        (asked >= 3).then(|| Client {
            name: "late/pod".into(),
            rules: Arc::from(vec!["denied.example:443".parse().expect("a rule")]),
        })
    }
}

#[tokio::test]
async fn a_client_that_becomes_known_while_it_waits_gets_its_own_list() {
    let proxy = start_proxy(
        Arc::new(LateClient {
            asked: std::sync::atomic::AtomicUsize::new(0),
        }),
        quick_peek(),
    )
    .await;
    let (status, _, _) = http_exchange(
        proxy.addr,
        "CONNECT refused.example:443 HTTP/1.1\r\nHost: refused.example:443\r\n\r\n",
    )
    .await;
    assert_eq!(status, "HTTP/1.1 403 Forbidden");
    assert_eq!(
        blocked_list(proxy.addr).await,
        [blocked("refused.example", 443, 1)],
        "refused by its own list, counted under its own name"
    );
}

#[tokio::test]
async fn plain_http_inside_a_tunnel_is_cut_before_it_reaches_the_host() {
    let echo = tcp_echo_server(None).await;
    let target = format!("localhost:{}", echo.port());
    let proxy = proxy_allowing(&[&target], quick_peek()).await;
    let (status, mut stream) = connect_via(proxy.addr, &target).await;
    assert_eq!(status, "HTTP/1.1 200 Connection Established");
    stream
        .write_all(b"GET /secret HTTP/1.1\r\nHost: elsewhere.example\r\n\r\n")
        .await
        .expect("write");
    assert!(
        closed_by_peer(&mut stream).await,
        "a Host header could name any host behind a shared front: the tunnel is cut"
    );
}

#[tokio::test]
async fn an_allowed_name_that_resolves_to_loopback_is_refused_without_a_cidr_entry() {
    let echo = tcp_echo_server(None).await;
    let target = format!("localhost:{}", echo.port());
    let rules: Vec<recac_api::egress::EgressRule> = vec![target.parse().expect("a rule")];
    let proxy = start_proxy(
        Arc::new(recac_egress::StaticPolicy::new("test/agent", rules)),
        quick_peek(),
    )
    .await;
    let (status, _, body) = http_exchange(
        proxy.addr,
        &format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"),
    )
    .await;
    assert_eq!(status, "HTTP/1.1 403 Forbidden", "{body}");
    assert_eq!(
        blocked_list(proxy.addr).await,
        [blocked("localhost", echo.port(), 1)]
    );
}
