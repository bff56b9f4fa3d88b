//! The feedback controller: each AgentTask with a Jira ticket gets its outcome, and
//! optionally its dispatch and retries, reported on the ticket exactly once.
//!
//! - [`report`] decides which reports a task is owed (pure);
//! - [`observe`], [`render`] and [`comment`] make their text (ADF on Cloud, wiki markup on
//!   Data Center), each with a hidden [`comment::marker`] that is looked for before posting;
//! - [`logtail`] removes credentials from the quoted log and cuts it to fit;
//! - [`plan`] decides the ticket's transition and labels per outcome (pure);
//! - [`status`] is this controller's part of the task's status and how deliveries change it
//!   (pure);
//! - [`controller`] is the component: it observes, delivers and records in `status.feedback`.

pub mod comment;
pub mod config;
pub mod controller;
pub mod logtail;
pub mod metrics;
pub mod observe;
pub mod plan;
pub mod render;
pub mod report;
pub mod status;
pub mod template;

pub use config::FeedbackConfig;
pub use controller::{FIELD_MANAGER, FeedbackController, FeedbackParts, FeedbackSetup};
pub use metrics::FeedbackMetrics;
