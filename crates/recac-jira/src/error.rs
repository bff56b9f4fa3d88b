//! Typed errors. Every variant carries the operation and, where there is
//! one, the issue key. Nothing here ever holds a credential.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::config::ConfigError;

/// Jira's error body: `{"errorMessages": [...], "errors": {"field": "message"}}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct JiraErrorBody {
    pub error_messages: Vec<String>,
    pub errors: BTreeMap<String, String>,
}

impl JiraErrorBody {
    /// Parses an error reply leniently: a non-JSON body becomes one message
    /// (shortened), so that nothing is lost and nothing panics.
    pub fn parse(body: &[u8]) -> JiraErrorBody {
        if let Ok(parsed) = serde_json::from_slice::<JiraErrorBody>(body) {
            return parsed;
        }
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        if text.is_empty() {
            return JiraErrorBody::default();
        }
        let short: String = text.chars().take(300).collect();
        JiraErrorBody {
            error_messages: vec![short],
            errors: BTreeMap::new(),
        }
    }
}

impl fmt::Display for JiraErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self.error_messages.clone();
        parts.extend(self.errors.iter().map(|(k, v)| format!("{k}: {v}")));
        if parts.is_empty() {
            f.write_str("(no message)")
        } else {
            f.write_str(&parts.join("; "))
        }
    }
}

/// Where an error happened: operation name and issue key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Context {
    pub op: &'static str,
    pub issue: Option<String>,
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.issue {
            Some(key) => write!(f, "{} {key}", self.op),
            None => f.write_str(self.op),
        }
    }
}

/// What kind of transport failure happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportKind {
    /// The connection could not be made: the request never reached Jira.
    Connect,
    /// No complete reply within the request timeout.
    Timeout,
    /// Anything else: connection reset mid-request, TLS, body read errors.
    Other,
}

#[derive(Debug, thiserror::Error)]
pub enum JiraError {
    /// Jira answered with a non-success status.
    #[error("{ctx}: Jira answered HTTP {status}: {body}")]
    Api {
        ctx: Context,
        status: u16,
        body: JiraErrorBody,
        /// The `Retry-After` of a 429/503, when the call gave up on it.
        retry_after: Option<Duration>,
    },
    /// The request did not get a reply.
    #[error("{ctx}: {kind:?} error talking to Jira: {message}")]
    Transport {
        ctx: Context,
        kind: TransportKind,
        message: String,
    },
    /// Jira replied with a success status but a body this client cannot read.
    #[error("{ctx}: malformed reply from Jira (HTTP {status}): {message}")]
    Malformed {
        ctx: Context,
        status: u16,
        message: String,
    },
    /// No transition matches the configured id / name / target status.
    #[error("{issue}: no transition matches {wanted:?}; available: {}", if available.is_empty() { "none".to_string() } else { available.join(", ") })]
    NoSuchTransition {
        issue: String,
        wanted: String,
        available: Vec<String>,
    },
    /// The retry budget ran out; `last` is the final failure.
    #[error("{ctx}: gave up after {attempts} tries: {last}")]
    RetriesExhausted {
        ctx: Context,
        attempts: u32,
        last: Box<JiraError>,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The caller passed something that cannot be sent.
    #[error("{ctx}: invalid input: {message}")]
    InvalidInput { ctx: Context, message: String },
    /// A write not sent because this replica may not write (it does not lead).
    #[error("{ctx}: not sent: this replica is not the leader")]
    NotLeader { ctx: Context },
}

impl JiraError {
    /// The HTTP status of the (last) reply, if there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            JiraError::Api { status, .. } | JiraError::Malformed { status, .. } => Some(*status),
            JiraError::RetriesExhausted { last, .. } => last.status(),
            _ => None,
        }
    }

    /// The issue key the error is about, if any.
    pub fn issue(&self) -> Option<&str> {
        match self {
            JiraError::Api { ctx, .. }
            | JiraError::Transport { ctx, .. }
            | JiraError::Malformed { ctx, .. }
            | JiraError::RetriesExhausted { ctx, .. }
            | JiraError::InvalidInput { ctx, .. }
            | JiraError::NotLeader { ctx } => ctx.issue.as_deref(),
            JiraError::NoSuchTransition { issue, .. } => Some(issue),
            JiraError::Config(_) => None,
        }
    }

    /// Jira's error body, for an `Api` error (or the last one of a retry).
    pub fn body(&self) -> Option<&JiraErrorBody> {
        match self {
            JiraError::Api { body, .. } => Some(body),
            JiraError::RetriesExhausted { last, .. } => last.body(),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }
}
