//! The REST resources: rendering and handlers.

use std::time::Instant;

use base64::Engine;
use jiff::Timestamp;
use serde_json::{Value, json};

use crate::fields::{self, FieldSel};
use crate::model::{
    Category, CommentRec, HistoryItem, HistoryRec, IssueRec, SimFlavor, State, StatusDef, UserDef,
};
use crate::params::{Params, split_list};
use crate::server::{Api, Ctx, Reply, empty, error, field_error, reply};
use crate::text::{adf_to_text, check_adf};
use crate::webhook::EventSubject;
use crate::{Shared, jql, lock};

const NO_ISSUE: &str = "Issue does not exist or you do not have permission to see it.";
const COMMENT_LIMIT: usize = 32_767;

fn not_on_screen(field: &str) -> Reply {
    field_error(
        400,
        field,
        &format!("Field '{field}' cannot be set. It is not on the appropriate screen, or unknown."),
    )
}

pub(crate) fn jira_time(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.3f%z").to_string()
}

// ---------------------------------------------------------------- rendering

pub(crate) fn user_json(ctx: &Ctx, u: &UserDef) -> Value {
    let avatar = |size: u32| {
        format!(
            "{}/secure/useravatar?size={size}&ownerId={}",
            ctx.site, u.name
        )
    };
    let avatars =
        json!({"48x48": avatar(48), "24x24": avatar(24), "16x16": avatar(16), "32x32": avatar(32)});
    match ctx.flavor {
        SimFlavor::Cloud => json!({
            "self": ctx.rest(&format!("user?accountId={}", u.account_id)),
            "accountId": u.account_id,
            "accountType": "atlassian",
            "emailAddress": u.email,
            "avatarUrls": avatars,
            "displayName": u.display_name,
            "active": true,
            "timeZone": "UTC",
        }),
        SimFlavor::Datacenter => json!({
            "self": ctx.rest(&format!("user?username={}", u.name)),
            "name": u.name,
            "key": u.name,
            "emailAddress": u.email,
            "avatarUrls": avatars,
            "displayName": u.display_name,
            "active": true,
            "timeZone": "UTC",
        }),
    }
}

fn category_json(ctx: &Ctx, c: Category) -> Value {
    json!({
        "self": ctx.rest(&format!("statuscategory/{}", c.id())),
        "id": c.id(),
        "key": c.key(),
        "colorName": c.color(),
        "name": c.name(),
    })
}

fn status_json(ctx: &Ctx, s: &StatusDef) -> Value {
    json!({
        "self": ctx.rest(&format!("status/{}", s.id)),
        "description": "",
        "iconUrl": format!("{}/images/icons/statuses/generic.png", ctx.site),
        "name": s.name,
        "id": s.id,
        "statusCategory": category_json(ctx, s.category),
    })
}

fn comment_json(ctx: &Ctx, st: &State, c: &CommentRec, issue_id: u64) -> Value {
    let user = |account_id: &str| {
        st.users
            .iter()
            .find(|u| u.account_id == account_id)
            .map(|u| user_json(ctx, u))
            .unwrap_or(Value::Null)
    };
    json!({
        "self": ctx.rest(&format!("issue/{issue_id}/comment/{}", c.id)),
        "id": c.id,
        "author": user(&c.author),
        "updateAuthor": user(&c.update_author),
        "body": ctx.rich(st, &c.body),
        "created": jira_time(c.created),
        "updated": jira_time(c.updated),
        "jsdPublic": true,
    })
}

/// Jira's `comment_created` (or `comment_updated`) webhook payload: the comment, its body
/// as the flavour keeps rich text (ADF on Cloud, wiki markup on Data Center), and the issue
/// with a few fields. Links are REST v2 ones, as in the deliveries Jira Cloud makes.
fn comment_event(
    event: &str,
    site: &str,
    st: &State,
    issue: &IssueRec,
    comment: &CommentRec,
) -> Value {
    let links = Ctx {
        site: site.to_string(),
        api: Api::V2,
        flavor: st.flavor,
    };
    let bodies = Ctx {
        site: site.to_string(),
        api: match st.flavor {
            SimFlavor::Cloud => Api::V3,
            SimFlavor::Datacenter => Api::V2,
        },
        flavor: st.flavor,
    };
    let mut comment_out = comment_json(&links, st, comment, issue.id);
    comment_out["body"] = bodies.rich(st, &comment.body);
    let fields: Vec<String> = ["summary", "status", "project", "assignee"]
        .map(String::from)
        .to_vec();
    let mut issue_out = issue_json(
        &links,
        st,
        issue,
        &FieldSel::from_list(&fields),
        &Extras::default(),
    );
    if let Some(out) = issue_out.as_object_mut() {
        out.remove("expand");
    }
    json!({
        "timestamp": Timestamp::now().as_millisecond(),
        "webhookEvent": event,
        "comment": comment_out,
        "issue": issue_out,
    })
}

/// Sends `comment_created` for each of `comment_ids` on the issue, when a webhook is set.
pub(crate) fn announce_comments(
    shared: &Shared,
    site: &str,
    st: &State,
    issue_id: u64,
    comment_ids: &[String],
) {
    announce("comment_created", shared, site, st, issue_id, comment_ids);
}

/// Sends `event` for each of `comment_ids` on the issue, when a webhook is set.
fn announce(
    event: &'static str,
    shared: &Shared,
    site: &str,
    st: &State,
    issue_id: u64,
    comment_ids: &[String],
) {
    if !shared.webhooks.enabled() {
        return;
    }
    let Some(issue) = st.issues.get(&issue_id) else {
        return;
    };
    for comment in issue
        .comments
        .iter()
        .filter(|c| comment_ids.contains(&c.id))
    {
        let payload = comment_event(event, site, st, issue, comment);
        let subject = EventSubject {
            event,
            issue_key: issue.key.clone(),
            comment_id: comment.id.clone(),
        };
        shared.webhooks.deliver(subject, &payload);
    }
}

fn transitions_json(ctx: &Ctx, st: &State, issue: &IssueRec, only: Option<&str>) -> Vec<Value> {
    st.workflow
        .available(&issue.status_id)
        .into_iter()
        .filter(|t| only.is_none_or(|id| t.id == id))
        .filter_map(|t| {
            let to = st.workflow.status(&t.to)?;
            Some(json!({
                "id": t.id, "name": t.name, "to": status_json(ctx, to), "hasScreen": false,
                "isGlobal": t.from.is_empty(), "isInitial": false, "isAvailable": true,
                "isConditional": false, "isLooped": false,
            }))
        })
        .collect()
}

/// What to add to an issue besides its fields.
#[derive(Default)]
struct Extras {
    /// `expand=names`: field id → name.
    names: bool,
    /// `expand=transitions`.
    transitions: bool,
    /// The caller lacks the Transition Issues permission: Jira lists no transitions.
    no_transition_permission: bool,
    /// `expand=changelog`.
    changelog: bool,
    /// `properties=`: keys (or `*all`) of the issue properties to include.
    properties: Option<Vec<String>>,
}

