//! Editing a comment (`PUT issue/{key}/comment/{id}`) as Jira answers it: the contract's
//! shapes, 404s, the edit permissions and the per-issue write limit.

use std::time::Duration;

use serde_json::{Value, json};

use crate::contract::Contract;
use crate::{BOT_EMAIL, BOT_PAT, BOT_TOKEN, IssueSeed, JiraSim, UserDef, WriteLimits, bot_user};

struct Caller {
    base: String,
    http: reqwest::Client,
    user: String,
    token: String,
    bearer: bool,
}

impl Caller {
    fn basic(sim: &JiraSim, user: &str, token: &str) -> Caller {
        Caller {
            base: sim.url().to_string(),
            http: reqwest::Client::new(),
            user: user.into(),
            token: token.into(),
            bearer: false,
        }
    }

    fn bot(sim: &JiraSim) -> Caller {
        Caller::basic(sim, BOT_EMAIL, BOT_TOKEN)
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
        let request = self.http.request(method, format!("{}{path}", self.base));
        let request = if self.bearer {
            request.bearer_auth(&self.token)
        } else {
            request.basic_auth(&self.user, Some(&self.token))
        };
        let response = request
            .json(&body)
            .send()
            .await
            .expect("the simulator answers");
        let status = response.status().as_u16();
        let text = response.text().await.expect("a body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, body).await
    }

    async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PUT, path, body).await
    }
}

fn adf(text: &str) -> Value {
    json!({"type": "doc", "version": 1, "content": [
        {"type": "paragraph", "content": [{"type": "text", "text": text}]}
    ]})
}

fn person(id: &str, permissions: &[&str]) -> UserDef {
    UserDef {
        account_id: id.into(),
        name: id.into(),
        display_name: id.into(),
        email: format!("{id}@example.com"),
        token: Some(format!("{id}-token")),
        pat: None,
        permissions: Some(
            [(
                "*".to_string(),
                permissions.iter().map(|p| p.to_string()).collect(),
            )]
            .into(),
        ),
    }
}

fn issue(sim: &JiraSim) -> String {
    sim.add_issue(IssueSeed {
        project: "OPS".into(),
        summary: "Edit me".into(),
        ..Default::default()
    })
}

#[tokio::test]
async fn an_edit_replaces_the_body_and_follows_the_contract() {
    let sim = JiraSim::cloud().await.expect("sim");
    let key = issue(&sim);
    let bot = Caller::bot(&sim);
    let (status, posted) = bot
        .post(
            &format!("/rest/api/3/issue/{key}/comment"),
            json!({"body": adf("first")}),
        )
        .await;
    assert_eq!(status, 201, "{posted}");
    let id = posted["id"].as_str().expect("an id").to_string();
    let before = sim.issue(&key).expect("issue");

    let (status, edited) = bot
        .put(
            &format!("/rest/api/3/issue/{key}/comment/{id}"),
            json!({"body": adf("second")}),
        )
        .await;
    assert_eq!(status, 200, "{edited}");
    assert_eq!(edited["id"], id.as_str());
    assert_eq!(edited["body"], adf("second"));
    assert_eq!(edited["created"], posted["created"]);
    let after = sim.issue(&key).expect("issue");
    assert_eq!(after.comments.len(), 1, "edited in place");
    assert_eq!(after.comments[0].body, adf("second"));
    assert!(after.comments[0].updated >= before.comments[0].created);

    let contract = Contract::bundled().expect("the bundled contract");
    let put = sim
        .calls()
        .into_iter()
        .find(|c| c.method == "PUT")
        .expect("the edit was logged");
    assert_eq!(contract.check_call(&put), Vec::<String>::new());
}

