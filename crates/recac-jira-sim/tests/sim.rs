//! The simulator over raw HTTP: Jira's behaviours the client depends on.

use recac_jira_sim::{BOT_EMAIL, BOT_PAT, BOT_TOKEN, Fault, IssueSeed, JiraSim, Seed, SimFlavor};
use serde_json::{Value, json};

struct Http {
    base: String,
    auth: Option<(String, String)>,
    bearer: Option<String>,
    client: reqwest::Client,
}

impl Http {
    fn new(sim: &JiraSim) -> Http {
        Http {
            base: sim.url().to_string(),
            auth: Some((BOT_EMAIL.into(), BOT_TOKEN.into())),
            bearer: None,
            client: reqwest::Client::new(),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut rb = self.client.request(method, format!("{}{path}", self.base));
        if let Some((u, p)) = &self.auth {
            rb = rb.basic_auth(u, Some(p));
        }
        if let Some(t) = &self.bearer {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn search(&self, jql: &str) -> Result<Vec<String>, (u16, Value)> {
        let (s, v) = self
            .call(
                reqwest::Method::POST,
                "/rest/api/3/search/jql",
                Some(json!({"jql": jql, "fields": ["summary"], "maxResults": 100})),
            )
            .await;
        if s != 200 {
            return Err((s, v));
        }
        Ok(v["issues"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["key"].as_str().unwrap().to_string())
            .collect())
    }
}

async fn seeded() -> JiraSim {
    let sim = JiraSim::cloud().await.unwrap();
    let mk =
        |summary: &str, labels: &[&str], status: &str, assignee: Option<&str>, created: &str| {
            IssueSeed {
                project: "OPS".into(),
                summary: summary.into(),
                labels: labels.iter().map(|l| l.to_string()).collect(),
                status: Some(status.into()),
                assignee: assignee.map(str::to_string),
                created: Some(created.into()),
                ..Default::default()
            }
        };
    sim.add_issue(mk(
        "Build is red",
        &["ci", "recac-agent"],
        "To Do",
        None,
        "2025-01-01T00:00:00Z",
    )); // OPS-1
    sim.add_issue(mk(
        "Docs typo",
        &["docs"],
        "In Progress",
        Some(BOT_EMAIL),
        "2025-02-01T00:00:00Z",
    )); // OPS-2
    sim.add_issue(mk(
        "Flaky test in CI",
        &[],
        "Done",
        None,
        "2025-03-01T00:00:00Z",
    )); // OPS-3
    sim.add_issue(IssueSeed {
        project: "WEB".into(),
        summary: "Landing page".into(),
        labels: vec!["recac-agent".into()],
        ..Default::default()
    }); // WEB-1
    sim
}

#[tokio::test]
async fn jql_subset() {
    let sim = seeded().await;
    let h = Http::new(&sim);
    let cases: &[(&str, &[&str])] = &[
        ("project = OPS", &["OPS-1", "OPS-2", "OPS-3"]),
        ("project = OPS AND labels = recac-agent", &["OPS-1"]),
        ("labels = recac-agent", &["OPS-1", "WEB-1"]),
        (
            "labels = docs OR labels = ci ORDER BY key DESC",
            &["OPS-2", "OPS-1"],
        ),
        // NOT negates the clause (empty fields included), unlike `!=`.
        ("project = OPS AND NOT labels = ci", &["OPS-2", "OPS-3"]),
        ("project = OPS AND labels != ci", &["OPS-2"]),
        ("project = OPS AND labels IS EMPTY", &["OPS-3"]),
        ("project = OPS AND labels IS NOT EMPTY", &["OPS-1", "OPS-2"]),
        (
            "project in (OPS, WEB) AND labels NOT IN (docs, ci)",
            &["WEB-1"],
        ),
        ("status = \"in progress\"", &["OPS-2"]),
        ("statusCategory = Done", &["OPS-3"]),
        (
            "statusCategory != \"To Do\" AND project = OPS ORDER BY created DESC",
            &["OPS-3", "OPS-2"],
        ),
        ("project = OPS AND summary ~ \"ci\"", &["OPS-3"]),
        ("project = OPS AND text ~ build", &["OPS-1"]),
        ("assignee = currentUser()", &["OPS-2"]),
        ("project = OPS AND assignee IS EMPTY", &["OPS-1", "OPS-3"]),
        (
            "project = OPS AND created >= \"2025-02-01\" AND created < \"2025/03/01\"",
            &["OPS-2"],
        ),
        (
            "project = OPS AND (labels = ci OR status = Done) ORDER BY created ASC",
            &["OPS-1", "OPS-3"],
        ),
        ("key = ops-2", &["OPS-2"]),
        (
            "key in (OPS-1, WEB-1) ORDER BY key DESC",
            &["WEB-1", "OPS-1"],
        ),
        (
            "project = OPS AND updated <= now()",
            &["OPS-1", "OPS-2", "OPS-3"],
        ),
    ];
    for (jql, want) in cases {
        let got = h
            .search(jql)
            .await
            .unwrap_or_else(|e| panic!("{jql}: {e:?}"));
        let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        if !jql.contains("ORDER BY") {
            let mut g = got.clone();
            g.sort();
            let mut w = want.clone();
            w.sort();
            assert_eq!(g, w, "{jql}");
        } else {
            assert_eq!(got, want, "{jql}");
        }
    }
}

#[tokio::test]
async fn jql_errors_are_jira_like() {
    let sim = seeded().await;
    let h = Http::new(&sim);
    let cases = [
        (
            "foo = bar",
            "Field 'foo' does not exist or you do not have permission to view it.",
        ),
        (
            "status = Nope",
            "The value 'Nope' does not exist for the field 'status'.",
        ),
        (
            "project = NOPE",
            "The value 'NOPE' does not exist for the field 'project'.",
        ),
        (
            "statusCategory = Weird",
            "The value 'Weird' does not exist for the field 'statusCategory'.",
        ),
        (
            "summary = x",
            "The operator '=' is not supported by the 'summary' field.",
        ),
        ("project = OPS AND", "Error in the JQL Query"),
        ("labels = \"open", "has not been completed"),
        (
            "project = OPS ORDER BY bogus",
            "Not able to sort using field 'bogus'.",
        ),
        ("ORDER BY key", "Unbounded JQL queries are not allowed here"),
        ("", "Unbounded JQL queries are not allowed here"),
    ];
    for (jql, msg) in cases {
        let (status, body) = h.search(jql).await.unwrap_err();
        assert_eq!(status, 400, "{jql}");
        let messages = body["errorMessages"].to_string();
        assert!(messages.contains(msg), "{jql}: {messages}");
        assert!(body["errors"].is_object());
    }
}

#[tokio::test]
async fn removed_search_is_gone_and_auth_is_checked() {
    let sim = seeded().await;
    let h = Http::new(&sim);
    for path in [
        "/rest/api/3/search?jql=project%3DOPS",
        "/rest/api/2/search?jql=project%3DOPS",
    ] {
        let (s, body) = h.call(reqwest::Method::GET, path, None).await;
        assert_eq!(s, 410, "{path}");
        assert!(
            body["errorMessages"][0]
                .as_str()
                .unwrap()
                .contains("/rest/api/3/search/jql")
        );
    }
    let anon = Http {
        auth: None,
        ..Http::new(&sim)
    };
    assert_eq!(
        anon.call(reqwest::Method::GET, "/rest/api/3/myself", None)
            .await
            .0,
        401
    );
    let wrong = Http {
        auth: Some((BOT_EMAIL.into(), "nope".into())),
        ..Http::new(&sim)
    };
    assert_eq!(
        wrong
            .call(reqwest::Method::GET, "/rest/api/3/myself", None)
            .await
            .0,
        401
    );
    let bearer = Http {
        auth: None,
        bearer: Some(BOT_PAT.into()),
        ..Http::new(&sim)
    };
    assert_eq!(
        bearer
            .call(reqwest::Method::GET, "/rest/api/3/myself", None)
            .await
            .0,
        200
    );
    // Cloud serves v2, v3 and latest; other versions do not exist.
    for (path, status) in [
        ("/rest/api/2/myself", 200),
        ("/rest/api/latest/myself", 200),
        ("/rest/api/1/myself", 404),
        ("/rest/api/4/myself", 404),
    ] {
        assert_eq!(
            h.call(reqwest::Method::GET, path, None).await.0,
            status,
            "{path}"
        );
    }
    let (s, body) = h
        .call(reqwest::Method::GET, "/rest/api/3/issue/OPS-404", None)
        .await;
    assert_eq!(s, 404);
    assert_eq!(
        body["errorMessages"][0],
        "Issue does not exist or you do not have permission to see it."
    );
}

#[tokio::test]
async fn cloud_pagination_shape() {
    let sim = JiraSim::cloud().await.unwrap();
    sim.add_issues("P", "x", &[], 120);
    let h = Http::new(&sim);
    // GET with the default fields: only ids, 50 per page, a token, no total.
    let (s, v) = h
        .call(
            reqwest::Method::GET,
            "/rest/api/3/search/jql?jql=project%20%3D%20P",
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["issues"].as_array().unwrap().len(), 50);
    assert_eq!(v["issues"][0], json!({"id": "10000"}));
    assert_eq!(v["isLast"], false);
    assert!(v.get("total").is_none() && v.get("startAt").is_none());
    let token = v["nextPageToken"].as_str().unwrap().to_string();
    let (_, v2) = h
        .call(reqwest::Method::POST, "/rest/api/3/search/jql", Some(json!({"jql": "project = P", "nextPageToken": token, "maxResults": 1000, "fields": ["summary"]})))
        .await;
    assert_eq!(
        v2["issues"].as_array().unwrap().len(),
        70,
        "capped at 100, 70 left"
    );
    assert_eq!(v2["isLast"], true);
    assert!(v2.get("nextPageToken").is_none());
    // A token from another query is refused.
    let (s, _) = h
        .call(
            reqwest::Method::POST,
            "/rest/api/3/search/jql",
            Some(json!({"jql": "project = P ORDER BY key DESC", "nextPageToken": token})),
        )
        .await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn datacenter_shape() {
    let sim = JiraSim::start(Seed {
        flavor: SimFlavor::Datacenter,
        ..Seed::default()
    })
    .await
    .unwrap();
    sim.add_issues("P", "x", &[], 60);
    let h = Http {
        auth: None,
        bearer: Some(BOT_PAT.into()),
        ..Http::new(&sim)
    };
    let (s, v) = h
        .call(
            reqwest::Method::GET,
            "/rest/api/2/search?jql=project%3DP&startAt=40",
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["startAt"], 40);
    assert_eq!(v["total"], 60);
    assert_eq!(v["issues"].as_array().unwrap().len(), 20);
    assert!(
        v["issues"][0]["fields"]["summary"].is_string(),
        "all navigable fields by default"
    );
    // DC basic auth uses the user name.
    let basic = Http {
        auth: Some(("recac-bot".into(), BOT_TOKEN.into())),
        ..Http::new(&sim)
    };
    let (s, me) = basic
        .call(reqwest::Method::GET, "/rest/api/2/myself", None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(me["name"], "recac-bot");
    assert!(me.get("accountId").is_none());
    // Comments are strings on v2; an ADF body is refused.
    let (s, _) = h
        .call(
            reqwest::Method::POST,
            "/rest/api/2/issue/P-1/comment",
            Some(json!({"body": {"type": "doc"}})),
        )
        .await;
    assert_eq!(s, 400);
    let (s, c) = h
        .call(
            reqwest::Method::POST,
            "/rest/api/2/issue/P-1/comment",
            Some(json!({"body": "h1. hi"})),
        )
        .await;
    assert_eq!(s, 201);
    assert_eq!(c["body"], "h1. hi");
    assert_eq!(
        h.call(reqwest::Method::GET, "/rest/api/3/myself", None)
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn writes_limits_comments_and_faults() {
    let sim = seeded().await;
    let h = Http::new(&sim);
    // Empty ADF text nodes and over-long comments are rejected like Jira does.
    let empty_text = json!({"body": {"type": "doc", "version": 1, "content": [{"type": "paragraph", "content": [{"type": "text", "text": ""}]}]}});
    assert_eq!(
        h.call(
            reqwest::Method::POST,
            "/rest/api/3/issue/OPS-1/comment",
            Some(empty_text)
        )
        .await
        .0,
        400
    );
    let long = json!({"body": {"type": "doc", "version": 1, "content": [{"type": "paragraph", "content": [{"type": "text", "text": "x".repeat(32_768)}]}]}});
    let (s, body) = h
        .call(
            reqwest::Method::POST,
            "/rest/api/3/issue/OPS-1/comment",
            Some(long),
        )
        .await;
    assert_eq!(s, 400);
    assert!(
        body["errors"]["comment"]
            .as_str()
            .unwrap()
            .contains("too long")
    );
    let (s, _) = h
        .call(
            reqwest::Method::POST,
            "/rest/api/3/issue/OPS-1/comment",
            Some(json!({"body": "plain"})),
        )
        .await;
    assert_eq!(s, 400, "v3 wants ADF");
    // Per-issue write limit: the 21st write within 2 s is a 429 with Retry-After.
    let mut limited = None;
    for i in 0..25 {
        let (s, _) = h
            .call(
                reqwest::Method::PUT,
                "/rest/api/3/issue/OPS-1",
                Some(json!({"update": {"labels": [{"add": format!("l{i}")}]}})),
            )
            .await;
        if s == 429 {
            limited = Some(i);
            break;
        }
    }
    assert_eq!(limited, Some(20));
    let last = sim.calls().last().cloned().unwrap();
    assert_eq!(last.status, 429);
    // Invalid transition id, non-numeric id.
    let (s, b) = h
        .call(
            reqwest::Method::POST,
            "/rest/api/3/issue/OPS-3/transitions",
            Some(json!({"transition": {"id": "11"}})),
        )
        .await;
    assert_eq!(
        (s, b["errorMessages"][0].as_str().unwrap()),
        (400, "Transition id '11' is not valid for this issue.")
    );
    let (s, _) = h
        .call(
            reqwest::Method::POST,
            "/rest/api/3/issue/OPS-3/transitions",
            Some(json!({"transition": {"id": "abc"}})),
        )
        .await;
    assert_eq!(s, 400);
    // Faults: status with Retry-After, then a malformed body, each once.
    sim.inject(Fault::rate_limited(7).on_path("/myself"));
    let resp = reqwest::Client::new()
        .get(format!("{}/rest/api/3/myself", sim.url()))
        .basic_auth(BOT_EMAIL, Some(BOT_TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(resp.headers()["retry-after"], "7");
    sim.inject(Fault::malformed_json().on_path("/myself"));
    let (s, v) = h
        .call(reqwest::Method::GET, "/rest/api/3/myself", None)
        .await;
    assert_eq!((s, v), (200, Value::Null), "body is not JSON");
    assert_eq!(
        h.call(reqwest::Method::GET, "/rest/api/3/myself", None)
            .await
            .0,
        200
    );
    sim.inject(Fault::drop_connection());
    assert!(
        reqwest::Client::new()
            .get(format!("{}/rest/api/3/myself", sim.url()))
            .send()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn seed_file_shape() {
    let seed: Seed = serde_json::from_value(json!({
        "flavor": "datacenter",
        "projects": [{"key": "OPS", "name": "Operations"}],
        "issues": [{"project": "OPS", "summary": "Hello", "labels": ["recac-agent"], "status": "In Progress"}],
        "workflow": {
            "statuses": [{"id": "1", "name": "Open", "category": "new"}, {"id": "2", "name": "Closed", "category": "done"}],
            "transitions": [{"id": "5", "name": "Close", "from": ["Open"], "to": "Closed"}]
        }
    }))
    .unwrap();
    let sim = JiraSim::start(seed).await.unwrap();
    let snap = sim.issue("OPS-1").unwrap();
    assert_eq!(
        snap.status, "Open",
        "unknown seed status falls back to the first"
    );
    assert!(serde_json::from_value::<Seed>(json!({"bogus": 1})).is_err());
}
