//! The client against the simulator, in both flavours.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use recac_jira::adf::{Doc, JIRA_COMMENT_LIMIT, utf16_len};
use recac_jira::error::TransportKind;
use recac_jira::{Flavor, JiraError, jql};
use recac_jira_sim::{BOT_ACCOUNT_ID, Fault, IssueSeed, UserDef, WriteLimits};
use serde_json::json;

fn seed_issue(sim: &recac_jira_sim::JiraSim, summary: &str, labels: &[&str]) -> String {
    sim.add_issue(IssueSeed {
        project: "OPS".into(),
        summary: summary.into(),
        description: Some("Details here".into()),
        labels: labels.iter().map(|l| l.to_string()).collect(),
        ..Default::default()
    })
}

#[tokio::test]
async fn every_operation_in_both_flavours() {
    for flavor in FLAVORS {
        let sim = sim(flavor).await;
        sim.add_project("OPS", "Operations");
        let key = seed_issue(&sim, "Fix the build", &["recac-agent"]);
        seed_issue(&sim, "Unrelated", &[]);
        let c = client(&sim, flavor);

        // who-am-I
        let me = c.myself().await.unwrap();
        match flavor {
            Flavor::Cloud => assert_eq!(me.account_id.as_deref(), Some(BOT_ACCOUNT_ID)),
            Flavor::Datacenter => assert_eq!(me.name.as_deref(), Some("recac-bot")),
        }

        // search with explicit fields
        let found = c
            .search_all(
                &jql::and(&[jql::eq("project", "OPS"), jql::eq("labels", "recac-agent")]),
                &["summary", "status", "labels"],
            )
            .await
            .unwrap();
        assert_eq!(found.len(), 1, "{flavor:?}");
        assert_eq!(found[0].key, key);
        assert_eq!(found[0].summary(), "Fix the build");
        assert_eq!(found[0].status_name(), Some("To Do"));

        // get issue
        let issue = c
            .get_issue(
                &key,
                &["summary", "status", "labels", "assignee", "description"],
            )
            .await
            .unwrap();
        assert_eq!(issue.fields.labels, vec!["recac-agent"]);
        assert!(issue.fields.assignee.is_none());
        match flavor {
            Flavor::Cloud => assert_eq!(issue.fields.description.as_ref().unwrap()["type"], "doc"),
            Flavor::Datacenter => {
                assert_eq!(issue.fields.description.as_ref().unwrap(), "Details here")
            }
        }

        // transitions: list, by target status (case-insensitive), by name, by id
        let list = c.transitions(&key).await.unwrap();
        assert!(list.iter().any(|t| t.name == "Start Progress"), "{list:?}");
        let t = c.transition(&key, "in progress").await.unwrap();
        assert_eq!(t.id, "11");
        assert_eq!(sim.issue(&key).unwrap().status, "In Progress");
        c.transition(&key, "REQUEST REVIEW").await.unwrap();
        assert_eq!(sim.issue(&key).unwrap().status, "In Review");
        c.transition(&key, "41").await.unwrap();
        assert_eq!(sim.issue(&key).unwrap().status, "To Do");
        let err = c.transition(&key, "Closed").await.unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, JiraError::NoSuchTransition { .. }), "{err:?}");
        assert!(
            text.contains(&key) && text.contains("Start Progress") && text.contains("Closed"),
            "{text}"
        );
        // A transition id not available now: 400 from Jira, not retried.
        let err = c.transition_by_id(&key, "21").await.unwrap_err();
        assert_eq!(err.status(), Some(400));
        assert!(
            err.to_string().contains("is not valid for this issue"),
            "{err}"
        );

        // comments
        let marker = "<!-- recac:run-42 -->";
        let posted = c
            .add_comment(
                &key,
                &format!("Agent started {marker}\n\n```\nlog line\n```"),
            )
            .await
            .unwrap();
        assert!(!posted.id.is_empty());
        let stored = &sim.issue(&key).unwrap().comments[0];
        match flavor {
            Flavor::Cloud => assert_eq!(stored.body["type"], "doc"),
            Flavor::Datacenter => assert!(stored.body.as_str().unwrap().contains("{noformat}")),
        }
        assert!(c.find_comment(&key, marker).await.unwrap().is_some());
        assert!(
            c.find_comment(&key, "absent-marker")
                .await
                .unwrap()
                .is_none()
        );
        // many comments: list pages through all (write limits off: 120 writes would wait ~30 s)
        sim.set_write_limits(None);
        for i in 0..120 {
            c.add_comment(&key, &format!("note {i}"))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(c.comments(&key).await.unwrap().len(), 121);

        // assign to the bot, then unassign
        c.assign(&key, Some(&me)).await.unwrap();
        assert_eq!(
            sim.issue(&key).unwrap().assignee.as_deref(),
            Some(BOT_ACCOUNT_ID)
        );
        let mine = c
            .search_all("assignee = currentUser() AND project = OPS", &["summary"])
            .await
            .unwrap();
        assert_eq!(mine.len(), 1);
        c.assign(&key, None).await.unwrap();
        assert_eq!(sim.issue(&key).unwrap().assignee, None);

        // labels
        c.add_labels(&key, &["recac-claimed", "x"]).await.unwrap();
        c.remove_labels(&key, &["recac-agent", "x"]).await.unwrap();
        assert_eq!(sim.issue(&key).unwrap().labels, vec!["recac-claimed"]);
        c.update_labels(&key, &[], &[]).await.unwrap();

        // properties
        assert_eq!(c.get_property(&key, "recac.claim").await.unwrap(), None);
        let claim = json!({"owner": "recac-0", "run": 42});
        c.set_property(&key, "recac.claim", &claim).await.unwrap();
        c.set_property(&key, "recac.claim", &claim).await.unwrap();
        assert_eq!(
            c.get_property(&key, "recac.claim").await.unwrap(),
            Some(claim)
        );
        let too_big = json!("x".repeat(40_000));
        assert!(matches!(
            c.set_property(&key, "big", &too_big).await,
            Err(JiraError::InvalidInput { .. })
        ));

        // permissions
        let perms = c
            .my_permissions("OPS", &["BROWSE_PROJECTS", "TRANSITION_ISSUES"])
            .await
            .unwrap();
        assert!(perms.values().all(|v| *v), "{perms:?}");
        let err = c
            .my_permissions("NOPE", &["BROWSE_PROJECTS"])
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(404));

        // 404 carries the key, the operation and Jira's message; not retried
        sim.clear_calls();
        let err = c.get_issue("OPS-999", &[]).await.unwrap_err();
        assert_eq!(err.status(), Some(404));
        assert_eq!(err.issue(), Some("OPS-999"));
        let text = err.to_string();
        assert!(
            text.contains("get issue OPS-999") && text.contains("does not exist"),
            "{text}"
        );
        assert_eq!(sim.calls().len(), 1);
    }
}

