//! The egress proxy: what lets an agent pod reach only the hosts on its task's allow-list.
//!
//! # What it is
//!
//! A forward proxy that enforces the allow-list ([`recac_api::egress`]) **by host name**, for
//! the two ways HTTP clients use a proxy (`HTTPS_PROXY` / `HTTP_PROXY`):
//!
//! - `CONNECT host:port`: if allowed, the proxy connects and then moves bytes both ways. The
//!   tunnel is a byte pipe: the proxy holds no keys, never terminates or intercepts TLS, and
//!   the agent's TLS session is with the real server, certificate checks and all. There is no
//!   proxy CA to install in agent images and no way for the proxy to leak what the agent sends.
//! - Absolute-form plain HTTP (`GET http://host/path`): if allowed, forwarded in origin form
//!   with the hop-by-hop headers removed and `Host` set to the name that was checked.
//!
//! Refusals are `403` with `X-Recac-Egress: blocked`, logged (client, host and port; never paths
//! or headers, which may carry tokens) and counted per client; a client reads its own count at
//! [`recac_api::egress::BLOCKED_PATH`], so a task can report what its agent was denied.
//!
//! # Why by name, and what the SNI check adds
//!
//! The allow-list is written in names (`github.com`, `*.pypi.org`) and a proxy sees the name the
//! client asked for, before DNS: matching names needs no resolution and no IP lists of CDNs.
//! The proxy then resolves the name itself and connects to the address it checked; an address
//! of the proxy's own or its node's (loopback, link-local: a cloud's metadata endpoint) is
//! used only when a CIDR entry allows it, so a name whose DNS answer points there gets nowhere.
//! What a name check alone does not stop
//! is a client that connects to an allowed name and then, in its TLS ClientHello, asks that
//! server for another name (an edge that routes by SNI serves it). So after a CONNECT the proxy
//! reads the client's first flight, which is plaintext, and if it is a ClientHello whose SNI is
//! not the CONNECT host (case-insensitive, trailing dot ignored) it cuts the tunnel and records
//! the refusal under the SNI name. Fronting by the HTTP `Host` header *inside* TLS stays
//! invisible without decrypting, which the proxy deliberately does not do; many CDNs now reject
//! a `Host` that differs from the SNI. Encrypted Client Hello hides the real name behind an
//! outer one, which is the one checked. Plain HTTP inside a tunnel is cut (its `Host` header
//! could name anything behind a shared front); plain HTTP goes through the proxy as HTTP,
//! where the `Host` header is set to the name checked. The allow-list trusts the hosts on it:
//! an allowed host that is itself an open proxy reaches anything.
//!
//! # Why one shared proxy rather than a sidecar per pod
//!
//! A NetworkPolicy selects pods, not containers. A sidecar proxy in the agent's pod would need
//! the pod to reach the internet, and then so would any tool in the agent container that
//! ignores the proxy variables. With a shared Deployment, each agent pod's NetworkPolicy allows
//! only the proxy and the cluster's DNS pods, so a tool that ignores the proxy variables gets
//! nowhere, and the proxy pods are the only ones with a route out. The proxy tells clients
//! apart by their source address, the pod IP, which the cluster assigns and the agent cannot
//! choose ([`PodPolicy`] maps it to the allow-list in the annotation of a live pod that a Job
//! controls; whoever may create Jobs in the namespaces it serves is trusted for that list). One proxy for many pods pays its base resident set
//! once (about 5 MiB) plus about 20 KiB per open tunnel (`benches/proxy.rs`), where a sidecar
//! would pay the base in every pod.

mod activity;
mod blocked;
mod policy;
mod server;
mod sni;

pub use blocked::{BlockedLog, MAX_HOSTS_PER_CLIENT};
pub use policy::{
    AGENT_POD_SELECTOR, AnnotationError, Client, PodIndex, PodPolicy, PodPolicyError, Policy,
    StaticPolicy, index_pods, rules_from_annotations,
};
pub use server::{BLOCKED_HEADER, HEALTH_PATH, ProxySettings, serve};
