//! Webhook deliveries, as a Jira admin webhook makes them: one registered URL gets a
//! JSON POST per event, sent in the background so that the change that caused it is
//! answered without waiting. With a secret, the raw body is signed:
//! `X-Hub-Signature: sha256=<lowercase hex HMAC-SHA256>`. Each delivery carries its own
//! `X-Atlassian-Webhook-Identifier`. Deliveries are not retried.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::lock;

/// How long a receiver may take to answer before the delivery counts as failed.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// One webhook delivery the simulator made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookDelivery {
    /// `webhookEvent` of the payload, e.g. `comment_created`.
    pub event: String,
    pub issue_key: String,
    pub comment_id: String,
    /// The `X-Atlassian-Webhook-Identifier` sent.
    pub identifier: String,
    /// The status the receiver answered; 0 when it could not be reached in time.
    pub status: u16,
}

/// What an event is about, for the delivery record.
pub(crate) struct EventSubject {
    pub event: &'static str,
    pub issue_key: String,
    pub comment_id: String,
}

struct Target {
    url: String,
    secret: Option<Vec<u8>>,
}

pub(crate) struct Webhooks {
    target: Mutex<Option<Target>>,
    deliveries: Arc<Mutex<Vec<WebhookDelivery>>>,
    client: reqwest::Client,
    /// Deliveries run on the simulator's runtime, also when the event comes from a test
    /// thread outside it.
    runtime: tokio::runtime::Handle,
}

impl Webhooks {
    /// Must be called inside a Tokio runtime, which will run the deliveries.
    pub fn new() -> std::io::Result<Webhooks> {
        let client = reqwest::Client::builder()
            .timeout(DELIVERY_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("Atlassian Webhook HTTP Client")
            .build()
            .map_err(std::io::Error::other)?;
        Ok(Webhooks {
            target: Mutex::new(None),
            deliveries: Default::default(),
            client,
            runtime: tokio::runtime::Handle::try_current().map_err(std::io::Error::other)?,
        })
    }

    pub fn set_target(&self, url: &str, secret: Option<Vec<u8>>) {
        *lock(&self.target) = Some(Target {
            url: url.to_string(),
            secret,
        });
    }

    pub fn clear_target(&self) {
        *lock(&self.target) = None;
    }

    pub fn enabled(&self) -> bool {
        lock(&self.target).is_some()
    }

    pub fn deliveries(&self) -> Vec<WebhookDelivery> {
        lock(&self.deliveries).clone()
    }

    /// Sends `payload` to the registered URL in the background (nothing when none is).
    pub fn deliver(&self, subject: EventSubject, payload: &Value) {
        let (url, secret) = {
            let target = lock(&self.target);
            let Some(target) = target.as_ref() else {
                return;
            };
            (target.url.clone(), target.secret.clone())
        };
        let body = payload.to_string().into_bytes();
        let identifier = delivery_identifier();
        let mut request = self
            .client
            .post(url)
            .header("content-type", "application/json; charset=UTF-8")
            .header("x-atlassian-webhook-identifier", &identifier);
        if let Some(secret) = secret
            && let Some(header) = signature_header(&secret, &body)
        {
            request = request.header("x-hub-signature", header);
        }
        let deliveries = self.deliveries.clone();
        self.runtime.spawn(async move {
            let status = match request.body(body).send().await {
                Ok(response) => response.status().as_u16(),
                Err(e) => {
                    tracing::debug!(error = %e, "webhook delivery failed");
                    0
                }
            };
            lock(&deliveries).push(WebhookDelivery {
                event: subject.event.to_string(),
                issue_key: subject.issue_key,
                comment_id: subject.comment_id,
                identifier,
                status,
            });
        });
    }
}

/// `sha256=<hex>` of the HMAC-SHA256 of `body` under `secret`.
pub(crate) fn signature_header(secret: &[u8], body: &[u8]) -> Option<String> {
    // HMAC takes keys of any length, so this never fails in practice.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).ok()?;
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Some(format!("sha256={hex}"))
}

/// A fresh identifier in the UUID layout.
fn delivery_identifier() -> String {
    let n: u128 = rand::random();
    let hex = format!("{n:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_like_jira() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature_header(b"Jefe", b"what do ya want for nothing?").as_deref(),
            Some("sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        );
    }

    #[test]
    fn identifiers_differ() {
        let (a, b) = (delivery_identifier(), delivery_identifier());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
    }
}
