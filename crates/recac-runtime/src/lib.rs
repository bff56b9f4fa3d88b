//! The operator runtime: what every controller of recac runs on.
//!
//! - [`cache`]: shared, warm caches (one watch per kind) with readiness, kept on every
//!   replica whether or not it may write, their objects held compactly in a [`store`] (why
//!   not kube-runtime's reflector: see [`cache`]); each reader has its own inbox, so no
//!   reader misses a change or a deletion however slow it is;
//! - [`runner`]: runs a controller's reconciles over a cache's objects, with per-object
//!   backoff and the reconcile metrics of every controller;
//! - [`supervisor`]: runs the caches, the admin server and every [`Component`], each in terms
//!   granted by the [`Leadership`] signal, and turns any part's unexpected end into a clean,
//!   non-zero exit;
//! - [`election`]: leader election over a Lease, feeding the [`Leadership`] signal and the
//!   write fences of [`client`];
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz`;
//! - [`metrics`]: the shared registry and the kube client layer that counts API requests;
//! - [`memory`]: returns the heap memory freed after busy moments to the operating system;
//! - [`claims`]: claims the source settled, told to the task controller without a write;
//! - [`spend`], [`spend_ledger`]: spend per UTC period and budgets that hold new work (a
//!   source's, a namespace's), recorded once per task in a ConfigMap by compare-and-swap;
//! - [`events`], [`logging`], [`failpoint`], [`config`]: small shared pieces.

pub mod admin;
pub mod cache;
pub mod claims;
pub mod client;
pub mod clock;
pub mod config;
pub mod election;
pub mod events;
pub mod failpoint;
pub mod kinds;
pub mod leadership;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod runner;
pub mod spend;
pub mod spend_ledger;
pub mod status;
pub mod store;
pub mod supervisor;

pub use cache::{Cache, CacheChange, CacheHook, CacheSpec, Notice};
pub use leadership::{Leadership, LeadershipControl};
pub use metrics::MetricsRegistry;
pub use supervisor::{Component, ComponentError, Fatal, Health, Supervisor, Term};
