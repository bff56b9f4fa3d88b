//! Jira webhooks as hints: a verified delivery makes the sources it may concern poll now.
//! The payload is never acted on; the poll reads the truth from the API.
//!
//! Checks, in order: the body's size (413), the `X-Hub-Signature: sha256=<hex>` HMAC of
//! the raw body against the shared secret, compared in constant time (401 when missing
//! or wrong, and nothing else happens), replays by `X-Atlassian-Webhook-Identifier`
//! (200, nothing happens twice), then the payload (400 when it is not JSON).
//!
//! Several replicas: each answers deliveries and pokes its own sources; only a replica in a
//! term polls, so the one allowed to write acts. A standby's poke is kept until its next
//! term starts, which polls at once anyway. Leader election can forward pokes to the
//! leader through [`PollTriggers`] (the hook left for it).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tracing::{debug, warn};

use crate::config::SourceConfig;
use crate::controller::PollTriggers;
use crate::metrics::SourceMetrics;

/// Delivery identifiers remembered for replay detection.
const REPLAY_WINDOW: usize = 10_000;

/// What the endpoint needs.
#[derive(Clone)]
pub struct WebhookSetup {
    pub path: String,
    pub secret: Vec<u8>,
    pub max_body_bytes: usize,
}

impl std::fmt::Debug for WebhookSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSetup")
            .field("path", &self.path)
            .field("secret", &"***")
            .field("max_body_bytes", &self.max_body_bytes)
            .finish()
    }
}

/// Verifies `sha256=<hex>` against the HMAC-SHA256 of `body` (constant-time compare).
pub fn verify_signature(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(hex) = header.and_then(|h| h.trim().strip_prefix("sha256=")) else {
        return false;
    };
    let Some(signature) = decode_hex(hex) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&signature).is_ok()
}

/// The header value Jira would send for `body`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap_or_else(|_| {
        // HMAC accepts keys of any length.
        unreachable!("HMAC key")
    });
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    format!(
        "sha256={}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Recently seen delivery ids, oldest dropped first.
#[derive(Default)]
struct Replays {
    order: VecDeque<String>,
    seen: HashSet<String>,
}

impl Replays {
    /// `false` when `id` was seen before.
    fn first_time(&mut self, id: &str) -> bool {
        if self.seen.contains(id) {
            return false;
        }
        if self.order.len() >= REPLAY_WINDOW
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        self.order.push_back(id.to_string());
        self.seen.insert(id.to_string());
        true
    }
}

struct Hook {
    secret: Vec<u8>,
    max_body_bytes: usize,
    triggers: PollTriggers,
    /// Each source's name and project (`None`: a JQL source, which any ticket may concern).
    sources: Vec<(String, Option<String>)>,
    replays: Mutex<Replays>,
    metrics: SourceMetrics,
}

/// The sources a delivery about a ticket of `project` may concern.
pub fn concerned(sources: &[(String, Option<String>)], project: Option<&str>) -> Vec<String> {
    sources
        .iter()
        .filter(|(_, p)| match (p, project) {
            (Some(p), Some(project)) => p == project,
            _ => true,
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// The webhook route, to merge into the admin router.
pub fn router(
    setup: WebhookSetup,
    sources: &[SourceConfig],
    triggers: PollTriggers,
    metrics: SourceMetrics,
) -> Router {
    let hook = Arc::new(Hook {
        secret: setup.secret,
        max_body_bytes: setup.max_body_bytes,
        triggers,
        sources: sources
            .iter()
            .map(|s| (s.name.clone(), s.project.clone()))
            .collect(),
        replays: Mutex::new(Replays::default()),
        metrics,
    });
    Router::new()
        .route(&setup.path, post(deliver))
        .with_state(hook)
}

async fn deliver(
    State(hook): State<Arc<Hook>>,
    headers: HeaderMap,
    body: Body,
) -> (StatusCode, &'static str) {
    let outcome = |o: &str| hook.metrics.webhook_outcome(o);
    let Ok(body) = axum::body::to_bytes(body, hook.max_body_bytes).await else {
        outcome("too_large");
        return (StatusCode::PAYLOAD_TOO_LARGE, "body too large\n");
    };
    let signature = headers.get("x-hub-signature").and_then(|v| v.to_str().ok());
    if !verify_signature(&hook.secret, &body, signature) {
        outcome("unauthorized");
        warn!(
            signed = signature.is_some(),
            "webhook delivery refused: bad or missing signature"
        );
        return (StatusCode::UNAUTHORIZED, "bad or missing signature\n");
    }
    if let Some(id) = headers
        .get("x-atlassian-webhook-identifier")
        .and_then(|v| v.to_str().ok())
    {
        let first = hook
            .replays
            .lock()
            .map(|mut r| r.first_time(id))
            .unwrap_or(true);
        if !first {
            outcome("duplicate");
            return (StatusCode::OK, "already received\n");
        }
    }
    let Ok(payload) = serde_json::from_slice::<Value>(&body) else {
        outcome("malformed");
        return (StatusCode::BAD_REQUEST, "body is not JSON\n");
    };
    let event = payload
        .get("webhookEvent")
        .and_then(Value::as_str)
        .unwrap_or("");
    // A new or edited comment may be a command on a ticket this source worked on.
    if !matches!(
        event,
        "jira:issue_created" | "jira:issue_updated" | "comment_created" | "comment_updated"
    ) {
        outcome("ignored");
        return (StatusCode::ACCEPTED, "ignored\n");
    }
    let issue = payload.get("issue");
    let project = issue
        .and_then(|i| i.pointer("/fields/project/key"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| {
            issue
                .and_then(|i| i.get("key"))
                .and_then(Value::as_str)
                .and_then(|k| k.split_once('-'))
                .map(|(p, _)| p.to_string())
        });
    for source in concerned(&hook.sources, project.as_deref()) {
        debug!(source, event, "webhook pokes source");
        hook.triggers.poke(&source);
    }
    outcome("accepted");
    (StatusCode::ACCEPTED, "accepted\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        let body = br#"{"webhookEvent":"jira:issue_updated"}"#;
        let good = sign(b"s3cret", body);
        assert!(verify_signature(b"s3cret", body, Some(&good)));
        assert!(!verify_signature(b"other", body, Some(&good)));
        assert!(!verify_signature(b"s3cret", b"{}", Some(&good)));
        assert!(!verify_signature(b"s3cret", body, None));
        assert!(!verify_signature(b"s3cret", body, Some("sha1=abcd")));
        assert!(!verify_signature(b"s3cret", body, Some("sha256=zz")));
    }

    #[test]
    fn replays_and_routing() {
        let mut r = Replays::default();
        assert!(r.first_time("a"));
        assert!(!r.first_time("a"));
        let sources = vec![
            ("ops".to_string(), Some("OPS".to_string())),
            ("any".to_string(), None),
        ];
        assert_eq!(concerned(&sources, Some("OPS")), vec!["ops", "any"]);
        assert_eq!(concerned(&sources, Some("WEB")), vec!["any"]);
        assert_eq!(concerned(&sources, None), vec!["ops", "any"]);
    }
}