impl Extras {
    fn from(expand: Option<Vec<String>>, properties: Option<Vec<String>>) -> Extras {
        let expand = expand.unwrap_or_default();
        Extras {
            names: expand.iter().any(|e| e == "names"),
            transitions: expand.iter().any(|e| e == "transitions"),
            changelog: expand.iter().any(|e| e == "changelog"),
            properties,
            no_transition_permission: false,
        }
    }
}

/// Renders an issue with the selected fields.
fn issue_json(ctx: &Ctx, st: &State, issue: &IssueRec, sel: &FieldSel, extras: &Extras) -> Value {
    if sel.only(&["id"]) {
        return json!({"id": issue.id.to_string()});
    }
    let mut out = serde_json::Map::new();
    if sel.wants("summary") {
        out.insert("summary".into(), json!(issue.summary));
    }
    if sel.wants("description") {
        let d = match &issue.description {
            None => Value::Null,
            Some(t) => ctx.rich_text(st, t),
        };
        out.insert("description".into(), d);
    }
    if sel.wants("status") {
        let s = st
            .workflow
            .statuses
            .iter()
            .find(|s| s.id == issue.status_id);
        out.insert(
            "status".into(),
            s.map(|s| status_json(ctx, s)).unwrap_or(Value::Null),
        );
    }
    if sel.wants("labels") {
        out.insert("labels".into(), json!(issue.labels));
    }
    if sel.wants("assignee") {
        let a = issue
            .assignee
            .as_deref()
            .and_then(|a| st.users.iter().find(|u| u.account_id == a))
            .map(|u| user_json(ctx, u))
            .unwrap_or(Value::Null);
        out.insert("assignee".into(), a);
    }
    if sel.wants("reporter") {
        let r = issue
            .reporter
            .as_deref()
            .and_then(|a| st.users.iter().find(|u| u.account_id == a))
            .map(|u| user_json(ctx, u))
            .unwrap_or(Value::Null);
        out.insert("reporter".into(), r);
    }
    if sel.wants("project") {
        let p = st.projects.iter().find(|p| p.key == issue.project);
        out.insert(
            "project".into(),
            p.map(|p| json!({"self": ctx.rest(&format!("project/{}", p.id)), "id": p.id, "key": p.key, "name": p.name, "projectTypeKey": "software"}))
                .unwrap_or(Value::Null),
        );
    }
    if sel.wants("components") {
        let components: Vec<Value> = issue
            .components
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let id = 10_000 + i;
                json!({"self": ctx.rest(&format!("component/{id}")), "id": id.to_string(), "name": name})
            })
            .collect();
        out.insert("components".into(), json!(components));
    }
    for (field, value) in &issue.custom_fields {
        if sel.wants(field) {
            out.insert(field.clone(), value.clone());
        }
    }
    if sel.wants("created") {
        out.insert("created".into(), json!(jira_time(issue.created)));
    }
    if sel.wants("updated") {
        out.insert("updated".into(), json!(jira_time(issue.updated)));
    }
    if sel.wants("comment") {
        let comments: Vec<Value> = issue
            .comments
            .iter()
            .map(|c| comment_json(ctx, st, c, issue.id))
            .collect();
        out.insert(
            "comment".into(),
            json!({
                "self": ctx.rest(&format!("issue/{}/comment", issue.id)),
                "comments": comments, "maxResults": comments.len(),
                "total": comments.len(), "startAt": 0,
            }),
        );
    }
    let mut issue_out = json!({
        "expand": "renderedFields,names,schema,operations,editmeta,changelog,versionedRepresentations",
        "id": issue.id.to_string(),
        "self": ctx.rest(&format!("issue/{}", issue.id)),
        "key": issue.key,
    });
    if extras.names {
        let names: serde_json::Map<String, Value> = out
            .keys()
            .filter_map(|k| fields::info(k).map(|f| (k.clone(), json!(f.name))))
            .collect();
        issue_out["names"] = Value::Object(names);
    }
    if extras.transitions {
        issue_out["transitions"] = if extras.no_transition_permission {
            json!([])
        } else {
            json!(transitions_json(ctx, st, issue, None))
        };
    }
    if extras.changelog {
        issue_out["changelog"] = changelog_json(ctx, st, issue);
    }
    if let Some(keys) = &extras.properties {
        let all = keys.iter().any(|k| k == "*all");
        let props: serde_json::Map<String, Value> = issue
            .properties
            .iter()
            .filter(|(k, _)| {
                !keys.iter().any(|x| x.strip_prefix('-') == Some(k.as_str()))
                    && (all || keys.contains(k))
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        issue_out["properties"] = Value::Object(props);
    }
    issue_out["fields"] = Value::Object(out);
    issue_out
}

// ------------------------------------------------------------------- lookup

/// Finds a visible issue by key (case-insensitive) or id.
fn find<'a>(st: &'a State, key: &str, user: &UserDef) -> Option<&'a IssueRec> {
    let id = st
        .by_key
        .get(&key.to_ascii_uppercase())
        .copied()
        .or_else(|| key.parse::<u64>().ok())?;
    st.issues
        .get(&id)
        .filter(|i| user.has(&i.project, "BROWSE_PROJECTS"))
}

fn issue_id(st: &State, key: &str, user: &UserDef) -> Option<u64> {
    find(st, key, user).map(|i| i.id)
}

/// Checks and counts a write against the per-issue limits; `Err` is the 429.
fn note_write(st: &mut State, id: u64) -> Result<(), Reply> {
    let limits = st.write_limits.clone();
    let Some(issue) = st.issues.get_mut(&id) else {
        return Ok(());
    };
    let now = Instant::now();
    if let Some(limits) = limits {
        let longest = limits
            .rules
            .iter()
            .map(|(_, w)| *w)
            .max()
            .unwrap_or_default();
        while issue
            .writes
            .front()
            .is_some_and(|t| now.duration_since(*t) > longest)
        {
            issue.writes.pop_front();
        }
        for (count, window) in &limits.rules {
            let in_window: Vec<&Instant> = issue
                .writes
                .iter()
                .filter(|t| now.duration_since(**t) < *window)
                .collect();
            if in_window.len() as u32 >= *count {
                let oldest = in_window
                    .first()
                    .map(|t| now.duration_since(**t))
                    .unwrap_or_default();
                let wait = window.saturating_sub(oldest).as_secs_f64().ceil().max(1.0) as u64;
                let mut r = error(429, &["Rate limit exceeded."]);
                r.headers.push(("retry-after", wait.to_string()));
                r.headers
                    .push(("ratelimit-reason", "jira-per-issue-on-write".into()));
                return Err(r);
            }
        }
    }
    issue.writes.push_back(now);
    issue.updated = Timestamp::now();
    Ok(())
}

/// Appends a changelog entry by `author` (nothing when `items` is empty).
pub(crate) fn record_history(st: &mut State, id: u64, author: &str, items: Vec<HistoryItem>) {
    if items.is_empty() {
        return;
    }
    let hid = st.next_history_id.to_string();
    st.next_history_id += 1;
    if let Some(issue) = st.issues.get_mut(&id) {
        issue.history.push(HistoryRec {
            id: hid,
            author: author.to_string(),
            created: Timestamp::now(),
            items,
        });
        issue.updated = Timestamp::now();
    }
}

