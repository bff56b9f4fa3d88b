//! HTTP handling and the REST endpoints.

use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use jiff::Timestamp;
use serde_json::{Value, json};

use crate::model::{Category, CommentRec, IssueRec, SimFlavor, State, StatusDef, UserDef};
use crate::{CallRecord, FaultKind, Shared, jql, lock};

pub(crate) async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = shared.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(shared.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// A reply before it becomes an HTTP response.
struct Reply {
    status: u16,
    body: Option<Value>,
    headers: Vec<(&'static str, String)>,
}

fn reply(status: u16, body: Value) -> Reply {
    Reply {
        status,
        body: Some(body),
        headers: vec![],
    }
}

fn empty(status: u16) -> Reply {
    Reply {
        status,
        body: None,
        headers: vec![],
    }
}

fn error(status: u16, messages: &[&str]) -> Reply {
    reply(status, json!({"errorMessages": messages, "errors": {}}))
}

fn field_error(status: u16, field: &str, message: &str) -> Reply {
    reply(
        status,
        json!({"errorMessages": [], "errors": {field: message}}),
    )
}

const NO_ISSUE: &str = "Issue does not exist or you do not have permission to see it.";

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let auth = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body_bytes = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Err(std::io::Error::other(e)),
    };
    let body: Option<Value> = serde_json::from_slice(&body_bytes).ok();

    // Faults: the first matching one applies.
    let fault = {
        let mut faults = lock(&shared.faults);
        let hit = faults.iter_mut().find(|f| f.hits(&method, &path));
        hit.map(|f| {
            if let Some(n) = f.times.as_mut() {
                *n -= 1;
            }
            f.kind.clone()
        })
    };
    let mut record = CallRecord {
        method: method.clone(),
        path: path.clone(),
        query: query.clone(),
        body: body.clone(),
        status: 0,
        response: None,
        user: None,
    };
    let mut malformed = false;
    match fault {
        Some(FaultKind::Drop) => {
            lock(&shared.calls).push(record);
            return Err(std::io::Error::other("fault: connection dropped"));
        }
        Some(FaultKind::Delay(d)) => tokio::time::sleep(d).await,
        Some(FaultKind::Status {
            status,
            retry_after,
        }) => {
            let mut r = error(status, &[&format!("Simulated HTTP {status}")]);
            if let Some(ra) = retry_after {
                r.headers.push(("retry-after", ra));
            }
            return Ok(finish(&shared, record, r));
        }
        Some(FaultKind::MalformedJson) => malformed = true,
        None => {}
    }

    let user = authenticate(&shared, auth.as_deref());
    record.user = user.as_ref().map(|u| u.account_id.clone());
    let r = match user {
        None => error(
            401,
            &["You are not authenticated. Authentication required to perform this operation."],
        ),
        Some(user) => route(&shared, &method, &path, &query, body, &body_bytes, &user).await,
    };
    if malformed {
        let r = Reply {
            status: if (200..300).contains(&r.status) {
                200
            } else {
                r.status
            },
            body: None,
            headers: vec![],
        };
        let mut resp = finish(&shared, record, r);
        *resp.body_mut() = Full::new(Bytes::from_static(
            b"{\"issues\": [{\"id\": \"10001\", \"key\": ",
        ));
        resp.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        return Ok(resp);
    }
    Ok(finish(&shared, record, r))
}

fn finish(shared: &Shared, mut record: CallRecord, r: Reply) -> Response<Full<Bytes>> {
    record.status = r.status;
    record.response = r.body.clone();
    lock(&shared.calls).push(record);
    let mut builder = Response::builder().status(r.status);
    for (k, v) in &r.headers {
        builder = builder.header(*k, v);
    }
    let body = match r.body {
        Some(v) => {
            builder = builder.header("content-type", "application/json;charset=UTF-8");
            Bytes::from(v.to_string())
        }
        None => Bytes::new(),
    };
    builder
        .body(Full::new(body))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn authenticate(shared: &Shared, header: Option<&str>) -> Option<UserDef> {
    let header = header?;
    let st = lock(&shared.state);
    if let Some(token) = header.strip_prefix("Bearer ") {
        return st
            .users
            .iter()
            .find(|u| u.pat.as_deref() == Some(token.trim()))
            .cloned();
    }
    let encoded = header.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, secret) = decoded.split_once(':')?;
    st.users
        .iter()
        .find(|u| {
            let id_ok = match st.flavor {
                SimFlavor::Cloud => u.email.eq_ignore_ascii_case(user),
                SimFlavor::Datacenter => u.name.eq_ignore_ascii_case(user),
            };
            id_ok && u.token.as_deref() == Some(secret)
        })
        .cloned()
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k) == name).then(|| decode(v))
    })
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                    16,
                ) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn segments(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(decode)
        .collect()
}

