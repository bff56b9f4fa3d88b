//! HTTP handling: faults, authentication, API versions and routing.

use std::sync::Arc;

use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::model::{SimFlavor, State, UserDef};
use crate::params::{Params, decode_path};
use crate::text::{adf_from_text, adf_to_text};
use crate::{CallRecord, FaultKind, Shared, api, lock};

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
pub(crate) struct Reply {
    pub status: u16,
    pub body: Option<Value>,
    pub headers: Vec<(&'static str, String)>,
}

pub(crate) fn reply(status: u16, body: Value) -> Reply {
    Reply {
        status,
        body: Some(body),
        headers: vec![],
    }
}

pub(crate) fn empty(status: u16) -> Reply {
    Reply {
        status,
        body: None,
        headers: vec![],
    }
}

pub(crate) fn error(status: u16, messages: &[&str]) -> Reply {
    reply(status, json!({"errorMessages": messages, "errors": {}}))
}

pub(crate) fn field_error(status: u16, field: &str, message: &str) -> Reply {
    reply(
        status,
        json!({"errorMessages": [], "errors": {field: message}}),
    )
}

fn not_found(path: &str) -> Reply {
    error(404, &[&format!("null for uri: {path}")])
}

/// The REST API version a call is answered in, after resolving `latest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Api {
    /// Wiki/plain text in rich-text fields.
    V2,
    /// Atlassian Document Format in rich-text fields (Cloud only).
    V3,
}

impl Api {
    /// The versions each flavour serves: Cloud has v2 and v3 (`latest` is
    /// v3), Data Center only v2 (`latest` is v2).
    fn resolve(flavor: SimFlavor, version: &str) -> Option<Api> {
        match (flavor, version) {
            (_, "2") | (SimFlavor::Datacenter, "latest") => Some(Api::V2),
            (SimFlavor::Cloud, "3" | "latest") => Some(Api::V3),
            _ => None,
        }
    }
}

/// What a reply depends on besides the state: where the site is, the API
/// version asked for and the flavour.
pub(crate) struct Ctx {
    /// The site's absolute base URL (no trailing slash), for `self` links.
    pub site: String,
    pub api: Api,
    pub flavor: SimFlavor,
}

impl Ctx {
    pub fn version(&self) -> &'static str {
        match self.api {
            Api::V2 => "2",
            Api::V3 => "3",
        }
    }

    /// The absolute URL of a REST resource in this call's version.
    pub fn rest(&self, path: &str) -> String {
        format!("{}/rest/api/{}/{path}", self.site, self.version())
    }

    /// A stored rich-text value (a string or an ADF document) as this version shows it;
    /// `st` names the users that wiki mentions point at.
    pub fn rich(&self, st: &State, stored: &Value) -> Value {
        match (self.api, stored) {
            (Api::V3, Value::String(s)) => adf_from_text(s, &|id| st.display_name(id)),
            (Api::V2, v @ Value::Object(_)) => Value::String(adf_to_text(v)),
            (_, v) => v.clone(),
        }
    }

    pub fn rich_text(&self, st: &State, text: &str) -> Value {
        match self.api {
            Api::V2 => Value::String(text.to_string()),
            Api::V3 => adf_from_text(text, &|id| st.display_name(id)),
        }
    }
}

/// Counts a call while it is handled.
struct InFlight(Arc<Shared>);