#[tokio::test]
async fn datacenter_basic_auth_and_cloud_rejects_wrong_token() {
    let sim = sim(Flavor::Datacenter).await;
    let me = dc_basic_client(&sim).myself().await.unwrap();
    assert_eq!(me.name.as_deref(), Some("recac-bot"));

    let sim = sim_cloud().await;
    let cfg = config(&sim, Flavor::Cloud);
    let bad = recac_jira::JiraClient::with_credentials(
        &cfg,
        recac_jira::Credentials::Basic {
            user: recac_jira_sim::BOT_EMAIL.into(),
            token: recac_jira::Secret::new("wrong"),
        },
    )
    .unwrap();
    let err = bad.myself().await.unwrap_err();
    assert_eq!(err.status(), Some(401));
    assert_eq!(sim.calls().len(), 1, "401 is not retried");
}

async fn sim_cloud() -> recac_jira_sim::JiraSim {
    sim(Flavor::Cloud).await
}

#[tokio::test]
async fn pagination_over_1234_issues() {
    for flavor in FLAVORS {
        let sim = sim(flavor).await;
        let keys = sim.add_issues("BIG", "Issue", &["bulk"], 1234);
        sim.add_issues("OTHER", "Noise", &["bulk"], 10);
        let c = client(&sim, flavor);
        let started = Instant::now();
        let mut pages = 0;
        let mut seen = Vec::new();
        let mut stream = std::pin::pin!(c.search_pages(
            "project = BIG AND labels = bulk ORDER BY key ASC",
            &["summary"]
        ));
        while let Some(page) = stream.next().await {
            pages += 1;
            seen.extend(page.unwrap().into_iter().map(|i| i.key));
        }
        let elapsed = started.elapsed();
        println!(
            "pagination {flavor:?}: {} issues in {pages} pages, {:.3}s",
            seen.len(),
            elapsed.as_secs_f64()
        );
        assert_eq!(seen, keys, "{flavor:?}: every issue once, in order");
        assert_eq!(pages, 13, "{flavor:?}: page size 100");
    }
}

