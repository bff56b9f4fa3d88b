//! An in-memory Jira server for tests and local runs.
//!
//! It speaks either Jira Cloud (REST v2 and v3) or Jira Data Center (REST
//! v2) ([`SimFlavor`]) for every endpoint the recac client uses and those
//! common Jira client libraries call (server info, fields, user search),
//! checks credentials and permissions, runs a configurable workflow,
//! understands a JQL subset, enforces per-issue write limits, injects faults
//! on demand, records every call, lets tests comment as other people
//! ([`JiraSim::comment_as`]) and sends `comment_created` and `comment_updated`
//! webhooks ([`JiraSim::set_webhook`]).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use recac_jira_sim::{JiraSim, IssueSeed, Seed, SimFlavor};
//! let sim = JiraSim::start(Seed { flavor: SimFlavor::Cloud, ..Seed::default() }).await?;
//! sim.add_project("OPS", "Operations");
//! let key = sim.add_issue(IssueSeed { project: "OPS".into(), summary: "Fix it".into(), ..Default::default() });
//! println!("{} has {key}", sim.url());
//! # Ok(()) }
//! ```

mod api;
#[cfg(test)]
mod comment_edit_tests;
pub mod contract;
mod fault;
mod fields;
pub mod jql;
mod model;
mod params;
mod server;
mod text;
mod webhook;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub use fault::{Fault, FaultKind};
pub use model::{
    ALL_PERMISSIONS, Category, CommentRec, HistoryItem, HistoryRec, IssueSeed, IssueSnapshot,
    ProjectDef, Seed, SimFlavor, StatusDef, TransitionDef, UserDef, Workflow, WriteLimits,
};
use model::{IssueRec, Project, State};
use serde_json::Value;
pub use webhook::WebhookDelivery;

/// The default bot user's e-mail (Cloud basic auth user).
pub const BOT_EMAIL: &str = "bot@example.com";
/// The default bot user's Data Center user name.
pub const BOT_NAME: &str = "recac-bot";
/// The default bot user's account id.
pub const BOT_ACCOUNT_ID: &str = "5b10ac8d82e05b22cc7d4ef5";
/// The default bot user's API token / password.
pub const BOT_TOKEN: &str = "sim-api-token";
/// The default bot user's personal access token.
pub const BOT_PAT: &str = "sim-personal-access-token";

/// The default bot user, with every permission.
pub fn bot_user() -> UserDef {
    UserDef {
        account_id: BOT_ACCOUNT_ID.into(),
        name: BOT_NAME.into(),
        display_name: "recac bot".into(),
        email: BOT_EMAIL.into(),
        token: Some(BOT_TOKEN.into()),
        pat: Some(BOT_PAT.into()),
        permissions: None,
    }
}

/// One call the simulator received.
#[derive(Clone, Debug, PartialEq)]
pub struct CallRecord {
    pub method: String,
    pub path: String,
    /// The raw query string (`""` when none).
    pub query: String,
    /// The request body parsed as JSON (`None` when empty or not JSON).
    pub body: Option<Value>,
    /// The status answered; 0 when the connection was dropped.
    pub status: u16,
    /// The response body parsed as JSON, when it was JSON.
    pub response: Option<Value>,
    /// Account id of the authenticated caller.
    pub user: Option<String>,
    /// When the call arrived.
    pub at: std::time::Instant,
}

pub(crate) struct Shared {
    /// The simulator's base URL, for links when a request has no `Host`.
    pub url: String,
    pub state: Mutex<State>,
    pub faults: Mutex<Vec<Fault>>,
    pub calls: Mutex<Vec<CallRecord>>,
    /// Calls being handled now, and the most at once so far.
    pub in_flight: std::sync::atomic::AtomicUsize,
    pub most_in_flight: std::sync::atomic::AtomicUsize,
    pub webhooks: webhook::Webhooks,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock only happens in a test that already failed.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A running simulator. Stops when dropped.
pub struct JiraSim {
    url: String,
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for JiraSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JiraSim").field("url", &self.url).finish()
    }
}

