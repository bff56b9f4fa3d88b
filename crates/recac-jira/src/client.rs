//! The HTTP client: one API over Jira Cloud (REST v3) and Data Center (REST v2).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use futures::{Stream, TryStreamExt};
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::adf::{COMMENT_BUDGET, Doc};
use crate::config::{ConfigError, Credentials, Flavor, JiraConfig};
use crate::error::{Context, JiraError, JiraErrorBody, TransportKind};
use crate::model::{ChangeHistory, Comment, Issue, Transition, User};
use crate::retry::{Decision, Outcome, RetryPolicy, parse_retry_after};

/// Fields requested when the caller names none (Jira's default is only `id`).
pub const DEFAULT_FIELDS: &[&str] = &["summary", "status", "labels", "assignee", "updated"];

/// Largest issue property value Jira accepts (32 KiB).
pub const MAX_PROPERTY_BYTES: usize = 32 * 1024;

/// An issue as a claim reads it: fields, changelog (oldest first) and the transitions it
/// offers at the time of the read.
#[derive(Clone, Debug)]
pub struct TicketRead {
    pub issue: Issue,
    pub histories: Vec<ChangeHistory>,
    /// `None` when the reply carried no `transitions` (a Jira or proxy that does not expand
    /// them): ask [`JiraClient::transitions`] instead of taking it for "none available".
    pub transitions: Option<Vec<Transition>>,
}

/// A Jira client. Cheap to clone; `Debug` never shows the credentials.
#[derive(Clone)]
pub struct JiraClient {
    http: reqwest::Client,
    base: url::Url,
    flavor: Flavor,
    auth: HeaderValue,
    policy: RetryPolicy,
    page_size: u32,
    write_gate: Option<WriteGate>,
}

/// Says whether a write may be sent now (see [`JiraClient::with_write_gate`]).
pub type WriteGate = Arc<dyn Fn() -> bool + Send + Sync>;

impl fmt::Debug for JiraClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JiraClient")
            .field("base", &self.base.as_str())
            .field("flavor", &self.flavor)
            .field("auth", &"***")
            .field("policy", &self.policy)
            .field("page_size", &self.page_size)
            .field("write_gate", &self.write_gate.is_some())
            .finish()
    }
}

/// One request, described before it is sent (so that it can be re-sent).
struct Req<'a> {
    op: &'static str,
    issue: Option<&'a str>,
    method: Method,
    path: Vec<&'a str>,
    query: Vec<(&'static str, String)>,
    body: Option<Value>,
}

impl Req<'_> {
    /// Changes something in Jira (POST search is a read).
    fn writes(&self) -> bool {
        self.method != Method::GET && self.op != "search"
    }

    fn idempotent(&self) -> bool {
        // POST search is a read; other POSTs (comment, transition) are not.
        self.method != Method::POST || self.op == "search"
    }
}

fn transport_kind(e: &reqwest::Error) -> TransportKind {
    if e.is_connect() {
        TransportKind::Connect
    } else if e.is_timeout() {
        TransportKind::Timeout
    } else {
        TransportKind::Other
    }
}

/// The error and its causes, without the URL's query (it may hold JQL, not secrets, but is long).
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.without_url_ref().to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

trait WithoutUrl {
    fn without_url_ref(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_ref(&self) -> String {
        match self.url() {
            Some(url) => self.to_string().replace(url.as_str(), url.path()),
            None => self.to_string(),
        }
    }
}

fn jitter() -> f64 {
    rand::random::<f64>()
}

impl JiraClient {
    /// Validates the config, reads the credentials it points at and builds a client.
    pub fn new(cfg: &JiraConfig) -> Result<JiraClient, JiraError> {
        cfg.validate()?;
        let creds = cfg.credentials()?;
        JiraClient::with_credentials(cfg, creds)
    }