/// The changelog item of an assignee change (ids are account ids).
pub(crate) fn assignee_item(st: &State, from: Option<&str>, to: Option<&str>) -> HistoryItem {
    let name = |a: Option<&str>| {
        a.and_then(|a| st.users.iter().find(|u| u.account_id == a))
            .map(|u| u.display_name.clone())
    };
    HistoryItem {
        field: "assignee".into(),
        from: from.map(str::to_string),
        from_string: name(from),
        to: to.map(str::to_string),
        to_string: name(to),
    }
}

fn changelog_json(ctx: &Ctx, st: &State, issue: &IssueRec) -> Value {
    let histories: Vec<Value> = issue
        .history
        .iter()
        .map(|h| {
            let author = st
                .users
                .iter()
                .find(|u| u.account_id == h.author)
                .map(|u| user_json(ctx, u))
                .unwrap_or(Value::Null);
            let items: Vec<Value> = h
                .items
                .iter()
                .map(|i| {
                    // Jira leaves out what a change has no value for (the contract types
                    // them as strings, not nullable).
                    let mut item =
                        json!({"field": i.field, "fieldtype": "jira", "fieldId": i.field});
                    for (name, value) in [
                        ("from", &i.from),
                        ("fromString", &i.from_string),
                        ("to", &i.to),
                        ("toString", &i.to_string),
                    ] {
                        if let Some(v) = value {
                            item[name] = json!(v);
                        }
                    }
                    item
                })
                .collect();
            json!({"id": h.id, "author": author, "created": jira_time(h.created), "items": items})
        })
        .collect();
    json!({"startAt": 0, "maxResults": histories.len(), "total": histories.len(), "histories": histories})
}

// ------------------------------------------------------------ site and users

pub(crate) fn server_info(ctx: &Ctx) -> Reply {
    let now = jira_time(Timestamp::now());
    match ctx.flavor {
        SimFlavor::Cloud => reply(
            200,
            json!({
                "baseUrl": ctx.site,
                "displayUrl": ctx.site,
                "version": "1001.0.0-SNAPSHOT",
                "versionNumbers": [1001, 0, 0],
                "deploymentType": "Cloud",
                "buildNumber": 100_290,
                "buildDate": "2025-06-02T00:00:00.000+0000",
                "serverTime": now,
                "scmInfo": "recac-jira-sim",
                "serverTitle": "Jira (recac simulator)",
                "serverTimeZone": "Etc/UTC",
            }),
        ),
        SimFlavor::Datacenter => reply(
            200,
            json!({
                "baseUrl": ctx.site,
                "version": "9.12.0",
                "versionNumbers": [9, 12, 0],
                "deploymentType": "Server",
                "buildNumber": 9_120_000,
                "buildDate": "2023-11-28T00:00:00.000+0000",
                "databaseBuildNumber": 9_120_000,
                "serverTime": now,
                "scmInfo": "recac-jira-sim",
                "serverTitle": "Jira (recac simulator)",
            }),
        ),
    }
}

pub(crate) fn fields(ctx: &Ctx) -> Reply {
    let list: Vec<Value> = fields::FIELDS
        .iter()
        .map(|f| fields::field_json(f, ctx.flavor))
        .collect();
    reply(200, json!(list))
}

pub(crate) fn my_permissions(shared: &Shared, p: &Params, user: &UserDef) -> Reply {
    let st = lock(&shared.state);
    let Some(perms) = p.list("permissions").filter(|p| !p.is_empty()) else {
        return error(400, &["The permissions query parameter is required."]);
    };
    let project = p.get("projectKey");
    if let Some(key) = project
        && !st.projects.iter().any(|x| x.key.eq_ignore_ascii_case(key))
    {
        return error(
            404,
            &[&format!("No project could be found with key '{key}'.")],
        );
    }
    let mut out = serde_json::Map::new();
    for (i, perm) in perms.iter().enumerate() {
        if !crate::ALL_PERMISSIONS.contains(&perm.as_str()) {
            return error(404, &[&format!("Permission '{perm}' does not exist.")]);
        }
        let have = match project {
            Some(key) => user.has(&key.to_ascii_uppercase(), perm),
            None => user.has("*", perm),
        };
        out.insert(
            perm.clone(),
            json!({"id": (i + 1).to_string(), "key": perm, "name": perm, "type": "PROJECT", "description": "", "havePermission": have}),
        );
    }
    reply(200, json!({"permissions": out}))
}

/// Whether a user search term matches: a case-insensitive prefix of the
/// e-mail address, the display name or one of its words, or (Data Center)
/// the user name; `.` matches everyone on Data Center.
fn user_matches(flavor: SimFlavor, u: &UserDef, term: &str) -> bool {
    let term = term.trim();
    if flavor == SimFlavor::Datacenter && term == "." {
        return true;
    }
    let lower = term.to_lowercase();
    let starts = |s: &str| s.to_lowercase().starts_with(&lower);
    starts(&u.email)
        || starts(&u.display_name)
        || u.display_name.split_whitespace().any(starts)
        || (flavor == SimFlavor::Datacenter && starts(&u.name))
        || (flavor == SimFlavor::Cloud && u.account_id == term)
}

fn page_of_users(ctx: &Ctx, p: &Params, users: Vec<&UserDef>) -> Reply {
    let start: usize = p.parsed("startAt").unwrap_or(0);
    let max: usize = p.parsed("maxResults").unwrap_or(50).min(1000);
    let list: Vec<Value> = users
        .into_iter()
        .skip(start)
        .take(max)
        .map(|u| user_json(ctx, u))
        .collect();
    reply(200, json!(list))
}

/// The search term: `query` on Cloud (user names do not exist there),
/// `username` on Data Center.
fn user_term<'a>(ctx: &Ctx, p: &'a Params) -> Option<&'a str> {
    match ctx.flavor {
        SimFlavor::Cloud => p.get("query"),
        SimFlavor::Datacenter => p.get("username").or(p.get("query")),
    }
}

pub(crate) fn user_search(shared: &Shared, ctx: &Ctx, p: &Params) -> Reply {
    let st = lock(&shared.state);
    let term = user_term(ctx, p);
    let account = (ctx.flavor == SimFlavor::Cloud)
        .then(|| p.get("accountId"))
        .flatten();
    if term.is_none_or(|t| t.trim().is_empty()) && account.is_none() {
        return error(
            400,
            &[match ctx.flavor {
                SimFlavor::Cloud => {
                    "One of 'query', 'accountId' or 'property' query parameters must be provided."
                }
                SimFlavor::Datacenter => "The username query parameter was not provided",
            }],
        );
    }
    let users = st
        .users
        .iter()
        .filter(|u| account.is_none_or(|a| u.account_id == a))
        .filter(|u| term.is_none_or(|t| user_matches(ctx.flavor, u, t)))
        .collect();
    page_of_users(ctx, p, users)
}