impl Drop for JiraSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl JiraSim {
    /// Starts on `127.0.0.1:0` with `seed`.
    pub async fn start(seed: Seed) -> std::io::Result<JiraSim> {
        JiraSim::bind("127.0.0.1:0".parse().map_err(std::io::Error::other)?, seed).await
    }

    /// Starts a Cloud simulator with the default bot user and no projects.
    pub async fn cloud() -> std::io::Result<JiraSim> {
        JiraSim::start(Seed::default()).await
    }

    /// Starts a Data Center simulator with the default bot user and no projects.
    pub async fn datacenter() -> std::io::Result<JiraSim> {
        JiraSim::start(Seed {
            flavor: SimFlavor::Datacenter,
            ..Seed::default()
        })
        .await
    }

    /// Starts on `addr` (for the standalone command).
    pub async fn bind(addr: SocketAddr, seed: Seed) -> std::io::Result<JiraSim> {
        let users = if seed.users.is_empty() {
            vec![bot_user()]
        } else {
            seed.users.clone()
        };
        let state = State {
            flavor: seed.flavor,
            workflow: seed.workflow.clone().unwrap_or_default(),
            users,
            projects: Vec::new(),
            issues: Default::default(),
            by_key: Default::default(),
            next_issue_id: 10000,
            next_comment_id: 10000,
            write_limits: Some(WriteLimits::default()),
            transition_latency: Duration::ZERO,
            max_results: None,
            groups: Default::default(),
            next_history_id: 10000,
            expand_transitions: true,
        };
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let url = format!("http://{addr}");
        let shared = Arc::new(Shared {
            url: url.clone(),
            state: Mutex::new(state),
            faults: Mutex::new(Vec::new()),
            calls: Mutex::new(Vec::new()),
            in_flight: Default::default(),
            most_in_flight: Default::default(),
            webhooks: webhook::Webhooks::new()?,
        });
        let task = tokio::spawn(server::serve(listener, shared.clone()));
        let sim = JiraSim {
            url,
            addr,
            shared,
            task,
        };
        for p in &seed.projects {
            sim.add_project(&p.key, p.name.as_deref().unwrap_or(&p.key));
        }
        for (group, members) in &seed.groups {
            for member in members {
                sim.add_group_member(group, member);
            }
        }
        for issue in &seed.issues {
            if !sim.has_project(&issue.project) {
                sim.add_project(&issue.project, &issue.project);
            }
            sim.add_issue(issue.clone());
        }
        Ok(sim)
    }

