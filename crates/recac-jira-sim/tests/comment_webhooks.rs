//! Comments by other people (commands addressed to the bot) and the `comment_created`
//! webhook they cause, on Cloud and Data Center.

use std::collections::HashMap;
use std::time::Duration;

use hmac::{Hmac, Mac};
use recac_jira_sim::{
    BOT_ACCOUNT_ID, BOT_EMAIL, BOT_NAME, BOT_TOKEN, IssueSeed, JiraSim, UserDef, WebhookDelivery,
};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const SECRET: &[u8] = b"webhook-secret";
const ALICE_ACCOUNT_ID: &str = "70121:0c7d2f45-alice";

/// One HTTP request as the receiver saw it.
struct Received {
    request_line: String,
    /// Header names lower-cased.
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("webhook body is JSON")
    }
}

/// A minimal webhook receiver: reads one request per connection and answers 200.
struct Receiver {
    url: String,
    requests: mpsc::UnboundedReceiver<Received>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!(
            "http://{}/jira/webhook",
            listener.local_addr().expect("addr")
        );
        let (tx, requests) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let Some(request) = read_request(&mut stream).await else {
                    continue;
                };
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                let _ = tx.send(request);
            }
        });
        Receiver { url, requests }
    }

    async fn next(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(10), self.requests.recv())
            .await
            .expect("a webhook within 10 s")
            .expect("receiver running")
    }

    async fn nothing_more(&mut self) {
        let more = tokio::time::timeout(Duration::from_millis(300), self.requests.recv()).await;
        assert!(more.is_err(), "no further webhook expected");
    }
}

async fn read_request(stream: &mut TcpStream) -> Option<Received> {
    let mut data = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(data[..head_end].to_vec()).ok()?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next()?.to_string();
    let headers: HashMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers.get("content-length")?.parse().ok()?;
    let mut body = data[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Some(Received {
        request_line,
        headers,
        body,
    })
}

fn assert_signed(request: &Received) {
    let header = request.header("x-hub-signature").expect("signature header");
    let hex = header.strip_prefix("sha256=").expect("sha256= prefix");
    assert!(
        hex.chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
        "{header}"
    );
    let signature: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).expect("key");
    mac.update(&request.body);
    assert!(mac.verify_slice(&signature).is_ok(), "bad signature");
}

fn alice() -> UserDef {
    UserDef {
        account_id: ALICE_ACCOUNT_ID.into(),
        name: "alice".into(),
        display_name: "Alice Liddell".into(),
        email: "alice@example.com".into(),
        token: None,
        pat: None,
        permissions: None,
    }
}

fn add_ticket(sim: &JiraSim) -> String {
    sim.add_issue(IssueSeed {
        project: "OPS".into(),
        summary: "Build is red".into(),
        labels: vec!["recac-agent".into()],
        created: Some("2025-01-01T00:00:00Z".into()),
        ..Default::default()
    })
}

async fn get(sim: &JiraSim, login: &str, path: &str) -> Value {
    let response = reqwest::Client::new()
        .get(format!("{}{path}", sim.url()))
        .basic_auth(login, Some(BOT_TOKEN))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status().as_u16(), 200, "{path}");
    response.json().await.expect("JSON")
}

