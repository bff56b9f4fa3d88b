//! The proxy's listener, its HTTP handling (CONNECT, absolute-form forwarding, its own two
//! endpoints) and the byte tunnel behind a CONNECT.

use std::convert::Infallible;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::ext::ReasonPhrase;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::Scheme;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioIo, TokioTimer};
use recac_api::egress::{BLOCKED_PATH, EgressRule, permits};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::activity::{Activity, Tracked};
use crate::blocked::BlockedLog;
use crate::policy::Policy;
use crate::sni::{self, FirstFlight};

/// Header on the proxy's refusals, so that a client (or a test) tells them from an upstream's
/// own 403.
pub const BLOCKED_HEADER: &str = "x-recac-egress";
/// Path of the proxy's health check.
pub const HEALTH_PATH: &str = "/healthz";
/// How long a client may take to send a request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes read from a tunnel's client before its ClientHello must be complete (a hello cut
/// into tiny records is larger on the wire than the hello itself).
const MAX_FIRST_FLIGHT: usize = 2 * sni::MAX_CLIENT_HELLO_LEN;
/// Pause after a failed accept (out of file descriptors, say) before trying again.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);
/// How often an unknown client's address is looked up again.
const UNKNOWN_CLIENT_POLL: Duration = Duration::from_millis(100);

/// Proxy settings.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    /// How long resolving and connecting to an upstream may take (default 10 s).
    pub connect_timeout: Duration,
    /// A tunnel or HTTP exchange with no bytes either way for this long is closed (default
    /// 10 min).
    pub idle_timeout: Duration,
    /// How long a tunnel's ClientHello may take to arrive in full once its first byte has
    /// (default 5 s); then the tunnel is cut. First bytes that are not TLS are let through as
    /// they come, and upstream bytes flow from the start, so protocols where the server speaks
    /// first are not held back. A client that sends nothing is not waved through after a
    /// while: its first bytes are checked whenever they come, or a client could get a
    /// ClientHello past the check by waiting.
    pub sni_peek_timeout: Duration,
    /// How long a request from an address the policy does not know waits for it to learn it
    /// (default 10 s) before everything is refused: a pod's first connection can come before
    /// the watch has delivered its address.
    pub unknown_client_wait: Duration,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(10 * 60),
            sni_peek_timeout: Duration::from_secs(5),
            unknown_client_wait: Duration::from_secs(10),
        }
    }
}

/// Why an upstream could not be used.
#[derive(Debug, thiserror::Error)]
enum UpstreamError {
    #[error(
        "{target} resolves to {address}, a loopback or link-local address, which only a CIDR entry of the allow-list may reach"
    )]
    Internal { target: String, address: IpAddr },
    #[error("connecting to {target} failed: {source}")]
    Connect {
        target: String,
        #[source]
        source: io::Error,
    },
    #[error("connecting to {target} timed out after {timeout:?}")]
    ConnectTimeout { target: String, timeout: Duration },
    #[error("HTTP exchange with {target} failed: {source}")]
    Http {
        target: String,
        #[source]
        source: hyper::Error,
    },
    #[error("no response head from {target} within {timeout:?}")]
    ResponseTimeout { target: String, timeout: Duration },
    #[error("cannot build the request for {target}: {reason}")]
    Request { target: String, reason: String },
}

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// What every connection shares.
struct Shared {
    policy: Arc<dyn Policy>,
    blocked: Arc<BlockedLog>,
    settings: ProxySettings,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// Who is asking: the name and rules of the client at an address.
struct Caller {
    ip: IpAddr,
    name: String,
    rules: Arc<[EgressRule]>,
    /// Whether the policy knows the address (an unknown one is refused everything).
    known: bool,
}

impl Shared {
    /// The caller at `ip`; an unknown address is asked again until the policy knows it or
    /// [`ProxySettings::unknown_client_wait`] has passed.
    async fn identify(&self, ip: IpAddr) -> Caller {
        let give_up = tokio::time::Instant::now() + self.settings.unknown_client_wait;
        let mut known = self.policy.lookup(ip);
        while known.is_none() && tokio::time::Instant::now() < give_up {
            tokio::select! {
                () = tokio::time::sleep(UNKNOWN_CLIENT_POLL) => {}
                () = self.shutdown.cancelled() => break,
            }
            known = self.policy.lookup(ip);
        }
        Self::caller(ip, known)
    }

    /// The caller at `ip` as the policy knows it now.
    fn identify_now(&self, ip: IpAddr) -> Caller {
        Self::caller(ip, self.policy.lookup(ip))
    }