pub(crate) fn assignable_search(shared: &Shared, ctx: &Ctx, p: &Params, user: &UserDef) -> Reply {
    let st = lock(&shared.state);
    let project = match (p.get("project"), p.get("issueKey")) {
        (Some(key), _) => match st.projects.iter().find(|x| x.key.eq_ignore_ascii_case(key)) {
            Some(x) => x.key.clone(),
            None => {
                return error(
                    404,
                    &[&format!("No project could be found with key '{key}'.")],
                );
            }
        },
        (None, Some(key)) => match find(&st, key, user) {
            Some(i) => i.project.clone(),
            None => return error(404, &[NO_ISSUE]),
        },
        (None, None) => {
            return error(
                400,
                &["A project or issue key is required to search for assignable users."],
            );
        }
    };
    let term = user_term(ctx, p);
    let account = p.get("accountId");
    let users = st
        .users
        .iter()
        .filter(|u| u.has(&project, "ASSIGNABLE_USER"))
        .filter(|u| account.is_none_or(|a| u.account_id == a))
        .filter(|u| {
            term.filter(|t| !t.trim().is_empty())
                .is_none_or(|t| user_matches(ctx.flavor, u, t))
        })
        .collect();
    page_of_users(ctx, p, users)
}

pub(crate) fn get_user(shared: &Shared, ctx: &Ctx, p: &Params) -> Reply {
    let st = lock(&shared.state);
    let found = match ctx.flavor {
        SimFlavor::Cloud => p
            .get("accountId")
            .and_then(|a| st.users.iter().find(|u| u.account_id == a)),
        SimFlavor::Datacenter => p
            .get("username")
            .or(p.get("key"))
            .and_then(|n| st.users.iter().find(|u| u.name.eq_ignore_ascii_case(n))),
    };
    match found {
        Some(u) => {
            let mut out = user_json(ctx, u);
            if p.list("expand")
                .unwrap_or_default()
                .iter()
                .any(|e| e == "groups")
            {
                let items: Vec<Value> = groups_of(&st, &u.account_id)
                    .into_iter()
                    .map(|g| json!({"name": g}))
                    .collect();
                out["groups"] = json!({"size": items.len(), "items": items});
            }
            reply(200, out)
        }
        None => error(404, &["The user does not exist."]),
    }
}

fn groups_of(st: &State, account_id: &str) -> Vec<String> {
    st.groups
        .iter()
        .filter(|(_, members)| members.iter().any(|m| m == account_id))
        .map(|(g, _)| g.clone())
        .collect()
}

/// GET `/user/groups?accountId=` (Cloud) or `?username=` (Data Center): the user's groups.
pub(crate) fn user_groups(shared: &Shared, ctx: &Ctx, p: &Params) -> Reply {
    let st = lock(&shared.state);
    let found = p
        .get("accountId")
        .and_then(|a| st.users.iter().find(|u| u.account_id == a))
        .or_else(|| {
            p.get("username")
                .and_then(|n| st.users.iter().find(|u| u.name.eq_ignore_ascii_case(n)))
        });
    let Some(u) = found else {
        return error(404, &["The user does not exist."]);
    };
    let groups: Vec<Value> = groups_of(&st, &u.account_id)
        .into_iter()
        .map(|g| json!({"name": g, "self": ctx.rest(&format!("group?groupname={g}"))}))
        .collect();
    reply(200, Value::Array(groups))
}

// ------------------------------------------------------------------- search

/// A list-valued member of a JSON body: an array of strings or one comma-separated string.
fn body_list(v: Option<&Value>) -> Result<Option<Vec<String>>, ()> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(split_list(s).collect())),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string).ok_or(()))
            .collect::<Result<Vec<_>, _>>()
            .map(|l| Some(l.iter().flat_map(|s| split_list(s)).collect())),
        Some(_) => Err(()),
    }
}

struct SearchArgs {
    jql: String,
    token: Option<String>,
    start_at: Option<u64>,
    max_results: Option<u64>,
    fields: Option<Vec<String>>,
    expand: Option<Vec<String>>,
    properties: Option<Vec<String>>,
}

fn search_args(method: &str, p: &Params, body: Option<Value>) -> Result<SearchArgs, Reply> {
    if method != "POST" {
        return Ok(SearchArgs {
            jql: p.get("jql").unwrap_or_default().to_string(),
            token: p.get("nextPageToken").map(str::to_string),
            start_at: p.parsed("startAt"),
            max_results: p.parsed("maxResults"),
            fields: p.list("fields"),
            expand: p.list("expand"),
            properties: p.list("properties"),
        });
    }
    let Some(b) = body.as_ref().and_then(Value::as_object) else {
        return Err(error(400, &["Request body is not valid JSON."]));
    };
    let list = |name: &str| {
        body_list(b.get(name))
            .map_err(|()| error(400, &[&format!("'{name}' must be a list of strings.")]))
    };
    Ok(SearchArgs {
        jql: b
            .get("jql")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        token: b
            .get("nextPageToken")
            .and_then(Value::as_str)
            .map(str::to_string),
        start_at: b.get("startAt").and_then(Value::as_u64),
        max_results: b.get("maxResults").and_then(Value::as_u64),
        fields: list("fields")?,
        expand: list("expand")?,
        properties: list("properties")?,
    })
}

pub(crate) fn search(
    shared: &Shared,
    ctx: &Ctx,
    method: &str,
    p: &Params,
    body: Option<Value>,
    user: &UserDef,
) -> Reply {
    let st = lock(&shared.state);
    let cloud = st.flavor == SimFlavor::Cloud;
    let args = match search_args(method, p, body) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let q = match jql::parse(&args.jql) {
        Ok(q) => q,
        Err(e) => return error(400, &[&e]),
    };
    if let Err(errors) = jql::validate(&q, &st) {
        let refs: Vec<&str> = errors.iter().map(String::as_str).collect();
        return error(400, &refs);
    }
    if cloud && q.filter.is_none() {
        return error(
            400,
            &[
                "Unbounded JQL queries are not allowed here. Please add a search restriction to your query.",
            ],
        );
    }
    // Default fields: Cloud returns only `id`; Data Center the navigable fields.
    let sel = match &args.fields {
        Some(list) => FieldSel::from_list(list),
        None if cloud => FieldSel::from_list(&["id".to_string()]),
        None => FieldSel::navigable(),
    };
    let cap = st.max_results.map(u64::from).unwrap_or(if cloud {
        if sel.only(&["id", "key"]) { 5000 } else { 100 }
    } else {
        1000
    });
    let max = args.max_results.unwrap_or(50).min(cap);
    let digest = fnv(&args.jql);
    let offset = if cloud {
        match args.token {
            None => 0,
            Some(t) => match decode_token(&t) {
                Some((off, d)) if d == digest => off,
                _ => {
                    return error(
                        400,
                        &["The provided next page token is invalid or expired."],
                    );
                }
            },
        }
    } else {
        args.start_at.unwrap_or(0)
    };
    let me = user.account_id.clone();
    let mut hits: Vec<&IssueRec> = st
        .issues
        .values()
        .filter(|i| user.has(&i.project, "BROWSE_PROJECTS"))
        .filter(|i| {
            q.filter
                .as_ref()
                .is_none_or(|f| jql::matches(f, i, &st, &me))
        })
        .collect();
    jql::sort(&mut hits, &q.order, &st);
    let total = hits.len() as u64;
    let extras = Extras {
        properties: args.properties,
        ..Extras::default()
    };
    let page: Vec<Value> = hits
        .iter()
        .skip(offset as usize)
        .take(max as usize)
        .map(|i| issue_json(ctx, &st, i, &sel, &extras))
        .collect();
    let end = offset + page.len() as u64;
    let names = args
        .expand
        .unwrap_or_default()
        .iter()
        .any(|e| e == "names")
        .then(|| {
            let m: serde_json::Map<String, Value> = fields::FIELDS
                .iter()
                .filter(|f| sel.wants(f.id))
                .map(|f| (f.id.to_string(), json!(f.name)))
                .collect();
            Value::Object(m)
        });
    let mut out = if cloud {
        let mut out = json!({"issues": page, "isLast": end >= total});
        if end < total {
            out["nextPageToken"] = json!(encode_token(end, digest));
        }
        out
    } else {
        json!({"expand": "names,schema", "startAt": offset, "maxResults": max, "total": total, "issues": page})
    };
    if let Some(names) = names {
        out["names"] = names;
    }
    reply(200, out)
}

fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

fn encode_token(offset: u64, digest: u64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("o={offset};q={digest:x}"))
}

fn decode_token(token: &str) -> Option<(u64, u64)> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (o, q) = text.split_once(';')?;
    Some((
        o.strip_prefix("o=")?.parse().ok()?,
        u64::from_str_radix(q.strip_prefix("q=")?, 16).ok()?,
    ))
}

// ------------------------------------------------------------------- issues

pub(crate) fn get_issue(
    shared: &Shared,
    ctx: &Ctx,
    key: &str,
    p: &Params,
    user: &UserDef,
) -> Reply {
    let st = lock(&shared.state);
    let Some(issue) = find(&st, key, user) else {
        return error(404, &[NO_ISSUE]);
    };
    let sel = p
        .list("fields")
        .map(|l| FieldSel::from_list(&l))
        .unwrap_or_else(FieldSel::all);
    let mut extras = Extras::from(p.list("expand"), p.list("properties"));
    extras.transitions &= st.expand_transitions;
    extras.no_transition_permission = !user.has(&issue.project, "TRANSITION_ISSUES");
    reply(200, issue_json(ctx, &st, issue, &sel, &extras))
}

/// The changes one edit makes, checked before any is applied.
struct Edit {
    labels: Vec<String>,
    summary: Option<String>,
    description: Option<Option<String>>,
    /// `Some(None)` unassigns.
    assignee: Option<Option<String>>,
    comments: Vec<Value>,
}

fn check_label(v: &str) -> Result<(), Reply> {
    if v.is_empty() || v.contains(char::is_whitespace) || v.chars().count() > 255 {
        return Err(field_error(
            400,
            "labels",
            &format!("The label '{v}' contains spaces which is invalid."),
        ));
    }
    Ok(())
}

fn summary_value(v: &Value) -> Result<String, Reply> {
    match v {
        Value::String(s) if s.contains(['\n', '\r']) => Err(field_error(
            400,
            "summary",
            "The summary is invalid because it contains newline characters.",
        )),
        Value::String(s) if s.chars().count() > 255 => Err(field_error(
            400,
            "summary",
            "Summary must be less than 255 characters.",
        )),
        Value::String(s) if !s.trim().is_empty() => Ok(s.clone()),
        _ => Err(field_error(
            400,
            "summary",
            "You must specify a summary of the issue.",
        )),
    }
}

/// A description as stored (text): a string on v2, an ADF document on v3.
fn description_value(ctx: &Ctx, v: &Value) -> Result<Option<String>, Reply> {
    match (ctx.api, v) {
        (_, Value::Null) => Ok(None),
        (Api::V2, Value::String(s)) => Ok(Some(s.clone()).filter(|s| !s.is_empty())),
        (Api::V2, _) => Err(field_error(
            400,
            "description",
            "Operation value must be a string",
        )),
        (Api::V3, doc) => match check_adf(doc) {
            Ok(_) => Ok(Some(adf_to_text(doc)).filter(|s| !s.is_empty())),
            Err(e) => Err(field_error(400, "description", &e)),
        },
    }
}

/// The user a `{"accountId": …}` (Cloud) or `{"name": …}` (Data Center)
/// object names; `null`, an empty object or the id `-1` (automatic: the
/// simulator's projects have no default assignee) mean unassigned.
fn assignee_value(st: &State, v: &Value) -> Result<Option<String>, Reply> {
    let field = match st.flavor {
        SimFlavor::Cloud => "accountId",
        SimFlavor::Datacenter => "name",
    };
    let obj = match v {
        Value::Null => return Ok(None),
        Value::Object(o) => o,
        _ => {
            return Err(error(
                400,
                &["Can not deserialize the request body: expected an object."],
            ));
        }
    };
    let id = match obj.get(field) {
        Some(Value::String(s)) => s.as_str(),
        Some(Value::Null) => return Ok(None),
        Some(_) => return Err(field_error(400, field, "must be a string")),
        None => match st.flavor {
            SimFlavor::Datacenter => match obj.get("key") {
                Some(Value::String(s)) => s.as_str(),
                _ => return Ok(None),
            },
            SimFlavor::Cloud if obj.contains_key("name") || obj.contains_key("key") => {
                return Err(field_error(
                    400,
                    "assignee",
                    "Jira Cloud identifies users by accountId; 'name' and 'key' are not supported.",
                ));
            }
            SimFlavor::Cloud => return Ok(None),
        },
    };
    if id == "-1" {
        return Ok(None);
    }
    let found = st.users.iter().find(|u| match st.flavor {
        SimFlavor::Cloud => u.account_id == id,
        SimFlavor::Datacenter => u.name.eq_ignore_ascii_case(id),
    });
    match found {
        Some(u) => Ok(Some(u.account_id.clone())),
        None => Err(field_error(
            400,
            "assignee",
            &format!("User '{id}' cannot be assigned issues."),
        )),
    }
}

/// A comment body as stored: wiki text (v2) or ADF (v3), checked like Jira does.
fn comment_body(ctx: &Ctx, body: Option<&Value>) -> Result<Value, Reply> {
    let Some(b) = body else {
        return Err(field_error(
            400,
            "comment",
            "Comment body can not be empty!",
        ));
    };
    let len = match (ctx.api, b) {
        (Api::V3, doc) => check_adf(doc).map_err(|e| error(400, &[&e]))?,
        (Api::V2, Value::String(s)) => s.encode_utf16().count(),
        (Api::V2, _) => {
            return Err(field_error(
                400,
                "comment",
                "Comment body must be a string.",
            ));
        }
    };
    if len == 0 {
        return Err(field_error(
            400,
            "comment",
            "Comment body can not be empty!",
        ));
    }
    if len > COMMENT_LIMIT {
        return Err(field_error(
            400,
            "comment",
            "The entered text is too long. It exceeds the allowed limit of 32,767 characters.",
        ));
    }
    Ok(b.clone())
}