    /// The base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn has_project(&self, key: &str) -> bool {
        lock(&self.shared.state)
            .projects
            .iter()
            .any(|p| p.key == key)
    }

    /// Adds a project (no-op when it exists).
    pub fn add_project(&self, key: &str, name: &str) {
        let mut st = lock(&self.shared.state);
        if st.projects.iter().any(|p| p.key == key) {
            return;
        }
        let id = (10000 + st.projects.len()).to_string();
        st.projects.push(Project {
            id,
            key: key.to_string(),
            name: name.to_string(),
            next_number: 1,
        });
    }

    /// Adds a user, replacing one with the same account id (to change its permissions).
    pub fn add_user(&self, user: UserDef) {
        let mut st = lock(&self.shared.state);
        st.users.retain(|u| u.account_id != user.account_id);
        st.users.push(user);
    }

    /// Replaces the workflow. Issues in unknown statuses move to the first status.
    pub fn set_workflow(&self, workflow: Workflow) {
        let mut st = lock(&self.shared.state);
        let first = workflow
            .statuses
            .first()
            .map(|s| s.id.clone())
            .unwrap_or_default();
        for issue in st.issues.values_mut() {
            if !workflow.statuses.iter().any(|s| s.id == issue.status_id) {
                issue.status_id = first.clone();
            }
        }
        st.workflow = workflow;
    }

    /// Whether issue reads honour `expand=transitions` (default true). `false` answers as a
    /// Jira that leaves the field out, so a client must ask `GET .../transitions`.
    pub fn set_expand_transitions(&self, honoured: bool) {
        lock(&self.shared.state).expand_transitions = honoured;
    }

    /// Creates an issue; returns its key. The project is created if needed.
    pub fn add_issue(&self, seed: IssueSeed) -> String {
        if !self.has_project(&seed.project) {
            self.add_project(&seed.project, &seed.project);
        }
        let mut st = lock(&self.shared.state);
        let status_id = seed
            .status
            .as_deref()
            .and_then(|s| st.workflow.status(s))
            .or(st.workflow.statuses.first())
            .map(|s| s.id.clone())
            .unwrap_or_default();
        let assignee = seed.assignee.as_deref().and_then(|a| {
            st.users
                .iter()
                .find(|u| u.account_id == a || u.name == a || u.email == a)
                .map(|u| u.account_id.clone())
        });
        let reporter = match seed.reporter.as_deref() {
            Some(r) => st.user_id(r),
            None => st.users.first().map(|u| u.account_id.clone()),
        };
        let created = seed
            .created
            .as_deref()
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(jiff::Timestamp::now);
        let Some(project) = st.projects.iter_mut().find(|p| p.key == seed.project) else {
            return String::new();
        };
        let number = project.next_number;
        project.next_number += 1;
        let key = format!("{}-{number}", seed.project);
        let id = st.next_issue_id;
        st.next_issue_id += 1;
        st.by_key.insert(key.clone(), id);
        st.issues.insert(
            id,
            IssueRec {
                id,
                key: key.clone(),
                number,
                project: seed.project,
                summary: seed.summary,
                description: seed.description,
                labels: seed.labels,
                status_id,
                assignee,
                created,
                updated: created,
                comments: Vec::new(),
                properties: Default::default(),
                writes: Default::default(),
                transition_in_flight: false,
                reporter,
                history: Vec::new(),
                components: seed.components,
                custom_fields: seed.custom_fields,
            },
        );
        key
    }

    /// Creates `n` issues in `project` with summaries `"{prefix} {i}"`; returns their keys.
    pub fn add_issues(
        &self,
        project: &str,
        prefix: &str,
        labels: &[&str],
        n: usize,
    ) -> Vec<String> {
        (1..=n)
            .map(|i| {
                self.add_issue(IssueSeed {
                    project: project.into(),
                    summary: format!("{prefix} {i}"),
                    labels: labels.iter().map(|l| l.to_string()).collect(),
                    ..Default::default()
                })
            })
            .collect()
    }

    /// A snapshot of an issue.
    pub fn issue(&self, key: &str) -> Option<IssueSnapshot> {
        let st = lock(&self.shared.state);
        let issue = st.by_key.get(key).and_then(|id| st.issues.get(id))?;
        let status = st
            .workflow
            .statuses
            .iter()
            .find(|s| s.id == issue.status_id)
            .map(|s| s.name.clone())
            .unwrap_or_default();
        Some(IssueSnapshot {
            key: issue.key.clone(),
            summary: issue.summary.clone(),
            status,
            labels: issue.labels.clone(),
            assignee: issue.assignee.clone(),
            comments: issue.comments.clone(),
            properties: issue.properties.clone(),
            history: issue.history.clone(),
        })
    }

    /// Adds a user (accountId, name or e-mail) to a group, creating the group.
    pub fn add_group_member(&self, group: &str, user: &str) {
        let mut st = lock(&self.shared.state);
        let Some(id) = st.user_id(user) else {
            return;
        };
        let members = st.groups.entry(group.to_string()).or_default();
        if !members.contains(&id) {
            members.push(id);
        }
    }

    /// Adds and removes labels as `actor` (accountId, name or e-mail), as a person
    /// editing the issue would: the changelog records who did it.
    pub fn relabel_as(&self, key: &str, actor: &str, add: &[&str], remove: &[&str]) {
        let mut st = lock(&self.shared.state);
        let (Some(author), Some(&id)) = (st.user_id(actor), st.by_key.get(key)) else {
            return;
        };
        let Some(before) = st.issues.get(&id).map(|i| i.labels.clone()) else {
            return;
        };
        let mut after: Vec<String> = before
            .iter()
            .filter(|l| !remove.contains(&l.as_str()))
            .cloned()
            .collect();
        for label in add {
            if !after.iter().any(|l| l == label) {
                after.push(label.to_string());
            }
        }
        let item = HistoryItem {
            field: "labels".into(),
            from: None,
            from_string: Some(before.join(" ")),
            to: None,
            to_string: Some(after.join(" ")),
        };
        api::record_history(&mut st, id, &author, vec![item]);
        if let Some(issue) = st.issues.get_mut(&id) {
            issue.labels = after;
        }
    }

    /// Moves the issue to `status` as `actor`, whatever the workflow allows (an admin's
    /// move); the changelog records who did it.
    pub fn move_as(&self, key: &str, actor: &str, status: &str) {
        let mut st = lock(&self.shared.state);
        let (Some(author), Some(&id)) = (st.user_id(actor), st.by_key.get(key)) else {
            return;
        };
        let Some(target) = st.workflow.status(status).cloned() else {
            return;
        };
        let Some(from) = st.issues.get(&id).map(|i| i.status_id.clone()) else {
            return;
        };
        let from_string = st
            .workflow
            .statuses
            .iter()
            .find(|s| s.id == from)
            .map(|s| s.name.clone());
        let item = HistoryItem {
            field: "status".into(),
            from: Some(from),
            from_string,
            to: Some(target.id.clone()),
            to_string: Some(target.name.clone()),
        };
        api::record_history(&mut st, id, &author, vec![item]);
        if let Some(issue) = st.issues.get_mut(&id) {
            issue.status_id = target.id;
        }
    }

    /// Sets the assignee as `actor` (`None` unassigns).
    pub fn assign_as(&self, key: &str, actor: &str, assignee: Option<&str>) {
        let mut st = lock(&self.shared.state);
        let (Some(author), Some(&id)) = (st.user_id(actor), st.by_key.get(key)) else {
            return;
        };
        let to = assignee.and_then(|a| st.user_id(a));
        let from = st.issues.get(&id).and_then(|i| i.assignee.clone());
        let item = api::assignee_item(&st, from.as_deref(), to.as_deref());
        api::record_history(&mut st, id, &author, vec![item]);
        if let Some(issue) = st.issues.get_mut(&id) {
            issue.assignee = to;
        }
    }

    /// Replaces the description as `actor`.
    pub fn set_description_as(&self, key: &str, actor: &str, description: &str) {
        let mut st = lock(&self.shared.state);
        let (Some(author), Some(&id)) = (st.user_id(actor), st.by_key.get(key)) else {
            return;
        };
        let from = st.issues.get(&id).and_then(|i| i.description.clone());
        let item = HistoryItem {
            field: "description".into(),
            from: None,
            from_string: from,
            to: None,
            to_string: Some(description.to_string()),
        };
        api::record_history(&mut st, id, &author, vec![item]);
        if let Some(issue) = st.issues.get_mut(&id) {
            issue.description = Some(description.to_string());
        }
    }

    /// Comments `text` (plain or wiki text) as `actor` (accountId, name or e-mail), as a
    /// person would in Jira's editor: stored as an ADF document on Cloud and as wiki
    /// markup on Data Center, created now; the issue's `updated` moves to now and the
    /// webhook, if set, gets `comment_created`. Returns the comment's id, or an empty
    /// string when the issue or the actor does not exist.
    pub fn comment_as(&self, key: &str, actor: &str, text: &str) -> String {
        self.add_comment_as(key, actor, None, text)
    }

    /// Like [`JiraSim::comment_as`], the comment starting with a mention of `mentioned`
    /// (accountId, name or e-mail; usually the bot) followed by `text` in the same
    /// paragraph: on Cloud an ADF `mention` node (`[~accountid:<accountId>]` to REST v2
    /// readers), on Data Center the wiki mention `[~<user name>]`. Returns an empty string
    /// when the issue, the actor or the mentioned user does not exist.
    pub fn comment_mentioning_as(
        &self,
        key: &str,
        actor: &str,
        mentioned: &str,
        text: &str,
    ) -> String {
        self.add_comment_as(key, actor, Some(mentioned), text)
    }

    fn add_comment_as(
        &self,
        key: &str,
        actor: &str,
        mentioned: Option<&str>,
        text: &str,
    ) -> String {
        let mut st = lock(&self.shared.state);
        let (Some(author), Some(&id)) = (st.user_id(actor), st.by_key.get(key)) else {
            return String::new();
        };
        let mention = match mentioned {
            None => None,
            Some(who) => {
                let Some(user) = st
                    .user_id(who)
                    .and_then(|id| st.users.iter().find(|u| u.account_id == id))
                else {
                    return String::new();
                };
                Some(match st.flavor {
                    SimFlavor::Cloud => format!("[~accountid:{}]", user.account_id),
                    SimFlavor::Datacenter => format!("[~{}]", user.name),
                })
            }
        };
        let wiki = match mention {
            Some(mention) if text.is_empty() => mention,
            Some(mention) => format!("{mention} {text}"),
            None => text.to_string(),
        };
        let body = match st.flavor {
            SimFlavor::Cloud => text::adf_from_text(&wiki, &|id| st.display_name(id)),
            SimFlavor::Datacenter => Value::String(wiki),
        };
        let comment_id = st.next_comment_id.to_string();
        st.next_comment_id += 1;
        let now = jiff::Timestamp::now();
        let Some(issue) = st.issues.get_mut(&id) else {
            return String::new();
        };
        issue
            .comments
            .push(CommentRec::new(comment_id.clone(), author, body, now));
        issue.updated = now;
        api::announce_comments(
            &self.shared,
            &self.url,
            &st,
            id,
            std::slice::from_ref(&comment_id),
        );
        comment_id
    }

    /// Sends webhook events to `url` from now on (replacing an earlier URL): a
    /// `comment_created` for each new comment, made through the API or
    /// [`JiraSim::comment_as`], and a `comment_updated` for each comment edited through the
    /// API. With a secret, each body is signed like a Jira admin
    /// webhook's (`X-Hub-Signature: sha256=<hex HMAC-SHA256 of the raw body>`).
    pub fn set_webhook(&self, url: &str, secret: Option<Vec<u8>>) {
        self.shared.webhooks.set_target(url, secret);
    }

    /// Stops sending webhook events.
    pub fn clear_webhook(&self) {
        self.shared.webhooks.clear_target();
    }

    /// The webhook deliveries finished so far (answered or failed), in the order they
    /// finished.
    pub fn webhook_deliveries(&self) -> Vec<WebhookDelivery> {
        self.shared.webhooks.deliveries()
    }

    /// Adds a fault; faults are tried in the order added.
    pub fn inject(&self, fault: Fault) {
        lock(&self.shared.faults).push(fault);
    }

    pub fn clear_faults(&self) {
        lock(&self.shared.faults).clear();
    }

    /// Every call received so far, in order.
    /// The most calls handled at once so far (faults' delays included).
    pub fn most_calls_at_once(&self) -> usize {
        self.shared
            .most_in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn calls(&self) -> Vec<CallRecord> {
        lock(&self.shared.calls).clone()
    }

    pub fn clear_calls(&self) {
        lock(&self.shared.calls).clear();
    }

    /// How long a transition takes; a second transition on the same issue in
    /// that time gets 409 Conflict.
    pub fn set_transition_latency(&self, d: Duration) {
        lock(&self.shared.state).transition_latency = d;
    }

    /// Per-issue write limits (`None` disables them).
    pub fn set_write_limits(&self, limits: Option<WriteLimits>) {
        lock(&self.shared.state).write_limits = limits;
    }

    /// Caps the page size the server grants (default: Cloud 100, or 5000 for
    /// id-only searches; Data Center 1000).
    pub fn set_max_results(&self, cap: Option<u32>) {
        lock(&self.shared.state).max_results = cap;
    }
}