    fn caller(ip: IpAddr, known: Option<crate::policy::Client>) -> Caller {
        match known {
            Some(client) => Caller {
                ip,
                name: client.name,
                rules: client.rules,
                known: true,
            },
            None => Caller {
                ip,
                name: format!("unknown client {ip}"),
                rules: Arc::from(Vec::new()),
                known: false,
            },
        }
    }

    /// Records and logs a refusal.
    fn record_refusal(&self, caller: &Caller, host: &str, port: u16, why: &str) {
        self.blocked.claim(caller.ip, &caller.name);
        self.blocked.record(caller.ip, host, port);
        tracing::info!(client = %caller.name, host, port, "egress refused: {why}");
    }
}

/// Serves the proxy on `listener` until `shutdown` is cancelled. Each connection is handled in
/// its own task, and a failed connection (or accept) never stops the listener. When `shutdown`
/// is cancelled, open connections and tunnels are closed and this returns once they are.
pub async fn serve(
    listener: TcpListener,
    policy: Arc<dyn Policy>,
    blocked: Arc<BlockedLog>,
    settings: ProxySettings,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let shared = Arc::new(Shared {
        policy,
        blocked,
        settings,
        shutdown: shutdown.clone(),
        tasks: TaskTracker::new(),
    });
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let shared_for_task = shared.clone();
                shared.tasks.spawn(handle_connection(
                    stream,
                    peer.ip().to_canonical(),
                    shared_for_task,
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, "egress proxy: accepting a connection failed");
                tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
            }
        }
    }
    shared.tasks.close();
    shared.tasks.wait().await;
    Ok(())
}

async fn handle_connection(stream: TcpStream, client_ip: IpAddr, shared: Arc<Shared>) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "egress proxy: cannot set TCP_NODELAY");
    }
    let activity = Activity::new();
    let io = TokioIo::new(Tracked::new(stream, activity.clone()));
    let service = {
        let shared = shared.clone();
        let activity = activity.clone();
        service_fn(move |request| {
            let shared = shared.clone();
            let activity = activity.clone();
            async move { Ok::<_, Infallible>(route(request, client_ip, &shared, &activity).await) }
        })
    };
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::select! {
        result = connection => {
            if let Err(e) = result {
                tracing::debug!(client = %client_ip, error = %e, "egress proxy: connection ended with an error");
            }
        }
        () = activity.idle_for(shared.settings.idle_timeout) => {
            tracing::debug!(client = %client_ip, "egress proxy: closing an idle connection");
        }
        () = shared.shutdown.cancelled() => {}
    }
}

async fn route(
    request: Request<Incoming>,
    client_ip: IpAddr,
    shared: &Arc<Shared>,
    activity: &Activity,
) -> Response<ProxyBody> {
    if request.method() == Method::CONNECT {
        connect(request, client_ip, shared, activity).await
    } else if request.uri().scheme().is_some() {
        forward(request, client_ip, shared, activity).await
    } else {
        own_endpoint(&request, client_ip, shared)
    }
}

fn text_response(status: StatusCode, text: impl Into<String>) -> Response<ProxyBody> {
    let body = Full::new(Bytes::from(text.into()))
        .map_err(|never| match never {})
        .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn refusal_response(host: &str, port: u16, unknown_client: bool) -> Response<ProxyBody> {
    let mut text = format!("recac egress: {host}:{port} is not on this task's allow-list\n");
    if unknown_client {
        text.push_str("recac egress: this address is not a known agent pod\n");
    }
    let mut response = text_response(StatusCode::FORBIDDEN, text);
    response.headers_mut().insert(
        HeaderName::from_static(BLOCKED_HEADER),
        HeaderValue::from_static("blocked"),
    );
    response
}

/// `response` with `Connection: close`: a client whose CONNECT failed gets no tunnel, and
/// closing is what it expects rather than a connection to send further requests on.
fn closing(mut response: Response<ProxyBody>) -> Response<ProxyBody> {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// `GET /blocked` (the caller's own refusals) and `GET /healthz`.
fn own_endpoint(
    request: &Request<Incoming>,
    client_ip: IpAddr,
    shared: &Shared,
) -> Response<ProxyBody> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, BLOCKED_PATH) => {
            let caller = shared.identify_now(client_ip);
            shared.blocked.claim(caller.ip, &caller.name);
            match serde_json::to_vec(&shared.blocked.for_client(caller.ip)) {
                Ok(json) => {
                    let mut response = Response::new(
                        Full::new(Bytes::from(json))
                            .map_err(|never| match never {})
                            .boxed(),
                    );
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    response
                }
                Err(e) => text_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("recac egress: cannot encode the blocked list: {e}\n"),
                ),
            }
        }
        (&Method::GET, HEALTH_PATH) => text_response(StatusCode::OK, "ok"),
        _ => text_response(StatusCode::NOT_FOUND, "recac egress: not found\n"),
    }
}