#[tokio::test]
async fn datacenter_pagination_trusts_server_page_size() {
    let sim = sim(Flavor::Datacenter).await;
    sim.set_max_results(Some(37));
    let keys = sim.add_issues("BIG", "Issue", &[], 1001);
    let c = client(&sim, Flavor::Datacenter);
    let got: Vec<String> = c
        .search_all("project = BIG", &["summary"])
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.key)
        .collect();
    assert_eq!(got, keys);
    assert_eq!(sim.calls().len(), 1001usize.div_ceil(37));
    // Cloud with a small cap: tokens keep going.
    let sim = sim_cloud().await;
    sim.set_max_results(Some(37));
    let keys = sim.add_issues("BIG", "Issue", &[], 1001);
    let c = client(&sim, Flavor::Cloud);
    let got: Vec<String> = c
        .search_all("project = BIG", &["summary"])
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.key)
        .collect();
    assert_eq!(got, keys);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    for (status, flavor) in [(429, Flavor::Cloud), (503, Flavor::Datacenter)] {
        let sim = sim(flavor).await;
        sim.add_issues("OPS", "x", &[], 3);
        sim.inject(Fault::status_retry_after(status, 1).on_path("/search"));
        let c = client(&sim, flavor);
        let started = Instant::now();
        let got = c.search_all("project = OPS", &["summary"]).await.unwrap();
        let elapsed = started.elapsed();
        assert_eq!(got.len(), 3);
        println!(
            "Retry-After: 1 on HTTP {status}: measured delay {:.3}s",
            elapsed.as_secs_f64()
        );
        assert!(
            elapsed >= Duration::from_secs(1),
            "retried after {elapsed:?}, before Retry-After"
        );
        let calls = sim.calls();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].status, status);
    }
}

#[tokio::test]
async fn retries_are_bounded() {
    let sim = sim_cloud().await;
    sim.add_issues("OPS", "x", &[], 1);
    sim.inject(Fault::status(503).always());
    let c = client(&sim, Flavor::Cloud);
    let err = c.get_issue("OPS-1", &[]).await.unwrap_err();
    assert!(
        matches!(err, JiraError::RetriesExhausted { attempts: 4, .. }),
        "{err:?}"
    );
    assert_eq!(err.status(), Some(503));
    assert_eq!(err.issue(), Some("OPS-1"));
    assert_eq!(sim.calls().len(), 4);

    // A Retry-After beyond the accepted maximum fails at once.
    let sim = sim_cloud().await;
    sim.add_issues("OPS", "x", &[], 1);
    sim.inject(Fault::rate_limited(3600));
    let err = client(&sim, Flavor::Cloud)
        .get_issue("OPS-1", &[])
        .await
        .unwrap_err();
    match err {
        JiraError::Api {
            status: 429,
            retry_after,
            ..
        } => assert_eq!(retry_after, Some(Duration::from_secs(3600))),
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.calls().len(), 1);
}