fn can_comment(user: &UserDef, project: &str) -> Result<(), Reply> {
    if user.has(project, "ADD_COMMENTS") {
        Ok(())
    } else {
        Err(error(
            403,
            &["You do not have the permission to comment on this issue."],
        ))
    }
}

/// `update.comment: [{"add": {"body": …}}]`, on an edit or a transition.
fn comment_ops(ctx: &Ctx, ops: &Value, user: &UserDef, project: &str) -> Result<Vec<Value>, Reply> {
    let Some(ops) = ops.as_array() else {
        return Err(field_error(400, "comment", "Operation must be a list."));
    };
    let mut out = Vec::new();
    for op in ops {
        match op.as_object().map(|o| o.iter().next()) {
            Some(Some((verb, value))) if verb == "add" => {
                can_comment(user, project)?;
                out.push(comment_body(ctx, value.get("body"))?);
            }
            Some(Some((verb, _))) => {
                return Err(field_error(
                    400,
                    "comment",
                    &format!("Operation '{verb}' is not supported."),
                ));
            }
            _ => return Err(field_error(400, "comment", "Operation must be an object.")),
        }
    }
    Ok(out)
}

fn read_edit(
    ctx: &Ctx,
    st: &State,
    issue: &IssueRec,
    body: &Value,
    user: &UserDef,
) -> Result<Edit, Reply> {
    let mut edit = Edit {
        labels: issue.labels.clone(),
        summary: None,
        description: None,
        assignee: None,
        comments: Vec::new(),
    };
    let can_assign = |field: &str| {
        if user.has(&issue.project, "ASSIGN_ISSUES") {
            Ok(())
        } else {
            Err(field_error(
                400,
                field,
                "You do not have permission to assign issues.",
            ))
        }
    };
    if let Some(update) = body.get("update") {
        let Some(update) = update.as_object() else {
            return Err(error(400, &["'update' must be an object."]));
        };
        for (field, ops) in update {
            if field == "comment" {
                edit.comments
                    .extend(comment_ops(ctx, ops, user, &issue.project)?);
                continue;
            }
            if !matches!(
                field.as_str(),
                "labels" | "summary" | "description" | "assignee"
            ) {
                return Err(not_on_screen(field));
            }
            let Some(ops) = ops.as_array() else {
                return Err(field_error(400, field, "Operation must be a list."));
            };
            for op in ops {
                let Some(op) = op.as_object() else {
                    return Err(field_error(400, field, "Operation must be an object."));
                };
                for (verb, value) in op {
                    match (field.as_str(), verb.as_str()) {
                        ("labels", "add" | "remove" | "set") => {
                            let values: Vec<String> = match value {
                                Value::String(s) => vec![s.clone()],
                                Value::Array(a) => a
                                    .iter()
                                    .filter_map(Value::as_str)
                                    .map(str::to_string)
                                    .collect(),
                                _ => {
                                    return Err(field_error(
                                        400,
                                        "labels",
                                        "Label must be a string.",
                                    ));
                                }
                            };
                            for v in &values {
                                check_label(v)?;
                            }
                            match verb.as_str() {
                                "add" => values.into_iter().for_each(|v| {
                                    if !edit.labels.contains(&v) {
                                        edit.labels.push(v)
                                    }
                                }),
                                "remove" => edit.labels.retain(|l| !values.contains(l)),
                                _ => edit.labels = values,
                            }
                        }
                        ("summary", "set") => edit.summary = Some(summary_value(value)?),
                        ("description", "set") => {
                            edit.description = Some(description_value(ctx, value)?)
                        }
                        ("assignee", "set") => {
                            can_assign("assignee")?;
                            edit.assignee = Some(assignee_value(st, value)?);
                        }
                        (_, other) => {
                            return Err(field_error(
                                400,
                                field,
                                &format!("Operation '{other}' is not supported."),
                            ));
                        }
                    }
                }
            }
        }
    }
    if let Some(fields) = body.get("fields") {
        let Some(fields) = fields.as_object() else {
            return Err(error(400, &["'fields' must be an object."]));
        };
        for (field, value) in fields {
            match field.as_str() {
                "summary" => edit.summary = Some(summary_value(value)?),
                "description" => edit.description = Some(description_value(ctx, value)?),
                "labels" => {
                    let Some(a) = value.as_array() else {
                        return Err(field_error(400, "labels", "Labels must be a list."));
                    };
                    let mut labels = Vec::new();
                    for v in a {
                        let Some(v) = v.as_str() else {
                            return Err(field_error(400, "labels", "Label must be a string."));
                        };
                        check_label(v)?;
                        if !labels.iter().any(|l| l == v) {
                            labels.push(v.to_string());
                        }
                    }
                    edit.labels = labels;
                }
                // The assignee is on Jira's default edit screen.
                "assignee" => {
                    can_assign("assignee")?;
                    edit.assignee = Some(assignee_value(st, value)?);
                }
                _ => return Err(not_on_screen(field)),
            }
        }
    }
    Ok(edit)
}

pub(crate) fn edit_issue(
    shared: &Shared,
    ctx: &Ctx,
    key: &str,
    p: &Params,
    body: Option<Value>,
    user: &UserDef,
) -> Reply {
    let mut st = lock(&shared.state);
    let Some(id) = issue_id(&st, key, user) else {
        return error(404, &[NO_ISSUE]);
    };
    if !user.has(&st.issues[&id].project, "EDIT_ISSUES") {
        return error(
            403,
            &["You do not have permission to edit issues in this project."],
        );
    }
    let Some(body) = body.filter(Value::is_object) else {
        return error(
            400,
            &["Can not deserialize the request body: expected an object."],
        );
    };
    let edit = match read_edit(ctx, &st, &st.issues[&id], &body, user) {
        Ok(e) => e,
        Err(r) => return r,
    };
    if let Err(r) = note_write(&mut st, id) {
        return r;
    }
    let now = Timestamp::now();
    let mut comment_ids = Vec::new();
    for _ in &edit.comments {
        comment_ids.push(st.next_comment_id.to_string());
        st.next_comment_id += 1;
    }
    let mut items = Vec::new();
    {
        let issue = &st.issues[&id];
        if edit.labels != issue.labels {
            items.push(HistoryItem {
                field: "labels".into(),
                from: None,
                from_string: Some(issue.labels.join(" ")),
                to: None,
                to_string: Some(edit.labels.join(" ")),
            });
        }
        if let Some(a) = &edit.assignee
            && *a != issue.assignee
        {
            items.push(assignee_item(&st, issue.assignee.as_deref(), a.as_deref()));
        }
        if let Some(s) = &edit.summary
            && *s != issue.summary
        {
            items.push(HistoryItem {
                field: "summary".into(),
                from: None,
                from_string: Some(issue.summary.clone()),
                to: None,
                to_string: Some(s.clone()),
            });
        }
        if let Some(d) = &edit.description
            && *d != issue.description
        {
            items.push(HistoryItem {
                field: "description".into(),
                from: None,
                from_string: issue.description.clone(),
                to: None,
                to_string: d.clone(),
            });
        }
    }
    record_history(&mut st, id, &user.account_id, items);
    let Some(issue) = st.issues.get_mut(&id) else {
        return error(404, &[NO_ISSUE]);
    };
    issue.labels = edit.labels;
    if let Some(s) = edit.summary {
        issue.summary = s;
    }
    if let Some(d) = edit.description {
        issue.description = d;
    }
    if let Some(a) = edit.assignee {
        issue.assignee = a;
    }
    for (body, cid) in edit.comments.into_iter().zip(comment_ids.iter().cloned()) {
        issue
            .comments
            .push(CommentRec::new(cid, user.account_id.clone(), body, now));
    }
    announce_comments(shared, &ctx.site, &st, id, &comment_ids);
    if p.get("returnIssue") == Some("true") {
        let issue = &st.issues[&id];
        return reply(
            200,
            issue_json(ctx, &st, issue, &FieldSel::all(), &Extras::default()),
        );
    }
    empty(204)
}