#[tokio::test]
async fn unknown_issues_and_comments_are_404s() {
    let sim = JiraSim::cloud().await.expect("sim");
    let key = issue(&sim);
    let bot = Caller::bot(&sim);
    let (status, reply) = bot
        .put(
            &format!("/rest/api/3/issue/{key}/comment/99999"),
            json!({"body": adf("x")}),
        )
        .await;
    assert_eq!(status, 404, "{reply}");
    assert!(reply.to_string().contains("99999"), "{reply}");
    let (status, _) = bot
        .put(
            "/rest/api/3/issue/OPS-404/comment/1",
            json!({"body": adf("x")}),
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn editing_needs_the_edit_permission_for_the_comment() {
    let sim = JiraSim::cloud().await.expect("sim");
    let key = issue(&sim);
    sim.add_user(person(
        "own",
        &["BROWSE_PROJECTS", "ADD_COMMENTS", "EDIT_OWN_COMMENTS"],
    ));
    sim.add_user(person("noedit", &["BROWSE_PROJECTS", "ADD_COMMENTS"]));
    sim.add_user(person("admin", &["BROWSE_PROJECTS", "EDIT_ALL_COMMENTS"]));
    let bots = sim.comment_as(&key, &bot_user().account_id, "the bot's");
    let own = Caller::basic(&sim, "own@example.com", "own-token");
    let (status, posted) = own
        .post(
            &format!("/rest/api/3/issue/{key}/comment"),
            json!({"body": adf("mine")}),
        )
        .await;
    assert_eq!(status, 201, "{posted}");
    let mine = posted["id"].as_str().expect("id").to_string();
    let path = |id: &str| format!("/rest/api/3/issue/{key}/comment/{id}");
    let body = json!({"body": adf("changed")});

    assert_eq!(own.put(&path(&mine), body.clone()).await.0, 200);
    let (status, reply) = own.put(&path(&bots), body.clone()).await;
    assert_eq!(status, 400, "only one's own comments: {reply}");
    assert!(reply.to_string().contains("permission"), "{reply}");
    let noedit = Caller::basic(&sim, "noedit@example.com", "noedit-token");
    assert_eq!(noedit.put(&path(&mine), body.clone()).await.0, 400);
    let admin = Caller::basic(&sim, "admin@example.com", "admin-token");
    let (status, edited) = admin.put(&path(&bots), body).await;
    assert_eq!(status, 200, "{edited}");
    assert_eq!(edited["updateAuthor"]["accountId"], "admin");
    assert_eq!(
        edited["author"]["accountId"],
        bot_user().account_id.as_str()
    );
}

#[tokio::test]
async fn edits_count_against_the_issue_write_limit_and_bodies_are_checked() {
    let sim = JiraSim::cloud().await.expect("sim");
    let key = issue(&sim);
    let bot = Caller::bot(&sim);
    let (_, posted) = bot
        .post(
            &format!("/rest/api/3/issue/{key}/comment"),
            json!({"body": adf("first")}),
        )
        .await;
    let path = format!(
        "/rest/api/3/issue/{key}/comment/{}",
        posted["id"].as_str().expect("id")
    );
    let (status, reply) = bot.put(&path, json!({"body": "not ADF"})).await;
    assert_eq!(status, 400, "{reply}");
    let (status, reply) = bot
        .put(&path, json!({"body": adf(&"x".repeat(40_000))}))
        .await;
    assert_eq!(status, 400, "{reply}");

    // The comment's creation is the first of three writes allowed.
    sim.set_write_limits(Some(WriteLimits {
        rules: vec![(3, Duration::from_secs(30))],
    }));
    assert_eq!(bot.put(&path, json!({"body": adf("a")})).await.0, 200);
    assert_eq!(bot.put(&path, json!({"body": adf("b")})).await.0, 200);
    let (status, reply) = bot.put(&path, json!({"body": adf("c")})).await;
    assert_eq!(status, 429, "{reply}");
    assert_eq!(
        sim.issue(&key).expect("issue").comments[0].body,
        adf("b"),
        "a refused edit changes nothing"
    );
}

#[tokio::test]
async fn data_center_edits_wiki_text() {
    let sim = JiraSim::datacenter().await.expect("sim");
    let key = issue(&sim);
    let bot = Caller {
        bearer: true,
        token: BOT_PAT.into(),
        ..Caller::bot(&sim)
    };
    let (status, posted) = bot
        .post(
            &format!("/rest/api/2/issue/{key}/comment"),
            json!({"body": "first"}),
        )
        .await;
    assert_eq!(status, 201, "{posted}");
    let path = format!(
        "/rest/api/2/issue/{key}/comment/{}",
        posted["id"].as_str().expect("id")
    );
    let (status, reply) = bot.put(&path, json!({"body": adf("ADF")})).await;
    assert_eq!(status, 400, "v2 takes wiki text: {reply}");
    let (status, edited) = bot.put(&path, json!({"body": "*second*"})).await;
    assert_eq!(status, 200, "{edited}");
    assert_eq!(edited["body"], "*second*");
    assert_eq!(
        sim.issue(&key).expect("issue").comments[0].body,
        json!("*second*")
    );
}