/// `CONNECT host:port`: checks the destination, connects, answers 200 and hands the
/// connection to a tunnel once hyper gives it up.
async fn connect(
    mut request: Request<Incoming>,
    client_ip: IpAddr,
    shared: &Arc<Shared>,
    activity: &Activity,
) -> Response<ProxyBody> {
    let Some(authority) = request.uri().authority() else {
        return closing(text_response(
            StatusCode::BAD_REQUEST,
            "recac egress: CONNECT needs host:port\n",
        ));
    };
    let host = authority.host().to_string();
    let Some(port) = authority.port_u16().filter(|port| *port != 0) else {
        return closing(text_response(
            StatusCode::BAD_REQUEST,
            "recac egress: CONNECT needs host:port with a port\n",
        ));
    };
    let caller = shared.identify(client_ip).await;
    if !permits(&caller.rules, &host, port) {
        shared.record_refusal(&caller, &host, port, "not on the allow-list");
        return closing(refusal_response(&host, port, !caller.known));
    }
    let upstream = match connect_upstream(
        &host,
        port,
        shared.settings.connect_timeout,
        &caller.rules,
    )
    .await
    {
        Ok(upstream) => upstream,
        Err(e @ UpstreamError::Internal { .. }) => {
            shared.record_refusal(&caller, &host, port, &e.to_string());
            return closing(refusal_response(&host, port, !caller.known));
        }
        Err(e) => {
            tracing::debug!(client = %caller.name, error = %e, "egress proxy: upstream unreachable");
            return closing(text_response(
                StatusCode::BAD_GATEWAY,
                format!("recac egress: {e}\n"),
            ));
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    let tunnel = Tunnel {
        caller,
        host,
        port,
        shared: shared.clone(),
        activity: activity.clone(),
    };
    shared.tasks.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => tunnel.run(upgraded, upstream).await,
            Err(e) => tracing::debug!(error = %e, "egress proxy: CONNECT upgrade failed"),
        }
    });
    let mut response = Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed(),
    );
    response
        .extensions_mut()
        .insert(ReasonPhrase::from_static(b"Connection Established"));
    response
}

/// Whether an address is the proxy's own or its node's (loopback, link-local: a cloud's
/// metadata endpoint, `169.254.169.254`), or no real destination: a name on the allow-list
/// must not lead there unless a CIDR entry says so.
fn internal(address: IpAddr) -> bool {
    match address.to_canonical() {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// Resolves `host` and connects to an address it resolved to, within `timeout`; `host` may
/// be an IPv6 literal in brackets. An internal address ([`internal`]) is used only when
/// `rules` allow it by address (a CIDR entry); the address checked is the one connected to.
async fn connect_upstream(
    host: &str,
    port: u16,
    timeout: Duration,
    rules: &[EgressRule],
) -> Result<TcpStream, UpstreamError> {
    let target = format!("{host}:{port}");
    let bare_host = host
        .strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
        .unwrap_or(host);
    let connecting = async {
        let addresses: Vec<std::net::SocketAddr> =
            tokio::net::lookup_host((bare_host, port)).await?.collect();
        let mut last_error = io::Error::new(io::ErrorKind::NotFound, "the name has no address");
        let mut refused = None;
        for address in addresses {
            if internal(address.ip()) && !permits(rules, &address.ip().to_string(), port) {
                refused.get_or_insert(address.ip());
                continue;
            }
            match TcpStream::connect(address).await {
                Ok(stream) => return Ok(Ok(stream)),
                Err(e) => last_error = e,
            }
        }
        Ok(match refused {
            Some(address) => Err(address),
            None => return Err(last_error),
        })
    };
    let stream = match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(Ok(stream))) => stream,
        Ok(Ok(Err(address))) => return Err(UpstreamError::Internal { target, address }),
        Ok(Err(source)) => return Err(UpstreamError::Connect { target, source }),
        Err(_) => return Err(UpstreamError::ConnectTimeout { target, timeout }),
    };
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "egress proxy: cannot set TCP_NODELAY upstream");
    }
    Ok(stream)
}

/// The tunnel behind an allowed CONNECT.
struct Tunnel {
    caller: Caller,
    host: String,
    port: u16,
    shared: Arc<Shared>,
    activity: Activity,
}