fn base(st: &State) -> &'static str {
    match st.flavor {
        SimFlavor::Cloud => "3",
        SimFlavor::Datacenter => "2",
    }
}

async fn route(
    shared: &Shared,
    method: &str,
    path: &str,
    query: &str,
    body: Option<Value>,
    raw_body: &[u8],
    user: &UserDef,
) -> Reply {
    let segs = segments(path);
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let flavor = lock(&shared.state).flavor;
    let (version, rest) = match segs.as_slice() {
        ["rest", "api", v, rest @ ..] => (*v, rest),
        _ => return error(404, &[&format!("null for uri: {path}")]),
    };
    // The removed search endpoints answer 410 on Cloud, whatever the version.
    if flavor == SimFlavor::Cloud && rest == ["search"] && (version == "2" || version == "3") {
        return error(
            410,
            &[
                "The requested API has been removed. Please migrate to the /rest/api/3/search/jql API. A full migration guideline is available at https://developer.atlassian.com/changelog/#CHANGE-2046",
            ],
        );
    }
    let expected = base(&lock(&shared.state));
    if version != expected {
        return error(404, &[&format!("null for uri: {path}")]);
    }
    match (method, rest) {
        ("GET", ["myself"]) => reply(200, user_json(&lock(&shared.state), user)),
        ("GET", ["mypermissions"]) => my_permissions(shared, query, user),
        ("GET", ["search", "jql"]) | ("POST", ["search", "jql"]) if flavor == SimFlavor::Cloud => {
            search(shared, method, query, body, user)
        }
        ("GET", ["search"]) | ("POST", ["search"]) if flavor == SimFlavor::Datacenter => {
            search(shared, method, query, body, user)
        }
        ("GET", ["issue", key]) => get_issue(shared, key, query, user),
        ("PUT", ["issue", key]) => edit_issue(shared, key, body, user),
        ("GET", ["issue", key, "transitions"]) => list_transitions(shared, key, user),
        ("POST", ["issue", key, "transitions"]) => do_transition(shared, key, body, user).await,
        ("GET", ["issue", key, "comment"]) => list_comments(shared, key, query, user),
        ("POST", ["issue", key, "comment"]) => add_comment(shared, key, body, user),
        ("PUT", ["issue", key, "assignee"]) => assign(shared, key, body, user),
        ("GET", ["issue", key, "properties", prop]) => get_property(shared, key, prop, user),
        ("PUT", ["issue", key, "properties", prop]) => {
            set_property(shared, key, prop, body, raw_body, user)
        }
        ("DELETE", ["issue", key, "properties", prop]) => delete_property(shared, key, prop, user),
        (_, ["myself"] | ["mypermissions"] | ["search", ..] | ["issue", ..]) => {
            reply(405, json!({"message": "Method not allowed"}))
        }
        _ => error(404, &[&format!("null for uri: {path}")]),
    }
}

fn jira_time(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.3f%z").to_string()
}

fn user_json(st: &State, u: &UserDef) -> Value {
    match st.flavor {
        SimFlavor::Cloud => json!({
            "self": format!("/rest/api/3/user?accountId={}", u.account_id),
            "accountId": u.account_id,
            "accountType": "atlassian",
            "emailAddress": u.email,
            "displayName": u.display_name,
            "active": true,
            "timeZone": "UTC",
        }),
        SimFlavor::Datacenter => json!({
            "self": format!("/rest/api/2/user?username={}", u.name),
            "name": u.name,
            "key": u.name,
            "emailAddress": u.email,
            "displayName": u.display_name,
            "active": true,
            "timeZone": "UTC",
        }),
    }
}

fn category_json(c: Category) -> Value {
    json!({"self": format!("/rest/api/3/statuscategory/{}", c.id()), "id": c.id(), "key": c.key(), "colorName": c.color(), "name": c.name()})
}

