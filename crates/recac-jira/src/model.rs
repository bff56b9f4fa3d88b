//! The parts of Jira's JSON the client reads. Every field is optional or
//! defaulted so that a reply missing a field is not an error; `raw` keeps
//! everything for callers that need more.

use serde::Deserialize;
use serde_json::Value;

/// A user. Cloud identifies users by `accountId`, Data Center by `name`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct User {
    pub account_id: Option<String>,
    pub name: Option<String>,
    pub key: Option<String>,
    pub display_name: Option<String>,
    pub email_address: Option<String>,
    pub active: Option<bool>,
}

impl User {
    /// The id this flavour uses: `accountId` (Cloud) or `name` (Data Center).
    pub fn id(&self) -> Option<&str> {
        self.account_id.as_deref().or(self.name.as_deref())
    }

    pub fn label(&self) -> String {
        let name = self.display_name.as_deref().unwrap_or("?");
        match self.id() {
            Some(id) => format!("{name} ({id})"),
            None => name.to_string(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct StatusCategory {
    /// `new`, `indeterminate` or `done`.
    pub key: Option<String>,
    pub name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Status {
    pub id: Option<String>,
    pub name: String,
    pub status_category: Option<StatusCategory>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ProjectRef {
    pub id: Option<String>,
    pub key: String,
    pub name: Option<String>,
}

/// The commonly used fields of an issue, parsed from `fields`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct IssueFields {
    pub summary: Option<String>,
    /// ADF on Cloud, a string on Data Center.
    pub description: Option<Value>,
    pub status: Option<Status>,
    pub labels: Vec<String>,
    pub assignee: Option<User>,
    pub project: Option<ProjectRef>,
    pub created: Option<String>,
    pub updated: Option<String>,
}

/// An issue: `id`, `key` and its fields (typed and raw).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Issue {
    pub id: String,
    pub key: String,
    pub fields: IssueFields,
    /// The whole `fields` object as returned.
    pub raw_fields: Value,
}

impl Issue {
    /// Parses one issue object; a wrong type in a known field is an error.
    pub fn from_value(value: &Value) -> Result<Issue, String> {
        let obj = value.as_object().ok_or("issue is not an object")?;
        let id = match obj.get("id") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err("issue has no id".into()),
        };
        let key = obj
            .get("key")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let raw_fields = obj
            .get("fields")
            .cloned()
            .unwrap_or(Value::Object(Default::default()));
        let fields: IssueFields = if raw_fields.is_null() {
            IssueFields::default()
        } else {
            serde_json::from_value(raw_fields.clone())
                .map_err(|e| format!("issue {key}: fields: {e}"))?
        };
        Ok(Issue {
            id,
            key,
            fields,
            raw_fields,
        })
    }

    pub fn summary(&self) -> &str {
        self.fields.summary.as_deref().unwrap_or("")
    }

    pub fn status_name(&self) -> Option<&str> {
        self.fields.status.as_ref().map(|s| s.name.as_str())
    }
}

/// Where a transition leads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TransitionTarget {
    pub id: Option<String>,
    pub name: String,
    pub status_category: Option<StatusCategory>,
}

/// A transition available on an issue now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Transition {
    pub id: String,
    pub name: String,
    pub to: Option<TransitionTarget>,
}

impl Transition {
    pub fn describe(&self) -> String {
        match &self.to {
            Some(to) => format!("{} {:?} → {:?}", self.id, self.name, to.name),
            None => format!("{} {:?}", self.id, self.name),
        }
    }
}

/// A comment. `body` is ADF on Cloud and a string on Data Center.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Comment {
    pub id: String,
    pub body: Value,
    pub author: Option<User>,
    pub created: Option<String>,
    /// When it was last edited (Jira sets it to `created` for a comment never edited).
    pub updated: Option<String>,
}

impl Comment {
    /// The body as plain text (ADF flattened, a mention as `@Display Name`).
    pub fn text(&self) -> String {
        crate::adf::plain_text(&self.body)
    }

    /// Whether the body mentions `user`: an ADF `mention` node with the user's accountId
    /// (Cloud, v3), or wiki markup `[~accountid:<accountId>]` (Cloud, v2) or
    /// `[~<name>]` (Data Center, by user name or key; names compare case-insensitively
    /// as Data Center does).
    pub fn mentions(&self, user: &User) -> bool {
        let account_id = user.account_id.as_deref().filter(|id| !id.is_empty());
        match &self.body {
            Value::String(wiki) => {
                crate::adf::wiki_mention_targets(wiki)
                    .into_iter()
                    .any(|target| match target.strip_prefix("accountid:") {
                        Some(id) => account_id == Some(id),
                        None => [user.name.as_deref(), user.key.as_deref()]
                            .into_iter()
                            .flatten()
                            .any(|name| !name.is_empty() && name.eq_ignore_ascii_case(target)),
                    })
            }
            adf => account_id.is_some_and(|id| {
                crate::adf::mentioned_account_ids(adf)
                    .into_iter()
                    .any(|mentioned| mentioned == id)
            }),
        }
    }