/// How the client's first bytes ended up.
enum Peeked {
    /// A verdict on complete first bytes.
    Flight(FirstFlight),
    /// The client closed its side without sending anything.
    Closed,
    /// The bytes start like TLS but the ClientHello did not complete in time or in size.
    Unfinished,
}

impl Tunnel {
    /// Moves bytes both ways until both sides are done, after the client's first bytes passed
    /// the SNI check. Upstream bytes flow from the start.
    async fn run(self, upgraded: Upgraded, upstream: TcpStream) {
        let (mut client_read, mut client_write) = tokio::io::split(TokioIo::new(upgraded));
        let (upstream_read, mut upstream_write) = upstream.into_split();
        let mut upstream_read = Tracked::new(upstream_read, self.activity.clone());
        let to_client = async {
            tokio::io::copy(&mut upstream_read, &mut client_write).await?;
            client_write.shutdown().await
        };
        let to_upstream = async {
            let (first_bytes, peeked) =
                read_first_flight(&mut client_read, self.shared.settings.sni_peek_timeout).await?;
            self.check(peeked, &first_bytes)?;
            upstream_write.write_all(&first_bytes).await?;
            tokio::io::copy(&mut client_read, &mut upstream_write).await?;
            upstream_write.shutdown().await
        };
        let outcome = tokio::select! {
            result = async { tokio::try_join!(to_client, to_upstream) } => result.map(|_| ()),
            () = self.activity.idle_for(self.shared.settings.idle_timeout) => {
                Err(io::Error::new(io::ErrorKind::TimedOut, "idle tunnel closed"))
            }
            () = self.shared.shutdown.cancelled() => Ok(()),
        };
        if let Err(e) = outcome {
            tracing::debug!(
                client = %self.caller.name,
                host = %self.host,
                port = self.port,
                error = %e,
                "egress proxy: tunnel ended"
            );
        }
    }

    /// Lets the tunnel go on, or says why it is cut (recording a refusal for a foreign SNI).
    /// Logs why the tunnel is cut and says so as an error.
    fn cut(&self, why: impl std::fmt::Display) -> io::Result<()> {
        tracing::info!(
            client = %self.caller.name,
            host = %self.host,
            port = self.port,
            "egress proxy: tunnel cut: {why}"
        );
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            why.to_string(),
        ))
    }

    fn check(&self, peeked: Peeked, first: &[u8]) -> io::Result<()> {
        let cut = |reason: String| Err(io::Error::new(io::ErrorKind::PermissionDenied, reason));
        match peeked {
            // Plain HTTP in a tunnel could name any host in its Host header (a shared front
            // routes by it); plain HTTP goes through the proxy as such (HTTP_PROXY), where the
            // Host header is set to the name that was checked.
            Peeked::Flight(FirstFlight::NotTls) if sni::looks_like_http_request(first) => {
                let why = "plain HTTP inside a CONNECT tunnel (use the proxy for http:// URLs: HTTP_PROXY)";
                self.cut(why)
            }
            Peeked::Closed
            | Peeked::Flight(FirstFlight::NotTls)
            | Peeked::Flight(FirstFlight::ClientHello { server_name: None }) => Ok(()),
            Peeked::Flight(FirstFlight::ClientHello {
                server_name: Some(name),
            }) => {
                if sni::same_host(&name, &self.host) {
                    return Ok(());
                }
                let why = format!(
                    "TLS server name {name} differs from the CONNECT host {}",
                    self.host
                );
                self.shared.record_refusal(
                    &self.caller,
                    name.trim_end_matches('.'),
                    self.port,
                    &why,
                );
                cut(why)
            }
            Peeked::Flight(FirstFlight::Malformed(why)) => self.cut(why),
            Peeked::Unfinished | Peeked::Flight(FirstFlight::Incomplete) => {
                let why = "a ClientHello that did not complete";
                self.cut(why)
            }
        }
    }
}

