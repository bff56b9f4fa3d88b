//! The simulator's data: seed types (serde, for files and tests) and state.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Which Jira the simulator pretends to be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SimFlavor {
    /// Jira Cloud: REST v3 (ADF) and v2 (wiki text), `latest` = v3,
    /// `/search/jql` with `nextPageToken`, `accountId`;
    /// `/rest/api/{2,3}/search` answer 410 Gone.
    #[default]
    Cloud,
    /// Jira Data Center: REST v2 (`latest` = v2), `/search` with `startAt`, wiki text, `name`.
    Datacenter,
}

/// A status category.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    New,
    Indeterminate,
    Done,
}

impl Category {
    pub fn key(self) -> &'static str {
        match self {
            Category::New => "new",
            Category::Indeterminate => "indeterminate",
            Category::Done => "done",
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Category::New => "To Do",
            Category::Indeterminate => "In Progress",
            Category::Done => "Done",
        }
    }
    pub fn id(self) -> i64 {
        match self {
            Category::New => 2,
            Category::Indeterminate => 4,
            Category::Done => 3,
        }
    }
    pub fn color(self) -> &'static str {
        match self {
            Category::New => "blue-gray",
            Category::Indeterminate => "yellow",
            Category::Done => "green",
        }
    }
    pub fn all() -> [Category; 3] {
        [Category::New, Category::Indeterminate, Category::Done]
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StatusDef {
    pub id: String,
    pub name: String,
    pub category: Category,
}

/// A transition; `from` lists status names (empty: from any status, a global transition).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TransitionDef {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub from: Vec<String>,
    pub to: String,
}

/// Statuses and the transitions between them. The first status is the initial one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Workflow {
    pub statuses: Vec<StatusDef>,
    pub transitions: Vec<TransitionDef>,
}

impl Default for Workflow {
    /// To Do → In Progress → In Review → Done, with "Done" from anywhere and Reopen.
    fn default() -> Self {
        let s = |id: &str, name: &str, category| StatusDef {
            id: id.into(),
            name: name.into(),
            category,
        };
        let t = |id: &str, name: &str, from: &[&str], to: &str| TransitionDef {
            id: id.into(),
            name: name.into(),
            from: from.iter().map(|f| f.to_string()).collect(),
            to: to.into(),
        };
        Workflow {
            statuses: vec![
                s("10000", "To Do", Category::New),
                s("3", "In Progress", Category::Indeterminate),
                s("10001", "In Review", Category::Indeterminate),
                s("10002", "Done", Category::Done),
            ],
            transitions: vec![
                t("11", "Start Progress", &["To Do"], "In Progress"),
                t("21", "Request Review", &["In Progress"], "In Review"),
                t("31", "Done", &[], "Done"),
                t("41", "Reopen", &["Done", "In Review"], "To Do"),
                t("51", "Stop Progress", &["In Progress"], "To Do"),
            ],
        }
    }
}

impl Workflow {
    pub fn status(&self, name_or_id: &str) -> Option<&StatusDef> {
        self.statuses
            .iter()
            .find(|s| s.id == name_or_id || s.name.eq_ignore_ascii_case(name_or_id.trim()))
    }

    /// Transitions available from `status_id`.
    pub fn available(&self, status_id: &str) -> Vec<&TransitionDef> {
        let Some(current) = self.statuses.iter().find(|s| s.id == status_id) else {
            return vec![];
        };
        self.transitions
            .iter()
            .filter(|t| {
                t.from.is_empty() || t.from.iter().any(|f| f.eq_ignore_ascii_case(&current.name))
            })
            .filter(|t| !t.to.eq_ignore_ascii_case(&current.name) || !t.from.is_empty())
            .collect()
    }
}

/// Every permission the simulator knows.
pub const ALL_PERMISSIONS: &[&str] = &[
    "BROWSE_PROJECTS",
    "TRANSITION_ISSUES",
    "ADD_COMMENTS",
    "EDIT_OWN_COMMENTS",
    "EDIT_ALL_COMMENTS",
    "EDIT_ISSUES",
    "ASSIGN_ISSUES",
    "ASSIGNABLE_USER",
];

/// A user and its credentials.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UserDef {
    pub account_id: String,
    /// The Data Center user name.
    pub name: String,
    pub display_name: String,
    pub email: String,
    /// API token (Cloud basic auth) or password (Data Center basic auth).
    #[serde(default)]
    pub token: Option<String>,
    /// Personal access token (bearer).
    #[serde(default)]
    pub pat: Option<String>,
    /// Permissions by project key (`*` for all projects). `None`: every permission everywhere.
    #[serde(default)]
    pub permissions: Option<BTreeMap<String, Vec<String>>>,
}

