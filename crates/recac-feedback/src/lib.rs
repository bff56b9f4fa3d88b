//! The feedback controller: each AgentTask with a Jira ticket gets its outcome, and
//! optionally its dispatch and retries, reported on the ticket exactly once: by default in
//! one live comment per ticket, edited as its runs progress (`feedback.comments: live`), or
//! in a comment per report (`perOutcome`).
//!
//! - [`report`] decides which reports a task is owed (pure);
//! - [`runs`] finds a ticket's runs and where each one is, [`live`] makes the ticket's
//!   live comment from them and [`pacing`] decides when it is written (pure);
//! - [`observe`], [`render`] and [`comment`] make their text (ADF on Cloud, wiki markup on
//!   Data Center), each with a hidden [`comment::marker`] that is looked for before posting;
//!   [`cut_short`] says how a run cut short by its deadline or budget goes on, and [`spend`]
//!   what the runs spent;
//! - [`logtail`] removes credentials from the quoted log and cuts it to fit;
//! - [`plan`] decides the ticket's transition and labels per outcome (pure);
//! - [`status`] is this controller's part of the task's status and how deliveries change it
//!   (pure);
//! - [`controller`] is the component: it observes, delivers and records in `status.feedback`;
//!   [`live_delivery`] is its part for live comments.

pub mod comment;
pub mod config;
pub mod controller;
pub mod cut_short;
pub mod live;
pub mod live_delivery;
pub mod logtail;
pub mod metrics;
pub mod observe;
pub mod pacing;
pub mod plan;
pub mod render;
pub mod report;
pub mod runs;
pub mod spend;
pub mod status;
pub mod template;

pub use config::{CommentMode, FeedbackConfig};
pub use controller::{FIELD_MANAGER, FeedbackController, FeedbackParts, FeedbackSetup};
pub use metrics::FeedbackMetrics;