// -------------------------------------------------------------- transitions

pub(crate) fn list_transitions(
    shared: &Shared,
    ctx: &Ctx,
    key: &str,
    p: &Params,
    user: &UserDef,
) -> Reply {
    let st = lock(&shared.state);
    let Some(issue) = find(&st, key, user) else {
        return error(404, &[NO_ISSUE]);
    };
    let list = if user.has(&issue.project, "TRANSITION_ISSUES") {
        transitions_json(ctx, &st, issue, p.get("transitionId"))
    } else {
        vec![]
    };
    reply(200, json!({"expand": "transitions", "transitions": list}))
}

pub(crate) async fn do_transition(
    shared: &Shared,
    ctx: &Ctx,
    key: &str,
    body: Option<Value>,
    user: &UserDef,
) -> Reply {
    let (id, wanted, latency, comments) = {
        let mut st = lock(&shared.state);
        let Some(id) = issue_id(&st, key, user) else {
            return error(404, &[NO_ISSUE]);
        };
        let wanted = match body
            .as_ref()
            .and_then(|b| b.get("transition"))
            .and_then(|t| t.get("id"))
        {
            None => return error(400, &["Missing 'transition' identifier"]),
            Some(Value::String(s)) if s.parse::<u64>().is_ok() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(_) => return error(400, &["'transition' identifier must be an integer"]),
        };
        let issue = &st.issues[&id];
        if !user.has(&issue.project, "TRANSITION_ISSUES") {
            return error(
                400,
                &["You do not have permission to transition this issue."],
            );
        }
        // The simulator's transitions have no screens: no field can be set,
        // and the only update is a comment.
        if let Some(fields) = body.as_ref().and_then(|b| b.get("fields")) {
            match fields.as_object() {
                Some(f) => {
                    if let Some(name) = f.keys().next() {
                        return not_on_screen(name);
                    }
                }
                None if fields.is_null() => {}
                None => return error(400, &["'fields' must be an object."]),
            }
        }
        let mut comments = Vec::new();
        if let Some(update) = body.as_ref().and_then(|b| b.get("update")) {
            let Some(update) = update.as_object() else {
                return error(400, &["'update' must be an object."]);
            };
            for (field, ops) in update {
                if field != "comment" {
                    return not_on_screen(field);
                }
                match comment_ops(ctx, ops, user, &issue.project) {
                    Ok(c) => comments.extend(c),
                    Err(r) => return r,
                }
            }
        }
        if issue.transition_in_flight {
            return error(
                409,
                &["The issue is being updated by another request. Try again later."],
            );
        }
        if !st
            .workflow
            .available(&issue.status_id)
            .iter()
            .any(|t| t.id == wanted)
        {
            return error(
                400,
                &[&format!(
                    "Transition id '{wanted}' is not valid for this issue."
                )],
            );
        }
        if let Err(r) = note_write(&mut st, id) {
            return r;
        }
        let latency = st.transition_latency;
        if let Some(i) = st.issues.get_mut(&id) {
            i.transition_in_flight = !latency.is_zero();
        }
        (id, wanted, latency, comments)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let mut st = lock(&shared.state);
    let target = st
        .workflow
        .transitions
        .iter()
        .find(|t| t.id == wanted)
        .and_then(|t| st.workflow.status(&t.to))
        .map(|s| s.id.clone());
    if let Some(target) = &target {
        let from = st.issues.get(&id).map(|i| i.status_id.clone());
        let name = |sid: Option<&str>| {
            sid.and_then(|sid| st.workflow.statuses.iter().find(|s| s.id == sid))
                .map(|s| s.name.clone())
        };
        let item = HistoryItem {
            field: "status".into(),
            from_string: name(from.as_deref()),
            from,
            to: Some(target.clone()),
            to_string: name(Some(target)),
        };
        record_history(&mut st, id, &user.account_id, vec![item]);
    }
    let first_comment = st.next_comment_id;
    st.next_comment_id += comments.len() as u64;
    let Some(issue) = st.issues.get_mut(&id) else {
        return error(404, &[NO_ISSUE]);
    };
    issue.transition_in_flight = false;
    if let Some(target) = target {
        issue.status_id = target;
        issue.updated = Timestamp::now();
    }
    let mut new_ids = Vec::new();
    for (i, body) in comments.into_iter().enumerate() {
        let cid = (first_comment + i as u64).to_string();
        new_ids.push(cid.clone());
        issue.comments.push(CommentRec::new(
            cid,
            user.account_id.clone(),
            body,
            Timestamp::now(),
        ));
    }
    announce_comments(shared, &ctx.site, &st, id, &new_ids);
    empty(204)
}

// ----------------------------------------------------------------- comments

pub(crate) fn list_comments(
    shared: &Shared,
    ctx: &Ctx,
    key: &str,
    p: &Params,
    user: &UserDef,
) -> Reply {
    let st = lock(&shared.state);
    let Some(issue) = find(&st, key, user) else {
        return error(404, &[NO_ISSUE]);
    };
    let start: usize = p.parsed("startAt").unwrap_or(0);
    let max: usize = p.parsed::<usize>("maxResults").unwrap_or(50).min(100);
    let mut all: Vec<&CommentRec> = issue.comments.iter().collect();
    if p.get("orderBy").is_some_and(|o| o.trim() == "-created") {
        all.reverse();
    }
    let page: Vec<Value> = all
        .into_iter()
        .skip(start)
        .take(max)
        .map(|c| comment_json(ctx, &st, c, issue.id))
        .collect();
    reply(
        200,
        json!({"startAt": start, "maxResults": max, "total": issue.comments.len(), "comments": page}),
    )
}

pub(crate) fn get_comment(
    shared: &Shared,
    ctx: &Ctx,
    key: &str,
    comment: &str,
    user: &UserDef,
) -> Reply {
    let st = lock(&shared.state);
    let Some(issue) = find(&st, key, user) else {
        return error(404, &[NO_ISSUE]);
    };
    match issue.comments.iter().find(|c| c.id == comment) {
        Some(c) => reply(200, comment_json(ctx, &st, c, issue.id)),
        None => error(
            404,
            &[&format!("Can not find a comment for the id: {comment}.")],
        ),
    }
}

pub(crate) fn add_comment(
    shared: &Shared,
    ctx: &Ctx,
    key: &str,
    body: Option<Value>,
    user: &UserDef,
) -> Reply {
    let mut st = lock(&shared.state);
    let Some(id) = issue_id(&st, key, user) else {
        return error(404, &[NO_ISSUE]);
    };
    if let Err(r) = can_comment(user, &st.issues[&id].project) {
        return r;
    }
    let comment_body = match comment_body(ctx, body.as_ref().and_then(|b| b.get("body"))) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Err(r) = note_write(&mut st, id) {
        return r;
    }
    let cid = st.next_comment_id;
    st.next_comment_id += 1;
    let rec = CommentRec::new(
        cid.to_string(),
        user.account_id.clone(),
        comment_body,
        Timestamp::now(),
    );
    let out = comment_json(ctx, &st, &rec, id);
    let new_ids = [rec.id.clone()];
    if let Some(issue) = st.issues.get_mut(&id) {
        issue.comments.push(rec);
    }
    announce_comments(shared, &ctx.site, &st, id, &new_ids);
    reply(201, out)
}

/// `PUT issue/{key}/comment/{id}`: replaces the comment's body. As in Jira: 404 for an
/// issue the caller cannot see or a comment it does not have; without *Edit all comments*
/// (or *Edit own comments* for the caller's own comment) a 400; the body is checked as on
/// creation and the edit counts against the issue's write limits.
pub(crate) fn edit_comment(
    shared: &Shared,
    ctx: &Ctx,
    key: &str,
    comment: &str,
    body: Option<Value>,
    user: &UserDef,
) -> Reply {
    let mut st = lock(&shared.state);
    let Some(id) = issue_id(&st, key, user) else {
        return error(404, &[NO_ISSUE]);
    };
    let issue = &st.issues[&id];
    let Some(existing) = issue.comments.iter().find(|c| c.id == comment) else {
        return error(
            404,
            &[&format!("Can not find a comment for the id: {comment}.")],
        );
    };
    let own = existing.author == user.account_id;
    let may_edit = user.has(&issue.project, "EDIT_ALL_COMMENTS")
        || (own && user.has(&issue.project, "EDIT_OWN_COMMENTS"));
    if !may_edit {
        return error(
            400,
            &["You do not have the permission to edit this comment."],
        );
    }
    let new_body = match comment_body(ctx, body.as_ref().and_then(|b| b.get("body"))) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Err(r) = note_write(&mut st, id) {
        return r;
    }
    let Some(rec) = st
        .issues
        .get_mut(&id)
        .and_then(|issue| issue.comments.iter_mut().find(|c| c.id == comment))
    else {
        return error(404, &[NO_ISSUE]);
    };
    rec.body = new_body;
    rec.updated = Timestamp::now();
    rec.update_author = user.account_id.clone();
    let edited = rec.clone();
    let out = comment_json(ctx, &st, &edited, id);
    announce(
        "comment_updated",
        shared,
        &ctx.site,
        &st,
        id,
        std::slice::from_ref(&edited.id),
    );
    reply(200, out)
}

// ---------------------------------------------------------------- assignee

pub(crate) fn assign(shared: &Shared, key: &str, body: Option<Value>, user: &UserDef) -> Reply {
    let mut st = lock(&shared.state);
    let Some(id) = issue_id(&st, key, user) else {
        return error(404, &[NO_ISSUE]);
    };
    if !user.has(&st.issues[&id].project, "ASSIGN_ISSUES") {
        return error(403, &["You do not have permission to assign issues."]);
    }
    let Some(b) = body.filter(Value::is_object) else {
        return error(
            400,
            &["Can not deserialize the request body: expected an object."],
        );
    };
    let assignee = match assignee_value(&st, &b) {
        Ok(a) => a,
        Err(r) => return r,
    };
    if let Err(r) = note_write(&mut st, id) {
        return r;
    }
    let before = st.issues[&id].assignee.clone();
    if before != assignee {
        let item = assignee_item(&st, before.as_deref(), assignee.as_deref());
        record_history(&mut st, id, &user.account_id, vec![item]);
    }
    if let Some(issue) = st.issues.get_mut(&id) {
        issue.assignee = assignee;
    }
    empty(204)
}

// -------------------------------------------------------------- properties

pub(crate) fn list_properties(shared: &Shared, ctx: &Ctx, key: &str, user: &UserDef) -> Reply {
    let st = lock(&shared.state);
    let Some(issue) = find(&st, key, user) else {
        return error(404, &[NO_ISSUE]);
    };
    let keys: Vec<Value> = issue
        .properties
        .keys()
        .map(|k| {
            json!({
                "self": ctx.rest(&format!("issue/{}/properties/{k}", issue.id)),
                "key": k,
            })
        })
        .collect();
    reply(200, json!({"keys": keys}))
}

pub(crate) fn get_property(shared: &Shared, key: &str, prop: &str, user: &UserDef) -> Reply {
    let st = lock(&shared.state);
    let Some(issue) = find(&st, key, user) else {
        return error(404, &[NO_ISSUE]);
    };
    match issue.properties.get(prop) {
        Some(v) => reply(200, json!({"key": prop, "value": v})),
        None => error(
            404,
            &[&format!("The property with key '{prop}' does not exist.")],
        ),
    }
}

pub(crate) fn set_property(
    shared: &Shared,
    key: &str,
    prop: &str,
    body: Option<Value>,
    raw: &[u8],
    user: &UserDef,
) -> Reply {
    let mut st = lock(&shared.state);
    let Some(id) = issue_id(&st, key, user) else {
        return error(404, &[NO_ISSUE]);
    };
    if !user.has(&st.issues[&id].project, "EDIT_ISSUES") {
        return error(
            403,
            &["You do not have permission to edit issues in this project."],
        );
    }
    let Some(value) = body else {
        return error(400, &["The property value must be valid JSON."]);
    };
    if raw.len() > 32_768 {
        return error(
            400,
            &["The property value is too long. The maximum length is 32768 bytes."],
        );
    }
    if prop.len() > 255 {
        return error(
            400,
            &["The property key is too long. The maximum length is 255 characters."],
        );
    }
    if let Err(r) = note_write(&mut st, id) {
        return r;
    }
    let Some(issue) = st.issues.get_mut(&id) else {
        return error(404, &[NO_ISSUE]);
    };
    let existed = issue.properties.insert(prop.to_string(), value).is_some();
    empty(if existed { 200 } else { 201 })
}

pub(crate) fn delete_property(shared: &Shared, key: &str, prop: &str, user: &UserDef) -> Reply {
    let mut st = lock(&shared.state);
    let Some(id) = issue_id(&st, key, user) else {
        return error(404, &[NO_ISSUE]);
    };
    if let Err(r) = note_write(&mut st, id) {
        return r;
    }
    let Some(issue) = st.issues.get_mut(&id) else {
        return error(404, &[NO_ISSUE]);
    };
    match issue.properties.remove(prop) {
        Some(_) => empty(204),
        None => error(
            404,
            &[&format!("The property with key '{prop}' does not exist.")],
        ),
    }
}
