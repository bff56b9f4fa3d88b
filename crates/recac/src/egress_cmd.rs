//! `recac egress-proxy`: the egress proxy agent pods reach the network through when the
//! operator's `agent.egress.mode` is `allowList`. In a cluster it tells agent pods apart by
//! their address and applies each one's allow-list from its pod annotation (it needs to
//! list and watch pods labelled `app=recac-agent`); with `--allow` it applies one list to
//! every client and needs no cluster (for running agents by hand). The work is in
//! `recac_egress`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use recac_api::egress::EgressRule;
use recac_egress::{BlockedLog, PodPolicy, Policy, ProxySettings, StaticPolicy};
use tokio_util::sync::CancellationToken;

#[derive(Args, Debug)]
pub struct EgressProxyArgs {
    /// Where the proxy listens.
    #[arg(long, env = "RECAC_EGRESS_LISTEN", default_value = "0.0.0.0:3128")]
    listen: SocketAddr,
    /// The namespaces whose agent pods may use the proxy (comma-separated); empty: every
    /// namespace. A pod it does not know gets nothing.
    #[arg(
        long,
        env = "RECAC_EGRESS_NAMESPACES",
        value_delimiter = ',',
        default_value = ""
    )]
    namespaces: Vec<String>,
    /// One allow-list for every client instead of the pods' annotations (no cluster needed).
    #[arg(long = "allow", value_name = "RULE")]
    allow: Vec<String>,
    /// How long connecting to a destination may take, in seconds.
    #[arg(
        long,
        env = "RECAC_EGRESS_CONNECT_TIMEOUT_SECONDS",
        default_value_t = 10
    )]
    connect_timeout_seconds: u64,
    /// A tunnel with no bytes either way for this long is closed, in seconds.
    #[arg(long, env = "RECAC_EGRESS_IDLE_TIMEOUT_SECONDS", default_value_t = 600)]
    idle_timeout_seconds: u64,
    /// After SIGTERM, how long the proxy goes on serving before it closes its tunnels, in
    /// seconds: the cluster stops sending it new connections meanwhile, and short exchanges
    /// in flight end.
    #[arg(long, env = "RECAC_EGRESS_DRAIN_SECONDS", default_value_t = 10)]
    drain_seconds: u64,
}

#[derive(Args, Debug)]
pub struct EgressConnectArgs {
    /// The egress proxy, `http://host:port`.
    #[arg(long, env = "RECAC_EGRESS_PROXY")]
    proxy: String,
    /// The destination's host.
    host: String,
    /// The destination's port.
    port: u16,
}

/// Relays a tunnel through the proxy over standard input and output: exit 0 when it ends,
/// 1 when the proxy refuses it or cannot be reached (the reason on standard error).
pub fn connect(args: EgressConnectArgs) -> ExitCode {
    match recac_agent::egress::connect_stdio(&args.proxy, &args.host, args.port) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("recac egress-connect: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the proxy until SIGTERM or SIGINT: exit 0 then, 1 when it cannot start.
pub fn run(args: EgressProxyArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: EgressProxyArgs) -> Result<(), String> {
    let stop = CancellationToken::new();
    tokio::spawn(crate::signals::cancel_on_signal(
        stop.clone(),
        Duration::from_secs(args.drain_seconds),
        "the proxy ends when killed",
    ));
    let policy: Arc<dyn Policy> = if args.allow.is_empty() {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| format!("cannot reach the Kubernetes API to read agent pods: {e}"))?;
        let namespaces: Vec<String> = args
            .namespaces
            .iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect();
        let (policy, driver) = PodPolicy::start(client, namespaces)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(driver);
        tokio::select! {
            () = policy.wait_ready() => {}
            () = stop.cancelled() => return Ok(()),
        }
        tracing::info!(pods = policy.pods(), "agent pods listed");
        Arc::new(policy)
    } else {
        let rules = args
            .allow
            .iter()
            .enumerate()
            .map(|(i, text)| {
                text.parse::<EgressRule>()
                    .map_err(|e| format!("--allow (entry {}): {e}", i + 1))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Arc::new(StaticPolicy::new("every client", rules))
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    tracing::info!(address = %args.listen, "egress proxy listening");
    let settings = ProxySettings {
        connect_timeout: Duration::from_secs(args.connect_timeout_seconds),
        idle_timeout: Duration::from_secs(args.idle_timeout_seconds),
        ..ProxySettings::default()
    };
    recac_egress::serve(
        listener,
        policy,
        Arc::new(BlockedLog::default()),
        settings,
        stop,
    )
    .await
    .map_err(|e| format!("the egress proxy stopped: {e}"))
}
