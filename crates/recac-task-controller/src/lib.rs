//! The task controller: reconciles each AgentTask into one `batch/v1` Job per attempt and
//! keeps the task's status true to what Kubernetes reports. It is one component of the
//! operator runtime ([`recac_runtime`]).
//!
//! Each reconcile reads as observe (the shared caches) → [`decide`] (pure) → act
//! ([`controller`]). The Job is built by [`job_builder`] from small named parts; the
//! concurrency cap, and the order in which a ticket's runs go, are the index in [`admission`].
//! What tasks spend on their models, and what is left of their budgets, is counted in
//! [`budget`] (money in integer micro-units); what the tasks of a namespace may spend per day
//! and month, in [`namespace_budget`].

pub mod admission;
pub mod budget;
pub mod config;
pub mod controller;
pub mod decide;
pub mod egress;
pub mod job_builder;
pub mod metrics;
pub mod namespace_budget;
pub mod naming;
pub mod observe;
pub mod orphans;

pub use config::{AgentDefaults, CaBundleRef, TaskControllerConfig};
pub use controller::{FIELD_MANAGER, TaskController, TaskControllerParts, owned_status};