async fn deliveries(sim: &JiraSim, count: usize) -> Vec<WebhookDelivery> {
    for _ in 0..200 {
        let done = sim.webhook_deliveries();
        if done.len() >= count {
            return done;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "expected {count} deliveries: {:?}",
        sim.webhook_deliveries()
    );
}

#[tokio::test]
async fn cloud_mention_reads_in_both_forms_and_signed_webhook_arrives() {
    let sim = JiraSim::cloud().await.expect("sim");
    sim.add_user(alice());
    let key = add_ticket(&sim);
    let mut receiver = Receiver::start().await;
    sim.set_webhook(&receiver.url, Some(SECRET.to_vec()));

    let id = sim.comment_mentioning_as(&key, "alice@example.com", BOT_EMAIL, "/recac retry");
    assert!(!id.is_empty());
    let mention = json!({"type": "mention", "attrs": {"id": BOT_ACCOUNT_ID, "text": "@recac bot"}});

    let v3 = get(
        &sim,
        BOT_EMAIL,
        &format!("/rest/api/3/issue/{key}/comment/{id}"),
    )
    .await;
    assert_eq!(
        v3["body"]["content"][0]["content"],
        json!([mention, {"type": "text", "text": " /recac retry"}])
    );
    assert_eq!(v3["author"]["accountId"], ALICE_ACCOUNT_ID);
    assert_eq!(v3["created"], v3["updated"]);
    let v2 = get(
        &sim,
        BOT_EMAIL,
        &format!("/rest/api/2/issue/{key}/comment/{id}"),
    )
    .await;
    assert_eq!(
        v2["body"],
        format!("[~accountid:{BOT_ACCOUNT_ID}] /recac retry")
    );
    let issue = get(
        &sim,
        BOT_EMAIL,
        &format!("/rest/api/3/issue/{key}?fields=updated"),
    )
    .await;
    assert!(
        !issue["fields"]["updated"]
            .as_str()
            .expect("updated")
            .starts_with("2025-01-01"),
        "the comment moves updated: {issue}"
    );

    let request = receiver.next().await;
    assert!(
        request.request_line.starts_with("POST /jira/webhook "),
        "{}",
        request.request_line
    );
    assert!(
        request
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json"))
    );
    assert_signed(&request);
    let first_identifier = request
        .header("x-atlassian-webhook-identifier")
        .expect("identifier")
        .to_string();
    let event = request.json();
    assert_eq!(event["webhookEvent"], "comment_created");
    assert!(event["timestamp"].as_i64().is_some_and(|ms| ms > 0));
    assert_eq!(event["comment"]["id"], id.as_str());
    assert_eq!(event["comment"]["author"]["accountId"], ALICE_ACCOUNT_ID);
    assert_eq!(event["comment"]["author"]["displayName"], "Alice Liddell");
    assert_eq!(event["comment"]["body"]["type"], "doc");
    assert_eq!(
        event["comment"]["body"]["content"][0]["content"][0],
        mention
    );
    assert!(event["comment"]["created"].is_string());
    assert_eq!(event["issue"]["key"], key.as_str());
    assert!(event["issue"]["id"].is_string());
    assert_eq!(event["issue"]["fields"]["project"]["key"], "OPS");
    assert_eq!(event["issue"]["fields"]["summary"], "Build is red");

    // A comment made through the REST API is announced too, with its own identifier.
    let response = reqwest::Client::new()
        .post(format!("{}/rest/api/3/issue/{key}/comment", sim.url()))
        .basic_auth(BOT_EMAIL, Some(BOT_TOKEN))
        .json(&json!({"body": {"type": "doc", "version": 1, "content": [
            {"type": "paragraph", "content": [{"type": "text", "text": "On it."}]}]}}))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status().as_u16(), 201);
    let posted: Value = response.json().await.expect("JSON");
    let request = receiver.next().await;
    assert_signed(&request);
    assert_ne!(
        request.header("x-atlassian-webhook-identifier"),
        Some(first_identifier.as_str())
    );
    let event = request.json();
    assert_eq!(event["comment"]["id"], posted["id"]);
    assert_eq!(event["comment"]["author"]["accountId"], BOT_ACCOUNT_ID);

    let done = deliveries(&sim, 2).await;
    let mut comment_ids: Vec<&str> = done.iter().map(|d| d.comment_id.as_str()).collect();
    comment_ids.sort();
    let posted_id = posted["id"].as_str().expect("id");
    let mut expected = vec![id.as_str(), posted_id];
    expected.sort();
    assert_eq!(comment_ids, expected);
    assert!(
        done.iter()
            .all(|d| d.event == "comment_created" && d.issue_key == key && d.status == 200)
    );

    sim.clear_webhook();
    assert!(!sim.comment_as(&key, "alice", "thanks").is_empty());
    receiver.nothing_more().await;
    assert_eq!(sim.webhook_deliveries().len(), 2);
}

#[tokio::test]
async fn datacenter_mention_is_wiki_and_signed_webhook_arrives() {
    let sim = JiraSim::datacenter().await.expect("sim");
    sim.add_user(alice());
    let key = add_ticket(&sim);
    let mut receiver = Receiver::start().await;
    sim.set_webhook(&receiver.url, Some(SECRET.to_vec()));

    let id = sim.comment_mentioning_as(&key, "alice", BOT_NAME, "/recac retry");
    assert!(!id.is_empty());
    let comment = get(
        &sim,
        BOT_NAME,
        &format!("/rest/api/2/issue/{key}/comment/{id}"),
    )
    .await;
    assert_eq!(comment["body"], format!("[~{BOT_NAME}] /recac retry"));
    assert_eq!(comment["author"]["name"], "alice");

    let request = receiver.next().await;
    assert_signed(&request);
    assert!(request.header("x-atlassian-webhook-identifier").is_some());
    let event = request.json();
    assert_eq!(event["webhookEvent"], "comment_created");
    assert_eq!(event["comment"]["id"], id.as_str());
    assert_eq!(
        event["comment"]["body"],
        format!("[~{BOT_NAME}] /recac retry")
    );
    assert_eq!(event["comment"]["author"]["name"], "alice");
    assert_eq!(event["issue"]["key"], key.as_str());
    assert_eq!(event["issue"]["fields"]["project"]["key"], "OPS");

    let plain = sim.comment_as(&key, "alice", "no mention here");
    let event = receiver.next().await.json();
    assert_eq!(event["comment"]["id"], plain.as_str());
    assert_eq!(event["comment"]["body"], "no mention here");
    assert_eq!(deliveries(&sim, 2).await.len(), 2);
}

#[tokio::test]
async fn unknown_people_and_unreachable_receivers() {
    let sim = JiraSim::cloud().await.expect("sim");
    let key = add_ticket(&sim);
    assert_eq!(sim.comment_as(&key, "nobody", "hi"), "");
    assert_eq!(sim.comment_as("OPS-99", BOT_EMAIL, "hi"), "");
    assert_eq!(
        sim.comment_mentioning_as(&key, BOT_EMAIL, "nobody", "hi"),
        ""
    );

    // A port nobody listens on: the delivery is recorded as failed, with status 0.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/", closed.local_addr().expect("addr"));
    drop(closed);
    sim.set_webhook(&url, None);
    let id = sim.comment_as(&key, BOT_EMAIL, "hello");
    let done = deliveries(&sim, 1).await;
    assert_eq!(done[0].comment_id, id);
    assert_eq!(done[0].status, 0);
}