#[tokio::test]
async fn transient_failures_retried_for_reads_only() {
    let sim = sim_cloud().await;
    sim.add_issues("OPS", "x", &[], 1);
    let c = client(&sim, Flavor::Cloud);
    // 502, 504 and a dropped connection on a GET: retried, then success.
    sim.inject(Fault::status(502).on_method("GET"));
    sim.inject(Fault::status(504).on_method("GET"));
    sim.inject(Fault::drop_connection().on_method("GET"));
    c.get_issue("OPS-1", &[]).await.unwrap();
    assert_eq!(sim.calls().len(), 4);

    // A dropped connection on POST comment is not retried: no comment posted twice.
    sim.clear_calls();
    sim.inject(Fault::drop_connection().on_method("POST"));
    let err = c.add_comment("OPS-1", "hello").await.unwrap_err();
    assert!(
        matches!(
            err,
            JiraError::Transport {
                kind: TransportKind::Other,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(sim.calls().len(), 1);
    // 429 on POST is safe to retry (Jira did not apply it).
    sim.clear_calls();
    sim.inject(Fault::rate_limited(0).on_method("POST"));
    c.add_comment("OPS-1", "hello").await.unwrap();
    assert_eq!(
        sim.issue("OPS-1").unwrap().comments.len(),
        1,
        "posted exactly once"
    );
    let posts = sim.calls().iter().filter(|c| c.method == "POST").count();
    assert_eq!(posts, 2);

    // Connection refused: a typed Connect error after bounded tries.
    let addr = sim.addr();
    drop(sim);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cfg = recac_jira::JiraConfig {
        url: format!("http://{addr}"),
        ..recac_jira::JiraConfig::default()
    };
    let dead = recac_jira::JiraClient::with_credentials(
        &cfg,
        recac_jira::Credentials::Bearer {
            token: recac_jira::Secret::new("t"),
        },
    )
    .unwrap()
    .with_retry_policy(fast_policy());
    let err = dead.myself().await.unwrap_err();
    match &err {
        JiraError::RetriesExhausted {
            attempts: 4, last, ..
        } => {
            assert!(
                matches!(
                    **last,
                    JiraError::Transport {
                        kind: TransportKind::Connect,
                        ..
                    }
                ),
                "{last:?}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn timeouts_are_typed_and_bounded() {
    let sim = sim_cloud().await;
    sim.add_issues("OPS", "x", &[], 1);
    let mut cfg = config(&sim, Flavor::Cloud);
    cfg.request_timeout_seconds = 1;
    let c = recac_jira::JiraClient::with_credentials(
        &cfg,
        recac_jira::Credentials::Basic {
            user: recac_jira_sim::BOT_EMAIL.into(),
            token: recac_jira::Secret::new(recac_jira_sim::BOT_TOKEN),
        },
    )
    .unwrap()
    .with_retry_policy(fast_policy());
    sim.inject(Fault::delay(Duration::from_secs(3)).on_method("GET"));
    let started = Instant::now();
    c.get_issue("OPS-1", &[]).await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1));
    sim.inject(Fault::delay(Duration::from_secs(3)).on_method("POST"));
    let err = c.add_comment("OPS-1", "x").await.unwrap_err();
    assert!(
        matches!(
            err,
            JiraError::Transport {
                kind: TransportKind::Timeout,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn malformed_json_is_an_error_not_a_panic() {
    for flavor in FLAVORS {
        let sim = sim(flavor).await;
        sim.add_issues("OPS", "x", &[], 2);
        let c = client(&sim, flavor);
        for path in [
            "/search",
            "/issue/OPS-1",
            "/myself",
            "/transitions",
            "/comment",
        ] {
            sim.inject(Fault::malformed_json().on_path(path));
        }
        let e = c.search_all("project = OPS", &[]).await.unwrap_err();
        assert!(matches!(e, JiraError::Malformed { .. }), "{e:?}");
        let e = c.get_issue("OPS-1", &[]).await.unwrap_err();
        assert!(matches!(e, JiraError::Malformed { .. }), "{e:?}");
        assert_eq!(e.issue(), Some("OPS-1"));
        assert!(c.myself().await.is_err());
        assert!(c.transitions("OPS-1").await.is_err());
        assert!(c.comments("OPS-1").await.is_err());
    }
}

#[tokio::test]
async fn wrong_shapes_are_errors() {
    // A reply that is JSON but not the expected shape.
    let sim = sim_cloud().await;
    let c = client(&sim, Flavor::Cloud);
    // An unknown field in JQL: Jira's 400 message surfaces in the error.
    let err = c
        .search_all("project = OPS AND bogus = 1", &[])
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(400));
    assert!(
        err.to_string().contains("Field 'bogus' does not exist"),
        "{err}"
    );
    sim.add_project("OPS", "Ops");
    let err = c
        .search_all("project = OPS AND status = Nope", &[])
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("The value 'Nope' does not exist for the field 'status'"),
        "{err}"
    );
}

#[tokio::test]
async fn long_comments_are_cut_below_the_limit() {
    for flavor in FLAVORS {
        let sim = sim(flavor).await;
        sim.add_issues("OPS", "x", &[], 1);
        let c = client(&sim, flavor);
        let long = format!("Summary\n\n```\n{}\n```", "log line ✓ 😀\n".repeat(5000));
        c.add_comment_doc("OPS-1", &Doc::from_text(&long))
            .await
            .unwrap();
        let stored = &sim.issue("OPS-1").unwrap().comments[0];
        let text = recac_jira::adf::plain_text(&stored.body);
        assert!(
            utf16_len(&text) < JIRA_COMMENT_LIMIT,
            "{flavor:?}: {}",
            utf16_len(&text)
        );
        assert!(text.contains("comment truncated by recac"), "{flavor:?}");
    }
}

#[tokio::test]
async fn transition_permission_and_conflict() {
    let sim = sim_cloud().await;
    sim.add_issues("OPS", "x", &[], 2);
    // A user that may browse but not transition.
    sim.add_user(UserDef {
        account_id: "viewer-1".into(),
        name: "viewer".into(),
        display_name: "Viewer".into(),
        email: "viewer@example.com".into(),
        token: Some("viewer-token".into()),
        pat: None,
        permissions: Some([("OPS".to_string(), vec!["BROWSE_PROJECTS".to_string()])].into()),
    });
    let viewer = recac_jira::JiraClient::with_credentials(
        &config(&sim, Flavor::Cloud),
        recac_jira::Credentials::Basic {
            user: "viewer@example.com".into(),
            token: recac_jira::Secret::new("viewer-token"),
        },
    )
    .unwrap();
    assert!(viewer.transitions("OPS-1").await.unwrap().is_empty());
    let err = viewer.transition("OPS-1", "In Progress").await.unwrap_err();
    assert!(err.to_string().contains("available: none"), "{err}");
    let err = viewer.transition_by_id("OPS-1", "11").await.unwrap_err();
    assert_eq!(err.status(), Some(400));
    assert_eq!(
        err.body().unwrap().error_messages,
        vec!["You do not have permission to transition this issue."]
    );
    let perms = viewer
        .my_permissions("OPS", &["BROWSE_PROJECTS", "TRANSITION_ISSUES"])
        .await
        .unwrap();
    assert_eq!(perms.get("TRANSITION_ISSUES"), Some(&false));

    // Two claimers race: one wins, the other gets 409 (or 400 once the status moved).
    sim.set_transition_latency(Duration::from_millis(300));
    let a = client(&sim, Flavor::Cloud);
    let b = client(&sim, Flavor::Cloud);
    let (ra, rb) = tokio::join!(a.transition_by_id("OPS-2", "11"), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        b.transition_by_id("OPS-2", "11").await
    });
    assert!(ra.is_ok(), "{ra:?}");
    assert_eq!(rb.unwrap_err().status(), Some(409));
    assert_eq!(sim.issue("OPS-2").unwrap().status, "In Progress");
}

#[tokio::test]
async fn per_issue_write_limit_is_retried_after_wait() {
    let sim = sim_cloud().await;
    sim.add_issues("OPS", "x", &[], 1);
    sim.set_write_limits(Some(WriteLimits {
        rules: vec![(5, Duration::from_secs(1))],
    }));
    let c = client(&sim, Flavor::Cloud);
    let started = Instant::now();
    for i in 0..8 {
        c.add_labels("OPS-1", &[&format!("l{i}")]).await.unwrap();
    }
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(sim.issue("OPS-1").unwrap().labels.len(), 8);
    assert!(sim.calls().iter().any(|c| c.status == 429));
}

#[tokio::test]
async fn jql_quoting_round_trips_through_the_server() {
    let sim = sim_cloud().await;
    let tricky = [
        r#"we"ird"#,
        r"back\slash",
        "order",
        "empty",
        "x\"OR\"project=\"SECRET",
        "ünï-cødé",
    ];
    for (i, label) in tricky.iter().enumerate() {
        sim.add_issue(IssueSeed {
            project: "OPS".into(),
            summary: format!("issue {i}"),
            labels: vec![label.to_string()],
            ..Default::default()
        });
    }
    let c = client(&sim, Flavor::Cloud);
    for (i, label) in tricky.iter().enumerate() {
        let q = jql::and(&[jql::eq("project", "OPS"), jql::eq("labels", label)]);
        let found = c
            .search_all(&q, &["summary"])
            .await
            .unwrap_or_else(|e| panic!("{q}: {e}"));
        assert_eq!(found.len(), 1, "{q}");
        assert_eq!(found[0].summary(), format!("issue {i}"));
    }
    let q = jql::and(&[
        jql::eq("project", "OPS"),
        jql::in_list("labels", &tricky[..2]).unwrap(),
    ]);
    assert_eq!(c.search_all(&q, &[]).await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_closed_write_gate_sends_no_write_and_still_reads() {
    let sim = sim(Flavor::Cloud).await;
    sim.add_project("OPS", "Operations");
    let key = seed_issue(&sim, "Fenced", &["recac-agent"]);
    let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gate_open = open.clone();
    let c = client(&sim, Flavor::Cloud).with_write_gate(std::sync::Arc::new(move || {
        gate_open.load(std::sync::atomic::Ordering::SeqCst)
    }));
    sim.clear_calls();
    let refused = c
        .add_comment(&key, "not while following")
        .await
        .expect_err("refused");
    assert!(matches!(refused, JiraError::NotLeader { .. }), "{refused}");
    assert!(refused.to_string().contains("not the leader"), "{refused}");
    assert!(
        sim.calls().is_empty(),
        "nothing reached Jira: {:?}",
        sim.calls()
    );
    let found = c
        .search_all(&jql::eq("project", "OPS"), &["summary"])
        .await
        .expect("reads are not gated");
    assert_eq!(found.len(), 1);

    open.store(true, std::sync::atomic::Ordering::SeqCst);
    c.add_comment(&key, "now leading")
        .await
        .expect("sent once the gate opens");
    assert_eq!(sim.issue(&key).expect("issue").comments.len(), 1);
}
