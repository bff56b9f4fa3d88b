//! What generic Jira clients rely on beyond recac's own client: API versions,
//! server information, the field list, user search, array parameters in
//! both encodings, editing the assignee and absolute `self` links. The Cloud
//! replies are checked against Atlassian's OpenAPI description.

use recac_jira_sim::contract::Contract;
use recac_jira_sim::{
    BOT_ACCOUNT_ID, BOT_EMAIL, BOT_NAME, BOT_PAT, BOT_TOKEN, IssueSeed, JiraSim, Seed, SimFlavor,
    UserDef,
};
use serde_json::{Value, json};

struct Http {
    base: String,
    client: reqwest::Client,
    auth: Auth,
}

enum Auth {
    None,
    Basic(String, String),
    Bearer(String),
}

impl Http {
    fn new(sim: &JiraSim, auth: Auth) -> Http {
        Http {
            base: sim.url().to_string(),
            client: reqwest::Client::new(),
            auth,
        }
    }

    fn cloud(sim: &JiraSim) -> Http {
        Http::new(sim, Auth::Basic(BOT_EMAIL.into(), BOT_TOKEN.into()))
    }

    fn dc(sim: &JiraSim) -> Http {
        Http::new(sim, Auth::Bearer(BOT_PAT.into()))
    }

    /// `path` is relative to the site, or an absolute URL (a `self` link).
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        };
        let mut rb = self.client.request(method, url);
        rb = match &self.auth {
            Auth::None => rb,
            Auth::Basic(u, p) => rb.basic_auth(u, Some(p)),
            Auth::Bearer(t) => rb.bearer_auth(t),
        };
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.expect("simulator answers");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
}

async fn sim(flavor: SimFlavor) -> JiraSim {
    let sim = JiraSim::start(Seed {
        flavor,
        ..Seed::default()
    })
    .await
    .expect("simulator starts");
    sim.add_user(UserDef {
        account_id: "70121:aa".into(),
        name: "alice".into(),
        display_name: "Alice Liddell".into(),
        email: "alice@example.com".into(),
        token: None,
        pat: None,
        permissions: None,
    });
    sim.add_issue(IssueSeed {
        project: "OPS".into(),
        summary: "Build is red".into(),
        description: Some("First line\nsecond line\n\nNext paragraph".into()),
        labels: vec!["ci".into(), "recac-agent".into()],
        ..Default::default()
    });
    sim.add_issues("OPS", "more", &["recac-agent"], 4);
    sim
}

