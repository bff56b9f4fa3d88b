//! Contract tests: every call the client makes on Cloud (v3) must be an
//! operation of Atlassian's OpenAPI description; request bodies must validate
//! against its request schemas and the simulator's replies against its
//! response schemas.

mod common;

use recac_jira::Flavor;
use recac_jira_sim::contract::Contract;
use recac_jira_sim::{CallRecord, IssueSeed, JiraSim};
use serde_json::json;

fn contract() -> Contract {
    Contract::bundled().unwrap_or_else(|e| panic!("the Jira contract: {e}"))
}

/// Checks one logged call; returns the problems found.
fn check_call(c: &Contract, call: &CallRecord) -> Vec<String> {
    c.check_call(call)
}

async fn exercise_client(sim: &JiraSim) {
    let c = common::client(sim, Flavor::Cloud);
    let key = sim.add_issue(IssueSeed {
        project: "OPS".into(),
        summary: "Contract".into(),
        description: Some("para one\n\npara two".into()),
        labels: vec!["recac-agent".into()],
        ..Default::default()
    });
    sim.add_issues("OPS", "more", &["recac-agent"], 150);
    let me = c.myself().await.unwrap();
    c.search_all(
        "project = OPS AND labels = recac-agent ORDER BY created DESC",
        &[
            "summary",
            "status",
            "labels",
            "assignee",
            "updated",
            "project",
            "created",
            "description",
        ],
    )
    .await
    .unwrap();
    c.search_all("project = OPS", &["id"]).await.unwrap();
    c.get_issue(&key, &[]).await.unwrap();
    c.get_issue(&key, &["summary", "description", "project", "created"])
        .await
        .unwrap();
    c.transitions(&key).await.unwrap();
    c.transition(&key, "In Progress").await.unwrap();
    c.add_comment(
        &key,
        "Started.\n\n```rust\nfn main() {}\n```\nline one\nline two",
    )
    .await
    .unwrap();
    c.comments(&key).await.unwrap();
    c.find_comment(&key, "Started").await.unwrap();
    c.assign(&key, Some(&me)).await.unwrap();
    c.update_labels(&key, &["recac-claimed"], &["recac-agent"])
        .await
        .unwrap();
    c.get_property(&key, "recac.claim").await.unwrap();
    c.set_property(&key, "recac.claim", &json!({"owner": "recac", "at": 1}))
        .await
        .unwrap();
    c.get_property(&key, "recac.claim").await.unwrap();
    c.my_permissions("OPS", &["BROWSE_PROJECTS", "TRANSITION_ISSUES"])
        .await
        .unwrap();
    // What the source controller uses: the changelog, a user's groups, the claim edit.
    c.issue_with_changelog(
        &key,
        &["status", "assignee", "labels", "reporter", "updated"],
    )
    .await
    .unwrap();
    c.user_groups(&me).await.unwrap();
    c.assign_and_label(
        &key,
        Some(&me),
        &["recac-claimed"],
        &["recac-needs-repository"],
    )
    .await
    .unwrap();
    // Error replies are checked too where the contract documents them.
    let _ = c.get_issue("OPS-9999", &[]).await;
    let _ = c.transition_by_id(&key, "11").await;
}

#[tokio::test]
async fn client_calls_and_simulator_replies_match_the_contract() {
    let contract = contract();
    let sim = common::sim(Flavor::Cloud).await;
    exercise_client(&sim).await;
    let calls = sim.calls();
    assert!(calls.len() >= 20, "{}", calls.len());
    let mut problems = Vec::new();
    let mut operations = std::collections::BTreeSet::new();
    for call in &calls {
        if let Some(op) = contract.operation(&call.method, &call.path) {
            operations.insert(format!("{} {}", call.method, op.template));
        }
        problems.extend(check_call(&contract, call));
    }
    println!("operations checked: {operations:#?}");
    assert!(
        problems.is_empty(),
        "contract violations:\n{}",
        problems.join("\n")
    );
    assert!(operations.len() >= 11, "{operations:?}");
}

#[tokio::test]
async fn the_check_catches_violations() {
    let contract = contract();
    let call = |method: &str,
                path: &str,
                body: Option<serde_json::Value>,
                status: u16,
                response: Option<serde_json::Value>| CallRecord {
        method: method.into(),
        path: path.into(),
        query: String::new(),
        body,
        status,
        response,
        user: None,
        at: std::time::Instant::now(),
    };
    // An endpoint or a method the contract does not have.
    assert!(
        !check_call(
            &contract,
            &call("POST", "/rest/api/3/myself", None, 200, None)
        )
        .is_empty()
    );
    assert!(
        !check_call(
            &contract,
            &call("GET", "/rest/api/3/issue/X-1/claims", None, 200, None)
        )
        .is_empty()
    );
    // A v3 search reply with `total` (not in SearchAndReconcileResults).
    let bad = call(
        "POST",
        "/rest/api/3/search/jql",
        Some(json!({"jql": "x"})),
        200,
        Some(json!({"issues": [], "total": 0})),
    );
    assert!(
        check_call(&contract, &bad)
            .iter()
            .any(|p| p.contains("total"))
    );
    // A request body with a property the schema forbids.
    let bad = call(
        "PUT",
        "/rest/api/3/issue/X-1/assignee",
        Some(json!({"accountId": "a", "bogus": 1})),
        204,
        None,
    );
    assert!(
        check_call(&contract, &bad)
            .iter()
            .any(|p| p.contains("bogus"))
    );
    // An undocumented status.
    let bad = call("GET", "/rest/api/3/myself", None, 418, None);
    assert!(!check_call(&contract, &bad).is_empty());
    // An array parameter sent comma-joined instead of once per value.
    let issue = json!({"id": "1", "key": "X-1", "fields": {}});
    let mut joined = call("GET", "/rest/api/3/issue/X-1", None, 200, Some(issue));
    joined.query = "fields=summary%2Cstatus".into();
    assert!(
        check_call(&contract, &joined)
            .iter()
            .any(|p| p.contains("comma-joined")),
        "{:?}",
        check_call(&contract, &joined)
    );
    joined.query = "fields=summary&fields=status".into();
    assert_eq!(check_call(&contract, &joined), Vec::<String>::new());
    // v2 and latest paths are checked against the v3 operation.
    assert!(
        check_call(
            &contract,
            &call("POST", "/rest/api/2/myself", None, 200, None)
        )
        .iter()
        .any(|p| p.contains("not an operation"))
    );
}
