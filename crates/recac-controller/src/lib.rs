//! The task controller: reconciles each AgentTask into one `batch/v1` Job per attempt and
//! keeps the task's status true to what Kubernetes reports.
//!
//! The decisions are pure ([`decide`]); [`reconciler`] performs them against the API.

pub mod admission;
pub mod config;
pub mod decide;
pub mod http;
pub mod job_builder;
pub mod metrics;
pub mod naming;
pub mod observe;
pub mod reconciler;

pub use config::{AgentDefaults, ControllerConfig};
pub use reconciler::{Observed, Readiness, TaskController};