fn status_json(s: &StatusDef) -> Value {
    json!({
        "self": format!("/rest/api/3/status/{}", s.id),
        "description": "",
        "iconUrl": "/images/icons/statuses/generic.png",
        "name": s.name,
        "id": s.id,
        "statusCategory": category_json(s.category),
    })
}

fn adf_from_text(text: &str) -> Value {
    let content: Vec<Value> = text
        .split("\n\n")
        .filter(|p| !p.is_empty())
        .map(|p| json!({"type": "paragraph", "content": [{"type": "text", "text": p}]}))
        .collect();
    json!({"type": "doc", "version": 1, "content": content})
}

/// Renders an issue with the requested fields (`None`: all).
fn issue_json(st: &State, issue: &IssueRec, fields: Option<&[String]>) -> Value {
    let want = |f: &str| {
        fields.is_none_or(|list| {
            list.iter()
                .any(|x| x == f || x == "*all" || x == "*navigable")
        })
    };
    let v = base(st);
    let mut out = serde_json::Map::new();
    if want("summary") {
        out.insert("summary".into(), json!(issue.summary));
    }
    if want("description") {
        let d = match (&issue.description, st.flavor) {
            (None, _) => Value::Null,
            (Some(t), SimFlavor::Cloud) => adf_from_text(t),
            (Some(t), SimFlavor::Datacenter) => json!(t),
        };
        out.insert("description".into(), d);
    }
    if want("status") {
        let s = st
            .workflow
            .statuses
            .iter()
            .find(|s| s.id == issue.status_id);
        out.insert("status".into(), s.map(status_json).unwrap_or(Value::Null));
    }
    if want("labels") {
        out.insert("labels".into(), json!(issue.labels));
    }
    if want("assignee") {
        let a = issue
            .assignee
            .as_deref()
            .and_then(|a| st.users.iter().find(|u| u.account_id == a))
            .map(|u| user_json(st, u))
            .unwrap_or(Value::Null);
        out.insert("assignee".into(), a);
    }
    if want("project") {
        let p = st.projects.iter().find(|p| p.key == issue.project);
        out.insert(
            "project".into(),
            p.map(|p| json!({"self": format!("/rest/api/{v}/project/{}", p.id), "id": p.id, "key": p.key, "name": p.name, "projectTypeKey": "software"}))
                .unwrap_or(Value::Null),
        );
    }
    if want("created") {
        out.insert("created".into(), json!(jira_time(issue.created)));
    }
    if want("updated") {
        out.insert("updated".into(), json!(jira_time(issue.updated)));
    }
    let only_id = fields.is_some_and(|f| f.iter().all(|x| x == "id"));
    if only_id {
        return json!({"id": issue.id.to_string()});
    }
    json!({
        "expand": "renderedFields,names,schema,operations,editmeta,changelog,versionedRepresentations",
        "id": issue.id.to_string(),
        "self": format!("/rest/api/{v}/issue/{}", issue.id),
        "key": issue.key,
        "fields": out,
    })
}

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

fn my_permissions(shared: &Shared, query: &str, user: &UserDef) -> Reply {
    let st = lock(&shared.state);
    let Some(perms) = query_param(query, "permissions").filter(|p| !p.is_empty()) else {
        return error(400, &["The permissions query parameter is required."]);
    };
    let project = query_param(query, "projectKey");
    if let Some(p) = &project
        && !st.projects.iter().any(|x| x.key.eq_ignore_ascii_case(p))
    {
        return error(
            404,
            &[&format!("No project could be found with key '{p}'.")],
        );
    }
    let mut out = serde_json::Map::new();
    for (i, perm) in perms
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .enumerate()
    {
        if !crate::ALL_PERMISSIONS.contains(&perm) {
            return error(404, &[&format!("Permission '{perm}' does not exist.")]);
        }
        let have = match &project {
            Some(p) => user.has(&p.to_ascii_uppercase(), perm),
            None => user.has("*", perm),
        };
        out.insert(
            perm.to_string(),
            json!({"id": (i + 1).to_string(), "key": perm, "name": perm, "type": "PROJECT", "description": "", "havePermission": have}),
        );
    }
    reply(200, json!({"permissions": out}))
}

