//! The Jira source controller: every ready ticket becomes exactly one AgentTask, claimed
//! once in Jira.
//!
//! Pure parts: [`config`], [`query`] (JQL), [`repo`] (repository resolution), [`prompt`],
//! [`task`] (the AgentTask), [`decide`] (runs, triggers, claims; the exactly-once argument
//! is in its docs). I/O: [`controller`] (the component), [`webhook`] (Jira webhooks as
//! hints to poll now), [`preview`] (what would be claimed, writing nothing).

pub mod budget;
pub mod commands;
pub mod config;
pub mod controller;
pub mod conversation;
pub mod decide;
pub mod ledger;
pub mod metrics;
pub mod plan;
pub mod preview;
pub mod prompt;
pub mod query;
pub mod repo;
pub mod setup;
pub mod task;
pub mod webhook;

pub use config::{SourceConfig, WebhookConfig, validate_sources};
pub use controller::{PollTriggers, SourceController, SourceParts, StepHook};
pub use metrics::SourceMetrics;
pub use setup::{SourcesSetup, assemble};
pub use webhook::WebhookSetup;