impl InFlight {
    fn enter(shared: &Arc<Shared>) -> Self {
        use std::sync::atomic::Ordering;
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.most_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(shared.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let _in_flight = InFlight::enter(&shared);
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let auth = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // Links point where the client reached the simulator, which may differ
    // from the address it listens on (0.0.0.0, a forwarded port).
    let site = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-:[]_".contains(c))
        })
        .map(|h| format!("http://{h}"))
        .unwrap_or_else(|| shared.url.clone());
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
        at: std::time::Instant::now(),
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
    let call = Call {
        method: &method,
        path: &path,
        params: Params::parse(&query),
        body,
        raw_body: &body_bytes,
        site,
    };
    let r = route(&shared, call, user.as_ref(), auth.is_some()).await;
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

/// One request, parsed.
pub(crate) struct Call<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub params: Params,
    pub body: Option<Value>,
    pub raw_body: &'a [u8],
    pub site: String,
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

fn segments(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(decode_path)
        .collect()
}

const UNAUTHENTICATED: &str =
    "You are not authenticated. Authentication required to perform this operation.";

async fn route(shared: &Shared, call: Call<'_>, user: Option<&UserDef>, sent_auth: bool) -> Reply {
    let segs = segments(call.path);
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let flavor = lock(&shared.state).flavor;
    let Some((version, rest)) = (match segs.as_slice() {
        ["rest", "api", v, rest @ ..] => Some((*v, rest)),
        _ => None,
    }) else {
        return match user {
            None => error(401, &[UNAUTHENTICATED]),
            Some(_) => not_found(call.path),
        };
    };
    let resolved = Api::resolve(flavor, version);
    // Server information is public: anonymous callers (no credentials at
    // all) may read it; wrong credentials are still refused.
    let user = match (user, resolved) {
        (Some(u), _) => u,
        (None, Some(version)) if !sent_auth && call.method == "GET" && rest == ["serverInfo"] => {
            let ctx = Ctx {
                site: call.site,
                api: version,
                flavor,
            };
            return api::server_info(&ctx);
        }
        (None, _) => return error(401, &[UNAUTHENTICATED]),
    };
    // The removed search endpoints answer 410 on Cloud, whatever the version.
    if flavor == SimFlavor::Cloud && rest == ["search"] && resolved.is_some() {
        return error(
            410,
            &[
                "The requested API has been removed. Please migrate to the /rest/api/3/search/jql API. A full migration guideline is available at https://developer.atlassian.com/changelog/#CHANGE-2046",
            ],
        );
    }
    let Some(version) = resolved else {
        return not_found(call.path);
    };
    let ctx = Ctx {
        site: call.site.clone(),
        api: version,
        flavor,
    };
    let cloud = flavor == SimFlavor::Cloud;
    let (p, body) = (&call.params, call.body);
    match (call.method, rest) {
        ("GET", ["serverInfo"]) => api::server_info(&ctx),
        ("GET", ["field"]) => api::fields(&ctx),
        ("GET", ["myself"]) => reply(200, api::user_json(&ctx, user)),
        ("GET", ["mypermissions"]) => api::my_permissions(shared, p, user),
        ("GET", ["user"]) => api::get_user(shared, &ctx, p),
        ("GET", ["user", "search"]) => api::user_search(shared, &ctx, p),
        ("GET", ["user", "groups"]) => api::user_groups(shared, &ctx, p),
        ("GET", ["user", "assignable", "search"]) => api::assignable_search(shared, &ctx, p, user),
        ("GET" | "POST", ["search", "jql"]) if cloud => {
            api::search(shared, &ctx, call.method, p, body, user)
        }
        ("GET" | "POST", ["search"]) if !cloud => {
            api::search(shared, &ctx, call.method, p, body, user)
        }
        ("GET", ["issue", key]) => api::get_issue(shared, &ctx, key, p, user),
        ("PUT", ["issue", key]) => api::edit_issue(shared, &ctx, key, p, body, user),
        ("GET", ["issue", key, "transitions"]) => api::list_transitions(shared, &ctx, key, p, user),
        ("POST", ["issue", key, "transitions"]) => {
            api::do_transition(shared, &ctx, key, body, user).await
        }
        ("GET", ["issue", key, "comment"]) => api::list_comments(shared, &ctx, key, p, user),
        ("POST", ["issue", key, "comment"]) => api::add_comment(shared, &ctx, key, body, user),
        ("GET", ["issue", key, "comment", id]) => api::get_comment(shared, &ctx, key, id, user),
        ("PUT", ["issue", key, "comment", id]) => {
            api::edit_comment(shared, &ctx, key, id, body, user)
        }
        ("PUT", ["issue", key, "assignee"]) => api::assign(shared, key, body, user),
        ("GET", ["issue", key, "properties"]) => api::list_properties(shared, &ctx, key, user),
        ("GET", ["issue", key, "properties", prop]) => api::get_property(shared, key, prop, user),
        ("PUT", ["issue", key, "properties", prop]) => {
            api::set_property(shared, key, prop, body, call.raw_body, user)
        }
        ("DELETE", ["issue", key, "properties", prop]) => {
            api::delete_property(shared, key, prop, user)
        }
        (_, ["search", "jql"]) if !cloud => not_found(call.path),
        (_, rest) if known_resource(rest) => reply(405, json!({"message": "Method not allowed"})),
        _ => not_found(call.path),
    }
}

fn known_resource(rest: &[&str]) -> bool {
    matches!(
        rest,
        ["serverInfo" | "field" | "myself" | "mypermissions" | "user" | "search"]
            | ["search", "jql"]
            | ["user", "search"]
            | ["user", "groups"]
            | ["user", "assignable", "search"]
            | ["issue", _]
            | [
                "issue",
                _,
                "transitions" | "comment" | "assignee" | "properties"
            ]
            | ["issue", _, "comment" | "properties", _]
    )
}
