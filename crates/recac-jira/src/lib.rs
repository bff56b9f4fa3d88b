//! Jira client for recac: Jira Cloud (REST v3) and Data Center (REST v2)
//! behind one API.
//!
//! Pure logic lives in its own modules so it can be tested without I/O:
//! [`jql`] (quoting), [`adf`] (comment bodies and truncation),
//! [`transition`] (resolution), [`retry`] (the retry decision). The I/O is in
//! [`client`].

pub mod adf;
pub mod client;
pub mod config;
pub mod error;
pub mod jql;
pub mod model;
pub mod retry;
pub mod secret;
pub mod transition;

pub use client::{DEFAULT_FIELDS, JiraClient, TicketRead, WriteGate};
pub use config::{AuthConfig, ConfigError, Credentials, Flavor, JiraConfig};
pub use error::{JiraError, JiraErrorBody};
pub use model::{ChangeHistory, ChangeItem, Comment, Issue, Status, Transition, User};
pub use secret::Secret;
