//! What the egress proxy costs: the latency it adds to a connection, and its memory per open
//! tunnel. Run with `cargo bench -p recac-egress --bench proxy`; it prints its figures and
//! takes well under a minute.
//!
//! - Latency: N sequential connections, each a TCP connect, a full TLS handshake (no session
//!   resumption) and one echoed line, straight to a local TLS server and then through the proxy
//!   (CONNECT to `localhost`, so each also resolves a name as a real one does). The proxy runs in
//!   this process, on the same runtime as the clients and the server.
//! - Memory: the proxy runs alone in a child process (this binary again, see [`CHILD_ENV`]),
//!   so its resident set holds nothing but the proxy; it reads its own `/proc/self/statm`
//!   before and after M TLS tunnels are opened and held from M distinct client addresses
//!   (127.1.x.y, each a client of its own as a pod would be), each having echoed 32 KiB so
//!   that its buffers are in use.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use recac_api::egress::EgressRule;
use recac_egress::{BlockedLog, Client, Policy, ProxySettings};
use support::{Tls, connect_via, echo_round_trip, tls, tls_echo_server, tls_over};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

/// Connections timed, each way.
const CONNECTIONS: usize = 500;
/// Tunnels held open for the memory figure.
const TUNNELS: usize = 200;
/// Tunnels opened and closed before the memory figure's first reading.
const WARM_UP_TUNNELS: usize = 10;
/// Bytes each held tunnel echoes once, so that its buffers are in use as in a busy tunnel.
const HOLD_LINE_LEN: usize = 32 * 1024;
/// Set in the child process that runs the proxy alone: the rule every client gets.
const CHILD_ENV: &str = "RECAC_EGRESS_BENCH_PROXY_RULE";

/// The simulated client addresses (the child knows each of them, as PodPolicy knows pods).
fn client_address(index: usize) -> IpAddr {
    let index = u16::try_from(index).expect("few clients");
    let [high, low] = (index + 1).to_be_bytes();
    IpAddr::V4(Ipv4Addr::new(127, 1, high, low))
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match std::env::var(CHILD_ENV) {
        Ok(rule) => runtime.block_on(proxy_child(&rule)),
        Err(_) => runtime.block_on(bench()),
    }
}

async fn bench() {
    let tls = tls();
    let server = tls_echo_server(tls.acceptor.clone()).await;
    let started = Instant::now();
    latency(&tls, server).await;
    memory(&tls, server).await;
    println!(
        "egress proxy: benchmark done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

async fn latency(tls: &Tls, server: SocketAddr) {
    let target = format!("localhost:{}", server.port());
    let proxy = support::proxy_allowing(&[&target], ProxySettings::default()).await;

    let mut direct = Vec::with_capacity(CONNECTIONS);
    let mut proxied = Vec::with_capacity(CONNECTIONS);
    // A few of each first, so that neither side pays for first use.
    for _ in 0..20 {
        one_direct(tls, server).await;
        one_proxied(tls, proxy.addr, &target).await;
    }
    // Alternating, so that drift in the machine's load affects both alike.
    for _ in 0..CONNECTIONS {
        direct.push(one_direct(tls, server).await);
        proxied.push(one_proxied(tls, proxy.addr, &target).await);
    }
    let direct = Percentiles::of(direct);
    let proxied = Percentiles::of(proxied);
    println!(
        "egress proxy: added latency per connection p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms \
         (direct p50 {:.2} / p90 {:.2} / p99 {:.2} ms, via proxy p50 {:.2} / p90 {:.2} / p99 \
         {:.2} ms; N={CONNECTIONS} sequential connect + full TLS handshake + one echoed line, \
         CONNECT by name)",
        proxied.p50 - direct.p50,
        proxied.p90 - direct.p90,
        proxied.p99 - direct.p99,
        direct.p50,
        direct.p90,
        direct.p99,
        proxied.p50,
        proxied.p90,
        proxied.p99,
    );
    proxy.shutdown.cancel();
}

async fn one_direct(tls: &Tls, server: SocketAddr) -> Duration {
    let started = Instant::now();
    let stream = TcpStream::connect(server).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut session = tls_over(&tls.connector, "localhost", stream)
        .await
        .expect("handshake");
    echo_round_trip(&mut session, "ping\n").await;
    let elapsed = started.elapsed();
    let _ = session.shutdown().await;
    elapsed
}

async fn one_proxied(tls: &Tls, proxy: SocketAddr, target: &str) -> Duration {
    let started = Instant::now();
    let (status, stream) = connect_via(proxy, target).await;
    assert_eq!(status, "HTTP/1.1 200 Connection Established");
    let mut session = tls_over(&tls.connector, "localhost", stream)
        .await
        .expect("handshake through the proxy");
    echo_round_trip(&mut session, "ping\n").await;
    let elapsed = started.elapsed();
    let _ = session.shutdown().await;
    elapsed
}

/// Milliseconds at the 50th, 90th and 99th percentiles.
struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
}

impl Percentiles {
    fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        let at = |percent: f64| {
            let index = ((samples.len() - 1) as f64 * percent / 100.0).round() as usize;
            samples[index].as_secs_f64() * 1000.0
        };
        Percentiles {
            p50: at(50.0),
            p90: at(90.0),
            p99: at(99.0),
        }
    }
}