    /// When the comment was created, from Jira's `2026-12-06T17:00:00.000+0000` or an
    /// RFC 3339 timestamp; `None` when absent or unreadable.
    pub fn created_at(&self) -> Option<jiff::Timestamp> {
        self.created.as_deref().and_then(parse_jira_timestamp)
    }
}

/// Reads a timestamp as Jira writes it (`2026-12-06T17:00:00.000+0000`, an offset without
/// a colon) or as RFC 3339 (`…Z`, `…+00:00`).
pub fn parse_jira_timestamp(text: &str) -> Option<jiff::Timestamp> {
    let text = text.trim();
    text.parse::<jiff::Timestamp>()
        .ok()
        .or_else(|| jiff::Timestamp::strptime("%Y-%m-%dT%H:%M:%S%.f%z", text).ok())
}

/// One field's change in a [`ChangeHistory`] entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ChangeItem {
    /// The field's name: `status`, `labels`, `assignee`, …
    pub field: String,
    pub from: Option<String>,
    pub from_string: Option<String>,
    pub to: Option<String>,
    pub to_string: Option<String>,
}

/// One changelog entry of an issue: who changed which fields, when.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ChangeHistory {
    pub id: String,
    pub author: Option<User>,
    /// Jira's timestamp, e.g. `2026-11-26T10:00:00.000+0000`.
    pub created: Option<String>,
    pub items: Vec<ChangeItem>,
}

impl ChangeItem {
    /// The labels after the change (Jira writes them space-separated).
    pub fn labels_after(&self) -> Vec<&str> {
        self.to_string
            .as_deref()
            .unwrap_or("")
            .split_whitespace()
            .collect()
    }

    /// The labels before the change.
    pub fn labels_before(&self) -> Vec<&str> {
        self.from_string
            .as_deref()
            .unwrap_or("")
            .split_whitespace()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cloud_bot() -> User {
        User {
            account_id: Some("5b10ac8d82e05b22cc7d4ef5".into()),
            display_name: Some("recac bot".into()),
            ..User::default()
        }
    }

    fn datacenter_bot() -> User {
        User {
            name: Some("recac-bot".into()),
            key: Some("JIRAUSER10100".into()),
            display_name: Some("recac bot".into()),
            ..User::default()
        }
    }

    fn comment(body: Value) -> Comment {
        Comment {
            id: "10000".into(),
            body,
            ..Comment::default()
        }
    }

    #[test]
    fn mentions_in_adf_bodies() {
        let mention = |id: &str| {
            comment(
                json!({"type": "doc", "version": 1, "content": [{"type": "paragraph", "content": [
                {"type": "mention", "attrs": {"id": id, "text": "@recac bot"}},
                {"type": "text", "text": " retry"}]}]}),
            )
        };
        assert!(mention("5b10ac8d82e05b22cc7d4ef5").mentions(&cloud_bot()));
        assert!(!mention("someone-else").mentions(&cloud_bot()));
        assert!(!mention("5b10ac8d82e05b22cc7d4ef5").mentions(&datacenter_bot()));
        let text_only = comment(
            json!({"type": "doc", "version": 1, "content": [{"type": "paragraph",
            "content": [{"type": "text", "text": "@recac bot 5b10ac8d82e05b22cc7d4ef5"}]}]}),
        );
        assert!(!text_only.mentions(&cloud_bot()));
        assert_eq!(mention("x").text(), "@recac bot retry");
    }

    #[test]
    fn mentions_in_wiki_bodies() {
        let cloud = cloud_bot();
        assert!(comment(json!("[~accountid:5b10ac8d82e05b22cc7d4ef5] retry")).mentions(&cloud));
        assert!(!comment(json!("[~accountid:other] retry")).mentions(&cloud));
        assert!(!comment(json!("~accountid:5b10ac8d82e05b22cc7d4ef5 retry")).mentions(&cloud));

        let dc = datacenter_bot();
        assert!(comment(json!("[~recac-bot] retry")).mentions(&dc));
        assert!(comment(json!("please [~Recac-Bot] look")).mentions(&dc));
        assert!(comment(json!("[~JIRAUSER10100] look")).mentions(&dc));
        assert!(!comment(json!("[~recac-bot2] look")).mentions(&dc));
        assert!(!comment(json!("[~accountid:recac-bot]")).mentions(&dc));
        assert!(!comment(json!("[~]")).mentions(&User::default()));
    }

    #[test]
    fn created_at_reads_jira_and_rfc3339_timestamps() {
        let expected: jiff::Timestamp = "2026-12-06T17:00:00Z".parse().expect("timestamp");
        let at = |created: &str| {
            Comment {
                created: Some(created.into()),
                ..Comment::default()
            }
            .created_at()
        };
        assert_eq!(at("2026-12-06T17:00:00.000+0000"), Some(expected));
        assert_eq!(at("2026-12-06T18:00:00.000+0100"), Some(expected));
        assert_eq!(at("2026-12-06T17:00:00Z"), Some(expected));
        assert_eq!(at("2026-12-06T17:00:00.000+00:00"), Some(expected));
        assert_eq!(at("2026-12-06T12:00:00-05:00"), Some(expected));
        assert_eq!(at("yesterday"), None);
        assert_eq!(Comment::default().created_at(), None);
    }
}