    /// Builds a client with credentials obtained elsewhere.
    pub fn with_credentials(cfg: &JiraConfig, creds: Credentials) -> Result<JiraClient, JiraError> {
        let base = cfg.parsed_url()?;
        let mut auth = match &creds {
            Credentials::Basic { user, token } => {
                let raw = format!("{user}:{}", token.expose());
                HeaderValue::from_str(&format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                ))
            }
            Credentials::Bearer { token } => {
                HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            }
        }
        .map_err(|_| ConfigError {
            key: "auth.tokenEnv".into(),
            message: "the credentials contain characters not allowed in an HTTP header".into(),
        })?;
        auth.set_sensitive(true);
        let timeout = Duration::from_secs(cfg.request_timeout_seconds.max(1));
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("recac-jira/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ConfigError {
                key: "url".into(),
                message: format!("cannot build the HTTP client: {}", describe(&e)),
            })?;
        Ok(JiraClient {
            http,
            base,
            flavor: cfg.flavor,
            auth,
            policy: RetryPolicy {
                max_attempts: cfg.max_retries + 1,
                max_retry_after: Duration::from_secs(cfg.max_retry_after_seconds),
                ..RetryPolicy::default()
            },
            page_size: cfg.page_size,
            write_gate: None,
        })
    }

    /// Sends a write (a comment, transition, edit, property) only while `gate` says so,
    /// checked before every attempt; otherwise the call fails with
    /// [`JiraError::NotLeader`] without reaching Jira. Reads are never gated.
    pub fn with_write_gate(mut self, gate: WriteGate) -> JiraClient {
        self.write_gate = Some(gate);
        self
    }

    /// Replaces the retry policy (tests use short backoff steps).
    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> JiraClient {
        self.policy = policy;
        self
    }

    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    pub fn base_url(&self) -> &url::Url {
        &self.base
    }

    fn url(&self, req: &Req<'_>) -> Result<url::Url, JiraError> {
        let mut url = self.base.clone();
        {
            let mut segs = url
                .path_segments_mut()
                .map_err(|_| JiraError::InvalidInput {
                    ctx: ctx(req.op, req.issue),
                    message: "the base URL cannot have a path".into(),
                })?;
            segs.pop_if_empty();
            let version = self.flavor.api_version().to_string();
            segs.extend(["rest", "api", version.as_str()]);
            segs.extend(req.path.iter());
        }
        if !req.query.is_empty() {
            let mut q = url.query_pairs_mut();
            for (k, v) in &req.query {
                q.append_pair(k, v);
            }
        }
        Ok(url)
    }

    /// Sends with retries; returns the status and body of a 2xx reply.
    async fn send(&self, req: Req<'_>) -> Result<(StatusCode, Vec<u8>), JiraError> {
        let url = self.url(&req)?;
        let idempotent = req.idempotent();
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            if req.writes()
                && let Some(gate) = &self.write_gate
                && !gate()
            {
                return Err(JiraError::NotLeader {
                    ctx: ctx(req.op, req.issue),
                });
            }
            let mut builder = self
                .http
                .request(req.method.clone(), url.clone())
                .header(AUTHORIZATION, self.auth.clone())
                .header(ACCEPT, "application/json");
            if let Some(body) = &req.body {
                builder = builder.json(body);
            }
            let started = std::time::Instant::now();
            let (err, outcome_status, retry_after_header, kind) = match builder.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let retry_after = resp
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    match resp.bytes().await {
                        Ok(body) => {
                            tracing::debug!(op = req.op, issue = req.issue, method = %req.method, path = url.path(), status = status.as_u16(), attempt, elapsed_ms = started.elapsed().as_millis() as u64, "jira request");
                            if status.is_success() {
                                return Ok((status, body.to_vec()));
                            }
                            let err = JiraError::Api {
                                ctx: ctx(req.op, req.issue),
                                status: status.as_u16(),
                                body: JiraErrorBody::parse(&body),
                                retry_after: retry_after.as_deref().and_then(parse_retry_after),
                            };
                            (err, Some(status.as_u16()), retry_after, None)
                        }
                        Err(e) => {
                            let kind = if e.is_timeout() {
                                TransportKind::Timeout
                            } else {
                                TransportKind::Other
                            };
                            (transport(&req, kind, &e), None, None, Some(kind))
                        }
                    }
                }
                Err(e) => {
                    let kind = transport_kind(&e);
                    (transport(&req, kind, &e), None, None, Some(kind))
                }
            };
            let outcome = match (outcome_status, kind) {
                (Some(status), _) => Outcome::Status {
                    status,
                    retry_after: retry_after_header.as_deref(),
                },
                (None, Some(TransportKind::Connect)) => Outcome::ConnectError,
                (None, Some(TransportKind::Timeout)) => Outcome::Timeout,
                _ => Outcome::Broken,
            };
            match self.policy.decide(outcome, attempt, idempotent, jitter()) {
                Decision::Retry(wait) => {
                    tracing::warn!(op = req.op, issue = req.issue, attempt, wait_ms = wait.as_millis() as u64, error = %err, "jira request failed; retrying");
                    tokio::time::sleep(wait).await;
                }
                Decision::GiveUp => {
                    // Wrap only failures that would have been retried with budget left.
                    let retryable = matches!(
                        RetryPolicy {
                            max_attempts: u32::MAX,
                            ..self.policy
                        }
                        .decide(outcome, attempt, idempotent, 0.0),
                        Decision::Retry(_)
                    );
                    if retryable && attempt > 1 {
                        return Err(JiraError::RetriesExhausted {
                            ctx: ctx(req.op, req.issue),
                            attempts: attempt,
                            last: Box::new(err),
                        });
                    }
                    return Err(err);
                }
            }
        }
    }

    async fn send_json(&self, req: Req<'_>) -> Result<Value, JiraError> {
        let (op, issue) = (req.op, req.issue.map(str::to_string));
        let (status, body) = self.send(req).await?;
        serde_json::from_slice(&body).map_err(|e| JiraError::Malformed {
            ctx: Context { op, issue },
            status: status.as_u16(),
            message: format!("invalid JSON: {e}"),
        })
    }

    /// GET `/myself`: the authenticated (bot) user.
    pub async fn myself(&self) -> Result<User, JiraError> {
        let value = self.send_json(get("myself", None, vec!["myself"])).await?;
        parse("myself", None, value)
    }

    /// One search page at `cursor`; returns the issues and the next cursor.
    async fn search_page(
        &self,
        jql: &str,
        fields: &[String],
        cursor: Cursor,
    ) -> Result<(Vec<Issue>, Cursor), JiraError> {
        let op = "search";
        let malformed = |message: String| JiraError::Malformed {
            ctx: ctx(op, None),
            status: 200,
            message,
        };
        let mut body = json!({"jql": jql, "fields": fields, "maxResults": self.page_size});
        let path = match self.flavor {
            Flavor::Cloud => vec!["search", "jql"],
            Flavor::Datacenter => vec!["search"],
        };
        match &cursor {
            Cursor::Token(t) => body["nextPageToken"] = json!(t),
            Cursor::StartAt(n) => body["startAt"] = json!(n),
            Cursor::Start if self.flavor == Flavor::Datacenter => body["startAt"] = json!(0),
            _ => {}
        }
        let value = self
            .send_json(Req {
                op,
                issue: None,
                method: Method::POST,
                path,
                query: vec![],
                body: Some(body),
            })
            .await?;
        let issues = value
            .get("issues")
            .and_then(Value::as_array)
            .ok_or_else(|| malformed("search reply has no `issues` array".into()))?
            .iter()
            .map(Issue::from_value)
            .collect::<Result<Vec<_>, _>>()
            .map_err(malformed)?;
        let next = match self.flavor {
            Flavor::Cloud => {
                let is_last = value
                    .get("isLast")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                match value.get("nextPageToken").and_then(Value::as_str) {
                    Some(token) if !is_last => {
                        if matches!(&cursor, Cursor::Token(prev) if prev == token) {
                            return Err(malformed("nextPageToken did not change".into()));
                        }
                        Cursor::Token(token.to_string())
                    }
                    _ => Cursor::Done,
                }
            }
            Flavor::Datacenter => {
                let asked = match cursor {
                    Cursor::StartAt(n) => n,
                    _ => 0,
                };
                let start = value
                    .get("startAt")
                    .and_then(Value::as_u64)
                    .unwrap_or(asked);
                // A server that ignores startAt would make this loop forever.
                if start != asked {
                    return Err(malformed(format!("asked for startAt {asked}, got {start}")));
                }
                let next = start + issues.len() as u64;
                match value.get("total").and_then(Value::as_u64) {
                    _ if issues.is_empty() => Cursor::Done,
                    Some(total) if next >= total => Cursor::Done,
                    _ => Cursor::StartAt(next),
                }
            }
        };
        Ok((issues, next))
    }

    /// Every page of a search, as a stream. `fields` are requested
    /// explicitly ([`DEFAULT_FIELDS`] when empty).
    pub fn search_pages(
        &self,
        jql: &str,
        fields: &[&str],
    ) -> impl Stream<Item = Result<Vec<Issue>, JiraError>> + '_ {
        let jql = jql.to_string();
        let fields: Vec<String> = if fields.is_empty() {
            DEFAULT_FIELDS
        } else {
            fields
        }
        .iter()
        .map(|f| f.to_string())
        .collect();
        futures::stream::try_unfold(Cursor::Start, move |cursor| {
            let jql = jql.clone();
            let fields = fields.clone();
            async move {
                if matches!(cursor, Cursor::Done) {
                    return Ok(None);
                }
                let (issues, next) = self.search_page(&jql, &fields, cursor).await?;
                Ok(Some((issues, next)))
            }
        })
    }

    /// All issues matching `jql`, every page.
    pub async fn search_all(&self, jql: &str, fields: &[&str]) -> Result<Vec<Issue>, JiraError> {
        let pages: Vec<Vec<Issue>> = self.search_pages(jql, fields).try_collect().await?;
        Ok(pages.into_iter().flatten().collect())
    }

    /// GET one issue with the given fields ([`DEFAULT_FIELDS`] when empty).
    pub async fn get_issue(&self, key: &str, fields: &[&str]) -> Result<Issue, JiraError> {
        let fields = if fields.is_empty() {
            DEFAULT_FIELDS
        } else {
            fields
        };
        let mut req = get("get issue", Some(key), vec!["issue", key]);
        // An array parameter: one `fields=` per value, the encoding the API
        // description declares.
        req.query
            .extend(fields.iter().map(|f| ("fields", f.to_string())));
        let value = self.send_json(req).await?;
        Issue::from_value(&value).map_err(|message| JiraError::Malformed {
            ctx: ctx("get issue", Some(key)),
            status: 200,
            message,
        })
    }

    /// The issue with `fields` ([`DEFAULT_FIELDS`] when empty) and its changelog, oldest
    /// first, in one read (`expand=changelog`, which both flavours serve; Jira includes the
    /// most recent 100 entries there).
    pub async fn issue_with_changelog(
        &self,
        key: &str,
        fields: &[&str],
    ) -> Result<(Issue, Vec<ChangeHistory>), JiraError> {
        let (issue, histories, _) = self.read_issue(key, fields, false).await?;
        Ok((issue, histories))
    }

    /// The issue with its changelog and the transitions it offers now, in one request
    /// (`expand=changelog,transitions`): what a claim decides on. The transitions are `None`
    /// when the reply did not expand them.
    pub async fn issue_for_claim(
        &self,
        key: &str,
        fields: &[&str],
    ) -> Result<TicketRead, JiraError> {
        let (issue, histories, transitions) = self.read_issue(key, fields, true).await?;
        Ok(TicketRead {
            issue,
            histories,
            transitions,
        })
    }

    async fn read_issue(
        &self,
        key: &str,
        fields: &[&str],
        with_transitions: bool,
    ) -> Result<(Issue, Vec<ChangeHistory>, Option<Vec<Transition>>), JiraError> {
        let op = if with_transitions {
            "get issue with changelog and transitions"
        } else {
            "get issue with changelog"
        };
        let fields = if fields.is_empty() {
            DEFAULT_FIELDS
        } else {
            fields
        };
        let mut req = get(op, Some(key), vec!["issue", key]);
        req.query
            .extend(fields.iter().map(|f| ("fields", f.to_string())));
        let expand = if with_transitions {
            "changelog,transitions"
        } else {
            "changelog"
        };
        req.query.push(("expand", expand.into()));
        let value = self.send_json(req).await?;
        let transitions = match value.get("transitions") {
            Some(list) if with_transitions => Some(parse(op, Some(key), list.clone())?),
            _ => None,
        };
        let issue = Issue::from_value(&value).map_err(|message| JiraError::Malformed {
            ctx: ctx(op, Some(key)),
            status: 200,
            message,
        })?;
        let mut histories: Vec<ChangeHistory> = parse(
            op,
            Some(key),
            value
                .get("changelog")
                .and_then(|c| c.get("histories"))
                .cloned()
                .unwrap_or(Value::Array(vec![])),
        )?;
        // Cloud lists newest first, Data Center oldest first: order by time (one site's
        // timestamps share a format, so they sort as text), then by numeric id.
        histories.sort_by(|a, b| {
            a.created
                .cmp(&b.created)
                .then_with(|| a.id.parse::<u64>().ok().cmp(&b.id.parse::<u64>().ok()))
        });
        Ok((issue, histories, transitions))
    }

    /// The names of the groups `user` belongs to: Cloud `GET /user/groups?accountId=`,
    /// Data Center `GET /user?username=&expand=groups`.
    pub async fn user_groups(&self, user: &User) -> Result<Vec<String>, JiraError> {
        let op = "user groups";
        let missing = || JiraError::InvalidInput {
            ctx: ctx(op, None),
            message: format!("user {} has no id", user.label()),
        };
        match self.flavor {
            Flavor::Cloud => {
                let mut req = get(op, None, vec!["user", "groups"]);
                req.query
                    .push(("accountId", user.account_id.clone().ok_or_else(missing)?));
                let value = self.send_json(req).await?;
                Ok(value
                    .as_array()
                    .map(|groups| {
                        groups
                            .iter()
                            .filter_map(|g| g.get("name").and_then(Value::as_str))
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default())
            }
            Flavor::Datacenter => {
                let mut req = get(op, None, vec!["user"]);
                req.query
                    .push(("username", user.name.clone().ok_or_else(missing)?));
                req.query.push(("expand", "groups".into()));
                let value = self.send_json(req).await?;
                Ok(value
                    .get("groups")
                    .and_then(|g| g.get("items"))
                    .and_then(Value::as_array)
                    .map(|groups| {
                        groups
                            .iter()
                            .filter_map(|g| g.get("name").and_then(Value::as_str))
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default())
            }
        }
    }

    /// One edit that assigns the issue (when `assignee` is given) and adds and removes
    /// labels: a single write, so a claim costs fewer of Jira's per-issue write budget.
    /// Repeating it is harmless (the same assignee, labels already there or gone).
    pub async fn assign_and_label(
        &self,
        key: &str,
        assignee: Option<&User>,
        add: &[&str],
        remove: &[&str],
    ) -> Result<(), JiraError> {
        let op = "assign and label";
        if let Some(bad) = add
            .iter()
            .find(|l| l.is_empty() || l.contains(char::is_whitespace))
        {
            return Err(JiraError::InvalidInput {
                ctx: ctx(op, Some(key)),
                message: format!("label {bad:?} is empty or contains whitespace"),
            });
        }
        let mut body = json!({});
        if let Some(user) = assignee {
            let id = match self.flavor {
                Flavor::Cloud => user
                    .account_id
                    .as_deref()
                    .map(|id| json!({"accountId": id})),
                Flavor::Datacenter => user.name.as_deref().map(|id| json!({"name": id})),
            }
            .ok_or_else(|| JiraError::InvalidInput {
                ctx: ctx(op, Some(key)),
                message: format!("user {} has no id for this Jira flavour", user.label()),
            })?;
            body["fields"] = json!({"assignee": id});
        }
        let mut ops: Vec<Value> = add.iter().map(|l| json!({"add": l})).collect();
        ops.extend(remove.iter().map(|l| json!({"remove": l})));
        if !ops.is_empty() {
            body["update"] = json!({"labels": ops});
        }
        if body.as_object().is_some_and(|o| o.is_empty()) {
            return Ok(());
        }
        self.send(Req {
            op,
            issue: Some(key),
            method: Method::PUT,
            path: vec!["issue", key],
            query: vec![],
            body: Some(body),
        })
        .await?;
        Ok(())
    }

    /// The transitions available on the issue now.
    pub async fn transitions(&self, key: &str) -> Result<Vec<Transition>, JiraError> {
        let value = self
            .send_json(get(
                "list transitions",
                Some(key),
                vec!["issue", key, "transitions"],
            ))
            .await?;
        let list = value
            .get("transitions")
            .cloned()
            .unwrap_or(Value::Array(vec![]));
        parse("list transitions", Some(key), list)
    }

    /// Performs the transition with this id.
    pub async fn transition_by_id(&self, key: &str, id: &str) -> Result<(), JiraError> {
        self.send(Req {
            op: "transition",
            issue: Some(key),
            method: Method::POST,
            path: vec!["issue", key, "transitions"],
            query: vec![],
            body: Some(json!({"transition": {"id": id}})),
        })
        .await?;
        Ok(())
    }

    /// Resolves `wanted` (transition id, transition name or target status
    /// name, case-insensitive) against the available transitions and performs it.
    pub async fn transition(&self, key: &str, wanted: &str) -> Result<Transition, JiraError> {
        let available = self.transitions(key).await?;
        let chosen = crate::transition::resolve(wanted, &available)
            .map_err(|available| JiraError::NoSuchTransition {
                issue: key.to_string(),
                wanted: wanted.to_string(),
                available,
            })?
            .clone();
        self.transition_by_id(key, &chosen.id).await?;
        Ok(chosen)
    }

    /// Adds a comment from plain text (fenced blocks become code blocks).
    pub async fn add_comment(&self, key: &str, text: &str) -> Result<Comment, JiraError> {
        self.add_comment_doc(key, &Doc::from_text(text)).await
    }

    /// Adds a comment: ADF on Cloud, wiki text on Data Center. Text beyond
    /// [`COMMENT_BUDGET`] is cut with a visible marker.
    pub async fn add_comment_doc(&self, key: &str, doc: &Doc) -> Result<Comment, JiraError> {
        self.add_comment_body(key, self.comment_body(doc)).await
    }

    /// A document as this flavour's comment body (ADF or wiki text), cut to
    /// [`COMMENT_BUDGET`] with a visible marker.
    fn comment_body(&self, doc: &Doc) -> Value {
        let doc = doc.clone().truncated(COMMENT_BUDGET);
        match self.flavor {
            Flavor::Cloud => doc.to_adf(),
            Flavor::Datacenter => {
                Value::String(crate::adf::truncate_text(&doc.to_wiki(), COMMENT_BUDGET))
            }
        }
    }

    /// Adds a comment whose body the caller rendered for this flavour: an ADF document on
    /// Cloud, a wiki-markup string on Data Center. The caller keeps it within Jira's limit.
    pub async fn add_comment_body(&self, key: &str, body: Value) -> Result<Comment, JiraError> {
        let value = self
            .send_json(Req {
                op: "add comment",
                issue: Some(key),
                method: Method::POST,
                path: vec!["issue", key, "comment"],
                query: vec![],
                body: Some(json!({ "body": body })),
            })
            .await?;
        parse("add comment", Some(key), value)
    }

    /// Replaces the body of comment `id`: ADF on Cloud, wiki text on Data Center. Text
    /// beyond [`COMMENT_BUDGET`] is cut with a visible marker.
    pub async fn edit_comment_doc(
        &self,
        key: &str,
        id: &str,
        doc: &Doc,
    ) -> Result<Comment, JiraError> {
        self.edit_comment_body(key, id, self.comment_body(doc))
            .await
    }

    /// Replaces the body of comment `id` with one the caller rendered for this flavour (as
    /// [`JiraClient::add_comment_body`]). Jira answers 404 when the comment is gone.
    pub async fn edit_comment_body(
        &self,
        key: &str,
        id: &str,
        body: Value,
    ) -> Result<Comment, JiraError> {
        let value = self
            .send_json(Req {
                op: "edit comment",
                issue: Some(key),
                method: Method::PUT,
                path: vec!["issue", key, "comment", id],
                query: vec![],
                body: Some(json!({ "body": body })),
            })
            .await?;
        parse("edit comment", Some(key), value)
    }

    /// Every comment on the issue, oldest first (all pages).
    pub async fn comments(&self, key: &str) -> Result<Vec<Comment>, JiraError> {
        let mut out: Vec<Comment> = Vec::new();
        loop {
            let mut req = get("list comments", Some(key), vec!["issue", key, "comment"]);
            req.query.push(("startAt", out.len().to_string()));
            req.query.push(("maxResults", "100".into()));
            let value = self.send_json(req).await?;
            let page: Vec<Comment> = parse(
                "list comments",
                Some(key),
                value.get("comments").cloned().unwrap_or(Value::Null),
            )?;
            let total = value.get("total").and_then(Value::as_u64);
            let empty = page.is_empty();
            out.extend(page);
            if empty || total.is_none_or(|t| out.len() as u64 >= t) {
                return Ok(out);
            }
        }
    }

    /// The first comment whose text contains `marker`.
    pub async fn find_comment(
        &self,
        key: &str,
        marker: &str,
    ) -> Result<Option<Comment>, JiraError> {
        Ok(self
            .comments(key)
            .await?
            .into_iter()
            .find(|c| c.text().contains(marker)))
    }

    /// Assigns the issue (`accountId` on Cloud, `name` on Data Center); `None` unassigns.
    pub async fn assign(&self, key: &str, user: Option<&User>) -> Result<(), JiraError> {
        let id = match user {
            None => Value::Null,
            Some(u) => {
                let id = match self.flavor {
                    Flavor::Cloud => u.account_id.as_deref(),
                    Flavor::Datacenter => u.name.as_deref(),
                };
                json!(id.ok_or_else(|| JiraError::InvalidInput {
                    ctx: ctx("assign", Some(key)),
                    message: format!(
                        "user {} has no {}",
                        u.label(),
                        if self.flavor == Flavor::Cloud {
                            "accountId"
                        } else {
                            "name"
                        }
                    ),
                })?)
            }
        };
        let body = match self.flavor {
            Flavor::Cloud => json!({"accountId": id}),
            Flavor::Datacenter => json!({"name": id}),
        };
        self.send(Req {
            op: "assign",
            issue: Some(key),
            method: Method::PUT,
            path: vec!["issue", key, "assignee"],
            query: vec![],
            body: Some(body),
        })
        .await?;
        Ok(())
    }

    /// Adds and removes labels in one edit. Nothing is sent when both are empty.
    pub async fn update_labels(
        &self,
        key: &str,
        add: &[&str],
        remove: &[&str],
    ) -> Result<(), JiraError> {
        let mut ops: Vec<Value> = add.iter().map(|l| json!({"add": l})).collect();
        ops.extend(remove.iter().map(|l| json!({"remove": l})));
        if ops.is_empty() {
            return Ok(());
        }
        if let Some(bad) = add
            .iter()
            .find(|l| l.is_empty() || l.contains(char::is_whitespace))
        {
            return Err(JiraError::InvalidInput {
                ctx: ctx("update labels", Some(key)),
                message: format!("label {bad:?} is empty or contains whitespace"),
            });
        }
        self.send(Req {
            op: "update labels",
            issue: Some(key),
            method: Method::PUT,
            path: vec!["issue", key],
            query: vec![],
            body: Some(json!({"update": {"labels": ops}})),
        })
        .await?;
        Ok(())
    }

    pub async fn add_labels(&self, key: &str, labels: &[&str]) -> Result<(), JiraError> {
        self.update_labels(key, labels, &[]).await
    }

    pub async fn remove_labels(&self, key: &str, labels: &[&str]) -> Result<(), JiraError> {
        self.update_labels(key, &[], labels).await
    }

    /// Reads an issue property; `None` when the issue has no such property.
    pub async fn get_property(
        &self,
        key: &str,
        property: &str,
    ) -> Result<Option<Value>, JiraError> {
        match self
            .send_json(get(
                "get property",
                Some(key),
                vec!["issue", key, "properties", property],
            ))
            .await
        {
            Ok(value) => Ok(Some(value.get("value").cloned().unwrap_or(Value::Null))),
            Err(e @ JiraError::Api { status: 404, .. }) => {
                let about_property = e
                    .body()
                    .is_some_and(|b| b.to_string().to_ascii_lowercase().contains("property"));
                if about_property { Ok(None) } else { Err(e) }
            }
            Err(e) => Err(e),
        }
    }

    /// Writes an issue property (JSON, at most 32 KiB).
    pub async fn set_property(
        &self,
        key: &str,
        property: &str,
        value: &Value,
    ) -> Result<(), JiraError> {
        let size = value.to_string().len();
        if size > MAX_PROPERTY_BYTES || property.is_empty() || property.len() > 255 {
            return Err(JiraError::InvalidInput {
                ctx: ctx("set property", Some(key)),
                message: format!(
                    "property {property:?}: key must be 1..255 characters and the value at most 32 KiB (is {size} bytes)"
                ),
            });
        }
        self.send(Req {
            op: "set property",
            issue: Some(key),
            method: Method::PUT,
            path: vec!["issue", key, "properties", property],
            query: vec![],
            body: Some(value.clone()),
        })
        .await?;
        Ok(())
    }

    /// Which of `permissions` the bot has on `project` (e.g. `BROWSE_PROJECTS`).
    pub async fn my_permissions(
        &self,
        project: &str,
        permissions: &[&str],
    ) -> Result<BTreeMap<String, bool>, JiraError> {
        let mut req = get("my permissions", None, vec!["mypermissions"]);
        req.query.push(("projectKey", project.to_string()));
        req.query.push(("permissions", permissions.join(",")));
        let value = self.send_json(req).await?;
        let map = value
            .get("permissions")
            .and_then(Value::as_object)
            .ok_or_else(|| JiraError::Malformed {
                ctx: ctx("my permissions", None),
                status: 200,
                message: "no `permissions` object".into(),
            })?;
        Ok(permissions
            .iter()
            .map(|p| {
                let have = map
                    .get(*p)
                    .and_then(|v| v.get("havePermission"))
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                (p.to_string(), have)
            })
            .collect())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Cursor {
    Start,
    Token(String),
    StartAt(u64),
    Done,
}

fn ctx(op: &'static str, issue: Option<&str>) -> Context {
    Context {
        op,
        issue: issue.map(str::to_string),
    }
}

fn transport(req: &Req<'_>, kind: TransportKind, e: &reqwest::Error) -> JiraError {
    JiraError::Transport {
        ctx: ctx(req.op, req.issue),
        kind,
        message: describe(e),
    }
}

fn get<'a>(op: &'static str, issue: Option<&'a str>, path: Vec<&'a str>) -> Req<'a> {
    Req {
        op,
        issue,
        method: Method::GET,
        path,
        query: vec![],
        body: None,
    }
}

fn parse<T: serde::de::DeserializeOwned>(
    op: &'static str,
    issue: Option<&str>,
    value: Value,
) -> Result<T, JiraError> {
    serde_json::from_value(value).map_err(|e| JiraError::Malformed {
        ctx: ctx(op, issue),
        status: 200,
        message: e.to_string(),
    })
}

#[cfg(test)]
mod comment_edit_tests {
    use super::*;
    use recac_jira_sim::{BOT_EMAIL, BOT_PAT, BOT_TOKEN, Fault, IssueSeed, JiraSim, Seed};

    async fn sim_and_client(flavor: Flavor) -> (JiraSim, JiraClient) {
        let sim = JiraSim::start(Seed {
            flavor: match flavor {
                Flavor::Cloud => recac_jira_sim::SimFlavor::Cloud,
                Flavor::Datacenter => recac_jira_sim::SimFlavor::Datacenter,
            },
            ..Seed::default()
        })
        .await
        .expect("simulator starts");
        let config = JiraConfig {
            url: sim.url().to_string(),
            flavor,
            ..JiraConfig::default()
        };
        let credentials = match flavor {
            Flavor::Cloud => Credentials::Basic {
                user: BOT_EMAIL.into(),
                token: crate::Secret::new(BOT_TOKEN),
            },
            Flavor::Datacenter => Credentials::Bearer {
                token: crate::Secret::new(BOT_PAT),
            },
        };
        let client = JiraClient::with_credentials(&config, credentials)
            .expect("client")
            .with_retry_policy(RetryPolicy {
                base: Duration::from_millis(10),
                cap: Duration::from_millis(50),
                ..RetryPolicy::default()
            });
        (sim, client)
    }

    #[tokio::test]
    async fn a_comment_is_edited_in_place_in_each_flavour_and_retried_like_any_request() {
        for flavor in [Flavor::Cloud, Flavor::Datacenter] {
            let (sim, client) = sim_and_client(flavor).await;
            let key = sim.add_issue(IssueSeed {
                project: "OPS".into(),
                summary: "Edit".into(),
                ..Default::default()
            });
            let posted = client
                .add_comment_doc(&key, &Doc::from_text("first"))
                .await
                .expect("posted");
            // A 503 before the edit lands: the PUT is idempotent, so it is retried.
            sim.inject(Fault::status(503).on_method("PUT").on_path("/comment/"));
            let edited = client
                .edit_comment_doc(&key, &posted.id, &Doc::from_text("second"))
                .await
                .expect("edited");
            assert_eq!(edited.id, posted.id, "{flavor:?}");
            assert_eq!(edited.text().trim(), "second", "{flavor:?}");
            let comments = client.comments(&key).await.expect("comments");
            assert_eq!(comments.len(), 1, "{flavor:?}");
            assert_eq!(comments[0].text().trim(), "second", "{flavor:?}");
            let prefix = format!("/rest/api/{}/", flavor.api_version());
            assert!(
                sim.calls()
                    .iter()
                    .filter(|c| c.method == "PUT")
                    .all(|c| c.path.starts_with(&prefix)),
                "{flavor:?}"
            );

            let gone = client
                .edit_comment_body(&key, "424242", json!("x"))
                .await
                .expect_err("no such comment");
            assert_eq!(gone.status(), Some(404), "{flavor:?}: {gone}");
        }
    }
}