async fn memory(tls: &Tls, server: SocketAddr) {
    let rule = format!("localhost:{}", server.port());
    let mut child = tokio::process::Command::new(std::env::current_exe().expect("this binary"))
        .env(CHILD_ENV, &rule)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the proxy process");
    let mut to_child = child.stdin.take().expect("child stdin");
    let mut from_child = BufReader::new(child.stdout.take().expect("child stdout")).lines();
    let mut ask = async |question: &str| -> String {
        to_child
            .write_all(format!("{question}\n").as_bytes())
            .await
            .expect("ask the proxy process");
        from_child
            .next_line()
            .await
            .expect("read the proxy process")
            .expect("an answer")
    };
    let proxy: SocketAddr = ask("address").await.parse().expect("the proxy's address");

    // Warm up (the first use of each code path and of the runtime's threads is not a
    // per-tunnel cost), then close. Only a few: memory freed by a round as large as the
    // measured one would be reused by it and hide its cost.
    let warm_up = open_tunnels(tls, proxy, &rule, WARM_UP_TUNNELS).await;
    drop(warm_up);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before: u64 = ask("rss").await.parse().expect("RSS");
    let tunnels = open_tunnels(tls, proxy, &rule, TUNNELS).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after: u64 = ask("rss").await.parse().expect("RSS");
    let per_tunnel = after.saturating_sub(before) as f64 / TUNNELS as f64;
    println!(
        "egress proxy: memory per tunnel {:.1} KiB (proxy RSS {:.1} MiB before, {:.1} MiB while \
         holding {TUNNELS} open TLS tunnels from {TUNNELS} client addresses, each having \
         echoed {} KiB; proxy alone in its own process)",
        per_tunnel / 1024.0,
        before as f64 / (1024.0 * 1024.0),
        after as f64 / (1024.0 * 1024.0),
        HOLD_LINE_LEN / 1024,
    );
    println!(
        "egress proxy: per pod {:.1} KiB (the per-tunnel figure: one agent pod holds one or a \
         few tunnels open at once, so a pod costs about that times its open connections)",
        per_tunnel / 1024.0
    );
    drop(tunnels);
    drop(to_child);
    let _ = child.wait().await;
}

/// `count` TLS sessions through the proxy, one per client address, each having echoed a line.
async fn open_tunnels(
    tls: &Tls,
    proxy: SocketAddr,
    target: &str,
    count: usize,
) -> Vec<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut sessions = Vec::with_capacity(count);
    for index in 0..count {
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(client_address(index), 0))
            .expect("bind a client address");
        let mut stream = socket.connect(proxy).await.expect("connect to the proxy");
        stream.set_nodelay(true).expect("nodelay");
        let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("send CONNECT");
        let head = support::read_head(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let mut session = tls_over(&tls.connector, "localhost", stream)
            .await
            .expect("handshake");
        let line = format!("{}\n", "x".repeat(HOLD_LINE_LEN));
        assert_eq!(echo_round_trip(&mut session, &line).await.len(), line.len());
        sessions.push(session);
    }
    sessions
}

/// One allow-list per client address, as agent pods have.
struct PerClient(HashMap<IpAddr, Client>);

impl Policy for PerClient {
    fn lookup(&self, client: IpAddr) -> Option<Client> {
        self.0.get(&client).cloned()
    }
}

/// The child process: the proxy alone; answers "address" and "rss" on stdin, one per line,
/// and exits when stdin closes.
async fn proxy_child(rule: &str) {
    let clients = (0..TUNNELS)
        .map(|index| {
            // The server is on loopback, which a name reaches only with a CIDR entry too.
            let port = rule.rsplit(':').next().unwrap_or_default();
            let rules: Vec<EgressRule> = vec![
                rule.parse().expect("the rule"),
                format!("127.0.0.1/32:{port}").parse().expect("the rule"),
            ];
            let client = Client {
                name: format!("bench/pod-{index}"),
                rules: rules.into(),
            };
            (client_address(index), client)
        })
        .collect();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let shutdown = CancellationToken::new();
    let proxy = tokio::spawn(recac_egress::serve(
        listener,
        Arc::new(PerClient(clients)),
        Arc::new(BlockedLog::default()),
        ProxySettings::default(),
        shutdown.clone(),
    ));
    let mut questions = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    while let Ok(Some(question)) = questions.next_line().await {
        let answer = match question.as_str() {
            "address" => address.to_string(),
            "rss" => resident_bytes().to_string(),
            other => format!("unknown question {other:?}"),
        };
        stdout
            .write_all(format!("{answer}\n").as_bytes())
            .await
            .expect("answer");
        stdout.flush().await.expect("flush");
    }
    shutdown.cancel();
    let _ = proxy.await;
}

/// This process's resident set, from `/proc/self/statm` (its second field, in pages).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .expect("resident pages in /proc/self/statm");
    pages * rustix::param::page_size() as u64
}