impl UserDef {
    pub fn has(&self, project: &str, permission: &str) -> bool {
        match &self.permissions {
            None => true,
            Some(map) => [project, "*"]
                .iter()
                .filter_map(|p| map.get(*p))
                .any(|list| list.iter().any(|x| x.eq_ignore_ascii_case(permission))),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProjectDef {
    pub key: String,
    #[serde(default)]
    pub name: Option<String>,
}

/// An issue to create.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IssueSeed {
    /// Project key; the issue key is allocated (`PROJ-1`, `PROJ-2`, …).
    pub project: String,
    pub summary: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub labels: Vec<String>,
    /// Status name; default the workflow's first status.
    #[serde(default)]
    pub status: Option<String>,
    /// Assignee by accountId, name or e-mail.
    #[serde(default)]
    pub assignee: Option<String>,
    /// RFC 3339 creation time; default now.
    #[serde(default)]
    pub created: Option<String>,
    /// Who created the issue (accountId, name or e-mail); default the first user.
    #[serde(default)]
    pub reporter: Option<String>,
    /// Component names (`fields.components[].name`).
    #[serde(default)]
    pub components: Vec<String>,
    /// Custom field values by field id (`customfield_10050`), returned as given.
    #[serde(default)]
    pub custom_fields: BTreeMap<String, Value>,
}

/// Everything to load into a simulator: a YAML/JSON seed file has this shape.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Seed {
    #[serde(default)]
    pub flavor: SimFlavor,
    /// Users; when empty, the default bot user ([`crate::BOT_EMAIL`] …) is created.
    #[serde(default)]
    pub users: Vec<UserDef>,
    #[serde(default)]
    pub projects: Vec<ProjectDef>,
    #[serde(default)]
    pub issues: Vec<IssueSeed>,
    #[serde(default)]
    pub workflow: Option<Workflow>,
    /// Groups by name, each with its members (accountId, name or e-mail).
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
}

#[derive(Clone, Debug)]
pub(crate) struct Project {
    pub id: String,
    pub key: String,
    pub name: String,
    pub next_number: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CommentRec {
    pub id: String,
    /// Account id (Cloud) or name (DC) of the author.
    pub author: String,
    /// ADF (Cloud) or a string (DC), as posted or last edited.
    pub body: Value,
    pub created: Timestamp,
    /// When the body was last set (`created` until it is edited).
    pub updated: Timestamp,
    /// Account id of who set the body last (the author until someone edits it).
    pub update_author: String,
}

impl CommentRec {
    /// A comment as its author posts it: not edited yet.
    pub fn new(id: String, author: String, body: Value, created: Timestamp) -> CommentRec {
        CommentRec {
            id,
            update_author: author.clone(),
            author,
            body,
            created,
            updated: created,
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct IssueRec {
    pub id: u64,
    pub key: String,
    pub number: u64,
    pub project: String,
    pub summary: String,
    pub description: Option<String>,
    pub labels: Vec<String>,
    pub status_id: String,
    pub assignee: Option<String>,
    pub created: Timestamp,
    pub updated: Timestamp,
    pub comments: Vec<CommentRec>,
    pub properties: BTreeMap<String, Value>,
    pub writes: VecDeque<Instant>,
    pub transition_in_flight: bool,
    /// Account id of the reporter.
    pub reporter: Option<String>,
    /// The changelog, oldest first.
    pub history: Vec<HistoryRec>,
    pub components: Vec<String>,
    pub custom_fields: BTreeMap<String, Value>,
}

/// One changelog entry: who changed what, when.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryRec {
    pub id: String,
    /// Account id of the author.
    pub author: String,
    pub created: Timestamp,
    pub items: Vec<HistoryItem>,
}

/// One field's change in a [`HistoryRec`].
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryItem {
    /// `status`, `labels`, `assignee`, `summary`, `description`.
    pub field: String,
    pub from: Option<String>,
    pub from_string: Option<String>,
    pub to: Option<String>,
    pub to_string: Option<String>,
}

/// A read-only view of an issue, for test assertions.
#[derive(Clone, Debug, PartialEq)]
pub struct IssueSnapshot {
    pub key: String,
    pub summary: String,
    pub status: String,
    pub labels: Vec<String>,
    /// Account id of the assignee.
    pub assignee: Option<String>,
    pub comments: Vec<CommentRec>,
    pub properties: BTreeMap<String, Value>,
    /// The changelog, oldest first.
    pub history: Vec<HistoryRec>,
}

/// Per-issue write limits: at most `count` writes in any `window`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteLimits {
    pub rules: Vec<(u32, Duration)>,
}

impl Default for WriteLimits {
    /// Jira Cloud's: 20 writes per 2 s and 100 writes per 30 s per issue.
    fn default() -> Self {
        WriteLimits {
            rules: vec![(20, Duration::from_secs(2)), (100, Duration::from_secs(30))],
        }
    }
}

impl State {
    /// The account id of the user named by accountId, name or e-mail.
    pub fn user_id(&self, who: &str) -> Option<String> {
        self.users
            .iter()
            .find(|u| u.account_id == who || u.name == who || u.email == who)
            .map(|u| u.account_id.clone())
    }

    /// The display name of the user with this account id.
    pub fn display_name(&self, account_id: &str) -> Option<String> {
        self.users
            .iter()
            .find(|u| u.account_id == account_id)
            .map(|u| u.display_name.clone())
    }
}

pub(crate) struct State {
    pub flavor: SimFlavor,
    pub workflow: Workflow,
    pub users: Vec<UserDef>,
    pub projects: Vec<Project>,
    pub issues: BTreeMap<u64, IssueRec>,
    pub by_key: HashMap<String, u64>,
    pub next_issue_id: u64,
    pub next_comment_id: u64,
    pub write_limits: Option<WriteLimits>,
    pub transition_latency: Duration,
    /// Page size cap: Cloud caps `/search/jql` at 100 (5000 for id/key only), DC at 1000 by default.
    pub max_results: Option<u32>,
    /// Group name → member account ids.
    pub groups: BTreeMap<String, Vec<String>>,
    pub next_history_id: u64,
    /// Whether `expand=transitions` on an issue read is honoured (a Jira behind a proxy, or
    /// an older one, may leave the field out).
    pub expand_transitions: bool,
}