fn field_names(issue: &Value) -> Vec<String> {
    let mut names: Vec<String> = issue["fields"]
        .as_object()
        .expect("fields")
        .keys()
        .cloned()
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn cloud_serves_v2_v3_and_latest_with_their_text_formats() {
    let sim = sim(SimFlavor::Cloud).await;
    let h = Http::cloud(&sim);
    let (s, v2) = h.get("/rest/api/2/issue/OPS-1?fields=description").await;
    assert_eq!(s, 200);
    assert_eq!(
        v2["fields"]["description"],
        "First line\nsecond line\n\nNext paragraph"
    );
    let (_, v3) = h.get("/rest/api/3/issue/OPS-1?fields=description").await;
    let (_, latest) = h
        .get("/rest/api/latest/issue/OPS-1?fields=description")
        .await;
    assert_eq!(v3["fields"]["description"]["type"], "doc");
    assert_eq!(
        v3["fields"]["description"]["content"][0]["content"][1],
        json!({"type": "hardBreak"})
    );
    assert_eq!(latest["fields"]["description"], v3["fields"]["description"]);
    // `latest` resolves to a concrete version in links.
    assert_eq!(
        latest["self"],
        format!("{}/rest/api/3/issue/10000", sim.url())
    );

    // A comment posted as wiki text on v2 reads as ADF on v3, and back.
    let (s, c) = h
        .post(
            "/rest/api/2/issue/OPS-1/comment",
            json!({"body": "Started.\n\n{code:rust}\nfn main() {}\n{code}"}),
        )
        .await;
    assert_eq!(s, 201, "{c}");
    assert!(c["body"].is_string());
    let (s, _) = h
        .post(
            "/rest/api/2/issue/OPS-1/comment",
            json!({"body": {"type": "doc", "version": 1, "content": []}}),
        )
        .await;
    assert_eq!(s, 400, "v2 wants a string");
    let (_, page) = h.get("/rest/api/3/issue/OPS-1/comment").await;
    let doc = &page["comments"][0]["body"];
    assert_eq!(doc["content"][1]["type"], "codeBlock");
    assert_eq!(doc["content"][1]["attrs"]["language"], "rust");
    let adf = json!({"type": "doc", "version": 1, "content": [
        {"type": "paragraph", "content": [{"type": "text", "text": "Done"}]}]});
    let (s, _) = h
        .post("/rest/api/3/issue/OPS-1/comment", json!({"body": adf}))
        .await;
    assert_eq!(s, 201);
    let (_, page) = h.get("/rest/api/2/issue/OPS-1/comment").await;
    assert_eq!(page["comments"][1]["body"], "Done");
    assert_eq!(sim.issue("OPS-1").unwrap().comments[1].body, adf);

    // Description edits follow the version's format too.
    let (s, _) = h
        .put(
            "/rest/api/2/issue/OPS-1",
            json!({"fields": {"description": "plain *wiki*"}}),
        )
        .await;
    assert_eq!(s, 204);
    let (_, v3) = h.get("/rest/api/3/issue/OPS-1?fields=description").await;
    assert_eq!(
        v3["fields"]["description"]["content"][0]["content"][0]["text"],
        "plain *wiki*"
    );
    let (s, _) = h
        .put(
            "/rest/api/3/issue/OPS-1",
            json!({"fields": {"description": "not ADF"}}),
        )
        .await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn datacenter_serves_v2_and_latest_only() {
    let sim = sim(SimFlavor::Datacenter).await;
    let h = Http::dc(&sim);
    assert_eq!(h.get("/rest/api/latest/myself").await.0, 200);
    assert_eq!(h.get("/rest/api/3/myself").await.0, 404);
    assert_eq!(
        h.get("/rest/api/2/search/jql?jql=project%3DOPS").await.0,
        404
    );
    let (s, v) = h.get("/rest/api/latest/issue/OPS-1").await;
    assert_eq!(s, 200);
    assert_eq!(v["self"], format!("{}/rest/api/2/issue/10000", sim.url()));
    assert!(v["fields"]["description"].is_string());
    assert!(
        v["fields"]["comment"]["comments"].is_array(),
        "get issue returns *all fields"
    );
}

#[tokio::test]
async fn server_info_tells_the_deployment_and_is_public() {
    for (flavor, path, deployment) in [
        (SimFlavor::Cloud, "/rest/api/2/serverInfo", "Cloud"),
        (SimFlavor::Cloud, "/rest/api/3/serverInfo", "Cloud"),
        (SimFlavor::Datacenter, "/rest/api/2/serverInfo", "Server"),
    ] {
        let sim = JiraSim::start(Seed {
            flavor,
            ..Seed::default()
        })
        .await
        .unwrap();
        let (s, v) = Http::new(&sim, Auth::None).get(path).await;
        assert_eq!(s, 200, "{path}");
        assert_eq!(v["deploymentType"], deployment);
        assert_eq!(v["baseUrl"], sim.url());
        assert_eq!(v["versionNumbers"].as_array().unwrap().len(), 3);
        let wrong = Http::new(&sim, Auth::Basic("nobody".into(), "wrong".into()));
        assert_eq!(wrong.get(path).await.0, 401, "bad credentials are refused");
        assert_eq!(
            Http::new(&sim, Auth::None)
                .get("/rest/api/2/myself")
                .await
                .0,
            401
        );
    }
}

#[tokio::test]
async fn field_list_maps_clause_names() {
    let sim = sim(SimFlavor::Cloud).await;
    let (s, list) = Http::cloud(&sim).get("/rest/api/2/field").await;
    assert_eq!(s, 200);
    let list = list.as_array().unwrap();
    let by_id = |id: &str| list.iter().find(|f| f["id"] == id).cloned().unwrap();
    assert_eq!(by_id("summary")["clauseNames"], json!(["summary"]));
    assert!(
        by_id("issuekey")["clauseNames"]
            .as_array()
            .unwrap()
            .contains(&json!("key"))
    );
    assert_eq!(by_id("labels")["schema"]["items"], "string");
    assert_eq!(by_id("comment")["navigable"], false);
}

#[tokio::test]
async fn user_search_per_flavour() {
    let sim = sim(SimFlavor::Cloud).await;
    let h = Http::cloud(&sim);
    let (s, users) = h.get("/rest/api/3/user/search?query=alice%40ex").await;
    assert_eq!(s, 200);
    assert_eq!(users.as_array().unwrap().len(), 1);
    assert_eq!(users[0]["accountId"], "70121:aa");
    let (_, users) = h.get("/rest/api/2/user/search?query=liddell").await;
    assert_eq!(users[0]["displayName"], "Alice Liddell");
    let (_, users) = h
        .get(&format!(
            "/rest/api/3/user/search?accountId={BOT_ACCOUNT_ID}"
        ))
        .await;
    assert_eq!(users[0]["emailAddress"], BOT_EMAIL);
    assert_eq!(
        h.get("/rest/api/3/user/search?username=alice").await.0,
        400,
        "Cloud has no user names"
    );
    let (s, users) = h
        .get("/rest/api/3/user/assignable/search?project=OPS&query=al")
        .await;
    assert_eq!((s, users.as_array().unwrap().len()), (200, 1));

    let sim = self::sim(SimFlavor::Datacenter).await;
    let h = Http::dc(&sim);
    let (s, users) = h.get("/rest/api/2/user/search?username=ALI").await;
    assert_eq!(s, 200);
    assert_eq!(users[0]["name"], "alice");
    assert!(users[0].get("accountId").is_none());
    let (_, users) = h.get("/rest/api/2/user/search?username=.").await;
    assert_eq!(users.as_array().unwrap().len(), 2);
    let (_, users) = h
        .get("/rest/api/2/user/search?username=.&startAt=1&maxResults=5")
        .await;
    assert_eq!(users.as_array().unwrap().len(), 1);
    assert_eq!(h.get("/rest/api/2/user/search").await.0, 400);
    let (s, u) = h
        .get(&format!("/rest/api/2/user?username={BOT_NAME}"))
        .await;
    assert_eq!((s, u["name"].as_str()), (200, Some(BOT_NAME)));
}

#[tokio::test]
async fn array_parameters_are_read_in_both_encodings() {
    for flavor in [SimFlavor::Cloud, SimFlavor::Datacenter] {
        let sim = sim(flavor).await;
        let (h, search) = match flavor {
            SimFlavor::Cloud => (Http::cloud(&sim), "/rest/api/3/search/jql"),
            SimFlavor::Datacenter => (Http::dc(&sim), "/rest/api/2/search"),
        };
        let want = vec!["labels", "status", "summary"];
        for query in [
            "fields=summary&fields=labels&fields=status",
            "fields=summary,labels,status",
            "fields=summary%2Clabels&fields=status",
        ] {
            let (s, v) = h
                .get(&format!("{search}?jql=project%20%3D%20OPS&{query}"))
                .await;
            assert_eq!(s, 200, "{flavor:?} {query}");
            assert_eq!(field_names(&v["issues"][0]), want, "{flavor:?} {query}");
            let (_, v) = h.get(&format!("/rest/api/2/issue/OPS-1?{query}")).await;
            assert_eq!(field_names(&v), want, "{flavor:?} get issue {query}");
        }
        // Exclusions, *navigable, expand=names and properties.
        let (s, _) = h
            .put(
                "/rest/api/2/issue/OPS-1/properties/recac.claim",
                json!({"owner": "a"}),
            )
            .await;
        assert_eq!(s, 201);
        let (_, v) = h
            .get("/rest/api/2/issue/OPS-1?fields=*navigable&fields=-description&expand=names&properties=recac.claim&properties=other")
            .await;
        let names = field_names(&v);
        assert!(
            names.contains(&"summary".to_string()) && !names.contains(&"description".to_string())
        );
        assert!(!names.contains(&"comment".to_string()));
        assert_eq!(v["names"]["summary"], "Summary");
        assert_eq!(v["properties"], json!({"recac.claim": {"owner": "a"}}));
        // POST search: arrays, or a comma-separated string.
        let (s, v) = h
            .post(
                search,
                json!({"jql": "project = OPS", "fields": ["summary", "labels,status"], "expand": "names", "maxResults": 2}),
            )
            .await;
        assert_eq!(s, 200);
        assert_eq!(field_names(&v["issues"][0]), want);
        assert_eq!(v["names"]["labels"], "Labels");
        assert_eq!(v["issues"].as_array().unwrap().len(), 2);
    }
}

#[tokio::test]
async fn assignee_can_be_edited_and_links_are_absolute() {
    for flavor in [SimFlavor::Cloud, SimFlavor::Datacenter] {
        let sim = sim(flavor).await;
        let (h, alice, bad) = match flavor {
            SimFlavor::Cloud => (
                Http::cloud(&sim),
                json!({"accountId": "70121:aa"}),
                json!({"name": "alice"}),
            ),
            SimFlavor::Datacenter => (
                Http::dc(&sim),
                json!({"name": "alice"}),
                json!({"name": "nobody"}),
            ),
        };
        let (_, issue) = h.get("/rest/api/2/issue/OPS-1").await;
        let link = issue["self"].as_str().unwrap().to_string();
        assert!(link.starts_with("http://127.0.0.1:"), "{link}");
        for v in [
            &issue["fields"]["status"]["self"],
            &issue["fields"]["status"]["statusCategory"]["self"],
            &issue["fields"]["project"]["self"],
        ] {
            assert!(v.as_str().unwrap().starts_with(sim.url()), "{v}");
        }
        // PUT to the self link, as clients that update resources do.
        let (s, b) = h
            .put(
                &link,
                json!({"fields": {"assignee": alice, "labels": ["x"]}, "update": {}}),
            )
            .await;
        assert_eq!(s, 204, "{flavor:?} {b}");
        let snap = sim.issue("OPS-1").unwrap();
        assert_eq!(snap.assignee.as_deref(), Some("70121:aa"));
        assert_eq!(snap.labels, ["x"]);
        let (s, b) = h.put(&link, json!({"fields": {"assignee": bad}})).await;
        assert_eq!(s, 400, "{flavor:?}");
        assert!(b["errors"]["assignee"].is_string(), "{b}");
        let (s, _) = h
            .put(
                &link,
                json!({"update": {"assignee": [{"set": null}], "labels": [{"add": "y"}], "summary": [{"set": "Renamed"}]}}),
            )
            .await;
        assert_eq!(s, 204);
        let snap = sim.issue("OPS-1").unwrap();
        assert_eq!(snap.assignee, None);
        assert_eq!(snap.summary, "Renamed");
        // Fields outside the default screen are still refused.
        let (s, b) = h.put(&link, json!({"fields": {"reporter": alice}})).await;
        assert_eq!(s, 400);
        assert!(
            b["errors"]["reporter"]
                .as_str()
                .unwrap()
                .contains("not on the appropriate screen")
        );
        // Comment links resolve.
        let body = match flavor {
            SimFlavor::Cloud => json!({"body": {"type": "doc", "version": 1, "content": [
                {"type": "paragraph", "content": [{"type": "text", "text": "hi"}]}]}}),
            SimFlavor::Datacenter => json!({"body": "hi"}),
        };
        let version = if flavor == SimFlavor::Cloud { "3" } else { "2" };
        let (s, c) = h
            .post(&format!("/rest/api/{version}/issue/OPS-1/comment"), body)
            .await;
        assert_eq!(s, 201);
        let (s, again) = h.get(c["self"].as_str().unwrap()).await;
        assert_eq!((s, &again["id"]), (200, &c["id"]));
        // Transitions may carry a comment but no fields (no screens).
        let (s, _) = h
            .post(
                "/rest/api/2/issue/OPS-1/transitions",
                json!({"transition": {"id": "11"}, "fields": {}, "update": {"comment": [{"add": {"body": "moving"}}]}}),
            )
            .await;
        assert_eq!(s, 204);
        let snap = sim.issue("OPS-1").unwrap();
        assert_eq!(snap.status, "In Progress");
        assert_eq!(snap.comments.last().unwrap().body, "moving");
        let (s, _) = h
            .post(
                "/rest/api/2/issue/OPS-1/transitions",
                json!({"transition": {"id": "21"}, "fields": {"resolution": {"name": "Done"}}}),
            )
            .await;
        assert_eq!(s, 400);
        let (s, t) = h
            .get("/rest/api/2/issue/OPS-1/transitions?transitionId=21")
            .await;
        assert_eq!((s, t["transitions"].as_array().unwrap().len()), (200, 1));
        let (_, props) = h.get("/rest/api/2/issue/OPS-1/properties").await;
        assert_eq!(props, json!({"keys": []}));
    }
}

#[tokio::test]
async fn new_endpoints_match_the_contract() {
    let contract = Contract::bundled().unwrap_or_else(|e| panic!("the Jira contract: {e}"));
    let sim = sim(SimFlavor::Cloud).await;
    let h = Http::cloud(&sim);
    let adf = json!({"body": {"type": "doc", "version": 1, "content": [
        {"type": "paragraph", "content": [{"type": "text", "text": "hi"}]}]}});
    for v in ["2", "3", "latest"] {
        let r = |p: &str| format!("/rest/api/{v}/{p}");
        h.get(&r("serverInfo")).await;
        h.get(&r("field")).await;
        h.get(&r("myself")).await;
        h.get(&r("user/search?query=alice&maxResults=5")).await;
        h.get(&r("user/assignable/search?project=OPS&query=a"))
            .await;
        h.get(&r(&format!("user?accountId={BOT_ACCOUNT_ID}"))).await;
        h.get(&r(
            "search/jql?jql=project%20%3D%20OPS&fields=summary&fields=labels&fields=status&maxResults=2&expand=names",
        ))
        .await;
        h.get(&r(
            "issue/OPS-1?fields=summary&fields=comment&fields=description&properties=recac.claim&expand=names",
        ))
        .await;
        h.get(&r("issue/OPS-1")).await;
        let comment = if v == "2" {
            json!({"body": "hi"})
        } else {
            adf.clone()
        };
        h.post(&r("issue/OPS-2/comment"), comment).await;
        h.get(&r("issue/OPS-2/comment")).await;
        h.get(&r("issue/OPS-2/comment/10000")).await;
        h.put(
            &r("issue/OPS-2"),
            json!({"fields": {"assignee": {"accountId": BOT_ACCOUNT_ID}}}),
        )
        .await;
        h.put(
            &r("issue/OPS-2?returnIssue=true"),
            json!({"update": {"labels": [{"add": format!("v{v}")}]}}),
        )
        .await;
        h.put(&r("issue/OPS-2/properties/recac.claim"), json!({"v": v}))
            .await;
        h.get(&r("issue/OPS-2/properties")).await;
        h.get(&r("issue/OPS-2/transitions?transitionId=11")).await;
        h.get(&r("issue/OPS-404")).await;
    }
    let calls = sim.calls();
    assert!(calls.len() >= 50, "{}", calls.len());
    let mut problems = Vec::new();
    for call in &calls {
        assert!(
            (200..300).contains(&call.status) || call.status == 404,
            "{} {}?{} answered {}: {:?}",
            call.method,
            call.path,
            call.query,
            call.status,
            call.response
        );
        problems.extend(contract.check_call(call));
    }
    assert!(
        problems.is_empty(),
        "contract violations:\n{}",
        problems.join("\n")
    );
}