fn search(
    shared: &Shared,
    method: &str,
    query: &str,
    body: Option<Value>,
    user: &UserDef,
) -> Reply {
    let st = lock(&shared.state);
    let cloud = st.flavor == SimFlavor::Cloud;
    // Parameters from the query string (GET) or the JSON body (POST).
    let (jql_text, token, start_at, max_results, fields) = if method == "POST" {
        let Some(b) = body.as_ref().and_then(Value::as_object) else {
            return error(400, &["Request body is not valid JSON."]);
        };
        let fields = match b.get("fields") {
            None => None,
            Some(Value::Array(a)) => Some(
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect::<Vec<_>>(),
            ),
            Some(_) => return error(400, &["'fields' must be a list of strings."]),
        };
        (
            b.get("jql")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            b.get("nextPageToken")
                .and_then(Value::as_str)
                .map(str::to_string),
            b.get("startAt").and_then(Value::as_u64),
            b.get("maxResults").and_then(Value::as_u64),
            fields,
        )
    } else {
        (
            query_param(query, "jql").unwrap_or_default(),
            query_param(query, "nextPageToken"),
            query_param(query, "startAt").and_then(|s| s.parse().ok()),
            query_param(query, "maxResults").and_then(|s| s.parse().ok()),
            query_param(query, "fields")
                .map(|f| f.split(',').map(|s| s.trim().to_string()).collect()),
        )
    };
    let q = match jql::parse(&jql_text) {
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
    // Default fields: Cloud returns only `id`; Data Center all navigable fields.
    let fields = fields.or_else(|| cloud.then(|| vec!["id".to_string()]));
    let id_only = fields
        .as_ref()
        .is_some_and(|f| f.iter().all(|x| x == "id" || x == "key"));
    let cap = st.max_results.map(u64::from).unwrap_or(if cloud {
        if id_only { 5000 } else { 100 }
    } else {
        1000
    });
    let max = max_results.unwrap_or(50).min(cap);
    let digest = fnv(&jql_text);
    let offset = if cloud {
        match token {
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
        start_at.unwrap_or(0)
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
    let page: Vec<Value> = hits
        .iter()
        .skip(offset as usize)
        .take(max as usize)
        .map(|i| issue_json(&st, i, fields.as_deref()))
        .collect();
    let end = offset + page.len() as u64;
    if cloud {
        let mut out = json!({"issues": page, "isLast": end >= total});
        if end < total {
            out["nextPageToken"] = json!(encode_token(end, digest));
        }
        reply(200, out)
    } else {
        reply(
            200,
            json!({"expand": "names,schema", "startAt": offset, "maxResults": max, "total": total, "issues": page}),
        )
    }
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

fn get_issue(shared: &Shared, key: &str, query: &str, user: &UserDef) -> Reply {
    let st = lock(&shared.state);
    let Some(issue) = find(&st, key, user) else {
        return error(404, &[NO_ISSUE]);
    };
    let fields: Option<Vec<String>> =
        query_param(query, "fields").map(|f| f.split(',').map(|s| s.trim().to_string()).collect());
    reply(200, issue_json(&st, issue, fields.as_deref()))
}

fn edit_issue(shared: &Shared, key: &str, body: Option<Value>, user: &UserDef) -> Reply {
    let mut st = lock(&shared.state);
    let Some(id) = issue_id(&st, key, user) else {
        return error(404, &[NO_ISSUE]);
    };
    let project = st.issues[&id].project.clone();
    if !user.has(&project, "EDIT_ISSUES") {
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
    let mut labels = st.issues[&id].labels.clone();
    let mut summary = None;
    if let Some(update) = body.get("update").and_then(Value::as_object) {
        for (field, ops) in update {
            if field != "labels" {
                return field_error(
                    400,
                    field,
                    &format!(
                        "Field '{field}' cannot be set. It is not on the appropriate screen, or unknown."
                    ),
                );
            }
            let Some(ops) = ops.as_array() else {
                return field_error(400, "labels", "Operation must be a list.");
            };
            for op in ops {
                let Some(op) = op.as_object() else {
                    return field_error(400, "labels", "Operation must be an object.");
                };
                for (verb, value) in op {
                    let values: Vec<String> = match value {
                        Value::String(s) => vec![s.clone()],
                        Value::Array(a) => a
                            .iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect(),
                        _ => return field_error(400, "labels", "Label must be a string."),
                    };
                    for v in &values {
                        if v.is_empty()
                            || v.contains(char::is_whitespace)
                            || v.chars().count() > 255
                        {
                            return field_error(
                                400,
                                "labels",
                                &format!("The label '{v}' contains spaces which is invalid."),
                            );
                        }
                    }
                    match verb.as_str() {
                        "add" => values.into_iter().for_each(|v| {
                            if !labels.contains(&v) {
                                labels.push(v)
                            }
                        }),
                        "remove" => labels.retain(|l| !values.contains(l)),
                        "set" => labels = values,
                        other => {
                            return field_error(
                                400,
                                "labels",
                                &format!("Operation '{other}' is not supported."),
                            );
                        }
                    }
                }
            }
        }
    }
    if let Some(fields) = body.get("fields").and_then(Value::as_object) {
        for (field, value) in fields {
            match (field.as_str(), value) {
                ("summary", Value::String(s)) if !s.trim().is_empty() => summary = Some(s.clone()),
                ("labels", Value::Array(a)) => {
                    labels = a
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                }
                _ => {
                    return field_error(
                        400,
                        field,
                        &format!(
                            "Field '{field}' cannot be set. It is not on the appropriate screen, or unknown."
                        ),
                    );
                }
            }
        }
    }
    if let Err(r) = note_write(&mut st, id) {
        return r;
    }
    let Some(issue) = st.issues.get_mut(&id) else {
        return error(404, &[NO_ISSUE]);
    };
    issue.labels = labels;
    if let Some(s) = summary {
        issue.summary = s;
    }
    empty(204)
}

fn transitions_json(st: &State, issue: &IssueRec) -> Vec<Value> {
    st.workflow
        .available(&issue.status_id)
        .into_iter()
        .filter_map(|t| {
            let to = st.workflow.status(&t.to)?;
            Some(json!({
                "id": t.id, "name": t.name, "to": status_json(to), "hasScreen": false,
                "isGlobal": t.from.is_empty(), "isInitial": false, "isAvailable": true,
                "isConditional": false, "isLooped": false,
            }))
        })
        .collect()
}

fn list_transitions(shared: &Shared, key: &str, user: &UserDef) -> Reply {
    let st = lock(&shared.state);
    let Some(issue) = find(&st, key, user) else {
        return error(404, &[NO_ISSUE]);
    };
    let list = if user.has(&issue.project, "TRANSITION_ISSUES") {
        transitions_json(&st, issue)
    } else {
        vec![]
    };
    reply(200, json!({"expand": "transitions", "transitions": list}))
}

async fn do_transition(shared: &Shared, key: &str, body: Option<Value>, user: &UserDef) -> Reply {
    let (id, wanted, latency) = {
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
        (id, wanted, latency)
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
    let Some(issue) = st.issues.get_mut(&id) else {
        return error(404, &[NO_ISSUE]);
    };
    issue.transition_in_flight = false;
    if let Some(target) = target {
        issue.status_id = target;
        issue.updated = Timestamp::now();
    }
    empty(204)
}

fn comment_json(st: &State, c: &CommentRec, issue_id: u64) -> Value {
    let author = st
        .users
        .iter()
        .find(|u| u.account_id == c.author)
        .map(|u| user_json(st, u))
        .unwrap_or(Value::Null);
    json!({
        "self": format!("/rest/api/{}/issue/{issue_id}/comment/{}", base(st), c.id),
        "id": c.id,
        "author": author,
        "updateAuthor": author,
        "body": c.body,
        "created": jira_time(c.created),
        "updated": jira_time(c.created),
        "jsdPublic": true,
    })
}

fn list_comments(shared: &Shared, key: &str, query: &str, user: &UserDef) -> Reply {
    let st = lock(&shared.state);
    let Some(issue) = find(&st, key, user) else {
        return error(404, &[NO_ISSUE]);
    };
    let start: usize = query_param(query, "startAt")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let max: usize = query_param(query, "maxResults")
        .and_then(|s| s.parse().ok())
        .unwrap_or(50)
        .min(100);
    let page: Vec<Value> = issue
        .comments
        .iter()
        .skip(start)
        .take(max)
        .map(|c| comment_json(&st, c, issue.id))
        .collect();
    reply(
        200,
        json!({"startAt": start, "maxResults": max, "total": issue.comments.len(), "comments": page}),
    )
}

/// Validates an ADF document; returns the plain-text length in UTF-16 units.
fn check_adf(doc: &Value) -> Result<usize, String> {
    fn walk(node: &Value, len: &mut usize) -> Result<(), String> {
        let obj = node.as_object().ok_or("ADF node must be an object")?;
        let ty = obj
            .get("type")
            .and_then(Value::as_str)
            .ok_or("ADF node without type")?;
        if ty == "text" {
            let t = obj
                .get("text")
                .and_then(Value::as_str)
                .ok_or("text node without text")?;
            if t.is_empty() {
                return Err("INVALID_INPUT: text nodes must not be empty".into());
            }
            *len += t.encode_utf16().count();
        }
        if let Some(c) = obj.get("content") {
            for child in c.as_array().ok_or("content must be an array")? {
                walk(child, len)?;
            }
        }
        Ok(())
    }
    if doc.get("type").and_then(Value::as_str) != Some("doc")
        || doc.get("version").and_then(Value::as_i64) != Some(1)
    {
        return Err(
            "Operation value must be an Atlassian Document (see the Atlassian Document Format)"
                .into(),
        );
    }
    let mut len = 0;
    walk(doc, &mut len)?;
    Ok(len)
}

fn add_comment(shared: &Shared, key: &str, body: Option<Value>, user: &UserDef) -> Reply {
    let mut st = lock(&shared.state);
    let Some(id) = issue_id(&st, key, user) else {
        return error(404, &[NO_ISSUE]);
    };
    if !user.has(&st.issues[&id].project, "ADD_COMMENTS") {
        return error(
            403,
            &["You do not have the permission to comment on this issue."],
        );
    }
    let Some(comment_body) = body.as_ref().and_then(|b| b.get("body")).cloned() else {
        return field_error(400, "comment", "Comment body can not be empty!");
    };
    let len = match (st.flavor, &comment_body) {
        (SimFlavor::Cloud, doc) => match check_adf(doc) {
            Ok(n) => n,
            Err(e) => return error(400, &[&e]),
        },
        (SimFlavor::Datacenter, Value::String(s)) => s.encode_utf16().count(),
        (SimFlavor::Datacenter, _) => {
            return field_error(400, "comment", "Comment body must be a string.");
        }
    };
    if len == 0 {
        return field_error(400, "comment", "Comment body can not be empty!");
    }
    if len > 32_767 {
        return field_error(
            400,
            "comment",
            "The entered text is too long. It exceeds the allowed limit of 32,767 characters.",
        );
    }
    if let Err(r) = note_write(&mut st, id) {
        return r;
    }
    let cid = st.next_comment_id;
    st.next_comment_id += 1;
    let rec = CommentRec {
        id: cid.to_string(),
        author: user.account_id.clone(),
        body: comment_body,
        created: Timestamp::now(),
    };
    let out = comment_json(&st, &rec, id);
    if let Some(issue) = st.issues.get_mut(&id) {
        issue.comments.push(rec);
    }
    reply(201, out)
}

fn assign(shared: &Shared, key: &str, body: Option<Value>, user: &UserDef) -> Reply {
    let mut st = lock(&shared.state);
    let Some(id) = issue_id(&st, key, user) else {
        return error(404, &[NO_ISSUE]);
    };
    if !user.has(&st.issues[&id].project, "ASSIGN_ISSUES") {
        return error(403, &["You do not have permission to assign issues."]);
    }
    let field = match st.flavor {
        SimFlavor::Cloud => "accountId",
        SimFlavor::Datacenter => "name",
    };
    let Some(b) = body.as_ref().and_then(Value::as_object) else {
        return error(
            400,
            &["Can not deserialize the request body: expected an object."],
        );
    };
    let assignee = match b.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            let found = st.users.iter().find(|u| match st.flavor {
                SimFlavor::Cloud => u.account_id == *s,
                SimFlavor::Datacenter => u.name.eq_ignore_ascii_case(s),
            });
            match found {
                Some(u) => Some(u.account_id.clone()),
                None => {
                    return field_error(
                        400,
                        "assignee",
                        &format!("User '{s}' cannot be assigned issues."),
                    );
                }
            }
        }
        Some(_) => return field_error(400, field, "must be a string"),
    };
    if let Err(r) = note_write(&mut st, id) {
        return r;
    }
    if let Some(issue) = st.issues.get_mut(&id) {
        issue.assignee = assignee;
    }
    empty(204)
}

fn get_property(shared: &Shared, key: &str, prop: &str, user: &UserDef) -> Reply {
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

fn set_property(
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

fn delete_property(shared: &Shared, key: &str, prop: &str, user: &UserDef) -> Reply {
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