/// Reads the client's first bytes: waits (without limit; the idle timeout applies) for the
/// first, then up to `complete_within` for a ClientHello they start to complete.
async fn read_first_flight<R: AsyncRead + Unpin>(
    client: &mut R,
    complete_within: Duration,
) -> io::Result<(Vec<u8>, Peeked)> {
    let mut bytes = Vec::with_capacity(2048);
    if client.read_buf(&mut bytes).await? == 0 {
        return Ok((bytes, Peeked::Closed));
    }
    let deadline = tokio::time::Instant::now() + complete_within;
    loop {
        match sni::inspect(&bytes) {
            FirstFlight::Incomplete => {}
            verdict => return Ok((bytes, Peeked::Flight(verdict))),
        }
        if bytes.len() >= MAX_FIRST_FLIGHT {
            return Ok((bytes, Peeked::Unfinished));
        }
        bytes.reserve(4096);
        match tokio::time::timeout_at(deadline, client.read_buf(&mut bytes)).await {
            Ok(Ok(0)) | Err(_) => return Ok((bytes, Peeked::Unfinished)),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// Absolute-form plain HTTP (`GET http://host/...`): checks the destination and forwards the
/// request in origin form over a new upstream connection.
async fn forward(
    request: Request<Incoming>,
    client_ip: IpAddr,
    shared: &Arc<Shared>,
    activity: &Activity,
) -> Response<ProxyBody> {
    let uri = request.uri().clone();
    if uri.scheme() != Some(&Scheme::HTTP) {
        return text_response(
            StatusCode::BAD_REQUEST,
            "recac egress: only http:// URLs are forwarded; use CONNECT for https\n",
        );
    }
    let Some(host) = uri.host() else {
        return text_response(
            StatusCode::BAD_REQUEST,
            "recac egress: the URL has no host\n",
        );
    };
    let port = uri.port_u16().unwrap_or(80);
    let caller = shared.identify(client_ip).await;
    if !permits(&caller.rules, host, port) {
        shared.record_refusal(&caller, host, port, "not on the allow-list");
        return refusal_response(host, port, !caller.known);
    }
    match send_upstream(request, &uri, host, port, &caller.rules, shared, activity).await {
        Ok(response) => response,
        Err(e @ UpstreamError::Internal { .. }) => {
            shared.record_refusal(&caller, host, port, &e.to_string());
            refusal_response(host, port, !caller.known)
        }
        Err(e) => {
            tracing::debug!(client = %caller.name, error = %e, "egress proxy: forwarding failed");
            text_response(StatusCode::BAD_GATEWAY, format!("recac egress: {e}\n"))
        }
    }
}

async fn send_upstream(
    request: Request<Incoming>,
    uri: &Uri,
    host: &str,
    port: u16,
    rules: &[EgressRule],
    shared: &Arc<Shared>,
    activity: &Activity,
) -> Result<Response<ProxyBody>, UpstreamError> {
    let target = format!("{host}:{port}");
    let request_error = |reason: String| UpstreamError::Request {
        target: target.clone(),
        reason,
    };
    let origin_form: Uri = uri
        .path_and_query()
        .map_or("/", |path| path.as_str())
        .parse()
        .map_err(|e| request_error(format!("{e}")))?;
    // Host names what was checked: a different Host header could make a virtual-hosting
    // upstream serve a name that is not on the list.
    let host_header = match uri.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    let host_header =
        HeaderValue::from_str(&host_header).map_err(|e| request_error(format!("{e}")))?;

    let (mut parts, body) = request.into_parts();
    parts.uri = origin_form;
    parts.version = Version::HTTP_11;
    remove_hop_by_hop(&mut parts.headers);
    parts.headers.insert(header::HOST, host_header);

    let stream = connect_upstream(host, port, shared.settings.connect_timeout, rules).await?;
    let io = TokioIo::new(Tracked::new(stream, activity.clone()));
    let http_error = |source| UpstreamError::Http {
        target: target.clone(),
        source,
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(http_error)?;
    let shutdown = shared.shutdown.clone();
    shared.tasks.spawn(async move {
        tokio::select! {
            result = connection => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "egress proxy: upstream HTTP connection failed");
                }
            }
            () = shutdown.cancelled() => {}
        }
    });
    let timeout = shared.settings.idle_timeout;
    let response = tokio::time::timeout(
        timeout,
        sender.send_request(Request::from_parts(parts, body)),
    )
    .await
    .map_err(|_| UpstreamError::ResponseTimeout {
        target: target.clone(),
        timeout,
    })?
    .map_err(http_error)?;
    let (mut parts, body) = response.into_parts();
    remove_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, body.boxed()))
}

/// Removes the headers that describe one hop (and those the Connection header names), which a
/// proxy must not pass on. Transfer-Encoding goes too: hyper frames each hop's body itself.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("proxy-connection"),
        HeaderName::from_static("keep-alive"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed_with_those_connection_names() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, X-Secret-Hop"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic abc"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("x-secret-hop", "1"),
            ("authorization", "Bearer end-to-end"),
            ("content-length", "3"),
        ] {
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        remove_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort();
        assert_eq!(left, ["authorization", "content-length"]);
    }
}
